/**
 * The daemon's background gc (gc-schedule.ts, issue #21): one at a time, and after a gc that took T
 * not again before gcRestFactor x T has passed, so gc's share of the time is bounded however long a
 * gc of a big pool takes (before, one started every gcIntervalMs and they queued behind each other).
 */
import test from 'ava'
import { GcSchedule } from '../../src/daemon/gc-schedule'

test('a background gc starts after a change it has not seen, never beside another, and rests for its rest factor times its length', t => {
  const schedule = new GcSchedule(-1, 4)
  t.true(schedule.start(60_000, 0), 'the first tick after start runs one, changed or not')
  t.false(schedule.start(120_000, 5), 'not while the first is in flight, whatever changed')
  schedule.ended(60_000, 260_000) // it took 200 s
  t.false(schedule.start(300_000, 5), '40 s after a gc of 200 s: resting')
  t.false(schedule.start(1_000_000, 5), '740 s after: still resting (800 s)')
  t.true(schedule.start(1_060_000, 5), '800 s after a gc of 200 s: due')
  schedule.ended(1_060_000, 1_061_000) // 1 s
  t.false(schedule.start(1_120_000, 5), 'nothing changed since it started')
  t.true(schedule.start(1_120_000, 6))
})

test('a gc at start counts as having seen the pool as it was', t => {
  const schedule = new GcSchedule(3, 4)
  t.false(schedule.start(60_000, 3))
  t.true(schedule.start(120_000, 4))
})

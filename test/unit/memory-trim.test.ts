/**
 * When the daemon returns the C heap's free pages to the system (daemon/memory-trim.ts): once after a
 * burst of commits ends, and during one whenever the resident memory grew by the bound; never when
 * nothing was committed.
 */
import test from 'ava'
import { memoryTrimmer } from '../../src/daemon/memory-trim'

const MiB = 1024 * 1024

function trimmer (): { check: () => boolean, set: (rssMiB: number, commits?: number) => void, trims: () => number } {
  let rss = 100 * MiB
  let commits = 0
  let trims = 0
  const check = memoryTrimmer(() => { trims++ }, () => commits, () => rss, 32 * MiB)
  return { check, set: (rssMiB, more = 0) => { rss = rssMiB * MiB; commits += more }, trims: () => trims }
}

test('nothing committed: no trim, whatever the memory does', t => {
  const { check, set, trims } = trimmer()
  for (const rss of [100, 180, 300, 120]) { set(rss); t.false(check()) }
  t.is(trims(), 0)
})

test('a burst of commits: one trim at the first check after it, none after', t => {
  const { check, set, trims } = trimmer()
  set(130, 5)
  t.false(check(), 'commits went on since the last check, 30 MiB grown: no trim yet')
  set(150)
  t.true(check(), 'no commit since the last check: the burst ended')
  set(110)
  t.false(check())
  set(112)
  t.false(check())
  t.is(trims(), 1)
})

test('commits going on: a trim whenever the memory grew 32 MiB past the level after the last one', t => {
  const { check, set, trims } = trimmer()
  set(120, 1)
  t.false(check())
  set(140, 1)
  t.true(check(), '40 MiB grown past 100')
  set(170, 1)
  t.false(check(), 'the level is measured again here: 170')
  set(195, 1)
  t.false(check(), '25 MiB past it')
  set(205, 1)
  t.true(check(), '35 MiB past it')
  set(150, 1)
  t.false(check(), 'the level is 150 now')
  set(150)
  t.true(check(), 'the commits stopped: one more')
  t.is(trims(), 3)
})

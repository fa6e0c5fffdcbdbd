/**
 * Crash harness (issue #5): a writer fills a disk with self-describing records using 4-128 KiB writes
 * and fsyncs every few writes; the daemon is killed with SIGKILL at random moments (during plain
 * writes, during backup and clone, during gc, during sealing), or stopped with SIGTERM while gc or
 * sealing runs and the writer goes on (an orderly shutdown with work in flight: the daemon commits,
 * cancels background work and exits); after a fresh mount every record must hold its last
 * acknowledged generation or a newer one that was written, never a torn, foreign or older record.
 * Backups taken before the kill must hold at least what was acknowledged before they started.
 *
 * VDISKFS_CRASH_POINTS sets the number of kill points (make test: 20, make crash-test: 200).
 */
import test from 'ava'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { isMounted, run, vdiskfs, waitForExit, withMount } from '../helpers/mount'
import { makeRecord, readRecord, recordBytes } from '../helpers/records'

const diskBytes = 64 * 1024 * 1024
const records = diskBytes / recordBytes

function random (n: number): number { return Math.floor(Math.random() * n) }

interface Backup { file: string, ackedAtStart: Uint32Array }

test.serial('every acknowledged write survives SIGKILL of the daemon at random moments', async t => {
  const points = Number(process.env.VDISKFS_CRASH_POINTS ?? 12)
  const m = await withMount(t)
  const disk = m.image('disks', 'crash.img')
  await run('truncate', ['-s', String(diskBytes), disk])
  const acked = new Uint32Array(records) // last acknowledged generation per record (0: none)
  const issued = new Map<number, Set<number>>() // generations ever written to each record
  let generation = 0
  const backups: Backup[] = []
  const kinds = { writes: 0, backup: 0, gc: 0, seal: 0, sigterm: 0 }
  let verifiedRecords = 0
  let sealsInterrupted = 0

  for (let point = 0; point < points; point++) {
    const moment = (['writes', 'backup', 'gc', 'seal', 'sigterm'] as const)[point % 5]
    kinds[moment]++
    const handle = await fs.promises.open(disk, 'r+')
    let pending: Array<[number, number, number]> = [] // [first record, count, generation] since the last fsync
    let alive = true
    const killAfterMs = 30 + random(400)
    // eslint-disable-next-line @typescript-eslint/no-loop-func -- it only counts into sealsInterrupted, read after the loop; `await killer` ends each iteration, so no two killers overlap
    const killer = (async () => {
      await new Promise(resolve => setTimeout(resolve, killAfterMs))
      if (moment === 'backup') {
        const ackedAtStart = acked.slice()
        const name = `p${point}`
        const file = m.image('backups', `${name}.img`)
        const backup = vdiskfs('backup', disk, name).then(r => { if (r.code === 0) backups.push({ file, ackedAtStart }) })
        const clone = backup.then(async () => await vdiskfs('clone', file, `c${point}`))
        // Half the time the kill lands while the backup runs, half the time after it, during the clone.
        if (kinds.backup % 2 === 0) await backup
        await new Promise(resolve => setTimeout(resolve, random(80)))
        await m.kill()
        await Promise.allSettled([backup, clone])
      } else if (moment === 'gc') {
        const gc = vdiskfs('gc', m.mnt)
        await new Promise(resolve => setTimeout(resolve, random(40)))
        await m.kill()
        await gc
      } else if (moment === 'sigterm') {
        // An orderly stop while background work runs and the writer goes on.
        const work = kinds.sigterm % 2 === 0 ? vdiskfs('sync', m.mnt) : vdiskfs('gc', m.mnt)
        await new Promise(resolve => setTimeout(resolve, 20 + random(200)))
        process.kill(m.pid, 'SIGTERM')
        await waitForExit(m.pid)
        // The writer still holds the image open, so the unmount the daemon asked for could not happen.
        spawnSync('fusermount3', ['-uz', m.mnt])
        await work
      } else if (moment === 'seal') {
        // vdiskfs sync rotates the active extent and seals everything frozen, while writes go on.
        const seal = vdiskfs('sync', m.mnt)
        await new Promise(resolve => setTimeout(resolve, 60 + random(200)))
        await m.kill()
        if ((await seal).code !== 0) sealsInterrupted++
      } else {
        await m.kill()
      }
      alive = false
    })()
    let sinceSync = 0
    while (alive) {
      const count = 1 + random(32) // 4 KiB to 128 KiB
      const first = random(records - count)
      const gen = ++generation
      const data = Buffer.allocUnsafe(count * recordBytes)
      for (let i = 0; i < count; i++) makeRecord(data, i * recordBytes, first + i, gen)
      for (let i = 0; i < count; i++) {
        let set = issued.get(first + i)
        if (set === undefined) issued.set(first + i, set = new Set())
        set.add(gen)
      }
      try {
        await handle.write(data, 0, data.length, first * recordBytes)
        pending.push([first, count, gen])
        if (++sinceSync >= 1 + random(6)) {
          const synced = pending
          pending = []
          sinceSync = 0
          await handle.sync()
          for (const [f, c, g] of synced) for (let i = 0; i < c; i++) acked[f + i] = Math.max(acked[f + i], g)
        }
      } catch {
        break // the daemon is gone
      }
    }
    await killer
    await handle.close().catch(() => {})
    t.false(isMounted(m.mnt), `point ${point}: the dead mount was removed`)
    await m.mount()
    const image = fs.readFileSync(disk)
    t.is(image.length, diskBytes)
    let bad = 0
    for (let r = 0; r < records; r++) {
      const state = readRecord(image, r * recordBytes, r)
      if (state.kind === 'bad') { bad++; if (bad < 5) t.fail(`point ${point}: record ${r}: ${state.why}`); continue }
      const got = state.kind === 'zero' ? 0 : state.generation
      if (got < acked[r]) { bad++; if (bad < 5) t.fail(`point ${point}: record ${r} holds generation ${got}, older than acknowledged ${acked[r]}`) }
      if (got !== 0 && issued.get(r)?.has(got) !== true) { bad++; if (bad < 5) t.fail(`point ${point}: record ${r} holds generation ${got}, never written there`) }
      // What survived is now the floor: the next crash must not go back behind it.
      if (got > acked[r]) acked[r] = got
    }
    verifiedRecords += records
    t.is(bad, 0, `point ${point} (${moment}, ${killAfterMs} ms)`)
  }
  // Backups that completed hold at least what was acknowledged when they started, and only whole records.
  for (const backup of backups) {
    if (!fs.existsSync(backup.file)) continue
    const image = fs.readFileSync(backup.file)
    let bad = 0
    for (let r = 0; r < records; r++) {
      const state = readRecord(image, r * recordBytes, r)
      const got = state.kind === 'valid' ? state.generation : 0
      if (state.kind === 'bad' || got < backup.ackedAtStart[r]) bad++
    }
    t.is(bad, 0, path.basename(backup.file))
  }
  const summary = `crash harness: ${points} kill points survived (${kinds.writes} during writes, ${kinds.backup} during backup/clone, ${kinds.gc} during gc, ${kinds.seal} during sealing, where the sync was cut short ${sealsInterrupted} times, ${kinds.sigterm} SIGTERMs during sync or gc), ` +
    `${generation} writes, ${verifiedRecords} records verified, ${backups.length} backups checked`
  t.log(summary)
  if (process.env.VDISKFS_CRASH_SUMMARY !== undefined) fs.writeFileSync(process.env.VDISKFS_CRASH_SUMMARY, summary + '\n')
})

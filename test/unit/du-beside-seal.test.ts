/**
 * `du` and `info` answer while a seal pass runs (issue #21: they waited for the maintenance lock behind
 * the whole pass, `info` about 30 s at 1,000 backups). The seal pass is held after its first extent
 * (Sealer.onExtentSealed, a test seam) until du and info have answered; if they waited for the pass,
 * the hold would end only by its fallback, and the order of events says so. Nothing here measures time:
 * the fallback only keeps a regression from hanging the test.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { SpaceAccounting } from '../../src/inspect/space'
import { pageEntries } from '../../src/limits'
import { bytesOf } from '../helpers/model'
import { storesOf } from '../helpers/stores'

test('du and info answer while a seal pass is held mid-way, and the pass then completes with the same figures after it', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-du-seal-'))
  const blockBytes = 4096
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 1 })
  try {
    const disk = await pool.createDisk('d.img')
    // Three extents to seal: a write, a backup and a seal of the active extent between them.
    for (let e = 0; e < 3; e++) {
      for (let b = 0; b < 16; b++) await disk.write(bytesOf(e * 100 + b, blockBytes), (e * pageEntries + b) * blockBytes)
      await pool.backup(disk, `b${e}.img`)
      await pool.freezeForSealing(true)
    }
    t.true(pool.frozenExtents().length >= 2, `frozen extents: ${pool.frozenExtents().length}`)
    const events: string[] = []
    let release = (): void => {}
    const held = new Promise<void>(resolve => { release = resolve })
    let reached = (): void => {}
    const atHold = new Promise<void>(resolve => { reached = resolve })
    const sealer = new Sealer(pool, () => {})
    let first = true
    sealer.onExtentSealed = async () => {
      if (!first) return
      first = false
      reached()
      await held
    }
    const fallback = setTimeout(() => { events.push('fallback released the seal pass'); release() }, 60_000)
    const pass = sealer.sealPending(true).then(report => { events.push('seal pass done'); return report })
    await atHold
    const space = new SpaceAccounting(pool, async () => {})
    const du = await space.report()
    events.push('du answered')
    const info = await space.volume(disk)
    events.push('info answered')
    release()
    clearTimeout(fallback)
    const report = await pass
    t.deepEqual(events, ['du answered', 'info answered', 'seal pass done'])
    t.true(report.extentsSealed >= 2, `extents sealed: ${report.extentsSealed}`)
    t.is(du.volumes.length, 4)
    t.is(info.usage.logicalBytes, disk.size)
    // After the pass: the same logical figures, and every block still reads.
    const after = await space.report()
    t.is(after.logicalBytes, du.logicalBytes)
    for (let e = 0; e < 3; e++) {
      const block = Buffer.alloc(blockBytes)
      await disk.read(block, (e * pageEntries + 5) * blockBytes)
      t.true(block.equals(bytesOf(e * 100 + 5, blockBytes)))
    }
  } finally {
    await pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('a seal pass settles, and a gc queued behind it runs, only after a du walking beside the pass ended', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-du-seal-'))
  const blockBytes = 4096
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 1 })
  try {
    const disk = await pool.createDisk('d.img')
    for (let e = 0; e < 2; e++) {
      for (let b = 0; b < 16; b++) await disk.write(bytesOf(e * 100 + b, blockBytes), (e * pageEntries + b) * blockBytes)
      await pool.backup(disk, `b${e}.img`)
      await pool.freezeForSealing(true)
    }
    const events: string[] = []
    let release = (): void => {}
    const held = new Promise<void>(resolve => { release = resolve })
    let reached = (): void => {}
    const atHold = new Promise<void>(resolve => { reached = resolve })
    const sealer = new Sealer(pool, () => {})
    let first = true
    sealer.onExtentSealed = async () => {
      if (!first) return
      first = false
      reached()
      await held
    }
    const fallback = setTimeout(() => { events.push('fallback'); release() }, 60_000)
    const pass = sealer.sealPending(true).then(() => events.push('seal pass done'))
    await atHold
    // The du walk holds inside (its pause), beside the pass; a backup is removed meanwhile, then the
    // pass is released: gc must not free what the walk may still read before the walk ends.
    let walkHeld = (): void => {}
    const inWalk = new Promise<void>(resolve => { walkHeld = resolve })
    let resume = (): void => {}
    const walkGo = new Promise<void>(resolve => { resume = resolve })
    const space = new SpaceAccounting(pool, async () => { walkHeld(); await walkGo })
    const du = space.report().then(report => { events.push('du answered'); return report })
    await inWalk
    await pool.remove(pool.get('backup', 'b0.img'))
    const gc = pool.gc().then(() => events.push('gc done'))
    // The pass goes on to its settling (commit, then delete the sealed extents), which waits for the
    // walk beside it; gc waits for the pass. Then the walk goes on.
    const removed = storesOf(pool).extents
    const remove = removed.remove.bind(removed)
    removed.remove = async (id: number) => { events.push('an extent deleted'); await remove(id) }
    const maintenance = (pool as unknown as { maintenance: { besideWaits: number } }).maintenance
    release()
    // Until something waits for the walk (the settling step should), or the pass ended without waiting.
    let passEnded = false
    void pass.then(() => { passEnded = true })
    while (maintenance.besideWaits === 0 && !passEnded) await new Promise(resolve => setImmediate(resolve))
    events.push('walk resumed')
    resume()
    await Promise.all([du, gc, pass])
    clearTimeout(fallback)
    t.is(events[0], 'walk resumed', `the settling step waited for the walk: ${events.join(', ')}`)
    t.true(events.indexOf('an extent deleted') > events.indexOf('du answered'), `no extent deleted while the walk was held: ${events.join(', ')}`)
    t.true(events.indexOf('seal pass done') > events.indexOf('du answered') && events.indexOf('gc done') > events.indexOf('seal pass done'), events.join(', '))
    t.is((await du).volumes.length, 3, 'the walk saw the pool as at its snapshot (b0 still in it)')
  } finally {
    await pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

/**
 * The space accounting (issue #21): its sliced walk of distinct map pages gives exactly the figures of
 * the one-step walk of every volume's every entry it replaced (test/helpers/space-reference.ts) on a
 * pool that does not change, with backups, clones, a copy, a restore, partial slots, deduplicated
 * blocks, sealed and unsealed data, a backup whose source is gone and a volume removed while open; while it is held
 * in the middle, reads, writes, new volumes and backups go on, and gc waits for it; its figures are
 * those of its snapshot. `status`'s unsealed bytes come from the extents, not the maps: equal to the
 * maps' figure on a pool where nothing was discarded.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { SpaceAccounting } from '../../src/inspect/space'
import { pageEntries } from '../../src/limits'
import { referenceSpace } from '../helpers/space-reference'

const blockBytes = 64 * 1024
const sector = 4096
const pageBytes = pageEntries * blockBytes

function tempPool (t: { teardown: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-space-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return path.join(dir, 'pool')
}

async function seal (pool: Pool): Promise<void> {
  const report = await new Sealer(pool, () => {}).sealPending(true)
  if (report.failed.length > 0) throw new Error(report.failed.join('; '))
}

/** A block of `text` repeated: the same text twice is one deduplicated chunk once sealed. */
const block = (text: string): Buffer => Buffer.alloc(blockBytes, text)

/** A pool holding every kind of reference the accounting counts (see the file comment). */
async function busyPool (dir: string): Promise<Pool> {
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 1, pageCacheMax: 4 })
  const d1 = await pool.createDisk('d1.img')
  await d1.truncate(6 * pageBytes)
  for (let p = 0; p < 6; p++) {
    for (let i = 0; i < 5; i++) await d1.write(block(`d1 page ${p} block ${i}`), p * pageBytes + i * blockBytes)
  }
  await d1.write(block('same'), 7 * blockBytes) // deduplicated with d2's once sealed
  const d2 = await pool.createDisk('d2.img')
  await d2.write(Buffer.concat([block('same'), block('same'), crypto.randomBytes(blockBytes)]), 0)
  await seal(pool)
  // Partial slots: whole sectors written over sealed blocks.
  await d1.write(crypto.randomBytes(sector), blockBytes + 2 * sector)
  await d1.write(crypto.randomBytes(2 * sector), 2 * pageBytes + 3 * sector)
  await pool.backup(d1, 'b1.img')
  await d1.write(block('after b1'), 3 * pageBytes + 9 * blockBytes)
  await d1.write(crypto.randomBytes(sector), 4 * pageBytes + sector)
  await pool.backup(d1, 'b2.img')
  const c1 = await pool.clone(pool.get('backup', 'b1.img'), 'c1.img')
  await c1.write(block('clone'), 12 * blockBytes)
  await c1.write(block('d1 page 0 block 1'), 13 * blockBytes) // the same bytes as a block of d1, unsealed here
  await pool.copy(d1, 'copy.img')
  await seal(pool)
  await d1.write(block('unsealed'), 5 * pageBytes + 20 * blockBytes)
  await pool.backup(d2, 'b-of-d2.img')
  await d2.write(block('d2 later'), 0)
  // A backup whose source is gone.
  const d3 = await pool.createDisk('d3.img')
  await d3.write(block('d3'), 0)
  await pool.backup(d3, 'b-of-d3.img')
  await pool.remove(d3)
  // d2 restored from b1 after its own backup: d2 now reads pages of d1's backups, some of which b2
  // reads and d1 no longer does (a page one source reads and another source's backup compares with).
  await pool.restore(pool.get('backup', 'b1.img'), d2)
  // A volume removed while open: hidden, its data still counted.
  const d4 = await pool.createDisk('d4.img')
  await d4.write(block('d4'), 0)
  pool.opened(d4, true)
  await pool.remove(d4, { force: true })
  await pool.commit()
  return pool
}

test.serial('the sliced walk gives the figures of the one-step walk of every entry, for du and info alike', async t => {
  const pool = await busyPool(tempPool(t))
  try {
    const reference = referenceSpace(pool)
    const space = new SpaceAccounting(pool, async () => {})
    const report = await space.report()
    t.deepEqual(report, reference.report)
    t.true(report.volumes.some(v => v.keptFromSourceBytes !== null && v.keptFromSourceBytes > 0), 'a backup keeps bytes its source no longer has')
    t.true(report.unsealedBytes > 0 && report.dedupRatio > 1, JSON.stringify(report))
    for (const volume of pool.visible()) {
      const figures = await space.volume(volume)
      t.deepEqual(figures.usage, reference.report.volumes.find(v => v.id === volume.id), volume.name)
      t.is(figures.unsealedBytes, reference.unsealedById.get(volume.id) as number, `${volume.name}: unsealed`)
    }
  } finally {
    await pool.close()
  }
})

test.serial("status's unsealed bytes (from the extents) are the maps' figure when nothing was discarded", async t => {
  const pool = Pool.open(tempPool(t), { create: true, blockBytes, workers: 1 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.write(crypto.randomBytes(3 * blockBytes), 0)
    await seal(pool)
    await disk.write(crypto.randomBytes(sector), sector) // a partial slot: a whole slot in its extent
    await disk.write(crypto.randomBytes(2 * blockBytes), 10 * blockBytes)
    await pool.backup(disk, 'b.img')
    await disk.write(crypto.randomBytes(blockBytes), 10 * blockBytes) // a new slot; the old one is the backup's
    await disk.write(crypto.randomBytes(blockBytes), 10 * blockBytes) // in place
    const reference = referenceSpace(pool).report.unsealedBytes
    t.is(reference, 4 * blockBytes)
    t.is(await pool.inspection.extentBytes(), reference)
    await seal(pool)
    await pool.gc()
    t.is(await pool.inspection.extentBytes(), 0)
  } finally {
    await pool.close()
  }
})

test.serial('held in the middle of its walk, the accounting lets reads, writes, new volumes and backups go on, keeps gc waiting, and gives its snapshot\'s figures', async t => {
  const pool = await busyPool(tempPool(t))
  try {
    // Every page of d1 is now shared with b2 or b3: a write copies it, so d1's root changes under the walk.
    await pool.backup(pool.get('disk', 'd1.img'), 'b3.img')
    await pool.commit()
    const before = referenceSpace(pool)
    await pool.remove(pool.get('backup', 'b-of-d3.img')) // its pages are garbage now, for gc
    const afterRemoval = referenceSpace(pool)
    let paused: () => void = () => {}
    const reached = new Promise<void>(resolve => { paused = resolve })
    let release: () => void = () => {}
    const go = new Promise<void>(resolve => { release = resolve })
    const space = new SpaceAccounting(pool, async () => { paused(); await go })
    let answered = false
    const reporting = space.report().then(report => { answered = true; return report })
    await reached
    // Served while the walk is held: a read, writes that copy pages (d1's root changes), a new disk, a backup.
    const d1 = pool.get('disk', 'd1.img')
    const out = Buffer.alloc(blockBytes)
    await d1.read(out, 3 * pageBytes + 9 * blockBytes)
    t.true(out.equals(block('after b1')))
    for (let p = 0; p < 6; p++) await d1.write(block(`during the walk ${p}`), p * pageBytes + 30 * blockBytes)
    const d5 = await pool.createDisk('d5.img')
    await d5.write(block('d5'), 0)
    await pool.backup(d1, 'b4.img')
    await pool.commit()
    // gc waits for the walk (it would free the removed backup's pages under it).
    let collected = false
    const collecting = pool.gc().then(report => { collected = true; return report })
    for (let turn = 0; turn < 20; turn++) await new Promise(resolve => setImmediate(resolve))
    t.false(answered, 'the report waits at its hold')
    t.false(collected, 'gc waits for the walk')
    release()
    const report = await reporting
    t.deepEqual(report, afterRemoval.report, 'the snapshot\'s figures: nothing written during the walk counts')
    t.notDeepEqual(afterRemoval.report, before.report)
    await collecting
    // Asked again, the accounting walks the pool as it is now.
    const again = await space.report()
    t.deepEqual(again, referenceSpace(pool).report)
    t.true(again.volumes.some(v => v.name === 'd5.img') && again.volumes.some(v => v.name === 'b4.img'))
  } finally {
    await pool.close()
  }
})

test.serial('callers asking while a walk is in flight share it when nothing changed, and a closing pool ends it', async t => {
  const pool = await busyPool(tempPool(t))
  try {
    let walks = 0
    let release: () => void = () => {}
    const go = new Promise<void>(resolve => { release = resolve })
    const space = new SpaceAccounting(pool, async () => { walks++; await go })
    const first = space.report()
    const second = space.report()
    for (let turn = 0; turn < 5; turn++) await new Promise(resolve => setImmediate(resolve))
    release()
    t.deepEqual(await first, await second)
    t.is(walks, 1)
    // Unchanged since: the report is the cached one, no walk.
    await space.report()
    t.is(walks, 1)
  } finally {
    await pool.close()
  }
  const closing = Pool.open(tempPool(t), { create: true, blockBytes, workers: 1 })
  const disk = await closing.createDisk('d.img')
  await disk.write(block('x'), 0)
  let closed: Promise<void> = Promise.resolve()
  // The pool starts closing while the walk is held: the walk stops (close waits for it).
  const space = new SpaceAccounting(closing, async () => { closed = closing.close() })
  const error = await t.throwsAsync(space.report())
  t.regex(error?.message ?? '', /closing/)
  await closed
})

test.serial('a second walk loads no map page unchanged since the first (a 4-page cache), and gives the same figures', async t => {
  const dir = tempPool(t)
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 1, pageCacheMax: 4 })
  try {
    const disk = await pool.createDisk('d.img')
    for (let b = 0; b < 6; b++) {
      for (let p = 0; p < 10; p++) await disk.write(crypto.randomBytes(sector), p * pageBytes + b * blockBytes)
      await pool.backup(disk, `b${b}.img`)
    }
    await new Sealer(pool, () => {}).sealPending(true)
    const space = new SpaceAccounting(pool, async () => {})
    const first = await space.report()
    const pages = (pool as unknown as { state: { pages: { loads: number } } }).state.pages
    await disk.write(crypto.randomBytes(sector), 3 * pageBytes + 7 * blockBytes) // one page changes; the pool's generation moves
    await pool.commit()
    const before = pages.loads
    const second = await space.report()
    t.true(pages.loads - before <= 1, `pages loaded by the second walk: ${pages.loads - before}`)
    t.deepEqual(second, referenceSpace(pool).report)
    t.is(second.volumes.length, first.volumes.length)
  } finally {
    await pool.close()
  }
})

/**
 * The roots of idle backups kept out of memory (issue #21, docs/PERFORMANCE.md "The roots of idle
 * backups loaded on first use"):
 *
 * - An open after a clean close reads no backup's root from the catalog (Catalog.rootsRead): the rows
 *   come without their roots, and the page reference counts are taken from what the close stored.
 * - Reading from many backups keeps the roots in memory within the bound (RootCache), and each reads
 *   what it holds, its root read again after a drop.
 * - A root a commit is writing is not dropped until its transaction ran (a drop in that window would
 *   read the old root again); a backup removed keeps its root for whoever still holds it.
 * - A root that fails its check fails the open no more: the reads of that backup fail with CORRUPT,
 *   the others read, and verify reports it.
 * - gc's mark, sealing's first pass and the space accounting take one root at a time: at the mark's
 *   first yield not every root was read. Sealing's repoint looks only at the volumes whose epoch is at
 *   least the repointed pages': the backups made before those pages are not read.
 * - The page counts so taken are the counts of every root (a damaged stored count is what the open
 *   takes: verify finds it); after an unclean stop (none stored) the
 *   open counts every root, as before.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
import { Pool } from '../../src/volume/pool'
import { verifyPool } from '../../src/inspect/verify'
import { nodeFileIo } from '../../src/io/file-io'
import { MarkSeams } from '../../src/volume/gc-mark'
import { Volume } from '../../src/volume/volume'
import { SpaceAccounting } from '../../src/inspect/space'
import { Sealer } from '../../src/seal/sealer'
import { referenceSpace } from '../helpers/space-reference'
import { pageEntries } from '../../src/limits'
import { bytesOf } from '../helpers/model'
import { storesOf } from '../helpers/stores'

const blockBytes = 4096
const pagesPerRoot = 6
const backups = 30
const options = { workers: 1, pageCacheMax: 8 }

/** A disk of 6 pages and 30 backups, each with one block of its own; closed cleanly (`gc`: after a gc, the counts built). */
async function poolOfBackups (dir: string, gc = false): Promise<void> {
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, ...options })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(pagesPerRoot * pageEntries * blockBytes)
    for (let p = 0; p < pagesPerRoot; p++) await disk.write(bytesOf(p, blockBytes), p * pageEntries * blockBytes)
    for (let b = 0; b < backups; b++) {
      await disk.write(bytesOf(1000 + b, blockBytes), ((b % pagesPerRoot) * pageEntries + 1 + b) * blockBytes)
      await pool.backup(disk, `b${b}.img`)
    }
    if (gc) await pool.gc()
  } finally {
    await pool.close()
  }
}

/** Page id -> root entries naming it, counted from every volume's root. */
function countedFromRoots (pool: Pool): Map<number, number> {
  const out = new Map<number, number>()
  for (const volume of storesOf(pool).volumes.values()) {
    for (const id of volume.map.root) if (id !== 0) out.set(id, (out.get(id) ?? 0) + 1)
  }
  return out
}

function sameCounts (pool: Pool, expected: Map<number, number>): string | null {
  const refs = storesOf(pool).refs
  const live = refs.livePagesNow()
  if (live.size !== expected.size) return `${live.size} pages counted, ${expected.size} named by the roots`
  for (const [id, n] of expected) if (refs.refsOfPage(id) !== n) return `page ${id}: counted ${refs.refsOfPage(id)}, named ${n} times`
  return null
}

test('an open after a clean close reads no root: the rows come without them and the page counts from the store', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-roots-'))
  try {
    await poolOfBackups(dir)
    const pool = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.is(storesOf(pool).catalog.rootsRead, 1, 'roots read by the open: the disk\'s alone, no backup\'s')
      t.is(storesOf(pool).roots.size, 0, 'no backup\'s root in memory')
      t.is(pool.list('backup').length, backups)
      // The counts taken are what every root names (counting them reads the roots now).
      t.is(sameCounts(pool, countedFromRoots(pool)), null)
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('after an unclean stop (no counts stored) the open counts every root, and the counts are theirs', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-roots-'))
  try {
    await poolOfBackups(dir)
    // An open that is never closed (its process killed): the counts it took are gone from the catalog.
    await Pool.open(path.join(dir, 'pool'), options).abandon()
    const pool = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.false(pool.countsLoaded)
      t.true(storesOf(pool).catalog.rootsRead >= backups + 1, 'every root was read to count it')
      t.is(sameCounts(pool, countedFromRoots(pool)), null)
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('the page counts are what the close stored: one damaged behind a valid checksum is taken, and verify finds it', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-roots-'))
  try {
    await poolOfBackups(dir, true)
    // The stored record (ref-counts.ts, version 2): 16 numbers, the lists' lengths the 7th to the 16th;
    // the page ids the 9th list, their counts the 10th.
    const db = new Database(path.join(dir, 'pool', 'catalog.sqlite'))
    const row = db.prepare('SELECT data FROM ref_counts').get() as { data: Buffer }
    const all = new Float64Array(new Uint8Array(row.data).buffer)
    const lengths = Array.from(all.subarray(6, 16))
    const pagesAt = 16 + lengths.slice(0, 8).reduce((a, b) => a + b, 0)
    t.true(lengths[8] > 0, 'the page counts are stored')
    const page = all[pagesAt]
    all[pagesAt + lengths[8]] += 1
    const damaged = Buffer.from(all.buffer)
    db.prepare('UPDATE ref_counts SET data = ?, sum = ?').run(damaged, crypto.createHash('sha256').update(damaged).digest('hex'))
    db.close()
    const pool = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.true(pool.countsLoaded)
      const named = countedFromRoots(pool).get(page) ?? 0
      t.is(storesOf(pool).refs.refsOfPage(page), named + 1, 'the stored count, not the roots\'')
      const report = await verifyPool(pool)
      t.false(report.ok)
      t.true(report.problems.some(p => p.includes(`map page ${page}:`)), JSON.stringify(report.problems))
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

/** One root of this pool's disk: 6 page ids at 4 bytes. */
const rootBytes = pagesPerRoot * 4

/** Backup b's own block (poolOfBackups). */
const ownBlock = (b: number): number => (b % pagesPerRoot) * pageEntries + 1 + b

async function readsOwnBlock (volume: Volume, b: number): Promise<boolean> {
  const buf = Buffer.alloc(blockBytes)
  await volume.read(buf, ownBlock(b) * blockBytes)
  return buf.equals(bytesOf(1000 + b, blockBytes))
}

test('reading from every backup keeps the roots in memory within the bound, each read again after its drop', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-roots-'))
  try {
    await poolOfBackups(dir)
    const pool = Pool.open(path.join(dir, 'pool'), { ...options, rootCacheBytesMax: 3 * rootBytes })
    try {
      const roots = storesOf(pool).roots
      for (let round = 0; round < 2; round++) {
        for (let b = 0; b < backups; b++) {
          t.true(await readsOwnBlock(pool.get('backup', `b${b}.img`), b), `b${b} reads its block`)
          t.true(roots.bytes <= 3 * rootBytes && roots.size <= 3, `${roots.size} roots, ${roots.bytes} bytes in memory`)
        }
      }
      t.true(roots.loads >= 2 * backups, `${roots.loads} loads`)
      t.true(roots.drops >= 2 * backups - 3, `${roots.drops} drops`)
      // What vdiskfs status shows of it.
      t.deepEqual(pool.rootCacheStats(), { roots: roots.size, bytes: roots.bytes, bytesMax: 3 * rootBytes, loads: roots.loads, drops: roots.drops })
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('a root a commit is writing is not dropped before its transaction: a read meanwhile sees the new root, not the catalog\'s old one', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-roots-'))
  try {
    await poolOfBackups(dir)
    let hold: Promise<void> | null = null
    let held: () => void = () => {}
    const io = { ...nodeFileIo, fdatasync: async (fd: number) => { if (hold !== null) { held(); await hold } await nodeFileIo.fdatasync(fd) } }
    const pool = Pool.open(path.join(dir, 'pool'), { ...options, io, rootCacheBytesMax: 0 })
    try {
      const b0 = pool.get('backup', 'b0.img')
      const b6 = pool.get('backup', 'b6.img') // b6's own block is in page 0 too (6 pages, 30 backups)
      t.true(await readsOwnBlock(b0, 0))
      // b0's root changed in place as repair did before pinning it (dirty; the commit writes it):
      // its page 0 is b6's now, so its reads of page 0 are b6's.
      const page = b6.map.root[0]
      const root = b0.map.root // read after b6's: reading b6's could have dropped it (the bound is 0)
      root[0] = page
      b0.map.rootDirty = true
      let release: () => void = () => {}
      hold = new Promise<void>(resolve => { release = resolve })
      const reached = new Promise<void>(resolve => { held = resolve })
      const committing = pool.commit()
      await reached // past the commit's snapshot (rootDirty cleared), before its transaction
      hold = null
      t.true(b0.map.rootWriting > 0 && !b0.map.rootDirty, 'between the snapshot and the transaction')
      for (let b = 1; b < 10; b++) await readsOwnBlock(pool.get('backup', `b${b}.img`), b) // loads that drop others
      t.true(await readsOwnBlock(b0, 6), 'b0 reads b6\'s page 0 while its commit runs')
      release()
      await committing
      for (let b = 1; b < 10; b++) await readsOwnBlock(pool.get('backup', `b${b}.img`), b)
      t.true(await readsOwnBlock(b0, 6), 'and after it, read again from the catalog')
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('a backup removed keeps its root for whoever holds it, after its row is gone', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-roots-'))
  try {
    await poolOfBackups(dir)
    const pool = Pool.open(path.join(dir, 'pool'), { ...options, rootCacheBytesMax: 0 })
    try {
      const b3 = pool.get('backup', 'b3.img')
      t.false(b3.map.rootLoaded)
      await pool.remove(b3)
      await pool.commit()
      t.is(storesOf(pool).catalog.root(b3.id), undefined, 'its row is gone')
      for (let b = 4; b < 10; b++) await readsOwnBlock(pool.get('backup', `b${b}.img`), b) // loads that drop others
      t.true(await readsOwnBlock(b3, 3), 'the removed backup\'s object still reads its block')
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('a backup root that fails its check fails that backup\'s reads with CORRUPT, not the open; verify reports it', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-roots-'))
  try {
    await poolOfBackups(dir)
    const db = new Database(path.join(dir, 'pool', 'catalog.sqlite'))
    const id = db.prepare('SELECT id FROM volumes WHERE name = ?').pluck().get('b5.img') as number
    const blob = db.prepare('SELECT root FROM roots WHERE id = ?').pluck().get(id) as Buffer
    blob[0] ^= 0xff
    db.prepare('UPDATE roots SET root = ? WHERE id = ?').run(blob, id)
    db.close()
    const logged: string[] = []
    const pool = Pool.open(path.join(dir, 'pool'), { ...options, log: m => logged.push(m) })
    try {
      const error = await t.throwsAsync(readsOwnBlock(pool.get('backup', 'b5.img'), 5))
      t.is((error as { code?: string }).code, 'CORRUPT')
      t.true(logged.some(m => m.includes('b5.img') && m.includes('damaged')), JSON.stringify(logged))
      t.true(await readsOwnBlock(pool.get('backup', 'b6.img'), 6), 'another backup reads')
      const report = await verifyPool(pool)
      t.false(report.ok)
      t.true(report.damaged.some(d => d.volume === 'b5.img' && d.startByte === 0 && d.problem.includes('root')), JSON.stringify(report.damaged))
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('gc\'s full mark, sealing\'s first pass and the space accounting read one root at a time, and give what they gave', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-roots-'))
  try {
    await poolOfBackups(dir)
    const pool = Pool.open(path.join(dir, 'pool'), { ...options, rootCacheBytesMax: 2 * rootBytes })
    try {
      const roots = storesOf(pool).roots
      const catalog = storesOf(pool).catalog
      const read = catalog.rootsRead
      // gc's full mark (no counts built: the close stored the page counts alone), yielding after every root.
      const seams = (pool as unknown as { maintenance: { seams: MarkSeams } }).maintenance.seams
      let atFirstYield = -1
      seams.sliceMs = 0
      seams.onYield = () => { if (atFirstYield < 0) atFirstYield = catalog.rootsRead - read }
      await pool.remove(pool.get('backup', 'b29.img'))
      const report = await pool.gc()
      t.is(report.pagesFreed, 0, 'b29\'s pages are the disk\'s still')
      t.true(atFirstYield >= 0 && atFirstYield < backups - 1, `roots read at the mark's first yield: ${atFirstYield}`)
      t.true(roots.size <= 2, `${roots.size} roots in memory after the mark`)
      seams.onYield = undefined
      // Sealing's first pass learns every page the roots name, a root at a time.
      await pool.learnExtentNames()
      t.true(roots.size <= 2)
      // The space accounting: every backup's figures, a root at a time.
      const reference = referenceSpace(pool).report
      const before = catalog.rootsRead
      const space = await new SpaceAccounting(pool, async () => {}).report()
      t.true(catalog.rootsRead - before >= backups - 1, `each backup's root was read: ${catalog.rootsRead - before}`)
      t.true(roots.peeks > 0, 'read for the walks and not kept')
      t.true(roots.size <= 2)
      t.deepEqual(space, reference)
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

/** Every volume's counters equal a recount from its map. */
function countersRight (pool: Pool): string | null {
  for (const volume of storesOf(pool).volumes.values()) {
    const kept = [volume.map.allocatedBlocks, volume.map.storedBytes]
    volume.map.recount()
    if (kept[0] !== volume.map.allocatedBlocks || kept[1] !== volume.map.storedBytes) return `${volume.label}: kept ${kept.join('/')}, recounted ${volume.map.allocatedBlocks}/${volume.map.storedBytes}`
  }
  return null
}

test('sealing\'s repoint reads the roots of the volumes that can name the pages it changes, not every backup\'s', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-roots-'))
  try {
    await poolOfBackups(dir)
    const pool = Pool.open(path.join(dir, 'pool'), { ...options, rootCacheBytesMax: 2 * rootBytes })
    try {
      const roots = storesOf(pool).roots
      await pool.learnExtentNames()
      // The extents every backup reads: every backup's counters change, and are right.
      await new Sealer(pool, () => {}).sealPending(true)
      t.is(countersRight(pool), null)
      // New writes and a backup: the pages they change are newer than every other backup.
      const disk = pool.get('disk', 'd.img')
      await disk.write(bytesOf(77, blockBytes), 3 * blockBytes)
      await pool.backup(disk, 'late.img')
      await pool.learnExtentNames()
      const loads = roots.loads
      await new Sealer(pool, () => {}).sealPending(true)
      t.true(roots.loads - loads <= 2, `roots read by the seal pass: ${roots.loads - loads}`)
      t.is(countersRight(pool), null)
      t.true(await readsOwnBlock(pool.get('backup', 'b0.img'), 0))
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

/**
 * gc's reference counts stored at a clean close (issue #21: the first gc after a remount in time
 * proportional to what it frees, not a full mark of the pool), and never trusted when they may be wrong:
 *
 * - After a clean close and reopen, a gc after removing 2 of 40 backups loads only their pages and
 *   frees exactly what a full mark finds unreferenced; `gc --full` agrees with the counts.
 * - A crash after the reopen (the open took the stored counts away): the next open has none, and its
 *   first gc marks in full.
 * - A catalog changed after the close (another writer: a page row rewritten, a commit's journal
 *   sequence) or stored counts that fail their checksum: not used.
 * - Delta entries over partial slots counted before the close, uncounted after the reopen before their
 *   extents' base tables were read: the chunks under them are freed once unreferenced, not before.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { MarkResult } from '../../src/volume/gc-mark'
import { pageEntries } from '../../src/limits'
import { bytesOf } from '../helpers/model'
import { storesOf } from '../helpers/stores'

interface Marks { markOnly: (full: boolean) => Promise<MarkResult> }
const marksOf = (pool: Pool): Marks => (pool as unknown as { maintenance: Marks }).maintenance
type GcFull = (liveFractionMin?: number, options?: { full?: boolean }) => Promise<{ pagesFreed: number, chunksFreed: number, extentsFreed: number, held?: string }>

/** What a full mark finds that gc left behind, or cannot reach, or null. */
async function leftOrLost (pool: Pool): Promise<string | null> {
  const full = await marksOf(pool).markOnly(true)
  if (full.held !== null) return `the full mark holds: ${full.held}`
  const catalog = storesOf(pool).catalog
  const pages = catalog.pageIds().filter(id => !full.livePages.has(id))
  const chunks = catalog.chunkIds().filter(id => !full.liveChunks.has(id))
  const writable = pool.writableExtentIds()
  const extents = catalog.extents().map(e => e.id).filter(id => !full.liveExtents.has(id) && !writable.has(id))
  if (pages.length + chunks.length + extents.length === 0) return null
  return `left unreferenced after gc: pages ${JSON.stringify(pages)}, chunks ${JSON.stringify(chunks)}, extents ${JSON.stringify(extents)}`
}

const blockBytes = 4096
const options = { workers: 1, pageCacheMax: 8 }
const pagesPerRoot = 12

/** A disk of 12 pages and 40 backups, each with one page of its own; sealed; gc ran (the counts built). */
async function fortyBackups (dir: string): Promise<void> {
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, ...options })
  try {
    const disk = await pool.createDisk('d.img')
    for (let p = 0; p < pagesPerRoot; p++) await disk.write(bytesOf(p, blockBytes), p * pageEntries * blockBytes)
    for (let b = 0; b < 40; b++) {
      await disk.write(bytesOf(1000 + b, blockBytes), (1 + b) * blockBytes)
      await pool.backup(disk, `b${b}.img`)
    }
    await new Sealer(pool, () => {}).sealPending(true)
    await pool.remove(pool.get('backup', 'b30.img'))
    await pool.gc()
  } finally {
    await pool.close()
  }
}

test('after a clean close, the first gc of the next open decides from the stored counts: it loads only what it frees', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-counts-stored-'))
  try {
    await fortyBackups(dir)
    const pool = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.true(pool.countsLoaded, 'the open took the counts the close stored')
      await pool.remove(pool.get('backup', 'b10.img'))
      await pool.remove(pool.get('backup', 'b11.img'))
      const store = storesOf(pool).pages
      const loads = store.loads
      const report = await pool.gc()
      t.is(report.pagesFreed, 2, 'the two backups\' own pages')
      // A full mark would load every live page (about 52); the counts load the freed pages.
      t.true(store.loads - loads <= 2 * pagesPerRoot, `pages loaded: ${store.loads - loads}`)
      const checked = await (pool.gc.bind(pool) as unknown as GcFull)(undefined, { full: true })
      t.is(checked.held, undefined, 'gc --full: the counts agree with a full mark')
      t.is(await leftOrLost(pool), null)
      for (const b of [0, 12, 39]) {
        const buf = Buffer.alloc(blockBytes)
        await pool.get('backup', `b${b}.img`).read(buf, (1 + b) * blockBytes)
        t.true(buf.equals(bytesOf(1000 + b, blockBytes)), `backup ${b} reads its block`)
      }
    } finally {
      await pool.close()
    }
    // Closed again after a gc from the loaded counts: stored again, and right again.
    const again = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.true(again.countsLoaded)
      await again.remove(again.get('backup', 'b12.img'))
      t.is((await again.gc()).pagesFreed, 1)
      t.is(await leftOrLost(again), null)
    } finally {
      await again.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('a crash after an open that took the stored counts leaves none: the next open marks in full', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-counts-stored-'))
  try {
    await fortyBackups(dir)
    const pool = Pool.open(path.join(dir, 'pool'), options)
    t.true(pool.countsLoaded)
    // Changes committed after the open, then a crash: the counts stored at the close are not this catalog's.
    await pool.remove(pool.get('backup', 'b5.img'))
    const disk = pool.get('disk', 'd.img')
    await disk.write(bytesOf(77, blockBytes), 3 * pageEntries * blockBytes)
    await pool.backup(disk, 'late.img')
    await pool.commit()
    await pool.abandon()
    const reopened = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.false(reopened.countsLoaded, 'no counts after a crash')
      t.false(storesOf(reopened).refs.complete)
      const report = await reopened.gc()
      t.is(report.pagesFreed, 1, 'b5\'s page, found by the full mark')
      t.is(await leftOrLost(reopened), null)
    } finally {
      await reopened.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('stored counts are not used when the catalog changed after the close, or when they fail their checksum', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-counts-stored-'))
  try {
    await fortyBackups(dir)
    const catalogFile = path.join(dir, 'pool', 'catalog.sqlite')
    // Another writer (an older vdiskfs, a tool) removed a backup's row and did not drop the counts.
    const db = new Database(catalogFile)
    t.truthy(db.prepare('SELECT 1 FROM ref_counts').get(), 'the close stored counts')
    const saved = db.prepare('SELECT fingerprint, sum, data FROM ref_counts').get() as { fingerprint: string, sum: string, data: Buffer }
    db.prepare("DELETE FROM volumes WHERE name = 'b20.img'").run()
    db.close()
    let pool = Pool.open(path.join(dir, 'pool'), options)
    t.false(pool.countsLoaded, 'a volume row gone behind the counts')
    await pool.close()
    // Counts that fail their checksum (a flipped byte), beside a catalog that matches them.
    pool = Pool.open(path.join(dir, 'pool'), options)
    await pool.gc()
    await pool.close()
    const db2 = new Database(catalogFile)
    const row = db2.prepare('SELECT fingerprint, sum, data FROM ref_counts').get() as { fingerprint: string, sum: string, data: Buffer }
    t.not(row.fingerprint, saved.fingerprint)
    const flipped = Buffer.from(row.data)
    flipped[flipped.length - 3] ^= 0x40
    db2.prepare('UPDATE ref_counts SET data = ?').run(flipped)
    db2.close()
    pool = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.false(pool.countsLoaded, 'a flipped byte')
      await pool.gc()
      t.is(await leftOrLost(pool), null, 'b20\'s page and the rest: what a full mark finds')
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

interface Freezer { freezeForSealing: (all: boolean) => Promise<void> }

test('partial slots counted before a close: the chunks under them stay until nothing references them, after a reopen', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-counts-stored-'))
  const big = 16384
  const sector = Buffer.alloc(512, 0x5a)
  const partialOf = (b: number): Buffer => { const want = Buffer.from(bytesOf(b, big)); sector.copy(want, 512); return want }
  try {
    let pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes: big, ...options })
    let disk = await pool.createDisk('d.img')
    for (let b = 0; b < 8; b++) await disk.write(bytesOf(b, big), b * big)
    await pool.backup(disk, 'sealed.img')
    await new Sealer(pool, () => {}).sealPending(true)
    // Partial slots in the disk's own page: one sector rewritten in each sealed block (the rest reads
    // from the chunk under it); their extent frozen, not sealed, so no write after the reopen opens it.
    for (let b = 0; b < 8; b++) await disk.write(sector, b * big + 512)
    await (pool as unknown as { maintenance: Freezer }).maintenance.freezeForSealing(true)
    await pool.gc()
    await pool.close()
    pool = Pool.open(path.join(dir, 'pool'), options)
    try {
      t.true(pool.countsLoaded)
      disk = pool.get('disk', 'd.img')
      // The page changes in place (the disk's epoch): its partial slots leave the counts before their
      // extent's base table was read.
      await disk.write(bytesOf(200, big), 7 * big)
      t.true(storesOf(pool).refs.pendingExtents().size > 0, 'entries over partial slots wait for their base table')
      await pool.remove(pool.get('backup', 'sealed.img'))
      await pool.gc()
      t.is(await leftOrLost(pool), null, 'the chunks under the partial slots stay: the disk reads them')
      const buf = Buffer.alloc(big)
      await disk.read(buf, 3 * big)
      t.true(buf.equals(partialOf(3)), 'the disk reads its partial slot over the chunk')
      const checked = await (pool.gc.bind(pool) as unknown as GcFull)(undefined, { full: true })
      t.is(checked.held, undefined, 'gc --full agrees')
      await pool.backup(disk, 'partial.img')
      await pool.gc()
      await pool.close()
      // Again, and this time the page that names the partial slots goes (a backup removed) before
      // anything read their extent: the decision waits for the base table, then frees the chunks.
      pool = Pool.open(path.join(dir, 'pool'), options)
      t.true(pool.countsLoaded)
      disk = pool.get('disk', 'd.img')
      for (let b = 0; b < 8; b++) await disk.write(bytesOf(300 + b, big), b * big)
      await pool.remove(pool.get('backup', 'partial.img'))
      const report = await pool.gc()
      t.true(report.chunksFreed > 0, `chunks freed: ${report.chunksFreed}`)
      t.is(await leftOrLost(pool), null)
      await disk.read(buf, 3 * big)
      t.true(buf.equals(bytesOf(303, big)))
    } finally {
      await pool.close()
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

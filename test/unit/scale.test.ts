/**
 * Issue #21's scale, as counts rather than times (bench/scale.ts has the times): what the catalog is
 * given to write per backup and per sealed extent must follow what changed, not how many volumes the
 * pool holds. Counted in catalog.log, which every commit appends to with the rows and pages it is about
 * to write (docs/FORMAT.md), on the engine directly.
 */
import test, { ExecutionContext } from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { storesOf } from '../helpers/stores'
import { Sealer } from '../../src/seal/sealer'
import { catalogLogHeaderBytes, logRecordHeaderBytes, logRecordMagic, logRecordPage, logRecordVolume } from '../../src/catalog/catalog-log'
import { catalogLogFile } from '../../src/format/pool-format'
import { catalogWalCheckpointPages, pageEntries } from '../../src/limits'

const blockBytes = 4096

/** Volume rows and map pages in catalog.log from byte `from` on, and where the log ends. */
function logRecords (dir: string, from = catalogLogHeaderBytes): { volumes: number, pages: number, end: number } {
  const log = fs.readFileSync(path.join(dir, catalogLogFile))
  // A commit may rewrite the log as a snapshot (past twice its last one): then counting from `from` is wrong.
  if (log.length < from) throw new Error('catalog.log was rewritten as a snapshot meanwhile')
  let volumes = 0
  let pages = 0
  let at = from
  while (at + logRecordHeaderBytes <= log.length && log.readUInt32LE(at) === logRecordMagic) {
    const type = log.readUInt16LE(at + 4)
    if (type === logRecordVolume) volumes++
    else if (type === logRecordPage) pages++
    at += logRecordHeaderBytes + log.readUInt32LE(at + 8)
  }
  return { volumes, pages, end: at }
}

function tempPool (t: { teardown: (f: () => void) => void }): string {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-scale-')), 'pool')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  return dir
}

test.serial('each backup writes the map pages its writes changed and two volume rows, however many backups came before', async t => {
  const dir = tempPool(t)
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 0 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(64 * pageEntries * blockBytes) // 64 map pages of address space
    for (let i = 0; i < 40; i++) {
      // Three pages changed: blocks in pages i % 64, (i + 7) % 64, (i + 30) % 64.
      for (const page of [i % 64, (i + 7) % 64, (i + 30) % 64]) await disk.write(Buffer.alloc(blockBytes, i + 1), (page * pageEntries + i) * blockBytes)
      await pool.commit()
      const before = logRecords(dir)
      await pool.backup(disk, `b${i}.img`)
      const written = logRecords(dir, before.end)
      t.is(written.pages, 0, `backup ${i}: the pages were committed before it; a backup shares them`)
      t.is(written.volumes, 2, `backup ${i}: the new backup's row and its source's (a new epoch)`)
    }
  } finally {
    await pool.close()
  }
})

test.serial('a sealed extent rewrites the rows of the volumes that read it, not every row of the pool', async t => {
  const dir = tempPool(t)
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 0 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(8 * pageEntries * blockBytes)
    for (let i = 0; i < 30; i++) {
      await disk.write(Buffer.alloc(blockBytes, i + 1), i * blockBytes)
      await pool.backup(disk, `b${i}.img`)
    }
    const sealer = new Sealer(pool, () => {})
    await sealer.sealPending(true)
    await pool.commit()
    // New blocks in the disk alone (in a page of its own: no backup reads it).
    await disk.write(Buffer.alloc(4 * blockBytes, 0x5a), 5 * pageEntries * blockBytes)
    await pool.commit()
    const before = logRecords(dir)
    const report = await sealer.sealPending(true)
    t.is(report.blocksSealed, 4)
    await pool.commit()
    const written = logRecords(dir, before.end)
    t.is(written.volumes, 1, 'only the disk reads the sealed extent')
    t.is(written.pages, 1, 'one page repointed')
    const back = Buffer.alloc(4 * blockBytes)
    await disk.read(back, 5 * pageEntries * blockBytes)
    t.true(back.equals(Buffer.alloc(4 * blockBytes, 0x5a)))
    for (let i = 0; i < 30; i++) {
      const b = pool.get('backup', `b${i}.img`)
      const block = Buffer.alloc(blockBytes)
      await b.read(block, i * blockBytes)
      t.true(block.equals(Buffer.alloc(blockBytes, i + 1)), `backup ${i} reads its block`)
    }
  } finally {
    await pool.close()
  }
})

test.serial('sealing an extent loads from the catalog only the map pages that name it, not every page of every backup', async t => {
  const dir = tempPool(t)
  // A cache of 4 pages: every page the walk needs beyond that is a load from the catalog.
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 0, pageCacheMax: 4 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(64 * pageEntries * blockBytes)
    // 40 backups, each after a block written in a page of its own: 40 pages, each read by some backups.
    for (let i = 0; i < 40; i++) {
      await disk.write(Buffer.alloc(blockBytes, i + 1), (i * pageEntries + i) * blockBytes)
      await pool.backup(disk, `b${i}.img`)
    }
    const sealer = new Sealer(pool, () => {})
    await sealer.sealPending(true)
    await pool.commit()
    // One more extent: a block in page 50, which no backup reads.
    await disk.write(Buffer.alloc(blockBytes, 0x77), (50 * pageEntries + 3) * blockBytes)
    await pool.commit()
    const loadsBefore = storesOf(pool).pages.loads
    const report = await sealer.sealPending(true)
    t.is(report.blocksSealed, 1)
    const loads = storesOf(pool).pages.loads - loadsBefore
    t.true(loads <= 2, `pages loaded from the catalog to seal one block in one page: ${loads}`)
    const back = Buffer.alloc(blockBytes)
    await disk.read(back, (50 * pageEntries + 3) * blockBytes)
    t.true(back.equals(Buffer.alloc(blockBytes, 0x77)))
    for (let i = 0; i < 40; i++) {
      await pool.get('backup', `b${i}.img`).read(back, (i * pageEntries + i) * blockBytes)
      t.true(back.equals(Buffer.alloc(blockBytes, i + 1)), `backup ${i} reads its block`)
    }
  } finally {
    await pool.close()
  }
})

test.serial('a sealing pass writes each map page once, however many of the extents it seals the page names (a chain of clones copies its pages)', async t => {
  const dir = tempPool(t)
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 0 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(4 * pageEntries * blockBytes)
    await disk.write(Buffer.alloc(blockBytes, 0xee), 0)
    // Clone of a backup of a clone ..., each clone writing one block of page 0: clone k's copy of page
    // 0 names the extents of clones 1..k, so the extent of clone 1 is named by 20 pages.
    let source = disk
    const depth = 20
    for (let k = 1; k <= depth; k++) {
      const backup = await pool.backup(source, `chain${k}.img`)
      const clone = await pool.clone(backup, `c${k}.img`)
      await clone.write(Buffer.alloc(blockBytes, k), k * blockBytes)
      source = clone
    }
    await pool.commit()
    const before = storesOf(pool).pages.written
    const report = await new Sealer(pool, () => {}).sealPending(true)
    t.is(report.blocksSealed, depth + 1)
    await pool.commit()
    const written = storesOf(pool).pages.written - before
    // Pages naming a sealed extent: page 0 of the disk and of each clone, written once each.
    t.true(written <= depth + 1, `map pages written by the pass: ${written}`)
    for (let k = 1; k <= depth; k++) {
      const clone = pool.get('clone', `c${k}.img`)
      const back = Buffer.alloc(blockBytes)
      for (let j = 0; j <= depth; j++) {
        await clone.read(back, j * blockBytes)
        t.true(back.equals(j === 0 ? Buffer.alloc(blockBytes, 0xee) : j <= k ? Buffer.alloc(blockBytes, j) : Buffer.alloc(blockBytes)), `clone ${k} block ${j}`)
      }
    }
  } finally {
    await pool.close()
  }
})

test.serial('a reopened pool learns which extents its pages name before a seal pass, not in the seal\'s one-step walk', async t => {
  const dir = tempPool(t)
  let pool = Pool.open(dir, { create: true, blockBytes, workers: 0, pageCacheMax: 4 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(64 * pageEntries * blockBytes)
    for (let i = 0; i < 40; i++) {
      await disk.write(Buffer.alloc(blockBytes, i + 1), (i * pageEntries + i) * blockBytes)
      await pool.backup(disk, `b${i}.img`)
    }
    await new Sealer(pool, () => {}).sealPending(true)
    await pool.close()
    // A new process knows nothing of its pages: one block to seal in page 50.
    // eslint-disable-next-line require-atomic-updates -- the test's own pool, closed just above; nothing else uses it
    pool = Pool.open(dir, { blockBytes, workers: 0, pageCacheMax: 4 })
    await pool.get('disk', 'd.img').write(Buffer.alloc(blockBytes, 0x77), (50 * pageEntries + 3) * blockBytes)
    await pool.commit()
    const before = storesOf(pool).pages.loads
    await pool.exclusive(async () => { await pool.learnExtentNames() })
    const learnt = storesOf(pool).pages.loads - before
    t.true(learnt >= 40, `the learning step loaded the distinct pages: ${learnt}`)
    const sealing = storesOf(pool).pages.loads
    const report = await new Sealer(pool, () => {}).sealPending(true)
    t.is(report.blocksSealed, 1)
    const loads = storesOf(pool).pages.loads - sealing
    t.true(loads <= 2, `the seal pass after it loaded only the page it repoints: ${loads}`)
    const back = Buffer.alloc(blockBytes)
    await pool.get('disk', 'd.img').read(back, (50 * pageEntries + 3) * blockBytes)
    t.true(back.equals(Buffer.alloc(blockBytes, 0x77)))
  } finally {
    await pool.close()
  }
})

test.serial('sealing an extent reads at most three root entries per volume for each page it names (whether the volume reads it, at the page\'s root index), not every volume\'s whole root, and a later pass walks no root', async t => {
  const dir = tempPool(t)
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 0, pageCacheMax: 8 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(64 * pageEntries * blockBytes)
    // 60 backups, each after a block written in one of 60 pages: dense roots of up to 60 page ids.
    for (let i = 0; i < 60; i++) {
      await disk.write(Buffer.alloc(blockBytes, i + 1), (i * pageEntries + i) * blockBytes)
      await pool.backup(disk, `b${i}.img`)
    }
    const sealer = new Sealer(pool, () => {})
    await sealer.sealPending(true)
    // One block in page 62 (no backup read it before), then a backup: the page is the disk's and the
    // new backup's, and sealing its extent changes both volumes' stored bytes.
    await disk.write(Buffer.alloc(blockBytes, 0x42), (62 * pageEntries + 7) * blockBytes)
    const last = await pool.backup(disk, 'last.img')
    await pool.commit()
    const stores = storesOf(pool)
    const volumes = pool.list().length
    const before = stores.pages.rootEntriesRead
    const report = await sealer.sealPending(true)
    t.is(report.blocksSealed, 1)
    const read = stores.pages.rootEntriesRead - before
    // Before the index (issue #21): 15,872, four walks of every root (learning, the slots, repoint, the counters).
    t.true(read <= 3 * volumes, `root entries read to seal one block in one page, ${volumes} volumes: ${read}`)
    // The counters of both readers followed the repoint, and no other volume's did.
    for (const volume of pool.list()) {
      let stored = 0
      volume.map.forEachEntry((_block, entry) => { stored += stores.sizeOf(entry) })
      t.is(volume.storedBytes, stored, `${volume.label}: stored bytes after the seal`)
    }
    t.true(disk.storedBytes < 61 * blockBytes && last.storedBytes === disk.storedBytes)
    const back = Buffer.alloc(blockBytes)
    await last.read(back, (62 * pageEntries + 7) * blockBytes)
    t.true(back.equals(Buffer.alloc(blockBytes, 0x42)))
  } finally {
    await pool.close()
  }
})

/** Bytes SQLite writes to the catalog's WAL while `work` runs (no checkpoint meanwhile). */
async function walBytesOf (pool: Pool, dir: string, work: () => Promise<unknown>): Promise<number> {
  const catalog = storesOf(pool).catalog
  const db = (catalog as unknown as { db: { pragma: (s: string) => unknown } }).db
  catalog.walCheckpointPages = 0
  db.pragma('wal_autocheckpoint = 0')
  db.pragma('wal_checkpoint(TRUNCATE)')
  try {
    await work()
    return fs.statSync(path.join(dir, 'catalog.sqlite-wal')).size
  } finally {
    catalog.walCheckpointPages = catalogWalCheckpointPages
    db.pragma(`wal_autocheckpoint = ${4 * catalogWalCheckpointPages}`)
  }
}

test.serial('a sealed page read by 40 backups of a big disk rewrites their rows\' counters, not their roots', async t => {
  // 4,096 pages of address space: a 32 KiB root per volume, as a 1 TiB disk at 64 KiB blocks has
  // (issue #21: SQLite rewrote every such row whole, root included, for its counters: 40 x 32 KiB).
  const dir = tempPool(t)
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 0 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(4096 * pageEntries * blockBytes)
    await disk.write(Buffer.alloc(4 * blockBytes, 0x33), 7 * pageEntries * blockBytes)
    // 40 backups that all read that page.
    for (let i = 0; i < 40; i++) await pool.backup(disk, `b${i}.img`)
    await pool.commit()
    const sealer = new Sealer(pool, () => {})
    const before = logRecords(dir)
    const wal = await walBytesOf(pool, dir, async () => { await sealer.sealPending(true); await pool.commit() })
    const written = logRecords(dir, before.end)
    t.true(written.volumes >= 40, `rows written: ${written.volumes} (their counters changed)`)
    // A root is 32 KiB: 40 of them would be 1.3 MB. The rows, the page and the chunks' rows fit in
    // far less (a WAL frame is a 4 KiB page).
    t.true(wal < 40 * 32768 / 2, `catalog WAL bytes for the seal: ${wal}`)
    const block = Buffer.alloc(blockBytes)
    await pool.get('backup', 'b17.img').read(block, 7 * pageEntries * blockBytes)
    t.true(block.equals(Buffer.alloc(blockBytes, 0x33)))
  } finally {
    await pool.close()
  }
  // And after a reopen every root reads back.
  const reopened = Pool.open(dir, { workers: 0 })
  try {
    const block = Buffer.alloc(blockBytes)
    await reopened.get('backup', 'b39.img').read(block, 7 * pageEntries * blockBytes + 3 * blockBytes)
    t.true(block.equals(Buffer.alloc(blockBytes, 0x33)))
  } finally {
    await reopened.close()
  }
})

test.serial('a backup of a 1 TiB disk holds its root in memory, not a block-sized buffer of its own', async t => {
  // issue #21: at 10,000 backups the daemon's memory is what each volume holds. A root of a 1 TiB disk
  // at 64 KiB blocks is 32 KiB; each volume also held a zero block of its own (64 KiB).
  const v8 = await import('node:v8')
  const vm = await import('node:vm')
  v8.setFlagsFromString('--expose_gc')
  const collect = vm.runInNewContext('gc') as () => void
  // Array buffers' memory goes back after a collection, not in it: collect until it settles.
  const gc = async (): Promise<void> => { for (let i = 0; i < 4; i++) { collect(); await new Promise(resolve => setTimeout(resolve, 20)) } }
  const dir = tempPool(t)
  const big = 64 * 1024
  const pool = Pool.open(dir, { create: true, blockBytes: big, workers: 0 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(1024 ** 4)
    await disk.write(Buffer.alloc(big, 1), 0)
    await pool.backup(disk, 'b0.img')
    await gc()
    const before = process.memoryUsage().arrayBuffers
    for (let i = 1; i <= 200; i++) await pool.backup(disk, `b${i}.img`)
    await gc()
    const perBackup = (process.memoryUsage().arrayBuffers - before) / 200
    t.true(perBackup < 40 * 1024, `array buffer bytes per backup: ${Math.round(perBackup)} (its root: 32,768)`)
  } finally {
    await pool.close()
  }
})

test.serial('a backup\'s root holds 4 bytes a page while its page ids fit 32 bits, made and after a reopen (block-map.test: an id past 2^32 widens it)', async t => {
  // issue #21: at 10,000 backups of a 1 TiB disk the roots were 320 MiB of the daemon (8 bytes a page id).
  const v8 = await import('node:v8')
  const vm = await import('node:vm')
  v8.setFlagsFromString('--expose_gc')
  const collect = vm.runInNewContext('gc') as () => void
  const gc = async (): Promise<void> => { for (let i = 0; i < 4; i++) { collect(); await new Promise(resolve => setTimeout(resolve, 20)) } }
  const dir = tempPool(t)
  const big = 64 * 1024
  const pages = 4096 // 1 TiB at 64 KiB blocks
  let pool = Pool.open(dir, { create: true, blockBytes: big, workers: 0 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(1024 ** 4)
    for (let p = 0; p < pages; p += 64) await disk.write(Buffer.alloc(512, p % 251 + 1), p * pageEntries * big)
    await pool.backup(disk, 'b0.img')
    await gc()
    const before = process.memoryUsage().arrayBuffers
    for (let i = 1; i <= 100; i++) await pool.backup(disk, `b${i}.img`)
    await gc()
    const perBackup = (process.memoryUsage().arrayBuffers - before) / 100
    t.true(perBackup < 20 * 1024, `array buffer bytes per backup: ${Math.round(perBackup)} (its root: 16,384 at 4 bytes an id)`)
    t.is(pool.get('backup', 'b7.img').map.root.BYTES_PER_ELEMENT, 4)
    await pool.close()
    pool = Pool.open(dir, { workers: 0 })
    for (const backup of pool.list('backup')) {
      t.is(backup.map.root.length, pages)
      t.is(backup.map.root.byteLength, 4 * pages, `${backup.name}: read back at 4 bytes an id`)
    }
    // A clone of a backup and a backup of the clone, after a write into the clone: compact, and right.
    const clone = await pool.clone(pool.get('backup', 'b3.img'), 'c.img')
    t.is(clone.map.root.BYTES_PER_ELEMENT, 4)
    await clone.write(Buffer.alloc(512, 0xc1), 64 * pageEntries * big + 4096)
    await pool.backup(clone, 'bc.img')
    await pool.close()
    pool = Pool.open(dir, { workers: 0 })
    for (const volume of [pool.get('clone', 'c.img'), pool.get('backup', 'bc.img')]) {
      t.is(volume.map.root.BYTES_PER_ELEMENT, 4, volume.name)
      const read = Buffer.alloc(1024)
      await volume.read(read, 64 * pageEntries * big + 4096 - 512)
      t.deepEqual(read.subarray(0, 512), Buffer.alloc(512), `${volume.name}: the bytes before the write are the disk's (a hole there)`)
      t.deepEqual(read.subarray(512), Buffer.alloc(512, 0xc1), `${volume.name}: the clone's write`)
      const head = Buffer.alloc(512)
      await volume.read(head, 64 * pageEntries * big)
      t.deepEqual(head, Buffer.alloc(512, 64 % 251 + 1), `${volume.name}: the disk's write before the backup`)
    }
  } finally {
    await pool.close()
  }
})

test.serial('sealing keeps at most chunkCacheMax chunk rows in memory, however many chunks it indexed', async t => {
  // issue #21: at 10,000 backups of the scale bench (64 chunks sealed per backup) every chunk sealing
  // indexed stayed in the row cache (about 280 bytes each, 640,000 of them): the cache's bound was
  // kept by info() and remember(), not by index().
  const dir = tempPool(t)
  const chunkCacheMax = 16
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 0, chunkCacheMax })
  try {
    const disk = await pool.createDisk('d.img')
    for (let round = 0; round < 4; round++) {
      for (let b = 0; b < 40; b++) await disk.write(Buffer.alloc(blockBytes, `round ${round} block ${b} `), (round * 40 + b) * blockBytes)
      await pool.backup(disk, `b${round}.img`)
      await new Sealer(pool, () => {}).sealPending(true)
    }
    const cache = (storesOf(pool).chunks as unknown as { cache: Map<number, unknown> }).cache
    t.true(storesOf(pool).catalog.chunkIds().length >= 160, 'the rounds sealed 160 chunks')
    t.true(cache.size <= chunkCacheMax, `chunk rows in memory: ${cache.size} (bound ${chunkCacheMax})`)
    const buf = Buffer.alloc(blockBytes)
    await pool.get('backup', 'b0.img').read(buf, 3 * blockBytes)
    t.true(buf.equals(Buffer.alloc(blockBytes, 'round 0 block 3 ')), 'a chunk read back through the bounded cache')
    t.true(cache.size <= chunkCacheMax)
    // du and info ask the stored size of every chunk a map names: known without the rows (a catalog
    // query per chunk past the bound took du from 10 s to 125 s at 10,000 backups).
    const catalog = storesOf(pool).catalog
    const chunkRow = catalog.chunk.bind(catalog)
    let queries = 0
    catalog.chunk = (id: number) => { queries++; return chunkRow(id) }
    const ids = catalog.chunkIds()
    const sizes = ids.map(id => storesOf(pool).chunks.storedBytes(id))
    t.true(sizes.every(n => n > 0))
    t.is(queries, 0, `catalog queries for the stored sizes of ${ids.length} chunks`)
  } finally {
    await pool.close()
  }
})

/** A new catalog in a temporary directory (removed after the test), and its WAL's size. */
async function walCatalog (t: ExecutionContext): Promise<{ catalog: import('../../src/catalog/catalog').Catalog, walBytes: () => number }> {
  const { Catalog } = await import('../../src/catalog/catalog')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-wal-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'catalog.sqlite')
  return { catalog: Catalog.open(file, true), walBytes: () => fs.statSync(`${file}-wal`).size }
}

test.serial('the catalog\'s WAL is checkpointed after the transaction that crossed the mark, in the next turn, not inside it; it stays about a MiB', async t => {
  // issue #21: a backup whose commit crossed SQLite's autocheckpoint mark paid the checkpoint (copying
  // the WAL into the catalog, its fsync) inside its transaction.
  const { catalog, walBytes } = await walCatalog(t)
  const page = Buffer.alloc(33 * 1024, 7)
  try {
    let most = 0
    for (let i = 1; i <= 200; i++) {
      const before = catalog.checkpoints.count
      catalog.transaction(() => catalog.putPage(i, 1, page))
      t.is(catalog.checkpoints.count, before, 'no checkpoint inside the transaction\'s turn')
      most = Math.max(most, walBytes())
      await new Promise(resolve => setImmediate(resolve))
    }
    t.true(catalog.checkpoints.count >= 5, `checkpoints after the transactions: ${catalog.checkpoints.count} (6.6 MB written, 256 frames of 4 KiB each)`)
    t.true(most < 2 * 1024 * 1024, `the WAL's largest size: ${most} bytes`)
  } finally {
    catalog.close()
  }
})

test.serial('after an unsynced transaction (a commit\'s), the WAL is checkpointed once its sync is done, never on the event loop before it, not even past SQLite\'s own mark', async t => {
  // issue #20: a commit appends its transaction unsynced and fdatasyncs the WAL in the thread pool; a
  // checkpoint on the event loop before that sync made SQLite fsync the WAL there itself (4-22 ms at a
  // time under 4k random writes, strace of the main thread), and a commit of more frames than SQLite's
  // own mark (4 x catalogWalCheckpointPages) checkpointed inside its transaction.
  const { catalog, walBytes } = await walCatalog(t)
  const page = Buffer.alloc(33 * 1024, 7)
  try {
    const turn = async (): Promise<void> => await new Promise(resolve => setImmediate(resolve))
    let id = 0
    for (const pages of [80, 400]) { // 80 x 9 frames: past the mark; 400 x 9: past SQLite's own (4 x 256)
      const before = catalog.checkpoints.count
      const first = id + 1
      id += pages
      catalog.transactionUnsynced(() => { for (let i = 0; i < pages; i++) catalog.putPage(first + i, 1, page) })
      const written = walBytes()
      t.true(written > pages * 33 * 1024, `the WAL holds the transaction: ${written} bytes`)
      await turn()
      await turn()
      t.is(catalog.checkpoints.count, before, `${pages} pages: no checkpoint before the WAL's sync`)
      t.is(walBytes(), written, `${pages} pages: the WAL is as the transaction left it until its sync`)
      let syncs = 0
      await catalog.syncWal(async fd => { syncs++; await new Promise<void>((resolve, reject) => fs.fdatasync(fd, err => err === null ? resolve() : reject(err))) })
      t.is(syncs, 1)
      await turn()
      t.is(catalog.checkpoints.count, before + 1, `${pages} pages: one checkpoint after the sync`)
    }
  } finally {
    catalog.close()
  }
})

/**
 * Map roots stored paged and shared (issue #21, catalog/root-pieces.ts): a backup of a 1 TiB disk
 * costs the catalog and catalog.log the root pieces its disk changed and two short lists, not two
 * 32 KiB roots; the pieces' reference counts follow the lists through removals, so exactly the pieces
 * no list names are deleted; a damaged piece is damage (CORRUPT, verify, repair from catalog.log);
 * a lost catalog comes back from a log of lists and pieces; a schema 5 catalog's dense roots are
 * made lists at the upgrade, and read back the same.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import zlib from 'node:zlib'
import Database from 'better-sqlite3'
import { Pool } from '../../src/volume/pool'
import { Volume } from '../../src/volume/volume'
import { verifyPool } from '../../src/inspect/verify'
import { repairPool } from '../../src/inspect/repair'
import { replayCatalogLog } from '../../src/catalog/catalog-log'
import { assembleRoot, decodeRootList, isRootList, listedPieces } from '../../src/catalog/root-pieces'
import { storesOf } from '../helpers/stores'
import { bytesOf } from '../helpers/model'

const tib = 2 ** 40
const blockBytes = 65536
/** Bytes of the disk one map page covers (4,096 blocks). */
const pageSpan = 4096 * blockBytes
const denseRootBytes = 4096 * 8 + 8

function dbOf (pool: Pool): Database.Database {
  return (storesOf(pool).catalog as unknown as { db: Database.Database }).db
}

function hasTable (db: Database.Database, name: string): boolean {
  return (db.prepare('SELECT COUNT(*) FROM sqlite_master WHERE name = ?').pluck().get(name) as number) > 0
}

/** The catalog's bytes of stored roots: every roots row, and every piece. */
function storedRootBytes (db: Database.Database): number {
  const roots = db.prepare('SELECT COALESCE(SUM(length(root)), 0) FROM roots').pluck().get() as number
  return roots + (hasTable(db, 'root_pieces') ? db.prepare('SELECT COALESCE(SUM(length(ids)), 0) FROM root_pieces').pluck().get() as number : 0)
}

/** Bytes of catalog.log's records from `from` to its end, those of map pages (type 2) and the others. */
function logRecordBytes (file: string, from: number): { pages: number, other: number } {
  const bytes = fs.readFileSync(file)
  const out = { pages: 0, other: 0 }
  for (let at = from; at + 16 <= bytes.length;) {
    const length = 16 + bytes.readUInt32LE(at + 8)
    if (bytes.readUInt16LE(at + 4) === 2) out.pages += length
    else out.other += length
    at += length
  }
  return out
}

/** Writes two blocks in each of the given map pages of `disk`. */
async function writePages (disk: Volume, pages: number[], seed: number): Promise<void> {
  for (const p of pages) {
    await disk.write(bytesOf(seed + p, 4096), p * pageSpan + (seed % 7) * blockBytes)
    await disk.write(bytesOf(seed + p + 1, 4096), p * pageSpan + 4000 * blockBytes)
  }
}

async function readAt (volume: Volume, position: number): Promise<Buffer> {
  const out = Buffer.alloc(4096)
  await volume.read(out, position)
  return out
}

/** Each volume's root ids, by name. */
function rootsOf (pool: Pool): Map<string, number[]> {
  return new Map(pool.list().map(v => [`${v.kind}/${v.name}`, Array.from(v.map.root)]))
}

/** The pieces stored, and those the lists name with how many times, checked equal (and the counts stored). */
function checkPieces (t: import('ava').ExecutionContext, db: Database.Database, catalogProblems: string[]): void {
  const named = new Map<string, number>()
  for (const row of db.prepare('SELECT id, root FROM roots').all() as Array<{ id: number, root: Buffer }>) {
    t.true(isRootList(row.root), `volume ${row.id}'s root is a list`)
    for (const hash of listedPieces(decodeRootList(row.root, row.id))) named.set(hash.toString('hex'), (named.get(hash.toString('hex')) ?? 0) + 1)
  }
  const stored = (db.prepare('SELECT hash FROM root_pieces').pluck().all() as Buffer[]).map(h => h.toString('hex')).sort()
  t.deepEqual(stored, [...named.keys()].sort(), 'the pieces stored are exactly those the lists name')
  const refs = (db.prepare('SELECT hash, refs FROM root_piece_refs').all() as Array<{ hash: Buffer, refs: number }>).map(r => [r.hash.toString('hex'), r.refs])
  t.deepEqual(refs.sort(), [...named.entries()].sort(), 'each piece counts the lists naming it')
  t.deepEqual(catalogProblems, [])
}

async function tempPool (work: (dir: string) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-root-pieces-'))
  try { await work(path.join(dir, 'pool')) } finally { fs.rmSync(dir, { recursive: true, force: true }) }
}

test('a backup of a 1 TiB disk after writes in two map pages costs the catalog and catalog.log the pieces that changed, not 32 KiB roots', async t => {
  await tempPool(async dir => {
    const pool = Pool.open(dir, { create: true, workers: 1 })
    try {
      const disk = await pool.createDisk('d.img')
      await disk.truncate(tib)
      await writePages(disk, [0, 2048], 1)
      await pool.backup(disk, 'b0.img')
      const db = dbOf(pool)
      const log = path.join(dir, 'catalog.log')
      const backups = 10
      for (let i = 1; i <= backups; i++) {
        const rootsBefore = storedRootBytes(db)
        const logBefore = fs.statSync(log).size
        // Two pages changed (each a copy of the page the last backup shares): two pieces at most.
        const pages = [(i * 257) % 4096, (i * 257 + 1111) % 4096]
        await writePages(disk, pages, i * 10)
        await pool.backup(disk, `b${i}.img`)
        const rootsGrowth = storedRootBytes(db) - rootsBefore
        const logGrowth = logRecordBytes(log, logBefore)
        t.log(`backup ${i}: roots +${rootsGrowth} bytes in the catalog; catalog.log +${logGrowth.pages} bytes of map pages, +${logGrowth.other} of the rest`)
        // Two pieces of 2 KiB and the backup's list (540 bytes at 1 TiB); the disk's list is replaced.
        t.true(rootsGrowth <= 2 * 2048 + 1024, `the catalog's roots grew ${rootsGrowth} bytes (a dense root is ${denseRootBytes})`)
        // Besides the pages: two pieces (2,084 bytes each and their record), the two rows with their lists, the meta.
        t.true(logGrowth.other <= 2 * 2100 + 2 * 2048 + 512, `catalog.log grew ${logGrowth.other} bytes besides the pages (two dense roots in base64 are ${2 * Math.ceil(denseRootBytes / 3) * 4})`)
      }
      const before = rootsOf(pool)
      await pool.close()
      const again = Pool.open(dir, { workers: 1 })
      try {
        t.deepEqual(rootsOf(again), before, 'every root reads back the same after a reopen')
        t.true((await verifyPool(again)).ok)
      } finally { await again.close() }
    } finally { await pool.close().catch(() => {}) }
  })
})

test('removing backups and the disk deletes exactly the pieces no list names; the rest read back the same after a reopen', async t => {
  await tempPool(async dir => {
    let pool = Pool.open(dir, { create: true, workers: 1 })
    try {
      const disk = await pool.createDisk('d.img')
      await disk.truncate(tib)
      const backups: Volume[] = []
      for (let i = 0; i < 8; i++) {
        await writePages(disk, [(i * 300) % 4096, 3000 + i], i)
        backups.push(await pool.backup(disk, `b${i}.img`))
      }
      checkPieces(t, dbOf(pool), storesOf(pool).catalog.rootPieceProblems())
      const pieces = dbOf(pool).prepare('SELECT COUNT(*) FROM root_pieces').pluck().get() as number
      t.true(pieces < 9 * 16 / 2, `${pieces} pieces for 9 roots of 16 pieces`)
      for (const b of [backups[1], backups[3], backups[4]]) await pool.remove(b)
      await pool.commit()
      checkPieces(t, dbOf(pool), storesOf(pool).catalog.rootPieceProblems())
      await pool.remove(disk)
      await pool.commit()
      checkPieces(t, dbOf(pool), storesOf(pool).catalog.rootPieceProblems())
      const before = rootsOf(pool)
      await pool.close()
      pool = Pool.open(dir, { workers: 1 })
      t.deepEqual(rootsOf(pool), before)
      checkPieces(t, dbOf(pool), storesOf(pool).catalog.rootPieceProblems())
      for (const v of pool.list()) await pool.remove(v)
      await pool.commit()
      t.is(dbOf(pool).prepare('SELECT COUNT(*) FROM root_pieces').pluck().get() as number, 0)
      t.is(dbOf(pool).prepare('SELECT COUNT(*) FROM root_piece_refs').pluck().get() as number, 0)
    } finally { await pool.close().catch(() => {}) }
  })
})

test('a damaged piece reads as CORRUPT for the backups naming it, verify reports it, and repair takes it from catalog.log', async t => {
  await tempPool(async dir => {
    let pool = Pool.open(dir, { create: true, workers: 1 })
    let before: Map<string, number[]>
    let damagedHash: Buffer
    try {
      const disk = await pool.createDisk('d.img')
      await disk.truncate(tib)
      await writePages(disk, [5], 1)
      await pool.backup(disk, 'old.img')
      await writePages(disk, [5], 2)
      await pool.backup(disk, 'new.img')
      await writePages(disk, [5], 3)
      await pool.commit()
      before = rootsOf(pool)
      // The piece holding page 5 in old.img's root: its alone (new.img and the disk hold newer pages 5).
      const db = dbOf(pool)
      const id = pool.list().find(v => v.name === 'old.img')!.id
      damagedHash = listedPieces(decodeRootList(db.prepare('SELECT root FROM roots WHERE id = ?').pluck().get(id) as Buffer, id))[0]
      t.is((db.prepare('SELECT refs FROM root_piece_refs WHERE hash = ?').pluck().get(damagedHash) as number), 1)
    } finally { await pool.close() }
    const raw = new Database(path.join(dir, 'catalog.sqlite'))
    const ids = raw.prepare('SELECT ids FROM root_pieces WHERE hash = ?').pluck().get(damagedHash) as Buffer
    ids[41] ^= 0x10
    raw.prepare('UPDATE root_pieces SET ids = ? WHERE hash = ?').run(ids, damagedHash)
    raw.close()
    pool = Pool.open(dir, { workers: 1 })
    try {
      const old = pool.list().find(v => v.name === 'old.img')!
      await t.throwsAsync(readAt(old, 5 * pageSpan), { message: /map root is damaged.*fails its hash/ })
      t.deepEqual(Array.from(pool.list().find(v => v.name === 'new.img')!.map.root), before.get('backup/new.img'))
      const report = await verifyPool(pool)
      t.false(report.ok)
      t.true(report.problems.some(p => /root piece .* fails its hash/.test(p)), report.problems.join('; '))
      t.deepEqual(report.damaged.map(d => d.volume), ['old.img'])
    } finally { await pool.close() }
    const repaired = await repairPool(dir)
    t.is(repaired.rootsRepaired, 1)
    t.true(repaired.after.ok, JSON.stringify(repaired.after))
    pool = Pool.open(dir, { workers: 1 })
    try {
      t.deepEqual(rootsOf(pool), before)
      t.deepEqual(await readAt(pool.list().find(v => v.name === 'old.img')!, 5 * pageSpan + blockBytes), bytesOf(1 + 5, 4096))
      checkPieces(t, dbOf(pool), storesOf(pool).catalog.rootPieceProblems())
    } finally { await pool.close() }
  })
})

test('a lost catalog comes back from catalog.log\'s lists and pieces, every root the same', async t => {
  await tempPool(async dir => {
    let pool = Pool.open(dir, { create: true, workers: 1 })
    let before: Map<string, number[]>
    try {
      const disk = await pool.createDisk('d.img')
      await disk.truncate(tib)
      for (let i = 0; i < 6; i++) {
        await writePages(disk, [(i * 700) % 4096, 4095 - i], i)
        await pool.backup(disk, `b${i}.img`)
      }
      await pool.remove(pool.list().find(v => v.name === 'b2.img')!)
      await writePages(disk, [17], 99)
      await pool.commit()
      before = rootsOf(pool)
    } finally { await pool.close() }
    for (const f of fs.readdirSync(dir)) if (f.startsWith('catalog.sqlite')) fs.rmSync(path.join(dir, f))
    const repaired = await repairPool(dir)
    t.is(repaired.volumesRestored, 6)
    t.true(repaired.after.ok, JSON.stringify(repaired.after))
    pool = Pool.open(dir, { workers: 1 })
    try {
      t.deepEqual(rootsOf(pool), before)
      checkPieces(t, dbOf(pool), storesOf(pool).catalog.rootPieceProblems())
      t.deepEqual(await readAt(pool.list().find(v => v.name === 'b4.img')!, 2800 * pageSpan + 4 * blockBytes), bytesOf(4 + 2800, 4096))
    } finally { await pool.close() }
  })
})

test('a schema 5 catalog\'s dense roots are made lists of shared pieces at the upgrade, read back the same, and catalog.log is rewritten with them', async t => {
  await tempPool(async dir => {
    let pool = Pool.open(dir, { create: true, workers: 1 })
    let before: Map<string, number[]>
    try {
      const disk = await pool.createDisk('d.img')
      await disk.truncate(tib)
      for (let i = 0; i < 5; i++) {
        await writePages(disk, [i * 500, 4000], i)
        await pool.backup(disk, `b${i}.img`)
      }
      before = rootsOf(pool)
    } finally { await pool.close() }
    // Back to what schema 5 had: dense roots, no pieces; the log from before (it names no pieces).
    const raw = new Database(path.join(dir, 'catalog.sqlite'))
    const piece = raw.prepare('SELECT ids FROM root_pieces WHERE hash = ?').pluck()
    for (const row of raw.prepare('SELECT id, root FROM roots').all() as Array<{ id: number, root: Buffer }>) {
      raw.prepare('UPDATE roots SET root = ? WHERE id = ?').run(assembleRoot(decodeRootList(row.root, row.id), hash => piece.get(hash) as Buffer | undefined), row.id)
    }
    raw.exec("DROP TABLE root_pieces; DROP TABLE root_piece_refs; DELETE FROM meta WHERE key = 'log_root_pieces'; UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    t.is(raw.prepare('SELECT SUM(length(root)) FROM roots').pluck().get() as number, 6 * denseRootBytes)
    raw.close()
    pool = Pool.open(dir, { workers: 1 })
    try {
      const upgrade = storesOf(pool).catalog.rootsMigration
      t.is(upgrade?.roots, 6)
      t.true(upgrade!.bytesAfter < upgrade!.bytesBefore / 5, JSON.stringify(upgrade))
      t.deepEqual(rootsOf(pool), before)
      checkPieces(t, dbOf(pool), storesOf(pool).catalog.rootPieceProblems())
      await writePages(pool.list().find(v => v.name === 'd.img')!, [3], 50)
      await pool.backup(pool.list().find(v => v.name === 'd.img')!, 'after.img')
      before = rootsOf(pool)
      t.true((await verifyPool(pool)).ok)
    } finally { await pool.close() }
    // The first commit rewrote catalog.log with the lists and every piece: it alone rebuilds the catalog.
    for (const f of fs.readdirSync(dir)) if (f.startsWith('catalog.sqlite')) fs.rmSync(path.join(dir, f))
    const repaired = await repairPool(dir)
    t.is(repaired.volumesRestored, 7)
    t.true(repaired.after.ok, JSON.stringify(repaired.after))
    pool = Pool.open(dir, { workers: 1 })
    try { t.deepEqual(rootsOf(pool), before) } finally { await pool.close() }
  })
})

test('a damaged list reads as CORRUPT, verify reports it, and repair takes the root from catalog.log and sets the counts from the lists', async t => {
  await tempPool(async dir => {
    let pool = Pool.open(dir, { create: true, workers: 1 })
    let before: Map<string, number[]>
    try {
      const disk = await pool.createDisk('d.img')
      await disk.truncate(tib)
      for (let i = 0; i < 3; i++) {
        await writePages(disk, [i * 1000, 7], i)
        await pool.backup(disk, `b${i}.img`)
      }
      before = rootsOf(pool)
    } finally { await pool.close() }
    const raw = new Database(path.join(dir, 'catalog.sqlite'))
    const id = raw.prepare("SELECT id FROM volumes WHERE name = 'b1.img'").pluck().get() as number
    const list = raw.prepare('SELECT root FROM roots WHERE id = ?').pluck().get(id) as Buffer
    list[16 + 32 * 8 + 3] ^= 0x01 // a byte of a piece's hash
    raw.prepare('UPDATE roots SET root = ? WHERE id = ?').run(list, id)
    raw.close()
    pool = Pool.open(dir, { workers: 1 })
    try {
      await t.throwsAsync(readAt(pool.list().find(v => v.name === 'b1.img')!, 0), { message: /map root is damaged.*root list fails its checksum/ })
      const report = await verifyPool(pool)
      t.true(report.problems.some(p => /root list is damaged/.test(p)), report.problems.join('; '))
      t.deepEqual(report.damaged.map(d => d.volume), ['b1.img'])
    } finally { await pool.close() }
    const repaired = await repairPool(dir)
    t.is(repaired.rootsRepaired, 1)
    t.true(repaired.after.ok, JSON.stringify(repaired.after))
    pool = Pool.open(dir, { workers: 1 })
    try {
      t.deepEqual(rootsOf(pool), before)
      checkPieces(t, dbOf(pool), storesOf(pool).catalog.rootPieceProblems())
    } finally { await pool.close() }
  })
})

/** catalog.log as vdiskfs wrote it before schema 6: each root dense in its volume record, no pieces. */
function toDenseLog (file: string): void {
  const bytes = fs.readFileSync(file)
  const pieces = new Map<string, Buffer>()
  const records: Array<{ type: number, payload: Buffer }> = []
  for (let at = 64; at + 16 <= bytes.length;) {
    const type = bytes.readUInt16LE(at + 4)
    const payload = bytes.subarray(at + 16, at + 16 + bytes.readUInt32LE(at + 8))
    if (type === 6) {
      for (let p = 0; p < payload.length;) {
        const length = payload.readUInt32LE(p + 32)
        pieces.set(payload.subarray(p, p + 32).toString('hex'), Buffer.from(payload.subarray(p + 36, p + 36 + length)))
        p += 36 + length
      }
    } else records.push({ type, payload })
    at += 16 + payload.length
  }
  const out: Buffer[] = [bytes.subarray(0, 64)]
  for (const { type, payload } of records) {
    let body = payload
    if (type === 1) {
      const { rootList, ...row } = JSON.parse(payload.toString('utf8')) as { id: number, root: string | null, rootList?: string }
      if (rootList !== undefined) row.root = assembleRoot(decodeRootList(Buffer.from(rootList, 'base64'), row.id), hash => pieces.get(hash.toString('hex'))).toString('base64')
      body = Buffer.from(JSON.stringify(row))
    }
    const head = Buffer.alloc(16)
    head.writeUInt32LE(0x524c4456, 0)
    head.writeUInt16LE(type, 4)
    head.writeUInt32LE(body.length, 8)
    head.writeUInt32LE(zlib.crc32(body, zlib.crc32(head.subarray(4, 12))), 12)
    out.push(head, body)
  }
  fs.writeFileSync(file, Buffer.concat(out))
}

test('a catalog.log written before schema 6 (dense roots, no pieces) still rebuilds a lost catalog', async t => {
  await tempPool(async dir => {
    let pool = Pool.open(dir, { create: true, workers: 1 })
    let before: Map<string, number[]>
    try {
      const disk = await pool.createDisk('d.img')
      await disk.truncate(tib)
      for (let i = 0; i < 4; i++) {
        await writePages(disk, [i * 900, 4090], i)
        await pool.backup(disk, `b${i}.img`)
      }
      before = rootsOf(pool)
    } finally { await pool.close() }
    const log = path.join(dir, 'catalog.log')
    toDenseLog(log)
    const replayed = await replayCatalogLog(log)
    t.is(replayed?.skippedBytes, 0)
    t.is(replayed?.pieces.size, 0)
    t.is(replayed?.volumes.size, 5)
    for (const f of fs.readdirSync(dir)) if (f.startsWith('catalog.sqlite')) fs.rmSync(path.join(dir, f))
    const repaired = await repairPool(dir)
    t.is(repaired.volumesRestored, 5)
    t.true(repaired.after.ok, JSON.stringify(repaired.after))
    pool = Pool.open(dir, { workers: 1 })
    try {
      t.deepEqual(rootsOf(pool), before)
      checkPieces(t, dbOf(pool), storesOf(pool).catalog.rootPieceProblems())
    } finally { await pool.close() }
  })
})

/**
 * Lazy pulls in the engine (volume/lazy.ts, absent chunks in chunk-store.ts), without S3: a backup made
 * from references, reads of its blocks waiting until a hydrator's blocks fill them (never a wrong byte:
 * bytes that do not match the id are refused and the read still waits), a bounded wait ending in IO that
 * names the remote, a clone written over absent blocks, a seal of the same bytes filling an absent chunk,
 * and the progress kept across a close and a reopen, and across a catalog lost and rebuilt by repair from
 * catalog.log and the packs.
 */
import test, { ExecutionContext } from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Volume } from '../../src/volume/volume'
import { Sealer } from '../../src/seal/sealer'
import { blake3Hex } from '../../src/remote/remote-format'
import { catalogFile } from '../../src/format/pool-format'
import { repairPool } from '../../src/inspect/repair'

const waitMs = 1500
process.env.VDISKFS_LAZY_WAIT_MS = String(waitMs)
const bs = 4096

interface Fixture { dir: string, pool: Pool, backup: Volume, uuid: string, data: Buffer[] }

/** A pool with backups/b.img of 8 blocks pulled lazily: 0-5 data (5 the same as 2), 6 a hole, 7 data. */
async function lazyBackup (t: ExecutionContext): Promise<Fixture> {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-')), 'pool')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  const pool = Pool.open(dir, { create: true, blockBytes: bs, workers: 1 })
  const { uuid, data } = await lazyImport(t, pool, 'b.img')
  return { dir, pool, backup: pool.get('backup', 'b.img'), uuid, data }
}

/** backups/NAME in `pool`, 8 blocks pulled lazily as lazyBackup's. */
async function lazyImport (t: ExecutionContext, pool: Pool, name: string): Promise<{ uuid: string, data: Buffer[] }> {
  const data = Array.from({ length: 8 }, () => crypto.randomBytes(bs))
  data[5] = data[2]
  data[6] = Buffer.alloc(bs)
  const uuid = crypto.randomUUID()
  const key = `${uuid}:full`
  const session = pool.imports.begin({ key, uuid, baseUuid: null, size: 8 * bs, blockBytes: bs, createdMs: Date.now(), source: null, lazy: true }, name)
  pool.lazy.begin({ uuid, importKey: key, remote: 'offsite', manifest: 'ab'.repeat(16), chunks: 0, startedMs: Date.now() })
  try {
    await session.store(data.flatMap((block, index) => index === 6 ? [] : [{ index, data: null, hash: Buffer.from(blake3Hex(block), 'hex') }]))
    t.is(session.counts.absentBlocks, 7)
    await session.finish()
  } finally { session.close() }
  pool.lazy.started(uuid)
  return { uuid, data }
}

const hash = (block: Buffer): Buffer => Buffer.from(blake3Hex(block), 'hex')

async function readBlock (volume: Volume, index: number): Promise<Buffer> {
  const out = Buffer.alloc(bs)
  await volume.read(out, index * bs)
  return out
}

test('a read of a block not here waits for it; bytes that do not match its id are refused; the right ones wake it; progress counts chunks', async t => {
  const { pool, backup, uuid, data } = await lazyBackup(t)
  try {
    t.like(pool.lazy.progress()[0], { uuid, remote: 'offsite', chunks: 6, missing: 6 })
    t.deepEqual(await readBlock(backup, 6), data[6], 'a hole reads as zeros at once')
    let settled = false
    const reading = readBlock(backup, 3).finally(() => { settled = true })
    const again = readBlock(backup, 3) // a second reader of the same block, in flight at once
    await new Promise(resolve => setTimeout(resolve, 100))
    t.false(settled, 'the read waits')
    // Another block's bytes under block 3's id: refused, nothing stored, the read still waits.
    await t.throwsAsync(pool.hydrate([{ data: data[4], hash: hash(data[3]) }]), { code: 'CORRUPT' })
    t.false(settled)
    t.is(pool.lazy.progress()[0].missing, 6)
    t.is(await pool.hydrate([{ data: data[3], hash: hash(data[3]) }, { data: data[3], hash: hash(data[3]) }]), 1)
    t.deepEqual(await reading, data[3])
    t.deepEqual(await again, data[3])
    t.is(pool.lazy.progress()[0].missing, 5)
    // A block two map entries share (2 and 5) is one chunk: one fill serves both.
    await pool.hydrate([{ data: data[2], hash: hash(data[2]) }])
    t.deepEqual(await readBlock(backup, 5), data[2])
    t.is(pool.lazy.progress()[0].missing, 4)
  } finally { await pool.close() }
})

test('a read with nothing to fill it fails with IO after the bound, naming the remote; a clone of the backup is writable over absent blocks', async t => {
  const { pool, backup, data } = await lazyBackup(t)
  try {
    const started = performance.now()
    const err = await t.throwsAsync(readBlock(backup, 1), { code: 'IO' })
    t.regex(err?.message ?? '', /backup b\.img block 1 .*not fetched from remote offsite \(backup (ab){16}, no hydrator connected/)
    t.true(performance.now() - started >= waitMs - 50)
    const clone = await pool.clone(backup, 'c.img')
    // A whole block written over an absent one needs nothing of it; a part of one reads the rest first.
    await clone.write(data[0], 4 * bs)
    const part = crypto.randomBytes(512)
    const writing = clone.write(part, 7 * bs + 1000)
    await pool.hydrate([{ data: data[7], hash: hash(data[7]) }])
    await writing
    const expected = Buffer.from(data[7])
    part.copy(expected, 1000)
    t.deepEqual(await readBlock(clone, 7), expected)
    t.deepEqual(await readBlock(clone, 4), data[0])
    t.deepEqual(await readBlock(backup, 7), data[7], 'the backup under the clone is unchanged')
  } finally { await pool.close() }
})

test('a seal of a disk holding the same bytes fills the absent chunk; the pull completes, and the fills and progress outlive a reopen', async t => {
  const { dir, pool, backup, uuid, data } = await lazyBackup(t)
  let reopened: Pool | null = null
  try {
    const disk = await pool.createDisk('d.img')
    await disk.write(data[0], 0)
    await new Sealer(pool, () => {}).sealPending(true)
    t.deepEqual(await readBlock(backup, 0), data[0], 'filled by the seal, no hydrator')
    t.is(pool.lazy.progress()[0].missing, 5)
    await pool.hydrate([{ data: data[1], hash: hash(data[1]) }])
    await pool.close()
    reopened = Pool.open(dir, { blockBytes: bs, workers: 1 })
    const b = reopened.get('backup', 'b.img')
    t.like(reopened.lazy.progress()[0], { uuid, chunks: 6, missing: 4 })
    t.deepEqual(await readBlock(b, 1), data[1])
    await reopened.hydrate([2, 3, 4, 7].map(i => ({ data: data[i], hash: hash(data[i]) })))
    t.deepEqual(reopened.lazy.progress(), [], 'whole: an ordinary backup')
    for (let i = 0; i < 8; i++) t.deepEqual(await readBlock(b, i), data[i], `block ${i}`)
    const report = await reopened.gc()
    t.is(report.held, undefined)
    for (let i = 0; i < 8; i++) t.deepEqual(await readBlock(b, i), data[i], `block ${i} after gc`)
  } finally { await (reopened ?? pool).close() }
})

test('a catalog lost mid-pull and rebuilt by repair from catalog.log keeps the pull: its fills stay, what is missing is still missing (not lost), and it completes', async t => {
  // The first pull's chunks reach catalog.log in its first snapshot (the pool's first commit), the
  // second's in a record its import appends.
  const { dir, pool, uuid, data } = await lazyBackup(t)
  let reopened: Pool | null = null
  try {
    const second = await lazyImport(t, pool, 'second.img')
    await pool.hydrate([{ data: data[1], hash: hash(data[1]) }, { data: second.data[0], hash: hash(second.data[0]) }])
    await pool.close()
    for (const suffix of ['', '-wal', '-shm']) fs.rmSync(path.join(dir, catalogFile + suffix), { force: true })
    const report = await repairPool(dir)
    t.true(report.volumesRestored >= 1, 'the backup came back from catalog.log')
    t.is(report.entriesLost, 0, 'no block of the pull is lost')
    t.deepEqual(report.after.damaged, [])
    reopened = Pool.open(dir, { blockBytes: bs, workers: 1 })
    const b = reopened.get('backup', 'b.img')
    const progress = new Map(reopened.lazy.progress().map(p => [p.uuid, p]))
    t.like(progress.get(uuid), { remote: 'offsite', manifest: 'ab'.repeat(16), chunks: 6, missing: 5 })
    t.like(progress.get(second.uuid), { chunks: 6, missing: 5 })
    t.deepEqual(await readBlock(b, 1), data[1], 'the fill before the loss, found in its pack')
    t.deepEqual(await readBlock(b, 6), data[6])
    const s = reopened.get('backup', 'second.img')
    t.deepEqual(await readBlock(s, 0), second.data[0])
    await t.throwsAsync(readBlock(s, 3), { code: 'IO' }, 'not here yet: the read waits for a hydrator, then IO')
    await reopened.hydrate([0, 2, 3, 4, 7].map(i => ({ data: data[i], hash: hash(data[i]) })))
    await reopened.hydrate([1, 2, 3, 4, 7].map(i => ({ data: second.data[i], hash: hash(second.data[i]) })))
    t.deepEqual(reopened.lazy.progress(), [], 'whole')
    for (let i = 0; i < 8; i++) t.deepEqual(await readBlock(b, i), data[i], `block ${i}`)
    for (let i = 0; i < 8; i++) t.deepEqual(await readBlock(s, i), second.data[i], `second.img block ${i}`)
  } finally { await (reopened ?? pool).close() }
})

/** How many rows the catalog holds for import `key` (import_blocks). */
const importRows = (pool: Pool, key: string): number => (pool as unknown as { state: { catalog: { importBlockCount: (key: string) => number } } }).state.catalog.importBlockCount(key)

test('a lazy pull\'s import keeps its rows in memory, not in the catalog: gc between its batches and its finish (counted and full) keeps its chunks, and a kill before the finish keeps no rows', async t => {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-')), 'pool')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  let pool = Pool.open(dir, { create: true, blockBytes: bs, workers: 1 })
  try {
    const data = Array.from({ length: 8 }, () => crypto.randomBytes(bs))
    const uuid = crypto.randomUUID()
    const key = `${uuid}:full`
    const spec = { key, uuid, baseUuid: null, size: 8 * bs, blockBytes: bs, createdMs: Date.now(), source: null, lazy: true }
    // Interrupted: a head block with its bytes and a reference stored, then the session ends without a finish.
    const cut = pool.imports.begin(spec, 'b.img')
    pool.lazy.begin({ uuid, importKey: key, remote: 'offsite', manifest: 'ab'.repeat(16), chunks: 0, startedMs: Date.now() })
    try {
      await cut.store([{ index: 0, data: data[0], hash: hash(data[0]) }, { index: 1, data: null, hash: hash(data[1]) }])
    } finally { cut.close() }
    t.is(importRows(pool, key), 0, 'no import rows in the catalog')
    // Again, as `pull --lazy` again does: everything sent again, gc run between the batches and before the finish.
    const session = pool.imports.begin(spec, 'b.img')
    try {
      t.is(session.recordedBlocks, 0)
      await session.store([{ index: 0, data: data[0], hash: hash(data[0]) }, ...[1, 2, 3].map(index => ({ index, data: null, hash: hash(data[index]) }))])
      await pool.gc()
      await pool.gc(undefined, { full: true })
      await session.store([4, 5, 6, 7].map(index => ({ index, data: null, hash: hash(data[index]) })))
      t.is(importRows(pool, key), 0, 'no import rows in the catalog')
      await pool.gc(undefined, { full: true })
      await session.finish()
    } finally { session.close() }
    pool.lazy.started(uuid)
    const backup = pool.get('backup', 'b.img')
    t.deepEqual(await readBlock(backup, 0), data[0], 'the head survived gc')
    await pool.hydrate([1, 2, 3, 4, 5, 6, 7].map(i => ({ data: data[i], hash: hash(data[i]) })))
    t.deepEqual(pool.lazy.progress(), [], 'whole: every absent chunk survived gc')
    await pool.gc(undefined, { full: true })
    for (let i = 0; i < 8; i++) t.deepEqual(await readBlock(backup, i), data[i], `block ${i}`)
    await pool.close()
    pool = Pool.open(dir, { blockBytes: bs, workers: 1 })
    const again = pool.get('backup', 'b.img')
    for (let i = 0; i < 8; i++) t.deepEqual(await readBlock(again, i), data[i], `block ${i} after a reopen`)
  } finally { await pool.close() }
})

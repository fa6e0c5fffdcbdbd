/**
 * A lazy pull's references applied after the reply (volume/lazy-refs.ts; docs/REMOTE.md, "The references
 * after the reply"), in the engine without S3: the backup made with its head mapped and the references
 * in lazy/UUID.refs, the apply held at its seams. A read past the head waits for the apply and reads the
 * source's bytes, never the map's 0; a copy asked for meanwhile waits (a clone is made at once, pending
 * too: lazy-clone.test.ts), and both read equal; gc, counted and
 * full, while the apply waits and between its sets and its commit, loses nothing; rm while pending ends
 * the pull; a pool closed before the apply applies the file at the next open, and a file applied twice
 * (a kill after the apply's commit, before the file's removal) sets the same entries. With batches of 4
 * references (several per pull): the references are appended to the file a batch at a time and never
 * held whole in memory, on either side; a read past the head waits for its own batch only (taken next,
 * out of order), which the ordered walk applies again with the same entries; a pool closed with batches
 * applied out of order applies the whole file again at the next open.
 */
import test, { ExecutionContext } from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Volume } from '../../src/volume/volume'
import { Sealer } from '../../src/seal/sealer'
import { LazyRefs, PendingMap, refsFile } from '../../src/volume/lazy-refs'
import { refBytes, refsHeaderBytes } from '../../src/format/lazy-refs-format'
import { allEqual, blocks, bs, hash, hydrateAll, newPool as newSourcePool, readBlock, settledSoon, settles, sourceData } from '../helpers/lazy-source'

const waitMs = 20_000
process.env.VDISKFS_LAZY_WAIT_MS = String(waitMs)

/** A promise and its resolver (a test's gate). */
function gate (): { promise: Promise<void>, open: () => void } {
  let open!: () => void
  const promise = new Promise<void>(resolve => { open = resolve })
  return { promise, open }
}


const newPool = (t: ExecutionContext): { dir: string, pool: Pool } => newSourcePool(t, 'vdiskfs-lazy-refs-')

/** Blocks 2-5 of the source as sealed chunks of disks/d.img (kept, or removed: garbage for gc). */
async function chunksHere (pool: Pool, data: Buffer[], keep: boolean): Promise<void> {
  const disk = await pool.createDisk('d.img')
  for (let i = 2; i <= 5; i++) await disk.write(data[i], i * bs)
  await new Sealer(pool, () => {}).sealPending(true)
  if (!keep) await pool.remove(disk)
}

/**
 * backups/NAME pulled lazily: the head stored, the references to apply after the finish (held at the
 * seams the caller set); `sent` is called after each reference is given to the file's writer.
 */
async function pendingPull (pool: Pool, name: string, data: Buffer[], sent?: (refs: LazyRefs) => void): Promise<{ backup: Volume, uuid: string, done: Promise<void>, refs: LazyRefs, pending: PendingMap }> {
  const uuid = crypto.randomUUID()
  const key = `${uuid}:full`
  const session = pool.imports.begin({ key, uuid, baseUuid: null, size: blocks * bs, blockBytes: bs, createdMs: Date.now(), source: null, lazy: true }, name)
  pool.lazy.begin({ uuid, importKey: key, remote: 'offsite', manifest: 'ab'.repeat(16), chunks: 0, startedMs: Date.now() })
  const refs = pool.lazyRefs(uuid)
  let backup: Volume
  try {
    await session.store([0, 1].map(index => ({ index, data: data[index], hash: hash(data[index]) })))
    for (let i = 2; i < blocks; i++) {
      if (i === 8) continue
      await refs.push(i, hash(data[i]))
      sent?.(refs)
    }
    backup = await pool.finishLazy(session, refs)
  } finally { session.close() }
  pool.lazy.started(uuid)
  const pending = backup.pendingMap
  if (pending === null) throw new Error('the backup is not pending')
  return { backup, uuid, done: pending.done, refs, pending }
}


/** Waits until the references file of `uuid` is removed (after the apply's done: lazy-refs.ts removes it last). */
async function fileGone (dir: string, uuid: string): Promise<boolean> {
  for (let i = 0; i < 200 && fs.existsSync(refsFile(dir, uuid)); i++) await new Promise(resolve => setTimeout(resolve, 25))
  return !fs.existsSync(refsFile(dir, uuid))
}




test('a read past the head while the references wait to be applied waits, then reads the source\'s bytes (never the map\'s 0); the head reads at once', async t => {
  const { dir, pool } = newPool(t)
  try {
    const data = sourceData()
    await chunksHere(pool, data, true)
    const held = gate()
    pool.lazyRefsSeams = { beforeApply: async () => await held.promise }
    const { backup, uuid, done } = await pendingPull(pool, 'b.img', data)
    t.true(fs.existsSync(refsFile(dir, uuid)), 'the references are in their file before the reply')
    t.like(pool.lazy.progress()[0], { uuid, pending: true, chunks: 13, missing: 13 }, 'while pending, every reference counts as a chunk to fetch (an upper bound)')
    t.deepEqual(await readBlock(backup, 0), data[0], 'the head reads at once')
    t.deepEqual(await readBlock(backup, 1), data[1])
    const here = readBlock(backup, 3)
    const hole = readBlock(backup, 8)
    const across = Buffer.alloc(3 * bs)
    const spanning = backup.read(across, bs)
    t.false(await settledSoon(here), 'a block whose chunk is here, not mapped yet: waits (the map says 0)')
    t.false(await settledSoon(hole))
    t.false(await settledSoon(spanning), 'a read from the head into the rest waits')
    held.open()
    t.deepEqual(await here, data[3], 'the source\'s bytes, not zeros')
    t.deepEqual(await hole, data[8])
    await spanning
    t.deepEqual(across, Buffer.concat([data[1], data[2], data[3]]))
    await done
    t.is(backup.pendingMap, null)
    t.true(await fileGone(dir, uuid), 'the file goes once applied')
    t.like(pool.lazy.progress()[0], { uuid, pending: false, chunks: 8, missing: 8 }, 'every absent chunk listed (2-5 and 12, the same as 3, are here)')
    const absent = readBlock(backup, 10)
    t.false(await settledSoon(absent), 'an absent chunk waits for a hydrator as before')
    await hydrateAll(pool, data)
    t.deepEqual(await absent, data[10])
    t.deepEqual(pool.lazy.progress(), [], 'whole')
    await allEqual(t, backup, data, 'once whole')
  } finally { await pool.close() }
})

test('a copy and a diff asked for while the references wait are made once they are applied; a clone and SEEK_DATA\'s map at once (blocks not mapped yet are data); all read equal', async t => {
  const { pool } = newPool(t)
  try {
    const data = sourceData()
    const held = gate()
    pool.lazyRefsSeams = { beforeApply: async () => await held.promise }
    const { backup, done } = await pendingPull(pool, 'b.img', data)
    const cloning = pool.clone(backup, 'c.img')
    const copying = pool.copy(backup, 'copy.img')
    const allocation = pool.allocationMap(backup)
    t.true(await settles(cloning), 'the clone is made at once, pending too (test/unit/lazy-clone.test.ts)')
    t.not((await cloning).pendingMap, null)
    t.false(await settledSoon(copying), 'the copy waits for the apply')
    t.true(await settles(allocation), 'SEEK_DATA\'s map is answered at once')
    t.deepEqual((await allocation).filter(range => range.data).map(range => [range.start, range.length]), [[0, 16 * bs]], 'blocks not mapped yet are data, never holes (the hole at block 8 too, until its batch is applied)')
    t.is(pool.find('disk', 'copy.img'), undefined)
    held.open()
    const clone = await cloning
    const copy = await copying
    await done
    await hydrateAll(pool, data)
    await allEqual(t, clone, data, 'in the clone')
    await allEqual(t, copy, data, 'in the copy')
    t.is(pool.differingRanges(backup, clone).ranges.length, 0)
    t.deepEqual((await pool.allocationMap(backup)).filter(range => range.data).map(range => [range.start, range.length]), [[0, 8 * bs], [9 * bs, 7 * bs]], 'applied: every block but the hole holds data')
    t.deepEqual((await pool.allocationMap(clone)).filter(range => range.data).map(range => [range.start, range.length, range.depth]), [[0, 8 * bs, 1], [9 * bs, 7 * bs, 1]], 'and in the clone, from its backup')
  } finally { await pool.close() }
})

test('gc, counted and full, while the apply waits and between its sets and its commit, loses nothing', async t => {
  const { pool } = newPool(t)
  try {
    const data = sourceData()
    // Blocks 2-5 here as garbage (their disk removed): gc may free them before the apply looks them up.
    await chunksHere(pool, data, false)
    const held = gate()
    pool.lazyRefsSeams = { beforeApply: async () => await held.promise }
    const first = await pendingPull(pool, 'b.img', data)
    await pool.gc()
    await pool.gc(undefined, { full: true })
    t.deepEqual(await readBlock(first.backup, 0), data[0], 'the head survived gc')
    // A second pull of other bytes with the same garbage here: gc between its sets and its commit.
    const other = sourceData()
    for (let i = 2; i <= 5; i++) other[i] = data[i]
    other[12] = other[3]
    await chunksHere(pool, other, false)
    const atCommit = gate()
    const commit = gate()
    pool.lazyRefsSeams = { beforeCommit: async () => { atCommit.open(); await commit.promise } }
    held.open()
    await first.done
    const second = await pendingPull(pool, 'second.img', other)
    await atCommit.promise
    const counted = pool.gc()
    const full = pool.gc(undefined, { full: true })
    t.false(await settledSoon(counted), 'gc waits for the lock the apply holds')
    commit.open()
    await second.done
    await counted
    await full
    await pool.gc(undefined, { full: true })
    await hydrateAll(pool, data)
    await hydrateAll(pool, other)
    t.deepEqual(pool.lazy.progress(), [], 'both whole')
    await allEqual(t, first.backup, data, 'after gc')
    await allEqual(t, second.backup, other, 'after gc')
    const report = await pool.gc(undefined, { full: true })
    t.is(report.held, undefined, 'the counts agree with a full mark')
    await allEqual(t, second.backup, other, 'after the last gc')
  } finally { await pool.close() }
})

test('rm while the references wait: nothing is applied, the file goes, the pull ends', async t => {
  const { dir, pool } = newPool(t)
  try {
    const data = sourceData()
    const held = gate()
    pool.lazyRefsSeams = { beforeApply: async () => await held.promise }
    const { backup, uuid, done } = await pendingPull(pool, 'b.img', data)
    await pool.remove(backup)
    held.open()
    await done
    t.true(await fileGone(dir, uuid))
    t.deepEqual(pool.lazy.progress(), [], 'the pull ended with its backup')
    await pool.gc(undefined, { full: true })
    t.is(pool.find('backup', 'b.img'), undefined)
  } finally { await pool.close() }
})

test('closed before the apply: the next open applies the file before anything is served; applied again after its commit, it sets the same entries', async t => {
  const { dir, pool } = newPool(t)
  let reopened: Pool | null = null
  try {
    const data = sourceData()
    await chunksHere(pool, data, true)
    const held = gate()
    pool.lazyRefsSeams = { beforeApply: async () => await held.promise }
    const { uuid } = await pendingPull(pool, 'b.img', data)
    const saved = fs.readFileSync(refsFile(dir, uuid))
    await pool.close()
    held.open()
    t.true(fs.existsSync(refsFile(dir, uuid)), 'a closing pool applies nothing: the file stays')
    reopened = Pool.open(dir, { blockBytes: bs, workers: 1 })
    let b = reopened.get('backup', 'b.img')
    t.not(b.pendingMap, null, 'pending from the open on')
    t.deepEqual(await readBlock(b, 3), data[3], 'waits for the apply, then reads the source\'s bytes')
    t.true(await fileGone(dir, uuid))
    await hydrateAll(reopened, data)
    t.deepEqual(reopened.lazy.progress(), [], 'whole')
    await reopened.close()
    // The file put back: as if killed after the apply's commit and before the removal.
    fs.writeFileSync(refsFile(dir, uuid), saved)
    reopened = Pool.open(dir, { blockBytes: bs, workers: 1 })
    b = reopened.get('backup', 'b.img')
    t.not(b.pendingMap, null)
    await b.pendingMap?.done
    t.true(await fileGone(dir, uuid))
    t.deepEqual(reopened.lazy.progress(), [])
    await allEqual(t, b, data, 'applied twice')
    const report = await reopened.gc(undefined, { full: true })
    t.is(report.held, undefined)
    await allEqual(t, b, data, 'after gc')
  } finally { await (reopened ?? pool).close() }
})

// With batches of 4 references, the 13 references of sourceData() (blocks 2-7 and 9-15) are 4 batches:
// [2 3 4 5] [6 7 9 10] [11 12 13 14] [15].
const smallBatch = 4
const lastBatch = 3

/** The source with block 15 (the last batch's only block) the same as block 5, whose chunk chunksHere() seals. */
function sourceLastHere (): Buffer[] {
  const data = sourceData()
  data[15] = data[5]
  return data
}

test('a pull of several batches never holds its references whole in memory: appended to the file a batch at a time as they arrive, applied a batch at a time', async t => {
  const { dir, pool } = newPool(t)
  try {
    pool.lazyRefsBatchRefs = smallBatch
    const data = sourceData()
    await chunksHere(pool, data, true)
    const held = gate()
    pool.lazyRefsSeams = { beforeApply: async () => await held.promise }
    // The file's records as each reference is given to the writer (the file has a header before them).
    const inFile: number[] = []
    let uuidSeen = ''
    const { backup, uuid, done, refs, pending } = await pendingPull(pool, 'b.img', data, r => {
      uuidSeen = path.basename(r.file, '.refs')
      inFile.push(fs.existsSync(r.file) ? fs.statSync(r.file).size : -1)
    })
    t.is(uuidSeen, uuid)
    t.is(refs.count, 13)
    t.true(refs.heldMax <= smallBatch, `the writer held at most one batch (${refs.heldMax})`)
    t.true(inFile[smallBatch - 1] > 0, 'the first batch is in the file once it is full, before the end frame')
    t.true(inFile.filter(size => size > 0).length >= inFile.length - smallBatch, 'every batch appended as it filled')
    t.not(inFile[inFile.length - 1], inFile[smallBatch - 1], 'the file grew batch by batch')
    held.open()
    await done
    t.like(pending.progress, { batches: 4, applied: 4 })
    t.true(pending.progress.refsHeldMax <= smallBatch, `the apply read one batch at a time (${pending.progress.refsHeldMax} at most)`)
    t.true(await fileGone(dir, uuid))
    await hydrateAll(pool, data)
    await allEqual(t, backup, data, 'once whole')
  } finally { await pool.close() }
})

test('a read of a block in the last batch is answered once that batch is applied, the batches before it not yet', async t => {
  const { pool } = newPool(t)
  try {
    pool.lazyRefsBatchRefs = smallBatch
    const data = sourceLastHere()
    await chunksHere(pool, data, true)
    const held = gate()
    const walk = gate()
    pool.lazyRefsSeams = { beforeApply: async () => await held.promise, beforeBatch: async batch => { if (batch !== lastBatch) await walk.promise } }
    const { backup, done, pending } = await pendingPull(pool, 'b.img', data)
    const last = readBlock(backup, 15)
    held.open()
    t.deepEqual(await last, data[15], 'the source\'s bytes, the walk held before its first batch')
    t.like(pending.progress, { batches: 4, applied: 1 }, 'only the reader\'s batch is applied')
    t.not(backup.pendingMap, null, 'still pending')
    t.is(backup.map.get(3), 0, 'block 3 (the first batch) not mapped yet')
    const earlier = readBlock(backup, 3)
    t.false(await settledSoon(earlier), 'a read of the first batch waits for it')
    walk.open()
    t.deepEqual(await earlier, data[3])
    await done
    t.like(pending.progress, { batches: 4, applied: 4 })
    await hydrateAll(pool, data)
    await allEqual(t, backup, data, 'once whole')
  } finally { await pool.close() }
})

test('the reader\'s batch applied out of order is applied again by the walk: the same entries, the end equal to the source (gc between two batches)', async t => {
  const { pool } = newPool(t)
  try {
    pool.lazyRefsBatchRefs = smallBatch
    const held = gate()
    const order: number[] = []
    // gc, counted and full, between two batches (the lock is free there): after the reader's batch and the first.
    pool.lazyRefsSeams = {
      beforeApply: async () => await held.promise,
      beforeBatch: async batch => {
        order.push(batch)
        if (order.length === 3) { await pool.gc(); await pool.gc(undefined, { full: true }) }
      }
    }
    const data = sourceLastHere()
    await chunksHere(pool, data, true)
    const { backup, done, pending } = await pendingPull(pool, 'b.img', data)
    const last = readBlock(backup, 15)
    held.open()
    t.deepEqual(await last, data[15])
    const entry = backup.map.get(15)
    t.not(entry, 0)
    await done
    t.deepEqual(order, [lastBatch, 0, 1, 2, lastBatch], 'the reader\'s batch first, then every batch in order')
    t.like(pending.progress, { batches: 4, applied: 4, applications: 5 })
    t.is(backup.map.get(15), entry, 'applied twice: the same entry')
    await hydrateAll(pool, data)
    t.deepEqual(pool.lazy.progress(), [], 'whole')
    await allEqual(t, backup, data, 'once whole')
    const report = await pool.gc(undefined, { full: true })
    t.is(report.held, undefined, 'the counts agree with a full mark')
  } finally { await pool.close() }
})

test('closed with a batch applied out of order and the rest not: the next open applies the whole file again and ends equal', async t => {
  const { dir, pool } = newPool(t)
  let reopened: Pool | null = null
  try {
    pool.lazyRefsBatchRefs = smallBatch
    const data = sourceLastHere()
    await chunksHere(pool, data, true)
    const held = gate()
    const walk = gate()
    pool.lazyRefsSeams = { beforeApply: async () => await held.promise, beforeBatch: async batch => { if (batch !== lastBatch) await walk.promise } }
    const { backup, uuid, pending } = await pendingPull(pool, 'b.img', data)
    const last = readBlock(backup, 15)
    held.open()
    t.deepEqual(await last, data[15])
    t.like(pending.progress, { applied: 1 })
    const entry = backup.map.get(15)
    // The close commits the last batch's entries (a kill might not: the next open applies the file whole either way).
    await pool.close()
    walk.open()
    t.true(fs.existsSync(refsFile(dir, uuid)), 'the file stays until every batch is applied and committed')
    reopened = Pool.open(dir, { blockBytes: bs, workers: 1 })
    reopened.lazyRefsBatchRefs = smallBatch
    const b = reopened.get('backup', 'b.img')
    const again = b.pendingMap
    t.not(again, null, 'pending from the open on')
    t.is(b.map.get(15), entry, 'the batch applied out of order was committed')
    t.is(b.map.get(3), 0, 'the first batch was not')
    t.deepEqual(await readBlock(b, 3), data[3], 'waits for its batch, then reads the source\'s bytes')
    await again?.done
    t.like(again?.progress, { batches: 4, applied: 4 })
    t.true(await fileGone(dir, uuid))
    t.is(b.map.get(15), entry, 'applied again: the same entry')
    await hydrateAll(reopened, data)
    t.deepEqual(reopened.lazy.progress(), [], 'whole')
    await allEqual(t, b, data, 'after the reopen')
    const report = await reopened.gc(undefined, { full: true })
    t.is(report.held, undefined)
  } finally { await (reopened ?? pool).close() }
})

test('a stream that ends without its backup removes its references file; one left by a killed stream is removed as the pool opens', async t => {
  const { dir, pool } = newPool(t)
  let reopened: Pool | null = null
  try {
    pool.lazyRefsBatchRefs = smallBatch
    const data = sourceData()
    const uuid = crypto.randomUUID()
    const refs = pool.lazyRefs(uuid)
    for (let i = 2; i < 8; i++) await refs.push(i, hash(data[i]))
    t.true(fs.existsSync(refsFile(dir, uuid)), 'the first batch is in the file')
    await refs.discard()
    t.false(fs.existsSync(refsFile(dir, uuid)), 'discarded: the file goes')
    const again = pool.lazyRefs(uuid)
    for (let i = 2; i < 8; i++) await again.push(i, hash(data[i]))
    await pool.close()
    t.true(fs.existsSync(refsFile(dir, uuid)), 'as a kill mid-stream leaves it')
    reopened = Pool.open(dir, { blockBytes: bs, workers: 1 })
    t.false(fs.existsSync(refsFile(dir, uuid)), 'no backup has its identity: removed as the pool opens')
  } finally { await (reopened ?? pool).close() }
})

test('a damaged record of the references file is refused, never mapped: block 7\'s record turned into block 8\'s (still in order) fails its CRC, and the batch sets nothing', async t => {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-refs-')), 'pool')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  const lines: string[] = []
  const pool = Pool.open(dir, { create: true, blockBytes: bs, workers: 1, log: line => lines.push(line) })
  try {
    const data = sourceData()
    const held = gate()
    pool.lazyRefsSeams = { beforeApply: async () => await held.promise }
    const { backup, uuid } = await pendingPull(pool, 'b.img', data)
    // The references are blocks 2-7 and 9-15 (8 is a hole): block 7's is the sixth record. As block 8's
    // the file is still in block order, so only the record's CRC tells (block 8 would read block 7's
    // bytes, and block 7 the map's 0).
    const file = refsFile(dir, uuid)
    const bytes = fs.readFileSync(file)
    const at = refsHeaderBytes + 5 * refBytes
    t.is(bytes.readUIntLE(at, 6), 7)
    bytes.writeUIntLE(8, at, 6)
    fs.writeFileSync(file, bytes)
    held.open()
    for (let i = 0; i < 400 && !lines.some(line => /were not applied/.test(line)); i++) await new Promise(resolve => setTimeout(resolve, 25))
    t.true(lines.some(line => /record 5 fails its CRC/.test(line)), lines.join('\n'))
    t.not(backup.pendingMap, null, 'still pending: its reads past the head wait, then fail')
    t.is(backup.map.get(8), 0, 'block 8 not mapped to block 7\'s chunk')
    t.is(backup.map.get(7), 0)
    t.true(fs.existsSync(file), 'the file is kept for the next open')
  } finally { await pool.close() }
})

/**
 * A clone of a lazy pull's backup whose references are still being applied (volume/lazy-refs.ts;
 * docs/REMOTE.md, "A clone of a pending backup"), in the engine without S3, with batches of 4 references
 * (13 references: 4 batches, [2 3 4 5] [6 7 9 10] [11 12 13 14] [15]) and the apply's walk held between
 * its batches at the test seam beforeBatch. The clone is made with the walk held (at once, not after the
 * apply) and pending too: the apply sets each
 * batch's entries in it as well, once; its reads past what is mapped wait for their batch only; a write,
 * discard or truncate into a block not applied yet waits for its batch, then survives the apply; a pool
 * killed mid-apply (abandon) reopens with the clone pending and applies into it only the batches its record
 * does not name, so what the clone wrote after a batch was applied stays; gc beside it loses nothing and
 * its counts agree with a full mark; rm of the backup or of a clone while pending; a backup of a pending
 * clone waits for the apply.
 */
import test, { ExecutionContext } from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Volume } from '../../src/volume/volume'
import { refsFile } from '../../src/volume/lazy-refs'
import { lazyDir } from '../../src/format/pool-format'
import { allEqual, allHere, blocks, bs, hydrateAll, lastBatch, newPool as newSourcePool, pendingPull, readBlock, settledSoon, smallBatch, sourceData, Steps } from '../helpers/lazy-source'

const waitMs = 20_000
process.env.VDISKFS_LAZY_WAIT_MS = String(waitMs)


function newPool (t: ExecutionContext): { dir: string, pool: Pool } {
  const made = newSourcePool(t, 'vdiskfs-lazy-clone-')
  made.pool.lazyRefsBatchRefs = smallBatch
  return made
}

/** The files of lazy/ (the references file and the clones' records). */
const lazyFiles = (dir: string): string[] => fs.readdirSync(path.join(dir, lazyDir)).sort()

async function until (what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 3000 && !check(); i++) await new Promise(resolve => setTimeout(resolve, 10))
  if (!check()) throw new Error(`never: ${what}`)
}



/**
 * The clone of a backup whose walk is parked before batch 1 (batch 0 applied), made while the walk stays
 * parked: a clone that waited for the whole apply would never be made so, and fails with IO after the
 * lazy bound (no timing is asserted).
 */
async function cloneWithOneBatch (t: ExecutionContext, pool: Pool, backup: Volume, steps: Steps, name = 'c.img'): Promise<Volume> {
  await steps.reached(1)
  t.like(backup.pendingMap?.progress, { applied: 1 }, 'one batch of 4 applied')
  const clone = await pool.clone(backup, name)
  t.like(backup.pendingMap?.progress, { applied: 1 }, 'made with the walk still parked before batch 1')
  t.deepEqual(steps.order, [0, 1])
  return clone
}

test('a clone made while 1 of 4 batches is applied is made at once, pending too; it reads equal to the source everywhere, a read past the head waiting for its own batch only', async t => {
  const { dir, pool } = newPool(t)
  const steps = new Steps()
  try {
    const data = sourceData()
    await allHere(pool, data, true)
    const { backup, uuid, pending } = await pendingPull(pool, 'b.img', data, steps)
    const clone = await cloneWithOneBatch(t, pool, backup, steps)
    const clonePending = clone.pendingMap
    t.not(clonePending, null, 'the clone is pending too')
    t.not(clonePending, pending, 'with a pending map of its own')
    t.deepEqual(lazyFiles(dir), [`${uuid}.${pool.volumeUuid(clone)}.clone`, `${uuid}.refs`], 'the clone is recorded beside the references file')
    for (let i = 0; i <= 5; i++) {
      // Read with the walk parked: a read waiting for another batch would fail with IO after the bound.
      t.deepEqual(await readBlock(clone, i), data[i], `clone block ${i} (the head or batch 0), the walk parked`)
    }
    const last = readBlock(clone, 15)
    t.false(await settledSoon(last), 'block 15 (batch 3) waits for its batch')
    steps.allow(2)
    t.deepEqual(await last, data[15], 'the source\'s bytes once its batch is applied')
    await steps.reached(2)
    t.deepEqual(steps.order, [0, 1, lastBatch, 2], 'batch 1, then the reader\'s batch 3; batch 2 not yet')
    t.is(clone.map.get(11), 0, 'block 11 (batch 2) not set in the clone yet')
    const eleven = readBlock(clone, 11)
    t.false(await settledSoon(eleven), 'a read of batch 2 waits for it')
    steps.allow(Infinity)
    t.deepEqual(await eleven, data[11])
    await pending.done
    await clonePending?.done
    t.deepEqual(steps.order, [0, 1, lastBatch, 2, lastBatch], 'the walk applied batch 3 again')
    t.is(clone.pendingMap, null, 'the clone is whole')
    await until('the files removed', () => lazyFiles(dir).length === 0)
    t.false(fs.existsSync(refsFile(dir, uuid)))
    await allEqual(t, clone, data, 'after the apply')
    await allEqual(t, backup, data, 'after the apply')
    t.is(pool.differingRanges(backup, clone).ranges.length, 0)
    t.is(clone.map.allocatedBlocks, blocks - 1, 'the clone\'s counters count the entries the apply set in it (every block but the hole)')
    t.is(clone.storedBytes, backup.storedBytes)
    const report = await pool.gc(undefined, { full: true })
    t.is(report.held, undefined, 'the counts agree with a full mark')
  } finally { steps.allow(Infinity); await pool.close() }
})

test('a write, a discard and a truncate into blocks of the clone not applied yet wait for their batches, then survive the apply', async t => {
  const { pool } = newPool(t)
  const steps = new Steps()
  try {
    const data = sourceData()
    await allHere(pool, data, true)
    const { backup, pending } = await pendingPull(pool, 'b.img', data, steps)
    const clone = await cloneWithOneBatch(t, pool, backup, steps)
    const model = data.map(block => Buffer.from(block))
    const applied = Buffer.alloc(bs, 3)
    // With the walk parked: a write waiting for another batch would fail with IO after the bound.
    await clone.write(applied, 3 * bs)
    applied.copy(model[3])
    const partial = crypto.randomBytes(100)
    const nine = clone.write(partial, 9 * bs + 50)
    partial.copy(model[9], 50)
    const whole = crypto.randomBytes(bs)
    const thirteen = clone.write(whole, 13 * bs)
    model[13] = whole
    const discard = clone.discard(14 * bs, bs)
    model[14] = Buffer.alloc(bs)
    // Whole zeros into block 6 (batch 1): the map's 0, the entry an unapplied block has in the clone.
    const zeros = clone.write(Buffer.alloc(bs), 6 * bs)
    model[6] = Buffer.alloc(bs)
    const truncate = clone.truncate(15 * bs + 100)
    model[15] = Buffer.concat([data[15].subarray(0, 100), Buffer.alloc(bs - 100)])
    for (const [what, p] of [['the partial write into batch 1', nine], ['the write into batch 2', thirteen], ['the discard in batch 2', discard], ['the zeros into batch 1', zeros], ['the truncate into batch 3', truncate]] as const) {
      t.false(await settledSoon(p), `${what} waits for its batch`)
    }
    steps.allow(Infinity)
    await Promise.all([nine, thirteen, discard, zeros, truncate])
    await clone.extend(blocks * bs)
    await pending.done
    await clone.pendingMap?.done
    t.is(clone.pendingMap, null)
    await allEqual(t, clone, model, 'after the apply (what it wrote, not the backup\'s)')
    await allEqual(t, backup, data, 'after the apply')
    const report = await pool.gc(undefined, { full: true })
    t.is(report.held, undefined)
  } finally { steps.allow(Infinity); await pool.close() }
})

test('a batch a reader took out of order is set in the clone once: the walk applying it again does not set it over what the clone wrote since', async t => {
  const { pool } = newPool(t)
  const steps = new Steps()
  try {
    const data = sourceData()
    await allHere(pool, data, true)
    const { backup, pending } = await pendingPull(pool, 'b.img', data, steps)
    const clone = await cloneWithOneBatch(t, pool, backup, steps)
    const last = readBlock(clone, 15)
    steps.allow(2)
    t.deepEqual(await last, data[15])
    await steps.reached(2)
    const model = data.map(block => Buffer.from(block))
    const fifteen = crypto.randomBytes(bs)
    await clone.write(fifteen, 15 * bs)
    model[15] = fifteen
    // Whole zeros: the map's 0, as before the batch was applied.
    await clone.write(Buffer.alloc(bs), 9 * bs)
    model[9] = Buffer.alloc(bs)
    steps.allow(Infinity)
    await pending.done
    await clone.pendingMap?.done
    t.deepEqual(steps.order, [0, 1, lastBatch, 2, lastBatch], 'the walk applied batch 3 again')
    await allEqual(t, clone, model, 'after the walk applied batch 3 again')
    await allEqual(t, backup, data, 'after the apply')
  } finally { steps.allow(Infinity); await pool.close() }
})

test('the lazy bound: a read or a write of the clone whose batch does not come in time fails with IO naming the pull and the clone, and changes nothing', async t => {
  // The bound is read as the pool opens.
  process.env.VDISKFS_LAZY_WAIT_MS = '300'
  const { pool } = newPool(t)
  process.env.VDISKFS_LAZY_WAIT_MS = String(waitMs)
  const steps = new Steps()
  try {
    const data = sourceData()
    await allHere(pool, data, true)
    const { backup, pending } = await pendingPull(pool, 'b.img', data, steps)
    const clone = await cloneWithOneBatch(t, pool, backup, steps)
    const read = await t.throwsAsync(readBlock(clone, 11))
    t.is((read as { code?: string }).code, 'IO')
    t.regex(read?.message ?? '', /^clone c\.img block 11 \(bytes 45056-49151\): the references of lazy pull backup b\.img from remote offsite \(backup [ab]+\) are still being applied after 0\.3 s$/)
    const write = await t.throwsAsync(clone.write(crypto.randomBytes(bs), 10 * bs))
    t.is((write as { code?: string }).code, 'IO')
    t.regex(write?.message ?? '', /^a change of clone c\.img block 10 \(bytes 40960-45055\): the references of lazy pull backup b\.img from remote offsite/)
    steps.allow(Infinity)
    await pending.done
    await clone.pendingMap?.done
    await allEqual(t, clone, data, 'after the apply (the refused write changed nothing)')
  } finally { steps.allow(Infinity); await pool.close() }
})

test('killed mid-apply with the clone written in applied and unapplied batches: the next open has the clone pending and applies into it only what its record lacks', async t => {
  const { dir, pool } = newPool(t)
  const steps = new Steps()
  let reopened: Pool | null = null
  try {
    const data = sourceData()
    await allHere(pool, data, true)
    const { backup } = await pendingPull(pool, 'b.img', data, steps)
    const clone = await cloneWithOneBatch(t, pool, backup, steps)
    const model = data.map(block => Buffer.from(block))
    // Batch 1 and the reader's batch 3 applied, the walk parked before batch 2.
    const last = readBlock(clone, 15)
    steps.allow(2)
    await last
    await steps.reached(2)
    // Written after their batches were applied: committed (block 3), or only in the change journal (the rest).
    const three = crypto.randomBytes(bs)
    await clone.write(three, 3 * bs)
    model[3] = three
    await pool.commit()
    await clone.write(Buffer.alloc(bs), 4 * bs)
    model[4] = Buffer.alloc(bs)
    await clone.discard(7 * bs, bs)
    model[7] = Buffer.alloc(bs)
    const fifteen = crypto.randomBytes(200)
    await clone.write(fifteen, 15 * bs + 1000)
    fifteen.copy(model[15], 1000)
    t.is(backup.map.get(11), 0, 'batch 2 not applied when killed')
    await pool.abandon()
    steps.allow(Infinity)
    reopened = Pool.open(dir, { blockBytes: bs, workers: 1 })
    reopened.lazyRefsBatchRefs = smallBatch
    const again = new Steps()
    reopened.lazyRefsSeams = { beforeBatch: again.seam }
    again.allow(Infinity)
    const c = reopened.get('clone', 'c.img')
    const b = reopened.get('backup', 'b.img')
    t.not(c.pendingMap, null, 'the clone is pending from the open on')
    t.not(b.pendingMap, null)
    await b.pendingMap?.done
    await c.pendingMap?.done
    t.deepEqual(again.order, [0, 1, 2, lastBatch], 'every batch applied again')
    await until('the files removed', () => lazyFiles(dir).length === 0)
    await allEqual(t, c, model, 'after the reopen (its writes kept, the rest the source\'s)')
    await allEqual(t, b, data, 'after the reopen')
    const report = await reopened.gc(undefined, { full: true })
    t.is(report.held, undefined, 'the counts agree with a full mark')
  } finally { steps.allow(Infinity); await (reopened ?? pool).close() }
})

test('gc, counted and full, between the batches with a pending clone written: nothing lost, the counts agree with a full mark', async t => {
  const { pool } = newPool(t)
  const steps = new Steps()
  try {
    const data = sourceData()
    // Every chunk garbage (its disk removed): gc frees those no map names yet; the apply makes them absent.
    await allHere(pool, data, false)
    const { backup, pending } = await pendingPull(pool, 'b.img', data, steps)
    await pool.gc()
    const clone = await cloneWithOneBatch(t, pool, backup, steps)
    const model = data.map(block => Buffer.from(block))
    const two = crypto.randomBytes(bs)
    await clone.write(two, 2 * bs)
    model[2] = two
    const ten = crypto.randomBytes(bs)
    const writing = clone.write(ten, 10 * bs)
    model[10] = ten
    await pool.gc()
    await pool.gc(undefined, { full: true })
    steps.allow(2)
    await writing
    await pool.gc()
    await pool.gc(undefined, { full: true })
    steps.allow(Infinity)
    await pending.done
    await clone.pendingMap?.done
    await pool.gc()
    await hydrateAll(pool, data)
    t.deepEqual(pool.lazy.progress(), [], 'whole')
    await allEqual(t, clone, model, 'after gc')
    await allEqual(t, backup, data, 'after gc')
    const report = await pool.gc(undefined, { full: true })
    t.is(report.held, undefined, 'the counts agree with a full mark')
  } finally { steps.allow(Infinity); await pool.close() }
})

test('rm of the backup and of one of two clones while pending: the other clone gets every batch, then the files go', async t => {
  const { dir, pool } = newPool(t)
  const steps = new Steps()
  try {
    const data = sourceData()
    await allHere(pool, data, true)
    const { backup } = await pendingPull(pool, 'b.img', data, steps)
    const kept = await cloneWithOneBatch(t, pool, backup, steps, 'kept.img')
    const gone = await pool.clone(backup, 'gone.img')
    t.not(gone.pendingMap, null)
    const keptPending = kept.pendingMap
    await pool.remove(gone)
    await pool.remove(backup)
    steps.allow(Infinity)
    await keptPending?.done
    t.is(kept.pendingMap, null)
    await until('the files removed', () => lazyFiles(dir).length === 0)
    await allEqual(t, kept, data, 'with its backup removed')
    const report = await pool.gc(undefined, { full: true })
    t.is(report.held, undefined)
    await allEqual(t, kept, data, 'after gc')
  } finally { steps.allow(Infinity); await pool.close() }
})

test('the backup removed while its clone is pending, then killed: the next open applies the file into the clone alone, which ends equal', async t => {
  const { dir, pool } = newPool(t)
  const steps = new Steps()
  let reopened: Pool | null = null
  try {
    const data = sourceData()
    await allHere(pool, data, true)
    const { backup, uuid } = await pendingPull(pool, 'b.img', data, steps)
    const clone = await cloneWithOneBatch(t, pool, backup, steps)
    const model = data.map(block => Buffer.from(block))
    const two = crypto.randomBytes(bs)
    await clone.write(two, 2 * bs)
    model[2] = two
    await pool.remove(backup)
    await pool.commit()
    await pool.abandon()
    steps.allow(Infinity)
    t.true(fs.existsSync(refsFile(dir, uuid)), 'the file stays while a clone is pending')
    reopened = Pool.open(dir, { blockBytes: bs, workers: 1 })
    reopened.lazyRefsBatchRefs = smallBatch
    t.is(reopened.find('backup', 'b.img'), undefined)
    const c = reopened.get('clone', 'c.img')
    t.not(c.pendingMap, null, 'the clone is pending from the open on')
    await c.pendingMap?.done
    await until('the files removed', () => lazyFiles(dir).length === 0)
    await allEqual(t, c, model, 'after the reopen')
    const report = await reopened.gc(undefined, { full: true })
    t.is(report.held, undefined)
    await allEqual(t, c, model, 'after gc')
  } finally { steps.allow(Infinity); await (reopened ?? pool).close() }
})

test('a backup of a pending clone (to clone it again) waits for the apply, then holds what the clone held', async t => {
  const { pool } = newPool(t)
  const steps = new Steps()
  try {
    const data = sourceData()
    await allHere(pool, data, true)
    const { backup } = await pendingPull(pool, 'b.img', data, steps)
    const clone = await cloneWithOneBatch(t, pool, backup, steps)
    const taking = pool.backup(clone, 'again.img')
    t.false(await settledSoon(taking), 'the backup of a pending clone waits')
    steps.allow(Infinity)
    const again = await taking
    const second = await pool.clone(again, 'c2.img')
    t.is(second.pendingMap, null)
    await allEqual(t, second, data, 'a clone of the backup of the clone')
  } finally { steps.allow(Infinity); await pool.close() }
})

/**
 * What waits for a lazy pull's references still being applied (volume/lazy-refs.ts), in the engine
 * without S3, with the apply's walk held between its batches (test/helpers/lazy-source.ts: 13
 * references in 4 batches, [2 3 4 5] [6 7 9 10] [11 12 13 14] [15]). An export's reads and a range copy
 * (copy_file_range) wait for the blocks they read only, as a read does; what needs the whole map (a copy,
 * a restore, a clone of a group, a backup of a pending clone) waits as long as the apply goes on, and
 * fails with IO naming the pull only once no batch was applied for the lazy bound (at 1 TiB the apply
 * takes minutes, and a wait bounded in all failed every such command there).
 */
import test, { ExecutionContext } from 'ava'
import { VdiskError } from '../../src/errors'
import { Pool } from '../../src/volume/pool'
import { Volume } from '../../src/volume/volume'
import { allEqual, allHere, blocks, bs, newPool as newSourcePool, pendingPull, settledSoon, settles, smallBatch, sourceData, Steps } from '../helpers/lazy-source'

function newPool (t: ExecutionContext, waitMs: number): { dir: string, pool: Pool } {
  // The bound is read as the pool opens.
  process.env.VDISKFS_LAZY_WAIT_MS = String(waitMs)
  const made = newSourcePool(t, 'vdiskfs-lazy-wait-')
  made.pool.lazyRefsBatchRefs = smallBatch
  return made
}

/**
 * A pending backup b.img of the source (its chunks here) with the apply's walk parked before batch 1
 * (batch 0, blocks 2-5, applied), in a pool whose lazy bound is `waitMs`; `check` runs with it, and the
 * walk is let go and the pool closed after.
 */
async function withHeldApply (t: ExecutionContext, waitMs: number, check: (held: { pool: Pool, backup: Volume, data: Buffer[], steps: Steps }) => Promise<void>): Promise<void> {
  const { pool } = newPool(t, waitMs)
  const steps = new Steps()
  try {
    const data = sourceData()
    await allHere(pool, data, true)
    const { backup } = await pendingPull(pool, 'b.img', data, steps)
    await steps.reached(1)
    await check({ pool, backup, data, steps })
  } finally { steps.allow(Infinity); await pool.close() }
}

const sleep = async (ms: number): Promise<void> => await new Promise(resolve => setTimeout(resolve, ms))

test('an export\'s reads of blocks already applied are answered with the walk held, and those of a held batch once it is applied', async t => {
  await withHeldApply(t, 20_000, async ({ pool, backup, data, steps }) => {
    const applied = [2, 3, 5].map(block => ({ block, target: Buffer.alloc(bs) }))
    t.true(await settles(backup.readBlocks(applied)), 'blocks of batch 0 read with batch 1 held')
    for (const { block, target } of applied) t.deepEqual(target, data[block], `block ${block}`)
    const held = [{ block: 6, target: Buffer.alloc(bs) }]
    const reading = backup.readBlocks(held)
    t.false(await settledSoon(reading), 'a block of batch 1 waits for it')
    steps.allow(2)
    await reading
    t.deepEqual(held[0].target, data[6])
  })
})

test('a range copy (copy_file_range) out of blocks already applied is made with the walk held', async t => {
  await withHeldApply(t, 20_000, async ({ pool, backup, data, steps }) => {
    const disk = await pool.createDisk('t.img')
    await disk.truncate(blocks * bs)
    t.true(await settles(pool.copyRange(backup, disk, 2 * bs, 0, 4 * bs)), 'blocks 2-5 copied with batch 1 held')
    const model: Buffer[] = Array.from({ length: blocks }, () => Buffer.alloc(bs))
    for (let i = 0; i < 4; i++) model[i] = data[2 + i]
    await allEqual(t, disk, model, 'after the copy')
  })
})

test('a copy of a pending backup waits as long as batches are applied, longer than the lazy bound in all', async t => {
  const waitMs = 2000
  await withHeldApply(t, waitMs, async ({ pool, backup, data, steps }) => {
    let failure: unknown = null
    const copying = pool.copy(backup, 'copy.img').catch(err => { failure = err; return null })
    // Two batches let go 1.2 s apart: 2.4 s in all, more than the bound, each well within it.
    await sleep(waitMs * 0.6)
    steps.allow(2)
    await sleep(waitMs * 0.6)
    steps.allow(Infinity)
    const copy = await copying
    t.is(failure, null)
    if (copy !== null) await allEqual(t, copy, data, 'the copy')
  })
})

test('a copy of a pending backup whose apply makes no progress fails with IO naming the pull after the lazy bound, and makes nothing', async t => {
  await withHeldApply(t, 300, async ({ pool, backup, data, steps }) => {
    const failure = await t.throwsAsync(pool.copy(backup, 'copy.img'))
    t.true(failure instanceof VdiskError)
    t.is((failure as VdiskError).code, 'IO')
    t.regex(failure?.message ?? '', /^backup b\.img: the references of lazy pull backup b\.img from remote offsite \(backup [ab]+\) are still being applied, and no batch of them was applied in 0\.3 s$/)
    t.false(pool.list().some(volume => volume.name === 'copy.img'), 'no copy made')
  })
})

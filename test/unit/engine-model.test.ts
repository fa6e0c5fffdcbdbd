/**
 * Property test: random sequences of create, write, truncate, discard, backup, clone, restore, rm, rename,
 * commit, seal, gc and reopen, run on the engine directly, leave every volume equal to the model (one byte
 * array per volume, a backup being a copy); also with 16 KiB blocks, where first writes of part of a
 * sealed block become partial slots (issue #10). Failing cases shrink; minimal ones are kept in
 * engine-regressions.test.ts.
 */
import test from 'ava'
import fc from 'fast-check'
import { opArbitrary, partialOpArbitrary, runOps } from '../helpers/model'

const blockBytes = 4096 // as runOps opens the pool

test('the engine matches the model under random operation sequences', async t => {
  const runs = Number(process.env.VDISKFS_FUZZ_RUNS ?? 20)
  await fc.assert(fc.asyncProperty(fc.array(opArbitrary, { minLength: 1, maxLength: 30 }), async ops => {
    const problem = await runOps(ops)
    if (problem !== null) throw new Error(problem)
  }), { numRuns: runs, verbose: 1 })
  t.log(`${runs} random sequences matched the model`)
  t.pass()
})

test('the engine matches the model with a two-page map cache (eviction on every step)', async t => {
  const runs = Math.ceil(Number(process.env.VDISKFS_FUZZ_RUNS ?? 20) / 2)
  await fc.assert(fc.asyncProperty(fc.array(opArbitrary, { minLength: 1, maxLength: 30 }), async ops => {
    const problem = await runOps(ops, { pageCacheMax: 2 })
    if (problem !== null) throw new Error(problem)
  }), { numRuns: runs, verbose: 1 })
  t.log(`${runs} random sequences matched the model with a two-page cache`)
  t.pass()
})

test('the engine matches the model with 16 KiB blocks (partial slots over sealed blocks)', async t => {
  // Fewer by default (make test's 20 minutes: each run seals first); make fuzz-long runs 2,000.
  const runs = Number(process.env.VDISKFS_FUZZ_RUNS ?? 14)
  // Each run starts with 16 sealed blocks, so that its first writes land on chunks.
  await fc.assert(fc.asyncProperty(fc.array(partialOpArbitrary, { minLength: 1, maxLength: 30 }), async ops => {
    const problem = await runOps([{ op: 'write', vol: 0, offset: 0, length: 64 * blockBytes, zero: false, seed: 1 }, { op: 'seal' }, ...ops], { blockBytes: 4 * blockBytes })
    if (problem !== null) throw new Error(problem)
  }), { numRuns: runs, verbose: 1 })
  t.log(`${runs} random sequences matched the model with 16 KiB blocks`)
  t.pass()
})

/**
 * Property test: random sequences of create, write, truncate, discard, backup, clone, restore, rm, rename,
 * commit, seal, gc and reopen, run on the engine directly, leave every volume equal to the model (one byte
 * array per volume, a backup being a copy); also with 16 KiB blocks, where first writes of part of a
 * sealed block become partial slots (issue #10). Failing cases shrink; minimal ones are kept in
 * engine-regressions.test.ts.
 */
import test from 'ava'
import fc from 'fast-check'
import { Op, runOps } from '../helpers/model'

const blockBytes = 4096 // as runOps opens the pool
// 4096 entries per map page at 4 KiB blocks: a page covers 16 MiB, so offsets up to 40 MiB span pages.
const spanBytes = 40 * 1024 * 1024

const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  { weight: 2, arbitrary: fc.constant({ op: 'create' as const }) },
  {
    weight: 10,
    arbitrary: fc.record({
      op: fc.constant('write' as const),
      vol: fc.nat(20),
      offset: fc.oneof(fc.nat(3 * blockBytes), fc.nat(spanBytes), fc.integer({ min: 16 * 1024 * 1024 - 2 * blockBytes, max: 16 * 1024 * 1024 + blockBytes })),
      length: fc.oneof(fc.integer({ min: 1, max: 2 * blockBytes + 7 }), fc.constantFrom(blockBytes, 4 * blockBytes)),
      zero: fc.boolean(),
      seed: fc.nat()
    })
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('truncate' as const), vol: fc.nat(20), size: fc.oneof(fc.nat(3 * blockBytes), fc.nat(spanBytes)) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('discard' as const),
      vol: fc.nat(20),
      offset: fc.oneof(fc.nat(3 * blockBytes), fc.nat(spanBytes)),
      length: fc.oneof(fc.integer({ min: 1, max: 3 * blockBytes + 7 }), fc.constantFrom(blockBytes, 4 * blockBytes)),
      grow: fc.boolean()
    })
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('backup' as const), vol: fc.nat(20) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('clone' as const), vol: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('restore' as const), vol: fc.nat(20), target: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('rm' as const), vol: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('rename' as const), vol: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'commit' as const }) },
  { weight: 1, arbitrary: fc.constant({ op: 'gc' as const }) },
  { weight: 2, arbitrary: fc.constant({ op: 'seal' as const }) },
  { weight: 2, arbitrary: fc.constant({ op: 'reopen' as const }) }
)

test('the engine matches the model under random operation sequences', async t => {
  const runs = Number(process.env.VDISKFS_FUZZ_RUNS ?? 30)
  await fc.assert(fc.asyncProperty(fc.array(opArbitrary, { minLength: 1, maxLength: 30 }), async ops => {
    const problem = await runOps(ops)
    if (problem !== null) throw new Error(problem)
  }), { numRuns: runs, verbose: 1 })
  t.log(`${runs} random sequences matched the model`)
  t.pass()
})

test('the engine matches the model with a two-page map cache (eviction on every step)', async t => {
  const runs = Math.ceil(Number(process.env.VDISKFS_FUZZ_RUNS ?? 30) / 2)
  await fc.assert(fc.asyncProperty(fc.array(opArbitrary, { minLength: 1, maxLength: 30 }), async ops => {
    const problem = await runOps(ops, { pageCacheMax: 2 })
    if (problem !== null) throw new Error(problem)
  }), { numRuns: runs, verbose: 1 })
  t.log(`${runs} random sequences matched the model with a two-page cache`)
  t.pass()
})

// With 16 KiB blocks: the same operations, plus writes (sector-aligned or not) and seal passes
// concentrated on the first 16 blocks, so that writes often land on sealed blocks (partial slots),
// on partial slots again, and on partial slots frozen by a backup.
const partialOpArbitrary: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: opArbitrary },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('write' as const),
      vol: fc.nat(20),
      offset: fc.oneof(fc.nat(64 * blockBytes), fc.nat(16).map(sector => sector * blockBytes)),
      length: fc.oneof(fc.integer({ min: 1, max: 2 * blockBytes + 7 }), fc.constantFrom(blockBytes, 2 * blockBytes)),
      zero: fc.boolean(),
      seed: fc.nat()
    })
  },
  { weight: 1, arbitrary: fc.constant({ op: 'seal' as const }) }
)

test('the engine matches the model with 16 KiB blocks (partial slots over sealed blocks)', async t => {
  const runs = Number(process.env.VDISKFS_FUZZ_RUNS ?? 30)
  // Each run starts with 16 sealed blocks, so that its first writes land on chunks.
  await fc.assert(fc.asyncProperty(fc.array(partialOpArbitrary, { minLength: 1, maxLength: 30 }), async ops => {
    const problem = await runOps([{ op: 'write', vol: 0, offset: 0, length: 64 * blockBytes, zero: false, seed: 1 }, { op: 'seal' }, ...ops], { blockBytes: 4 * blockBytes })
    if (problem !== null) throw new Error(problem)
  }), { numRuns: runs, verbose: 1 })
  t.log(`${runs} random sequences matched the model with 16 KiB blocks`)
  t.pass()
})

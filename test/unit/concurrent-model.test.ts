/**
 * Property test (issue #17, "No wrong byte under concurrency"): random batches of operations issued at
 * once on the engine (overlapping and adjacent writes, aligned and not, reads, discards, truncates,
 * backups, clones, copies, creates, restores, rm, renames, commits, seal passes, gc; reopen between
 * batches), checked against the per-sector candidate model of test/helpers/concurrent-model.ts: every
 * result must be one that some order of each batch's operations could give. Names of backups, clones,
 * copies and creates collide on purpose: one creator per name wins, the others fail with EXISTS.
 *
 * VDISKFS_CONCURRENT_RUNS (default 40) sets the runs of each property; VDISKFS_CONCURRENT_SEED replays
 * a seed. `make concurrent-long` runs 1,000. Failing cases shrink and print their batches.
 */
import test from 'ava'
import fc from 'fast-check'
import { COp, Step, runSteps } from '../helpers/concurrent-model'

const runs = Number(process.env.VDISKFS_CONCURRENT_RUNS ?? 40)
// A failing case is shrunk for at most this long (each try opens a pool); the run reports what it reached.
const shrinkLimitMs = (): number => Number(process.env.VDISKFS_CONCURRENT_LIMIT_S ?? Math.max(120, runs * 3)) * 1000
const seedOf = (offset: number): number => process.env.VDISKFS_CONCURRENT_SEED !== undefined ? Number(process.env.VDISKFS_CONCURRENT_SEED) : (Date.now() ^ (offset * 0x9e3779b1)) | 0

function opArbitrary (blockBytes: number): fc.Arbitrary<COp> {
  // Writes gather on the first blocks (so that they overlap, share blocks and sit side by side), and now
  // and then reach past the end of d0's 16 blocks.
  const span = 24 * blockBytes
  const offset = fc.oneof(
    fc.nat(3 * blockBytes),
    fc.nat(span / 512).map(s => s * 512),
    fc.nat(24).map(b => b * blockBytes),
    fc.nat(span),
    fc.nat(8).map(b => b * blockBytes - 512 + (b % 2) * 512)
  ).map(o => Math.max(0, o))
  const length = fc.oneof(
    fc.integer({ min: 1, max: 2 * blockBytes + 7 }),
    fc.integer({ min: 1, max: 16 }).map(s => s * 512),
    fc.constantFrom(blockBytes, 2 * blockBytes, 512)
  )
  const vol = fc.nat(12)
  const wait = fc.nat(3)
  const name = fc.nat(2)
  return fc.oneof(
    { weight: 12, arbitrary: fc.record({ op: fc.constant('write' as const), vol: fc.oneof(fc.constant(0), vol), offset, length, zero: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }), seed: fc.nat(), wait }) },
    { weight: 5, arbitrary: fc.record({ op: fc.constant('read' as const), vol: fc.oneof(fc.constant(0), vol), offset, length, wait }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('discard' as const), vol, offset, length: fc.oneof(length, fc.constant(4 * blockBytes)), grow: fc.boolean(), wait }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('truncate' as const), vol, size: fc.oneof(fc.nat(span), fc.nat(24).map(b => b * blockBytes)), wait }) },
    { weight: 4, arbitrary: fc.record({ op: fc.constant('backup' as const), vol, name, wait }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('clone' as const), vol, name, wait }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('copy' as const), vol, name, wait }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('create' as const), name, wait }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('restore' as const), vol, target: vol, wait }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('rm' as const), vol, wait }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('rename' as const), vol, wait }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('commit' as const), wait }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('gc' as const), wait }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('seal' as const), wait }) }
  )
}

/**
 * A batch built to collide: two or three backups, copies or creates naming one kind/name at once
 * (issue #17 finding 2: the name was checked before an await and used after it), with other operations
 * (writes to the source among them) beside them.
 */
function collidingBatch (blockBytes: number): fc.Arbitrary<Step> {
  const wait = fc.nat(2)
  const creator = fc.oneof(
    fc.record({ op: fc.constant('backup' as const), vol: fc.nat(3), name: fc.constant(0), wait }),
    fc.record({ op: fc.constant('copy' as const), vol: fc.nat(3), name: fc.constant(0), wait }),
    fc.record({ op: fc.constant('create' as const), name: fc.constant(0), wait })
  )
  return fc.record({
    kind: fc.constantFrom('backup', 'disk'),
    creators: fc.array(creator, { minLength: 2, maxLength: 3 }),
    others: fc.array(opArbitrary(blockBytes), { maxLength: 4 })
  }).map(({ kind, creators, others }) => ({
    // All the creators of one batch name the same volume: backups/b0.img, or disks/d0.img... no: a
    // disk name the first step has not taken (d1.img), so that exactly one must win.
    batch: [...creators.map(c => kind === 'backup' ? { ...c, op: 'backup' as const, vol: 'vol' in c ? c.vol : 0 } : (c.op === 'backup' ? { ...c, op: 'copy' as const, name: 1 } : { ...c, name: 1 })), ...others] as COp[]
  }))
}

function stepsArbitrary (blockBytes: number): fc.Arbitrary<Step[]> {
  const step: fc.Arbitrary<Step> = fc.oneof(
    { weight: 8, arbitrary: fc.record({ batch: fc.array(opArbitrary(blockBytes), { minLength: 1, maxLength: 8 }) }) },
    { weight: 2, arbitrary: collidingBatch(blockBytes) },
    { weight: 1, arbitrary: fc.constant({ reopen: true as const }) }
  )
  return fc.array(step, { minLength: 1, maxLength: 8 })
}

/** One batch per line, without fast-check's object decorations. */
export function showSteps (steps: Step[]): string {
  return steps.map((s, i) => `  step ${i}: ${'reopen' in s ? 'reopen' : JSON.stringify(s.batch.map(op => ({ ...op })))}`).join('\n')
}

async function property (t: import('ava').ExecutionContext, blockBytes: number, sealed: boolean, seed: number): Promise<void> {
  let ops = 0
  let batches = 0
  const started = Date.now()
  const details = await fc.check(fc.asyncProperty(stepsArbitrary(blockBytes), async steps => {
    const result = await runSteps(steps, { blockBytes, sealed })
    ops += result.ops
    batches += steps.filter(s => 'batch' in s).length
    if (result.problem !== null) throw new Error(result.problem)
  }), { numRuns: runs, seed, interruptAfterTimeLimit: shrinkLimitMs(), markInterruptAsFailure: false })
  const summary = `seed ${seed}: ${details.numRuns} runs${details.interrupted ? ' (stopped at the time limit)' : ''}, ${batches} batches, ${ops} operations (shrinking included), ${((Date.now() - started) / 1000).toFixed(1)} s`
  if (details.failed) {
    const steps = details.counterexample?.[0] ?? []
    t.fail(`${summary}\nfailed (replay: VDISKFS_CONCURRENT_SEED=${seed}, path ${details.counterexamplePath ?? '?'}; shrunk ${details.numShrinks} times):\n` +
      `${(details.errorInstance as Error | undefined)?.message ?? String(details.errorInstance)}\nbatches (op indexes count from 0 in each batch):\n${showSteps(steps)}`)
    return
  }
  t.log(`${summary}: all fit the model`)
  t.pass()
}

test('concurrent batches fit the per-sector model (4 KiB blocks)', async t => {
  await property(t, 4096, false, seedOf(1))
})

test('concurrent batches fit the per-sector model (16 KiB blocks over sealed chunks: partial slots)', async t => {
  await property(t, 16384, true, seedOf(2))
})

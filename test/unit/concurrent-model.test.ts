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
import { Candidates, Step, runSteps, stepsArbitrary, writeOp } from '../helpers/concurrent-model'

const runs = Number(process.env.VDISKFS_CONCURRENT_RUNS ?? 40)
// Each property (its runs, and the shrinking of a failing case: each try opens a pool) stops after this
// long, VDISKFS_CONCURRENT_LIMIT_S overriding; it then reports the runs done, or the smallest failing case
// reached. About 0.5 s a run on 2 cores.
const timeLimitMs = (): number => Number(process.env.VDISKFS_CONCURRENT_LIMIT_S ?? Math.max(60, runs * 1.5)) * 1000
const seedOf = (offset: number): number => process.env.VDISKFS_CONCURRENT_SEED !== undefined ? Number(process.env.VDISKFS_CONCURRENT_SEED) : (Date.now() ^ (offset * 0x9e3779b1)) | 0

/** One batch per line, without fast-check's object decorations. */
export function showSteps (steps: Step[]): string {
  return steps.map((s, i) => `  step ${i}: ${'reopen' in s ? 'reopen' : JSON.stringify(s.batch.map(op => ({ ...op })))}`).join('\n')
}

test('a sector half old and half new is no moment\'s content, but each of its bytes is some moment\'s (the rule for buffered reads)', t => {
  const before = Buffer.alloc(1024, 0x11)
  const c = new Candidates(before, [writeOp(0, Buffer.alloc(1024, 0xaa)), writeOp(256, Buffer.alloc(128, 0xbb))])
  const torn = Buffer.concat([Buffer.alloc(300, 0xaa), Buffer.alloc(212, 0x11)])
  t.regex(c.check(torn, 0, 'any') ?? '', /^sector 0 /)
  t.is(c.check(torn, 0, 'anyByte'), null)
  t.is(c.check(Buffer.alloc(512, 0xbb), 512, 'anyByte'), 'byte 512 (sector 1) holds 187, a value none of its sector\'s 2 possible contents during the batch has there')
  t.is(c.check(Buffer.concat([Buffer.alloc(256, 0xaa), Buffer.alloc(128, 0xbb), Buffer.alloc(128, 0xaa)]), 0, 'any'), null)
})

async function property (t: import('ava').ExecutionContext, blockBytes: number, sealed: boolean, seed: number): Promise<void> {
  let ops = 0
  let batches = 0
  let tries = 0
  const started = Date.now()
  const details = await fc.check(fc.asyncProperty(stepsArbitrary(blockBytes), async steps => {
    // Three runs in four on tmpfs (fast), one on the disk (slow commits: other interleavings).
    const result = await runSteps(steps, { blockBytes, sealed, tmpfs: tries++ % 4 !== 3 })
    ops += result.ops
    batches += steps.filter(s => 'batch' in s).length
    if (result.problem !== null) throw new Error(result.problem)
  }), { numRuns: runs, seed, interruptAfterTimeLimit: timeLimitMs(), markInterruptAsFailure: false })
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

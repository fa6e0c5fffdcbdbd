/**
 * Property test (issue #11): random sequences of writes, truncates, backups, clones, rm, seal, gc and
 * reopen mixed with `copy` (any volume to a new disk, O(1)) and `promote` (a clone becomes a disk)
 * leave every volume equal to the model (helpers/model.ts: one byte array per volume): a copy is a
 * snapshot of its source at the copy and neither side sees the other's later writes, whatever sealing,
 * gc and the removal of sources do meanwhile.
 */
import test from 'ava'
import fc from 'fast-check'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Harness, ModelVolume, Op } from '../helpers/model'
import { Pool } from '../../src/volume/pool'

const blockBytes = 4096
// 4096 entries per map page at 4 KiB blocks: a page covers 16 MiB, so offsets up to 40 MiB span pages.
const spanBytes = 40 * 1024 * 1024

type AdminOp = Op | { op: 'copy', vol: number } | { op: 'promote', vol: number }

const opArbitrary: fc.Arbitrary<AdminOp> = fc.oneof(
  { weight: 1, arbitrary: fc.constant({ op: 'create' as const }) },
  {
    weight: 8,
    arbitrary: fc.record({
      op: fc.constant('write' as const),
      vol: fc.nat(20),
      offset: fc.oneof(fc.nat(3 * blockBytes), fc.nat(spanBytes)),
      length: fc.oneof(fc.integer({ min: 1, max: 2 * blockBytes + 7 }), fc.constantFrom(blockBytes, 4 * blockBytes)),
      zero: fc.boolean(),
      seed: fc.nat()
    })
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('truncate' as const), vol: fc.nat(20), size: fc.oneof(fc.nat(3 * blockBytes), fc.nat(spanBytes)) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('backup' as const), vol: fc.nat(20) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('clone' as const), vol: fc.nat(20) }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('copy' as const), vol: fc.nat(20) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('promote' as const), vol: fc.nat(20) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('rm' as const), vol: fc.nat(20) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'commit' as const }) },
  { weight: 1, arbitrary: fc.constant({ op: 'gc' as const }) },
  { weight: 2, arbitrary: fc.constant({ op: 'seal' as const }) },
  { weight: 2, arbitrary: fc.constant({ op: 'reopen' as const }) }
)

/** The model's volumes matching `filter`, in the order the harness picks them. */
function pick (harness: Harness, index: number, filter: (v: ModelVolume) => boolean): ModelVolume | undefined {
  const list = [...harness.model.values()].filter(filter).sort((a, b) => (a.kind + a.name).localeCompare(b.kind + b.name))
  return list.length === 0 ? undefined : list[index % list.length]
}

async function runAdminOps (ops: AdminOp[]): Promise<string | null> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-model-'))
  let pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 1 })
  const harness = new Harness(pool, async () => {
    await harness.pool.close()
    pool = Pool.open(path.join(dir, 'pool'), { workers: 1 })
    return pool
  })
  let counter = 0
  try {
    await harness.apply({ op: 'create' })
    for (const op of ops) {
      if (op.op === 'copy') {
        const source = pick(harness, op.vol, () => true)
        if (source === undefined) continue
        const name = `k${counter++}.img`
        await harness.pool.copy(harness.pool.get(source.kind, source.name), name)
        harness.model.set(`disk/${name}`, { kind: 'disk', name, data: Buffer.from(source.data) })
      } else if (op.op === 'promote') {
        const clone = pick(harness, op.vol, v => v.kind === 'clone')
        if (clone === undefined) continue
        const name = `p${counter++}.img`
        await harness.pool.promote(harness.pool.get('clone', clone.name), name)
        harness.model.delete(`clone/${clone.name}`)
        clone.kind = 'disk'
        clone.name = name
        harness.model.set(`disk/${name}`, clone)
      } else {
        await harness.apply(op)
      }
    }
    const problem = await harness.check()
    if (problem !== null) return problem
    await harness.apply({ op: 'reopen' })
    return await harness.check()
  } finally {
    await harness.pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

test('copies and promoted clones match the model under random operation sequences', async t => {
  const runs = Number(process.env.VDISKFS_FUZZ_RUNS ?? 40)
  await fc.assert(fc.asyncProperty(fc.array(opArbitrary, { minLength: 1, maxLength: 30 }), async ops => {
    const problem = await runAdminOps(ops)
    if (problem !== null) throw new Error(problem)
  }), { numRuns: runs, verbose: 1 })
  t.log(`${runs} random sequences with copy and promote matched the model`)
  t.pass()
})

test('a copy taken between two writes to the same block keeps the first (the source is frozen, not rewritten in place)', async t => {
  const write = (seed: number): Op => ({ op: 'write', vol: 0, offset: 0, length: blockBytes, zero: false, seed })
  t.is(await runAdminOps([write(1), { op: 'copy', vol: 0 }, write(2), { op: 'seal' }, { op: 'gc' }]), null)
  t.is(await runAdminOps([write(1), { op: 'backup', vol: 0 }, { op: 'clone', vol: 0 }, { op: 'promote', vol: 0 }, { op: 'rm', vol: 0 }, { op: 'seal' }, { op: 'gc' }]), null)
})

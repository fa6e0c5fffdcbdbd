/**
 * The model the engine must match: one byte array per volume, a backup being a copy. Also the
 * interpreter that applies one generated operation to both the engine (a Pool opened directly) and the
 * model, used by the property tests and by their kept regression cases.
 */
import fc from 'fast-check'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Volume } from '../../src/volume/volume'
import { Sealer } from '../../src/seal/sealer'
import { storesOf } from './stores'

export interface ModelVolume { kind: 'disk' | 'backup' | 'clone', name: string, data: Buffer }

export type Op =
  | { op: 'create' }
  | { op: 'write', vol: number, offset: number, length: number, zero: boolean, seed: number }
  | { op: 'truncate', vol: number, size: number }
  | { op: 'discard', vol: number, offset: number, length: number, grow: boolean }
  | { op: 'backup', vol: number }
  | { op: 'clone', vol: number }
  | { op: 'restore', vol: number, target: number }
  | { op: 'rm', vol: number }
  | { op: 'rename', vol: number }
  | { op: 'commit' }
  | { op: 'gc' }
  | { op: 'seal' }
  | { op: 'reopen' }

export function bytesOf (seed: number, length: number): Buffer {
  const out = Buffer.alloc(length)
  let block = crypto.createHash('sha256').update(String(seed)).digest()
  for (let i = 0; i < length; i += block.length) {
    block.copy(out, i)
    block = crypto.createHash('sha256').update(block).digest()
  }
  return out
}

export class Harness {
  model = new Map<string, ModelVolume>()
  private counter = 0

  constructor (public pool: Pool, private readonly reopen: () => Promise<Pool>) {}

  private pick (index: number, filter: (v: ModelVolume) => boolean): ModelVolume | undefined {
    const list = [...this.model.values()].filter(filter).sort((a, b) => (a.kind + a.name).localeCompare(b.kind + b.name))
    return list.length === 0 ? undefined : list[index % list.length]
  }

  private engine (v: ModelVolume): Volume { return this.pool.get(v.kind, v.name) }

  async apply (op: Op): Promise<void> {
    const writable = (v: ModelVolume) => v.kind !== 'backup'
    switch (op.op) {
      case 'create': {
        const name = `d${this.counter++}.img`
        await this.pool.createDisk(name)
        this.model.set(`disk/${name}`, { kind: 'disk', name, data: Buffer.alloc(0) })
        return
      }
      case 'write': {
        const v = this.pick(op.vol, writable)
        if (v === undefined) return
        const data = op.zero ? Buffer.alloc(op.length) : bytesOf(op.seed, op.length)
        await this.engine(v).write(data, op.offset)
        if (op.offset + op.length > v.data.length) v.data = Buffer.concat([v.data, Buffer.alloc(op.offset + op.length - v.data.length)])
        data.copy(v.data, op.offset)
        return
      }
      case 'truncate': {
        const v = this.pick(op.vol, writable)
        if (v === undefined) return
        await this.engine(v).truncate(op.size)
        v.data = op.size <= v.data.length ? Buffer.from(v.data.subarray(0, op.size)) : Buffer.concat([v.data, Buffer.alloc(op.size - v.data.length)])
        return
      }
      case 'discard': {
        // fallocate PUNCH_HOLE (grow false) or ZERO_RANGE without KEEP_SIZE (grow true).
        const v = this.pick(op.vol, writable)
        if (v === undefined) return
        await this.engine(v).discard(op.offset, op.length, { grow: op.grow })
        const end = op.offset + op.length
        if (op.grow && end > v.data.length) v.data = Buffer.concat([v.data, Buffer.alloc(end - v.data.length)])
        if (op.offset < v.data.length) v.data.fill(0, op.offset, Math.min(end, v.data.length))
        return
      }
      case 'backup': {
        const v = this.pick(op.vol, writable)
        if (v === undefined) return
        const name = `b${this.counter++}.img`
        await this.pool.backup(this.engine(v), name)
        this.model.set(`backup/${name}`, { kind: 'backup', name, data: Buffer.from(v.data) })
        return
      }
      case 'clone': {
        const v = this.pick(op.vol, x => x.kind === 'backup')
        if (v === undefined) return
        const name = `c${this.counter++}.img`
        await this.pool.clone(this.engine(v), name)
        this.model.set(`clone/${name}`, { kind: 'clone', name, data: Buffer.from(v.data) })
        return
      }
      case 'restore': {
        const b = this.pick(op.vol, x => x.kind === 'backup')
        const target = this.pick(op.target, writable)
        if (b === undefined || target === undefined) return
        await this.pool.restore(this.engine(b), this.engine(target))
        target.data = Buffer.from(b.data)
        return
      }
      case 'rm': {
        const v = this.pick(op.vol, () => true)
        if (v === undefined) return
        await this.pool.remove(this.engine(v))
        this.model.delete(`${v.kind}/${v.name}`)
        return
      }
      case 'rename': {
        const v = this.pick(op.vol, writable)
        if (v === undefined) return
        const name = `r${this.counter++}.img`
        await this.pool.rename(this.engine(v), name)
        this.model.delete(`${v.kind}/${v.name}`)
        v.name = name
        this.model.set(`${v.kind}/${name}`, v)
        return
      }
      case 'commit': await this.pool.commit(); return
      case 'gc': await this.pool.gc(); return
      case 'seal': await new Sealer(this.pool, () => {}).sealPending(true); return
      case 'reopen': this.pool = await this.reopen()
    }
  }

  /** Every volume's content and size match the model, and the engine has no volume the model lacks. */
  async check (): Promise<string | null> {
    const names = this.pool.list().map(v => `${v.kind}/${v.name}`).sort()
    const expected = [...this.model.keys()].sort()
    if (names.join(',') !== expected.join(',')) return `volumes ${names.join(',')} != model ${expected.join(',')}`
    for (const v of this.model.values()) {
      const volume = this.engine(v)
      if (volume.size !== v.data.length) return `${v.kind} ${v.name}: size ${volume.size} != ${v.data.length}`
      let allocated = 0
      let stored = 0
      volume.map.forEachEntry((_block, entry) => { allocated++; stored += storesOf(this.pool).sizeOf(entry) })
      if (allocated !== volume.map.allocatedBlocks) return `${v.kind} ${v.name}: allocatedBlocks ${volume.map.allocatedBlocks}, counted ${allocated}`
      if (stored !== volume.map.storedBytes) return `${v.kind} ${v.name}: storedBytes ${volume.map.storedBytes}, counted ${stored}`
      const got = Buffer.alloc(v.data.length)
      if (got.length > 0) await volume.read(got, 0)
      if (!got.equals(v.data)) {
        let at = 0
        while (got[at] === v.data[at]) at++
        return `${v.kind} ${v.name}: content differs first at byte ${at}`
      }
    }
    return null
  }
}

/**
 * Runs `ops` on a fresh pool with 4 KiB blocks (or `blockBytes`: blocks of several sectors make first
 * writes over sealed blocks partial slots); returns null when engine and model agree, else why not.
 */
export async function runOps (ops: Op[], options: { pageCacheMax?: number, blockBytes?: number } = {}): Promise<string | null> {
  const { blockBytes = 4096, ...poolOptions } = options
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-model-'))
  let pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 1, ...poolOptions })
  const harness = new Harness(pool, async () => {
    await harness.pool.close()
    pool = Pool.open(path.join(dir, 'pool'), { workers: 1, ...poolOptions })
    return pool
  })
  try {
    await harness.apply({ op: 'create' })
    for (const op of ops) {
      await harness.apply(op)
      // Cheap check after every step: sizes and the volume set.
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


// ---- generators (the property tests') ----

const modelBlockBytes = 4096 // as runOps opens the pool
// 4096 entries per map page at 4 KiB blocks: a page covers 16 MiB, so offsets up to 40 MiB span pages.
const spanBytes = 40 * 1024 * 1024

/** Random operations over up to 21 volumes (4 KiB blocks; offsets up to 40 MiB span map pages). */
export const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  { weight: 2, arbitrary: fc.constant({ op: 'create' as const }) },
  {
    weight: 10,
    arbitrary: fc.record({
      op: fc.constant('write' as const),
      vol: fc.nat(20),
      offset: fc.oneof(fc.nat(3 * modelBlockBytes), fc.nat(spanBytes), fc.integer({ min: 16 * 1024 * 1024 - 2 * modelBlockBytes, max: 16 * 1024 * 1024 + modelBlockBytes })),
      length: fc.oneof(fc.integer({ min: 1, max: 2 * modelBlockBytes + 7 }), fc.constantFrom(modelBlockBytes, 4 * modelBlockBytes)),
      zero: fc.boolean(),
      seed: fc.nat()
    })
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('truncate' as const), vol: fc.nat(20), size: fc.oneof(fc.nat(3 * modelBlockBytes), fc.nat(spanBytes)) }) },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('discard' as const),
      vol: fc.nat(20),
      offset: fc.oneof(fc.nat(3 * modelBlockBytes), fc.nat(spanBytes)),
      length: fc.oneof(fc.integer({ min: 1, max: 3 * modelBlockBytes + 7 }), fc.constantFrom(modelBlockBytes, 4 * modelBlockBytes)),
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

// With 16 KiB blocks: the same operations, plus writes (sector-aligned or not) and seal passes
// concentrated on the first 16 blocks, so that writes often land on sealed blocks (partial slots),
// on partial slots again, and on partial slots frozen by a backup.
export const partialOpArbitrary: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: opArbitrary },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant('write' as const),
      vol: fc.nat(20),
      offset: fc.oneof(fc.nat(64 * modelBlockBytes), fc.nat(16).map(sector => sector * modelBlockBytes)),
      length: fc.oneof(fc.integer({ min: 1, max: 2 * modelBlockBytes + 7 }), fc.constantFrom(modelBlockBytes, 2 * modelBlockBytes)),
      zero: fc.boolean(),
      seed: fc.nat()
    })
  },
  { weight: 1, arbitrary: fc.constant({ op: 'seal' as const }) }
)


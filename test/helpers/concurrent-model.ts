/**
 * The concurrent model (issue #17, "No wrong byte under concurrency"): batches of operations issued at
 * once (Promise.all of a batch, the batches one after another), checked against a model that accepts
 * exactly what some order of each batch's operations could give, judged per 512-byte sector.
 *
 * What the model accepts, per batch:
 *  - Contents. For each volume and each sector, the operations of the batch that touch that sector
 *    (writes and discards overlapping it, truncates below its end, restores onto the volume) are applied
 *    to the sector's content before the batch in every order of every subset of them. After the batch
 *    the sector must hold one of the outcomes where all of them were applied; a read issued in the batch,
 *    a backup or a copy taken in it, may hold for each sector any outcome of any subset (a state the
 *    sector was in at some moment of the batch). Each sector may follow its own order (writes are not
 *    atomic across blocks; an unaligned write's bytes in a sector compose with the others' in that
 *    order, so no byte of a sector comes from a write that order puts before another covering it).
 *  - Sizes. Likewise for the size: after the batch it is what some order of the size-changing
 *    operations gives (write and grow-discard ends, truncates, restores); a read's count and a backup's
 *    size may be any intermediate one. Bytes past a size read as zeros if the volume grows again.
 *  - Names. The operations that create a name (backup, clone, copy, create) and name the same kind/name
 *    in one batch: exactly one succeeds if the name was free before the batch; none if it was held by a
 *    volume that the batch neither removes nor renames; at most one otherwise. Every other one fails with
 *    EXISTS. Renames go to fresh names. After the batch the pool holds exactly the volumes the model has,
 *    under their names (a renamed one under the name of one of its renames), no two with one name, and
 *    pool.commit() succeeds.
 *  - Errors. Reads, writes, discards, truncates, backups, clones, copies, commits, seals and gc succeed,
 *    except on a volume removed in the same batch (any outcome then); rm and restore may fail with
 *    NOT_FOUND only when their volume is removed in the same batch.
 * After the batch the model takes what was read back (once it is within the candidates). On `reopen`
 * steps and at the end, after closing and reopening the pool, every volume must equal the model byte for
 * byte, and verifyPool must be clean.
 */
import fc from 'fast-check'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { VdiskError } from '../../src/errors'
import { Pool } from '../../src/volume/pool'
import { Volume } from '../../src/volume/volume'
import { Sealer } from '../../src/seal/sealer'
import { verifyPool } from '../../src/inspect/verify'
import { bytesOf } from './model'

export const sectorBytes = 512

export type COp =
  | { op: 'write', vol: number, offset: number, length: number, zero: boolean, seed: number, wait: number }
  | { op: 'read', vol: number, offset: number, length: number, wait: number }
  | { op: 'discard', vol: number, offset: number, length: number, grow: boolean, wait: number }
  | { op: 'truncate', vol: number, size: number, wait: number }
  | { op: 'backup', vol: number, name: number, wait: number }
  | { op: 'clone', vol: number, name: number, wait: number }
  | { op: 'copy', vol: number, name: number, wait: number }
  | { op: 'create', name: number, wait: number }
  | { op: 'restore', vol: number, target: number, wait: number }
  | { op: 'rm', vol: number, wait: number }
  | { op: 'rename', vol: number, wait: number }
  | { op: 'commit', wait: number }
  | { op: 'gc', wait: number }
  | { op: 'seal', wait: number }

export type Step = { batch: COp[] } | { reopen: true }

interface MVol { id: number, kind: 'disk' | 'backup' | 'clone', name: string, data: Buffer }

/** An operation of a batch with its volumes resolved at the batch's start. */
interface Resolved {
  index: number
  op: COp
  vol?: MVol
  target?: MVol
  /** For creating operations: the kind and name they create. */
  creates?: { kind: 'disk' | 'backup' | 'clone', name: string }
  renameTo?: string
  payload?: Buffer
  /** The engine's volumes, taken at the batch's start (an rm in the batch does not change whom an op acts on). */
  engineVol?: Volume
  engineTarget?: Volume
}

interface Outcome { ok: boolean, value?: unknown, err?: unknown }

const key = (kind: string, name: string): string => `${kind}/${name}`
const errCode = (err: unknown): string => err instanceof VdiskError ? err.code : `non-VdiskError ${(err as Error)?.stack ?? String(err)}`
const describe = (op: COp): string => JSON.stringify(op)

/** Content ops on one volume, as functions of a sector (and of the size). */
export interface ContentOp {
  /** Applies this op to sector `s` whose bytes are `buf` (a copy is returned); null when it does not touch it. */
  touches: (s: number) => boolean
  apply: (s: number, buf: Buffer) => Buffer
  size: (size: number) => number
}

function contentOpOf (r: Resolved, backupData?: Buffer): ContentOp | null {
  const op = r.op
  switch (op.op) {
    case 'write': {
      const data = r.payload as Buffer
      const end = op.offset + op.length
      return {
        touches: s => op.offset < (s + 1) * sectorBytes && end > s * sectorBytes,
        apply: (s, buf) => {
          const out = Buffer.from(buf)
          const from = Math.max(op.offset, s * sectorBytes)
          const to = Math.min(end, (s + 1) * sectorBytes)
          data.copy(out, from - s * sectorBytes, from - op.offset, to - op.offset)
          return out
        },
        size: size => Math.max(size, end)
      }
    }
    case 'discard': {
      // Past the size every byte is zero already: zeroing it is the same as the clipping the engine does.
      const end = op.offset + op.length
      return {
        touches: s => op.offset < (s + 1) * sectorBytes && end > s * sectorBytes,
        apply: (s, buf) => {
          const out = Buffer.from(buf)
          out.fill(0, Math.max(op.offset, s * sectorBytes) - s * sectorBytes, Math.min(end, (s + 1) * sectorBytes) - s * sectorBytes)
          return out
        },
        size: size => op.grow ? Math.max(size, end) : size
      }
    }
    case 'truncate':
      return {
        touches: s => op.size < (s + 1) * sectorBytes,
        apply: (s, buf) => {
          const out = Buffer.from(buf)
          out.fill(0, Math.max(0, op.size - s * sectorBytes))
          return out
        },
        size: () => op.size
      }
    case 'restore': {
      const data = backupData as Buffer
      return {
        touches: () => true,
        apply: s => sectorOf(data, s),
        size: () => data.length
      }
    }
    default: return null
  }
}

/** Content operations for callers outside the engine harness (the mount test). */
export const writeOp = (offset: number, data: Buffer): ContentOp => contentOpOf({ index: 0, op: { op: 'write', vol: 0, offset, length: data.length, zero: false, seed: 0, wait: 0 }, payload: data })!
export const punchOp = (offset: number, length: number): ContentOp => contentOpOf({ index: 0, op: { op: 'discard', vol: 0, offset, length, grow: false, wait: 0 } })!
export const truncateOp = (size: number): ContentOp => contentOpOf({ index: 0, op: { op: 'truncate', vol: 0, size, wait: 0 } })!

function sectorOf (data: Buffer, s: number): Buffer {
  const out = Buffer.alloc(sectorBytes)
  if (s * sectorBytes < data.length) data.copy(out, 0, s * sectorBytes, Math.min(data.length, (s + 1) * sectorBytes))
  return out
}

/** The candidates of one volume over one batch. */
export class Candidates {
  private readonly cache = new Map<number, { final: Buffer[], any: Buffer[] }>()
  readonly finalSizes = new Set<number>()
  readonly anySizes = new Set<number>()

  constructor (private readonly before: Buffer, private readonly ops: ContentOp[]) {
    const n = ops.length
    const bySubset: Array<Set<number>> = Array.from({ length: 1 << n }, () => new Set<number>())
    bySubset[0].add(before.length)
    for (let mask = 0; mask < 1 << n; mask++) {
      for (const size of bySubset[mask]) {
        this.anySizes.add(size)
        for (let i = 0; i < n; i++) if ((mask & (1 << i)) === 0) bySubset[mask | (1 << i)].add(ops[i].size(size))
      }
    }
    for (const size of bySubset[(1 << n) - 1]) this.finalSizes.add(size)
  }

  get maxSize (): number { return Math.max(...this.anySizes) }

  sector (s: number): { final: Buffer[], any: Buffer[] } {
    const cached = this.cache.get(s)
    if (cached !== undefined) return cached
    const relevant = this.ops.filter(o => o.touches(s))
    const n = relevant.length
    const states: Array<Map<string, Buffer>> = Array.from({ length: 1 << n }, () => new Map())
    const start = sectorOf(this.before, s)
    states[0].set(start.toString('latin1'), start)
    const any = new Map<string, Buffer>()
    for (let mask = 0; mask < 1 << n; mask++) {
      for (const [k, buf] of states[mask]) {
        any.set(k, buf)
        for (let i = 0; i < n; i++) {
          if ((mask & (1 << i)) !== 0) continue
          const next = relevant[i].apply(s, buf)
          states[mask | (1 << i)].set(next.toString('latin1'), next)
        }
      }
    }
    const result = { final: [...states[(1 << n) - 1].values()], any: [...any.values()] }
    this.cache.set(s, result)
    return result
  }

  /**
   * Whether `got` (bytes at `position`, of a volume of `size` bytes where past the end the caller has
   * no bytes) is, per sector, among the candidates (final or any). Returns why not, or null.
   *
   * 'anyByte' is the weaker rule of a buffered read through the page cache during the batch: each byte
   * holds its value in one of the sector's candidates, not necessarily all from the same one. Linux
   * copies a page to a reader without a lock against a writer copying into it, so such a read can
   * return a sector half old and half new; ext4 and tmpfs do the same (docs/TRANSPORT.md, "Caching").
   */
  check (got: Buffer, position: number, which: 'final' | 'any' | 'anyByte'): string | null {
    const end = position + got.length
    for (let s = Math.floor(position / sectorBytes); s * sectorBytes < end; s++) {
      const from = Math.max(position, s * sectorBytes)
      const to = Math.min(end, (s + 1) * sectorBytes)
      const piece = got.subarray(from - position, to - position)
      const candidates = this.sector(s)[which === 'anyByte' ? 'any' : which]
      if (which === 'anyByte') {
        const at = piece.findIndex((byte, i) => !candidates.some(c => c[from - s * sectorBytes + i] === byte))
        if (at >= 0) return `byte ${from + at} (sector ${s}) holds ${piece[at]}, a value none of its sector's ${candidates.length} possible contents during the batch has there`
        continue
      }
      if (!candidates.some(c => c.subarray(from - s * sectorBytes, to - s * sectorBytes).equals(piece))) {
        return `sector ${s} (bytes ${from}-${to - 1}) holds none of its ${candidates.length} ${which === 'final' ? 'possible final contents' : 'possible contents during the batch'}` +
          ` (got ${piece.subarray(0, 8).toString('hex')}..., before the batch ${sectorOf(this.before, s).subarray(from - s * sectorBytes, from - s * sectorBytes + 8).toString('hex')}...)`
      }
    }
    return null
  }
}

export interface RunOptions { blockBytes?: number, log?: (line: string) => void }

export class ConcurrentHarness {
  model = new Map<number, MVol>()
  sealer: Sealer
  private counter = 0
  opsRun = 0

  constructor (public pool: Pool, private readonly reopenPool: () => Promise<Pool>) {
    this.sealer = new Sealer(pool, () => {})
  }

  private sorted (filter: (v: MVol) => boolean): MVol[] {
    return [...this.model.values()].filter(filter).sort((a, b) => key(a.kind, a.name).localeCompare(key(b.kind, b.name)))
  }

  private pick (index: number, filter: (v: MVol) => boolean): MVol | undefined {
    const list = this.sorted(filter)
    return list.length === 0 ? undefined : list[index % list.length]
  }

  private engine (v: MVol): Volume {
    const volume = this.pool.byId(v.id)
    if (volume === undefined) throw new Error(`the pool lost ${v.kind} ${v.name} (id ${v.id})`)
    return volume
  }

  async reopen (): Promise<void> {
    this.pool = await this.reopenPool()
    this.sealer = new Sealer(this.pool, () => {})
  }

  async setup (blockBytes: number, sealed: boolean): Promise<void> {
    const disk = await this.pool.createDisk('d0.img')
    const data = bytesOf(1, 16 * blockBytes)
    await disk.write(data, 0)
    this.model.set(disk.id, { id: disk.id, kind: 'disk', name: 'd0.img', data })
    if (sealed) await this.sealer.sealPending(true)
  }

  private resolve (op: COp, index: number): Resolved {
    const writable = (v: MVol): boolean => v.kind !== 'backup'
    const r: Resolved = { index, op }
    switch (op.op) {
      case 'write':
        r.vol = this.pick(op.vol, writable)
        r.payload = op.zero ? Buffer.alloc(op.length) : bytesOf(op.seed, op.length)
        break
      case 'discard': case 'truncate': case 'rename':
        r.vol = this.pick(op.vol, writable)
        if (op.op === 'rename') r.renameTo = `r${this.counter++}.img`
        break
      case 'read': case 'rm':
        r.vol = this.pick(op.vol, () => true)
        break
      case 'backup':
        r.vol = this.pick(op.vol, writable)
        r.creates = { kind: 'backup', name: `b${op.name}.img` }
        break
      case 'clone':
        r.vol = this.pick(op.vol, v => v.kind === 'backup')
        r.creates = { kind: 'clone', name: `c${op.name}.img` }
        break
      case 'copy':
        r.vol = this.pick(op.vol, () => true)
        r.creates = { kind: 'disk', name: `d${op.name}.img` }
        break
      case 'create':
        r.creates = { kind: 'disk', name: `d${op.name}.img` }
        break
      case 'restore':
        r.vol = this.pick(op.vol, v => v.kind === 'backup')
        r.target = this.pick(op.target, writable)
        break
    }
    if (r.vol !== undefined) r.engineVol = this.engine(r.vol)
    if (r.target !== undefined) r.engineTarget = this.engine(r.target)
    return r
  }

  private async issue (r: Resolved): Promise<unknown> {
    const op = r.op
    for (let i = 0; i < op.wait; i++) await new Promise(resolve => setImmediate(resolve))
    const v = r.engineVol
    switch (op.op) {
      case 'write': return await v?.write(r.payload as Buffer, op.offset)
      case 'read': {
        if (v === undefined) return
        const buf = Buffer.alloc(op.length)
        const n = await v.read(buf, op.offset)
        return buf.subarray(0, n)
      }
      case 'discard': return await v?.discard(op.offset, op.length, { grow: op.grow })
      case 'truncate': return await v?.truncate(op.size)
      case 'backup': return v === undefined ? undefined : await this.pool.backup(v, r.creates!.name)
      case 'clone': return v === undefined ? undefined : await this.pool.clone(v, r.creates!.name)
      case 'copy': return v === undefined ? undefined : await this.pool.copy(v, r.creates!.name)
      case 'create': return await this.pool.createDisk(r.creates!.name)
      case 'restore': return v === undefined || r.target === undefined ? undefined : await this.pool.restore(v, r.engineTarget!)
      case 'rm': return v === undefined ? undefined : await this.pool.remove(v)
      case 'rename': return v === undefined ? undefined : await this.pool.rename(v, r.renameTo!)
      case 'commit': return await this.pool.commit()
      case 'gc': return await this.pool.gc()
      case 'seal': return await this.sealer.sealPending(true)
    }
  }

  /** Runs one batch at once and checks it; returns why it does not fit the model, or null. */
  async batch (ops: COp[], label: string): Promise<string | null> {
    const resolved = ops.map((op, i) => this.resolve(op, i))
    // Skip operations with nothing to act on (as the sequential model does).
    const live = resolved.filter(r => {
      const o = r.op.op
      if (['write', 'read', 'discard', 'truncate', 'rename', 'rm', 'backup', 'clone', 'copy'].includes(o)) return r.vol !== undefined
      if (o === 'restore') return r.vol !== undefined && r.target !== undefined
      return true
    })
    this.opsRun += live.length
    const outcomes: Outcome[] = await Promise.all(live.map(async r => {
      try { return { ok: true, value: await this.issue(r) } } catch (err) { return { ok: false, err } }
    }))
    const where = (r: Resolved): string => `${label} op ${r.index} ${describe(r.op)}`
    const removed = new Set(live.filter(r => r.op.op === 'rm').map(r => r.vol!.id))
    const moved = new Set([...removed, ...live.filter(r => r.op.op === 'rename').map(r => r.vol!.id)])

    // ---- errors ----
    const created: Array<{ r: Resolved, volume: Volume }> = []
    const byName = new Map<string, Array<{ r: Resolved, o: Outcome }>>()
    for (let i = 0; i < live.length; i++) {
      const r = live[i]
      const o = outcomes[i]
      const gone = (v?: MVol): boolean => v !== undefined && removed.has(v.id)
      if (r.creates !== undefined) {
        const k = key(r.creates.kind, r.creates.name)
        if (!byName.has(k)) byName.set(k, [])
        byName.get(k)!.push({ r, o })
        if (o.ok) created.push({ r, volume: o.value as Volume })
        else if (errCode(o.err) !== 'EXISTS' && !(gone(r.vol) && errCode(o.err) === 'NOT_FOUND')) return `${where(r)} failed with ${errCode(o.err)}: ${(o.err as Error).message} (only EXISTS may fail a create)`
        continue
      }
      if (o.ok) continue
      const code = errCode(o.err)
      if (['write', 'read', 'discard', 'truncate'].includes(r.op.op) && gone(r.vol)) continue
      if (['rm', 'rename'].includes(r.op.op) && code === 'NOT_FOUND' && gone(r.vol)) continue
      if (r.op.op === 'restore' && code === 'NOT_FOUND' && (gone(r.target) || gone(r.vol))) continue
      return `${where(r)} failed: ${code}: ${(o.err as Error).message}`
    }
    for (const [k, attempts] of byName) {
      const wins = attempts.filter(a => a.o.ok)
      const holder = [...this.model.values()].find(v => key(v.kind, v.name) === k)
      const list = attempts.map(a => `op ${a.r.index} ${a.o.ok ? 'succeeded' : `failed ${errCode(a.o.err)}`}`).join(', ')
      if (wins.length > 1) return `${label}: ${wins.length} operations created ${k} (${list}): at most one may`
      if (holder === undefined && wins.length === 0 && attempts.some(a => !removed.has(a.r.vol?.id ?? -1))) return `${label}: ${k} was free and none of its creators succeeded (${list})`
      if (holder !== undefined && !moved.has(holder.id) && wins.length > 0) return `${label}: ${k} was held by a volume the batch left alone, yet op ${wins[0].r.index} created it`
    }

    // ---- commit after the batch ----
    try { await this.pool.commit() } catch (err) { return `${label}: pool.commit() after the batch threw ${errCode(err)}: ${(err as Error).message}` }

    // ---- candidates per volume ----
    const candidates = new Map<number, Candidates>()
    const candidatesOf = (v: MVol): Candidates => {
      let c = candidates.get(v.id)
      if (c === undefined) {
        const ops: ContentOp[] = []
        for (let i = 0; i < live.length; i++) {
          const r = live[i]
          if (!outcomes[i].ok) continue
          if (r.op.op === 'restore' && r.target?.id === v.id) ops.push(contentOpOf(r, r.vol!.data)!)
          else if (['write', 'discard', 'truncate'].includes(r.op.op) && r.vol?.id === v.id) ops.push(contentOpOf(r)!)
        }
        if (ops.length > 12) throw new Error(`${label}: ${ops.length} content operations on one volume: too many for the model`)
        c = new Candidates(v.data, ops)
        candidates.set(v.id, c)
      }
      return c
    }

    // ---- reads in the batch ----
    for (let i = 0; i < live.length; i++) {
      const r = live[i]
      const op = r.op
      if (op.op !== 'read' || !outcomes[i].ok || removed.has(r.vol!.id)) continue
      const got = outcomes[i].value as Buffer
      const c = candidatesOf(r.vol!)
      const counts = [...c.anySizes].map(size => Math.max(0, Math.min(op.length, size - op.offset)))
      if (!counts.includes(got.length)) return `${where(r)} returned ${got.length} bytes; possible: ${[...new Set(counts)].join(', ')}`
      const problem = c.check(got, op.offset, 'any')
      if (problem !== null) return `${where(r)}: ${problem}`
    }

    // ---- the namespace after the batch ----
    const expected = new Map<number, { kind: string, names: string[] }>()
    const engineVolumes = this.pool.list()
    const seen = new Map<string, number>()
    for (const volume of engineVolumes) {
      const k = key(volume.kind, volume.name)
      if (seen.has(k)) return `${label}: two volumes are named ${k} (ids ${seen.get(k)} and ${volume.id})`
      seen.set(k, volume.id)
    }
    const next = new Map<number, MVol>()
    for (const v of this.model.values()) {
      if (removed.has(v.id)) {
        const rmOk = live.some((r, i) => r.op.op === 'rm' && r.vol!.id === v.id && outcomes[i].ok)
        if (rmOk && this.pool.byId(v.id) !== undefined) return `${label}: ${v.kind} ${v.name} (id ${v.id}) was removed but is still in the pool as ${this.pool.byId(v.id)!.label}`
        if (this.pool.byId(v.id) === undefined) continue
        // rm failed (NOT_FOUND twice?) yet the volume stays: keep following it.
      }
      const renames = live.filter((r, i) => r.op.op === 'rename' && r.vol!.id === v.id && outcomes[i].ok).map(r => r.renameTo!)
      expected.set(v.id, { kind: v.kind, names: renames.length > 0 ? renames : [v.name] })
      next.set(v.id, v)
    }
    for (const { r, volume } of created) {
      expected.set(volume.id, { kind: r.creates!.kind, names: [r.creates!.name] })
    }
    for (const volume of engineVolumes) {
      const e = expected.get(volume.id)
      if (e === undefined) return `${label}: the pool has ${volume.label} (id ${volume.id}), which the model does not`
      if (volume.kind !== e.kind || !e.names.includes(volume.name)) return `${label}: id ${volume.id} is ${volume.label}, expected ${e.kind} ${e.names.join(' or ')}`
    }
    for (const id of expected.keys()) if (this.pool.byId(id) === undefined) return `${label}: id ${id} (${expected.get(id)!.kind} ${expected.get(id)!.names.join('|')}) is missing from the pool`

    // ---- contents after the batch ----
    const readAll = async (volume: Volume): Promise<Buffer> => {
      const got = Buffer.alloc(volume.size)
      if (got.length > 0) {
        const n = await volume.read(got, 0)
        if (n !== got.length) throw new Error(`${volume.label}: read ${n} of ${got.length} bytes`)
      }
      return got
    }
    for (const v of next.values()) {
      const volume = this.pool.byId(v.id)!
      const c = candidatesOf(v)
      if (!c.finalSizes.has(volume.size)) return `${label}: ${volume.label} has size ${volume.size}; possible: ${[...c.finalSizes].join(', ')}`
      const got = await readAll(volume)
      const problem = c.check(got, 0, 'final')
      if (problem !== null) return `${label}: ${volume.label} after the batch: ${problem}`
      v.data = got
      v.kind = volume.kind
      v.name = volume.name
    }
    for (const { r, volume } of created) {
      const source = r.vol
      let data: Buffer
      const got = await readAll(volume)
      if (source === undefined) {
        if (volume.size !== 0) return `${label}: new disk ${volume.name} has size ${volume.size}`
        data = got
      } else if (source.kind === 'backup' && !live.some((x, i) => outcomes[i].ok && x.op.op === 'restore' && x.target?.id === source.id)) {
        if (!got.equals(source.data)) return `${where(r)}: ${volume.label} differs from its backup ${source.name}`
        data = got
      } else {
        const c = candidatesOf(source)
        if (!c.anySizes.has(volume.size)) return `${where(r)}: ${volume.label} has size ${volume.size}; ${source.name} had sizes ${[...c.anySizes].join(', ')} during the batch`
        const problem = c.check(got, 0, 'any')
        if (problem !== null) return `${where(r)}: ${volume.label}: ${problem}`
        data = got
      }
      next.set(volume.id, { id: volume.id, kind: volume.kind as MVol['kind'], name: volume.name, data })
    }
    this.model = next
    return null
  }

  /** Every volume equals the model exactly, and the engine has no other. */
  async check (label: string): Promise<string | null> {
    const ids = this.pool.list().map(v => v.id).sort((a, b) => a - b)
    const expected = [...this.model.keys()].sort((a, b) => a - b)
    if (ids.join(',') !== expected.join(',')) return `${label}: volume ids ${ids.join(',')} != model ${expected.join(',')}`
    for (const v of this.model.values()) {
      const volume = this.engine(v)
      if (volume.kind !== v.kind || volume.name !== v.name) return `${label}: id ${v.id} is ${volume.label}, model ${v.kind} ${v.name}`
      if (volume.size !== v.data.length) return `${label}: ${volume.label}: size ${volume.size} != ${v.data.length}`
      const got = Buffer.alloc(v.data.length)
      if (got.length > 0) await volume.read(got, 0)
      if (!got.equals(v.data)) return `${label}: ${volume.label}: content differs first at byte ${got.findIndex((b, i) => b !== v.data[i])}`
    }
    const report = await verifyPool(this.pool)
    if (!report.ok) return `${label}: verify: ${[...report.problems, ...report.damaged.map(d => `${d.kind} ${d.volume} ${d.startByte}-${d.endByte}: ${d.problem}`)].join('; ')}`
    return null
  }
}

/**
 * Runs `steps` on a fresh pool (4 KiB blocks, or `blockBytes`), starting from a disk d0.img of 16
 * written blocks (sealed first with `sealed`, so that writes land on chunks); null when every batch fits
 * the model and the pool reopens equal to it, else why not.
 */
export async function runSteps (steps: Step[], options: RunOptions & { sealed?: boolean, tmpfs?: boolean } = {}): Promise<{ problem: string | null, ops: number }> {
  const { blockBytes = 4096, sealed = false, tmpfs = false } = options
  // On tmpfs a run takes a seventh of the time (no fsync waits); on the disk commits take longer, which
  // gives other interleavings: the property tests use both.
  const base = tmpfs && fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir()
  const dir = fs.mkdtempSync(path.join(base, 'vdiskfs-cmodel-'))
  const poolDir = path.join(dir, 'pool')
  const harness: ConcurrentHarness = new ConcurrentHarness(Pool.open(poolDir, { create: true, blockBytes, workers: 1 }), async () => {
    await harness.pool.close()
    return Pool.open(poolDir, { workers: 1 })
  })
  try {
    await harness.setup(blockBytes, sealed)
    for (let i = 0; i < steps.length; i++) {
      const step = steps[i]
      if ('reopen' in step) {
        await harness.reopen()
        const problem = await harness.check(`after reopen at step ${i}`)
        if (problem !== null) return { problem, ops: harness.opsRun }
        continue
      }
      const problem = await harness.batch(step.batch, `step ${i}`)
      if (problem !== null) return { problem, ops: harness.opsRun }
    }
    await harness.reopen()
    return { problem: await harness.check('at the end, after reopen'), ops: harness.opsRun }
  } finally {
    await harness.pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

// ---- the generators ----

export function opArbitrary (blockBytes: number): fc.Arbitrary<COp> {
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
export function collidingBatch (blockBytes: number): fc.Arbitrary<Step> {
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

export function stepsArbitrary (blockBytes: number): fc.Arbitrary<Step[]> {
  const step: fc.Arbitrary<Step> = fc.oneof(
    { weight: 8, arbitrary: fc.record({ batch: fc.array(opArbitrary(blockBytes), { minLength: 1, maxLength: 8 }) }) },
    { weight: 2, arbitrary: collidingBatch(blockBytes) },
    { weight: 1, arbitrary: fc.constant({ reopen: true as const }) }
  )
  return fc.array(step, { minLength: 1, maxLength: 8 })
}


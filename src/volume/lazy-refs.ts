/**
 * A lazy pull's references applied after the reply (docs/REMOTE.md, "The references after the reply").
 * The backup appears with its head mapped; the references (block index and BLAKE3 id of each block the
 * pull sent without bytes) are applied behind the reply: the look-ups, the absent chunks, the pull's
 * list, catalog.log's record, the map's entries and their commit.
 *
 * The order that keeps every read right and a killed daemon losing nothing:
 * 1. Before the reply, durable in this order: the head's chunks and rows (the import's batches); the
 *    references in POOL/lazy/UUID.refs (writeRefsFile: written, fdatasynced, its directory synced); the
 *    commit that makes the backup with the head's map (its pull's row names the file by the backup's
 *    identity). So a backup with a partial map always has its references on disk.
 * 2. In memory, in the synchronous step that inserts the volume: volume.pendingMap (from: the first
 *    block not mapped yet). Every reader of the map waits for it (Volume.mapped, read, readBlocks; a
 *    clone, copy, restore, range copy, diff, export, an import on it as a base, the hydrator's
 *    lazyMissing) and reads the map, or checks the volume, again after that await; the FUSE fast path
 *    publishes no word of a pending volume (fast-reads.ts learn), so no block not mapped yet reads as
 *    a hole natively.
 * 3. applyRefs, under the maintenance lock gc takes (its mark and sweep cannot come between the
 *    look-ups and the sets): per batch, the look-ups, the absent chunks and the pull's list in one
 *    transaction after catalog.log's record, and the map's sets in the same synchronous step; the chunks
 *    looked up are held for gc (importsHeldInMemory) until the commit that writes the map. Then the
 *    pending state ends (done), then the file is removed.
 * 4. Killed between 1's commit and 3's: at the next open the file is found before the pool serves a
 *    request, the backup is pending again and the file applied again (a chunk gc freed meanwhile is
 *    made absent and fetched). Killed after 3's commit and before the removal: applying it again sets
 *    the same entries (the same id finds the same chunk), so it is idempotent.
 *
 * The file: REF_BYTES bytes per reference, in increasing block order: the block index (u64 LE, a
 * 64 TiB volume of 4 KiB blocks has 2^34 of them) and the 32-byte id.
 */
import fs from 'node:fs'
import path from 'node:path'
import { ChunkRow } from '../catalog/catalog'
import { VdiskError, corrupt, invalid } from '../errors'
import { lazyDir } from '../format/pool-format'
import { chunkEntry } from '../format/map-format'
import { importBatchFrames } from '../limits'
import { testPause } from '../remote/test-pause'
import type { Committer } from './commit'
import type { LazyPulls } from './lazy'
import type { PoolState } from './pool-state'
import type { Volume } from './volume'

/** Bytes per reference in the file: the block index (u64 LE) and the BLAKE3 id. */
export const refBytes = 40
/**
 * The apply waits for the head's reads to go quiet for this long before it starts (PendingMap.startable),
 * and at most applyHoldMs; a reader waiting for it starts it at once.
 */
export const applyQuietMs = 50
export const applyHoldMs = 500

/** Test seams of the apply (Pool.lazyRefsSeams): each is awaited where it names. */
export interface LazyRefsSeams {
  /** After the reply, before the apply takes the maintenance lock. */
  beforeApply?: () => Promise<void>
  /** Under the lock, every entry set, before the commit that writes them. */
  beforeCommit?: () => Promise<void>
  /** Before each batch of the file is applied, with its number (not called yet: the apply is one job). */
  beforeBatch?: (batch: number) => Promise<void>
}

export function refsFile (poolDir: string, uuid: string): string { return path.join(poolDir, lazyDir, `${uuid}.refs`) }

/** The references a lazy pull's stream carried, as received (in increasing block order), packed for the file. */
export class LazyRefs {
  constructor (readonly file = '') {}
  /** The most references held in memory at once: all of them until the end frame. */
  get heldMax (): number { return this.count }
  async push (index: number, hash: Buffer): Promise<void> { this.add(index, hash) }
  private readonly parts: Buffer[] = []
  private current = Buffer.allocUnsafe(refBytes * 4096)
  private used = 0
  count = 0
  /** The first reference's block (-1: none): every block before it is mapped by the head. */
  first = -1
  private last = -1

  /** The last frame's block seen by take(). */
  private lastFrame = -1

  /**
   * A frame of the stream, of a volume of `blocks` blocks: every one must be above the one before
   * (INVALID otherwise: the batches check their own, and a reference must be above them too). Keeps a
   * reference (hash set) and returns true; returns false for the others, which the import stores.
   */
  take (index: number, hash: Buffer | null, blocks: number): boolean {
    if (!Number.isSafeInteger(index) || index <= this.lastFrame || index >= blocks) throw invalid(`a lazy pull's block ${index} out of order or past the end`)
    this.lastFrame = index
    if (hash === null) return false
    this.add(index, hash)
    return true
  }

  /** Adds the reference of `index` (above every one before it: CORRUPT otherwise). */
  add (index: number, hash: Buffer): void {
    if (!Number.isSafeInteger(index) || index <= this.last || hash.length !== 32) throw corrupt(`lazy pull: reference of block ${index} out of order or malformed`)
    if (this.used === this.current.length) {
      this.parts.push(this.current)
      this.current = Buffer.allocUnsafe(this.current.length * 2)
      this.used = 0
    }
    this.current.writeUIntLE(index, this.used, 6)
    this.current.writeUInt16LE(0, this.used + 6)
    hash.copy(this.current, this.used + 8)
    this.used += refBytes
    if (this.first < 0) this.first = index
    this.last = index
    this.count++
  }

  buffers (): Buffer[] { return [...this.parts, this.current.subarray(0, this.used)] }
}

/** Writes the references durably (written, fdatasynced, the directory synced) before the backup's commit. */
export async function writeRefsFile (state: PoolState, uuid: string, refs: LazyRefs): Promise<void> {
  const file = refsFile(state.dir, uuid)
  const fd = await state.io.open(file, 'w', 0o600)
  try {
    let at = 0
    for (const part of refs.buffers()) {
      let done = 0
      while (done < part.length) {
        const { bytesWritten } = await state.io.write(fd, part, done, part.length - done, at + done)
        done += bytesWritten
      }
      at += part.length
    }
    await state.io.fdatasync(fd)
  } finally {
    await state.io.close(fd)
  }
  await state.io.syncDirectory(path.dirname(file))
}

/** The identities of the pulls whose references file is left in the pool (lazy/UUID.refs). */
export function leftoverRefs (poolDir: string): string[] {
  let names: string[]
  try { names = fs.readdirSync(path.join(poolDir, lazyDir)) } catch { return [] }
  return names.flatMap(name => /^[0-9a-f-]{36}\.refs$/.test(name) ? [name.slice(0, 36)] : [])
}

/** How many references a file holds (its size in records). */
export function refsCount (poolDir: string, uuid: string): number {
  return Math.floor(fs.statSync(refsFile(poolDir, uuid)).size / refBytes)
}

/** The first block a references file names (-1: none), read as the pool opens. */
export function firstRefBlock (poolDir: string, uuid: string): number {
  const fd = fs.openSync(refsFile(poolDir, uuid), 'r')
  try {
    const head = Buffer.alloc(8)
    return fs.readSync(fd, head, 0, 8, 0) === 8 ? head.readUIntLE(0, 6) : -1
  } finally { fs.closeSync(fd) }
}

/**
 * A backup whose references are not all applied yet: blocks at or past `from` are not mapped. Readers
 * wait for `done` (wait, bounded by the lazy wait: then IO naming the pull).
 */
export class PendingMap {
  /** What the apply did: batches of the file, applied (distinct), applications, the most references it held at once. */
  readonly progress = { batches: 0, applied: 0, applications: 0, refsHeldMax: 0 }
  readonly done: Promise<void>
  private resolveDone!: () => void
  /** Reads of the head in flight, and when the last one ended (performance.now()): the apply lets them go first. */
  private headReads = 0
  private lastHeadRead = 0
  /** Set once a reader waits for the apply (a block past the head): it starts at once. */
  private wanted = false

  constructor (readonly from: number, private readonly waitMs: number, private readonly about: () => string) {
    this.done = new Promise<void>(resolve => { this.resolveDone = resolve })
  }

  /**
   * A read of the head only (below `from`): counted while in flight, so that the apply, whose
   * transactions and commit hold the event loop for their fsyncs, starts once the reads that came with
   * the reply (a boot sector, a partition table, the first MiB) are answered.
   */
  async headRead<T> (read: () => Promise<T>): Promise<T> {
    this.headReads++
    try { return await read() } finally { this.headReads--; this.lastHeadRead = performance.now() }
  }

  /**
   * Resolves when the apply may start: at once if a reader waits for it, else once no read of the head
   * has been in flight for applyQuietMs, and at most applyHoldMs after it was asked.
   */
  async startable (): Promise<void> {
    const asked = performance.now()
    for (;;) {
      const now = performance.now()
      if (this.wanted || now - asked >= applyHoldMs || (this.headReads === 0 && now - Math.max(asked, this.lastHeadRead) >= applyQuietMs)) return
      await new Promise(resolve => setTimeout(resolve, applyQuietMs / 2))
    }
  }

  /** Waits until every reference is in the map, at most the lazy wait; then IO naming `what` and the pull. */
  async wait (what: string): Promise<void> {
    this.wanted = true
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([this.done, new Promise<void>((_resolve, reject) => {
        timer = setTimeout(() => reject(new VdiskError('IO', `${what}: the references of ${this.about()} are still being applied after ${this.waitMs / 1000} s`)), this.waitMs)
      })])
    } finally { clearTimeout(timer) }
  }

  resolve (): void { this.resolveDone() }
}

/** The references file, checked: whole records, increasing blocks inside the volume. */
async function readRefs (state: PoolState, uuid: string, blocks: number): Promise<Buffer> {
  const bytes = await fs.promises.readFile(refsFile(state.dir, uuid))
  if (bytes.length % refBytes !== 0) throw corrupt(`lazy pull ${uuid}: its references file is ${bytes.length} bytes, not whole records`)
  let last = -1
  for (let at = 0; at < bytes.length; at += refBytes) {
    const index = bytes.readUIntLE(at, 6)
    if (index <= last || index >= blocks || bytes.readUInt16LE(at + 6) !== 0) throw corrupt(`lazy pull ${uuid}: its references file names block ${index} out of order or past the end`)
    last = index
  }
  return bytes
}

export interface ApplyContext {
  state: PoolState
  committer: Committer
  lazy: LazyPulls
  exclusive: <T>(work: () => Promise<T>) => Promise<T>
  seams: LazyRefsSeams
}

/**
 * Applies pull `uuid`'s references file to `volume`'s map (step 3 above), then ends its pending state
 * and removes the file. A volume removed meanwhile gets nothing (its pull ends, the file goes). Errors
 * (the pool closing, IO, a damaged file) leave the volume pending and the file in place: its readers
 * fail with IO after the bound, and the next open applies it again.
 */
export async function applyRefs (context: ApplyContext, volume: Volume, uuid: string): Promise<void> {
  const { state, lazy } = context
  const pending = volume.pendingMap
  if (pending === null) return
  await context.seams.beforeApply?.()
  await testPause('lazy-apply')
  await pending.startable()
  const here = (): boolean => state.volumes.get(volume.id) === volume
  const started = performance.now()
  // Where the apply's time goes, for its log line: waiting for the lock, the batches (look-ups, records, sets), the commit.
  const ms = { lock: 0, batches: 0, commit: 0 }
  const applied = await context.exclusive(async () => {
    ms.lock = performance.now() - started
    if (state.lifecycle !== 'open') throw new VdiskError('BUSY', 'the pool is closing')
    if (!here()) return 0
    const bytes = await readRefs(state, uuid, Math.ceil(volume.size / state.blockBytes))
    Object.assign(pending.progress, { batches: 1, applied: 1, applications: 1, refsHeldMax: bytes.length / refBytes })
    const held = new Set<number>()
    state.importsHeldInMemory.add(held)
    try {
      let t = performance.now()
      for (let at = 0; at < bytes.length; at += importBatchFrames * refBytes) {
        await applyBatch(state, volume, uuid, bytes.subarray(at, Math.min(bytes.length, at + importBatchFrames * refBytes)), held, here)
        if (state.lifecycle !== 'open') throw new VdiskError('BUSY', 'the pool is closing')
      }
      // eslint-disable-next-line require-atomic-updates -- here() is checked in this same synchronous step, after the last await
      if (here()) { volume.rowDirty = true; state.changed(volume) }
      await context.seams.beforeCommit?.()
      await testPause('lazy-apply-commit')
      ms.batches = performance.now() - t
      t = performance.now()
      await context.committer.commit()
      ms.commit = performance.now() - t
    } finally {
      state.importsHeldInMemory.delete(held)
    }
    return bytes.length / refBytes
  })
  // Every entry is in the map and committed: the readers go on, and the pull counts its list now.
  // eslint-disable-next-line require-atomic-updates -- only this apply ends the pending state it began with (one apply per pending volume: Pool.startApply), and nothing sets it again
  volume.pendingMap = null
  lazy.settled(uuid)
  pending.resolve()
  await state.io.remove(refsFile(state.dir, uuid))
  if (!here()) lazy.dropRemoved()
  state.log(`lazy pull: ${volume.label}: ${applied} references applied after the reply in ${(performance.now() - started).toFixed(0)} ms (the lock ${ms.lock.toFixed(0)}, look-ups, records and sets ${ms.batches.toFixed(0)}, commit ${ms.commit.toFixed(0)})`)
}

/** References looked up or set between two yields of the apply (the event loop serves reads between them). */
const applySliceRefs = 1024

const yieldTurn = async (): Promise<void> => await new Promise(resolve => setImmediate(resolve))

/**
 * One batch of references, under the lock: looked up (the chunks here taken, those not here made
 * absent, and every absent one listed for the pull), recorded (catalog.log first, then one transaction),
 * then set in the map. The look-ups and the sets go in slices of applySliceRefs, each its own turn of
 * the event loop, so that the reads of the head (answered by the engine: the fast path publishes nothing
 * while pending) are not held behind the whole batch. Nothing the slices rely on changes between them:
 * every job that makes, fills or frees chunks (imports, hydration, sealing, gc) waits for the lock this
 * runs under, and a removal of the volume is checked before each slice of sets.
 */
async function applyBatch (state: PoolState, volume: Volume, uuid: string, bytes: Buffer, held: Set<number>, here: () => boolean): Promise<void> {
  const count = bytes.length / refBytes
  const absent = new Map<string, ChunkRow>()
  const listed = new Set<number>()
  const ids: number[] = []
  for (let from = 0; from < count; from += applySliceRefs) {
    if (from > 0) await yieldTurn()
    const hashes: Buffer[] = []
    for (let i = from; i < Math.min(count, from + applySliceRefs); i++) hashes.push(bytes.subarray(i * refBytes + 8, (i + 1) * refBytes))
    const known = state.catalog.chunksByHashes(hashes)
    for (const hash of hashes) {
      const key = hash.toString('hex')
      let id = known.get(key)
      if (id === undefined) id = absent.get(key)?.id
      if (id === undefined) {
        const row = state.chunks.newAbsent(Buffer.from(hash), state.blockBytes)
        absent.set(key, row)
        id = row.id
      }
      if (absent.has(key) || state.chunks.isAbsent(id)) listed.add(id)
      ids.push(id)
      // Held from the look-up to the commit that writes the map (no gc runs under the lock; held all the same).
      held.add(id)
    }
  }
  const pull = state.catalog.lazyPulls().find(row => row.uuid === uuid)
  const record = (): void => {
    state.catalog.transaction(() => {
      state.catalog.insertChunks(absent.values())
      if (pull !== undefined) state.catalog.putLazyChunks(uuid, listed)
    })
    state.chunks.remember(absent.values())
  }
  if (pull === undefined || listed.size === 0) record()
  else {
    const made = new Map([...absent.values()].map(row => [row.id, row]))
    const logged = [...listed].flatMap(id => {
      const row = made.get(id) ?? state.catalog.chunk(id)
      return row === undefined ? [] : [{ id, hash: row.hash, rawBytes: row.rawBytes }]
    })
    await state.catalogLog.appendLazy({ pull, absent: logged }, record)
  }
  for (let from = 0; from < count; from += applySliceRefs) {
    await yieldTurn()
    if (!here()) return
    for (let i = from; i < Math.min(count, from + applySliceRefs); i++) volume.map.set(bytes.readUIntLE(i * refBytes, 6), chunkEntry(ids[i]))
  }
}

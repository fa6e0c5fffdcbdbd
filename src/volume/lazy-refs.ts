/**
 * A lazy pull's references applied after the reply (docs/REMOTE.md, "The references after the reply").
 * The backup appears with its head mapped; the references (block index and BLAKE3 id of each block the
 * pull sent without bytes) are applied behind the reply, a batch at a time: the look-ups, the absent
 * chunks, the pull's list, catalog.log's record, the map's entries; then one commit.
 *
 * The order that keeps every read right and a killed daemon losing nothing:
 * 1. Before the reply, durable in this order: the head's chunks and rows (the import's batches); the
 *    references in POOL/lazy/UUID.refs (LazyRefs: appended a batch at a time as the stream brings them,
 *    then fdatasynced and its directory synced: seal); the commit that makes the backup with the head's
 *    map (its pull's row names the file by the backup's identity). So a backup with a partial map always
 *    has its references on disk. A stream that ends without its backup removes its file (discard), and
 *    a file whose backup never appeared is removed as the pool opens.
 * 2. In memory, in the synchronous step that inserts the volume: volume.pendingMap (from: the first
 *    reference's block; every block before it is the head's). A read reaching past the head waits for
 *    the batches holding its blocks (waitBlocks), then reads the map; every other reader of the map
 *    waits for all of them (Volume.mapped: a clone, copy, restore, range copy, diff, export, an import
 *    on it as a base, the hydrator's lazyMissing) and checks the volume again after that await; the FUSE
 *    fast path publishes no word of a pending volume (fast-reads.ts learn).
 * 3. applyRefs: the file's batches (lazyRefsBatchRefs references each) in block order, a reader's batch
 *    first when one waits (found by a binary search over the file's records), each batch one job under
 *    the maintenance lock gc takes: read from the file and checked, looked up, recorded (catalog.log,
 *    one transaction), set in the map. A batch a reader took is applied again when the ordered walk
 *    reaches it: the same ids find the same chunks, so it sets the same entries. Once the walk has
 *    applied every batch, one commit under the lock; then the pending state ends (done), then the file
 *    is removed.
 * 4. Killed before the file's removal: at the next open the file is found before the pool serves a
 *    request, the backup is pending again and every batch is applied again (those applied before, in
 *    order or not, set the same entries; a chunk gc freed meanwhile is made absent and fetched).
 */
import fs from 'node:fs'
import { crc32 } from 'node:zlib'
import path from 'node:path'
import { ChunkRow } from '../catalog/catalog'
import { VdiskError, corrupt, invalid } from '../errors'
import { lazyDir } from '../format/pool-format'
import { chunkEntry } from '../format/map-format'
import { refBytes, refCrcOffset, refHashBytes, refHashOffset, refIndexBytes, refsFormatVersion, refsHeaderBytes, refsMagic, refsSuffix } from '../format/lazy-refs-format'
import type { FileIo } from '../io/file-io'
import { testPause } from '../remote/test-pause'
import type { Committer } from './commit'
import type { LazyPulls } from './lazy'
import type { PoolState } from './pool-state'
import type { Volume } from './volume'

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
  /** Before each batch is applied (outside the lock), with its number in the file: a reader's batch, or the walk's next. */
  beforeBatch?: (batch: number) => Promise<void>
  /** Under the lock, every batch applied, before the commit that writes them. */
  beforeCommit?: () => Promise<void>
}

/** Whether the record at `at` of `bytes` holds the CRC-32 of its bytes before the CRC. */
function recordIntact (bytes: Buffer, at: number): boolean {
  return (crc32(bytes.subarray(at, at + refCrcOffset)) >>> 0) === bytes.readUInt32LE(at + refCrcOffset)
}

export function refsFile (poolDir: string, uuid: string): string { return path.join(poolDir, lazyDir, `${uuid}${refsSuffix}`) }

function refsHeader (): Buffer {
  const header = Buffer.alloc(refsHeaderBytes)
  header.write(refsMagic, 0, 'latin1')
  header.writeUInt32LE(refsFormatVersion, 8)
  header.writeUInt32LE(refBytes, 12)
  return header
}

/**
 * The references of a lazy pull's stream, as they arrive (in increasing block order), written to its
 * file a batch at a time: at most `batchRefs` of them in memory. Used by one stream's loop, each call
 * awaited before the next.
 */
export class LazyRefs {
  count = 0
  /** The first reference's block (-1: none): every block before it is mapped by the head. */
  first = -1
  /** The most references held in memory at once (at most batchRefs). */
  heldMax = 0
  /** Set in the synchronous step that inserts the backup: the file is the backup's now, which the apply removes. */
  kept = false
  private last = -1
  /** The last frame's block seen by take(). */
  private lastFrame = -1
  private readonly buffer: Buffer
  private used = 0
  private fd: number | null = null
  /** Bytes in the file so far (the header included). */
  private written = 0

  constructor (private readonly io: FileIo, readonly file: string, readonly batchRefs: number) {
    this.buffer = Buffer.allocUnsafe(batchRefs * refBytes)
  }

  /**
   * A frame of the stream, of a volume of `blocks` blocks: every one must be above the one before
   * (INVALID otherwise: the batches check their own, and a reference must be above them too). Keeps a
   * reference (hash set) and returns true; returns false for the others, which the import stores. The
   * caller appends once `full`.
   */
  take (index: number, hash: Buffer | null, blocks: number): boolean {
    if (!Number.isSafeInteger(index) || index <= this.lastFrame || index >= blocks) throw invalid(`a lazy pull's block ${index} out of order or past the end`)
    this.lastFrame = index
    if (hash === null) return false
    this.add(index, hash)
    return true
  }

  /** Whether a batch is held: append() before adding more. */
  get full (): boolean { return this.used === this.batchRefs }

  /** Adds the reference of `index` (above every one before it: CORRUPT otherwise); the caller appends once full. */
  add (index: number, hash: Buffer): void {
    if (!Number.isSafeInteger(index) || index <= this.last || hash.length !== 32) throw corrupt(`lazy pull: reference of block ${index} out of order or malformed`)
    if (this.full) throw new Error('LazyRefs.add: a whole batch is held; append() it first')
    const at = this.used * refBytes
    this.buffer.writeUIntLE(index, at, refIndexBytes)
    this.buffer.writeUInt16LE(0, at + refIndexBytes)
    hash.copy(this.buffer, at + refHashOffset)
    this.buffer.writeUInt32LE(crc32(this.buffer.subarray(at, at + refCrcOffset)) >>> 0, at + refCrcOffset)
    this.used++
    this.heldMax = Math.max(this.heldMax, this.used)
    if (this.first < 0) this.first = index
    this.last = index
    this.count++
  }

  /** add(), then append() once a batch is held. */
  async push (index: number, hash: Buffer): Promise<void> {
    this.add(index, hash)
    if (this.full) await this.append()
  }

  /** Writes the references held to the file (created with its header by the first): not durable until seal(). */
  async append (): Promise<void> {
    if (this.used === 0) return
    if (this.fd === null) {
      // 'w': a file left by an earlier stream of the same pull (which ended without its backup) starts over.
      this.fd = await this.io.open(this.file, 'w', 0o600)
      await this.writeAll(refsHeader())
    }
    await this.writeAll(this.buffer.subarray(0, this.used * refBytes))
    this.used = 0
  }

  private async writeAll (bytes: Buffer): Promise<void> {
    let done = 0
    while (done < bytes.length) {
      const { bytesWritten } = await this.io.write(this.fd as number, bytes, done, bytes.length - done, this.written + done)
      done += bytesWritten
    }
    this.written += bytes.length
  }

  /** Makes the file durable before the backup's commit: the rest appended, fdatasynced, closed, its directory synced. */
  async seal (): Promise<void> {
    await this.append()
    if (this.fd === null) throw new Error('LazyRefs.seal: no reference')
    const fd = this.fd
    this.fd = null
    try { await this.io.fdatasync(fd) } finally { await this.io.close(fd) }
    await this.io.syncDirectory(path.dirname(this.file))
  }

  /** The stream ended without its backup (failed, or the CLI gone): the file goes. Nothing once kept. */
  async discard (): Promise<void> {
    if (this.kept) return
    const fd = this.fd
    this.fd = null
    if (fd !== null) await this.io.close(fd)
    await this.io.remove(this.file)
  }
}

/** The identities of the pulls whose references file is left in the pool (lazy/UUID.refs). */
export function leftoverRefs (poolDir: string): string[] {
  let names: string[]
  try { names = fs.readdirSync(path.join(poolDir, lazyDir)) } catch { return [] }
  const pattern = new RegExp(`^[0-9a-f-]{36}${refsSuffix.replace('.', '\\.')}$`)
  return names.flatMap(name => pattern.test(name) ? [name.slice(0, 36)] : [])
}

/**
 * How many references a file left in the pool holds and its first block, read as the pool opens (the
 * backup pending from that block). A file too short or with another header gives { count: 0, first: 0 }:
 * every read of the backup waits, and the apply fails on it (CORRUPT, logged), so nothing is read as a hole.
 */
export function peekRefs (poolDir: string, uuid: string): { count: number, first: number } {
  const fd = fs.openSync(refsFile(poolDir, uuid), 'r')
  try {
    const head = Buffer.alloc(refsHeaderBytes + refBytes)
    const got = fs.readSync(fd, head, 0, head.length, 0)
    if (got < head.length || !head.subarray(0, refsHeaderBytes).equals(refsHeader())) return { count: 0, first: 0 }
    return { count: Math.floor((fs.fstatSync(fd).size - refsHeaderBytes) / refBytes), first: head.readUIntLE(refsHeaderBytes, refIndexBytes) }
  } finally { fs.closeSync(fd) }
}

/** A reader waiting for blocks [first, last] to be mapped. */
interface BlockRequest { first: number, last: number, resolve: () => void }

/** What an apply did (tests, the log line): the file's batches, those applied (each once), applications (a reader's batch twice), the most references it held at once. */
export interface ApplyProgress { batches: number, applied: number, applications: number, refsHeldMax: number }

/**
 * A backup whose references are not all applied yet: blocks at or past `from` may not be mapped. A
 * read waits for the batches holding its blocks (waitBlocks: the apply takes them next); other readers
 * of the map wait for `done` (wait). Both are bounded by the lazy wait, then IO naming the pull.
 * What is mapped: every block below mappedBelow (the head and the batches the ordered walk applied),
 * and the ranges of the batches applied for readers out of order. A batch's range runs from its first
 * reference's block to the next batch's first: the file is in block order, so no reference of a block
 * in it is in another batch.
 */
export class PendingMap {
  readonly done: Promise<void>
  private resolveDone!: () => void
  readonly progress: ApplyProgress = { batches: 0, applied: 0, applications: 0, refsHeldMax: 0 }
  private mappedBelow: number
  /** Block ranges [from, to) mapped out of order, sorted and apart, each at or above mappedBelow. */
  private mappedRanges: Array<[number, number]> = []
  /** Readers waiting for blocks, oldest first. */
  private readonly requests = new Set<BlockRequest>()
  /** Reads of the head in flight, and when the last one ended (performance.now()): the apply lets them go first. */
  private headReads = 0
  private lastHeadRead = 0
  /** Set once a reader waits for the apply (a block past the head): it starts at once. */
  private wanted = false

  constructor (readonly from: number, private readonly waitMs: number, private readonly about: () => string) {
    this.mappedBelow = from
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

  /** The first block of [first, last] not mapped yet; -1 when all are. */
  firstUnmapped (first: number, last: number): number {
    let block = Math.max(first, this.mappedBelow)
    for (const [from, to] of this.mappedRanges) {
      if (block > last || from > block) break
      if (to > block) block = to
    }
    return block <= last ? block : -1
  }

  /**
   * Waits until blocks [first, last] are mapped (their batches applied: the apply takes them next), at
   * most the lazy wait; then IO naming `what` and the pull. At once when they are.
   */
  async waitBlocks (first: number, last: number, what: string): Promise<void> {
    if (this.firstUnmapped(first, last) < 0) return
    let resolve!: () => void
    const mapped = new Promise<void>(resolve_ => { resolve = resolve_ })
    const request: BlockRequest = { first, last, resolve }
    this.requests.add(request)
    try { await this.bounded(mapped, what) } finally { this.requests.delete(request) }
  }

  /** Waits until every reference is in the map, at most the lazy wait; then IO naming `what` and the pull. */
  async wait (what: string): Promise<void> { await this.bounded(this.done, what) }

  private async bounded (mapped: Promise<void>, what: string): Promise<void> {
    this.wanted = true
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([mapped, this.done, new Promise<void>((_resolve, reject) => {
        timer = setTimeout(() => reject(new VdiskError('IO', `${what}: the references of ${this.about()} are still being applied after ${this.waitMs / 1000} s`)), this.waitMs)
      })])
    } finally { clearTimeout(timer) }
  }

  /** The first block a waiting reader needs that is not mapped yet (its oldest request first); -1: none waits. */
  nextWanted (): number {
    for (const request of this.requests) {
      const block = this.firstUnmapped(request.first, request.last)
      if (block >= 0) return block
    }
    return -1
  }

  /**
   * Blocks [from, to) are mapped (a batch's range, its entries set): by the ordered walk (every block
   * below `to` is then) or out of order for a reader. Wakes the readers whose blocks all are.
   */
  mapped (from: number, to: number, ordered: boolean): void {
    if (ordered) this.mappedBelow = Math.max(this.mappedBelow, to)
    else {
      const ranges = [...this.mappedRanges, [from, to] as [number, number]].sort((a, b) => a[0] - b[0])
      this.mappedRanges = []
      for (const range of ranges) {
        const previous = this.mappedRanges[this.mappedRanges.length - 1]
        if (previous !== undefined && range[0] <= previous[1]) previous[1] = Math.max(previous[1], range[1])
        else this.mappedRanges.push([range[0], range[1]])
      }
    }
    this.mappedRanges = this.mappedRanges.filter(([, end]) => end > this.mappedBelow)
    for (const request of this.requests) if (this.firstUnmapped(request.first, request.last) < 0) request.resolve()
  }

  resolve (): void { this.resolveDone() }
}

/**
 * A references file opened for its apply: checked as far as its size and header, its batches read
 * and checked one at a time. Only the apply reads it; it stays unchanged until the apply removes it.
 */
class RefsReader {
  private constructor (private readonly io: FileIo, private readonly fd: number, private readonly uuid: string, private readonly blocks: number, readonly count: number, readonly batchRefs: number) {}

  /** Errors: CORRUPT (another header, not whole records, none), IO. */
  static async open (io: FileIo, file: string, uuid: string, blocks: number, batchRefs: number): Promise<RefsReader> {
    const fd = await io.open(file, 'r')
    try {
      const { size } = await io.fstat(fd)
      const header = Buffer.alloc(refsHeaderBytes)
      const { bytesRead } = await io.read(fd, header, 0, refsHeaderBytes, 0)
      if (bytesRead < refsHeaderBytes || !header.equals(refsHeader())) throw corrupt(`lazy pull ${uuid}: its references file has no valid header (magic ${refsMagic}, version ${refsFormatVersion}, ${refBytes}-byte records)`)
      const records = size - refsHeaderBytes
      if (records % refBytes !== 0 || records === 0) throw corrupt(`lazy pull ${uuid}: its references file holds ${records} bytes of records, not whole ${refBytes}-byte records`)
      return new RefsReader(io, fd, uuid, blocks, records / refBytes, batchRefs)
    } catch (err) {
      await io.close(fd)
      throw err
    }
  }

  get batches (): number { return Math.ceil(this.count / this.batchRefs) }

  async close (): Promise<void> { await this.io.close(this.fd) }

  /** The block of record `record` (CORRUPT when the record fails its CRC). */
  private async blockOf (record: number): Promise<number> {
    const bytes = Buffer.alloc(refBytes)
    await this.readExactly(bytes, refsHeaderBytes + record * refBytes)
    if (!recordIntact(bytes, 0)) throw corrupt(`lazy pull ${this.uuid}: its references file's record ${record} fails its CRC`)
    return bytes.readUIntLE(0, refIndexBytes)
  }

  private async readExactly (target: Buffer, position: number): Promise<void> {
    let done = 0
    while (done < target.length) {
      const { bytesRead } = await this.io.read(this.fd, target, done, target.length - done, position + done)
      if (bytesRead === 0) throw corrupt(`lazy pull ${this.uuid}: its references file ends early`)
      done += bytesRead
    }
  }

  /**
   * The batch whose range holds `block` (at or past the first reference's): the last batch whose first
   * reference's block is at or below it, by a binary search over the batches' first records. Whatever the
   * records hold, the batch found has first(k) <= block < first(k + 1), the range its apply maps.
   */
  async batchOf (block: number): Promise<number> {
    let low = 0
    let high = this.batches - 1
    while (low < high) {
      const middle = Math.ceil((low + high) / 2)
      if (await this.blockOf(middle * this.batchRefs) <= block) low = middle
      else high = middle - 1
    }
    return low
  }

  /**
   * Batch `batch`'s records, checked (every block above the one before, the record before the batch
   * included, and inside the volume; the reserved bytes 0), and the range of blocks it maps: from its
   * first record's block (the first batch's: `from`) to the next batch's first (the end: Infinity).
   * Errors: CORRUPT, IO.
   */
  async batch (batch: number, from: number): Promise<{ records: Buffer, from: number, to: number }> {
    const first = batch * this.batchRefs
    const end = Math.min(this.count, first + this.batchRefs)
    // One record either side with it: the order across the batch's edges is checked too, and the next
    // batch's first block ends the range.
    const readFrom = Math.max(0, first - 1)
    const readTo = Math.min(this.count, end + 1)
    const bytes = Buffer.alloc((readTo - readFrom) * refBytes)
    await this.readExactly(bytes, refsHeaderBytes + readFrom * refBytes)
    let last = -1
    for (let at = 0; at < bytes.length; at += refBytes) {
      if (!recordIntact(bytes, at)) throw corrupt(`lazy pull ${this.uuid}: its references file's record ${readFrom + at / refBytes} fails its CRC (batch ${batch})`)
      const index = bytes.readUIntLE(at, refIndexBytes)
      if (index <= last || index >= this.blocks || bytes.readUInt16LE(at + refIndexBytes) !== 0) throw corrupt(`lazy pull ${this.uuid}: its references file names block ${index} out of order or past the end (batch ${batch})`)
      last = index
    }
    const records = bytes.subarray((first - readFrom) * refBytes, (end - readFrom) * refBytes)
    return { records, from: batch === 0 ? from : records.readUIntLE(0, refIndexBytes), to: end < this.count ? bytes.readUIntLE((end - readFrom) * refBytes, refIndexBytes) : Infinity }
  }
}

export interface ApplyContext {
  state: PoolState
  committer: Committer
  lazy: LazyPulls
  exclusive: <T>(work: () => Promise<T>) => Promise<T>
  seams: LazyRefsSeams
  /** References per batch (limits.ts lazyRefsBatchRefs; smaller in tests). */
  batchRefs: number
}

/**
 * Applies pull `uuid`'s references file to `volume`'s map (step 3 above), then ends its pending state
 * and removes the file. The batches go in order, except that the batch of a block a reader waits for is
 * taken first; the walk applies that batch again when it reaches it (the same entries). A volume
 * removed meanwhile gets nothing more (its pull ends, the file goes). Errors (the pool closing, IO, a
 * damaged file) leave the volume pending and the file in place: the readers of blocks not mapped yet
 * fail with IO after the bound, and the next open applies the file again.
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
  const closing = (): void => { if (state.lifecycle !== 'open') throw new VdiskError('BUSY', 'the pool is closing') }
  closing()
  const reader = await RefsReader.open(state.io, refsFile(state.dir, uuid), uuid, Math.ceil(volume.size / state.blockBytes), context.batchRefs)
  const progress = pending.progress
  progress.batches = reader.batches
  // Batches a reader took ahead of the walk, until the walk reaches them (for progress.applied).
  const ahead = new Set<number>()
  try {
    // The ordered walk's next batch; a reader's batch goes before it, and is applied again when the walk reaches it.
    let walk = 0
    while (walk < reader.batches && here()) {
      const wanted = pending.nextWanted()
      const batch = wanted >= 0 ? await reader.batchOf(wanted) : walk
      await context.seams.beforeBatch?.(batch)
      const t = performance.now()
      let locked = t
      // One job under the lock: gc's mark and sweep (which commit first, and so see the sets) never come
      // between a batch's look-ups and its sets; between two batches they may (a chunk that only later
      // batches name may be freed: those make it absent, and it is fetched).
      const range = await context.exclusive(async () => {
        locked = performance.now()
        ms.lock += locked - t
        closing()
        if (!here()) return null
        const { records, from, to } = await reader.batch(batch, pending.from)
        progress.refsHeldMax = Math.max(progress.refsHeldMax, records.length / refBytes)
        const held = new Set<number>()
        state.importsHeldInMemory.add(held)
        try {
          return await applyBatch(state, volume, uuid, records, held, here) ? { from, to } : null
        } finally {
          state.importsHeldInMemory.delete(held)
        }
      })
      ms.batches += performance.now() - locked
      if (range === null) break
      if (batch !== walk) ahead.add(batch)
      progress.applications++
      // The batch's entries are set (not committed: the file stays until the commit below, and a reopen
      // applies it again): its readers go on.
      pending.mapped(range.from, range.to, batch === walk)
      if (batch === walk) ahead.delete(walk++)
      progress.applied = walk + ahead.size
    }
    await context.exclusive(async () => {
      closing()
      if (!here()) return
      await context.seams.beforeCommit?.()
      await testPause('lazy-apply-commit')
      const t = performance.now()
      await context.committer.commit()
      ms.commit = performance.now() - t
    })
  } finally {
    await reader.close()
  }
  // Every entry is in the map and committed (or the volume is gone): the readers go on, and the pull counts its list now.
  // eslint-disable-next-line require-atomic-updates -- only this apply ends the pending state it began with (one apply per pending volume: Pool.startApply), and nothing sets it again
  volume.pendingMap = null
  lazy.settled(uuid)
  pending.resolve()
  await state.io.remove(refsFile(state.dir, uuid))
  if (!here()) lazy.dropRemoved()
  state.log(`lazy pull: ${volume.label}: ${reader.count} references applied after the reply in ${(performance.now() - started).toFixed(0)} ms, ${progress.batches} batch${progress.batches === 1 ? '' : 'es'} (${progress.applications - progress.applied} applied again after a reader took them first; the lock ${ms.lock.toFixed(0)}, look-ups, records and sets ${ms.batches.toFixed(0)}, commit ${ms.commit.toFixed(0)})`)
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
 * runs under, and a removal of the volume is checked before each slice of sets. Returns whether every
 * entry was set (false: the volume was removed meanwhile).
 */
async function applyBatch (state: PoolState, volume: Volume, uuid: string, bytes: Buffer, held: Set<number>, here: () => boolean): Promise<boolean> {
  const count = bytes.length / refBytes
  const absent = new Map<string, ChunkRow>()
  const listed = new Set<number>()
  const ids: number[] = []
  for (let from = 0; from < count; from += applySliceRefs) {
    if (from > 0) await yieldTurn()
    const hashes: Buffer[] = []
    for (let i = from; i < Math.min(count, from + applySliceRefs); i++) hashes.push(bytes.subarray(i * refBytes + refHashOffset, i * refBytes + refHashOffset + refHashBytes))
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
      // Held from the look-up to the sets (no gc runs under the lock; held all the same). After the sets
      // the map names it, and gc commits before it marks or decides, so it sees them.
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
    if (!here()) return false
    for (let i = from; i < Math.min(count, from + applySliceRefs); i++) volume.map.set(bytes.readUIntLE(i * refBytes, refIndexBytes), chunkEntry(ids[i]))
  }
  // In the step of the last set (here() checked after the last await): the next commit writes the row
  // and the pages, whichever commit that is (the daemon's, gc's, or the apply's last).
  volume.rowDirty = true
  state.changed(volume)
  return true
}

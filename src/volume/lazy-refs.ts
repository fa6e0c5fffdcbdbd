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
 *    waits for all of them (Volume.mapped: a copy, restore, range copy, diff, export, an import on it as
 *    a base, the hydrator's lazyMissing) and checks the volume again after that await; the FUSE fast
 *    path publishes no word of a pending volume (fast-reads.ts learn). A clone made meanwhile is made at
 *    once and pending with the backup (PullApply, CloneRecord; docs/REMOTE.md, "A clone of a pending
 *    backup"): each batch is set in it too, once, committed and recorded in its record before the
 *    clone's reads and writes of those blocks go on (a write waits for its batch: Volume.owned).
 * 3. applyRefs: the file's batches (lazyRefsBatchRefs references each) in block order, a reader's batch
 *    first when one waits (found by a binary search over the file's records), each batch one job under
 *    the maintenance lock gc takes: read from the file and checked, looked up, recorded (catalog.log,
 *    one transaction), set in the map. A batch a reader took is applied again when the ordered walk
 *    reaches it: the same ids find the same chunks, so it sets the same entries. Once the walk has
 *    applied every batch, one commit under the lock; then the pending state ends (done), then the file
 *    is removed.
 * 4. Killed before the file's removal: at the next open the file is found before the pool serves a
 *    request, the backup is pending again and every batch is applied again (those applied before, in
 *    order or not, set the same entries; a chunk gc freed meanwhile is made absent and fetched); each
 *    clone whose record is left is pending again, and gets only the ranges its record lacks.
 */
import fs from 'node:fs'
import { crc32 } from 'node:zlib'
import path from 'node:path'
import { ChunkRow } from '../catalog/catalog'
import { VdiskError, corrupt, invalid } from '../errors'
import { lazyDir } from '../format/pool-format'
import { chunkEntry } from '../format/map-format'
import { cloneFormatVersion, cloneHeaderBytes, cloneMagic, cloneRangeEnd, cloneRecordBytes, cloneSuffix, refBytes, refCrcOffset, refHashBytes, refHashOffset, refIndexBytes, refsFormatVersion, refsHeaderBytes, refsMagic, refsSuffix } from '../format/lazy-refs-format'
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

/** A pull's identity as a file name: 36 hex digits and dashes (a UUID; leftoverRefs' names), never a path. */
function identityName (uuid: string): string {
  if (!/^[0-9a-f-]{36}$/.test(uuid)) throw invalid(`a lazy pull's identity ${JSON.stringify(uuid.slice(0, 80))} is not a UUID`)
  return uuid
}

export function refsFile (poolDir: string, uuid: string): string { return path.join(poolDir, lazyDir, `${identityName(uuid)}${refsSuffix}`) }

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
  /** When a batch was last mapped (performance.now()): a whole wait lasts while batches are. */
  private lastProgress = 0

  /**
   * `end`: the backup's size in blocks (no reference is at or past it: a clone's blocks past it, written
   * as it grew, are its own). `ranges`: block ranges mapped already (a clone's, from the backup's state
   * when it was made or from its record at open).
   */
  constructor (readonly from: number, private readonly waitMs: number, private readonly about: () => string, readonly end = Infinity, ranges: ReadonlyArray<readonly [number, number]> = []) {
    this.mappedBelow = from
    this.done = new Promise<void>(resolve => { this.resolveDone = resolve })
    for (const [first, to] of [...ranges].sort((a, b) => a[0] - b[0])) this.mapped(first, to, first <= this.mappedBelow)
  }

  /** The block ranges [from, to) mapped past the head now (a clone made now has them in its map). */
  mappedNow (): Array<[number, number]> {
    return [...(this.mappedBelow > this.from ? [[this.from, this.mappedBelow] as [number, number]] : []), ...this.mappedRanges.map(([a, b]) => [a, b] as [number, number])]
  }

  /** The ranges of [from, to) not mapped yet, in order (a batch's blocks to set in a clone). */
  unmappedIn (from: number, to: number): Array<[number, number]> {
    const gaps: Array<[number, number]> = []
    const stop = Math.min(to, this.end)
    let block = Math.max(from, this.mappedBelow)
    for (const [a, b] of this.mappedRanges) {
      if (block >= stop) break
      if (b <= block) continue
      if (a > block) gaps.push([block, Math.min(a, stop)])
      block = Math.max(block, b)
    }
    if (block < stop) gaps.push([block, stop])
    return gaps
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
    last = Math.min(last, this.end - 1)
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

  /**
   * Waits until every reference is in the map, as long as the apply goes on (at 1 TiB it takes
   * minutes); IO naming `what` and the pull once no batch was applied for the lazy wait.
   */
  async wait (what: string): Promise<void> { await this.bounded(this.done, what, true) }

  /**
   * Waits for `mapped` (or the whole apply), at most the lazy wait in all, or with `whileApplied`, until
   * no batch was applied for the lazy wait; then IO naming `what` and the pull.
   */
  private async bounded (mapped: Promise<void>, what: string, whileApplied = false): Promise<void> {
    this.wanted = true
    const since = performance.now()
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([mapped, this.done, new Promise<void>((_resolve, reject) => {
        const check = (): void => {
          const idle = performance.now() - (whileApplied ? Math.max(since, this.lastProgress) : since)
          if (idle < this.waitMs) { timer = setTimeout(check, this.waitMs - idle); return }
          reject(new VdiskError('IO', whileApplied
            ? `${what}: the references of ${this.about()} are still being applied, and no batch of them was applied in ${this.waitMs / 1000} s`
            : `${what}: the references of ${this.about()} are still being applied after ${this.waitMs / 1000} s`))
        }
        timer = setTimeout(check, this.waitMs)
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
    this.lastProgress = performance.now()
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

export function cloneFile (poolDir: string, pull: string, clone: string): string { return path.join(poolDir, lazyDir, `${identityName(pull)}.${identityName(clone)}${cloneSuffix}`) }

/** The pending clones' records left in the pool (lazy/PULL.CLONE.clone). */
export function leftoverClones (poolDir: string): Array<{ pull: string, clone: string }> {
  let names: string[]
  try { names = fs.readdirSync(path.join(poolDir, lazyDir)) } catch { return [] }
  const pattern = new RegExp(`^([0-9a-f-]{36})\\.([0-9a-f-]{36})${cloneSuffix.replace('.', '\\.')}$`)
  return names.flatMap(name => {
    const match = pattern.exec(name)
    return match === null ? [] : [{ pull: match[1], clone: match[2] }]
  })
}

function cloneRecord (from: number, to: number): Buffer {
  const bytes = Buffer.alloc(cloneRecordBytes)
  bytes.writeUIntLE(from, 0, 6)
  bytes.writeUIntLE(to === Infinity ? cloneRangeEnd : to, 6, 6)
  bytes.writeUInt32LE(crc32(bytes.subarray(0, 12)) >>> 0, 12)
  return bytes
}

function cloneHeader (blocks: number): Buffer {
  const header = Buffer.alloc(cloneHeaderBytes)
  header.write(cloneMagic, 0, 'latin1')
  header.writeUInt32LE(cloneFormatVersion, 8)
  header.writeUInt32LE(cloneRecordBytes, 12)
  header.writeUIntLE(blocks, 16, 6)
  return header
}

/**
 * A pending clone's record (docs/FORMAT.md, "A pending clone's record"): the block ranges of its pull's
 * references that are in its map. Made (with the ranges the clone is made with) and synced before the
 * clone can be committed; a range appended and synced after the commit of the entries set into the clone
 * and before the clone's writes may reach them. So at any kill, a range the record lacks holds in the
 * clone's durable map nothing but what the backup had there before the apply or the range's own
 * entries, and setting it again loses nothing; a range it names is never set again.
 */
export class CloneRecord {
  private closed = false
  private constructor (private readonly io: FileIo, readonly file: string, private readonly fd: number, private written: number) {}

  /** Errors: IO. */
  static async create (io: FileIo, file: string, blocks: number, ranges: ReadonlyArray<readonly [number, number]>): Promise<CloneRecord> {
    const fd = await io.open(file, 'w', 0o600)
    const record = new CloneRecord(io, file, fd, 0)
    try {
      await record.write(Buffer.concat([cloneHeader(blocks), ...ranges.map(([from, to]) => cloneRecord(from, to))]))
      await io.fdatasync(fd)
      await io.syncDirectory(path.dirname(file))
    } catch (err) {
      await record.close()
      throw err
    }
    return record
  }

  /**
   * A record left in the pool, read as the pool opens: the backup's blocks and the ranges it names (up to
   * the first record that fails its CRC, where the next append goes). Null: no valid header (the clone is
   * not taken for pending: made before its record was whole, so it was never committed).
   */
  static openSync (io: FileIo, file: string): { record: CloneRecord, blocks: number, ranges: Array<[number, number]> } | null {
    const bytes = fs.readFileSync(file)
    if (bytes.length < cloneHeaderBytes || !bytes.subarray(0, 16).equals(cloneHeader(0).subarray(0, 16)) || bytes.readUInt16LE(22) !== 0) return null
    const blocks = bytes.readUIntLE(16, 6)
    const ranges: Array<[number, number]> = []
    let at = cloneHeaderBytes
    for (; at + cloneRecordBytes <= bytes.length; at += cloneRecordBytes) {
      if ((crc32(bytes.subarray(at, at + 12)) >>> 0) !== bytes.readUInt32LE(at + 12)) break
      const to = bytes.readUIntLE(at + 6, 6)
      ranges.push([bytes.readUIntLE(at, 6), to === cloneRangeEnd ? Infinity : to])
    }
    return { record: new CloneRecord(io, file, fs.openSync(file, 'r+'), at), blocks, ranges }
  }

  private async write (bytes: Buffer): Promise<void> {
    let done = 0
    while (done < bytes.length) {
      const { bytesWritten } = await this.io.write(this.fd, bytes, done, bytes.length - done, this.written + done)
      done += bytesWritten
    }
    this.written += bytes.length
  }

  /** Appends `ranges` (now in the clone's committed map) and makes them durable. Errors: IO. */
  async append (ranges: ReadonlyArray<readonly [number, number]>): Promise<void> {
    if (this.closed) throw new VdiskError('IO', `${this.file}: closed`)
    await this.write(Buffer.concat(ranges.map(([from, to]) => cloneRecord(from, to))))
    await this.io.fdatasync(this.fd)
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.io.close(this.fd)
  }

  /** Closes and removes the record (the clone whole, or gone). */
  async remove (): Promise<void> {
    await this.close()
    await this.io.remove(this.file)
  }
}

/** A clone pending with a pull (its map gets the pull's batches too), and its record. */
export interface PendingClone { volume: Volume, record: CloneRecord }

/**
 * A pull whose references are being applied: into its backup (null: removed before a reopen, its clones
 * still pending) and every clone pending with it. `blocks`: the backup's size in blocks; `from`: the
 * first reference's block. `ended`: set in the step the pending states end (a clone made after it is whole).
 */
export class PullApply {
  readonly clones = new Set<PendingClone>()
  ended = false
  constructor (readonly uuid: string, public backup: Volume | null, readonly blocks: number, readonly from: number) {}
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
 * Applies pull `apply.uuid`'s references file to its backup's map and to every clone pending with it
 * (step 3 above; docs/REMOTE.md, "A clone of a pending backup"), then ends their pending states and
 * removes the clones' records and the file. The batches go in order, except that the batch of a block a
 * reader (of the backup or of a clone) waits for is taken first; the walk applies that batch again when
 * it reaches it (the same entries in the backup; a clone gets each range once: its pending map knows
 * which it has). A volume removed meanwhile gets nothing more; once the backup and every clone are gone,
 * the pull ends and the file goes. Errors (the pool closing, IO, a damaged file) leave them pending and
 * the files in place: the readers of blocks not mapped yet fail with IO after the bound, and the next
 * open applies the file again.
 */
export async function applyRefs (context: ApplyContext, apply: PullApply): Promise<void> {
  const { state } = context
  const uuid = apply.uuid
  const backup = apply.backup
  const here = (volume: Volume): boolean => state.volumes.get(volume.id) === volume
  const pendings = (): PendingMap[] => [...(backup === null ? [] : [backup]), ...[...apply.clones].map(c => c.volume)].flatMap(v => v.pendingMap === null ? [] : [v.pendingMap])
  // The backup's pending map leads (its progress, when the apply starts); a clone's when the backup was removed before a reopen.
  const pending = pendings()[0]
  if (pending === undefined) return
  await context.seams.beforeApply?.()
  await testPause('lazy-apply')
  await pending.startable()
  const alive = (): boolean => (backup !== null && here(backup)) || [...apply.clones].some(c => here(c.volume))
  const label = backup?.label ?? [...apply.clones][0]?.volume.label ?? uuid
  const started = performance.now()
  // Where the apply's time goes, for its log line: waiting for the lock, the batches (look-ups, records, sets), the commit.
  const ms = { lock: 0, batches: 0, commit: 0 }
  const closing = (): void => { if (state.lifecycle !== 'open') throw new VdiskError('BUSY', 'the pool is closing') }
  closing()
  const reader = await RefsReader.open(state.io, refsFile(state.dir, uuid), uuid, apply.blocks, context.batchRefs)
  const progress = pending.progress
  progress.batches = reader.batches
  // Batches a reader took ahead of the walk, until the walk reaches them (for progress.applied).
  const ahead = new Set<number>()
  try {
    // The ordered walk's next batch; a reader's batch goes before it, and is applied again when the walk reaches it.
    let walk = 0
    while (walk < reader.batches && alive()) {
      const wanted = pendings().map(p => p.nextWanted()).find(block => block >= 0) ?? -1
      const batch = wanted >= 0 ? await reader.batchOf(wanted) : walk
      await context.seams.beforeBatch?.(batch)
      const t = performance.now()
      let locked = t
      // One job under the lock: gc's mark and sweep (which commit first, and so see the sets) never come
      // between a batch's look-ups and its sets; between two batches they may (a chunk that only later
      // batches name may be freed: those make it absent, and it is fetched). A clone of the backup is
      // made under the lock too, so it is never made between a batch's sets and their marks.
      const ordered = batch === walk
      const applied = await context.exclusive(async () => {
        locked = performance.now()
        ms.lock += locked - t
        closing()
        if (!alive()) return false
        const { records, from, to } = await reader.batch(batch, apply.from)
        progress.refsHeldMax = Math.max(progress.refsHeldMax, records.length / refBytes)
        const held = new Set<number>()
        state.importsHeldInMemory.add(held)
        try {
          await applyBatch(context, apply, records, held, { from, to, ordered })
        } finally {
          state.importsHeldInMemory.delete(held)
        }
        return true
      })
      ms.batches += performance.now() - locked
      if (!applied) break
      if (batch !== walk) ahead.add(batch)
      progress.applications++
      if (batch === walk) ahead.delete(walk++)
      progress.applied = walk + ahead.size
    }
    await context.exclusive(async () => {
      closing()
      if (!alive()) return
      await context.seams.beforeCommit?.()
      await testPause('lazy-apply-commit')
      const t = performance.now()
      await context.committer.commit()
      ms.commit = performance.now() - t
    })
  } finally {
    await reader.close()
  }
  await endApply(context, apply)
  state.log(`lazy pull: ${label}: ${reader.count} references applied after the reply in ${(performance.now() - started).toFixed(0)} ms, ${progress.batches} batch${progress.batches === 1 ? '' : 'es'} (${progress.applications - progress.applied} applied again after a reader took them first; ${apply.clones.size} pending clone${apply.clones.size === 1 ? '' : 's'}; the lock ${ms.lock.toFixed(0)}, look-ups, records and sets ${ms.batches.toFixed(0)}, commit ${ms.commit.toFixed(0)})`)
}

/**
 * Every entry is in the maps and committed (or the volumes are gone): the pending states end (the readers
 * go on, a clone made from here on is whole: ended), the pull counts its list, then the clones' records
 * go, then the file: a kill between leaves the file, applied again into the backup alone (the clones
 * are whole, and committed).
 */
async function endApply (context: ApplyContext, apply: PullApply): Promise<void> {
  const { state, lazy } = context
  const backup = apply.backup
  apply.ended = true
  const ending = [...(backup === null ? [] : [backup]), ...[...apply.clones].map(c => c.volume)]
  const ended = ending.flatMap(v => v.pendingMap === null ? [] : [v.pendingMap])
  for (const volume of ending) volume.pendingMap = null
  lazy.settled(apply.uuid)
  for (const p of ended) p.resolve()
  for (const clone of apply.clones) await clone.record.remove()
  await state.io.remove(refsFile(state.dir, apply.uuid))
  if (backup === null || state.volumes.get(backup.id) !== backup) lazy.dropRemoved()
}

/** References looked up or set between two yields of the apply (the event loop serves reads between them). */
const applySliceRefs = 1024

const yieldTurn = async (): Promise<void> => await new Promise(resolve => setImmediate(resolve))

/**
 * One batch of references, under the lock: looked up (the chunks here taken, those not here made
 * absent, and every absent one listed for the pull), recorded (catalog.log first, then one transaction),
 * then set in the backup's map (its readers go on), then in each pending clone's, in the blocks of the
 * batch's range it does not have yet; when a clone got any, one commit, then the ranges appended to each
 * such clone's record (synced), and only then are they mapped in the clone (its readers and writers of
 * those blocks go on). The look-ups and the sets go in slices of applySliceRefs, each its own turn of the
 * event loop, so that reads are not held behind the whole batch. Nothing the slices rely on changes
 * between them: every job that makes, fills or frees chunks (imports, hydration, sealing, gc) and the
 * making of a clone of the backup wait for the lock this runs under; no write, discard or truncate of a
 * clone reaches a block it does not have yet (Volume.owned: they wait for its batch); a removal of a
 * volume is checked before each slice of its sets.
 */
async function applyBatch (context: ApplyContext, apply: PullApply, bytes: Buffer, held: Set<number>, range: { from: number, to: number, ordered: boolean }): Promise<void> {
  const { state } = context
  const uuid = apply.uuid
  const here = (volume: Volume): boolean => state.volumes.get(volume.id) === volume
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
      // the maps name it, and gc commits before it marks or decides, so it sees them.
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
  const backup = apply.backup
  if (backup !== null && await setEntries(backup, bytes, ids, [[range.from, range.to]], () => here(backup))) {
    // In the step of the last set (here() checked after the last await): the next commit writes the row
    // and the pages, whichever commit that is (the daemon's, gc's, or the apply's last).
    // eslint-disable-next-line require-atomic-updates -- a flag only set here (any commit after it writes the row), never read before the await
    backup.rowDirty = true
    state.changed(backup)
    backup.pendingMap?.mapped(range.from, range.to, range.ordered)
  }
  const into: Array<{ clone: PendingClone, gaps: Array<[number, number]> }> = []
  for (const clone of apply.clones) {
    const pending = clone.volume.pendingMap
    if (pending === null || !here(clone.volume)) continue
    const gaps = pending.unmappedIn(range.from, range.to)
    if (gaps.length === 0) pending.mapped(range.from, range.to, range.ordered)
    else into.push({ clone, gaps })
  }
  let set = false
  for (const { clone, gaps } of into) {
    if (!await setEntries(clone.volume, bytes, ids, gaps, () => here(clone.volume))) continue
    // eslint-disable-next-line require-atomic-updates -- as the backup's above
    clone.volume.rowDirty = true
    state.changed(clone.volume)
    set = true
  }
  if (!set) return
  // Durable before the clone's own writes may reach them: the entries (this commit), then the record.
  await context.committer.commit()
  for (const { clone, gaps } of into) {
    if (!here(clone.volume) || clone.volume.pendingMap === null) continue
    await clone.record.append(gaps)
    clone.volume.pendingMap.mapped(range.from, range.to, range.ordered)
  }
}

/**
 * Sets the batch's entries (`ids[i]` for record i) whose blocks lie in `ranges` (sorted, apart) in
 * `volume`'s map, a slice a turn; returns false when `present()` fails before a slice (the volume removed).
 */
async function setEntries (volume: Volume, bytes: Buffer, ids: number[], ranges: Array<[number, number]>, present: () => boolean): Promise<boolean> {
  const count = bytes.length / refBytes
  let r = 0
  for (let from = 0; from < count; from += applySliceRefs) {
    await yieldTurn()
    if (!present()) return false
    for (let i = from; i < Math.min(count, from + applySliceRefs); i++) {
      const block = bytes.readUIntLE(i * refBytes, refIndexBytes)
      while (r < ranges.length && block >= ranges[r][1]) r++
      if (r === ranges.length) return true
      if (block >= ranges[r][0]) volume.map.set(block, chunkEntry(ids[i]))
    }
  }
  return true
}

/**
 * The raw frames export and import exchange with the daemon over the control socket's stream mode
 * (src/daemon/server/server.ts): not the export stream itself (stream.ts), which the CLI process encodes and
 * decodes, so the daemon's event loop only moves blocks (hashing for the stream's ids, zstd and the
 * stream checksum run in the CLI; hashing and compression of stored chunks in the daemon's workers).
 *
 * After the request line and the daemon's JSON reply line, frames follow, each a 41-byte head
 * (kind u8, block index u64 LE, BLAKE3-256 id or zeros) and, for a data frame, the block's blockBytes:
 *
 *   export (daemon -> CLI): data | zero ... then end, or error (head, then a u32 LE length and a JSON
 *   {code, message}); the id is the chunk's when the block is a chunk, zeros when unknown.
 *   import (CLI -> daemon): data | zero ... then end, sent only once the stream's trailer checked; the
 *   daemon answers the end with a JSON reply line (the backup made, or an error). A connection that
 *   closes without an end frame leaves the import's progress in the pool, and no backup.
 *   A pull's import may send a block as a zstd frame in place of a data frame: the head (with the
 *   block's id), a u32 LE length n (1 .. blockBytes), then n bytes, a zstd frame holding the block as the
 *   remote store keeps it; the daemon's workers decompress it and check it against the id, and the pool
 *   stores the frame as it came (not compressed again).
 *   lazy pull (CLI -> daemon, volume/lazy.ts): as import, with ref frames (a block's id, no bytes: the
 *   block is in the remote store) in place of data frames.
 *   hydrate (both ways): the hydrator sends data frames (a block of a lazy pull, any index), flush
 *   (store what came: the daemon stores a batch at a flush or every importBatchBlocks blocks) and at
 *   last end; the daemon sends want frames (the id of a chunk a reader waits for), and answers end
 *   with end.
 *
 * Errors: readFrame throws IO when the connection ends inside a frame, CORRUPT for an unknown kind or
 * a malformed error frame (longer than errorFrameBytesMax, or not JSON).
 */
import { ErrorCode, VdiskError, corrupt } from '../errors'
import { blockBytesMax, errorFrameBytesMax, sendWindowBytes } from '../limits'

/** The codes an error frame may carry (any other becomes IO): a Record, so a new code must be added here. */
const errorCodeSet: Record<ErrorCode, true> = {
  NOT_FOUND: true, EXISTS: true, INVALID: true, READ_ONLY: true, NOT_PERMITTED: true, NO_SPACE: true,
  CORRUPT: true, IO: true, BUSY: true, TOO_BIG: true, CROSS_DEVICE: true, NOT_EMPTY: true
}
const errorCodes = new Set<string>(Object.keys(errorCodeSet))

export const frameData = 1
export const frameZero = 2
export const frameEnd = 3
export const frameError = 4
export const frameRef = 5
export const frameWant = 6
export const frameFlush = 7
export const frameZstd = 8
export const frameHeadBytes = 41

export interface Frame { kind: number, index: number, hash: Buffer | null, data: Buffer | null }

export function frameHead (kind: number, index: number, hash: Buffer | null): Buffer {
  const head = Buffer.alloc(frameHeadBytes)
  head.writeUInt8(kind, 0)
  head.writeBigUInt64LE(BigInt(index), 1)
  if (hash !== null) hash.copy(head, 9)
  return head
}

/** The head and length of a zstd frame message: block `index`, id `hash`, and a zstd frame of `length` bytes to follow. */
export function zstdFrameHead (index: number, hash: Buffer, length: number): Buffer {
  const head = Buffer.alloc(frameHeadBytes + 4)
  frameHead(frameZstd, index, hash).copy(head, 0)
  head.writeUInt32LE(length, frameHeadBytes)
  return head
}

/**
 * How an import refuses block `index` of its stream whose bytes (or frame) are not its id's, and how the
 * CLI reads the index back out of the daemon's message (a pull then names the chunk and where the store
 * keeps it): null for any other message.
 */
export function refusedBlockMessage (index: number, why: string): string { return `block ${index} of the stream ${why}` }
export function refusedBlockOf (message: string): number | null {
  const match = /^block (\d+) of the stream /.exec(message)
  return match === null ? null : Number(match[1])
}

export function errorFrame (code: ErrorCode, message: string): Buffer {
  const body = Buffer.from(JSON.stringify({ code, message }))
  const length = Buffer.alloc(4)
  length.writeUInt32LE(body.length)
  return Buffer.concat([frameHead(frameError, 0, null), length, body])
}

/**
 * Reads exact byte counts from a connection's chunks (an async iterator), after the bytes already read.
 * The chunks are kept as they came (a list), not merged as they arrive: a read within one chunk is a view
 * of it, one across chunks is copied once.
 */
export class ByteReader {
  private parts: Buffer[] = []
  private length = 0
  private readonly chunks: AsyncIterator<Buffer>

  /**
   * `ring`: the source hands out views of a buffer it fills again (RingSource): told of each part read to
   * its end, and, by settle(), when the bytes read before are the caller's no more.
   */
  constructor (source: AsyncIterable<Buffer>, rest: Buffer, private readonly ring?: RingSource) {
    if (rest.length > 0) { this.parts.push(rest); this.length = rest.length }
    this.chunks = source[Symbol.asyncIterator]()
  }

  /**
   * The caller is done with every byte read so far (views of them included): a ring source may fill
   * their place again. readFrameNow (and so readFrame) calls it as a frame begins: the frames before are
   * the caller's no more (exportBlocks' `reuse`: a block's bytes are valid until the next is asked for).
   */
  settle (): void { this.ring?.settle() }

  /** Waits for more bytes than are buffered now: false at the end of the source. */
  async more (): Promise<boolean> {
    const next = await this.chunks.next()
    if (next.done === true) return false
    if (next.value.length > 0) { this.parts.push(next.value); this.length += next.value.length }
    return true
  }

  /**
   * `n` bytes, or null at a clean end (no byte of them arrived). `own`: always a buffer of their own (a
   * copy), never a view into a chunk of the connection that holds other bytes too. `into` (n bytes at
   * least): bytes across chunks are copied there rather than into a new buffer, so the result is valid
   * only until `into` is used again (`own` is then ignored).
   */
  async read (n: number, own = false, into?: Buffer): Promise<Buffer | null> {
    while (this.length < n) {
      const next = await this.chunks.next()
      if (next.done === true) {
        if (this.length === 0) return null
        throw new VdiskError('IO', `the connection ended inside a frame (${this.length} of ${n} bytes)`)
      }
      if (next.value.length > 0) { this.parts.push(next.value); this.length += next.value.length }
    }
    return this.take(n, own, into)
  }

  /** How many bytes arrived and are not read yet (readNow takes at most these). */
  get buffered (): number { return this.length }

  /** The byte at `at` of those buffered (at < buffered). */
  peek (at: number): number {
    for (const part of this.parts) {
      if (at < part.length) return part[at]
      at -= part.length
    }
    throw new RangeError('ByteReader.peek: past the bytes buffered')
  }

  /** read() of bytes already buffered (n <= buffered), without waiting: the same bytes, the same way. */
  readNow (n: number, own = false, into?: Buffer): Buffer {
    if (this.length < n) throw new RangeError('ByteReader.readNow: fewer bytes buffered')
    return this.take(n, own, into)
  }

  private take (n: number, own: boolean, into: Buffer | undefined): Buffer {
    this.length -= n
    const first = this.parts[0]
    if (first !== undefined && first.length >= n) {
      const view = first.subarray(0, n)
      if (first.length === n) this.shift(); else this.parts[0] = first.subarray(n)
      return own && into === undefined ? Buffer.from(view) : view
    }
    const out = into === undefined ? Buffer.allocUnsafe(n) : into.subarray(0, n)
    for (let at = 0; at < n;) {
      const part = this.parts[0]
      const take = Math.min(part.length, n - at)
      part.copy(out, at, 0, take)
      at += take
      if (take === part.length) this.shift(); else this.parts[0] = part.subarray(take)
    }
    return out
  }

  /** The first part is read to its end. */
  private shift (): void {
    this.parts.shift()
    this.ring?.partRead()
  }
}

/**
 * A connection's bytes read into one buffer of the reader's own (`net.connect`'s `onread`, onRead below)
 * and handed to a ByteReader as views of a ring, rather than a new buffer per read of the socket, which
 * an export's 1 GiB made about 16,000 of (each counted by V8 toward its next full collection: 47 of them
 * and 0.67 to 1.02 s of CPU to read 1 GiB through a Unix socket in a loop of its own, against one and 0.22
 * s this way, load 10; docs/PERFORMANCE.md). The bytes are copied once more, into the ring.
 *
 * A place in the ring is filled again only once the reader is done with it: its part read to its end
 * (partRead, in the order the parts came), and then the reader settled (the next frame begun: the caller
 * holds views of the frame before until then). The socket is paused while the ring has no room for
 * another read (and a part never wraps: the ring's tail is skipped when it is too short), resumed at the
 * settle that makes room. Positions: virtual offsets, a byte's place in the ring being its offset modulo
 * the ring's size (`at` is `written` modulo it).
 */
export class RingSource implements AsyncIterable<Buffer> {
  /** What the socket reads into (onread's buffer). */
  readonly readBuffer: Buffer
  private readonly ring: Buffer
  private at = 0
  /** Every byte of the ring filled, or skipped at its tail, so far. */
  private written = 0
  /** Below this the ring may be filled again. */
  private freedTo = 0
  /** The end of the last part read to its end. */
  private readTo = 0
  /** The end of each part handed out and not read to its end yet, in order. */
  private readonly ends: number[] = []
  private readonly ready: Buffer[] = []
  private waiting: { resolve: (result: IteratorResult<Buffer>) => void, reject: (err: Error) => void } | null = null
  private ended = false
  private failure: Error | null = null
  private paused = false
  private resume: (() => void) | null = null

  /**
   * `frameBytesMax`: the longest frame the reader reads (a block's, or an error's). The ring pauses the
   * socket with less than two reads' room, and a reader waiting inside a frame holds at most a skipped
   * tail, the part its frame began in and less than a frame unread, so it never waits on a paused socket
   * whose room only its next frame would free, when the ring holds four reads and a frame.
   */
  constructor (ringBytes: number, readBytes: number, frameBytesMax = frameHeadBytes + 4 + Math.max(blockBytesMax, errorFrameBytesMax)) {
    if (ringBytes < 4 * readBytes + frameBytesMax) throw new RangeError('RingSource: the ring must hold four reads and a frame')
    this.ring = Buffer.allocUnsafe(ringBytes)
    this.readBuffer = Buffer.allocUnsafe(readBytes)
  }

  /** How to resume the socket once it was paused (onRead returned false). */
  attach (resume: () => void): void { this.resume = resume }

  /** The room left in the ring (bytes never filled, or freed by a settle). */
  room (): number { return this.ring.length - (this.written - this.freedTo) }

  /** onread's callback: `n` bytes in readBuffer, copied into the ring. False pauses the socket (no room for another read). */
  onRead (n: number): boolean {
    if (n <= 0 || this.failure !== null) return true
    const skip = this.ring.length - this.at < n ? this.ring.length - this.at : 0
    if (this.written + skip + n - this.freedTo > this.ring.length) {
      // Never: the socket pauses while there is no room for a read and its skip. Failed loudly, not overwritten.
      this.fail(new VdiskError('IO', 'the connection\'s read ring overflowed (a bug): the stream is abandoned'))
      return false
    }
    if (skip > 0) { this.written += skip; this.at = 0 }
    this.readBuffer.copy(this.ring, this.at, 0, n)
    const part = this.ring.subarray(this.at, this.at + n)
    this.at += n
    this.written += n
    this.ends.push(this.written)
    if (this.waiting !== null) { const waiting = this.waiting; this.waiting = null; waiting.resolve({ done: false, value: part }) } else this.ready.push(part)
    if (this.room() >= 2 * this.readBuffer.length) return true
    this.paused = true
    return false
  }

  /** A ByteReader read the oldest part handed out to its end. */
  partRead (): void {
    const end = this.ends.shift()
    if (end !== undefined) this.readTo = end
  }

  /** The reader is done with what it read (ByteReader.settle): those places may be filled again. */
  settle (): void {
    this.freedTo = this.readTo
    if (this.paused && this.room() >= 2 * this.readBuffer.length) {
      this.paused = false
      this.resume?.()
    }
  }

  /** The connection ended (its 'end' or 'close'). */
  end (): void {
    this.ended = true
    if (this.waiting !== null) { const waiting = this.waiting; this.waiting = null; waiting.resolve({ done: true, value: undefined }) }
  }

  /** The connection failed. */
  fail (err: Error): void {
    this.failure ??= err
    if (this.waiting !== null) { const waiting = this.waiting; this.waiting = null; waiting.reject(err) }
  }

  [Symbol.asyncIterator] (): AsyncIterator<Buffer> {
    return {
      next: async () => {
        const part = this.ready.shift()
        if (part !== undefined) return { done: false, value: part }
        if (this.failure !== null) throw this.failure
        if (this.ended) return { done: true, value: undefined }
        return await new Promise<IteratorResult<Buffer>>((resolve, reject) => { this.waiting = { resolve, reject } })
      }
    }
  }
}

/**
 * The next frame, or null at a clean end of the connection. Throws the daemon's error for an error frame.
 * `scratch` (blockBytes at least): a data frame's bytes are then a view valid only until the next
 * readFrame with the same scratch (into the connection's chunk, or copied into scratch), not a copy of
 * their own: for a reader that is done with each block before it asks for the next.
 */
/** The id of no block (a zero or end frame's): compared with, never written to. */
const zeroHash = Buffer.alloc(32)

export async function readFrame (reader: ByteReader, blockBytes: number, scratch?: Buffer): Promise<Frame | null> {
  const now = readFrameNow(reader, blockBytes, scratch)
  if (now !== undefined) return now
  const head = await reader.read(frameHeadBytes)
  if (head === null) return null
  const { kind, index, hash } = parseHead(head)
  if (kind === frameData) {
    const data = await reader.read(blockBytes, true, scratch)
    if (data === null) throw new VdiskError('IO', 'the connection ended inside a frame')
    return { kind, index, hash, data }
  }
  if (kind === frameZstd) {
    if (hash === null) throw corrupt('a zstd frame without an id on the control connection')
    const length = await reader.read(4)
    if (length === null) throw new VdiskError('IO', 'the connection ended inside a frame')
    const n = length.readUInt32LE(0)
    if (n < 1 || n > blockBytes) throw corrupt(`a zstd frame of ${n} bytes on the control connection (1 to ${blockBytes})`)
    const data = await reader.read(n, true, scratch)
    if (data === null) throw new VdiskError('IO', 'the connection ended inside a frame')
    return { kind, index, hash, data }
  }
  if (kind === frameZero || kind === frameEnd || kind === frameFlush) return { kind, index, hash: null, data: null }
  if (kind === frameRef || kind === frameWant) {
    if (hash === null) throw corrupt(`a ${kind === frameRef ? 'ref' : 'want'} frame without an id on the control connection`)
    return { kind, index, hash, data: null }
  }
  if (kind === frameError) {
    const length = await reader.read(4)
    if (length !== null && length.readUInt32LE(0) > errorFrameBytesMax) throw corrupt(`an error frame of ${length.readUInt32LE(0)} bytes on the control connection (at most ${errorFrameBytesMax})`)
    const body = length === null ? null : await reader.read(length.readUInt32LE(0))
    if (body === null) throw new VdiskError('IO', 'the connection ended inside an error frame')
    let error: { code?: unknown, message?: unknown }
    try { error = JSON.parse(body.toString('utf8')) } catch { throw corrupt('a malformed error frame on the control connection') }
    const code = typeof error?.code === 'string' && errorCodes.has(error.code) ? error.code as ErrorCode : 'IO'
    throw new VdiskError(code, typeof error?.message === 'string' ? error.message : 'the daemon failed without saying why')
  }
  throw corrupt(`unknown frame kind ${kind} on the control connection`)
}

function parseHead (head: Buffer): { kind: number, index: number, hash: Buffer | null } {
  const hashBytes = head.subarray(9, 41)
  return { kind: head.readUInt8(0), index: Number(head.readBigUInt64LE(1)), hash: hashBytes.equals(zeroHash) ? null : Buffer.from(hashBytes) }
}

/**
 * readFrame of a frame whose bytes have all arrived, without waiting (an import's run of ref frames, many
 * to a chunk of the connection, is read without an await per frame): the same frame, or undefined when
 * its bytes are not all here yet or it is of a kind only readFrame reads (an error frame, an unknown kind,
 * a zstd frame of a length readFrame refuses: it then says why). Nothing is read when it gives undefined.
 */
export function readFrameNow (reader: ByteReader, blockBytes: number, scratch?: Buffer): Frame | undefined {
  reader.settle()
  const buffered = reader.buffered
  if (buffered < frameHeadBytes) return undefined
  const kind = reader.peek(0)
  let payload = 0
  if (kind === frameData) payload = blockBytes
  else if (kind === frameZstd) {
    if (buffered < frameHeadBytes + 4) return undefined
    let n = 0
    for (let i = 3; i >= 0; i--) n = n * 256 + reader.peek(frameHeadBytes + i)
    if (n < 1 || n > blockBytes) return undefined
    payload = 4 + n
  } else if (kind !== frameZero && kind !== frameEnd && kind !== frameFlush && kind !== frameRef && kind !== frameWant) return undefined
  if (buffered < frameHeadBytes + payload) return undefined
  const { index, hash } = parseHead(reader.readNow(frameHeadBytes))
  if (kind === frameData) return { kind, index, hash, data: reader.readNow(blockBytes, true, scratch) }
  if (kind === frameZstd) {
    if (hash === null) throw corrupt('a zstd frame without an id on the control connection')
    const n = reader.readNow(4).readUInt32LE(0)
    return { kind, index, hash, data: reader.readNow(n, true, scratch) }
  }
  if (kind === frameRef || kind === frameWant) {
    if (hash === null) throw corrupt(`a ${kind === frameRef ? 'ref' : 'want'} frame without an id on the control connection`)
    return { kind, index, hash, data: null }
  }
  return { kind, index, hash: null, data: null }
}

/** Writes `bytes`, waiting while more than sendWindowBytes are queued (back-pressure). Throws IO once it closed. */
export async function send (socket: NodeJS.WritableStream & { destroyed: boolean, writableLength: number }, bytes: Buffer): Promise<void> {
  if (socket.destroyed) throw new VdiskError('IO', 'the connection closed')
  socket.write(bytes)
  if (socket.writableLength <= sendWindowBytes) return
  await new Promise<void>((resolve, reject) => {
    const done = (err?: Error): void => {
      socket.removeListener('drain', onDrain)
      socket.removeListener('close', onClose)
      if (err !== undefined) reject(err); else resolve()
    }
    const onDrain = (): void => done()
    const onClose = (): void => done(new VdiskError('IO', 'the connection closed'))
    socket.on('drain', onDrain)
    socket.on('close', onClose)
  })
}

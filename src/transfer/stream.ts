/**
 * The export stream (docs/FORMAT.md, "Export stream"; constants in stream-format.ts): a streaming
 * encoder and a streaming, verifying decoder over Node streams. `vdiskfs export` writes it,
 * `vdiskfs import` reads it, and the S3 remote (push, pull) reads and writes it too.
 *
 * StreamEncoder: an object-mode Writable side taking the blocks (StreamBlock, in increasing index
 * order, exactly header.records of them) and a byte Readable side; it hashes every block (BLAKE3-256,
 * the block's chunk id; a hash the caller gave must match), turns all-zero blocks into zero records,
 * compresses the others with zstd when that saves at least 1/8, and ends with the trailer.
 *
 * StreamDecoder: a byte Writable side and an object-mode Readable side giving the header, then each
 * block, decompressed and checked against its BLAKE3 id, and ending only once the trailer's record
 * count and whole-stream checksum match. Until then every block is provisional: a consumer must not
 * make anything visible before the decoder ends without error (a flipped byte anywhere, even in a
 * zero record's padding, fails the checksum at the end).
 *
 * Errors (as the stream's 'error'): CORRUPT for a damaged, truncated or malformed stream, INVALID
 * for a version or flags this vdiskfs does not read; the encoder throws on a caller's misuse (a block
 * out of order, past the size, the wrong count, a hash that does not match the data: CORRUPT).
 *
 * Assumes: blocks are whole (blockBytes bytes; the last block of a volume whose size is not a
 * multiple of the block size is padded with zeros, as the pool stores it).
 */
import { Transform, TransformCallback } from 'node:stream'
import zlib from 'node:zlib'
import { Blake3Hasher, blake3UrlSafeBase64 } from '@napi-rs/blake-hash'
import * as zstd from 'zstd-napi/binding'
import { VdiskError, corrupt, invalid } from '../errors'
import { createdMsMax } from '../limits'
import { isZeroBlock, worthCompressing } from '../../workers/protocol'
import {
  hashBytes, headerFields, headerFixedBytes, headerFlagSource, headerNameBytesMax, headerSourceFixedBytes, headerSourceLabelBytesMax, recordFields, recordFixedBytes, recordMagic,
  recordTypeRaw, recordTypeZero, recordTypeZstd, streamBlockBytesMax, streamMagic, streamVersion,
  streamVolumeBytesMax, streamZstdLevel, trailerBytes, trailerFields, trailerMagic
} from './stream-format'

/** What a stream says of the backup it carries. */
export interface StreamHeader {
  /** The backup's name where it was exported (a label: the importer names the copy itself). */
  name: string
  /** Block size of the source pool; every record carries one block of this size. */
  blockBytes: number
  /** The backup's stable identity (a UUID, lowercase with hyphens); the imported copy keeps it. */
  uuid: string
  /** For an incremental stream, the identity of the backup it applies to; null for a full stream. */
  baseUuid: string | null
  /** The backup's size in bytes. */
  size: number
  /** The backup's creation time, ms since the epoch. */
  createdMs: number
  /** How many block records follow the header. */
  records: number
  /**
   * The volume the backup was taken from: its identity and label (`disk web.img`), carried so that the
   * importing host groups the backup with others of that source (prune); absent or null: unknown.
   */
  source?: { uuid: string, label: string } | null
}

/**
 * One block of a stream. A full stream carries every block that is not a hole; an incremental one
 * every block that differs from the base (a block that became a hole is a zero block).
 */
export interface StreamBlock {
  index: number
  /** The block's blockBytes bytes, or null: the block reads as zeros. */
  data: Buffer | null
  /** BLAKE3-256 of `data` (its chunk id), or null for a zero block. The encoder computes it when absent. */
  hash?: Buffer | null
  /**
   * `data` is a zstd frame holding the block, not the block (a pull's, as the remote store keeps it):
   * only importBlocks takes it (sent as a zstd frame to the daemon, which opens and checks it); never
   * in a stream.
   */
  zstd?: boolean
}

/** What the decoder gives: the header first, then the blocks. */
export type StreamItem = { kind: 'header', header: StreamHeader } | { kind: 'block', block: StreamBlock & { hash: Buffer | null } }

/** The identity a partial import of this stream is kept under: the backup and its base. */
export function streamKey (header: Pick<StreamHeader, 'uuid' | 'baseUuid'>): string {
  return `${header.uuid}:${header.baseUuid ?? 'full'}`
}

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const zeroUuid = '00000000-0000-0000-0000-000000000000'

function uuidToBytes (uuid: string): Buffer {
  if (!uuidPattern.test(uuid)) throw invalid(`'${uuid}' is not a UUID`)
  return Buffer.from(uuid.replace(/-/g, ''), 'hex')
}

function uuidFromBytes (bytes: Buffer): string {
  const hex = bytes.toString('hex')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

/** BLAKE3-256 of a block (through the base64 function: the Buffer one leaks native memory, see workers/hash.ts). */
export function blockHash (data: Uint8Array): Buffer {
  return Buffer.from(blake3UrlSafeBase64(data as Buffer), 'base64url')
}


/** The blocks a volume of `size` bytes has. */
export function blocksOf (size: number, blockBytes: number): number {
  return Math.ceil(size / blockBytes)
}

/** Encodes a header (throws INVALID for values the format cannot carry). */
export function encodeHeader (header: StreamHeader): Buffer {
  const name = Buffer.from(header.name, 'utf8')
  if (name.length > headerNameBytesMax) throw invalid(`name '${header.name}' is too long for a stream header`)
  checkHeaderValues(header)
  const sourcePart = encodeSourcePart(header.source ?? null)
  const out = Buffer.alloc(headerFixedBytes + name.length + sourcePart.length)
  streamMagic.copy(out, headerFields.magic)
  out.writeUInt16LE(streamVersion, headerFields.version)
  out.writeUInt16LE(name.length, headerFields.nameBytes)
  out.writeUInt32LE(header.blockBytes, headerFields.blockBytes)
  uuidToBytes(header.uuid).copy(out, headerFields.uuid)
  uuidToBytes(header.baseUuid ?? zeroUuid).copy(out, headerFields.baseUuid)
  out.writeBigUInt64LE(BigInt(header.size), headerFields.size)
  out.writeBigUInt64LE(BigInt(header.createdMs), headerFields.createdMs)
  out.writeBigUInt64LE(BigInt(header.records), headerFields.records)
  out.writeUInt32LE(sourcePart.length > 0 ? headerFlagSource : 0, headerFields.flags)
  name.copy(out, headerFixedBytes)
  sourcePart.copy(out, headerFixedBytes + name.length)
  out.writeUInt32LE(headerCrc(out, out.length - headerFixedBytes), headerFields.crc)
  return out
}

/** CRC-32 of the fixed part before the CRC, then the `variableBytes` after it (name and source part). */
function headerCrc (bytes: Buffer, variableBytes: number): number {
  return zlib.crc32(bytes.subarray(headerFixedBytes, headerFixedBytes + variableBytes), zlib.crc32(bytes.subarray(0, headerFields.crc)))
}

/** The source part of a header (stream-format.ts), or nothing when the source is unknown. */
function encodeSourcePart (source: { uuid: string, label: string } | null): Buffer {
  if (source === null) return Buffer.alloc(0)
  const label = Buffer.from(source.label, 'utf8')
  if (label.length > headerSourceLabelBytesMax) throw invalid(`source label '${source.label}' is too long for a stream header`)
  const out = Buffer.alloc(headerSourceFixedBytes + label.length)
  uuidToBytes(source.uuid).copy(out, 0)
  out.writeUInt16LE(label.length, 16)
  label.copy(out, headerSourceFixedBytes)
  return out
}

/** Checks a header's flags (INVALID for a bit this vdiskfs does not read); whether it has a source part. */
function hasSourcePart (flags: number): boolean {
  if ((flags & ~headerFlagSource) !== 0) throw invalid(`stream header flags ${flags} are not supported by this vdiskfs`)
  return (flags & headerFlagSource) !== 0
}

function checkHeaderValues (header: StreamHeader): void {
  const { blockBytes, size, records } = header
  if (!Number.isInteger(blockBytes) || blockBytes < 4096 || blockBytes > streamBlockBytesMax || (blockBytes & (blockBytes - 1)) !== 0) throw corrupt(`stream block size ${blockBytes} is not a power of two between 4 KiB and 1 MiB`)
  if (!Number.isSafeInteger(size) || size < 0 || size > streamVolumeBytesMax) throw corrupt(`stream volume size ${size} is out of range`)
  if (!Number.isSafeInteger(records) || records < 0 || records > blocksOf(size, blockBytes)) throw corrupt(`stream says ${records} block records for ${blocksOf(size, blockBytes)} blocks`)
  // A Date holds up to 8.64e15 ms; ls, prune and every ISO time would fail on a backup made past it.
  if (!Number.isSafeInteger(header.createdMs) || header.createdMs < 0 || header.createdMs > createdMsMax) throw corrupt(`stream creation time ${header.createdMs} ms is out of range (after the year 9999)`)
}

function checkNameBytes (nameBytes: number): void {
  if (nameBytes > headerNameBytesMax) throw corrupt(`stream header names a ${nameBytes}-byte name, past the format's ${headerNameBytesMax} (damaged)`)
}

/** Decodes and checks a header's fixed part and name; throws CORRUPT or INVALID. */
function decodeHeader (bytes: Buffer): StreamHeader {
  const nameBytes = bytes.readUInt16LE(headerFields.nameBytes)
  checkNameBytes(nameBytes)
  if (headerCrc(bytes, bytes.length - headerFixedBytes) !== bytes.readUInt32LE(headerFields.crc)) throw corrupt('stream header fails its checksum (damaged)')
  let source: { uuid: string, label: string } | null = null
  if (hasSourcePart(bytes.readUInt32LE(headerFields.flags))) {
    const at = headerFixedBytes + nameBytes
    source = {
      uuid: uuidFromBytes(bytes.subarray(at, at + 16)),
      label: bytes.subarray(at + headerSourceFixedBytes, at + headerSourceFixedBytes + bytes.readUInt16LE(at + 16)).toString('utf8')
    }
  }
  const baseUuid = uuidFromBytes(bytes.subarray(headerFields.baseUuid, headerFields.baseUuid + 16))
  const header: StreamHeader = {
    name: bytes.subarray(headerFixedBytes, headerFixedBytes + nameBytes).toString('utf8'),
    blockBytes: bytes.readUInt32LE(headerFields.blockBytes),
    uuid: uuidFromBytes(bytes.subarray(headerFields.uuid, headerFields.uuid + 16)),
    baseUuid: baseUuid === zeroUuid ? null : baseUuid,
    size: Number(bytes.readBigUInt64LE(headerFields.size)),
    createdMs: Number(bytes.readBigUInt64LE(headerFields.createdMs)),
    records: Number(bytes.readBigUInt64LE(headerFields.records)),
    ...(source !== null ? { source } : {})
  }
  checkHeaderValues(header)
  return header
}

export interface EncoderOptions {
  /** Compress data blocks with zstd (kept raw when that saves less than 1/8); default true. */
  compress?: boolean
  /** zstd level (default streamZstdLevel). */
  level?: number
}

/**
 * Blocks in (object mode, StreamBlock), stream bytes out. The header goes out at once; the trailer
 * when the writable side ends, after exactly header.records blocks.
 */
export class StreamEncoder extends Transform {
  private readonly hasher = new Blake3Hasher()
  private readonly cctx: zstd.CCtx | null
  private readonly compressed: Buffer
  private readonly blocks: number
  private written = 0
  private lastIndex = -1
  /** Bytes of data blocks in, and stream bytes out, for progress and figures. */
  rawBytes = 0
  streamBytes = 0

  constructor (readonly header: StreamHeader, options: EncoderOptions = {}) {
    super({ writableObjectMode: true, readableObjectMode: false, writableHighWaterMark: 16 })
    this.blocks = blocksOf(header.size, header.blockBytes)
    this.cctx = options.compress === false ? null : new zstd.CCtx()
    this.cctx?.setParameter(zstd.CParameter.compressionLevel, options.level ?? streamZstdLevel)
    this.compressed = Buffer.allocUnsafe(zstd.compressBound(header.blockBytes))
    this.send(encodeHeader(header))
  }

  private send (bytes: Buffer): void {
    this.hasher.update(bytes)
    this.streamBytes += bytes.length
    this.push(bytes)
  }

  override _transform (block: StreamBlock, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.encodeBlock(block)
      callback()
    } catch (err) {
      callback(err as Error)
    }
  }

  private encodeBlock (block: StreamBlock): void {
    const blockBytes = this.header.blockBytes
    if (!Number.isSafeInteger(block.index) || block.index <= this.lastIndex || block.index >= this.blocks) {
      throw new VdiskError('INVALID', `stream encoder: block ${block.index} out of order or past the end (${this.blocks} blocks)`)
    }
    if (this.written >= this.header.records) throw new VdiskError('INVALID', `stream encoder: more blocks than the ${this.header.records} the header announced`)
    this.lastIndex = block.index
    this.written++
    const record = Buffer.alloc(recordFixedBytes)
    record.writeUInt32LE(recordMagic, recordFields.magic)
    record.writeBigUInt64LE(BigInt(block.index), recordFields.index)
    record.writeUInt32LE(blockBytes, recordFields.rawBytes)
    const data = block.data
    if (data !== null && data.length !== blockBytes) throw new VdiskError('INVALID', `stream encoder: block ${block.index} has ${data.length} bytes, not ${blockBytes}`)
    if (data === null || isZeroBlock(data)) {
      if (data !== null && block.hash != null && !block.hash.equals(blockHash(data))) throw corrupt(`block ${block.index} does not match its BLAKE3 id`)
      record.writeUInt8(recordTypeZero, recordFields.type)
      this.send(record)
      return
    }
    const hash = blockHash(data)
    // The caller's id (a chunk id from the pool, an object name from a store) must name these bytes.
    if (block.hash != null && !block.hash.equals(hash)) throw corrupt(`block ${block.index} does not match its BLAKE3 id ${block.hash.toString('hex')}`)
    hash.copy(record, recordFields.hash)
    this.rawBytes += blockBytes
    let payload = data
    let type = recordTypeRaw
    if (this.cctx !== null) {
      const length = this.cctx.compress2(this.compressed, data)
      if (worthCompressing(blockBytes, length)) {
        payload = Buffer.from(this.compressed.subarray(0, length))
        type = recordTypeZstd
      }
    }
    record.writeUInt8(type, recordFields.type)
    record.writeUInt32LE(payload.length, recordFields.payloadBytes)
    this.send(record)
    this.send(type === recordTypeRaw ? Buffer.from(payload) : payload)
  }

  override _flush (callback: TransformCallback): void {
    if (this.written !== this.header.records) {
      callback(new VdiskError('INVALID', `stream encoder: ${this.written} blocks written, the header announced ${this.header.records}`))
      return
    }
    const trailer = Buffer.alloc(trailerBytes)
    trailer.writeUInt32LE(trailerMagic, trailerFields.magic)
    trailer.writeBigUInt64LE(BigInt(this.written), trailerFields.records)
    this.hasher.digestBuffer().copy(trailer, trailerFields.checksum)
    this.streamBytes += trailer.length
    this.push(trailer)
    callback()
  }
}

/** A queue of received bytes that hands out exact lengths. */
class ByteQueue {
  private readonly chunks: Buffer[] = []
  length = 0

  add (chunk: Buffer): void { this.chunks.push(chunk); this.length += chunk.length }

  /** The first `n` bytes, not consumed (n <= length). */
  peek (n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0].subarray(0, n)
    const merged = Buffer.concat(this.chunks, this.length)
    this.chunks.length = 0
    this.chunks.push(merged)
    return merged.subarray(0, n)
  }

  /** Consumes and returns the first `n` bytes (n <= length). */
  take (n: number): Buffer {
    const out = this.peek(n)
    const first = this.chunks[0]
    if (first.length === n) this.chunks.shift()
    else this.chunks[0] = first.subarray(n)
    this.length -= n
    return out
  }
}

/**
 * Stream bytes in, StreamItems out (object mode). Checks everything it reads (see the file's
 * comment); ends only after a good trailer, and fails on bytes after it.
 */
export class StreamDecoder extends Transform {
  private readonly queue = new ByteQueue()
  private readonly hasher = new Blake3Hasher()
  private dctx: zstd.DCtx | null = null
  private state: 'header' | 'records' | 'done' = 'header'
  /** The header, once read. */
  header: StreamHeader | null = null
  private blocks = 0
  private seen = 0
  private lastIndex = -1
  /** Stream bytes consumed so far (progress). */
  bytesRead = 0

  constructor () {
    super({ writableObjectMode: false, readableObjectMode: true, readableHighWaterMark: 16 })
  }

  override _transform (chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.queue.add(chunk)
    try {
      this.parse()
      callback()
    } catch (err) {
      callback(err as Error)
    }
  }

  override _flush (callback: TransformCallback): void {
    if (this.state !== 'done') {
      const where = this.header === null ? 'before its header is complete' : `after ${this.seen} of ${this.header.records} block records`
      callback(corrupt(`the stream ends early (${where}): it is truncated`))
      return
    }
    callback()
  }

  private consume (n: number): Buffer {
    const bytes = this.queue.take(n)
    this.bytesRead += n
    return bytes
  }

  private parse (): void {
    for (;;) {
      if (this.state === 'done') {
        if (this.queue.length > 0) throw corrupt('bytes follow the stream\'s trailer')
        return
      }
      if (this.state === 'header') {
        if (this.queue.length < headerFixedBytes) return
        const fixed = this.queue.peek(headerFixedBytes)
        if (!fixed.subarray(0, streamMagic.length).equals(streamMagic)) throw corrupt('not a vdiskfs export stream (bad magic)')
        const version = fixed.readUInt16LE(headerFields.version)
        if (version !== streamVersion) throw invalid(`stream version ${version} is not supported (this vdiskfs reads version ${streamVersion})`)
        const nameBytes = fixed.readUInt16LE(headerFields.nameBytes)
        checkNameBytes(nameBytes) // before waiting for them
        let total = headerFixedBytes + nameBytes
        if (hasSourcePart(fixed.readUInt32LE(headerFields.flags))) {
          if (this.queue.length < total + headerSourceFixedBytes) return
          const labelBytes = this.queue.peek(total + headerSourceFixedBytes).readUInt16LE(total + 16)
          if (labelBytes > headerSourceLabelBytesMax) throw corrupt(`stream header names a ${labelBytes}-byte source label, past the format's ${headerSourceLabelBytesMax} (damaged)`)
          total += headerSourceFixedBytes + labelBytes
        }
        if (this.queue.length < total) return
        const bytes = this.consume(total)
        this.header = decodeHeader(bytes)
        this.hasher.update(bytes)
        this.blocks = blocksOf(this.header.size, this.header.blockBytes)
        this.state = 'records'
        this.push({ kind: 'header', header: this.header } satisfies StreamItem)
        continue
      }
      const header = this.header as StreamHeader
      if (this.seen === header.records) {
        if (this.queue.length < trailerBytes) return
        const trailer = this.consume(trailerBytes)
        if (trailer.readUInt32LE(trailerFields.magic) !== trailerMagic || trailer.readUInt32LE(trailerFields.magic + 4) !== 0) throw corrupt(`stream trailer expected after ${this.seen} block records (damaged)`)
        if (Number(trailer.readBigUInt64LE(trailerFields.records)) !== this.seen) throw corrupt('stream trailer counts another number of block records (damaged)')
        if (!this.hasher.digestBuffer().equals(trailer.subarray(trailerFields.checksum, trailerFields.checksum + hashBytes))) {
          throw corrupt('the stream\'s checksum does not match its bytes: it was damaged on its way')
        }
        this.state = 'done'
        continue
      }
      if (this.queue.length < recordFixedBytes) return
      const fixed = this.queue.peek(recordFixedBytes)
      const payloadBytes = this.checkRecord(fixed, header)
      if (this.queue.length < recordFixedBytes + payloadBytes) return
      const bytes = this.consume(recordFixedBytes + payloadBytes)
      this.hasher.update(bytes)
      this.seen++
      const block = this.openRecord(bytes, header)
      this.lastIndex = block.index
      this.push({ kind: 'block', block } satisfies StreamItem)
    }
  }

  /** Checks a record's fixed part; returns its payload length. */
  private checkRecord (fixed: Buffer, header: StreamHeader): number {
    const n = this.seen
    if (fixed.readUInt32LE(recordFields.magic) !== recordMagic) throw corrupt(`block record ${n} of the stream is damaged (bad magic)`)
    const type = fixed.readUInt8(recordFields.type)
    const index = Number(fixed.readBigUInt64LE(recordFields.index))
    const payloadBytes = fixed.readUInt32LE(recordFields.payloadBytes)
    const rawBytes = fixed.readUInt32LE(recordFields.rawBytes)
    if (fixed.readUIntLE(recordFields.type + 1, 3) !== 0) throw corrupt(`block record ${n} of the stream is damaged (reserved bytes set)`)
    if (index <= this.lastIndex || index >= this.blocks) throw corrupt(`block record ${n} of the stream names block ${index}, out of order or past the end (damaged)`)
    if (rawBytes !== header.blockBytes) throw corrupt(`block ${index} of the stream says ${rawBytes} bytes, not ${header.blockBytes} (damaged)`)
    const bound = type === recordTypeZero ? 0 : type === recordTypeRaw ? header.blockBytes : type === recordTypeZstd ? zstd.compressBound(header.blockBytes) : -1
    if (bound < 0) throw corrupt(`block ${index} of the stream has unknown type ${type} (damaged)`)
    if (payloadBytes > bound || (type === recordTypeRaw && payloadBytes !== bound) || (type === recordTypeZstd && payloadBytes === 0)) {
      throw corrupt(`block ${index} of the stream has a payload of ${payloadBytes} bytes (damaged)`)
    }
    return payloadBytes
  }

  private openRecord (bytes: Buffer, header: StreamHeader): StreamBlock & { hash: Buffer | null } {
    const type = bytes.readUInt8(recordFields.type)
    const index = Number(bytes.readBigUInt64LE(recordFields.index))
    const hash = Buffer.from(bytes.subarray(recordFields.hash, recordFields.hash + hashBytes))
    if (type === recordTypeZero) {
      if (!hash.equals(Buffer.alloc(hashBytes))) throw corrupt(`zero block ${index} of the stream carries an id (damaged)`)
      return { index, data: null, hash: null }
    }
    const payload = bytes.subarray(recordFixedBytes)
    let data: Buffer
    if (type === recordTypeRaw) data = Buffer.from(payload)
    else {
      data = Buffer.allocUnsafe(header.blockBytes)
      let length: number
      try {
        this.dctx ??= new zstd.DCtx()
        length = this.dctx.decompress(data, payload)
      } catch (err) {
        throw corrupt(`block ${index} of the stream does not decompress (${(err as Error).message}): damaged`)
      }
      if (length !== header.blockBytes) throw corrupt(`block ${index} of the stream decompresses to ${length} bytes, not ${header.blockBytes} (damaged)`)
    }
    if (!blockHash(data).equals(hash)) throw corrupt(`block ${index} of the stream does not match its BLAKE3 id (damaged)`)
    return { index, data, hash }
  }
}

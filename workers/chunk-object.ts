/**
 * A remote store's chunk object (docs/REMOTE.md): its format and encoder, shared by the push on the CLI's
 * main thread (src/remote) and the CLI's workers that seal an encrypted push's chunks
 * (workers/remote-open.ts). Here, not in src/remote, so that workers import nothing from src/remote.
 */
import type { CCtx as ZstdCCtx } from 'zstd-napi/binding'
import { worthCompressing } from './protocol'
import { sealOverheadBytes } from './sealed-object'

/*
 * A chunk object: a 44-byte header, then the payload (the block, raw or zstd-compressed). Little-endian.
 *
 *   OFFSET  SIZE  DESCRIPTION
 *   0       4     magic "VDRC"
 *   4       1     version (1)
 *   5       1     encoding: 0 raw, 1 zstd
 *   6       2     reserved, zero
 *   8       4     length of the uncompressed block, 1 .. blockBytesMax
 *   12      32    BLAKE3-256 of the uncompressed block (the chunk id, also in the key)
 *   44      ...   payload
 */
export const chunkMagic = Buffer.from('VDRC', 'latin1')
export const chunkVersion = 1
export const chunkEncodingRaw = 0
export const chunkEncodingZstd = 1
export const chunkHeaderBytes = 4 + 1 + 1 + 2 + 4 + 32

export function encodeChunkHeader (encoding: number, rawBytes: number, id: string): Buffer {
  const header = Buffer.alloc(chunkHeaderBytes)
  chunkMagic.copy(header, 0)
  header.writeUInt8(chunkVersion, 4)
  header.writeUInt8(encoding, 5)
  header.writeUInt32LE(rawBytes, 8)
  Buffer.from(id, 'hex').copy(header, 12)
  return header
}

/**
 * Chunk `id`'s plain object for block `data` (its header, then the block compressed by `cctx`, or raw when
 * compression saves less than an eighth, as the pool's sealer does), written at the start of `target`
 * (room for chunkObjectBytesMax): its length. The push on the main thread (a plain store) and the CLI's
 * workers that seal an encrypted push's chunks (workers/remote-open.ts) both build chunks here.
 */
export function encodeChunkObjectInto (cctx: ZstdCCtx, target: Buffer, id: string, data: Buffer): number {
  const compressed = cctx.compress2(target.subarray(chunkHeaderBytes, chunkHeaderBytes + zstdCompressBound(data.length)), data)
  const raw = !worthCompressing(data.length, compressed)
  if (raw) data.copy(target, chunkHeaderBytes)
  encodeChunkHeader(raw ? chunkEncodingRaw : chunkEncodingZstd, data.length, id).copy(target, 0)
  return chunkHeaderBytes + (raw ? data.length : compressed)
}

/**
 * The room the sealed chunk objects of blocks of these `lengths` need, one after another: at most each
 * one's header, zstd bound (at least the block: one kept raw fits) and seal (workers/remote-open.ts).
 */
export function sealRoom (lengths: number[]): number {
  let room = 0
  for (const length of lengths) room += chunkHeaderBytes + zstdCompressBound(length) + sealOverheadBytes
  return room
}

/** zstd's compressBound (ZSTD_COMPRESSBOUND), so that this module needs no zstd of its own. */
export function zstdCompressBound (size: number): number {
  return size + (size >>> 8) + (size < (128 << 10) ? ((128 << 10) - size) >>> 11 : 0)
}

/**
 * Pieced payloads (docs/FORMAT.md, "Pieced payload"): a compressed chunk cut into 16 KiB pieces, each
 * its own zstd frame, after a zstd skippable frame holding a table (each frame's length, and the BLAKE3
 * chaining value of each piece's subtree). The values merge to the block's BLAKE3-256, the chunk's
 * identity, so a reader checks one piece against the chunk's hash without reading the others (the FUSE
 * addon's sealed reads: native/fuse3/pieces.c). The payload stays one valid zstd stream (a decoder skips
 * the table and concatenates the frames), so every reader of whole payloads reads it unchanged.
 *
 * The BLAKE3 subtree values come from the FUSE 3 addon's blake3Pieces (the same C code the addon checks
 * with); where it does not load, or with VDISKFS_CHUNK_PIECES=0, blocks are sealed as one frame.
 */
import path from 'node:path'
import type * as zstd from 'zstd-napi/binding'

export const pieceBytes = 16384
const pieceShift = 14
const pieceMagic = 0x184d2a56
const pieceTag = 0x43504456
const pieceVersion = 1
export function pieceTableBytes (count: number): number { return 20 + 36 * count }

type Blake3Pieces = (input: Uint8Array, out: Uint8Array) => number
let addonPieces: Blake3Pieces | null | undefined

/** The addon's blake3Pieces, or null (not built here). */
function blake3Pieces (): Blake3Pieces | null {
  if (addonPieces === undefined) {
    try {
      const addon = process.env.VDISKFS_FUSE3_ADDON ?? path.join(__dirname, '..', '..', 'native', 'fuse3', 'build', 'vdiskfs_fuse3.node')
      addonPieces = (require(addon) as { blake3Pieces?: Blake3Pieces }).blake3Pieces ?? null
    } catch { addonPieces = null }
  }
  return addonPieces
}

/** Whether new chunks are sealed pieced: the addon loads, and VDISKFS_CHUNK_PIECES is not 0. */
export function sealsPieced (): boolean {
  return process.env.VDISKFS_CHUNK_PIECES !== '0' && blake3Pieces() !== null
}

/** Pieces a block of `length` bytes is cut into: 0 when it is not (not a power of two of at least two pieces, at most 64). */
export function pieceCount (length: number): number {
  if (length < 2 * pieceBytes || length % pieceBytes !== 0) return 0
  const n = length / pieceBytes
  return (n & (n - 1)) === 0 && n <= 64 ? n : 0
}

/** A block's hashes: its BLAKE3-256 and its pieces' values (`count` of them), or null when it is not pieced. */
export interface PieceHashes { hash: Buffer, values: Buffer, count: number }

export function hashPieces (block: Uint8Array): PieceHashes | null {
  const count = pieceCount(block.length)
  const pieces = blake3Pieces()
  if (count === 0 || pieces === null) return null
  const out = Buffer.alloc(32 * (1 + count))
  if (pieces(block, out) !== count) return null
  return { hash: out.subarray(0, 32), values: out.subarray(32), count }
}

/**
 * Compresses `block` as a pieced payload into `output` (its table, then a frame per piece), in at most
 * `limit` bytes: the payload's length, or 0 when it does not fit (the caller stores it otherwise).
 */
export function compressPieced (cctx: zstd.CCtx, block: Buffer, hashes: PieceHashes, output: Buffer, limit: number): number {
  const table = pieceTableBytes(hashes.count)
  if (limit > output.length || table >= limit) return 0
  let at = table
  for (let i = 0; i < hashes.count; i++) {
    let n: number
    try { n = cctx.compress2(output.subarray(at, limit), block.subarray(i * pieceBytes, (i + 1) * pieceBytes)) } catch { return 0 }
    output.writeUInt32LE(n, 20 + 4 * i)
    at += n
  }
  writeTable(output, hashes)
  return at
}

/** Bytes of a zstd frame holding one raw block of a piece (piecedRaw): header 4 + 1 + 2, block header 3. */
const rawFrameBytes = 10 + pieceBytes

/** Bytes stored for an incompressible block of `length` bytes: pieced raw where it is cut into pieces, else the block. */
export function incompressibleStoredBytes (length: number): number {
  const count = pieceCount(length)
  return count === 0 ? length : pieceTableBytes(count) + count * rawFrameBytes
}

/**
 * An incompressible block as a pieced payload all the same (its table, then each piece as a zstd frame of
 * one raw block: a copy, no compression): 0.3% more than the block, so that a read of 4 KiB reads and
 * hashes 16 KiB, not 64. Written into `output`: its length, or 0 when `output` is too short.
 */
export function piecedRaw (block: Buffer, hashes: PieceHashes, output: Buffer): number {
  const table = pieceTableBytes(hashes.count)
  const length = table + hashes.count * rawFrameBytes
  if (output.length < length) return 0
  let at = table
  for (let i = 0; i < hashes.count; i++) {
    output.writeUInt32LE(0xfd2fb528, at) // a zstd frame's magic
    output[at + 4] = 0x60 // frame header: single segment, a 2-byte content size (+ 256), no checksum
    output.writeUInt16LE(pieceBytes - 256, at + 5)
    output.writeUIntLE(1 | (pieceBytes << 3), at + 7, 3) // the last block, raw, of pieceBytes
    block.copy(output, at + 10, i * pieceBytes, (i + 1) * pieceBytes)
    output.writeUInt32LE(rawFrameBytes, 20 + 4 * i)
    at += rawFrameBytes
  }
  writeTable(output, hashes)
  return at
}

function writeTable (output: Buffer, hashes: PieceHashes): void {
  output.writeUInt32LE(pieceMagic, 0)
  output.writeUInt32LE(pieceTableBytes(hashes.count) - 8, 4)
  output.writeUInt32LE(pieceTag, 8)
  output[12] = pieceVersion
  output[13] = 0
  output[14] = pieceShift
  output[15] = 0
  output.writeUInt32LE(hashes.count, 16)
  hashes.values.copy(output, 20 + 4 * hashes.count)
}

/** Whether a payload starts with a pieced table (its magic and tag). */
export function isPieced (payload: Uint8Array): boolean {
  if (payload.length < 20) return false
  const view = Buffer.from(payload.buffer, payload.byteOffset, payload.length)
  return view.readUInt32LE(0) === pieceMagic && view.readUInt32LE(8) === pieceTag
}

/**
 * Opens a pieced payload into `block` (its exact length): each piece's frame decompressed on its own into
 * its place (so the table's lengths are checked, not only their sum), then the block hashed by pieces:
 * the hashes (null where the addon does not load: then the caller hashes the block), or what is wrong (a malformed table, a frame that does not decompress to its piece, values
 * that do not match the block). The caller checks the hash against the chunk's. A table that is not
 * right is damage even when the frames hold the right block: the addon's readers check pieces with it.
 */
export function openPieced (dctx: zstd.DCtx, payload: Uint8Array, block: Buffer, expected?: Uint8Array): { hashes: PieceHashes | null } | { error: string } {
  const view = Buffer.from(payload.buffer, payload.byteOffset, payload.length)
  const count = pieceCount(block.length)
  if (count === 0 || view.length < pieceTableBytes(count)) return { error: 'a pieced payload for a block that is not cut into pieces' }
  if (view.readUInt32LE(4) !== pieceTableBytes(count) - 8 || view[12] !== pieceVersion || view[13] !== 0 || view[14] !== pieceShift || view[15] !== 0 || view.readUInt32LE(16) !== count) {
    return { error: 'its pieces\' table is malformed' }
  }
  let at = pieceTableBytes(count)
  for (let i = 0; i < count; i++) {
    const length = view.readUInt32LE(20 + 4 * i)
    if (at + length > view.length) return { error: `its piece ${i} runs past the payload` }
    let n: number
    try { n = dctx.decompress(block.subarray(i * pieceBytes, (i + 1) * pieceBytes), view.subarray(at, at + length)) } catch (err) { return { error: `its piece ${i} does not decompress (${(err as Error).message})` } }
    if (n !== pieceBytes) return { error: `its piece ${i} decompresses to ${n} bytes, not ${pieceBytes}` }
    at += length
  }
  if (at !== view.length) return { error: `its pieces' frames end at ${at} bytes, not ${view.length}` }
  // Without the addon (which computes the values) only the block's own hash can be checked, by the caller.
  // With `expected`, the block's hash first: damaged bytes are a checksum mismatch, as for any chunk; a
  // table that does not match bytes that are right is damage of the table.
  const hashes = hashPieces(block)
  if (hashes !== null && expected !== undefined && !hashes.hash.equals(expected)) return { error: 'checksum mismatch' }
  if (hashes !== null && !hashes.values.equals(view.subarray(20 + 4 * count, 20 + 36 * count))) return { error: 'its pieces\' values do not match the block' }
  return { hashes }
}

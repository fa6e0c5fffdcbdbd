/**
 * The worker boundary: message types and the slab layout shared by the main thread
 * (src/chunk/worker-pool.ts) and the task modules (workers/seal.ts, workers/open.ts). Nothing else is
 * imported by both sides.
 *
 * Blocks travel in one SharedArrayBuffer, cut into slots. A slot holds an input region (a raw block,
 * or a stored chunk record to open), an output region (the compressed block, or the opened raw block)
 * and a 32-byte hash. Tasks carry slot numbers, never bytes. A slot belongs to one task at a time: the
 * main thread hands it out and takes it back (src/chunk/slab.ts), so no two threads touch it at once.
 * Workers report failures as `{ error }` in the result rather than throwing across threads.
 */

export { extentSectorBytes, extentSumBytes, sectorMatches } from '../src/format/extent-format'

export interface WorkerConfig {
  slab: SharedArrayBuffer
  blockBytes: number
  /** Bytes of a slot's input and output regions (each); at least compressBound(blockBytes) + record header. */
  regionBytes: number
  zstdLevel: number
  /** The nice value a worker thread takes when it starts (the sealing workers: background work). */
  nice?: number
}

export const hashBytes = 32

export function slotBytes (config: Pick<WorkerConfig, 'regionBytes'>): number {
  return 2 * config.regionBytes + hashBytes
}
export function inputOffset (config: Pick<WorkerConfig, 'regionBytes'>, slot: number): number {
  return slot * slotBytes(config)
}
export function outputOffset (config: Pick<WorkerConfig, 'regionBytes'>, slot: number): number {
  return inputOffset(config, slot) + config.regionBytes
}
export function hashOffset (config: Pick<WorkerConfig, 'regionBytes'>, slot: number): number {
  return inputOffset(config, slot) + 2 * config.regionBytes
}

/**
 * Seal: for each slot, whose input holds `length` raw bytes (or, with `source`, first reads them from
 * that file at the given offsets): zero-check, hash, compress.
 */
export interface SealTask {
  slots: number[]
  length: number
  /**
   * Where the blocks are: `offsets` in `file`, read through `fd`, a descriptor the main thread lends
   * for this task (it owns and closes it; workers keep none, so a deleted file's space comes back);
   * with `sums`, the offset of each block's sector checksum
   * table (extent format version 2), which the worker checks before hashing (a mismatch is an error).
   */
  source?: { fd: number, file: string, offsets: number[], sums?: number[] }
  /**
   * Per slot (in the order of `slots`): 0 when its input holds the raw block; n > 0 when it holds a zstd
   * frame of n bytes (a pull's chunk as the remote store keeps it, at most `length` bytes), which the worker
   * decompresses into the slot's output (exactly `length` bytes, else the block's `error`) and zero-checks
   * and hashes from there; the frame itself is what the main thread stores, not compressed again.
   */
  frames?: number[]
}
export interface SealBlockResult {
  /** The block is all zeros: nothing is hashed or stored. */
  zero: boolean
  /**
   * Bytes of compressed output, or 0 when compression saves less than the threshold (store raw). For a
   * frame (SealTask.frames): the frame's length, and the payload to store is the slot's input.
   */
  compressedBytes: number
  /** A frame that does not decompress to a block of the task's length: why (nothing is hashed). */
  error?: string
}
export interface SealResult { blocks: SealBlockResult[], error?: string }

/**
 * Open: for each request, read a stored chunk from a pack file into the slot's input, decompress it
 * (when compressed) into the slot's output, and check its BLAKE3 against the expected hash, which the
 * main thread writes into the slot's hash region before it submits the task (bytes travel in the
 * slab, not in the message). Error messages name no file: the main thread knows the pack and offset.
 */
export interface OpenRequest {
  slot: number
  /** A read descriptor of the pack, lent by the main thread for this task (it owns and closes it). */
  fd: number
  /** Offset of the chunk's payload in the file and its stored length. */
  offset: number
  storedBytes: number
  rawBytes: number
  compressed: boolean
}
export interface OpenTask { requests: OpenRequest[] }
export interface OpenBlockResult { ok: boolean, error?: string }
export interface OpenResult { blocks: OpenBlockResult[], error?: string }

/**
 * A block is stored raw when compression saves less than 1/8 of it: the one rule for the pool's chunks
 * (the sealer), export streams and the remote store's chunks.
 */
export function worthCompressing (rawBytes: number, compressedBytes: number): boolean {
  return compressedBytes > 0 && compressedBytes <= rawBytes - rawBytes / 8
}

/** Whether every byte of `data` is zero (8 bytes at a time when aligned): zero blocks are stored as holes. */
export function isZeroBlock (data: Uint8Array): boolean {
  if (data.byteOffset % 8 === 0 && data.length % 8 === 0) {
    const words = new BigUint64Array(data.buffer, data.byteOffset, data.length / 8)
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false
    return true
  }
  for (let i = 0; i < data.length; i++) if (data[i] !== 0) return false
  return true
}

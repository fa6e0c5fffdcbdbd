/**
 * Worker task: zero-check, hash (BLAKE3-256) and compress (zstd) a batch of blocks in the slab.
 * Imports only the protocol module and the two native kernels. Also callable on the main thread, for
 * the benchmark's "no workers" baseline only.
 */
import os from 'node:os'
import { blake3Digest } from './hash'
import * as zstd from 'zstd-napi/binding'
import { WorkerConfig, SealResult, SealTask, extentSectorBytes, extentSumBytes, hashBytes, hashOffset, inputOffset, outputOffset, isZeroBlock, sectorMatches, worthCompressing } from './protocol'
import { readFully } from './descriptors'
import { compressPieced, hashPieces, isPieced, openPieced, piecedRaw, sealsPieced } from './pieces'

let context: { config: WorkerConfig, slab: Buffer, cctx: zstd.CCtx, dctx: zstd.DCtx } | null = null

function setup (config: WorkerConfig) {
  if (context === null || context.config.slab !== config.slab) {
    // Linux: a thread's own nice value (setpriority with pid 0 applies to the calling thread only).
    if (config.nice !== undefined) { try { os.setPriority(config.nice) } catch {} }
    const cctx = new zstd.CCtx()
    cctx.setParameter(zstd.CParameter.compressionLevel, config.zstdLevel)
    context = { config, slab: Buffer.from(config.slab), cctx, dctx: new zstd.DCtx() }
  }
  return context
}


export function seal (task: SealTask, config: WorkerConfig): SealResult {
  try {
    const { slab, cctx, dctx } = setup(config)
    if (task.source !== undefined) {
      // The blocks come straight from the extent file: the main thread never touches their bytes.
      const source = task.source
      const fd = source.fd
      const sectors = task.length / extentSectorBytes
      const sums = Buffer.alloc(sectors * extentSumBytes)
      for (let i = 0; i < task.slots.length; i++) {
        const block = slab.subarray(inputOffset(config, task.slots[i]), inputOffset(config, task.slots[i]) + task.length)
        readFully(fd, block, source.offsets[i])
        if (source.sums === undefined) continue
        readFully(fd, sums, source.sums[i])
        for (let k = 0; k < sectors; k++) {
          if (!sectorMatches(block.subarray(k * extentSectorBytes, (k + 1) * extentSectorBytes), sums.readUInt32LE(k * extentSumBytes))) {
            return { blocks: [], error: `${source.file} at offset ${source.offsets[i]}: sector ${k} fails its checksum` }
          }
        }
      }
    }
    const blocks = task.slots.map((slot, i): SealResult['blocks'][number] => {
      const frameBytes = task.frames?.[i] ?? 0
      if (frameBytes > 0) return openFrame(config, slab, dctx, slot, frameBytes, task.length)
      const input = slab.subarray(inputOffset(config, slot), inputOffset(config, slot) + task.length)
      if (isZeroBlock(input)) return { zero: true, compressedBytes: 0 }
      const output = slab.subarray(outputOffset(config, slot), outputOffset(config, slot) + config.regionBytes)
      // Cut into verified pieces where the block allows (workers/pieces.ts): compressed pieces if they
      // come to at most 7/8 of the block, else (not worth it) pieces kept raw in their frames. The pieces'
      // attempt decides: compressing the block again as one frame would cost a second compression of
      // every such block for a few percent of them. A block that is not cut into pieces: compressed or
      // raw as before.
      const pieces = sealsPieced() ? hashPieces(input) : null
      if (pieces !== null) {
        pieces.hash.copy(slab, hashOffset(config, slot), 0, hashBytes)
        const pieced = compressPieced(cctx, input, pieces, output, task.length - task.length / 8)
        return { zero: false, compressedBytes: pieced > 0 ? pieced : piecedRaw(input, pieces, output) }
      }
      blake3Digest(input).copy(slab, hashOffset(config, slot), 0, hashBytes)
      const compressed = cctx.compress2(output, input)
      return { zero: false, compressedBytes: worthCompressing(task.length, compressed) ? compressed : 0 }
    })
    return { blocks }
  } catch (err) {
    return { blocks: [], error: (err as Error).message }
  }
}

/**
 * A frame in `slot`'s input: decompressed into its output with the same call the open worker makes when
 * it serves the stored chunk (so what is hashed here is what a read will see), exactly `length` bytes;
 * then zero-checked and hashed from the output. The frame stays in the input, to be stored as it is.
 */
function openFrame (config: WorkerConfig, slab: Buffer, dctx: zstd.DCtx, slot: number, frameBytes: number, length: number): SealResult['blocks'][number] {
  if (frameBytes > length) return { zero: false, compressedBytes: 0, error: `a frame of ${frameBytes} bytes, longer than the block` }
  const frame = slab.subarray(inputOffset(config, slot), inputOffset(config, slot) + frameBytes)
  const block = slab.subarray(outputOffset(config, slot), outputOffset(config, slot) + length)
  let n: number
  try { n = dctx.decompress(block, frame) } catch (err) { return { zero: false, compressedBytes: 0, error: `does not decompress (${(err as Error).message})` } }
  if (n !== length) return { zero: false, compressedBytes: 0, error: `decompresses to ${n} bytes, not ${length}` }
  if (isZeroBlock(block)) return { zero: true, compressedBytes: 0 }
  if (isPieced(frame)) {
    // Stored as it came: its table must hold, as a read of the stored chunk will check it.
    const opened = openPieced(dctx, frame, block)
    if ('error' in opened) return { zero: false, compressedBytes: 0, error: opened.error }
    ;(opened.hashes?.hash ?? blake3Digest(block)).copy(slab, hashOffset(config, slot), 0, hashBytes)
    return { zero: false, compressedBytes: frameBytes }
  }
  blake3Digest(block).copy(slab, hashOffset(config, slot), 0, hashBytes)
  return { zero: false, compressedBytes: frameBytes }
}

// Piscina calls the default export with the task; the config arrives once, as workerData.
export default function (task: SealTask): SealResult {
  const { workerData } = require('piscina') as { workerData: WorkerConfig }
  return seal(task, workerData)
}

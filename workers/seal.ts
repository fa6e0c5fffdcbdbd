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

let context: { config: WorkerConfig, slab: Buffer, cctx: zstd.CCtx } | null = null

function setup (config: WorkerConfig) {
  if (context === null || context.config.slab !== config.slab) {
    // Linux: a thread's own nice value (setpriority with pid 0 applies to the calling thread only).
    if (config.nice !== undefined) { try { os.setPriority(config.nice) } catch {} }
    const cctx = new zstd.CCtx()
    cctx.setParameter(zstd.CParameter.compressionLevel, config.zstdLevel)
    context = { config, slab: Buffer.from(config.slab), cctx }
  }
  return context
}


export function seal (task: SealTask, config: WorkerConfig): SealResult {
  try {
    const { slab, cctx } = setup(config)
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
    const blocks = task.slots.map(slot => {
      const input = slab.subarray(inputOffset(config, slot), inputOffset(config, slot) + task.length)
      if (isZeroBlock(input)) return { zero: true, compressedBytes: 0 }
      blake3Digest(input).copy(slab, hashOffset(config, slot), 0, hashBytes)
      const output = slab.subarray(outputOffset(config, slot), outputOffset(config, slot) + config.regionBytes)
      const compressed = cctx.compress2(output, input)
      return { zero: false, compressedBytes: worthCompressing(task.length, compressed) ? compressed : 0 }
    })
    return { blocks }
  } catch (err) {
    return { blocks: [], error: (err as Error).message }
  }
}

// Piscina calls the default export with the task; the config arrives once, as workerData.
export default function (task: SealTask): SealResult {
  const { workerData } = require('piscina') as { workerData: WorkerConfig }
  return seal(task, workerData)
}

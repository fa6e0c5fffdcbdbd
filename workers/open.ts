/**
 * Worker task: read stored chunks from pack files, decompress them and verify each against its
 * BLAKE3-256 (which the main thread put in the slot's hash region) before the main thread may serve
 * it. A mismatch is reported, never returned as data.
 * Pack descriptors are lent by the main thread with each task (src/chunk/pack-descriptors.ts).
 */
import fs from 'node:fs'
import { blake3Digest } from './hash'
import { isPieced, openPieced } from './pieces'
import * as zstd from 'zstd-napi/binding'
import { OpenResult, OpenTask, WorkerConfig, hashBytes, hashOffset, inputOffset, outputOffset } from './protocol'

let context: { config: WorkerConfig, slab: Buffer, dctx: zstd.DCtx } | null = null

export function open (task: OpenTask, config: WorkerConfig): OpenResult {
  if (context === null || context.config.slab !== config.slab) {
    context = { config, slab: Buffer.from(config.slab), dctx: new zstd.DCtx() }
  }
  const { slab, dctx } = context
  const blocks = task.requests.map(request => {
    try {
      const input = slab.subarray(inputOffset(config, request.slot), inputOffset(config, request.slot) + request.storedBytes)
      const read = fs.readSync(request.fd, input, 0, request.storedBytes, request.offset)
      if (read !== request.storedBytes) return { ok: false, error: `short read (${read} of ${request.storedBytes} bytes)` }
      const output = slab.subarray(outputOffset(config, request.slot), outputOffset(config, request.slot) + request.rawBytes)
      const expected = slab.subarray(hashOffset(config, request.slot), hashOffset(config, request.slot) + hashBytes)
      if (request.compressed && isPieced(input)) {
        // Piece by piece, and the table checked too (workers/pieces.ts): the addon's reads trust it.
        const opened = openPieced(dctx, input, output, expected)
        if ('error' in opened) return { ok: false, error: opened.error }
        if (!(opened.hashes?.hash ?? blake3Digest(output)).equals(expected)) return { ok: false, error: 'checksum mismatch' }
        return { ok: true }
      }
      if (request.compressed) {
        const n = dctx.decompress(output, input)
        if (n !== request.rawBytes) return { ok: false, error: `decompressed to ${n} bytes, expected ${request.rawBytes}` }
      } else {
        input.copy(output)
      }
      if (!blake3Digest(output).equals(expected)) return { ok: false, error: 'checksum mismatch' }
      return { ok: true }
    } catch (err) {
      return { ok: false, error: (err as Error).message }
    }
  })
  return { blocks }
}

export default function (task: OpenTask): OpenResult {
  const { workerData } = require('piscina') as { workerData: WorkerConfig }
  return open(task, workerData)
}

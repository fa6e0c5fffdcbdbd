/**
 * Worker tasks, in the CLI (not the daemon), for an encrypted remote store (src/remote/chunk-opener.ts),
 * off the thread that runs the S3 requests and talks to the daemon:
 * - openChunks (the default task): opens the sealed chunk objects one range GET brought. AES-256-GCM
 *   authenticates each object under its name (sealed-object.ts openSealed); what fails is reported by its
 *   message, never returned as data.
 * - sealChunks: a push's new chunks, each compressed (zstd) into its plain chunk object and sealed under
 *   its name, one after another, as they will lie in a pack.
 * The seal subkey comes in workerData: the worker threads are the CLI's own, the key never leaves its process.
 */
import { threadId, workerData } from 'node:worker_threads'
import * as zstd from 'zstd-napi/binding'
import { openSealed, sealKindChunk } from './sealed-object'
import { ChunkSealer } from './chunk-sealer'
import { chunkHeaderBytes, encodeChunkObjectInto, sealRoom, zstdCompressBound } from './chunk-object'

/** The objects of one range: `bytes`, and where each object lies in it, its name and how errors call it. */
export interface RemoteOpenTask { bytes: Uint8Array, chunks: Array<{ offset: number, length: number, name: string, what: string }> }

/** Each object's plaintext, one after another in `plain`, or why it did not open; the thread that opened them. */
export interface RemoteOpenResult { plain: Uint8Array, chunks: Array<{ offset: number, length: number } | { error: string }>, threadId: number }

/**
 * A push's new blocks: their bytes one after another in `blocks`, and each one's chunk id, object name
 * (below the store's prefix) and place; their sealed objects go one after another into `sealed` (room
 * for sealRoom of the chunks). Both are views of SharedArrayBuffers the caller uses again for later
 * batches: nothing is copied or moved to and from this thread.
 */
export interface RemoteSealTask { blocks: Uint8Array, chunks: Array<{ id: string, name: string, offset: number, length: number }>, sealed: Uint8Array, zstdLevel: number }

/** Each block's sealed object's length, in the task's order (they lie one after another in the task's `sealed`); the thread that sealed them. */
export interface RemoteSealResult { lengths: number[], threadId: number }

const sealKey = Buffer.from((workerData as { sealKey: Uint8Array }).sealKey)

export default function openChunks (task: RemoteOpenTask): RemoteOpenResult {
  const bytes = Buffer.from(task.bytes.buffer, task.bytes.byteOffset, task.bytes.byteLength)
  const opened: Array<Buffer | { error: string }> = task.chunks.map(chunk => {
    try {
      return openSealed(sealKey, sealKindChunk, chunk.name, bytes.subarray(chunk.offset, chunk.offset + chunk.length), chunk.what)
    } catch (err) { return { error: (err as Error).message } }
  })
  let total = 0
  for (const one of opened) if (Buffer.isBuffer(one)) total += one.length
  const plain = Buffer.allocUnsafeSlow(total)
  let at = 0
  const chunks = opened.map(one => {
    if (!Buffer.isBuffer(one)) return one
    one.copy(plain, at)
    at += one.length
    return { offset: at - one.length, length: one.length }
  })
  // Cloned on its way back (a copy of at most a range, small beside the cipher's work).
  return { plain, chunks, threadId }
}

let cctx: { level: number, ctx: zstd.CCtx } | null = null
/** Where each plain chunk object is built before it is sealed: used again by every task. */
let scratch = Buffer.alloc(0)

/** This thread's sealer of chunks (chunk-sealer.ts): one salt per chunksPerSalt chunks, across tasks. */
const sealer = new ChunkSealer(sealKey)

export function sealChunks (task: RemoteSealTask): RemoteSealResult {
  if (cctx === null || cctx.level !== task.zstdLevel) {
    const ctx = new zstd.CCtx()
    ctx.setParameter(zstd.CParameter.compressionLevel, task.zstdLevel)
    cctx = { level: task.zstdLevel, ctx }
  }
  const blocks = Buffer.from(task.blocks.buffer, task.blocks.byteOffset, task.blocks.byteLength)
  const sealed = Buffer.from(task.sealed.buffer, task.sealed.byteOffset, task.sealed.byteLength)
  if (sealed.length < sealRoom(task.chunks.map(chunk => chunk.length))) throw new RangeError('sealChunks: too little room for the sealed objects')
  const largest = Math.max(0, ...task.chunks.map(chunk => chunkHeaderBytes + zstdCompressBound(chunk.length)))
  if (scratch.length < largest) scratch = Buffer.allocUnsafe(largest)
  const lengths: number[] = []
  let at = 0
  for (const chunk of task.chunks) {
    const plainLength = encodeChunkObjectInto(cctx.ctx, scratch, chunk.id, blocks.subarray(chunk.offset, chunk.offset + chunk.length))
    const length = sealer.seal(sealed.subarray(at), chunk.name, scratch.subarray(0, plainLength))
    lengths.push(length)
    at += length
  }
  return { lengths, threadId }
}

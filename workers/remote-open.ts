/**
 * Worker task, in the CLI (not the daemon): opens the sealed chunk objects of an encrypted remote store
 * that one range GET brought (src/remote/chunk-opener.ts), off the thread that runs the S3 requests and
 * talks to the daemon. AES-256-GCM authenticates each object under its name (sealed-object.ts openSealed); what
 * fails is reported by its message, never returned as data. The seal subkey comes in workerData: the
 * worker threads are the CLI's own, the key never leaves its process.
 */
import { threadId, workerData } from 'node:worker_threads'
import { openSealed, sealKindChunk } from './sealed-object'

/** The objects of one range: `bytes`, and where each object lies in it, its name and how errors call it. */
export interface RemoteOpenTask { bytes: Uint8Array, chunks: Array<{ offset: number, length: number, name: string, what: string }> }

/** Each object's plaintext, one after another in `plain`, or why it did not open; the thread that opened them. */
export interface RemoteOpenResult { plain: Uint8Array, chunks: Array<{ offset: number, length: number } | { error: string }>, threadId: number }

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

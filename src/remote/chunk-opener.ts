/**
 * An encrypted store's chunks opened (a pull's, verify's, gc's) and sealed (a push's) in worker threads of
 * the CLI (workers/remote-open.ts, a Piscina pool started at the first task), not on its main thread,
 * which runs the S3 requests and the stream to and from the daemon: AES-256-GCM of every byte a pull brings
 * was about 0.7 s of CPU per 350 MiB on that thread, and a push's zstd and AES-GCM kept its encrypted
 * push below the plain one. The pool's threads are this process's own: the seal subkey goes to them in workerData and
 * never leaves the process. close() ends the threads (a command that is done exits).
 */
import os from 'node:os'
import path from 'node:path'
import type Piscina from 'piscina'
import { corrupt } from '../errors'
import type { RemoteOpenResult, RemoteOpenTask, RemoteSealResult, RemoteSealTask } from '../../workers/remote-open'

const task = path.resolve(__dirname, '..', '..', 'workers', 'remote-open.js')

/** At most this many threads open or seal chunks (a range of a few MiB, or a push's batch, is one task). */
const openThreadsMax = 2

/** A buffer of `bytes` on a SharedArrayBuffer, for seal(): the worker threads read or write it in place. */
export function newSharedBuffer (bytes: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(bytes))
}

export class ChunkOpener {
  private pool: Piscina | null = null
  private lastThread = -1

  constructor (private readonly sealKey: Buffer) {}

  /**
   * Opens the objects `chunks` (where each lies in `bytes`, its name, how errors call it): each one's
   * plain chunk object, or its CORRUPT error (what open() says), in order.
   */
  async open (bytes: Buffer, chunks: Array<{ offset: number, length: number, name: string, what: string }>): Promise<Array<Buffer | Error>> {
    // The range's bytes are copied to the worker, not moved: the caller keeps them (gc copies a chunk's
    // stored bytes into a new pack). A copy of a few MiB is small beside the cipher's work on them.
    const request: RemoteOpenTask = { bytes, chunks }
    const result = await this.threads().run(request) as RemoteOpenResult
    this.lastThread = result.threadId
    const plain = Buffer.from(result.plain.buffer, result.plain.byteOffset, result.plain.byteLength)
    return result.chunks.map(one => 'error' in one ? corrupt(one.error) : plain.subarray(one.offset, one.offset + one.length))
  }

  /**
   * Seals blocks `blocks` (where each lies in it, its chunk id, its object's name below the store's
   * prefix): each compressed at `zstdLevel` into its plain chunk object (its header, then the block in
   * zstd, or raw when that saves less than an eighth) and sealed under its name, written one after
   * another into `sealed` (room for sealRoom of their lengths, remote-format.ts): their lengths, in order.
   * Both buffers must be views of SharedArrayBuffers (newSharedBuffer): the worker reads and writes them
   * in place, nothing is copied; the caller must not touch them until this settles.
   */
  async seal (blocks: Buffer, chunks: Array<{ id: string, name: string, offset: number, length: number }>, sealed: Buffer, zstdLevel = 1): Promise<Buffer[]> {
    if (!(blocks.buffer instanceof SharedArrayBuffer) || !(sealed.buffer instanceof SharedArrayBuffer)) throw new TypeError('ChunkOpener.seal: the buffers must be shared')
    const request: RemoteSealTask = { blocks, chunks, sealed, zstdLevel }
    const result = await this.threads().run(request, { name: 'sealChunks' }) as RemoteSealResult
    this.lastThread = result.threadId
    let at = 0
    return result.lengths.map(length => sealed.subarray(at, (at += length)))
  }

  private threads (): Piscina {
    if (this.pool === null) {
      // Loaded here, not at the top: only an encrypted store's reads and pushes need Piscina in the CLI.
      const { Piscina } = require('piscina') as typeof import('piscina')
      const threads = Math.max(1, Math.min(openThreadsMax, os.availableParallelism()))
      this.pool = new Piscina({ filename: task, minThreads: threads, maxThreads: threads, workerData: { sealKey: this.sealKey } })
    }
    return this.pool
  }

  /** Whether its threads are started (the first open() starts them; close() ends them). */
  get running (): boolean { return this.pool !== null }

  /** The thread that opened the last range (a test's proof that it is not the caller's). */
  lastThreadId (): number { return this.lastThread }

  async close (): Promise<void> {
    const pool = this.pool
    this.pool = null
    if (pool !== null) await pool.destroy()
  }
}

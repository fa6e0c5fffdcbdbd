/**
 * A pull's (or verify's, or gc's) sealed chunks opened in worker threads of the CLI (workers/remote-open.ts,
 * a Piscina pool started at the first range), not on its main thread, which runs the S3 requests and
 * the stream to the daemon: AES-256-GCM of every byte a pull brings was about 0.7 s of CPU per 350 MiB on
 * that thread. The pool's threads are this process's own: the seal subkey goes to them in workerData and
 * never leaves the process. close() ends the threads (a command that is done exits).
 */
import os from 'node:os'
import path from 'node:path'
import type Piscina from 'piscina'
import { corrupt } from '../errors'
import type { RemoteOpenResult, RemoteOpenTask } from '../../workers/remote-open'

const task = path.resolve(__dirname, '..', '..', 'workers', 'remote-open.js')

/** At most this many threads open chunks (a range of a few MiB is one task). */
const openThreadsMax = 2

export class ChunkOpener {
  private pool: Piscina | null = null
  private lastThread = -1

  constructor (private readonly sealKey: Buffer) {}

  /**
   * Opens the objects `chunks` (where each lies in `bytes`, its name, how errors call it): each one's
   * plain chunk object, or its CORRUPT error (what open() says), in order.
   */
  async open (bytes: Buffer, chunks: Array<{ offset: number, length: number, name: string, what: string }>): Promise<Array<Buffer | Error>> {
    if (this.pool === null) {
      // Loaded here, not at the top: only an encrypted store's reads need Piscina in the CLI.
      const { Piscina } = require('piscina') as typeof import('piscina')
      const threads = Math.max(1, Math.min(openThreadsMax, os.availableParallelism()))
      this.pool = new Piscina({ filename: task, minThreads: threads, maxThreads: threads, workerData: { sealKey: this.sealKey } })
    }
    // The range's bytes are copied to the worker, not moved: the caller keeps them (gc copies a chunk's
    // stored bytes into a new pack). A copy of a few MiB is small beside the cipher's work on them.
    const request: RemoteOpenTask = { bytes, chunks }
    const result = await this.pool.run(request) as RemoteOpenResult
    this.lastThread = result.threadId
    const plain = Buffer.from(result.plain.buffer, result.plain.byteOffset, result.plain.byteLength)
    return result.chunks.map(one => 'error' in one ? corrupt(one.error) : plain.subarray(one.offset, one.offset + one.length))
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

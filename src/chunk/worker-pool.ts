/**
 * The main thread's side of the worker boundary: two Piscina pools over one SharedArrayBuffer slab,
 * one running workers/seal.js (background work: its threads niced, sealWorkerNice) and one running
 * workers/open.js (reads, which so never wait behind a seal batch). With `threads: 0` (benchmark
 * baseline only) the same task functions run inline on the main thread.
 *
 * The slab stays this file's own: a caller takes a lease of some slots (lease()), sees their regions as
 * buffers, runs tasks on them by position, and the slots come back when its work settles. No caller
 * computes an offset or hands out a slot number.
 */
import assert from 'node:assert/strict'
import os from 'node:os'
import path from 'node:path'
import Piscina from 'piscina'
import * as zstd from 'zstd-napi/binding'
import { OpenRequest, OpenResult, OpenTask, SealResult, SealTask, WorkerConfig, hashBytes, hashOffset, inputOffset, outputOffset, slotBytes } from '../../workers/protocol'
import { seal as sealInline } from '../../workers/seal'
import { open as openInline } from '../../workers/open'
import { SlotAllocator } from './slab'
import { chunkHeaderBytes } from './pack-format'
import { sealWorkerNice, slabSlots, workerQueueMax } from '../limits'

// The compiled task modules (dist/workers/*.js), beside this file's dist/src/chunk.
const sealTask = path.resolve(__dirname, '..', '..', 'workers', 'seal.js')
const openTask = path.resolve(__dirname, '..', '..', 'workers', 'open.js')

export interface WorkerPoolOptions {
  blockBytes: number
  zstdLevel: number
  threads?: number
  /** Load seal.js into the read pool's threads now rather than at their first urgent batch (the daemon's pool). */
  warm?: boolean
}

interface TaskRunner {
  /** `urgent`: in a thread at the daemon's priority (the read pool's), for blocks a reader waits for. */
  seal: (task: SealTask, urgent: boolean) => Promise<SealResult>
  open: (task: OpenTask) => Promise<OpenResult>
}

/** A request of SlabLease.open(): the chunk to open into the lease's slot `at`, and the hash it must have. */
export interface LeasedOpen extends Omit<OpenRequest, 'slot'> { at: number, hash: Buffer }

/**
 * Some slots of the slab, held by one caller until the work given to WorkerPool.lease() settles: the
 * buffers it hands out are views of the slab, valid only until then.
 */
export class SlabLease {
  constructor (private readonly tasks: TaskRunner, private readonly config: WorkerConfig, private readonly slab: Buffer, private readonly slots: number[], private readonly urgent = false) {}

  get count (): number { return this.slots.length }
  /** The input region of the lease's slot `at` (a raw block to seal; a stored record once opened). */
  input (at: number, length: number): Buffer {
    const start = inputOffset(this.config, this.slots[at])
    return this.slab.subarray(start, start + length)
  }

  /** The output region of slot `at` (the compressed block after a seal; the raw block after an open). */
  output (at: number, length: number): Buffer {
    const start = outputOffset(this.config, this.slots[at])
    return this.slab.subarray(start, start + length)
  }

  /** A copy of slot `at`'s hash (written by a seal task). */
  hash (at: number): Buffer {
    const start = hashOffset(this.config, this.slots[at])
    return Buffer.from(this.slab.subarray(start, start + hashBytes))
  }

  /**
   * Seals the blocks in this lease's slots, in order (see SealTask; `source` reads them from a file first;
   * `frames`: the slots whose input holds a zstd frame, and its length, to open and check instead).
   */
  async seal (length: number, source?: SealTask['source'], frames?: number[]): Promise<SealResult> {
    const task: SealTask = source === undefined ? { slots: this.slots, length } : { slots: this.slots, length, source }
    if (frames !== undefined) task.frames = frames
    return await this.tasks.seal(task, this.urgent)
  }

  /** Opens chunks into this lease's slots (see OpenTask); the expected hashes go into the slots first. */
  async open (requests: LeasedOpen[]): Promise<OpenResult> {
    return await this.tasks.open({
      requests: requests.map(({ at, hash, ...request }) => {
        assert.equal(hash.length, hashBytes)
        hash.copy(this.slab, hashOffset(this.config, this.slots[at]))
        return { ...request, slot: this.slots[at] }
      })
    })
  }
}

export class WorkerPool {
  private readonly config: WorkerConfig
  private readonly slab: Buffer
  private readonly slots: SlotAllocator
  /** Sealing (and import) tasks: threads at sealWorkerNice. */
  private readonly sealPool: Piscina | null
  /** Reads of chunks (FUSE reads, verify, export, push): threads at the daemon's priority, never queued behind a seal batch. */
  private readonly readPool: Piscina | null
  readonly threads: number

  constructor (options: WorkerPoolOptions) {
    const regionBytes = Math.ceil((zstd.compressBound(options.blockBytes) + chunkHeaderBytes) / 64) * 64
    const config: WorkerConfig = { slab: new SharedArrayBuffer(0), blockBytes: options.blockBytes, regionBytes, zstdLevel: options.zstdLevel }
    config.slab = new SharedArrayBuffer(slabSlots * slotBytes(config))
    this.config = config
    this.slab = Buffer.from(config.slab)
    this.slots = new SlotAllocator(slabSlots)
    this.threads = options.threads ?? Number(process.env.VDISKFS_WORKERS ?? os.availableParallelism())
    const pool = (filename: string, workerData: WorkerConfig): Piscina | null => this.threads === 0
      ? null
      : new Piscina({ minThreads: this.threads, maxThreads: this.threads, maxQueue: workerQueueMax, workerData, filename })
    this.sealPool = pool(sealTask, { ...config, nice: sealWorkerNice })
    this.readPool = pool(openTask, config)
    // The read pool's threads load seal.js (and make its zstd context) at their first urgent batch: a lazy
    // pull's head, which the command waits for, or the blocks a reader waits for. With `warm` (the daemon),
    // an empty batch per thread now, while the pool opens, takes that first load off their path (the head's
    // store: 499 to 523 ms against 554 to 720 in the daemon's timing line, alternated, load 10 to 11).
    // Nothing is read or written; a pool closed before they ran rejects them, ignored.
    const readPool = this.readPool
    if (readPool !== null && options.warm === true) for (let i = 0; i < this.threads; i++) readPool.run({ slots: [], length: 0 } satisfies SealTask, { filename: sealTask }).catch(() => {})
  }

  /**
   * Runs `work` with `count` slots of the slab (waiting in line for them: the slab bounds the memory in
   * flight), and takes them back when it settles.
   */
  async lease<T> (count: number, work: (lease: SlabLease) => Promise<T>, urgent = false): Promise<T> {
    const slots = await this.slots.acquireMany(count)
    try {
      return await work(new SlabLease(this.tasks, this.config, this.slab, slots, urgent))
    } finally {
      for (const slot of slots) this.slots.release(slot)
    }
  }

  /** The tasks, by slot number: for the leases only. */
  private readonly tasks: TaskRunner = {
    seal: async (task: SealTask, urgent: boolean): Promise<SealResult> => {
      if (this.sealPool === null) return sealInline(task, this.config)
      // An urgent batch (a lazy pull's blocks a reader waits for, or its import) runs in the read pool's
      // threads, which are at the daemon's priority: the sealing threads' nice value (sealWorkerNice)
      // made it wait behind every other process of a busy machine. The read pool's workerData has no
      // nice value, so seal.js loaded there leaves the thread's priority alone.
      if (urgent && this.readPool !== null) return await this.readPool.run(task, { filename: sealTask }) as SealResult
      return await this.sealPool.run(task, { filename: sealTask }) as SealResult
    },
    open: async (task: OpenTask): Promise<OpenResult> => {
      if (this.readPool === null) return openInline(task, this.config)
      return await this.readPool.run(task, { filename: openTask }) as OpenResult
    }
  }

  async close (): Promise<void> {
    await Promise.all([this.sealPool?.destroy(), this.readPool?.destroy()])
  }
}

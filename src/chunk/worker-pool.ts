/**
 * The main thread's side of the worker boundary: two Piscina pools over one SharedArrayBuffer slab,
 * one running workers/seal.js (background work: its threads niced, sealWorkerNice) and one running
 * workers/open.js (reads, which so never wait behind a seal batch). With `threads: 0` (benchmark
 * baseline only) the same task functions run inline on the main thread.
 */
import os from 'node:os'
import path from 'node:path'
import Piscina from 'piscina'
import * as zstd from 'zstd-napi/binding'
import { OpenResult, OpenTask, SealResult, SealTask, WorkerConfig, slotBytes } from '../../workers/protocol'
import { seal as sealInline } from '../../workers/seal'
import { open as openInline } from '../../workers/open'
import { SlotAllocator } from './slab'
import { chunkHeaderBytes } from './pack-format'
import { sealWorkerNice, slabSlots, workerQueueMax } from '../limits'

// The compiled task modules (dist/workers/*.js), beside this file's dist/src/chunk.
const sealTask = path.resolve(__dirname, '..', '..', 'workers', 'seal.js')
const openTask = path.resolve(__dirname, '..', '..', 'workers', 'open.js')

export interface WorkerPoolOptions { blockBytes: number, zstdLevel: number, threads?: number }

export class WorkerPool {
  readonly config: WorkerConfig
  readonly slab: Buffer
  readonly slots: SlotAllocator
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
  }

  async seal (task: SealTask): Promise<SealResult> {
    if (this.sealPool === null) return sealInline(task, this.config)
    return await this.sealPool.run(task, { filename: sealTask }) as SealResult
  }

  async open (task: OpenTask): Promise<OpenResult> {
    if (this.readPool === null) return openInline(task, this.config)
    return await this.readPool.run(task, { filename: openTask }) as OpenResult
  }

  async close (): Promise<void> {
    await Promise.all([this.sealPool?.destroy(), this.readPool?.destroy()])
  }
}

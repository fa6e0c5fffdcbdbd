/**
 * The main thread's side of the worker boundary: a Piscina pool running workers/seal.js and
 * workers/open.js over one SharedArrayBuffer slab. With `threads: 0` (benchmark baseline only) the
 * same task functions run inline on the main thread.
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
import { slabSlots, workerQueueMax } from '../limits'

// The compiled task modules (dist/workers/*.js), beside this file's dist/src/chunk.
const sealTask = path.resolve(__dirname, '..', '..', 'workers', 'seal.js')
const openTask = path.resolve(__dirname, '..', '..', 'workers', 'open.js')

export interface WorkerPoolOptions { blockBytes: number, zstdLevel: number, threads?: number }

export class WorkerPool {
  readonly config: WorkerConfig
  readonly slab: Buffer
  readonly slots: SlotAllocator
  private readonly piscina: Piscina | null
  readonly threads: number

  constructor (options: WorkerPoolOptions) {
    const regionBytes = Math.ceil((zstd.compressBound(options.blockBytes) + chunkHeaderBytes) / 64) * 64
    const config: WorkerConfig = { slab: new SharedArrayBuffer(0), blockBytes: options.blockBytes, regionBytes, zstdLevel: options.zstdLevel }
    config.slab = new SharedArrayBuffer(slabSlots * slotBytes(config))
    this.config = config
    this.slab = Buffer.from(config.slab)
    this.slots = new SlotAllocator(slabSlots)
    this.threads = options.threads ?? Number(process.env.VDISKFS_WORKERS ?? os.availableParallelism())
    this.piscina = this.threads === 0
      ? null
      : new Piscina({ minThreads: this.threads, maxThreads: this.threads, maxQueue: workerQueueMax, workerData: config, filename: sealTask })
  }

  async seal (task: SealTask): Promise<SealResult> {
    if (this.piscina === null) return sealInline(task, this.config)
    return await this.piscina.run(task, { filename: sealTask }) as SealResult
  }

  async open (task: OpenTask): Promise<OpenResult> {
    if (this.piscina === null) return openInline(task, this.config)
    return await this.piscina.run(task, { filename: openTask }) as OpenResult
  }

  async close (): Promise<void> {
    await this.piscina?.destroy()
  }
}

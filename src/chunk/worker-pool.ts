/**
 * The main thread's side of the worker boundary: worker threads running workers/thread.js (seal and
 * open tasks) over one SharedArrayBuffer slab. With `threads: 0` (benchmark baseline and some tests)
 * the same task functions run inline on the main thread.
 *
 * The hand-off is one message each way on the worker's own port, nothing else: a task goes to an idle
 * thread, or waits in one first-come-first-served queue until a thread is free (as with Piscina, which
 * this replaces: its per-task bookkeeping, an async resource, a task queue object and abort handling,
 * cost about as much main-thread CPU as the read it carried; perf of 4k random reads of a sealed clone).
 * The queue is bounded by the slab: every task holds at least one slab slot (slab.ts) from before it
 * is submitted until it is answered, so at most slabSlots tasks exist at once.
 * A thread that dies (it should not: the task functions catch their own failures) fails the task it
 * held and is replaced; close() fails what is queued and ends every thread.
 */
import os from 'node:os'
import path from 'node:path'
import { Worker } from 'node:worker_threads'
import * as zstd from 'zstd-napi/binding'
import { OpenResult, OpenTask, SealResult, SealTask, WorkerConfig, WorkerReply, WorkerRequest, slotBytes } from '../../workers/protocol'
import { seal as sealInline } from '../../workers/seal'
import { open as openInline } from '../../workers/open'
import { SlotAllocator } from './slab'
import { chunkHeaderBytes } from './pack-format'
import { slabSlots } from '../limits'

// The compiled thread module (dist/workers/thread.js), beside this file's dist/src/chunk.
const threadModule = path.resolve(__dirname, '..', '..', 'workers', 'thread.js')

export interface WorkerPoolOptions { blockBytes: number, zstdLevel: number, threads?: number }

interface Task { request: WorkerRequest, resolve: (result: SealResult | OpenResult) => void, reject: (err: Error) => void }
interface Thread { worker: Worker, task: Task | null, answered: boolean }

/** Threads in a row that may die before answering anything (they cannot start) before the pool gives up. */
const failedStartsMax = 3

export class WorkerPool {
  readonly config: WorkerConfig
  readonly slab: Buffer
  readonly slots: SlotAllocator
  readonly threads: number
  private readonly running: Thread[] = []
  private readonly queue: Task[] = []
  private nextTaskId = 0
  private closed = false
  private failedStarts = 0
  /** Why the pool stopped replacing threads that could not start; every task fails with it. */
  private broken: Error | null = null

  constructor (options: WorkerPoolOptions) {
    const regionBytes = Math.ceil((zstd.compressBound(options.blockBytes) + chunkHeaderBytes) / 64) * 64
    const config: WorkerConfig = { slab: new SharedArrayBuffer(0), blockBytes: options.blockBytes, regionBytes, zstdLevel: options.zstdLevel }
    config.slab = new SharedArrayBuffer(slabSlots * slotBytes(config))
    this.config = config
    this.slab = Buffer.from(config.slab)
    this.slots = new SlotAllocator(slabSlots)
    this.threads = options.threads ?? Number(process.env.VDISKFS_WORKERS ?? os.availableParallelism())
    for (let i = 0; i < this.threads; i++) this.running.push(this.startThread())
  }

  async seal (task: SealTask): Promise<SealResult> {
    if (this.threads === 0) return sealInline(task, this.config)
    return await this.run({ id: this.nextTaskId++, kind: 'seal', task }) as SealResult
  }

  async open (task: OpenTask): Promise<OpenResult> {
    if (this.threads === 0) return openInline(task, this.config)
    return await this.run({ id: this.nextTaskId++, kind: 'open', task }) as OpenResult
  }

  async close (): Promise<void> {
    this.closed = true
    for (const task of this.queue.splice(0)) task.reject(new Error('the worker pool is closed'))
    await Promise.all(this.running.map(async thread => await thread.worker.terminate()))
  }

  private async run (request: WorkerRequest): Promise<SealResult | OpenResult> {
    if (this.closed) throw new Error('the worker pool is closed')
    if (this.broken !== null) throw this.broken
    return await new Promise((resolve, reject) => {
      this.queue.push({ request, resolve, reject })
      this.dispatch()
    })
  }

  /** Hands queued tasks to idle threads, oldest first. */
  private dispatch (): void {
    for (const thread of this.running) {
      if (this.queue.length === 0) return
      if (thread.task !== null) continue
      const task = this.queue.shift() as Task
      thread.task = task
      // A thread with a task keeps the process alive (as a pending I/O would); an idle one does not.
      thread.worker.ref()
      thread.worker.postMessage(task.request)
    }
  }

  private startThread (): Thread {
    const thread: Thread = { worker: new Worker(threadModule, { workerData: this.config }), task: null, answered: false }
    thread.worker.unref()
    thread.worker.on('message', (reply: WorkerReply) => {
      const task = thread.task
      if (task === null || task.request.id !== reply.id) return // not ours: cannot happen, one task at a time
      thread.task = null
      thread.answered = true
      thread.worker.unref()
      if (reply.error !== undefined || reply.result === undefined) task.reject(new Error(`worker: ${reply.error ?? 'no result'}`))
      else task.resolve(reply.result)
      this.dispatch()
    })
    // 'error' (an uncaught exception) is followed by 'exit'; whichever comes first retires the thread.
    thread.worker.on('error', err => this.retire(thread, err))
    thread.worker.on('exit', code => this.retire(thread, new Error(`worker thread exited (status ${code})`)))
    return thread
  }

  private retire (thread: Thread, why: Error): void {
    const at = this.running.indexOf(thread)
    if (at < 0) return
    const task = thread.task
    thread.task = null
    task?.reject(this.closed ? new Error('the worker pool is closed') : why)
    if (this.closed) return
    // A thread that never answered may be one that cannot start (its module fails to load): replacing
    // it forever would spin. After a few in a row the pool gives up and fails every task instead.
    this.failedStarts = thread.answered ? 0 : this.failedStarts + 1
    if (this.failedStarts >= failedStartsMax) {
      this.running.splice(at, 1)
      this.broken = new Error(`worker threads cannot start: ${why.message}`)
      if (this.running.length === 0) for (const queued of this.queue.splice(0)) queued.reject(this.broken)
      this.dispatch()
      return
    }
    this.running[at] = this.startThread()
    this.dispatch()
  }
}

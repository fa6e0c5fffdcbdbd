/**
 * A worker thread of the pool (src/chunk/worker-pool.ts): runs seal and open tasks one at a time, as
 * they arrive on its port, and answers each with `{ id, result }`, or `{ id, error }` when the task
 * threw (the task functions report their own failures in their results; a throw is a programmer error
 * and fails only that task). The slab and the rest of the configuration arrive once, as workerData.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { seal } from './seal'
import { open } from './open'
import { WorkerConfig, WorkerReply, WorkerRequest } from './protocol'

const config = workerData as WorkerConfig
const port = parentPort
if (port === null) throw new Error('workers/thread.js runs only as a worker thread')

port.on('message', (request: WorkerRequest) => {
  let reply: WorkerReply
  try {
    reply = { id: request.id, result: request.kind === 'seal' ? seal(request.task, config) : open(request.task, config) }
  } catch (err) {
    reply = { id: request.id, error: (err as Error).message }
  }
  port.postMessage(reply)
})

/**
 * The worker pool's hand-off (src/chunk/worker-pool.ts, workers/thread.ts): more tasks than threads all
 * get their answers, a thread that dies fails the task it held (never leaves it hanging) and is
 * replaced, threads that cannot start are not replaced forever (tasks fail instead of hanging), and
 * close() fails what is queued and what is running.
 */
import test from 'ava'
import { WorkerPool } from '../../src/chunk/worker-pool'
import { OpenTask } from '../../workers/protocol'

const empty: OpenTask = { requests: [] }
// A descriptor no process has: the open task reports the failure in its result, per request.
const badRead: OpenTask = { requests: [{ slot: 0, fd: 1_000_000, offset: 0, storedBytes: 16, rawBytes: 16, compressed: false }] }

function threadsOf (pool: WorkerPool): Array<{ worker: { terminate: () => Promise<number> }, task: unknown }> {
  return (pool as unknown as { running: Array<{ worker: { terminate: () => Promise<number> }, task: unknown }> }).running
}

test('more tasks than threads: every one is answered, failures inside a task come back in its result', async t => {
  const pool = new WorkerPool({ blockBytes: 4096, zstdLevel: 3, threads: 2 })
  try {
    const results = await Promise.all(Array.from({ length: 50 }, async (_, i) => await pool.open(i % 2 === 0 ? empty : badRead)))
    t.is(results.length, 50)
    results.forEach((result, i) => {
      if (i % 2 === 0) t.deepEqual(result.blocks, [])
      else t.false(result.blocks[0].ok)
    })
  } finally {
    await pool.close()
  }
})

test('a thread that dies fails the task it held and is replaced', async t => {
  const pool = new WorkerPool({ blockBytes: 4096, zstdLevel: 3, threads: 1 })
  try {
    await pool.open(empty) // the thread is up
    const running = pool.open(empty)
    const thread = threadsOf(pool)[0]
    t.not(thread.task, null, 'the task is on the thread')
    await thread.worker.terminate()
    await t.throwsAsync(running, { message: /exited/ })
    t.not(threadsOf(pool)[0], thread, 'a new thread took its place')
    t.deepEqual((await pool.open(empty)).blocks, [])
  } finally {
    await pool.close()
  }
})

test('close fails queued and running tasks, and later ones', async t => {
  const pool = new WorkerPool({ blockBytes: 4096, zstdLevel: 3, threads: 1 })
  const tasks = Array.from({ length: 5 }, async () => await pool.open(empty))
  await pool.close()
  const settled = await Promise.allSettled(tasks)
  for (const outcome of settled) {
    // The first may have been answered before close; none may hang.
    if (outcome.status === 'rejected') t.regex((outcome.reason as Error).message, /closed/)
  }
  t.true(settled.filter(s => s.status === 'rejected').length >= 4)
  await t.throwsAsync(pool.open(empty), { message: /closed/ })
})

test('threads that die before answering anything are replaced a few times, then tasks fail instead of hanging', async t => {
  const pool = new WorkerPool({ blockBytes: 4096, zstdLevel: 3, threads: 1 })
  try {
    for (let i = 0; i < 3; i++) await threadsOf(pool)[0].worker.terminate()
    t.is(threadsOf(pool).length, 0, 'no thread is started again')
    await t.throwsAsync(pool.open(empty), { message: /cannot start/ })
  } finally {
    await pool.close()
  }
})

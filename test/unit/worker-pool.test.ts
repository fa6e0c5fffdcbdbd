/**
 * The worker pool's hand-off (src/chunk/worker-pool.ts over Piscina): more tasks than threads all get
 * their answers, and a failure inside a task comes back in its result.
 */
import test from 'ava'
import { LeasedOpen, WorkerPool } from '../../src/chunk/worker-pool'

// A descriptor no process has: the open task reports the failure in its result, per request.
const badRead: LeasedOpen = { at: 0, hash: Buffer.alloc(32), fd: 1_000_000, offset: 0, storedBytes: 16, rawBytes: 16, compressed: false }

test('more tasks than threads: every one is answered, failures inside a task come back in its result', async t => {
  const pool = new WorkerPool({ blockBytes: 4096, zstdLevel: 3, threads: 2 })
  try {
    const results = await Promise.all(Array.from({ length: 50 }, async (_, i) => await pool.lease(1, async lease => await lease.open(i % 2 === 0 ? [] : [badRead]))))
    t.is(results.length, 50)
    results.forEach((result, i) => {
      if (i % 2 === 0) t.deepEqual(result.blocks, [])
      else t.false(result.blocks[0].ok)
    })
  } finally {
    await pool.close()
  }
})

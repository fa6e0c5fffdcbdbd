/**
 * A pool in a temporary directory for a test's `work`, with `reopen` (close it and open it again, as a
 * restart after a clean stop would); closed and removed afterwards.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'

export async function withPool (prefix: string, work: (pool: Pool, reopen: () => Promise<Pool>) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  let pool = Pool.open(path.join(dir, 'pool'), { create: true, workers: 1 })
  const reopen = async (): Promise<Pool> => {
    await pool.close()
    // eslint-disable-next-line require-atomic-updates -- the test's own pool: closed above, reopened in sequence
    pool = Pool.open(path.join(dir, 'pool'), { workers: 1 })
    return pool
  }
  try {
    await work(pool, reopen)
  } finally {
    await pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

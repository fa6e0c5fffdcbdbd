/**
 * Measures Piscina's round trip for an empty task on this machine (docs/PERFORMANCE.md): one at a
 * time (the latency a 4k read of a sealed block pays) and many in flight (the throughput cost).
 * Usage: node dist/bench/piscina-overhead.js
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Piscina from 'piscina'

async function main (): Promise<void> {
  const task = path.join(os.tmpdir(), `vdiskfs-empty-task-${process.pid}.js`)
  fs.writeFileSync(task, 'module.exports = (x) => x + 1\n')
  try {
    const pool = new Piscina({ filename: task, minThreads: 2, maxThreads: 2 })
    for (let i = 0; i < 2000; i++) await pool.run(i)
    const n = 20000
    let start = process.hrtime.bigint()
    for (let i = 0; i < n; i++) await pool.run(i)
    const sequential = Number(process.hrtime.bigint() - start) / 1e3 / n
    start = process.hrtime.bigint()
    await Promise.all(Array.from({ length: n }, async (_, i) => await pool.run(i)))
    const parallel = Number(process.hrtime.bigint() - start) / 1e3 / n
    process.stdout.write(`piscina empty task, 2 threads: ${sequential.toFixed(1)} µs one at a time, ${parallel.toFixed(1)} µs each with ${n} in flight\n`)
    await pool.destroy()
  } finally { fs.rmSync(task, { force: true }) }
}

void main()

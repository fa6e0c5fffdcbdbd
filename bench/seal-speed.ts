/**
 * Sealing throughput on its own (the sealing section of bench/run.ts, for before/after comparisons):
 * copies IMAGE into a fresh pool's disk through the engine, then seals it and reports MB/s and the
 * event loop's delay p99 meanwhile.
 * Usage: node dist/bench/seal-speed.js IMAGE [WORKERS=2] [REPS=3] [POOL_DIR=/tmp/vdiskfs-seal-speed]
 */
import fs from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { Pool } from '../src/volume/pool'
import { Sealer } from '../src/seal/sealer'

async function main (): Promise<void> {
  const [image, workersArg, repsArg, dirArg] = process.argv.slice(2)
  if (image === undefined) { process.stderr.write('usage: seal-speed IMAGE [WORKERS] [REPS] [POOL_DIR]\n'); process.exit(2) }
  const workers = Number(workersArg ?? 2)
  const reps = Number(repsArg ?? 3)
  const dir = dirArg ?? '/tmp/vdiskfs-seal-speed'
  const bytes = fs.statSync(image).size
  const source = fs.openSync(image, 'r')
  for (let rep = 0; rep < reps; rep++) {
    fs.rmSync(dir, { recursive: true, force: true })
    const pool = Pool.open(dir, { create: true, workers })
    try {
      const disk = await pool.createDisk('s.img')
      const buffer = Buffer.alloc(4 * 1024 * 1024)
      for (let offset = 0; offset < bytes; offset += buffer.length) {
        const n = fs.readSync(source, buffer, 0, buffer.length, offset)
        await disk.write(buffer.subarray(0, n), offset)
      }
      await pool.commit()
      const histogram = monitorEventLoopDelay({ resolution: 1 })
      histogram.enable()
      const start = process.hrtime.bigint()
      const cpu = process.cpuUsage()
      const report = await new Sealer(pool, () => {}).sealPending(true)
      const seconds = Number(process.hrtime.bigint() - start) / 1e9
      histogram.disable()
      const used = process.cpuUsage(cpu)
      // CPU time of every thread of the process: on a shared machine a steadier figure than MB/s.
      process.stdout.write(`workers ${workers}: ${(report.rawBytes / seconds / 1e6).toFixed(0)} MB/s, loop delay p99 ${(histogram.percentile(99) / 1e6).toFixed(1)} ms, CPU ${((used.user + used.system) / 1e6).toFixed(2)} s, ${report.rawBytes} -> ${report.storedBytes} bytes stored\n`)
    } finally {
      await pool.close()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
  fs.closeSync(source)
}

main().catch(err => { process.stderr.write(`seal-speed: ${(err as Error).message}\n`); process.exit(1) })

/**
 * A lazy pull's import in the engine alone (no S3, no FUSE, no CLI), for measuring the daemon's side of
 * `pull --lazy` without the noise of the rest: `node dist/bench/lazy-import.js`. A new pool of 64 KiB
 * blocks per run (as a pull into a new pool at a second site), a 1 GiB image's lazy import: a head of
 * VDISKFS_BENCH_LAZY_HEAD blocks with bytes (default 53) and VDISKFS_BENCH_LAZY_REFS references (default
 * 15,482, bench/lazy-pull.ts's image), in the batches the daemon makes of them (the head, then one of
 * references), then the finish. Prints per run each step's wall time and the process's CPU (every
 * thread), and the load average. VDISKFS_BENCH_LAZY_IMPORT_RUNS runs (default 5). The pool opens as the
 * daemon opens it (its read threads warmed, warmWorkers), though a run begins as soon as it has.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../src/volume/pool'
import { blake3Hex } from '../src/remote/remote-format'
import { loadAverages } from './remote-common'

const blockBytes = 65536
const headBlocks = Number(process.env.VDISKFS_BENCH_LAZY_HEAD ?? 53)
const refBlocks = Number(process.env.VDISKFS_BENCH_LAZY_REFS ?? 15482)
const runs = Number(process.env.VDISKFS_BENCH_LAZY_IMPORT_RUNS ?? 5)

const cpuMs = (): number => { const u = process.cpuUsage(); return (u.user + u.system) / 1000 }

async function once (run: number): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-lazy-import-'))
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, warmWorkers: true })
  try {
    const head = Array.from({ length: headBlocks }, () => crypto.randomBytes(blockBytes))
    const refs = Array.from({ length: refBlocks }, (_, i) => Buffer.from(blake3Hex(Buffer.from(`block ${run} ${i}`)), 'hex'))
    const uuid = crypto.randomUUID()
    const key = `${uuid}:full`
    const load = loadAverages()
    const steps: string[] = []
    let wall = performance.now()
    let cpu = cpuMs()
    const step = (name: string): void => {
      const w = performance.now(); const c = cpuMs()
      steps.push(`${name} ${(w - wall).toFixed(0)} ms (cpu ${(c - cpu).toFixed(0)})`)
      wall = w; cpu = c
    }
    const started = performance.now()
    const startedCpu = cpuMs()
    const session = pool.imports.begin({ key, uuid, baseUuid: null, size: 1024 * 1024 * 1024, blockBytes, createdMs: Date.now(), source: null, lazy: true }, 'b.img',
      k => pool.lazy.begin({ uuid, importKey: k, remote: 'offsite', manifest: 'ab'.repeat(16), chunks: 0, startedMs: Date.now() }))
    step('begin')
    try {
      await session.store(head.map((data, index) => ({ index, data, hash: Buffer.from(blake3Hex(data), 'hex') })))
      step('head')
      await session.store(refs.map((hash, i) => ({ index: headBlocks + i, data: null, hash })))
      step('references')
      await session.finish()
      step('finish')
    } finally { session.close() }
    pool.lazy.started(uuid)
    console.log(`run ${run}${ab ? (run % 2 === 1 ? ' (rows in memory)' : ' (rows in the catalog)') : ''}: ${(performance.now() - started).toFixed(0)} ms, cpu ${(cpuMs() - startedCpu).toFixed(0)} ms; ${steps.join(', ')}; ${JSON.stringify(session.timing)}; load ${load}`)
  } finally {
    await pool.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

/** VDISKFS_BENCH_LAZY_AB=1: runs alternate between the rows in memory (odd) and in the catalog (even, VDISKFS_LAZY_ROWS_IN_MEMORY=0). */
const ab = process.env.VDISKFS_BENCH_LAZY_AB === '1'

async function main (): Promise<void> {
  for (let run = 1; run <= runs; run++) {
    if (ab) process.env.VDISKFS_LAZY_ROWS_IN_MEMORY = run % 2 === 1 ? '1' : '0'
    await once(run)
  }
}

main().catch(err => { console.error(`bench lazy-import: ${(err as Error).message}`); process.exitCode = 1 })

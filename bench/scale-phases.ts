/**
 * Where a backup's time goes as backups accumulate, on the engine alone (no FUSE, no daemon): a 1 TiB
 * disk at 64 KiB blocks, VDISKFS_PHASES_PAGES (default 4) map pages changed before each backup (one
 * block each), then the backup, the commit, a seal pass of every frozen extent (as the daemon's
 * background sealer does once they are cold), and every VDISKFS_PHASES_GC_EVERY backups a gc. Prints
 * the median of each phase per hundred backups, and at each gc the time of a prune of one backup and
 * of the gc after it; `node --cpu-prof dist/bench/scale-phases.js` shows
 * the functions. VDISKFS_PHASES_BACKUPS (default 2000).
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../src/volume/pool'
import { Sealer } from '../src/seal/sealer'

const backups = Number(process.env.VDISKFS_PHASES_BACKUPS ?? 2000)
const pagesPer = Number(process.env.VDISKFS_PHASES_PAGES ?? 4)
const gcEvery = Number(process.env.VDISKFS_PHASES_GC_EVERY ?? 500)
const blockBytes = 64 * 1024
const diskBytes = 1024 ** 4
const pageBlocks = 4096

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

async function timed (work: () => Promise<unknown>): Promise<number> {
  const started = process.hrtime.bigint()
  await work()
  return Number(process.hrtime.bigint() - started) / 1e6
}

async function main (): Promise<void> {
  const dir = fs.mkdtempSync(path.join(process.env.VDISKFS_BENCH_DIR ?? os.tmpdir(), 'vdiskfs-phases-'))
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes })
  try {
    const disk = await pool.createDisk('big.img')
    await disk.truncate(diskBytes)
    const sealer = new Sealer(pool, () => {})
    let random = 0x2545f491
    const next = (): number => { random ^= random << 13; random ^= random >>> 17; random ^= random << 5; return (random >>> 0) / 2 ** 32 }
    const rows: Record<string, number[]> = { backup: [], commit: [], seal: [], write: [] }
    const block = Buffer.alloc(blockBytes)
    process.stdout.write(`load ${os.loadavg().map(n => n.toFixed(2)).join(' ')}\n`)
    process.stdout.write('backups | write ms | backup ms | commit ms | seal ms (medians)\n')
    for (let i = 0; i < backups; i++) {
      rows.write.push(await timed(async () => {
        for (let w = 0; w < pagesPer; w++) {
          block.fill(0); block.write(`phases ${i} ${w} ${next()}`)
          const page = Math.floor(next() * (diskBytes / blockBytes / pageBlocks))
          await disk.write(block, (page * pageBlocks + Math.floor(next() * pageBlocks)) * blockBytes)
        }
      }))
      rows.backup.push(await timed(async () => await pool.backup(disk, `b${i}.img`)))
      rows.commit.push(await timed(async () => await pool.commit()))
      rows.seal.push(await timed(async () => await sealer.sealPending(true)))
      if ((i + 1) % 100 === 0) {
        const last = (name: string): string => median(rows[name].slice(-100)).toFixed(2)
        process.stdout.write(`${i + 1} | ${last('write')} | ${last('backup')} | ${last('commit')} | ${last('seal')}\n`)
      }
      if ((i + 1) % gcEvery === 0) {
        // A gc, then a prune of one backup (the oldest left) and the gc that frees it: how they grow with N.
        let report = await pool.gc()
        const gcMs = await timed(async () => { report = await pool.gc() })
        const again = report
        const oldest = pool.list().filter(v => v.kind === 'backup').sort((a, b) => a.id - b.id)[0]
        const removeMs = await timed(async () => await pool.remove(oldest))
        const freedMs = await timed(async () => { report = await pool.gc() })
        const phases = (r: typeof report): string => r.phaseMs === undefined ? '' : ` [mark ${r.phaseMs.mark.toFixed(0)}, sweep ${r.phaseMs.sweep.toFixed(0)}, compact ${r.phaseMs.compact.toFixed(0)}]`
        process.stdout.write(`at ${i + 1} backups: gc ${gcMs.toFixed(0)} ms${phases(again)}; remove of 1 backup ${removeMs.toFixed(1)} ms, the gc after it ${freedMs.toFixed(0)} ms${phases(report)} ` +
          `(${report.pagesFreed} pages, ${report.extentsFreed} extents, ${report.chunksFreed} chunks freed); load ${os.loadavg()[0].toFixed(2)}\n`)
      }
    }
  } finally {
    await pool.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => { process.stderr.write(`${(err as Error).stack ?? String(err)}\n`); process.exitCode = 1 })

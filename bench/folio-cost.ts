/**
 * What a file's page-cache folio size costs on the pool's filesystem (docs/PERFORMANCE.md, "Folios"):
 * writes 512 MiB to a new file in pwrites of PIECE bytes (then fdatasync), then 4 KiB random overwrites
 * over it, and reports MB/s and the CPU time per MiB written and per overwrite. ext4 makes folios as
 * large as the write that creates them, and a later small write into a large folio walks all of it.
 * Usage: node dist/bench/folio-cost.js [DIR=/tmp] [PIECES=1048576,65536,16384]
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'

const fileBytes = 512 * 1024 * 1024
const overwrites = 30000

function cpuSeconds (): number { const u = process.cpuUsage(); return (u.user + u.system) / 1e6 }

function run (dir: string, piece: number): string {
  const file = path.join(dir, `folio-cost-${process.pid}.dat`)
  const fd = fs.openSync(file, 'w+', 0o600)
  try {
    const data = crypto.randomBytes(1024 * 1024)
    const start = process.hrtime.bigint()
    const cpu = cpuSeconds()
    for (let offset = 0; offset < fileBytes; offset += data.length) {
      for (let at = 0; at < data.length; at += piece) fs.writeSync(fd, data, at, Math.min(piece, data.length - at), offset + at)
    }
    const writeCpu = cpuSeconds() - cpu
    fs.fdatasyncSync(fd)
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    const small = crypto.randomBytes(4096)
    const cpu2 = cpuSeconds()
    for (let i = 0; i < overwrites; i++) fs.writeSync(fd, small, 0, small.length, crypto.randomInt(fileBytes / 4096) * 4096)
    const overwriteCpu = cpuSeconds() - cpu2
    return `pieces of ${piece / 1024} KiB: ${(fileBytes / seconds / 1e6).toFixed(0)} MB/s with fdatasync, ${(writeCpu / (fileBytes / 1048576) * 1e6).toFixed(0)} us CPU per MiB; 4 KiB overwrite ${(overwriteCpu / overwrites * 1e6).toFixed(2)} us CPU`
  } finally {
    fs.closeSync(fd)
    fs.rmSync(file, { force: true })
  }
}

const dir = process.argv[2] ?? '/tmp'
const pieces = (process.argv[3] ?? '1048576,65536,16384').split(',').map(Number)
for (const piece of pieces) process.stdout.write(run(dir, piece) + '\n')

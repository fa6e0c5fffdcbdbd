/**
 * The measurements the small benchmarks share (basic.ts): dropping the page cache, dd's
 * throughput, fio's 4k IOPS.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'

export function dropCaches (): void {
  execFileSync('sync')
  try { fs.writeFileSync('/proc/sys/vm/drop_caches', '3') } catch {}
}

/** dd with 1 MiB blocks and `args` (if=, of=, count=, flags); returns MB/s as dd reports it. */
export function ddMBps (args: string[]): number {
  const out = spawnSync('dd', [...args, 'bs=1M', 'status=progress'], { encoding: 'utf8' })
  if (out.status !== 0) throw new Error(`dd ${args.join(' ')}: ${out.stderr}`)
  const match = /(\d+) bytes .* copied, ([\d.]+) s/.exec(out.stderr)
  if (match === null) throw new Error(`cannot parse dd output: ${out.stderr}`)
  return Number(match[1]) / Number(match[2]) / 1e6
}

/** fio 4k random I/O over the first `sizeBytes` of `file` for `seconds` (psync, depth 1 unless `extra` says otherwise). */
export function fioIops (file: string, rw: 'randread' | 'randwrite', sizeBytes: number, seconds: number, extra: string[] = []): number {
  const out = execFileSync('fio', ['--name=bench', `--filename=${file}`, `--rw=${rw}`, '--bs=4k', '--ioengine=psync', '--iodepth=1',
    `--size=${sizeBytes}`, `--runtime=${seconds}`, '--time_based', '--output-format=json', ...extra], { encoding: 'utf8' })
  const job = (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<{ read: { iops: number }, write: { iops: number } }> }).jobs[0]
  return rw === 'randread' ? job.read.iops : job.write.iops
}

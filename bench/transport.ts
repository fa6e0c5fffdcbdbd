/**
 * fuse-native against our FUSE 3 transport (issue #18), in one run, alternating: for each round and
 * each transport a fresh pool is mounted, then dd writes 1 GiB of random data sequentially (bs=1M,
 * conv=fsync), and fio runs 4k randwrite and then 4k randread (psync, iodepth 1, 10 s each, page cache
 * dropped before the read) on a fresh 1 GiB disk, plus 4k randread with O_DIRECT at iodepth 16
 * (libaio), where async DIO lets the kernel send requests in parallel. Prints a Markdown table of
 * medians (min-max) over the rounds.
 *
 *   node dist/bench/transport.js [--rounds N] [--seconds S]      (root; needs fio and the built addon)
 */
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ddMBps, dropCaches, fioIops } from './measure'

const repoRoot = path.resolve(__dirname, '..', '..')
const cli = path.join(repoRoot, 'bin', 'vdiskfs')
const argv = process.argv.slice(2)
const option = (name: string, fallback: number): number => { const at = argv.indexOf(name); return at >= 0 ? Number(argv[at + 1]) : fallback }
const rounds = option('--rounds', 2)
const seconds = option('--seconds', 10)
const transports = ['fuse-native', 'fuse3']
const workRoot = fs.mkdtempSync(path.join(process.env.VDISKFS_BENCH_DIR ?? os.tmpdir(), 'vdiskfs-transport-'))
const fileBytes = 1024 ** 3

function measure (transport: string, round: number): Record<string, number> {
  const pool = path.join(workRoot, `pool-${transport}-${round}`)
  const mnt = path.join(workRoot, `mnt-${transport}-${round}`)
  fs.mkdirSync(mnt, { recursive: true })
  execFileSync(cli, ['mount', pool, mnt, '--transport', transport], { stdio: 'inherit' })
  try {
    const result: Record<string, number> = {}
    result.seqWrite = ddMBps([`if=${path.join(workRoot, 'random.bin')}`, `of=${path.join(mnt, 'disks', 'seq.img')}`, 'conv=fsync'])
    const disk = path.join(mnt, 'disks', 'fio.img')
    result.randWrite = fioIops(disk, 'randwrite', fileBytes, seconds)
    dropCaches()
    result.randRead = fioIops(disk, 'randread', fileBytes, seconds)
    dropCaches()
    result.randReadDirect16 = fioIops(disk, 'randread', fileBytes, seconds, ['--direct=1', '--ioengine=libaio', '--iodepth=16'])
    return result
  } finally {
    execFileSync(cli, ['umount', mnt], { stdio: 'inherit' })
    fs.rmSync(pool, { recursive: true, force: true })
  }
}

function main (): void {
  execFileSync('dd', ['if=/dev/urandom', `of=${path.join(workRoot, 'random.bin')}`, 'bs=1M', `count=${fileBytes / 1024 / 1024}`, 'status=none'])
  const runs: Record<string, Array<Record<string, number>>> = Object.fromEntries(transports.map(t => [t, []]))
  try {
    for (let round = 0; round < rounds; round++) {
      // Alternate which goes first, so that neither always gets the quieter half of a round.
      for (const transport of round % 2 === 0 ? transports : [...transports].reverse()) {
        const result = measure(transport, round)
        process.stderr.write(`round ${round + 1} ${transport}: ${JSON.stringify(result)}\n`)
        runs[transport].push(result)
      }
    }
  } finally {
    fs.rmSync(workRoot, { recursive: true, force: true })
  }
  const rows: Array<[string, string, string]> = [
    ['seqWrite', 'dd 1 GiB seq write, bs=1M, conv=fsync', 'MB/s'],
    ['randWrite', `fio 4k randwrite, psync, iodepth 1, ${seconds} s`, 'IOPS'],
    ['randRead', `fio 4k randread, psync, iodepth 1, ${seconds} s, cold`, 'IOPS'],
    ['randReadDirect16', `fio 4k randread, O_DIRECT, libaio iodepth 16, ${seconds} s`, 'IOPS']
  ]
  const cell = (values: number[]): string => {
    const sorted = [...values].sort((a, b) => a - b)
    const median = sorted[Math.floor(sorted.length / 2)]
    return `${median.toFixed(0)} (${sorted[0].toFixed(0)}-${sorted[sorted.length - 1].toFixed(0)})`
  }
  console.log(`| measure | unit | ${transports.join(' | ')} | fuse3 / fuse-native |`)
  console.log(`|---|---|${transports.map(() => '---|').join('')}---|`)
  for (const [key, label, unit] of rows) {
    const medians = transports.map(t => { const s = runs[t].map(r => r[key]).sort((a, b) => a - b); return s[Math.floor(s.length / 2)] })
    console.log(`| ${label} | ${unit} | ${transports.map(t => cell(runs[t].map(r => r[key]))).join(' | ')} | ${(medians[1] / medians[0]).toFixed(2)}x |`)
  }
  console.log(`\n${rounds} rounds, median (min-max); ${new Date().toISOString()}, ${os.cpus().length} cores, load average ${os.loadavg().map(l => l.toFixed(1)).join(' ')}`)
}

main()

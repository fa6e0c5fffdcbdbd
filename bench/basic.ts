/**
 * make bench-basic: dd 1 GiB sequential write and read (bs=1M) and fio 4k random read and write
 * (psync, iodepth 1), through a vdiskfs mount and, in the same run, on a plain file on the same
 * filesystem; plus sequential write with libfuse's default 4 KiB writes (no big_writes) to show what
 * the mount options buy. Each figure is the median of VDISKFS_BENCH_REPS (default 3) runs, with min
 * and max. Writes bench/results/basic-latest.json and .md.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ddMBps, dropCaches, fioIops } from './measure'

const repoRoot = path.resolve(__dirname, '..', '..')
const cli = path.join(repoRoot, 'bin', 'vdiskfs')
const reps = Number(process.env.VDISKFS_BENCH_REPS ?? 3)
const workRoot = process.env.VDISKFS_BENCH_DIR ?? path.join(repoRoot, 'bench', 'work')
const fileBytes = 1024 ** 3

interface Figure { median: number, min: number, max: number, unit: string, runs: number[] }

function figure (runs: number[], unit: string): Figure {
  const sorted = [...runs].sort((a, b) => a - b)
  return { median: sorted[Math.floor(sorted.length / 2)], min: sorted[0], max: sorted[sorted.length - 1], unit, runs }
}

function mount (pool: string, mnt: string, env: NodeJS.ProcessEnv = {}): void {
  fs.mkdirSync(mnt, { recursive: true })
  execFileSync(cli, ['mount', pool, mnt], { env: { ...process.env, ...env }, stdio: 'inherit' })
}

function umount (mnt: string): void {
  execFileSync(cli, ['umount', mnt], { stdio: 'inherit' })
}

function measureTarget (file: string): Record<string, number> {
  const result: Record<string, number> = {}
  fs.rmSync(file, { force: true })
  // Random data: zeros would become holes in vdiskfs and measure nothing.
  result.seqWrite = ddMBps([`if=${path.join(workRoot, 'random.bin')}`, `of=${file}`, 'conv=fsync'])
  dropCaches()
  result.seqRead = ddMBps([`if=${file}`, 'of=/dev/null'])
  result.randRead = fioIops(file, 'randread', fileBytes, 8)
  result.randWrite = fioIops(file, 'randwrite', fileBytes, 8)
  return result
}

function main (): void {
  fs.rmSync(workRoot, { recursive: true, force: true })
  fs.mkdirSync(workRoot, { recursive: true })
  execFileSync('dd', ['if=/dev/urandom', `of=${path.join(workRoot, 'random.bin')}`, 'bs=1M', `count=${fileBytes / 1024 ** 2}`, 'status=none'])
  const pool = path.join(workRoot, 'pool')
  const mnt = path.join(workRoot, 'mnt')
  const plain = path.join(workRoot, 'plain.img')
  const vd: Array<Record<string, number>> = []
  const pl: Array<Record<string, number>> = []
  const small: number[] = []
  try {
    for (let rep = 0; rep < reps; rep++) {
      mount(pool, mnt)
      try {
        vd.push(measureTarget(path.join(mnt, 'disks', `bench${rep}.img`)))
        fs.rmSync(path.join(mnt, 'disks', `bench${rep}.img`))
      } finally { umount(mnt) }
      pl.push(measureTarget(plain))
      fs.rmSync(plain)
      mount(pool, mnt, { VDISKFS_NO_BIG_WRITES: '1' })
      try {
        small.push(ddMBps([`if=${path.join(workRoot, 'random.bin')}`, `of=${path.join(mnt, 'disks', 'small.img')}`, 'conv=fsync', 'count=256']))
        fs.rmSync(path.join(mnt, 'disks', 'small.img'))
      } finally { umount(mnt) }
      process.stderr.write(`rep ${rep + 1}/${reps} done\n`)
    }
  } finally {
    spawnSync('fusermount3', ['-uz', mnt])
  }
  const keys: Array<[string, string, string]> = [['seqWrite', 'MB/s', 'dd 1 GiB sequential write, bs=1M, conv=fsync'], ['seqRead', 'MB/s', 'dd 1 GiB sequential read, bs=1M, caches dropped'],
    ['randRead', 'IOPS', 'fio 4k randread, psync, iodepth 1'], ['randWrite', 'IOPS', 'fio 4k randwrite, psync, iodepth 1']]
  const bars: Record<string, number> = { seqWrite: 400, seqRead: 800, randRead: 6000, randWrite: 6000 }
  const results = {
    date: new Date().toISOString(),
    machine: `${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ${(os.totalmem() / 1024 ** 3).toFixed(0)} GiB, ${os.release()}`,
    reps,
    vdiskfs: Object.fromEntries(keys.map(([k, unit]) => [k, figure(vd.map(r => r[k]), unit)])),
    plainFile: Object.fromEntries(keys.map(([k, unit]) => [k, figure(pl.map(r => r[k]), unit)])),
    seqWriteWithout4kFix: figure(small, 'MB/s')
  }
  const rows = keys.map(([k, unit, what]) => {
    const v = results.vdiskfs[k]
    const p = results.plainFile[k]
    return `| ${what} | ${v.median.toFixed(0)} (${v.min.toFixed(0)}–${v.max.toFixed(0)}) ${unit} | ${p.median.toFixed(0)} ${unit} | ${(v.median / p.median).toFixed(2)} | ≥ ${bars[k]}: ${v.median >= bars[k] ? 'met' : 'missed'} |`
  })
  const md = [
    `# make bench-basic, ${results.date}`, '', `Machine: ${results.machine}. Median of ${reps} runs (min–max).`, '',
    '| workload | vdiskfs | plain file, same filesystem | ratio | bar |', '|---|---|---|---|---|', ...rows, '',
    `Sequential write (256 MiB) without big_writes/max_write (libfuse's default 4 KiB writes): ${results.seqWriteWithout4kFix.median.toFixed(0)} MB/s ` +
    `(${results.seqWriteWithout4kFix.min.toFixed(0)}–${results.seqWriteWithout4kFix.max.toFixed(0)}), against ${results.vdiskfs.seqWrite.median.toFixed(0)} MB/s with them.`, ''
  ].join('\n')
  fs.mkdirSync(path.join(repoRoot, 'bench', 'results'), { recursive: true })
  fs.writeFileSync(path.join(repoRoot, 'bench', 'results', 'basic-latest.json'), JSON.stringify(results, null, 2) + '\n')
  fs.writeFileSync(path.join(repoRoot, 'bench', 'results', 'basic-latest.md'), md)
  process.stdout.write(md)
  fs.rmSync(workRoot, { recursive: true, force: true })
}

main()

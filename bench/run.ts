/**
 * make bench (and make bench-quick with --quick): vdiskfs against its baselines, side by side in one
 * run, reported as ratios (issue #6). Targets:
 *   A  a vdiskfs disk, fresh writes (delta extents)
 *   B  the same data after `vdiskfs sync` (sealed: compressed, deduplicated, verified on read)
 *   P  a plain file on the same filesystem (the physical reference; called C before issue #10)
 *   D  bench/memfs: a minimal in-memory filesystem on our FUSE 3 addon with vdiskfs's mount options (the ceiling)
 *   E  qemu-storage-daemon exporting a qcow2 image over FUSE (the C peer); E2 the same with extended_l2=on
 *   C  issue #10: a clone of a sealed backup of a 1 GiB image holding a tar of /usr, cold cache, against
 *      CD (memfs holding the same bytes), CE (qsd, a qcow2 overlay over a zstd-compressed qcow2 base) and
 *      CE2 (the same with the overlay made with extended_l2=on); every write run on a fresh clone/overlay
 * Every figure is the median of `reps` repetitions, with min and max. Writes bench/results/latest.json,
 * latest.md and latest.svg.
 */
import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { Pool } from '../src/volume/pool'
import { Sealer } from '../src/seal/sealer'

const quick = process.argv.includes('--quick')
const repoRoot = path.resolve(__dirname, '..', '..')
const cli = path.join(repoRoot, 'bin', 'vdiskfs')
const work = process.env.VDISKFS_BENCH_DIR ?? path.join(repoRoot, 'bench', 'work')
const reps = Number(process.env.VDISKFS_BENCH_REPS ?? (quick ? 1 : 3))
const fioSeconds = quick ? 2 : 5
const MiB = 1024 * 1024
const GiB = 1024 * MiB
const fileBytes = quick ? 256 * MiB : GiB
const cloneImageBytes = (): number => quick ? 256 * MiB : GiB
const log = (message: string): void => { process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`) }

interface Figure { median: number, min: number, max: number, runs: number[] }
const samples = new Map<string, number[]>()
function record (key: string, value: number): void {
  log(`${key} ${value.toFixed(2)}`) // in the log too: a run that fails later keeps its figures
  const list = samples.get(key) ?? []
  list.push(value)
  samples.set(key, list)
}
function figure (key: string): Figure | null {
  const runs = samples.get(key)
  if (runs === undefined || runs.length === 0) return null
  const sorted = [...runs].sort((a, b) => a - b)
  return { median: sorted[Math.floor((sorted.length - 1) / 2)], min: sorted[0], max: sorted[sorted.length - 1], runs }
}

function sh (command: string, args: string[], options: { input?: string, env?: NodeJS.ProcessEnv } = {}): string {
  return execFileSync(command, args, { encoding: 'utf8', maxBuffer: 64 * MiB, ...options })
}

function dropCaches (): void {
  sh('sync', [])
  try { fs.writeFileSync('/proc/sys/vm/drop_caches', '3') } catch {}
}

function dd (args: string[]): number {
  const out = spawnSync('dd', [...args, 'bs=1M', 'status=none', 'iflag=fullblock'], { encoding: 'utf8' })
  if (out.status !== 0) throw new Error(`dd ${args.join(' ')}: ${out.stderr}`)
  return 0
}

function timed (work: () => void): number {
  const start = process.hrtime.bigint()
  work()
  return Number(process.hrtime.bigint() - start) / 1e9
}

function seqWrite (file: string, source: string): number {
  return fileBytes / timed(() => dd([`if=${source}`, `of=${file}`, `count=${fileBytes / MiB}`, 'conv=fsync,notrunc'])) / 1e6
}

function seqRead (file: string, bytes = fileBytes): number {
  dropCaches()
  return bytes / timed(() => dd([`if=${file}`, 'of=/dev/null', `count=${bytes / MiB}`])) / 1e6
}

/** fio on an existing file; returns IOPS (4k) or MB/s (128k). */
function fio (file: string, rw: string, bs: string, jobs: number, bytes = fileBytes, seconds = fioSeconds): number {
  const out = sh('fio', ['--name=bench', `--filename=${file}`, `--rw=${rw}`, `--bs=${bs}`, '--ioengine=psync', '--iodepth=1',
    `--numjobs=${jobs}`, '--group_reporting', `--size=${bytes}`, `--runtime=${seconds}`, '--time_based', '--output-format=json'])
  const job = (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<Record<'read' | 'write', { iops: number, bw_bytes: number }>> }).jobs[0]
  const side = rw.includes('read') ? job.read : job.write
  return bs === '4k' ? side.iops : side.bw_bytes / 1e6
}

const workloads: Array<{ key: string, what: string, unit: string, run: (file: string) => number, writes: boolean }> = [
  { key: 'seqRead', what: 'dd sequential read, bs=1M, caches dropped', unit: 'MB/s', run: seqRead, writes: false },
  { key: 'randRead4k', what: 'fio 4k randread, psync, 1 job', unit: 'IOPS', run: f => fio(f, 'randread', '4k', 1), writes: false },
  { key: 'randRead4kJobs4', what: 'fio 4k randread, psync, 4 jobs', unit: 'IOPS', run: f => fio(f, 'randread', '4k', 4), writes: false },
  { key: 'seqRead128k', what: 'fio 128k sequential read', unit: 'MB/s', run: f => fio(f, 'read', '128k', 1), writes: false },
  { key: 'randWrite4k', what: 'fio 4k randwrite, psync, 1 job', unit: 'IOPS', run: f => fio(f, 'randwrite', '4k', 1), writes: true },
  { key: 'randWrite4kJobs4', what: 'fio 4k randwrite, psync, 4 jobs', unit: 'IOPS', run: f => fio(f, 'randwrite', '4k', 4), writes: true },
  { key: 'seqWrite128k', what: 'fio 128k sequential write', unit: 'MB/s', run: f => fio(f, 'write', '128k', 1), writes: true }
]

// ---- targets ----

/** The fast path's counters (issue #20) and the READs the kernel sent, from `vdiskfs status --json`. */
function fastCounters (mnt: string): { served: number, reads: number, written: number, writes: number } {
  const out = spawnSync(cli, ['status', mnt, '--json'], { encoding: 'utf8' })
  if (out.status !== 0) return { served: 0, reads: 0, written: 0, writes: 0 }
  const f = (JSON.parse(out.stdout) as { daemon: { fuse3: { fastServed?: number, readSizes?: number[], fastWritten?: number, writeSizes?: number[] } } }).daemon.fuse3
  const sum = (list: number[] | undefined): number => (list ?? []).reduce((a, b) => a + b, 0)
  return { served: f.fastServed ?? 0, reads: sum(f.readSizes), written: f.fastWritten ?? 0, writes: sum(f.writeSizes) }
}

/** The share of WRITEs (percent) the addon overwrote itself between two samples. */
function fastWriteShare (before: { written: number, writes: number }, after: { written: number, writes: number }): number {
  const writes = after.writes - before.writes
  return writes > 0 ? 100 * (after.written - before.written) / writes : 0
}

/** The share of READs (percent) the addon answered itself between two samples. */
function fastShare (before: { served: number, reads: number }, after: { served: number, reads: number }): number {
  const reads = after.reads - before.reads
  return reads > 0 ? 100 * (after.served - before.served) / reads : 0
}

function vdiskfsMount (pool: string, mnt: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}): number {
  fs.mkdirSync(mnt, { recursive: true })
  sh(cli, ['mount', pool, mnt, ...extra], { env: { ...process.env, ...env } })
  return Number(fs.readFileSync(path.join(pool, 'daemon.pid'), 'utf8'))
}

function vdiskfsUmount (mnt: string): void {
  spawnSync(cli, ['umount', mnt])
  spawnSync('fusermount3', ['-uz', mnt])
}

function peakRssMiB (pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024
}

async function waitFor (check: () => boolean, what: string, timeoutMs = 20000): Promise<void> {
  for (let waited = 0; waited < timeoutMs; waited += 50) {
    if (check()) return
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  throw new Error(`timed out waiting for ${what}`)
}

async function startMemfs (mnt: string, bytes = fileBytes): Promise<ChildProcess> {
  fs.mkdirSync(mnt, { recursive: true })
  const child = spawn(process.execPath, [path.join(__dirname, 'memfs.js'), mnt, String(bytes)], { stdio: ['ignore', 'pipe', 'inherit'] })
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', chunk => { if (String(chunk).includes('ready')) resolve() })
    child.on('exit', code => reject(new Error(`memfs exited with ${String(code)}`)))
  })
  return child
}

async function stopChild (child: ChildProcess, mnt: string): Promise<void> {
  child.kill('SIGTERM')
  await new Promise(resolve => { if (child.exitCode !== null) resolve(null); else child.on('exit', resolve) })
  spawnSync('fusermount3', ['-uz', mnt])
}

/** qemu-storage-daemon exporting IMAGE (qcow2; a backing file named in its header is opened too). */
async function startQsd (image: string, exportFile: string): Promise<ChildProcess> {
  fs.writeFileSync(exportFile, '')
  const child = spawn('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=file,filename=${image},cache.direct=off`,
    '--blockdev', 'driver=qcow2,node-name=fmt,file=file',
    '--export', `type=fuse,id=exp,node-name=fmt,mountpoint=${exportFile},writable=on`
  ], { stdio: ['ignore', 'ignore', 'inherit'] })
  await waitFor(() => fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${exportFile} `), 'the qemu-storage-daemon export')
  return child
}

// ---- the runs ----

async function throughputTargets (random: string): Promise<void> {
  const pool = path.join(work, 'pool-a')
  const mnt = path.join(work, 'mnt-a')
  const plain = path.join(work, 'plain.img')
  const memMnt = path.join(work, 'mnt-d')
  const qcow = path.join(work, 'e.qcow2')
  const exportFile = path.join(work, 'e.export')
  for (let rep = 0; rep < reps; rep++) {
    log(`throughput, repetition ${rep + 1}/${reps}`)
    // P: a plain file.
    fs.rmSync(plain, { force: true })
    record('P.seqWrite', seqWrite(plain, random))
    for (const w of workloads) record(`P.${w.key}`, w.run(plain))
    fs.rmSync(plain, { force: true })
    // D: the in-memory FUSE ceiling.
    const memfs = await startMemfs(memMnt)
    try {
      const file = path.join(memMnt, 'disk.img')
      record('D.seqWrite', seqWrite(file, random))
      for (const w of workloads) record(`D.${w.key}`, w.run(file))
    } finally { await stopChild(memfs, memMnt) }
    // E: qemu-storage-daemon with a qcow2 image; E2: the image made with extended_l2=on.
    for (const [target, options] of [['E', []], ['E2', ['-o', 'extended_l2=on']]] as Array<[string, string[]]>) {
      fs.rmSync(qcow, { force: true })
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', ...options, qcow, String(fileBytes)])
      const qsd = await startQsd(qcow, exportFile)
      try {
        record(`${target}.seqWrite`, seqWrite(exportFile, random))
        for (const w of workloads) record(`${target}.${w.key}`, w.run(exportFile))
      } finally { await stopChild(qsd, exportFile) }
    }
    fs.rmSync(qcow, { force: true })
    // A, then B: vdiskfs, fresh and sealed. A fresh pool each repetition.
    fs.rmSync(pool, { recursive: true, force: true })
    const pid = vdiskfsMount(pool, mnt)
    try {
      const file = path.join(mnt, 'disks', 'a.img')
      record('A.seqWrite', seqWrite(file, random))
      for (const w of workloads) {
        const before = fastCounters(mnt)
        record(`A.${w.key}`, w.run(file))
        if (!w.writes) record(`A.fastShare.${w.key}`, fastShare(before, fastCounters(mnt)))
        else record(`A.fastShare.${w.key}`, fastWriteShare(before, fastCounters(mnt)))
      }
      // The daemon's event loop under 4k random writes (issue #20: p99 under 5 ms): fio for 22 s, then
      // the status report of the last whole 10-s window, which lies inside the run.
      fio(file, 'randwrite', '4k', 1, fileBytes, 22)
      const status = JSON.parse(sh(cli, ['status', mnt, '--json'])) as { eventLoopDelay: { p99Ms: number, maxMs: number } }
      record('A.loopP99.randWrite4k', status.eventLoopDelay.p99Ms)
      record('A.loopMax.randWrite4k', status.eventLoopDelay.maxMs)
      sh(cli, ['sync', mnt])
      for (const w of workloads.filter(x => !x.writes)) {
        const before = fastCounters(mnt)
        record(`B.${w.key}`, w.run(file))
        record(`B.fastShare.${w.key}`, fastShare(before, fastCounters(mnt)))
      }
      record('rss.throughput', peakRssMiB(pid))
    } finally { vdiskfsUmount(mnt) }
    // A with --xattrs (served xattrs are opt-in since issue #10): what the kernel's security.capability
    // lookup before every write costs.
    fs.rmSync(pool, { recursive: true, force: true })
    vdiskfsMount(pool, mnt, ['--xattrs'])
    try {
      const file = path.join(mnt, 'disks', 'a.img')
      seqWrite(file, random)
      record('Ax.randWrite4k', fio(file, 'randwrite', '4k', 1))
    } finally { vdiskfsUmount(mnt) }
    // A with the fast path off (issue #20): every READ through the engine, as before it.
    fs.rmSync(pool, { recursive: true, force: true })
    vdiskfsMount(pool, mnt, [], { VDISKFS_FAST_READS: '0' })
    try {
      const file = path.join(mnt, 'disks', 'a.img')
      seqWrite(file, random)
      record('Af.randRead4k', fio(file, 'randread', '4k', 1))
      record('Af.randRead4kJobs4', fio(file, 'randread', '4k', 4))
      record('Af.randWrite4k', fio(file, 'randwrite', '4k', 1))
      record('Af.randWrite4kJobs4', fio(file, 'randwrite', '4k', 4))
    } finally { vdiskfsUmount(mnt) }
    // A with every engine write through the libuv thread pool, as before inline writes (issue #10).
    fs.rmSync(pool, { recursive: true, force: true })
    vdiskfsMount(pool, mnt, [], { VDISKFS_INLINE_WRITES: '0' })
    try {
      const file = path.join(mnt, 'disks', 'a.img')
      seqWrite(file, random)
      record('Ap.randWrite4k', fio(file, 'randwrite', '4k', 1))
    } finally { vdiskfsUmount(mnt) }
  }
}

/** Issue #10's workloads on a clone of a sealed backup, in this order; a write run gets a fresh clone or overlay. */
const cloneWorkloads: Array<{ key: string, what: string, unit: string, rw: string, jobs: number }> = [
  { key: 'seqRead', what: 'dd sequential read, bs=1M, caches dropped', unit: 'MB/s', rw: 'dd', jobs: 1 },
  { key: 'randRead4k', what: 'fio 4k randread, psync, 1 job, caches dropped', unit: 'IOPS', rw: 'randread', jobs: 1 },
  { key: 'randRead4kJobs4', what: 'fio 4k randread, psync, 4 jobs, caches dropped', unit: 'IOPS', rw: 'randread', jobs: 4 },
  { key: 'randWrite4k', what: 'fio 4k randwrite, psync, 1 job, fresh clone', unit: 'IOPS', rw: 'randwrite', jobs: 1 },
  { key: 'randWrite4kJobs4', what: 'fio 4k randwrite, psync, 4 jobs, fresh clone', unit: 'IOPS', rw: 'randwrite', jobs: 4 }
]

/** A raw image of `bytes` holding a tar of /usr (cut, or padded with zeros): compressible, like a real disk. */
function makeTarImage (bytes: number): string {
  const image = path.join(work, 'usr-tar.raw')
  spawnSync('bash', ['-c', `tar -cf - /usr 2>/dev/null | head -c ${bytes} > ${image}`])
  sh('truncate', ['-s', String(bytes), image])
  return image
}

/**
 * Scenario C (issue #10): a VM's view of a clone of a sealed backup. vdiskfs: the image copied into a disk,
 * backed up, `vdiskfs sync` (everything sealed into the chunk store), cloned. CE/CE2: qsd exporting a qcow2
 * overlay over a base made with `qemu-img convert -c -o compression_type=zstd` (CE2: overlay with
 * extended_l2=on). CD: memfs holding the image. Page cache dropped before every run.
 */
async function cloneOfSealed (image: string): Promise<void> {
  const bytes = fs.statSync(image).size
  const run = (target: string, w: typeof cloneWorkloads[number], file: string): void => {
    dropCaches()
    const value = w.rw === 'dd' ? seqRead(file, bytes) : fio(file, w.rw, '4k', w.jobs, bytes)
    record(`${target}.${w.key}`, value)

  }
  const base = path.join(work, 'c-base.qcow2')
  fs.rmSync(base, { force: true })
  sh('qemu-img', ['convert', '-q', '-c', '-o', 'compression_type=zstd', '-f', 'raw', '-O', 'qcow2', image, base])
  record('CE.baseBytes', fs.statSync(base).size)
  const pool = path.join(work, 'pool-clone')
  const mnt = path.join(work, 'mnt-clone')
  const memMnt = path.join(work, 'mnt-cd')
  const overlay = path.join(work, 'c-overlay.qcow2')
  const exportFile = path.join(work, 'c.export')
  for (let rep = 0; rep < reps; rep++) {
    log(`clone of a sealed backup, repetition ${rep + 1}/${reps}`)
    // C: vdiskfs.
    fs.rmSync(pool, { recursive: true, force: true })
    vdiskfsMount(pool, mnt)
    try {
      const disk = path.join(mnt, 'disks', 'tar.img')
      dd([`if=${image}`, `of=${disk}`, `count=${bytes / MiB}`, 'conv=fsync'])
      sh(cli, ['backup', disk, 'tar-b'])
      sh(cli, ['sync', mnt])
      const backup = path.join(mnt, 'backups', 'tar-b.img')
      let clones = 0
      const clone = (): string => {
        const name = `tar-c${clones++}`
        sh(cli, ['clone', backup, name])
        return path.join(mnt, 'clones', `${name}.img`)
      }
      const reader = clone()
      for (const w of cloneWorkloads) run('C', w, w.rw === 'randwrite' ? clone() : reader)
      const du = JSON.parse(sh(cli, ['du', mnt, '--json'])) as { storedBytes: number }
      record('C.poolStoredBytes', du.storedBytes)
    } finally { vdiskfsUmount(mnt) }
    fs.rmSync(pool, { recursive: true, force: true })
    // CE, CE2: qsd over the compressed base.
    for (const [target, options] of [['CE', []], ['CE2', ['-o', 'extended_l2=on']]] as Array<[string, string[]]>) {
      const fresh = (): void => {
        fs.rmSync(overlay, { force: true })
        sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', ...options, overlay])
      }
      fresh()
      for (const w of cloneWorkloads) {
        if (w.rw === 'randwrite') fresh()
        const qsd = await startQsd(overlay, exportFile)
        try { run(target, w, exportFile) } finally { await stopChild(qsd, exportFile) }
      }
      fs.rmSync(overlay, { force: true })
    }
    // CD: the in-memory ceiling holding the same bytes.
    const memfs = await startMemfs(memMnt, bytes)
    try {
      const file = path.join(memMnt, 'disk.img')
      dd([`if=${image}`, `of=${file}`, `count=${bytes / MiB}`, 'conv=notrunc'])
      for (const w of cloneWorkloads) run('CD', w, file)
    } finally { await stopChild(memfs, memMnt) }
  }
  fs.rmSync(base, { force: true })
}

/** Backup and clone latency inside the daemon for disks of growing size with data every 64 MiB. */
async function backupLatency (): Promise<void> {
  const pool = path.join(work, 'pool-b')
  const mnt = path.join(work, 'mnt-b')
  fs.rmSync(pool, { recursive: true, force: true })
  const pid = vdiskfsMount(pool, mnt)
  const sizes: Array<[string, number]> = quick ? [['1G', GiB], ['1T', 1024 * GiB]] : [['1G', GiB], ['64G', 64 * GiB], ['1T', 1024 * GiB]]
  try {
    for (const [label, bytes] of sizes) {
      const disk = path.join(mnt, 'disks', `d${label}.img`)
      fs.writeFileSync(disk, '')
      fs.truncateSync(disk, bytes)
      const fd = fs.openSync(disk, 'r+')
      const block = Buffer.alloc(64 * 1024, 0x5a)
      for (let offset = 0; offset < bytes; offset += 64 * MiB) fs.writeSync(fd, block, 0, block.length, offset)
      fs.fsyncSync(fd)
      fs.closeSync(fd)
      for (let i = 0; i < 5; i++) {
        const backup = JSON.parse(sh(cli, ['backup', disk, `b${label}-${i}`, '--json'])) as { elapsedMs: number }
        record(`backup.${label}`, backup.elapsedMs)
        const clone = JSON.parse(sh(cli, ['clone', path.join(mnt, 'backups', `b${label}-${i}.img`), `c${label}-${i}`, '--json'])) as { elapsedMs: number }
        record(`clone.${label}`, clone.elapsedMs)
      }
      log(`backup/clone at ${label}: ${figure(`backup.${label}`)?.median.toFixed(2)} / ${figure(`clone.${label}`)?.median.toFixed(2)} ms`)
    }
    record('rss.1TiB', peakRssMiB(pid))
  } finally { vdiskfsUmount(mnt) }
  // E: a qcow2 overlay (qemu-img create -b) and an internal snapshot, whole processes.
  for (const [label, bytes] of sizes) {
    const base = path.join(work, `base${label}.qcow2`)
    fs.rmSync(base, { force: true })
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(bytes)])
    const commands: string[] = []
    for (let offset = 0; offset < bytes; offset += 64 * MiB) commands.push(`write -q -P 90 ${offset} 64k`)
    sh('qemu-io', ['-f', 'qcow2', base], { input: commands.join('\n') + '\nquit\n' })
    for (let i = 0; i < 5; i++) {
      const overlay = path.join(work, `ov${label}-${i}.qcow2`)
      record(`E.overlay.${label}`, timed(() => sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', overlay])) * 1000)
      record(`E.snapshot.${label}`, timed(() => sh('qemu-img', ['snapshot', '-c', `s${i}`, base])) * 1000)
      fs.rmSync(overlay)
    }
    fs.rmSync(base)
  }
}

/**
 * `cp` of an image inside the mount (copy_file_range: whole blocks shared, docs/TRANSPORT.md), then
 * `sync` of the copy (fsync), against `cp --reflink=never` of the same bytes as a plain file on the bench's
 * own filesystem (P), which copies the data.
 */
async function copyInside (random: string): Promise<void> {
  const pool = path.join(work, 'pool-cp')
  const mnt = path.join(work, 'mnt-cp')
  fs.rmSync(pool, { recursive: true, force: true })
  vdiskfsMount(pool, mnt)
  try {
    const source = path.join(mnt, 'disks', 'src.img')
    dd([`if=${random}`, `of=${source}`, `count=${fileBytes / MiB}`, 'conv=fsync'])
    for (let rep = 0; rep < reps; rep++) {
      const target = path.join(mnt, 'disks', `copy${rep}.img`)
      record('copy.vdiskfs', timed(() => { sh('cp', [source, target]); sh('sync', [target]) }))
    }
    const du = JSON.parse(sh(cli, ['du', mnt, '--json'])) as { storedBytes: number }
    record('copy.vdiskfsStoredBytes', du.storedBytes)
  } finally { vdiskfsUmount(mnt) }
  fs.rmSync(pool, { recursive: true, force: true })
  const plainSource = path.join(work, 'cp-src.raw')
  dd([`if=${random}`, `of=${plainSource}`, `count=${fileBytes / MiB}`, 'conv=fsync'])
  for (let rep = 0; rep < reps; rep++) {
    const target = path.join(work, 'cp-copy.raw')
    record('copy.P', timed(() => { sh('cp', ['--reflink=never', plainSource, target]); sh('sync', [target]) }))
    fs.rmSync(target)
  }
  fs.rmSync(plainSource)
}

/** Sequential read through clones at depth 1, 10 and 50 (vdiskfs), and qcow2 backing chains (E). */
async function depth (random: string): Promise<void> {
  const bytes = quick ? 128 * MiB : 512 * MiB
  const depths = quick ? [1, 10] : [1, 10, 50]
  const maxDepth = depths[depths.length - 1]
  const pool = path.join(work, 'pool-c')
  const mnt = path.join(work, 'mnt-c')
  fs.rmSync(pool, { recursive: true, force: true })
  vdiskfsMount(pool, mnt)
  const readAll = (file: string): number => {
    dropCaches()
    return bytes / timed(() => dd([`if=${file}`, 'of=/dev/null', `count=${bytes / MiB}`])) / 1e6
  }
  const stamp = Buffer.alloc(64 * 1024, 7)
  try {
    let current = path.join(mnt, 'disks', 'root.img')
    dd([`if=${random}`, `of=${current}`, `count=${bytes / MiB}`, 'conv=fsync'])
    const tops = new Map<number, string>()
    for (let level = 1; level <= maxDepth; level++) {
      sh(cli, ['backup', current, `l${level}`])
      sh(cli, ['clone', path.join(mnt, 'backups', `l${level}.img`), `l${level}`])
      current = path.join(mnt, 'clones', `l${level}.img`)
      const fd = fs.openSync(current, 'r+')
      fs.writeSync(fd, stamp, 0, stamp.length, (level * 7 % (bytes / MiB)) * MiB)
      fs.closeSync(fd)
      tops.set(level, current)
    }
    sh(cli, ['sync', mnt])
    for (let rep = 0; rep < reps; rep++) for (const d of depths) record(`depth.${d}`, readAll(tops.get(d) as string))
  } finally { vdiskfsUmount(mnt) }
  // E: qcow2 chains of the same depth.
  const base = path.join(work, 'chain0.qcow2')
  sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-S', '0', path.join(work, 'random-head.raw'), base])
  let below = base
  const chain = new Map<number, string>()
  for (let level = 1; level <= maxDepth; level++) {
    const overlay = path.join(work, `chain${level}.qcow2`)
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', below, '-F', 'qcow2', overlay])
    sh('qemu-io', ['-f', 'qcow2', overlay], { input: `write -q -P 7 ${(level * 7 % (bytes / MiB)) * MiB} 64k\nquit\n` })
    chain.set(level, overlay)
    below = overlay
  }
  const exportFile = path.join(work, 'chain.export')
  for (let rep = 0; rep < reps; rep++) {
    for (const d of depths) {
      const qsd = await startQsd(chain.get(d) as string, exportFile)
      try { record(`E.depth.${d}`, readAll(exportFile)) } finally { await stopChild(qsd, exportFile) }
    }
  }
}

/** Sealing throughput with 0 (main thread), 1 and 2 workers, and the event loop's delay meanwhile. */
async function sealing (image: string): Promise<void> {
  const bytes = quick ? 256 * MiB : GiB
  const source = fs.openSync(image, 'r')
  for (const workers of [0, 1, 2]) {
    for (let rep = 0; rep < reps; rep++) {
      const dir = path.join(work, `pool-seal-${workers}`)
      fs.rmSync(dir, { recursive: true, force: true })
      const pool = Pool.open(dir, { create: true, workers })
      const disk = await pool.createDisk('s.img')
      const buffer = Buffer.alloc(4 * MiB)
      for (let offset = 0; offset < bytes; offset += buffer.length) {
        fs.readSync(source, buffer, 0, buffer.length, offset)
        await disk.write(buffer, offset)
      }
      await pool.commit()
      const histogram = monitorEventLoopDelay({ resolution: 1 })
      histogram.enable()
      const start = process.hrtime.bigint()
      const report = await new Sealer(pool, () => {}).sealPending(true)
      const seconds = Number(process.hrtime.bigint() - start) / 1e9
      histogram.disable()
      record(`seal.${workers}`, report.rawBytes / seconds / 1e6)
      record(`sealDelayP99.${workers}`, histogram.percentile(99) / 1e6)
      await pool.close()
      fs.rmSync(dir, { recursive: true, force: true })
      log(`sealing with ${workers} workers: ${(report.rawBytes / seconds / 1e6).toFixed(0)} MB/s, loop delay p99 ${(histogram.percentile(99) / 1e6).toFixed(1)} ms`)
    }
  }
  fs.closeSync(source)
}

/** Stored/logical for an ext4 image holding part of /usr, against zstd -3 and qcow2 -c. */
async function storedRatio (image: string, imageBytes: number): Promise<void> {
  const pool = path.join(work, 'pool-r')
  const mnt = path.join(work, 'mnt-r')
  fs.rmSync(pool, { recursive: true, force: true })
  vdiskfsMount(pool, mnt)
  try {
    sh('cp', ['--sparse=always', image, path.join(mnt, 'disks', 'usr.img')])
    sh(cli, ['sync', mnt])
    const du = JSON.parse(sh(cli, ['du', mnt, '--json'])) as { storedBytes: number }
    record('ratio.vdiskfs', du.storedBytes)
  } finally { vdiskfsUmount(mnt) }
  record('ratio.zstd3', Number(sh('bash', ['-c', `zstd -3 -T1 -c ${image} | wc -c`]).trim()))
  const qcow = path.join(work, 'usr-c.qcow2')
  sh('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', image, qcow])
  record('ratio.qcow2c', fs.statSync(qcow).size)
  record('ratio.logical', imageBytes)
  fs.rmSync(qcow)
}

function makeUsrImage (): { image: string, bytes: number } {
  const bytes = quick ? 512 * MiB : 2 * GiB
  const image = path.join(work, 'usr.ext4')
  const dirs = quick ? ['/usr/share/doc', '/usr/bin'] : ['/usr/share', '/usr/bin', '/usr/include', '/usr/libexec']
  sh('truncate', ['-s', String(bytes), image])
  sh('mkfs.ext4', ['-q', '-F', image])
  const target = path.join(work, 'usr-mnt')
  fs.mkdirSync(target, { recursive: true })
  sh('mount', ['-o', 'loop', image, target])
  try {
    for (const dir of dirs) spawnSync('cp', ['-a', dir, target])
  } finally { sh('umount', [target]) }
  return { image, bytes }
}

// ---- report ----

function fmt (f: Figure | null, digits = 0): string {
  if (f === null) return 'n/a'
  return `${f.median.toFixed(digits)} (${f.min.toFixed(digits)}–${f.max.toFixed(digits)})`
}

function ratio (a: string, b: string): number | null {
  const x = figure(a)
  const y = figure(b)
  return x === null || y === null || y.median === 0 ? null : x.median / y.median
}

interface Bar { name: string, met: boolean | null, detail: string }

/** Issue #10's bars, per workload of A (fresh disk) and C (clone of a sealed backup). */
interface Issue10Bar {
  scenario: 'A' | 'C', key: string, what: string, unit: string, value: number | null,
  best: string | null, bestValue: number | null, vsBest: number | null, bestMet: boolean | null,
  ceiling: number | null, vsCeiling: number | null, ceilingMet: boolean | null
}
const issue10Keys: Array<{ key: string, what: string, unit: string }> = [
  { key: 'seqWrite', what: 'dd sequential write, conv=fsync', unit: 'MB/s' },
  { key: 'seqRead', what: 'dd sequential read, cold', unit: 'MB/s' },
  { key: 'randRead4k', what: 'fio 4k randread, psync, 1 job', unit: 'IOPS' },
  { key: 'randRead4kJobs4', what: 'fio 4k randread, psync, 4 jobs', unit: 'IOPS' },
  { key: 'randWrite4k', what: 'fio 4k randwrite, psync, 1 job', unit: 'IOPS' },
  { key: 'randWrite4kJobs4', what: 'fio 4k randwrite, psync, 4 jobs', unit: 'IOPS' }
]
function issue10Bars (): Issue10Bar[] {
  const out: Issue10Bar[] = []
  for (const [scenario, d, e, e2] of [['A', 'D', 'E', 'E2'], ['C', 'CD', 'CE', 'CE2']] as Array<['A' | 'C', string, string, string]>) {
    for (const k of issue10Keys) {
      const value = figure(`${scenario}.${k.key}`)?.median ?? null
      if (value === null) continue
      const candidates = [e, e2].map(t => [t, figure(`${t}.${k.key}`)?.median ?? null] as [string, number | null]).filter(([, v]) => v !== null) as Array<[string, number]>
      const [best, bestValue] = candidates.length === 0 ? [null, null] : candidates.reduce((x, y) => y[1] > x[1] ? y : x)
      const ceiling = figure(`${d}.${k.key}`)?.median ?? null
      const vsBest = bestValue === null || bestValue === 0 ? null : value / bestValue
      const vsCeiling = ceiling === null || ceiling === 0 ? null : value / ceiling
      out.push({ scenario, key: k.key, what: k.what, unit: k.unit, value, best, bestValue, vsBest, bestMet: vsBest === null ? null : vsBest >= 1.0, ceiling, vsCeiling, ceilingMet: vsCeiling === null ? null : vsCeiling >= 0.75 })
    }
  }
  return out
}

function bars (): Bar[] {
  const out: Bar[] = []
  const both = (name: string, key: string, targets: string[]): void => {
    for (const t of targets) {
      const d = ratio(`${t}.${key}`, `D.${key}`)
      const e = ratio(`${t}.${key}`, `E.${key}`)
      out.push({ name: `${name} (${t})`, met: d === null || e === null ? null : d >= 0.75 && e >= 1.2, detail: `${d?.toFixed(2) ?? 'n/a'}× D, ${e?.toFixed(2) ?? 'n/a'}× E (bar: ≥ 0.75× D and ≥ 1.2× E)` })
    }
  }
  // Issue #6's bar for sealed reads (B has no bar in issue #10).
  both('Sequential read', 'seqRead', ['B'])
  const large = figure('backup.1T') !== null ? '1T' : '1T'
  for (const op of ['backup', 'clone']) {
    const big = figure(`${op}.${large}`)
    const small = figure(`${op}.1G`)
    const r = big !== null && small !== null ? big.median / small.median : null
    out.push({ name: `${op} at 1 TiB`, met: big === null || r === null ? null : big.median <= 20 && r <= 1.5, detail: `${big?.median.toFixed(2) ?? 'n/a'} ms, ${r?.toFixed(2) ?? 'n/a'}× the 1 GiB figure (bar: ≤ 20 ms and ≤ 1.5×)` })
  }
  const deepest = figure('depth.50') !== null ? 50 : 10
  const dr = ratio(`depth.${deepest}`, 'depth.1')
  out.push({ name: `read at depth ${deepest}`, met: dr === null ? null : dr >= 0.95, detail: `${dr?.toFixed(2) ?? 'n/a'}× depth 1 (bar: ≥ 0.95); qcow2 chain: ${ratio(`E.depth.${deepest}`, 'E.depth.1')?.toFixed(2) ?? 'n/a'}×` })
  const seal = figure('seal.2')
  const delay = figure('sealDelayP99.2')
  out.push({ name: 'sealing, 2 workers', met: seal === null || delay === null ? null : seal.median >= 400 && delay.median < 5, detail: `${seal?.median.toFixed(0) ?? 'n/a'} MB/s, loop delay p99 ${delay?.median.toFixed(1) ?? 'n/a'} ms (bar: ≥ 400 MB/s, p99 < 5 ms)` })
  const stored = ratio('ratio.vdiskfs', 'ratio.zstd3')
  out.push({ name: 'stored bytes', met: stored === null ? null : stored <= 1.1, detail: `${stored?.toFixed(3) ?? 'n/a'}× zstd -3 (bar: ≤ 1.1×)` })
  const loop = figure('A.loopP99.randWrite4k')
  out.push({ name: 'event loop under 4k random writes', met: loop === null ? null : loop.median < 5, detail: `p99 ${loop?.median.toFixed(1) ?? 'n/a'} ms, max ${figure('A.loopMax.randWrite4k')?.median.toFixed(1) ?? 'n/a'} ms in a 10-s window of fio 4k randwrite on A (bar: p99 < 5 ms)` })
  const rss = Math.max(figure('rss.throughput')?.max ?? 0, figure('rss.1TiB')?.max ?? 0)
  out.push({ name: 'daemon peak RSS', met: rss === 0 ? null : rss <= 300, detail: `${rss.toFixed(0)} MiB (bar: ≤ 300 MiB)` })
  return out
}

function svgChart (): string {
  const keys = [['seqWrite', 'seq write'], ['seqRead', 'seq read'], ['randRead4k', '4k rand read'], ['randWrite4k', '4k rand write'], ['seqRead128k', '128k read'], ['seqWrite128k', '128k write']]
  const targets: Array<[string, string]> = [['A', '#2b6cb0'], ['B', '#38a169'], ['P', '#a0aec0'], ['E', '#dd6b20'], ['E2', '#c05621']]
  const width = 760
  const rowHeight = 85
  const scaleMax = 2
  const x0 = 130
  const plot = width - x0 - 20
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${keys.length * rowHeight + 70}" font-family="sans-serif" font-size="12">`,
    `<text x="10" y="20" font-size="14" font-weight="bold">Throughput relative to D (the in-memory FUSE ceiling = 1.0)</text>`]
  keys.forEach(([key, label], row) => {
    const y = 40 + row * rowHeight
    parts.push(`<text x="10" y="${y + 30}">${label}</text>`)
    targets.forEach(([t, color], i) => {
      const r = ratio(`${t}.${key}`, `D.${key}`)
      if (r === null) return
      const w = Math.min(r, scaleMax) / scaleMax * plot
      parts.push(`<rect x="${x0}" y="${y + i * 15}" width="${w.toFixed(1)}" height="12" fill="${color}"/>`)
      parts.push(`<text x="${x0 + w + 4}" y="${y + i * 15 + 10}">${t} ${r.toFixed(2)}${r > scaleMax ? ' (clipped)' : ''}</text>`)
    })
  })
  const oneX = x0 + plot / scaleMax
  parts.push(`<line x1="${oneX}" y1="35" x2="${oneX}" y2="${40 + keys.length * rowHeight}" stroke="#000" stroke-dasharray="4"/>`)
  parts.push(`<text x="${x0}" y="${keys.length * rowHeight + 60}">A vdiskfs fresh · B vdiskfs sealed · P plain file · E qemu-storage-daemon qcow2 (E2 extended_l2) · dashed: D</text>`)
  parts.push('</svg>')
  return parts.join('\n') + '\n'
}

function report (started: number): void {
  const date = new Date().toISOString()
  const machine = `${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ${(os.totalmem() / GiB).toFixed(0)} GiB, Linux ${os.release()}`
  const allFigures = Object.fromEntries([...samples.keys()].sort().map(k => [k, figure(k)]))
  const barList = bars()
  const issue10 = issue10Bars()
  const json = { date, machine, shared: process.env.VDISKFS_BENCH_SHARED ?? null, quick, reps, fileBytes, cloneImageBytes: cloneImageBytes(), fioSeconds, durationSeconds: Math.round((Date.now() - started) / 1000), figures: allFigures, issue10, bars: barList, failures }
  const rows = [{ key: 'seqWrite', what: 'dd sequential write, bs=1M, conv=fsync', unit: 'MB/s' }, ...workloads]
  const md: string[] = [
    `# vdiskfs benchmark${quick ? ' (quick)' : ''}, ${date}`, '',
    `Machine: ${machine}. ${reps} repetition(s), median (min–max). Files of ${fileBytes / MiB} MiB; fio runs ${fioSeconds} s each.`,
    ...(json.shared === null ? [] : [`Machine shared during this run: ${json.shared}.`, '']),
    'A: vdiskfs, fresh writes. B: the same after `vdiskfs sync` (sealed). P: plain file (called C before issue #10). D: the in-memory ceiling on the same FUSE 3 addon (bench/memfs). E: qemu-storage-daemon qcow2 FUSE export; E2: the same image made with `extended_l2=on`.', '',
    '| workload | unit | A | B | P | D | E | E2 | A/D | A/best(E,E2) | B/D |', '|---|---|---|---|---|---|---|---|---|---|---|'
  ]
  for (const w of rows) {
    const cell = (t: string) => fmt(figure(`${t}.${w.key}`))
    const r = (a: string, b: string) => ratio(`${a}.${w.key}`, `${b}.${w.key}`)?.toFixed(2) ?? 'n/a'
    const best = Math.max(figure(`E.${w.key}`)?.median ?? 0, figure(`E2.${w.key}`)?.median ?? 0)
    const aBest = best > 0 && figure(`A.${w.key}`) !== null ? ((figure(`A.${w.key}`) as Figure).median / best).toFixed(2) : 'n/a'
    md.push(`| ${w.what} | ${w.unit} | ${cell('A')} | ${cell('B')} | ${cell('P')} | ${cell('D')} | ${cell('E')} | ${cell('E2')} | ${r('A', 'D')} | ${aBest} | ${r('B', 'D')} |`)
  }
  md.push('', `## Scenario C: a clone of a sealed backup (issue #10)`, '',
    `A ${(cloneImageBytes() / MiB).toFixed(0)} MiB raw image holding a tar of /usr. C: copied into a vdiskfs disk, \`vdiskfs backup\`, \`vdiskfs sync\` (sealed), \`vdiskfs clone\`. ` +
    'CE: qemu-storage-daemon exporting a qcow2 overlay over a base made with `qemu-img convert -c -o compression_type=zstd`; CE2: the overlay made with `-o extended_l2=on`. ' +
    'CD: bench/memfs holding the same bytes. Page cache dropped before every run; every write run on a fresh clone (vdiskfs) or a fresh overlay (qsd), so its writes are first writes over sealed/compressed data.', '',
    '| workload | unit | C | CE | CE2 | CD | C/best(CE,CE2) | C/CD |', '|---|---|---|---|---|---|---|---|')
  for (const w of cloneWorkloads) {
    const cell = (t: string) => fmt(figure(`${t}.${w.key}`))
    const best = Math.max(figure(`CE.${w.key}`)?.median ?? 0, figure(`CE2.${w.key}`)?.median ?? 0)
    const c = figure(`C.${w.key}`)
    md.push(`| ${w.what} | ${w.unit} | ${cell('C')} | ${cell('CE')} | ${cell('CE2')} | ${cell('CD')} | ${c !== null && best > 0 ? (c.median / best).toFixed(2) : 'n/a'} | ${ratio(`C.${w.key}`, `CD.${w.key}`)?.toFixed(2) ?? 'n/a'} |`)
  }
  md.push('', `Stored: the vdiskfs pool ${((figure('C.poolStoredBytes')?.median ?? 0) / MiB).toFixed(0)} MiB after the runs, the zstd qcow2 base ${((figure('CE.baseBytes')?.median ?? 0) / MiB).toFixed(0)} MiB.`)
  md.push('', '## Issue #10 bars: every workload of A and C ≥ 1.0× the better of E/E2 (goal 1.2×) and ≥ 0.75× D', '',
    '| scenario | workload | unit | vdiskfs | better of E/E2 | ×best | ≥ 1.0× | D | ×D | ≥ 0.75× |', '|---|---|---|---|---|---|---|---|---|---|')
  const yes = (b: boolean | null): string => b === null ? 'n/a' : b ? 'met' : 'missed'
  for (const b of issue10) {
    md.push(`| ${b.scenario} | ${b.what} | ${b.unit} | ${b.value?.toFixed(0) ?? 'n/a'} | ${b.best === null ? 'n/a' : `${b.best} ${b.bestValue?.toFixed(0) ?? ''}`} | ${b.vsBest?.toFixed(2) ?? 'n/a'} | ${yes(b.bestMet)} | ${b.ceiling?.toFixed(0) ?? 'n/a'} | ${b.vsCeiling?.toFixed(2) ?? 'n/a'} | ${yes(b.ceilingMet)} |`)
  }
  const metCount = issue10.filter(b => b.bestMet === true).length + issue10.filter(b => b.ceilingMet === true).length
  md.push('', `${metCount} of ${issue10.length * 2} issue #10 bars met.`)
  md.push('', `4k randwrite on A mounted with --xattrs (the kernel then asks GETXATTR security.capability before every write): ${fmt(figure('Ax.randWrite4k'))} IOPS.`, '')
  md.push('Requests the addon answered itself (the fast path, issue #20; docs/FASTPATH.md), percent of the READ (or, for writes, WRITE) requests each workload sent:', '',
    '| workload | A (fresh) | B (sealed) |', '|---|---|---|')
  for (const w of workloads) md.push(`| ${w.what} | ${fmt(figure(`A.fastShare.${w.key}`), 1)} | ${w.writes ? 'n/a' : fmt(figure(`B.fastShare.${w.key}`), 1)} |`)
  md.push('', `4k on A with VDISKFS_FAST_READS=0 (the fast path off: every request through the engine): randread 1 job ${fmt(figure('Af.randRead4k'))} IOPS, 4 jobs ${fmt(figure('Af.randRead4kJobs4'))} IOPS; ` +
    `randwrite 1 job ${fmt(figure('Af.randWrite4k'))} IOPS, 4 jobs ${fmt(figure('Af.randWrite4kJobs4'))} IOPS.`, '')
  md.push(`4k randwrite on A with VDISKFS_INLINE_WRITES=0 (every engine write through the libuv thread pool, as before inline writes): ${fmt(figure('Ap.randWrite4k'))} IOPS.`, '')
  md.push(`Copy of a ${fileBytes / MiB} MiB image of random data, then sync: \`cp\` inside the mount (copy_file_range shares whole blocks) ${fmt(figure('copy.vdiskfs'), 3)} s, ` +
    `the pool storing ${((figure('copy.vdiskfsStoredBytes')?.median ?? 0) / MiB).toFixed(0)} MiB after ${reps} copies; \`cp --reflink=never\` of a plain file on the bench's filesystem ${fmt(figure('copy.P'), 3)} s.`, '')
  md.push('| backup / clone latency | 1 GiB | 64 GiB | 1 TiB |', '|---|---|---|---|')
  for (const [label, key] of [['vdiskfs backup (in daemon, ms)', 'backup'], ['vdiskfs clone (in daemon, ms)', 'clone'], ['E: qemu-img create -b (process, ms)', 'E.overlay'], ['E: qemu-img snapshot -c (process, ms)', 'E.snapshot']]) {
    md.push(`| ${label} | ${fmt(figure(`${key}.1G`), 2)} | ${fmt(figure(`${key}.64G`), 2)} | ${fmt(figure(`${key}.1T`), 2)} |`)
  }
  md.push('', '| sequential read through clones (MB/s) | depth 1 | depth 10 | depth 50 |', '|---|---|---|---|')
  md.push(`| vdiskfs clones | ${fmt(figure('depth.1'))} | ${fmt(figure('depth.10'))} | ${fmt(figure('depth.50'))} |`)
  md.push(`| E: qcow2 backing chain | ${fmt(figure('E.depth.1'))} | ${fmt(figure('E.depth.10'))} | ${fmt(figure('E.depth.50'))} |`)
  md.push('', '| sealing (ext4 image of /usr) | 0 workers (main thread) | 1 worker | 2 workers |', '|---|---|---|---|')
  md.push(`| throughput, MB/s | ${fmt(figure('seal.0'))} | ${fmt(figure('seal.1'))} | ${fmt(figure('seal.2'))} |`)
  md.push(`| event-loop delay p99, ms | ${fmt(figure('sealDelayP99.0'), 1)} | ${fmt(figure('sealDelayP99.1'), 1)} | ${fmt(figure('sealDelayP99.2'), 1)} |`)
  const logical = figure('ratio.logical')?.median ?? 0
  md.push('', `Stored bytes for a ${(logical / GiB).toFixed(1)} GiB ext4 image holding part of /usr: vdiskfs ${((figure('ratio.vdiskfs')?.median ?? 0) / MiB).toFixed(0)} MiB, ` +
    `zstd -3 ${((figure('ratio.zstd3')?.median ?? 0) / MiB).toFixed(0)} MiB, qcow2 -c ${((figure('ratio.qcow2c')?.median ?? 0) / MiB).toFixed(0)} MiB.`)
  md.push('', `Daemon peak RSS: ${fmt(figure('rss.throughput'))} MiB during the throughput runs, ${fmt(figure('rss.1TiB'))} MiB with 1 TiB of disks (and their backups and clones) mounted.`)
  md.push('', '## Bars', '', '| bar | met | measured |', '|---|---|---|')
  for (const bar of barList) md.push(`| ${bar.name} | ${bar.met === null ? 'n/a' : bar.met ? 'met' : 'missed'} | ${bar.detail} |`)
  if (failures.length > 0) md.push('', '## Sections that failed', '', ...failures.map(f => `- ${f.section}: ${f.error}`))
  md.push('', `Run took ${json.durationSeconds} s. Chart: latest${quick ? '-quick' : ''}.svg.`, '')
  const dir = path.join(repoRoot, 'bench', 'results')
  fs.mkdirSync(dir, { recursive: true })
  const base = quick ? 'latest-quick' : 'latest'
  fs.writeFileSync(path.join(dir, `${base}.json`), JSON.stringify(json, null, 2) + '\n')
  fs.writeFileSync(path.join(dir, `${base}.md`), md.join('\n'))
  fs.writeFileSync(path.join(dir, `${base}.svg`), svgChart())
  process.stdout.write(md.join('\n'))
}

const failures: Array<{ section: string, error: string }> = []
// VDISKFS_BENCH_ONLY=throughput,clone runs only the sections whose names start with one of those words
// (for measuring one change; `make bench` runs them all).
const only = (process.env.VDISKFS_BENCH_ONLY ?? '').split(',').map(s => s.trim()).filter(s => s !== '')
async function section (name: string, run: () => Promise<void>): Promise<void> {
  if (only.length > 0 && !only.some(word => name.startsWith(word))) return
  log(name)
  try { await run() } catch (err) {
    const e = err as Error & { stderr?: string }
    const error = `${e.message.split('\n')[0]}${e.stderr !== undefined && e.stderr !== '' ? `: ${String(e.stderr).trim()}` : ''}`
    failures.push({ section: name, error })
    log(`${name} FAILED: ${error}`)
  }
}

async function main (): Promise<void> {
  const started = Date.now()
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mountpoint = line.split(' ')[4]
    if (mountpoint?.startsWith(work + '/')) spawnSync('fusermount3', ['-uz', mountpoint])
  }
  fs.rmSync(work, { recursive: true, force: true })
  fs.mkdirSync(work, { recursive: true })
  try {
    log('preparing data')
    const random = path.join(work, 'random.raw')
    dd(['if=/dev/urandom', `of=${random}`, `count=${fileBytes / MiB}`])
    dd([`if=${random}`, `of=${path.join(work, 'random-head.raw')}`, `count=${(quick ? 128 : 512)}`])
    const usr = makeUsrImage()
    const tarImage = makeTarImage(cloneImageBytes())
    // A section that fails is reported as such; the others still run and the report is still written.
    await section('throughput (A, B, P, D, E, E2)', async () => await throughputTargets(random))
    await section('clone of a sealed backup (scenario C)', async () => await cloneOfSealed(tarImage))
    await section('backup and clone latency', backupLatency)
    await section('copy inside the mount', async () => await copyInside(random))
    await section('clone depth', async () => await depth(random))
    await section('sealing', async () => await sealing(usr.image))
    await section('stored ratio', async () => await storedRatio(usr.image, usr.bytes))
  } finally {
    for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const mountpoint = line.split(' ')[4]
      if (mountpoint?.startsWith(work + '/')) { spawnSync('fusermount3', ['-uz', mountpoint]); spawnSync('umount', ['-l', mountpoint]) }
    }
  }
  report(started)
  // Kept after a failure: the pools' daemon.log files say what went wrong.
  if (failures.length === 0) fs.rmSync(work, { recursive: true, force: true })
  else { log(`kept ${work} for its daemon.log files`); process.exitCode = 1 }
}

main().catch(err => { process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`); process.exit(1) })

/**
 * make soak (60 minutes) and make soak-quick (10): issue #10's soak. One real daemon (`bin/vdiskfs mount`)
 * serves a pool of several disks while two lanes run a mixed workload through the mount until the time is up:
 *   I/O lane:   dd sequential writes (from a tar of /usr) and fio 4k random writes to the disks, parallel dd
 *               reads of sealed backups (the file's page cache dropped first with iflag=nocache), reads and
 *               writes of clones;
 *   admin lane: `vdiskfs backup`, `vdiskfs sync` (sealing), `vdiskfs clone`, `vdiskfs rm` of the oldest backups
 *               and clones, `vdiskfs gc`, every few seconds.
 * Every 10 s it samples the daemon: VmRSS, open fds (/proc/PID/fd), threads (/proc/PID/task), and the status
 * reply of the control socket (rssBytes, and event-loop delay if the reply carries it).
 * Reports per minute, then the last window's throughput against the first's (bar ≥ 0.9) and whether RSS,
 * fds and threads stayed bounded. Writes bench/results/soak-latest.{json,md}.
 *   node dist/bench/soak.js [--minutes N]      (needs root: it drops no global caches, but mounts FUSE)
 * Mounts, the daemon and the temporary directory are cleaned up on every exit path (SIGINT/SIGTERM too).
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { call } from '../src/control/client'

const argValue = (name: string): string | undefined => { const i = process.argv.indexOf(name); return i < 0 ? undefined : process.argv[i + 1] }
const minutes = Number(argValue('--minutes') ?? 60)
const repoRoot = path.resolve(__dirname, '..', '..')
const cli = path.join(repoRoot, 'bin', 'vdiskfs')
const MiB = 1024 * 1024
const diskCount = 4
const diskBytes = 512 * MiB
const sourceBytes = 512 * MiB
const maxBackups = 6
const maxClones = 4
const adminPauseMs = 5000
const sampleMs = 10000
const log = (message: string): void => { process.stderr.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${message}\n`) }

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-soak-'))
const pool = path.join(work, 'pool')
const mnt = path.join(work, 'mnt')
const source = path.join(work, 'source.raw')
let daemonPid = 0
const children = new Set<ChildProcess>()

// ---- running things ----

interface Ran { code: number | null, stdout: string, stderr: string, seconds: number }
function run (command: string, args: string[], timeoutMs = 180000): Promise<Ran> {
  return new Promise(resolve => {
    const start = process.hrtime.bigint()
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    children.add(child)
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    const timer = setTimeout(() => { stderr += `\n(killed after ${timeoutMs} ms)`; child.kill('SIGKILL') }, timeoutMs)
    child.on('close', code => {
      clearTimeout(timer)
      children.delete(child)
      resolve({ code, stdout, stderr, seconds: Number(process.hrtime.bigint() - start) / 1e9 })
    })
  })
}

const errors: Array<{ t: number, what: string, message: string }> = []
const errorCounts = new Map<string, number>()
function failed (what: string, ran: Ran): boolean {
  if (ran.code === 0) return false
  errorCounts.set(what, (errorCounts.get(what) ?? 0) + 1)
  if (errors.length < 50) errors.push({ t: elapsedS(), what, message: ran.stderr.trim().slice(0, 300) })
  log(`${what} failed (${String(ran.code)}): ${ran.stderr.trim().slice(0, 200)}`)
  return true
}

const rand = (n: number): number => Math.floor(Math.random() * n)
const pick = <T>(list: T[]): T | undefined => list.length === 0 ? undefined : list[rand(list.length)]
let started = 0
const elapsedS = (): number => (Date.now() - started) / 1000
const minuteOf = (t: number): number => Math.floor((t - started) / 60000)

// ---- per-minute accounting ----

interface Minute {
  minute: number
  bytes: { seqWrite: number, randWrite: number, sealedRead: number, cloneRead: number, cloneWrite: number }
  seconds: { seqWrite: number, randWrite: number, sealedRead: number, cloneRead: number, cloneWrite: number }
  ops: Record<string, number>
  adminMs: Record<string, number[]>
  samples: Sample[]
  poolBytes?: number
}
interface Sample { t: number, vmRssMiB: number, fds: number, deletedFds: number, deletedMiB: number, threads: number, statusRssMiB: number | null, loop: Record<string, unknown> | null, statusMs: number }
const minuteData = new Map<number, Minute>()
function bucket (t = Date.now()): Minute {
  const m = minuteOf(t)
  let b = minuteData.get(m)
  if (b === undefined) {
    b = { minute: m, bytes: { seqWrite: 0, randWrite: 0, sealedRead: 0, cloneRead: 0, cloneWrite: 0 }, seconds: { seqWrite: 0, randWrite: 0, sealedRead: 0, cloneRead: 0, cloneWrite: 0 }, ops: {}, adminMs: {}, samples: [] }
    minuteData.set(m, b)
  }
  return b
}
function io (kind: keyof Minute['bytes'], bytes: number, seconds: number): void {
  const b = bucket()
  b.bytes[kind] += bytes
  b.seconds[kind] += seconds
}
function op (name: string, ms: number): void {
  const b = bucket()
  b.ops[name] = (b.ops[name] ?? 0) + 1;
  (b.adminMs[name] ??= []).push(ms)
}

// ---- the pool's volumes ----

const disks = Array.from({ length: diskCount }, (_, i) => path.join(mnt, 'disks', `d${i}.img`))
interface Backup { name: string, file: string, sealed: boolean }
const backups: Backup[] = []
const clones: string[] = []
const inUse = new Map<string, number>()
const use = (file: string): void => { inUse.set(file, (inUse.get(file) ?? 0) + 1) }
const release = (file: string): void => { const n = (inUse.get(file) ?? 1) - 1; if (n <= 0) inUse.delete(file); else inUse.set(file, n) }
let serial = 0

function fioBytes (ran: Ran): number {
  try {
    const out = JSON.parse(ran.stdout.slice(ran.stdout.indexOf('{'))) as { jobs: Array<{ write: { io_bytes: number }, read: { io_bytes: number } }> }
    return out.jobs.reduce((sum, job) => sum + job.write.io_bytes + job.read.io_bytes, 0)
  } catch { return 0 }
}

async function seqWrite (): Promise<void> {
  const disk = pick(disks) as string
  const count = 32
  const ran = await run('dd', [`if=${source}`, `of=${disk}`, 'bs=1M', `count=${count}`, `skip=${rand(sourceBytes / MiB - count)}`,
    `seek=${rand(diskBytes / MiB - count)}`, 'conv=notrunc,fsync', 'status=none'])
  if (!failed('dd write', ran)) io('seqWrite', count * MiB, ran.seconds)
}

async function randWrite (file: string, kind: 'randWrite' | 'cloneWrite', seconds: number): Promise<void> {
  use(file)
  try {
    const ran = await run('fio', ['--name=soak', `--filename=${file}`, '--rw=randwrite', '--bs=4k', '--ioengine=psync', '--iodepth=1',
      '--numjobs=1', `--size=${diskBytes}`, `--runtime=${seconds}`, '--time_based', '--output-format=json'])
    if (!failed(`fio ${kind}`, ran)) io(kind, fioBytes(ran), ran.seconds)
  } finally { release(file) }
}

/** Parallel dd readers of FILE, its page cache dropped first (a reader per 16 MiB, at random offsets). */
async function parallelRead (file: string, kind: 'sealedRead' | 'cloneRead', readers: number): Promise<void> {
  use(file)
  try {
    await run('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none'])
    const start = process.hrtime.bigint()
    const runs = await Promise.all(Array.from({ length: readers }, async () => await run('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M', 'count=16',
      `skip=${rand(diskBytes / MiB - 16)}`, 'iflag=nocache', 'status=none'])))
    const seconds = Number(process.hrtime.bigint() - start) / 1e9
    const ok = runs.filter(r => !failed(`dd ${kind}`, r)).length
    io(kind, ok * 16 * MiB, seconds)
  } finally { release(file) }
}

let stopAt = 0
const running = (): boolean => Date.now() < stopAt

async function ioLane (): Promise<void> {
  while (running()) {
    await seqWrite()
    await randWrite(pick(disks) as string, 'randWrite', 2)
    const sealed = pick(backups.filter(b => b.sealed))
    if (sealed !== undefined) await parallelRead(sealed.file, 'sealedRead', 8)
    const clone = pick(clones)
    if (clone !== undefined) {
      use(clone) // held across both, so the admin lane does not rm it in between
      try {
        await parallelRead(clone, 'cloneRead', 4)
        await randWrite(clone, 'cloneWrite', 1)
      } finally { release(clone) }
    }
  }
}

async function admin (what: string, args: string[]): Promise<boolean> {
  const ran = await run(cli, args)
  if (failed(what, ran)) return false
  op(what, ran.seconds * 1000)
  return true
}

async function adminLane (): Promise<void> {
  while (running()) {
    const disk = pick(disks) as string
    const name = `b${serial++}`
    if (await admin('backup', ['backup', disk, name])) backups.push({ name, file: path.join(mnt, 'backups', `${name}.img`), sealed: false })
    const unsealed = backups.filter(b => !b.sealed)
    if (await admin('sync', ['sync', mnt])) for (const b of unsealed) b.sealed = true
    const base = pick(backups.filter(b => b.sealed))
    if (base !== undefined) {
      const cname = `c${serial++}`
      if (await admin('clone', ['clone', base.file, cname])) clones.push(path.join(mnt, 'clones', `${cname}.img`))
    }
    while (backups.length > maxBackups) {
      const victim = backups.findIndex(b => !inUse.has(b.file))
      if (victim < 0) break
      const [b] = backups.splice(victim, 1)
      await admin('rm', ['rm', b.file])
    }
    while (clones.length > maxClones) {
      const victim = clones.findIndex(c => !inUse.has(c))
      if (victim < 0) break
      const [c] = clones.splice(victim, 1)
      await admin('rm', ['rm', c])
    }
    await admin('gc', ['gc', mnt])
    await new Promise(resolve => setTimeout(resolve, adminPauseMs))
  }
}

// ---- sampling the daemon ----

async function sample (): Promise<void> {
  if (daemonPid === 0) return
  const t = Date.now()
  let vmRssMiB = 0
  let fds = 0
  let threads = 0
  let deletedFds = 0
  let deletedBytes = 0
  try {
    vmRssMiB = Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${daemonPid}/status`, 'utf8'))?.[1] ?? 0) / 1024
    const fdNames = fs.readdirSync(`/proc/${daemonPid}/fd`)
    fds = fdNames.length
    threads = fs.readdirSync(`/proc/${daemonPid}/task`).length
    // Files the daemon holds open after they were deleted: their space stays taken, and du does not see it.
    for (const fd of fdNames) {
      try {
        if (!fs.readlinkSync(`/proc/${daemonPid}/fd/${fd}`).endsWith(' (deleted)')) continue
        deletedFds++
        deletedBytes += fs.statSync(`/proc/${daemonPid}/fd/${fd}`).size
      } catch {}
    }
  } catch { throw new Error(`the daemon (pid ${daemonPid}) is gone`) }
  let status: Record<string, unknown> = {}
  const before = process.hrtime.bigint()
  try { status = await call(mnt, 'status') as Record<string, unknown> } catch (err) { errors.push({ t: elapsedS(), what: 'status', message: (err as Error).message }) }
  const statusMs = Number(process.hrtime.bigint() - before) / 1e6
  const loopKeys = Object.keys(status).filter(k => /loop|delay|lag|p99/i.test(k))
  const loop = loopKeys.length === 0 ? null : Object.fromEntries(loopKeys.map(k => [k, status[k]]))
  bucket(t).samples.push({
    t: Math.round((t - started) / 1000), vmRssMiB, fds, deletedFds, deletedMiB: deletedBytes / MiB, threads, statusMs,
    statusRssMiB: typeof status.rssBytes === 'number' ? status.rssBytes / MiB : null,
    loop
  })
}

function poolBytes (): number {
  const out = spawnSync('du', ['-sb', pool], { encoding: 'utf8' })
  return Number(out.stdout.split('\t')[0] ?? 0)
}

// ---- clean-up ----

let cleaned = false
function cleanup (): void {
  if (cleaned) return
  cleaned = true
  for (const child of children) child.kill('SIGKILL')
  spawnSync(cli, ['umount', mnt], { timeout: 60000 })
  spawnSync('fusermount3', ['-uz', mnt])
  if (daemonPid !== 0) {
    try {
      process.kill(daemonPid, 0)
      process.kill(daemonPid, 'SIGTERM')
      const until = Date.now() + 10000
      while (Date.now() < until) { try { process.kill(daemonPid, 0) } catch { break } spawnSync('sleep', ['0.2']) }
      try { process.kill(daemonPid, 'SIGKILL') } catch {}
    } catch {}
  }
  // Loop devices over anything in the work directory (the soak makes none; a run interrupted mid-change might).
  const loops = spawnSync('losetup', ['-l', '-n', '-O', 'NAME,BACK-FILE'], { encoding: 'utf8' }).stdout ?? ''
  for (const line of loops.split('\n')) {
    const [dev, file] = line.trim().split(/\s+/)
    if (dev !== undefined && file?.startsWith(work) === true) spawnSync('losetup', ['-d', dev])
  }
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mountpoint = line.split(' ')[4]
    if (mountpoint?.startsWith(work) === true) { spawnSync('fusermount3', ['-uz', mountpoint]); spawnSync('umount', ['-l', mountpoint]) }
  }
  fs.rmSync(work, { recursive: true, force: true })
}
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => { log(`${signal}: cleaning up`); cleanup(); process.exit(130) })
process.on('exit', cleanup)

// ---- report ----

const maxOf = (list: number[]): number => list.length === 0 ? 0 : Math.max(...list)
const mean = (list: number[]): number => list.length === 0 ? 0 : list.reduce((a, b) => a + b, 0) / list.length
function p99 (list: number[]): number { const s = [...list].sort((a, b) => a - b); return s.length === 0 ? 0 : s[Math.min(s.length - 1, Math.floor(s.length * 0.99))] }

let finalStats: Record<string, unknown> | null = null

function report (runMinutes: number): void {
  const full = [...minuteData.values()].filter(m => m.minute < runMinutes).sort((a, b) => a.minute - b.minute)
  const rows = full.map(m => {
    const totalBytes = Object.values(m.bytes).reduce((a, b) => a + b, 0)
    const rate = (k: keyof Minute['bytes']): number => m.seconds[k] === 0 ? 0 : m.bytes[k] / m.seconds[k] / 1e6
    const s = m.samples
    return {
      minute: m.minute + 1,
      throughputMBps: totalBytes / 60 / 1e6,
      seqWriteMBps: rate('seqWrite'), randWriteIops: m.seconds.randWrite === 0 ? 0 : m.bytes.randWrite / 4096 / m.seconds.randWrite,
      sealedReadMBps: rate('sealedRead'), cloneReadMBps: rate('cloneRead'), cloneWriteIops: m.seconds.cloneWrite === 0 ? 0 : m.bytes.cloneWrite / 4096 / m.seconds.cloneWrite,
      ops: m.ops,
      syncMsMax: maxOf(m.adminMs.sync ?? []), gcMsMax: maxOf(m.adminMs.gc ?? []),
      vmRssMiBMax: maxOf(s.map(x => x.vmRssMiB)), statusRssMiBLast: s.at(-1)?.statusRssMiB ?? null,
      fdsMax: maxOf(s.map(x => x.fds)), deletedFdsMax: maxOf(s.map(x => x.deletedFds)), deletedMiBMax: maxOf(s.map(x => x.deletedMiB)), threadsMax: maxOf(s.map(x => x.threads)),
      statusMsMax: maxOf(s.map(x => x.statusMs)),
      loop: s.at(-1)?.loop ?? null,
      poolMiB: (m.poolBytes ?? 0) / MiB
    }
  })
  const window = runMinutes >= 30 ? 10 : Math.max(1, Math.floor(runMinutes / 3))
  const first = rows.slice(0, window)
  const last = rows.slice(-window)
  const firstHalf = rows.slice(0, Math.ceil(rows.length / 2))
  const secondHalf = rows.slice(Math.ceil(rows.length / 2))
  const tpFirst = mean(first.map(r => r.throughputMBps))
  const tpLast = mean(last.map(r => r.throughputMBps))
  const tpRatio = tpFirst === 0 ? null : tpLast / tpFirst
  const perKind = (k: 'seqWriteMBps' | 'randWriteIops' | 'sealedReadMBps' | 'cloneReadMBps' | 'cloneWriteIops') => ({ first: mean(first.map(r => r[k])), last: mean(last.map(r => r[k])) })
  // Bounded: the second half sets no new high-water mark beyond a margin over the first half's.
  const bound = (k: 'vmRssMiBMax' | 'fdsMax' | 'threadsMax', margin: (x: number) => number) => {
    const a = maxOf(firstHalf.map(r => r[k]))
    const b = maxOf(secondHalf.map(r => r[k]))
    return { firstHalfMax: a, secondHalfMax: b, overallMax: Math.max(a, b), bounded: b <= margin(a) }
  }
  const loopInStatus = rows.some(r => r.loop !== null)
  const summary = {
    windowMinutes: window,
    throughput: { firstMBps: tpFirst, lastMBps: tpLast, ratio: tpRatio, bar: 0.9, met: tpRatio === null ? null : tpRatio >= 0.9 },
    perKind: { seqWriteMBps: perKind('seqWriteMBps'), randWriteIops: perKind('randWriteIops'), sealedReadMBps: perKind('sealedReadMBps'), cloneReadMBps: perKind('cloneReadMBps'), cloneWriteIops: perKind('cloneWriteIops') },
    rss: bound('vmRssMiBMax', x => x * 1.1),
    fds: bound('fdsMax', x => x + 8),
    threads: bound('threadsMax', x => x + 8),
    eventLoopP99: loopInStatus ? 'in the status reply: see rows[].loop' : 'not reported: the daemon\'s status reply has no event-loop figure (pid, pool, mountpoint, version, blockBytes, rssBytes)',
    statusRoundTripMsP99: p99(full.flatMap(m => m.samples.map(s => s.statusMs))),
    poolMiB: { first: rows[0]?.poolMiB ?? 0, max: maxOf(rows.map(r => r.poolMiB)), last: rows.at(-1)?.poolMiB ?? 0 },
    opsTotal: rows.reduce<Record<string, number>>((acc, r) => { for (const [k, v] of Object.entries(r.ops)) acc[k] = (acc[k] ?? 0) + v; return acc }, {}),
    errorCounts: Object.fromEntries(errorCounts),
    writes: finalStats?.writes ?? null,
    chunkCache: finalStats?.chunkCache ?? null
  }
  const date = new Date().toISOString()
  const machine = `${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ${(os.totalmem() / 1024 / MiB).toFixed(0)} GiB, Linux ${os.release()}`
  const json = { date, machine, shared: process.env.VDISKFS_BENCH_SHARED ?? null, minutes: runMinutes, diskCount, diskBytes, maxBackups, maxClones, summary, rows, errors }
  const yes = (b: boolean | null): string => b === null ? 'n/a' : b ? 'met' : 'missed'
  const n = (x: number, d = 0): string => x.toFixed(d)
  const md: string[] = [
    `# vdiskfs soak, ${runMinutes} minutes, ${date}`, '',
    `Machine: ${machine}.${json.shared === null ? '' : ` Shared during the run: ${json.shared}.`} Command: \`make ${runMinutes >= 60 ? 'soak' : 'soak-quick'}\` (\`node dist/bench/soak.js --minutes ${runMinutes}\`).`, '',
    `One daemon (\`bin/vdiskfs mount\`), ${diskCount} disks of ${diskBytes / MiB} MiB. I/O lane, in a loop: dd 32 MiB sequential write (conv=fsync) from a tar of /usr, fio 4k randwrite 2 s, ` +
    `8 parallel dd readers (16 MiB each) of a sealed backup with its page cache dropped, 4 parallel readers of a clone, fio 4k randwrite 1 s on the clone. ` +
    `Admin lane, every ${adminPauseMs / 1000} s after the last round: backup, sync (seal), clone, rm of the oldest backups (over ${maxBackups}) and clones (over ${maxClones}), gc.`, '',
    `Throughput = bytes the I/O lane read and wrote per wall-clock minute; per-kind rates are over the time each kind ran.`, '',
    '## Summary', '',
    '| measure | value | bar |', '|---|---|---|',
    `| throughput, last ${window} min / first ${window} min | ${n(tpLast, 1)} / ${n(tpFirst, 1)} MB/s = ${tpRatio?.toFixed(2) ?? 'n/a'} | ≥ 0.9: ${yes(summary.throughput.met)} |`,
    `| sealed reads, last / first | ${n(summary.perKind.sealedReadMBps.last)} / ${n(summary.perKind.sealedReadMBps.first)} MB/s | |`,
    `| sequential writes, last / first | ${n(summary.perKind.seqWriteMBps.last)} / ${n(summary.perKind.seqWriteMBps.first)} MB/s | |`,
    `| 4k random writes, last / first | ${n(summary.perKind.randWriteIops.last)} / ${n(summary.perKind.randWriteIops.first)} IOPS | |`,
    `| daemon RSS (VmRSS), max first half / second half | ${n(summary.rss.firstHalfMax)} / ${n(summary.rss.secondHalfMax)} MiB | bounded (second half ≤ 1.1× first): ${summary.rss.bounded ? 'yes' : 'no'} |`,
    `| open fds, max first half / second half | ${summary.fds.firstHalfMax} / ${summary.fds.secondHalfMax} | bounded (≤ first + 8): ${summary.fds.bounded ? 'yes' : 'no'} |`,
    `| deleted files held open, most fds / MiB | ${maxOf(rows.map(r => r.deletedFdsMax))} / ${n(maxOf(rows.map(r => r.deletedMiBMax)))} MiB | |`,
    `| threads, max first half / second half | ${summary.threads.firstHalfMax} / ${summary.threads.secondHalfMax} | bounded (≤ first + 8): ${summary.threads.bounded ? 'yes' : 'no'} |`,
    `| event-loop delay p99 (the daemon's last 10-20 s at each minute's end), median / worst minute | ${loopInStatus ? `${loopStat(rows, 0.5)} / ${loopStat(rows, 1)} ms` : 'not reported (the status reply has no event-loop figure)'} | |`,
    `| control status round trip, p99 | ${n(summary.statusRoundTripMsP99, 1)} ms | |`,
    `| pool directory (du, without deleted files held open), first / max / last minute | ${n(summary.poolMiB.first)} / ${n(summary.poolMiB.max)} / ${n(summary.poolMiB.last)} MiB | |`,
    `| operations | ${Object.entries(summary.opsTotal).map(([k, v]) => `${k} ${v}`).join(', ')} | |`,
    `| engine writes at the end: inline / through the thread pool / slow inline | ${JSON.stringify(summary.writes)} | |`,
    `| chunk cache at the end | ${JSON.stringify(summary.chunkCache)} | |`,
    `| errors | ${Object.keys(summary.errorCounts).length === 0 ? 'none' : Object.entries(summary.errorCounts).map(([k, v]) => `${k} ${v}`).join(', ')} | |`,
    '', '## Per minute', '',
    '| min | MB/s | seq write MB/s | 4k write IOPS | sealed read MB/s | clone read MB/s | clone 4k write IOPS | sync ms max | gc ms max | VmRSS MiB | status rssBytes MiB | fds | deleted fds / MiB | threads | status ms max | loop p99 ms | loop max ms | pool MiB |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|'
  ]
  for (const r of rows) {
    md.push(`| ${r.minute} | ${n(r.throughputMBps, 1)} | ${n(r.seqWriteMBps)} | ${n(r.randWriteIops)} | ${n(r.sealedReadMBps)} | ${n(r.cloneReadMBps)} | ${n(r.cloneWriteIops)} | ${n(r.syncMsMax)} | ${n(r.gcMsMax)} | ${n(r.vmRssMiBMax)} | ${r.statusRssMiBLast === null ? 'n/a' : n(r.statusRssMiBLast)} | ${r.fdsMax} | ${r.deletedFdsMax} / ${n(r.deletedMiBMax)} | ${r.threadsMax} | ${n(r.statusMsMax, 1)} | ${loopOf(r, 'p99Ms')} | ${loopOf(r, 'maxMs')} | ${n(r.poolMiB)} |`)
  }
  if (errors.length > 0) md.push('', '## Errors (first 50)', '', ...errors.map(e => `- ${n(e.t)} s, ${e.what}: ${e.message.replace(/\n/g, ' ')}`))
  md.push('')
  const dir = path.join(repoRoot, 'bench', 'results')
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(dir, 'soak-latest.json'), JSON.stringify(json, null, 2) + '\n')
  fs.writeFileSync(path.join(dir, 'soak-latest.md'), md.join('\n'))
  process.stdout.write(md.join('\n'))
}

/** A minute's event-loop figure from the status reply's eventLoopDelay, as text. */
function loopOf (row: { loop: Record<string, unknown> | null }, key: 'p99Ms' | 'maxMs'): string {
  const delay = row.loop?.eventLoopDelay as Record<string, number> | undefined
  const value = delay?.[key]
  return typeof value === 'number' ? value.toFixed(1) : 'n/a'
}

/** The event-loop p99 of the minutes at quantile q (0.5: median, 1: worst). */
function loopStat (rows: Array<{ loop: Record<string, unknown> | null }>, q: number): string {
  const values = rows.map(r => (r.loop?.eventLoopDelay as Record<string, number> | undefined)?.p99Ms).filter((v): v is number => typeof v === 'number').sort((a, b) => a - b)
  if (values.length === 0) return 'n/a'
  return values[Math.min(values.length - 1, Math.floor(q * (values.length - 1) + 0.5))].toFixed(1)
}

// ---- main ----

async function main (): Promise<void> {
  log(`work directory ${work}; ${minutes} minutes`)
  spawnSync('bash', ['-c', `tar -cf - /usr 2>/dev/null | head -c ${sourceBytes} > ${source}`])
  fs.truncateSync(source, sourceBytes)
  fs.mkdirSync(mnt, { recursive: true })
  const mounted = spawnSync(cli, ['mount', pool, mnt], { encoding: 'utf8' })
  if (mounted.status !== 0) throw new Error(`mount failed: ${mounted.stderr}`)
  daemonPid = Number(fs.readFileSync(path.join(pool, 'daemon.pid'), 'utf8'))
  log(`daemon pid ${daemonPid}`)
  for (const disk of disks) {
    const ran = await run('dd', [`if=${source}`, `of=${disk}`, 'bs=1M', `count=${diskBytes / MiB}`, 'conv=fsync', 'status=none'])
    if (ran.code !== 0) throw new Error(`filling ${disk}: ${ran.stderr}`)
  }
  for (const disk of disks) {
    const name = `b${serial++}`
    if ((await run(cli, ['backup', disk, name])).code !== 0) throw new Error('first backup failed')
    backups.push({ name, file: path.join(mnt, 'backups', `${name}.img`), sealed: false })
  }
  if ((await run(cli, ['sync', mnt])).code !== 0) throw new Error('first sync failed')
  for (const b of backups) b.sealed = true
  log('pool ready; soaking')
  started = Date.now()
  stopAt = started + minutes * 60000
  let sampling: Promise<void> = Promise.resolve()
  let lastPoolMinute = -1
  const sampler = setInterval(() => {
    sampling = sampling.then(async () => {
      await sample()
      const m = minuteOf(Date.now())
      if (m !== lastPoolMinute) { lastPoolMinute = m; bucket().poolBytes = poolBytes() }
    }).catch(err => { log((err as Error).message); stopAt = 0 })
  }, sampleMs)
  const progress = setInterval(() => {
    const m = minuteData.get(minuteOf(Date.now()) - 1)
    if (m === undefined) return
    const total = Object.values(m.bytes).reduce((a, b) => a + b, 0)
    const s = m.samples.at(-1)
    log(`minute ${m.minute + 1}: ${(total / 60 / 1e6).toFixed(1)} MB/s, RSS ${s?.vmRssMiB.toFixed(0) ?? '?'} MiB, fds ${s?.fds ?? '?'}`)
  }, 60000)
  try {
    await sample()
    await Promise.all([ioLane(), adminLane()])
    await sampling
  } finally {
    clearInterval(sampler)
    clearInterval(progress)
  }
  try { process.kill(daemonPid, 0) } catch { throw new Error(`the daemon (pid ${daemonPid}) died during the soak`) }
  // The daemon's own counters at the end: engine writes inline / through the pool / slow, chunk cache.
  try { finalStats = { ...await call(mnt, 'stats') } } catch (err) { errors.push({ t: elapsedS(), what: 'stats', message: (err as Error).message }) }
  const runMinutes = Math.min(minutes, Math.floor((Date.now() - started) / 60000))
  report(runMinutes)
}

main().then(() => { cleanup(); process.exit(0) }, err => {
  process.stderr.write(`soak failed: ${(err as Error).stack ?? String(err)}\n`)
  if (minuteData.size > 0) { try { report(Math.floor((Date.now() - started) / 60000)) } catch {} }
  cleanup()
  process.exit(1)
})

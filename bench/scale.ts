/**
 * make bench-scale (and part of make bench): issue #21's scale figures, as ratios within one run.
 *
 * A. Many backups of one big sparse disk: a 1 TiB disk; before each backup VDISKFS_BENCH_SCALE_MIB
 *    (default 4) MiB are rewritten as 1 MiB writes at random places (compressible blocks, each unique);
 *    then VDISKFS_BENCH_SCALE_BACKUPS (default 10,000) backups, each asked of the daemon over its control
 *    socket (the CLI's process start would hide the daemon's time). Reported: the backup time per tenth
 *    of the run against the first tenth (issue: within 2x), the map pages and root bytes the catalog
 *    holds per backup (against the pages the writes touched), `vdiskfs ls` and mount times, prune of
 *    half the backups and of ten, each followed by gc (time per backup freed).
 * B. A chain of VDISKFS_BENCH_SCALE_CHAIN (default 1,000) clones: clone of a backup of a clone ..., each
 *    clone rewriting one block; 256 MiB read (dd, caches dropped) at depth 1 and at the end (issue: the
 *    end reads at >= 0.95x of depth 1), alternated, VDISKFS_BENCH_REPS (default 3) times.
 * VDISKFS_BENCH_SCALE_BACKUPS=0 runs B alone, VDISKFS_BENCH_SCALE_CHAIN=0 A alone.
 * Writes bench/results/scale-latest.json and .md (VDISKFS_BENCH_SCALE_NAME: another name than
 * scale-latest, as make bench-scale-10k's scale-10000); the work directory is removed at the end
 * (VDISKFS_BENCH_KEEP=DIR keeps daemon.log and every backup's times there first).
 */
import { execFileSync, spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Database from 'better-sqlite3'
import { call } from '../src/control/client'
import { ddMBps, dropCaches } from './measure'

const repoRoot = path.resolve(__dirname, '..', '..')
const cli = path.join(repoRoot, 'bin', 'vdiskfs')
const workRoot = process.env.VDISKFS_BENCH_DIR ?? path.join(repoRoot, 'bench', 'work')
const backups = Number(process.env.VDISKFS_BENCH_SCALE_BACKUPS ?? 10000)
const chainDepth = Number(process.env.VDISKFS_BENCH_SCALE_CHAIN ?? 1000)
const changedMiB = Number(process.env.VDISKFS_BENCH_SCALE_MIB ?? 4)
const reps = Number(process.env.VDISKFS_BENCH_REPS ?? 3)
const resultName = process.env.VDISKFS_BENCH_SCALE_NAME ?? 'scale-latest'
const diskBytes = 1024 ** 4
const MiB = 1024 ** 2
const blockBytes = 64 * 1024
const readBytes = 256 * MiB

function vdiskfs (...args: string[]): string {
  return execFileSync(cli, args, { encoding: 'utf8', maxBuffer: 256 * MiB })
}

function msOf (work: () => void): number {
  const started = process.hrtime.bigint()
  work()
  return Number(process.hrtime.bigint() - started) / 1e6
}

async function msOfAsync (work: () => Promise<unknown>): Promise<number> {
  const started = process.hrtime.bigint()
  await work()
  return Number(process.hrtime.bigint() - started) / 1e6
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]
}

function medianOrNull (values: number[]): number | null { return values.length === 0 ? null : median(values) }

/** The largest value (0 for none): Math.max(...values) overflows the stack past about 100,000 values. */
function maxOf (values: number[]): number {
  let max = 0
  for (const value of values) if (value > max) max = value
  return max
}

function percentile (values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]
}

/** One MiB of compressible blocks, each unique (its first bytes say which write and block it is). */
function payload (write: number): Buffer {
  const buffer = Buffer.alloc(MiB, `vdiskfs scale bench ${write} `)
  for (let b = 0; b < MiB / blockBytes; b++) buffer.write(`write ${write} block ${b} ${crypto.randomUUID()}`, b * blockBytes)
  return buffer
}

function catalogFacts (pool: string): { pages: number, volumes: number, rootBytes: number, catalogBytes: number, logBytes: number } {
  const db = new Database(path.join(pool, 'catalog.sqlite'), { readonly: true })
  try {
    const pages = (db.prepare('SELECT count(*) AS n FROM pages').get() as { n: number }).n
    // Schema 5 keeps the roots in a table of their own (volumes.root is empty); older catalogs in the rows.
    const hasRoots = db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'roots'").get() !== undefined
    const volumes = db.prepare(hasRoots
      ? 'SELECT count(*) AS n, sum(length(v.root)) + COALESCE((SELECT sum(length(root)) FROM roots), 0) AS bytes FROM volumes v'
      : 'SELECT count(*) AS n, sum(length(root)) AS bytes FROM volumes').get() as { n: number, bytes: number }
    // Schema 6 stores each root as a list (in roots) of pieces shared by content: the pieces count too.
    const hasPieces = db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'root_pieces'").get() !== undefined
    const pieceBytes = hasPieces ? db.prepare('SELECT COALESCE(sum(length(ids)), 0) FROM root_pieces').pluck().get() as number : 0
    const size = (file: string): number => { try { return fs.statSync(path.join(pool, file)).size } catch { return 0 } }
    return { pages, volumes: volumes.n, rootBytes: volumes.bytes + pieceBytes, catalogBytes: size('catalog.sqlite') + size('catalog.sqlite-wal'), logBytes: size('catalog.log') }
  } finally { db.close() }
}

/**
 * Asks the daemon for `op` over its control socket while this process keeps reading 4 KiB of `file`
 * through the mount with O_DIRECT (every read is a FUSE READ the daemon's event loop answers; the
 * kernel caches attributes and pages, so a stat or a buffered read would not reach it): how long the
 * operation took and the worst wait of a read meanwhile ("stat" in the results' names). A walk that
 * holds the event loop shows as a read that waits as long as the walk.
 */
async function whileServing (mnt: string, file: string, op: 'stats' | 'du' | 'info' | 'gc', args: Record<string, unknown> = {}): Promise<{ ms: number, stats: number, statMaxMs: number, statP99Ms: number, result: unknown }> {
  let done = false
  const waits: number[] = []
  const probe = await fs.promises.open(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT)
  const page = Buffer.alloc(4096)
  const statting = (async () => {
    try {
      while (!done) {
        const started = process.hrtime.bigint()
        await probe.read(page, 0, page.length, 0)
        waits.push(Number(process.hrtime.bigint() - started) / 1e6)
      }
    } finally { await probe.close() }
  })()
  const started = process.hrtime.bigint()
  let result: unknown
  try {
    if (op === 'stats') result = await call(mnt, 'stats', {})
    else if (op === 'du') result = await call(mnt, 'du', {})
    else if (op === 'gc') result = await call(mnt, 'gc', {})
    else result = await call(mnt, 'info', args as { kind: 'disk' | 'backup' | 'clone', name: string })
  } finally { done = true }
  const ms = Number(process.hrtime.bigint() - started) / 1e6
  await statting
  return { ms, stats: waits.length, statMaxMs: maxOf(waits), statP99Ms: percentile(waits, 0.99), result }
}

interface Decile { from: number, to: number, medianMs: number, p99Ms: number, maxMs: number, daemonMedianMs: number, phases: Record<string, number>, besideSealing: number, aloneMedianMs: number | null, besideMedianMs: number | null, rssMiB: number | null }

/** The daemon's trace of one backup (ops-core.ts): where its time went (ms), its CPU, a seal pass beside it. */
type Phases = Record<string, number | boolean>
const phaseNames = ['nameMs', 'pauseMs', 'madeMs', 'commitQueuedMs', 'snapshotMs', 'extentsSyncMs', 'logWaitMs', 'logWriteMs', 'logSyncMs', 'catalogMs', 'walSyncMs', 'afterMs', 'cpuMs']

async function scenarioBackups (dir: string): Promise<Record<string, unknown>> {
  const pool = path.join(dir, 'pool-a')
  const mnt = path.join(dir, 'mnt-a')
  fs.mkdirSync(mnt, { recursive: true })
  vdiskfs('mount', pool, mnt)
  let mounted = true
  try {
    const disk = path.join(mnt, 'disks', 'big.img')
    fs.writeFileSync(disk, '')
    fs.truncateSync(disk, diskBytes)
    const fd = fs.openSync(disk, 'r+')
    const touchedPages = new Set<number>()
    const pagesTouchedPer: number[] = []
    const wall: number[] = []
    const daemon: number[] = []
    const phases: Phases[] = []
    /** The daemon's RSS (MiB) after each tenth's last backup. */
    const rssAt = new Map<number, number>()
    const daemonRssMiB = (): number | null => {
      try {
        const pid = Number(fs.readFileSync(path.join(pool, 'daemon.pid'), 'utf8'))
        return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024
      } catch { return null }
    }
    /** When each backup was asked for (ISO), to line the slowest up with daemon.log's lines. */
    const startedAt: string[] = []
    let random = 0x2545f491
    const next = (): number => { random ^= random << 13; random ^= random >>> 17; random ^= random << 5; return (random >>> 0) / 2 ** 32 }
    try {
      for (let i = 0; i < backups; i++) {
        const pagesNow = new Set<number>()
        for (let w = 0; w < changedMiB; w++) {
          const offset = Math.floor(next() * (diskBytes / MiB)) * MiB
          fs.writeSync(fd, payload(i * changedMiB + w), 0, MiB, offset)
          pagesNow.add(Math.floor(offset / blockBytes / 4096))
        }
        for (const p of pagesNow) touchedPages.add(p)
        pagesTouchedPer.push(pagesNow.size)
        const started = process.hrtime.bigint()
        startedAt.push(new Date().toISOString())
        const reply = await call(mnt, 'backup', { sourceKind: 'disk', sourceName: 'big.img', name: `b${i}.img` }) as { elapsedMs: number, phases?: Phases }
        wall.push(Number(process.hrtime.bigint() - started) / 1e6)
        daemon.push(reply.elapsedMs)
        phases.push(reply.phases ?? {})
        if ((i + 1) % Math.max(1, Math.floor(backups / 10)) === 0) { const rss = daemonRssMiB(); if (rss !== null) rssAt.set(i + 1, rss) }
        if ((i + 1) % Math.max(1, Math.floor(backups / 20)) === 0) process.stderr.write(`scale: ${i + 1}/${backups} backups, last ${wall[i].toFixed(1)} ms\n`)
      }
    } finally { fs.closeSync(fd) }
    const deciles: Decile[] = []
    const tenth = Math.max(1, Math.floor(backups / 10))
    for (let from = 0; from < backups; from += tenth) {
      const part = wall.slice(from, from + tenth)
      const traced = phases.slice(from, from + tenth)
      const phaseMedians: Record<string, number> = {}
      for (const name of phaseNames) phaseMedians[name] = median(traced.map(p => Number(p[name] ?? 0)))
      deciles.push({
        from,
        to: from + part.length,
        medianMs: median(part),
        p99Ms: percentile(part, 0.99),
        maxMs: maxOf(part),
        daemonMedianMs: median(daemon.slice(from, from + tenth)),
        phases: phaseMedians,
        besideSealing: traced.filter(p => p.sealing === true).length / Math.max(1, traced.length),
        aloneMedianMs: medianOrNull(daemon.slice(from, from + tenth).filter((_, k) => traced[k]?.sealing === false)),
        besideMedianMs: medianOrNull(daemon.slice(from, from + tenth).filter((_, k) => traced[k]?.sealing === true)),
        rssMiB: rssAt.get(from + part.length) ?? null
      })
    }
    // The trace of the slowest backups (issue #21: six waited 12.8-64 s at 10,000): when each was asked
    // for, and daemon.log's lines about catalog.log rewrites, which run beside the commits now.
    const slowest = wall.map((ms, i) => ({ backup: i + 1, ms, daemonMs: daemon[i], at: startedAt[i], phases: phases[i] })).sort((a, b) => b.ms - a.ms).slice(0, 6)
    // VDISKFS_BENCH_KEEP=DIR: daemon.log and every backup's times (control call, daemon, when asked) kept there.
    if (process.env.VDISKFS_BENCH_KEEP !== undefined) {
      fs.mkdirSync(process.env.VDISKFS_BENCH_KEEP, { recursive: true })
      fs.copyFileSync(path.join(pool, 'daemon.log'), path.join(process.env.VDISKFS_BENCH_KEEP, 'daemon.log'))
      fs.writeFileSync(path.join(process.env.VDISKFS_BENCH_KEEP, 'backups.json'), JSON.stringify(wall.map((ms, i) => ({ ms, daemonMs: daemon[i], at: startedAt[i], phases: phases[i] }))))
    }
    const logRewrites = fs.readFileSync(path.join(pool, 'daemon.log'), 'utf8').split('\n').filter(line => line.includes('catalog.log rewritten') || line.includes('rewriting catalog.log'))
    // The daemon's RSS from /proc (vdiskfs status also computes the space accounting, which walks every
    // volume's map: minutes at 1,000 backups of this disk; see docs/PERFORMANCE.md).
    const daemonPid = Number(fs.readFileSync(path.join(pool, 'daemon.pid'), 'utf8'))
    const rssKib = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${daemonPid}/status`, 'utf8'))?.[1] ?? NaN)
    // status, du and info of the disk, each while stats go through the mount (issue #21: the space
    // accounting behind them held the event loop: minutes at 1,000 backups of this disk).
    process.stderr.write('scale: status, du, info while stat(2)s go through the mount\n')
    const waits = (served: Awaited<ReturnType<typeof whileServing>>): { ms: number, stats: number, statMaxMs: number, statP99Ms: number } =>
      ({ ms: served.ms, stats: served.stats, statMaxMs: served.statMaxMs, statP99Ms: served.statP99Ms })
    const space = {
      status: waits(await whileServing(mnt, disk, 'stats')),
      du: waits(await whileServing(mnt, disk, 'du')),
      info: waits(await whileServing(mnt, disk, 'info', { kind: 'disk', name: 'big.img' })),
      statusAfterDu: waits(await whileServing(mnt, disk, 'stats'))
    }
    const lsMs = msOf(() => vdiskfs('ls', mnt, '--json'))
    const lsKernelMs = msOf(() => { fs.readdirSync(path.join(mnt, 'backups')).slice(0, 1) })
    const statAllMs = msOf(() => { for (const name of fs.readdirSync(path.join(mnt, 'backups'))) fs.statSync(path.join(mnt, 'backups', name)) })
    const umountMs = msOf(() => vdiskfs('umount', mnt))
    mounted = false
    const facts = catalogFacts(pool)
    const mountMs = msOf(() => vdiskfs('mount', pool, mnt))
    mounted = true
    const firstLsMs = msOf(() => vdiskfs('ls', mnt, '--json'))
    // Prune half, gc; then ten more, gc: time per backup freed.
    const prune = (keep: number): { ms: number, removed: number } => {
      let out = ''
      const ms = msOf(() => { out = vdiskfs('prune', mnt, '--keep-last', String(keep), '--json') })
      const removed = (JSON.parse(out) as { backups: Array<{ removed: boolean }> }).backups.filter(b => b.removed).length
      return { ms, removed }
    }
    // Each gc over the control socket while O_DIRECT reads go through the mount (issue #21: gc's mark
    // held the event loop for seconds at 300 backups).
    const gc = async (): Promise<{ ms: number, pagesFreed: number, extentsFreed: number, chunksFreed: number, phaseMs: unknown, stats: number, statMaxMs: number, statP99Ms: number }> => {
      const served = await whileServing(mnt, disk, 'gc')
      const report = served.result as { pagesFreed: number, extentsFreed: number, chunksFreed: number, phaseMs?: unknown }
      return { ms: served.ms, pagesFreed: report.pagesFreed, extentsFreed: report.extentsFreed, chunksFreed: report.chunksFreed, phaseMs: report.phaseMs ?? null, stats: served.stats, statMaxMs: served.statMaxMs, statP99Ms: served.statP99Ms }
    }
    const syncMs = msOf(() => vdiskfs('sync', mnt))
    const gcBefore = await gc()
    const pruneHalf = prune(Math.ceil(backups / 2))
    const gcHalf = await gc()
    const pruneTen = prune(Math.max(1, Math.ceil(backups / 2) - 10))
    const gcTen = await gc()
    vdiskfs('umount', mnt)
    mounted = false
    const afterPrune = catalogFacts(pool)
    return {
      backups,
      changedMiB,
      backupMs: { first: wall[0], median: median(wall), p99: percentile(wall, 0.99), max: maxOf(wall) },
      daemonBackupMs: { first: daemon[0], median: median(daemon), max: maxOf(daemon) },
      deciles,
      slowest,
      logRewrites,
      lastTenthOverFirst: deciles[deciles.length - 1].medianMs / deciles[0].medianMs,
      worstTenthOverFirst: Math.max(...deciles.map(d => d.medianMs)) / deciles[0].medianMs,
      pagesTouchedPerBackup: pagesTouchedPer.reduce((a, b) => a + b, 0) / backups,
      distinctPagesTouched: touchedPages.size,
      catalog: facts,
      pagesPerBackup: facts.pages / backups,
      rootBytesPerBackup: facts.rootBytes / facts.volumes,
      catalogBytesPerBackup: facts.catalogBytes / backups,
      logBytesPerBackup: facts.logBytes / backups,
      // What each backup's commit appended to catalog.log (its trace), and of it what was not map pages
      // (a page's record is 33,836 bytes): the rows with their roots (two dense roots before schema 6).
      logAppendedPerBackup: {
        median: median(phases.map(p => Number(p.logBytes ?? 0))),
        besidePagesMedian: median(phases.map(p => Number(p.logBytes ?? 0) - 33836 * Number(p.pages ?? 0)))
      },
      daemonRssBytes: Number.isNaN(rssKib) ? null : rssKib * 1024,
      space,
      lsMs,
      readdirMs: lsKernelMs,
      statAllMs,
      umountMs,
      mountMs,
      firstLsAfterMountMs: firstLsMs,
      syncMs,
      gcBefore,
      pruneHalf,
      gcHalf,
      pruneTen,
      gcTen,
      afterPrune
    }
  } finally {
    if (mounted) spawnSync(cli, ['umount', mnt], { stdio: 'inherit' })
  }
}

async function scenarioChain (dir: string): Promise<Record<string, unknown>> {
  const pool = path.join(dir, 'pool-b')
  const mnt = path.join(dir, 'mnt-b')
  fs.mkdirSync(mnt, { recursive: true })
  vdiskfs('mount', pool, mnt)
  try {
    const disk = path.join(mnt, 'disks', 'base.img')
    fs.writeFileSync(disk, '')
    fs.truncateSync(disk, 4 * 1024 ** 3)
    const fd = fs.openSync(disk, 'r+')
    try { for (let off = 0; off < readBytes; off += MiB) fs.writeSync(fd, crypto.randomBytes(MiB), 0, MiB, off) } finally { fs.closeSync(fd) }
    vdiskfs('sync', mnt)
    let source: { sourceKind: 'disk' | 'clone', sourceName: string } = { sourceKind: 'disk', sourceName: 'base.img' }
    const depthMs: number[] = []
    const clonePath = (depth: number): string => path.join(mnt, 'clones', `c${depth}.img`)
    for (let depth = 1; depth <= chainDepth; depth++) {
      const started = process.hrtime.bigint()
      await call(mnt, 'backup', { ...source, name: `chain${depth}.img` })
      await call(mnt, 'clone', { sourceKind: 'backup', sourceName: `chain${depth}.img`, name: `c${depth}.img` })
      depthMs.push(Number(process.hrtime.bigint() - started) / 1e6)
      // Each clone rewrites one block (beyond the read range), so every level has a page of its own.
      const cfd = fs.openSync(clonePath(depth), 'r+')
      try { fs.writeSync(cfd, Buffer.alloc(blockBytes, depth % 251), 0, blockBytes, readBytes + (depth % 1024) * blockBytes) } finally { fs.closeSync(cfd) }
      source = { sourceKind: 'clone', sourceName: `c${depth}.img` }
      if (depth % Math.max(1, Math.floor(chainDepth / 10)) === 0) process.stderr.write(`scale: chain depth ${depth}/${chainDepth}\n`)
    }
    vdiskfs('sync', mnt)
    const read = (file: string): number => { dropCaches(); return ddMBps([`if=${file}`, 'of=/dev/null', `count=${readBytes / MiB}`]) }
    const shallow: number[] = []
    const deep: number[] = []
    for (let rep = 0; rep < reps; rep++) {
      shallow.push(read(clonePath(1)))
      deep.push(read(clonePath(chainDepth)))
    }
    const same = execFileSync('cmp', ['-n', String(readBytes), clonePath(1), clonePath(chainDepth)], { encoding: 'utf8' }) === ''
    return {
      depth: chainDepth,
      backupPlusCloneMs: { first: depthMs[0], median: median(depthMs), last: depthMs[depthMs.length - 1], max: Math.max(...depthMs) },
      readDepth1MBps: median(shallow),
      readDeepMBps: median(deep),
      deepOverShallow: median(deep) / median(shallow),
      runs: { shallow, deep },
      sameBytes: same
    }
  } finally {
    spawnSync(cli, ['umount', mnt], { stdio: 'inherit' })
  }
}

function table (results: Record<string, any>): string {
  const a = results.backups
  const b = results.chain
  const f = (n: number, digits = 1): string => n.toFixed(digits)
  /** gc's own split of its time, when the daemon reports it (mark with its commit / sweep / compaction). */
  const split = (gc: { phaseMs: { mark: number, sweep: number, compact: number } | null }): string =>
    gc.phaseMs === null ? '' : ` (mark ${f(gc.phaseMs.mark, 0)}, sweep ${f(gc.phaseMs.sweep, 0)}, compaction ${f(gc.phaseMs.compact, 0)})`
  const lines = [
    '# Scale (issue #21)',
    '',
    `${os.cpus().length} cores; load average at start ${results.loadStart.map((n: number) => n.toFixed(2)).join(' ')}, at end ${results.loadEnd.map((n: number) => n.toFixed(2)).join(' ')}. ` +
      'Ratios are within this run; the machine is shared, so absolute times are noisy.',
    ''
  ]
  if (a !== undefined) lines.push(
    `## A. ${a.backups} backups of one 1 TiB sparse disk, ${a.changedMiB} MiB rewritten (1 MiB writes at random places) before each`,
    '',
    '| backups | median ms | p99 ms | max ms | daemon median ms | median / first tenth |',
    '|---|---|---|---|---|---|',
    ...a.deciles.map((d: Decile) => `| ${d.from + 1}-${d.to} | ${f(d.medianMs)} | ${f(d.p99Ms)} | ${f(d.maxMs)} | ${f(d.daemonMedianMs)} | ${f(d.medianMs / a.deciles[0].medianMs, 2)} |`),
    '',
    'Where the daemon\'s time went, median per tenth (ms; its trace of each backup, ops-core.ts): the name\'s lock, draining the disk\'s writes, ' +
      'waiting for the commit before, the commit\'s snapshot step, the extents\' fdatasync, catalog.log (waiting for it, writing, fdatasync), ' +
      'the SQLite transaction; the process\'s CPU over the backup (every thread); the share of backups a seal pass ran beside; the daemon\'s RSS at the tenth\'s end.',
    '',
    '| backups | name | pause | commit queued | snapshot | extents sync | log wait | log write | log sync | catalog | cpu | beside sealing | daemon median alone / beside a seal pass | RSS MiB |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
    ...a.deciles.map((d: Decile) => d.phases === undefined ? '' : `| ${d.from + 1}-${d.to} | ${['nameMs', 'pauseMs', 'commitQueuedMs', 'snapshotMs', 'extentsSyncMs', 'logWaitMs', 'logWriteMs', 'logSyncMs', 'catalogMs', 'cpuMs'].map(n => f(d.phases[n])).join(' | ')} | ${f(d.besideSealing * 100, 0)}% | ${d.aloneMedianMs === null ? '-' : f(d.aloneMedianMs)} / ${d.besideMedianMs === null ? '-' : f(d.besideMedianMs)} | ${d.rssMiB === null ? '?' : f(d.rssMiB, 0)} |`),
    '',
    '| figure | value |',
    '|---|---|',
    `| the six slowest backups (ms, control call / daemon; when asked) | ${a.slowest.map((w: { backup: number, ms: number, daemonMs: number, at: string }) => `#${w.backup} ${f(w.ms)} / ${f(w.daemonMs)} at ${w.at.slice(11, 19)}`).join('; ')} |`,
    `| catalog.log rewrites (daemon.log; beside the commits) | ${a.logRewrites.length}${a.logRewrites.length > 0 ? `: ${a.logRewrites.map((l: string) => l.replace(/^.*rewritten beside the commits: /, '')).slice(-3).join('; ')} (the last three)` : ''} |`,
    `| first backup (control call, ms) | ${f(a.backupMs.first)} |`,
    `| worst tenth's median / first tenth's | ${f(a.worstTenthOverFirst, 2)} (issue: <= 2) |`,
    `| map pages the writes touched per backup | ${f(a.pagesTouchedPerBackup, 2)} |`,
    `| map pages in the catalog per backup | ${f(a.pagesPerBackup, 2)} |`,
    `| map root bytes per volume (lists and pieces since schema 6) | ${f(a.rootBytesPerBackup, 0)} |`,
    `| catalog.sqlite (+ WAL) bytes per backup | ${f(a.catalogBytesPerBackup, 0)} |`,
    `| catalog.log bytes per backup | ${f(a.logBytesPerBackup, 0)} |`,
    `| catalog.log bytes a backup's commit appends, median; of them besides map pages | ${a.logAppendedPerBackup === undefined ? '?' : `${f(a.logAppendedPerBackup.median, 0)}; ${f(a.logAppendedPerBackup.besidePagesMedian, 0)}`} |`,
    `| daemon RSS after the backups (MiB) | ${a.daemonRssBytes === null ? '?' : f(a.daemonRssBytes / MiB, 0)} |`,
    ...['status', 'du', 'info', 'statusAfterDu'].map(op => {
      const s = a.space[op]
      const name = op === 'statusAfterDu' ? 'status again, after du' : op === 'info' ? 'info of the disk' : op
      return `| ${name} over the control socket (ms); stat(2)s through the mount meanwhile: count, p99 / max wait (ms) | ${f(s.ms)}; ${s.stats}, ${f(s.statP99Ms)} / ${f(s.statMaxMs)} |`
    }),
    `| vdiskfs ls --json (ms) | ${f(a.lsMs)} |`,
    `| stat of every backup through the mount (ms) | ${f(a.statAllMs)} |`,
    `| umount (ms) | ${f(a.umountMs)} |`,
    `| mount (ms) | ${f(a.mountMs)} |`,
    `| first ls after mount (ms) | ${f(a.firstLsAfterMountMs)} |`,
    `| sync (seal what is left, ms) | ${f(a.syncMs)} |`,
    `| gc before any prune (ms; pages freed; reads through the mount meanwhile: count, p99 / max wait ms) | ${f(a.gcBefore.ms)}${split(a.gcBefore)}; ${a.gcBefore.pagesFreed}; ${a.gcBefore.stats}, ${f(a.gcBefore.statP99Ms)} / ${f(a.gcBefore.statMaxMs)} |`,
    `| prune of ${a.pruneHalf.removed} backups (ms; per backup) | ${f(a.pruneHalf.ms)}; ${f(a.pruneHalf.ms / Math.max(1, a.pruneHalf.removed), 2)} |`,
    `| gc after it (ms; pages, extents, chunks freed; reads meanwhile: count, p99 / max wait ms) | ${f(a.gcHalf.ms)}${split(a.gcHalf)}; ${a.gcHalf.pagesFreed}, ${a.gcHalf.extentsFreed}, ${a.gcHalf.chunksFreed}; ${a.gcHalf.stats}, ${f(a.gcHalf.statP99Ms)} / ${f(a.gcHalf.statMaxMs)} |`,
    `| prune of ${a.pruneTen.removed} backups (ms; per backup) | ${f(a.pruneTen.ms)}; ${f(a.pruneTen.ms / Math.max(1, a.pruneTen.removed), 2)} |`,
    `| gc after it (ms; pages, extents, chunks freed; reads meanwhile: count, p99 / max wait ms) | ${f(a.gcTen.ms)}${split(a.gcTen)}; ${a.gcTen.pagesFreed}, ${a.gcTen.extentsFreed}, ${a.gcTen.chunksFreed}; ${a.gcTen.stats}, ${f(a.gcTen.statP99Ms)} / ${f(a.gcTen.statMaxMs)} |`,
    ''
  )
  if (b === undefined) return lines.join('\n')
  lines.push(
    `## B. A chain of ${b.depth} clones (clone of a backup of a clone ...)`,
    '',
    '| figure | value |',
    '|---|---|',
    `| backup + clone at depth 1 (ms) | ${f(b.backupPlusCloneMs.first)} |`,
    `| backup + clone, median / last (ms) | ${f(b.backupPlusCloneMs.median)} / ${f(b.backupPlusCloneMs.last)} |`,
    `| 256 MiB read at depth 1 (MB/s, median of ${reps}) | ${f(b.readDepth1MBps)} |`,
    `| 256 MiB read at depth ${b.depth} (MB/s, median of ${reps}) | ${f(b.readDeepMBps)} |`,
    `| depth ${b.depth} / depth 1 | ${f(b.deepOverShallow, 2)} (issue: >= 0.95) |`,
    `| the two read the same bytes | ${b.sameBytes ? 'yes' : 'NO'} |`,
    ''
  )
  return lines.join('\n')
}

async function main (): Promise<void> {
  fs.mkdirSync(workRoot, { recursive: true })
  const dir = fs.mkdtempSync(path.join(workRoot, 'scale-'))
  const loadStart = os.loadavg()
  try {
    const results: Record<string, unknown> = { loadStart }
    if (backups > 0) results.backups = await scenarioBackups(dir)
    if (chainDepth > 0) results.chain = await scenarioChain(dir)
    results.loadEnd = os.loadavg()
    const out = path.join(repoRoot, 'bench', 'results')
    fs.mkdirSync(out, { recursive: true })
    fs.writeFileSync(path.join(out, `${resultName}.json`), JSON.stringify(results, null, 2) + '\n')
    const md = table(results)
    fs.writeFileSync(path.join(out, `${resultName}.md`), md)
    process.stdout.write(md)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

main().catch(err => { process.stderr.write(`${(err as Error).stack ?? String(err)}\n`); process.exitCode = 1 })

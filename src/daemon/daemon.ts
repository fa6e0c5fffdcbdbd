/**
 * The daemon: owns one pool, serves it through FUSE at a mountpoint and answers the control socket.
 *
 * Lifecycle: open the pool (taking its lock), collect garbage left by a crash, mount, report ready.
 * It stops cleanly (commit, unmount, close) on SIGINT/SIGTERM, on `vdiskfs umount`, and when somebody
 * unmounts it from outside (fusermount3 -u), which JavaScript is not told about: a watcher polls
 * /proc/self/mountinfo. Between fsyncs it commits every commitIntervalMs, like ext4's commit=5.
 *
 * It logs one line per event (daemon-log.ts: stderr under -f, else daemon.log, rotated) and measures
 * every FUSE request, the event loop and its background jobs for `vdiskfs status` (metrics.ts).
 *
 * It spawns no long-lived child: the /dev/fuse descriptor is inherited across exec, and a child
 * holding it would make a killed daemon's mount hang instead of failing.
 */
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { commitPressure } from './commit-pressure'
import { GcSchedule } from './gc-schedule'
import { startMemoryTrims } from './memory-trim'
import { commitIntervalMs, commitPressureCheckMs, gcIntervalMs, mountWatchIntervalMs, operationCountIntervalMs, readAheadKibibytes, writebackCheckMs } from '../limits'
import { Pool } from '../volume/pool'
import { SpaceAccounting } from '../inspect/space'
import { createLowLevelOperations, invalidationsOf, volumeInodeBase } from '../fuse/fuse3-ops'
import { FastReads } from '../fuse/fast-reads'
import { Fuse3Transport, fuse3HolderPath, loadFuse3Native } from '../fuse/fuse3-transport'
import { controlHandlers, startControlServer } from './server/server'
import { checkControlDir, socketPathFor } from '../control/protocol'
import { daemonLogFile, daemonPidFile, fuseHandlesFile } from '../format/pool-format'
import { checkFuse3Helper, checkFuseAvailable, checkMountpoint, checkMountpointKept, checkPoolApart, checkUnprivilegedMount } from './preflight'
import { mounts } from '../io/mountinfo'
import { VdiskError, corrupt } from '../errors'
import { version } from '../version'
import { Sealer } from '../seal/sealer'
import { DaemonLog } from './daemon-log'
import { DaemonMetrics } from './metrics'
import { HandlerTable } from './server/handler'
import { Operation, OperationSpec, operations as controlOperations } from '../control/operations'

export interface DaemonOptions {
  pool: string
  mountpoint: string
  blockBytes?: number
  /** Serve the user.vdiskfs.* xattrs, at the cost of a round trip before every write (see fuse/fuse3-ops.ts). */
  xattrs?: boolean
  /** Log to the pool's daemon.log instead of stderr (background mode). */
  logToFile: boolean
  /**
   * Let other users reach the mount (FUSE's allow_other; a non-root user needs user_allow_other in
   * /etc/fuse.conf). Without it only the user who mounted it gets in. Either way the kernel checks each
   * image's owner and mode (default_permissions).
   */
  allowOther?: boolean
  /**
   * Take over a FUSE 3 mount whose daemon died: its /dev/fuse descriptor, passed by the holder
   * (native/fuse3/vdiskfs_holder.c) as this fd. The mount is there already, so the mountpoint is not
   * checked nor touched (a call on it would wait for this very daemon).
   */
  takeoverFd?: number
  /** With takeoverFd: the socket to the notifier the holder forked for this daemon (docs/TRANSPORT.md). */
  notifyFd?: number
  /** Called once the mount answers. */
  onReady: () => void
}

/**
 * Serves a pool at a mountpoint until it is unmounted or told to stop, in steps: the checks before
 * anything is made (preflight), the pool opened and brought to a clean state (openForServing), the
 * mount made or taken over with its holder (mount), the control socket (startControlServer) and the
 * background work (startBackground); stop() undoes them in order.
 */
type LowLevelOperations = ReturnType<typeof createLowLevelOperations>

export async function runDaemon (options: DaemonOptions): Promise<void> {
  const { mountpoint, takeover } = preflight(options)
  // stderr until the pool is open; then daemon.log in the background (daemon-log.ts).
  const daemonLog = new DaemonLog()
  const log = daemonLog.line
  const { pool, space, operations, holder, fast } = await openForServing(options, takeover, daemonLog)
  const sealer = new Sealer(pool, log)
  const metrics = new DaemonMetrics()
  metrics.measureOperations(operations)
  if (process.env.VDISKFS_COUNT_OPS === '1') logOperationCounts(metrics, log)
  const { fuse, holderPid } = await mount(options, mountpoint, takeover, holder, pool, operations, log)
  raiseLoopPriority(metrics, log)

  // What changes behind the kernel's back (rename, rm, promote, restore) is dropped from its caches,
  // and a control command that changed something replies once the kernel took it. Not what the kernel
  // asked for itself: its caches follow, and a notification about a name waits for the directory's lock,
  // which the rename or unlink holds until its reply (a daemon killed in between would leave that
  // notifying thread stuck in the kernel, and the process never fully gone: docs/TRANSPORT.md).
  pool.onChange(change => { if (!change.byKernel) fuse.invalidate(invalidationsOf(change)) })
  // READs served in the addon's threads (docs/FASTPATH.md); a volume removed is forgotten there.
  fuse.serveFastReads(fast)
  pool.onChange(change => { if (pool.byId(change.volume.id) !== change.volume) fast.forget(change.volume) })
  let stopping: Promise<void> | null = null
  const socketPath = socketPathFor(mountpoint)
  const server = startControlServer(socketPath, afterInvalidation(fuse, fast, controlHandlers({
    pool,
    space,
    sealer,
    log,
    metrics,
    recentErrors: () => daemonLog.errors,
    status: () => ({
      pid: process.pid, pool: pool.dir, mountpoint, version, blockBytes: pool.blockBytes, xattrs: options.xattrs === true,
      rssBytes: process.memoryUsage.rss(),
      // What INIT negotiated and the request sizes the kernel sent (docs/TRANSPORT.md).
      fuse3: fuse.stats(),
      // Cheap (no walk): bench/soak.ts samples it from here every few seconds; vdiskfs status has the rest.
      eventLoopDelay: metrics.eventLoopReport()
    })
  })), log)

  sealer.start()
  const timers = startBackground(pool, metrics, fast, log)
  const watchTimer = setInterval(() => {
    mounts().then(list => {
      if (!list.some(m => m.mountpoint === mountpoint)) void stop('unmounted from outside', false)
    }, () => {})
  }, mountWatchIntervalMs)

  async function stop (reason: string, unmount: boolean): Promise<void> {
    if (stopping !== null) return await stopping
    stopping = (async () => {
      daemonLog.stopping()
      log(`stopping: ${reason}`)
      // A clean stop: the holder must not start another daemon.
      if (holderPid.pid !== null) { try { process.kill(holderPid.pid, 'SIGTERM') } catch {} }
      metrics.stop()
      for (const timer of timers) clearInterval(timer)
      sealer.stop()
      clearInterval(watchTimer)
      server.close()
      fs.rmSync(socketPath, { force: true })
      try { await pool.commit() } catch (err) { log(`final commit failed: ${(err as Error).message}`) }
      if (unmount) await new Promise<void>(resolve => fuse.unmount(() => resolve()))
      await pool.close().catch(err => log(`close failed: ${(err as Error).message}`))
      fs.rmSync(path.join(pool.dir, daemonPidFile), { force: true })
      log('stopped')
      process.exit(0)
    })()
    return await stopping
  }
  process.on('SIGINT', () => { void stop('SIGINT', true) })
  process.on('SIGTERM', () => { void stop('SIGTERM', true) })
  process.on('SIGHUP', () => {})
  // A bug must not vanish with the background daemon's discarded stderr: log it, then stop as Node would.
  process.on('uncaughtException', err => { log(`bug: ${err?.stack ?? String(err)}`); process.exitCode = 1; void stop('a bug (see the line above)', true) })
  process.on('unhandledRejection', err => { log(`bug: unhandled rejection: ${(err as Error)?.stack ?? String(err)}`) })
  options.onReady()
}

/** The checks made before anything is created or mounted; returns the mountpoint to use. */
function preflight (options: DaemonOptions): { mountpoint: string, takeover: boolean } {
  // The real path: the kernel mounts there, and the unmount watcher and the control socket's name
  // must agree with it (a symbolic link in /tmp would otherwise leave a dead mount behind).
  // A takeover's mountpoint is the real path the first daemon resolved (and a look at it now would wait
  // for this daemon, which does not serve yet).
  const takeover = options.takeoverFd !== undefined
  let mountpoint = path.resolve(options.mountpoint)
  if (!takeover) try { mountpoint = fs.realpathSync(mountpoint) } catch {}
  // Everything the daemon creates in the pool (catalog, WAL, extents, packs, log, pid) is its owner's
  // alone, whatever umask it was started with; Pool.open tightens the directory itself.
  process.umask(0o077)
  checkFuseAvailable()
  if (!takeover) {
    checkMountpoint(mountpoint)
    checkPoolApart(options.pool, mountpoint)
    checkUnprivilegedMount(mountpoint, options.allowOther === true)
    checkFuse3Helper()
  }
  // Before mounting: a control directory we may not use must not leave a mount behind.
  checkControlDir(path.dirname(socketPathFor(mountpoint)), true)
  return { mountpoint, takeover }
}


/** The control handlers, each after the addon's first writes were taken into the maps, and replying once the kernel has taken the invalidations its change asked for (stream operations as they are). */
function afterInvalidation (fuse: Fuse3Transport, fast: FastReads, handlers: HandlerTable): HandlerTable {
  const wrapped: Record<string, unknown> = {}
  for (const [op, handler] of Object.entries(handlers)) {
    // Every command first takes the addon's first writes into the maps (what it reports or changes
    // includes every WRITE answered before it: fast-reads.ts settle()).
    if ((controlOperations[op as Operation] as OperationSpec).stream === true) {
      const stream = handler as (...args: unknown[]) => Promise<unknown>
      wrapped[op] = async (...args: unknown[]) => { fast.settle(); return await stream(...args) }
      continue
    }
    const plain = handler as (args: unknown) => Promise<unknown>
    wrapped[op] = async (args: unknown) => {
      fast.settle()
      try { return await plain(args) } finally { await fuse.invalidated() }
    }
  }
  return wrapped as HandlerTable
}

/**
 * Opens the pool and brings it to a state fit to serve: a catalog that does not match catalog.log is
 * refused; volumes removed while open before a crash dropped, suspect sectors' checksums recomputed,
 * the replayed change journal committed, what an earlier run left collected. The FUSE operations are
 * made before that (after a takeover they restore the handles the kernel still uses, and a volume
 * removed while open stays for its holders).
 */
async function openForServing (options: DaemonOptions, takeover: boolean, daemonLog: DaemonLog): Promise<{ pool: Pool, space: SpaceAccounting, operations: LowLevelOperations, holder: boolean, fast: FastReads }> {
  const log = daemonLog.line
  const pool = Pool.open(options.pool, { create: true, blockBytes: options.blockBytes, log, warmWorkers: true })
  if (pool.inspection.catalogLogDetached) {
    // Serving this catalog would start a second history (volume, page and epoch numbers) over the one
    // catalog.log holds, and make the loss permanent.
    await pool.close()
    throw corrupt(`${pool.dir}: the catalog does not match catalog.log (it was truncated, rebuilt or replaced): run vdiskfs repair on the pool, which restores what the log holds`)
  }
  if (options.logToFile) daemonLog.toFile(path.join(pool.dir, daemonLogFile))
  const space = new SpaceAccounting(pool)
  if (pool.uncleanStopFound) log('start: the last run of this pool did not stop cleanly (its daemon was killed, or the host crashed)')
  // The mount outlives this daemon when a holder keeps its descriptor (a user's mount too: the session's
  // descriptor is the one fusermount3 passed back). VDISKFS_HOLDER=0 mounts without one.
  const holder = process.env.VDISKFS_HOLDER !== '0'
  // Before dropHidden: after a takeover the operations restore the handles the kernel still uses, and a
  // volume removed while open stays for its holders.
  const fast = new FastReads(pool.fastReadSource(), volume => volume.id + volumeInodeBase)
  const operations = createLowLevelOperations({ pool, space, log, xattrs: options.xattrs, handlesFile: holder ? path.join(pool.dir, fuseHandlesFile) : undefined, takeover, fast })
  const dropped = await pool.dropHidden()
  if (dropped.length > 0) log(`start: dropped ${dropped.length} volumes removed while open before a crash (${dropped.join(', ')})`)
  const recovered = await pool.recover()
  if (recovered > 0) log(`start: recomputed the checksums of ${recovered} sectors written after the last commit of an unclean stop`)
  // What the change journal brought back (Pool.open replayed it) is committed before anything is served.
  if (pool.replayedChanges > 0) await pool.commit()
  // After an unclean stop, what the last run left half done (pages of a commit nobody points at,
  // extents sealed but not dropped) is freed before serving. After a clean one, the gc walk (every
  // distinct map page: seconds with thousands of backups) is not run before serving: what is left to
  // free is only space, and the background gc takes it once gcIntervalMs have passed (issue #21).
  if (pool.uncleanStopFound) {
    const collected = await pool.gc()
    if (collected.pagesFreed + collected.extentsFreed > 0) log(`start: freed ${collected.pagesFreed} map pages and ${collected.extentsFreed} extents left by an earlier run`)
  }
  fs.writeFileSync(path.join(pool.dir, daemonPidFile), `${process.pid}\n`, { mode: 0o600 })
  return { pool, space, operations, holder, fast }
}

/**
 * Mounts the pool (or takes the mount over) and starts its holder; closes the pool when the mount
 * fails. Returns the transport and the holder's pid (null: none, or stopped once the change journal
 * failed: a takeover would then lose the changes since the last commit, so a death of this daemon
 * ends the mount instead, with ENOTCONN, no silent loss).
 */
async function mount (options: DaemonOptions, mountpoint: string, takeover: boolean, holder: boolean, pool: Pool, operations: LowLevelOperations, log: (message: string) => void): Promise<{ fuse: Fuse3Transport, holderPid: { pid: number | null } }> {
  // The pool's path, as an fstab line names it: `mount -a` then sees the line mounted already and
  // skips it (with `vdiskfs:POOL` it tried again and failed with "already mounted").
  const fsname = pool.dir.replace(/,/g, '_')
  // Last, right before the mount (the pool's own refusals come first).
  if (!takeover) try { checkMountpointKept(mountpoint) } catch (err) { await pool.close(); throw err }
  let fuse: Fuse3Transport
  try {
    // The kernel checks permissions against the owner and mode each image keeps in the catalog.
    fuse = new Fuse3Transport(mountpoint, operations, { fsname, subtype: 'vdiskfs', defaultPermissions: true, allowOther: options.allowOther === true, log, takeoverFd: options.takeoverFd, notifyFd: options.notifyFd, shareFd: holder })
  } catch (err) {
    await pool.close()
    throw new VdiskError('INVALID', (err as Error).message, { cause: err })
  }
  try {
    await new Promise<void>((resolve, reject) => fuse.mount(err => { if (err === null || err === undefined) resolve(); else reject(err) }))
  } catch (err) {
    await pool.close()
    throw new VdiskError('IO', `mounting ${mountpoint} failed: ${(err as Error).message}`, { cause: err })
  }
  log(`${takeover ? 'took over the mount of' : 'mounted'} ${pool.dir} at ${mountpoint} (pid ${process.pid}, block size ${pool.blockBytes}, xattrs ${options.xattrs === true ? 'on' : 'off'})`)
  // The holder: the one that started this daemon after a takeover, else a new one.
  const holderPid: { pid: number | null } = { pid: null }
  if (takeover) {
    holderPid.pid = process.ppid
    const resend = fuse.stats()?.resendResult
    log(`takeover: the daemon before this one stopped without unmounting; the holder (pid ${holderPid.pid}) kept the mount; ` +
      (resend === 0 ? 'the kernel resends the requests it had not answered' : `FUSE_NOTIFY_RESEND failed (errno ${String(resend)}): requests it had read are lost`))
  } else {
    await tuneReadAhead(mountpoint, log)
    if (holder) holderPid.pid = startHolder(fuse, pool.dir, mountpoint, options, log)
  }
  pool.onJournalFailure(() => {
    if (holderPid.pid === null) return
    log(`stopping the holder (pid ${holderPid.pid}): the mount now ends with this daemon`)
    try { process.kill(holderPid.pid, 'SIGTERM') } catch {}
    holderPid.pid = null
  })
  return { fuse, holderPid }
}

/** The background work besides sealing: gc after changes, and a commit every commitIntervalMs. Returns the timers. */
function startBackground (pool: Pool, metrics: DaemonMetrics, fast: FastReads, log: (message: string) => void): NodeJS.Timeout[] {
  // The first background gc comes gcIntervalMs after start, changed or not, when start did not run one;
  // then one at a time, resting after each (gc-schedule.ts).
  const schedule = new GcSchedule(pool.uncleanStopFound ? pool.generation : -1)
  const gcTimer = setInterval(() => {
    const startedMs = Date.now()
    if (!schedule.start(startedMs, pool.generation)) return
    metrics.job('gc', async () => await pool.gc()).then(report => {
      if (report.chunksFreed + report.extentsFreed + report.pagesFreed > 0) log(`background gc: ${JSON.stringify(report)}`)
    }, err => log(`background gc failed: ${(err as Error).message}`)).finally(() => schedule.ended(startedMs, Date.now()))
  }, gcIntervalMs)
  const commitTimer = setInterval(() => {
    // Volumes the fast path wrote natively: their mtime and row (their extents count as changes already).
    fast.collectWrites()
    if (pool.hasUncommittedChanges) pool.commit().catch(err => log(`periodic commit failed: ${(err as Error).message}`))
  }, commitIntervalMs)
  // Many dirty map pages: a commit now, not at the interval (commit-pressure.ts).
  const pressure = commitPressure(pool, { settle: () => fast.settle(), collectWrites: () => fast.collectWrites(), log })
  const pressureTimer = setInterval(() => { void pressure() }, commitPressureCheckMs)
  // Overwrites' writeback started before the commit's fdatasync (FastReads.startWriteback).
  const writebackTimer = setInterval(() => fast.startWriteback(), writebackCheckMs)
  // The C heap's free pages back to the system after commits (memory-trim.ts).
  const trimTimer = startMemoryTrims(loadFuse3Native(), () => pool.commitStats().commits)
  return [commitTimer, gcTimer, pressureTimer, writebackTimer, trimTimer]
}

/**
 * Starts the holder (native/fuse3/vdiskfs_holder.c): detached, with the mount's /dev/fuse descriptor as
 * its fd 3 and the command that takes the mount over (this daemon's options, --takeover-fd 3). Its
 * lines go to daemon.log. Returns its pid, or null when it could not start (logged; the mount then
 * ends with this daemon).
 */
function startHolder (fuse: Fuse3Transport, poolDir: string, mountpoint: string, options: DaemonOptions, log: (message: string) => void): number | null {
  const fd = fuse.fd()
  if (fd < 0 || !fs.existsSync(fuse3HolderPath)) {
    log(`no holder: ${fd < 0 ? 'the session has no descriptor' : `${fuse3HolderPath} is missing (make native)`}; the mount ends with this daemon`)
    return null
  }
  const restart = [process.execPath, process.argv[1], 'mount', poolDir, mountpoint, '--foreground', '--takeover-fd', '3', '--notify-fd', '4']
  if (options.xattrs === true) restart.push('--xattrs')
  if (options.allowOther === true) restart.push('--allow-other')
  // The holder and the daemons it starts log where this one does: daemon.log in the background (which
  // the holder opens anew for each line and each daemon, as it is rotated), this process's stderr in the
  // foreground (-f: a terminal, journald), which the holder inherits.
  const logArgs = options.logToFile ? ['--log', path.join(poolDir, daemonLogFile)] : []
  if (!options.logToFile) restart.push('--log-stderr')
  try {
    // Its fd 4: the socket to the notifier it forks, which writes this daemon's notifications from now on.
    let pair: [number, number] | null = null
    try { pair = fuse.notifier() } catch (err) { log(`no notifier: ${(err as Error).message}; this daemon writes its notifications itself`) }
    let child: ReturnType<typeof spawn>
    try {
      child = spawn(fuse3HolderPath, [String(process.pid), ...logArgs, '--', ...restart], { detached: true, stdio: ['ignore', 'ignore', options.logToFile ? 'ignore' : 'inherit', fd, ...(pair !== null ? [pair[1]] : [])] })
    } finally {
      if (pair !== null) fs.closeSync(pair[1])
    }
    child.unref()
    log(`holder started (pid ${String(child.pid)}): the mount outlives this daemon`)
    return child.pid ?? null
  } catch (err) {
    log(`no holder: ${(err as Error).message}; the mount ends with this daemon`)
    return null
  }
}

/**
 * The event loop's thread at real-time priority (SCHED_RR 1, reset on fork: the threads and processes
 * it starts later do not inherit it), when the daemon may (root, CAP_SYS_NICE, or an RLIMIT_RTPRIO of
 * 1) and VDISKFS_LOOP_REALTIME is not 0. Under load its delays were waits for a core, not work
 * (docs/ARCHITECTURE.md, "The event loop's priority"). Called once mounted: the pool's opening, which
 * can take seconds of CPU, runs at normal priority.
 */
function raiseLoopPriority (metrics: DaemonMetrics, log: (message: string) => void): void {
  if (process.env.VDISKFS_LOOP_REALTIME === '0') {
    log('event loop: normal priority (VDISKFS_LOOP_REALTIME=0)')
    return
  }
  const errno = loadFuse3Native().loopPriority(1)
  if (errno === 0) {
    metrics.loopPolicy = 'realtime'
    log('event loop: real-time priority (SCHED_RR 1)')
  } else {
    const name = Object.entries(os.constants.errno).find(([, value]) => value === errno)?.[0] ?? `errno ${errno}`
    log(`event loop: normal priority (real-time priority not permitted: ${name})`)
  }
}

/** Raises the mount's read-ahead (default 128 KiB) to readAheadKibibytes. */
async function tuneReadAhead (mountpoint: string, log: (message: string) => void): Promise<void> {
  try {
    const entry = (await mounts()).find(m => m.mountpoint === mountpoint)
    if (entry === undefined) return
    await fs.promises.writeFile(`/sys/class/bdi/${entry.device}/read_ahead_kb`, String(readAheadKibibytes))
  } catch (err) {
    log(`could not raise read-ahead: ${(err as Error).message}`)
  }
}

/** Profiling aid (VDISKFS_COUNT_OPS=1): logs how many requests of each kind arrived, every operationCountIntervalMs. */
function logOperationCounts (metrics: DaemonMetrics, log: (message: string) => void): void {
  setInterval(() => {
    const counts = Object.fromEntries(Object.entries(metrics.operationReport().operations).map(([name, report]) => [name, report.count]))
    if (Object.keys(counts).length > 0) log(`requests: ${JSON.stringify(counts)}`)
  }, operationCountIntervalMs).unref()
}

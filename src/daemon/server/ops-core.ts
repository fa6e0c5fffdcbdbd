/**
 * The core control operations: status, commit, sync, verify, ls, du, gc and the namespace's (backup,
 * clone, restore, rm and the group forms). Like the other ops-*.ts modules they only translate: the
 * work is in the volume layer; the arguments were checked against operations.ts by the server.
 */
import { packLiveFractionExplicit } from '../../limits'
import { Progress, verifyPool } from '../../inspect/verify'
import { Handlers, HandlerContext, elapsedSince, named, volumeArg, volumeAt } from './handler'
import { Volume, VolumeInfo } from '../../volume/volume'
import { BackupTiming } from '../../volume/namespace'
import { operations } from '../../control/operations'

// long: a table of handlers, one short entry per operation
export function coreHandlers ({ pool, space, sealer, status, log, metrics }: HandlerContext) {
  // Progress of the long job in flight (verify), for the CLI's progress bar; sealing keeps its own.
  let verifying: Progress | null = null
  /** A backup or clone: the new volume made from `source`, timed and logged. */
  const madeFrom = async (what: string, source: Volume, make: (source: Volume) => Promise<Volume>): Promise<VolumeInfo & { elapsedMs: number }> => {
    const started = process.hrtime.bigint()
    const made = await make(source)
    const elapsedMs = elapsedSince(started)
    log(`${what}: ${named(source)} -> ${named(made)} (${elapsedMs.toFixed(1)} ms)`)
    return { ...made.info(), elapsedMs }
  }
  return {
    status: async () => status(),
    commit: async () => { await pool.commit(); return {} },
    sync: async () => await metrics.job('sync', async () => {
      const started = Date.now()
      await pool.commit()
      const sealed = await sealer.sealPending(true)
      log(`sync: sealed ${sealed.extentsSealed} extents (${sealed.blocksSealed} blocks, ${sealed.rawBytes} -> ${sealed.storedBytes} bytes)` +
        `${sealed.failed.length > 0 ? `, ${sealed.failed.length} failed` : ''} in ${Date.now() - started} ms`)
      return { ...sealed, elapsedMs: Date.now() - started }
    }, () => sealer.progress),
    progress: async () => verifying ?? sealer.progress,
    verify: async () => {
      const progress: Progress = { done: 0, total: 0 }
      verifying = progress
      try {
        const report = await metrics.job('verify', async () => await pool.exclusive(async () => await verifyPool(pool, progress)), () => progress)
        log(`verify: ${report.ok ? 'no damage' : `DAMAGE: ${report.problems.length} pool problems, ${report.damaged.length} damaged ranges`} ` +
          `(${report.volumes} volumes, ${report.blocks} blocks, ${report.chunks} chunks)`)
        return report
      } finally { verifying = null }
    },
    ls: async () => pool.visible().map(v => ({ ...v.info(), storedBytes: v.storedBytes })),
    du: async () => space.report(),
    backup: async args => {
      // Traced (issue #21: the slow backups at 10,000): where the daemon's time went, the process's CPU
      // meanwhile (every thread: the seal pass's workers too) and whether a seal pass ran beside it.
      const source = volumeArg(pool, 'backup', args, 'source')
      const timing: BackupTiming = { nameMs: 0, pauseMs: 0, madeMs: 0, commit: null }
      const cpu = process.cpuUsage()
      const sealing = sealer.busy
      const checkpoints = { ...pool.catalogCheckpoints }
      const started = process.hrtime.bigint()
      const made = await pool.backup(source, args.name, timing)
      const elapsedMs = elapsedSince(started)
      const used = process.cpuUsage(cpu)
      const c = timing.commit
      const phases = {
        nameMs: timing.nameMs,
        pauseMs: timing.pauseMs,
        madeMs: timing.madeMs,
        commitQueuedMs: c?.queuedMs ?? 0,
        snapshotMs: c?.snapshotMs ?? 0,
        extentsSyncMs: c?.extentsSyncMs ?? 0,
        logWaitMs: c?.log.waitMs ?? 0,
        logWriteMs: c?.log.writeMs ?? 0,
        logSyncMs: c?.log.syncMs ?? 0,
        catalogMs: c?.log.applyMs ?? 0,
        walSyncMs: c?.walSyncMs ?? 0,
        afterMs: c?.afterMs ?? 0,
        logBytes: c?.log.bytes ?? 0,
        pages: c?.pages ?? 0,
        rows: c?.rows ?? 0,
        cpuMs: (used.user + used.system) / 1000,
        // The WAL checkpoints that ran while it did (they run after a transaction, in the next turn).
        checkpoints: pool.catalogCheckpoints.count - checkpoints.count,
        checkpointMs: pool.catalogCheckpoints.ms - checkpoints.ms,
        sealing: sealing || sealer.busy
      }
      const f = (ms: number): string => ms.toFixed(1)
      log(`backup: ${named(source)} -> ${named(made)} (${elapsedMs.toFixed(1)} ms: name ${f(phases.nameMs)}, pause ${f(phases.pauseMs)}, ` +
        `commit queued ${f(phases.commitQueuedMs)}, snapshot ${f(phases.snapshotMs)}, extents sync ${f(phases.extentsSyncMs)}, ` +
        `log wait ${f(phases.logWaitMs)} write ${f(phases.logWriteMs)} sync ${f(phases.logSyncMs)} (${phases.logBytes} bytes: ${phases.pages} pages, ${phases.rows} rows), catalog ${f(phases.catalogMs)} (WAL sync ${f(phases.walSyncMs)}), ` +
        `after ${f(phases.afterMs)}; cpu ${f(phases.cpuMs)}; ${phases.checkpoints} WAL checkpoints beside it (${f(phases.checkpointMs)} ms)${phases.sealing ? '; beside a seal pass' : ''})`)
      return { ...made.info(), elapsedMs, phases }
    },
    backupGroup: async args => {
      const started = process.hrtime.bigint()
      const group = args.group
      const sources = args.sources.map(s => volumeAt(pool, s, operations.backup.args.source))
      const backups = await pool.backupGroup(sources, args.names, group)
      const elapsedMs = elapsedSince(started)
      log(`backup group ${group}: ${sources.map((s, i) => `${named(s)} -> ${named(backups[i])}`).join(', ')} (${elapsedMs.toFixed(1)} ms)`)
      return { backups: backups.map((b, i) => ({ ...b.info(), from: sources[i].info() })), elapsedMs }
    },
    restoreGroup: async args => {
      const group = args.group
      const pairs = await pool.restoreGroup(group, { force: args.force === true })
      log(`restore group ${group}: ${pairs.map(p => `${named(p.target)} from ${named(p.backup)}`).join(', ')}${args.force === true ? ' (--force)' : ''}`)
      return { restored: pairs.map(p => ({ restored: p.target.info(), from: p.backup.info() })) }
    },
    cloneGroup: async args => {
      const group = args.group
      const prefix = args.prefix
      // PREFIX-<the member's name without its group's prefix>: group vm1-mon's vm1-mon-root.img -> PREFIX-root.img.
      const clones = await pool.cloneGroup(group, backup => `${prefix}-${backup.name.startsWith(`${group}-`) ? backup.name.slice(group.length + 1) : backup.name}`)
      log(`clone group ${group}: ${clones.map(c => named(c)).join(', ')}`)
      return { clones: clones.map(c => c.info()) }
    },
    clone: async args => await madeFrom('clone', volumeArg(pool, 'clone', args, 'source'), async source => await pool.clone(source, args.name)),
    restore: async args => {
      const source = volumeArg(pool, 'restore', args, 'source')
      const target = volumeArg(pool, 'restore', args, 'target')
      await pool.restore(source, target, { force: args.force === true })
      log(`restore: ${named(target)} from ${named(source)}${args.force === true ? ' (--force)' : ''}`)
      return { restored: target.info(), from: source.info() }
    },
    rm: async args => {
      const target = volumeArg(pool, 'rm', args, 'target')
      const removed = target.info()
      await pool.remove(target, { force: args.force === true })
      // Removed while open (--force): its holders keep it until they close it.
      const stillOpen = target.openHandles > 0
      log(`rm: ${named(removed)}${stillOpen ? ' (still open: removed at its last close)' : ''}`)
      return { removed, stillOpen }
    },
    gc: async args => {
      const report = await metrics.job('gc', async () => await pool.gc(packLiveFractionExplicit, { full: args.full === true }))
      log(`gc: freed ${report.pagesFreed} map pages, ${report.extentsFreed} extents, ${report.chunksFreed} chunks, ${report.packsFreed} packs (${report.packBytesFreed} bytes)` +
        `${report.held !== undefined ? `; held: ${report.held}` : ''}`)
      return report
    }
  } satisfies Handlers
}

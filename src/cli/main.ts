/**
 * The vdiskfs command line. Each command parses its arguments, then either runs the daemon (mount) or
 * talks to the daemon over the control socket. A user's mistake prints one line on stderr and exits
 * non-zero (2 for usage, 1 for everything else); a stack trace only with VDISKFS_DEBUG=1.
 */
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { VdiskError, fromSystemError, invalid, notFound } from '../errors'
import { call, isDeadMount } from '../control/client'
import { socketPathsFor } from '../control/protocol'
import { ArgsOf, ResultOf } from '../control/operations'
import { StatusResult } from '../control/results'
// The engine (the daemon, verify, repair: src/volume, SQLite, the workers, the FUSE addon) loads only for
// the commands that run it, not for every command: `pull --lazy` is timed from its start (issue #22).
import type { RepairReport } from '../inspect/repair'
import { poolHeaderFile } from '../format/pool-format'
import { daemonExitPollMs, daemonExitTimeoutMs, daemonReadyTimeoutMs } from '../limits'
import { VolumeInfo } from '../volume/volume'
import { version } from '../version'
import { UsageError, parseArgs, parseSize } from './args'
import { bytes, table } from './format'
import { Command, ImageTarget, dirOfKind, imagePath, jsonVolume, mountpointArg, newImageName, onlineOrOffline, print, time, withProgress } from './command'
import { adminCommands } from './commands-admin'
import { statusCommands } from './commands-status'
import { transferCommands } from './commands-transfer'
import { ResumedHydrator, remoteCommands, resumeHydrators } from './commands-remote'
import { describeHolders, findHolders, printable } from './holders'
import { processExited } from './processes'
import { trace } from '../trace'

/**
 * rm --force of an image held open. A disk or clone is unlinked through the mount, as a plain `rm`: the
 * kernel then drops its name for the open file at once (the volume layer keeps the volume for its
 * holders and removes it at the last release), and a new image made under the old name is a new inode.
 * A backup (read-only through the mount), or an unlink the kernel refuses (a directory the user may
 * not write), is hidden by the daemon.
 */
async function removeInUse (target: ImageTarget, args: ArgsOf<'rm'>): Promise<ResultOf<'rm'>> {
  if (target.kind !== 'backup') {
    const volumes = await call(target.mountpoint, 'ls')
    const removed = volumes.find(v => v.kind === target.kind && v.name === target.name)
    if (removed === undefined) throw notFound(`${target.kind} ${target.name}`)
    try {
      await fs.promises.unlink(path.join(target.mountpoint, dirOfKind[target.kind], target.name))
      return { removed, stillOpen: true }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code !== 'EACCES' && code !== 'EPERM' && code !== 'EROFS') throw fromSystemError(err, `removing ${target.name}`)
    }
  }
  return await call(target.mountpoint, 'rm', { ...args, force: true })
}

/**
 * Runs `request` (an rm or a restore of `target`); when the daemon refuses an image in use, names who holds it (loop devices and
 * processes, found here from /sys and /proc) in the one line it prints.
 */
async function callUnlessInUse<T> (target: ImageTarget, request: () => Promise<T>): Promise<T> {
  try {
    return await request()
  } catch (err) {
    if (!(err instanceof VdiskError) || err.code !== 'BUSY') throw err
    const relative = `${dirOfKind[target.kind]}/${target.name}`
    const holders = findHolders(path.join(target.mountpoint, relative))
    if (holders.length === 0) throw err
    throw new VdiskError('BUSY', `${relative} is in use by ${describeHolders(holders)}: close it first, or use --force`)
  }
}

const coreCommands: Record<string, Command> = {
  mount: {
    usage: 'mount POOL MNT [-f|--foreground] [--block-size SIZE] [--xattrs] [--allow-other] [--json]',
    summary: 'serve the pool in POOL (created if missing) at MNT',
    spec: { positionals: ['POOL', 'MNT'], booleans: { foreground: ['-f', '--foreground'], child: ['--background-child'], logStderr: ['--log-stderr'], xattrs: ['--xattrs'], noXattrs: ['--no-xattrs'], allowOther: ['--allow-other'], json: ['--json'] }, values: { blockSize: ['--block-size'], takeoverFd: ['--takeover-fd'], notifyFd: ['--notify-fd'] } },
    async run ({ positionals: [pool, mnt], flags, values }) {
      const blockBytes = values.blockSize === undefined ? undefined : parseSize(values.blockSize)
      const mountpoint = path.resolve(mnt)
      const poolDir = path.resolve(pool)
      if (flags.foreground === true) {
        const child = flags.child === true && process.send !== undefined
        // Internal: the holder of a FUSE 3 mount starts a daemon with the mount's descriptor (docs/TRANSPORT.md).
        const takeoverFd = values.takeoverFd === undefined ? undefined : Number(values.takeoverFd)
        if (takeoverFd !== undefined && !(Number.isInteger(takeoverFd) && takeoverFd >= 0)) throw new VdiskError('INVALID', `--takeover-fd ${String(values.takeoverFd)}: not a descriptor number`)
        // Internal too: the socket to the notifier the holder forked for this daemon, when it has one.
        const notifyFd = values.notifyFd === undefined ? undefined : Number(values.notifyFd)
        let notifier: number | undefined
        if (notifyFd !== undefined && Number.isInteger(notifyFd) && notifyFd >= 0) { try { if (fs.fstatSync(notifyFd).isSocket()) notifier = notifyFd } catch {} }
        const { runDaemon } = await import('../daemon/daemon')
        await runDaemon({
          pool: poolDir,
          mountpoint,
          blockBytes,
          // --no-xattrs, the default since xattrs became opt-in, is accepted for old scripts and ignored.
          xattrs: flags.xattrs === true,
          allowOther: flags.allowOther === true,
          takeoverFd,
          notifyFd: notifier,
          // A takeover logs where the daemon it replaces did (--log-stderr: that one ran with -f).
          logToFile: child || (takeoverFd !== undefined && flags.logStderr !== true),
          onReady: () => {
            if (child) { process.send?.({ ready: true }); process.disconnect?.() } else if (takeoverFd === undefined) process.stderr.write(`vdiskfs: serving ${poolDir} at ${mountpoint} (Ctrl-C to unmount)\n`)
          }
        }).catch(async err => {
          if (child) {
            const message = err instanceof VdiskError ? err.message : `internal error: ${(err as Error).message}`
            process.send?.({ error: message }, () => process.exit(1))
            return await new Promise(() => {})
          }
          throw err
        })
        return
      }
      const args = [process.argv[1], 'mount', poolDir, mountpoint, '--foreground', '--background-child']
      if (values.blockSize !== undefined) args.push('--block-size', values.blockSize)
      if (flags.xattrs === true) args.push('--xattrs')
      if (flags.allowOther === true) args.push('--allow-other')
      // VDISKFS_DAEMON_NODE_ARGS: node options for the daemon alone (say --cpu-prof, which NODE_OPTIONS refuses).
      const nodeArgs = (process.env.VDISKFS_DAEMON_NODE_ARGS ?? '').split(' ').filter(a => a !== '')
      const child = spawn(process.execPath, [...nodeArgs, ...args], { detached: true, stdio: ['ignore', 'ignore', 'ignore', 'ipc'] })
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new VdiskError('IO', `the daemon did not report ready within ${daemonReadyTimeoutMs / 1000} s`)), daemonReadyTimeoutMs)
        child.on('message', (message: { ready?: boolean, error?: string }) => {
          clearTimeout(timer)
          if (message.ready === true) resolve()
          else reject(new VdiskError('INVALID', message.error ?? 'the daemon failed to start'))
        })
        child.on('exit', code => { clearTimeout(timer); reject(new VdiskError('IO', `the daemon exited (status ${String(code)}) before the mount was ready; see ${path.join(poolDir, 'daemon.log')}`)) })
      })
      child.removeAllListeners('exit')
      if (child.connected) child.disconnect()
      child.unref()
      // Lazy pulls in progress resume: a hydrator for each that has none (docs/REMOTE.md, "Who fetches").
      // The mount is made either way; a failure to start them is one line, and `pull --lazy --resume` is the way.
      let hydrators: ResumedHydrator[] = []
      try { hydrators = await resumeHydrators(mountpoint) } catch (err) { process.stderr.write(`vdiskfs: mounted, but the lazy pulls in progress were not resumed (${(err as Error).message}): run vdiskfs pull ... --lazy --resume\n`) }
      print(flags.json === true, { pool: poolDir, mountpoint, pid: child.pid, hydrators }, () => [`mounted ${poolDir} at ${mountpoint} (daemon pid ${String(child.pid)})`,
        ...hydrators.map(h => `resumed the lazy pull of backups/${printable(h.backup)} from ${printable(h.remote)}: hydrator pid ${String(h.pid)} (log ${h.log})`)].join('\n'))
    }
  },

  umount: {
    usage: 'umount MNT [--json]',
    summary: 'commit everything, unmount and stop the daemon',
    spec: { positionals: ['MNT'], booleans: { json: ['--json'] } },
    async run ({ positionals: [mnt], flags }) {
      const mountpoint = mountpointArg(mnt)
      let status: StatusResult
      try {
        status = await call(mountpoint, 'status')
      } catch (err) {
        if (!(err instanceof VdiskError) || err.code !== 'NOT_FOUND' || !isDeadMount(mountpoint)) throw err
        cleanDeadMount(mountpoint)
        print(flags.json === true, { unmounted: mountpoint, pid: null, daemonWasGone: true }, () =>
          `unmounted ${mountpoint}, whose daemon was gone (killed?): what it had committed is kept; mount the pool again to use it`)
        return
      }
      await call(mountpoint, 'commit')
      const result = spawnSync('fusermount3', ['-u', mountpoint], { encoding: 'utf8' })
      if (result.status !== 0) {
        const reason = (result.error?.message ?? result.stderr ?? '').trim().split('\n').pop() ?? ''
        if (/busy/i.test(reason)) throw new VdiskError('BUSY', `${mountpoint} is busy: close the files and loop devices using it first`)
        throw new VdiskError('IO', `fusermount3 -u ${mountpoint} failed: ${reason}`)
      }
      try { process.kill(status.pid, 'SIGTERM') } catch {}
      for (let waited = 0; waited < daemonExitTimeoutMs; waited += daemonExitPollMs) {
        if (processExited(status.pid)) {
          if (flags.json === true) print(true, { unmounted: mountpoint, pid: status.pid }, () => '')
          return
        }
        await new Promise(resolve => setTimeout(resolve, daemonExitPollMs))
      }
      throw new VdiskError('IO', `the daemon (pid ${status.pid}) did not exit after the unmount`)
    }
  },

  backup: {
    usage: 'backup IMAGE NAME [--freeze FSMOUNT]... [--json] | backup IMAGE... --group NAME [--freeze FSMOUNT]... [--json]',
    summary: 'take an immutable point-in-time backup of a disk or clone as backups/NAME.img; with --group, one atomic backup of several images (backups/NAME-IMAGENAME.img)',
    spec: { positionals: ['IMAGE'], optional: ['NAME'], variadic: true, booleans: { json: ['--json'] }, values: { freeze: ['--freeze'], group: ['--group'] }, repeatable: ['freeze'] },
    async run ({ positionals, flags, values, lists }) {
      if (values.group !== undefined) { await backupGroup(positionals, values.group, lists.freeze ?? [], flags.json === true); return }
      if (positionals.length !== 2) throw new UsageError(`expected 2 arguments (IMAGE NAME), got ${positionals.length} (several images are backed up together with --group NAME)`)
      const [image, name] = positionals
      const source = imagePath(image)
      const file = newImageName(name)
      if (source.kind === 'backup') throw invalid(`${image} is a backup; back up a disk or a clone`)
      let result!: VolumeInfo & { elapsedMs: number }
      await withFrozen(lists.freeze ?? [], async () => {
        result = await call(source.mountpoint, 'backup', { sourceKind: source.kind, sourceName: source.name, name: file })
      })
      print(flags.json === true, jsonVolume(result), () => `backup ${path.join(source.mountpoint, 'backups', file)} (${result.elapsedMs.toFixed(1)} ms in the daemon)`)
    }
  },

  clone: {
    usage: 'clone BACKUP NAME [--json] | clone --group GROUP MNT PREFIX [--json]',
    summary: "create a writable copy-on-write clone of a backup as clones/NAME.img; with --group, one of each of a group's backups (clones/PREFIX-IMAGENAME.img)",
    spec: { positionals: ['BACKUP', 'NAME'], booleans: { json: ['--json'] }, values: { group: ['--group'] } },
    async run ({ positionals: [image, name], flags, values }) {
      if (values.group !== undefined) {
        const mountpoint = mountpointArg(image)
        if (name === '' || name.includes('/')) throw invalid(`invalid prefix '${name}': give a plain name such as test`)
        const result = await call(mountpoint, 'cloneGroup', { group: values.group, prefix: name.replace(/\.img$/, '') })
        print(flags.json === true, result.clones.map(c => ({ clone: path.join(mountpoint, 'clones', c.name), ...jsonVolume(c) })), () =>
          result.clones.map(c => `clone ${path.join(mountpoint, 'clones', c.name)}`).join('\n'))
        return
      }
      const source = imagePath(image)
      const file = newImageName(name)
      if (source.kind !== 'backup') throw invalid(`${image} is not a backup: clones stand on backups (make one with vdiskfs backup)`)
      const result = await call(source.mountpoint, 'clone', { sourceKind: source.kind, sourceName: source.name, name: file })
      print(flags.json === true, jsonVolume(result), () => `clone ${path.join(source.mountpoint, 'clones', file)} (${result.elapsedMs.toFixed(1)} ms in the daemon)`)
    }
  },

  restore: {
    usage: 'restore BACKUP IMAGE [--force] [--json] | restore --group GROUP MNT [--force] [--json]',
    summary: "point a disk or clone back at a backup's content (refused while the image is open, unless --force); with --group, every image of a group at once",
    spec: { positionals: ['BACKUP'], optional: ['IMAGE'], booleans: { force: ['--force'], json: ['--json'] }, values: { group: ['--group'] } },
    async run ({ positionals: [backupImage, image], flags, values }) {
      if (values.group !== undefined) {
        if (image !== undefined) throw new UsageError('restore --group GROUP takes the mountpoint alone (MNT)')
        const mountpoint = mountpointArg(backupImage)
        const result = await call(mountpoint, 'restoreGroup', { group: values.group, force: flags.force === true })
        print(flags.json === true, result.restored.map(r => ({ restored: jsonVolume(r.restored), from: jsonVolume(r.from) })), () =>
          result.restored.map(r => `restored ${path.join(mountpoint, dirOfKind[r.restored.kind], r.restored.name)} from ${path.join(mountpoint, 'backups', r.from.name)}`).join('\n'))
        return
      }
      if (image === undefined) throw new UsageError('expected 2 arguments (BACKUP IMAGE), got 1')
      const source = imagePath(backupImage)
      const target = imagePath(image)
      if (source.mountpoint !== target.mountpoint) throw invalid('BACKUP and IMAGE must be in the same vdiskfs mount')
      if (source.kind !== 'backup') throw invalid(`${backupImage} is not a backup`)
      if (target.kind === 'backup') throw invalid(`${image} is a backup, and backups are immutable`)
      const result = await callUnlessInUse(target, async () => await call(target.mountpoint, 'restore', { sourceKind: source.kind, sourceName: source.name, targetKind: target.kind, targetName: target.name, force: flags.force === true }))
      print(flags.json === true, { restored: jsonVolume(result.restored), from: jsonVolume(result.from) }, () => `restored ${image} from ${backupImage}`)
    }
  },

  rm: {
    usage: 'rm IMAGE [--force] [--json]',
    summary: 'delete a volume (the only way to delete a backup); clones keep what they need. Refused while the image is open, unless --force (then its holders keep it until they close it)',
    spec: { positionals: ['IMAGE'], booleans: { force: ['--force'], json: ['--json'] } },
    async run ({ positionals: [image], flags }) {
      const target = imagePath(image)
      const args = { targetKind: target.kind, targetName: target.name }
      let result: ResultOf<'rm'>
      try {
        result = await callUnlessInUse(target, async () => await call(target.mountpoint, 'rm', args))
      } catch (err) {
        if (flags.force !== true || !(err instanceof VdiskError) || err.code !== 'BUSY') throw err
        result = await removeInUse(target, args)
      }
      print(flags.json === true, { removed: jsonVolume(result.removed), stillOpen: result.stillOpen }, () =>
        `removed ${path.join(target.mountpoint, dirOfKind[target.kind], target.name)}` + (result.stillOpen ? ' (still open: its holders keep it until they close it)' : ''))
    }
  },

  ls: {
    usage: 'ls MNT [--json]',
    summary: 'list volumes: kind, size, creation time and lineage',
    spec: { positionals: ['MNT'], booleans: { json: ['--json'] } },
    async run ({ positionals: [mnt], flags }) {
      const volumes = await call(mountpointArg(mnt), 'ls')
      print(flags.json === true, volumes.map(jsonVolume), () => lineageTree(volumes))
    }
  },

  du: {
    usage: 'du MNT [--json]',
    summary: 'space per volume (logical, referenced, unique) and for the pool',
    spec: { positionals: ['MNT'], booleans: { json: ['--json'] } },
    async run ({ positionals: [mnt], flags }) {
      const report = await call(mountpointArg(mnt), 'du')
      print(flags.json === true, report, () => {
        const rows = report.volumes.map(v => [`${dirOfKind[v.kind]}/${v.name}`, bytes(v.logicalBytes), bytes(v.referencedBytes), bytes(v.uniqueBytes), v.keptFromSourceBytes === null ? '-' : bytes(v.keptFromSourceBytes)])
        return table(['VOLUME', 'LOGICAL', 'REFERENCED', 'UNIQUE', 'KEPT-FROM-SOURCE'], rows) +
          `\n\npool: logical ${bytes(report.logicalBytes)}, stored ${bytes(report.storedBytes)} (${bytes(report.unsealedBytes)} not sealed yet), ` +
          `dedup ratio ${report.dedupRatio.toFixed(2)}, compression ratio ${report.compressionRatio.toFixed(2)}, sharing ratio ${report.sharingRatio.toFixed(2)}`
      })
    }
  },

  sync: {
    usage: 'sync MNT [--json]',
    summary: 'make everything written so far durable and seal it into the chunk store',
    spec: { positionals: ['MNT'], booleans: { json: ['--json'] } },
    async run ({ positionals: [mnt], flags }) {
      const mountpoint = mountpointArg(mnt)
      const result = await withProgress(mountpoint, 'sealing', call(mountpoint, 'sync'))
      print(flags.json === true, result, () => `sealed ${result.extentsSealed} extents in ${(result.elapsedMs / 1000).toFixed(1)} s: ${result.blocksSealed} blocks ` +
        `(${result.zeroBlocks} zero, ${result.dedupedBlocks} deduplicated, ${result.newChunks} new chunks), ${bytes(result.rawBytes)} -> ${bytes(result.storedBytes)} stored` +
        result.failed.map(f => `\n  could not seal ${f}`).join(''))
      if (result.failed.length > 0) process.exitCode = 1
      // Cut short by a stop of the daemon (SIGTERM, umount): what was written is durable (the sync
      // committed first), but not all of it is sealed, and a script must be able to tell.
      if ((result.extentsLeft ?? 0) > 0) {
        process.stderr.write(`vdiskfs: sync: sealing stopped before its end because the daemon is stopping: ${result.extentsLeft} extents left unsealed (their data is durable; run sync again after the next mount)\n`)
        process.exitCode = 1
      }
    }
  },

  verify: {
    usage: 'verify MNT|POOL [--json]',
    summary: 'check the catalog, every map, extent and chunk hash; name damaged volumes and ranges',
    spec: { positionals: ['MNT|POOL'], booleans: { json: ['--json'] } },
    async run ({ positionals: [target], flags }) {
      const report = await onlineOrOffline(target, 'verifying', async mountpoint => await call(mountpoint, 'verify'), async pool => await (await import('../inspect/verify')).verifyPool(pool))
      print(flags.json === true, report, () => {
        const lines = [`checked ${report.volumes} volumes, ${report.pages} map pages, ${report.blocks} blocks, ${report.extents} extents, ${report.chunks} chunks: ${report.ok ? 'no damage' : 'DAMAGE FOUND'}`]
        for (const problem of report.problems) lines.push(`  pool: ${problem}`)
        if (report.counts !== undefined) lines.push(`  gc's reference counts: ${report.counts}`)
        for (const d of report.damaged) lines.push(`  ${dirOfKind[d.kind]}/${d.volume} bytes ${d.startByte}-${d.endByte - 1}: ${d.problem}`)
        return lines.join('\n')
      })
      if (!report.ok) process.exitCode = 1
    }
  },

  repair: {
    usage: 'repair POOL [--json]',
    summary: 'offline: rebuild what can be rebuilt, quarantine what cannot, report what was lost',
    spec: { positionals: ['POOL'], booleans: { json: ['--json'] } },
    async run ({ positionals: [dir], flags }) {
      if (!fs.existsSync(path.join(dir, poolHeaderFile))) throw invalid(`${dir} is not a vdiskfs pool (no ${poolHeaderFile})`)
      let report: RepairReport
      try {
        report = await (await import('../inspect/repair')).repairPool(dir)
      } catch (err) {
        if (err instanceof VdiskError && err.code === 'BUSY') throw new VdiskError('BUSY', `${dir} is mounted: unmount it first (repair runs offline)`)
        throw err
      }
      print(flags.json === true, report, () => {
        const lines = [`repair: catalog ${report.catalogRebuilt ? 'rebuilt' : 'kept'}, ${report.chunksReindexed} chunks reindexed, ${report.chunksDropped} chunks dropped, ` +
          `${report.extentsDropped} extents dropped, ${report.pagesReplaced} map pages replaced, ${report.entriesLost} blocks marked lost, ${report.quarantined.length} files quarantined`]
        for (const note of report.notes) lines.push(`  ${note}`)
        for (const q of report.quarantined) lines.push(`  quarantined ${q}`)
        lines.push(report.after.ok ? 'the pool is consistent; no data is damaged' : 'still damaged (vdiskfs verify says the same; reads of damaged ranges fail with EIO until rewritten):')
        for (const problem of report.after.problems) lines.push(`  pool: ${problem}`)
        for (const d of report.after.damaged) lines.push(`  ${dirOfKind[d.kind]}/${d.volume} bytes ${d.startByte}-${d.endByte - 1}: ${d.problem}`)
        return lines.join('\n')
      })
    }
  },

  gc: {
    usage: 'gc MNT [--full] [--json]',
    summary: 'free what no volume references (map pages, extents, chunks) and compact packs; --full checks the reference counts against a full mark first',
    spec: { positionals: ['MNT'], booleans: { json: ['--json'], full: ['--full'] } },
    async run ({ positionals: [mnt], flags }) {
      const mountpoint = mountpointArg(mnt)
      const result = await withProgress(mountpoint, 'collecting', call(mountpoint, 'gc', { full: flags.full === true }))
      print(flags.json === true, result, () => result.held?.startsWith('reference counts disagree') === true
        ? `freed nothing: ${result.held}; the counts were dropped and the next gc rebuilds them from a full mark (please report this)`
        : result.held !== undefined
        ? `freed no map pages, extents or chunks: ${result.held}, and while the catalog is damaged gc cannot prove anything unreferenced (vdiskfs verify; rewrite or remove what was lost); ` +
          `${result.packsFreed} packs (${bytes(result.packBytesFreed)}) freed by compaction`
        : `freed ${result.pagesFreed} map pages, ${result.extentsFreed} extents, ${result.chunksFreed} chunks and ${result.packsFreed} packs (${bytes(result.packBytesFreed)})`)
    }
  }
}

/**
 * Runs `work` with each filesystem of `mounts` frozen (fsfreeze -f, in order); every one frozen is
 * thawed afterwards (fsfreeze -u), also when freezing a later one or `work` fails.
 */
async function withFrozen (mounts: string[], work: () => Promise<void>): Promise<void> {
  const frozen: string[] = []
  let failure: unknown = null
  try {
    for (const mount of mounts) { fsfreeze('-f', mount); frozen.push(mount) }
    await work()
  } catch (err) {
    failure = err
  }
  const thawFailures: string[] = []
  for (const mount of frozen.reverse()) { try { fsfreeze('-u', mount) } catch (err) { thawFailures.push((err as Error).message) } }
  // A filesystem left frozen is reported first: it blocks its writers until thawed by hand.
  if (thawFailures.length > 0) throw new VdiskError('IO', thawFailures.join('; '))
  if (failure !== null) throw failure
}

/**
 * `vdiskfs backup IMAGE... --group NAME`: one atomic backup of every image (one mount), named
 * NAME-IMAGENAME (without .img, then .img); --json prints [{"image", "backup"}].
 */
async function backupGroup (images: string[], group: string, freeze: string[], json: boolean): Promise<void> {
  if (images.length === 0) throw new UsageError('give the images of the group: backup IMAGE... --group NAME')
  const sources = images.map(imagePath)
  const mountpoint = sources[0].mountpoint
  if (sources.some(s => s.mountpoint !== mountpoint)) throw invalid('the images of a group must be in one vdiskfs mount')
  for (const [i, s] of sources.entries()) if (s.kind === 'backup') throw invalid(`${images[i]} is a backup; back up disks and clones`)
  const groupName = newImageName(group).replace(/\.img$/, '')
  const names = sources.map(s => newImageName(`${groupName}-${s.name.replace(/\.img$/, '')}`))
  let result!: ResultOf<'backupGroup'>
  await withFrozen(freeze, async () => {
    result = await call(mountpoint, 'backupGroup', { sources: sources.map(s => ({ sourceKind: s.kind, sourceName: s.name })), names, group: groupName })
  })
  const made = result.backups.map((b, i) => ({ image: path.join(mountpoint, dirOfKind[sources[i].kind], sources[i].name), backup: path.join(mountpoint, 'backups', b.name) }))
  print(json, made, () => made.map(m => `backup ${m.backup} of ${m.image}`).join('\n') + `\n(group ${groupName}: one instant, ${result.elapsedMs.toFixed(1)} ms in the daemon)`)
}

/**
 * Unmounts a mount whose daemon is gone (ENOTCONN): fusermount3 -u, or lazily (-uz) when something still
 * holds it (a loop device, an open file: they get errors until they let go), then removes the control
 * socket the daemon left behind.
 */
function cleanDeadMount (mountpoint: string): void {
  let result = spawnSync('fusermount3', ['-u', mountpoint], { encoding: 'utf8' })
  if (result.status !== 0) result = spawnSync('fusermount3', ['-uz', mountpoint], { encoding: 'utf8' })
  if (result.status !== 0) {
    const reason = (result.error?.message ?? result.stderr ?? '').trim().split('\n').pop() ?? ''
    throw new VdiskError('IO', `the daemon of ${mountpoint} is gone, and fusermount3 -uz ${mountpoint} failed: ${reason}`)
  }
  for (const socket of socketPathsFor(mountpoint)) fs.rmSync(socket, { force: true })
}

function fsfreeze (flag: '-f' | '-u', mountpoint: string): void {
  const result = spawnSync('fsfreeze', [flag, mountpoint], { encoding: 'utf8' })
  if (result.error !== undefined) throw new VdiskError('IO', `fsfreeze is missing: ${result.error.message}`)
  if (result.status !== 0) throw new VdiskError('IO', `fsfreeze ${flag} ${mountpoint} failed: ${(result.stderr ?? '').trim()}`)
}

function lineageTree (volumes: Array<VolumeInfo & { storedBytes: number }>): string {
  if (volumes.length === 0) return 'no volumes'
  const children = new Map<number | null, typeof volumes>()
  const ids = new Set(volumes.map(v => v.id))
  for (const v of volumes) {
    const parent = v.sourceId !== null && ids.has(v.sourceId) ? v.sourceId : null
    children.set(parent, [...(children.get(parent) ?? []), v])
  }
  const lines: string[] = []
  const walk = (parent: number | null, prefix: string): void => {
    const list = children.get(parent) ?? []
    list.forEach((v, i) => {
      const last = i === list.length - 1
      const branch = parent === null ? '' : (last ? '└─ ' : '├─ ')
      const gone = parent === null && v.sourceId !== null ? ` (from ${v.sourceLabel ?? '?'}, deleted)` : ''
      const marks = `${v.groupName !== null ? `  group ${v.groupName}` : ''}${v.protected ? '  protected' : ''}${v.note !== null ? `  note: ${v.note}` : ''}`
      lines.push(`${prefix}${branch}${dirOfKind[v.kind]}/${v.name}  ${v.kind}  ${bytes(v.size)}  stored ${bytes(v.storedBytes)}  created ${time(v.createdMs)}${gone}${marks}`)
      walk(v.id, parent === null ? prefix : prefix + (last ? '   ' : '│  '))
    })
  }
  walk(null, '')
  return lines.join('\n')
}

const commands: Record<string, Command> = { ...coreCommands, ...adminCommands, ...statusCommands, ...transferCommands, ...remoteCommands }

/**
 * `text` cut into lines of at most `width` characters at spaces (a longer word stays whole): the first
 * after `indent`, the others after `next`.
 */
function wrap (text: string, width: number, indent: string, next = indent): string[] {
  const lines: string[] = []
  let line = ''
  const lead = (): string => lines.length === 0 ? indent : next
  for (const word of text.split(' ')) {
    if (line !== '' && lead().length + line.length + 1 + word.length > width) { lines.push(lead() + line); line = word } else line = line === '' ? word : `${line} ${word}`
  }
  if (line !== '') lines.push(lead() + line)
  return lines
}

/** Help lines stay within this many characters (a terminal's usual width). */
const helpWidth = 100

/** A command's usage cut as `wrap` cuts, never between an option and its argument (`--keep-last N`). */
function usageLines (usage: string): string[] {
  const kept = usage.replace(/(--?[\w-]+) ([A-Z][\w|.-]*)/g, '$1\u0000$2')
  return wrap(kept, helpWidth, 'usage: vdiskfs ', '         ').map(line => line.replaceAll('\u0000', ' '))
}

function help (): string {
  return [
    `vdiskfs ${version}: instant, space-efficient virtual disks as image files`,
    '',
    'usage: vdiskfs COMMAND [ARGS]   (vdiskfs COMMAND --help for one command)',
    '',
    ...Object.values(commands).flatMap(c => [...wrap(c.usage, helpWidth, '  ', '      '), ...wrap(c.summary, helpWidth, '      ')]),
    '',
    'IMAGE is MNT/disks/NAME, MNT/backups/NAME or MNT/clones/NAME.'
  ].join('\n')
}

export async function main (argv: string[]): Promise<number> {
  // Two-word commands (`remote add`, `remote ls` ...) are keyed by both words.
  const twoWords = argv.length >= 2 && commands[`${argv[0]} ${argv[1]}`] !== undefined
  const [name, ...rest] = twoWords ? [`${argv[0]} ${argv[1]}`, ...argv.slice(2)] : argv
  // A reader that stops early (`vdiskfs verify | head -1`) ends the command quietly: what it wanted
  // was written, and Node would otherwise die of the unhandled EPIPE with a stack trace.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') process.stderr.write(`vdiskfs: cannot write the output: ${err.message}\n`)
    process.exit(err.code === 'EPIPE' && typeof process.exitCode === 'number' ? process.exitCode : err.code === 'EPIPE' ? 0 : 1)
  })
  process.stderr.on('error', () => {})
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') { process.stdout.write(help() + '\n'); return name === undefined ? 2 : 0 }
  if (name === '--version' || name === '-V') { process.stdout.write(`vdiskfs ${version}\n`); return 0 }
  const command = commands[name]
  // Pool files (a new pool, a repaired catalog, the daemon's files) are the owner's alone (0600/0700),
  // whatever umask the CLI was started with; the background daemon inherits this.
  process.umask(0o077)
  try {
    if (command === undefined) throw new UsageError(`unknown command '${name}' (see vdiskfs --help)`)
    if (rest.includes('--help') || rest.includes('-h')) { process.stdout.write(`${usageLines(command.usage).join('\n')}\n\n${wrap(command.summary, helpWidth, '').join('\n')}\n`); return 0 }
    trace(`command ${name}`)
    await command.run(parseArgs(rest, command.spec))
    trace('done')
    return typeof process.exitCode === 'number' ? process.exitCode : 0
  } catch (err) {
    if (process.env.VDISKFS_DEBUG === '1') process.stderr.write(`${(err as Error)?.stack ?? String(err)}\n`)
    if (err instanceof UsageError) { process.stderr.write(`vdiskfs ${printable(name)}: ${printable(err.message)}\n`); return 2 }
    if (err instanceof VdiskError) { process.stderr.write(`vdiskfs ${printable(name)}: ${printable(err.message)}\n`); return 1 }
    process.stderr.write(`vdiskfs ${printable(name)}: internal error: ${printable((err as Error)?.message ?? String(err))}\n`)
    return 1
  }
}

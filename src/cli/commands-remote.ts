/**
 * CLI commands of issue #12: remotes on S3 (docs/REMOTE.md). `remote add|list|remove` keep the pool's
 * remote definitions through the daemon; push, pull and `remote ls|verify|prune|gc` talk to S3 from this
 * process, with the credentials of whoever runs it (the AWS variables or shared config files), and move a
 * backup's blocks through the export and import streams of src/transfer.
 */
import os from 'node:os'
import { VdiskError, invalid } from '../errors'
import { call } from '../control/client'
import type { Pool } from '../volume/pool'
import { RemoteDefinition, makeDefinition, readRemotes } from '../remote/remotes'
import { RemoteStore } from '../remote/store'
import { PruneKeep, globPattern, keepsAnything, pruneRules, selectPrune } from '../transfer/prune'
import { isBackupId, pulledIdentity } from '../remote/remote-format'
import { RemoteKey, createKeyFile, readKeyFile } from '../remote/crypt'
import { pullBackup, pushBackup } from './transfer-link'
import { LazyPullResult, createLazyBackup, hydrate, lazyPulls } from './hydrator'
import { trace } from '../trace'
import { controlDir } from '../control/protocol'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { UsageError } from './args'
import { bytes, table } from './format'
import { Command, imagePath, mountpointArg, newImageName, onlineOrOffline, print, newBar } from './command'
import { printable } from './holders'

const json = { json: ['--json'] }

/**
 * A field of a remote's manifest (name, source, host, creation time) as one table cell: any host that can
 * write the bucket chose it, so every control character, the newline too, is shown as \xHH (a name
 * must not add lines or reach the terminal). --json carries it exactly.
 */
function cell (text: string): string {
  return printable(String(text))
}

/** The pool's definition of remote `name`, from its daemon or, for a pool no daemon serves, its file. */
async function remoteOf (target: string, name: string): Promise<RemoteDefinition> {
  const remotes = await onlineOrOffline(target, 'remotes', async mountpoint => await call(mountpoint, 'remoteList'), async (pool: Pool) => readRemotes(pool.dir))
  const remote = remotes.find(r => r.name === name)
  if (remote === undefined) throw new VdiskError('NOT_FOUND', `remote ${name} does not exist in ${target} (see vdiskfs remote list)`)
  return remote
}

/** The key of an encrypted remote (read from its key file, which must still be the key it was added with), or null. */
function keyOf (remote: RemoteDefinition): RemoteKey | null {
  if (remote.keyFile === undefined) return null
  const key = readKeyFile(remote.keyFile)
  if (key.fingerprint !== remote.keyFingerprint) {
    throw new VdiskError('NOT_PERMITTED', `remote ${remote.name}: wrong key: ${remote.keyFile} has fingerprint ${key.fingerprint}, the remote was added with ${remote.keyFingerprint ?? '?'}`)
  }
  return key
}

async function withStore<T> (remote: RemoteDefinition, work: (store: RemoteStore) => Promise<T>): Promise<T> {
  const store = await RemoteStore.open(remote, remote.name, { key: keyOf(remote) })
  trace('store open')
  try { return await work(store) } finally { store.close() }
}

/** A byte-count progress bar on a terminal; nothing otherwise. */
export function byteProgress (label: string): { add: (n: number) => void, total: (n: number) => void, stop: () => void } {
  if (process.stderr.isTTY !== true) return { add: () => {}, total: () => {}, stop: () => {} }
  const bar = newBar({ format: `${label} [{bar}] {percentage}% {value}/{total} MiB`, stream: process.stderr, hideCursor: true, clearOnComplete: true })
  let done = 0
  let started = false
  return {
    total: n => { if (!started) { bar.start(Math.max(1, Math.ceil(n / 1048576)), 0); started = true } else bar.setTotal(Math.max(1, Math.ceil(n / 1048576))) },
    add: n => { done += n; if (started) bar.update(Math.floor(done / 1048576)) },
    stop: () => { if (started) bar.stop() }
  }
}

function keepRules (values: Record<string, string>): PruneKeep {
  const rules: PruneKeep = {}
  for (const name of pruneRules) {
    const value = values[name]
    if (value === undefined) continue
    if (!/^\d+$/.test(value)) throw new UsageError(`--keep-${name} needs a whole number, not '${value}'`)
    rules[name] = Number(value)
  }
  return rules
}

const remoteSubcommands = ['add', 'list', 'remove', 'ls', 'verify', 'prune', 'gc']
const keySubcommands = ['create', 'fingerprint']

export const remoteCommands: Record<string, Command> = {
  remote: {
    usage: 'remote SUBCOMMAND ...',
    summary: `the pool's remote stores on S3: remote ${remoteSubcommands.join('|')} (below)`,
    spec: { positionals: ['SUBCOMMAND'] },
    async run ({ positionals: [sub] }) {
      throw new UsageError(`unknown subcommand '${sub}': use one of ${remoteSubcommands.map(s => `remote ${s}`).join(', ')}`)
    }
  },
  key: {
    usage: 'key SUBCOMMAND ...',
    summary: `keys of encrypted remotes: key ${keySubcommands.join('|')} (below)`,
    spec: { positionals: ['SUBCOMMAND'] },
    async run ({ positionals: [sub] }) {
      throw new UsageError(`unknown subcommand '${sub}': use one of ${keySubcommands.map(s => `key ${s}`).join(', ')}`)
    }
  },
  'key create': {
    usage: 'key create FILE [--json]',
    summary: 'make a new key for an encrypted remote in FILE (mode 0600, never over an existing file); prints its fingerprint',
    spec: { positionals: ['FILE'], booleans: json },
    async run ({ positionals: [file], flags }) {
      const key = createKeyFile(file)
      print(flags.json === true, { file: key.file, fingerprint: key.fingerprint }, () => [
        `created key ${key.file ?? file} (fingerprint ${key.fingerprint})`,
        'Keep a copy of this file somewhere safe, away from the store and from this host: without it, nothing in a store',
        'encrypted with it can be read back. Every host that pushes to or pulls from the store needs a copy (mode 0600).'
      ].join('\n'))
    }
  },
  'key fingerprint': {
    usage: 'key fingerprint FILE [--json]',
    summary: "a key file's fingerprint (what remote list and an encrypted store's errors show)",
    spec: { positionals: ['FILE'], booleans: json },
    async run ({ positionals: [file], flags }) {
      const key = readKeyFile(file)
      print(flags.json === true, { file: key.file, fingerprint: key.fingerprint }, () => key.fingerprint)
    }
  },
  'remote add': {
    usage: 'remote add MNT NAME s3://BUCKET[/PREFIX] [--endpoint URL] [--region R] [--key FILE] [--grace-period SECONDS] [--json]',
    summary: 'add a remote dedup store on S3 to the pool (bucket and store created if missing; credentials from the AWS environment); with --key, encrypted on this host with that key (vdiskfs key create)',
    spec: { positionals: ['MNT', 'NAME', 'URL'], booleans: json, values: { endpoint: ['--endpoint'], region: ['--region'], grace: ['--grace-period'], key: ['--key'] } },
    async run ({ positionals: [mnt, name, url], flags, values }) {
      const key = values.key === undefined ? null : readKeyFile(values.key)
      const definition = makeDefinition(name, url, values.endpoint, values.region, key === null ? undefined : { file: key.file ?? values.key!, fingerprint: key.fingerprint })
      if (values.grace !== undefined && !/^[1-9]\d*$/.test(values.grace)) throw new UsageError(`--grace-period needs a number of seconds, not '${values.grace}'`)
      // The store first: a remote that cannot be reached, or whose key this is not, is not added.
      const store = await RemoteStore.open(definition, name, { create: true, graceSeconds: values.grace === undefined ? undefined : Number(values.grace), key })
      const graceSeconds = store.marker.graceSeconds
      store.close()
      const added = await call(mountpointArg(mnt), 'remoteAdd', { name, url, endpoint: values.endpoint, region: values.region, keyFile: definition.keyFile, keyFingerprint: definition.keyFingerprint })
      print(flags.json === true, { ...added, encrypted: key !== null, graceSeconds }, () => `added remote ${name}: ${url}${added.endpoint === undefined ? '' : ` at ${added.endpoint}`} (gc grace period ${graceSeconds} s)` +
        (key === null ? '' : `, encrypted with key ${definition.keyFile ?? ''} (fingerprint ${key.fingerprint})`))
    }
  },
  'remote list': {
    usage: 'remote list MNT [--json]',
    summary: "the pool's remotes",
    spec: { positionals: ['MNT'], booleans: json },
    async run ({ positionals: [mnt], flags }) {
      const remotes = await onlineOrOffline(mnt, 'remotes', async mountpoint => await call(mountpoint, 'remoteList'), async (pool: Pool) => readRemotes(pool.dir))
      print(flags.json === true, remotes, () => remotes.length === 0 ? 'no remotes' : table(['NAME', 'URL', 'ENDPOINT', 'KEY', 'ADDED'], remotes.map(r => [r.name, r.url, r.endpoint ?? '-', r.keyFingerprint ?? '-', r.added])))
    }
  },
  'remote remove': {
    usage: 'remote remove MNT NAME [--json]',
    summary: 'forget a remote (its store is left as it is)',
    spec: { positionals: ['MNT', 'NAME'], booleans: json },
    async run ({ positionals: [mnt, name], flags }) {
      const result = await call(mountpointArg(mnt), 'remoteRemove', { name })
      print(flags.json === true, result, () => `removed remote ${name}`)
    }
  },
  'remote ls': {
    usage: 'remote ls MNT REMOTE [--json]',
    summary: 'the backups in a remote: id, source name, size, creation time, host',
    spec: { positionals: ['MNT', 'REMOTE'], booleans: json },
    async run ({ positionals: [mnt, name], flags }) {
      const backups = await withStore(await remoteOf(mnt, name), async store => await store.backups())
      print(flags.json === true, backups, () => backups.length === 0 ? `no backups in remote ${name}` : table(['ID', 'NAME', 'SOURCE', 'SIZE', 'CREATED', 'HOST'], backups.map(b => [b.id, cell(b.name), cell(b.source), bytes(b.size), cell(b.created), cell(b.host)])))
    }
  },
  'remote verify': {
    usage: 'remote verify MNT REMOTE [--json]',
    summary: 'read every chunk of every backup in a remote and check it against its id (in an encrypted remote: authenticate it, without decompressing)',
    spec: { positionals: ['MNT', 'REMOTE'], booleans: json },
    async run ({ positionals: [mnt, name], flags }) {
      const remote = await remoteOf(mnt, name)
      const progress = byteProgress(`verify ${name}`)
      let last = 0
      const report = await withStore(remote, async store => await store.verify((done, total) => { progress.total(total * 1048576); progress.add((done - last) * 1048576); last = done })).finally(() => progress.stop())
      print(flags.json === true, report, () => [
        `${report.backups} backups, ${report.chunks} chunks (${bytes(report.bytes)}) checked: ${report.problems.length === 0 ? 'all good' : `${report.problems.length} problems`}`,
        ...report.problems.map(p => `  backup ${p.backup} (${cell(p.name)}) bytes ${p.start}-${p.start + p.length - 1}: chunk ${p.chunk}: ${p.problem}`)
      ].join('\n'))
      if (report.problems.length > 0) process.exitCode = 1
    }
  },
  'remote prune': {
    usage: 'remote prune MNT REMOTE [--keep-last N] [--keep-hourly N] [--keep-daily N] [--keep-weekly N] [--keep-monthly N] [--keep-yearly N] [--match GLOB] [--dry-run] [--json]',
    summary: 'remove the backups of a remote that no keep rule keeps (their chunks go at the next remote gc)',
    spec: {
      positionals: ['MNT', 'REMOTE'],
      booleans: { ...json, dryRun: ['--dry-run', '-n'] },
      values: { last: ['--keep-last'], hourly: ['--keep-hourly'], daily: ['--keep-daily'], weekly: ['--keep-weekly'], monthly: ['--keep-monthly'], yearly: ['--keep-yearly'], match: ['--match'] }
    },
    async run ({ positionals: [mnt, name], flags, values }) {
      const rules = keepRules(values)
      if (!keepsAnything(rules)) throw new UsageError('give at least one --keep-* rule with a count above 0 (prune never removes every backup)')
      const matches = globPattern(values.match ?? '*')
      const remote = await remoteOf(mnt, name)
      const result = await withStore(remote, async store => {
        const backups = (await store.backups()).filter(b => matches.test(b.name))
        // The same selection as local prune (transfer/prune.ts), grouped by host and source volume.
        const decisions = selectPrune(backups.map((b, i) => ({ id: i, name: b.name, createdMs: Date.parse(b.created), group: `${b.host} ${b.source}` })), rules)
        for (const d of decisions) if (!d.keep && flags.dryRun !== true) await store.removeBackup(backups[d.id].id)
        return decisions.map(d => ({ id: backups[d.id].id, name: d.name, created: backups[d.id].created, host: backups[d.id].host, source: backups[d.id].source, action: d.keep ? 'keep' : 'remove', rule: d.rule }))
      })
      print(flags.json === true, { dryRun: flags.dryRun === true, backups: result }, () => result.length === 0
        ? 'no backups matched'
        : table(['ACTION', 'ID', 'NAME', 'CREATED', 'RULE'], result.map(r => [flags.dryRun === true ? `would ${r.action}` : r.action, r.id, cell(r.name), cell(r.created), r.rule ?? '-'])))
    }
  },
  'remote gc': {
    usage: 'remote gc MNT REMOTE [--dry-run] [--json]',
    summary: "remove the chunks no backup in a remote names, once older than the store's grace period",
    spec: { positionals: ['MNT', 'REMOTE'], booleans: { ...json, dryRun: ['--dry-run', '-n'] } },
    async run ({ positionals: [mnt, name], flags }) {
      const report = await withStore(await remoteOf(mnt, name), async store => await store.gc({ dryRun: flags.dryRun === true }))
      print(flags.json === true, report, () => `${report.dryRun ? 'would remove' : 'removed'} ${report.chunksRemoved} chunks (${bytes(report.bytesRemoved)}) of ${report.chunks}; ${report.manifests} backups; ${report.chunksKeptYoung} unreferenced chunks kept (younger than the grace period)`)
    }
  },
  push: {
    usage: 'push BACKUP_IMAGE REMOTE [--full] [--json]',
    summary: "upload a backup to a remote (only the chunks it lacks; incremental on the lineage's last pushed backup); prints its id there",
    spec: { positionals: ['BACKUP_IMAGE', 'REMOTE'], booleans: { ...json, full: ['--full'] } },
    async run ({ positionals: [image, name], flags }) {
      const target = imagePath(image)
      if (target.kind !== 'backup') throw invalid(`${image} is not a backup: push takes MNT/backups/NAME.img (make one with vdiskfs backup)`)
      const remote = await remoteOf(target.mountpoint, name)
      const progress = byteProgress(`push ${target.name}`)
      const result = await withStore(remote, async store => await pushBackup(store, target.mountpoint, target.name, { host: os.hostname(), full: flags.full === true, progress })).finally(() => progress.stop())
      print(flags.json === true, result, () => `${result.id}\n` +
        `pushed ${target.name} to ${name}${result.since === null ? '' : ` (incremental since ${result.since})`}: ${result.chunksUploaded} chunks uploaded (${bytes(result.bytesUploaded)}), ${result.chunksReused} already there${result.created ? '' : '; this backup was already in the remote'}`)
    }
  },
  pull: {
    usage: 'pull MNT REMOTE ID NAME [--lazy [--resume] [--foreground]] [--json]',
    summary: 'download backup ID of a remote, every chunk checked, as MNT/backups/NAME.img; with --lazy, the backup is there at once and a hydrator process fills it in (--resume: start the hydrator again; --foreground: hydrate in this process until done)',
    spec: { positionals: ['MNT', 'REMOTE', 'ID', 'NAME'], booleans: { ...json, lazy: ['--lazy'], resume: ['--resume'], foreground: ['--foreground'] } },
    async run ({ positionals: [mnt, name, id, backupName], flags }) {
      if (!isBackupId(id)) throw invalid(`'${id}' is not a remote backup id (32 hex digits; see vdiskfs remote ls)`)
      const file = newImageName(backupName)
      const mountpoint = mountpointArg(mnt)
      const remote = await remoteOf(mountpoint, name)
      if (flags.lazy === true) { await lazyPull(remote, mountpoint, id, file, { resume: flags.resume === true, foreground: flags.foreground === true, json: flags.json === true }); return }
      if (flags.resume === true || flags.foreground === true) throw new UsageError('--resume and --foreground go with --lazy')
      const progress = byteProgress(`pull ${id.slice(0, 8)}`)
      const result = await withStore(remote, async store => await pullBackup(store, mountpoint, id, file, progress)).finally(() => progress.stop())
      print(flags.json === true, result, () => `pulled ${id} from ${name} as backups/${file} (${bytes(result.size)})`)
    }
  }
}

/**
 * `pull --lazy`: makes the backup at once (unless --resume: it exists), then fills it in, in a detached
 * hydrator process (this command run again with --resume --foreground; its output goes to
 * CONTROL_DIR/hydrate-UUID.log) or, with --foreground, here until it is whole. A new pull starts its
 * hydrator first, told to wait for the backup (VDISKFS_HYDRATE_AWAIT_MS): its own start (Node, the AWS
 * SDK, the manifest and the pack indexes) overlaps the backup's making, and the first reads wait less.
 */
async function lazyPull (remote: RemoteDefinition, mountpoint: string, id: string, file: string, options: { resume: boolean, foreground: boolean, json: boolean }): Promise<void> {
  const log = (line: string): void => { process.stderr.write(`${new Date().toISOString()} ${line}\n`) }
  const awaitMs = Number(process.env.VDISKFS_HYDRATE_AWAIT_MS ?? '0')
  if (options.resume && options.foreground && Number.isSafeInteger(awaitMs) && awaitMs > 0) {
    // A hydrator started before its backup exists: the backup's identity is the manifest's.
    const result = await withStore(remote, async store => await hydrate(store, mountpoint, id, pulledIdentity(id, await store.manifest(id)), { log, awaitMs }))
    print(options.json, { id, name: file, hydrated: true, chunksSent: result.sent }, () => `backups/${file} is whole (${result.sent} chunks fetched)`)
    return
  }
  let uuid: string
  let made: LazyPullResult | null = null
  // The hydrator a new pull starts before it makes the backup (set inside the store's callback).
  const started: { early: { pid: number | null, log: string, running: () => boolean } | null } = { early: null }
  if (!options.resume) {
    made = await withStore(remote, async store => {
      // The pack indexes (for the head's chunks) load while the manifest comes.
      store.preloadPacks()
      const manifest = await store.manifest(id)
      trace('manifest read')
      if (!options.foreground) started.early = startHydrator(remote.name, mountpoint, id, file, pulledIdentity(id, manifest), true)
      try {
        trace('hydrator started')
        const made = await createLazyBackup(store, remote.name, mountpoint, id, file, manifest)
        trace('backup made')
        // The backup exists: the hydrator's turn (startHydrator niced it meanwhile), at this command's nice
        // value again. Best effort: only root may take a nice value back, and on Linux this reaches its main thread only (where it fetches).
        // Only while it runs (not reaped: its pid is still its own).
        const early = started.early
        if (early?.pid != null && early.running()) { try { os.setPriority(early.pid, os.getPriority()) } catch {} }
        return made
      } catch (err) {
        // The hydrator this command started waits for a backup that will not come: it goes (by its pid).
        const pid = started.early?.pid
        if (pid != null) { try { process.kill(pid, 'SIGKILL') } catch {} }
        throw err
      }
    })
    uuid = made.uuid
  } else {
    const volumes = await call(mountpoint, 'ls') as Array<{ kind: string, name: string }>
    if (!volumes.some(v => v.kind === 'backup' && v.name === file)) throw new VdiskError('NOT_FOUND', `backups/${file} does not exist: pull --lazy without --resume makes it`)
    uuid = (await call(mountpoint, 'uuid', { kind: 'backup', name: file }) as { uuid: string }).uuid
  }
  const pending = (await lazyPulls(mountpoint)).find(p => p.uuid === uuid)
  const earlyPid = started.early?.pid
  if (pending === undefined && earlyPid != null) { try { process.kill(earlyPid, 'SIGKILL') } catch {} started.early = null }
  if (pending !== undefined && pending.manifest !== id) throw invalid(`backups/${file} is being pulled from backup ${pending.manifest}, not ${id}`)
  if (pending !== undefined && pending.remote !== remote.name) throw invalid(`backups/${file} is being pulled from remote ${pending.remote}, not ${remote.name}`)
  if (options.foreground) {
    const result = pending === undefined ? { sent: 0 } : await withStore(remote, async store => await hydrate(store, mountpoint, id, uuid, { log }))
    print(options.json, { ...(made ?? {}), id, name: file, uuid, hydrated: true, chunksSent: result.sent }, () => `backups/${file} is whole (${result.sent} chunks fetched)`)
    return
  }
  if (pending !== undefined && pending.hydrator && started.early === null) throw new VdiskError('BUSY', `a hydrator is running already for backups/${file} (vdiskfs status)`)
  const hydrator = started.early ?? (pending === undefined ? null : startHydrator(remote.name, mountpoint, id, file, uuid, false))
  const result = { ...(made ?? {}), id, name: file, uuid, hydratorPid: hydrator?.pid ?? null, hydratorLog: hydrator?.log ?? null, missing: pending?.missing ?? 0, chunks: pending?.chunks ?? 0 }
  print(options.json, result, () => pending === undefined
    ? `backups/${file} is whole already`
    : `${made === null ? 'resumed' : `pulled ${id} from ${remote.name} lazily as backups/${file} (${bytes(made.size)})`}: ${pending.missing} of ${pending.chunks} chunks to fetch, by hydrator pid ${String(hydrator?.pid)} (log ${hydrator?.log ?? ''}); vdiskfs status shows its progress`)
}

/**
 * The hydrator: this command again with --resume --foreground, detached, its output appended to
 * CONTROL_DIR/hydrate-UUID.log. It holds the credentials and key; the daemon never does. With `await`,
 * it waits (up to 2 minutes) for the backup this command is making.
 */
function startHydrator (remote: string, mountpoint: string, id: string, file: string, uuid: string, wait: boolean): { pid: number | null, log: string, running: () => boolean } {
  pulledIdentity(id, { identity: uuid }) // the log's name: never a path
  const log = path.join(controlDir(), `hydrate-${uuid}.log`)
  const out = fs.openSync(log, 'a', 0o600)
  try {
    const env = { ...process.env, VDISKFS_HYDRATE_AWAIT_MS: wait ? String(hydratorAwaitMs) : '0' }
    const child = spawn(process.execPath, [process.argv[1], 'pull', mountpoint, remote, id, file.replace(/\.img$/, ''), '--lazy', '--resume', '--foreground'], { detached: true, stdio: ['ignore', out, out], env })
    child.unref()
    // Started before its backup exists, it loads Node, the SDK, the manifest and the pack indexes while
    // this command and the daemon make the backup: niced meanwhile, so that on a busy machine (2 cores)
    // it takes what they leave rather than a share of the time to the backup (lazyPull gives it back).
    if (wait && child.pid !== undefined) { try { os.setPriority(child.pid, Math.min(19, os.getPriority() + hydratorStartNice)) } catch {} }
    return { pid: child.pid ?? null, log, running: () => child.exitCode === null && child.signalCode === null }
  } finally { fs.closeSync(out) }
}

/** A hydrator `vdiskfs mount` started: the pull's backup (backups/NAME), its remote, the process and its log. */
export interface ResumedHydrator { backup: string, remote: string, pid: number | null, log: string }

/**
 * `vdiskfs mount`, once the mount is ready: starts a hydrator (as `pull --lazy --resume` does) for each
 * lazy pull in progress that has none connected, so hydration resumes at every mount by itself (the
 * reasons: docs/REMOTE.md, "Who fetches"). Not the daemon's job: a child of the daemon would inherit its
 * /dev/fuse descriptor, and the daemon holds no credentials. A hydrator that finds another connected (one
 * that outlived the daemon and reconnected first) exits with BUSY: at most one fetches.
 */
export async function resumeHydrators (mountpoint: string): Promise<ResumedHydrator[]> {
  const started: ResumedHydrator[] = []
  for (const pull of await lazyPulls(mountpoint)) {
    if (pull.hydrator || pull.name === null) continue
    const { pid, log } = startHydrator(pull.remote, mountpoint, pull.manifest, pull.name, pull.uuid, false)
    started.push({ backup: pull.name, remote: pull.remote, pid, log })
  }
  return started
}

/** How much nicer than this command a hydrator started before its backup exists is, until the backup is made. */
const hydratorStartNice = 10

/** How long a hydrator started with a new pull waits for its backup to appear. */
const hydratorAwaitMs = 120_000

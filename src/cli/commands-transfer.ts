/**
 * CLI commands of issue #12: diff, export, import, prune. Export and import stream through this
 * process (src/cli/transfer-client.ts): the daemon reads and stores blocks, this process encodes and
 * decodes the export stream, and shows progress on a terminal (nothing otherwise).
 */
import fs from 'node:fs'
import path from 'node:path'
import { Readable, Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { VdiskError, fromSystemError, invalid } from '../errors'
import { call } from '../control/client'
import { exportStream, importStageStream, importStream, ImportResult } from './transfer-client'
import { GroupStreamReader, groupStream } from '../transfer/group-stream'
import { streamBufferBytes } from '../limits'
import { pruneRules } from '../transfer/prune'
import { StreamHeader } from '../transfer/stream'
import { UsageError } from './args'
import { bytes, table } from './format'
import { PartialFile, createPartial, publish } from './new-file'
import { Command, imagePath, jsonVolume, mountpointArg, newImageName, print, time, newBar } from './command'

/** A progress bar of blocks on a terminal; nothing when stderr is not one. */
function blockProgress (label: string): { header: (h: StreamHeader) => void, block: (done: number) => void, stop: () => void } {
  if (process.stderr.isTTY !== true) return { header: () => {}, block: () => {}, stop: () => {} }
  const bar = newBar({ format: `${label} [{bar}] {percentage}% {value}/{total} blocks`, stream: process.stderr, hideCursor: true, clearOnComplete: true })
  let started = false
  let last = 0
  return {
    header: h => { bar.start(Math.max(1, h.records), 0); started = true },
    // Every 64 blocks (4 MiB at 64 KiB): redrawing for each block would cost more than the block.
    block: done => { if (started && done - last >= 64) { bar.update(done); last = done } },
    stop: () => { if (started) bar.stop() }
  }
}

/**
 * Where `export -o FILE` writes. FILE must not exist (export never replaces a file, as `cp` out of the
 * pool does not), unless it is a character device or a pipe of ours or root's (/dev/null, /dev/stdout):
 * those are written straight into. Otherwise the stream goes to a partial file beside FILE (new-file.ts),
 * which publish() names FILE once complete. Errors: EXISTS, INVALID, IO.
 */
function openOutput (output: string): { fd: number, partial: PartialFile | null } {
  let stat: fs.Stats | null = null
  try { stat = fs.statSync(output) } catch (err) { if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromSystemError(err, `looking at ${output}`) }
  if (stat !== null) {
    if (!stat.isCharacterDevice() && !stat.isFIFO()) throw new VdiskError('EXISTS', `${output} exists: export writes a new file and never replaces one (remove it first, or choose another name)`)
    // A named pipe another user made would hand them the backup's bytes.
    const me = process.geteuid?.() ?? 0
    if (stat.isFIFO() && stat.uid !== me && stat.uid !== 0) throw invalid(`${output} is a pipe of another user (uid ${stat.uid}): export does not write a backup into it`)
    let fd: number
    try { fd = fs.openSync(output, fs.constants.O_WRONLY | fs.constants.O_NOCTTY) } catch (err) { throw fromSystemError(err, `opening ${output}`) }
    const opened = fs.fstatSync(fd)
    if (opened.dev !== stat.dev || opened.ino !== stat.ino) { fs.closeSync(fd); throw new VdiskError('IO', `${output} changed while it was opened`) }
    return { fd, partial: null }
  }
  const partial = createPartial(output)
  return { fd: partial.fd, partial }
}

function appeared (output: string): VdiskError {
  return new VdiskError('EXISTS', `${output} appeared during the export: export never replaces a file (the stream was not kept)`)
}

/** The name of a backup in MNT/backups (BACKUP is an image path, or for --since also a plain name). */
function backupName (arg: string): string {
  return arg.includes('/') ? imagePath(arg).name : newImageName(arg)
}

/**
 * `import --group GROUP MNT FILE|-`: every member's stream staged in turn (received whole and checked,
 * no backup yet; resumed when run again), then the whole group made in one step. A member named
 * OLDGROUP-IMAGENAME.img on the exporting host becomes GROUP-IMAGENAME.img here.
 */
async function importGroup (mountpoint: string, file: string, group: string, json: boolean): Promise<void> {
  if (group === '' || group.includes('/')) throw invalid(`invalid group name '${group}'`)
  let input: Readable
  if (file === '-') input = process.stdin
  else {
    try { fs.accessSync(file, fs.constants.R_OK) } catch (err) { throw fromSystemError(err, `reading ${file}`) }
    input = fs.createReadStream(file)
  }
  process.exitCode = 1
  const started = Date.now()
  const reader = new GroupStreamReader(input)
  try {
    const header = await reader.readHeader()
    const keys: string[] = []
    let blocks = 0
    for (const member of header.members) {
      const rest = member.name.startsWith(`${header.group}-`) ? member.name.slice(header.group.length + 1) : member.name
      const staged = await importStageStream(mountpoint, newImageName(`${group}-${rest}`), reader.member())
      keys.push(staged.staged.key)
      blocks += staged.blocks
    }
    await reader.end()
    const result = await call(mountpoint, 'importGroupFinish', { group, keys })
    process.exitCode = 0
    print(json, result.backups.map(b => ({ backup: path.join(mountpoint, 'backups', b.name), ...jsonVolume(b), uuid: b.uuid })), () =>
      `imported group ${group}: ${result.backups.map(b => path.join(mountpoint, 'backups', b.name)).join(', ')} (${blocks} blocks) in ${((Date.now() - started) / 1000).toFixed(1)} s`)
  } finally {
    if (input !== process.stdin) input.destroy()
  }
}

export const transferCommands: Record<string, Command> = {
  diff: {
    usage: 'diff OLD NEW [--json]',
    summary: 'byte ranges that differ between two volumes of one pool (a backup and a later backup, or a backup and its disk)',
    spec: { positionals: ['OLD', 'NEW'], booleans: { json: ['--json'] } },
    async run ({ positionals: [oldImage, newImage], flags }) {
      const older = imagePath(oldImage)
      const newer = imagePath(newImage)
      if (older.mountpoint !== newer.mountpoint) throw invalid('OLD and NEW must be in the same vdiskfs mount')
      const result = await call(older.mountpoint, 'diff', { olderKind: older.kind, olderName: older.name, newerKind: newer.kind, newerName: newer.name })
      print(flags.json === true, result.ranges, () => {
        if (result.ranges.length === 0) return 'no differences'
        const total = result.ranges.reduce((sum, r) => sum + r.length, 0)
        return table(['START', 'LENGTH'], result.ranges.map(r => [String(r.start), String(r.length)])) + `\n\n${result.ranges.length} ranges, ${bytes(total)}`
      })
    }
  },

  export: {
    usage: 'export BACKUP [--since OLDER_BACKUP] [-o FILE|-] [--json] | export --group GROUP MNT [-o FILE|-] [--json]',
    summary: 'write a backup as a self-describing stream (docs/FORMAT.md), whole or the blocks changed since an older backup; with --group, every backup of a consistency group as one stream',
    spec: { positionals: ['BACKUP'], booleans: { json: ['--json'] }, values: { since: ['--since'], output: ['-o', '--output'], group: ['--group'] } },
    async run ({ positionals: [image], flags, values }) {
      const group = values.group
      if (group !== undefined && values.since !== undefined) throw new UsageError('export --group writes whole backups: --since is not taken with it')
      // The group's backups, in the order they were made (one id each), from the daemon's list.
      const members = group === undefined ? null : (await call(mountpointArg(image), 'ls', {})).filter(v => v.kind === 'backup' && v.groupName === group).sort((a, b) => a.id - b.id)
      if (members !== null && members.length === 0) throw new VdiskError('NOT_FOUND', `no backup group ${String(group)} in ${image}`)
      const source = members === null ? imagePath(image) : { mountpoint: mountpointArg(image), kind: 'backup' as const, name: members.map(m => m.name).join(', ') }
      if (source.kind !== 'backup') throw invalid(`${image} is not a backup: export a backup (take one with vdiskfs backup)`)
      const since = values.since === undefined ? undefined : backupName(values.since)
      if (values.since?.includes('/') === true && imagePath(values.since).mountpoint !== source.mountpoint) throw invalid('--since must name a backup in the same mount')
      const output = values.output ?? '-'
      if (output === '-' && process.stdout.isTTY === true) throw new UsageError('refusing to write a binary stream to a terminal: give -o FILE or redirect the output')
      // Should the event loop ever run dry before the export ends, Node exits with this status, not 0.
      process.exitCode = 1
      // A file appears under its name only when complete (a new file of ours, published with link());
      // a device or a pipe (/dev/null, /dev/stdout) is written straight into.
      const target = output === '-' ? null : openOutput(output)
      const partial = target?.partial ?? null
      const progress = blockProgress('export')
      let header: StreamHeader | null = null
      const started = Date.now()
      const stream = members === null
        ? exportStream(source.mountpoint, 'backup', source.name, { since, onHeader: h => { header = h; progress.header(h) }, onBlock: progress.block })
        : groupStream({ version: 1, group: group as string, members: members.map(m => ({ name: m.name })) }, i => exportStream(source.mountpoint, 'backup', members[i].name))
      let sink: Writable
      if (target === null) {
        sink = process.stdout
        // main.ts ends the process quietly on EPIPE (the reader had what it wanted): for a stream cut
        // short that is a failure, said in one line first (stderr to a pipe or file is synchronous).
        process.stdout.prependListener('error', (err: NodeJS.ErrnoException) => {
          if (err.code === 'EPIPE') process.stderr.write('vdiskfs export: the reader of the stream went away before its end\n')
        })
      } else {
        sink = fs.createWriteStream('', { fd: target.fd, autoClose: false, highWaterMark: streamBufferBytes })
      }
      let streamBytes = 0
      stream.on('data', (chunk: Buffer) => { streamBytes += chunk.length })
      // The file's write stream closes its descriptor when destroyed (pipeline destroys it on a
      // failure, asynchronously): only it closes the descriptor, and a failed export waits for that.
      const closed = async (): Promise<void> => {
        if (target === null || sink.closed) return
        const done = new Promise(resolve => sink.once('close', resolve))
        sink.destroy()
        await done
      }
      try {
        await pipeline(stream, sink, { end: target !== null })
        if (partial !== null) fs.fsyncSync((target as { fd: number }).fd)
        await closed()
        if (partial !== null) { publish(partial.path, output, () => appeared(output)); partial.forget() }
      } catch (err) {
        await closed()
        if (partial !== null) { fs.rmSync(partial.path, { force: true }); partial.forget() }
        if (err instanceof VdiskError) throw err
        if ((err as NodeJS.ErrnoException).code === 'EPIPE' || (err as NodeJS.ErrnoException).code === 'ERR_STREAM_PREMATURE_CLOSE') throw new VdiskError('IO', 'the reader of the stream went away before its end')
        throw err instanceof VdiskError ? err : fromSystemError(err, 'exporting')
      } finally {
        progress.stop()
      }
      const h = header as StreamHeader | null
      const summary = members === null
        ? { backup: source.name, uuid: h?.uuid, since: since ?? null, baseUuid: h?.baseUuid ?? null, size: h?.size, blocks: h?.records, streamBytes, elapsedMs: Date.now() - started, output }
        : { group, backups: members.map(m => m.name), streamBytes, elapsedMs: Date.now() - started, output }
      const line = members === null
        ? `exported ${source.name}${since !== undefined ? ` since ${since}` : ''}: ${h?.records ?? 0} blocks, ${bytes(streamBytes)} in ${((Date.now() - started) / 1000).toFixed(1)} s`
        : `exported group ${String(group)} (${source.name}): ${bytes(streamBytes)} in ${((Date.now() - started) / 1000).toFixed(1)} s`
      // With the stream on stdout, the summary goes to stderr (and only when asked for, or on a terminal).
      process.exitCode = 0
      if (output === '-') { if (flags.json === true) process.stderr.write(JSON.stringify(summary) + '\n'); else if (process.stderr.isTTY === true) process.stderr.write(line + '\n') } else print(flags.json === true, summary, () => `${line} -> ${output}`)
    }
  },

  import: {
    usage: 'import MNT FILE|- NAME [--json] | import --group GROUP MNT FILE|- [--json]',
    summary: 'create backups/NAME.img from an export stream (an incremental one needs its base backup here); atomic, and resumed when repeated after an interruption; with --group, a group stream as consistency group GROUP',
    spec: { positionals: ['MNT', 'FILE'], optional: ['NAME'], booleans: { json: ['--json'] }, values: { group: ['--group'] } },
    async run ({ positionals: [mnt, file, name], flags, values }) {
      const mountpoint = mountpointArg(mnt)
      if (values.group !== undefined) {
        if (name !== undefined) throw new UsageError('import --group GROUP takes MNT and FILE|- alone (the backups are named GROUP-IMAGENAME.img)')
        await importGroup(mountpoint, file, values.group, flags.json === true)
        return
      }
      if (name === undefined) throw new UsageError('expected 3 arguments (MNT FILE|- NAME), got 2')
      const target = newImageName(name)
      let input: Readable
      if (file === '-') input = process.stdin
      else {
        try { fs.accessSync(file, fs.constants.R_OK) } catch (err) { throw fromSystemError(err, `reading ${file}`) }
        input = fs.createReadStream(file)
      }
      process.exitCode = 1 // as for export: never 0 unless the import finished
      const progress = blockProgress('import')
      const started = Date.now()
      let result: ImportResult
      try {
        result = await importStream(mountpoint, target, input, { onHeader: progress.header, onBlock: progress.block })
      } finally {
        progress.stop()
      }
      const elapsedMs = Date.now() - started
      process.exitCode = 0
      print(flags.json === true, { ...result, backup: jsonVolume(result.backup), elapsedMs }, () =>
        `imported ${path.join(mountpoint, 'backups', target)} (${result.blocks} blocks, ${result.newChunks} new chunks, ${result.dedupedBlocks} already here` +
        `${result.resumedBlocks > 0 ? `, ${result.resumedBlocks} from an interrupted import` : ''}) in ${(elapsedMs / 1000).toFixed(1)} s`)
    }
  },

  prune: {
    usage: 'prune MNT --keep-last N --keep-hourly N --keep-daily N --keep-weekly N --keep-monthly N --keep-yearly N [--match GLOB] [--dry-run] [--json]',
    summary: 'remove the backups no retention rule keeps (Proxmox Backup Server rules, by creation time, per source volume; see README)',
    spec: {
      positionals: ['MNT'],
      booleans: { json: ['--json'], dryRun: ['--dry-run', '-n'] },
      values: { ...Object.fromEntries(pruneRules.map(rule => [rule, [`--keep-${rule}`]])), match: ['--match'] }
    },
    async run ({ positionals: [mnt], flags, values }) {
      const args: Record<string, unknown> = { dryRun: flags.dryRun === true }
      for (const rule of pruneRules) {
        const text = values[rule]
        if (text === undefined) continue
        if (!/^\d+$/.test(text)) throw new UsageError(`--keep-${rule} needs a whole number, not '${text}'`)
        args[rule] = Number(text)
      }
      if (!pruneRules.some(rule => typeof args[rule] === 'number' && (args[rule] as number) > 0)) {
        throw new UsageError('give at least one --keep-* rule with a count above 0 (prune never removes every backup)')
      }
      if (values.match !== undefined) args.match = values.match
      const result = await call(mountpointArg(mnt), 'prune', args)
      const failed = result.backups.filter(b => b.error !== null)
      if (failed.length > 0) process.exitCode = 1
      print(flags.json === true, { dryRun: result.dryRun, backups: result.backups.map(({ createdMs, ...b }) => ({ ...b, created: time(createdMs) })) }, () => {
        if (result.backups.length === 0) return 'no backups to prune'
        const rows = result.backups.map(b => [b.name, time(b.createdMs), b.group, b.keep ? 'keep' : result.dryRun ? 'remove' : b.removed ? 'removed' : 'kept (failed)', b.keep ? (b.rule === 'protected' ? 'protected' : `keep-${String(b.rule)}`) : (b.error ?? '')])
        return table(['BACKUP', 'CREATED', 'SOURCE', 'ACTION', 'WHY'], rows) + (result.dryRun ? '\n\n(dry run: nothing removed)' : '')
      })
    }
  }
}

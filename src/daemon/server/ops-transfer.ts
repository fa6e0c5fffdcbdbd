/**
 * Control operations of issue #12: diff, export, import, prune. Export and import use the control
 * socket's stream mode (server.ts) and the frames of transfer/wire.ts: the daemon reads and stores
 * blocks (verified reads; hashing and compression of what it stores in the workers), the CLI encodes
 * and decodes the export stream. The event loop only moves block buffers, with the socket's
 * back-pressure in both directions.
 */
import net from 'node:net'
import { VdiskError, invalid } from '../../errors'
import { ChangedSet } from '../../map/diff'
import { PruneKeep, globPattern, keepsAnything, pruneRules, selectPrune } from '../../transfer/prune'
import { StreamHeader, streamKey } from '../../transfer/stream'
import { headerSourceLabelBytesMax } from '../../transfer/stream-format'
import { createdMsMax, exportReadBlocks, exportReadsInFlight, importBatchBlocks, importBatchFrames } from '../../limits'
import { ByteReader, errorFrame, frameData, frameEnd, frameHead, frameRef, frameZero, frameZstd, readFrame, readFrameNow, send } from '../../transfer/wire'
import { ImportBlock } from '../../volume/import'
import type { LazyRefs } from '../../volume/lazy-refs'
import { Pool } from '../../volume/pool'
import { Volume } from '../../volume/volume'
import { HandlerContext, Handlers, StreamHandler, volumeArg } from './handler'

function replyLine (result: unknown): Buffer { return Buffer.from(JSON.stringify({ id: 1, ok: true, result }) + '\n') }
function errorLine (err: unknown): Buffer {
  const error = err instanceof VdiskError ? { code: err.code, message: err.message } : { code: 'IO', message: `internal error: ${(err as Error)?.message ?? String(err)}` }
  return Buffer.from(JSON.stringify({ id: 1, ok: false, error }) + '\n')
}

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** What a backup's source is called: the live volume's label, else the one it had (or was imported with). */
function sourceLabelOf (pool: Pool, volume: Volume): string {
  const source = volume.sourceId === null ? undefined : pool.byId(volume.sourceId)
  return source !== undefined && !source.hidden ? source.label : volume.sourceLabel ?? '(imported)'
}

/**
 * exportStream: a backup's blocks (all, or those that differ from an older backup) sent to the CLI after a
 * header, as frames (transfer/wire.ts); both backups held open meanwhile.
 */
function exportHandler ({ pool, log, metrics }: HandlerContext): StreamHandler<'exportStream'> {
  const exportStream: StreamHandler<'exportStream'> = async (args, socket) => {
    let volume: Volume
    let since: Volume | null
    try {
      volume = volumeArg(pool, 'exportStream', args, 'backup')
      if (volume.kind !== 'backup') throw invalid(`${volume.label} is not a backup: export a backup (take one with vdiskfs backup)`)
      since = args.since === undefined || args.since === null ? null : volumeArg(pool, 'exportStream', { kind: 'backup', name: args.since }, 'backup')
      if (since === volume) throw invalid('--since names the backup being exported')
    } catch (err) {
      socket.end(errorLine(err))
      return
    }
    // Both held open from here until the end (the comparison runs in turns): rm refuses them (BUSY)
    // meanwhile, so their pages stay.
    const held = since === null ? [volume] : [volume, since]
    for (const v of held) pool.opened(v, false)
    try {
      let changed: ChangedSet
      try {
        changed = await pool.changedBlocks(volume, since)
      } catch (err) {
        socket.end(errorLine(err))
        return
      }
      const header: StreamHeader = {
        name: volume.name,
        blockBytes: pool.blockBytes,
        uuid: pool.volumeUuid(volume),
        baseUuid: since === null ? null : pool.volumeUuid(since),
        size: volume.size,
        createdMs: volume.createdMs,
        records: changed.count,
        // Its source's identity travels along: the importing host groups it with that source's backups.
        source: volume.sourceUuid === null ? null : { uuid: volume.sourceUuid, label: sourceLabelOf(pool, volume) }
      }
      await send(socket, replyLine(header))
      // A job while it sends (vdiskfs status lists it, with its progress in blocks).
      const progress = { done: 0, total: changed.count }
      await metrics.job(`export ${volume.name}`, async () => await sendBlocks(pool, socket, volume, changed, progress), () => progress)
      await send(socket, frameHead(frameEnd, 0, null))
      socket.end()
      log(`export: ${volume.label}${since !== null ? ` since ${since.name}` : ''}, ${changed.count} blocks`)
    } catch (err) {
      if (!socket.destroyed) socket.end(errorFrame(err instanceof VdiskError ? err.code : 'IO', (err as Error).message))
      if (!(err instanceof VdiskError && err.message === 'the connection closed')) log(`export of ${volume.label} failed: ${(err as Error).message}`)
    } finally {
      for (const v of held) await pool.released(v)
    }
  }
  return exportStream
}

/**
 * Reads the blocks and sends them in order: up to exportReadBlocks data blocks per read, neighbours
 * or not (chunks in one worker task), a few reads ahead.
 */
async function sendBlocks (pool: Pool, socket: net.Socket, volume: Volume, changed: ChangedSet, progress: { done: number }): Promise<void> {
  const blockBytes = pool.blockBytes
  type Group = Array<{ block: number, entry: number }>
  // Groups are cut as they are needed (a few ahead), each entry taken from the map when its group is
  // cut: the list of a large export is never held whole.
  const source = changed.blocks()
  let sent = 0
  const nextGroup = (): Group | null => {
    const group: Group = []
    let data = 0
    while (data < exportReadBlocks) {
      const next = source.next()
      if (next.done === true) break
      const entry = volume.map.get(next.value)
      group.push({ block: next.value, entry })
      if (entry !== 0) data++
    }
    return group.length === 0 ? null : group
  }
  // The read buffers (exportReadBlocks blocks each; a hole takes none) are used again once the socket has
  // taken their bytes: a buffer per read made V8 collect the whole heap every few dozen MiB of an export.
  const free: Buffer[] = []
  const read = async (group: Group): Promise<{ buffer: Buffer, slots: number[] }> => {
    const buffer = free.pop()?.fill(0) ?? Buffer.alloc(exportReadBlocks * blockBytes)
    let next = 0
    const slots = group.map(b => b.entry === 0 ? -1 : next++)
    await volume.readBlocks(group.flatMap((b, i) => b.entry === 0 ? [] : [{ block: b.block, target: buffer.subarray(slots[i] * blockBytes, (slots[i] + 1) * blockBytes) }]))
    return { buffer, slots }
  }
  const pending: Array<{ group: Group, data: Promise<{ buffer: Buffer, slots: number[] }> }> = []
  const readAhead = (): void => {
    while (pending.length < exportReadsInFlight) {
      const group = nextGroup()
      if (group === null) return
      const data = read(group)
      data.catch(() => {}) // awaited in order below; a failure there ends the export
      pending.push({ group, data })
    }
  }
  readAhead()
  while (pending.length > 0) {
    const { group, data: reading } = pending.shift() as { group: Group, data: Promise<{ buffer: Buffer, slots: number[] }> }
    const { buffer: data, slots } = await reading
    readAhead()
    sent += group.length
    progress.done = sent
    for (let i = 0; i < group.length; i++) {
      const { block, entry } = group[i]
      if (entry === 0) { await send(socket, frameHead(frameZero, block, null)); continue }
      // A chunk's id travels along: the CLI's encoder checks the bytes against it.
      const hash = pool.chunkHash(entry)
      await send(socket, frameHead(frameData, block, hash))
      await send(socket, data.subarray(slots[i] * blockBytes, (slots[i] + 1) * blockBytes))
    }
    // Its callback comes once the writes before it are done: the socket holds no view of the buffer then.
    socket.write(Buffer.alloc(0), err => { if (err === undefined || err === null) free.push(data) })
  }
  // The header announced changed.count records; the encoder refuses any other number.
  if (sent !== changed.count) throw new VdiskError('IO', `export sent ${sent} blocks, ${changed.count} announced`)
}

/** The stream header of an import or lazy pull, checked field by field (INVALID names the first wrong one). */
function checkedHeader (header: any, lazy: boolean, remote: string, manifest: string): StreamHeader {
  if (header === null || typeof header !== 'object' || typeof header.uuid !== 'string' || !(header.baseUuid === null || typeof header.baseUuid === 'string') ||
    ![header.size, header.blockBytes, header.createdMs].every(n => Number.isSafeInteger(n) && n >= 0)) throw invalid('missing or malformed stream header')
  // A Date holds up to 8.64e15 ms: a backup dated past it would break ls and prune of the pool.
  if (header.createdMs > createdMsMax) throw invalid(`the stream's creation time ${header.createdMs} ms is out of range (after the year 9999)`)
  // The identities name files (a lazy pull's lazy/UUID.refs): a path there would be written outside the pool.
  if (!uuidPattern.test(header.uuid) || !(header.baseUuid === null || uuidPattern.test(header.baseUuid))) throw invalid('the stream header\'s identity or base is not a UUID')
  const source = header.source ?? null
  if (source !== null && (typeof source !== 'object' || typeof source.uuid !== 'string' || !uuidPattern.test(source.uuid) ||
    typeof source.label !== 'string' || Buffer.byteLength(source.label) > headerSourceLabelBytesMax)) throw invalid('malformed source in the stream header')
  if (lazy && header.baseUuid !== null) throw invalid('a lazy pull is of a whole backup, not on a base')
  if (lazy && (!/^[0-9a-f]{32}$/.test(manifest) || !/^[^\u0000-\u001f\u007f]{1,200}$/.test(remote))) throw invalid('malformed remote or backup id of a lazy pull')
  return header as StreamHeader
}

type ImportSession = ReturnType<Pool['imports']['begin']>

/** An import's (or lazy pull's) session, from the request's checked header; a lazy pull also records its remote. */
function beginImport (pool: Pool, args: { header: unknown, name: string }, lazy: boolean, remote: string, manifest: string): ImportSession {
  const header = checkedHeader(args.header, lazy, remote, manifest)
  // A lazy pull's row is recorded in the import's own transaction (one fsync, not two).
  return pool.imports.begin({ key: streamKey(header), uuid: header.uuid, baseUuid: header.baseUuid, size: header.size, blockBytes: header.blockBytes, createdMs: header.createdMs, source: header.source ?? null, lazy }, args.name,
    lazy ? key => pool.lazy.begin({ uuid: header.uuid, importKey: key, remote, manifest, chunks: 0, startedMs: Date.now() }) : undefined)
}

/** The end of a received stream: the member staged for its group, or the backup made (and a lazy pull's hydration started); the reply. */
async function finishImport (pool: Pool, log: (line: string) => void, session: ImportSession, socket: net.Socket, stageOnly: boolean, lazy: boolean, remote: string, refs: LazyRefs | null): Promise<void> {
  if (stageOnly) {
    await session.stage()
    log(`import: staged ${session.name} (identity ${session.spec.uuid}) for its group`)
    socket.end(replyLine({ staged: { key: session.spec.key, name: session.name }, ...session.counts }))
    return
  }
  const started = Date.now()
  // A lazy pull's references are applied after the reply (volume/lazy-refs.ts): the backup is made with
  // the head's map once they are durable in its file, and reads past the head wait for them.
  const backup = refs !== null ? await pool.finishLazy(session, refs) : await session.finish()
  if (lazy) pool.lazy.started(session.spec.uuid)
  const c = session.counts
  if (refs !== null) c.absentBlocks = refs.count
  log(`import: backup ${backup.name} (identity ${session.spec.uuid}${session.spec.baseUuid !== null ? `, on ${session.spec.baseUuid}` : ''}): ` +
    `${c.newChunks} new chunks, ${c.dedupedBlocks} already here, ${c.zeroBlocks} zero, ${c.resumedBlocks} from an interrupted import${lazy ? `, ${c.absentBlocks} to fetch from remote ${remote} (lazy pull)` : ''}`)
  socket.end(replyLine({ backup: { ...backup.info(), uuid: pool.volumeUuid(backup) }, ...session.counts, finishMs: Date.now() - started }))
}

/** A lazy pull's references file that no backup took (the stream failed or ended early) is removed; a failure is logged. */
async function discardRefs (refs: LazyRefs | null, log: (line: string) => void): Promise<void> {
  if (refs !== null) await refs.discard().catch(err => log(`lazy pull: its references file ${refs.file} was not removed: ${(err as Error).message}`))
}

/**
 * Where a lazy pull's time goes in the daemon, for its log line (`lazy pull timing: ...`): from the
 * request, when the session began, the first and the end frame came, the batches' stores, the finish.
 */
class ImportTiming {
  private readonly start = performance.now()
  private readonly cpu = process.cpuUsage()
  begun = 0
  firstFrame = 0
  endFrame = 0
  finishing = 0
  private storeMs = 0
  private batches = 0

  now (): number { return performance.now() - this.start }

  /** A batch's store, timed. */
  async batch (storing: Promise<void>): Promise<void> {
    const started = performance.now()
    this.batches++
    await storing
    this.storeMs += performance.now() - started
  }

  line (steps: Record<string, number>): string {
    const cpu = process.cpuUsage(this.cpu)
    const done = this.now()
    return `lazy pull timing: ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms of CPU (every thread); begun at ${this.begun.toFixed(0)} ms, first frame at ${this.firstFrame.toFixed(0)}, ` +
      `end frame at ${this.endFrame.toFixed(0)}, ${this.batches} batches stored in ${this.storeMs.toFixed(0)} ms, last stored at ${this.finishing.toFixed(0)}, finished at ${done.toFixed(0)} ` +
      `(finish ${(done - this.finishing).toFixed(0)} ms: ${Object.entries(steps).map(([step, ms]) => `${step} ${ms.toFixed(0)}`).join(', ')})`
  }
}

/**
 * importStream: a stream's blocks received as frames and stored in batches (one stored while the next
 * arrives); the backup appears at the end frame, and an interrupted import is resumed by the next.
 * lazyPullStream (volume/lazy.ts) is the same stream with ref frames for the blocks still in the remote
 * store `args.remote` (backup `args.manifest` there).
 */
// long: the stream's handler (importStream) with its batches' buffers and timing, one loop over the frames
function importHandler<Op extends 'importStream' | 'importStageStream' | 'lazyPullStream'> ({ pool, log }: HandlerContext, op: Op): StreamHandler<Op> {
  const lazy = op === 'lazyPullStream'
  // A group import's member (importGroupFinish makes the group): received whole and staged, no backup yet.
  const stageOnly = op === 'importStageStream'
  // long: one loop over the stream's frames (the head, the batches' buffers, a lazy pull's references) and its one cleanup
  const importStream: StreamHandler<Op> = async (args, socket, rest) => {
    const remote = lazy ? (args as { remote?: string }).remote ?? '' : ''
    const timing = new ImportTiming()
    let session: ImportSession
    try { session = beginImport(pool, args as { header: unknown, name: string }, lazy, remote, lazy ? (args as { manifest?: string }).manifest ?? '' : '') } catch (err) { socket.end(errorLine(err)); return }
    // The base of an incremental stream is held open until the end: rm refuses it (BUSY) meanwhile.
    const baseId = session.spec.baseUuid === null ? undefined : pool.volumeIdByUuid(session.spec.baseUuid)
    const base = baseId === undefined ? undefined : pool.byId(baseId)
    if (base !== undefined) pool.opened(base, false)
    let batch: ImportBlock[] = []
    // One batch is stored while the next one arrives; the reader pulls from the socket (paused until
    // then), so the CLI waits once a second batch is full and the first is still being stored.
    let storing: Promise<void> = Promise.resolve()
    const storeBatch = async (blocks: ImportBlock[]): Promise<void> => {
      await storing
      // eslint-disable-next-line require-atomic-updates -- storeBatch is only called by the one reader loop below, each call awaited, so no other call sets storing between this await and this assignment
      storing = timing.batch(session.store(blocks))
      storing.catch(() => {})
    }
    // Two batches' worth of block buffers, taken in turns: a block's bytes are copied from the socket into
    // its place in the batch's (or kept as a view of the socket's chunk), not into a buffer of their own
    // each, which made V8 collect the whole heap every few dozen MiB of an import. The batch that last used
    // one was stored before this one fills it (storeBatch waits for the store before the one it starts),
    // and the store copies the bytes into the workers' slab.
    const batchBuffers = [Buffer.allocUnsafe(importBatchBlocks * pool.blockBytes), Buffer.allocUnsafe(importBatchBlocks * pool.blockBytes)]
    let turn = 0
    // The batch's blocks with bytes: their places in its buffer (a batch closes at importBatchBlocks of
    // them, or at importBatchFrames frames of any kind).
    let withBytes = 0
    let headStored = false
    // A lazy pull's references, appended to its file a batch at a time and applied after the reply (volume/lazy-refs.ts).
    const refs = lazy ? pool.lazyRefs(session.spec.uuid) : null
    const closeBatch = async (): Promise<void> => { const blocks = batch; batch = []; withBytes = 0; turn = 1 - turn; await storeBatch(blocks) }
    timing.begun = timing.now()
    try {
      await send(socket, replyLine({ resumedBlocks: session.recordedBlocks }))
      const reader = new ByteReader(socket, rest)
      for (;;) {
        const slot = batchBuffers[turn].subarray(withBytes * pool.blockBytes, (withBytes + 1) * pool.blockBytes)
        // A frame already here is read without an await (a lazy pull's 15 000 ref frames came to 0.15 s of
        // a new daemon's CPU, an await or two each); readFrame waits for the others.
        const frame = readFrameNow(reader, pool.blockBytes, slot) ?? await readFrame(reader, pool.blockBytes, slot)
        if (frame === null) {
          // The CLI went away before the end: what arrived is kept as progress, no backup appears.
          await storeBatch(batch)
          await storing
          socket.destroy()
          return
        }
        if (timing.firstFrame === 0) timing.firstFrame = timing.now()
        if (frame.kind === frameEnd) break
        if (frame.kind === frameRef && !lazy) throw invalid('a ref frame in an import (only a lazy pull sends them)')
        if (frame.kind !== frameData && frame.kind !== frameZstd && frame.kind !== frameZero && frame.kind !== frameRef) throw invalid(`frame kind ${frame.kind} in an import`)
        const withData = frame.kind === frameData || frame.kind === frameZstd
        // A lazy pull's head (its blocks with bytes, before its first reference): stored while the references arrive.
        if (lazy && frame.kind === frameRef && !headStored) { headStored = true; if (withBytes > 0) await closeBatch() }
        if (refs !== null && refs.take(frame.index, frame.kind === frameRef ? frame.hash : null, session.blockCount)) { if (refs.full) await refs.append(); continue }
        batch.push({ index: frame.index, data: withData ? frame.data : null, hash: frame.kind === frameZero ? null : frame.hash, ...(frame.kind === frameZstd ? { zstd: true } : {}) })
        if (withData) withBytes++
        if (withBytes >= importBatchBlocks || batch.length >= importBatchFrames) await closeBatch()
      }
      timing.endFrame = timing.now()
      await closeBatch()
      await storing
      timing.finishing = timing.now()
      await finishImport(pool, log, session, socket, stageOnly, lazy, remote, refs)
      if (lazy) log(timing.line(session.timing))
    } catch (err) {
      // The reason first, then the connection goes: the CLI may be waiting to send more of the stream
      // to a socket no one reads any more (the reader stopped at the failure), and only the close ends
      // that wait; it then reads the reason (daemonsReason).
      if (!socket.destroyed) socket.end(errorLine(err), () => socket.destroy())
      log(`import of ${session.name} failed: ${(err as Error).message}`)
    } finally {
      // The session ends (another import of the stream may begin) only once its last batch is stored.
      await storing.catch(() => {})
      await discardRefs(refs, log)
      session.close()
      if (base !== undefined) await pool.released(base)
    }
  }
  return importStream
}

// long: a table of handlers, one short entry per operation
export function transferHandlers (context: HandlerContext) {
  const { pool } = context

  return {
    exportStream: exportHandler(context),
    importStream: importHandler(context, 'importStream'),
    importStageStream: importHandler(context, 'importStageStream'),
    importGroupFinish: async args => {
      const backups = await pool.imports.finishGroup(args.group, args.keys)
      context.log(`import: group ${args.group}: ${backups.map(b => b.name).join(', ')}`)
      return { backups: backups.map(b => ({ ...b.info(), uuid: pool.volumeUuid(b) })) }
    },
    lazyPullStream: importHandler(context, 'lazyPullStream'),
    diff: async args => {
      // Maps still being set (a lazy pull's references) are waited for; the volumes are found again after.
      await pool.mapped(volumeArg(pool, 'diff', args, 'older'), volumeArg(pool, 'diff', args, 'newer'))
      const older = volumeArg(pool, 'diff', args, 'older')
      const newer = volumeArg(pool, 'diff', args, 'newer')
      const { ranges, pagesRead } = pool.differingRanges(older, newer)
      return { ranges, pagesRead, blockBytes: pool.blockBytes, oldSize: older.size, newSize: newer.size }
    },
    uuid: async args => {
      const volume = volumeArg(pool, 'uuid', args, 'image')
      return { uuid: pool.volumeUuid(volume) }
    },
    imports: async () => pool.importsInProgress(),
    prune: async args => {
      const keep: PruneKeep = {}
      for (const rule of pruneRules) {
        const n = args[rule]
        if (n === undefined) continue
        if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) throw invalid(`--keep-${rule} needs a whole number`)
        keep[rule] = n
      }
      if (!keepsAnything(keep)) throw invalid('no --keep-* rule with a count above 0: prune refuses to remove every backup')
      const match = typeof args.match === 'string' ? globPattern(args.match) : null
      // A consistency group is one unit (its backups are one instant of several disks): one candidate,
      // kept or removed whole, grouped with the other groups of the same sources. --match takes a
      // group when it matches any of its backups.
      const units = new Map<string, Volume[]>()
      for (const v of pool.visible('backup')) {
        const key = v.groupName !== null ? `group ${v.groupName}` : `volume ${v.id}`
        const unit = units.get(key)
        if (unit === undefined) units.set(key, [v])
        else unit.push(v)
      }
      const chosen = [...units.values()].filter(members => match === null || members.some(v => match.test(v.name)))
      // Grouped by the identity of the volume each was taken from (kept once it is gone, and carried by
      // an export stream to the importing host), named by its label; without one (a backup made before
      // schema 4 whose source was gone, an import of an older stream), by the label alone.
      const decisions = selectPrune(chosen.map(members => {
        const sources = members.map(v => ({ label: sourceLabelOf(pool, v), key: v.sourceUuid ?? sourceLabelOf(pool, v) })).sort((a, b) => a.key < b.key ? -1 : a.key > b.key ? 1 : 0)
        const first = members.reduce((a, b) => a.id < b.id ? a : b)
        return {
          id: first.id,
          name: first.groupName ?? first.name,
          createdMs: Math.max(...members.map(v => v.createdMs)),
          group: sources.map(s => s.label).join(' + '),
          ...(members.length > 1 || first.sourceUuid !== null ? { groupKey: sources.map(s => s.key).join(' + ') } : {}),
          protected: members.some(v => v.isProtected)
        }
      }), keep)
      const unitOf = new Map(chosen.map(members => [members.reduce((a, b) => a.id < b.id ? a : b).id, members]))
      // Every unit to remove in one call: each kept whole if a member was removed, protected or opened
      // since the decision (removals before it awaited), the rest removed with one commit, not one each.
      const removing = args.dryRun === true ? [] : decisions.filter(d => !d.keep)
      const outcomes = await pool.removeUnits(removing.map(d => unitOf.get(d.id) ?? []))
      const outcomeOf = new Map(removing.map((d, i) => [d.id, outcomes[i]]))
      const results = []
      for (const d of decisions) {
        const why = outcomeOf.get(d.id) ?? null
        if (why !== null && why.code === 'NOT_PERMITTED') { d.keep = true; d.rule = 'protected' }
        const { groupKey: _key, id: _id, name: _name, ...shown } = d
        for (const volume of unitOf.get(d.id) ?? []) {
          const removed = !d.keep && args.dryRun !== true && why === null
          results.push({ ...shown, id: volume.id, name: volume.name, createdMs: volume.createdMs, backupGroup: volume.groupName, removed, error: why === null || d.keep ? null : why.message })
        }
      }
      return { dryRun: args.dryRun === true, backups: results }
    }
  } satisfies Handlers
}

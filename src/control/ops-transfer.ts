/**
 * Control operations of issue #12: diff, export, import, prune. Export and import use the control
 * socket's stream mode (server.ts) and the frames of transfer/wire.ts: the daemon reads and stores
 * blocks (verified reads; hashing and compression of what it stores in the workers), the CLI encodes
 * and decodes the export stream. The event loop only moves block buffers, with the socket's
 * back-pressure in both directions.
 */
import net from 'node:net'
import { VolumeKind } from '../catalog/catalog'
import { VdiskError, invalid, notFound } from '../errors'
import { entryChunkId, entryKind, entryKindChunk } from '../format/map-format'
import { changedBlocks, differingRanges } from '../transfer/diff'
import { PruneKeep, globPattern, keepsAnything, pruneRules, selectPrune } from '../transfer/prune'
import { StreamHeader, streamKey } from '../transfer/stream'
import {
  ByteReader, errorFrame, exportReadBlocks, exportReadsInFlight, frameData, frameEnd, frameHead, frameZero,
  importBatchBlocks, readFrame, send
} from '../transfer/wire'
import { ImportBlock } from '../volume/import'
import { Volume } from '../volume/volume'
import { Handler, HandlerContext, StreamHandler } from './server'

function replyLine (result: unknown): Buffer { return Buffer.from(JSON.stringify({ id: 1, ok: true, result }) + '\n') }
function errorLine (err: unknown): Buffer {
  const error = err instanceof VdiskError ? { code: err.code, message: err.message } : { code: 'IO', message: `internal error: ${(err as Error)?.message ?? String(err)}` }
  return Buffer.from(JSON.stringify({ id: 1, ok: false, error }) + '\n')
}

/** A Handler that only runs in stream mode (a plain request is refused). */
function streamOnly (stream: StreamHandler): Handler {
  return Object.assign(async () => { throw invalid('this operation carries a stream: use vdiskfs export or import') }, { stream })
}

export function transferHandlers ({ pool, log }: HandlerContext): Record<string, Handler> {
  const volumeOf = (kind: unknown, name: unknown, what: string): Volume => {
    if (typeof kind !== 'string' || typeof name !== 'string' || !['disk', 'backup', 'clone'].includes(kind)) throw invalid(`missing ${what}`)
    const volume = pool.get(kind as VolumeKind, name)
    if (volume.hidden) throw notFound(`${kind} ${name}`)
    return volume
  }

  const exportStream: StreamHandler = async (args, socket) => {
    let volume: Volume
    let since: Volume | null
    let blocks: ReturnType<typeof changedBlocks>['blocks']
    try {
      volume = volumeOf(args.kind, args.name, 'backup')
      if (volume.kind !== 'backup') throw invalid(`${volume.label} is not a backup: export a backup (take one with vdiskfs backup)`)
      since = args.since === undefined || args.since === null ? null : volumeOf('backup', args.since, 'base backup')
      if (since === volume) throw invalid('--since names the backup being exported')
      blocks = changedBlocks(volume, since, pool.pageStore, pool.blockBytes).blocks
    } catch (err) {
      socket.end(errorLine(err))
      return
    }
    const header: StreamHeader = {
      name: volume.name,
      blockBytes: pool.blockBytes,
      uuid: pool.catalog.volumeUuid(volume.id),
      baseUuid: since === null ? null : pool.catalog.volumeUuid(since.id),
      size: volume.size,
      createdMs: volume.createdMs,
      records: blocks.length
    }
    // Held open while it is read: rm refuses it (BUSY) meanwhile, so its pages stay.
    pool.opened(volume, false)
    try {
      await send(socket, replyLine(header))
      await sendBlocks(socket, volume, blocks)
      await send(socket, frameHead(frameEnd, 0, null))
      socket.end()
    } catch (err) {
      if (!socket.destroyed) socket.end(errorFrame(err instanceof VdiskError ? err.code : 'IO', (err as Error).message))
      if (!(err instanceof VdiskError && err.message === 'the connection closed')) log(`export of ${volume.label} failed: ${(err as Error).message}`)
    } finally {
      await pool.released(volume)
    }
  }

  /** Reads the blocks (runs of neighbours in one read, a few reads ahead) and sends them in order. */
  async function sendBlocks (socket: net.Socket, volume: Volume, blocks: Array<{ block: number, entry: number }>): Promise<void> {
    const blockBytes = pool.blockBytes
    type Run = { first: number, entries: number[] }
    const runs: Run[] = []
    for (const { block, entry } of blocks) {
      const last = runs[runs.length - 1]
      if (entry !== 0 && last !== undefined && last.entries[0] !== 0 && last.first + last.entries.length === block && last.entries.length < exportReadBlocks) last.entries.push(entry)
      else runs.push({ first: block, entries: [entry] })
    }
    const read = async (run: Run): Promise<Buffer | null> => {
      if (run.entries[0] === 0) return null
      const buffer = Buffer.alloc(run.entries.length * blockBytes) // past the size: zeros, as stored
      await volume.read(buffer, run.first * blockBytes)
      return buffer
    }
    const pending: Array<Promise<Buffer | null>> = []
    let next = 0
    while (next < runs.length && pending.length < exportReadsInFlight) pending.push(read(runs[next++]))
    for (const run of runs) {
      const data = await (pending.shift() as Promise<Buffer | null>)
      if (next < runs.length) pending.push(read(runs[next++]))
      if (data === null) { await send(socket, frameHead(frameZero, run.first, null)); continue }
      for (let i = 0; i < run.entries.length; i++) {
        const entry = run.entries[i]
        // A chunk's id travels along: the CLI's encoder checks the bytes against it.
        const hash = entryKind(entry) === entryKindChunk ? pool.chunks.info(entryChunkId(entry)).hash : null
        await send(socket, frameHead(frameData, run.first + i, hash))
        await send(socket, data.subarray(i * blockBytes, (i + 1) * blockBytes))
      }
    }
  }

  const importStream: StreamHandler = async (args, socket, rest) => {
    let session: ReturnType<typeof pool.imports.begin>
    try {
      const header = args.header as StreamHeader
      if (header === null || typeof header !== 'object' || typeof header.uuid !== 'string') throw invalid('missing stream header')
      if (typeof args.name !== 'string') throw invalid('missing name')
      session = pool.imports.begin({ key: streamKey(header), uuid: header.uuid, baseUuid: header.baseUuid, size: header.size, blockBytes: header.blockBytes, createdMs: header.createdMs }, args.name)
    } catch (err) {
      socket.end(errorLine(err))
      return
    }
    let batch: ImportBlock[] = []
    try {
      await send(socket, replyLine({ resumedBlocks: session.counts.resumedBlocks }))
      // The reader pulls from the socket (paused until then): the CLI waits while a batch is stored.
      const reader = new ByteReader(socket, rest)
      for (;;) {
        const frame = await readFrame(reader, pool.blockBytes)
        if (frame === null) {
          // The CLI went away before the end: what arrived is kept as progress, no backup appears.
          await session.store(batch)
          socket.destroy()
          return
        }
        if (frame.kind === frameEnd) break
        batch.push({ index: frame.index, data: frame.kind === frameData ? frame.data : null, hash: frame.kind === frameData ? frame.hash : null })
        if (batch.length >= importBatchBlocks) { await session.store(batch); batch = [] }
      }
      await session.store(batch)
      batch = []
      const started = Date.now()
      const backup = await session.finish()
      socket.end(replyLine({ backup: { ...backup.info(), uuid: pool.catalog.volumeUuid(backup.id) }, ...session.counts, finishMs: Date.now() - started }))
    } catch (err) {
      if (!socket.destroyed) socket.end(errorLine(err))
      log(`import of ${session.name} failed: ${(err as Error).message}`)
    }
  }

  return {
    exportStream: streamOnly(exportStream),
    importStream: streamOnly(importStream),
    diff: async args => {
      const older = volumeOf(args.olderKind, args.olderName, 'OLD')
      const newer = volumeOf(args.newerKind, args.newerName, 'NEW')
      const { ranges, pagesRead } = differingRanges(older, newer, pool.pageStore, pool.blockBytes)
      return { ranges, pagesRead, blockBytes: pool.blockBytes, oldSize: older.size, newSize: newer.size }
    },
    uuid: async args => {
      const volume = volumeOf(args.kind, args.name, 'volume')
      return { uuid: pool.catalog.volumeUuid(volume.id) }
    },
    imports: async () => pool.catalog.imports().map(row => ({ ...row, blocks: pool.catalog.importBlocks(row.key).size })),
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
      const backups = pool.visible('backup').filter(v => match === null || match.test(v.name))
      // Grouped by the volume each was taken from (by its label once it is gone; imports together).
      const decisions = selectPrune(backups.map(v => ({ id: v.id, name: v.name, createdMs: v.createdMs, group: v.sourceId !== null && pool.byId(v.sourceId) !== undefined ? `${pool.byId(v.sourceId)?.label}` : v.sourceLabel ?? '(imported)' })), keep)
      const results = []
      for (const d of decisions) {
        let error: string | null = null
        if (!d.keep && args.dryRun !== true) {
          const volume = pool.byId(d.id)
          try { if (volume !== undefined) await pool.remove(volume) } catch (err) { error = (err as Error).message }
        }
        results.push({ ...d, removed: !d.keep && args.dryRun !== true && error === null, error })
      }
      return { dryRun: args.dryRun === true, backups: results }
    }
  }
}

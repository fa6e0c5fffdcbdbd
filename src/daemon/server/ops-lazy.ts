/**
 * Control operations of lazy pulls (volume/lazy.ts; the lazy pull's import itself is ops-transfer's
 * lazyPullStream): the hydrator's session (hydrateStream: it sends blocks, the daemon tells it which
 * chunks readers wait for), which of a list of chunks a pull still lacks (lazyMissing), and the pulls in
 * progress (lazyPulls, also in `vdiskfs status`).
 */
import { VdiskError, invalid } from '../../errors'
import { importBatchBlocks, lazyMissingHashesMax } from '../../limits'
import { ByteReader, errorFrame, frameData, frameEnd, frameFlush, frameHead, frameWant, readFrame, send } from '../../transfer/wire'
import { HandlerContext, Handlers, StreamHandler, named } from './handler'

function replyLine (result: unknown): Buffer { return Buffer.from(JSON.stringify({ id: 1, ok: true, result }) + '\n') }
function errorLine (err: unknown): Buffer {
  const error = err instanceof VdiskError ? { code: err.code, message: err.message } : { code: 'IO', message: `internal error: ${(err as Error)?.message ?? String(err)}` }
  return Buffer.from(JSON.stringify({ id: 1, ok: false, error }) + '\n')
}

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const hashPattern = /^[0-9a-f]{64}$/

// long: a table of handlers, one short entry per operation
export function lazyHandlers ({ pool, log }: HandlerContext) {
  const labelOf = (uuid: string): string => {
    const id = pool.volumeIdByUuid(uuid)
    const volume = id === undefined ? undefined : pool.byId(id)
    return volume === undefined ? `(identity ${uuid})` : named(volume)
  }

  /** A pull's backup's own name (backups/NAME), null when it is gone. */
  const nameOf = (uuid: string): string | null => {
    const id = pool.volumeIdByUuid(uuid)
    return id === undefined ? null : pool.byId(id)?.name ?? null
  }

  /** The pulls in progress, with their backup's name (for status and the CLI). */
  const pulls = () => {
    pool.lazy.dropRemoved()
    return pool.lazy.progress().map(p => ({ ...p, backup: labelOf(p.uuid), name: nameOf(p.uuid) }))
  }

  const hydrateStream: StreamHandler<'hydrateStream'> = async (args, socket, rest) => {
    const uuid = args.uuid
    let detach: () => void
    // Wants wait for the reply line (attach() tells of the readers waiting already, before it is sent).
    let early: Buffer[] | null = []
    try {
      if (!uuidPattern.test(uuid)) throw invalid('malformed uuid')
      detach = pool.lazy.attach(uuid, {
        // A want is a head alone, written whole: it never lands inside another frame (the daemon sends no other).
        want: hash => {
          const frame = frameHead(frameWant, 0, hash)
          if (early !== null) early.push(frame)
          else if (!socket.destroyed) send(socket, frame).catch(() => {})
        }
      })
    } catch (err) {
      socket.end(errorLine(err))
      return
    }
    const row = pool.lazy.get(uuid)
    let filled = 0
    try {
      await send(socket, replyLine({ blockBytes: pool.blockBytes, remote: row?.remote, manifest: row?.manifest, backup: labelOf(uuid) }))
      const wants = early
      early = null
      for (const frame of wants) await send(socket, frame)
      const reader = new ByteReader(socket, rest)
      let batch: Array<{ data: Buffer, hash: Buffer }> = []
      for (;;) {
        const frame = await readFrame(reader, pool.blockBytes)
        if (frame === null) { socket.destroy(); return } // the hydrator went away; what it sent and was flushed is stored
        if (frame.kind === frameData && frame.data !== null && frame.hash !== null) {
          batch.push({ data: frame.data, hash: frame.hash })
          if (batch.length < importBatchBlocks) continue
        } else if (frame.kind !== frameFlush && frame.kind !== frameEnd) throw invalid(`frame kind ${frame.kind} from a hydrator`)
        if (batch.length > 0) {
          const blocks = batch
          batch = []
          filled += await pool.hydrate(blocks)
        }
        if (frame.kind === frameEnd) break
      }
      // The end answered with an end: the hydrator asks lazyPulls what is left.
      await send(socket, frameHead(frameEnd, 0, null))
      socket.end()
      log(`lazy pull: the hydrator of ${labelOf(uuid)} ended; ${filled} blocks filled in its session`)
    } catch (err) {
      if (!socket.destroyed) socket.end(errorFrame(err instanceof VdiskError ? err.code : 'IO', (err as Error).message), () => socket.destroy())
      log(`lazy pull: the hydrator of ${labelOf(uuid)} failed: ${(err as Error).message}`)
    } finally {
      detach()
    }
  }

  return {
    hydrateStream,
    lazyMissing: async args => {
      const hashes = args.hashes
      if (hashes.length > lazyMissingHashesMax || !hashes.every(h => hashPattern.test(h))) throw invalid(`hashes: up to ${lazyMissingHashesMax} BLAKE3 ids in hex`)
      const uuid = args.uuid
      // Before its references are applied the pull's absent chunks are not all made: "none missing" would
      // make the hydrator skip them. Waited for, then everything below is read after that await.
      const id = pool.volumeIdByUuid(uuid)
      const volume = id === undefined ? undefined : pool.byId(id)
      if (volume !== undefined) await volume.mapped()
      pool.lazy.dropRemoved()
      if (pool.lazy.get(uuid) === undefined) return { inProgress: false, missing: [] }
      return { inProgress: true, missing: pool.lazy.missingHashes(uuid, hashes) }
    },
    lazyPulls: async () => pulls()
  } satisfies Handlers
}

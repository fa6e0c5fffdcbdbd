/**
 * Control operations of issue #11: what the daemon is doing (stats, for `vdiskfs status
 * [--json|--prometheus]`) and what an image is (info, for `vdiskfs info`).
 */
import fs from 'node:fs'
import { volumeFacts } from '../inspect/facts'
import { EventLoopReport, JobReport, OperationReport } from '../daemon/metrics'
import { LogEntry } from '../daemon/daemon-log'
import { ChunkCacheStats } from '../chunk/chunk-cache'
import { InlineWriteStats, inlineReadStats, inlineWriteStats } from '../io/file-io'
import { HandlerContext, Handlers, volumeArg } from './handler'


export interface StatsResult {
  /** What the `status` operation says (pid, pool, mountpoint, version, block size, RSS, the FUSE session's figures). */
  daemon: Record<string, unknown>
  startedMs: number
  uptimeSeconds: number
  rssBytes: number
  heapUsedBytes: number
  openFds: number
  /** Node's active handles and requests (timers, sockets, file requests in flight): libuv handles JavaScript sees. */
  activeResources: number
  eventLoopDelay: EventLoopReport
  /** Rates and latency percentiles cover the last this many seconds. */
  windowSeconds: number
  operations: Record<string, OperationReport>
  /**
   * Bytes in delta extents, waiting to be sealed into the chunk store (slots written and not yet sealed
   * or freed: counted from the extents, not the maps), as of unsealedAsOfMs.
   */
  unsealedBytes: number
  unsealedAsOfMs: number
  /** The cache of verified, decompressed chunks (sealed reads). */
  chunkCache: ChunkCacheStats
  /** Engine writes done on the event loop (inline), through the thread pool, and inline ones that were slow. */
  writes: InlineWriteStats
  /** Engine reads served inline (every byte in the page cache: preadv2 RWF_NOWAIT) or through the thread pool. */
  reads: InlineWriteStats
  jobs: JobReport[]
  /** Lazy pulls in progress: the backup, its remote and id there, chunks it lacked and how many are here now, whether a hydrator is connected. */
  hydrating: Array<{ backup: string | null, remote: string, id: string, chunks: number, chunksHere: number, hydrator: boolean }>
  lastErrors: LogEntry[]
}

export function statusHandlers ({ pool, space, sealer, status, metrics, recentErrors }: HandlerContext) {
  return {
    stats: async (): Promise<StatsResult> => {
      // Cheap figures only: nothing here walks the maps (issue #21; du and info do, in slices).
      const unsealedAsOfMs = Date.now()
      const unsealedBytes = await pool.inspection.extentBytes()
      const nowMs = Date.now()
      const daemon = status() as Record<string, unknown>
      const memory = process.memoryUsage()
      const { windowSeconds, operations } = metrics.operationReport()
      const jobs = metrics.runningJobs()
      // Background sealing runs on the sealer's own timer; a sync shows up as its own job.
      const sealing = sealer.progress
      if (sealing.done < sealing.total && !jobs.some(job => job.name === 'sync')) jobs.push({ name: 'sealing', startedMs: null, progress: { ...sealing } })
      // Lazy pulls filling in (volume/lazy.ts): chunks here of those the pull lacked.
      const hydrating = pool.lazy.progress().map(p => {
        const id = pool.volumeIdByUuid(p.uuid)
        const volume = id === undefined ? undefined : pool.byId(id)
        return { backup: volume === undefined ? null : volume.name, remote: p.remote, id: p.manifest, chunks: p.chunks, chunksHere: p.chunks - p.missing, hydrator: p.hydrator }
      })
      for (const h of hydrating) jobs.push({ name: `hydrating backups/${h.backup ?? '?'} from ${h.remote}${h.hydrator ? '' : ' (no hydrator)'}`, startedMs: null, progress: { done: h.chunksHere, total: h.chunks } })
      return {
        daemon,
        startedMs: metrics.startedMs,
        uptimeSeconds: (nowMs - metrics.startedMs) / 1000,
        rssBytes: memory.rss,
        heapUsedBytes: memory.heapUsed,
        // The directory's own descriptor, open while it is read, is not one of the daemon's.
        openFds: (await fs.promises.readdir('/proc/self/fd')).length - 1,
        activeResources: process.getActiveResourcesInfo().length,
        eventLoopDelay: metrics.eventLoopReport(),
        windowSeconds,
        operations,
        unsealedBytes,
        unsealedAsOfMs,
        chunkCache: pool.chunkCacheStats(),
        writes: inlineWriteStats(),
        reads: inlineReadStats(),
        jobs,
        hydrating,
        lastErrors: recentErrors()
      }
    },

    info: async args => {
      const volume = volumeArg(pool, 'info', args, 'image')
      // Fresh figures, as `vdiskfs du` gives (the xattrs may serve them up to spaceUsageStaleMs old).
      return volumeFacts(pool, await space.volume(volume), volume)
    }
  } satisfies Handlers
}

/**
 * Control operations of issue #11: what the daemon is doing (stats, for `vdiskfs status
 * [--json|--prometheus]`) and what an image is (info, for `vdiskfs info`).
 */
import fs from 'node:fs'
import { volumeFacts } from '../../inspect/facts'
import { inlineReadStats, inlineWriteStats } from '../../io/file-io'
import { StatsResult } from '../../control/results'
import { HandlerContext, Handlers, volumeArg } from './handler'
import { trimStats } from '../memory-trim'


export function statusHandlers ({ pool, space, sealer, status, metrics, recentErrors }: HandlerContext) {
  return {
    stats: async (): Promise<StatsResult> => {
      // Cheap figures only: nothing here walks the maps (issue #21; du and info do, in slices).
      const unsealedAsOfMs = Date.now()
      const unsealedBytes = await pool.inspection.extentBytes()
      const nowMs = Date.now()
      const daemon = status()
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
        arrayBuffersBytes: memory.arrayBuffers,
        memoryTrims: trimStats(),
        // The directory's own descriptor, open while it is read, is not one of the daemon's.
        openFds: (await fs.promises.readdir('/proc/self/fd')).length - 1,
        activeResources: process.getActiveResourcesInfo().length,
        eventLoopDelay: metrics.eventLoopReport(),
        windowSeconds,
        operations,
        unsealedBytes,
        unsealedAsOfMs,
        chunkCache: pool.chunkCacheStats(),
        rootCache: pool.rootCacheStats(),
        writes: inlineWriteStats(),
        commits: pool.commitStats(),
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

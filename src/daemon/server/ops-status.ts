/**
 * Control operations of issue #11: what the daemon is doing (stats, for `vdiskfs status
 * [--json|--prometheus]`) and what an image is (info, for `vdiskfs info`).
 */
import fs from 'node:fs'
import { statusSpaceStaleMs } from '../../limits'
import { volumeFacts } from '../../inspect/facts'
import { inlineWriteStats } from '../../io/file-io'
import { StatsResult } from '../../control/results'
import { HandlerContext, Handlers, volumeArg } from './handler'


export function statusHandlers ({ pool, space, sealer, status, metrics, recentErrors }: HandlerContext) {
  // The space report walks every map: a scraper asking every few seconds reuses it for statusSpaceStaleMs.
  let unsealed = { atMs: 0, generation: -1, bytes: 0 }
  return {
    stats: async (): Promise<StatsResult> => {
      const nowMs = Date.now()
      if (unsealed.generation !== pool.generation && nowMs - unsealed.atMs >= statusSpaceStaleMs) {
        unsealed = { atMs: nowMs, generation: pool.generation, bytes: space.report().unsealedBytes }
      }
      const daemon = status()
      const memory = process.memoryUsage()
      const { windowSeconds, operations } = metrics.operationReport()
      const jobs = metrics.runningJobs()
      // Background sealing runs on the sealer's own timer; a sync shows up as its own job.
      const sealing = sealer.progress
      if (sealing.done < sealing.total && !jobs.some(job => job.name === 'sync')) jobs.push({ name: 'sealing', startedMs: null, progress: { ...sealing } })
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
        unsealedBytes: unsealed.bytes,
        unsealedAsOfMs: unsealed.atMs,
        chunkCache: pool.chunkCacheStats(),
        writes: inlineWriteStats(),
        jobs,
        lastErrors: recentErrors()
      }
    },

    info: async args => {
      const volume = volumeArg(pool, 'info', args, 'image')
      // Fresh figures, as `vdiskfs du` gives (the xattrs may serve them up to spaceUsageStaleMs old).
      space.report()
      return volumeFacts(pool, space, volume)
    }
  } satisfies Handlers
}

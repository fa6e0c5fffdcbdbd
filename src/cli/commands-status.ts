/** CLI commands of issue #11: what the daemon is doing (status, --prometheus) and what an image is (info). */
import { call } from '../control/client'
import { StatsResult } from '../control/results'
import { UsageError } from './args'
import { bytes, table } from './format'
import { Command, imagePath, mountpointArg, print, time } from './command'
import { printable } from './holders'

export const statusCommands: Record<string, Command> = {
  status: {
    usage: 'status MNT [--json|--prometheus]',
    summary: 'what the daemon is doing: uptime, memory, fds, event-loop delay, FUSE operations per second and latency, unsealed bytes, cache, jobs, last errors',
    spec: { positionals: ['MNT'], booleans: { json: ['--json'], prometheus: ['--prometheus'] } },
    async run ({ positionals: [mnt], flags }) {
      if (flags.json === true && flags.prometheus === true) throw new UsageError('--json and --prometheus exclude each other')
      const stats = await call(mountpointArg(mnt), 'stats')
      if (flags.prometheus === true) {
        // Loaded here only: prom-client takes a noticeable part of a second to load, and no other command needs it.
        const { prometheusText } = await import('./status-prometheus')
        process.stdout.write(await prometheusText(stats))
        return
      }
      const { startedMs, unsealedAsOfMs, jobs, lastErrors, ...rest } = stats
      const json = {
        ...rest,
        started: time(startedMs),
        unsealedAsOf: unsealedAsOfMs === 0 ? null : time(unsealedAsOfMs),
        jobs: jobs.map(({ startedMs, ...job }) => ({ ...job, started: startedMs === null ? null : time(startedMs) })),
        lastErrors
      }
      print(flags.json === true, json, () => statusText(stats))
    }
  },

  info: {
    usage: 'info IMAGE [--json]',
    summary: "an image's facts, like qemu-img info: kind, size, lineage, times, space (referenced, unique, unsealed), owner, open handles",
    spec: { positionals: ['IMAGE'], booleans: { json: ['--json'] } },
    async run ({ positionals: [image], flags }) {
      const target = imagePath(image)
      const facts = await call(target.mountpoint, 'info', { kind: target.kind, name: target.name })
      const { createdMs, mtimeMs, mode, ...rest } = facts
      const json = { ...rest, created: time(createdMs), modified: time(mtimeMs), mode: mode.toString(8).padStart(4, '0') }
      print(flags.json === true, json, () => {
        const rows: Array<[string, string]> = [
          ['image', printable(image)],
          ['kind', facts.kind],
          ['size', `${bytes(facts.size)} (${facts.size} bytes)`],
          ['source', facts.source === null ? '-' : printable(facts.source)],
          ['created', json.created],
          ['modified', json.modified],
          ['referenced', bytes(facts.referencedBytes)],
          ['unique', bytes(facts.uniqueBytes)],
          ['stored', bytes(facts.storedBytes)],
          ['unsealed', bytes(facts.unsealedBytes)],
          ...(facts.keptFromSourceBytes === null ? [] : [['kept from source', bytes(facts.keptFromSourceBytes)] as [string, string]]),
          ['owner', `${facts.uid}:${facts.gid} mode ${json.mode}`],
          ['open handles', String(facts.openHandles)],
          ...(facts.kind === 'backup' ? [['protected', facts.protected ? 'yes' : 'no'] as [string, string]] : []),
          ...(facts.group === null ? [] : [['group', printable(facts.group)] as [string, string]]),
          ...(facts.note === null ? [] : [['note', printable(facts.note)] as [string, string]])
        ]
        return rows.map(([key, value]) => `${(key + ':').padEnd(18)}${value}`).join('\n')
      })
    }
  }
}

/** The fast path's counters (docs/FASTPATH.md), from what the FUSE addon counted: a line, or none when it is off. */
function fastPathLines (stats: StatsResult): string[] {
  const fuse3 = stats.daemon.fuse3 as { fastOn?: number, fastServed?: number, fastHanded?: number, fastMismatches?: number, fastWritesOn?: number, fastWritten?: number, fastWriteHanded?: number, fastAllocated?: number, fastChunkReads?: number, fastChunkPieces?: number, fastChunkMismatches?: number, fastWritebackPasses?: number, fastWritebackKicks?: number } | null | undefined
  if (fuse3 === null || fuse3 === undefined || fuse3.fastOn !== 1) return []
  const lines = [`fast path:   ${fuse3.fastServed ?? 0} READs answered in the addon's threads, ${fuse3.fastHanded ?? 0} handed to the engine (${fuse3.fastMismatches ?? 0} of them on a checksum mismatch)`]
  lines.push(`             ${fuse3.fastChunkReads ?? 0} reads of sealed chunks in the addon's threads, ${fuse3.fastChunkPieces ?? 0} 16 KiB pieces opened (${fuse3.fastChunkMismatches ?? 0} chunks failed its check and went to the engine)`)
  if (fuse3.fastWritesOn === 1) {
    lines.push(`             ${fuse3.fastWritten ?? 0} WRITEs written in the addon's threads (${fuse3.fastAllocated ?? 0} blocks in new slots), ${fuse3.fastWriteHanded ?? 0} handed to the engine`)
    lines.push(`             ${fuse3.fastWritebackKicks ?? 0} writebacks of overwritten extents started ahead of the commit, in ${fuse3.fastWritebackPasses ?? 0} passes`)
  }
  return lines
}

function statusText (stats: StatsResult): string {
  const ms = (value: number) => `${value.toFixed(value < 10 ? 2 : 0)} ms`
  const loop = stats.eventLoopDelay
  const cache = stats.chunkCache
  const lookups = cache.hits + cache.misses
  const lines = [
    `daemon:      pid ${String(stats.daemon.pid)}, vdiskfs ${String(stats.daemon.version)}, serving ${printable(String(stats.daemon.pool))} at ${printable(String(stats.daemon.mountpoint))}`,
    `started:     ${time(stats.startedMs)} (up ${Math.round(stats.uptimeSeconds)} s)`,
    `memory:      ${bytes(stats.rssBytes)} resident, ${bytes(stats.heapUsedBytes)} heap, ${bytes(stats.arrayBuffersBytes ?? 0)} buffers${trims(stats.memoryTrims)}`,
    `handles:     ${stats.openFds} open fds, ${stats.activeResources} active resources`,
    `event loop:  delay p50 ${ms(loop.p50Ms)}, p99 ${ms(loop.p99Ms)}, max ${ms(loop.maxMs)}${loop.policy === 'realtime' ? ' (real-time priority)' : ''}`,
    `unsealed:    ${bytes(stats.unsealedBytes)}`,
    ...(stats.commits === undefined ? [] : [`commits:     ${stats.commits.commits}, the largest ${stats.commits.pagesMax} map pages; ${stats.commits.dirtyPages} dirty now`]),
    `chunk cache: ${cache.hits} hits, ${cache.misses} misses${lookups > 0 ? ` (${(100 * cache.hits / lookups).toFixed(1)}% hits)` : ''}, ` +
      `${bytes(cache.bytes)} of ${bytes(cache.bytesMax)} held`,
    ...(stats.rootCache === undefined ? [] : [`backup roots: ${stats.rootCache.roots} in memory (${bytes(stats.rootCache.bytes)} of ${bytes(stats.rootCache.bytesMax)}), ` +
      `${stats.rootCache.loads} read from the catalog on first use, ${stats.rootCache.drops} dropped`]),
    `writes:      ${stats.writes.inline} inline, ${stats.writes.pooled} through the thread pool, ${stats.writes.slow} slow inline (each sends writes to the pool for a while), slowest ${ms(stats.writes.slowestMs)}`,
    `reads:       ${stats.reads.inline} inline (all in the page cache), ${stats.reads.pooled} through the thread pool (${stats.reads.missed} of them tried inline first), slowest inline ${ms(stats.reads.slowestMs)}`,
    ...fastPathLines(stats),
    `jobs:        ${stats.jobs.length === 0 ? 'none' : stats.jobs.map(j => j.name + (j.progress === null ? '' : ` ${j.progress.done}/${j.progress.total}`)).join(', ')}`,
    ''
  ]
  const rows = Object.entries(stats.operations).sort(([, a], [, b]) => b.count - a.count).map(([name, r]) => [
    name, String(r.count), String(r.errors), r.perSecond.toFixed(1),
    r.latency === null ? '-' : ms(r.latency.p50Ms), r.latency === null ? '-' : ms(r.latency.p90Ms), r.latency === null ? '-' : ms(r.latency.p99Ms)
  ])
  lines.push(rows.length === 0 ? 'no FUSE operations yet' : table(['OPERATION', 'COUNT', 'ERRORS', `PER-S (${Math.round(stats.windowSeconds)} s)`, 'P50', 'P90', 'P99'], rows))
  if (stats.lastErrors.length > 0) {
    lines.push('', 'last errors:')
    for (const entry of stats.lastErrors) lines.push(`  ${entry.time} ${printable(entry.message)}`)
  }
  return lines.join('\n')
}

/** The memory line's end: the C heap's trims (daemon/memory-trim.ts), when any ended. */
function trims (stats: StatsResult['memoryTrims']): string {
  if (stats === undefined || stats === null || stats.count === 0) return ''
  return `; C heap trimmed ${stats.count} time${stats.count === 1 ? '' : 's'}, the last gave back ${bytes(Math.max(0, stats.lastFreedBytes))} in ${stats.lastMs.toFixed(1)} ms`
}

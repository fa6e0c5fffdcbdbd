/**
 * `vdiskfs status --prometheus`: the daemon's figures in the Prometheus text format, for node_exporter's
 * textfile collector (`vdiskfs status MNT --prometheus > DIR/vdiskfs.prom.$$ && mv ... DIR/vdiskfs.prom`).
 * Built with prom-client's Registry and metric types; names are vdiskfs_* with their unit last, every
 * series carries the mountpoint as a label (several mounts can share one textfile directory), and no
 * timestamps (the collector's convention).
 */
import { Counter, Gauge, Registry } from 'prom-client'
import type { StatsResult } from '../control/results'

export async function prometheusText (stats: StatsResult): Promise<string> {
  const registry = new Registry()
  registry.setDefaultLabels({ mountpoint: String(stats.daemon.mountpoint) })
  const registers = [registry]
  const gauge = (name: string, help: string, value: number, labelNames: string[] = []): Gauge => {
    const metric = new Gauge({ name, help, labelNames, registers })
    if (labelNames.length === 0) metric.set(value)
    return metric
  }
  const counter = (name: string, help: string, labelNames: string[]): Counter => new Counter({ name, help, labelNames, registers })

  gauge('vdiskfs_info', 'The daemon serving this mountpoint: version, pool and pid as labels; always 1.', 0, ['version', 'pool', 'pid'])
    .set({ version: String(stats.daemon.version), pool: String(stats.daemon.pool), pid: String(stats.daemon.pid) }, 1)
  gauge('vdiskfs_start_time_seconds', 'When the daemon started, in seconds since the epoch.', stats.startedMs / 1000)
  gauge('vdiskfs_uptime_seconds', 'How long the daemon has run.', stats.uptimeSeconds)
  gauge('vdiskfs_resident_memory_bytes', "The daemon's resident set size.", stats.rssBytes)
  gauge('vdiskfs_heap_used_bytes', "The daemon's V8 heap in use.", stats.heapUsedBytes)
  gauge('vdiskfs_array_buffers_bytes', "The daemon's ArrayBuffers and Buffers (map pages, slabs, I/O buffers).", stats.arrayBuffersBytes ?? 0)
  if (stats.memoryTrims != null) counter('vdiskfs_memory_trims_total', "Times the daemon gave the C heap's free pages back to the system (malloc_trim).", []).inc(stats.memoryTrims.count)
  gauge('vdiskfs_open_fds', 'File descriptors the daemon holds open.', stats.openFds)
  gauge('vdiskfs_active_resources', "Node's active handles and requests (libuv handles JavaScript sees).", stats.activeResources)

  // Percentiles without a sum and count to go with them: gauges of their own (a quantile label belongs
  // to summaries only; promtool check metrics refuses it elsewhere).
  gauge('vdiskfs_event_loop_delay_p50_seconds', `Event-loop delay, median over the last ${Math.round(stats.windowSeconds)} s or so.`, stats.eventLoopDelay.p50Ms / 1000)
  gauge('vdiskfs_event_loop_delay_p99_seconds', `Event-loop delay, 99th percentile over the last ${Math.round(stats.windowSeconds)} s or so.`, stats.eventLoopDelay.p99Ms / 1000)
  gauge('vdiskfs_event_loop_delay_max_seconds', 'Longest event-loop delay in the same window.', stats.eventLoopDelay.maxMs / 1000)

  const operations = counter('vdiskfs_fuse_operations_total', 'FUSE requests answered since the mount, by operation.', ['operation'])
  const errors = counter('vdiskfs_fuse_operation_errors_total', 'FUSE requests answered with an error, by operation.', ['operation'])
  const time = counter('vdiskfs_fuse_operation_seconds_total', 'Time spent answering FUSE requests, by operation.', ['operation'])
  const rate = gauge('vdiskfs_fuse_operations_per_second', 'FUSE requests per second over the recent window, by operation.', 0, ['operation'])
  // A summary as client libraries export one: quantiles over the recent window, sum and count since the
  // mount. prom-client's Summary computes its quantiles from observations of its own, so it is written out.
  const latency: string[] = []
  for (const [operation, report] of Object.entries(stats.operations)) {
    operations.inc({ operation }, report.count)
    errors.inc({ operation }, report.errors)
    time.inc({ operation }, report.totalSeconds)
    rate.set({ operation }, report.perSecond)
    if (report.latency === null) continue
    const series = (suffix: string, labels: Record<string, string>, value: number): void => {
      latency.push(`vdiskfs_fuse_operation_latency_seconds${suffix}{${Object.entries({ operation, ...labels, mountpoint: String(stats.daemon.mountpoint) }).map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')}} ${value}`)
    }
    series('', { quantile: '0.5' }, report.latency.p50Ms / 1000)
    series('', { quantile: '0.9' }, report.latency.p90Ms / 1000)
    series('', { quantile: '0.99' }, report.latency.p99Ms / 1000)
    series('_sum', {}, report.totalSeconds)
    series('_count', {}, report.count)
  }

  gauge('vdiskfs_unsealed_bytes', 'Bytes in delta extents waiting to be sealed into the chunk store.', stats.unsealedBytes)
  counter('vdiskfs_chunk_cache_hits_total', 'Sealed reads served from the cache of verified, decompressed chunks.', []).inc(stats.chunkCache.hits)
  counter('vdiskfs_chunk_cache_misses_total', 'Sealed reads that had to open (read, decompress, verify) their chunk.', []).inc(stats.chunkCache.misses)
  gauge('vdiskfs_chunk_cache_bytes', 'Bytes of chunks the cache holds.', stats.chunkCache.bytes)
  gauge('vdiskfs_chunk_cache_max_bytes', 'The most the chunk cache may hold.', stats.chunkCache.bytesMax)
  counter('vdiskfs_writes_inline_total', 'Engine writes done synchronously on the event loop (small writes into the page cache).', []).inc(stats.writes.inline)
  counter('vdiskfs_writes_pooled_total', 'Engine writes done through the libuv thread pool (large ones, or after a slow inline write).', []).inc(stats.writes.pooled)
  counter('vdiskfs_writes_inline_slow_total', 'Inline writes slower than the limit, each sending writes to the thread pool for a while.', []).inc(stats.writes.slow)
  gauge('vdiskfs_writes_inline_slowest_seconds', 'The longest inline write since start: the longest the event loop waited for one.', stats.writes.slowestMs / 1000)
  counter('vdiskfs_reads_inline_total', 'Engine reads served synchronously on the event loop (every byte in the page cache: preadv2 RWF_NOWAIT).', []).inc(stats.reads.inline)
  counter('vdiskfs_reads_pooled_total', 'Engine reads done through the libuv thread pool.', []).inc(stats.reads.pooled)
  counter('vdiskfs_reads_inline_missed_total', 'Engine reads tried inline that the page cache could not serve whole (then pooled).', []).inc(stats.reads.missed)
  fastPathCounters(stats, counter)
  const jobs = gauge('vdiskfs_job_running', 'Background jobs in flight (sealing, sync, gc, verify): 1 each.', 0, ['job'])
  const progress = gauge('vdiskfs_job_progress_ratio', 'How far each job in flight is, from 0 to 1, when it says.', 0, ['job'])
  for (const job of stats.jobs) {
    jobs.set({ job: job.name }, 1)
    if (job.progress !== null && job.progress.total > 0) progress.set({ job: job.name }, job.progress.done / job.progress.total)
  }
  gauge('vdiskfs_log_recent_errors', 'Error lines among the last ones the daemon kept (vdiskfs status shows them).', stats.lastErrors.length)
  const last = stats.lastErrors[stats.lastErrors.length - 1]
  if (last !== undefined) gauge('vdiskfs_last_error_time_seconds', 'When the daemon last logged an error, in seconds since the epoch.', Date.parse(last.time) / 1000)
  const text = await registry.metrics()
  if (latency.length === 0) return text
  return `${text.endsWith('\n') ? text : text + '\n'}# HELP vdiskfs_fuse_operation_latency_seconds FUSE request latency, by operation: percentiles over the recent window, sum and count since the mount.\n` +
    `# TYPE vdiskfs_fuse_operation_latency_seconds summary\n${latency.join('\n')}\n`
}

/** The fast path's counters (docs/FASTPATH.md), from what the FUSE addon counted. */
function fastPathCounters (stats: StatsResult, counter: (name: string, help: string, labelNames: string[]) => Counter): void {
  const fuse3 = stats.daemon.fuse3 as { fastServed?: number, fastHanded?: number, fastMismatches?: number, fastWritten?: number, fastWriteHanded?: number, fastAllocated?: number, fastChunkReads?: number, fastChunkPieces?: number, fastChunkMismatches?: number, fastWritebackKicks?: number } | null | undefined
  counter('vdiskfs_fast_reads_total', 'READs answered in the FUSE addon\'s threads without the engine (the fast path: holes and delta slots).', []).inc(fuse3?.fastServed ?? 0)
  counter('vdiskfs_fast_reads_handed_total', 'READs the fast path handed to the engine (a block it may not serve, an extent it no longer holds, a checksum mismatch).', []).inc(fuse3?.fastHanded ?? 0)
  counter('vdiskfs_fast_writes_total', 'WRITEs overwritten in the FUSE addon\'s threads without the engine (the fast path: whole sectors of slots the volume owns).', []).inc(fuse3?.fastWritten ?? 0)
  counter('vdiskfs_fast_first_write_blocks_total', 'Blocks the fast path gave a new slot itself (first writes of whole blocks).', []).inc(fuse3?.fastAllocated ?? 0)
  counter('vdiskfs_fast_writeback_kicks_total', 'Extents whose writeback the daemon started ahead of the commit after native overwrites (sync_file_range WRITE; nothing durable depends on it).', []).inc(fuse3?.fastWritebackKicks ?? 0)
  counter('vdiskfs_fast_writes_handed_total', 'WRITEs the fast path handed to the engine (not whole sectors of one block it may overwrite).', []).inc(fuse3?.fastWriteHanded ?? 0)
  counter('vdiskfs_fast_chunk_reads_total', 'Reads of sealed chunks the fast path served in the FUSE addon\'s threads (decompressed and checked against BLAKE3).', []).inc(fuse3?.fastChunkReads ?? 0)
  counter('vdiskfs_fast_chunk_pieces_total', 'Pieces (16 KiB) of sealed chunks the fast path opened and checked on their own.', []).inc(fuse3?.fastChunkPieces ?? 0)
  counter('vdiskfs_fast_chunk_mismatch_total', 'Sealed chunks that failed the fast path\'s check (the engine then reads them and reports damage).', []).inc(fuse3?.fastChunkMismatches ?? 0)
  counter('vdiskfs_fast_reads_mismatch_total', 'READs the fast path handed to the engine on a checksum mismatch (a write racing it, or damage the engine then reports).', []).inc(fuse3?.fastMismatches ?? 0)
}

/** A label value as the text format writes it: backslash, double quote and newline escaped. */
function escapeLabel (value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')
}

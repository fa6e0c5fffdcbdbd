/**
 * The shapes of control replies that have no home below the control socket: what the daemon says about
 * itself (status, stats: its metrics and log lines) and the replies the handlers compose from several
 * volumes. The table of operations (operations.ts) names these and the engine's own report types
 * (VolumeInfo, VerifyReport, SpaceReport ...); the daemon (src/daemon) builds them, the CLI reads them.
 */
import type { VolumeKind } from '../catalog/catalog'
import type { ChunkCacheStats } from '../chunk/chunk-cache'
import type { InlineWriteStats } from '../io/file-io'
import type { RootCacheStats } from '../map/block-map'
import type { PruneDecision } from '../transfer/prune'
import type { AllocationRange } from '../volume/allocation'
import type { ImportCounts } from '../volume/import'
import type { VolumeInfo } from '../volume/volume'

/** What `status` always says (the daemon adds its transport's and memory figures). */
export interface StatusResult { pid: number, pool: string, mountpoint: string, version: string, blockBytes: number, [more: string]: unknown }

export interface Progress { done: number, total: number }

export interface LatencySummary { p50Ms: number, p90Ms: number, p99Ms: number }

export interface OperationReport {
  /** Since the mount. */
  count: number
  errors: number
  totalSeconds: number
  /** Over the recent window. */
  perSecond: number
  /** Over the recent window; null when none arrived in it. */
  latency: LatencySummary | null
}

/**
 * The event loop's delay (its sampling timer's lateness) and the scheduling policy of its thread:
 * 'realtime' (SCHED_RR 1, raised at mount when permitted) or 'normal' (docs/ARCHITECTURE.md, "The
 * event loop's priority"). Absent from daemons before it.
 */
export interface EventLoopReport { p50Ms: number, p99Ms: number, maxMs: number, policy?: 'realtime' | 'normal' }

export interface JobReport { name: string, startedMs: number | null, progress: Progress | null }

/** One line of the daemon's log. */
export interface LogEntry { time: string, message: string }

export interface StatsResult {
  /** What the `status` operation says (pid, pool, mountpoint, version, block size, RSS, the FUSE session's figures). */
  daemon: StatusResult
  startedMs: number
  uptimeSeconds: number
  rssBytes: number
  heapUsedBytes: number
  /** Memory of ArrayBuffers and Buffers (map pages, slabs, I/O buffers): outside the heap, in the resident set. */
  arrayBuffersBytes: number
  /** The C heap's free pages given back to the system (daemon/memory-trim.ts): trims ended, the last one's ms and bytes; null before the daemon started them. */
  memoryTrims?: { count: number, lastMs: number, lastFreedBytes: number } | null
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
  /** Backups' roots read from the catalog on first use and kept within a bound (issue #21). */
  rootCache?: RootCacheStats
  /** Engine writes done on the event loop (inline), through the thread pool, and inline ones that were slow. */
  writes: InlineWriteStats
  /** Commits since the daemon started, the most map pages one of them wrote, and the map pages dirty now. */
  commits: { commits: number, pagesMax: number, dirtyPages: number }
  /** Engine reads served inline (every byte in the page cache: preadv2 RWF_NOWAIT) or through the thread pool. */
  reads: InlineWriteStats
  jobs: JobReport[]
  /** Lazy pulls in progress: the backup, its remote and id there, chunks it lacked and how many are here now, whether a hydrator is connected. */
  hydrating: Array<{ backup: string | null, remote: string, id: string, chunks: number, chunksHere: number, hydrator: boolean }>
  lastErrors: LogEntry[]
}

export interface Elapsed { elapsedMs: number }

/** `map`: a volume's allocation map, and the backup its shared blocks read from (a clone's). */
export interface MapResult { size: number, blockBytes: number, backing: { kind: VolumeKind, name: string } | null, ranges: AllocationRange[] }

/** `cp` and `promote`: the new volume, the one it came from, the time it took. */
export type CopyResult = VolumeInfo & { from: VolumeInfo } & Elapsed

/** One backup in `prune`'s reply: the decision on its unit (a backup, or a group whole) and what became of it. */
export type PruneRow = Omit<PruneDecision, 'groupKey' | 'id' | 'name'> & { id: number, name: string, createdMs: number, backupGroup: string | null, removed: boolean, error: string | null }

/** `importStream`'s last reply: the backup it made and what it stored. */
export type ImportFinish = ImportCounts & { backup: VolumeInfo & { uuid: string }, finishMs: number }
/** A group member's stream received whole and staged under its key (importStageStream), no backup made yet. */
export type ImportStaged = ImportCounts & { staged: { key: string, name: string } }

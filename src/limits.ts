/**
 * Every limit of vdiskfs in one place, each named with its unit last. Derived values say how they are
 * derived; `assertLimits()` checks how the constants relate and runs once at start-up.
 */
import assert from 'node:assert/strict'

/** Default block size of a new pool: the unit of a volume's address space. */
export const blockBytesDefault = 64 * 1024
/** Smallest and largest block size a pool may choose (both powers of two, multiples of 4 KiB). */
export const blockBytesMin = 4 * 1024
export const blockBytesMax = 1024 * 1024

/** Map entries per map page; a page covers pageEntries * blockBytes bytes (256 MiB at 64 KiB blocks). */
export const pageEntries = 4096
/** Bytes of one stored map entry (u64 little-endian). */
export const mapEntryBytes = 8
/** Bytes of one stored map page: pageEntries entries. */
export const pageBytes = pageEntries * mapEntryBytes

/** Largest volume size. 64 TiB keeps a root at 64 KiB blocks at 4096 page ids for 1 TiB, 256 Ki for 64 TiB. */
export const volumeBytesMax = 64 * 1024 ** 4

/** Slots per delta extent before it is rotated (1 GiB of slots at 64 KiB blocks). Must fit a map entry's slot field. */
export const extentSlotsMax = 16384
/** Bytes of the header at the start of every delta extent file; slot 0 starts here. */
export const extentHeaderBytes = 4096

/** Pack read descriptors kept open for the open workers (chunk/pack-descriptors.ts). */
export const packFdsMax = 64
/** Open extent file descriptors kept in the descriptor cache. */
export const extentFdsMax = 256
/**
 * Clean map pages kept in memory (32 KiB each: 1024 pages = 32 MiB, the maps of 256 GiB of address
 * space). A miss costs one SQLite row read (tens of µs); a page covers 256 MiB, so misses are rare.
 * Dirty pages are never evicted.
 */
export const pageCacheMax = 1024
/**
 * Bytes of backups' roots kept in memory past their use (issue #21: at 10,000 backups of a 1 TiB disk
 * the roots were 160 MiB of the daemon, read and decoded at every mount). A backup's root is loaded
 * from the catalog when first read (one row, 16-32 KiB at 1 TiB: tens of µs) and dropped again,
 * least recently used first, past this bound (map/block-map.ts, RootCache). 32 MiB: about 2,000
 * backups of a 1 TiB disk, 130,000 of a 16 GiB one. Disks' and clones' roots are always kept.
 */
export const rootCacheBytesMax = 32 * 1024 * 1024
/**
 * What the page store keeps of the pages' references for gc's mark and the space accounting (PageRefs:
 * 8 bytes per non-hole entry, kept past eviction). Past this, a page's references are read from the
 * page itself each time (loading it when evicted): pages of sparse disks (a few entries each, as with
 * 10,000 backups of a 1 TiB disk: about 25 MB) are all kept; a densely written 1 TiB disk alone would
 * be 128 MiB.
 */
export const pageRefsBytesMax = 128 * 1024 * 1024
/**
 * Catalog WAL: checkpointed every 256 pages (1 MiB at SQLite's 4 KiB pages, about 25 commits of a map
 * page each), after the transaction that crossed the mark, in the event loop's next turn (Catalog.afterWrite),
 * and started again from empty. SQLite's defaults (1000 pages, never cut back) let it sit at 4 MiB or
 * more for good.
 */
export const catalogWalCheckpointPages = 256
/** Free pages the catalog keeps after deletes (gc) before it hands them back to the filesystem. */
export const catalogFreeBytesMax = 4 * 1024 * 1024
/** catalog.log is rewritten as a snapshot once it passes twice its last snapshot's size, and this (bytes). */
export const catalogLogBytesMin = 8 * 1024 * 1024
/**
 * Map pages a volume keeps for reuse after a shrink dropped them (its own pages only): a write after
 * each truncate (dd without conv=notrunc) then rewrites one of them instead of adding a 32 KiB row
 * to the catalog that only gc would delete. Past this they are left to gc.
 */
export const mapSparePagesMax = 64
/**
 * How long rm and restore wait for the releases of an image closed just before (the kernel sends
 * RELEASE after close(2) or losetup -d has returned) before they call it in use.
 */
export const inUseGraceMs = 500
/** The longest note `vdiskfs note` keeps on a volume, in UTF-8 bytes. */
export const noteBytesMax = 4096
/** How often the in-use check looks again for releases during inUseGraceMs. */
export const inUsePollMs = 10

/**
 * Inline writes (io/file-io.ts): a write of at most this many bytes is a synchronous pwrite into the
 * page cache on the event loop, not a libuv thread-pool round trip (whose wake-ups cost more than the
 * copy on 2 cores). 128 KiB covers a slot write (at most a block) and a pack record of one chunk.
 */
export const inlineWriteBytesMax = 128 * 1024
/** Reads of at most this many bytes go inline when the page cache holds them all (io/file-io.ts). */
export const inlineReadBytesMax = 128 * 1024
/**
 * An inline write that took longer than this means the kernel is throttling writers (dirty-page
 * limits) or the disk is slow: writes then go through the thread pool for inlineWriteBackoffMs, so
 * the event loop, which serves every FUSE request, is held up by the kernel's write throttling once a
 * second at most. The back-off stays fixed: doubling it for slow writes in a row (tried) can keep the
 * small writes after a long throttled sequential one off the loop for up to a minute.
 */
export const inlineWriteSlowMs = 2
export const inlineWriteBackoffMs = 1000
/**
 * Inline writes allowed in one turn of the event loop; past it writes go through the thread pool until
 * the loop turns. A chain of awaits on inline writes never yields (each await resolves at once): this
 * bounds it (64 writes of 64 KiB: about 2 ms).
 */
export const inlineWritesPerTurnMax = 64
/**
 * Sector checksums of delta-extent slots kept in memory (extent/sum-cache.ts), so a read of unsealed
 * data needs one pread, not two: at most this many bytes (16 MiB: the checksums of 16 GiB of slots at
 * 4 KiB sectors), in pages of sumCachePageSlots slots.
 */
export const sumCacheBytesMax = 16 * 1024 * 1024
export const sumCachePageSlots = 256
/** Idle commit: dirty metadata older than this is committed even without an fsync, like ext4's commit=5. */
export const commitIntervalMs = 5000
/**
 * A commit is also started as soon as this many map pages are dirty (checked every commitPressureCheckMs,
 * after the fast path's first writes were taken into the maps), at most one such commit per
 * commitPressureSpacingMs: a commit encodes every dirty page and copies it into catalog.log and the
 * catalog at once, so its memory and its synchronous snapshot step grow with the pages it carries.
 * Writes scattered over a 1 TiB disk dirty 4,096 pages (128 MiB of entries) within one commit interval
 * on a fast machine (docs/PERFORMANCE.md, "Peak RSS"). The spacing bounds what it costs random writes
 * over more pages than this (a commit writes each dirty page whole): at most one extra commit a second.
 */
export const commitDirtyPagesMax = 512
export const commitPressureCheckMs = 50
/**
 * Early writeback of overwrites (FastReads.startWriteback, the addon's fastWriteback): every
 * writebackCheckMs, each extent in which native overwrites changed writebackKickBytes or more of
 * distinct pages since its last start gets its writeback started, so that a commit's fdatasync finds
 * about that much left instead of every page changed since the last commit (4 MiB of random 4 KiB
 * pages: 1,024 writes). At 20,000 4 KiB overwrites a second, a start every 100 ms. A page counts once
 * between two commits, however often it is rewritten: a hot set smaller than writebackKickBytes is
 * left to the commit, and no page's writeback is started twice before the commit writes it.
 */
export const writebackCheckMs = 100

/**
 * The C heap's free pages are returned to the system (daemon/memory-trim.ts) once commits stop, and
 * while they go on whenever the daemon's resident memory grew this much since the last trim; checked
 * every memoryTrimCheckMs.
 */
export const memoryTrimGrowthBytes = 32 * 1024 * 1024
export const memoryTrimCheckMs = 5000
export const writebackKickBytes = 4 * 1024 * 1024
export const commitPressureSpacingMs = 1000
/** How often the daemon checks that its mount still exists (unmount from outside). */
export const mountWatchIntervalMs = 1000

/** Longest volume name in bytes (UTF-8): NAME_MAX, what a Linux filesystem accepts (see volume/names.ts). */
export const volumeNameBytesMax = 255

/** Volumes prune removes per commit (one commit for up to this many: two syncs, not two a backup). */
export const pruneCommitVolumes = 1024
/** Chunks verify and repair read and check at a time (one worker round trip each batch). */
export const verifyBatchChunks = 8
/** Map pages catalog.log's snapshot reads from the catalog and writes per record batch. */
export const logSnapshotBatchPages = 256
/** Volume rows per write of a catalog.log snapshot (a row carries its root: 44 KB of JSON at 1 TiB). */
export const logSnapshotBatchRows = 64
/** A commit appends its catalog.log records in writes of about this many bytes (not all in one buffer). */
export const catalogLogWriteBytes = 1024 * 1024
/** A read retries this many times when sealing moved its block while the read was on its way. */
export const readRetriesMax = 3
/** Largest control request (one JSON line) the daemon buffers before it drops the connection. */
export const controlRequestBytesMax = 1024 * 1024
/** FUSE background requests the kernel may queue (max_background) and where it starts to throttle. */
export const fuseBackgroundMax = 64
export const fuseCongestionThreshold = 48
/** How long `vdiskfs mount` waits for the daemon to report the mount ready. */
export const daemonReadyTimeoutMs = 60000
/** How long `vdiskfs umount` waits for the daemon to exit after the unmount, looking every daemonExitPollMs. */
export const daemonExitTimeoutMs = 30000
export const daemonExitPollMs = 50
/** How often a progress bar asks the daemon how far its job is. */
export const progressIntervalMs = 200
/** How often the profiling aid VDISKFS_COUNT_OPS=1 logs request counts. */
export const operationCountIntervalMs = 5000
/** The mount's read-ahead (the kernel's default is 128 KiB): sequential reads gain about 1.6x here. */
export const readAheadKibibytes = 1024

/** `vdiskfs cp` out of the pool reads and writes the image's data ranges in pieces of this size. */
export const copyOutPieceBytes = 1024 * 1024
/** Our FUSE 3 transport (fuse3-transport.ts): 1 MiB requests (max_write; libfuse 3.14 sets max_pages 256 from it). */
export const fuse3MaxWriteBytes = 1024 * 1024
/** Its worker threads (fuse_session_loop_mt): they only read requests and queue them to JavaScript. */
export const fuse3Threads = 4
/**
 * How long the kernel may keep a name (entry) and a volume's attributes (seconds), and whether an open
 * keeps the pages cached before it (keep_cache). Safe because the daemon invalidates what changes behind
 * the kernel's back (Pool.onChange: rename, rm, promote, restore); names not found are never cached (a
 * new backup or clone shows at once). Attributes the engine changes by itself (st_blocks after sealing)
 * lag by at most fuse3AttrTimeoutSeconds. keep_cache is on: the bytes of a volume change only through
 * the kernel or by a restore, which is invalidated. docs/TRANSPORT.md, "Caching".
 */
export const fuse3EntryTimeoutSeconds = 1
export const fuse3AttrTimeoutSeconds = 1
export const fuse3KeepCache = true
/** The longest a CLI command waits for the kernel to take an invalidation (it can wait on page locks). */
export const fuse3NotifyWaitMs = 5000
/**
 * copyRange (copy_file_range on the FUSE 3 transport): what it cannot share (the partial blocks at the
 * ends; everything when the two offsets differ within a block) it copies through the volumes in pieces
 * of copyPieceBytes, at most copyBytesMax per call; whole blocks it shares, at most copySharedBlocksMax
 * per call (one synchronous map update each: 16,384 blocks take a few milliseconds). The caller asks
 * again for the rest, as copy_file_range(2) allows.
 */
export const copyPieceBytes = 1024 * 1024
export const copyBytesMax = 64 * 1024 * 1024
export const copySharedBlocksMax = 16384

export function assertLimits (blockBytes: number): void {
  assert.ok(Number.isInteger(Math.log2(blockBytes)), 'block size must be a power of two')
  assert.ok(blockBytes >= blockBytesMin && blockBytes <= blockBytesMax, 'block size out of range')
  assert.equal(blockBytes % 4096, 0, 'block size must be a multiple of 4 KiB')
  assert.ok(extentSlotsMax < 2 ** 24, 'extent slot must fit the 24-bit slot field of a map entry')
  assert.equal(extentHeaderBytes % 4096, 0)
}

/** Slots in the shared slab (each about 2 x 64 KiB + 32 at 64 KiB blocks, 16 MiB in all): bounds blocks in flight to workers. */
export const slabSlots = 128
/**
 * Tasks queued for the worker pool (Piscina's maxQueue, past which run() *fails*). Every task holds at
 * least one slab slot, and slots are granted whole before a task is submitted, so at most slabSlots
 * tasks exist at once: with this value the limit can never be reached, and back-pressure is the slot
 * allocator's queue, which waits instead of failing a read.
 */
export const workerQueueMax = slabSlots
/** Blocks per seal task: 8 x 64 KiB = 512 KiB, inside the 256 KiB-1 MiB range where batching pays. */
/**
 * The nice value of the sealing workers' threads. Sealing is background work: on 2 cores the main
 * thread (which serves every FUSE request) and the read workers must win the CPU over it. Measured
 * (bench/seal-speed.ts, 2 workers, back to back): event-loop delay p99 4.7-5.1 ms at 0, 2.5-3.5 ms
 * at 10, with sealing throughput no lower (351-396 MB/s at 0, 394-437 at 10).
 */
export const sealWorkerNice = 10
export const sealBatchBlocks = 16
/** Extents a sealing pass repoints before the commit that lets it drop them (one commit writes a shared map page once for all of them). */
export const sealCommitExtents = 64
/** Blocks per open (read) task at most; FUSE reads of 128 KiB need 2 or 3. */
export const readBatchBlocks = 16
/** Pack files are rotated past this size. */
export const packBytesMax = 64 * 1024 * 1024
/** Chunk locations cached in memory (each a few dozen bytes). */
export const chunkCacheMax = 65536
/** Opened (verified, decompressed) blocks kept for partial reads of the same block: bytes. */
export const openedCacheBytesMax = 32 * 1024 * 1024
/**
 * An extent not written for this long is frozen and sealed in the background. Sealing hot data would
 * turn every small write to it into a read-modify-write of a whole chunk, so the limit is long;
 * `vdiskfs sync` seals everything at once.
 */
export const extentIdleMs = 60000
/** Extents a volume may keep writing in place (full ones included): 4 GiB of hot blocks at 64 KiB. */
export const writableExtentsMax = 4
/** zstd level of a new pool. */
export const zstdLevelDefault = 3
/** Packs whose live fraction is below this are compacted by the background gc ... */
export const packLiveFractionMin = 0.5
/** ... and below this by an explicit `vdiskfs gc`, which is asked to give space back now. */
export const packLiveFractionExplicit = 0.9
/** The background gc runs this long after the last change it has not seen. */
export const gcIntervalMs = 60000
/**
 * ... and, after a background gc that took T, not before this many times T has passed since it
 * ended (issue #21: a gc costs every distinct map page, minutes with 10,000 backups of a big disk;
 * started every gcIntervalMs, gcs queued behind each other and ran all the time beside the writes).
 */
export const gcRestFactor = 4
/** How often the background sealer looks for work. */
export const sealIntervalMs = 2000
/**
 * New data is refused (ENOSPC) while the pool's filesystem has less than this free: the room keeps
 * catalog commits, rm and gc working on a full disk, so space can be given back without a restart.
 */
export const metadataReserveBytes = 16 * 1024 * 1024
/** The free-space figure behind that check is refreshed at least this often. */
export const statfsIntervalMs = 250
/**
 * A discard (fallocate PUNCH_HOLE or ZERO_RANGE: fstrim, blkdiscard, mkfs) looks at this many blocks per
 * event-loop turn (4 GiB at 64 KiB blocks), so discarding a whole large disk does not stall other I/O.
 */
export const discardBlocksPerTurn = 65536
/**
 * `vdiskfs map` walks this many allocated map pages per event-loop turn (64 x 4096 entries: 16 GiB at
 * 64 KiB blocks, a few ms), so mapping a large, full disk does not stall other I/O.
 */
export const allocationPagesPerTurn = 64
/**
 * The space figures an image's xattrs show may be this old: computing them walks every distinct map
 * page of the pool, and any reader of one image could otherwise ask for it after every write.
 */
export const spaceUsageStaleMs = 2000
/** The space accounting's walk yields to the event loop after this much work (inspect/space.ts). */
export const spaceSliceMs = 5
/** gc's mark yields to the event loop after this much work (volume/gc-mark.ts). */
export const gcSliceMs = 5

// ---- what the daemon is doing (vdiskfs status, daemon.log; daemon/metrics.ts, daemon/daemon-log.ts) ----

/**
 * vdiskfs status gives operation rates, latency percentiles and event-loop delay over the last one to two
 * windows of this length (the figures of the window before the current one, plus the current one).
 */
export const statusWindowMs = 10000
/** The event-loop delay monitor's sampling timer (perf_hooks.monitorEventLoopDelay's resolution). */
export const eventLoopSampleMs = 10
/**
 * FUSE operation latency histograms: buckets from 1 µs up, this many per doubling (a percentile is
 * at most 25% above the truth), over this many doublings (2^28 µs, 4.5 minutes; slower ones count in the last).
 */
export const latencyBucketsPerDoubling = 4
export const latencyDoublings = 28
/** The background daemon's log is rotated (daemon.log -> daemon.log.1, one old file kept) past this size. */
export const daemonLogBytesMax = 10 * 1024 * 1024
/** The last error lines of the log that vdiskfs status shows. */
export const daemonLogErrorsKept = 20

// ---- export and import (issue #12; src/transfer, src/volume/import.ts, src/daemon/server/ops-transfer.ts) ----

/** Changed blocks the daemon reads per export read (1 MiB at 64 KiB; chunks in one worker task), and reads in flight. */
export const exportReadBlocks = 16
export const exportReadsInFlight = 4
/** Blocks the daemon stores per import batch: one fdatasync of the packs and one catalog transaction each (16 MiB at 64 KiB). */
export const importBatchBlocks = 256
/**
 * Frames per import batch, those without bytes (zero blocks, a lazy pull's references) counted too: a
 * batch of references costs its catalog.log fdatasync and transaction and little else (a few MiB of
 * memory at most), so a lazy pull of a 1 GiB image stores its 16,384 references in one batch, not 64.
 */
export const importBatchFrames = 16384
/**
 * References per batch of a lazy pull's references file (volume/lazy-refs.ts): appended to the file
 * together as they arrive, and applied together after the reply (look-ups, catalog.log's record, one
 * transaction, the map's sets, under the maintenance lock): the most either side holds in memory (704 KiB
 * of records), and what a read past the head waits for (its own batch, taken next).
 */
export const lazyRefsBatchRefs = importBatchFrames
/** The most chunk ids one lazyMissing request may ask about (a hydrator asks a batch of a manifest at a time). */
export const lazyMissingHashesMax = 4096
/**
 * The most rows a lazy pull's import keeps in memory rather than in the catalog (import.ts; 2.25 MiB of
 * them, a 16 GiB image at 64 KiB blocks): a larger one writes them all to the catalog once past it.
 */
export const lazyImportRowsInMemoryMax = 262144
/** Recorded blocks an import's finish applies to the new map per turn of the event loop. */
export const importFinishTurnBlocks = 4096
/** An import not continued for this long is dropped when its catalog opens; its chunks become garbage for gc. */
export const importAbandonedMs = 7 * 24 * 3600 * 1000
/**
 * Bytes a sender lets queue on an export or import connection before it waits for the peer: a socket's
 * own mark (16 KiB) is a quarter of a block, so waiting on it would make every block a round trip.
 */
export const sendWindowBytes = 4 * 1024 * 1024
/** Stream bytes buffered between the export encoder and its file or pipe (large writes). */
export const streamBufferBytes = 4 * 1024 * 1024

/**
 * A push's export connection reads into a ring of its own (RingSource, transfer/wire.ts) of this size,
 * exportRingReadBytes a read: room for several 64 KiB blocks' frames in flight, and few reads per block.
 */
export const exportRingBytes = 4 * 1024 * 1024
export const exportRingReadBytes = 256 * 1024
/** Map pages an export's comparison reads before it lets other work run (a few ms). */
export const diffPagesPerTurn = 16
/** How long a failed import waits for the daemon's reason before it reports the connection's failure. */
export const daemonReasonWaitMs = 2000
/**
 * Latest creation time a volume may carry, ms since the epoch: 9999-12-31T23:59:59.999Z, the last
 * ISO 8601 four-digit year (a Date holds up to 8.64e15 ms; past it a time cannot even be shown). An
 * imported stream's creation time is checked against it.
 */
export const createdMsMax = 253402300799999
/** Largest JSON body of an error frame on an export connection (a one-line message; a bound on what a peer makes us buffer). */
export const errorFrameBytesMax = 64 * 1024

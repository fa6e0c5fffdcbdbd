/**
 * Commit: makes everything written so far durable, in the order docs/ARCHITECTURE.md gives. First the extents
 * (fdatasync), then the catalog.log copy, then one SQLite transaction with the map pages and volume
 * rows that point at them: metadata never points at unsynced bytes, and the log always holds at least
 * what the catalog does. Also the records a restart reads: whether the pool closed cleanly and which
 * extents were writable at the last commit (the suspect ones after an unclean stop).
 *
 * Assumes: it runs on the main thread, so the snapshot of dirty pages and rows taken synchronously
 * holds only fully written changes. A failed fdatasync is fatal until the pool is opened again.
 * Errors: commit() throws IO (sync failure, closed pool) or NO_SPACE, and what the catalog throws.
 */
import { VolumeRow } from '../catalog/catalog'
import { AppendTiming } from '../catalog/catalog-log'
import { VdiskError, fromSystemError } from '../errors'
import { encodeRoot } from '../format/map-format'
import { catalogLogFile } from '../format/pool-format'
import { PoolState } from './pool-state'
import { countsSum } from './ref-counts'
import { CountsAdjustment, forCommit } from './deferred-repoints'
import { Volume } from './volume'

/**
 * Where a commit's time went (ms), for the daemon's log of a backup (issue #21: the slow backups at
 * 10,000 traced): waiting for the commit before it (queuedMs, as the caller saw it), the snapshot
 * step, the extents' fdatasync, catalog.log's append (waiting for the log, writing, fdatasync, the
 * SQLite transaction) and what follows (a first log snapshot).
 */
export interface CommitTiming {
  startedAt: number
  queuedMs: number
  snapshotMs: number
  extentsSyncMs: number
  log: AppendTiming
  /** The catalog's WAL fdatasync after the transaction (in the thread pool). */
  walSyncMs: number
  afterMs: number
  pages: number
  rows: number
}

/** The callers waiting for one commit that has not started. */
interface Waiting {
  promise: Promise<CommitTiming>
  resolve: (timing: CommitTiming) => void
  reject: (err: unknown) => void
}

function waitingCallers (): Waiting {
  let resolve: (timing: CommitTiming) => void = () => {}
  let reject: (err: unknown) => void = () => {}
  const promise = new Promise<CommitTiming>((res, rej) => { resolve = res; reject = rej })
  // A rejection no caller awaits any more (each caller awaits it) is not an unhandled one.
  promise.catch(() => {})
  return { promise, resolve, reject }
}

export class Committer {
  /** A commit is running, or about to start (its choice of what it serves made when it starts). */
  private running = false
  /** The callers waiting for the next commit without `full`: it has not started. */
  private partialQueued: Waiting | null = null
  /** The callers (a seal pass's settle) waiting for the next full commit: it has not started. */
  private fullQueued: Waiting | null = null
  /** The queued full commit has let a partial one start before it: it starts next, whatever is queued. */
  private fullPassed = false
  /**
   * Set when an fdatasync failed: Linux drops the dirty pages and a retry "succeeds", so nothing
   * written since the last commit can be trusted. Every later commit fails with this error (fsync
   * answers EIO) until the pool is opened again, which starts from the last good commit.
   */
  private syncFailure: VdiskError | null = null
  /** The writable extent list as last committed (see markOpen). */
  private persistedWritable = '[]'

  /** Set by markOpen: the pool's last run did not close it (its daemon was killed, or the host crashed). */
  uncleanStopFound = false
  /** Commits made since the pool opened, and the most map pages one of them wrote (`vdiskfs status`). */
  readonly stats = { commits: 0, pagesMax: 0 }

  constructor (private readonly state: PoolState) {}

  /**
   * Records that the pool is open (a clean close records the opposite). After an unclean stop the
   * extents that were writable at the last commit are suspect: sectors written after that commit may
   * have reached the disk without their checksums, or the reverse (delta-extent.ts). They are read
   * unchecked until recover() recomputes their checksums; the list is kept in the catalog until then.
   */
  markOpen (): void {
    this.uncleanStopFound = this.state.catalog.getMeta('clean_close') === '0'
    const parse = (key: string): number[] => { try { return JSON.parse(this.state.catalog.getMeta(key) ?? '[]') as number[] } catch { return [] } }
    const suspect = new Set(parse('suspect_extents'))
    if (this.state.catalog.getMeta('clean_close') !== '1') for (const id of parse('writable_extents')) suspect.add(id)
    for (const id of suspect) this.state.extents.suspect.add(id)
    this.persistedWritable = this.state.catalog.getMeta('writable_extents') ?? '[]'
    this.state.catalog.transaction(() => {
      // Stored counts are the state of the close that stored them: any change from here on would
      // make them wrong, so they are taken now (loadStoredCounts read them before the journal replay).
      this.state.catalog.deleteRefCounts()
      this.state.catalog.setMeta('clean_close', '0')
      this.state.catalog.setMeta('suspect_extents', JSON.stringify([...suspect]))
    })
  }

  /**
   * Makes every change made before the call durable. Concurrent callers share commits: a call made
   * while one runs waits for the next, which starts after it and so includes its changes. `full`: also
   * the repoints a seal pass left to its own commit (deferred-repoints.ts; the pass's settle asks it).
   * A full commit and a partial one are queued apart (issue #21: a backup whose commit was queued when
   * the pass asked carried the pass's pages and rows): when both wait, the partial one starts first,
   * once; the full one then starts next and also serves the partial callers queued by then. So the
   * pass waits for one commit more at most, and every caller's commit starts after its call.
   */
  async commit (full = false): Promise<CommitTiming> {
    const asked = performance.now()
    const waiting = full ? (this.fullQueued ??= waitingCallers()) : (this.partialQueued ??= waitingCallers())
    this.startNext()
    const timing = await waiting.promise
    return { ...timing, queuedMs: timing.startedAt - asked }
  }

  /**
   * Starts the next commit unless one runs. It starts a microtask later (callers of the same turn join
   * it), and chooses then which queue it serves: the partial one first while the full one has not
   * let one pass; else the full one, with the partial callers too (it starts after their calls).
   */
  private startNext (): void {
    if (this.running || (this.partialQueued === null && this.fullQueued === null)) return
    this.running = true
    queueMicrotask(() => {
      const partial = this.partialQueued
      const fullWaiting = this.fullQueued
      const full = fullWaiting !== null && (partial === null || this.fullPassed)
      const served = full ? [fullWaiting, ...(partial === null ? [] : [partial])] : [partial as Waiting]
      this.partialQueued = null
      if (full) {
        this.fullQueued = null
        this.fullPassed = false
      } else if (fullWaiting !== null) this.fullPassed = true
      this.commitNow(full).then(
        timing => { for (const waiting of served) waiting.resolve(timing) },
        (err: unknown) => { for (const waiting of served) waiting.reject(err) }
      ).finally(() => {
        this.running = false
        this.startNext()
      }).catch(() => {})
    })
  }

  private async commitNow (full: boolean): Promise<CommitTiming> {
    const timing: CommitTiming = { startedAt: performance.now(), queuedMs: 0, snapshotMs: 0, extentsSyncMs: 0, log: { waitMs: 0, writeMs: 0, syncMs: 0, applyMs: 0, bytes: 0 }, walSyncMs: 0, afterMs: 0, pages: 0, rows: 0 }
    if (this.state.lifecycle === 'closed') throw new VdiskError('IO', 'the pool is closed: nothing more can be committed')
    if (this.syncFailure !== null) throw this.syncFailure
    // Snapshot synchronously: everything in it was fully written before this point.
    // Changes from here on go to the next journal file; this commit holds the ones before (journal.ts).
    const journalSeq = this.state.journal.rotate()
    // The addon's first writes answered so far go into the maps first (their data is in extents the
    // sync below covers: each set its extent's dirty flag before it was queued), and, in the same step,
    // its later records into the new journal file: those it queued before are in this snapshot.
    this.state.settleNative(() => this.state.journal.nativeFd())
    // A seal pass's repoints of clean pages stay out unless this commit is the pass's (or none runs).
    const adjust = forCommit(this.state, full)
    this.state.changedSinceCommit = false
    const pages = this.state.pages.takeDirty()
    const rows = this.takeRows(adjust)
    const removed = [...this.state.removed]
    const nextEpoch = this.state.nextEpoch
    const writable = JSON.stringify([...this.state.writableExtentIds()].sort((a, b) => a - b))
    // gc's decision from the reference counts sees exactly what this commit makes durable (maintenance.ts).
    const atSnapshot = this.state.atCommitSnapshot
    this.state.atCommitSnapshot = null
    if (atSnapshot !== null) atSnapshot(journalSeq)
    timing.pages = pages.length
    timing.rows = rows.length
    const syncing = performance.now()
    timing.snapshotMs = syncing - timing.startedAt
    try {
      await this.syncExtents()
      timing.extentsSyncMs = performance.now() - syncing
      // The log copy first, then the catalog (in the append's turn: no catalog.log snapshot step runs
      // between them): the log always holds at least what the catalog does.
      // The transaction's WAL append is synced in the thread pool after it (catalog.transactionUnsynced,
      // syncWal), not by SQLite on the event loop: 1.4-18 ms of fsync per commit held every FUSE request
      // the engine serves (issue #20's event-loop p99). This commit returns only after that sync, and
      // commits run one at a time (commit()), so nothing acts on its durability before it is durable.
      await this.state.catalogLog.append({ removed, pages, rows, meta: { next_epoch: String(nextEpoch), journal_seq: String(journalSeq) } }, () => this.state.catalog.transactionUnsynced(() => {
        for (const id of removed) this.state.catalog.deleteVolume(id)
        for (const page of pages) this.state.catalog.putPage(page.id, page.epoch, page.entries)
        for (const { row, withRoot, insert } of rows) {
          if (insert) this.state.catalog.insertVolume(row)
          else this.state.catalog.updateVolume(row, withRoot)
        }
        this.state.catalog.setMeta('next_epoch', String(nextEpoch))
        this.state.catalog.setMeta('journal_seq', String(journalSeq))
        if (writable !== this.persistedWritable) this.state.catalog.setMeta('writable_extents', writable)
      }), timing.log)
      const walSync = performance.now()
      await this.syncCatalogWal()
      timing.walSyncMs = performance.now() - walSync
    } catch (err) {
      for (const { volume, withRoot } of rows) { volume.rowDirty = true; if (withRoot) volume.map.rootDirty = true }
      this.state.changedSinceCommit = true
      throw fromSystemError(err, 'committing the catalog')
    } finally {
      for (const { volume, withRoot } of rows) if (withRoot) volume.map.rootWriting--
    }
    this.state.pages.committed(pages)
    this.stats.commits++
    this.stats.pagesMax = Math.max(this.stats.pagesMax, pages.length)
    this.persistedWritable = writable
    try { this.state.journal.dropBefore(journalSeq) } catch (err) { this.state.log(`removing committed journal files failed: ${(err as Error).message}`) }
    for (const id of removed) this.state.removed.delete(id)
    for (const { volume, insert } of rows) if (insert) volume.persisted = true
    // A backup's root written by this commit is the catalog's now: it may be dropped (issue #21).
    for (const { volume, withRoot } of rows) if (withRoot && this.state.volumes.get(volume.id) === volume) this.state.lazyRoot(volume)
    // A rewrite of catalog.log runs in the background (the commits after this one append to the old
    // file meanwhile): only a log's first snapshot is waited for here.
    const failed = (err: Error): void => { this.state.log(`rewriting ${catalogLogFile} failed (the old one stays in use): ${err.message}`) }
    const done = (before: number, after: number, ms: number): void => { this.state.log(`${catalogLogFile} rewritten beside the commits: ${before} bytes to ${after} in ${Math.round(ms)} ms`) }
    const after = performance.now()
    await this.state.catalogLog.afterCommit(failed, done).catch(failed)
    timing.afterMs = performance.now() - after
    return timing
  }

  /**
   * The rows this commit writes (in its snapshot step): every volume changed since the last, with its
   * root when that changed or it is new. A root written is not droppable until the transaction wrote
   * it (rootWriting: a drop meanwhile would read the old one again from the catalog; issue #21).
   */
  private takeRows (adjust: CountsAdjustment): Array<{ volume: Volume, row: VolumeRow, withRoot: boolean, insert: boolean }> {
    const rows: Array<{ volume: Volume, row: VolumeRow, withRoot: boolean, insert: boolean }> = []
    for (const volume of this.state.volumes.values()) {
      if (!volume.rowDirty && !volume.map.rootDirty && volume.persisted) continue
      const withRoot = volume.map.rootDirty || !volume.persisted
      rows.push({ volume, row: this.rowOf(volume, withRoot, adjust), withRoot, insert: !volume.persisted })
      volume.rowDirty = false
      volume.map.rootDirty = false
      if (withRoot) volume.map.rootWriting++
    }
    return rows
  }

  /** The extents written since the last commit made durable; a failed fdatasync is fatal for every later commit. */
  private async syncExtents (): Promise<void> {
    try {
      await this.state.extents.syncPending()
    } catch (err) {
      if (!(err instanceof VdiskError && err.code === 'NO_SPACE')) {
        this.syncFailure = new VdiskError('IO', `an fdatasync of the pool's extents failed (${(err as Error).message}); ` +
          'writes since the last commit may be lost, so vdiskfs refuses every further commit until the pool is mounted again', { cause: err })
        this.state.log(this.syncFailure.message)
        this.state.journal.discard()
        throw this.syncFailure
      }
      throw err
    }
  }

  /**
   * The commit's catalog transaction made durable (an fdatasync of the WAL in the thread pool); as for
   * the extents, a failed one is fatal: it may have dropped the transaction's pages, and a retry that
   * "succeeds" would not bring them back.
   */
  private async syncCatalogWal (): Promise<void> {
    try {
      await this.state.catalog.syncWal(async fd => await this.state.io.fdatasync(fd))
    } catch (err) {
      this.syncFailure = new VdiskError('IO', `an fdatasync of the catalog's WAL failed (${(err as Error).message}); ` +
        'the last commit may be lost, so vdiskfs refuses every further commit until the pool is mounted again', { cause: err })
      this.state.log(this.syncFailure.message)
      throw this.syncFailure
    }
  }

  /**
   * A volume's catalog row: what it says of itself (Volume.info), its map and its owner; its counters
   * without the repoints this commit leaves out (`adjust`: the committed pages are what they count).
   */
  private rowOf (volume: Volume, withRoot: boolean, adjust: CountsAdjustment): VolumeRow {
    const left = adjust(volume)
    return {
      ...volume.info(),
      epoch: volume.map.epoch,
      root: withRoot ? encodeRoot(volume.map.root, volume.id) : Buffer.alloc(0),
      allocatedBlocks: volume.map.allocatedBlocks + (left?.freed ?? 0),
      storedBytes: volume.map.storedBytes - (left?.stored ?? 0),
      activeExtent: volume.activeExtentId,
      uid: volume.uid,
      gid: volume.gid,
      mode: volume.mode
    }
  }

  /**
   * Everything is committed and no write can follow: nothing is suspect at the next open. `counts`:
   * gc's reference counts as the final commit's snapshot step took them (RefCounts.stored), with that
   * commit's journal sequence; stored beside the catalog's fingerprint, for the next open, unless a
   * commit ran after that one (then the catalog is not their state, and none are stored).
   */
  markCleanClose (counts: { data: Buffer, journalSeq: number } | null = null): void {
    const catalog = this.state.catalog
    catalog.transaction(() => {
      if (counts !== null && catalog.getMeta('journal_seq') === String(counts.journalSeq)) {
        catalog.putRefCounts(catalog.countsFingerprint(), countsSum(counts.data), counts.data)
      } else catalog.deleteRefCounts()
      catalog.setMeta('clean_close', '1')
    })
  }

  /**
   * At open, before any root was counted and before anything changes a page: takes the reference
   * counts the last clean close stored, when that close was the last thing that wrote the catalog
   * (its fingerprint unchanged) and their checksum holds; when the page counts are not taken,
   * `countRoots` counts them from every root. Returns whether the chunk and extent counts were taken
   * (the first gc then needs no full mark). markOpen deletes them in its transaction, so a crash from
   * here on leaves none behind.
   */
  loadStoredCounts (countRoots: () => void): boolean {
    const taken = this.takeStoredCounts()
    if (!taken.pages) countRoots()
    return taken.counts
  }

  private takeStoredCounts (): { pages: boolean, counts: boolean } {
    const none = { pages: false, counts: false }
    const catalog = this.state.catalog
    if (catalog.getMeta('clean_close') !== '1') return none
    const row = catalog.refCounts()
    if (row === undefined) return none
    if (row.fingerprint !== catalog.countsFingerprint() || row.sum !== countsSum(row.data)) {
      this.state.log('gc: the reference counts stored at the last close do not match the catalog; the roots are counted and the first gc marks in full')
      return none
    }
    const taken = this.state.refs.load(row.data)
    if (taken.counts) this.state.log('gc: reference counts taken from the last clean close (no full mark needed)')
    else if (taken.pages) this.state.log('gc: the page reference counts taken from the last clean close (the first gc marks in full)')
    return taken
  }
}

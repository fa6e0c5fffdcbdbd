/**
 * Maintenance: the jobs that rewrite maps and chunks behind the volumes' backs, run one at a time
 * (exclusive): gc, the sealer's hooks (which extents are frozen, freezing due extents, which slots are
 * still referenced, repointing map entries at sealed chunks, dropping a sealed extent), recounting
 * after repair, and recovering suspect extents after an unclean stop.
 *
 * Assumes: gc's mark begins synchronously right after a commit and sees the maps as they were then
 * (gc-mark.ts); deletions follow the commit that made their targets garbage. Writable extents are
 * never sealed or freed. Errors: BUSY once the pool is closing; what commit and the stores throw.
 */
import path from 'node:path'
import { entryExtentId, entryKind, entryKindDelta, entrySlot } from '../format/map-format'
import { extentsDir } from '../format/pool-format'
import { VdiskError } from '../errors'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { extentIdleMs, gcSliceMs, packLiveFractionMin, writableExtentsMax } from '../limits'
import { GcMark, MarkResult, MarkSeams } from './gc-mark'
import { Decision, UnloadedBase } from './ref-counts'
import { Page } from '../map/page-store'
import { Committer } from './commit'
import { undeferAll } from './deferred-repoints'
import { Volume } from './volume'
import { PoolState } from './pool-state'

export { MarkSeams } from './gc-mark'

export interface GcReport {
  pagesFreed: number
  extentsFreed: number
  chunksFreed: number
  packsFreed: number
  packBytesFreed: number
  /** Why gc freed nothing: the catalog is damaged (lost blocks, unreadable pages, dangling references). */
  held?: string
  /** Where its time went (ms): the mark (with its commit), the sweep (deletions), the packs' compaction. */
  phaseMs?: { mark: number, sweep: number, compact: number }
}

export class Maintenance {
  private running: Promise<unknown> = Promise.resolve()
  /** True while gc's mark is under way. */
  marking = false
  seams: MarkSeams = {}

  constructor (private readonly state: PoolState, private readonly committer: Committer) {}

  private get volumes () { return this.state.volumes }

  private async commit (): Promise<void> { await this.committer.commit() }

  /** Waits for the maintenance job running now, if any (close and abandon). */
  async settle (): Promise<void> { await this.running.catch(() => {}) }

  /**
   * Runs `work` alone among maintenance jobs (sealing, gc): they rewrite the same maps and chunks.
   * `kind` 'seal': a seal pass, beside which readers may walk (besideSealing) except while it settles.
   * A job starts only once the walks beside the job before it ended. A seal pass's repoints wait for its
   * own commit (deferred-repoints.ts) from the moment it holds the lock; what is still deferred when it
   * ends (a failed or skipped settle) becomes an ordinary change for the next commit, so no job after it
   * (gc's decision) sees a committed state other than the one in memory.
   */
  async exclusive<T> (work: () => Promise<T>, kind: 'seal' | 'other' = 'other'): Promise<T> {
    if (this.state.lifecycle !== 'open') throw new VdiskError('BUSY', 'the pool is closing')
    this.queued++
    const run = this.running.catch(() => {}).then(async () => {
      this.queued--
      await this.besideDrained()
      this.holder = kind
      this.state.repointsDeferred = kind === 'seal'
      this.lockChanged()
      try {
        return await work()
      } finally {
        this.holder = null
        if (this.state.repointsDeferred) {
          this.state.repointsDeferred = false
          undeferAll(this.state)
        }
        this.lockChanged()
      }
    })
    this.running = run
    return await run
  }

  /** The highest pack id when the last gc compacted: packs above it are new to the next one. */
  private packMax = 0
  /** Packs that lost chunks to a gc from the counts and were not compacted away: candidates again. */
  private readonly sparsePacks = new Set<number>()

  /** Who holds the maintenance lock: a seal pass, another job, or nobody. */
  private holder: 'seal' | 'other' | null = null
  /** Jobs waiting for the lock. */
  private queued = 0
  /** Walks running beside a seal pass (besideSealing), and who waits for them to end. */
  private beside = 0
  private besideEnded: Array<() => void> = []
  /** Set while a seal pass settles (commits, then deletes extents): no walk starts beside it then. */
  private settlingNow = false
  /** Who waits for the lock's state to change (besideSealing). */
  private waiters: Array<() => void> = []

  private lockChanged (): void {
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }

  private async besideDrained (): Promise<void> {
    while (this.beside > 0) {
      this.besideWaits++
      await new Promise<void>(resolve => this.besideEnded.push(resolve))
    }
  }

  /** Test seam: how many times a job or a settling step waited for walks beside a seal pass. */
  besideWaits = 0

  /**
   * Runs a reader that must not meet a gc, a compaction, a repair or a seal pass's settling (the
   * space accounting: it reads pages and chunk sizes across awaits, and those free pages, chunks and
   * extents or move chunks): under the lock when nobody holds it, or at once beside a seal pass that is
   * sealing extents (issue #21: `du` and `info` waited behind whole seal passes, 30 s at 1,000
   * backups). What a seal pass does meanwhile is what writes do (docs/CONCURRENCY.md): it makes
   * chunks and repoints pages in place, synchronously, and the walk reads each page once; it deletes
   * nothing before it settles, and settling waits for the walks beside it (settling), as does the next
   * job on the lock (exclusive).
   */
  async besideSealing<T> (work: () => Promise<T>): Promise<T> {
    for (;;) {
      if (this.state.lifecycle !== 'open') throw new VdiskError('BUSY', 'the pool is closing')
      // Checked and acted on in one step (no await between): the holder cannot change in between.
      if (this.holder === 'seal' && !this.settlingNow) {
        this.beside++
        try {
          return await work()
        } finally {
          if (--this.beside === 0) {
            const ended = this.besideEnded
            this.besideEnded = []
            for (const wake of ended) wake()
          }
        }
      }
      if (this.holder === null && this.queued === 0) return await this.exclusive(work)
      await new Promise<void>(resolve => this.waiters.push(resolve))
    }
  }

  /**
   * A seal pass's settling step (commit, then delete the sealed extents), inside its exclusive():
   * no walk starts beside the pass from here to its end, and the ones beside it end first.
   */
  async settling<T> (work: () => Promise<T>): Promise<T> {
    this.settlingNow = true
    try {
      await this.besideDrained()
      return await work()
    } finally {
      this.settlingNow = false
      this.lockChanged()
    }
  }

  /**
   * Frees map pages, delta extents and chunks that no volume references, and compacts packs whose
   * live fraction is low. The first gc of a process (and the one after the counts were dropped) marks
   * every page (gcMarked: gc-mark.ts), then builds the reference counts (ref-counts.ts); every later
   * one decides from the counts (gcCounted), in time proportional to what changed and what it frees.
   * `full` (`vdiskfs gc --full`): the counts' decision is checked against a full mark, and nothing is
   * freed when they disagree (issue #21).
   */
  async gc (liveFractionMin = packLiveFractionMin, options: { full?: boolean } = {}): Promise<GcReport> {
    this.state.settleNative()
    return await this.exclusive(async () => {
      if (!this.state.refs.complete) return await this.gcMarked(liveFractionMin)
      return await this.gcCounted(liveFractionMin, options.full === true)
    })
  }

  /**
   * gc by a full mark. The mark (gc-mark.ts) starts synchronously after a commit and walks the maps
   * in slices that yield to the event loop: what it can free existed when it began and was referenced
   * by nothing then, nor since (docs/CONCURRENCY.md, "gc's mark"). Deletions follow that commit. Then
   * the reference counts are built (buildCounts), still under the maintenance lock.
   */
  private async gcMarked (liveFractionMin: number): Promise<GcReport> {
    const started = performance.now()
    const found = await this.mark(false)
    const marked = performance.now()
    // From here to the deletions below, one synchronous step: nothing changes the maps meanwhile.
    const { livePages, liveExtents, liveChunks } = found
    // Only a healthy catalog proves anything unreferenced. A lost entry (it named something repair
    // could not find or prove), an unreadable page, or a reference to a chunk or extent the catalog
    // lacks means the maps are not the whole truth: then gc frees nothing (issue #9, item 6).
    let held = found.held
    if (held === null) {
      const known = new Set(found.chunkIds)
      for (const id of liveChunks) if (!known.has(id)) { held = `chunk ${id} is referenced but missing from the index`; break }
    }
    if (held === null) {
      const known = new Set(found.extentIds)
      for (const id of liveExtents) if (!known.has(id) && id < found.nextExtentId) { held = `delta extent ${id} is referenced but missing from the catalog`; break }
    }
    // Only what existed when the mark began can be dead (a page or extent made since is not in these
    // lists); an extent is gone from the catalog only by gc or sealing, which wait for this lock.
    const extentsNow = new Set(this.state.catalog.extents().map(e => e.id))
    const deadPages = held !== null ? [] : found.pageIds.filter(id => !livePages.has(id) && !this.state.pages.isDirty(id))
    const deadExtents = held !== null ? [] : found.extentIds.filter(id => !liveExtents.has(id) && id < found.nextExtentId && extentsNow.has(id))
    const deadChunks = held !== null ? [] : found.chunkIds.filter(id => !liveChunks.has(id))
    if (held !== null) this.state.log(`gc frees nothing while the catalog is damaged: ${held} (vdiskfs verify, vdiskfs repair)`)
    const swept = await this.sweep(deadPages, deadExtents, deadChunks)
    const packMax = this.state.catalog.maxPackId()
    const compacted = await this.state.chunks.compact(liveFractionMin)
    this.packMax = packMax
    this.sparsePacks.clear()
    const phaseMs = { mark: marked - started, sweep: swept - marked, compact: performance.now() - swept }
    // The counts, for the next gc: what this one left (held, or dirty) stays a candidate.
    await this.buildCounts(found, new Set(deadPages))
    return { pagesFreed: deadPages.length, extentsFreed: deadExtents.length, chunksFreed: deadChunks.length, packsFreed: compacted.packsFreed, packBytesFreed: compacted.bytesFreed, phaseMs, ...(held !== null ? { held } : {}) }
  }

  /** Deletes dead pages, extents and chunks: the catalog's rows in one synchronous step, then the files. Returns when it ended. */
  private async sweep (deadPages: number[], deadExtents: number[], deadChunks: number[]): Promise<number> {
    this.state.catalog.transaction(() => {
      for (const id of deadPages) this.state.catalog.deletePage(id)
      for (const id of deadExtents) this.state.catalog.deleteExtent(id)
    })
    this.state.catalog.retireChunks(deadChunks)
    this.state.chunks.forget(deadChunks)
    for (const id of deadPages) this.state.pages.drop(id)
    for (const id of deadExtents) await this.state.extents.remove(id)
    if (deadExtents.length > 0) await this.state.io.syncDirectory(path.join(this.state.dir, extentsDir))
    return performance.now()
  }

  /**
   * Builds the chunk and extent counts after a full mark (`found`), in slices that yield to the event
   * loop: every page some root names is counted as it is when reached; from the start of the build a
   * counted page's change uncounts it first and one made or changed is stale (counted at the next
   * decision), so at the end every page a root names is counted or stale. Then what the mark found
   * live but nothing counts, and what it found dead but was not freed, are candidates for the next
   * decision, and what was made since the mark began is (the ceilings).
   */
  private async buildCounts (found: MarkResult, freed: Set<number>): Promise<void> {
    const refs = this.state.refs
    const started = performance.now()
    refs.startBuild()
    let since = performance.now()
    for (const id of refs.uncountedLive()) {
      try {
        refs.count(id)
      } catch (err) {
        if (err instanceof UnloadedBase) {
          await this.state.extents.loadBases([err.extentId]).catch(() => {})
          since = performance.now()
        }
        // Unreadable, or its base still unknown: counted (or held for) at the next decision.
        refs.stale.add(id)
      }
      if (performance.now() - since >= gcSliceMs) {
        await nextTurn()
        if (this.state.lifecycle !== 'open') { refs.invalidate(); return }
        since = performance.now()
      }
    }
    // The iterator read pageRefs live: a page placed during a yield is stale (rootAdd), one counted
    // before the yield uncounted by its change (willChange). So every page some root names is counted or stale.
    for (const id of found.livePages) if (refs.refsOfPage(id) === 0) refs.zeroPages.add(id)
    // The pages the mark found dead and its sweep did not free (dirty then, or the catalog held).
    for (const id of found.pageIds) if (!found.livePages.has(id) && !freed.has(id) && refs.refsOfPage(id) === 0) refs.zeroPages.add(id)
    for (const id of found.liveChunks) if (refs.chunkCount(id) === 0) refs.zeroChunks.add(id)
    for (const id of found.chunkIds) if (refs.chunkCount(id) === 0) refs.zeroChunks.add(id)
    for (const id of found.liveExtents) if (refs.extentCount(id) === 0) refs.zeroExtents.add(id)
    for (const id of found.extentIds) if (refs.extentCount(id) === 0) refs.zeroExtents.add(id)
    refs.pageCeiling = found.pageCeiling
    refs.chunkMax = found.chunkIds.reduce((a, b) => Math.max(a, b), 0)
    refs.nextExtentId = found.nextExtentId
    refs.complete = true
    this.state.log(`gc: reference counts built in ${Math.round(performance.now() - started)} ms`)
  }

  /**
   * gc from the reference counts: the decision is taken in the synchronous step of a commit's
   * snapshot (ref-counts.ts), so it sees exactly what that commit makes durable; the deletions follow
   * the commit. `check`: a full mark (gc-mark.ts, every page's entries walked) begins after that commit
   * and must agree (`compareWithMark`), else nothing is freed, the counts are dropped (rebuilt by the
   * next gc's full mark) and the disagreement is reported as held.
   */
  private async gcCounted (liveFractionMin: number, check: boolean): Promise<GcReport> {
    const refs = this.state.refs
    const started = performance.now()
    const reads = refs.examined
    let decision: Decision | null = null
    for (let attempt = 0; attempt < 3; attempt++) {
      // The base tables the stale pages' delta entries need (the decision's step is synchronous). A
      // page changed after this to name an extent not loaded yet makes the decision ask again.
      for (const id of refs.extentsOfStale()) await this.state.extents.loadBases([id]).catch(() => {})
      decision = await this.decideAtCommit()
      if (decision.unloaded.length === 0) break
      for (const id of decision.unloaded) await this.state.extents.loadBases([id]).catch(() => {})
    }
    const d = decision as Decision
    // A dead page (no root names it; gc has not freed it yet) may name an extent a seal pass has since
    // dropped (it drops what no live map names): its base table is gone for good, so what lay under
    // those entries can never leave the counts, and every later decision would hold. The counts are
    // dropped and this gc marks in full (live maps only), which needs no such table; nothing was freed
    // by the decision (it held), so nothing is done twice.
    if (d.unloaded.length > 0) {
      const known = new Set(this.state.catalog.extents().map(e => e.id))
      if (d.unloaded.some(id => !known.has(id))) {
        this.state.log(`gc: delta extents ${d.unloaded.filter(id => !known.has(id)).join(', ')} are gone and a dead map page names them: the reference counts are rebuilt by a full mark`)
        refs.invalidate()
        return await this.gcMarked(liveFractionMin)
      }
    }
    if (this.seams.afterDecision !== undefined) await this.seams.afterDecision()
    let held = d.held ?? (d.unloaded.length > 0 ? `delta extents ${d.unloaded.join(', ')}: their base tables could not be read` : null)
    if (held === null && check) {
      const found = await this.mark(true)
      held = found.held ?? this.compareWithMark(d, found)
      if (held !== null && found.held === null) {
        // The counts are wrong: dropped, and rebuilt by the next gc (a full mark).
        refs.invalidate()
        refs.recountRoots(this.state.volumes.roots())
      }
    }
    const decided = performance.now()
    this.state.pages.gcReads += refs.examined - reads
    if (held !== null) {
      if (refs.dying !== null) refs.undo(d)
      this.state.log(`gc frees nothing: ${held} (vdiskfs verify, vdiskfs repair)`)
      return { pagesFreed: 0, extentsFreed: 0, chunksFreed: 0, packsFreed: 0, packBytesFreed: 0, held, phaseMs: { mark: decided - started, sweep: 0, compact: 0 } }
    }
    // From the check of `dying` to the sweep's catalog step, synchronous: a dead page put back into a
    // root or changed in place meanwhile (a spare reused) left `dying` in that step (RefCounts.rootAdd,
    // willChange); nothing names a dead chunk or extent again (docs/CONCURRENCY.md, "gc's reference counts").
    const deadPages = [...d.pages]
    refs.dying = null
    // Compaction looks at the packs that lose chunks now and the packs made since the last gc (a seal
    // pass that failed leaves records no index names in those), not at every pack.
    // A pack that lost chunks and stayed (live enough for this gc's bound) stays a candidate: an
    // explicit gc asks a higher bound than the background one.
    const packs = new Set([...this.state.catalog.packIdsAbove(this.packMax), ...this.sparsePacks])
    for (const id of d.chunks) {
      const packId = this.state.chunks.info(id).packId
      packs.add(packId)
      this.sparsePacks.add(packId)
    }
    const swept = await this.sweep(deadPages, d.extents, d.chunks)
    const compacted = await this.state.chunks.compact(liveFractionMin, packs)
    for (const id of packs) if (id > this.packMax) this.packMax = id
    const stayed = new Set(this.state.catalog.packUsageOf(this.sparsePacks).map(p => p.id))
    for (const id of this.sparsePacks) if (!stayed.has(id)) this.sparsePacks.delete(id)
    return {
      pagesFreed: deadPages.length,
      extentsFreed: d.extents.length,
      chunksFreed: d.chunks.length,
      packsFreed: compacted.packsFreed,
      packBytesFreed: compacted.bytesFreed,
      phaseMs: { mark: decided - started, sweep: swept - decided, compact: performance.now() - swept }
    }
  }

  /**
   * Commits, and takes the counts' decision in that commit's snapshot step (Committer.commitNow runs
   * `atCommitSnapshot` synchronously right after it took the dirty pages and rows). A failed commit
   * undoes the decision (what it found stays a candidate).
   */
  private async decideAtCommit (): Promise<Decision> {
    const state = this.state
    let decision: Decision | null = null
    let failure: unknown = null
    state.atCommitSnapshot = () => {
      try {
        const extentsNow = new Set(state.catalog.extents().map(e => e.id))
        decision = state.refs.decide(state.pages.idCeiling, state.nextExtentId, state.catalog.chunkIdsAbove(state.refs.chunkMax),
          id => state.catalog.hasChunk(id), id => extentsNow.has(id), state.writableExtentIds(), state.heldChunkIds())
      } catch (err) {
        failure = err
      }
    }
    try {
      await this.commit()
    } catch (err) {
      if (decision !== null) state.refs.undo(decision)
      throw err
    } finally {
      state.atCommitSnapshot = null
    }
    if (failure !== null) throw failure as Error
    if (decision === null) throw new VdiskError('BUSY', 'gc: the commit took no snapshot')
    return decision
  }

  /**
   * Why the counts' decision `d` (taken at a commit before the full mark `found` began) disagrees with
   * the mark, or null. Nothing the decision frees may be live for the mark; everything the mark finds
   * dead must be in the decision, or a candidate for the next one (it died after the decision), or
   * made since it.
   */
  private compareWithMark (d: Decision, found: MarkResult): string | null {
    const refs = this.state.refs
    const disagree = (what: string): string => `reference counts disagree with a full mark: ${what}`
    for (const id of d.pages) if (found.livePages.has(id)) return disagree(`map page ${id} is referenced, the counts found none`)
    for (const id of d.chunks) if (found.liveChunks.has(id)) return disagree(`chunk ${id} is referenced, the counts found none`)
    for (const id of d.extents) if (found.liveExtents.has(id)) return disagree(`delta extent ${id} is referenced, the counts found none`)
    for (const id of found.pageIds) {
      if (found.livePages.has(id) || d.pages.has(id) || refs.zeroPages.has(id) || id >= d.pageCeiling || this.state.pages.isDirty(id)) continue
      return disagree(`map page ${id} is referenced by nothing, the counts say ${refs.refsOfPage(id)} root entries`)
    }
    const chunks = new Set(d.chunks)
    for (const id of found.chunkIds) {
      if (found.liveChunks.has(id) || chunks.has(id) || refs.zeroChunks.has(id)) continue
      return disagree(`chunk ${id} is referenced by nothing, the counts say ${refs.chunkCount(id)}`)
    }
    const extents = new Set(d.extents)
    for (const id of found.extentIds) {
      if (found.liveExtents.has(id) || extents.has(id) || refs.zeroExtents.has(id) || id >= d.nextExtentId) continue
      return disagree(`delta extent ${id} is referenced by nothing, the counts say ${refs.extentCount(id)}`)
    }
    return null
  }

  /**
   * gc's mark (gc-mark.ts), inside exclusive(): the extents' base tables loaded, a commit, then the
   * mark from what the page store learnt of each page, or (`full`) walking every page's entries.
   */
  private async mark (full: boolean): Promise<MarkResult> {
    // A partial slot keeps the chunk under it live: the mark reads the base entries of every extent
    // from memory, so their tables are loaded first. An extent that cannot be read leaves its bases
    // unknown, and gc frees nothing.
    for (const { id } of this.state.catalog.extents()) await this.state.extents.loadBases([id]).catch(() => {})
    await this.commit()
    const mark = new GcMark(this.state, this.seams, full)
    this.marking = true
    try {
      return await mark.run()
    } finally {
      this.marking = false
    }
  }

  /** Test seam: gc's mark alone (learnt, or `full`), under the maintenance lock; nothing is freed. */
  async markOnly (full: boolean): Promise<MarkResult> {
    return await this.exclusive(async () => await this.mark(full))
  }

  /** Extents no volume writes to any more: ready to seal. */
  frozenExtents (): number[] {
    const writable = this.state.writableExtentIds()
    return this.state.catalog.extents().map(e => e.id).filter(id => !writable.has(id))
  }

  /**
   * Freezes the writable extents that are due for sealing: idle for extentIdleMs, past the cap of
   * writableExtentsMax per volume (oldest first), or every one (`all`, for `vdiskfs sync`). A volume's
   * writes in flight finish first, so no write lands in an extent after it froze.
   */
  async freezeForSealing (all: boolean): Promise<void> {
    for (const volume of [...this.volumes.values()]) {
      const ids = [...volume.writableExtents].sort((a, b) => a - b)
      const due = ids.filter((id, i) => all || this.state.extents.idleMs(id) >= extentIdleMs || i < ids.length - writableExtentsMax)
      if (due.length === 0) continue
      await volume.pause()
      try {
        for (const id of due) {
          volume.writableExtents.delete(id)
          if (volume.activeExtentId === id) {
            this.state.activeExtents.delete(volume.id)
            volume.activeExtentId = null
            volume.rowDirty = true
          }
        }
      } finally {
        volume.resume()
      }
    }
  }

  /**
   * Whether a frozen extent is cold enough to seal in the background: not written for extentIdleMs.
   * Sealing blocks that are still being rewritten would give each of them a new slot at its next
   * write (a partial slot over the new chunk since issue #10; before, a read-modify-write of the whole
   * chunk through the workers) and leave the chunk just made to gc.
   */
  coldEnough (extentId: number): boolean {
    return this.state.extents.idleMs(extentId) >= extentIdleMs
  }

  /**
   * Learns, before a seal pass, which delta extents each map page names (PageStore.namesExtent), in
   * slices that yield to the event loop: sealing's walks (referencedSlots, repoint, each one
   * synchronous step) then find that known instead of loading pages in one step. The first call in a
   * process learns every distinct page the roots name at its start (roots shared, so the arrays walked
   * never change), with each page's root index, and then marks the page store's index complete: every
   * page a root names later was named at that start (roots are copied from roots) or entered a root
   * through its map's setRoot (made or changed since, so queued unlearnt, its index recorded). Each
   * later call learns only the pages changed since (issue #21: the walk over every root cost N x S /
   * 256 MiB steps per pass). A page that cannot be read stays unlearnt: the seal's own look-up then
   * throws for it, and the extent is not sealed.
   */
  async learnExtentNames (): Promise<void> {
    const pages = this.state.pages
    let since = performance.now()
    let done = 0
    const slice = async (): Promise<boolean> => {
      if (++done % 64 !== 0 || performance.now() - since < gcSliceMs) return true
      await nextTurn()
      // eslint-disable-next-line require-atomic-updates -- since is this call's own clock, read and set only by its one loop, a slice at a time
      since = performance.now()
      return this.state.lifecycle === 'open'
    }
    if (!pages.indexComplete) {
      // The roots as they are now, each read when its turn comes (issue #21: Volume.rootForWalk).
      const roots = [...this.volumes.values()].map(volume => volume.rootForWalk())
      const seen = new Set<number>()
      for (const rootOf of roots) {
        const root = rootOf()
        pages.rootEntriesRead += root.length
        for (let p = 0; p < root.length; p++) {
          const id = root[p]
          if (id === 0 || seen.has(id)) continue
          seen.add(id)
          pages.placed(id, p, true)
          try { pages.learnPage(id) } catch { pages.learnLater(id) }
          if (!await slice()) return
        }
      }
      pages.indexComplete = true
    }
    for (const id of pages.unlearntPages()) {
      try { pages.learnPage(id) } catch { pages.learnLater(id) }
      if (!await slice()) return
    }
  }

  /** Slots of `extentId` that some volume's map still references. */
  referencedSlots (extentId: number): number[] {
    const slots = new Set<number>()
    this.forEachDistinctPage(extentId, page => {
      const entries = page.entries
      for (let i = 0; i < entries.length; i++) {
        const entry = entries[i]
        if (entry !== 0 && entryKind(entry) === entryKindDelta && entryExtentId(entry) === extentId) slots.add(entrySlot(entry))
      }
    })
    return [...slots].sort((a, b) => a - b)
  }

  /**
   * Calls `visit` once for each map page some volume's root names that names delta extent `extentId`.
   * Once the page store's index is complete (learnExtentNames), those are its pages naming the extent
   * that some volume reads: one look-up per volume at the page's root index, no walk of any root
   * (issue #21: the walks over every volume's root per extent made a backup's time grow with the
   * number of backups), unless one walk costs less (lookUpCheaper). Before that (the first seal pass
   * of a process runs learnExtentNames first; recovery at start does not), every volume's root is
   * walked, each distinct page once.
   */
  private forEachDistinctPage (extentId: number, visit: (page: Page) => void): void {
    const pages = this.state.pages
    if (pages.indexComplete) {
      const naming = pages.pagesNaming(extentId)
      if (this.lookUpCheaper(naming.length)) {
        for (const id of naming) if (this.isRead(id)) visit(pages.get(id))
        return
      }
    }
    const seen = new Set<number>()
    for (const volume of this.volumes.values()) {
      const root = volume.map.peekRoot() // read and not kept when not in memory (a walk of every root)
      pages.rootEntriesRead += root.length
      for (const id of root) {
        if (id === 0 || seen.has(id)) continue
        seen.add(id)
        if (pages.namesExtent(id, extentId)) visit(pages.get(id))
      }
    }
  }

  /**
   * Test seam: look-ups are taken when pages x volumes <= this x the roots' entries (Infinity: always,
   * once the index is complete).
   */
  lookUpRatio = 1

  /**
   * Whether looking `count` pages up at their root index (up to one root entry per volume each) costs
   * less than one walk of every root: with many volumes of a big disk and few pages (backups of a
   * 1 TiB disk, 4,096 entries per root) the look-ups; with small roots and many pages naming the
   * extent (a chain of clones of a small disk: each copy of a page keeps the entries of the levels
   * above it) the walk. Either finds the same pages.
   */
  private lookUpCheaper (count: number): boolean {
    if (!this.state.pages.indexComplete) return false
    let entries = 0
    for (const volume of this.volumes.values()) entries += volume.map.rootLength
    return count * this.volumes.size <= this.lookUpRatio * entries
  }

  /**
   * Whether some volume's root names page `id`: its reference count (ref-counts.ts), which follows
   * every root of the pool's table (issue #21: no root is read for it).
   */
  private isRead (id: number): boolean {
    return this.state.refs.refsOfPage(id) > 0
  }

  /**
   * Repoints every map entry that still names a slot of `extentId` at its new home (`mapping`: slot ->
   * entry). Pages are changed in place, shared ones included: their content does not change, only
   * where it lives. Synchronous, so no write interleaves; the caller commits. Each distinct page is
   * walked once; a volume's counters (and its catalog row) change only when its root names a page that
   * held such an entry (a shared page counts for each volume that reads it): one look-up per volume at
   * the page's root index once the index is complete, a walk of every root before. While a seal pass
   * defers its repoints (deferRepoints), a page that was clean is left to the pass's own commit and
   * its readers' rows are marked rowDeferred, not rowDirty; a page already dirty is written with them
   * by the next commit, as any change.
   */
  repoint (extentId: number, mapping: Map<number, number>): void {
    const matches = (entry: number) => entry !== 0 && entryKind(entry) === entryKindDelta && entryExtentId(entry) === extentId && mapping.has(entrySlot(entry))
    // First what each page's repointing changes in the counters of a volume that reads it ...
    const changes = new Map<number, { freed: number, stored: number }>()
    const pages: Page[] = []
    this.forEachDistinctPage(extentId, page => {
      const entries = page.entries
      let freed = 0
      let stored = 0
      let found = false
      for (let i = 0; i < entries.length; i++) {
        if (!matches(entries[i])) continue
        const next = mapping.get(entrySlot(entries[i])) as number
        found = true
        if (next === 0) freed++
        stored += this.state.sizeOf(next) - this.state.sizeOf(entries[i])
      }
      if (found) { changes.set(page.id, { freed, stored }); pages.push(page) }
    })
    if (changes.size === 0) return
    // ... then every volume reading such a page (a shared page counts for each; a deferred page's
    // readers are written by the pass's commit) ...
    const deferred = new Map<number, { freed: number, stored: number }>()
    if (this.state.repointsDeferred) {
      for (const page of pages) {
        if (page.dirty) continue
        deferred.set(page.id, changes.get(page.id) as { freed: number, stored: number })
        changes.delete(page.id)
      }
    }
    this.countPageChanges(changes, volume => { volume.rowDirty = true })
    this.countPageChanges(deferred, volume => { volume.rowDeferred = true })
    // ... then each page once.
    for (const page of pages) {
      this.state.pages.willChange(page)
      const entries = page.entries
      for (let i = 0; i < entries.length; i++) if (matches(entries[i])) entries[i] = mapping.get(entrySlot(entries[i])) as number
      const change = deferred.get(page.id)
      if (change !== undefined) this.state.pages.markRepointed(page, change)
      else this.state.pages.markDirty(page)
    }
    this.state.changedSinceCommit = true
    this.state.generation++
  }

  /** Counts each page's change in every volume that reads it; `counted` marks their rows. */
  private countPageChanges (changes: Map<number, { freed: number, stored: number }>, counted: (volume: Volume) => void): void {
    if (changes.size === 0) return
    const pages = this.state.pages
    // Only a volume whose epoch is at least the page's can name it (issue #21: a map names pages of its
    // own epoch or older ones, and every volume's epoch was new when it was made): the others' roots
    // are not looked at, nor read when not in memory (the backups made before the pages were).
    let epochMin = Infinity
    for (const id of changes.keys()) epochMin = Math.min(epochMin, pages.get(id).epoch)
    const readers = [...this.volumes.values()].filter(volume => volume.map.epoch >= epochMin)
    const unplaced = new Map<number, { freed: number, stored: number }>()
    const lookUp = this.lookUpCheaper(changes.size)
    for (const [id, change] of changes) {
      const slot = lookUp ? pages.slotOf(id) : undefined
      if (slot === undefined) { unplaced.set(id, change); continue }
      for (const volume of readers) {
        pages.rootEntriesRead++
        if (volume.map.countPageChange(slot, id, change)) counted(volume)
      }
    }
    if (unplaced.size === 0) return
    for (const volume of readers) {
      pages.rootEntriesRead += volume.map.rootLength
      if (volume.map.countPageChanges(unplaced)) counted(volume)
    }
  }

  /** Recounts every volume's allocated blocks and stored bytes from its map (after repair). */
  recount (): void {
    // Repair rewrote pages and roots behind the page store: what it learnt of them is relearnt, and
    // the reference counts are rebuilt (the roots' now; the rest by the next gc's full mark).
    this.state.pages.forgetLearnt()
    this.state.refs.invalidate()
    this.state.refs.recountRoots(this.state.volumes.roots())
    for (const volume of this.volumes.values()) {
      volume.map.recount()
      volume.rowDirty = true
    }
    this.state.changedSinceCommit = true
  }

  /**
   * verify's check of gc's reference counts (issue #21): recounts them from the maps (RefCounts.recount)
   * and, when they disagree, drops them (the next gc marks in full and builds them again, so a wrong
   * count frees nothing), logs it and returns the mismatches as problems. Call inside exclusive()
   * (verify online) or with nothing else running (offline): no gc decision or repair changes the counts
   * meanwhile. The awaits (loading the extents' base tables) come before the check; the settle of the
   * addon's first writes and the recount are one synchronous step, so a write meanwhile is in both or
   * in neither. A page changed meanwhile to name an extent whose base table is not loaded makes the
   * check say "not compared", never a mismatch.
   */
  async checkCounts (): Promise<{ counts: string, problems: string[] }> {
    const refs = this.state.refs
    if (!refs.complete) return { counts: 'not built (the next gc marks every page and builds them)', problems: [] }
    for (const { id } of this.state.catalog.extents()) await this.state.extents.loadBases([id]).catch(() => {})
    if (!refs.complete) return { counts: 'not built (dropped while verify ran)', problems: [] }
    this.state.settleNative()
    const started = performance.now()
    let result: ReturnType<typeof refs.recount>
    // One root at a time (issue #21: a backup's is read here when not in memory); one that fails its
    // check leaves the counts uncompared (verify reports the root itself).
    try { result = refs.recount(this.state.volumes.roots()) } catch (err) { return { counts: `not compared: ${(err as Error).message}`, problems: [] } }
    const ms = Math.round(performance.now() - started)
    if ('unknown' in result) return { counts: `not compared: ${result.unknown}`, problems: [] }
    const what = `${result.pages} map pages, ${result.chunks} chunks, ${result.extents} delta extents in ${ms} ms`
    if (result.total === 0) return { counts: `compared with a recount of the maps: equal (${what})`, problems: [] }
    refs.invalidate()
    refs.recountRoots(this.state.volumes.roots())
    const problems = result.mismatches.map(m => `reference counts: ${m}`)
    if (result.total > result.mismatches.length) problems.push(`reference counts: ${result.total - result.mismatches.length} more mismatches`)
    this.state.log(`verify: gc's reference counts disagree with a recount of the maps (${result.total} mismatches; the first: ${result.mismatches[0]}); ` +
      'they are dropped: the next gc marks every page and builds them again')
    return { counts: `disagree with a recount of the maps: ${result.total} mismatches (dropped; the next gc marks in full; ${what})`, problems }
  }

  /**
   * Before the final commit of a close: loads the base tables the reference counts need and asks that
   * commit's snapshot step for the counts to store (RefCounts.stored). Returns what it got then (null:
   * none to store, or the commit took no snapshot).
   */
  async countsAtFinalCommit (): Promise<() => { data: Buffer, journalSeq: number } | null> {
    const refs = this.state.refs
    // The page counts are stored whatever else is (the next open reads no root for them).
    if (refs.complete) for (const id of refs.extentsOfStale()) await this.state.extents.loadBases([id]).catch(() => {})
    let taken: { data: Buffer, journalSeq: number } | null = null
    // Synchronous in the commit's snapshot step: the counts are that commit's state exactly.
    this.state.atCommitSnapshot = journalSeq => { taken = { data: refs.stored(), journalSeq } }
    return () => { this.state.atCommitSnapshot = null; return taken }
  }

  /** Deletes an extent that no committed map references any more. */
  async dropExtent (extentId: number): Promise<void> {
    // What lies under delta entries of it that were uncounted before their base table was read
    // leaves the counts now (the seal pass read the table); if it cannot, the counts are dropped
    // (the next gc marks in full and builds them again).
    if (this.state.refs.resolvePending(extentId).has(extentId)) this.state.refs.invalidate()
    this.state.catalog.deleteExtent(extentId)
    await this.state.extents.remove(extentId)
  }

  /**
   * Recomputes the checksums of suspect extents (after an unclean stop) from what their referenced
   * slots hold, and checks them from then on. Runs at daemon start; reads are correct before it too.
   */
  async recover (): Promise<number> {
    return await this.exclusive(async () => {
      let changed = 0
      const known = new Set(this.state.catalog.extents().map(e => e.id))
      for (const id of [...this.state.extents.suspect]) {
        if (!known.has(id)) { this.state.extents.suspect.delete(id); continue }
        try {
          const sectors = await this.state.extents.recoverSuspect(id, this.referencedSlots(id))
          if (sectors > 0) this.state.log(`recovery: delta extent ${id} was being written when the pool stopped uncleanly; ${sectors} sectors changed after the last commit, kept as written`)
          changed += sectors
        } catch (err) {
          this.state.log(`recovery: delta extent ${id}: ${(err as Error).message}; it stays unchecked`)
        }
      }
      this.state.catalog.setMeta('suspect_extents', JSON.stringify([...this.state.extents.suspect]))
      return changed
    })
  }
}

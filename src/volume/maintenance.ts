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
import { Page } from '../map/page-store'
import { Committer } from './commit'
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

  /** Runs `work` alone among maintenance jobs (sealing, gc): they rewrite the same maps and chunks. */
  async exclusive<T> (work: () => Promise<T>): Promise<T> {
    if (this.state.lifecycle !== 'open') throw new VdiskError('BUSY', 'the pool is closing')
    const run = this.running.catch(() => {}).then(work)
    this.running = run
    return await run
  }

  /**
   * Frees map pages, delta extents and chunks that no volume references, and compacts packs whose
   * live fraction is low. The mark (gc-mark.ts) starts synchronously after a commit and walks the maps
   * in slices that yield to the event loop: what it can free existed when it began and was referenced
   * by nothing then, nor since (docs/CONCURRENCY.md, "gc's mark"). Deletions follow that commit.
   */
  async gc (liveFractionMin = packLiveFractionMin): Promise<GcReport> {
    return await this.exclusive(async () => {
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
      this.state.catalog.transaction(() => {
        for (const id of deadPages) this.state.catalog.deletePage(id)
        for (const id of deadExtents) this.state.catalog.deleteExtent(id)
      })
      this.state.catalog.retireChunks(deadChunks)
      this.state.chunks.forget(deadChunks)
      for (const id of deadPages) this.state.pages.drop(id)
      for (const id of deadExtents) await this.state.extents.remove(id)
      if (deadExtents.length > 0) await this.state.io.syncDirectory(path.join(this.state.dir, extentsDir))
      const swept = performance.now()
      const compacted = await this.state.chunks.compact(liveFractionMin)
      const phaseMs = { mark: marked - started, sweep: swept - marked, compact: performance.now() - swept }
      return { pagesFreed: deadPages.length, extentsFreed: deadExtents.length, chunksFreed: deadChunks.length, packsFreed: compacted.packsFreed, packBytesFreed: compacted.bytesFreed, phaseMs, ...(held !== null ? { held } : {}) }
    })
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
      const roots = [...this.volumes.values()].map(volume => volume.map.shareRoot())
      const seen = new Set<number>()
      for (const root of roots) {
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
      pages.rootEntriesRead += volume.map.root.length
      for (const id of volume.map.root) {
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
    for (const volume of this.volumes.values()) entries += volume.map.root.length
    return count * this.volumes.size <= this.lookUpRatio * entries
  }

  /** Whether some volume's root names page `id` (its index unknown: taken as read). */
  private isRead (id: number): boolean {
    const slot = this.state.pages.slotOf(id)
    if (slot === undefined) return true
    for (const volume of this.volumes.values()) {
      this.state.pages.rootEntriesRead++
      const root = volume.map.root
      if (slot < root.length && root[slot] === id) return true
    }
    return false
  }

  /**
   * Repoints every map entry that still names a slot of `extentId` at its new home (`mapping`: slot ->
   * entry). Pages are changed in place, shared ones included: their content does not change, only
   * where it lives. Synchronous, so no write interleaves; the caller commits. Each distinct page is
   * walked once; a volume's counters (and its catalog row) change only when its root names a page that
   * held such an entry (a shared page counts for each volume that reads it): one look-up per volume at
   * the page's root index once the index is complete, a walk of every root before.
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
    // ... then every volume reading such a page (a shared page counts for each) ...
    this.countPageChanges(changes)
    // ... then each page once.
    for (const page of pages) {
      this.state.pages.willChange(page)
      const entries = page.entries
      for (let i = 0; i < entries.length; i++) if (matches(entries[i])) entries[i] = mapping.get(entrySlot(entries[i])) as number
      this.state.pages.markDirty(page)
    }
    this.state.changedSinceCommit = true
    this.state.generation++
  }

  /** Counts each page's change in every volume that reads it; marks their rows dirty. */
  private countPageChanges (changes: Map<number, { freed: number, stored: number }>): void {
    const pages = this.state.pages
    const unplaced = new Map<number, { freed: number, stored: number }>()
    const lookUp = this.lookUpCheaper(changes.size)
    for (const [id, change] of changes) {
      const slot = lookUp ? pages.slotOf(id) : undefined
      if (slot === undefined) { unplaced.set(id, change); continue }
      for (const volume of this.volumes.values()) {
        pages.rootEntriesRead++
        if (volume.map.countPageChange(slot, id, change)) volume.rowDirty = true
      }
    }
    if (unplaced.size === 0) return
    for (const volume of this.volumes.values()) {
      pages.rootEntriesRead += volume.map.root.length
      if (volume.map.countPageChanges(unplaced)) volume.rowDirty = true
    }
  }

  /** Recounts every volume's allocated blocks and stored bytes from its map (after repair). */
  recount (): void {
    // Repair rewrote pages and roots behind the page store: what it learnt of them is relearnt.
    this.state.pages.forgetLearnt()
    for (const volume of this.volumes.values()) {
      volume.map.recount()
      volume.rowDirty = true
    }
    this.state.changedSinceCommit = true
  }

  /** Deletes an extent that no committed map references any more. */
  async dropExtent (extentId: number): Promise<void> {
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

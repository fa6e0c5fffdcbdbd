/**
 * gc's mark (issue #21): what the maps referenced when the mark began, found in slices of about
 * gcSliceMs that yield to the event loop, so FUSE requests and control operations are served while a
 * pool of thousands of backups is walked (it held the event loop 7-19 s at 300 backups of 1 TiB).
 *
 * It is a snapshot-at-the-beginning mark (docs/CONCURRENCY.md, "gc's mark", has the argument):
 * - begin() runs synchronously right after gc's commit: it takes every volume's root (shared copy-on-
 *   write, BlockMap.shareRoot, so the arrays it walks never change), the writable extents, and the ids
 *   of the pages, extents and chunks the catalog has then. Only those can be found dead.
 * - Pages change in place only through PageStore.willChange (a volume's own pages: a write, a discard,
 *   a shrunk page reused; repoint, which cannot run during gc): its barrier walks such a page before
 *   its first change, so every page is walked as it was when the mark began, and a page reused from a
 *   shrink is live.
 * - Everything else that makes a reference copies one that existed (a backup or clone copies a root,
 *   copy_file_range copies entries, a write over a chunk copies its entry into the new slot's base), or
 *   names what begin() cannot find dead (a page or extent made after it). Chunks are made or named anew
 *   only by sealing, imports and lazy pulls' fills, which wait for the maintenance lock gc holds.
 *
 * Each page is marked from what the page store learnt it references (PageStore.refsOf: learnt once per
 * change of the page, so a page unchanged since the last mark is neither loaded nor walked again; issue
 * #21, gc walked every map page of 10,000 backups of a 1 TiB disk: 196-233 s), or, with `full`, by
 * walking its entries (the reference the model test compares it with). Both find the same sets: what a
 * page store learnt of a page is what its entries are until it changes (markDirty forgets it), and a
 * page changed during the mark is walked before its change by the barrier, as its entries.
 *
 * Errors: BUSY when the pool starts closing during the mark.
 */
import { setImmediate as nextTurn } from 'node:timers/promises'
import { VdiskError } from '../errors'
import { entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entryKindLost, entrySlot } from '../format/map-format'
import type { RootIds } from '../map/block-map'
import { gcSliceMs, pageEntries } from '../limits'
import { Page, PageRefs } from '../map/page-store'
import { PoolState } from './pool-state'
import { underSlot } from './references'

/** Test seams of gc's mark (Pool.gcSeams). */
export interface MarkSeams {
  /** The mark yields after a slice of this many ms (gcSliceMs by default; 0: after every page walked). */
  sliceMs?: number
  /** Run at each yield, with the pages walked so far; the mark waits for it. */
  onYield?: (pagesWalked: number) => Promise<void> | void
  /** Run by a gc from the reference counts between its decision (at its commit) and its sweep; it waits for it. */
  afterDecision?: () => Promise<void> | void
}

/** What a finished mark found: the live sets, and what could be dead (what existed at its start). */
export interface MarkResult {
  livePages: Set<number>
  liveExtents: Set<number>
  liveChunks: Set<number>
  /** Why nothing may be freed (a damaged catalog), or null. */
  held: string | null
  /** The catalog's pages, extents and chunks when the mark began, and the next extent id then. */
  pageIds: number[]
  extentIds: number[]
  chunkIds: number[]
  nextExtentId: number
  /** Page ids below this existed when the mark began. */
  pageCeiling: number
}

export class GcMark {
  private readonly result: MarkResult
  private readonly roots: Array<{ label: string, root: () => RootIds }>
  private walked = 0

  /**
   * Takes the snapshot and starts the barrier; call synchronously after a commit, then run() once.
   * `full`: every page's entries walked, nothing learnt used (the reference the test compares with).
   */
  constructor (private readonly state: PoolState, private readonly seams: MarkSeams, private readonly full = false) {
    const liveExtents = new Set<number>()
    this.roots = []
    for (const volume of state.volumes.values()) {
      for (const id of volume.writableExtents) liveExtents.add(id)
      this.roots.push({ label: volume.label, root: volume.rootForWalk() })
    }
    const liveChunks = new Set<number>()
    // Chunks an unfinished import stored (catalog table import_blocks, or a lazy pull's rows in memory)
    // are live until it completes or is dropped; imports change them only under the maintenance lock gc holds.
    for (const id of state.heldChunkIds()) liveChunks.add(id)
    this.result = {
      livePages: new Set(),
      liveExtents,
      liveChunks,
      held: null,
      pageIds: state.catalog.pageIds(),
      extentIds: state.catalog.extents().map(e => e.id),
      chunkIds: state.catalog.chunkIds(),
      nextExtentId: state.nextExtentId,
      pageCeiling: state.pages.idCeiling
    }
    state.pages.beforeChange = page => { this.walkPage(page.id, i => `map page ${page.id} entry ${i}`, page) }
  }

  /** Walks every page of the snapshot's roots, yielding between slices; stops the barrier when done. */
  async run (): Promise<MarkResult> {
    const sliceMs = this.seams.sliceMs ?? gcSliceMs
    try {
      let since = performance.now()
      const livePages = this.result.livePages
      // Pages seen in a root, by id (ids are never reused; one made since the snapshot is above it):
      // 10,000 roots of 4,096 ids each are mostly the same pages, and a byte per id answers faster than
      // the set. Whether a page was marked is still livePages' answer (the barrier adds to it alone).
      const seen = new Uint8Array(this.state.pages.idCeiling)
      for (const { label, root: rootOf } of this.roots) {
        // One root at a time (issue #21): a backup's is read here when not in memory.
        const root = rootOf()
        this.state.pages.gcReads += root.length
        for (let p = 0; p < root.length; p++) {
          // A page several volumes read (a disk and its backups, a chain of clones) is marked once: what
          // it references does not depend on who reads it, and 10,000 backups of a disk share most pages.
          const id = root[p]
          if (id === 0) continue
          if (id < seen.length) {
            if (seen[id] === 1) continue
            seen[id] = 1
          }
          if (livePages.has(id)) continue
          if (this.full) this.walkPage(id, i => `${label} block ${p * pageEntries + i}`)
          else this.markPage(id, i => `${label} block ${p * pageEntries + i}`)
          if (performance.now() - since >= sliceMs) since = await this.yieldTurn()
        }
        // Roots whose pages were all walked already (a backup's, mostly) cost a look-up per page id.
        if (performance.now() - since >= sliceMs) since = await this.yieldTurn()
      }
      return this.result
    } finally {
      this.state.pages.beforeChange = null
    }
  }

  /** Lets the event loop run; BUSY when the pool started closing meanwhile. Returns when the next slice starts. */
  private async yieldTurn (): Promise<number> {
    await nextTurn()
    if (this.seams.onYield !== undefined) await this.seams.onYield(this.walked)
    if (this.state.lifecycle !== 'open') throw new VdiskError('BUSY', 'the pool is closing')
    return performance.now()
  }

  /** Marks what page `id` references, once, from what the page store learnt of it (PageRefs). */
  private markPage (id: number, where: (entry: number) => string): void {
    const r = this.result
    r.livePages.add(id)
    this.walked++
    this.state.pages.gcReads++
    let refs: PageRefs
    try {
      refs = this.state.pages.refsOf(id)
    } catch (err) {
      r.held ??= `${where(0)}: ${(err as Error).message}`
      return
    }
    const chunks = refs.chunks
    for (let i = 0; i < chunks.length; i++) r.liveChunks.add(chunks[i])
    const deltas = refs.deltas
    for (let i = 0; i < deltas.length; i++) this.markDelta(deltas[i], () => where(this.indexIn(id, deltas[i])))
    if (refs.lostAt >= 0) r.held ??= `${where(refs.lostAt)} is lost`
  }

  /** Where delta entry `entry` is in page `id` (for a hold's message only). */
  private indexIn (id: number, entry: number): number {
    try { return Math.max(0, this.state.pages.get(id).entries.indexOf(entry)) } catch { return 0 }
  }

  /** Marks delta entry `entry`'s extent, and the chunk under its slot; a hold when that is unknown. */
  private markDelta (entry: number, where: () => string): void {
    const r = this.result
    r.liveExtents.add(entryExtentId(entry))
    const under = underSlot(this.state.extents, entry)
    if (under.kind === 'chunk') r.liveChunks.add(under.chunkId)
    else if (under.kind === 'unloaded') r.held ??= `${where()}: the base table of delta extent ${entryExtentId(entry)} could not be read`
    else if (under.kind === 'damaged') r.held ??= `${where()}: delta extent ${entryExtentId(entry)} slot ${entrySlot(entry)} has a damaged base entry`
  }

  /**
   * Marks what page `id` references, once; whether it walked it now. `where(i)` names entry i for a
   * hold's message; `page`: the page, when the caller holds it.
   */
  private walkPage (id: number, where: (entry: number) => string, page?: Page): boolean {
    const r = this.result
    if (id === 0 || r.livePages.has(id)) return false
    r.livePages.add(id)
    this.walked++
    this.state.pages.gcReads++
    let entries: Float64Array
    try {
      entries = (page ?? this.state.pages.get(id)).entries
    } catch (err) {
      // Only a healthy catalog proves anything unreferenced (issue #9, item 6).
      r.held ??= `${where(0)}: ${(err as Error).message}`
      return true
    }
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i]
      if (entry === 0) continue
      const kind = entryKind(entry)
      if (kind === entryKindDelta) this.markDelta(entry, () => where(i))
      else if (kind === entryKindChunk) r.liveChunks.add(entryChunkId(entry))
      else if (kind === entryKindLost) r.held ??= `${where(i)} is lost`
    }
    return true
  }
}

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
 * Errors: BUSY when the pool starts closing during the mark.
 */
import { setImmediate as nextTurn } from 'node:timers/promises'
import { VdiskError } from '../errors'
import { entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entryKindLost, entrySlot } from '../format/map-format'
import { gcSliceMs, pageEntries } from '../limits'
import { Page } from '../map/page-store'
import { PoolState } from './pool-state'
import { underSlot } from './references'

/** Test seams of gc's mark (Pool.gcSeams). */
export interface MarkSeams {
  /** The mark yields after a slice of this many ms (gcSliceMs by default; 0: after every page walked). */
  sliceMs?: number
  /** Run at each yield, with the pages walked so far; the mark waits for it. */
  onYield?: (pagesWalked: number) => Promise<void> | void
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
}

export class GcMark {
  private readonly result: MarkResult
  private readonly roots: Array<{ label: string, root: Float64Array }>
  private walked = 0

  /** Takes the snapshot and starts the barrier; call synchronously after a commit, then run() once. */
  constructor (private readonly state: PoolState, private readonly seams: MarkSeams) {
    const liveExtents = new Set<number>()
    this.roots = []
    for (const volume of state.volumes.values()) {
      for (const id of volume.writableExtents) liveExtents.add(id)
      this.roots.push({ label: volume.label, root: volume.map.shareRoot() })
    }
    const liveChunks = new Set<number>()
    // Chunks an unfinished import stored (catalog table import_blocks) are live until it completes or is
    // dropped; imports change them only under the maintenance lock gc holds.
    for (const id of state.catalog.heldChunkIds()) liveChunks.add(id)
    this.result = {
      livePages: new Set(),
      liveExtents,
      liveChunks,
      held: null,
      pageIds: state.catalog.pageIds(),
      extentIds: state.catalog.extents().map(e => e.id),
      chunkIds: state.catalog.chunkIds(),
      nextExtentId: state.nextExtentId
    }
    state.pages.beforeChange = page => { this.walkPage(page.id, i => `map page ${page.id} entry ${i}`, page) }
  }

  /** Walks every page of the snapshot's roots, yielding between slices; stops the barrier when done. */
  async run (): Promise<MarkResult> {
    const sliceMs = this.seams.sliceMs ?? gcSliceMs
    try {
      let since = performance.now()
      const livePages = this.result.livePages
      for (const { label, root } of this.roots) {
        for (let p = 0; p < root.length; p++) {
          // A page several volumes read (a disk and its backups, a chain of clones) is walked once: what
          // it references does not depend on who reads it, and 10,000 backups of a disk share most pages.
          const id = root[p]
          if (id === 0 || livePages.has(id)) continue
          this.walkPage(id, i => `${label} block ${p * pageEntries + i}`)
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

  /**
   * Marks what page `id` references, once; whether it walked it now. `where(i)` names entry i for a
   * hold's message; `page`: the page, when the caller holds it.
   */
  private walkPage (id: number, where: (entry: number) => string, page?: Page): boolean {
    const r = this.result
    if (id === 0 || r.livePages.has(id)) return false
    r.livePages.add(id)
    this.walked++
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
      if (kind === entryKindDelta) {
        r.liveExtents.add(entryExtentId(entry))
        const under = underSlot(this.state.extents, entry)
        if (under.kind === 'chunk') r.liveChunks.add(under.chunkId)
        else if (under.kind === 'unloaded') r.held ??= `${where(i)}: the base table of delta extent ${entryExtentId(entry)} could not be read`
        else if (under.kind === 'damaged') r.held ??= `${where(i)}: delta extent ${entryExtentId(entry)} slot ${entrySlot(entry)} has a damaged base entry`
      } else if (kind === entryKindChunk) r.liveChunks.add(entryChunkId(entry))
      else if (kind === entryKindLost) r.held ??= `${where(i)} is lost`
    }
    return true
  }
}

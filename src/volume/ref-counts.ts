/**
 * Reference counts (issue #21: gc in time proportional to what it frees, not to the pool). Kept in
 * memory, derived from the catalog: rebuilt at every open (the page counts from the roots read at open,
 * the chunk and extent counts by the first gc's full mark), so they are never persisted and a crash
 * cannot leave them behind the catalog (docs/PERFORMANCE.md, "gc").
 *
 * - Per map page, how many root entries of the pool's volumes name it (`pageRefs`): kept by every root
 *   change (BlockMap.setRoot, resize, pointAt) and by volumes entering and leaving the pool's table
 *   (VolumeTable). A page whose count falls to 0 is a candidate (`zeroPages`).
 * - Per chunk and per delta extent, how many entries of the *counted* pages name it (`chunkRefs`,
 *   `extentRefs`; a delta entry over a partial slot also names the chunk under it). A counted page's
 *   references are subtracted before its first in-place change (PageStore.willChange) and it becomes
 *   `stale`; a stale page still read by some root is counted again at gc's decision, as it is then. A
 *   chunk or extent whose count falls to 0 is a candidate.
 *
 * gc's decision (`decide`) runs in one synchronous step at a commit's snapshot (Committer.commitNow),
 * so the committed state and the counts are the same instant: it counts the stale pages, then finds
 * the candidates still at 0 (pages also: made since the last decision and never placed; chunks and
 * extents made since), subtracts dead pages' references (which may make more chunks and extents dead),
 * and returns the dead sets. After the decision, a dead page put back in a root (a spare page reused) or
 * changed in place is taken out of the dead set again (`resurrected`); nothing else can name something
 * dead (docs/CONCURRENCY.md, "gc's reference counts").
 */
import { entryExtentId } from '../format/map-format'
import { PageRefs } from '../map/page-store'
import { Under } from './references'

/** What references a page holds, and how to read what lies under a delta entry. */
export interface CountSource {
  refsOf: (pageId: number) => PageRefs
  underSlot: (entry: number) => Under
}

/** A decision's dead sets (and why nothing may be freed, when something is not known). */
export interface Decision {
  pages: Set<number>
  chunks: number[]
  extents: number[]
  held: string | null
  /** Extents whose base tables were not loaded: load them and decide again. */
  unloaded: number[]
  /** Page ids below this existed when it was taken; extent ids below nextExtentId existed at the decision before. */
  pageCeiling: number
  nextExtentId: number
}

export class RefCounts {
  private pageRefs = new Int32Array(1024)
  /** Pages whose count fell to 0 since the last decision. */
  zeroPages = new Set<number>()
  /** Counting chunks and extents: from the start of the first build (`startBuild`) until `invalidate`. */
  counting = false
  /** Every page some root names is counted or stale (the build ended). */
  complete = false
  private counted = new Uint8Array(1024)
  /** Pages changed (or made) since they were last counted. */
  readonly stale = new Set<number>()
  private readonly chunkRefs = new Map<number, number>()
  private readonly extentRefs = new Map<number, number>()
  readonly zeroChunks = new Set<number>()
  readonly zeroExtents = new Set<number>()
  /** Counted pages with a lost entry or a delta entry over a damaged or unknown base: gc holds. */
  private readonly problems = new Map<number, string>()
  /** Page ids at or above this were made since the last decision (or the build). */
  pageCeiling = 0
  /** Chunk ids above this, and extent ids at or above nextExtentId, were made since. */
  chunkMax = 0
  nextExtentId = 0
  /** The last decision's dead pages, until its deletions ran (or it was dropped). */
  dying: Set<number> | null = null
  /** Pages whose counts were examined by decisions (PageStore.gcReads adds it). */
  examined = 0

  constructor (private readonly source: CountSource) {}

  refsOfPage (id: number): number { return id < this.pageRefs.length ? this.pageRefs[id] : 0 }

  // ---- the roots ----

  /** Root entry `id` (0: none) named once more. */
  rootAdd (id: number): void {
    if (id === 0) return
    if (id >= this.pageRefs.length) this.grow(id)
    if (this.pageRefs[id]++ !== 0) return
    this.zeroPages.delete(id)
    this.dying?.delete(id)
    if (this.counting && this.counted[id] === 0) this.stale.add(id)
  }

  /** Root entry `id` (0: none) named once less. */
  rootDrop (id: number): void {
    if (id === 0) return
    if (--this.pageRefs[id] === 0) this.zeroPages.add(id)
  }

  /** Every entry of `root` named once more (+1) or less (-1). */
  rootAll (root: Float64Array, sign: 1 | -1): void {
    for (let p = 0; p < root.length; p++) {
      if (sign === 1) this.rootAdd(root[p])
      else this.rootDrop(root[p])
    }
  }

  private grow (id: number): void {
    let size = this.pageRefs.length
    while (size <= id) size *= 2
    const refs = new Int32Array(size)
    refs.set(this.pageRefs)
    this.pageRefs = refs
    const counted = new Uint8Array(size)
    counted.set(this.counted)
    this.counted = counted
  }

  // ---- the pages' contents ----

  /** Before page `id`'s first in-place change (PageStore.willChange): its references leave the counts. */
  willChange (id: number): void {
    this.dying?.delete(id)
    if (!this.counting) return
    if (id < this.counted.length && this.counted[id] === 1) this.uncount(id)
    this.stale.add(id)
  }

  /** Page `id` was made or changed (PageStore.markDirty). */
  changed (id: number): void {
    if (!this.counting) return
    if (id >= this.counted.length) this.grow(id)
    if (this.counted[id] === 0) this.stale.add(id)
  }

  /** Page `id` is gone (gc deleted it). */
  dropped (id: number): void {
    if (id < this.counted.length && this.counted[id] === 1) this.uncount(id)
    this.stale.delete(id)
    this.zeroPages.delete(id)
  }

  /**
   * Adds page `id`'s references to the counts. Throws what reading it throws, and (before counting
   * anything) when a delta entry's base table is not loaded: the page stays uncounted.
   */
  count (id: number): void {
    if (id >= this.counted.length) this.grow(id)
    if (this.counted[id] === 1) return
    const refs = this.source.refsOf(id)
    const unders: Under[] = []
    for (let i = 0; i < refs.deltas.length; i++) {
      const under = this.source.underSlot(refs.deltas[i])
      if (under.kind === 'unloaded') throw new UnloadedBase(entryExtentId(refs.deltas[i]))
      unders.push(under)
    }
    this.examined++
    for (let i = 0; i < refs.chunks.length; i++) this.addChunk(refs.chunks[i])
    let problem: string | null = refs.lostAt >= 0 ? `map page ${id} entry ${refs.lostAt} is lost` : null
    for (let i = 0; i < refs.deltas.length; i++) {
      const extent = entryExtentId(refs.deltas[i])
      this.extentRefs.set(extent, (this.extentRefs.get(extent) ?? 0) + 1)
      const under = unders[i]
      if (under.kind === 'chunk') this.addChunk(under.chunkId)
      else if (under.kind === 'damaged') problem ??= `map page ${id}: delta extent ${extent} has a damaged base entry`
    }
    if (problem !== null) this.problems.set(id, problem)
    this.counted[id] = 1
    this.stale.delete(id)
  }

  /** Subtracts counted page `id`'s references (its entries unchanged since it was counted). */
  private uncount (id: number): void {
    const refs = this.source.refsOf(id)
    this.examined++
    for (let i = 0; i < refs.chunks.length; i++) this.dropChunk(refs.chunks[i])
    for (let i = 0; i < refs.deltas.length; i++) {
      const extent = entryExtentId(refs.deltas[i])
      const left = (this.extentRefs.get(extent) ?? 0) - 1
      if (left <= 0) { this.extentRefs.delete(extent); this.zeroExtents.add(extent) } else this.extentRefs.set(extent, left)
      const under = this.source.underSlot(refs.deltas[i])
      if (under.kind === 'chunk') this.dropChunk(under.chunkId)
    }
    this.problems.delete(id)
    this.counted[id] = 0
  }

  private addChunk (id: number): void {
    const count = this.chunkRefs.get(id) ?? 0
    if (count === 0) this.named.add(id)
    this.chunkRefs.set(id, count + 1)
  }

  /** Chunks named anew since the last decision (checked there against the catalog). */
  private readonly named = new Set<number>()

  private dropChunk (id: number): void {
    const left = (this.chunkRefs.get(id) ?? 0) - 1
    if (left <= 0) { this.chunkRefs.delete(id); this.zeroChunks.add(id) } else this.chunkRefs.set(id, left)
  }

  chunkCount (id: number): number { return this.chunkRefs.get(id) ?? 0 }
  extentCount (id: number): number { return this.extentRefs.get(id) ?? 0 }
  isCounted (id: number): boolean { return id < this.counted.length && this.counted[id] === 1 }

  /** The extents whose base tables the stale pages need before a decision (synchronous; may load pages). */
  extentsOfStale (): Set<number> {
    const ids = new Set<number>()
    for (const id of this.stale) {
      if (this.refsOfPage(id) === 0) continue
      try {
        const deltas = this.source.refsOf(id).deltas
        for (let i = 0; i < deltas.length; i++) ids.add(entryExtentId(deltas[i]))
      } catch {} // unreadable: the decision holds for it
    }
    return ids
  }

  // ---- the build (after the first full mark of a process) ----

  /** Starts counting: from here every counted page's change is followed. */
  startBuild (): void {
    this.counting = true
  }

  /** Page ids some root names and not counted yet (for the build, in slices). */
  * uncountedLive (): Generator<number> {
    for (let id = 1; id < this.pageRefs.length; id++) if (this.pageRefs[id] > 0 && this.counted[id] === 0 && !this.stale.has(id)) yield id
  }

  // ---- the decision ----

  /**
   * gc's decision, synchronous, at a commit's snapshot (see the file's comment): the dead pages,
   * chunks and extents. `pageCeiling`, `nextExtentId`: the page and extent ids made so far; `newChunks`:
   * chunk ids made since chunkMax; `isChunk`, `isExtent`: whether the catalog has it; `writable`: the
   * writable extents; `held`: chunks unfinished imports hold. Frees nothing (everything found stays a
   * candidate) when a page cannot be counted: `held` says why, or `unloaded` names the extents whose
   * base tables must be loaded first.
   */
  decide (pageCeiling: number, nextExtentId: number, newChunks: number[], isChunk: (id: number) => boolean,
    isExtent: (id: number) => boolean, writable: Set<number>, held: Set<number>): Decision {
    let hold: string | null = null
    const unloaded = new Set<number>()
    // 1. The stale pages some root names are counted as they are now.
    for (const id of [...this.stale]) {
      if (this.refsOfPage(id) === 0) { this.stale.delete(id); this.zeroPages.add(id); continue }
      try {
        this.count(id)
      } catch (err) {
        if (err instanceof UnloadedBase) unloaded.add(err.extentId)
        else hold ??= `map page ${id}: ${(err as Error).message}`
      }
    }
    // 2. The pages no root names: those whose count fell to 0, and those made since and never placed.
    const pages = new Set<number>()
    const candidates = [...this.zeroPages]
    for (let id = this.pageCeiling; id < pageCeiling; id++) if (!this.zeroPages.has(id)) candidates.push(id)
    this.zeroPages.clear()
    for (const id of candidates) {
      this.examined++
      if (this.refsOfPage(id) !== 0) continue
      if (this.isCounted(id)) this.uncount(id)
      this.stale.delete(id)
      pages.add(id)
    }
    this.pageCeiling = pageCeiling
    // 3. Chunks and extents at 0: those whose count fell to 0, and those made since. One an import
    // holds, or an extent still writable, stays a candidate.
    const chunks: number[] = []
    const chunkCandidates = new Set([...this.zeroChunks, ...newChunks])
    this.zeroChunks.clear()
    for (const id of chunkCandidates) {
      if (this.chunkCount(id) !== 0 || !isChunk(id)) continue
      if (held.has(id)) this.zeroChunks.add(id)
      else chunks.push(id)
    }
    for (const id of newChunks) if (id > this.chunkMax) this.chunkMax = id
    // A chunk or extent named and missing from the catalog: the maps are not the whole truth.
    for (const id of this.named) if (this.chunkCount(id) > 0 && !isChunk(id)) { hold ??= `chunk ${id} is referenced but missing from the index`; break }
    this.named.clear()
    const extents: number[] = []
    const extentCandidates = new Set(this.zeroExtents)
    for (let id = this.nextExtentId; id < nextExtentId; id++) extentCandidates.add(id)
    this.zeroExtents.clear()
    for (const id of extentCandidates) {
      if (this.extentCount(id) !== 0 || !isExtent(id)) continue
      if (writable.has(id)) this.zeroExtents.add(id)
      else extents.push(id)
    }
    const previousNextExtent = this.nextExtentId
    this.nextExtentId = nextExtentId
    for (const problem of this.problems.values()) { hold ??= problem; break }
    const decision = { pages, chunks, extents, held: hold, unloaded: [...unloaded], pageCeiling, nextExtentId: previousNextExtent }
    if (hold !== null || unloaded.size > 0) {
      // Nothing is freed; what was found dead stays a candidate for the next decision.
      this.undo(decision)
      return { ...decision, pages: new Set(), chunks: [], extents: [] }
    }
    this.dying = pages
    return decision
  }

  /** A decision was not carried out (its commit failed): what it found dead stays a candidate. */
  undo (decision: Decision): void {
    for (const id of decision.pages) this.zeroPages.add(id)
    for (const id of decision.chunks) this.zeroChunks.add(id)
    for (const id of decision.extents) this.zeroExtents.add(id)
    this.dying = null
  }

  /** Forgets the counts of chunks and extents (repair rewrote pages, or a check disagreed): rebuilt by the next full gc. */
  invalidate (): void {
    this.counting = false
    this.complete = false
    this.counted.fill(0)
    this.stale.clear()
    this.chunkRefs.clear()
    this.extentRefs.clear()
    this.zeroChunks.clear()
    this.zeroExtents.clear()
    this.problems.clear()
    this.named.clear()
    this.dying = null
  }

  /** Recounts the pages' counts from the roots (after a check disagreed, or repair). */
  recountRoots (roots: Iterable<Float64Array>): void {
    this.pageRefs.fill(0)
    this.zeroPages.clear()
    for (const root of roots) this.rootAll(root, 1)
  }

  /** Test seam: page `id` counted as named by no root (a lost count), as a bug could leave it. */
  testForget (id: number): void {
    if (id < this.pageRefs.length && this.pageRefs[id] > 0) {
      this.pageRefs[id] = 0
      this.zeroPages.add(id)
    }
  }

  /** What the counts say is live now (for the check against a full mark). */
  livePagesNow (): Set<number> {
    const out = new Set<number>()
    for (let id = 1; id < this.pageRefs.length; id++) if (this.pageRefs[id] > 0) out.add(id)
    return out
  }
}

/** A delta entry's base table is not loaded yet: load it (ExtentStore.loadBases) and decide again. */
export class UnloadedBase extends Error {
  constructor (readonly extentId: number) { super(`the base table of delta extent ${extentId} is not loaded`) }
}

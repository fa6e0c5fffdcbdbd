/**
 * Reference counts (issue #21: gc in time proportional to what it frees, not to the pool). Kept in
 * memory. The page counts are taken from what the last clean close stored, under the rule below, or
 * else counted from every root at the open (one root at a time). The chunk and extent counts
 * are built by the first gc's full mark of a process, or taken from what the last clean close stored
 * (`stored`, in the final commit's snapshot step, so they are that commit's state exactly; `load`):
 * the open that reads them deletes them in its first transaction, so after any crash there are none
 * and the first gc marks in full; they are used only when the catalog's fingerprint (every commit
 * writes journal_seq) and their checksum say nothing changed since (docs/CONCURRENCY.md, "gc's
 * reference counts").
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
import crypto from 'node:crypto'
import { entryExtentId } from '../format/map-format'
import { PageRefs } from '../map/page-store'
import type { RootIds } from '../map/block-map'
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
  rootAll (root: RootIds, sign: 1 | -1): void {
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
      // Counted before the pool was opened (stored counts): its extent's base table is not read yet.
      // What lies under the slot leaves the counts once it is (resolvePending); until then the chunk
      // under it keeps one count too many, which frees nothing.
      else if (under.kind === 'unloaded') this.pendingUnder.push(refs.deltas[i])
    }
    this.problems.delete(id)
    this.counted[id] = 0
  }

  /** Delta entries uncounted while their base tables were not loaded: the chunks under them still count them. */
  private pendingUnder: number[] = []

  /**
   * Subtracts what lies under the pending delta entries whose base tables are loaded now (`extentId`:
   * only that extent's). Returns the extents of the entries still pending.
   */
  resolvePending (extentId?: number): Set<number> {
    const left: number[] = []
    const unloaded = new Set<number>()
    for (const entry of this.pendingUnder) {
      const extent = entryExtentId(entry)
      const under = extentId === undefined || extent === extentId ? this.source.underSlot(entry) : { kind: 'unloaded' as const }
      if (under.kind === 'chunk') this.dropChunk(under.chunkId)
      else if (under.kind === 'unloaded') { left.push(entry); unloaded.add(extent) }
    }
    this.pendingUnder = left
    return unloaded
  }

  /** The extents of the pending delta entries (their base tables are needed before a decision). */
  pendingExtents (): Set<number> { return new Set(this.pendingUnder.map(entry => entryExtentId(entry))) }

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
    const ids = this.pendingExtents()
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
    // 0. What lies under delta entries uncounted before their base tables were read.
    const unloaded = this.resolvePending()
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
    // 2b. What lies under the dead pages' delta entries: their extents may be dead below, and a dead
    // extent's base table goes with it, so this decision frees nothing until the tables are read.
    for (const extent of this.resolvePending()) unloaded.add(extent)
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
    this.pendingUnder = []
    this.dying = null
  }

  /** Recounts the pages' counts from the roots (after a check disagreed, or repair). */
  recountRoots (roots: Iterable<RootIds>): void {
    this.pageRefs.fill(0)
    this.zeroPages.clear()
    for (const root of roots) this.rootAll(root, 1)
  }

  // ---- stored at a clean close, loaded at the next open ----

  /**
   * The counts to store at a clean close. Synchronous, in the final commit's snapshot step (so they are
   * that commit's state). The page counts always (issue #21: the open takes them instead of reading
   * every root); the chunk and extent counts when they can be (built, a decision swept, every page
   * countable, no held problem, no entry pending): the stale pages some root names are counted as they
   * are (their extents' base tables loaded before: `extentsOfStale`), and the counted pages no root
   * names are uncounted and kept as candidates (no root can name them again after the pool closes:
   * spares are not kept). From then on every page some root names is counted, and only those; the next
   * open marks them so (`load`).
   */
  stored (): Buffer {
    const withCounts = this.countsStorable()
    const pageIds: number[] = []
    const pageCounts: number[] = []
    for (let id = 1; id < this.pageRefs.length; id++) if (this.pageRefs[id] !== 0) { pageIds.push(id); pageCounts.push(this.pageRefs[id]) }
    const lists = withCounts
      ? [[...this.chunkRefs.keys()], [...this.chunkRefs.values()], [...this.extentRefs.keys()], [...this.extentRefs.values()],
          [...this.zeroPages], [...this.zeroChunks], [...this.zeroExtents], [...this.named], pageIds, pageCounts]
      : [[], [], [], [], [], [], [], [], pageIds, pageCounts]
    const head = [storedMagic, storedVersion, this.pageCeiling, this.chunkMax, this.nextExtentId, withCounts ? 1 : 0, ...lists.map(l => l.length)]
    const out = new Float64Array(head.length + lists.reduce((n, l) => n + l.length, 0))
    out.set(head)
    let at = head.length
    for (const list of lists) { out.set(list, at); at += list.length }
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength)
  }

  /** Whether the chunk and extent counts can be stored (stored()); counts the stale pages on the way. */
  private countsStorable (): boolean {
    if (!this.complete || this.dying !== null) return false
    if (this.resolvePending().size > 0) return false
    for (const id of [...this.stale]) {
      if (this.refsOfPage(id) === 0) { this.stale.delete(id); this.zeroPages.add(id); continue }
      try { this.count(id) } catch { return false }
    }
    if (this.problems.size > 0 || this.pendingUnder.length > 0) return false
    for (let id = 1; id < this.counted.length; id++) {
      if (this.counted[id] === 1 && this.refsOfPage(id) === 0) { this.uncount(id); this.zeroPages.add(id) }
    }
    return this.pendingUnder.length === 0
  }

  /**
   * Takes the counts a clean close stored (`stored`), at the open, before any root is counted (the
   * volumes entered the table uncounted: VolumeTable.setUncounted). Returns what it took: `pages`, the
   * page counts (when false, nothing was taken and the caller counts every root); `counts`, the chunk
   * and extent counts too (every page some root names is counted then).
   */
  load (data: Buffer): { pages: boolean, counts: boolean } {
    const none = { pages: false, counts: false }
    if (this.counting || data.byteLength % 8 !== 0 || data.byteLength < storedHead * 8) return none
    const all = new Float64Array(new Uint8Array(data).buffer)
    if (all[0] !== storedMagic || all[1] !== storedVersion) return none
    const lengths = Array.from(all.subarray(6, storedHead))
    if (storedHead + lengths.reduce((a, b) => a + b, 0) !== all.length) return none
    const lists: Float64Array[] = []
    let at = storedHead
    for (const length of lengths) { lists.push(all.subarray(at, at + length)); at += length }
    const [chunkIds, chunkCounts, extentIds, extentCounts, zeroPages, zeroChunks, zeroExtents, named, pageIds, pageCounts] = lists
    if (chunkIds.length !== chunkCounts.length || extentIds.length !== extentCounts.length || pageIds.length !== pageCounts.length) return none
    for (let i = 0; i < pageIds.length; i++) if (!(pageIds[i] > 0 && pageCounts[i] > 0)) return none
    this.pageRefs.fill(0)
    this.zeroPages.clear()
    for (let i = 0; i < pageIds.length; i++) {
      if (pageIds[i] >= this.pageRefs.length) this.grow(pageIds[i])
      this.pageRefs[pageIds[i]] = pageCounts[i]
    }
    if (all[5] !== 1) return { pages: true, counts: false }
    for (let i = 0; i < chunkIds.length; i++) this.chunkRefs.set(chunkIds[i], chunkCounts[i])
    for (let i = 0; i < extentIds.length; i++) this.extentRefs.set(extentIds[i], extentCounts[i])
    for (const id of zeroPages) if (this.refsOfPage(id) === 0) this.zeroPages.add(id)
    for (const id of zeroChunks) this.zeroChunks.add(id)
    for (const id of zeroExtents) this.zeroExtents.add(id)
    for (const id of named) this.named.add(id)
    this.pageCeiling = all[2]
    this.chunkMax = all[3]
    this.nextExtentId = all[4]
    for (let id = 1; id < this.pageRefs.length; id++) {
      if (this.pageRefs[id] <= 0) continue
      this.counted[id] = 1
    }
    this.counting = true
    this.complete = true
    return { pages: true, counts: true }
  }

  // ---- verify's check ----

  /**
   * verify's check (issue #21): the counts against a recount from `roots` (every volume's) and the
   * pages' entries as they are now. Synchronous, so the maps cannot change between the two; call it
   * after the addon's queued first writes were taken (settleNative). The stale pages some root names
   * are counted first, as a decision counts them. Returns the mismatches (at most `max`, with how many
   * there were), or `unknown` when nothing can be compared (a page that cannot be read, a delta entry
   * whose base table is not loaded): the counts are left as they are then.
   */
  recount (roots: Iterable<RootIds>, max = 8): { mismatches: string[], total: number, pages: number, chunks: number, extents: number } | { unknown: string } {
    if (this.resolvePending().size > 0) return { unknown: 'delta entries whose base tables are not loaded' }
    for (const id of [...this.stale]) {
      if (this.refsOfPage(id) === 0) continue
      try { this.count(id) } catch (err) { return { unknown: `map page ${id}: ${(err as Error).message}` } }
    }
    const mismatches: string[] = []
    let total = 0
    const say = (what: string): void => { if (total++ < max) mismatches.push(what) }
    // The pages: root entries per page, recounted.
    const pageRefs = new Map<number, number>()
    for (const root of roots) for (let p = 0; p < root.length; p++) if (root[p] !== 0) pageRefs.set(root[p], (pageRefs.get(root[p]) ?? 0) + 1)
    for (let id = 1; id < this.pageRefs.length; id++) {
      const kept = this.pageRefs[id]
      const found = pageRefs.get(id) ?? 0
      if (kept !== found) say(`map page ${id}: the counts say ${kept} root entries name it, the roots name it ${found} times`)
    }
    for (const [id, found] of pageRefs) {
      if (id >= this.pageRefs.length) say(`map page ${id}: the counts say 0 root entries name it, the roots name it ${found} times`)
      if (!this.isCounted(id)) say(`map page ${id}: a root names it and the counts did not count its references`)
    }
    // The chunks and extents: references of every counted page, recounted.
    const chunks = new Map<number, number>()
    const extents = new Map<number, number>()
    const add = (map: Map<number, number>, id: number): void => { map.set(id, (map.get(id) ?? 0) + 1) }
    for (let id = 1; id < this.counted.length; id++) {
      if (this.counted[id] !== 1) continue
      let refs: PageRefs
      try { refs = this.source.refsOf(id) } catch (err) { return { unknown: `map page ${id}: ${(err as Error).message}` } }
      for (let i = 0; i < refs.chunks.length; i++) add(chunks, refs.chunks[i])
      for (let i = 0; i < refs.deltas.length; i++) {
        add(extents, entryExtentId(refs.deltas[i]))
        const under = this.source.underSlot(refs.deltas[i])
        if (under.kind === 'chunk') add(chunks, under.chunkId)
        else if (under.kind === 'unloaded') return { unknown: `the base table of delta extent ${entryExtentId(refs.deltas[i])} is not loaded` }
      }
    }
    const compare = (what: string, kept: Map<number, number>, found: Map<number, number>): void => {
      for (const [id, n] of kept) if (n !== (found.get(id) ?? 0)) say(`${what} ${id}: the counts say ${n} references, the maps hold ${found.get(id) ?? 0}`)
      for (const [id, n] of found) if (!kept.has(id)) say(`${what} ${id}: the counts say 0 references, the maps hold ${n}`)
    }
    compare('chunk', this.chunkRefs, chunks)
    compare('delta extent', this.extentRefs, extents)
    return { mismatches, total, pages: pageRefs.size, chunks: chunks.size, extents: extents.size }
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

/** The stored counts' first two numbers: what they are, and their layout's version. */
const storedMagic = 0x76647263 // 'vdrc'
/** 2: the page counts too, and whether the chunk and extent counts are there (issue #21); a 1 is not taken (the roots are counted). */
const storedVersion = 2
/** The numbers before the lists: magic, version, pageCeiling, chunkMax, nextExtentId, whether the counts are there, 10 lengths. */
const storedHead = 16

/** The checksum kept beside the stored counts. */
export function countsSum (data: Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex')
}

/** A delta entry's base table is not loaded yet: load it (ExtentStore.loadBases) and decide again. */
export class UnloadedBase extends Error {
  constructor (readonly extentId: number) { super(`the base table of delta extent ${extentId} is not loaded`) }
}

/**
 * Map pages in memory: a cache over the catalog's pages table, shared by every volume, so that a page
 * shared by a disk and its backups is one object. A page is changed in place only by the volume whose
 * epoch it carries (see block-map.ts); everyone else copies it first.
 *
 * Dirty pages stay in memory until a commit has written them: a page is clean again only once the
 * catalog transaction holding it committed, and only if it did not change meanwhile (its version).
 * Clean pages are evicted past pageCacheMax; dirty ones never are, so no read can reload a page
 * from the catalog while a newer copy waits to be written.
 * Stored pages carry checksums (format/map-format.ts); a page written before them is read as legacy.
 * Errors: get() throws CORRUPT when a stored page is malformed or fails its checksums.
 */
import assert from 'node:assert/strict'
import { Catalog } from '../catalog/catalog'
import { corrupt } from '../errors'
import { decodePage, describePageDamage, encodePage, entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entryKindLost, pageIsSound } from '../format/map-format'
import { pageCacheMax, pageEntries, pageRefsBytesMax } from '../limits'

/** What a page that names no delta extent has learnt (one shared, never changed). */
const noExtents: ReadonlySet<number> = new Set<number>()

/**
 * What a page's entries reference, as gc's mark needs it (issue #21): learnt with the extent names,
 * kept past eviction, forgotten when the page changes; so a mark reads a page unchanged since the last
 * one from here, without loading or walking it again.
 */
export interface PageRefs {
  /** The chunk ids its chunk entries name (repeats possible). */
  readonly chunks: Float64Array
  /** Its delta entries (extent and slot; repeats possible): what lies under a slot is asked when read. */
  readonly deltas: Float64Array
  /** The index of its first lost entry, or -1. */
  readonly lostAt: number
}

const noRefs: PageRefs = { chunks: new Float64Array(0), deltas: new Float64Array(0), lostAt: -1 }

/** How a page's repointing changes the counters of each volume reading it: entries that became holes, stored bytes. */
export interface PageChange { freed: number, stored: number }

export class Page {
  /** Set when the page changed since the last commit that wrote it. */
  dirty = false
  /**
   * A seal pass's repoints of this page that wait for the pass's own commit (docs/CONCURRENCY.md, "A
   * seal pass's repoints wait for its own commit"): what they changed in each reader's counters. Set
   * only while the page was otherwise clean; such a page is kept in memory like a dirty one.
   */
  deferred: PageChange | null = null
  /** Counts changes, so a commit knows whether the copy it wrote is still the latest. */
  version = 0
  constructor (readonly id: number, readonly epoch: number, readonly entries: Float64Array) {}
}

/** A dirty page as a commit writes it: the bytes, and the version they were taken at. */
export interface PageCopy { page: Page, id: number, epoch: number, entries: Buffer, version: number }

export class PageStore {
  private readonly cache = new Map<number, Page>()
  private readonly dirtyPages = new Set<Page>()
  /** Pages with a seal pass's repoints not committed yet (Page.deferred), dirty or not. */
  private readonly deferredPages = new Set<Page>()
  private nextPageId: number
  /** Pages read from the catalog (cache misses) since the pool opened: what a walk over the maps costs. */
  loads = 0
  /** Map pages written by commits since the pool opened: what the catalog grows by. */
  written = 0
  /**
   * Root entries (page ids in volumes' roots) read by sealing's walks since the pool opened: what
   * finding the pages that name an extent, and the volumes that read them, costs (issue #21).
   */
  rootEntriesRead = 0
  /**
   * What gc examined since the pool opened (issue #21, gc in time proportional to what it frees): root
   * entries read, and pages whose references it read or counted.
   */
  gcReads = 0
  /**
   * Per page id, the delta extents its entries name ("learnt"), kept past the page's eviction: a
   * stored page changes only through markDirty (which forgets what was learnt and queues the page in
   * `unlearnt`) and gc's drop, so sealing an extent finds the pages that name it without loading every
   * page of every backup again (issue #21).
   */
  private readonly deltaExtents = new Map<number, ReadonlySet<number>>()
  /**
   * Per learnt page id, what its entries reference (gc's mark, the space accounting), while their
   * bytes stay within refsBytesMax; a learnt page not here has its references read from it when asked.
   */
  private readonly refs = new Map<number, PageRefs>()
  /** Bytes of the references kept in `refs`. */
  private refsBytes = 0
  /** The reverse of deltaExtents: per delta extent, the learnt pages that name it. */
  private readonly pagesOfExtent = new Map<number, Set<number>>()
  /** Pages changed (or made) since they were last learnt: learnt before the index is asked. */
  private readonly unlearnt = new Set<number>()
  /**
   * Per page id, its place in the roots that name it (the root index): a page sits at one index in
   * every root that names it (roots are copied whole; a page is put in a root only by its own map's
   * setRoot, at the index it maps, and a spare moves only while its map alone reads it). So whether a
   * volume reads the page is one look-up in its root, not a walk of it.
   */
  private readonly slots = new Map<number, number>()
  /**
   * Set (by Maintenance.learnExtentNames) once every page some root named at one instant was learnt
   * with its slot: from then on every page a root names is learnt or in `unlearnt`, and has its slot,
   * so `pagesNaming` is complete. Until then sealing walks the roots (the first pass in a process,
   * and recovery at start). Cleared by `forgetLearnt` (after repair rewrote pages behind the store).
   */
  indexComplete = false

  /** `cacheMax`: clean pages kept (tests make it tiny, so eviction happens all the time). */
  constructor (private readonly catalog: Catalog, private readonly cacheMax = pageCacheMax, private readonly refsBytesMax = pageRefsBytesMax) {
    this.nextPageId = catalog.maxPageId() + 1
  }

  get (id: number): Page {
    const cached = this.cache.get(id)
    if (cached !== undefined) return cached
    const row = this.catalog.page(id)
    this.loads++
    if (row === undefined) throw corrupt(`map page ${id} is missing from the catalog`)
    // A damaged page is never served, not even in part: its blocks fail with EIO until repair
    // (which can prove most damaged entries from the checksums) rewrites it.
    const decoded = decodePage(row.entries, id)
    if (!pageIsSound(decoded)) throw corrupt(`map page ${id} is damaged (${describePageDamage(decoded)}): run vdiskfs repair on the pool`)
    const page = new Page(id, row.epoch, decoded.entries)
    this.cache.set(id, page)
    this.evict()
    return page
  }

  /** A new page owned by `epoch`, holding a copy of `from` (or all holes). */
  create (epoch: number, from?: Float64Array): Page {
    const page = new Page(this.nextPageId++, epoch, from === undefined ? new Float64Array(pageEntries) : Float64Array.from(from))
    this.cache.set(page.id, page)
    this.markDirty(page)
    this.evict()
    return page
  }

  /**
   * Whether page `id` holds an entry naming delta extent `extentId` (map-format.ts's kind 1). Loads the
   * page once per change; throws what get() throws.
   */
  namesExtent (id: number, extentId: number): boolean {
    return this.learn(id).has(extentId)
  }

  /** Which delta extents page `id` names: learnt once per change of the page (loads it if evicted). */
  private learn (id: number): ReadonlySet<number> {
    const known = this.deltaExtents.get(id)
    if (known !== undefined) return known
    let extents: Set<number> | null = null
    let deltas = 0
    let chunks = 0
    let lostAt = -1
    const entries = this.get(id).entries
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i]
      if (entry === 0) continue
      const kind = entryKind(entry)
      if (kind === entryKindDelta) {
        (extents ??= new Set<number>()).add(entryExtentId(entry))
        deltas++
      } else if (kind === entryKindChunk) chunks++
      else if (kind === entryKindLost && lostAt < 0) lostAt = i
    }
    const learnt = extents ?? noExtents
    this.deltaExtents.set(id, learnt)
    if (chunks === 0 && deltas === 0 && lostAt < 0) this.refs.set(id, noRefs)
    else if (this.refsBytes + 8 * (chunks + deltas) <= this.refsBytesMax) {
      this.refs.set(id, refsOf(entries, chunks, deltas, lostAt))
      this.refsBytes += 8 * (chunks + deltas)
    }
    this.unlearnt.delete(id)
    for (const extentId of learnt) {
      let pages = this.pagesOfExtent.get(extentId)
      if (pages === undefined) this.pagesOfExtent.set(extentId, pages = new Set<number>())
      pages.add(id)
    }
    return learnt
  }

  /**
   * What page `id` references (PageRefs), learnt once per change of the page: equal to what a walk of
   * its entries finds now. Throws what get() throws.
   */
  refsOf (id: number): PageRefs {
    this.learn(id)
    return this.refs.get(id) ?? readRefs(this.get(id).entries)
  }

  private forgetRefs (id: number): void {
    const refs = this.refs.get(id)
    if (refs === undefined) return
    this.refs.delete(id)
    this.refsBytes -= refs.chunks.byteLength + refs.deltas.byteLength
  }

  /** Forgets what was learnt of page `id` (it changed, or is gone). */
  private unlearn (id: number): void {
    this.forgetRefs(id)
    const learnt = this.deltaExtents.get(id)
    if (learnt === undefined) return
    this.deltaExtents.delete(id)
    for (const extentId of learnt) {
      const pages = this.pagesOfExtent.get(extentId)
      if (pages === undefined) continue
      pages.delete(id)
      if (pages.size === 0) this.pagesOfExtent.delete(extentId)
    }
  }

  /**
   * Every page that names delta extent `extentId` (live ones and garbage not collected yet), once
   * `indexComplete`: the pages changed since they were learnt are learnt first, in this step. Throws
   * what get() throws for such a page (it stays unlearnt, and is asked again next time).
   */
  pagesNaming (extentId: number): number[] {
    assert.ok(this.indexComplete, 'the extent index is not complete yet')
    for (const id of [...this.unlearnt]) this.learn(id)
    return [...(this.pagesOfExtent.get(extentId) ?? [])]
  }

  /** Pages changed since they were learnt (to learn them in slices before a seal pass). */
  unlearntPages (): number[] { return [...this.unlearnt] }

  /** Marks page `id` as not learnt (a page that could not be read while learning: asked again). */
  learnLater (id: number): void {
    this.unlearn(id)
    this.unlearnt.add(id)
  }

  /** Learns page `id` unless it is known already (to learn in slices); throws what get() throws. */
  learnPage (id: number): void { this.learn(id) }

  /** Records that page `id` is at root index `slot` (BlockMap.setRoot; `ifUnknown`: the learning walk). */
  placed (id: number, slot: number, ifUnknown = false): void {
    if (ifUnknown && this.slots.has(id)) return
    this.slots.set(id, slot)
  }

  /** The root index of page `id`, or undefined when not known (see `slots`). */
  slotOf (id: number): number | undefined { return this.slots.get(id) }

  /** Forgets everything learnt (repair rewrote pages and roots without telling the store). */
  forgetLearnt (): void {
    this.indexComplete = false
    this.deltaExtents.clear()
    this.refs.clear()
    this.refsBytes = 0
    this.pagesOfExtent.clear()
    this.unlearnt.clear()
    this.slots.clear()
  }

  /**
   * Told of a page about to be changed in place (its entries), before the change: gc's mark
   * (maintenance.ts) walks it first, so it sees every page as it was when the mark began. Null while
   * no mark runs.
   */
  beforeChange: ((page: Page) => void) | null = null

  /** Call before changing an existing page's entries in place (not for a page just created). */
  willChange (page: Page): void {
    if (this.beforeChange !== null) this.beforeChange(page)
    if (this.counts !== null) this.counts.willChange(page.id)
  }

  /**
   * The pool's reference counts (volume/ref-counts.ts): told before a page's in-place change (its
   * references leave the counts while its entries are still the counted ones), after a page is made
   * or changed, and when gc drops one.
   */
  counts: { willChange: (id: number) => void, changed: (id: number) => void, dropped: (id: number) => void } | null = null

  /** Records a change to `page` (every change, so a commit in flight can tell it is stale). */
  markDirty (page: Page): void {
    this.changed(page)
    if (page.dirty) return
    page.dirty = true
    this.dirtyPages.add(page)
  }

  /**
   * Records a seal pass's repoint of `page`, which was clean, for the pass's own commit: the page
   * changed in memory (kept there, never evicted) but is not dirty, so a commit that leaves the pass's
   * work out does not write it; `change` adds to what its repoints changed in each reader's counters.
   */
  markRepointed (page: Page, change: PageChange): void {
    assert.ok(!page.dirty, 'a dirty page is repointed as any change (markDirty)')
    this.changed(page)
    if (page.deferred === null) page.deferred = { freed: 0, stored: 0 }
    page.deferred.freed += change.freed
    page.deferred.stored += change.stored
    this.deferredPages.add(page)
  }

  /** Pages with repoints left to the seal pass's commit (dirty ones too: a write changed them since). */
  deferredList (): Page[] { return [...this.deferredPages] }

  /** `page`'s repoints are committed with it now (or it is written as a dirty page): no longer deferred. */
  undefer (page: Page): void {
    page.deferred = null
    this.deferredPages.delete(page)
  }

  /** Every deferred page becomes an ordinary dirty one: the next commit writes it (and its readers' rows). */
  undeferAll (): void {
    for (const page of [...this.deferredPages]) {
      this.undefer(page)
      if (page.dirty) continue
      page.dirty = true
      this.dirtyPages.add(page)
    }
  }

  private changed (page: Page): void {
    page.version++
    this.unlearn(page.id)
    this.unlearnt.add(page.id)
    if (this.counts !== null) this.counts.changed(page.id)
    // A caller may hold a page across other lookups that evicted it (repoint walks every page): a
    // clean page equals its catalog row, so the changed object takes the cache slot back from any
    // copy loaded meanwhile, and no later lookup reads the stale row.
    const cached = this.cache.get(page.id)
    if (cached !== page) {
      assert.ok(cached === undefined || (!cached.dirty && cached.deferred === null), 'two dirty copies of one map page')
      this.cache.set(page.id, page)
    }
  }

  /** Encoded copies of the dirty pages for a commit; they stay dirty until `committed()`. */
  takeDirty (): PageCopy[] {
    const out: PageCopy[] = []
    for (const page of this.dirtyPages) out.push({ page, id: page.id, epoch: page.epoch, entries: encodePage(page.entries, page.id), version: page.version })
    return out
  }

  /** After the transaction holding `copies` committed: pages not changed since are clean. */
  committed (copies: PageCopy[]): void {
    this.written += copies.length
    for (const copy of copies) {
      if (copy.page.version !== copy.version || !copy.page.dirty) continue
      copy.page.dirty = false
      this.dirtyPages.delete(copy.page)
    }
    this.evict()
  }

  /** Forgets a page that garbage collection deleted. */
  drop (id: number): void {
    if (this.counts !== null) this.counts.dropped(id)
    this.unlearn(id)
    this.unlearnt.delete(id)
    this.slots.delete(id)
    const page = this.cache.get(id)
    if (page !== undefined && page.dirty) { page.dirty = false; this.dirtyPages.delete(page) }
    if (page !== undefined) this.undefer(page)
    this.cache.delete(id)
  }

  /** Whether page `id` changed in memory since its last commit (dirty, or repoints deferred to a seal pass's commit). */
  isDirty (id: number): boolean {
    const page = this.cache.get(id)
    return page !== undefined && (page.dirty || page.deferred !== null)
  }

  /** Every page id in use is below this (ids are never reused). */
  get idCeiling (): number { return this.nextPageId }

  get dirtyCount (): number { return this.dirtyPages.size }

  private evict (): void {
    if (this.cache.size <= this.cacheMax) return
    for (const [id, page] of this.cache) {
      if (this.cache.size <= this.cacheMax * 0.9) break
      if (!page.dirty && page.deferred === null) this.cache.delete(id)
    }
  }
}

/** A page's PageRefs from its entries, counted first (a page whose references are not kept). */
function readRefs (entries: Float64Array): PageRefs {
  let chunks = 0
  let deltas = 0
  let lostAt = -1
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i]
    if (entry === 0) continue
    const kind = entryKind(entry)
    if (kind === entryKindChunk) chunks++
    else if (kind === entryKindDelta) deltas++
    else if (kind === entryKindLost && lostAt < 0) lostAt = i
  }
  return chunks === 0 && deltas === 0 && lostAt < 0 ? noRefs : refsOf(entries, chunks, deltas, lostAt)
}

/** A page's PageRefs from its entries (`chunks`, `deltas`: how many entries of each kind it has). */
function refsOf (entries: Float64Array, chunks: number, deltas: number, lostAt: number): PageRefs {
  const ids = new Float64Array(chunks)
  const slots = new Float64Array(deltas)
  let c = 0
  let d = 0
  for (let i = 0; i < entries.length; i++) {
    const entry = entries[i]
    if (entry === 0) continue
    const kind = entryKind(entry)
    if (kind === entryKindChunk) ids[c++] = entryChunkId(entry)
    else if (kind === entryKindDelta) slots[d++] = entry
  }
  return { chunks: ids, deltas: slots, lostAt }
}

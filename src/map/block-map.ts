/**
 * A volume's block map: block index -> map entry (format/map-format.ts), kept as a root (an array of
 * page ids) over fixed-size map pages. This is what makes backups and clones O(1) in a volume's size:
 * a backup or clone copies the root and takes a new epoch, and from then on a write that would change a
 * page of an older epoch copies that page first (copy-on-write of metadata). Reads are one root lookup
 * and one page lookup at any clone depth.
 *
 * Assumes: one BlockMap per volume; every page it changes in place carries this map's epoch.
 */
import assert from 'node:assert/strict'
import { mapSparePagesMax, pageEntries } from '../limits'
import { Page, PageStore } from './page-store'

/** Stored bytes behind a map entry (0 for a hole). */
export type EntrySize = (entry: number) => number

/**
 * A root's page ids: 4 bytes each while every id fits 32 bits (issue #21: at 10,000 backups of a 1 TiB
 * disk, 320 MiB of the daemon at 8 bytes an id), 8 bytes once one does not. Readers read numbers either
 * way; only BlockMap writes an id into a root, and it widens the root first when the id needs it.
 */
export type RootIds = Float64Array | Uint32Array

const u32Max = 0xffffffff

/** A copy of `root`, 4 bytes an id when every id fits. */
export function compactRoot (root: RootIds): RootIds {
  if (root instanceof Uint32Array) return root.slice()
  for (let p = 0; p < root.length; p++) if (root[p] > u32Max) return root.slice()
  return Uint32Array.from(root)
}

/**
 * The roots loaded on first use (issue #21): a bounded set of the maps whose root a loader can read
 * again (backups' persisted roots), dropped least recently used first (second chance: a map whose root
 * was read since its last turn goes round once more) once their bytes pass `bytesMax`. Synchronous,
 * on the main thread like everything that reads a root: a load is one SQLite row read in the step that
 * asks for it, so no caller ever sees a root half loaded, and no drop happens while a caller is inside
 * a step that read it (a caller that keeps the array across awaits keeps its own reference: the map
 * drops only its field, and a root a loader can read again is the catalog's, unchanged).
 */
/** What `vdiskfs status` shows of the roots cache. */
export interface RootCacheStats {
  /** Backups' roots in memory now that may be dropped, and their bytes; the bound. */
  roots: number
  bytes: number
  bytesMax: number
  /** Roots read from the catalog on first use, and dropped past the bound, since start. */
  loads: number
  drops: number
}

export class RootCache {
  private readonly maps = new Set<BlockMap>()
  /** Bytes of the roots loaded through this cache and not dropped yet. */
  bytes = 0
  /** Roots loaded, and dropped, so far; roots read for a walk and not kept (BlockMap.peekRoot). */
  loads = 0
  drops = 0
  peeks = 0

  constructor (public bytesMax: number) {}

  /** How many roots are loaded now. */
  get size (): number { return this.maps.size }

  stats (): RootCacheStats { return { roots: this.maps.size, bytes: this.bytes, bytesMax: this.bytesMax, loads: this.loads, drops: this.drops } }

  /** `map` loaded its root (`bytes`): drops others past the bound (never `map` itself). */
  loaded (map: BlockMap, bytes: number): void {
    this.loads++
    this.maps.add(map)
    this.bytes += bytes
    this.trim(map)
  }

  /** `map` holds its root for good (removed from the pool, or no longer droppable): out of the count. */
  forget (map: BlockMap, bytes: number): void {
    if (this.maps.delete(map)) this.bytes -= bytes
  }

  /** Drops roots, oldest turn first, until the bytes are within the bound; `keep` stays. */
  trim (keep?: BlockMap): void {
    let turns = 2 * this.maps.size
    for (const map of this.maps) {
      if (this.bytes <= this.bytesMax || turns-- <= 0) return
      if (map === keep) continue
      this.maps.delete(map)
      if (map.takeUsed()) { this.maps.add(map); continue }
      const bytes = map.dropRoot()
      if (bytes < 0) { this.maps.add(map); continue }
      this.bytes -= bytes
      this.drops++
    }
  }
}

/** What loads a map's root again from the catalog (throws CORRUPT when it fails its check). */
export type RootLoader = () => RootIds

export class BlockMap {
  /** Page ids (null: not loaded; `root` loads it); 0 means the page's blocks are all holes. */
  private loadedRoot: RootIds | null
  /** Reads the root again once dropped (a persisted backup's: RootCache), or null: it is always kept. */
  private loader: { load: RootLoader, cache: RootCache } | null = null
  /** Read since the cache last looked (its second chance). */
  private used = false
  /** How many page ids the root has (known without loading it). */
  private rootCount: number
  /** Set by a commit between its snapshot and its transaction for a root it writes: not droppable then. */
  rootWriting = 0
  /** Set when root changed since the last commit. */
  rootDirty = false
  /** Set while a reader holds the root array as it was (shareRoot): the next change copies it first. */
  private rootShared = false
  /**
   * Ids of this map's own pages (its epoch) that a shrink dropped, for reuse by the next page it needs,
   * so that truncate-then-write cycles rewrite a page instead of adding one per cycle. Not committed:
   * after a restart (or a gc, which deletes unreferenced pages) they are garbage as before.
   */
  private readonly spares: number[] = []
  /**
   * The pool's page reference counts (volume/ref-counts.ts), told of every change to the root while
   * this map's volume is in the pool's table (VolumeTable attaches and detaches it); null otherwise.
   */
  counts: { rootAdd: (id: number) => void, rootDrop: (id: number) => void, rootAll: (root: RootIds, sign: 1 | -1) => void } | null = null
  /** Told of every entry set (the change journal, volume/journal.ts); null: nobody listens. */
  onSet: ((block: number, entry: number) => void) | null = null
  /**
   * Told synchronously of every change to what a block reads, before anything else runs (the FUSE
   * fast path, fuse/fast-reads.ts, which stops serving those blocks itself): one entry set, or every
   * block from `from` on (a resize, or a restore: 0). Sealing's repoint is not told: it gives blocks an
   * entry that reads the same bytes (docs/FASTPATH.md).
   */
  watch: { changed: (block: number) => void, changedFrom: (from: number) => void } | null = null

  constructor (
    private readonly pages: PageStore,
    root: RootIds,
    public epoch: number,
    allocatedBlocks: number,
    storedBytes: number,
    private readonly sizeOf: EntrySize
  ) {
    this.loadedRoot = root
    this.rootCount = root.length
    this.allocated = allocatedBlocks
    this.stored = storedBytes
  }

  /** The page ids, loaded first when dropped (throws CORRUPT when the stored root fails its check). */
  get root (): RootIds {
    const root = this.loadedRoot
    if (root !== null) { this.used = true; return root }
    return this.loadRoot()
  }

  private setRootIds (root: RootIds): void {
    if (this.loader !== null && this.loadedRoot !== null) this.loader.cache.forget(this, this.loadedRoot.byteLength)
    this.loader = null // changed here: kept until made lazy again (after the commit that writes it)
    this.loadedRoot = root
    this.rootCount = root.length
  }

  private loadRoot (): RootIds {
    const loader = this.loader
    if (loader === null) throw new Error('a map without its root and without a loader')
    const root = loader.load()
    if (root.length !== this.rootCount) throw new Error(`a loaded root of ${root.length} pages where ${this.rootCount} were expected`)
    this.loadedRoot = root
    this.used = false
    this.rootShared = false
    loader.cache.loaded(this, root.byteLength)
    return root
  }

  /**
   * The root for a walk that reads every root once per pass (gc's mark, sealing's first pass, the
   * space walk): the one in memory, or else read from the catalog and not kept. Kept, a walk of more
   * roots than the bound holds would push out every root readers use and find none of its own next
   * time (a cyclic scan misses every time under LRU).
   */
  peekRoot (): RootIds {
    const root = this.loadedRoot
    if (root !== null) return root
    const loader = this.loader
    if (loader === null) throw new Error('a map without its root and without a loader')
    const read = loader.load()
    if (read.length !== this.rootCount) throw new Error(`a loaded root of ${read.length} pages where ${this.rootCount} were expected`)
    loader.cache.peeks++
    return read
  }

  /** How many page ids the root has, without loading it. */
  get rootLength (): number { return this.rootCount }

  /** Whether the root is in memory now. */
  get rootLoaded (): boolean { return this.loadedRoot !== null }

  /** Whether the root may be dropped and read again (a persisted backup's, unchanged since: makeLazy). */
  get rootLazy (): boolean { return this.loader !== null }

  /**
   * From now on the root may be dropped and read again by `load` (issue #21): the caller says that
   * what `load` reads is this root as it is (persisted, not dirty: a backup after the commit that
   * inserted it, or read at the open). `unloadedCount`: it is not in memory yet (the open), and has
   * that many page ids.
   */
  makeLazy (load: RootLoader, cache: RootCache, unloadedCount?: number): void {
    if (this.loader !== null) return
    this.loader = { load, cache }
    if (unloadedCount !== undefined) { this.loadedRoot = null; this.rootCount = unloadedCount; return }
    if (this.loadedRoot !== null) { cache.loaded(this, this.loadedRoot.byteLength); cache.loads-- }
  }

  /** Keeps the root in memory for good (the volume left the pool: nothing may read it from the catalog after). */
  pinRoot (): void {
    const root = this.root
    if (this.loader !== null) this.loader.cache.forget(this, root.byteLength)
    this.loader = null
  }

  /** For RootCache: whether the root was read since the cache last asked (and clears it). */
  takeUsed (): boolean {
    const used = this.used
    this.used = false
    return used
  }

  /**
   * For RootCache: drops the root when it can be read again as it is (not dirty, no commit writing it);
   * returns its bytes, or -1 when it stays.
   */
  dropRoot (): number {
    const root = this.loadedRoot
    if (root === null || this.loader === null || this.rootDirty || this.rootWriting > 0) return -1
    this.loadedRoot = null
    return root.byteLength
  }

  // The counters change only with the entries, in this class: set(), resize(),
  // countPageChanges(), countPageChange(), pointAt() and recount() keep them right; nothing outside
  // writes them.
  private allocated: number
  private stored: number
  /** Blocks that are not holes. */
  get allocatedBlocks (): number { return this.allocated }
  /** Stored bytes of the blocks it can read (delta slots count a whole block; chunks their stored length). */
  get storedBytes (): number { return this.stored }

  /** Counts every entry again from the pages (after repair rewrote them). */
  recount (): void {
    let allocated = 0
    let stored = 0
    this.forEachEntry((_block, entry) => { allocated++; stored += this.sizeOf(entry) })
    this.allocated = allocated
    this.stored = stored
  }

  /**
   * Makes this map read what `source` reads (a restore): a copy of its root, its counters, and the new
   * `epoch` (so that its next writes copy the shared pages).
   */
  pointAt (source: BlockMap, epoch: number): void {
    const old = this.root
    this.setRootIds(source.copyRoot())
    if (this.counts !== null) {
      this.counts.rootAll(this.root, 1)
      this.counts.rootAll(old, -1)
    }
    this.rootShared = false
    this.rootDirty = true
    this.epoch = epoch
    this.allocated = source.allocated
    this.stored = source.stored
    if (this.watch !== null) this.watch.changedFrom(0)
  }

  /**
   * Counts, for every page of this map's root that `changes` names (page id -> how many of its entries
   * became holes, and how their stored bytes changed), that change: the caller repoints each such page
   * once, and a page shared by several maps changes each of them (maintenance.ts repoint). Returns
   * whether any of this map's pages was among them.
   */
  countPageChanges (changes: Map<number, { freed: number, stored: number }>): boolean {
    let reads = false
    for (const id of this.root) {
      const change = id === 0 ? undefined : changes.get(id)
      if (change === undefined) continue
      reads = true
      this.allocated -= change.freed
      this.stored += change.stored
    }
    return reads
  }

  static pagesFor (blocks: number): number {
    return Math.ceil(blocks / pageEntries)
  }

  get (block: number): number {
    const pageIndex = Math.floor(block / pageEntries)
    if (pageIndex >= this.root.length) return 0
    const pageId = this.root[pageIndex]
    if (pageId === 0) return 0
    return this.pages.get(pageId).entries[block % pageEntries]
  }

  set (block: number, entry: number): void {
    const pageIndex = Math.floor(block / pageEntries)
    assert.ok(pageIndex < this.root.length, 'block beyond the map')
    const index = block % pageEntries
    const pageId = this.root[pageIndex]
    let page = pageId === 0 ? undefined : this.pages.get(pageId)
    const old = page === undefined ? 0 : page.entries[index]
    if (old === entry) return
    if (page === undefined) {
      page = this.reuseSpare() ?? this.pages.create(this.epoch)
      this.setRoot(pageIndex, page.id)
    } else if (page.epoch !== this.epoch) {
      page = this.pages.create(this.epoch, page.entries)
      this.setRoot(pageIndex, page.id)
    } else this.pages.willChange(page)
    page.entries[index] = entry
    this.pages.markDirty(page)
    if (old === 0) this.allocated++
    else if (entry === 0) this.allocated--
    this.stored += this.sizeOf(entry) - this.sizeOf(old)
    if (this.watch !== null) this.watch.changed(block)
    if (this.onSet !== null) this.onSet(block, entry)
  }

  /** Grows or shrinks the map to `blocks` blocks; blocks past the end become holes. */
  resize (blocks: number): void {
    if (this.watch !== null) this.watch.changedFrom(blocks)
    const pageCount = BlockMap.pagesFor(blocks)
    if (pageCount < this.root.length) {
      for (let p = pageCount; p < this.root.length; p++) {
        if (this.root[p] === 0) continue
        const page = this.pages.get(this.root[p])
        const entries = page.entries
        for (let i = 0; i < entries.length; i++) {
          if (entries[i] !== 0) { this.allocated--; this.stored -= this.sizeOf(entries[i]) }
        }
        // Only this map reads a page of its epoch (a backup or clone takes a new one), so once out of
        // the root nothing reads it: it can be reused, rewritten in the commit that writes the new root.
        if (page.epoch === this.epoch && this.spares.length < mapSparePagesMax) this.spares.push(page.id)
      }
      if (this.counts !== null) this.counts.rootAll(this.root.subarray(pageCount), -1)
      this.setRootIds(this.root.slice(0, pageCount))
      this.rootShared = false
      this.rootDirty = true
    } else if (pageCount > this.root.length) {
      const grown = new Float64Array(pageCount)
      grown.set(this.root)
      this.setRootIds(grown)
      this.rootShared = false
      this.rootDirty = true
    }
    // Clear the tail of the last page.
    const lastPage = pageCount - 1
    if (lastPage >= 0 && this.root[lastPage] !== 0) {
      const entries = this.pages.get(this.root[lastPage]).entries
      for (let i = blocks - lastPage * pageEntries; i < pageEntries; i++) {
        if (entries[i] !== 0) this.set(lastPage * pageEntries + i, 0)
      }
    }
  }

  /**
   * The root as it is now, for a reader that walks it across awaits (the space accounting): O(1), and
   * the array it returns never changes, because this map copies its root before its next change to it
   * (copy-on-write of the root itself: only maps that change during the walk pay a copy).
   */
  shareRoot (): RootIds {
    this.rootShared = true
    return this.root
  }

  /** A copy of the root for a backup or clone (4 bytes an id when they fit); the caller gives this map a new epoch. */
  copyRoot (): RootIds {
    return compactRoot(this.root)
  }

  /** Makes the root 8 bytes an id (for repair, which writes ids into it itself). */
  widenRoot (): void {
    if (this.root instanceof Float64Array) return
    this.setRootIds(Float64Array.from(this.root))
    this.rootShared = false
  }

  /**
   * Counts `change` (how many of its entries became holes, and how its stored bytes changed) when this
   * map reads page `id`, which sits at root index `slot` (PageStore.slotOf): one look-up. Returns
   * whether it did.
   */
  countPageChange (slot: number, id: number, change: { freed: number, stored: number }): boolean {
    if (slot >= this.root.length || this.root[slot] !== id) return false
    this.allocated -= change.freed
    this.stored += change.stored
    return true
  }

  /** Calls `visit` for every non-hole entry. */
  forEachEntry (visit: (block: number, entry: number) => void): void {
    for (let p = 0; p < this.root.length; p++) {
      if (this.root[p] === 0) continue
      const entries = this.pages.get(this.root[p]).entries
      for (let i = 0; i < pageEntries; i++) if (entries[i] !== 0) visit(p * pageEntries + i, entries[i])
    }
  }

  /** Calls `visit` for each page of the map (a page appears once per root). */
  forEachPage (visit: (page: Page) => void): void {
    for (let p = 0; p < this.root.length; p++) if (this.root[p] !== 0) visit(this.pages.get(this.root[p]))
  }

  /** A page this map dropped in a shrink, emptied, or undefined when none is left to reuse. */
  private reuseSpare (): Page | undefined {
    while (this.spares.length > 0) {
      const id = this.spares.pop() as number
      let page: Page
      try { page = this.pages.get(id) } catch { continue } // gc deleted it meanwhile
      if (page.epoch !== this.epoch) continue // a backup since: no longer this map's alone
      this.pages.willChange(page)
      page.entries.fill(0)
      return page
    }
    return undefined
  }

  private setRoot (pageIndex: number, pageId: number): void {
    if (pageId > u32Max && this.root instanceof Uint32Array) this.widenRoot() // a copy: a reader sharing the old one keeps it
    if (this.rootShared || this.loader !== null) {
      // A copy when shared; and out of the cache: a changed root is kept until its commit makes it lazy again.
      this.setRootIds(this.rootShared ? this.root.slice() : this.root)
      this.rootShared = false
    }
    const root = this.root
    const old = root[pageIndex]
    root[pageIndex] = pageId
    if (this.counts !== null) {
      this.counts.rootAdd(pageId)
      this.counts.rootDrop(old)
    }
    this.rootDirty = true
    this.pages.placed(pageId, pageIndex)
  }
}

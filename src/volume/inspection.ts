/**
 * What verify, repair and space accounting ask of the pool's stores: read-only checks (the catalog's
 * integrity, map pages, extent slots, chunk hashes, which packs and extents the catalog knows) and the
 * few store operations an offline repair needs (dropping cached chunks and pages, new map pages,
 * restarting catalog.log from the repaired catalog). They go through here rather than into the
 * stores themselves, so the stores stay the pool's own.
 *
 * Assumes: online callers hold the maintenance lock (compaction would move chunks under them);
 * repair runs offline under the pool lock. Errors: what the stores throw (CORRUPT, IO).
 */
import { PackRecord, RecordFate, recordFate } from '../chunk/pack-scan'
import { Catalog } from '../catalog/catalog'
import { BlockMap } from '../map/block-map'
import { Page, PageRefs } from '../map/page-store'
import { Under, forEachReference, underSlot } from './references'
import { PoolState } from './pool-state'

export class Inspection {
  constructor (private readonly state: PoolState) {}

  // ---- the catalog ----

  /** SQLite's integrity check of the catalog: empty when sound. */
  catalogProblems (): string[] { return this.state.catalog.integrityCheck() }
  /** The roots' pieces against their hashes, the lists' pieces present, their reference counts against the lists: empty when sound. */
  rootPieceProblems (): string[] { return this.state.catalog.rootPieceProblems() }
  /** Ids of the volumes the catalog holds as committed (the pool's own list may be ahead of it). */
  committedVolumeIds (): number[] { return this.state.catalog.volumes().map(v => v.id) }
  /** Ids of the delta extents the catalog knows. */
  extentIds (): number[] { return this.state.catalog.extents().map(e => e.id) }
  /** Ids of the packs the catalog registers. */
  packIds (): number[] { return this.state.catalog.packUsage().map(p => p.id) }
  /** Ids of the chunks in the index. */
  chunkIds (): number[] { return this.state.catalog.chunkIds() }
  /** The highest chunk id ever given (indexed or retired). */
  chunkIdHigh (): number { return this.state.catalog.maxChunkId() }
  /** The id catalog.log must carry to belong to this catalog. */
  catalogLogId (): string | undefined { return this.state.catalog.getMeta('log_id') }
  /** Whether catalog.log was written by another catalog (left for repair). */
  get catalogLogDetached (): boolean { return this.state.catalogLog.detached }
  /** What the catalog makes of a pack record (pack-scan.ts). */
  recordFate (record: PackRecord, registered: boolean, high: number): RecordFate { return recordFate(this.state.catalog, record, registered, high) }

  // ---- map pages, extents, chunks ----

  /** What lies under a delta entry's slot (references.ts). */
  underSlot (entry: number): Under { return underSlot(this.state.extents, entry) }
  /** Every non-hole entry of `map`, with what lies under it when it is a delta entry (references.ts). */
  forEachReference (map: BlockMap, visit: (block: number, entry: number, under: Under | null) => void): void { forEachReference(map, this.state.extents, visit) }
  /** Stored bytes of a map entry: a block for a delta slot, the chunk's stored size, 0 otherwise. */
  get sizeOf (): (entry: number) => number { return this.state.sizeOf }
  /** Counts changes, so that derived reports (space accounting) know when to recompute. */
  get generation (): number { return this.state.generation }

  /**
   * What a map page's entries reference (its chunk ids and delta entries, learnt once per change of
   * the page: PageStore.refsOf); throws CORRUPT when its stored bytes fail their checksums.
   */
  pageRefs (id: number): PageRefs { return this.state.pages.refsOf(id) }
  /** Every page id in use is below this. */
  get pageIdCeiling (): number { return this.state.pages.idCeiling }
  /** A map page's entries; throws CORRUPT when its stored bytes fail their checksums. */
  pageEntries (id: number): Float64Array { return this.state.pages.get(id).entries }
  /** Slots written in a delta extent; throws when its file or header is damaged or missing. */
  async extentSlots (id: number): Promise<number> { return (await this.state.extents.get(id)).nextSlot }
  /** Why a delta extent slot fails its checksum, or null. */
  async checkExtentSlot (id: number, slot: number): Promise<string | null> { return await this.state.extents.checkSlot(id, slot) }
  /**
   * Bytes in the delta extents the catalog holds (slots written, not yet sealed into chunks or freed):
   * one catalog query and a look at each extent (in memory when open), nothing in the maps.
   */
  async extentBytes (): Promise<number> {
    let slots = 0
    for (const { id } of this.state.catalog.extents()) slots += await this.state.extents.slotsWritten(id)
    return slots * this.state.blockBytes
  }
  /** Reads chunks and checks their hashes: the damaged ones, with why. */
  async checkChunks (ids: number[]): Promise<Map<number, string>> { return await this.state.chunks.check(ids) }
  /** A chunk's size before compression. */
  chunkRawBytes (id: number): number { return this.state.chunks.info(id).rawBytes }

  // ---- repair (offline) ----

  /**
   * The catalog itself, for repair alone: it rebuilds rows (chunk index, extents, packs, map pages)
   * offline, under the pool lock, with no daemon running. Nothing online uses it.
   */
  get offlineCatalog (): Catalog { return this.state.catalog }

  /** Forgets cached chunk positions: repair rebuilt the index under them. */
  forgetChunkCache (): void { this.state.chunks.forgetCache() }
  /** Drops chunks from the store's caches after repair took them out of the index. */
  forgetChunks (ids: number[]): void { this.state.chunks.forget(ids) }
  /** A new, dirty map page (repair's replacement for a page that is gone). */
  newPage (epoch: number): Page { return this.state.pages.create(epoch) }
  /** Drops a map page from the cache: repair rewrote its row in the catalog. */
  dropPage (id: number): void { this.state.pages.drop(id) }
  /** Starts catalog.log again from the catalog as it is (repair wrote the catalog directly). */
  async restartCatalogLog (): Promise<void> { await this.state.catalogLog.snapshot() }
}

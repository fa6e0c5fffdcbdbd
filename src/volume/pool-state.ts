/**
 * What every part of an open pool shares: its stores (extents, chunks, map pages, the catalog and its
 * log), the table of volumes, the id and epoch counters, the change tracking that tells commit what to
 * write, and the open -> closing -> closed lifecycle. It also answers which extent each volume writes
 * into (activeExtent). It holds state and no policy: namespace.ts, commit.ts and maintenance.ts act on it.
 *
 * Assumes: one PoolState per pool directory at a time (the catalog's exclusive lock); all of it runs
 * on the main thread, so a synchronous stretch of code sees no other change.
 */
import path from 'node:path'
import { Catalog, VolumeKind } from '../catalog/catalog'
import { CatalogLog } from '../catalog/catalog-log'
import { ChunkStore } from '../chunk/chunk-store'
import { Ingest } from '../chunk/ingest'
import { WorkerPool } from '../chunk/worker-pool'
import { DeltaExtent, ExtentStore } from '../extent/delta-extent'
import { entryChunkId, entryKind, entryKindChunk, entryKindDelta } from '../format/map-format'
import { PoolHeader, catalogLogFile, extentsDir, packsDir } from '../format/pool-format'
import { FileIo, nodeFileIo } from '../io/file-io'
import { rootCacheBytesMax, zstdLevelDefault } from '../limits'
import { RootCache, RootIds } from '../map/block-map'
import { decodeRoot } from '../format/map-format'
import { VdiskError } from '../errors'
import { PageStore } from '../map/page-store'
import { FilesystemStat, FreeSpace } from './free-space'
import { ChangeJournal } from './journal'
import { Volume, VolumeContext } from './volume'
import { RefCounts } from './ref-counts'
import { underSlot } from './references'

export interface StateOptions {
  /** Worker threads for hashing and compression (default: the number of cores; 0 = main thread, benchmark only). */
  workers?: number
  log?: (message: string) => void
  /** The file I/O under extents and packs (tests put a fault-injecting one here). */
  io?: FileIo
  /** Chunk index rows kept in memory (default chunkCacheMax; tests make it tiny). */
  chunkCacheMax?: number
  /** Clean map pages kept in memory (default pageCacheMax; tests make it tiny). */
  pageCacheMax?: number
  /** Bytes of page references kept (default pageRefsBytesMax; tests make it tiny). */
  pageRefsBytesMax?: number
  /** Bytes of backups' roots kept in memory past their use (default rootCacheBytesMax; tests make it tiny). */
  rootCacheBytesMax?: number
  /**
   * The boot the change journal is written in and replayed from (journal.ts; default the kernel's boot
   * id). Tests that simulate a power cut open the pool again with another, as the machine's restart would.
   */
  bootId?: Buffer
  /**
   * Load the sealing task into the read pool's threads as the pool opens (WorkerPool's `warm`): the
   * daemon does, so that a lazy pull's head, the first urgent batch, does not wait for it.
   */
  warmWorkers?: boolean
}

export class PoolState implements VolumeContext {
  readonly extents: ExtentStore
  readonly chunks: ChunkStore
  readonly workers: WorkerPool
  /** The one way blocks become chunks (sealing, import). */
  readonly ingest: Ingest
  readonly pages: PageStore
  /** The second copy of volumes and map pages that repair rebuilds a lost catalog from. */
  readonly catalogLog: CatalogLog
  /** Changes since the last commit, for a daemon that dies before the next one (journal.ts). */
  readonly journal: ChangeJournal
  readonly log: (message: string) => void
  readonly io: FileIo
  private readonly freeSpace: FreeSpace

  /**
   * Reference counts per map page, chunk and delta extent (issue #21: gc proportional to what it
   * frees; ref-counts.ts): the page counts follow every volume entering or leaving this table.
   */
  readonly refs: RefCounts
  /** Run once, synchronously, by the next commit's snapshot step (gc's decision from the counts). */
  atCommitSnapshot: ((journalSeq: number) => void) | null = null
  readonly volumes: VolumeTable
  /** The backups' roots loaded on first use and dropped past a bound (issue #21; BlockMap.makeLazy). */
  readonly roots: RootCache

  /**
   * Lets `volume`'s root be dropped and read again from the catalog when it is a backup's (disks' and
   * clones' change: they keep theirs), persisted and not dirty: at the open (`unloadedCount`: not read
   * yet), and after the commit that wrote it. A root that fails its check when read fails what asked
   * for it with CORRUPT (logged), not the open; `vdiskfs verify` reads every root.
   */
  lazyRoot (volume: Volume, unloadedCount?: number): void {
    if (volume.kind !== 'backup' || !volume.persisted || volume.map.rootDirty) return
    const id = volume.id
    volume.map.makeLazy(() => {
      // A list whose piece is missing or fails its hash is damage as a dense root's that fails its check.
      const stored = this.catalog.rootState(id)
      if (stored === undefined) throw new VdiskError('CORRUPT', `${volume.label}: its map root is missing from the catalog: run vdiskfs repair on the pool`)
      try {
        if ('damaged' in stored) throw new RangeError(stored.damaged)
        return decodeRoot(stored.root, volume.map.rootLength, id)
      } catch (err) {
        const message = `${volume.label}: its map root is damaged (${(err as Error).message}): run vdiskfs repair on the pool`
        this.log(message)
        throw new VdiskError('CORRUPT', message, { cause: err })
      }
    }, this.roots, unloadedCount)
  }
  /**
   * Names ("kind/name") that an operation checked free and will create after an `await` (a backup
   * waiting for its source's writes to drain, a copy, a promote, an import finishing), each with a
   * promise settled when the operation ends: no other operation may take them meanwhile. Another
   * creator of the name waits for the holder (waitForName) and then decides: EXISTS when the holder
   * made it, the name otherwise (namespace.ts, import.ts).
   */
  readonly reservedNames = new Map<string, Promise<void>>()

  /**
   * Waits until no operation holds `key` ("kind/name"), then runs `decide` in the same turn as the
   * last look (no await between): it throws (EXISTS) or takes the name (makes the volume, or holds it
   * with reserveName). A separate wait-then-check would leave a turn between them, in which a second
   * waiter could take the name first.
   */
  async whenNameFree<T> (key: string, decide: () => T): Promise<T> {
    for (let held = this.reservedNames.get(key); held !== undefined; held = this.reservedNames.get(key)) await held
    return decide()
  }

  /** Holds `key` until the returned release is called (once, when the operation ends either way). */
  reserveName (key: string): () => void {
    if (this.reservedNames.has(key)) throw new Error(`name ${key} is held already`)
    let release = (): void => {}
    this.reservedNames.set(key, new Promise<void>(resolve => { release = resolve }))
    return () => {
      this.reservedNames.delete(key)
      release()
    }
  }
  /** Volumes removed since the last commit whose rows the catalog still holds. */
  readonly removed = new Set<number>()
  nextVolumeId: number
  nextExtentId: number
  nextEpoch: number
  readonly activeExtents = new Map<number, Promise<DeltaExtent>>()
  changedSinceCommit = false
  /**
   * While a seal pass runs: its repoints of clean pages wait for its own commit (commit.ts, with
   * `full`), and the other commits leave them out (docs/CONCURRENCY.md, "A seal pass's repoints wait
   * for its own commit"). Set and cleared by Maintenance.deferRepoints.
   */
  repointsDeferred = false
  /** Counts changes, so that derived reports (space accounting) know when to recompute. */
  generation = 0
  /**
   * open -> closing (background work is cancelled and waited for) -> closed. A commit while closing
   * is the final one and runs; a commit after close is an error, never a silent no-op.
   */
  lifecycle: 'open' | 'closing' | 'closed' = 'open'

  readonly sizeOf = (entry: number): number => {
    const kind = entryKind(entry)
    if (kind === entryKindDelta) return this.header.blockBytes
    if (kind === entryKindChunk) return this.chunks.storedBytes(entryChunkId(entry))
    return 0
  }

  constructor (readonly dir: string, readonly header: PoolHeader, readonly catalog: Catalog, options: StateOptions) {
    this.log = options.log ?? (() => {})
    this.freeSpace = new FreeSpace(dir)
    this.io = options.io ?? nodeFileIo
    this.extents = new ExtentStore(path.join(dir, extentsDir), header.blockBytes, () => this.writableExtentIds(), this.io)
    this.workers = new WorkerPool({ blockBytes: header.blockBytes, zstdLevel: header.zstdLevel ?? zstdLevelDefault, threads: options.workers, warm: options.warmWorkers === true })
    this.chunks = new ChunkStore(path.join(dir, packsDir), catalog, header.blockBytes, this.workers, this.log, this.io, options.chunkCacheMax)
    this.ingest = new Ingest(this.workers, this.chunks, header.blockBytes, bytes => this.claimSpace(bytes))
    this.pages = new PageStore(catalog, options.pageCacheMax, options.pageRefsBytesMax)
    this.refs = new RefCounts({ refsOf: id => this.pages.refsOf(id), underSlot: entry => underSlot(this.extents, entry) })
    this.pages.counts = this.refs
    this.volumes = new VolumeTable(this.refs)
    this.roots = new RootCache(options.rootCacheBytesMax ?? rootCacheBytesMax)
    this.catalogLog = CatalogLog.open(path.join(dir, catalogLogFile), catalog, this.io)
    if (this.catalogLog.detached) this.log(`${catalogLogFile} was written by another catalog (this one was truncated, rebuilt or replaced): it is left as it is for vdiskfs repair`)
    this.nextVolumeId = catalog.maxVolumeId() + 1
    this.nextExtentId = catalog.maxExtentId() + 1
    this.nextEpoch = Number(catalog.getMeta('next_epoch') ?? '1')
    this.extents.log = this.log
    this.journal = new ChangeJournal(dir, Number(catalog.getMeta('journal_seq') ?? '0'), this.log, options.bootId)
  }

  get blockBytes (): number { return this.header.blockBytes }

  /** Claims room for `bytes` of new data; throws NO_SPACE when the pool's filesystem is nearly full. */
  claimSpace (bytes: number): void { this.freeSpace.claim(bytes) }

  /** The pool's filesystem's figures (statfs). Errors: IO. */
  async statfs (): Promise<FilesystemStat> { return await this.freeSpace.statfs() }

  /** Records a change for the next commit. */
  changed (_volume?: Volume): void {
    this.changedSinceCommit = true
    this.generation++
  }

  /**
   * Chunks that imports in progress hold without rows in the catalog (a lazy pull's import keeps its
   * rows in memory, import.ts): one set per import session, changed only under the maintenance lock.
   */
  readonly importsHeldInMemory = new Set<Set<number>>()

  /** Chunks unfinished imports hold (live for gc): their rows in the catalog, and those kept in memory. */
  heldChunkIds (): Set<number> {
    const held = new Set(this.catalog.heldChunkIds())
    for (const ids of this.importsHeldInMemory) for (const id of ids) held.add(id)
    return held
  }

  /** Extents some volume may still write (creating or writable); sealing and gc leave them alone. */
  writableExtentIds (): Set<number> {
    const writable = new Set<number>()
    for (const volume of this.volumes.values()) for (const id of volume.writableExtents) writable.add(id)
    return writable
  }

  // ---- the extent each volume writes into ----

  async activeExtent (volume: Volume): Promise<DeltaExtent> {
    let pending = this.activeExtents.get(volume.id)
    if (pending !== undefined) {
      const extent = await pending
      if (!extent.full && extent.id === volume.activeExtentId) return extent
      if (this.activeExtents.get(volume.id) !== pending) return await this.activeExtent(volume)
    }
    pending = this.openActiveExtent(volume)
    this.activeExtents.set(volume.id, pending)
    pending.catch(() => { if (this.activeExtents.get(volume.id) === pending) this.activeExtents.delete(volume.id) })
    return await pending
  }

  private async openActiveExtent (volume: Volume): Promise<DeltaExtent> {
    if (volume.activeExtentId !== null) {
      const extent = await this.extents.get(volume.activeExtentId)
      if (!extent.full) return extent
    }
    const id = this.nextExtentId++
    // The row goes in before any map can point at the extent; an unused extent is garbage for gc.
    // The extent is writable from this moment (creating): sealing and gc leave writable extents
    // alone, so none of them can seal or drop it while its file is still being made.
    this.catalog.insertExtent({ id, volumeId: volume.id, createdMs: Date.now() })
    this.journal.extent(id)
    volume.writableExtents.add(id)
    let extent: DeltaExtent
    try {
      extent = await this.extents.create(id, volume.id)
    } catch (err) {
      volume.writableExtents.delete(id)
      throw err
    }
    // Nothing changed activeExtentId during create: openActiveExtent runs only inside a write or discard
    // (inflight counted), and every freeze (freezeActiveExtent, freezeForSealing) runs under
    // volume.pause(), which waits for those; activeExtents keeps a second open for the volume out.
    // eslint-disable-next-line require-atomic-updates -- see above: no freeze can run while this write is in flight
    volume.activeExtentId = id
    // eslint-disable-next-line require-atomic-updates -- as for activeExtentId above
    volume.rowDirty = true
    return extent
  }

  /**
   * Takes what the fast path's first writes queued into the maps (fast-reads.ts settle(); a no-op
   * without it). Called before anything reads a map on its own account: commits, gc and seal passes,
   * and every volume operation (Volume.settle). Synchronous. With `journalFd` (a commit, after it
   * rotated the change journal), the addon's records go to the file it opens from the same step on.
   */
  settleNative: (journalFd?: () => number) => void = () => {}

  /** The FUSE addon's lease of the volume's slots in extent `id`: its next slot, taken (-1: none left). */
  leasedSlot: ((volume: Volume, id: number) => number) | null = null

  claimSlot (volume: Volume, extent: DeltaExtent): number {
    const leased = this.leasedSlot === null ? -1 : this.leasedSlot(volume, extent.id)
    return leased >= 0 ? leased : extent.nextSlot++
  }

  /**
   * Up to `count` slots of the volume's active extent for the fast path's first writes, with the room
   * for them claimed; null when it has none open and writable, or the pool's filesystem is nearly full.
   */
  leaseSlots (volume: Volume, count: number): { id: number, first: number, end: number, bases: number } | null {
    const id = volume.activeExtentId
    if (id === null || !volume.writableExtents.has(id) || this.extents.suspect.has(id)) return null
    const range = this.extents.leaseSlots(id, count)
    if (range === null) return null
    try {
      this.claimSpace((range.end - range.first) * this.header.blockBytes)
    } catch {
      this.extents.unleaseSlots(id, range.first, range.end)
      return null
    }
    return { id, ...range }
  }

  /** Freezes every extent a volume writes in place: later writes go to a new one. */
  freezeActiveExtent (volume: Volume): void {
    this.journal.freeze(volume.id)
    this.activeExtents.delete(volume.id)
    volume.activeExtentId = null
    volume.writableExtents.clear()
    volume.rowDirty = true
  }

  /** Closes every store; the catalog last. */
  async closeStores (): Promise<void> {
    await this.extents.closeAll()
    await this.chunks.close()
    await this.workers.close()
    await this.catalogLog.close()
    this.journal.close()
    this.catalog.close()
  }
}

/**
 * The pool's volumes by id: a Map that attaches each volume's map to the page reference counts while
 * it is in the table (its root counted once; every later root change told to the counts by the map),
 * and detaches it when it leaves (its root uncounted). Every way into or out of the pool goes through
 * set and delete (open, create, backup, clone, copy, import, rm, dropHidden).
 */
export class VolumeTable extends Map<number, Volume> {
  constructor (private readonly counts: RefCounts) { super() }

  /**
   * The volumes by kind and name (issue #21: a look-up by name walked every volume, 1.8 ms per backup's
   * name check and per FUSE LOOKUP at 10,000 backups). Kept in the step of every change: a volume
   * entering or leaving the table, and its kind or name set (Volume.renamed). Names are unique per kind
   * in the table (the catalog's rows, the namespace's checks); `byName` checks the hit all the same.
   */
  private readonly names = new Map<string, Volume>()

  byName (kind: VolumeKind, name: string): Volume | undefined {
    const volume = this.names.get(`${kind}/${name}`)
    return volume !== undefined && volume.kind === kind && volume.name === name && super.get(volume.id) === volume ? volume : undefined
  }

  private readonly onRename = (volume: Volume, oldKey: string): void => {
    if (this.names.get(oldKey) === volume) this.names.delete(oldKey)
    this.names.set(volume.key, volume)
  }

  override set (id: number, volume: Volume): this {
    const old = super.get(id)
    if (old === volume) return this
    if (old !== undefined) this.detach(old)
    super.set(id, volume)
    volume.map.counts = this.counts
    this.counts.rootAll(volume.map.root, 1)
    this.names.set(volume.key, volume)
    volume.renamed = this.onRename
    return this
  }

  /**
   * `volume` enters the table at the open with its root not counted: the open takes the page counts
   * from what the last clean close stored, or counts every root (`roots`), before anything changes.
   */
  setUncounted (id: number, volume: Volume): void {
    super.set(id, volume)
    volume.map.counts = this.counts
    this.names.set(volume.key, volume)
    volume.renamed = this.onRename
  }

  /**
   * Every volume's root, one at a time (issue #21): a backup's not in memory is read when its turn
   * comes and not kept (BlockMap.peekRoot: a walk of every root would push out those readers use).
   */
  * roots (): Generator<RootIds> {
    for (const volume of super.values()) yield volume.map.peekRoot()
  }

  override delete (id: number): boolean {
    const old = super.get(id)
    if (old === undefined) return false
    this.detach(old)
    return super.delete(id)
  }

  override clear (): void {
    for (const volume of super.values()) this.detach(volume)
    this.names.clear()
    super.clear()
  }

  private detach (volume: Volume): void {
    // Kept in memory from here (a handle may still read it; its row goes with the next commit): a
    // root is read from the catalog only while its volume is in the table.
    volume.map.pinRoot()
    this.counts.rootAll(volume.map.root, -1)
    volume.map.counts = null
    if (this.names.get(volume.key) === volume) this.names.delete(volume.key)
    volume.renamed = null
  }
}

/**
 * A pool: a directory holding the header, the catalog and the delta extents (format/pool-format.ts),
 * and the volumes in it. This is the volume layer's entry point: namespace operations (create, rename,
 * remove), backups, clones and restores, and commit, which makes everything written so far durable.
 *
 * Durability order (DESIGN.md): commit first makes the extents durable (fdatasync), then writes the
 * metadata that points at them in one SQLite transaction. Metadata never points at unsynced bytes.
 *
 * Assumes: one Pool per pool directory at a time, enforced by the catalog's exclusive lock.
 * Errors: open() throws INVALID (not a pool, newer format), BUSY (in use), CORRUPT, IO; namespace
 * operations throw NOT_FOUND, EXISTS, INVALID, READ_ONLY.
 */
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { randomUUID } from 'node:crypto'
import { Catalog, VolumeKind, VolumeRow, defaultModeOf } from '../catalog/catalog'
import { VdiskError, exists, fromSystemError, invalid, notFound, readOnly } from '../errors'
import { decodeRoot, encodeRoot, entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entryKindLost, entrySlot } from '../format/map-format'
import { PoolHeader, catalogFile, catalogLogFile, extentsDir, packsDir, poolFormatVersion, poolHeaderFile, poolMagic } from '../format/pool-format'
import { assertLimits, blockBytesDefault, extentIdleMs, inUseGraceMs, metadataReserveBytes, packLiveFractionMin, statfsIntervalMs, volumeNamePattern, writableExtentsMax, zstdLevelDefault } from '../limits'
import { ChunkStore } from '../chunk/chunk-store'
import { WorkerPool } from '../chunk/worker-pool'
import { BlockMap } from '../map/block-map'
import { Page, PageStore } from '../map/page-store'
import { DeltaExtent, ExtentStore } from '../extent/delta-extent'
import { FileIo, nodeFileIo } from '../io/file-io'
import { CatalogLog } from '../catalog/catalog-log'
import { Volume, VolumeContext } from './volume'
import { securePoolDirectory } from './pool-access'

export interface OpenOptions {
  /** Create the pool when the directory does not exist or is empty. */
  create?: boolean
  blockBytes?: number
  /** zstd level of a new pool. */
  zstdLevel?: number
  /** Worker threads for hashing and compression (default: the number of cores; 0 = main thread, benchmark only). */
  workers?: number
  log?: (message: string) => void
  /** The file I/O under extents and packs (tests put a fault-injecting one here). */
  io?: FileIo
  /** Clean map pages kept in memory (default pageCacheMax; tests make it tiny). */
  pageCacheMax?: number
}

export interface GcReport {
  pagesFreed: number
  extentsFreed: number
  chunksFreed: number
  packsFreed: number
  packBytesFreed: number
  /** Why gc freed nothing: the catalog is damaged (lost blocks, unreadable pages, dangling references). */
  held?: string
}

export class Pool implements VolumeContext {
  readonly extents: ExtentStore
  readonly chunks: ChunkStore
  readonly workers: WorkerPool
  private readonly pages: PageStore
  get pageStore (): PageStore { return this.pages }
  private maintenance: Promise<unknown> = Promise.resolve()
  private readonly volumes = new Map<number, Volume>()
  private readonly removed = new Set<number>()
  private nextVolumeId: number
  private nextExtentId: number
  private nextEpoch: number
  private readonly activeExtents = new Map<number, Promise<DeltaExtent>>()
  private commitRunning: Promise<void> = Promise.resolve()
  private commitQueued: Promise<void> | null = null
  private changedSinceCommit = false
  /**
   * open -> closing (background work is cancelled and waited for) -> closed. A commit while closing
   * is the final one and runs; a commit after close is an error, never a silent no-op.
   */
  private state: 'open' | 'closing' | 'closed' = 'open'
  /**
   * Set when an fdatasync failed: Linux drops the dirty pages and a retry "succeeds", so nothing
   * written since the last commit can be trusted. Every later commit fails with this error (fsync
   * answers EIO) until the pool is opened again, which starts from the last good commit.
   */
  private syncFailure: VdiskError | null = null

  readonly sizeOf = (entry: number): number => {
    const kind = entryKind(entry)
    if (kind === entryKindDelta) return this.header.blockBytes
    if (kind === entryKindChunk) return this.chunks.storedBytes(entryChunkId(entry))
    return 0
  }

  private readonly log: (message: string) => void
  private readonly io: FileIo
  /** The second copy of volumes and map pages that repair rebuilds a lost catalog from. */
  readonly catalogLog: CatalogLog

  private constructor (readonly dir: string, readonly header: PoolHeader, readonly catalog: Catalog, options: OpenOptions) {
    this.log = options.log ?? (() => {})
    this.io = options.io ?? nodeFileIo
    this.extents = new ExtentStore(path.join(dir, extentsDir), header.blockBytes, () => this.writableExtentIds(), this.io)
    this.workers = new WorkerPool({ blockBytes: header.blockBytes, zstdLevel: header.zstdLevel ?? zstdLevelDefault, threads: options.workers })
    this.chunks = new ChunkStore(path.join(dir, packsDir), catalog, header.blockBytes, this.workers, this.log, this.io)
    this.pages = new PageStore(catalog, options.pageCacheMax)
    this.catalogLog = CatalogLog.open(path.join(dir, catalogLogFile), catalog, this.io)
    if (this.catalogLog.detached) this.log(`${catalogLogFile} was written by another catalog (this one was truncated, rebuilt or replaced): it is left as it is for vdiskfs repair`)
    this.nextVolumeId = catalog.maxVolumeId() + 1
    this.nextExtentId = catalog.maxExtentId() + 1
    this.nextEpoch = Number(catalog.getMeta('next_epoch') ?? '1')
    for (const row of catalog.volumes()) this.volumes.set(row.id, this.volumeFromRow(row))
    this.extents.log = this.log
    this.markOpen()
  }

  /**
   * Records that the pool is open (a clean close records the opposite). After an unclean stop the
   * extents that were writable at the last commit are suspect: sectors written after that commit may
   * have reached the disk without their checksums, or the reverse (delta-extent.ts). They are read
   * unchecked until recover() recomputes their checksums; the list is kept in the catalog until then.
   */
  private markOpen (): void {
    const parse = (key: string): number[] => { try { return JSON.parse(this.catalog.getMeta(key) ?? '[]') as number[] } catch { return [] } }
    const suspect = new Set(parse('suspect_extents'))
    if (this.catalog.getMeta('clean_close') !== '1') for (const id of parse('writable_extents')) suspect.add(id)
    for (const id of suspect) this.extents.suspect.add(id)
    this.persistedWritable = this.catalog.getMeta('writable_extents') ?? '[]'
    this.catalog.transaction(() => {
      this.catalog.setMeta('clean_close', '0')
      this.catalog.setMeta('suspect_extents', JSON.stringify([...suspect]))
    })
  }

  /** The writable extent list as last committed (see markOpen). */
  private persistedWritable = '[]'

  /**
   * Recomputes the checksums of suspect extents (after an unclean stop) from what their referenced
   * slots hold, and checks them from then on. Runs at daemon start; reads are correct before it too.
   */
  async recover (): Promise<number> {
    return await this.exclusive(async () => {
      let changed = 0
      const known = new Set(this.catalog.extents().map(e => e.id))
      for (const id of [...this.extents.suspect]) {
        if (!known.has(id)) { this.extents.suspect.delete(id); continue }
        try {
          const sectors = await this.extents.recoverSuspect(id, this.referencedSlots(id))
          if (sectors > 0) this.log(`recovery: delta extent ${id} was being written when the pool stopped uncleanly; ${sectors} sectors changed after the last commit, kept as written`)
          changed += sectors
        } catch (err) {
          this.log(`recovery: delta extent ${id}: ${(err as Error).message}; it stays unchecked`)
        }
      }
      this.catalog.setMeta('suspect_extents', JSON.stringify([...this.extents.suspect]))
      return changed
    })
  }

  get blockBytes (): number { return this.header.blockBytes }

  /** Opens the pool in `dir`, creating it when asked and the directory is missing or empty. */
  static open (dir: string, options: OpenOptions = {}): Pool {
    dir = path.resolve(dir)
    const header = readOrCreateHeader(dir, options)
    securePoolDirectory(dir)
    assertLimits(header.blockBytes)
    makeDurableDirectory(dir, extentsDir)
    makeDurableDirectory(dir, packsDir)
    const catalog = Catalog.open(path.join(dir, catalogFile), true)
    try {
      return new Pool(dir, header, catalog, options)
    } catch (err) {
      catalog.close()
      throw err
    }
  }

  private volumeFromRow (row: VolumeRow): Volume {
    const blocks = Math.ceil(row.size / this.blockBytes)
    const pageCount = BlockMap.pagesFor(blocks)
    let root: Float64Array
    try {
      root = decodeRoot(row.root, pageCount, row.id)
    } catch (err) {
      throw new VdiskError('CORRUPT', `${row.kind} ${row.name}: its map root is damaged (${(err as Error).message}): run vdiskfs repair on the pool`, { cause: err })
    }
    const map = new BlockMap(this.pages, root, row.epoch, row.allocatedBlocks, row.storedBytes, this.sizeOf)
    const volume = new Volume(this, row.id, row.kind, row.name, row.size, row.createdMs, row.mtimeMs, row.sourceId, row.sourceLabel, map, row.activeExtent)
    volume.persisted = true
    volume.uid = row.uid
    volume.gid = row.gid
    volume.mode = row.mode
    return volume
  }

  // ---- VolumeContext ----

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
    volume.writableExtents.add(id)
    let extent: DeltaExtent
    try {
      extent = await this.extents.create(id, volume.id)
    } catch (err) {
      volume.writableExtents.delete(id)
      throw err
    }
    volume.activeExtentId = id
    volume.rowDirty = true
    return extent
  }

  /** Freezes every extent a volume writes in place: later writes go to a new one. */
  private freezeActiveExtent (volume: Volume): void {
    this.activeExtents.delete(volume.id)
    volume.activeExtentId = null
    volume.writableExtents.clear()
    volume.rowDirty = true
  }

  private freeBytes = Number.POSITIVE_INFINITY
  private claimedSinceStatfs = 0
  private statfsAtMs = 0
  private statfsRunning = false

  claimSpace (bytes: number): void {
    const now = Date.now()
    if (!this.statfsRunning && (now - this.statfsAtMs >= statfsIntervalMs || this.claimedSinceStatfs > metadataReserveBytes / 4)) {
      this.statfsRunning = true
      fs.statfs(this.dir, (err, stat) => {
        this.statfsRunning = false
        if (err !== null) return
        this.freeBytes = stat.bavail * stat.bsize
        this.claimedSinceStatfs = 0
        this.statfsAtMs = Date.now()
      })
    }
    if (this.freeBytes - this.claimedSinceStatfs - bytes < metadataReserveBytes) {
      // Before refusing, look again (a statfs of a local directory; only on this rare path): space
      // may have come back since the cached figure, from gc or from outside.
      try {
        const stat = fs.statfsSync(this.dir)
        this.freeBytes = stat.bavail * stat.bsize
        this.claimedSinceStatfs = 0
        this.statfsAtMs = Date.now()
      } catch {}
    }
    if (this.freeBytes - this.claimedSinceStatfs - bytes < metadataReserveBytes) {
      throw new VdiskError('NO_SPACE', `the pool's filesystem is full (less than ${metadataReserveBytes >> 20} MiB free, kept for metadata)`)
    }
    this.claimedSinceStatfs += bytes
  }

  changed (_volume: Volume): void {
    this.changedSinceCommit = true
    this.generation++
  }

  /** Counts changes, so that derived reports (space accounting) know when to recompute. */
  generation = 0

  get hasUncommittedChanges (): boolean { return this.changedSinceCommit || this.pages.dirtyCount > 0 }

  // ---- namespace ----

  list (kind?: VolumeKind): Volume[] {
    return [...this.volumes.values()].filter(v => kind === undefined || v.kind === kind)
  }

  /** The volume named `name`; one the pool hid itself (remove with force) answers to no name. */
  find (kind: VolumeKind, name: string): Volume | undefined {
    if (name.startsWith(removedPrefix)) return undefined
    for (const volume of this.volumes.values()) if (volume.kind === kind && volume.name === name) return volume
    return undefined
  }

  byId (id: number): Volume | undefined { return this.volumes.get(id) }

  get (kind: VolumeKind, name: string): Volume {
    const volume = this.find(kind, name)
    if (volume === undefined) throw notFound(`${kind} ${name}`)
    return volume
  }

  private checkNewName (kind: VolumeKind, name: string): void {
    checkName(name)
    if (this.find(kind, name) !== undefined) throw exists(`${kind} ${name}`)
  }

  private newVolume (kind: VolumeKind, name: string, size: number, root: Float64Array, counts: { allocatedBlocks: number, storedBytes: number }, source: Volume | null): Volume {
    const now = Date.now()
    const map = new BlockMap(this.pages, root, this.nextEpoch++, counts.allocatedBlocks, counts.storedBytes, this.sizeOf)
    map.rootDirty = true
    const volume = new Volume(this, this.nextVolumeId++, kind, name, size, now, now, source?.id ?? null, source?.label ?? null, map, null)
    // Backups and clones belong to their source's owner; a new disk to the daemon's user.
    volume.uid = source?.uid ?? process.getuid?.() ?? 0
    volume.gid = source?.gid ?? process.getgid?.() ?? 0
    volume.mode = defaultModeOf(kind)
    volume.rowDirty = true
    this.volumes.set(volume.id, volume)
    this.changed(volume)
    return volume
  }

  /** Creates an empty disk; durable on return. */
  async createDisk (name: string): Promise<Volume> {
    this.checkNewName('disk', name)
    const volume = this.newVolume('disk', name, 0, new Float64Array(0), { allocatedBlocks: 0, storedBytes: 0 }, null)
    await this.commit()
    return volume
  }

  /**
   * Renames a disk or clone within its kind, replacing `newName` if it exists (as rename(2); a replaced
   * volume still open is kept for its handles, as remove with force keeps it). `hide`: the FUSE layer
   * hides a volume unlinked while open under a hidden name (libfuse's .fuse_hidden*); only an open
   * volume can be hidden, and it is removed at its last release (`released`).
   * Errors: READ_ONLY for a backup, INVALID for a bad name or hiding a volume nobody holds open.
   */
  async rename (volume: Volume, newName: string, hide = false): Promise<void> {
    if (volume.kind === 'backup') throw readOnly(`backup ${volume.name}`)
    if (!hide) checkName(newName)
    else if (!newName.startsWith('.') || volume.openHandles === 0) throw invalid(`invalid name '${newName}': names starting with '.' are libfuse's, for files unlinked while open`)
    if (newName === volume.name) return
    const target = this.find(volume.kind, newName)
    if (target !== undefined) {
      if (target.openHandles > 0) this.hide(target)
      else this.forget(target)
    }
    volume.name = newName
    volume.rowDirty = true
    this.changed(volume)
    await this.commit()
  }

  /**
   * Removes a volume; its data stays as long as another volume's map references it. A volume with open
   * handles is refused (BUSY) unless `force`; forced, it goes as unlink(2) goes: out of the namespace
   * now (its name is free again), readable and writable by its holders, removed at the last release.
   */
  async remove (volume: Volume, options: { force?: boolean } = {}): Promise<void> {
    if (await this.inUse(volume, options.force === true)) this.hide(volume)
    else this.forget(volume)
    await this.commit()
  }

  /** A handle on `volume` was opened (the FUSE adapter's open and create). */
  opened (volume: Volume): void {
    volume.openHandles++
  }

  /** A handle on `volume` was released; the last one of a volume removed while open removes it. */
  async released (volume: Volume): Promise<void> {
    assert.ok(volume.openHandles > 0, 'release without open')
    volume.openHandles--
    if (volume.openHandles > 0 || !volume.hidden || this.volumes.get(volume.id) !== volume) return
    this.forget(volume)
    await this.commit()
  }

  /**
   * Drops the volumes a crash left hidden (removed while open: no handle survives a restart); their
   * data is then garbage for gc. Returns their labels.
   */
  async dropHidden (): Promise<string[]> {
    const hidden = [...this.volumes.values()].filter(v => v.hidden)
    for (const volume of hidden) this.forget(volume)
    if (hidden.length > 0) await this.commit()
    return hidden.map(v => v.label)
  }

  /**
   * Whether `volume` is held open, after up to inUseGraceMs for releases on their way (the kernel sends
   * RELEASE after close(2) or losetup -d has returned). Throws BUSY when it is and `force` is not set,
   * NOT_FOUND when it was removed meanwhile.
   */
  private async inUse (volume: Volume, force: boolean): Promise<boolean> {
    for (let waitedMs = 0; !force && volume.openHandles > 0 && waitedMs < inUseGraceMs; waitedMs += 10) {
      await new Promise(resolve => setTimeout(resolve, 10))
    }
    if (this.volumes.get(volume.id) !== volume || volume.hidden) throw notFound(volume.label)
    if (volume.openHandles > 0 && !force) {
      throw new VdiskError('BUSY', `${volume.label} is in use (${volume.openHandles} open handle${volume.openHandles === 1 ? '' : 's'}): close it first, or use --force`)
    }
    return volume.openHandles > 0
  }

  /** Takes an open volume out of the namespace under a hidden name, committed as such (see Volume.hidden). */
  private hide (volume: Volume): void {
    volume.name = `${removedPrefix}${volume.id}`
    volume.rowDirty = true
    this.changed(volume)
  }

  private forget (volume: Volume): void {
    this.volumes.delete(volume.id)
    this.activeExtents.delete(volume.id)
    if (volume.persisted) this.removed.add(volume.id)
    this.changed(volume)
  }

  /**
   * Takes an immutable point-in-time backup of a disk or clone. Every write acknowledged before the
   * call is in it. Cost: a copy of the root (8 bytes per 256 MiB of address space) plus one commit.
   */
  async backup (source: Volume, name: string): Promise<Volume> {
    if (source.kind === 'backup') throw invalid(`${source.name} is a backup; back up a disk or a clone`)
    this.checkNewName('backup', name)
    await source.pause()
    let backup: Volume
    try {
      backup = this.newVolume('backup', name, source.size, source.map.copyRoot(), source.map, source)
      // From now on every page of the source is shared: the source copies before it changes one.
      source.map.epoch = this.nextEpoch++
      this.freezeActiveExtent(source)
    } finally {
      source.resume()
    }
    await this.commit()
    return backup
  }

  /** Creates a writable copy-on-write clone standing on a backup. */
  async clone (backup: Volume, name: string): Promise<Volume> {
    if (backup.kind !== 'backup') throw invalid(`${backup.name} is a ${backup.kind}; clones stand on backups (take one with 'vdiskfs backup')`)
    this.checkNewName('clone', name)
    const clone = this.newVolume('clone', name, backup.size, backup.map.copyRoot(), backup.map, backup)
    await this.commit()
    return clone
  }

  /**
   * Points a disk or clone back at a backup's content (O(1), keeps every backup). Refused (BUSY) while
   * the target is held open, unless `force`: its holder would see its content change underneath.
   */
  async restore (backup: Volume, target: Volume, options: { force?: boolean } = {}): Promise<void> {
    if (backup.kind !== 'backup') throw invalid(`${backup.name} is a ${backup.kind}, not a backup`)
    if (target.kind === 'backup') throw readOnly(`backup ${target.name}`)
    await this.inUse(target, options.force === true)
    await target.pause()
    try {
      target.map.root = backup.map.copyRoot()
      target.map.rootDirty = true
      target.map.epoch = this.nextEpoch++
      target.map.allocatedBlocks = backup.map.allocatedBlocks
      target.map.storedBytes = backup.map.storedBytes
      target.size = backup.size
      target.mtimeMs = Date.now()
      target.rowDirty = true
      this.freezeActiveExtent(target)
      this.changed(target)
    } finally {
      target.resume()
    }
    await this.commit()
  }

  // ---- durability ----

  /**
   * Makes every change made before the call durable. Concurrent callers share commits: a call made
   * while one runs waits for the next, which starts after it and so includes its changes.
   */
  async commit (): Promise<void> {
    if (this.commitQueued !== null) return await this.commitQueued
    const queued = this.commitRunning.catch(() => {}).then(async () => {
      this.commitQueued = null
      await this.commitNow()
    })
    this.commitQueued = queued
    this.commitRunning = queued
    return await queued
  }

  private async commitNow (): Promise<void> {
    if (this.state === 'closed') throw new VdiskError('IO', 'the pool is closed: nothing more can be committed')
    if (this.syncFailure !== null) throw this.syncFailure
    // Snapshot synchronously: everything in it was fully written before this point.
    this.changedSinceCommit = false
    const pages = this.pages.takeDirty()
    const rows: Array<{ volume: Volume, row: VolumeRow, withRoot: boolean, insert: boolean }> = []
    for (const volume of this.volumes.values()) {
      if (!volume.rowDirty && !volume.map.rootDirty && volume.persisted) continue
      rows.push({ volume, row: this.rowOf(volume, volume.map.rootDirty || !volume.persisted), withRoot: volume.map.rootDirty || !volume.persisted, insert: !volume.persisted })
      volume.rowDirty = false
      volume.map.rootDirty = false
    }
    const removed = [...this.removed]
    const nextEpoch = this.nextEpoch
    const writable = JSON.stringify([...this.writableExtentIds()].sort((a, b) => a - b))
    try {
      try {
        await this.extents.syncPending()
      } catch (err) {
        if (!(err instanceof VdiskError && err.code === 'NO_SPACE')) {
          this.syncFailure = new VdiskError('IO', `an fdatasync of the pool's extents failed (${(err as Error).message}); ` +
            'writes since the last commit may be lost, so vdiskfs refuses every further commit until the pool is mounted again', { cause: err })
          this.log(this.syncFailure.message)
          throw this.syncFailure
        }
        throw err
      }
      // The log copy first, then the catalog: the log always holds at least what the catalog does.
      await this.catalogLog.append({ removed, pages, rows, meta: { next_epoch: String(nextEpoch) } })
      this.catalog.transaction(() => {
        for (const id of removed) this.catalog.deleteVolume(id)
        for (const page of pages) this.catalog.putPage(page.id, page.epoch, page.entries)
        for (const { row, withRoot, insert } of rows) {
          if (insert) this.catalog.insertVolume(row)
          else this.catalog.updateVolume(row, withRoot)
        }
        this.catalog.setMeta('next_epoch', String(nextEpoch))
        if (writable !== this.persistedWritable) this.catalog.setMeta('writable_extents', writable)
      })
    } catch (err) {
      for (const { volume, withRoot } of rows) { volume.rowDirty = true; if (withRoot) volume.map.rootDirty = true }
      this.changedSinceCommit = true
      throw fromSystemError(err, 'committing the catalog')
    }
    this.pages.committed(pages)
    this.persistedWritable = writable
    for (const id of removed) this.removed.delete(id)
    for (const { volume, insert } of rows) if (insert) volume.persisted = true
    await this.catalogLog.afterCommit().catch(err => this.log(`rewriting ${catalogLogFile} failed (the old one stays in use): ${(err as Error).message}`))
  }

  private rowOf (volume: Volume, withRoot: boolean): VolumeRow {
    return {
      id: volume.id,
      kind: volume.kind,
      name: volume.name,
      size: volume.size,
      createdMs: volume.createdMs,
      mtimeMs: volume.mtimeMs,
      sourceId: volume.sourceId,
      sourceLabel: volume.sourceLabel,
      epoch: volume.map.epoch,
      root: withRoot ? encodeRoot(volume.map.root, volume.id) : Buffer.alloc(0),
      allocatedBlocks: volume.map.allocatedBlocks,
      storedBytes: volume.map.storedBytes,
      activeExtent: volume.activeExtentId,
      uid: volume.uid,
      gid: volume.gid,
      mode: volume.mode
    }
  }

  /** Runs `work` alone among maintenance jobs (sealing, gc): they rewrite the same maps and chunks. */
  async exclusive<T> (work: () => Promise<T>): Promise<T> {
    if (this.state !== 'open') throw new VdiskError('BUSY', 'the pool is closing')
    const run = this.maintenance.catch(() => {}).then(work)
    this.maintenance = run
    return await run
  }

  /**
   * Frees map pages, delta extents and chunks that no volume references, and compacts packs whose
   * live fraction is low. What is live is decided synchronously after a commit, so no map can change
   * while it is decided; deletions follow the commit that made them garbage.
   */
  async gc (liveFractionMin = packLiveFractionMin): Promise<GcReport> {
    return await this.exclusive(async () => {
      await this.commit()
      const livePages = new Set<number>()
      const liveExtents = new Set<number>()
      const liveChunks = new Set<number>()
      // Only a healthy catalog proves anything unreferenced. A lost entry (it named something repair
      // could not find or prove), an unreadable page, or a reference to a chunk or extent the catalog
      // lacks means the maps are not the whole truth: then gc frees nothing (issue #9, item 6).
      let held: string | null = null
      for (const volume of this.volumes.values()) {
        for (const id of volume.writableExtents) liveExtents.add(id)
        for (const id of volume.map.root) if (id !== 0) livePages.add(id)
        try {
          volume.map.forEachEntry((block, entry) => {
            const kind = entryKind(entry)
            if (kind === entryKindDelta) liveExtents.add(entryExtentId(entry))
            else if (kind === entryKindChunk) liveChunks.add(entryChunkId(entry))
            else if (kind === entryKindLost && held === null) held = `${volume.label} block ${block} is lost`
          })
        } catch (err) {
          held ??= `${volume.label}: ${(err as Error).message}`
        }
      }
      const indexed = this.catalog.chunkIds()
      if (held === null) {
        const known = new Set(indexed)
        for (const id of liveChunks) if (!known.has(id)) { held = `chunk ${id} is referenced but missing from the index`; break }
      }
      if (held === null) {
        const known = new Set(this.catalog.extents().map(e => e.id))
        for (const id of liveExtents) if (!known.has(id) && id < this.nextExtentId) { held = `delta extent ${id} is referenced but missing from the catalog`; break }
      }
      const deadPages = held !== null ? [] : this.catalog.pageIds().filter(id => !livePages.has(id) && !this.pages.isDirty(id))
      const deadExtents = held !== null ? [] : this.catalog.extents().map(e => e.id).filter(id => !liveExtents.has(id) && id < this.nextExtentId)
      const deadChunks = held !== null ? [] : indexed.filter(id => !liveChunks.has(id))
      if (held !== null) this.log(`gc frees nothing while the catalog is damaged: ${held} (vdiskfs verify, vdiskfs repair)`)
      this.catalog.transaction(() => {
        for (const id of deadPages) this.catalog.deletePage(id)
        for (const id of deadExtents) this.catalog.deleteExtent(id)
      })
      this.catalog.retireChunks(deadChunks)
      this.chunks.forget(deadChunks)
      for (const id of deadPages) this.pages.drop(id)
      for (const id of deadExtents) await this.extents.remove(id)
      if (deadExtents.length > 0) await this.io.syncDirectory(path.join(this.dir, extentsDir))
      const compacted = await this.chunks.compact(liveFractionMin)
      return { pagesFreed: deadPages.length, extentsFreed: deadExtents.length, chunksFreed: deadChunks.length, packsFreed: compacted.packsFreed, packBytesFreed: compacted.bytesFreed, ...(held !== null ? { held } : {}) }
    })
  }

  // ---- sealing support (src/seal/sealer.ts) ----

  /** Extents some volume may still write (creating or writable); sealing and gc leave them alone. */
  writableExtentIds (): Set<number> {
    const writable = new Set<number>()
    for (const volume of this.volumes.values()) for (const id of volume.writableExtents) writable.add(id)
    return writable
  }

  /** Extents no volume writes to any more: ready to seal. */
  frozenExtents (): number[] {
    const writable = this.writableExtentIds()
    return this.catalog.extents().map(e => e.id).filter(id => !writable.has(id))
  }

  /**
   * Freezes the writable extents that are due for sealing: idle for extentIdleMs, past the cap of
   * writableExtentsMax per volume (oldest first), or every one (`all`, for `vdiskfs sync`). A volume's
   * writes in flight finish first, so no write lands in an extent after it froze.
   */
  async freezeForSealing (all: boolean): Promise<void> {
    for (const volume of [...this.volumes.values()]) {
      const ids = [...volume.writableExtents].sort((a, b) => a - b)
      const due = ids.filter((id, i) => all || this.extents.idleMs(id) >= extentIdleMs || i < ids.length - writableExtentsMax)
      if (due.length === 0) continue
      await volume.pause()
      try {
        for (const id of due) {
          volume.writableExtents.delete(id)
          if (volume.activeExtentId === id) {
            this.activeExtents.delete(volume.id)
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
   * Sealing blocks that are still being rewritten would turn each small write to them into a
   * read-modify-write of a whole chunk through the workers.
   */
  coldEnough (extentId: number): boolean {
    return this.extents.idleMs(extentId) >= extentIdleMs
  }

  /** Slots of `extentId` that some volume's map still references. */
  referencedSlots (extentId: number): number[] {
    const slots = new Set<number>()
    for (const volume of this.volumes.values()) {
      volume.map.forEachPage(page => {
        const entries = page.entries
        for (let i = 0; i < entries.length; i++) {
          const entry = entries[i]
          if (entry !== 0 && entryKind(entry) === entryKindDelta && entryExtentId(entry) === extentId) slots.add(entrySlot(entry))
        }
      })
    }
    return [...slots].sort((a, b) => a - b)
  }

  /**
   * Repoints every map entry that still names a slot of `extentId` at its new home (`mapping`: slot ->
   * entry). Pages are changed in place, shared ones included: their content does not change, only
   * where it lives. Synchronous, so no write interleaves; the caller commits.
   */
  repoint (extentId: number, mapping: Map<number, number>): void {
    const matches = (entry: number) => entry !== 0 && entryKind(entry) === entryKindDelta && entryExtentId(entry) === extentId && mapping.has(entrySlot(entry))
    // First every volume's counters (a shared page counts for each volume that reads it) ...
    const pages = new Set<Page>()
    for (const volume of this.volumes.values()) {
      volume.map.forEachPage(page => {
        const entries = page.entries
        for (let i = 0; i < entries.length; i++) {
          if (!matches(entries[i])) continue
          const next = mapping.get(entrySlot(entries[i])) as number
          if (next === 0) volume.map.allocatedBlocks--
          volume.map.storedBytes += this.sizeOf(next) - this.header.blockBytes
          pages.add(page)
        }
      })
      volume.rowDirty = true
    }
    // ... then each page once.
    for (const page of pages) {
      const entries = page.entries
      for (let i = 0; i < entries.length; i++) if (matches(entries[i])) entries[i] = mapping.get(entrySlot(entries[i])) as number
      this.pages.markDirty(page)
    }
    this.changedSinceCommit = true
    this.generation++
  }

  /** Recounts every volume's allocated blocks and stored bytes from its map (after repair). */
  recount (): void {
    for (const volume of this.volumes.values()) {
      let allocated = 0
      let stored = 0
      volume.map.forEachEntry((_block, entry) => { allocated++; stored += this.sizeOf(entry) })
      volume.map.allocatedBlocks = allocated
      volume.map.storedBytes = stored
      volume.rowDirty = true
    }
    this.changedSinceCommit = true
  }

  /** Deletes an extent that no committed map references any more. */
  async dropExtent (extentId: number): Promise<void> {
    this.catalog.deleteExtent(extentId)
    await this.extents.remove(extentId)
  }

  /**
   * Test seam for crash tests: lets go of the pool as a crash would (no commit, nothing flushed);
   * the catalog lock is released so the pool can be opened again in this process.
   */
  async abandon (): Promise<void> {
    if (this.state === 'closed') return
    this.state = 'closed'
    await this.maintenance.catch(() => {})
    await this.extents.closeAll()
    await this.chunks.close()
    await this.workers.close()
    await this.catalogLog.close()
    this.catalog.close()
  }

  /** True from the moment close() starts: background work checks it and stops. */
  get closing (): boolean { return this.state !== 'open' }

  /**
   * Cancels background work (a seal pass stops at its next batch; its chunks are indexed or dropped,
   * never half-referenced), waits for it, makes the final commit, and closes. The pool lock is
   * released. Throws what the final commit threw, after closing everything.
   */
  async close (): Promise<void> {
    if (this.state !== 'open') return
    this.state = 'closing'
    try {
      await this.maintenance.catch(() => {})
      await this.commit()
      // Everything is committed and no write can follow: nothing is suspect at the next open.
      this.catalog.setMeta('clean_close', '1')
    } finally {
      this.state = 'closed'
      await this.extents.closeAll()
      await this.chunks.close()
      await this.workers.close()
      await this.catalogLog.close()
      this.catalog.close()
    }
  }
}

/** The hidden name `remove` with force gives an open volume: `.removed-ID`. */
const removedPrefix = '.removed-'

export function checkName (name: string): void {
  if (!volumeNamePattern.test(name)) {
    throw invalid(`invalid name '${name}': use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit`)
  }
}

function readOrCreateHeader (dir: string, options: OpenOptions): PoolHeader {
  const headerPath = path.join(dir, poolHeaderFile)
  let text: string | undefined
  try {
    text = fs.readFileSync(headerPath, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code !== 'ENOENT' && code !== 'ENOTDIR') throw fromSystemError(err, `reading ${headerPath}`)
    if (code === 'ENOTDIR') throw invalid(`${dir} is not a directory`)
  }
  if (text === undefined) {
    let entries: string[] | undefined
    try { entries = fs.readdirSync(dir) } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromSystemError(err, `reading ${dir}`)
    }
    if (entries !== undefined && entries.length > 0) throw invalid(`${dir} exists but is not a vdiskfs pool (no ${poolHeaderFile}, and it is not empty)`)
    if (options.create !== true) throw notFound(`pool ${dir}`)
    const header: PoolHeader = {
      magic: poolMagic,
      formatVersion: poolFormatVersion,
      blockBytes: options.blockBytes ?? blockBytesDefault,
      zstdLevel: options.zstdLevel ?? zstdLevelDefault,
      createdMs: Date.now(),
      poolId: randomUUID()
    }
    assertLimitsUserFacing(header.blockBytes)
    fs.mkdirSync(dir, { recursive: true })
    const temporary = headerPath + '.tmp'
    const fd = fs.openSync(temporary, 'w')
    fs.writeSync(fd, JSON.stringify(header, null, 2) + '\n')
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    fs.renameSync(temporary, headerPath)
    syncDirectorySync(dir)
    return header
  }
  let header: PoolHeader
  try {
    header = JSON.parse(text) as PoolHeader
  } catch {
    throw invalid(`${headerPath} is damaged (not JSON)`)
  }
  if (header === null || typeof header !== 'object' || header.magic !== poolMagic) throw invalid(`${dir} is not a vdiskfs pool (bad magic in ${poolHeaderFile})`)
  if (!Number.isInteger(header.formatVersion) || header.formatVersion < 1) throw invalid(`${dir}: unknown pool format version ${String(header.formatVersion)}`)
  if (header.formatVersion > poolFormatVersion) {
    throw invalid(`${dir} has pool format version ${header.formatVersion}, newer than this vdiskfs reads (${poolFormatVersion}); upgrade vdiskfs`)
  }
  assertLimitsUserFacing(header.blockBytes)
  return header
}

/** Block size checks that a user or a damaged header can fail, as INVALID rather than an assertion. */
function assertLimitsUserFacing (blockBytes: unknown): void {
  try {
    if (typeof blockBytes !== 'number') throw new Error('not a number')
    assertLimits(blockBytes)
  } catch (err) {
    throw invalid(`invalid block size ${String(blockBytes)}: use a power of two from 4K to 1M`)
  }
}

/** Makes a directory's entries durable (after a rename or a create in it). */
function syncDirectorySync (dir: string): void {
  const fd = fs.openSync(dir, 'r')
  try { fs.fsyncSync(fd) } finally { fs.closeSync(fd) }
}

/** Creates `parent/name` if missing, durably: the new entry is synced into its parent. */
function makeDurableDirectory (parent: string, name: string): void {
  const dir = path.join(parent, name)
  if (fs.existsSync(dir)) return
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  syncDirectorySync(parent)
}

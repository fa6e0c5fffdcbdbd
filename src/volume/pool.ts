/**
 * A pool: a directory holding the header, the catalog and the delta extents (format/pool-format.ts),
 * and the volumes in it. This is the volume layer's entry point, a façade over the rooms that do the
 * work: namespace.ts (names, create, rename, remove, backup, clone, restore, copy, promote, open handles),
 * allocation.ts (the allocation map), commit.ts
 * (the durability order), maintenance.ts (gc, sealing hooks, recovery, the exclusive lock),
 * free-space.ts (claimSpace, statfs), inspection.ts (what verify, repair and space read), pool-header.ts (the header and directory durability), all sharing one
 * PoolState (pool-state.ts).
 *
 * Durability order (docs/ARCHITECTURE.md): commit first makes the extents durable (fdatasync), then writes the
 * metadata that points at them in one SQLite transaction. Metadata never points at unsynced bytes.
 *
 * Assumes: one Pool per pool directory at a time, enforced by the catalog's exclusive lock.
 * Errors: open() throws INVALID (not a pool, newer format), BUSY (in use), CORRUPT, IO; namespace
 * operations throw NOT_FOUND, EXISTS, INVALID, READ_ONLY.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Catalog, ChunkRow, ImportRow, VolumeKind } from '../catalog/catalog'
import { VdiskError, corrupt } from '../errors'
import { ChunkCacheStats } from '../chunk/chunk-cache'
import { entryChunkId, entryKind, entryKindChunk } from '../format/map-format'
import { ChangedSet, changedBlockSet, differingRanges } from '../map/diff'
import { PoolHeader, catalogFile, extentsDir, lazyDir, packsDir } from '../format/pool-format'
import { assertLimits, lazyRefsBatchRefs, packLiveFractionMin, sealBatchBlocks } from '../limits'
import { AllocationRange, allocationMap } from './allocation'
import { RootCacheStats } from '../map/block-map'
import { Committer } from './commit'
import { FilesystemStat } from './free-space'
import type { NativeWrites } from '../extent/delta-extent'
import { Inspection } from './inspection'
import { Importer } from './import'
import { LazyPulls } from './lazy'
import { CloneRecord, LazyRefs, LazyRefsSeams, PendingClone, PendingMap, PullApply, applyRefs, cloneFile, leftoverClones, leftoverRefs, peekRefs, refsFile } from './lazy-refs'
import { GcReport, Maintenance, MarkSeams } from './maintenance'
import { BackupTiming, Namespace } from './namespace'
import { claimPoolDirectory, securePoolDirectory } from './pool-access'
import { HeaderOptions, assertLimitsUserFacing, makeDurableDirectory, readOrCreateHeader } from './pool-header'
import { PoolState, StateOptions } from './pool-state'
import { Volume } from './volume'
import { RangeCopy, copyRange } from './range-copy'
import { replayJournal } from './replay'
import { ExtentSealing, SealReport } from './seal-extent'

export { GcReport } from './maintenance'
export { AllocationRange } from './allocation'
export { checkName } from './names'

export interface OpenOptions extends HeaderOptions, StateOptions {}

/**
 * A change Pool.onChange reports: the names the volume no longer has, whether its bytes (and size)
 * changed, and whether the kernel asked for it (a rename or unlink through the mount: the kernel keeps
 * its own caches right, and must not be told, see Pool.onChange).
 */
/** What the FUSE fast path needs of the pool's extents (Pool.fastReadSource). */
export interface FastReadSource {
  readonly blockBytes: number
  /** The extent's descriptor now (duplicate it at once), where slot 0 and its checksums start; undefined when it cannot be read so. */
  extent: (id: number) => { fd: number, dataStart: number, sumsStart: number } | undefined
  /** Whether the slot is known to be whole (not a partial slot over a chunk). */
  wholeSlot: (id: number, slot: number) => boolean
  /** Calls `listener` synchronously before an extent is removed. */
  onExtentRemoved: (listener: (id: number) => void) => void
  /** Tells the extent store of the fast path's native WRITEs (docs/FASTPATH.md, "Writes"). */
  nativeWrites: (writes: NativeWrites) => void
  /** Drops the checksum entries the engine remembers of an extent (native WRITEs will change them). */
  forgetSums: (id: number) => void
  /** Records a change of the volume (its row) for the next commit. */
  changed: (volume: Volume) => void
  /** Sealed chunks' rows (where each payload lies, its BLAKE3), of those whose bytes are in a pack here. */
  chunks: (ids: number[]) => Map<number, ChunkRow>
  /** The file of pack `id`. */
  packFile: (id: number) => string
  /** Calls `listener` synchronously before a pack is deleted or set aside, with the chunks moved out of it. */
  onPackGone: (listener: (packId: number, moved: number[]) => void) => void
  /** Slots of the volume's active extent for the addon's first writes (PoolState.leaseSlots). */
  lease: (volume: Volume, slots: number) => { id: number, first: number, end: number, bases: number } | null
  /** The chunk entry slot `slot` of extent `id` is a partial slot over; 0 for a whole slot; null or undefined when unknown. */
  slotBase: (id: number, slot: number) => number | null | undefined
  /** Records a partial slot the addon wrote over chunk entry `base` (ExtentStore.notePartialSlot). */
  notePartial: (id: number, slot: number, base: number) => void
  /** Gives back slots [next, end) of a lease no write took (when nothing was claimed after them). */
  unlease: (id: number, next: number, end: number) => void
  /** Sets what takes the addon's first writes into the maps (PoolState.settleNative). */
  onSettle: (settle: (journalFd?: () => number) => void) => void
  /** The change journal's current file, for the addon's records of its first writes (-2: none). */
  journalFd: () => number
  /** Sets what gives the engine's own new slots from the addon's lease (PoolState.leasedSlot). */
  onLeasedSlot: (take: (volume: Volume, id: number) => number) => void
  /** Runs `change` without journaling it (a first write the addon journaled itself). */
  journaled: (change: () => void) => void
}

export interface VolumeChange {
  volume: Volume
  names: Array<{ kind: VolumeKind, name: string }>
  data: boolean
  byKernel: boolean
}

export class Pool {
  private readonly state: PoolState
  private readonly committer: Committer
  private readonly namespace: Namespace
  private readonly maintenance: Maintenance
  private readonly sealing: ExtentSealing
  /** What verify, repair and space accounting read and check (inspection.ts). */
  readonly inspection: Inspection
  /** Backups made from export streams, atomically and resumably (import.ts). */
  readonly imports: Importer
  /** Backups pulled lazily from a remote store, filling in behind their readers (lazy.ts). */
  readonly lazy: LazyPulls

  private constructor (readonly dir: string, readonly header: PoolHeader, catalog: Catalog, options: OpenOptions) {
    this.state = new PoolState(dir, header, catalog, options)
    const upgrade = catalog.rootsMigration
    if (upgrade !== null) {
      this.state.log(`catalog upgraded to schema 6: ${upgrade.roots} map roots made lists of ${upgrade.pieces} shared pieces (${upgrade.bytesBefore} bytes of roots before, ${upgrade.bytesAfter} after) in ${Math.round(upgrade.ms)} ms`)
    }
    this.committer = new Committer(this.state)
    this.namespace = new Namespace(this.state, this.committer)
    this.maintenance = new Maintenance(this.state, this.committer)
    this.inspection = new Inspection(this.state)
    this.sealing = new ExtentSealing(this.state, this.committer, this.maintenance)
    this.imports = new Importer(this.state, this.committer, async <T>(work: () => Promise<T>) => await this.maintenance.exclusive(work))
    this.lazy = new LazyPulls(this.state.catalog, this.state.chunks, this.state.log, uuid => {
      const id = this.state.catalog.volumeByUuid(uuid)
      const volume = id === undefined ? undefined : this.state.volumes.get(id)
      return volume === undefined ? null : volume.label
    })
    // A lazy pull's references left to apply (lazy-refs.ts): the backup and the clones its records name
    // are pending before the pool serves anything, and the file is applied again below (into each clone,
    // only the ranges its record lacks); a file whose backup never appeared (killed before its commit), or
    // whose backup and clones are all gone, is removed, and so is a clone's record whose clone or file is.
    const leftover: Array<{ apply: PullApply, count: number }> = []
    const records = leftoverClones(dir)
    const volumeOf = (uuid: string): Volume | undefined => {
      const id = this.state.catalog.volumeByUuid(uuid)
      return id === undefined ? undefined : this.state.volumes.get(id)
    }
    for (const uuid of leftoverRefs(dir)) {
      const volume = volumeOf(uuid)
      const clones: Array<{ volume: Volume, record: CloneRecord, blocks: number, ranges: Array<[number, number]> }> = []
      for (const { pull, clone } of records) {
        if (pull !== uuid) continue
        const file = cloneFile(dir, pull, clone)
        const cloned = volumeOf(clone)
        const opened = cloned === undefined ? null : CloneRecord.openSync(this.state.io, file)
        if (cloned === undefined || opened === null) { fs.rmSync(file, { force: true }); continue }
        clones.push({ volume: cloned, ...opened })
      }
      if (volume === undefined && clones.length === 0) { fs.rmSync(refsFile(dir, uuid), { force: true }); continue }
      const { count, first } = peekRefs(dir, uuid)
      const blocks = volume === undefined ? clones[0].blocks : Math.ceil(volume.size / this.state.blockBytes)
      const apply = new PullApply(uuid, volume ?? null, blocks, first)
      if (volume !== undefined) volume.pendingMap = this.pendingMapOf(volume, uuid, first)
      for (const clone of clones) {
        clone.volume.pendingMap = this.pendingMapOf(clone.volume, uuid, first, blocks, clone.ranges)
        apply.clones.add({ volume: clone.volume, record: clone.record })
      }
      this.applies.set(uuid, apply)
      leftover.push({ apply, count })
    }
    for (const { pull, clone } of records) if (!this.applies.has(pull)) fs.rmSync(cloneFile(dir, pull, clone), { force: true })
    this.lazy.open(leftover.flatMap(l => l.apply.backup === null ? [] : [[l.apply.uuid, l.count] as [string, number]]))
    this.state.chunks.absent = this.lazy
    // gc's reference counts from the last clean close, if they are still the catalog's (ref-counts.ts),
    // or the page counts from every root, one at a time (the volumes entered the table uncounted:
    // Namespace): before the journal's replay changes pages and roots.
    this.countsLoaded = this.committer.loadStoredCounts(() => this.state.refs.recountRoots(this.state.volumes.roots()))
    this.replayedChanges = replayJournal(this.state)
    this.committer.markOpen()
    for (const { apply } of leftover) this.startApply(apply)
  }

  /** Test seams of a lazy pull's apply after the reply (lazy-refs.ts). */
  lazyRefsSeams: LazyRefsSeams = {}
  /** References per batch of a lazy pull's file, written and applied (limits.ts; tests set fewer). */
  lazyRefsBatchRefs = lazyRefsBatchRefs

  /** The writer of lazy pull `uuid`'s references file (lazy-refs.ts), for its stream; finishLazy takes it. */
  lazyRefs (uuid: string): LazyRefs { return new LazyRefs(this.state.io, refsFile(this.dir, uuid), this.lazyRefsBatchRefs) }

  /** The pulls whose references are being applied (lazy-refs.ts), by the pull's uuid; an apply leaves it when it ends. */
  private readonly applies = new Map<string, PullApply>()

  /** `blocks` and `ranges`: a clone's (the backup's size in blocks, the ranges in its map already). */
  private pendingMapOf (volume: Volume, uuid: string, from: number, blocks?: number, ranges?: ReadonlyArray<readonly [number, number]>): PendingMap {
    return new PendingMap(from, this.lazy.waitMs, () => {
      const row = this.lazy.get(uuid)
      // The pull is named by its backup's label, also in a clone's messages (their reads name the clone).
      return `lazy pull ${this.applies.get(uuid)?.backup?.label ?? volume.label}${row === undefined ? '' : ` from remote ${row.remote} (backup ${row.manifest})`}`
    }, blocks, ranges)
  }

  /** Applies a pull's references behind the reply (lazy-refs.ts), into its backup and pending clones; a failure is logged, they stay pending. */
  private startApply (apply: PullApply): void {
    setImmediate(() => {
      const context = { state: this.state, committer: this.committer, lazy: this.lazy, exclusive: async <T>(work: () => Promise<T>) => await this.maintenance.exclusive(work), seams: this.lazyRefsSeams, batchRefs: this.lazyRefsBatchRefs }
      const label = apply.backup?.label ?? `lazy pull ${apply.uuid}`
      applyRefs(context, apply).then(() => { this.applies.delete(apply.uuid) }, err => this.state.log(`lazy pull: ${label}: its references were not applied (${(err as Error).message}); the next open applies them`))
    })
  }

  /**
   * Makes a lazy pull's backup (the import's finish) with the head's map, its references `refs` applied
   * after (lazy-refs.ts): the file made durable first, the backup pending from the step that inserts
   * it, the apply started once its commit is done. No references: an ordinary finish. The file is the
   * backup's once it is inserted (refs.kept); before, the caller's discard() removes it.
   */
  async finishLazy (session: ReturnType<Importer['begin']>, refs: LazyRefs): Promise<Volume> {
    if (refs.count === 0) return await session.finish()
    const uuid = session.spec.uuid
    await refs.seal()
    let apply: PullApply | null = null
    const volume = await session.finish(made => {
      refs.kept = true
      made.pendingMap = this.pendingMapOf(made, uuid, refs.first)
      apply = new PullApply(uuid, made, Math.ceil(made.size / this.state.blockBytes), refs.first)
      this.applies.set(uuid, apply)
      this.lazy.markPending(uuid, refs.count)
    })
    if (apply !== null) this.startApply(apply)
    return volume
  }

  /**
   * A clone of a backup whose references are being applied (docs/REMOTE.md, "A clone of a pending
   * backup"), under the maintenance lock the apply's batches take, so that no batch is half set: its
   * record made first (the ranges the backup has now, which the clone's map copies), then the clone,
   * pending with the pull from the step that makes it, so the apply sets the rest of the batches in it
   * too. A pull whose apply ended meanwhile gives an ordinary clone (its backup is whole).
   */
  private async clonePending (backup: Volume, name: string): Promise<Volume> {
    const pending = backup.pendingMap
    const apply = [...this.applies.values()].find(a => a.backup === backup && !a.ended)
    if (pending === null || apply === undefined) return await this.namespace.clone(backup, name)
    const uuid = crypto.randomUUID()
    const ranges = pending.mappedNow()
    const record = await CloneRecord.create(this.state.io, cloneFile(this.dir, apply.uuid, uuid), apply.blocks, ranges)
    let made: PendingClone | null = null
    try {
      return await this.namespace.clone(backup, name, {
        uuid,
        made: clone => {
          // The apply may have ended while the record was made: the clone copied a whole map.
          if (backup.pendingMap === null || apply.ended) return
          clone.pendingMap = this.pendingMapOf(clone, apply.uuid, apply.from, apply.blocks, ranges)
          made = { volume: clone, record }
          apply.clones.add(made)
        }
      })
    } finally {
      if (made === null) await record.remove()
    }
  }

  /** Whether the open took gc's reference counts from the last clean close (the first gc then needs no full mark). */
  readonly countsLoaded: boolean

  /**
   * Changes a daemon made after its last commit and died with (journal.ts), applied when the pool
   * opened: in memory until the next commit, which the daemon makes at start.
   */
  readonly replayedChanges: number

  /** Called once if the change journal cannot be written (journal.ts): the daemon stops its holder. */
  onJournalFailure (handler: () => void): void { this.state.journal.onFailure = handler }

  /** Opens the pool in `dir`, creating it when asked and the directory is missing or empty. */
  static open (dir: string, options: OpenOptions = {}): Pool {
    // Refused before anything is made: a bad --block-size must not leave an empty pool directory behind.
    if (options.blockBytes !== undefined) assertLimitsUserFacing(options.blockBytes)
    dir = claimPoolDirectory(path.resolve(dir), options.create === true)
    const header = readOrCreateHeader(dir, options)
    securePoolDirectory(dir)
    assertLimits(header.blockBytes)
    makeDurableDirectory(dir, extentsDir)
    makeDurableDirectory(dir, packsDir)
    makeDurableDirectory(dir, lazyDir)
    const catalog = Catalog.open(path.join(dir, catalogFile), true)
    try {
      return new Pool(dir, header, catalog, options)
    } catch (err) {
      catalog.close()
      throw err
    }
  }

  // The stores (extents, chunks, workers, map pages, the catalog and its log) are this pool's own:
  // nothing outside volume/ reaches them. The tools over a pool read them through `inspection`.

  get blockBytes (): number { return this.header.blockBytes }

  /** What the FUSE fast path reads extents through (fuse/fast-reads.ts, docs/FASTPATH.md). */
  fastReadSource (): FastReadSource {
    const extents = this.state.extents
    return {
      blockBytes: this.header.blockBytes,
      extent: id => extents.fastReadable(id),
      wholeSlot: (id, slot) => extents.wholeSlot(id, slot),
      onExtentRemoved: listener => {
        const before = extents.onRemove
        extents.onRemove = id => { before?.(id); listener(id) }
      },
      nativeWrites: writes => { extents.native = writes },
      forgetSums: id => extents.sums.forget(id),
      changed: volume => this.state.changed(volume),
      chunks: ids => this.state.chunks.storedMany(ids),
      packFile: id => this.state.chunks.packFile(id),
      onPackGone: listener => {
        const chunks = this.state.chunks
        const before = chunks.onPackGone
        chunks.onPackGone = (packId, moved) => { before?.(packId, moved); listener(packId, moved) }
      },
      lease: (volume, slots) => this.state.leaseSlots(volume, slots),
      slotBase: (id, slot) => extents.baseOf(id, slot),
      notePartial: (id, slot, base) => extents.notePartialSlot(id, slot, base),
      unlease: (id, next, end) => extents.unleaseSlots(id, next, end),
      onSettle: settle => { this.state.settleNative = settle },
      journalFd: () => this.state.journal.nativeFd(),
      onLeasedSlot: take => { this.state.leasedSlot = take },
      journaled: change => {
        const journal = this.state.journal
        const was = journal.enabled
        journal.enabled = false
        try { change() } finally { journal.enabled = was }
      }
    }
  }
  async statfs (): Promise<FilesystemStat> { return await this.state.statfs() }
  /** Counts changes, so that derived reports (space accounting) know when to recompute. */
  get generation (): number { return this.state.generation }
  get hasUncommittedChanges (): boolean { return this.state.changedSinceCommit || this.state.pages.dirtyCount > 0 || this.state.extents.nativeDirty }

  // ---- namespace (namespace.ts) ----

  list (kind?: VolumeKind): Volume[] { return this.namespace.list(kind) }
  find (kind: VolumeKind, name: string): Volume | undefined { return this.namespace.find(kind, name) }
  byId (id: number): Volume | undefined { return this.namespace.byId(id) }
  visible (kind?: VolumeKind): Volume[] { return this.namespace.visible(kind) }
  liveSource (volume: Volume): Volume | undefined { return this.namespace.liveSource(volume) }
  async create (kind: VolumeKind, name: string, options: { open?: boolean } = {}): Promise<Volume> { return await this.namespace.create(kind, name, options) }
  get (kind: VolumeKind, name: string): Volume { return this.namespace.get(kind, name) }
  async createDisk (name: string): Promise<Volume> { return await this.namespace.createDisk(name) }
  async rename (volume: Volume, newName: string): Promise<void> { await this.changing(volume, 'name', async () => await this.namespace.rename(volume, newName)) }
  /** rename(2) through the mount (the kernel's request). */
  async move (volume: Volume, kind: VolumeKind, name: string): Promise<void> { await this.changing(volume, 'name', async () => await this.namespace.move(volume, kind, name), true) }
  /** Prune's removals: units (a backup, or a group's backups) removed whole or kept whole, one commit for many (Namespace.removeUnits). */
  async removeUnits (units: Volume[][]): Promise<Array<VdiskError | null>> {
    const before = units.map(unit => unit.map(volume => ({ kind: volume.kind, name: volume.name })))
    try {
      return await this.namespace.removeUnits(units)
    } finally {
      units.forEach((unit, i) => unit.forEach((volume, j) => {
        if (this.byId(volume.id) !== volume) this.changed({ volume, names: [before[i][j]], data: false, byKernel: false })
      }))
    }
  }

  async remove (volume: Volume, options: { force?: boolean } = {}): Promise<void> { await this.changing(volume, 'gone', async () => await this.namespace.remove(volume, options)) }
  /** unlink(2) through the mount (the kernel's request). */
  async unlink (volume: Volume): Promise<void> { await this.changing(volume, 'gone', async () => await this.namespace.unlink(volume), true) }
  opened (volume: Volume, writable: boolean): void { this.namespace.opened(volume, writable) }
  async released (volume: Volume): Promise<void> { await this.namespace.released(volume) }
  async dropHidden (): Promise<string[]> { return await this.namespace.dropHidden() }
  async backup (source: Volume, name: string, timing?: BackupTiming): Promise<Volume> { return await this.namespace.backup(source, name, timing) }
  async clone (backup: Volume, name: string): Promise<Volume> {
    // A backup whose references are being applied: the clone is made at once, pending too (clonePending).
    if (backup.pendingMap !== null && backup.kind === 'backup') return await this.maintenance.exclusive(async () => await this.clonePending(backup, name))
    return await this.namespace.clone(backup, name)
  }
  async restore (backup: Volume, target: Volume, options: { force?: boolean } = {}): Promise<void> { await this.changing(target, 'data', async () => await this.namespace.restore(backup, target, options)) }
  async copy (source: Volume, name: string): Promise<Volume> { return await this.namespace.copy(source, name) }
  /** copy_file_range(2) within the pool: whole blocks shared, the rest copied (range-copy.ts). */
  async copyRange (source: Volume, target: Volume, from: number, to: number, length: number): Promise<RangeCopy> {
    // A source whose references are still being applied (a lazy pull's): the blocks copied mapped first (a
    // block once mapped stays so); copyRange checks both volumes after its own awaits.
    await source.mappedIn(from, length, 'a copy out of')
    return await copyRange(this.state, source, target, from, to, length)
  }
  async promote (clone: Volume, name: string): Promise<void> { await this.changing(clone, 'name', async () => await this.namespace.promote(clone, name)) }
  async backupGroup (sources: Volume[], names: string[], group: string): Promise<Volume[]> { return await this.namespace.backupGroup(sources, names, group) }
  groupMembers (group: string): Volume[] { return this.namespace.groupMembers(group) }
  async restoreGroup (group: string, options: { force?: boolean } = {}): Promise<Array<{ backup: Volume, target: Volume }>> {
    // Every member's target may have changed, also when the group's restore failed part-way.
    const targets = this.namespace.groupMembers(group).map(backup => this.liveSource(backup)).filter((v): v is Volume => v !== undefined)
    try {
      return await this.namespace.restoreGroup(group, options)
    } finally {
      for (const volume of targets) this.changed({ volume, names: [], data: true, byKernel: false })
    }
  }
  async cloneGroup (group: string, names: (backup: Volume) => string): Promise<Volume[]> { return await this.namespace.cloneGroup(group, names) }
  async protect (volume: Volume, on: boolean): Promise<void> { await this.namespace.protect(volume, on) }
  async setNote (volume: Volume, note: string | null): Promise<void> { await this.namespace.setNote(volume, note) }
  async renameVolume (volume: Volume, newName: string): Promise<void> { await this.changing(volume, 'name', async () => await this.namespace.renameVolume(volume, newName)) }

  private readonly changeListeners: Array<(change: VolumeChange) => void> = []

  /**
   * Tells `listener` of every change to a volume's names or bytes that its own writes through the
   * mount did not make (a rename, rm, promote or restore, from bin/vdiskfs or the mount), once it is
   * done, also when it failed part-way: the daemon has the kernel drop what it cached of them.
   */
  onChange (listener: (change: VolumeChange) => void): void { this.changeListeners.push(listener) }

  private changed (change: VolumeChange): void {
    for (const listener of this.changeListeners) listener(change)
  }

  /**
   * Runs `work`, a change of `volume`'s name ('name'), of its existence ('gone': removed, or hidden
   * while open) or of its bytes ('data'), and reports it. Only a name that changed is reported: the
   * kernel forgetting a name still valid would show an open descriptor's path as deleted. A change
   * that failed reports its bytes alone (a failed commit may follow a change made in memory).
   */
  private async changing (volume: Volume, what: 'name' | 'gone' | 'data', work: () => Promise<void>, byKernel = false): Promise<void> {
    const before = { kind: volume.kind, name: volume.name }
    let done = false
    try {
      await work()
      done = true
    } finally {
      const renamed = what === 'gone' || before.kind !== volume.kind || before.name !== volume.name
      this.changed({ volume, names: done && renamed ? [before] : [], data: what === 'data', byKernel })
    }
  }

  /** The allocation map of `volume` (allocation.ts); a clone's blocks shared with its backup are depth 1. */
  async allocationMap (volume: Volume): Promise<AllocationRange[]> {
    // Blocks a lazy pull has not applied yet would show as holes (SEEK_HOLE, a sparse copy skipping
    // them): they are data instead, as not mapped when the walk starts (taken in this step, before any
    // await: a block mapped during the walk is data either way, its page read when the walk reaches it).
    const pending = volume.pendingMap
    const unmapped = pending === null ? [] : pending.unmappedIn(0, Math.ceil(volume.size / this.blockBytes))
    const backing = volume.kind === 'clone' ? this.namespace.liveSource(volume) : undefined
    return await allocationMap(volume, backing, this.state.pages, this.blockBytes, unmapped)
  }

  // ---- durability (commit.ts) ----

  /** Makes every change made before the call durable (commit.ts). */
  async commit (): Promise<void> { await this.committer.commit() }

  /** Commits since the pool opened, the most map pages one wrote, and the map pages dirty now. */
  commitStats (): { commits: number, pagesMax: number, dirtyPages: number } {
    return { ...this.committer.stats, dirtyPages: this.state.pages.dirtyCount }
  }
  /** Whether the last run of this pool stopped without closing it (killed, or a crash): found at open. */
  get uncleanStopFound (): boolean { return this.committer.uncleanStopFound }

  // ---- maintenance (maintenance.ts) ----

  async exclusive<T> (work: () => Promise<T>, kind: 'seal' | 'other' = 'other'): Promise<T> { return await this.maintenance.exclusive(work, kind) }
  /** The catalog's WAL checkpoints so far (count, ms, frames), for the daemon's trace of a backup. */
  get catalogCheckpoints (): { count: number, ms: number, frames: number } { return this.state.catalog.checkpoints }
  /** verify's check of gc's reference counts against a recount of the maps; inside exclusive() or offline (maintenance.ts). */
  async checkCounts (): Promise<{ counts: string, problems: string[] }> { return await this.maintenance.checkCounts() }
  /** Runs a reader of pages and chunk sizes (the space accounting) under the lock, or beside a seal pass (maintenance.ts). */
  async besideSealing<T> (work: () => Promise<T>): Promise<T> { return await this.maintenance.besideSealing(work) }

  /**
   * A hydrator's blocks for lazy pulls (lazy.ts): those whose chunk is absent are hashed in the workers,
   * checked against the id they came with (CORRUPT otherwise, nothing of that block stored), and fill
   * their chunk, durably (chunk-store.ts index), which wakes the readers waiting for it. The others
   * (here already, or named by no pull) are ignored. Returns how many filled.
   */
  async hydrate (blocks: Array<{ data: Buffer, hash: Buffer }>): Promise<number> {
    return await this.maintenance.exclusive(async () => {
      if (this.state.lifecycle !== 'open') throw new VdiskError('BUSY', 'the pool is closing')
      const chunks = this.state.chunks
      const seen = new Set<string>()
      const wanted = blocks.filter(b => {
        const key = b.hash.toString('hex')
        if (seen.has(key) || b.data.length !== this.blockBytes) return false
        seen.add(key)
        const id = this.state.catalog.chunkByHash(b.hash)
        return id !== undefined && chunks.isAbsent(id)
      })
      const groups: Array<typeof wanted> = []
      for (let i = 0; i < wanted.length; i += sealBatchBlocks) groups.push(wanted.slice(i, i + sealBatchBlocks))
      await this.state.ingest.run(groups, async group => {
        // A group with a chunk a reader waits for runs at the daemon's priority; the background walk's, niced.
        const urgent = group.some(b => { const id = this.state.catalog.chunkByHash(b.hash); return id !== undefined && this.lazy.waitedFor(id) })
        await this.state.ingest.batch({ count: group.length, fill: (i, region) => { group[i].data.copy(region, 0, 0, region.length) } }, 'hydrate worker',
          (i, hash) => { if (!hash.equals(group[i].hash)) throw corrupt(`a hydrator's block for chunk ${group[i].hash.toString('hex')} does not match that id`) }, undefined, urgent)
      })
      return wanted.length
    })
  }
  async gc (liveFractionMin = packLiveFractionMin, options: { full?: boolean } = {}): Promise<GcReport> { return await this.maintenance.gc(liveFractionMin, options) }
  /** Whether gc's mark is under way (between its snapshot and its sweep). */
  get gcMarking (): boolean { return this.maintenance.marking }
  /** Test seam: gc's mark slice length (0: a yield after every page) and a step run at each yield. */
  gcSeams (seams: MarkSeams): void { this.maintenance.seams = seams }
  async recover (): Promise<number> { return await this.maintenance.recover() }
  writableExtentIds (): Set<number> { return this.state.writableExtentIds() }
  frozenExtents (): number[] { return this.maintenance.frozenExtents() }
  async freezeForSealing (all: boolean): Promise<void> { await this.maintenance.freezeForSealing(all) }
  coldEnough (extentId: number): boolean { return this.maintenance.coldEnough(extentId) }
  /** Before a seal pass, inside exclusive(): which extents each map page names, learnt in slices (maintenance.ts). */
  async learnExtentNames (): Promise<void> { await this.maintenance.learnExtentNames() }
  /** Seals one frozen extent into chunks and repoints the maps (seal-extent.ts); call inside exclusive(), then settleSealed. */
  async sealExtent (extentId: number, report: SealReport): Promise<void> { await this.sealing.sealExtent(extentId, report) }
  /** Commits what sealExtent repointed and drops those extents; inside the same exclusive(). */
  async settleSealed (extentIds: number[], report: SealReport): Promise<void> { await this.sealing.settle(extentIds, report) }
  recount (): void { this.maintenance.recount() }

  // ---- what the control operations read (export, diff, status) ----

  /** The volume's identity (a UUID), as the catalog holds it. */
  volumeUuid (volume: Volume): string { return this.state.catalog.volumeUuid(volume.id) }
  /** The id of the volume with identity `uuid`, if the pool has it. */
  volumeIdByUuid (uuid: string): number | undefined { return this.state.catalog.volumeByUuid(uuid) }
  /** Imports in progress, with how many blocks each has recorded. */
  importsInProgress (): Array<ImportRow & { blocks: number }> { return this.state.catalog.imports().map(row => ({ ...row, blocks: this.state.catalog.importBlockCount(row.key) })) }
  /** The blocks of `volume` that differ from `since` (all its blocks when null), computed in turns (map/diff.ts). */
  async changedBlocks (volume: Volume, since: Volume | null): Promise<ChangedSet> {
    await volume.mapped()
    await since?.mapped()
    return await changedBlockSet(volume, since, this.state.pages, this.blockBytes)
  }
  /** Waits until every one of `volumes` has its map whole (a lazy pull's references applied: lazy-refs.ts); check them again after. */
  async mapped (...volumes: Volume[]): Promise<void> { for (const volume of volumes) await volume.mapped() }
  /** The byte ranges where two volumes differ (map/diff.ts). */
  differingRanges (older: Volume, newer: Volume): ReturnType<typeof differingRanges> { return differingRanges(older, newer, this.state.pages, this.blockBytes) }
  /** The BLAKE3 id of the chunk a map entry names; null for any other entry. */
  chunkHash (entry: number): Buffer | null { return entryKind(entry) === entryKindChunk ? this.state.chunks.info(entryChunkId(entry)).hash : null }
  /** The opened-chunk cache's figures. */
  chunkCacheStats (): ChunkCacheStats { return this.state.chunks.cacheStats() }
  /** The backups' roots kept in memory (RootCache: read on first use, dropped past the bound). */
  rootCacheStats (): RootCacheStats { return this.state.roots.stats() }

  // ---- lifecycle ----

  /**
   * Test seam for crash tests: lets go of the pool as a crash would (no commit, nothing flushed);
   * the catalog lock is released so the pool can be opened again in this process.
   */
  async abandon (): Promise<void> {
    if (this.state.lifecycle === 'closed') return
    this.state.lifecycle = 'closed'
    await this.maintenance.settle()
    await this.state.closeStores()
  }

  /** True from the moment close() starts: background work checks it and stops. */
  get closing (): boolean { return this.state.lifecycle !== 'open' }

  /**
   * Cancels background work (a seal pass stops at its next batch; its chunks are indexed or dropped,
   * never half-referenced), waits for it, makes the final commit, and closes. The pool lock is
   * released. Throws what the final commit threw, after closing everything.
   */
  async close (): Promise<void> {
    if (this.state.lifecycle !== 'open') return
    this.state.lifecycle = 'closing'
    try {
      await this.maintenance.settle()
      const counts = await this.maintenance.countsAtFinalCommit()
      await this.committer.commit()
      this.committer.markCleanClose(counts())
    } finally {
      this.state.lifecycle = 'closed'
      await this.state.closeStores()
    }
  }
}

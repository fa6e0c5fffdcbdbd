/**
 * The pool's namespace: the volumes by kind and name, and the operations that change it: create,
 * rename, remove (forced removal hides a volume still open until its last release), backup, clone and
 * restore. Each operation is durable on return (it commits). It also counts open handles, which
 * decides whether a volume is in use.
 *
 * Assumes: every name was checked here (names.ts), so a name starting with '/' is always a hidden one
 * the pool gave; backups never change (READ_ONLY).
 * Errors: NOT_FOUND, EXISTS, INVALID, READ_ONLY, BUSY, and what commit throws.
 */
import assert from 'node:assert/strict'
import { VolumeInfo, VolumeKind, defaultModeOf } from '../catalog/catalog'
import { VdiskError, exists, invalid, notFound, notPermitted, readOnly } from '../errors'
import { decodeRoot } from '../format/map-format'
import { inUseGraceMs, inUsePollMs, noteBytesMax, pruneCommitVolumes } from '../limits'
import { BlockMap, RootIds } from '../map/block-map'
import { CommitTiming, Committer } from './commit'
import { checkName, isHiddenName, libfuseNameOf, removedName } from './names'
import { PoolState, VolumeTable } from './pool-state'
import { Volume } from './volume'

/** Where a backup's time went (ms): its name's lock, draining the source's writes, making the volume, and its commit's phases. */
export interface BackupTiming { nameMs: number, pauseMs: number, madeMs: number, commit: CommitTiming | null }

export class Namespace {
  constructor (private readonly state: PoolState, private readonly committer: Committer) {
    // Uncounted: the pool takes the page counts from the last clean close, or counts every root (Pool).
    for (const row of state.catalog.volumes()) state.volumes.setUncounted(row.id, this.volumeFromRow(row))
  }

  private get volumes (): VolumeTable { return this.state.volumes }

  private async commit (): Promise<void> { await this.committer.commit() }

  private changed (volume: Volume): void { this.state.changed(volume) }

  /**
   * `volume` has a new name or kind: the volumes made from it take its new label (shown once it is
   * gone), committed with it. Synchronous, in the step that renames it.
   */
  private relabelMadeFrom (volume: Volume): void {
    for (const other of this.state.volumes.values()) {
      if (other.sourceId !== volume.id || other.sourceLabel === volume.label) continue
      other.sourceLabel = volume.label
      other.rowDirty = true
      this.changed(other)
    }
  }

  private volumeFromRow (row: VolumeInfo): Volume {
    const blocks = Math.ceil(row.size / this.state.blockBytes)
    const pageCount = BlockMap.pagesFor(blocks)
    // A backup's root is read when first used (issue #21: PoolState.lazyRoot); a disk's or clone's now.
    let root: RootIds = new Float64Array(0)
    if (row.kind !== 'backup') {
      try {
        root = decodeRoot(this.state.catalog.root(row.id) ?? Buffer.alloc(0), pageCount, row.id)
      } catch (err) {
        throw new VdiskError('CORRUPT', `${row.kind} ${row.name}: its map root is damaged (${(err as Error).message}): run vdiskfs repair on the pool`, { cause: err })
      }
    }
    const map = new BlockMap(this.state.pages, root, row.epoch, row.allocatedBlocks, row.storedBytes, this.state.sizeOf)
    const volume = new Volume(this.state, row.id, row.kind, row.name, row.size, row.createdMs, row.mtimeMs, row.sourceId, row.sourceLabel, map, row.activeExtent)
    volume.persisted = true
    if (row.kind === 'backup') this.state.lazyRoot(volume, pageCount)
    volume.uid = row.uid
    volume.gid = row.gid
    volume.mode = row.mode
    volume.isProtected = row.protected === true
    volume.note = row.note ?? null
    volume.sourceUuid = row.sourceUuid ?? null
    volume.groupName = row.groupName ?? null
    return volume
  }

  list (kind?: VolumeKind): Volume[] {
    return [...this.volumes.values()].filter(v => kind === undefined || v.kind === kind)
  }

  /** The volume named `name`. One hidden (removed while open) answers to no name. */
  find (kind: VolumeKind, name: string): Volume | undefined {
    if (isHiddenName(name)) return undefined
    return this.named(kind, name)
  }

  /** The volume whose stored name is exactly `name`. */
  private named (kind: VolumeKind, name: string): Volume | undefined {
    return this.volumes.byName(kind, name)
  }

  byId (id: number): Volume | undefined { return this.volumes.get(id) }

  /** The volumes in the namespace (of one kind, or all): those removed while open are not. */
  visible (kind?: VolumeKind): Volume[] {
    return this.list(kind).filter(v => !v.hidden)
  }

  /** The volume `volume` stands on, or undefined when it stands on none or its source was removed. */
  liveSource (volume: Volume): Volume | undefined {
    if (volume.sourceId === null) return undefined
    const source = this.volumes.get(volume.sourceId)
    return source === undefined || source.hidden ? undefined : source
  }

  get (kind: VolumeKind, name: string): Volume {
    const volume = this.find(kind, name)
    if (volume === undefined) throw notFound(`${kind} ${name}`)
    return volume
  }

  /**
   * Waits until no operation in flight holds `name` (one creating it after awaits), then throws INVALID
   * for a bad name or EXISTS when a volume has it, or else returns what `take` returns: `take` runs in
   * the turn of the check (no await between), and makes the volume or holds the name.
   */
  private async withFreeName<T> (kind: VolumeKind, name: string, take: () => T): Promise<T> {
    checkName(name)
    return await this.state.whenNameFree(`${kind}/${name}`, () => {
      if (this.find(kind, name) !== undefined) throw exists(`${kind} ${name}`)
      return take()
    })
  }

  /**
   * Checks that `name` is free and holds it for `work`, which creates the volume after awaits (pausing
   * a source, waiting for handles to close): without the hold, a second operation could check the same
   * name during the await and both would create it (two rows of one name: every later commit fails).
   * A second creator waits for the hold to end, then gets EXISTS if `work` made the volume and the
   * name if it failed (a source removed meanwhile): never EXISTS for a name that never existed.
   */
  private async withNewName<T> (kind: VolumeKind, name: string, work: () => Promise<T>): Promise<T> {
    const release = await this.withFreeName(kind, name, () => this.state.reserveName(`${kind}/${name}`))
    try {
      return await work()
    } finally {
      release()
    }
  }

  /**
   * Logs an operation through the mount that the volume layer refuses (read-only backups, moves across
   * kinds), as the README promises, and returns the error to throw. The control socket logs its own.
   */
  private refused (what: string, err: VdiskError): VdiskError {
    this.state.log(`refused: ${what} (${err.code}): ${err.message}`)
    return err
  }

  /** Throws NOT_FOUND when `volume` left the namespace (removed, or hidden by rm --force) during an await. */
  private checkStillHere (volume: Volume): void {
    if (this.volumes.get(volume.id) !== volume || volume.hidden) throw notFound(volume.label)
  }

  private newVolume (kind: VolumeKind, name: string, size: number, root: RootIds, counts: { allocatedBlocks: number, storedBytes: number }, source: Volume | null): Volume {
    const now = Date.now()
    const map = new BlockMap(this.state.pages, root, this.state.nextEpoch++, counts.allocatedBlocks, counts.storedBytes, this.state.sizeOf)
    map.rootDirty = true
    const volume = new Volume(this.state, this.state.nextVolumeId++, kind, name, size, now, now, source?.id ?? null, source?.label ?? null, map, null)
    // Backups and clones belong to their source's owner; a new disk to the daemon's user.
    volume.uid = source?.uid ?? process.getuid?.() ?? 0
    volume.gid = source?.gid ?? process.getgid?.() ?? 0
    volume.mode = defaultModeOf(kind)
    volume.sourceUuid = source === null ? null : this.state.catalog.volumeUuid(source.id)
    volume.rowDirty = true
    this.volumes.set(volume.id, volume)
    this.changed(volume)
    return volume
  }

  /**
   * Creates an empty volume of `kind` named `name` (creat(2) in a kind's directory). Only disks are
   * made this way: backups come from `backup` (READ_ONLY), clones from `clone` (NOT_PERMITTED).
   */
  async create (kind: VolumeKind, name: string, options: { open?: boolean } = {}): Promise<Volume> {
    if (kind === 'backup') throw this.refused(`create backups/${name}`, readOnly(`backups (take one with 'vdiskfs backup')`))
    if (kind === 'clone') throw this.refused(`create clones/${name}`, notPermitted(`clones come from 'vdiskfs clone'`))
    return await this.createDisk(name, options)
  }

  /**
   * Creates an empty disk; durable on return. `open`: it is made with a writable handle counted (the
   * FUSE create), before the commit's await, so an rm meanwhile sees it in use; released on failure.
   */
  async createDisk (name: string, options: { open?: boolean } = {}): Promise<Volume> {
    const volume = await this.withFreeName('disk', name, () => {
      const made = this.newVolume('disk', name, 0, new Float64Array(0), { allocatedBlocks: 0, storedBytes: 0 }, null)
      if (options.open === true) made.openHandles++
      return made
    })
    try {
      await this.commit()
    } catch (err) {
      if (options.open === true) volume.openHandles--
      throw err
    }
    return volume
  }

  /**
   * Renames a disk or clone within its kind, replacing `newName` if it exists (as rename(2); a replaced
   * volume still open is kept for its handles, as remove with force keeps it).
   * Errors: READ_ONLY for a backup, INVALID for a bad name.
   */
  async rename (volume: Volume, newName: string): Promise<void> {
    if (volume.kind === 'backup') throw readOnly(`backup ${volume.name}`)
    checkName(newName)
    const stored = newName
    if (stored === volume.name) return
    if (this.state.reservedNames.has(`${volume.kind}/${stored}`)) throw new VdiskError('BUSY', `${volume.kind} ${stored} is being created by another operation`)
    const target = this.named(volume.kind, stored)
    if (target !== undefined) {
      if (target.openHandles > 0) this.hide(target)
      else this.forget(target)
    }
    volume.name = stored
    volume.rowDirty = true
    this.changed(volume)
    this.relabelMadeFrom(volume)
    await this.commit()
  }

  /**
   * rename(2) of a volume to `name` in the directory of `kind`. Backups neither move nor are replaced
   * (READ_ONLY); a volume does not change kind (CROSS_DEVICE). Every name is an ordinary one: FUSE 3's
   * low-level API renames no file unlinked while open (libfuse 2's `.fuse_hidden…` names are gone).
   */
  async move (volume: Volume, kind: VolumeKind, name: string): Promise<void> {
    if (volume.kind === 'backup' || kind === 'backup') throw this.refused(`rename of ${volume.label} to ${kind} ${name}`, readOnly(`backup ${volume.kind === 'backup' ? volume.name : name}`))
    if (volume.kind !== kind) throw this.refused(`rename of ${volume.label} to ${kind} ${name}`, new VdiskError('CROSS_DEVICE', `${volume.label} cannot become a ${kind}`))
    await this.rename(volume, name)
  }

  /**
   * unlink(2) of a volume: never waits for holders (one still open, a RELEASE on its way, goes at its
   * last release). Backups are removed only by `vdiskfs rm` (READ_ONLY).
   */
  async unlink (volume: Volume): Promise<void> {
    if (volume.kind === 'backup') throw this.refused(`unlink of ${volume.label}`, readOnly(`backup ${volume.name} (remove it with 'vdiskfs rm')`))
    await this.remove(volume, { force: true })
  }

  /**
   * Removes a volume; its data stays as long as another volume's map references it. A volume with open
   * handles is refused (BUSY) unless `force`; forced, it goes as unlink(2) goes: out of the namespace
   * now (its name is free again), readable and writable by its holders, removed at the last release.
   */
  async remove (volume: Volume, options: { force?: boolean } = {}): Promise<void> {
    this.checkUnprotected(volume)
    const held = await this.inUse(volume, options.force === true)
    // Protected while this waited for releases: still refused.
    this.checkUnprotected(volume)
    if (held) this.hide(volume)
    else this.forget(volume)
    await this.commit()
  }

  /**
   * Removes units of volumes (prune: a backup, or the backups of one consistency group) with one
   * commit for up to `pruneCommitVolumes` of them, not one each. A unit goes whole or stays whole: each
   * member still here is checked (not protected, not open: prune does not wait for holders) and the
   * unit forgotten with no await in between, so nothing opened or protected after the check is removed.
   * Durable on return. Returns, per unit, null (removed) or why it stayed.
   */
  async removeUnits (units: Volume[][]): Promise<Array<VdiskError | null>> {
    const results: Array<VdiskError | null> = []
    let uncommitted = 0
    for (const unit of units) {
      const why = this.whyKept(unit)
      if (why === null) {
        for (const volume of unit) {
          if (this.volumes.get(volume.id) !== volume) continue // removed since (rm): gone already
          this.forget(volume)
          uncommitted++
        }
      }
      results.push(why)
      if (uncommitted >= pruneCommitVolumes) {
        await this.commit()
        uncommitted = 0
      }
    }
    if (uncommitted > 0) await this.commit()
    return results
  }

  private whyKept (unit: Volume[]): VdiskError | null {
    const group = unit.length > 1 ? `: its group ${unit[0].groupName ?? ''} is kept whole` : ''
    for (const volume of unit) {
      if (this.volumes.get(volume.id) !== volume) continue
      if (volume.hidden) return notFound(volume.label)
      if (volume.isProtected) return notPermitted(`${volume.label} is protected${group}`)
      if (volume.openHandles > 0) return new VdiskError('BUSY', `${volume.label} is in use${group}`)
    }
    return null
  }

  /** NOT_PERMITTED for a protected backup: nothing removes it (rm, --force, prune) until it is unprotected. */
  private checkUnprotected (volume: Volume): void {
    if (volume.isProtected) throw notPermitted(`${volume.label} is protected: run vdiskfs unprotect on it first`)
  }

  /**
   * Protects a backup (`on`) or lifts its protection: prune keeps a protected backup and rm refuses
   * it, with or without force. Durable on return. Errors: INVALID for a disk or clone.
   */
  async protect (volume: Volume, on: boolean): Promise<void> {
    if (volume.kind !== 'backup') throw invalid(`${volume.label} is a ${volume.kind}: only backups are protected (disks and clones are removed only by whoever removes them)`)
    this.checkStillHere(volume)
    if (volume.isProtected === on) return
    volume.isProtected = on
    volume.rowDirty = true
    this.changed(volume)
    await this.commit()
  }

  /** Sets a volume's note (null or '' clears it). Durable on return. Errors: INVALID for a note too long. */
  async setNote (volume: Volume, note: string | null): Promise<void> {
    const text = note === '' ? null : note
    if (text !== null && Buffer.byteLength(text) > noteBytesMax) throw invalid(`a note holds at most ${noteBytesMax} bytes (this one has ${Buffer.byteLength(text)})`)
    this.checkStillHere(volume)
    volume.note = text
    volume.rowDirty = true
    this.changed(volume)
    await this.commit()
  }

  /**
   * Renames a volume of any kind within its directory (`vdiskfs rename`; zfs rename): a backup too,
   * which rename(2) through the mount refuses. Never replaces a volume (EXISTS). The new name is held
   * from its check to the rename, and the volume must not be open (BUSY, after the releases on their
   * way): libfuse keeps a holder's node under the old name, as for promote. A volume removed, renamed
   * or promoted while this waited is NOT_FOUND under its old name.
   */
  async renameVolume (volume: Volume, newName: string): Promise<void> {
    const kind = volume.kind
    const oldName = volume.name
    checkName(newName)
    this.checkStillHere(volume)
    if (newName === oldName) return
    await this.withNewName(kind, newName, async () => {
      await this.inUse(volume, false)
      if (volume.kind !== kind || volume.name !== oldName) throw notFound(`${kind} ${oldName}`)
      volume.name = newName
      volume.rowDirty = true
      this.changed(volume)
      this.relabelMadeFrom(volume)
    })
    await this.commit()
  }

  /** A handle on `volume` was opened (the FUSE adapter's open and create). READ_ONLY: a writable handle on a backup. */
  opened (volume: Volume, writable: boolean): void {
    if (writable && volume.kind === 'backup') throw this.refused(`open for writing of ${volume.label}`, readOnly(`backup ${volume.name}`))
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
   * data is then garbage for gc. Returns their labels. A volume libfuse 2 hid under a `.fuse_hidden…`
   * name (pools served by that transport) is shown again under that name instead, as libfuse's own
   * unlink of it or a user's mv of an open image to such a name cannot be told apart: nothing is dropped
   * on a guess (`vdiskfs rm` removes it); dropped only when that name is taken meanwhile.
   */
  async dropHidden (): Promise<string[]> {
    // Held open only after a takeover (the handles the kernel still uses, restored by the FUSE 3
    // operations): those go at their last release, as while the daemon ran.
    const hidden = [...this.volumes.values()].filter(v => v.hidden && v.openHandles === 0)
    const dropped: string[] = []
    for (const volume of hidden) {
      const libfuseName = libfuseNameOf(volume.name)
      if (libfuseName !== null && this.named(volume.kind, libfuseName) === undefined) {
        volume.name = libfuseName
        volume.rowDirty = true
        this.changed(volume)
      } else {
        dropped.push(volume.label)
        this.forget(volume)
      }
    }
    if (hidden.length > 0) await this.commit()
    return dropped
  }

  /**
   * Whether `volume` is held open, after up to inUseGraceMs for releases on their way (the kernel sends
   * RELEASE after close(2) or losetup -d has returned). Throws BUSY when it is and `force` is not set,
   * NOT_FOUND when it was removed meanwhile.
   */
  private async inUse (volume: Volume, force: boolean): Promise<boolean> {
    for (let waitedMs = 0; !force && volume.openHandles > 0 && waitedMs < inUseGraceMs; waitedMs += inUsePollMs) {
      await new Promise(resolve => setTimeout(resolve, inUsePollMs))
    }
    if (this.volumes.get(volume.id) !== volume || volume.hidden) throw notFound(volume.label)
    if (volume.openHandles > 0 && !force) {
      throw new VdiskError('BUSY', `${volume.label} is in use (${volume.openHandles} open handle${volume.openHandles === 1 ? '' : 's'}): close it first, or use --force`)
    }
    return volume.openHandles > 0
  }

  /** Takes an open volume out of the namespace under a hidden name, committed as such (see Volume.hidden). */
  private hide (volume: Volume): void {
    volume.name = removedName(volume.id)
    volume.rowDirty = true
    this.changed(volume)
  }

  private forget (volume: Volume): void {
    this.volumes.delete(volume.id)
    this.state.activeExtents.delete(volume.id)
    if (volume.persisted) this.state.removed.add(volume.id)
    this.changed(volume)
  }

  /**
   * Takes an immutable point-in-time backup of a disk or clone. Every write acknowledged before the
   * call is in it. Cost: a copy of the root (8 bytes per 256 MiB of address space) plus one commit.
   */
  async backup (source: Volume, name: string, timing?: BackupTiming): Promise<Volume> {
    if (source.kind === 'backup') throw invalid(`${source.name} is a backup; back up a disk or a clone`)
    const started = performance.now()
    const backup = await this.copyOfWritable(source, 'backup', name, source, timing)
    const committing = performance.now()
    const commit = await this.committer.commit()
    if (timing !== undefined) { timing.madeMs = committing - started; timing.commit = commit }
    return backup
  }

  /**
   * A new volume of `kind` named `name` holding what the disk or clone `source` holds (backup, copy):
   * the source's writes in flight drain first (its gate), then the root is copied, the source takes a
   * new epoch (every page is shared from now on: it copies before it changes one) and its writable
   * extents freeze, so it never rewrites in place a slot the new volume reads. `lineage` is what the new
   * volume stands on (a backup's source; nothing for a copy). The name is held from its check to the
   * creation, and a source removed while its writes drained is NOT_FOUND.
   */
  private async copyOfWritable (source: Volume, kind: VolumeKind, name: string, lineage: Volume | null, timing?: BackupTiming): Promise<Volume> {
    // A clone of a lazy pull's backup still pending (its blocks not mapped yet are no holes): its map
    // whole first. Pending never comes back once ended, and the source is checked after the pause below.
    if (source.pendingMap !== null) await source.mapped()
    const asked = performance.now()
    return await this.withNewName(kind, name, async () => {
      const named = performance.now()
      await source.pause()
      if (timing !== undefined) { timing.nameMs = named - asked; timing.pauseMs = performance.now() - named }
      try {
        this.checkStillHere(source)
        const made = this.newVolume(kind, name, source.size, source.map.copyRoot(), source.map, lineage)
        source.map.epoch = this.state.nextEpoch++
        this.state.freezeActiveExtent(source)
        return made
      } finally {
        source.resume()
      }
    })
  }

  /**
   * One atomic backup of several disks or clones (a consistency group: a VM's disks): backup
   * `names[i]` of `sources[i]`, each marked with `group`. Every name and the group's name are held from
   * their check to the creation (taken in sorted order, so two group backups never wait for each other
   * in a circle); every source's writes are paused (in id order, for the same reason) and, once all of
   * them drained, all roots are copied in one synchronous step and committed in one commit. So the
   * group is one instant's state of all its disks: a write acknowledged before the call is in it, none
   * issued after, and no write is in it whose predecessor on another disk (acknowledged before it was
   * issued) is not. A source removed while this waited is NOT_FOUND, and then no backup is made.
   * Errors: INVALID (a backup among the sources, a source twice, names and sources not one for one),
   * EXISTS (a name, or a group of that name), NOT_FOUND, and what commit throws.
   */
  async backupGroup (sources: Volume[], names: string[], group: string): Promise<Volume[]> {
    if (sources.length === 0 || sources.length !== names.length) throw invalid('a group backup needs one name per image')
    for (const source of sources) if (source.kind === 'backup') throw invalid(`${source.name} is a backup; back up disks and clones`)
    if (new Set(sources.map(s => s.id)).size !== sources.length) throw invalid('an image is named twice in the group')
    if (new Set(names).size !== names.length) throw invalid('two backups of the group would have one name')
    checkName(group)
    for (const name of names) checkName(name)
    // Pending clones (a lazy pull's) whole first, as for one backup (copyOfWritable).
    for (const source of sources) if (source.pendingMap !== null) await source.mapped()
    const releases: Array<() => void> = []
    try {
      releases.push(await this.state.whenNameFree(`group/${group}`, () => {
        if (this.list('backup').some(v => v.groupName === group && !v.hidden)) throw exists(`backup group ${group}`)
        return this.state.reserveName(`group/${group}`)
      }))
      for (const name of [...names].sort()) releases.push(await this.withFreeName('backup', name, () => this.state.reserveName(`backup/${name}`)))
      const made = await this.pausedTogether(sources, () => {
        for (const source of sources) this.checkStillHere(source)
        const backups = sources.map((source, i) => {
          const backup = this.newVolume('backup', names[i], source.size, source.map.copyRoot(), source.map, source)
          backup.groupName = group
          return backup
        })
        for (const source of sources) {
          source.map.epoch = this.state.nextEpoch++
          this.state.freezeActiveExtent(source)
        }
        return backups
      })
      await this.commit()
      return made
    } finally {
      for (const release of releases) release()
    }
  }

  /**
   * Runs `step` (synchronous) with every volume of `volumes` paused: their gates closed and their writes
   * in flight drained, paused in id order (two callers never wait for each other in a circle); all
   * resumed afterwards, whatever happens.
   */
  private async pausedTogether<T> (volumes: Volume[], step: () => T): Promise<T> {
    const paused: Volume[] = []
    try {
      for (const volume of [...volumes].sort((a, b) => a.id - b.id)) {
        await volume.pause()
        paused.push(volume)
      }
      return step()
    } finally {
      for (const volume of paused) volume.resume()
    }
  }

  /** The backups of consistency group `group`, in id order (NOT_FOUND when there are none). */
  groupMembers (group: string): Volume[] {
    const members = this.visible('backup').filter(v => v.groupName === group).sort((a, b) => a.id - b.id)
    if (members.length === 0) throw notFound(`backup group ${group}`)
    return members
  }

  /**
   * Restores every disk or clone a group's backups were taken from to its backup, in one step (all
   * targets paused together, one commit): the VM's disks go back to one instant together. Refused
   * (BUSY) while any target is open unless `force`; NOT_FOUND when a member's source is gone (then
   * nothing is restored: restore that member with `restore` to another image).
   */
  async restoreGroup (group: string, options: { force?: boolean } = {}): Promise<Array<{ backup: Volume, target: Volume }>> {
    // A member whose references are still being applied (a lazy pull's) is waited for first; the
    // members and targets are found after that await.
    for (const backup of this.groupMembers(group)) await backup.mapped()
    const members = this.groupMembers(group)
    const pairs = members.map(backup => {
      const target = this.liveSource(backup)
      if (target === undefined || target.kind === 'backup') throw notFound(`the image backup ${backup.name} of group ${group} was taken from (${backup.sourceLabel ?? '?'})`)
      return { backup, target }
    })
    // A pending clone among the targets (a lazy pull's) whole first, as for restore.
    for (const { target } of pairs) if (target.pendingMap !== null) await target.mapped()
    for (const { target } of pairs) await this.inUse(target, options.force === true)
    await this.pausedTogether(pairs.map(p => p.target), () => {
      // Any of them may have been removed, or opened, while this waited.
      for (const { backup, target } of pairs) { this.checkStillHere(backup); this.checkStillHere(target) }
      if (options.force !== true) {
        const open = pairs.find(p => p.target.openHandles > 0)
        if (open !== undefined) throw new VdiskError('BUSY', `${open.target.label} is in use: close it first, or use --force`)
      }
      for (const { backup, target } of pairs) this.pointAt(target, backup)
    })
    await this.commit()
    return pairs
  }

  /**
   * Clones every backup of a group (`names[i]` for the i-th of groupMembers(group)), in one commit:
   * each name held from its check to the creation. Errors: EXISTS, INVALID, NOT_FOUND.
   */
  async cloneGroup (group: string, names: (backup: Volume) => string): Promise<Volume[]> {
    for (const backup of this.groupMembers(group)) await backup.mapped()
    const members = this.groupMembers(group)
    const wanted = members.map(names)
    if (new Set(wanted).size !== wanted.length) throw invalid('two clones of the group would have one name')
    for (const name of wanted) checkName(name)
    const releases: Array<() => void> = []
    try {
      for (const name of [...wanted].sort()) releases.push(await this.withFreeName('clone', name, () => this.state.reserveName(`clone/${name}`)))
      for (const backup of members) this.checkStillHere(backup)
      const clones = members.map((backup, i) => this.newVolume('clone', wanted[i], backup.size, backup.map.copyRoot(), backup.map, backup))
      await this.commit()
      return clones
    } finally {
      for (const release of releases) release()
    }
  }

  /**
   * Creates a writable copy-on-write clone standing on a backup. `pending`: the backup's references are
   * still being applied (Pool.clonePending, under the lock their batches take): the clone gets identity
   * `pending.uuid` (its record's) and `pending.made` makes it pending in the step that makes it; without
   * it, a backup being applied is waited for whole first.
   */
  async clone (backup: Volume, name: string, pending?: { uuid: string, made: (clone: Volume) => void }): Promise<Volume> {
    if (backup.kind !== 'backup') throw invalid(`${backup.name} is a ${backup.kind}; clones stand on backups (take one with 'vdiskfs backup')`)
    // Its map whole first (a lazy pull's references applied); still here is checked in the step below.
    if (pending === undefined) await backup.mapped()
    // The backup may be removed while the name is waited for: checked in the turn the clone is made.
    const clone = await this.withFreeName('clone', name, () => {
      this.checkStillHere(backup)
      if (pending !== undefined) this.state.catalog.expectVolume(this.state.nextVolumeId, pending.uuid)
      const made = this.newVolume('clone', name, backup.size, backup.map.copyRoot(), backup.map, backup)
      if (pending !== undefined) {
        // The backup's map still changes (the apply's sets): a new epoch, so that it copies a page it
        // shares with the clone before it changes it (block-map.ts), as a disk does when backed up. The
        // clone's entries are the apply's to set, counted in its own counters.
        backup.map.epoch = this.state.nextEpoch++
        backup.rowDirty = true
        this.changed(backup)
        pending.made(made)
      }
      return made
    })
    await this.commit()
    return clone
  }

  /**
   * Copies any volume to a new disk named `name` (vdiskfs cp, the answer to cp --reflink): O(1), as a
   * backup is. The copy takes a copy of the source's root and a new epoch, so both copy a shared map
   * page before they change it; a disk or clone source is paused for the moment of the copy, takes a new
   * epoch and has its active extent frozen (as for a backup), so it never rewrites in place a slot the
   * copy reads. No hidden backup is needed: the copy is in the state a clone is in once its backup was
   * removed, which gc, space, verify and repair already handle. The copy stands on nothing (its
   * lineage is empty) and belongs to the daemon's user, mode 0600, as a new disk does.
   * Errors: EXISTS, INVALID for a bad name.
   */
  async copy (source: Volume, name: string): Promise<Volume> {
    if (source.kind === 'backup') {
      await source.mapped()
      const copy = await this.withFreeName('disk', name, () => {
        this.checkStillHere(source)
        return this.newVolume('disk', name, source.size, source.map.copyRoot(), source.map, null)
      })
      await this.commit()
      return copy
    }
    const copy = await this.copyOfWritable(source, 'disk', name, null)
    await this.commit()
    return copy
  }

  /**
   * Turns a clone into a disk named `name` (disks/NAME; `rbd flatten` or `zfs promote` elsewhere): O(1),
   * since a clone never depended on its backup's existence, only on the blocks it shares, which stay as
   * long as it does. Its lineage (the backup it came from) is kept for `ls`. Refused while the clone is
   * held open (BUSY): the file changes directory, and libfuse would keep the holder's node under the
   * old name, so a new clone made there would share the holder's inode and page cache.
   * Errors: INVALID (not a clone, bad name), EXISTS, BUSY.
   */
  async promote (clone: Volume, name: string): Promise<void> {
    if (clone.kind !== 'clone') throw invalid(`${clone.label} is not a clone: only a clone can be promoted to a disk`)
    await this.withNewName('disk', name, async () => {
      // inUse waits for releases on their way, then checks the clone is still here.
      await this.inUse(clone, false)
      if (clone.kind !== 'clone') throw invalid(`${clone.label} is not a clone any more (promoted meanwhile)`)
      clone.rename('disk', name)
      clone.rowDirty = true
      this.changed(clone)
      this.relabelMadeFrom(clone)
    })
    await this.commit()
  }

  /**
   * Points `target` at `backup`'s content (restore): a copy of its root under a new epoch, its counters
   * and size, the target's writable extents frozen. Call with the target paused.
   */
  private pointAt (target: Volume, backup: Volume): void {
    // The size first: the map's watchers (the FUSE fast path) read it when told of the new entries.
    target.size = backup.size
    target.map.pointAt(backup.map, this.state.nextEpoch++)
    target.mtimeMs = Date.now()
    target.rowDirty = true
    this.state.freezeActiveExtent(target)
    this.changed(target)
  }

  /**
   * Points a disk or clone back at a backup's content (O(1), keeps every backup). Refused (BUSY) while
   * the target is held open, unless `force`: its holder would see its content change underneath.
   */
  async restore (backup: Volume, target: Volume, options: { force?: boolean } = {}): Promise<void> {
    if (backup.kind !== 'backup') throw invalid(`${backup.name} is a ${backup.kind}, not a backup`)
    if (target.kind === 'backup') throw readOnly(`backup ${target.name}`)
    // The backup's map whole first (a lazy pull's), and the target's (a pending clone: the apply must not
    // set its entries over the restored ones); both are checked again after the awaits below.
    await backup.mapped()
    if (target.pendingMap !== null) await target.mapped()
    await this.inUse(target, options.force === true)
    await target.pause()
    try {
      // Either may have been removed while this waited: a removed backup's blocks are gc's to free.
      this.checkStillHere(backup)
      this.checkStillHere(target)
      this.pointAt(target, backup)
    } finally {
      target.resume()
    }
    await this.commit()
  }
}

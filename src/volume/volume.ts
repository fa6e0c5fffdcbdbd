/**
 * A volume (disk, backup or clone) and its data path: byte-range reads and writes over the block map
 * and the delta extents. Backups refuse every change (READ_ONLY).
 *
 * Concurrency: the kernel may send several writes at once. Writes to one block are serialized by a
 * per-block lock (a partial write is a read-modify-write); a write reaches the map only after its bytes
 * are in the extent, so a reader sees the old block or the new one. `pause()` stops new writes and waits
 * for the ones in flight: a backup takes its copy only then, so no write lands in a frozen extent after
 * the backup returns.
 *
 * Partial slots (issue #10, qcow2's extended L2 idea): the first write of whole 4 KiB sectors into a
 * block stored as a chunk writes only those sectors, to a new slot whose base is the chunk; a read
 * merges the sectors written with the chunk underneath. A write of part of a sector reads that sector's
 * old bytes first, so a partial slot is only ever written in whole sectors.
 *
 * Errors: read/write/truncate throw READ_ONLY, TOO_BIG, NO_SPACE, IO or CORRUPT (errors.ts).
 */
import assert from 'node:assert/strict'
import { VolumeKind, VolumeRow } from '../catalog/catalog'
import { RacedRead, VdiskError, readOnly } from '../errors'
import { extentSectorBytes } from '../format/extent-format'
import { deltaEntry, entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entryKindHole, entryKindLost, entrySlot } from '../format/map-format'
import { discardBlocksPerTurn, readRetriesMax, volumeBytesMax } from '../limits'
import { BlockMap, RootIds } from '../map/block-map'
import { DeltaExtent, ExtentStore } from '../extent/delta-extent'
import { ChunkStore } from '../chunk/chunk-store'
import { isHiddenName } from './names'
import type { ChangeJournal } from './journal'
import type { PendingMap } from './lazy-refs'

/** What a volume needs from its pool: the extents, and a writable extent for new blocks. */
export interface VolumeContext {
  readonly blockBytes: number
  readonly extents: ExtentStore
  readonly chunks: ChunkStore
  /** The volume's active extent with at least one free slot, created or rotated as needed. */
  activeExtent (volume: Volume): Promise<DeltaExtent>
  /** Claims room for `bytes` of new data; throws NO_SPACE when the pool's filesystem is nearly full. */
  claimSpace (bytes: number): void
  /** Called after any change, so the pool commits it in time. */
  changed (volume: Volume): void
  /**
   * Takes the fast path's first writes into the maps (PoolState.settleNative): every operation calls
   * it before it looks at its map, so it never serves or changes a block from an entry a native
   * WRITE already answered has replaced (docs/FASTPATH.md, "First writes").
   */
  settleNative (): void
  /**
   * A new slot of `extent` for the volume, claimed in this step: from the FUSE addon's lease when the
   * volume has one in that extent (slots stay dense), else the extent's next.
   */
  claimSlot (volume: Volume, extent: DeltaExtent): number
  /** Where map entries and sizes changed since the last commit are appended (volume/journal.ts). */
  readonly journal?: ChangeJournal
  /** The daemon's log: refused operations are logged there (the README promises it). */
  readonly log?: (message: string) => void
}

/** What a volume says of itself to the CLI (ls, backup, clone, rm): its catalog row without the map and owner. */
export type VolumeInfo = Pick<VolumeRow, 'id' | 'kind' | 'name' | 'size' | 'createdMs' | 'mtimeMs' | 'sourceId' | 'sourceLabel'> &
  { protected: boolean, note: string | null, sourceUuid: string | null, groupName: string | null }

export class Volume implements Omit<VolumeInfo, 'protected'> {
  /** Set when the catalog row is behind (size, name, mtime, map counters, active extent). */
  rowDirty = false
  /**
   * Set when its counters count a seal pass's repoint that waits for the pass's commit (or its row was
   * last committed without one): the pass's commit writes the row (docs/CONCURRENCY.md, "A seal
   * pass's repoints wait for its own commit").
   */
  rowDeferred = false
  /** False until the row is first committed. */
  persisted = false
  /**
   * A lazy pull's backup whose references are still being applied after the reply (lazy-refs.ts), or a
   * clone of it made meanwhile, pending with it: blocks from pendingMap.from on may not be mapped yet.
   * Set in the step that inserts the volume (or as the pool opens), null once they are all committed;
   * never set again.
   */
  pendingMap: PendingMap | null = null
  /**
   * Open handles on this volume (files and loop devices holding the image, as the FUSE adapter counts
   * them): `rm` and `restore` refuse while there are any, unless forced.
   */
  openHandles = 0
  /**
   * Owner, group and permission bits (st_mode & 0o7777), kept in the catalog. The kernel checks them
   * (the mount uses default_permissions); the pool sets them when it makes or loads the volume.
   */
  uid = 0
  gid = 0
  mode = 0o600
  /** A backup `vdiskfs protect` set: prune keeps it, rm refuses it (NOT_PERMITTED) until unprotected. */
  isProtected = false
  /** The admin's note (`vdiskfs note`), or null. */
  note: string | null = null
  /** The identity of the volume this one was made from (see VolumeRow.sourceUuid), or null. */
  sourceUuid: string | null = null
  /** Backups: the consistency group it was taken in, or null. */
  groupName: string | null = null
  activeExtentId: number | null
  /**
   * Extents this volume alone may still write in place: its active one and earlier ones it filled
   * since its last backup or restore. A backup (or sealing) freezes them; after a restart only the
   * active one is writable again.
   */
  readonly writableExtents = new Set<number>()
  private inflight = 0
  private drained: (() => void) | null = null
  private gate: Promise<void> | null = null
  private openGate: (() => void) | null = null
  private readonly blockLocks = new Map<number, Promise<void>>()
  /** A block of zeros, shared by every volume (read, compared and written from; never written into). */
  private readonly zeros: Buffer
  /**
   * The FUSE fast path's WRITEs of this volume (src/fuse/fast-reads.ts): `exclude(block)` ends native
   * WRITEs of the block until it is published writable again (waiting for those in flight), `pause()`
   * does that for every block. Null: no native writer.
   */
  nativeWrites: { exclude: (block: number) => Promise<void>, pause: () => Promise<void> } | null = null

  constructor (
    private readonly context: VolumeContext,
    readonly id: number,
    kind: VolumeKind,
    name: string,
    public size: number,
    readonly createdMs: number,
    public mtimeMs: number,
    readonly sourceId: number | null,
    /** The source's label (`KIND NAME`), kept current while it lives: shown once it is gone. */
    public sourceLabel: string | null,
    readonly map: BlockMap,
    activeExtentId: number | null
  ) {
    this.kindNow = kind
    this.nameNow = name
    this.activeExtentId = activeExtentId
    if (activeExtentId !== null) this.writableExtents.add(activeExtentId)
    this.zeros = zeroBlock(context.blockBytes)
    const journal = context.journal
    if (journal !== undefined) map.onSet = (block, entry) => journal.entry(id, block, entry)
  }

  private kindNow: VolumeKind
  private nameNow: string
  /** Told of every change of kind or name, with the key before it (the pool's table keeps its name index: VolumeTable). */
  renamed: ((volume: Volume, oldKey: string) => void) | null = null
  get kind (): VolumeKind { return this.kindNow }
  set kind (kind: VolumeKind) { const old = this.key; this.kindNow = kind; this.renamed?.(this, old) }
  get name (): string { return this.nameNow }
  set name (name: string) { const old = this.key; this.nameNow = name; this.renamed?.(this, old) }
  /** Both at once (a promote: no moment with the new kind and the old name, which another volume may hold). */
  rename (kind: VolumeKind, name: string): void { const old = this.key; this.kindNow = kind; this.nameNow = name; this.renamed?.(this, old) }
  /** Kind and name, as the table of names knows the volume. */
  get key (): string { return `${this.kindNow}/${this.nameNow}` }
  get label (): string { return `${this.kind} ${this.name}` }
  /** Whether pause() holds the volume (its writable extents may be about to freeze). */
  get paused (): boolean { return this.gate !== null }
  /** Whether an engine write or discard of the block is in flight. */
  blockBusy (block: number): boolean { return this.blockLocks.has(block) }

  /** Logs an operation on this volume that it refuses (a backup's size, times, mode), and returns the error to throw. */
  private refused (what: string, err: VdiskError): VdiskError {
    this.context.log?.(`refused: ${what} of ${this.label} (${err.code}): ${err.message}`)
    return err
  }
  /**
   * Removed while open (rm --force, or unlinked through the mount): out of the namespace, kept for its
   * open handles, removed at their last release. Its hidden name (names.ts: a leading '/', which no
   * user's name has) is what it is committed under, so a restart after a crash drops it.
   */
  get hidden (): boolean { return isHiddenName(this.name) }

  /**
   * The root as it is now, for a walk across awaits that takes one root at a time (issue #21: gc's
   * mark, sealing's first pass, the space accounting): a backup's whose root never changes again (read
   * from the catalog, not a lazy pull's still being applied) is read when the walk comes to it, and not
   * kept when it was not in memory (BlockMap.peekRoot; the same ids; one removed meanwhile kept its
   * root, VolumeTable.detach), any other's is shared now
   * (BlockMap.shareRoot: the map copies it before its next change).
   */
  rootForWalk (): () => RootIds {
    if (this.kind === 'backup' && this.pendingMap === null && this.map.rootLazy) return () => this.map.peekRoot()
    const root = this.map.shareRoot()
    return () => root
  }
  get storedBytes (): number { return this.map.storedBytes }

  /** Reads up to target.length bytes at `position`; returns how many (0 at or past the end). */
  async read (target: Buffer, position: number): Promise<number> {
    this.context.settleNative()
    const length = Math.max(0, Math.min(target.length, this.size - position))
    if (length === 0) return 0
    const blockBytes = this.context.blockBytes
    // A block not mapped yet (a lazy pull's references still being applied) is never read as the map's
    // 0: the read waits for the batches holding its blocks (the apply takes them next), then reads the
    // map as it is then (below, after the await).
    const pending = this.pendingMap
    const last = Math.floor((position + length - 1) / blockBytes)
    if (pending !== null && last >= pending.from) {
      const first = Math.max(pending.from, Math.floor(position / blockBytes))
      await pending.waitBlocks(first, last, this.describe(first, 0, blockBytes))
    } else if (pending !== null) return await pending.headRead(async () => await this.readMapped(target, position, length))
    return await this.readMapped(target, position, length)
  }

  /** read() of `length` bytes (inside the size) once the blocks they touch are mapped. */
  private async readMapped (target: Buffer, position: number, length: number): Promise<number> {
    const blockBytes = this.context.blockBytes
    const reads: Array<Promise<void>> = []
    // Blocks stored as chunks go to the workers together, in one task.
    const chunked: Array<{ block: number, entry: number, id: number, offset: number, target: Buffer, what: string }> = []
    for (let done = 0; done < length;) {
      const at = position + done
      const block = Math.floor(at / blockBytes)
      const offset = at % blockBytes
      const count = Math.min(blockBytes - offset, length - done)
      const piece = target.subarray(done, done + count)
      const entry = this.map.get(block)
      if (entryKind(entry) === entryKindChunk) chunked.push({ block, entry, id: entryChunkId(entry), offset, target: piece, what: this.describe(block, offset, count) })
      else reads.push(this.readBlock(block, offset, piece))
      done += count
    }
    if (chunked.length > 0) reads.push(this.readChunks(chunked))
    await Promise.all(reads)
    return length
  }

  /**
   * Reads whole blocks, neighbours or not (an export's), into their targets: those stored as chunks
   * in one worker task as read() does, the others through read() (so the end of the last block past
   * the size stays as the caller left it).
   */
  async readBlocks (blocks: Array<{ block: number, target: Buffer }>): Promise<void> {
    const blockBytes = this.context.blockBytes
    // A lazy pull's blocks not mapped yet: their batches first (the apply takes them next), as read() does.
    if (this.pendingMap !== null && blocks.length > 0) {
      let first = Infinity
      let last = -1
      for (const { block } of blocks) { first = Math.min(first, block); last = Math.max(last, block) }
      await this.mappedIn(first * blockBytes, (last - first + 1) * blockBytes, 'a read of')
    }
    const chunked: Array<{ block: number, entry: number, id: number, offset: number, target: Buffer, what: string }> = []
    const reads: Array<Promise<unknown>> = []
    for (const { block, target } of blocks) {
      const entry = this.map.get(block)
      if (entryKind(entry) === entryKindChunk) chunked.push({ block, entry, id: entryChunkId(entry), offset: 0, target, what: `${this.label} block ${block}` })
      else reads.push(this.read(target, block * blockBytes))
    }
    if (chunked.length > 0) reads.push(this.readChunks(chunked))
    await Promise.all(reads)
  }

  /** Reads pieces of blocks stored as chunks in one worker task; a block that moved meanwhile is read again from where it is now. */
  private async readChunks (chunked: Array<{ block: number, entry: number, id: number, offset: number, target: Buffer, what: string }>): Promise<void> {
    let failure: unknown = null
    try { await this.context.chunks.readMany(chunked) } catch (err) { failure = err }
    const moved = chunked.filter(c => this.map.get(c.block) !== c.entry)
    if (failure !== null && moved.length === 0) throw failure
    await Promise.all(moved.map(async c => await this.readBlock(c.block, c.offset, c.target)))
    if (failure !== null && moved.length < chunked.length) throw failure
  }

  /**
   * Waits until every block of the map is set (a lazy pull's references applied: pendingMap), as long
   * as batches are applied; IO naming the pull once none was for the lazy wait. A caller that checked
   * anything of the pool before must check it again after this await.
   */
  async mapped (): Promise<void> {
    const pending = this.pendingMap
    if (pending !== null) await pending.wait(this.label)
  }

  /**
   * Waits until the blocks of bytes [position, position + length) are this volume's to change: a clone
   * of a lazy pull's backup pending with it (lazy-refs.ts) gets the pull's entries set in the blocks not
   * mapped yet, so a write, discard, truncate or range copy into one waits for its batch first (the
   * lazy bound, then IO naming the pull), and the apply never sets an entry over what it changed. A
   * block once mapped stays mapped (the apply never sets it again), so no check is needed after this
   * await. At once when not pending, or for blocks past the backup's end (no reference is there).
   * Callers skip the call (and its await) when pendingMap is null: the common path keeps its turns.
   */
  async owned (position: number, length: number): Promise<void> { await this.mappedIn(position, length, 'a change of') }

  /**
   * Waits until the blocks of bytes [position, position + length) are mapped (a lazy pull's batches
   * holding them applied: the apply takes them next), at most the lazy bound, then IO naming `doing`,
   * the blocks and the pull. A block once mapped stays mapped. At once when not pending.
   */
  async mappedIn (position: number, length: number, doing: string): Promise<void> {
    const pending = this.pendingMap
    if (pending === null || length <= 0) return
    const blockBytes = this.context.blockBytes
    const last = Math.floor((position + length - 1) / blockBytes)
    if (last < pending.from) return
    const first = Math.max(pending.from, Math.floor(position / blockBytes))
    await pending.waitBlocks(first, last, `${doing} ${this.describe(first, 0, (last - first + 1) * blockBytes)}`)
  }

  private describe (block: number, offset: number, length: number): string {
    const start = block * this.context.blockBytes + offset
    return `${this.label} block ${block} (bytes ${start}-${start + length - 1})`
  }

  /**
   * Reads part of one block. `settled`: the caller holds the block's lock with the native writers of
   * the block excluded (writeBlock's own reads, or the last try below), so no write races this read and
   * a checksum mismatch is damage.
   */
  private async readBlock (block: number, offset: number, target: Buffer, settled = false): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const entry = this.map.get(block)
      let failure: unknown = null
      try {
        await this.readEntry(block, entry, offset, target, settled)
      } catch (err) {
        failure = err
      }
      // Sealing may have moved the block (and emptied its extent) while this read was on its way:
      // what was read then is not to be trusted, so read again from where the block is now.
      if (this.map.get(block) !== entry && attempt < readRetriesMax) continue
      if (failure instanceof RacedRead && !settled) {
        // Writes of the block kept racing the read (O_DIRECT readers and writers of one sector): read
        // it once more with them held off, engine writes by the block's lock, native WRITEs by
        // exclude() (the lock keeps the block from being published writable again until it is done).
        await this.locked(block, async () => {
          if (this.nativeWrites !== null) await this.nativeWrites.exclude(block)
          await this.readBlock(block, offset, target, true)
        })
        return
      }
      if (failure !== null) throw failure
      return
    }
  }

  private async readEntry (block: number, entry: number, offset: number, target: Buffer, settled: boolean): Promise<void> {
    const kind = entryKind(entry)
    if (kind === entryKindHole) { target.fill(0); return }
    if (kind === entryKindDelta) {
      const extent = await this.context.extents.get(entryExtentId(entry))
      const unwritten = await this.context.extents.read(extent, entrySlot(entry), offset, target, { settled })
      if (unwritten.length > 0) await this.readUnderneath(block, entry, unwritten, offset, target)
      return
    }
    if (kind === entryKindChunk) {
      await this.context.chunks.read(entryChunkId(entry), offset, target, this.describe(block, offset, target.length))
      return
    }
    if (kind === entryKindLost) throw new VdiskError('CORRUPT', `${this.label}: block ${block} was lost (quarantined by vdiskfs repair); write the whole block to replace it`)
    throw new VdiskError('CORRUPT', `${this.label}: block ${block} has an unknown map entry kind ${kind}`)
  }

  /**
   * Fills the sectors `unwritten` of partial slot `entry` from the chunk it was written over: the part
   * of each that lies in [offset, offset + target.length) of the block. Throws CORRUPT when the base is
   * not a chunk (damage), and what the chunk read throws.
   */
  private async readUnderneath (block: number, entry: number, unwritten: number[], offset: number, target: Buffer): Promise<void> {
    const base = this.context.extents.baseOf(entryExtentId(entry), entrySlot(entry))
    if (base === null || base === undefined || entryKind(base) !== entryKindChunk) {
      throw new VdiskError('CORRUPT', `${this.label}: block ${block}: delta extent ${entryExtentId(entry)} slot ${entrySlot(entry)} has no sound base entry`)
    }
    const end = offset + target.length
    const from = Math.max(offset, unwritten[0] * extentSectorBytes)
    const to = Math.min(end, (unwritten[unwritten.length - 1] + 1) * extentSectorBytes)
    const bytes = Buffer.allocUnsafe(to - from)
    await this.context.chunks.read(entryChunkId(base), from, bytes, this.describe(block, from, to - from))
    for (const sector of unwritten) {
      const start = Math.max(from, sector * extentSectorBytes)
      const stop = Math.min(to, (sector + 1) * extentSectorBytes)
      if (start < stop) bytes.copy(target, start - offset, start - from, stop - from)
    }
  }

  /** Writes all of `data` at `position`, growing the volume when it writes past the end. */
  async write (data: Buffer, position: number): Promise<void> {
    this.context.settleNative()
    if (this.kind === 'backup') throw readOnly(`backup ${this.name}`)
    if (position + data.length > volumeBytesMax) throw new VdiskError('TOO_BIG', `${this.label}: writes past the largest volume size`)
    if (this.pendingMap !== null) await this.owned(position, data.length)
    while (this.gate !== null) await this.gate
    this.inflight++
    try {
      await this.writeRange(data, position)
    } finally {
      if (--this.inflight === 0 && this.drained !== null) this.drained()
    }
  }

  /** write() past the gate: the caller counts itself in flight, or holds the gate (truncate). */
  private async writeRange (data: Buffer, position: number): Promise<void> {
    if (position + data.length > this.size) this.setSize(position + data.length)
    const blockBytes = this.context.blockBytes
    const writes: Array<Promise<void>> = []
    for (let done = 0; done < data.length;) {
      const at = position + done
      const block = Math.floor(at / blockBytes)
      const offset = at % blockBytes
      const count = Math.min(blockBytes - offset, data.length - done)
      // The piece is cut now: the closure may run after the loop has moved on (another write holds
      // the block's lock), and `done` is advanced below in this same iteration's binding.
      const piece = data.subarray(done, done + count)
      writes.push(this.locked(block, async () => await this.writeBlock(block, offset, piece)))
      done += count
    }
    await Promise.all(writes)
    this.mtimeMs = Date.now()
    this.rowDirty = true
    this.context.changed(this)
  }

  private async writeBlock (block: number, offset: number, data: Buffer): Promise<void> {
    const blockBytes = this.context.blockBytes
    const extents = this.context.extents
    // No native WRITE of the block from here until this one is done (the block's lock keeps it from
    // being published writable, or open to a first write, meanwhile): the checksums assume one writer
    // per sector, and a write of part of the block merges it with what the block holds, which a native
    // first write answered before this point must be part of (settleNative takes it into the map).
    if (this.nativeWrites !== null) {
      await this.nativeWrites.exclude(block)
      this.context.settleNative()
    }
    // The entry stays from here: every change of it takes this block's lock, or pauses the volume,
    // which waits for this.
    const entry = this.map.get(block)
    const whole = data.length === blockBytes
    const zero = this.zeros.subarray(0, data.length).equals(data)
    if (entryKind(entry) === entryKindDelta && this.writableExtents.has(entryExtentId(entry))) {
      // The block is this volume's alone since the last backup: overwrite in place.
      if (whole && zero) { this.map.set(block, 0); return }
      const extent = await extents.get(entryExtentId(entry))
      if (extents.baseOf(extent.id, entrySlot(entry)) !== 0) {
        // A partial slot is written in whole sectors: the rest of a sector comes from the merged block.
        const { start, bytes } = await this.wholeSectors(block, entry, offset, data)
        await extents.write(extent, entrySlot(entry), start, bytes)
        return
      }
      await extents.write(extent, entrySlot(entry), offset, data)
      return
    }
    if (entry === 0) {
      if (zero) return
      // The rest of a fresh slot reads as zeros: write only the new bytes.
      await this.writeNewSlot(block, offset, data)
      return
    }
    if (whole) {
      if (zero) this.map.set(block, 0)
      else await this.writeNewSlot(block, 0, data)
      return
    }
    if (entryKind(entry) === entryKindChunk) {
      // A first write of part of a sealed block: a partial slot over the chunk, holding only the
      // sectors written (the chunk is read only for the rest of a sector written in part).
      const { start, bytes } = await this.wholeSectors(block, entry, offset, data)
      await this.writeNewSlot(block, start, bytes, entry)
      return
    }
    const merged = Buffer.allocUnsafe(blockBytes)
    await this.readBlock(block, 0, merged, true)
    data.copy(merged, offset)
    // eslint-disable-next-line vdiskfs/map-check-then-act -- writeBlock runs under this block's lock, and readBlock looked the entry up again; sealing's repoint may swap it meanwhile only for one holding the same bytes
    if (this.zeros.equals(merged)) this.map.set(block, 0)
    else await this.writeNewSlot(block, 0, merged)
  }

  /**
   * `data` at `offset` of the block, widened to whole sectors with the bytes the block holds now
   * (`entry`, read merged) around it; returns it unchanged when it covers whole sectors.
   */
  private async wholeSectors (block: number, entry: number, offset: number, data: Buffer): Promise<{ start: number, bytes: Buffer }> {
    const start = Math.floor(offset / extentSectorBytes) * extentSectorBytes
    const end = Math.ceil((offset + data.length) / extentSectorBytes) * extentSectorBytes
    if (start === offset && end === offset + data.length) return { start, bytes: data }
    const bytes = Buffer.allocUnsafe(end - start)
    // Only the first and last sectors are partly written; one read covers both.
    await this.readEntry(block, entry, start, bytes, true)
    data.copy(bytes, offset - start)
    return { start, bytes }
  }

  /**
   * Writes `data` at `offset` of a new slot for `block` and points the map at it. `base` is the chunk
   * entry the block held, for a partial slot (`data` in whole sectors); 0 for a whole slot, whose
   * unwritten bytes read as zeros. An extent of an older format cannot hold a partial slot: the block
   * is then read and written whole.
   */
  private async writeNewSlot (block: number, offset: number, data: Buffer, base = 0): Promise<void> {
    this.context.claimSpace(this.context.blockBytes)
    // Several writers may wait for the same active extent; the one that finds it full when it resumes
    // asks again. The check and the slot's claim are one synchronous step: a slot past the extent's
    // last would land where its checksum table lies.
    let extent = await this.context.activeExtent(this)
    while (extent.full) extent = await this.context.activeExtent(this)
    const slot = this.context.claimSlot(this, extent)
    if (base !== 0 && !this.context.extents.holdsPartialSlots(extent)) {
      const merged = Buffer.allocUnsafe(this.context.blockBytes)
      await this.readBlock(block, 0, merged, true)
      data.copy(merged, offset)
      offset = 0
      data = merged
      base = 0
    }
    await this.context.extents.write(extent, slot, offset, data, base)
    this.map.set(block, deltaEntry(extent.id, slot))
  }

  /**
   * Sets the size, as truncate(2): bytes past a shrink read as zeros if the volume grows again. It
   * waits for the writes and discards in flight and holds new ones back (the gate a backup closes): a
   * write that started before it and ended after it would otherwise put a block behind the new end,
   * to reappear if the volume grows again.
   */
  async truncate (size: number): Promise<void> {
    this.context.settleNative()
    if (this.kind === 'backup') throw this.refused(`truncate to ${size} bytes`, readOnly(`backup ${this.name}`))
    if (size > volumeBytesMax) throw new VdiskError('TOO_BIG', `${this.label}: ${size} bytes is past the largest volume size`)
    // A shrink changes the blocks from the new end on (the last one zeroed past it, the rest dropped).
    if (size < this.size && this.pendingMap !== null) await this.owned(size, this.size - size)
    await this.pause()
    try {
      const blockBytes = this.context.blockBytes
      if (size < this.size && size % blockBytes !== 0) {
        const block = Math.floor(size / blockBytes)
        const offset = size % blockBytes
        const end = Math.min(blockBytes, this.size - block * blockBytes)
        if (this.map.get(block) !== 0) await this.writeRange(this.zeros.subarray(0, end - offset), size)
      }
      this.setSize(size)
      this.mtimeMs = Date.now()
      this.rowDirty = true
      this.context.changed(this)
    } finally {
      this.resume()
    }
  }

  /**
   * Grows the size to at least `size` (fallocate without KEEP_SIZE): never shrinks, whatever writes
   * in flight did to the size meanwhile. Waits at the gate as a write does.
   */
  async extend (size: number): Promise<void> {
    this.context.settleNative()
    if (this.kind === 'backup') throw this.refused(`extend to ${size} bytes`, readOnly(`backup ${this.name}`))
    if (size > volumeBytesMax) throw new VdiskError('TOO_BIG', `${this.label}: ${size} bytes is past the largest volume size`)
    while (this.gate !== null) await this.gate
    if (size <= this.size) return
    this.setSize(size)
    this.mtimeMs = Date.now()
    this.context.changed(this)
  }

  /**
   * Sets blocks `first`, `first + 1`, ... to `entries` (another volume's, or this one's from elsewhere:
   * a range shared by copyRange), growing the size to cover them. Call only while holding this volume's
   * gate (pause()), with every entry's delta slots frozen (no volume writes them in place any more).
   */
  adoptEntries (first: number, entries: readonly number[]): void {
    if (this.kind === 'backup') throw readOnly(`backup ${this.name}`)
    assert.ok(this.gate !== null, 'adoptEntries without the gate')
    const end = (first + entries.length) * this.context.blockBytes
    if (end > this.size) this.setSize(end)
    for (let i = 0; i < entries.length; i++) this.map.set(first + i, entries[i])
    this.mtimeMs = Date.now()
    this.rowDirty = true
    this.context.changed(this)
  }

  /**
   * Grows the size to `size` when it is smaller (the fast path's first writes past the end, already
   * answered: fast-reads.ts settle()). Synchronous.
   */
  grownBy (size: number): void {
    if (size <= this.size) return
    this.setSize(size)
    this.mtimeMs = Date.now()
    this.context.changed(this)
  }

  /** The size a change journal's replay gives (volume/journal.ts), before the pool serves anything. */
  replaySize (size: number): void {
    this.setSize(size)
  }

  private setSize (size: number): void {
    this.context.journal?.size(this.id, size)
    this.size = size
    this.map.resize(Math.ceil(size / this.context.blockBytes))
    this.rowDirty = true
  }

  /** Sets the modification time (utimens). */
  touch (mtimeMs: number): void {
    if (this.kind === 'backup') throw this.refused('change of the modification time', readOnly(`backup ${this.name}`))
    this.mtimeMs = mtimeMs
    this.rowDirty = true
    this.context.changed(this)
  }

  /**
   * chmod(2): sets the permission bits. Whether the caller may (owner or CAP_FOWNER) is the kernel's
   * check. Throws READ_ONLY for a mode with a write bit on a backup: backups stay immutable.
   */
  chmod (mode: number): void {
    const bits = mode & 0o7777
    if (this.kind === 'backup' && (bits & 0o222) !== 0) throw this.refused(`chmod ${bits.toString(8)}`, readOnly(`backup ${this.name} (it cannot be given write permission)`))
    this.mode = bits
    this.rowDirty = true
    this.context.changed(this)
  }

  /** chown(2): a null uid or gid stays as it is. Whether the caller may is the kernel's check. */
  chown (uid: number | null, gid: number | null): void {
    if (uid !== null) this.uid = uid
    if (gid !== null) this.gid = gid
    this.rowDirty = true
    this.context.changed(this)
  }

  /** Stops new writes and waits until the ones in flight are done; `resume()` lets them go on. */
  async pause (): Promise<void> {
    while (this.gate !== null) await this.gate
    this.gate = new Promise(resolve => { this.openGate = resolve })
    if (this.inflight > 0) await new Promise<void>(resolve => { this.drained = resolve })
    this.drained = null
    // And the fast path's WRITEs: none in flight, none until resume() (nothing is published writable
    // while the gate is closed).
    if (this.nativeWrites !== null) await this.nativeWrites.pause()
  }

  resume (): void {
    const open = this.openGate
    this.gate = null
    this.openGate = null
    if (open !== null) open()
  }

  private async locked (block: number, work: () => Promise<void>): Promise<void> {
    const previous = this.blockLocks.get(block)
    let release!: () => void
    const mine = new Promise<void>(resolve => { release = resolve })
    this.blockLocks.set(block, mine)
    try {
      if (previous !== undefined) await previous
      await work()
    } finally {
      if (this.blockLocks.get(block) === mine) this.blockLocks.delete(block)
      release()
    }
  }

  info (): VolumeInfo {
    return {
      id: this.id, kind: this.kind, name: this.name, size: this.size, createdMs: this.createdMs,
      mtimeMs: this.mtimeMs, sourceId: this.sourceId, sourceLabel: this.sourceLabel,
      protected: this.isProtected, note: this.note, sourceUuid: this.sourceUuid, groupName: this.groupName
    }
  }

  /**
   * Discards `length` bytes at `offset` (fallocate PUNCH_HOLE or ZERO_RANGE; fstrim and blkdiscard
   * through a loop device): they read as zeros afterwards. Whole blocks in the range become holes, their
   * space freed once nothing else references them (a backup keeps its blocks); the partial blocks at
   * either end are written with zeros through the write path. The range is clipped to the size, unless
   * `grow` (ZERO_RANGE without KEEP_SIZE) extends the size to offset + length first. Like write(), it
   * waits at the gate a backup closes, and takes each block's lock.
   * Errors: READ_ONLY for a backup, TOO_BIG, and what write() throws for the partial blocks.
   */
  async discard (offset: number, length: number, options: { grow?: boolean } = {}): Promise<void> {
    this.context.settleNative()
    if (this.kind === 'backup') throw this.refused('discard', readOnly(`backup ${this.name}`))
    const end = offset + length
    if (end > volumeBytesMax) throw new VdiskError('TOO_BIG', `${this.label}: discards past the largest volume size`)
    if (length <= 0) return
    if (this.pendingMap !== null) await this.owned(offset, length)
    while (this.gate !== null) await this.gate
    this.inflight++
    try {
      if (options.grow === true && end > this.size) this.setSize(end)
      const stop = Math.min(end, this.size)
      if (offset >= stop) return
      const blockBytes = this.context.blockBytes
      const zeroPart = async (from: number, to: number): Promise<void> => {
        const block = Math.floor(from / blockBytes)
        await this.locked(block, async () => await this.writeBlock(block, from % blockBytes, this.zeros.subarray(0, to - from)))
      }
      // Whole blocks are [first, last); the ends of the range outside them are partial blocks.
      const first = Math.ceil(offset / blockBytes)
      const last = Math.floor(stop / blockBytes)
      if (first > last) {
        await zeroPart(offset, stop)
      } else {
        const work: Array<Promise<void>> = []
        // Whatever was started is awaited, also when the walk below throws (the volume removed and its
        // pages freed meanwhile): a rejection left without a handler would end the daemon.
        let walkFailure: { err: unknown } | null = null
        try {
          if (offset < first * blockBytes) work.push(zeroPart(offset, first * blockBytes))
          if (last * blockBytes < stop) work.push(zeroPart(last * blockBytes, stop))
          for (let turn = first; turn < last; turn += discardBlocksPerTurn) {
            if (turn > first) await new Promise(resolve => setImmediate(resolve))
            for (let block = turn; block < Math.min(last, turn + discardBlocksPerTurn); block++) {
              if (this.map.get(block) === 0) continue
              work.push(this.locked(block, async () => { this.map.set(block, 0) }))
            }
          }
        } catch (err) {
          walkFailure = { err }
        }
        const results = await Promise.allSettled(work)
        if (walkFailure !== null) throw walkFailure.err
        for (const result of results) if (result.status === 'rejected') throw result.reason
      }
      this.mtimeMs = Date.now()
      this.rowDirty = true
      this.context.changed(this)
    } finally {
      if (--this.inflight === 0 && this.drained !== null) this.drained()
    }
  }
}

/**
 * One zero block per block size for the whole process (issue #21: each volume had one of its own,
 * 64 KiB at 64 KiB blocks: 640 MiB of a daemon's memory at 10,000 backups). Callers only read it.
 */
const zeroBlocks = new Map<number, Buffer>()
function zeroBlock (bytes: number): Buffer {
  let zeros = zeroBlocks.get(bytes)
  if (zeros === undefined) zeroBlocks.set(bytes, zeros = Buffer.alloc(bytes))
  return zeros
}

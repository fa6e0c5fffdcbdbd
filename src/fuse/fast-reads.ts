/**
 * The engine's side of the FUSE fast path (docs/FASTPATH.md): READs of blocks that are holes or whole
 * slots of checked delta extents are served by the addon's worker threads themselves
 * (native/fuse3/vdiskfs_fuse3.c, "the fast path"), without the event loop. This publishes, per volume,
 * what they may serve: one word per block, learnt from the reads the engine serves (a READ the addon
 * handed over publishes the map page it touched, so the next READs there stay in the addon), and
 * cleared in the same synchronous step as every map change that moves a block (BlockMap.watch), before
 * the change is answered. A word names an extent by id; the addon reads it through a descriptor of its
 * own (registered here, dropped when the extent is removed), checks every sector against the extent's
 * checksum table, and hands the request back to the engine on anything unexpected.
 *
 * What a word can never do, and why (the argument in full is in docs/FASTPATH.md):
 * - name bytes a later write replaced: the write's map change clears the word before its reply;
 * - name bytes that were moved or freed: slots are never reused, sealing's repoint keeps the bytes, and
 *   an extent removed is dropped from the addon (its words then hand requests back), while a read in
 *   flight keeps its descriptor open;
 * - return a torn or damaged sector: the checksums fail and the engine reads (and reports) instead.
 */
import { deltaEntry, entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entryKindHole, entrySlot } from '../format/map-format'
import { pageEntries, volumeBytesMax, writebackKickBytes } from '../limits'
import type { FastReadSource } from '../volume/pool'
import type { Volume } from '../volume/volume'

/** The addon's fast path functions (one session). */
export interface FastReadNative {
  fastConfigure: (session: object, blockBytes: number, on: number) => void
  fastSize: (session: object, ino: number, size: number) => void
  fastPublish: (session: object, ino: number, firstBlock: number, words: Uint32Array) => boolean
  fastClear: (session: object, ino: number, block: number, count: number) => void
  fastDrop: (session: object, ino: number) => void
  fastExtent: (session: object, id: number, fd: number, dataStart: number, sumsStart: number) => boolean
  fastExtentDrop: (session: object, id: number) => void
  fastWrites: (session: object, on: number) => void
  fastFreeze: (session: object, ino: number, block: number, count: number) => void
  fastOdd: (session: object) => Float64Array
  fastMoved: (session: object, odd: Float64Array) => boolean
  fastExtentSeq: (session: object, id: number) => number
  fastExtentLastWrite: (session: object, id: number) => number
  fastTakeDirty: (session: object, take: number) => number[]
  fastWriteback: (session: object, bytes: number) => number
  fastVolumeWrites: (session: object, ino: number) => number
  fastPack: (session: object, id: number, file: string) => boolean
  fastPackDrop: (session: object, id: number) => void
  fastChunk: (session: object, id: number, pack: number, offset: number, stored: number, raw: number, compressed: boolean, hash: Buffer) => boolean
  fastChunkDrop: (session: object, id: number) => void
  fastLease: (session: object, ino: number, extent: number, first: number, end: number, bases: number, volumeId: number) => boolean
  fastLeaseEnd: (session: object, ino: number) => Float64Array
  fastGrow: (session: object, ino: number, bytes: number) => void
  fastLeaseTake: (session: object, ino: number, extent: number) => number
  fastAllocs: (session: object, journalFd: number) => Float64Array
  fastAllocCount: (session: object) => Uint32Array | null
}

/** Word kinds (the addon's FAST_*). */
const fastDelta = 1
const fastHole = 2
const fastWritable = 3
const fastChunk = 4
/** A sealed chunk the addon does not read (not registered): READs go to the engine; a first write of part of it makes a partial slot over it. */
const fastChunkUnread = 5
/** With fastDelta or fastWritable: a partial slot over a chunk (a sector whose checksum entry is 0 is the chunk's). */
const fastPartial = 0x20
/** A whole-block WRITE may give the block a new slot from the volume's lease (the addon's FAST_ALLOC). */
const fastAlloc = 0x80
/** Slots a lease gives the addon's first writes: 32 MiB of blocks (512 at 64 KiB, 8192 at 4 KiB), at least 16. */
const leaseBytes = 32 * 1024 * 1024
/** Chunks the addon knows at most (its FAST_CHUNKS_MAX); past it the oldest eighth is forgotten. */
const fastChunksMax = 262144
/** Chunks registered per turn of the event loop. */
const chunkRegisterSlice = 128
/** Pack descriptors the addon holds at most. */
const fastPacksMax = 256

interface Known {
  volume: Volume
  ino: number
  /** Map pages (pageEntries blocks each) published whole since their words were last cleared wholesale. */
  pages: Set<number>
  /** The addon's count of native WRITEs to the volume when last collected (collectWrites). */
  writes: number
  /** Map pages with a word published writable since the volume's words were last frozen (pauseWrites). */
  writablePages: Set<number>
  /** The slots the addon's first writes may take (fastLease): how many were given, how many were used. */
  lease: { id: number, granted: number, used: number } | null
  /** The volume's size in blocks as the map watch last heard it (a resize from it is a grow or a shrink). */
  sizeBlocks: number
  /** Published pages whose words a pause froze since: the next engine request there publishes them whole again. */
  frozenPages: Set<number>
  /** Blocks past the end are published (open to first writes) up to this one (publishTail). */
  tailEnd: number
}

/** Whether the fast path is on: VDISKFS_FAST_READS=0 turns it off (every READ to the engine). */
export const fastReadsEnabled = process.env.VDISKFS_FAST_READS !== '0'
/** Whether the addon overwrites slots itself (docs/FASTPATH.md, "Writes"): VDISKFS_FAST_WRITES=0 turns it off. */
export const fastWritesEnabled = fastReadsEnabled && process.env.VDISKFS_FAST_WRITES !== '0'
/** Whether the addon reads sealed chunks itself (docs/FASTPATH.md, "Sealed chunks"): VDISKFS_FAST_CHUNKS=0 turns it off. */
export const fastChunksEnabled = fastReadsEnabled && process.env.VDISKFS_FAST_CHUNKS !== '0'
/** Whether the addon writes first writes of whole blocks into new slots itself (docs/FASTPATH.md, "First writes"): VDISKFS_FAST_ALLOC=0 turns it off. */
export const fastAllocEnabled = fastWritesEnabled && process.env.VDISKFS_FAST_ALLOC !== '0'

export class FastReads {
  private native: FastReadNative | null = null
  private session: object | null = null
  private readonly volumes = new Map<number, Known>()
  /** Extents the addon holds a descriptor of. */
  private readonly extents = new Set<number>()
  private readonly words = new Uint32Array(pageEntries * 2)
  /** Extents some word has named writable since start: native WRITEs may change them behind the engine. */
  private readonly touched = new Set<number>()
  /** Sealed chunks the addon knows (oldest first), and the pack each was registered in. */
  private readonly chunks = new Map<number, { packId: number }>()
  /** Packs the addon holds a descriptor of. */
  private readonly packs = new Set<number>()
  /** Ranges whose chunks are being registered (registerLater), and whether that is under way. */
  private readonly chunkJobs: Array<{ known: Known, first: number, count: number, ids: number[] }> = []
  private registering = false
  /** Volumes by inode (the addon's queue of first writes names them so). */
  private readonly byIno = new Map<number, Known>()
  /** The addon's count of first writes queued (memory it shares), and the count when last taken. */
  private allocCount: Uint32Array | null = null
  private allocSeen = 0
  private settling = false
  /** Whether the addon holds the change journal's current file (it must before any lease is given). */
  private journalHeld = false

  constructor (private readonly source: FastReadSource, private readonly inodeOf: (volume: Volume) => number) {
    source.onExtentRemoved(id => this.extentRemoved(id))
    source.onPackGone((packId, moved) => this.packGone(packId, moved))
  }

  /** Starts publishing to a mounted session (nothing is published before). */
  attach (native: FastReadNative, session: object): void {
    if (!fastReadsEnabled) return
    this.native = native
    this.session = session
    native.fastConfigure(session, this.source.blockBytes, 1)
    if (!fastWritesEnabled) return
    native.fastWrites(session, 1)
    if (fastAllocEnabled) {
      this.allocCount = native.fastAllocCount(session)
      this.source.onSettle(journalFd => this.settle(journalFd))
      // The engine's own new slots come from the lease too while there is one (no gaps in the extent).
      this.source.onLeasedSlot((volume, id) => {
        const known = this.volumes.get(volume.id)
        if (known === undefined || known.volume !== volume || known.lease === null || known.lease.id !== id) return -1
        return native.fastLeaseTake(session, known.ino, id)
      })
    }
    this.source.nativeWrites({
      touched: id => this.touched.has(id),
      seq: id => native.fastExtentSeq(session, id),
      dirty: take => native.fastTakeDirty(session, take ? 1 : 0),
      lastWriteMs: id => this.touched.has(id) ? native.fastExtentLastWrite(session, id) : 0
    })
  }

  /**
   * Waits until no native WRITE that may have loaded a word before this call is in flight: each
   * worker inside one now has left it (docs/FASTPATH.md, "Writes"). Its callers first take away the
   * writable kind of the words concerned, so later WRITEs of those blocks come to the engine.
   */
  async quiesce (): Promise<void> {
    if (this.native === null || this.session === null) return
    const native = this.native
    const session = this.session
    const odd = native.fastOdd(session)
    // A native WRITE is two pwrites: a few turns of the loop at most, then a millisecond at a time.
    for (let turn = 0; odd.length > 0 && !native.fastMoved(session, odd); turn++) {
      await new Promise<void>(resolve => { if (turn < 8) setImmediate(resolve); else setTimeout(resolve, 1) })
    }
  }

  /** Native WRITEs of the block after the last ones in flight: until it is published writable again. */
  private async exclude (known: Known, block: number): Promise<void> {
    if (this.native === null || this.session === null) return
    this.native.fastFreeze(this.session, known.ino, block, 1)
    await this.quiesce()
  }

  /** No native WRITE of the volume in flight, and none until it is published writable again. */
  private async pauseWrites (known: Known): Promise<void> {
    if (this.native === null || this.session === null) return
    // Only the pages that have writable words (a whole 1 TiB volume's words are 16 million).
    for (const page of known.writablePages) {
      this.native.fastFreeze(this.session, known.ino, page * pageEntries, pageEntries)
      known.frozenPages.add(page)
    }
    known.writablePages.clear()
    known.tailEnd = 0
    // And no first write takes a slot of the lease any more: the extent may be frozen next.
    this.endLease(known)
    await this.quiesce()
    // What the first writes let in wrote is in the map before the caller looks at it.
    this.settle()
  }

  /** Ends the volume's lease: the slots no first write took go back to the extent, if they can. */
  private endLease (known: Known): void {
    if (this.native === null || this.session === null) return
    known.lease = null
    const [id, next, end] = this.native.fastLeaseEnd(this.session, known.ino)
    if (id !== 0) this.source.unlease(id, next, end)
  }

  /**
   * A lease of slots for the volume's first writes, made (or renewed once a quarter of it is left)
   * when the volume may be written natively now; false when it has none.
   */
  private leaseFor (known: Known, renew = false): boolean {
    const volume = known.volume
    if (!fastAllocEnabled || this.native === null || this.session === null || volume.nativeWrites === null || volume.paused) return false
    const lease = known.lease
    if (lease !== null && !renew && (lease.granted - lease.used) * 4 >= lease.granted) return true
    const had = lease !== null
    // The addon journals its first writes: it takes the journal's current file before its first lease
    // (with the queue, in one step; not from inside settle(), whose caller then leases next time).
    if (!this.journalHeld) {
      if (this.settling) return false
      this.settle(() => this.source.journalFd(), true)
      if (!this.journalHeld) return false
    }
    this.endLease(known)
    const slots = Math.max(16, Math.floor(leaseBytes / this.source.blockBytes))
    const range = this.source.lease(volume, slots)
    if (range === null) return false
    if (!this.extentReady(range.id)) { this.source.unlease(range.id, range.first, range.end); return false }
    // Native WRITEs change the extent behind the engine's checksum cache from now on.
    if (!this.touched.has(range.id)) {
      this.touched.add(range.id)
      this.source.forgetSums(range.id)
    }
    if (!this.native.fastLease(this.session, known.ino, range.id, range.first, range.end, range.bases, volume.id)) {
      this.source.unlease(range.id, range.first, range.end)
      return false
    }
    // A volume that had no lease: its published pages carry no first-write flags yet; the next engine
    // request in each publishes it whole again (learn).
    if (!had) for (const page of known.pages) known.frozenPages.add(page)
    known.lease = { id: range.id, granted: range.end - range.first, used: 0 }
    // The new lease may grow the volume as far as the tail published so far.
    if (known.tailEnd > 0) this.native.fastGrow(this.session, known.ino, Math.min(volumeBytesMax, known.tailEnd * this.source.blockBytes))
    return true
  }

  /**
   * The addon says the first writes of volume `ino` used most of its lease (or found it used up): the
   * queue is taken, and the lease renewed before the writers run out.
   */
  leaseLow (ino: number): void {
    this.settle()
    const known = this.byIno.get(ino)
    if (known === undefined || known.lease === null) return
    // The slots it has not taken go back to the extent, and the new lease starts with them.
    if (this.leaseFor(known, true)) this.publishTail(known)
  }

  /**
   * Takes the addon's first writes into the maps (docs/FASTPATH.md, "First writes"): each gave a
   * block a new slot and was answered; the engine must know it before it next reads a map. Called
   * before every volume operation, commit, pause, gc and seal pass (PoolState.settleNative), and
   * before words are published. Synchronous; O(1) when nothing was queued.
   */
  settle (journalFd?: () => number, hold = false): void {
    const count = this.allocCount
    if (count === null || (journalFd === undefined && count[0] === this.allocSeen) || this.settling || this.native === null || this.session === null) return
    const native = this.native
    const session = this.session
    this.settling = true
    try {
      // The count first: what is queued after this read is taken by the next call.
      this.allocSeen = count[0]
      // With journalFd (a commit's rotation, or a first lease), the addon's records go to that file
      // from this step on; none while no volume has a lease (no first write can be made then).
      let swap = -1
      if (journalFd !== undefined) {
        swap = hold || [...this.volumes.values()].some(known => known.lease !== null) ? journalFd() : -2
        this.journalHeld = swap >= 0
      }
      const taken = native.fastAllocs(session, swap)
      const blockBytes = this.source.blockBytes
      const changed = new Map<Known, number[]>()
      for (let i = 0; i + 4 < taken.length; i += 5) {
        const known = this.byIno.get(taken[i])
        if (known === undefined) continue
        const block = taken[i + 1]
        const id = taken[i + 2]
        const slot = taken[i + 3]
        const base = taken[i + 4]
        const volume = known.volume
        if (id === 0) {
          // A first write past the end grew the volume to `block` bytes (queued before its blocks).
          volume.grownBy(block)
          if (!changed.has(known)) changed.set(known, [])
          continue
        }
        if (known.lease !== null && known.lease.id === id) known.lease.used++
        // A block past the end: a truncate came after the write (it pauses, which settles first, so
        // this does not happen; the block would read as a hole anyway).
        if (block >= Math.ceil(volume.size / blockBytes)) continue
        // A partial slot over a chunk: its base entry is in the file; the extent store learns it first.
        if (base !== 0) this.source.notePartial(id, slot, base)
        // The addon journaled the entry itself before it answered (the same record again would only
        // cost the event loop a write(2) per block).
        this.source.journaled(() => volume.map.set(block, deltaEntry(id, slot)))
        let blocks = changed.get(known)
        if (blocks === undefined) changed.set(known, blocks = [])
        blocks.push(block)
      }
      for (const [known, blocks] of changed) {
        known.volume.rowDirty = true
        this.source.changed(known.volume)
        this.publishTail(known)
        // The words the addon set (FAST_NATIVE: publish leaves them) are cleared and published again
        // from the map, a run of blocks at a time.
        blocks.sort((a, b) => a - b)
        for (let i = 0; i < blocks.length;) {
          let j = i + 1
          while (j < blocks.length && blocks[j] === blocks[j - 1] + 1 && Math.floor(blocks[j] / pageEntries) === Math.floor(blocks[i] / pageEntries)) j++
          native.fastClear(session, known.ino, blocks[i], blocks[j - 1] - blocks[i] + 1)
          if (known.pages.has(Math.floor(blocks[i] / pageEntries))) this.publish(known, blocks[i], blocks[j - 1] - blocks[i] + 1)
          i = j
        }
      }
    } finally {
      this.settling = false
    }
  }

  /**
   * Volumes natively written since they were last collected get their mtime and a row to commit (the
   * engine's writes do this themselves). The daemon calls it before its periodic commit.
   */
  collectWrites (): void {
    for (const known of this.volumes.values()) this.collectKnown(known)
  }

  /**
   * Starts the writeback (sync_file_range WRITE, in the libuv pool) of each extent that native
   * overwrites changed by writebackKickBytes or more since its last start, so that the next commit's
   * fdatasync does not write it all at once (the addon's fastWriteback). The daemon calls it every
   * writebackCheckMs. Nothing durable depends on it.
   */
  startWriteback (): void {
    if (this.native === null || this.session === null) return
    this.native.fastWriteback(this.session, writebackKickBytes)
  }

  /**
   * The same for one volume: GETATTR and LOOKUP call it before they answer (a stat right after a native
   * write shows it), SETATTR before it sets a time (a time set after a native write is not then replaced).
   */
  collect (volume: Volume): void {
    const known = this.volumes.get(volume.id)
    if (known !== undefined && known.volume === volume) this.collectKnown(known)
  }

  private collectKnown (known: Known): void {
    if (this.native === null || this.session === null) return
    const writes = this.native.fastVolumeWrites(this.session, known.ino)
    if (writes === known.writes) return
    known.writes = writes
    known.volume.mtimeMs = Date.now()
    known.volume.rowDirty = true
    this.source.changed(known.volume)
  }

  /**
   * After the engine answered a READ of `length` bytes at `offset` of `volume`: publishes what the
   * addon may serve of the blocks it touched (their whole map page the first time).
   */
  learn (volume: Volume, offset: number, length: number): void {
    if (this.native === null || this.session === null || length <= 0) return
    // A lazy pull's backup whose references are still being applied (volume/lazy-refs.ts): no word until
    // they are, so no block not mapped yet is served natively as a hole (its map entry is still 0).
    if (volume.pendingMap !== null) return
    const known = this.known(volume)
    if (known === null) return
    // The lease first (a first lease marks the published pages to publish again, below).
    this.settle()
    this.leaseFor(known)
    const blockBytes = this.source.blockBytes
    const first = Math.floor(offset / blockBytes)
    const last = Math.min(Math.floor((offset + length - 1) / blockBytes), Math.ceil(volume.size / blockBytes) - 1)
    for (let page = Math.floor(first / pageEntries); page <= Math.floor(last / pageEntries); page++) {
      if (known.pages.has(page) && known.frozenPages.delete(page)) {
        // Frozen by a pause since it was published: whole again (writable, open to first writes).
        // (Past the end its words are holes, open to first writes with a lease: publishTail's.)
        this.publish(known, page * pageEntries, pageEntries)
      } else if (known.pages.has(page)) {
        const from = Math.max(first, page * pageEntries)
        const to = Math.min(last, page * pageEntries + pageEntries - 1)
        this.publish(known, from, to - from + 1)
      } else {
        this.publishPage(known, page)
        // And the page after it, ahead of a sequential reader: its sealed chunks are registered in the
        // background while this page is read, so the reader finds them there when it arrives.
        this.publishPage(known, page + 1)
      }
    }
    this.publishTail(known)
  }

  /**
   * With a lease, the blocks past the end are open to first writes too, up to the end of the page after
   * the one the end lies in (a sequential writer appends natively; the volume grows with it): those
   * two pages are published whole (known.pages: the map watch clears their words), and the lease may
   * grow the volume to their end.
   */
  private publishTail (known: Known): void {
    if (this.native === null || this.session === null || known.lease === null) return
    const endBlock = Math.ceil(known.volume.size / this.source.blockBytes)
    const endPage = Math.floor(endBlock / pageEntries)
    const to = (endPage + 2) * pageEntries
    // Published to there already (words past the end stay through grows; a shrink, a restore or a
    // pause that froze them sets tailEnd back).
    if (known.tailEnd >= to) return
    // The end page from the end on (whole if it is not published yet), and the page after it whole.
    for (let page = endPage; page <= endPage + 1; page++) {
      const from = page === endPage && known.pages.has(page) ? endBlock : page * pageEntries
      const count = (page + 1) * pageEntries - from
      if (count > 0 && !this.publish(known, from, count)) return
      known.pages.add(page)
      known.frozenPages.delete(page)
    }
    known.tailEnd = to
    if (known.lease === null) return
    this.native.fastGrow(this.session, known.ino, Math.min(volumeBytesMax, to * this.source.blockBytes))
  }

  /** Publishes map page `page` of the volume whole, if it is not published and lies inside the volume. */
  private publishPage (known: Known, page: number): void {
    if (known.pages.has(page)) return
    const count = Math.min(pageEntries, Math.ceil(known.volume.size / this.source.blockBytes) - page * pageEntries)
    if (count > 0 && this.publish(known, page * pageEntries, count)) known.pages.add(page)
  }

  /** A volume removed (or its identity ended): the addon forgets it. */
  forget (volume: Volume): void {
    const known = this.volumes.get(volume.id)
    if (known === undefined || known.volume !== volume) return
    this.volumes.delete(volume.id)
    this.byIno.delete(known.ino)
    volume.map.watch = null
    volume.nativeWrites = null
    if (this.native !== null && this.session !== null) this.native.fastDrop(this.session, known.ino)
  }

  private known (volume: Volume): Known | null {
    const native = this.native as FastReadNative
    const session = this.session as object
    const found = this.volumes.get(volume.id)
    if (found !== undefined && found.volume === volume) return found
    if (found !== undefined) this.forget(found.volume)
    const known: Known = { volume, ino: this.inodeOf(volume), pages: new Set(), writes: 0, writablePages: new Set(), lease: null, frozenPages: new Set(), tailEnd: 0, sizeBlocks: Math.ceil(volume.size / this.source.blockBytes) }
    native.fastSize(session, known.ino, volume.size)
    known.writes = native.fastVolumeWrites(session, known.ino)
    if (fastWritesEnabled && volume.kind !== 'backup') {
      volume.nativeWrites = {
        exclude: async block => await this.exclude(known, block),
        pause: async () => await this.pauseWrites(known)
      }
    }
    volume.map.watch = {
      changed: block => {
        if (known.pages.has(Math.floor(block / pageEntries))) native.fastClear(session, known.ino, block, 1)
      },
      changedFrom: from => {
        // The size first: a READ past the old end must not be answered from the old size.
        native.fastSize(session, known.ino, volume.size)
        // A grow leaves the words past the old end as they are: they were published from the map's
        // holes there, which a grow does not change (the first writes' tail, publishTail). A shrink or
        // a restore (from 0) clears them all from the new end.
        const grow = from > 0 && from >= known.sizeBlocks
        known.sizeBlocks = Math.ceil(volume.size / this.source.blockBytes)
        if (grow) return
        known.tailEnd = 0
        native.fastClear(session, known.ino, from, -1)
        const whole = Math.ceil(from / pageEntries)
        for (const page of known.pages) if (page >= whole || from === 0) known.pages.delete(page)
      }
    }
    this.volumes.set(volume.id, known)
    this.byIno.set(known.ino, known)
    return known
  }

  /** Publishes the words of `count` blocks from `first`; false when the addon could not take them. */
  private publish (known: Known, first: number, count: number, registerLater = true): boolean {
    const native = this.native as FastReadNative
    const session = this.session as object
    // The map first takes what the addon's first writes did: words are computed from it.
    this.settle()
    const words = this.words.subarray(0, count * 2)
    const map = known.volume.map
    // Blocks may be open to first writes (a new slot from the lease) while the volume has a lease.
    const alloc = this.leaseFor(known)
    // The sealed chunks among them the addon does not know yet get no word now: they are registered in
    // the background, a slice per turn of the event loop (reading their rows is too slow for one turn:
    // 60-300 ms for a page of 4096), and the range is published again after.
    if (fastChunksEnabled && registerLater) {
      const unknown: number[] = []
      for (let i = 0; i < count; i++) {
        const entry = map.get(first + i)
        if (entryKind(entry) === entryKindChunk && !this.chunks.has(entryChunkId(entry))) unknown.push(entryChunkId(entry))
      }
      if (unknown.length > 0) this.registerLater(known, first, count, unknown)
    }
    for (let i = 0; i < count; i++) {
      const entry = map.get(first + i)
      let low = 0
      let high = 0
      const kind = entryKind(entry)
      if (kind === entryKindHole) low = fastHole
      else if (kind === entryKindDelta) {
        const id = entryExtentId(entry)
        const slot = entrySlot(entry)
        const base = this.extentReady(id) ? this.source.slotBase(id, slot) : null
        if (base === 0 || (typeof base === 'number' && entryKind(base) === entryKindChunk)) {
          // Writable too while the slot is in one of the volume's writable extents, the volume is not
          // paused (a freeze may be on its way) and no engine write of the block is in flight.
          const volume = known.volume
          const writable = volume.nativeWrites !== null && volume.writableExtents.has(id) && !volume.paused && !volume.blockBusy(first + i)
          if (writable && !this.touched.has(id)) {
            this.touched.add(id)
            this.source.forgetSums(id)
          }
          if (writable) known.writablePages.add(Math.floor((first + i) / pageEntries))
          // A partial slot: its unwritten sectors are the chunk's (the addon hands READs of them over).
          low = ((slot << 8) | (writable ? fastWritable : fastDelta) | (base === 0 ? 0 : fastPartial)) >>> 0
          high = id
        }
      }
      else if (kind === entryKindChunk) {
        // A sealed chunk: the addon reads its payload, decompresses it and checks its BLAKE3 itself
        // (once registered; until then READs go to the engine, and a first write of part of it knows
        // which chunk it lies over).
        const id = entryChunkId(entry)
        low = fastChunksEnabled && this.chunkReady(id) ? fastChunk : fastChunkUnread
        high = id
      }
      // Open to a first write (a whole-block WRITE gives it a new slot of the lease): a hole, a sealed
      // chunk or a slot the volume shares, while no engine write of the block is in flight (the block's
      // lock: such a write freezes the word first, and none is published meanwhile).
      if (alloc && (low & 0xff) !== fastWritable && (kind === entryKindHole || kind === entryKindChunk || (kind === entryKindDelta && !known.volume.writableExtents.has(entryExtentId(entry)))) &&
          !known.volume.blockBusy(first + i)) {
        low = (low | fastAlloc) >>> 0
        known.writablePages.add(Math.floor((first + i) / pageEntries))
      }
      words[2 * i] = low
      words[2 * i + 1] = high
    }
    return native.fastPublish(session, known.ino, first, words)
  }

  /** Whether the addon holds a descriptor of extent `id` (registered now if it can be). */
  private extentReady (id: number): boolean {
    if (this.extents.has(id)) return true
    const extent = this.source.extent(id)
    if (extent === undefined || this.native === null || this.session === null) return false
    if (!this.native.fastExtent(this.session, id, extent.fd, extent.dataStart, extent.sumsStart)) return false
    this.extents.add(id)
    return true
  }

  /**
   * Whether the addon knows chunk `id` (and holds a descriptor of its pack). A record says where the
   * chunk index put the chunk when it was registered; compaction, the one thing that moves a chunk,
   * makes the addon forget it first (packGone). Whatever a pack holds at that place, the addon serves
   * only bytes that hash to the chunk's BLAKE3.
   */
  private chunkReady (id: number): boolean {
    const known = this.chunks.get(id)
    return known !== undefined && this.packReady(known.packId)
  }

  /** Queues the registration of chunks `ids`, then the publication again of `count` blocks from `first`. */
  private registerLater (known: Known, first: number, count: number, ids: number[]): void {
    this.chunkJobs.push({ known, first, count, ids })
    if (this.registering) return
    this.registering = true
    void this.registerQueued().finally(() => { this.registering = false })
  }

  private async registerQueued (): Promise<void> {
    for (let job = this.chunkJobs.shift(); job !== undefined; job = this.chunkJobs.shift()) {
      for (let i = 0; i < job.ids.length; i += chunkRegisterSlice) {
        if (this.native === null || this.session === null) { this.chunkJobs.length = 0; return }
        const slice = job.ids.slice(i, i + chunkRegisterSlice).filter(id => !this.chunks.has(id))
        if (slice.length > 0) this.registerChunks(slice)
        await new Promise<void>(resolve => setImmediate(resolve))
      }
      // Published again from the map as it is now, in one synchronous step, and only within the pages
      // whose words the map watch clears (known.pages; a page dropped meanwhile by a resize is not).
      const { known, first, count } = job
      if (this.volumes.get(known.volume.id) !== known) continue
      const blockBytes = this.source.blockBytes
      const end = Math.min(first + count, Math.ceil(known.volume.size / blockBytes))
      for (let from = first; from < end;) {
        const page = Math.floor(from / pageEntries)
        const to = Math.min(end, (page + 1) * pageEntries)
        if (known.pages.has(page)) this.publish(known, from, to - from, false)
        from = to
      }
    }
  }

  /** Registers the chunks `ids` (those in a pack here) with the addon: their rows read in one batch. */
  private registerChunks (ids: number[]): void {
    const native = this.native as FastReadNative
    const session = this.session as object
    const rows = this.source.chunks(ids.filter(id => id <= 0xffffffff))
    for (const row of rows.values()) {
      if (this.chunks.size >= fastChunksMax) {
        // The oldest eighth is forgotten: words naming them hand their READs to the engine, whose
        // answers register them again.
        let drop = fastChunksMax / 8
        for (const old of this.chunks.keys()) {
          if (drop-- === 0) break
          this.chunks.delete(old)
          native.fastChunkDrop(session, old)
        }
      }
      if (!native.fastChunk(session, row.id, row.packId, row.offset, row.storedBytes, row.rawBytes, row.compressed, row.hash)) continue
      this.chunks.set(row.id, { packId: row.packId })
    }
  }

  /**
   * Whether the addon holds a descriptor of pack `id` (opened now if it can be). At most fastPacksMax:
   * past it the one least recently made ready is let go (chunks in it then go to the engine, whose
   * answers make it ready again).
   */
  private packReady (id: number): boolean {
    const native = this.native as FastReadNative
    const session = this.session as object
    if (this.packs.delete(id)) { this.packs.add(id); return true }
    if (this.packs.size >= fastPacksMax) {
      const oldest = this.packs.values().next().value as number
      this.packs.delete(oldest)
      native.fastPackDrop(session, oldest)
    }
    if (!native.fastPack(session, id, this.source.packFile(id))) return false
    this.packs.add(id)
    return true
  }

  /** A pack is going (compaction deleted or set it aside): the addon forgets it and where the moved chunks were. */
  private packGone (packId: number, moved: number[]): void {
    for (const id of moved) {
      if (!this.chunks.delete(id)) continue
      if (this.native !== null && this.session !== null) this.native.fastChunkDrop(this.session, id)
    }
    if (!this.packs.delete(packId)) return
    if (this.native !== null && this.session !== null) this.native.fastPackDrop(this.session, packId)
  }

  private extentRemoved (id: number): void {
    this.touched.delete(id)
    if (!this.extents.delete(id)) return
    if (this.native !== null && this.session !== null) this.native.fastExtentDrop(this.session, id)
  }
}

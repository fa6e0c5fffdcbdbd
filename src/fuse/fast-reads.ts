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
import { entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entryKindHole, entrySlot } from '../format/map-format'
import { pageEntries } from '../limits'
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
  fastVolumeWrites: (session: object, ino: number) => number
  fastPack: (session: object, id: number, file: string) => boolean
  fastPackDrop: (session: object, id: number) => void
  fastChunk: (session: object, id: number, pack: number, offset: number, stored: number, raw: number, compressed: boolean, hash: Buffer) => boolean
  fastChunkDrop: (session: object, id: number) => void
}

/** Word kinds (the addon's FAST_*). */
const fastDelta = 1
const fastHole = 2
const fastWritable = 3
const fastChunk = 4
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
}

/** Whether the fast path is on: VDISKFS_FAST_READS=0 turns it off (every READ to the engine). */
export const fastReadsEnabled = process.env.VDISKFS_FAST_READS !== '0'
/** Whether the addon overwrites slots itself (docs/FASTPATH.md, "Writes"): VDISKFS_FAST_WRITES=0 turns it off. */
export const fastWritesEnabled = fastReadsEnabled && process.env.VDISKFS_FAST_WRITES !== '0'
/** Whether the addon reads sealed chunks itself (docs/FASTPATH.md, "Sealed chunks"): VDISKFS_FAST_CHUNKS=0 turns it off. */
export const fastChunksEnabled = fastReadsEnabled && process.env.VDISKFS_FAST_CHUNKS !== '0'

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
    for (const page of known.writablePages) this.native.fastFreeze(this.session, known.ino, page * pageEntries, pageEntries)
    known.writablePages.clear()
    await this.quiesce()
  }

  /**
   * Volumes natively written since they were last collected get their mtime and a row to commit (the
   * engine's writes do this themselves). The daemon calls it before its periodic commit.
   */
  collectWrites (): void {
    for (const known of this.volumes.values()) this.collectKnown(known)
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
    const known = this.known(volume)
    if (known === null) return
    const blockBytes = this.source.blockBytes
    const first = Math.floor(offset / blockBytes)
    const last = Math.min(Math.floor((offset + length - 1) / blockBytes), Math.ceil(volume.size / blockBytes) - 1)
    for (let page = Math.floor(first / pageEntries); page <= Math.floor(last / pageEntries); page++) {
      if (known.pages.has(page)) {
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
    const known: Known = { volume, ino: this.inodeOf(volume), pages: new Set(), writes: 0, writablePages: new Set() }
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
        native.fastClear(session, known.ino, from, -1)
        const whole = Math.ceil(from / pageEntries)
        for (const page of known.pages) if (page >= whole || from === 0) known.pages.delete(page)
      }
    }
    this.volumes.set(volume.id, known)
    return known
  }

  /** Publishes the words of `count` blocks from `first`; false when the addon could not take them. */
  private publish (known: Known, first: number, count: number, registerLater = true): boolean {
    const native = this.native as FastReadNative
    const session = this.session as object
    const words = this.words.subarray(0, count * 2)
    const map = known.volume.map
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
        if (this.extentReady(id) && this.source.wholeSlot(id, slot)) {
          // Writable too while the slot is in one of the volume's writable extents, the volume is not
          // paused (a freeze may be on its way) and no engine write of the block is in flight.
          const volume = known.volume
          const writable = volume.nativeWrites !== null && volume.writableExtents.has(id) && !volume.paused && !volume.blockBusy(first + i)
          if (writable && !this.touched.has(id)) {
            this.touched.add(id)
            this.source.forgetSums(id)
          }
          if (writable) known.writablePages.add(Math.floor((first + i) / pageEntries))
          low = ((slot << 8) | (writable ? fastWritable : fastDelta)) >>> 0
          high = id
        }
      }
      else if (kind === entryKindChunk && fastChunksEnabled) {
        // A sealed chunk: the addon reads its payload, decompresses it and checks its BLAKE3 itself.
        const id = entryChunkId(entry)
        if (this.chunkReady(id)) {
          low = fastChunk
          high = id
        }
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

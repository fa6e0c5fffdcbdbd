/**
 * Delta extents: the append-only files of block slots that writes land in (format/extent-format.ts).
 * Each writable volume has one active extent; a block already in it is overwritten in place, any other
 * block written gets the next slot. When a backup freezes an extent it is never written again.
 *
 * Durability: writes are not synced here; the pool calls syncPending() before it commits metadata
 * that points at slots, so the catalog never points at bytes that were not made durable first.
 *
 * Integrity: every 4 KiB sector written carries a checksum in the extent's table (format version 2),
 * written beside it and synced with it; every read checks the sectors it touches (a partial sector is
 * read whole). A mismatch is CORRUPT (EIO to the reader) and a report. After an unclean stop the
 * extents that were writable may hold sectors written after the last commit whose data and checksum
 * did not both reach the disk: those extents are *suspect*, read unchecked until recoverSuspect() has
 * recomputed their referenced sectors' checksums (their contents are what the volume last wrote).
 *
 * Partial slots (format version 3, issue #10): a slot written over part of a sealed block holds only
 * the sectors written; its base entry names the chunk underneath, and a sector whose checksum entry is
 * 0 reads from that chunk (read() returns which sectors those are; the volume merges). Base entries are
 * kept in memory per extent (loaded when the extent is first opened, kept when its descriptor is let
 * go) so that gc can walk them synchronously. Writes into a partial slot must cover whole sectors: a
 * partial sector would be completed from the file's zeros instead of the chunk (asserted).
 * Errors: every method that touches the disk throws NO_SPACE or IO (errors.ts); reads throw CORRUPT.
 */
import assert from 'node:assert/strict'
import path from 'node:path'
import { FileIo, nodeFileIo } from '../io/file-io'
import { corrupt, fromSystemError, RacedRead } from '../errors'
import {
  baseOffset, baseTableBytes, dataStart, decodeBase, encodeBase, extentBaseBytes, extentFormatVersion, extentFormatVersionChecked,
  extentFormatVersionUnchecked, extentHeaderFields, extentMagic, extentSectorBytes, extentSumBytes, hasBases, sectorMatches, sectorSum,
  sectorsPerSlot, slotOffset, sumOffset
} from '../format/extent-format'
import { extentFileName } from '../format/pool-format'
import { SumCache } from './sum-cache'
import { extentFdsMax, extentHeaderBytes, extentSlotsMax, readRetriesMax, sumCachePageSlots } from '../limits'


export class DeltaExtent {
  /** Reads and writes using the descriptor now; it is closed only when this is 0. */
  users = 0
  /** Set when the store let go of it (evicted or removed): users reopen through the store. */
  closed = false

  constructor (
    readonly id: number,
    readonly fd: number,
    /** Next free slot: slots are handed out in order and never reused within an extent. */
    public nextSlot: number,
    /** Format version: 2 carries sector checksums, 1 (older pools) does not. */
    readonly version: number = extentFormatVersion
  ) {}

  get full (): boolean { return this.nextSlot >= extentSlotsMax }
}

/**
 * The base entries of one extent's slots in memory: a typed array allocated at its first partial slot
 * (8 bytes a slot, 128 KiB an extent at most, whatever the number of partial slots), NaN for an entry
 * that failed its check. A slot not in it (0) is whole.
 */
class BaseTable {
  private entries: Float64Array | null = null

  /** The chunk entry under slot `slot`; null when its stored entry failed its check; undefined for a whole slot. */
  get (slot: number): number | null | undefined {
    const value = this.entries === null ? 0 : this.entries[slot]
    if (value === 0) return undefined
    return Number.isNaN(value) ? null : value
  }

  has (slot: number): boolean { return this.entries !== null && this.entries[slot] !== 0 }

  set (slot: number, base: number | null): void {
    this.entries ??= new Float64Array(extentSlotsMax)
    this.entries[slot] = base === null ? Number.NaN : base
  }

  delete (slot: number): void { if (this.entries !== null) this.entries[slot] = 0 }
}

/**
 * What the FUSE fast path's WRITEs, done by the addon's threads (docs/FASTPATH.md, "Writes"), tell the
 * extent store: they change slots and checksum entries of writable extents behind it.
 */
/** NativeWrites.seq() while a native WRITE of the extent is in flight. */
export const nativeWriting = -2

export interface NativeWrites {
  /** Whether native WRITEs may have written the extent since start (its checksums then change behind the cache). */
  touched: (id: number) => boolean
  /**
   * The extent's native write sequence (moves before and after each), or nativeWriting while one is in
   * flight: a read that saw it move, or saw nativeWriting, may have raced one.
   */
  seq: (id: number) => number
  /** Extents natively written since the last take (`take`), or whether any is (`take` false: ids, not taken). */
  dirty: (take: boolean) => number[]
  /** When the extent was last written natively (ms since the epoch), 0 when never. */
  lastWriteMs: (id: number) => number
}

export class ExtentStore {
  /** Open extents, least recently used first; bounded by extentFdsMax (see evict()). */
  private readonly open = new Map<number, Promise<DeltaExtent>>()
  private readonly resolved = new Map<number, DeltaExtent>()
  /** Extents with writes completed since the last fdatasync of theirs. */
  private readonly pending = new Set<DeltaExtent>()
  /** When each extent was last written or created (since start; others count as idle). */
  private readonly lastWriteMs = new Map<number, number>()
  /**
   * Base entries of the partial slots of every version-3 extent opened or created since start: extent
   * id -> slot -> the chunk entry underneath, or null when the stored entry fails its check. Kept when a
   * descriptor is let go, dropped when the extent is removed.
   */
  private readonly bases = new Map<number, BaseTable>()
  /** Extents opened since start that have no base table (format 1 or 2): every slot is whole. */
  private readonly unversioned = new Set<number>()
  /** Extents read unchecked until recoverSuspect() (see the file comment). */
  readonly suspect = new Set<number>()
  /** Checksum mismatches found since start (for verify and the log). */
  readonly damaged: Array<{ extentId: number, slot: number, sector: number, why: string }> = []
  log: (message: string) => void = () => {}
  /** Checksum entries of recently read or written slots (see sum-cache.ts). */
  readonly sums: SumCache
  /** Told, synchronously, that extent `id` is about to be removed (the FUSE fast path lets go of its descriptor). */
  onRemove: ((id: number) => void) | null = null
  /** The fast path's native WRITEs (null: none; every write is this store's own). */
  native: NativeWrites | null = null

  /**
   * `writableIds` names the extents some volume may still write (their next free slot lives in
   * memory): those are never let go.
   */
  constructor (
    private readonly dir: string,
    private readonly blockBytes: number,
    private readonly writableIds: () => Set<number> = () => new Set(),
    private readonly io: FileIo = nodeFileIo
  ) {
    this.sums = new SumCache(sectorsPerSlot(blockBytes), Math.ceil(extentSlotsMax / sumCachePageSlots))
  }

  file (id: number): string { return path.join(this.dir, extentFileName(id)) }

  /** Extent descriptors held open now. */
  get openCount (): number { return this.open.size }

  /** Creates extent `id` on disk with its header, durable (file and directory entry) on return. */
  async create (id: number, volumeId: number): Promise<DeltaExtent> {
    const header = Buffer.alloc(extentHeaderBytes)
    extentMagic.copy(header, extentHeaderFields.magic)
    header.writeUInt32LE(extentFormatVersion, extentHeaderFields.version)
    header.writeUInt32LE(this.blockBytes, extentHeaderFields.blockBytes)
    header.writeBigUInt64LE(BigInt(id), extentHeaderFields.extentId)
    header.writeBigUInt64LE(BigInt(volumeId), extentHeaderFields.volumeId)
    header.writeBigUInt64LE(BigInt(Date.now()), extentHeaderFields.createdMs)
    // A new extent counts as just written: it is not idle, so background sealing leaves it alone.
    this.lastWriteMs.set(id, Date.now())
    this.bases.set(id, new BaseTable())
    const opening = (async () => {
      let fd: number
      try {
        fd = await this.io.open(this.file(id), 'wx+', 0o600)
        await this.io.write(fd, header, 0, header.length, 0)
        // The table is part of every version-2 file from the start (sparse), so a shorter file is damage.
        await this.io.truncate(fd, dataStart(extentFormatVersion, this.blockBytes))
        await this.io.fdatasync(fd)
        await this.io.syncDirectory(this.dir)
      } catch (err) {
        throw fromSystemError(err, `creating extent ${id}`)
      }
      return new DeltaExtent(id, fd, 0)
    })()
    this.track(id, opening)
    return await opening
  }

  /** Opens an existing extent (cached); checks its header. Throws CORRUPT or IO. */
  async get (id: number): Promise<DeltaExtent> {
    let opening = this.open.get(id)
    if (opening === undefined) {
      opening = this.openExisting(id)
      this.track(id, opening)
    } else {
      // Most recently used last.
      this.open.delete(id)
      this.open.set(id, opening)
    }
    return await opening
  }

  private track (id: number, opening: Promise<DeltaExtent>): void {
    this.open.set(id, opening)
    opening.then(extent => {
      if (this.open.get(id) !== opening) return
      this.resolved.set(id, extent)
      this.evict(id)
    }, () => { if (this.open.get(id) === opening) this.open.delete(id) })
  }

  /**
   * Closes the least recently used descriptors past extentFdsMax. Writable extents are kept (their
   * next free slot lives in memory; they are bounded per volume), and so are extents whose writes
   * wait for an fdatasync, and `opened`, the one just opened for a caller that has not used it yet
   * (with every other descriptor writable, it would be closed before its first read: EBADF).
   */
  private evict (opened: number): void {
    if (this.open.size <= extentFdsMax) return
    const writable = this.writableIds()
    for (const id of [...this.open.keys()]) {
      if (this.open.size <= extentFdsMax) break
      const extent = this.resolved.get(id)
      if (extent === undefined || id === opened || writable.has(id) || this.pending.has(extent) || extent.users > 0) continue
      this.letGo(extent)
    }
  }

  /** Forgets an extent; its descriptor closes as soon as no read or write uses it. */
  private letGo (extent: DeltaExtent): void {
    if (this.open.has(extent.id) && this.resolved.get(extent.id) === extent) {
      this.open.delete(extent.id)
      this.resolved.delete(extent.id)
    }
    this.pending.delete(extent)
    if (extent.closed) return
    extent.closed = true
    if (extent.users === 0) this.io.close(extent.fd).catch(() => {})
  }

  /**
   * Lends `extent`'s descriptor to a worker task: it stays open until unpin(), even if the extent is
   * removed meanwhile. Returns the extent whose `fd` to use.
   */
  async pin (extent: DeltaExtent): Promise<DeltaExtent> { return await this.use(extent) }

  unpin (extent: DeltaExtent): void { this.release(extent) }

  /** The extent with a descriptor that stays open until release(). */
  private async use (extent: DeltaExtent): Promise<DeltaExtent> {
    // The check and the count are one synchronous step: an extent let go while get() was awaited is
    // opened again, never used with a descriptor that is closed (or, worse, reused for another file).
    let current = extent
    while (current.closed) current = await this.get(current.id)
    current.users++
    return current
  }

  private release (extent: DeltaExtent): void {
    if (--extent.users === 0 && extent.closed) this.io.close(extent.fd).catch(() => {})
  }

  private async openExisting (id: number): Promise<DeltaExtent> {
    let fd: number
    try {
      fd = await this.io.open(this.file(id), 'r+')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw corrupt(`delta extent ${id} is missing (${this.file(id)})`)
      throw fromSystemError(err, `opening extent ${id}`)
    }
    const header = Buffer.alloc(64)
    const { bytesRead } = await this.io.read(fd, header, 0, header.length, 0)
    if (bytesRead < 40 || !header.subarray(0, 8).equals(extentMagic)) {
      await this.io.close(fd)
      throw corrupt(`delta extent ${id} has a bad header`)
    }
    const version = header.readUInt32LE(extentHeaderFields.version)
    const blockBytes = header.readUInt32LE(extentHeaderFields.blockBytes)
    const storedId = Number(header.readBigUInt64LE(extentHeaderFields.extentId))
    if ((version !== extentFormatVersion && version !== extentFormatVersionChecked && version !== extentFormatVersionUnchecked) || blockBytes !== this.blockBytes || storedId !== id) {
      await this.io.close(fd)
      throw corrupt(`delta extent ${id}: header says version ${version}, block size ${blockBytes}, id ${storedId}`)
    }
    const { size } = await this.io.fstat(fd)
    const start = dataStart(version, this.blockBytes)
    if (size < start) {
      await this.io.close(fd)
      throw corrupt(`delta extent ${id} is truncated (${size} bytes; its header and checksum table alone take ${start})`)
    }
    const nextSlot = Math.max(0, Math.ceil((size - start) / this.blockBytes))
    if (!hasBases(version)) this.unversioned.add(id)
    else if (!this.bases.has(id)) {
      const table = Buffer.alloc(baseTableBytes())
      const extent = new DeltaExtent(id, fd, nextSlot, version)
      try {
        await this.readRaw(extent, baseOffset(0, this.blockBytes), table)
      } catch (err) {
        await this.io.close(fd)
        throw err
      }
      const slots = new BaseTable()
      // Mostly zeros (a slot with no base): looked at a word at a time, a slice made only for a base
      // (a slice and a per-byte test for each of the 16,384 slots took most of a full mark's time
      // after an unclean stop, which opens every extent).
      const words = new Uint32Array(table.buffer, table.byteOffset, table.byteLength >>> 2)
      const wordsPerBase = extentBaseBytes >>> 2
      for (let slot = 0; slot < extentSlotsMax; slot++) {
        const first = slot * wordsPerBase
        let empty = true
        for (let w = first; w < first + wordsPerBase; w++) if (words[w] !== 0) { empty = false; break }
        if (empty) continue
        slots.set(slot, decodeBase(table.subarray(slot * extentBaseBytes, (slot + 1) * extentBaseBytes), id, slot))
      }
      // eslint-disable-next-line vdiskfs/map-check-then-act -- (issue #17 audit) nothing else sets bases[id] meanwhile: create() sets it for a new id only, and get() shares one openExisting per id. remove(id) deleting it meanwhile leaves a stale table behind for an id never reused (a leak, not a wrong byte)
      this.bases.set(id, slots)
    }
    return new DeltaExtent(id, fd, nextSlot, version)
  }

  /**
   * Slots written in extent `id` (what sealing or gc is still to deal with): from its header and size
   * (when it is open, at most the slots claimed: slots leased to the FUSE addon and not written yet are
   * past its end); 0 when it is gone (removed meanwhile). Throws IO.
   */
  async slotsWritten (id: number): Promise<number> {
    const open = this.resolved.get(id)
    if (open !== undefined && !open.closed && this.io === nodeFileIo) {
      try {
        const { size } = await this.io.fstat(open.fd)
        return Math.min(open.nextSlot, Math.max(0, Math.ceil((size - dataStart(open.version, this.blockBytes)) / this.blockBytes)))
      } catch {
        return open.nextSlot
      }
    }
    if (open !== undefined) return open.nextSlot
    let fd: number
    try {
      fd = await this.io.open(this.file(id), 'r')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0
      throw fromSystemError(err, `opening extent ${id}`)
    }
    try {
      const header = Buffer.alloc(64)
      const { bytesRead } = await this.io.read(fd, header, 0, header.length, 0)
      if (bytesRead < 40 || !header.subarray(0, 8).equals(extentMagic)) return 0
      const { size } = await this.io.fstat(fd)
      return Math.max(0, Math.ceil((size - dataStart(header.readUInt32LE(extentHeaderFields.version), this.blockBytes)) / this.blockBytes))
    } finally {
      await this.io.close(fd)
    }
  }

  /** Whether `extent` can hold partial slots (format version 3). */
  holdsPartialSlots (extent: DeltaExtent): boolean { return hasBases(extent.version) }

  /**
   * The chunk entry a partial slot was written over; 0 for a whole slot (or an extent without base
   * table); null when the stored base entry fails its check; undefined when the extent's base table
   * was never loaded (see loadBases()).
   */
  baseOf (extentId: number, slot: number): number | null | undefined {
    const slots = this.bases.get(extentId)
    if (slots === undefined) return this.unversioned.has(extentId) ? 0 : undefined
    const base = slots.get(slot)
    return base === undefined ? 0 : base
  }

  /** Loads the base tables of extents `ids` (opening them), so baseOf() answers for them synchronously. */
  async loadBases (ids: Iterable<number>): Promise<void> {
    for (const id of ids) if (!this.bases.has(id) && !this.unversioned.has(id)) await this.get(id)
  }

  /** The partial slots of extent `id` among `slots`, with their bases (its base table loaded). */
  partialSlots (id: number, slots: number[]): Map<number, number | null> {
    const out = new Map<number, number | null>()
    const table = this.bases.get(id)
    if (table === undefined) return out
    for (const slot of slots) { const base = table.get(slot); if (base !== undefined && base !== 0) out.set(slot, base) }
    return out
  }

  /** Where slot `slot` of `extent` starts in its file (for readers outside this store: the sealer). */
  slotPosition (extent: DeltaExtent, slot: number): number {
    return slotOffset(slot, this.blockBytes, extent.version)
  }

  /**
   * What the FUSE fast path needs to read whole slots of extent `id` itself (docs/FASTPATH.md): its
   * descriptor now, which the caller duplicates at once, and where slot 0 and its checksum entries
   * start. Undefined when the extent is not open now, is not checked (format 1, or suspect), or this
   * store's I/O is not the system's (a test's fault-injecting layer).
   */
  fastReadable (id: number): { fd: number, dataStart: number, sumsStart: number } | undefined {
    const extent = this.resolved.get(id)
    if (extent === undefined || extent.closed || this.io !== nodeFileIo || !this.checked(extent)) return undefined
    return { fd: extent.fd, dataStart: slotOffset(0, this.blockBytes, extent.version), sumsStart: sumOffset(0, 0, this.blockBytes) }
  }

  /**
   * Slots the fast path may take for first writes of whole blocks (docs/FASTPATH.md, "First writes"):
   * up to `count` from the extent's next one, claimed at once (nextSlot moves past them), while the
   * extent is open, checked and readable by the addon, and none of them carries a base entry a crash
   * left behind (a whole slot written natively does not clear it). Null when none can be taken.
   */
  leaseSlots (id: number, count: number): { first: number, end: number, bases: number } | null {
    const extent = this.resolved.get(id)
    if (extent === undefined || extent.closed || extent.full || this.fastReadable(id) === undefined) return null
    const first = extent.nextSlot
    const table = this.bases.get(id)
    if (table === undefined && hasBases(extent.version)) return null
    let end = first
    while (end < extentSlotsMax && end - first < count && (table === undefined || !table.has(end))) end++
    if (end === first) return null
    extent.nextSlot = end
    return { first, end, bases: hasBases(extent.version) ? baseOffset(0, this.blockBytes) : 0 }
  }

  /**
   * Records that the fast path wrote slot `slot` of extent `id` as a partial slot over map entry `base`
   * (a chunk): its base entry is in the file already (written with the data); reads of the slot now
   * take its unwritten sectors from the chunk.
   */
  notePartialSlot (id: number, slot: number, base: number): void {
    const table = this.bases.get(id)
    assert.ok(table !== undefined, `extent ${id}: a partial slot in an extent without a base table`)
    table.set(slot, base)
  }

  /** Gives back slots [next, end) of a lease that no write took, if nothing was claimed after them. */
  unleaseSlots (id: number, next: number, end: number): void {
    const extent = this.resolved.get(id)
    if (extent !== undefined && !extent.closed && extent.nextSlot === end && next <= end) extent.nextSlot = next
  }

  /** Whether slot `slot` of extent `id` is known to be whole (not a partial slot over a chunk). */
  wholeSlot (id: number, slot: number): boolean { return this.baseOf(id, slot) === 0 }

  /** Whether reads and sealing of `extent` check its sector checksums. */
  checked (extent: DeltaExtent): boolean {
    return extent.version !== extentFormatVersionUnchecked && !this.suspect.has(extent.id)
  }

  /**
   * Reads target.length bytes at `offset` within `slot` into `target` (a read may run on into the
   * following slots, except from a partial slot), checking every sector it touches. Throws CORRUPT on a
   * mismatch. Returns the sectors of a partial slot that were never written (indexes from the slot's
   * start; their part of `target` is zeros): they belong to the chunk underneath (baseOf()). A whole
   * slot returns []. The checksums come from memory when known (sum-cache.ts); `sumsFromFile` reads
   * them from the file (verify). A read that races a write of the same extent and fails its check is
   * read again (readRetriesMax); if writes keep racing it, it throws RacedRead (no damage reported),
   * and the caller reads once more with the slot's writers held off and `settled` set: then a mismatch
   * is damage.
   */
  async read (extent: DeltaExtent, slot: number, offset: number, target: Uint8Array, options: { sumsFromFile?: boolean, settled?: boolean } = {}): Promise<number[]> {
    const using = await this.use(extent)
    try {
      const found = this.baseOf(using.id, slot)
      const base = found === undefined ? 0 : found
      if (base === null) this.mismatch(using, slot, 0, 'its base entry fails its check')
      if (base !== 0) return await this.readPartial(using, slot, offset, target, options.sumsFromFile === true || this.nativeOf(using.id) !== null, options.settled === true)
      if (!this.checked(using)) { await this.readRaw(using, slotOffset(slot, this.blockBytes, using.version) + offset, target); return [] }
      const first = Math.floor(offset / extentSectorBytes)
      const last = Math.floor((offset + target.length - 1) / extentSectorBytes)
      const aligned = offset === first * extentSectorBytes && target.length === (last - first + 1) * extentSectorBytes
      const bytes = aligned ? target : Buffer.alloc((last - first + 1) * extentSectorBytes)
      for (let attempt = 0; ; attempt++) {
        const mark = this.writesMark(using.id)
        // Native WRITEs change an extent's checksum entries behind the cache: they are read from the file.
        const fromFile = options.sumsFromFile === true || mark.native !== null
        const dataRead = this.readRaw(using, slotOffset(slot, this.blockBytes, using.version) + first * extentSectorBytes, bytes)
        let entries: Uint32Array
        if (last < sectorsPerSlot(this.blockBytes)) {
          // Within one slot: its entries from memory, or loaded whole beside the data.
          const [, slotSums] = await Promise.all([dataRead, this.slotSums(using, slot, fromFile)])
          entries = slotSums.subarray(first, last + 1)
        } else {
          const sums = Buffer.alloc((last - first + 1) * extentSumBytes)
          await Promise.all([dataRead, this.readRaw(using, sumOffset(slot, first, this.blockBytes), sums)])
          entries = decodeSums(sums)
        }
        let bad = -1
        for (let k = 0; k <= last - first && bad < 0; k++) if (!sectorMatches(bytes.subarray(k * extentSectorBytes, (k + 1) * extentSectorBytes), entries[k])) bad = k
        if (bad < 0) break
        // A write of this extent started or ended while the data was read (an O_DIRECT read racing a
        // write of the same sectors): what was read may be half old, half new. Read again; not damage.
        if (this.writtenSince(using.id, mark) && options.settled !== true) {
          if (attempt < readRetriesMax) continue
          throw new RacedRead(`delta extent ${using.id} slot ${slot}: writes kept changing it while it was read`)
        }
        this.mismatch(using, slot, first + bad, entries[bad] === 0 ? 'holds data where no sector was written' : 'checksum mismatch')
      }
      if (!aligned) target.set(bytes.subarray(offset - first * extentSectorBytes, offset - first * extentSectorBytes + target.length))
      return []
    } finally {
      this.release(using)
    }
  }

  /**
   * read() of a partial slot: its checksum table says which sectors were written (entry not 0), so it
   * is read even while the extent is suspect (then the written sectors are not checked).
   */
  private async readPartial (extent: DeltaExtent, slot: number, offset: number, target: Uint8Array, fromFile: boolean, settled: boolean): Promise<number[]> {
    assert.ok(offset >= 0 && offset + target.length <= this.blockBytes, `extent ${extent.id}: a read of partial slot ${slot} runs past it`)
    const first = Math.floor(offset / extentSectorBytes)
    const last = Math.floor((offset + target.length - 1) / extentSectorBytes)
    const bytes = Buffer.alloc((last - first + 1) * extentSectorBytes)
    for (let attempt = 0; ; attempt++) {
      const mark = this.writesMark(extent.id)
      const [, slotSums] = await Promise.all([
        this.readRaw(extent, slotOffset(slot, this.blockBytes, extent.version) + first * extentSectorBytes, bytes),
        this.slotSums(extent, slot, fromFile || mark.native !== null)
      ])
      const checked = this.checked(extent)
      const unwritten: number[] = []
      let bad = -1
      for (let k = 0; k <= last - first && bad < 0; k++) {
        const sector = bytes.subarray(k * extentSectorBytes, (k + 1) * extentSectorBytes)
        const entry = slotSums[first + k]
        if (entry === 0) { unwritten.push(first + k); sector.fill(0); continue }
        if (checked && !sectorMatches(sector, entry)) bad = k
      }
      if (bad >= 0) {
        // As in read(): a write racing this read is no damage; read again.
        if (this.writtenSince(extent.id, mark) && !settled) {
          if (attempt < readRetriesMax) continue
          throw new RacedRead(`delta extent ${extent.id} slot ${slot}: writes kept changing it while it was read`)
        }
        this.mismatch(extent, slot, first + bad, 'checksum mismatch')
      }
      target.set(bytes.subarray(offset - first * extentSectorBytes, offset - first * extentSectorBytes + target.length))
      return unwritten
    }
  }

  /**
   * The checksum entries of a whole slot (a copy): from memory when known, else read from the file
   * and remembered (see sum-cache.ts for why that is coherent with writes in flight).
   */
  private async slotSums (extent: DeltaExtent, slot: number, fromFile = false): Promise<Uint32Array> {
    const known = fromFile ? null : this.sums.get(extent.id, slot)
    if (known !== null) return known.slice()
    const sequence = this.sums.sequenceOf(extent.id)
    const perSlot = sectorsPerSlot(this.blockBytes)
    const raw = Buffer.alloc(perSlot * extentSumBytes)
    await this.readRaw(extent, sumOffset(slot, 0, this.blockBytes), raw)
    const entries = decodeSums(raw)
    this.sums.install(extent.id, slot, entries, sequence)
    return entries
  }

  /** Reads slot `slot` of extent `id` whole and checks it; returns what is wrong, or null. */
  async checkSlot (id: number, slot: number): Promise<string | null> {
    try {
      // Against the checksums in the file, not the ones remembered: verify checks the file.
      await this.read(await this.get(id), slot, 0, Buffer.alloc(this.blockBytes), { sumsFromFile: true })
      return null
    } catch (err) {
      return (err as Error).message
    }
  }

  /** Where the writes of extent `id` stand (the engine's and the native ones), for writtenSince(). */
  private writesMark (id: number): { sequence: number, writing: boolean, native: NativeWrites | null, nativeSequence: number } {
    const native = this.nativeOf(id)
    return { sequence: this.sums.sequenceOf(id), writing: this.sums.writing(id), native, nativeSequence: native?.seq(id) ?? 0 }
  }

  /**
   * Whether a write of extent `id` may have started or ended since `mark`: the engine's sequence moved,
   * or a native WRITE's did, or the extent became natively writable meanwhile.
   */
  private writtenSince (id: number, mark: { sequence: number, writing: boolean, native: NativeWrites | null, nativeSequence: number }): boolean {
    // A write in flight at the mark or now may span the whole read without moving the sequence.
    if (mark.writing || this.sums.writing(id) || this.sums.sequenceOf(id) !== mark.sequence) return true
    const now = this.nativeOf(id)
    if (now === null) return false
    const sequence = now.seq(id)
    return mark.native === null || sequence === nativeWriting || mark.nativeSequence === nativeWriting || sequence !== mark.nativeSequence
  }

  private mismatch (extent: DeltaExtent, slot: number, sectorIndex: number, why: string): never {
    // Sectors are counted from the slot's start (a read may run on into the next slots).
    const spanned = Math.floor(sectorIndex / sectorsPerSlot(this.blockBytes))
    const at = { extentId: extent.id, slot: slot + spanned, sector: sectorIndex % sectorsPerSlot(this.blockBytes), why }
    this.damaged.push(at)
    this.log(`corruption: delta extent ${at.extentId} slot ${at.slot} sector ${at.sector}: ${why} (${this.file(extent.id)})`)
    throw corrupt(`delta extent ${at.extentId} slot ${at.slot} sector ${at.sector}: ${why}`)
  }

  /** Reads `target.length` bytes at `position`; bytes past the end of the file are zeros. */
  private async readRaw (extent: DeltaExtent, position: number, target: Uint8Array): Promise<void> {
    let done = 0
    try {
      while (done < target.length) {
        const { bytesRead } = await this.io.read(extent.fd, target, done, target.length - done, position + done)
        if (bytesRead === 0) break
        done += bytesRead
      }
    } catch (err) {
      throw fromSystemError(err, `reading extent ${extent.id}`)
    }
    if (done < target.length) target.fill(0, done)
  }

  /**
   * Writes `data` at `offset` within `slot`, with the checksums of the sectors it covers (a partial
   * sector is completed from what the slot holds, checked). The extent joins the set the next
   * syncPending() makes durable only once the write completed, so an fdatasync that started earlier
   * never counts for it.
   *
   * `base` is given for the first write of a newly claimed slot of a version-3 extent: the chunk entry
   * it is written over (a partial slot; `data` must then cover whole sectors), or 0 for a whole slot.
   * Its base entry is written with the data (and made durable with it), before any map points at it.
   */
  async write (extent: DeltaExtent, slot: number, offset: number, data: Uint8Array, base?: number): Promise<void> {
    assert.ok(slot >= 0 && slot < extentSlotsMax && offset >= 0 && offset + data.length <= this.blockBytes, `extent ${extent.id}: write outside slot ${slot}`)
    const table = this.bases.get(extent.id)
    assert.ok(base === undefined || base === 0 || (table !== undefined && hasBases(extent.version)), `extent ${extent.id} holds no partial slots`)
    // A damaged base entry (null) counts as partial too: the read that completes a sector then fails.
    const partial = base !== undefined ? base !== 0 : table !== undefined && table.has(slot)
    assert.ok(!partial || (offset % extentSectorBytes === 0 && data.length % extentSectorBytes === 0), `extent ${extent.id}: a write into partial slot ${slot} must cover whole sectors`)
    // The base entry goes with the first write; a slot past the end after a crash may still have a
    // stale one, which a whole slot overwrites with zeros.
    let baseWrite: Buffer | null = null
    if (base !== undefined && table !== undefined && (base !== 0 || table.has(slot))) {
      baseWrite = base === 0 ? Buffer.alloc(extentBaseBytes) : encodeBase(extent.id, slot, base)
      if (base === 0) table.delete(slot)
      else table.set(slot, base)
    }
    this.lastWriteMs.set(extent.id, Date.now())
    const using = await this.use(extent)
    try {
      const baseWritten = baseWrite === null ? null : this.writeRaw(using, baseOffset(slot, this.blockBytes), baseWrite)
      // Settled before the finally below, so the extent joins the pending set only once it is written.
      const fresh = base !== undefined
      if (baseWritten !== null) await Promise.all([baseWritten, this.writeSectors(using, slot, offset, data, fresh)])
      else await this.writeSectors(using, slot, offset, data, fresh)
    } finally {
      if (!using.closed) this.pending.add(using)
      this.release(using)
    }
  }

  /**
   * The sectors of `data` and their checksums. On the first write (`fresh`) of a newly claimed slot the whole
   * slot's checksum entries are written, 0 for the sectors not written: after a crash a slot past the
   * end of the file may carry entries whose bytes never landed, which would fail its next reads.
   */
  private async writeSectors (using: DeltaExtent, slot: number, offset: number, data: Uint8Array, fresh: boolean): Promise<void> {
    if (using.version === extentFormatVersionUnchecked) {
      await this.writeRaw(using, slotOffset(slot, this.blockBytes, using.version) + offset, data)
      return
    }
    const first = Math.floor(offset / extentSectorBytes)
    const last = Math.floor((offset + data.length - 1) / extentSectorBytes)
    const start = first * extentSectorBytes
    const end = (last + 1) * extentSectorBytes
    let bytes = data
    if (offset !== start || offset + data.length !== end) {
      // The rest of a sector: zeros in a fresh slot (nothing of it is in the file), else what it holds.
      // Settled: writes of one slot never overlap (the volume writes a block under its lock, with the
      // addon's WRITEs of it excluded), so a mismatch is damage, whatever other slots' writes do.
      const whole = Buffer.alloc(end - start)
      if (!fresh && offset !== start) await this.read(using, slot, start, whole.subarray(0, extentSectorBytes), { settled: true })
      if (!fresh && offset + data.length !== end && (last !== first || offset === start)) await this.read(using, slot, end - extentSectorBytes, whole.subarray(whole.length - extentSectorBytes), { settled: true })
      whole.set(data, offset - start)
      bytes = whole
    }
    const from = fresh ? 0 : first
    const sums = Buffer.alloc((fresh ? sectorsPerSlot(this.blockBytes) : last - first + 1) * extentSumBytes)
    for (let k = first; k <= last; k++) sums.writeUInt32LE(sectorSum(bytes.subarray((k - first) * extentSectorBytes, (k - first + 1) * extentSectorBytes)), (k - from) * extentSumBytes)
    const before = this.sums.writeStarted(using.id, slot)
    let written: { from: number, sums: Uint32Array } | null = null
    try {
      await Promise.all([
        this.writeRaw(using, slotOffset(slot, this.blockBytes, using.version) + start, bytes),
        this.writeRaw(using, sumOffset(slot, from, this.blockBytes), sums)
      ])
      written = { from, sums: decodeSums(sums) }
    } finally {
      this.sums.writeEnded(using.id, slot, before, written)
    }
  }

  private async writeRaw (extent: DeltaExtent, position: number, data: Uint8Array): Promise<void> {
    let done = 0
    try {
      while (done < data.length) {
        const { bytesWritten } = await this.io.write(extent.fd, data, done, data.length - done, position + done)
        done += bytesWritten
      }
    } catch (err) {
      throw fromSystemError(err, `writing extent ${extent.id}`)
    }
  }

  /**
   * Recomputes the checksums of the given slots of a suspect extent from what they hold and makes them
   * durable; the extent is checked from then on. Returns how many sectors' checksums changed.
   */
  async recoverSuspect (id: number, slots: number[]): Promise<number> {
    if (!this.suspect.has(id)) return 0
    const extent = await this.get(id)
    const using = await this.use(extent)
    let changed = 0
    try {
      if (using.version !== extentFormatVersionUnchecked) {
        const perSlot = sectorsPerSlot(this.blockBytes)
        const bytes = Buffer.alloc(this.blockBytes)
        const sums = Buffer.alloc(perSlot * extentSumBytes)
        for (const slot of slots) {
          await this.readRaw(using, slotOffset(slot, this.blockBytes, using.version), bytes)
          await this.readRaw(using, sumOffset(slot, 0, this.blockBytes), sums)
          const partial = this.baseOf(id, slot) !== 0
          let dirty = false
          for (let k = 0; k < perSlot; k++) {
            const sector = bytes.subarray(k * extentSectorBytes, (k + 1) * extentSectorBytes)
            const entry = sums.readUInt32LE(k * extentSumBytes)
            if (sectorMatches(sector, entry)) continue
            // In a partial slot, zeros under a checksum are a first write into a sector whose bytes
            // never landed (a partial slot's unwritten sectors are zeros in the file): the sector goes
            // back to the chunk underneath, the value it held before, rather than to zeros nobody wrote.
            // (A write of zeros over a written sector, cut the same way, also reads the chunk's bytes.)
            const allZero = sectorMatches(sector, 0)
            sums.writeUInt32LE(partial && allZero ? 0 : sectorSum(sector), k * extentSumBytes)
            dirty = true
            changed++
          }
          if (dirty) {
            this.sums.forget(id)
            await this.writeRaw(using, sumOffset(slot, 0, this.blockBytes), sums)
          }
        }
        try { await this.io.fdatasync(using.fd) } catch (err) { throw fromSystemError(err, `syncing extent ${id}`) }
      }
    } finally {
      this.release(using)
    }
    this.sums.forget(id)
    // eslint-disable-next-line vdiskfs/map-check-then-act -- (issue #17 audit) both callers (Maintenance.recover, Sealer.sealExtent) run under pool.exclusive, and ids join suspect only when the pool opens: no other recoverSuspect(id) runs between the check and here
    this.suspect.delete(id)
    return changed
  }

  /** Milliseconds since the extent was last written (Infinity when not since start). */
  idleMs (id: number): number {
    const last = Math.max(this.lastWriteMs.get(id) ?? 0, this.native?.lastWriteMs(id) ?? 0)
    return last === 0 ? Number.POSITIVE_INFINITY : Date.now() - last
  }

  /** The native writers when they may have written extent `id`, else null. */
  private nativeOf (id: number): NativeWrites | null {
    return this.native !== null && this.native.touched(id) ? this.native : null
  }

  /** Whether native WRITEs changed an extent since the last syncPending(). */
  get nativeDirty (): boolean { return this.native !== null && this.native.dirty(false).length > 0 }

  /**
   * Makes every write that completed before this call durable. A write still in flight joins the
   * set when it completes, for the next call. A failed fdatasync is reported, and the extents stay
   * in the set; the caller must treat the failure as fatal (a retry would "succeed" on Linux after
   * the kernel dropped the dirty pages).
   */
  async syncPending (): Promise<void> {
    // The extents native WRITEs changed: taken before the syncs, so a WRITE answered before this call
    // (its flag set before its reply) is in them; one after it marks the extent for the next call.
    for (const id of this.native?.dirty(true) ?? []) {
      // A frozen extent may have been let go since: opened again (its pages are the file's).
      const extent = this.resolved.get(id) ?? await this.get(id).catch(() => undefined)
      if (extent !== undefined && !extent.closed) this.pending.add(extent)
    }
    const extents = [...this.pending]
    this.pending.clear()
    const results = await Promise.allSettled(extents.map(async extent => {
      const using = await this.use(extent)
      try { await this.io.fdatasync(using.fd) } finally { this.release(using) }
    }))
    const failed = results.findIndex(r => r.status === 'rejected')
    if (failed >= 0) {
      for (const extent of extents) if (!extent.closed) this.pending.add(extent)
      throw fromSystemError((results[failed] as PromiseRejectedResult).reason, `syncing extent ${extents[failed].id}`)
    }
  }

  /**
   * Deletes an extent no map references any more. Its descriptor closes once no read uses it (space
   * comes back then); a read that looked the block up before it moved finishes on the old bytes, and
   * the volume, seeing the block's map entry changed, reads again.
   */
  async remove (id: number): Promise<void> {
    this.onRemove?.(id)
    const opening = this.open.get(id)
    this.lastWriteMs.delete(id)
    this.bases.delete(id)
    this.unversioned.delete(id)
    this.sums.removed(id)
    if (opening !== undefined) {
      const extent = await opening.catch(() => undefined)
      if (extent !== undefined) this.letGo(extent)
      if (this.open.get(id) === opening) this.open.delete(id)
    }
    await this.io.remove(this.file(id))
  }

  async closeAll (): Promise<void> {
    const all = [...this.open.values()]
    this.open.clear()
    this.resolved.clear()
    this.pending.clear()
    this.bases.clear()
    this.unversioned.clear()
    this.sums.clear()
    for (const opening of all) {
      const extent = await opening.catch(() => undefined)
      if (extent !== undefined && !extent.closed) {
        extent.closed = true
        if (extent.users === 0) await this.io.close(extent.fd).catch(() => {})
      }
    }
  }
}

/** Checksum entries as stored (u32 little-endian each). */
function decodeSums (raw: Buffer): Uint32Array {
  const entries = new Uint32Array(raw.length / extentSumBytes)
  for (let k = 0; k < entries.length; k++) entries[k] = raw.readUInt32LE(k * extentSumBytes)
  return entries
}

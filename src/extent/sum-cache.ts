/**
 * The sector checksums of delta-extent slots recently read or written, in memory (issue #10): a read of
 * unsealed data is then one pread (the data), not two (the data and its checksums), and so one libuv
 * thread-pool round trip. The data itself is still read from the file and checked on every read.
 *
 * Kept in pages of sumCachePageSlots slots per extent, least recently used dropped past
 * sumCacheBytesMax. A slot's entries are known whole or not at all.
 *
 * Coherence: only the extent store writes checksum tables, and it tells this cache. A slot being
 * written is unknown until its write completed (then it is known again with the new entries), and a
 * read that loaded a slot's entries from the file installs them only if no write to that extent started
 * or ended meanwhile (the extent's sequence number is unchanged) and none is in flight (one that began
 * before the load and ends after it moves no sequence in between). recoverSuspect() and remove() forget
 * the extent.
 */
import { sumCacheBytesMax, sumCachePageSlots } from '../limits'

interface Page {
  sums: Uint32Array
  known: Uint8Array
}

export class SumCache {
  /** Pages by extentId * pagesPerExtent + page index, least recently used first. */
  private readonly pages = new Map<number, Page>()
  /** Per extent: bumped when a write starts and when it ends. */
  private readonly sequence = new Map<number, number>()
  /** Per extent: writes in flight (a load or read while one is may have raced it though the sequence did not move). */
  private readonly inflight = new Map<number, number>()
  private readonly pagesMax: number
  /** Slot entries served from memory and loaded from files (for tests and status). */
  readonly stats = { hits: 0, loads: 0 }

  constructor (private readonly perSlot: number, private readonly pagesPerExtent: number) {
    this.pagesMax = Math.max(1, Math.floor(sumCacheBytesMax / (sumCachePageSlots * perSlot * 4)))
  }

  private key (extentId: number, slot: number): number {
    return extentId * this.pagesPerExtent + Math.floor(slot / sumCachePageSlots)
  }

  /** The entries of `slot` (perSlot of them, a view: do not keep it across an await), or null when unknown. */
  get (extentId: number, slot: number): Uint32Array | null {
    const key = this.key(extentId, slot)
    const page = this.pages.get(key)
    const at = slot % sumCachePageSlots
    if (page === undefined || page.known[at] === 0) return null
    this.pages.delete(key)
    this.pages.set(key, page)
    this.stats.hits++
    return page.sums.subarray(at * this.perSlot, (at + 1) * this.perSlot)
  }

  /** The extent's sequence number: take it before reading a slot's entries from the file, for install(). */
  sequenceOf (extentId: number): number { return this.sequence.get(extentId) ?? 0 }
  /** Whether a write of the extent is in flight (between writeStarted() and writeEnded()). */
  writing (extentId: number): boolean { return this.inflight.has(extentId) }

  /** Remembers `sums` (the slot's entries as read from the file) unless a write to the extent started or ended since `sequence`. */
  install (extentId: number, slot: number, sums: Uint32Array, sequence: number): void {
    // A write in flight may have begun before the load and not landed yet: the sequence alone misses it.
    if (this.sequenceOf(extentId) !== sequence || this.writing(extentId)) return
    this.stats.loads++
    this.set(extentId, slot, sums)
  }

  private set (extentId: number, slot: number, sums: Uint32Array): void {
    const key = this.key(extentId, slot)
    let page = this.pages.get(key)
    if (page === undefined) {
      page = { sums: new Uint32Array(sumCachePageSlots * this.perSlot), known: new Uint8Array(sumCachePageSlots) }
      while (this.pages.size >= this.pagesMax) this.pages.delete(this.pages.keys().next().value as number)
    } else {
      this.pages.delete(key)
    }
    this.pages.set(key, page)
    const at = slot % sumCachePageSlots
    page.sums.set(sums, at * this.perSlot)
    page.known[at] = 1
  }

  /**
   * A write of slot `slot` starts: its entries are unknown until writeEnded(). Returns what writeEnded()
   * needs: the slot's entries before the write, if they were known (a copy).
   */
  writeStarted (extentId: number, slot: number): Uint32Array | null {
    this.sequence.set(extentId, this.sequenceOf(extentId) + 1)
    this.inflight.set(extentId, (this.inflight.get(extentId) ?? 0) + 1)
    const key = this.key(extentId, slot)
    const page = this.pages.get(key)
    const at = slot % sumCachePageSlots
    if (page === undefined || page.known[at] === 0) return null
    page.known[at] = 0
    return page.sums.slice(at * this.perSlot, (at + 1) * this.perSlot)
  }

  /**
   * The write of slot `slot` ended. When it succeeded, `written` holds the entries it wrote from sector
   * `from` on; the slot is known again if its other entries are (`before`, or a write of the whole
   * slot's entries).
   */
  writeEnded (extentId: number, slot: number, before: Uint32Array | null, written: { from: number, sums: Uint32Array } | null): void {
    this.sequence.set(extentId, this.sequenceOf(extentId) + 1)
    const inflight = (this.inflight.get(extentId) ?? 1) - 1
    if (inflight > 0) this.inflight.set(extentId, inflight)
    else this.inflight.delete(extentId)
    if (written === null) return
    const whole = written.from === 0 && written.sums.length === this.perSlot
    if (!whole && before === null) return
    const sums = whole ? written.sums : before as Uint32Array
    if (!whole) sums.set(written.sums, written.from)
    this.set(extentId, slot, sums)
  }

  /** Drops everything known of an extent (its checksums were rewritten, or it was removed). */
  forget (extentId: number): void {
    this.sequence.set(extentId, this.sequenceOf(extentId) + 1)
    for (let page = 0; page < this.pagesPerExtent; page++) this.pages.delete(extentId * this.pagesPerExtent + page)
  }

  /** Forgets an extent that is gone for good (its sequence number too). */
  removed (extentId: number): void {
    this.forget(extentId)
    this.sequence.delete(extentId)
  }

  clear (): void {
    this.pages.clear()
    for (const id of this.sequence.keys()) this.sequence.set(id, this.sequenceOf(id) + 1)
  }
}

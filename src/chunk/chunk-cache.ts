/**
 * A bounded cache of opened chunks: blocks already read, decompressed and verified against their hash,
 * kept so that the next partial read of the same chunk (a 4 KiB read of a 64 KiB block) costs a copy
 * instead of a worker round trip, a decompression and a hash of the whole block.
 *
 * Memory is bounded and allocated once: one arena of `capacity` entries of `entryBytes` each, handed out
 * on first use and recycled, least recently used first. No Buffer is allocated per read: a 64 KiB
 * Buffer per cached read (as before) made the garbage collector the largest CPU cost of a busy reader.
 *
 * What it holds was verified when it was opened, and chunks are immutable (an id names one content
 * for the life of the process: ids are never reused, compaction moves a chunk's bytes without changing
 * them), so a hit serves exactly the verified bytes. Damage that happens on disk after a chunk was
 * cached is found by the next read that misses and by `vdiskfs verify`, which never reads from here.
 * Everything here is synchronous: a lookup and its copy happen in one turn, so no eviction can reuse
 * an entry between them.
 */
import assert from 'node:assert/strict'

export interface ChunkCacheStats {
  /** Reads served from the cache and reads that had to open the chunk, since start. */
  hits: number
  misses: number
  /** Bytes of chunks held now, and the most the cache may hold. */
  bytes: number
  bytesMax: number
  entries: number
}

export class ChunkCache {
  private arena: Buffer | null = null
  /** Chunk id -> entry, least recently used first (a Map keeps insertion order; a hit re-inserts). */
  private readonly entries = new Map<number, { slot: number, length: number }>()
  private readonly free: number[] = []
  private nextSlot = 0
  private heldBytes = 0
  private hits = 0
  private misses = 0
  readonly capacity: number

  constructor (readonly entryBytes: number, bytesMax: number) {
    assert.ok(entryBytes > 0)
    this.capacity = Math.floor(bytesMax / entryBytes)
  }

  /**
   * Copies `target.length` bytes at `offset` of chunk `id` into `target` and returns true when the
   * chunk is cached; counts a hit or a miss.
   */
  copy (id: number, offset: number, target: Buffer): boolean {
    const entry = this.entries.get(id)
    if (entry === undefined) { this.misses++; return false }
    assert.ok(offset + target.length <= entry.length, 'read past the end of a cached chunk')
    this.entries.delete(id)
    this.entries.set(id, entry)
    const start = entry.slot * this.entryBytes + offset
    ;(this.arena as Buffer).copy(target, 0, start, start + target.length)
    this.hits++
    return true
  }

  /** Keeps a copy of `raw`, the verified bytes of chunk `id`, evicting the least recently used entry if full. */
  remember (id: number, raw: Uint8Array): void {
    if (this.capacity === 0 || raw.length > this.entryBytes || this.entries.has(id)) return
    let slot = this.free.pop()
    if (slot === undefined && this.nextSlot < this.capacity) slot = this.nextSlot++
    if (slot === undefined) {
      const [oldest, entry] = this.entries.entries().next().value as [number, { slot: number, length: number }]
      this.entries.delete(oldest)
      this.heldBytes -= entry.length
      slot = entry.slot
    }
    // Untouched pages of the arena cost no memory: it fills as chunks are cached.
    this.arena ??= Buffer.allocUnsafeSlow(this.capacity * this.entryBytes)
    this.arena.set(raw, slot * this.entryBytes)
    this.entries.set(id, { slot, length: raw.length })
    this.heldBytes += raw.length
  }

  forget (id: number): void {
    const entry = this.entries.get(id)
    if (entry === undefined) return
    this.entries.delete(id)
    this.free.push(entry.slot)
    this.heldBytes -= entry.length
  }

  clear (): void {
    for (const entry of this.entries.values()) this.free.push(entry.slot)
    this.entries.clear()
    this.heldBytes = 0
  }

  stats (): ChunkCacheStats {
    return { hits: this.hits, misses: this.misses, bytes: this.heldBytes, bytesMax: this.capacity * this.entryBytes, entries: this.entries.size }
  }
}

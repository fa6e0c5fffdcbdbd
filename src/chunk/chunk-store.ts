/**
 * The chunk store: content-addressed blocks (id = row in the chunk index, key = BLAKE3-256 of the raw
 * block) in append-only pack files (pack-format.ts), deduplicated across the whole pool. Reads go
 * through the open worker, which verifies every chunk against its hash before it is served.
 *
 * Durability: append() writes without syncing; index() fdatasyncs the packs written, then inserts the
 * index rows. The catalog never names a chunk whose bytes were not made durable first.
 * Errors: read() throws CORRUPT (checksum mismatch, missing chunk or pack: EIO to the reader, and a
 * log line), IO; append() throws NO_SPACE or IO.
 */
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { FileIo, nodeFileIo } from '../io/file-io'
import { Catalog, ChunkRow, absentPackId } from '../catalog/catalog'
import { VdiskError, corrupt, fromSystemError } from '../errors'
import { chunkCacheMax, openedCacheBytesMax, packBytesMax, readBatchBlocks } from '../limits'
import { ChunkCache, ChunkCacheStats } from './chunk-cache'
import { chunkFlagCompressed, chunkHeaderBytes, chunkHeaderFields, chunkMagic, packFileName, packFormatVersion, packHeaderBytes, packMagic } from './pack-format'
import { LeasedOpen, SlabLease, WorkerPool } from './worker-pool'
import { quarantineFile, unaccountedRecords } from './pack-scan'
import { quarantineDir } from '../format/pool-format'
import { OpenResult } from '../../workers/protocol'
import { PackDescriptor, PackDescriptors } from './pack-descriptors'


interface OpenPack { id: number, fd: number, bytes: number }

export interface Damage { chunkId: number, packId: number, offset: number, why: string }

/**
 * What the chunk store asks about absent chunks (a lazy pull's, still in the remote store; catalog.ts
 * absentPackId): a read waits in wait() until the chunk is filled (resolves) or the bound passes (throws
 * IO); filled() hears of every absent chunk index() filled. volume/lazy.ts answers.
 */
export interface AbsentChunks {
  wait (id: number, what: string): Promise<void>
  filled (ids: number[]): void
}

export class ChunkStore {
  private readonly cache = new Map<number, ChunkRow>()
  /** Verified, decompressed chunks kept for the next partial read of the same chunk. */
  private readonly opened: ChunkCache
  private readonly pendingByHash = new Map<string, ChunkRow>()
  /** Ids of the rows in pendingByHash that fill an absent chunk (index() updates their row, not inserts it). */
  private readonly filling = new Set<number>()
  /** Who absent chunks are waited for and reported to (volume/lazy.ts); null: a read of one fails. */
  absent: AbsentChunks | null = null
  private readonly unsyncedPacks = new Set<OpenPack>()
  /** Packs that filled up, whose write descriptors closeFullPacks() closes once they are synced. */
  private readonly fullPacks = new Set<OpenPack>()
  private current: Promise<OpenPack> | null = null
  private nextChunkId: number
  private nextPackId: number
  private readonly packFds: PackDescriptors
  /** Chunks that failed verification since start (for verify and the log). */
  readonly damaged: Damage[] = []
  /**
   * Called synchronously when a pack is about to be deleted or set aside, with the chunks compaction
   * moved out of it (already moved in the catalog): the FUSE fast path forgets where it read them.
   */
  onPackGone: ((packId: number, moved: number[]) => void) | null = null

  constructor (
    private readonly dir: string,
    private readonly catalog: Catalog,
    private readonly blockBytes: number,
    readonly workers: WorkerPool,
    private readonly log: (message: string) => void,
    private readonly io: FileIo = nodeFileIo,
    private readonly cacheMax = chunkCacheMax
  ) {
    fs.mkdirSync(dir, { recursive: true })
    this.nextChunkId = catalog.maxChunkId() + 1
    this.nextPackId = catalog.maxPackId() + 1
    this.packFds = new PackDescriptors(dir, packFileName, io)
    this.opened = new ChunkCache(blockBytes, openedCacheBytesMax)
  }

  packFile (packId: number): string { return path.join(this.dir, packFileName(packId)) }

  /**
   * Opens chunks `rows` into the slots of `lease` (the i-th into its i-th) in one worker task, lending
   * the task the packs' descriptors for its duration. A pack that cannot be opened because it is gone
   * (moved or deleted by compaction) answers `missing` for its chunks, which the callers look up again.
   */
  private async openChunks (rows: ChunkRow[], lease: SlabLease): Promise<OpenResult> {
    const pinned = new Map<number, PackDescriptor | string>()
    for (const row of rows) {
      if (pinned.has(row.packId)) continue
      try {
        pinned.set(row.packId, await this.packFds.pin(row.packId))
      } catch (err) {
        // eslint-disable-next-line vdiskfs/map-check-then-act -- pinned is this call's own map, filled by this sequential loop; nothing else sees it
        pinned.set(row.packId, (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : (err as Error).message)
      }
    }
    try {
      const requests: LeasedOpen[] = []
      const positions: number[] = []
      rows.forEach((row, i) => {
        const pack = pinned.get(row.packId)
        if (typeof pack === 'string') return
        positions.push(i)
        requests.push({ at: i, hash: row.hash, fd: (pack as PackDescriptor).fd, offset: row.offset, storedBytes: row.storedBytes, rawBytes: row.rawBytes, compressed: row.compressed })
      })
      const blocks: OpenResult['blocks'] = rows.map(row => ({ ok: false, error: pinned.get(row.packId) as string }))
      if (requests.length === 0) return { blocks }
      const result = await lease.open(requests)
      positions.forEach((at, i) => { blocks[at] = result.blocks[i] ?? { ok: false, error: result.error ?? 'unknown worker failure' } })
      return { blocks, error: result.error }
    } finally {
      for (const pack of pinned.values()) if (typeof pack !== 'string') this.packFds.unpin(pack)
    }
  }

  /**
   * Keeps `row` in the row cache, the oldest out past its bound (issue #21: index() kept every chunk
   * sealing indexed, 640,000 rows at 10,000 backups of the scale bench).
   */
  private cached (row: ChunkRow): void {
    this.cache.delete(row.id)
    this.cache.set(row.id, row)
    while (this.cache.size > this.cacheMax) this.cache.delete(this.cache.keys().next().value as number)
    this.noteSize(row.id, row.storedBytes)
  }

  /**
   * Every chunk's stored size seen, by id (plus one; 0: not known), 4 bytes a chunk: `du` and `info`
   * ask the size of every chunk a map names, which the row cache's bound no longer holds (issue #21:
   * 640,000 chunks at 10,000 backups of the scale bench; a catalog query each took du from 10 s to 125 s).
   */
  private sizes = new Int32Array(1024)

  private noteSize (id: number, bytes: number): void {
    if (id >= this.sizes.length) {
      let length = this.sizes.length
      while (length <= id) length *= 2
      const grown = new Int32Array(length)
      grown.set(this.sizes)
      this.sizes = grown
    }
    this.sizes[id] = bytes + 1
  }

  /** The chunk's index row. Throws CORRUPT when the map names a chunk the index lacks. */
  info (id: number): ChunkRow {
    let row = this.cache.get(id)
    if (row !== undefined) return row
    row = this.catalog.chunk(id)
    if (row === undefined) throw corrupt(`chunk ${id} is missing from the chunk index`)
    this.cached(row)
    return row
  }

  storedBytes (id: number): number {
    const known = id < this.sizes.length ? this.sizes[id] : 0
    return known > 0 ? known - 1 : this.info(id).storedBytes
  }

  /**
   * stored() of many chunks at once (the fast path's publication of a map page): the rows of those in
   * a pack here, by id. Ids close together are read with one range scan of the index each.
   */
  storedMany (ids: number[]): Map<number, ChunkRow> {
    const rows = new Map<number, ChunkRow>()
    const sorted = [...new Set(ids)].sort((a, b) => a - b)
    for (let i = 0; i < sorted.length;) {
      // A run of ids whose span is at most four times their count: one scan reads few rows not asked for.
      let j = i + 1
      while (j < sorted.length && sorted[j] - sorted[i] <= 4 * (j - i + 1) + 64) j++
      const wanted = new Set(sorted.slice(i, j))
      for (const row of this.catalog.chunksBetween(sorted[i], sorted[j - 1])) {
        if (wanted.has(row.id) && row.packId !== absentPackId) rows.set(row.id, row)
      }
      i = j
    }
    return rows
  }


  /** Chunks stored in packs and not yet indexed (the pass in flight). */
  pendingCount (): number { return this.pendingByHash.size }

  /**
   * Stores a block under its hash unless a chunk with that hash exists (indexed, or stored but not yet
   * indexed): deduplication across the whole pool. The lookup and the reservation of a new id happen
   * before any await, so two identical blocks in flight at once become one chunk.
   */
  async store (hash: Buffer, payload: Uint8Array, rawBytes: number, compressed: boolean): Promise<{ row: ChunkRow, isNew: boolean }> {
    const key = hash.toString('hex')
    const pending = this.pendingByHash.get(key)
    if (pending !== undefined) return { row: pending, isNew: false }
    const indexed = this.catalog.chunkByHash(hash)
    // An absent chunk (a lazy pull's) with this hash is filled in under its own id: whoever stores the
    // block first (the hydrator, a seal, an import) brings its bytes.
    const absent = indexed !== undefined && this.info(indexed).packId === absentPackId
    if (indexed !== undefined && !absent) return { row: this.info(indexed), isNew: false }
    const row: ChunkRow = { id: absent ? indexed : this.nextChunkId++, hash: Buffer.from(hash), packId: 0, offset: 0, storedBytes: payload.length, rawBytes, compressed }
    this.pendingByHash.set(key, row)
    if (absent) this.filling.add(row.id)
    const header = Buffer.alloc(chunkHeaderBytes)
    header.writeUInt32LE(chunkMagic, chunkHeaderFields.magic)
    header.writeUInt32LE(compressed ? chunkFlagCompressed : 0, chunkHeaderFields.flags)
    header.writeUInt32LE(rawBytes, chunkHeaderFields.rawBytes)
    header.writeUInt32LE(payload.length, chunkHeaderFields.storedBytes)
    hash.copy(header, chunkHeaderFields.hash)
    header.writeBigUInt64LE(BigInt(row.id), chunkHeaderFields.id)
    try {
      const pack = await this.writablePack(chunkHeaderBytes + payload.length)
      const start = pack.bytes
      pack.bytes += chunkHeaderBytes + payload.length
      row.packId = pack.id
      row.offset = start + chunkHeaderBytes
      this.unsyncedPacks.add(pack)
      const { bytesWritten } = await this.io.writev(pack.fd, [header, payload], start)
      if (bytesWritten !== header.length + payload.length) throw new Error(`short write (${bytesWritten} bytes)`)
    } catch (err) {
      // eslint-disable-next-line vdiskfs/map-check-then-act -- the entry is this call's reservation (set above, before any await): another store of the key returns on it, and index()/abandon(), which also drop entries, run only between stores (sealer and import store under pool.exclusive)
      this.pendingByHash.delete(key)
      this.filling.delete(row.id)
      throw fromSystemError(err, `writing pack ${row.packId}`)
    }
    return { row, isNew: true }
  }

  /**
   * Makes appended chunks durable, then indexes them. The caller must not store() while this runs.
   * On failure every chunk not yet indexed is forgotten (abandon()): its bytes may not be durable, so
   * nothing may deduplicate against it, and a pack whose fdatasync failed is never written again.
   */
  async index (): Promise<number> {
    const packs = [...this.unsyncedPacks]
    const rows = [...this.pendingByHash.values()]
    try {
      const synced = await Promise.allSettled(packs.map(async pack => await this.io.fdatasync(pack.fd)))
      const failed = synced.findIndex(r => r.status === 'rejected')
      if (failed >= 0) {
        await this.retire(packs.filter((_pack, i) => synced[i].status === 'rejected'))
        throw fromSystemError((synced[failed] as PromiseRejectedResult).reason, `syncing pack ${packs[failed].id}`)
      }
      this.catalog.transaction(() => {
        for (const row of rows) {
          if (!this.filling.has(row.id)) this.catalog.insertChunk(row)
          else if (!this.catalog.fillChunk(row)) throw new VdiskError('IO', `absent chunk ${row.id} was filled or removed meanwhile`)
        }
      })
    } catch (err) {
      this.abandon()
      throw fromSystemError(err, 'indexing chunks')
    }
    this.unsyncedPacks.clear()
    this.closeFullPacks()
    const filled: number[] = []
    for (const row of rows) {
      this.pendingByHash.delete(row.hash.toString('hex'))
      this.cached(row)
      if (this.filling.delete(row.id)) filled.push(row.id)
    }
    if (filled.length > 0) this.absent?.filled(filled)
    return rows.length
  }

  /**
   * Closes the write descriptors of packs filled up since the last call. Called only when no append
   * is in flight and none waits for an fdatasync (after index(), abandon(), compaction's sync): a
   * full pack's descriptor was kept forever before, and a deleted pack's space with it.
   */
  private closeFullPacks (): void {
    for (const pack of this.fullPacks) {
      if (this.unsyncedPacks.has(pack)) continue
      this.fullPacks.delete(pack)
      this.io.close(pack.fd).catch(() => {})
    }
  }

  /**
   * Forgets every chunk stored but not indexed (a seal pass that failed or was cancelled, after all its
   * writes settled): no later store() deduplicates against bytes that may not be durable. Their
   * records stay in the packs, unindexed, as compaction's garbage.
   */
  abandon (): void {
    // Never indexed, so no map names them: garbage, recorded as such so that compaction deletes their
    // pack rather than quarantining it as records the catalog lost (pack-scan.ts). Best effort: if
    // the catalog cannot take it either, the pack is only quarantined.
    try { this.catalog.retireUnindexed([...this.pendingByHash.values()].filter(row => row.packId !== 0)) } catch {}
    this.pendingByHash.clear()
    this.filling.clear()
    this.unsyncedPacks.clear()
    this.closeFullPacks()
  }

  /**
   * A new absent chunk for `hash` (a lazy pull's block the pool lacks): its row, with a fresh id, for
   * the caller to insert in its own transaction (import.ts). Call only under pool.exclusive, with no
   * store of the same hash pending.
   */
  newAbsent (hash: Buffer, rawBytes: number): ChunkRow {
    return { id: this.nextChunkId++, hash: Buffer.from(hash), packId: absentPackId, offset: 0, storedBytes: 0, rawBytes, compressed: false }
  }

  /**
   * Rows just written to the chunk index (a lazy pull's absent chunks, in the transaction that inserts
   * them): kept in the row cache, so that the map built from them (each entry's stored size) does not
   * query them back one by one. Call in the same synchronous step as the insert, so no fill (index())
   * can come between and be overwritten by the absent row.
   */
  remember (rows: Iterable<ChunkRow>): void {
    for (const row of rows) this.cached(row)
  }

  /** Whether chunk `id` is absent (named by a lazy pull, not here yet). */
  isAbsent (id: number): boolean { return this.info(id).packId === absentPackId }

  /**
   * Waits until chunk `id` is here when it is absent (volume/lazy.ts bounds the wait: IO after it).
   * The check and the wait's registration are one synchronous step, so a fill cannot slip between.
   */
  private async present (id: number, what: string): Promise<void> {
    while (this.info(id).packId === absentPackId) {
      if (this.absent === null) throw new VdiskError('IO', `chunk ${id} of ${what} is not here yet (a lazy pull's) and nothing fetches it`)
      await this.absent.wait(id, what)
    }
  }

  /** Stops appending to `packs` (an fdatasync of theirs failed: their unsynced bytes are suspect). */
  private async retire (packs: OpenPack[]): Promise<void> {
    if (this.current === null) return
    const current = await this.current.catch(() => null)
    if (current !== null && packs.includes(current)) {
      this.current = null
      await this.io.close(current.fd).catch(() => {})
    }
  }

  private async writablePack (recordBytes: number): Promise<OpenPack> {
    for (;;) {
      const seen = this.current
      if (seen !== null) {
        const pack = await seen
        if (pack.bytes + recordBytes <= packBytesMax || pack.bytes === packHeaderBytes) return pack
        // Full: the first caller to notice starts the next pack; the others wait for that one.
        if (this.current !== seen) continue
        this.fullPacks.add(pack)
      }
      const creating = this.createPack()
      this.current = creating
      creating.catch(() => { if (this.current === creating) this.current = null })
      return await creating
    }
  }

  private async createPack (): Promise<OpenPack> {
    const id = this.nextPackId++
    const header = Buffer.alloc(packHeaderBytes)
    packMagic.copy(header, 0)
    header.writeUInt32LE(packFormatVersion, 8)
    header.writeUInt32LE(this.blockBytes, 12)
    header.writeBigUInt64LE(BigInt(id), 16)
    header.writeBigUInt64LE(BigInt(Date.now()), 24)
    this.catalog.insertPack(id, Date.now())
    try {
      const fd = await this.io.open(this.packFile(id), 'wx+')
      await this.io.write(fd, header, 0, header.length, 0)
      await this.io.fdatasync(fd)
      await this.io.syncDirectory(this.dir)
      return { id, fd, bytes: packHeaderBytes }
    } catch (err) {
      throw fromSystemError(err, `creating pack ${id}`)
    }
  }

  /**
   * Reads several chunks in one worker task (the blocks of one FUSE read): each item gets
   * `target.length` bytes at `offset` of chunk `id`, verified. Falls back to read() for an item the
   * batch could not serve (a chunk moved by compaction); a damaged chunk fails the whole call.
   */
  async readMany (items: Array<{ id: number, offset: number, target: Buffer, what: string }>): Promise<void> {
    const absent = items.filter(item => this.info(item.id).packId === absentPackId)
    if (absent.length > 0) await Promise.all(absent.map(async item => await this.present(item.id, item.what)))
    const pending = items.filter(item => !this.opened.copy(item.id, item.offset, item.target))
    await this.openMany(pending)
  }

  /** readMany() of items not in the cache. */
  private async openMany (pending: Array<{ id: number, offset: number, target: Buffer, what: string }>): Promise<void> {
    if (pending.length === 0) return
    if (pending.length === 1) { await this.openOne(pending[0].id, pending[0].offset, pending[0].target, pending[0].what); return }
    if (pending.length > readBatchBlocks) {
      // A large read (the engine's callers, not FUSE's 128 KiB requests) goes in tasks of a bounded size.
      const groups: Array<typeof pending> = []
      for (let i = 0; i < pending.length; i += readBatchBlocks) groups.push(pending.slice(i, i + readBatchBlocks))
      await Promise.all(groups.map(async group => await this.openMany(group)))
      return
    }
    const rows = pending.map(item => this.info(item.id))
    const retry: typeof pending = []
    await this.workers.lease(pending.length, async lease => {
      const result = await this.openChunks(rows, lease)
      pending.forEach((item, i) => {
        const block = result.blocks[i]
        if (block?.ok === true) this.take(item.id, lease.output(i, rows[i].rawBytes), item.offset, item.target)
        else retry.push(item)
      })
    })
    // One at a time: a moved chunk is found again, a damaged one is reported and fails the read.
    for (const item of retry) await this.openOne(item.id, item.offset, item.target, item.what)
  }

  /** Reads `target.length` bytes at `offset` of chunk `id`, verified. */
  async read (id: number, offset: number, target: Buffer, what: string): Promise<void> {
    if (this.opened.copy(id, offset, target)) return
    await this.openOne(id, offset, target, what)
  }

  /**
   * read() of a chunk not in the cache: one worker task. A partial read keeps the whole verified
   * chunk in the cache for the reads of its neighbours; a whole-block read (sequential) does not, so a
   * scan does not push out what random readers use.
   */
  private async openOne (id: number, offset: number, target: Buffer, what: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      await this.present(id, what)
      const row = this.info(id)
      const why = await this.workers.lease(1, async lease => {
        const result = await this.openChunks([row], lease)
        const block = result.blocks[0]
        if (block?.ok === true) { this.take(id, lease.output(0, row.rawBytes), offset, target); return null }
        return block?.error ?? result.error ?? 'unknown worker failure'
      })
      if (why === null) return
      if (why === 'missing' && attempt === 0) { this.cache.delete(id); continue } // moved by compaction
      this.damaged.push({ chunkId: id, packId: row.packId, offset: row.offset, why })
      this.log(`corruption: chunk ${id} (pack ${row.packId}, offset ${row.offset}) ${why}; ${what} fails with EIO`)
      throw new VdiskError('CORRUPT', `chunk ${id} of ${what}: ${why}`)
    }
  }

  /**
   * Copies `target.length` bytes at `offset` of an opened chunk (`raw`, a view of the slab) into
   * `target`; a partial read keeps the whole chunk in the cache for the reads of its neighbours.
   */
  private take (id: number, raw: Buffer, offset: number, target: Buffer): void {
    raw.copy(target, 0, offset, offset + target.length)
    if (target.length < raw.length) this.opened.remember(id, raw)
  }

  /**
   * Reads and verifies chunks (one worker task); returns the ones that failed, with why. An absent
   * chunk (a lazy pull's, not here yet) has no bytes to check: it is left out, neither good nor failed.
   */
  async check (ids: number[]): Promise<Map<number, string>> {
    const failed = new Map<number, string>()
    const rows: ChunkRow[] = []
    for (const id of ids) {
      let row: ChunkRow
      try { row = this.info(id) } catch (err) { failed.set(id, (err as Error).message); continue }
      if (row.packId !== absentPackId) rows.push(row)
    }
    await this.workers.lease(rows.length, async lease => {
      const result = await this.openChunks(rows, lease)
      rows.forEach((row, i) => {
        const block = result.blocks[i]
        if (block?.ok !== true) failed.set(row.id, `pack ${row.packId} offset ${row.offset}: ${block?.error ?? result.error ?? 'unknown worker failure'}`)
      })
    })
    return failed
  }

  /** The opened-chunk cache's figures: hits and misses since start, bytes held and its bound. */
  cacheStats (): ChunkCacheStats { return this.opened.stats() }

  /** Forgets cached locations and blocks (after the index was rebuilt under it). */
  forgetCache (): void {
    this.cache.clear()
    this.opened.clear()
  }

  /** Drops chunks no map references (the caller proved it under the maintenance lock). */
  forget (ids: number[]): void {
    this.catalog.transaction(() => { for (const id of ids) this.catalog.deleteChunk(id) })
    for (const id of ids) { this.cache.delete(id); this.opened.forget(id); if (id < this.sizes.length) this.sizes[id] = 0 }
  }

  /**
   * Rewrites the live chunks of packs whose live fraction is below `liveFractionMin` into the current
   * pack, then deletes those packs. Crash-safe: the index moves only after the copies are durable.
   */
  async compact (liveFractionMin: number, only?: Iterable<number>): Promise<{ packsFreed: number, bytesFreed: number }> {
    // Every existing pack is a candidate (or those of `only`: the packs a gc freed chunks of, and those
    // made since the last gc), the one being filled too: survivors go to a fresh pack.
    assert.equal(this.pendingByHash.size + this.unsyncedPacks.size, 0, 'compaction runs only between seal passes')
    const usages = only === undefined ? this.catalog.packUsage() : this.catalog.packUsageOf(only)
    await this.close()
    let packsFreed = 0
    let bytesFreed = 0
    for (const usage of usages) {
      const file = this.packFile(usage.id)
      let size = 0
      size = await this.io.sizeOf(file)
      const payloadBytes = Math.max(1, size - packHeaderBytes)
      // A live chunk's record is its header and its stored bytes: a pack of chunks that compress below
      // their header's size was found below the bound, and copied whole, at every gc (issue #21).
      if (usage.chunks > 0 && (usage.liveBytes + usage.chunks * chunkHeaderBytes) / payloadBytes >= liveFractionMin) continue
      const moved: Array<{ id: number, packId: number, offset: number }> = []
      if (usage.chunks > 0) {
        const fd = await this.io.open(file, 'r')
        try {
          for (const row of this.catalog.chunksInPack(usage.id)) {
            const record = Buffer.alloc(chunkHeaderBytes + row.storedBytes)
            const { bytesRead } = await this.io.read(fd, record, 0, record.length, row.offset - chunkHeaderBytes)
            // A record cut short (the pack file shorter than its index says) is never copied as zeros.
            if (bytesRead !== record.length) throw corrupt(`pack ${usage.id}: chunk ${row.id}'s record at ${row.offset - chunkHeaderBytes} is cut short (${bytesRead} of ${record.length} bytes)`)
            const pack = await this.writablePack(record.length)
            const start = pack.bytes
            pack.bytes += record.length
            this.unsyncedPacks.add(pack)
            await this.io.write(pack.fd, record, 0, record.length, start)
            moved.push({ id: row.id, packId: pack.id, offset: start + chunkHeaderBytes })
          }
        } finally { await this.io.close(fd) }
        const packs = [...this.unsyncedPacks]
        this.unsyncedPacks.clear()
        await Promise.all(packs.map(async pack => await this.io.fdatasync(pack.fd)))
        this.closeFullPacks()
      }
      // The old pack goes only when the catalog accounts for every record in it (pack-scan.ts);
      // one it does not account for (a lost index row, a rebuilt catalog) sends it to quarantine/.
      const unaccounted = await unaccountedRecords(this.catalog, file, true, new Set(moved.map(m => m.id)))
      this.catalog.transaction(() => {
        for (const m of moved) this.catalog.moveChunk(m.id, m.packId, m.offset)
        this.catalog.deletePack(usage.id)
        if (unaccounted === 0) this.catalog.clearRetired(usage.id)
        else this.catalog.raiseIdHigh('pack_id_high', usage.id)
      })
      for (const m of moved) { this.cache.delete(m.id); if (m.id < this.sizes.length) this.sizes[m.id] = 0 }
      this.onPackGone?.(usage.id, moved.map(m => m.id))
      if (unaccounted > 0) {
        await this.packFds.drop(usage.id)
        const target = await quarantineFile(file, path.join(path.dirname(this.dir), quarantineDir))
        this.log(`compaction: pack ${usage.id} holds ${unaccounted} chunk records the catalog does not account for; moved to ${target}, not deleted (vdiskfs repair reads it)`)
        continue
      }
      await this.packFds.drop(usage.id)
      await this.io.remove(file)
      packsFreed++
      bytesFreed += size
    }
    if (packsFreed > 0) await this.io.syncDirectory(this.dir)
    return { packsFreed, bytesFreed }
  }

  async close (): Promise<void> {
    if (this.current !== null) {
      const pack = await this.current.catch(() => null)
      if (pack !== null) await this.io.close(pack.fd).catch(() => {})
    }
    this.current = null
    for (const pack of this.fullPacks) await this.io.close(pack.fd).catch(() => {})
    this.fullPacks.clear()
    await this.packFds.closeAll()
  }
}


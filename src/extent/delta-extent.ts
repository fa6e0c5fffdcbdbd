/**
 * Delta extents: the append-only files of block slots that writes land in (format/extent-format.ts).
 * Each writable volume has one active extent; a block already in it is overwritten in place, any other
 * block written gets the next slot. When a backup freezes an extent it is never written again.
 *
 * Durability: writes are not synced here; the pool calls syncPending() before it commits metadata
 * that points at slots, so the catalog never points at bytes that were not made durable first.
 * Errors: every method that touches the disk throws NO_SPACE or IO (errors.ts).
 */
import fs from 'node:fs'
import path from 'node:path'
import { FileIo, nodeFileIo } from '../io/file-io'
import { corrupt, fromSystemError } from '../errors'
import { extentFormatVersion, extentHeaderFields, extentMagic, slotOffset } from '../format/extent-format'
import { extentFileName } from '../format/pool-format'
import { extentFdsMax, extentHeaderBytes, extentSlotsMax } from '../limits'


export class DeltaExtent {
  /** Reads and writes using the descriptor now; it is closed only when this is 0. */
  users = 0
  /** Set when the store let go of it (evicted or removed): users reopen through the store. */
  closed = false

  constructor (
    readonly id: number,
    readonly fd: number,
    /** Next free slot: slots are handed out in order and never reused within an extent. */
    public nextSlot: number
  ) {}

  get full (): boolean { return this.nextSlot >= extentSlotsMax }
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
   * `writableIds` names the extents some volume may still write (their next free slot lives in
   * memory): those are never let go.
   */
  constructor (
    private readonly dir: string,
    private readonly blockBytes: number,
    private readonly writableIds: () => Set<number> = () => new Set(),
    private readonly io: FileIo = nodeFileIo
  ) {}

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
    const opening = (async () => {
      let fd: number
      try {
        fd = await this.io.open(this.file(id), 'wx+', 0o600)
        await this.io.write(fd, header, 0, header.length, 0)
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
      this.evict()
    }, () => { if (this.open.get(id) === opening) this.open.delete(id) })
  }

  /**
   * Closes the least recently used descriptors past extentFdsMax. Writable extents are kept (their
   * next free slot lives in memory; they are bounded per volume), and so are extents whose writes
   * wait for an fdatasync.
   */
  private evict (): void {
    if (this.open.size <= extentFdsMax) return
    const writable = this.writableIds()
    for (const id of [...this.open.keys()]) {
      if (this.open.size <= extentFdsMax) break
      const extent = this.resolved.get(id)
      if (extent === undefined || writable.has(id) || this.pending.has(extent)) continue
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

  /** The extent with a descriptor that stays open until release(). */
  private async use (extent: DeltaExtent): Promise<DeltaExtent> {
    const current = extent.closed ? await this.get(extent.id) : extent
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
    if (version !== extentFormatVersion || blockBytes !== this.blockBytes || storedId !== id) {
      await this.io.close(fd)
      throw corrupt(`delta extent ${id}: header says version ${version}, block size ${blockBytes}, id ${storedId}`)
    }
    const { size } = await this.io.fstat(fd)
    const nextSlot = Math.max(0, Math.ceil((size - extentHeaderBytes) / this.blockBytes))
    return new DeltaExtent(id, fd, nextSlot)
  }

  /**
   * Reads target.length bytes at `offset` within `slot` into `target` (a read may run on into the
   * following slots); bytes past the file end are zeros.
   */
  async read (extent: DeltaExtent, slot: number, offset: number, target: Uint8Array): Promise<void> {
    const using = await this.use(extent)
    let done = 0
    try {
      while (done < target.length) {
        const { bytesRead } = await this.io.read(using.fd, target, done, target.length - done, slotOffset(slot, this.blockBytes) + offset + done)
        if (bytesRead === 0) break
        done += bytesRead
      }
    } catch (err) {
      throw fromSystemError(err, `reading extent ${extent.id}`)
    } finally {
      this.release(using)
    }
    if (done < target.length) target.fill(0, done)
  }

  /**
   * Writes `data` at `offset` within `slot`. The extent joins the set the next syncPending() makes
   * durable only once the write completed, so an fdatasync that started earlier never counts for it.
   */
  async write (extent: DeltaExtent, slot: number, offset: number, data: Uint8Array): Promise<void> {
    this.lastWriteMs.set(extent.id, Date.now())
    const using = await this.use(extent)
    let done = 0
    try {
      while (done < data.length) {
        const { bytesWritten } = await this.io.write(using.fd, data, done, data.length - done, slotOffset(slot, this.blockBytes) + offset + done)
        done += bytesWritten
      }
    } catch (err) {
      throw fromSystemError(err, `writing extent ${extent.id}`)
    } finally {
      if (!using.closed) this.pending.add(using)
      this.release(using)
    }
  }

  /** Milliseconds since the extent was last written (Infinity when not since start). */
  idleMs (id: number): number {
    const last = this.lastWriteMs.get(id)
    return last === undefined ? Number.POSITIVE_INFINITY : Date.now() - last
  }

  /**
   * Makes every write that completed before this call durable. A write still in flight joins the
   * set when it completes, for the next call. A failed fdatasync is reported, and the extents stay
   * in the set; the caller must treat the failure as fatal (a retry would "succeed" on Linux after
   * the kernel dropped the dirty pages).
   */
  async syncPending (): Promise<void> {
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
    const opening = this.open.get(id)
    this.lastWriteMs.delete(id)
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
    for (const opening of all) {
      const extent = await opening.catch(() => undefined)
      if (extent !== undefined && !extent.closed) {
        extent.closed = true
        if (extent.users === 0) await this.io.close(extent.fd).catch(() => {})
      }
    }
  }
}

export async function syncDirectory (dir: string): Promise<void> {
  await nodeFileIo.syncDirectory(dir)
}

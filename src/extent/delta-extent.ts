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
import { promisify } from 'node:util'
import { corrupt, fromSystemError } from '../errors'
import { extentFormatVersion, extentHeaderFields, extentMagic, slotOffset } from '../format/extent-format'
import { extentFileName } from '../format/pool-format'
import { extentCloseDelayMs, extentHeaderBytes, extentSlotsMax } from '../limits'

const readAsync = promisify(fs.read)
const writeAsync = promisify(fs.write)
const fdatasyncAsync = promisify(fs.fdatasync)
const openAsync = promisify(fs.open)
const closeAsync = promisify(fs.close)
const fstatAsync = promisify(fs.fstat)
const ftruncateAsync = promisify(fs.ftruncate)

export class DeltaExtent {
  constructor (
    readonly id: number,
    readonly fd: number,
    /** Next free slot: slots are handed out in order and never reused within an extent. */
    public nextSlot: number
  ) {}

  get full (): boolean { return this.nextSlot >= extentSlotsMax }
}

export class ExtentStore {
  private readonly open = new Map<number, Promise<DeltaExtent>>()
  private readonly pending = new Set<DeltaExtent>()
  /** When each extent was last written (since start; extents not written since count as idle). */
  private readonly lastWriteMs = new Map<number, number>()

  constructor (private readonly dir: string, private readonly blockBytes: number) {}

  file (id: number): string { return path.join(this.dir, extentFileName(id)) }

  /** Creates extent `id` on disk with its header, durable (file and directory entry) on return. */
  async create (id: number, volumeId: number): Promise<DeltaExtent> {
    const header = Buffer.alloc(extentHeaderBytes)
    extentMagic.copy(header, extentHeaderFields.magic)
    header.writeUInt32LE(extentFormatVersion, extentHeaderFields.version)
    header.writeUInt32LE(this.blockBytes, extentHeaderFields.blockBytes)
    header.writeBigUInt64LE(BigInt(id), extentHeaderFields.extentId)
    header.writeBigUInt64LE(BigInt(volumeId), extentHeaderFields.volumeId)
    header.writeBigUInt64LE(BigInt(Date.now()), extentHeaderFields.createdMs)
    const opening = (async () => {
      let fd: number
      try {
        fd = await openAsync(this.file(id), 'wx+')
        await writeAsync(fd, header, 0, header.length, 0)
        await fdatasyncAsync(fd)
        await syncDirectory(this.dir)
      } catch (err) {
        throw fromSystemError(err, `creating extent ${id}`)
      }
      return new DeltaExtent(id, fd, 0)
    })()
    this.open.set(id, opening)
    opening.catch(() => this.open.delete(id))
    return await opening
  }

  /** Opens an existing extent (cached); checks its header. Throws CORRUPT or IO. */
  async get (id: number): Promise<DeltaExtent> {
    let opening = this.open.get(id)
    if (opening === undefined) {
      opening = this.openExisting(id)
      this.open.set(id, opening)
      opening.catch(() => this.open.delete(id))
    }
    return await opening
  }

  private async openExisting (id: number): Promise<DeltaExtent> {
    let fd: number
    try {
      fd = await openAsync(this.file(id), 'r+')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw corrupt(`delta extent ${id} is missing (${this.file(id)})`)
      throw fromSystemError(err, `opening extent ${id}`)
    }
    const header = Buffer.alloc(64)
    const { bytesRead } = await readAsync(fd, header, 0, header.length, 0)
    if (bytesRead < 40 || !header.subarray(0, 8).equals(extentMagic)) {
      await closeAsync(fd)
      throw corrupt(`delta extent ${id} has a bad header`)
    }
    const version = header.readUInt32LE(extentHeaderFields.version)
    const blockBytes = header.readUInt32LE(extentHeaderFields.blockBytes)
    const storedId = Number(header.readBigUInt64LE(extentHeaderFields.extentId))
    if (version !== extentFormatVersion || blockBytes !== this.blockBytes || storedId !== id) {
      await closeAsync(fd)
      throw corrupt(`delta extent ${id}: header says version ${version}, block size ${blockBytes}, id ${storedId}`)
    }
    const { size } = await fstatAsync(fd)
    const nextSlot = Math.max(0, Math.ceil((size - extentHeaderBytes) / this.blockBytes))
    return new DeltaExtent(id, fd, nextSlot)
  }

  /**
   * Reads target.length bytes at `offset` within `slot` into `target` (a read may run on into the
   * following slots); bytes past the file end are zeros.
   */
  async read (extent: DeltaExtent, slot: number, offset: number, target: Uint8Array): Promise<void> {
    let done = 0
    try {
      while (done < target.length) {
        const { bytesRead } = await readAsync(extent.fd, target, done, target.length - done, slotOffset(slot, this.blockBytes) + offset + done)
        if (bytesRead === 0) break
        done += bytesRead
      }
    } catch (err) {
      throw fromSystemError(err, `reading extent ${extent.id}`)
    }
    if (done < target.length) target.fill(0, done)
  }

  /** Writes `data` at `offset` within `slot`. */
  async write (extent: DeltaExtent, slot: number, offset: number, data: Uint8Array): Promise<void> {
    this.lastWriteMs.set(extent.id, Date.now())
    this.pending.add(extent)
    let done = 0
    try {
      while (done < data.length) {
        const { bytesWritten } = await writeAsync(extent.fd, data, done, data.length - done, slotOffset(slot, this.blockBytes) + offset + done)
        done += bytesWritten
      }
    } catch (err) {
      throw fromSystemError(err, `writing extent ${extent.id}`)
    }
  }

  /** Milliseconds since the extent was last written (Infinity when not since start). */
  idleMs (id: number): number {
    const last = this.lastWriteMs.get(id)
    return last === undefined ? Number.POSITIVE_INFINITY : Date.now() - last
  }

  /**
   * Makes every write issued before this call durable. A write issued while it runs stays pending
   * for the next call.
   */
  async syncPending (): Promise<void> {
    const extents = [...this.pending]
    this.pending.clear()
    try {
      await Promise.all(extents.map(async extent => await fdatasyncAsync(extent.fd)))
    } catch (err) {
      for (const extent of extents) this.pending.add(extent)
      throw fromSystemError(err, 'syncing extents')
    }
  }

  /**
   * Deletes an extent no map references any more. The file is emptied at once, so its space comes
   * back now; its descriptor is closed a little later: a read that looked the block up before it moved
   * may still be on its way, and closing at once could let the number be reused by another file under
   * it. Such a read finds zeros, and the volume, seeing the block's map entry changed, reads again.
   */
  async remove (id: number): Promise<void> {
    const opening = this.open.get(id)
    this.open.delete(id)
    this.lastWriteMs.delete(id)
    if (opening !== undefined) {
      const extent = await opening.catch(() => undefined)
      if (extent !== undefined) {
        this.pending.delete(extent)
        await ftruncateAsync(extent.fd, 0).catch(() => {})
        setTimeout(() => { fs.close(extent.fd, () => {}) }, extentCloseDelayMs).unref()
      }
    }
    await fs.promises.rm(this.file(id), { force: true })
  }

  async closeAll (): Promise<void> {
    const all = [...this.open.values()]
    this.open.clear()
    for (const opening of all) {
      const extent = await opening.catch(() => undefined)
      if (extent !== undefined) await closeAsync(extent.fd).catch(() => {})
    }
  }
}

export async function syncDirectory (dir: string): Promise<void> {
  const fd = await openAsync(dir, 'r')
  try { await fdatasyncAsync(fd) } finally { await closeAsync(fd) }
}

/**
 * Read descriptors of pack files, owned by the main thread and lent to the open workers with each task
 * (worker threads share the process's descriptor table). The main thread decides when a descriptor
 * closes: a pack deleted or moved by compaction is let go at once and closed when the last task using
 * it is done, so its space comes back then. (Workers that cached descriptors of their own kept deleted
 * packs and extents open: `rm` + `gc` freed nothing on disk.)
 *
 * Bounded by packFdsMax, least recently used first; a descriptor in use is never closed.
 * Errors: pin() throws the node:fs error of the open (ENOENT: the pack is gone or moved).
 */
import path from 'node:path'
import { FileIo } from '../io/file-io'
import { packFdsMax } from '../limits'

export interface PackDescriptor { readonly id: number, readonly fd: number, users: number, closed: boolean }

export class PackDescriptors {
  private readonly open = new Map<number, Promise<PackDescriptor>>()
  private readonly resolved = new Map<number, PackDescriptor>()

  constructor (private readonly dir: string, private readonly fileName: (id: number) => string, private readonly io: FileIo) {}

  /** A descriptor of pack `id` that stays open until unpin(). */
  async pin (id: number): Promise<PackDescriptor> {
    let opening = this.open.get(id)
    if (opening === undefined) {
      opening = this.io.open(path.join(this.dir, this.fileName(id)), 'r').then(fd => {
        const entry = { id, fd, users: 0, closed: false }
        if (this.open.get(id) === opening) this.resolved.set(id, entry)
        return entry
      })
      this.open.set(id, opening)
      opening.catch(() => { if (this.open.get(id) === opening) this.open.delete(id) })
    } else {
      this.open.delete(id)
      this.open.set(id, opening)
    }
    const entry = await opening
    if (entry.closed) return await this.pin(id)
    entry.users++
    this.evict()
    return entry
  }

  unpin (entry: PackDescriptor): void {
    if (--entry.users === 0 && entry.closed) this.io.close(entry.fd).catch(() => {})
  }

  /** Pack `id` was deleted or moved: its descriptor closes once no task uses it. */
  async drop (id: number): Promise<void> {
    const opening = this.open.get(id)
    if (opening === undefined) return
    this.open.delete(id)
    this.resolved.delete(id)
    const entry = await opening.catch(() => undefined)
    if (entry !== undefined) this.letGo(entry)
  }

  private letGo (entry: PackDescriptor): void {
    if (entry.closed) return
    entry.closed = true
    if (entry.users === 0) this.io.close(entry.fd).catch(() => {})
  }

  private evict (): void {
    if (this.open.size <= packFdsMax) return
    for (const id of [...this.open.keys()]) {
      if (this.open.size <= packFdsMax) break
      const entry = this.resolved.get(id)
      if (entry === undefined || entry.users > 0) continue
      this.open.delete(id)
      this.resolved.delete(id)
      this.letGo(entry)
    }
  }

  async closeAll (): Promise<void> {
    const all = [...this.open.values()]
    this.open.clear()
    this.resolved.clear()
    for (const opening of all) {
      const entry = await opening.catch(() => undefined)
      if (entry !== undefined) this.letGo(entry)
    }
  }
}

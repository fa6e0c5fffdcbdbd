/**
 * Worker-side cache of read-only file descriptors (packs, extents), bounded: the oldest is closed past
 * descriptorsMax. Used only inside worker threads.
 */
import fs from 'node:fs'

const descriptorsMax = 64
const descriptors = new Map<string, number>()

export function descriptor (file: string): number {
  let fd = descriptors.get(file)
  if (fd !== undefined) { descriptors.delete(file); descriptors.set(file, fd); return fd }
  fd = fs.openSync(file, 'r')
  descriptors.set(file, fd)
  if (descriptors.size > descriptorsMax) {
    const [oldest, oldFd] = descriptors.entries().next().value as [string, number]
    descriptors.delete(oldest)
    fs.closeSync(oldFd)
  }
  return fd
}

/**
 * Closes every cached descriptor. Called when a task arrives for a new slab, i.e. a new pool in this
 * thread: paths (extents/1.dx) repeat across pools, and a cached descriptor would read the old file.
 */
export function forgetAllDescriptors (): void {
  for (const fd of descriptors.values()) { try { fs.closeSync(fd) } catch {} }
  descriptors.clear()
}

/** Forgets a file that is gone, so the next use opens it again (or fails). */
export function forgetDescriptor (file: string): void {
  const fd = descriptors.get(file)
  if (fd === undefined) return
  descriptors.delete(file)
  try { fs.closeSync(fd) } catch {}
}

/** Reads `target.length` bytes at `position`, filling what lies past the end of the file with zeros. */
export function readFully (fd: number, target: Uint8Array, position: number): void {
  let done = 0
  while (done < target.length) {
    const n = fs.readSync(fd, target, done, target.length - done, position + done)
    if (n === 0) break
    done += n
  }
  if (done < target.length) target.fill(0, done)
}

/**
 * Reading through a descriptor the main thread lent with the task. Workers keep no descriptors of
 * their own: the main thread owns them and closes them when the file is deleted, so its space comes
 * back at once (a worker-side cache kept deleted packs and extents open).
 */
import fs from 'node:fs'

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

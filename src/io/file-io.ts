/**
 * The engine's file I/O seam: every read, write, fdatasync, open, close and delete of extents and
 * packs goes through one small interface, so tests can put a fault-injecting layer under the engine
 * (LevelDB's FaultInjectionTestEnv idea: drop what was not synced on a simulated power cut, fail a
 * chosen fdatasync or write). `nodeFileIo` is the real one, over node:fs.
 *
 * Not behind it: the catalog (SQLite does its own I/O, durable at each transaction with
 * synchronous=FULL), and the worker threads, which read the same files through their own
 * descriptors; what they read is whatever the files hold, as with the page cache.
 * Errors: the node:fs errors, unchanged (callers turn them into VdiskErrors).
 */
import fs from 'node:fs'
import { promisify } from 'node:util'

export interface FileIo {
  open: (file: string, flags: string, mode?: number) => Promise<number>
  close: (fd: number) => Promise<void>
  read: (fd: number, target: Uint8Array, offset: number, length: number, position: number) => Promise<{ bytesRead: number }>
  write: (fd: number, data: Uint8Array, offset: number, length: number, position: number) => Promise<{ bytesWritten: number }>
  writev: (fd: number, buffers: Uint8Array[], position: number) => Promise<{ bytesWritten: number }>
  fdatasync: (fd: number) => Promise<void>
  fstat: (fd: number) => Promise<{ size: number }>
  /** Sets a file's size (ftruncate). */
  truncate: (fd: number, size: number) => Promise<void>
  /** Size of a file by name (0 when missing). */
  sizeOf: (file: string) => Promise<number>
  /** Deletes a file if it exists. */
  remove: (file: string) => Promise<void>
  /** Makes a directory's entries (files created, deleted or renamed in it) durable. */
  syncDirectory: (dir: string) => Promise<void>
}

const openAsync = promisify(fs.open)
const closeAsync = promisify(fs.close)
const fdatasyncAsync = promisify(fs.fdatasync)

export const nodeFileIo: FileIo = {
  open: async (file, flags, mode) => await openAsync(file, flags, mode),
  close: async fd => await closeAsync(fd),
  read: promisify(fs.read) as FileIo['read'],
  write: promisify(fs.write) as FileIo['write'],
  writev: promisify(fs.writev) as FileIo['writev'],
  fdatasync: async fd => await fdatasyncAsync(fd),
  fstat: async fd => await promisify(fs.fstat)(fd),
  truncate: async (fd, size) => await promisify(fs.ftruncate)(fd, size),
  sizeOf: async file => { try { return (await fs.promises.stat(file)).size } catch { return 0 } },
  remove: async file => await fs.promises.rm(file, { force: true }),
  syncDirectory: async dir => {
    const fd = await openAsync(dir, 'r')
    try { await fdatasyncAsync(fd) } finally { await closeAsync(fd) }
  }
}

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
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { inlineReadBytesMax, inlineWriteBackoffMs, inlineWriteBytesMax, inlineWriteSlowMs, inlineWritesPerTurnMax } from '../limits'

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

export interface InlineWriteStats {
  /** Writes done synchronously on the event loop, through the thread pool, and inline ones found slow. */
  inline: number
  pooled: number
  slow: number
  /** Reads tried inline that the page cache could not serve whole (then pooled too; 0 for writes). */
  missed: number
  /** The longest inline write, in milliseconds: the longest the event loop waited for one. */
  slowestMs: number
}

/**
 * Writes that land in the page cache take microseconds; a libuv thread-pool round trip costs tens of
 * them in wake-ups (one per slot write, most of the main thread's time under 4 KiB writes: issue #10).
 * So a small write is done synchronously on the event loop, timed: one that took longer than
 * inlineWriteSlowMs (the kernel throttling dirty pages, or a slow disk) sends writes back to the
 * thread pool for inlineWriteBackoffMs (fixed: see limits.ts). At most inlineWritesPerTurnMax go inline
 * in one turn of the event loop: a chain of awaits on inline writes would otherwise never yield.
 * VDISKFS_INLINE_WRITES=0 in the daemon's environment turns this off (for measuring).
 *
 * Reads go inline too, under a policy of their own, but only when every byte is in the page cache:
 * preadv2 with RWF_NOWAIT (the addon's preadNowait) never waits for the disk, and answers EAGAIN
 * instead; the read then goes through the thread pool (counted as missed and pooled).
 * VDISKFS_INLINE_READS=0 turns them off.
 */
/** When a write goes inline; `now` (ns) is a parameter for tests. */
export class InlineWritePolicy {
  /** Before this time (ns) writes go through the thread pool. */
  private backoffUntil = 0n
  /** Inline writes since the event loop last turned (reset by a setImmediate). */
  private thisTurn = 0
  readonly stats: InlineWriteStats = { inline: 0, pooled: 0, slow: 0, slowestMs: 0, missed: 0 }

  constructor (readonly enabled: boolean, private readonly now: () => bigint = process.hrtime.bigint) {}

  /** Whether a write of `length` bytes goes inline now; counts it as pooled when not. */
  inlineNow (length: number): boolean {
    const inline = this.enabled && length <= inlineWriteBytesMax && this.thisTurn < inlineWritesPerTurnMax &&
      (this.backoffUntil === 0n || this.now() >= this.backoffUntil)
    if (!inline) { this.stats.pooled++; return false }
    if (this.thisTurn++ === 0) setImmediate(() => { this.thisTurn = 0 })
    return true
  }

  /**
   * Runs a synchronous write (or read), timed; a slow one starts the back-off. `served` tells whether
   * its result was served inline; one that was not counts as missed and pooled (its caller goes to the
   * pool), not as inline.
   */
  run (write: () => number, served: (result: number) => boolean = () => true): { bytesWritten: number } {
    const start = this.now()
    let result: number | undefined
    try {
      result = write()
      return { bytesWritten: result }
    } finally {
      const end = this.now()
      if (result !== undefined && !served(result)) {
        this.stats.missed++
        this.stats.pooled++
      } else {
        this.stats.inline++
      }
      const tookMs = Number(end - start) / 1e6
      if (tookMs > this.stats.slowestMs) this.stats.slowestMs = tookMs
      if (end - start > BigInt(inlineWriteSlowMs) * 1_000_000n) {
        this.stats.slow++
        this.backoffUntil = end + BigInt(inlineWriteBackoffMs) * 1_000_000n
      }
    }
  }
}

const inline = new InlineWritePolicy(process.env.VDISKFS_INLINE_WRITES !== '0')
const inlineReads = new InlineWritePolicy(process.env.VDISKFS_INLINE_READS !== '0')

export function inlineWriteStats (): InlineWriteStats { return { ...inline.stats } }
export function inlineReadStats (): InlineWriteStats { return { ...inlineReads.stats } }

const EAGAIN = 11
type PreadNowait = (fd: number, target: Uint8Array, offset: number, length: number, position: number) => number
let preadNowait: PreadNowait | null | undefined
/** The addon's preadNowait (native/fuse3/vdiskfs_fuse3.c), or null where it does not load (then reads go through the pool). */
function nowaitReader (): PreadNowait | null {
  if (preadNowait === undefined) {
    try {
      const addon = process.env.VDISKFS_FUSE3_ADDON ?? path.join(__dirname, '..', '..', '..', 'native', 'fuse3', 'build', 'vdiskfs_fuse3.node')
      preadNowait = (require(addon) as { preadNowait?: PreadNowait }).preadNowait ?? null
    } catch { preadNowait = null }
  }
  return preadNowait
}

/** A system error as node:fs makes them (code, errno, syscall), for a failed inline read. */
function systemError (errno: number): NodeJS.ErrnoException {
  const code = Object.entries(os.constants.errno).find(([, n]) => n === errno)?.[0] ?? 'EIO'
  const err: NodeJS.ErrnoException = new Error(`${code}: ${code === 'EIO' ? 'i/o error' : 'error'}, read`)
  err.code = code
  err.errno = -errno
  err.syscall = 'read'
  return err
}

const readAsync = promisify(fs.read) as FileIo['read']

async function read (fd: number, target: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }> {
  const nowait = length <= inlineReadBytesMax ? nowaitReader() : null
  if (nowait === null || !inlineReads.inlineNow(length)) return await readAsync(fd, target, offset, length, position)
  const result = inlineReads.run(() => nowait(fd, target, offset, length, position), n => !notServed(n)).bytesWritten
  // A whole read, or 0 at the end of the file. A short one means the page cache held only the start:
  // the rest through the pool, so that a short read still means the end of the file, as pread's does
  // (callers other than readRaw take it so; a chunk read short was reported as damage).
  if (result === length || result === 0) return { bytesRead: result }
  if (result > 0) {
    const { bytesRead } = await readAsync(fd, target, offset + result, length - result, position + result)
    return { bytesRead: result + bytesRead }
  }
  // EAGAIN: not all in the page cache; EOPNOTSUPP and the like: a file system without RWF_NOWAIT.
  if (notServed(result)) return await readAsync(fd, target, offset, length, position)
  throw systemError(-result)
}

/** An inline read's result that sends it to the pool: EAGAIN (not all in the page cache); EOPNOTSUPP and the like (a file system without RWF_NOWAIT). */
function notServed (result: number): boolean {
  return result === -EAGAIN || result === -os.constants.errno.EOPNOTSUPP || result === -os.constants.errno.EINVAL
}

const writeAsync = promisify(fs.write) as FileIo['write']
const writevAsync = promisify(fs.writev) as FileIo['writev']

const openAsync = promisify(fs.open)
const closeAsync = promisify(fs.close)
const fdatasyncAsync = promisify(fs.fdatasync)

export const nodeFileIo: FileIo = {
  open: async (file, flags, mode) => await openAsync(file, flags, mode),
  close: async fd => await closeAsync(fd),
  read,
  write: async (fd, data, offset, length, position) => {
    if (!inline.inlineNow(length)) return await writeAsync(fd, data, offset, length, position)
    return inline.run(() => fs.writeSync(fd, data, offset, length, position))
  },
  writev: async (fd, buffers, position) => {
    const length = buffers.reduce((sum, b) => sum + b.length, 0)
    if (!inline.inlineNow(length)) return await writevAsync(fd, buffers, position)
    return inline.run(() => fs.writevSync(fd, buffers, position))
  },
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

/**
 * The FUSE transport: our own N-API addon in native/fuse3/ over libfuse 3's low-level API, and the
 * mount/unmount surface the daemon uses. docs/TRANSPORT.md has the design (threads, INIT, the holder,
 * what is left).
 *
 * The addon's threads read requests and queue them here (one thread-safe function per session);
 * `dispatch` runs the matching handler of fuse3-ops.ts and turns its callback into exactly one
 * fuse_reply_* through the addon. A handler that throws is a bug: logged, answered EIO.
 */
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import type { FastReadNative, FastReads } from './fast-reads'
import { fuse3AttrTimeoutSeconds, fuse3EntryTimeoutSeconds, fuse3KeepCache, fuse3MaxWriteBytes, fuse3NotifyWaitMs, fuse3Threads, fuseBackgroundMax, fuseCongestionThreshold } from '../limits'

/**
 * Test hook (test/integration/takeover.test.ts): with VDISKFS_TEST_DIE_BEFORE_REPLY=DIR in the daemon's
 * environment, a request of kind K that succeeds while the file DIR/K exists removes it and kills the
 * daemon before its reply: done, and not answered, for the next daemon to be resent. When the file
 * holds a number, the daemon dies that many milliseconds later, the reply never sent. Returns whether
 * the reply is to be held back.
 */
const dieBeforeReply = process.env.VDISKFS_TEST_DIE_BEFORE_REPLY !== undefined && process.env.VDISKFS_TEST_DIE_BEFORE_REPLY !== ''
  ? (name: string): boolean => {
      const file = path.join(process.env.VDISKFS_TEST_DIE_BEFORE_REPLY ?? '', name)
      let delayMs = 0
      try {
        delayMs = Number(fs.readFileSync(file, 'utf8')) || 0
        fs.unlinkSync(file)
      } catch { return false }
      if (delayMs > 0) setTimeout(() => process.kill(process.pid, 'SIGKILL'), delayMs)
      else process.kill(process.pid, 'SIGKILL')
      return true
    }
  : undefined

/** The addon's request kinds, in its order (native/fuse3/vdiskfs_fuse3.c, OP_*). */
const opNames = ['exit', 'lookup', 'getattr', 'setattr', 'readdir', 'open', 'create', 'read', 'write', 'flush', 'release', 'fsync',
  'unlink', 'rename', 'fallocate', 'statfs', 'lseek', 'copy_file_range', 'getxattr', 'listxattr', 'setxattr', 'removexattr',
  // Not a request: the addon's first writes of a volume (ino) have used most of its lease of slots.
  'lease'] as const

type Handle = object
type Session = object

interface Fuse3Native extends FastReadNative {
  mount: (mountpoint: string, options: string, dispatch: (op: number, request: Handle | null, ...args: any[]) => void, settings: Record<string, number>) => Session
  unmount: (session: Session) => number
  /** The calling thread's scheduling policy: 1 SCHED_RR 1 (reset on fork), 0 SCHED_OTHER; 0 or an errno. */
  loopPriority: (realtime: number) => number
  /** glibc's malloc_trim(0) in a thread of its own (daemon/memory-trim.ts): 0, or pthread_create's errno. */
  mallocTrim: () => number
  /** The trims ended, the last one's milliseconds and the resident bytes it gave back. */
  mallocTrimStats: () => number[]
  destroy: (session: Session) => void
  stats: (session: Session) => Fuse3Stats
  fd: (session: Session) => number
  notifier: (session: Session) => [number, number]
  /** kind 0: drop an inode's attributes (offset < 0) or pages from offset (length 0: to the end); kind 1: drop a name. Resolves to an errno. */
  notify: (session: Session, kind: 0 | 1, ino: number, offset: number, length: number, name: string | null) => Promise<number>
  replyErr: (request: Handle, errno: number) => void
  replyEntry: (request: Handle, ino: number, mode: number, nlink: number, uid: number, gid: number, size: number, blocks: number, blksize: number, mtimeMs: number, generation: number) => void
  replyAttr: (request: Handle, ino: number, mode: number, nlink: number, uid: number, gid: number, size: number, blocks: number, blksize: number, mtimeMs: number) => void
  replyCreate: (request: Handle, ino: number, mode: number, nlink: number, uid: number, gid: number, size: number, blocks: number, blksize: number, mtimeMs: number, fh: number, generation: number) => void
  replyOpen: (request: Handle, fh: number) => void
  replyBuf: (request: Handle, buffer: Buffer, length: number) => void
  replyWrite: (request: Handle, count: number) => void
  replyStatfs: (request: Handle, bsize: number, blocks: number, bfree: number, bavail: number, files: number, ffree: number) => void
  replyLseek: (request: Handle, offset: number) => void
  replyXattr: (request: Handle, size: number) => void
  replyDir: (request: Handle, names: string[], inos: number[], modes: number[]) => void
}

/** What INIT negotiated and what the addon counted (request sizes by power of two: index b is (2^(b-1), 2^b] bytes). */
export interface Fuse3Stats {
  protoMajor: number
  protoMinor: number
  maxWrite: number
  maxReadahead: number
  capable: number
  want: number
  maxThreads: number
  requests: number
  writeBytes: number
  readBytes: number
  maxWriteSeen: number
  writeSizes: number[]
  readSizes: number[]
  /** A takeover's FUSE_NOTIFY_RESEND: 0, or the errno of its write; -1 when this daemon mounted. */
  resendResult: number
  /** 1: each worker reads its own cloned descriptor; 0 when a holder shares the descriptor. */
  cloneFd: number
  /** Invalidations sent to the kernel (rename, rm, promote, restore). */
  notifications: number
  /** Requests the kernel resent to this daemon after a takeover (FUSE_UNIQUE_RESEND). */
  resent: number
  entryTimeout: number
  attrTimeout: number
  keepCache: number
  /** The fast path (docs/FASTPATH.md): on (1) or off, READs it answered, handed to the engine, bytes, checksum mismatches it handed over, extents it holds. */
  fastOn: number
  fastServed: number
  fastHanded: number
  /** Native WRITEs on (1); WRITEs overwritten in the addon's threads, handed to the engine, bytes. */
  fastWritesOn: number
  fastWritten: number
  fastWriteHanded: number
  /** Blocks native first writes gave a new slot (docs/FASTPATH.md, "First writes"). */
  fastAllocated: number
  fastWriteBytes: number
  /** Writeback passes fastWriteback started, and the extents whose writeback they started. */
  fastWritebackPasses: number
  fastWritebackKicks: number
  fastBytes: number
  fastMismatches: number
  fastExtents: number
  /** Memory the published words take (pages and the sub-pages in memory), bytes. */
  fastWordBytes: number
  /**
   * Sealed chunks: records the addon holds, reads of them it served (of which from its thread's last
   * chunk), 16 KiB pieces it opened and checked (pieced payloads, docs/FORMAT.md), chunks that failed its check.
   */
  fastChunks: number
  fastChunkReads: number
  fastChunkHits: number
  fastChunkPieces: number
  fastChunkMismatches: number
}

/** What the kernel must forget: a volume's pages and attributes (data) or attributes alone, or a name in a directory. */
export type Invalidation = { ino: number, data: boolean } | { parent: number, name: string }

/**
 * Inode generations: volume ids are never given twice in a pool's life (catalog.ts deleteVolume), so
 * one generation for all tells the kernel an inode it knows is still the volume it was.
 */
const generation = 1

export interface Fuse3Options {
  fsname: string
  subtype: string
  defaultPermissions: boolean
  allowOther: boolean
  log: (message: string) => void
  /** Take over a mount whose daemon died: its /dev/fuse descriptor (docs/TRANSPORT.md). */
  takeoverFd?: number
  /** A holder shares the descriptor: no cloned descriptors, so the kernel keeps what a dead daemon read. */
  shareFd?: boolean
  /** After a takeover: the socket to the holder's notifier for this daemon (its fd 4), which writes the notifications. */
  notifyFd?: number
}

/** Where the Makefile builds the addon and the holder (make native); VDISKFS_FUSE3_ADDON names another (tests). */
export const fuse3AddonPath = process.env.VDISKFS_FUSE3_ADDON ?? path.join(__dirname, '..', '..', '..', 'native', 'fuse3', 'build', 'vdiskfs_fuse3.node')
export const fuse3HolderPath = path.join(__dirname, '..', '..', '..', 'native', 'fuse3', 'build', 'vdiskfs-holder')

let loaded: Fuse3Native | null = null
export function loadFuse3Native (): Fuse3Native {
  if (loaded === null) {
    try {
      loaded = require(fuse3AddonPath) as Fuse3Native
    } catch (err) {
      throw new Error(`vdiskfs's FUSE 3 addon is missing or does not load (${(err as Error).message.split('\n')[0]}): install libfuse3-3 and run make native (or make run)`)
    }
  }
  return loaded
}

const ERANGE = 34
const ENOENT = 2
const EIO = 5
const EPERM = 1
const unmountWaitMs = 3000

type Reply = (code: number, ...results: any[]) => void

export class Fuse3Transport {
  private session: Session | null = null
  /** The fast path, once it serves this session (serveFastReads). */
  private fast: FastReads | null = null
  private ended = false
  /** The invalidations not yet taken by the kernel, sent one at a time (see invalidate). */
  private notifying: Promise<void> = Promise.resolve()
  private notifyPending = 0
  private readonly endWaiters: Array<() => void> = []
  private readonly native: Fuse3Native

  constructor (readonly mountpoint: string, private readonly operations: Record<string, (...args: any[]) => void>, private readonly options: Fuse3Options) {
    this.native = loadFuse3Native()
  }

  stats (): Fuse3Stats | null {
    return this.session === null ? null : this.native.stats(this.session)
  }

  /** Lets the addon's threads serve the READs `fast` publishes (docs/FASTPATH.md); call once mounted. */
  serveFastReads (fast: FastReads): void {
    if (this.session === null) return
    fast.attach(this.native, this.session)
    this.fast = fast
  }

  /** The session's /dev/fuse descriptor (-1 when there is none), for the holder. */
  fd (): number {
    return this.session === null ? -1 : this.native.fd(this.session)
  }

  /**
   * A socket pair for the holder's notifier (native/fuse3/vdiskfs_holder.c): from now on notifications
   * go through the first end to the process the holder forks on the second, which the caller passes to
   * the holder as its fd 4 and then closes. docs/TRANSPORT.md, "A mount that outlives its daemon".
   */
  notifier (): [number, number] | null {
    return this.session === null ? null : this.native.notifier(this.session)
  }

  mount (cb: (err: Error | null) => void): void {
    const mountOptions = [`fsname=${this.options.fsname}`, `subtype=${this.options.subtype}`]
    if (this.options.defaultPermissions) mountOptions.push('default_permissions')
    if (this.options.allowOther) mountOptions.push('allow_other')
    try {
      this.session = this.native.mount(this.mountpoint, mountOptions.join(','), (op, request, ...args) => this.dispatch(op, request, args), {
        maxWrite: fuse3MaxWriteBytes,
        maxThreads: fuse3Threads,
        maxBackground: fuseBackgroundMax,
        congestionThreshold: fuseCongestionThreshold,
        cloneFd: this.options.shareFd === true || this.options.takeoverFd !== undefined ? 0 : 1,
        entryTimeout: fuse3EntryTimeoutSeconds,
        attrTimeout: fuse3AttrTimeoutSeconds,
        keepCache: fuse3KeepCache ? 1 : 0,
        ...(this.options.takeoverFd !== undefined ? { takeoverFd: this.options.takeoverFd } : {}),
        ...(this.options.notifyFd !== undefined ? { notifyFd: this.options.notifyFd } : {})
      })
    } catch (err) {
      cb(err as Error)
      return
    }
    cb(null)
  }

  /**
   * Detaches the mount and waits (up to unmountWaitMs) for the session loop to end; a mount still in
   * use (open files, loop devices) ends when they let go, or when the process exits.
   */
  unmount (cb: (err: Error | null) => void): void {
    if (this.session === null || this.ended) { cb(null); return }
    const result = this.native.unmount(this.session)
    if (result === EPERM) {
      // Not root: fusermount3 (setuid) unmounts, as libfuse itself would.
      const done = spawnSync('fusermount3', ['-uz', this.mountpoint])
      if (done.error !== undefined || done.status !== 0) spawnSync('fusermount3', ['-uz', this.mountpoint])
    } else if (result !== 0) {
      this.options.log(`unmount of ${this.mountpoint} failed: errno ${result}`)
    }
    const timer = setTimeout(() => cb(null), unmountWaitMs)
    this.endWaiters.push(() => { clearTimeout(timer); cb(null) })
  }

  /**
   * Has the kernel drop what it cached of `items` (changes it did not make itself). Sent in order, one
   * at a time, off the JavaScript thread (the kernel's side can wait for a READ that this thread
   * answers). An errno is logged, except ENOENT: the kernel did not know the inode or name.
   */
  invalidate (items: Invalidation[]): void {
    if (this.session === null || this.ended || items.length === 0) return
    const session = this.session
    this.notifyPending++
    this.notifying = this.notifying.then(async () => {
      for (const item of items) {
        if (this.ended) break
        const result = 'name' in item
          ? await this.native.notify(session, 1, item.parent, 0, 0, item.name)
          : await this.native.notify(session, 0, item.ino, item.data ? 0 : -1, 0, null)
        if (result !== 0 && result !== ENOENT && !this.ended) this.options.log(`the kernel refused an invalidation (${JSON.stringify(item)}): errno ${result}`)
      }
    }).catch(err => this.options.log(`invalidation failed: ${(err as Error).message}`)).finally(() => { this.notifyPending-- })
  }

  /**
   * Resolves once the invalidations asked so far are taken, or after fuse3NotifyWaitMs (logged): a
   * CLI command that changed names or bytes replies after this, so that what it changed shows at once.
   */
  async invalidated (): Promise<void> {
    if (this.notifyPending === 0) return
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<boolean>(resolve => { timer = setTimeout(() => resolve(true), fuse3NotifyWaitMs) })
    try {
      if (await Promise.race([this.notifying.then(() => false), late])) this.options.log(`the kernel has not taken an invalidation after ${fuse3NotifyWaitMs} ms; replying anyway`)
    } finally { clearTimeout(timer) }
  }

  private onEnd (loopResult: number): void {
    this.ended = true
    if (loopResult !== 0) this.options.log(`the FUSE session loop ended with ${loopResult}`)
    // An invalidation still running uses the session: destroy it once none is (with the connection
    // gone the kernel refuses them at once).
    const session = this.session
    void this.notifying.finally(() => {
      if (session !== null) this.native.destroy(session)
      for (const waiter of this.endWaiters.splice(0)) waiter()
    })
  }

  private dispatch (op: number, request: Handle | null, args: any[]): void {
    const name = opNames[op]
    if (name === 'exit') { this.onEnd(args[0] as number); return }
    if (name === 'lease') { this.fast?.leaseLow(args[0] as number); return }
    // Every request first takes the addon's first writes into the maps (fast-reads.ts settle()).
    this.fast?.settle()
    const native = this.native
    const handler = name === undefined ? undefined : this.operations[name]
    if (handler === undefined || request === null) { if (request !== null) native.replyErr(request, 38); return } // ENOSYS
    // A WRITE's data arrives as a Uint8Array over the addon's external ArrayBuffer: a Buffer view of it,
    // no copy (the addon frees it when the write is answered).
    if (name === 'write' && !Buffer.isBuffer(args[2])) {
      const bytes = args[2] as Uint8Array
      args[2] = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    }
    let replied = false
    const reply: Reply = (code, ...results) => {
      if (replied) { this.options.log(`bug: a second reply to one ${name} request`); return }
      replied = true
      try {
        if (code < 0) { native.replyErr(request, -code); return }
        if (dieBeforeReply !== undefined && dieBeforeReply(name)) return
        this.succeed(name, request, args, results)
      } catch (err) {
        this.options.log(`bug: replying to ${name}: ${(err as Error)?.stack ?? String(err)}`)
      }
    }
    try {
      handler(...args, reply)
    } catch (err) {
      this.options.log(`bug: ${name}: ${(err as Error)?.stack ?? String(err)}`)
      if (!replied) reply(-EIO)
    }
  }

  private succeed (name: typeof opNames[number], request: Handle, args: any[], results: any[]): void {
    const native = this.native
    switch (name) {
      case 'lookup': { const a = results[0]; native.replyEntry(request, a.ino, a.mode, a.nlink, a.uid, a.gid, a.size, a.blocks, a.blksize, a.mtimeMs, generation); return }
      case 'getattr': case 'setattr': { const a = results[0]; native.replyAttr(request, a.ino, a.mode, a.nlink, a.uid, a.gid, a.size, a.blocks, a.blksize, a.mtimeMs); return }
      case 'create': { const a = results[0]; native.replyCreate(request, a.ino, a.mode, a.nlink, a.uid, a.gid, a.size, a.blocks, a.blksize, a.mtimeMs, results[1], generation); return }
      case 'readdir': {
        const entries = results[0] as Array<{ name: string, ino: number, mode: number }>
        native.replyDir(request, entries.map(e => e.name), entries.map(e => e.ino), entries.map(e => e.mode))
        return
      }
      case 'open': native.replyOpen(request, results[0]); return
      case 'read': native.replyBuf(request, results[0], results[1]); return
      case 'write': case 'copy_file_range': native.replyWrite(request, results[0]); return
      case 'statfs': { const s = results[0]; native.replyStatfs(request, s.bsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree); return }
      case 'lseek': native.replyLseek(request, results[0]); return
      case 'getxattr': case 'listxattr': {
        // getxattr(ino, name, size) / listxattr(ino, size): size 0 asks how much room the value needs.
        const value = results[0] as Buffer
        const size = args[args.length - 1] as number
        if (size === 0) native.replyXattr(request, value.length)
        else if (value.length > size) native.replyErr(request, ERANGE)
        else native.replyBuf(request, value, value.length)
        return
      }
      default: native.replyErr(request, 0)
    }
  }
}

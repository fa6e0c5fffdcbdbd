/**
 * The FUSE 3 low-level operations: inode-based requests from our own transport (fuse3-transport.ts)
 * translated into calls on the pool and its volumes, and typed errors into errno. No business logic
 * lives here.
 *
 * Inodes: 1 is the root, 2-4 the directories disks/, backups/, clones/; a volume is its id +
 * volumeInodeBase. Volume ids are never reused while the daemon runs, so an inode never names two
 * volumes, and one stays valid across rename and promote (a clone becoming a disk keeps its inode). A
 * volume removed while open keeps its inode (nlink 0) until its last release. Nothing is kept per
 * lookup, so FORGET needs no answer from here (the addon answers it).
 *
 * Each handler takes the request's arguments and, last, a callback: (0, results...) or (-errno).
 * DaemonMetrics.measureOperations wraps them like the path-based ones.
 */
import fs from 'node:fs'
import { VolumeKind } from '../catalog/catalog'
import { VdiskError, notPermitted, readOnly } from '../errors'
import { Pool, VolumeChange } from '../volume/pool'
import type { FastReads } from './fast-reads'
import { Volume } from '../volume/volume'
import { AllocationRange } from '../volume/allocation'
import { EINVAL, EISDIR, ENODATA, ENOENT, ENOSYS, ENOTSUP, EPERM, toErrno } from './errno'
import { SpaceAccounting } from '../inspect/space'
import { fallocate, xattrNames, xattrPrefix, xattrValue } from './volume-ops'
import { dirOfKind } from '../volume/names'

export const rootInode = 1
export const volumeInodeBase = 16
const dirInodeOf: Record<VolumeKind, number> = { disk: 2, backup: 3, clone: 4 }
const kindOfInode = new Map<number, VolumeKind>([[2, 'disk'], [3, 'backup'], [4, 'clone']])

const EEXIST = -17
const ENXIO = -6
const EBADF = -9
const EXDEV = -18

/** setattr's to_set bits (fuse_lowlevel.h). */
const setMode = 1 << 0
const setUid = 1 << 1
const setGid = 1 << 2
const setSize = 1 << 3
const setMtime = 1 << 5
const setMtimeNow = 1 << 8
/** rename(2) flags. */
const renameNoReplace = 1
/** lseek whence. */
const seekData = 3
const seekHole = 4

/**
 * What the kernel must forget after a change it did not make itself (Pool.onChange): the names the
 * volume had and has, and its attributes (nlink, size), or its pages too when its bytes changed.
 */
export function invalidationsOf (change: VolumeChange): Array<{ ino: number, data: boolean } | { parent: number, name: string }> {
  const names = new Map(change.names.map(n => [`${n.kind}/${n.name}`, { parent: dirInodeOf[n.kind], name: n.name }]))
  return [...names.values(), { ino: change.volume.id + volumeInodeBase, data: change.data }]
}

export interface Attr { ino: number, mode: number, nlink: number, uid: number, gid: number, size: number, blocks: number, blksize: number, mtimeMs: number }
export interface DirEntry { name: string, ino: number, mode: number }

/**
 * An open file. `unique`: the OPEN or CREATE that made it (the kernel's request id), kept from its
 * making until its reply has been written: a daemon killed in between leaves it in the handles file, and
 * the kernel resends that request (same id) to the next daemon, which gives it this handle instead of a
 * second one (adopt, below).
 */
interface Handle { volume: Volume, writable: boolean, unique?: number }

export interface LowLevelOptions {
  pool: Pool
  space: SpaceAccounting
  log: (message: string) => void
  xattrs?: boolean
  /**
   * Keep the open handles in this file (format/pool-format.ts, fuseHandlesFile) while a holder keeps the
   * mount, so that a daemon taking it over serves the files the kernel still has open.
   */
  handlesFile?: string
  /** This daemon takes a mount over: restore the handles from handlesFile. */
  takeover?: boolean
  /** The fast path's publisher: told of every READ the engine answered (fast-reads.ts). */
  fast?: FastReads
}

type Callback = (code: number, ...results: any[]) => void

/**
 * Buffers for READ replies, reused. fuse_reply_buf has copied a reply into the kernel when replyBuf
 * returns, so the buffer of a read that succeeded is free again once it is answered. A new Buffer for
 * every READ (1 MiB ones for a sequential reader) cost more than the read itself: the in-memory
 * ceiling read 640 MB/s so and 2.2 GB/s with one reused buffer (docs/TRANSPORT.md, "Measurements").
 * A read that failed does not give its buffer back: part of the engine's read may still be writing
 * into it (Promise.all rejects at the first failure); the garbage collector frees it.
 */
export class ReadBuffers {
  private readonly free = new Map<number, Buffer[]>()

  constructor (private readonly perSize = 16, private readonly largest = 1 << 20) {}

  /** A buffer of `size` bytes (a view of a pooled one, which `give` takes back) and the pooled buffer. */
  take (size: number): { view: Buffer, whole: Buffer } {
    let capacity = 4096
    while (capacity < size) capacity *= 2
    if (capacity > this.largest) { const whole = Buffer.allocUnsafe(size); return { view: whole, whole } }
    const whole = this.free.get(capacity)?.pop() ?? Buffer.allocUnsafe(capacity)
    return { view: whole.subarray(0, size), whole }
  }

  /** Takes back a buffer `take` gave, once nothing reads or writes it any more. */
  give (whole: Buffer): void {
    if (whole.length > this.largest || (whole.length & (whole.length - 1)) !== 0 || whole.length < 4096) return
    const list = this.free.get(whole.length) ?? []
    if (list.length < this.perSize) list.push(whole)
    this.free.set(whole.length, list)
  }
}

// long: the table of FUSE low-level operations, one short entry per request type, over the handles they share
export function createLowLevelOperations ({ pool, space, log, xattrs, handlesFile, takeover, fast }: LowLevelOptions): Record<string, (...args: any[]) => void> {
  const handles = new Map<number, Handle>()
  const readBuffers = new ReadBuffers()
  let nextHandle = 1

  /**
   * Writes the handles (before the reply that gives the kernel a new one, after a release): a write
   * and a rename, no fsync, since the file only has to outlive this process, not the machine.
   */
  function saveHandles (): void {
    if (handlesFile === undefined) return
    const rows = [...handles].map(([fh, h]) => [fh, h.volume.id, h.writable ? 1 : 0, h.unique ?? 0])
    try {
      fs.writeFileSync(`${handlesFile}.tmp`, JSON.stringify({ next: nextHandle, handles: rows }), { mode: 0o600 })
      fs.renameSync(`${handlesFile}.tmp`, handlesFile)
    } catch (err) {
      log(`could not save the open handles (a takeover would not know them): ${(err as Error).message}`)
    }
  }

  if (handlesFile !== undefined && takeover === true) {
    try {
      const saved = JSON.parse(fs.readFileSync(handlesFile, 'utf8')) as { next: number, handles: Array<[number, number, number, number?]> }
      for (const [fh, id, writable, unique] of saved.handles) {
        const volume = pool.byId(id)
        if (volume === undefined) { log(`takeover: open handle ${fh} named volume ${id}, which is gone`); continue }
        pool.opened(volume, writable === 1)
        handles.set(fh, { volume, writable: writable === 1, ...(unique !== undefined && unique !== 0 ? { unique } : {}) })
        nextHandle = Math.max(nextHandle, fh + 1)
      }
      nextHandle = Math.max(nextHandle, saved.next)
      log(`takeover: ${handles.size} open handles restored`)
    } catch (err) {
      log(`takeover: no open handles restored (${(err as Error).message}): files the kernel had open get EBADF`)
    }
  } else if (handlesFile !== undefined) {
    saveHandles()
  }
  const uid = process.getuid?.() ?? 0
  const gid = process.getgid?.() ?? 0
  const mountedMs = Date.now()
  /** The last allocation map computed per volume, valid while the pool's generation has not moved. */
  const maps = new Map<number, { generation: number, ranges: AllocationRange[] }>()

  const fail = (cb: Callback) => (err: unknown) => cb(toErrno(err, log))

  /**
   * For a resent OPEN or CREATE (request `unique`): the handle the dead daemon made for that very
   * request and never told the kernel of (saved with its id, counted open at the takeover), if any.
   */
  function adopt (volume: Volume, writable: boolean, unique: number): number | undefined {
    const fh = [...handles].find(([, h]) => h.unique === unique && h.volume === volume && h.writable === writable)?.[0]
    if (fh !== undefined) log(`takeover: a resent request takes handle ${fh}, which the daemon before made for it and did not answer`)
    return fh
  }

  /** A new handle of `volume` (which the caller has counted open) for request `unique`, saved with it until answered(fh). */
  function register (volume: Volume, writable: boolean, unique: number): number {
    const fh = nextHandle++
    handles.set(fh, { volume, writable, unique })
    saveHandles()
    return fh
  }

  /** The reply giving `fh` to the kernel has been written: no resend can name it (the next save drops the id). */
  function answered (fh: number): void {
    const handle = handles.get(fh)
    if (handle !== undefined) delete handle.unique
  }

  function dirAttr (ino: number): Attr {
    const writable = ino === dirInodeOf.disk
    return { ino, mode: 0o040000 | (writable ? 0o755 : 0o555), nlink: 2, uid, gid, size: 4096, blocks: 8, blksize: 4096, mtimeMs: mountedMs }
  }

  function fileAttr (volume: Volume): Attr {
    // Native WRITEs since the last look change the mtime shown (fast-reads.ts collect()).
    fast?.collect(volume)
    return {
      ino: volume.id + volumeInodeBase,
      mode: 0o100000 | volume.mode,
      // A volume removed while open is still served to its holders, but has no name any more.
      nlink: volume.hidden ? 0 : 1,
      uid: volume.uid,
      gid: volume.gid,
      size: volume.size,
      blocks: Math.ceil(volume.storedBytes / 512),
      blksize: pool.blockBytes,
      mtimeMs: volume.mtimeMs
    }
  }

  /** The volume an inode names; NOT_FOUND once it left the pool. */
  function volumeOf (ino: number): Volume {
    const volume = ino >= volumeInodeBase ? pool.byId(ino - volumeInodeBase) : undefined
    if (volume === undefined) throw new VdiskError('NOT_FOUND', `inode ${ino} is not a volume`)
    return volume
  }

  function handleOf (fh: number | null): Handle {
    const handle = fh === null ? undefined : handles.get(fh)
    if (handle === undefined) throw new VdiskError('INVALID', `no open handle ${String(fh)}`)
    return handle
  }

  function attrOf (ino: number): Attr {
    if (ino === rootInode) return { ...dirAttr(ino), mode: 0o040555 }
    if (kindOfInode.has(ino)) return dirAttr(ino)
    return fileAttr(volumeOf(ino))
  }

  async function resize (volume: Volume, size: number): Promise<void> {
    const before = volume.size
    await volume.truncate(size)
    if (size !== before) log(`resize: ${dirOfKind[volume.kind]}/${volume.name} from ${before} to ${size} bytes`)
  }

  async function allocation (volume: Volume): Promise<AllocationRange[]> {
    const cached = maps.get(volume.id)
    if (cached !== undefined && cached.generation === pool.generation) return cached.ranges
    const generation = pool.generation
    const ranges = await pool.allocationMap(volume)
    maps.clear()
    // eslint-disable-next-line vdiskfs/map-check-then-act -- stored under the generation read before the await: a change meanwhile makes the next look-up miss and compute again
    maps.set(volume.id, { generation, ranges })
    return ranges
  }

  return {
    lookup (parent: number, name: string, cb: Callback) {
      if (parent === rootInode) {
        const kind = (Object.keys(dirOfKind) as VolumeKind[]).find(k => dirOfKind[k] === name)
        if (kind === undefined) { cb(ENOENT); return }
        cb(0, dirAttr(dirInodeOf[kind]))
        return
      }
      const kind = kindOfInode.get(parent)
      if (kind === undefined) { cb(ENOENT); return }
      const volume = pool.find(kind, name)
      if (volume === undefined || volume.hidden) { cb(ENOENT); return }
      cb(0, fileAttr(volume))
    },

    getattr (ino: number, _fh: number | null, cb: Callback) {
      try { cb(0, attrOf(ino)) } catch (err) { cb(toErrno(err, log)) }
    },

    // The kernel has checked who may (default_permissions). Directories' modes, owner and times are
    // fixed: a change is accepted and ignored, so that cp -a and rsync into the mount work.
    setattr (ino: number, _fh: number | null, toSet: number, mode: number, newUid: number, newGid: number, size: number, mtimeMs: number, cb: Callback) {
      if (ino < volumeInodeBase) {
        if ((toSet & setSize) !== 0) { cb(EISDIR); return }
        try { cb(0, attrOf(ino)) } catch (err) { cb(toErrno(err, log)) }
        return
      }
      let volume: Volume
      let commit = false
      try {
        volume = volumeOf(ino)
        // Native WRITEs before this SETATTR count first: a time it sets is not replaced by theirs later.
        fast?.collect(volume)
        if ((toSet & setMode) !== 0) { volume.chmod(mode); commit = true }
        if ((toSet & (setUid | setGid)) !== 0) {
          volume.chown((toSet & setUid) !== 0 ? newUid : null, (toSet & setGid) !== 0 ? newGid : null)
          commit = true
        }
        if ((toSet & setMtimeNow) !== 0) volume.touch(Date.now())
        else if ((toSet & setMtime) !== 0) volume.touch(mtimeMs)
      } catch (err) { cb(toErrno(err, log)); return }
      const work = async (): Promise<void> => {
        if ((toSet & setSize) !== 0) await resize(volume, size)
        if (commit) await pool.commit()
      }
      work().then(() => cb(0, fileAttr(volume)), fail(cb))
    },

    readdir (ino: number, _size: number, _offset: number, cb: Callback) {
      if (ino === rootInode) {
        cb(0, [
          { name: '.', ino: rootInode, mode: 0o040000 },
          { name: '..', ino: rootInode, mode: 0o040000 },
          ...(['disk', 'backup', 'clone'] as VolumeKind[]).map(kind => ({ name: dirOfKind[kind], ino: dirInodeOf[kind], mode: 0o040000 }))
        ])
        return
      }
      const kind = kindOfInode.get(ino)
      if (kind === undefined) { cb(ino >= volumeInodeBase ? -20 : ENOENT); return } // ENOTDIR
      const volumes = pool.visible(kind).sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
      cb(0, [
        { name: '.', ino, mode: 0o040000 },
        { name: '..', ino: rootInode, mode: 0o040000 },
        ...volumes.map(v => ({ name: v.name, ino: v.id + volumeInodeBase, mode: 0o100000 }))
      ])
    },

    open (ino: number, flags: number, resent: number, unique: number, cb: Callback) {
      if (ino < volumeInodeBase) { cb(EISDIR); return }
      const writable = (flags & 3) !== 0
      let fh: number | undefined
      try {
        const volume = volumeOf(ino)
        fh = resent === 1 ? adopt(volume, writable, unique) : undefined
        if (fh === undefined) {
          pool.opened(volume, writable)
          fh = register(volume, writable, unique)
        }
      } catch (err) { cb(toErrno(err, log)); return }
      cb(0, fh)
      answered(fh)
    },

    // The new disk belongs to the caller (FUSE 3's request carries who it is); its mode stays the
    // catalog's default (0600), as on the path-based transport.
    // A resent CREATE (after a takeover) that finds its name taken: the dead daemon made it (the kernel
    // creates under the directory's lock, after a lookup found no such name, and nothing else changed
    // names while no daemon ran), so it opens that volume, as the dead daemon's reply would have.
    create (parent: number, name: string, _mode: number, _flags: number, callerUid: number, callerGid: number, resent: number, unique: number, cb: Callback) {
      const kind = kindOfInode.get(parent)
      if (kind === undefined) { cb(EPERM); return }
      const work = async (): Promise<{ volume: Volume, adopted: number | undefined }> => {
        const found = resent === 1 ? pool.find(kind, name) : undefined
        const made = found !== undefined && !found.hidden ? found : undefined
        let adopted: number | undefined
        if (made !== undefined) {
          log(`create: ${dirOfKind[kind]}/${name} was made by the daemon before the takeover: the resent request opens it`)
          adopted = adopt(made, true, unique)
          if (adopted === undefined) pool.opened(made, true)
        }
        // The handle is counted by create itself, before its commit (see Pool.create's open option).
        const volume = made ?? await pool.create(kind, name, { open: true })
        if (volume.uid !== callerUid || volume.gid !== callerGid) {
          try {
            volume.chown(callerUid, callerGid)
            await pool.commit()
          } catch (err) {
            if (adopted !== undefined && handles.delete(adopted)) saveHandles()
            await pool.released(volume).catch(() => {})
            throw err
          }
        }
        return { volume, adopted }
      }
      work().then(({ volume, adopted }) => {
        log(`create: ${dirOfKind[kind]}/${name}`)
        const fh = adopted ?? register(volume, true, unique)
        cb(0, fileAttr(volume), fh)
        answered(fh)
      }, fail(cb))
    },

    read (_ino: number, fh: number | null, size: number, offset: number, cb: Callback) {
      let handle: Handle
      try { handle = handleOf(fh) } catch (err) { cb(toErrno(err, log)); return }
      const { view, whole } = readBuffers.take(size)
      // cb replies at once (the kernel has the bytes when it returns): only then is the buffer free.
      const volume = handle.volume
      volume.read(view, offset).then(count => {
        cb(0, view, count)
        readBuffers.give(whole)
        fast?.learn(volume, offset, count)
      }, fail(cb))
    },

    write (_ino: number, fh: number | null, data: Buffer, offset: number, cb: Callback) {
      let handle: Handle
      try { handle = handleOf(fh) } catch (err) { cb(toErrno(err, log)); return }
      const volume = handle.volume
      // Taken now: the reply detaches the data's buffer (its length reads 0 afterwards).
      const length = data.length
      volume.write(data, offset).then(() => {
        cb(0, length)
        // The blocks written may now be overwritten in the addon's threads (the fast path's WRITEs).
        fast?.learn(volume, offset, length)
      }, fail(cb))
    },

    flush (_ino: number, fh: number | null, cb: Callback) {
      // close(2): commit what this handle wrote, so a closed file survives a crash of the daemon.
      if (fh === null || handles.get(fh)?.writable !== true) { cb(0); return }
      pool.commit().then(() => cb(0), fail(cb))
    },

    release (_ino: number, fh: number | null, cb: Callback) {
      const handle = fh === null ? undefined : handles.get(fh)
      if (fh !== null && handles.delete(fh)) saveHandles()
      if (handle === undefined) { cb(0); return }
      pool.released(handle.volume).then(() => cb(0), err => { log(`release: ${(err as Error).message}`); cb(0) })
    },

    fsync (_ino: number, _fh: number | null, _datasync: number, cb: Callback) {
      pool.commit().then(() => cb(0), fail(cb))
    },

    // A resent UNLINK (after a takeover) of a name that is gone: the dead daemon removed it.
    unlink (parent: number, name: string, resent: number, cb: Callback) {
      const kind = kindOfInode.get(parent)
      if (kind === undefined) { cb(parent === rootInode ? EPERM : ENOENT); return }
      const volume = pool.find(kind, name)
      if (volume === undefined || volume.hidden) {
        if (resent === 1) log(`rm: ${dirOfKind[kind]}/${name} was removed by the daemon before the takeover: the resent request succeeds`)
        cb(resent === 1 ? 0 : ENOENT)
        return
      }
      pool.unlink(volume).then(() => { log(`rm: ${dirOfKind[kind]}/${name} (unlinked through the mount)`); cb(0) }, fail(cb))
    },

    // A resent RENAME (after a takeover) whose source is gone and target there: the dead daemon did it.
    rename (parent: number, name: string, newParent: number, newName: string, flags: number, resent: number, cb: Callback) {
      const from = kindOfInode.get(parent)
      const to = kindOfInode.get(newParent)
      if (from === undefined || to === undefined) { cb(from === undefined ? EPERM : EINVAL); return }
      // RENAME_EXCHANGE and RENAME_WHITEOUT are not offered; NOREPLACE is.
      if ((flags & ~renameNoReplace) !== 0) { cb(EINVAL); return }
      const volume = pool.find(from, name)
      if (volume === undefined || volume.hidden) {
        const target = pool.find(to, newName)
        const done = resent === 1 && target !== undefined && !target.hidden
        if (done) log(`rename: ${dirOfKind[from]}/${name} -> ${dirOfKind[to]}/${newName} was done by the daemon before the takeover: the resent request succeeds`)
        cb(done ? 0 : ENOENT)
        return
      }
      if ((flags & renameNoReplace) !== 0) {
        const existing = pool.find(to, newName)
        if (existing !== undefined && existing !== volume && !existing.hidden) { cb(EEXIST); return }
      }
      if (from !== to) { cb(volume.kind === 'backup' || to === 'backup' ? -30 : EXDEV); return } // EROFS
      pool.move(volume, to, newName).then(() => { log(`rename: ${dirOfKind[from]}/${name} -> ${dirOfKind[to]}/${newName}`); cb(0) }, fail(cb))
    },

    // The modes are volume-ops.ts's.
    fallocate (ino: number, _fh: number | null, mode: number, offset: number, length: number, cb: Callback) {
      let volume: Volume
      try { volume = volumeOf(ino) } catch (err) { cb(toErrno(err, log)); return }
      const done = fallocate(volume, mode, offset, length)
      if (done === null) { cb(ENOTSUP); return }
      done.then(() => cb(0), fail(cb))
    },

    statfs (_ino: number, cb: Callback) {
      pool.statfs().then(stat => cb(0, stat), fail(cb))
    },

    // SEEK_DATA/SEEK_HOLE from the allocation map: data is what holds data (own or the backup's);
    // holes and zeros written over a backup's data read as zeros and count as holes. Past the end:
    // ENXIO, as lseek(2) says; the end is a hole.
    lseek (ino: number, _fh: number | null, offset: number, whence: number, cb: Callback) {
      let volume: Volume
      try { volume = volumeOf(ino) } catch (err) { cb(toErrno(err, log)); return }
      if (whence !== seekData && whence !== seekHole) { cb(EINVAL); return }
      if (offset < 0 || offset >= volume.size) { cb(ENXIO); return }
      allocation(volume).then(ranges => {
        const size = volume.size
        if (offset >= size) { cb(ENXIO); return }
        for (const range of ranges) {
          if (range.start + range.length <= offset) continue
          if (range.data === (whence === seekData)) { cb(0, Math.max(range.start, offset)); return }
        }
        if (whence === seekHole) cb(0, size)
        else cb(ENXIO)
      }, fail(cb))
    },

    // Within the pool: whole blocks shared (O(1) per block, as vdiskfs cp), the rest copied; bounded
    // per request (the caller asks again for the rest). pool.copyRange (volume/range-copy.ts).
    copy_file_range (_ino: number, fhIn: number | null, offsetIn: number, _inoOut: number, fhOut: number, offsetOut: number, length: number, _flags: number, cb: Callback) {
      let source: Handle
      let target: Handle
      try {
        source = handleOf(fhIn)
        target = handleOf(fhOut)
      } catch (err) { cb(toErrno(err, log)); return }
      if (!target.writable) { cb(EBADF); return }
      pool.copyRange(source.volume, target.volume, offsetIn, offsetOut, length).then(copied => cb(0, copied.bytes), fail(cb))
    },

    getxattr (ino: number, name: string, _size: number, cb: Callback) {
      if (xattrs !== true) { cb(ENOSYS); return }
      if (ino < volumeInodeBase) { cb(ENODATA); return }
      let volume: Volume
      try { volume = volumeOf(ino) } catch (err) { cb(toErrno(err, log)); return }
      if (!name.startsWith(xattrPrefix)) { cb(ENODATA); return }
      xattrValue(pool, space, volume, name.slice(xattrPrefix.length)).then(value => {
        if (value === undefined) cb(ENODATA)
        else cb(0, Buffer.from(value))
      }, fail(cb))
    },

    listxattr (ino: number, _size: number, cb: Callback) {
      if (xattrs !== true) { cb(ENOSYS); return }
      if (ino < volumeInodeBase) { cb(0, Buffer.alloc(0)); return }
      try { volumeOf(ino) } catch (err) { cb(toErrno(err, log)); return }
      cb(0, Buffer.from(xattrNames.map(n => n + '\0').join('')))
    },

    setxattr (_ino: number, _name: string, _flags: number, cb: Callback) {
      if (xattrs !== true) { cb(ENOSYS); return }
      cb(toErrno(notPermitted('vdiskfs attributes are read-only'), log))
    },

    removexattr (_ino: number, _name: string, cb: Callback) {
      if (xattrs !== true) { cb(ENOSYS); return }
      cb(toErrno(readOnly('vdiskfs attributes'), log))
    }
  }

}

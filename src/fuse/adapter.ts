/**
 * The FUSE adapter: translates fuse-native callbacks into calls on the pool and its volumes, and typed
 * errors into errno. No business logic lives here (STYLE.md #2).
 *
 * Layout served:  /  disks/  backups/  clones/   each holding NAME files, one per volume.
 * Which operations each kind allows (backups are read-only, clones come from `vdiskfs clone`, libfuse's
 * `.fuse_hidden*` renames hide a volume) is the volume layer's policy: it throws typed errors, mapped
 * to errno here. open/create/release tell the volume layer how many handles each volume has.
 */
import fs from 'node:fs'
import { VolumeKind } from '../catalog/catalog'
import { VdiskError, notPermitted, readOnly } from '../errors'
import { Pool } from '../volume/pool'
import { Volume } from '../volume/volume'
import { EINVAL, EISDIR, ENODATA, ENOENT, ENOSYS, ENOTSUP, EPERM, toErrno } from './errno'
import { SpaceAccounting } from '../volume/space'
import { fallocate, xattrNames, xattrPrefix, xattrValue } from './volume-ops'

const kindOfDir: Record<string, VolumeKind> = { disks: 'disk', backups: 'backup', clones: 'clone' }

type Parsed =
  | { type: 'root' }
  | { type: 'dir', kind: VolumeKind }
  | { type: 'file', kind: VolumeKind, name: string }
  | { type: 'invalid' }

function parse (path: string): Parsed {
  if (path === '/') return { type: 'root' }
  const parts = path.split('/')
  const kind = kindOfDir[parts[1]]
  if (kind === undefined) return { type: 'invalid' }
  if (parts.length === 2) return { type: 'dir', kind }
  if (parts.length === 3 && parts[2] !== '') return { type: 'file', kind, name: parts[2] }
  return { type: 'invalid' }
}

interface Handle { volume: Volume, writable: boolean }

export interface AdapterOptions {
  pool: Pool
  space: SpaceAccounting
  log: (message: string) => void
  /**
   * Serve the user.vdiskfs.* xattrs (opt-in: `vdiskfs mount --xattrs`). Without them every xattr call
   * answers ENOSYS, and the kernel stops asking for security.capability before every write (FUSE clears
   * SB_NOSEC), a round trip each: 4k random writes went from about 5,300 to 7,000 IOPS here. `vdiskfs
   * info` gives the same facts.
   */
  xattrs?: boolean
}

export function createOperations ({ pool, space, log, xattrs }: AdapterOptions): Record<string, (...args: any[]) => void> {
  const handles = new Map<number, Handle>()
  let nextHandle = 1
  const uid = process.getuid?.() ?? 0
  const gid = process.getgid?.() ?? 0
  const mountedMs = Date.now()

  const fail = (cb: (code: number) => void) => (err: unknown) => cb(toErrno(err, log))

  function dirStat (writable: boolean) {
    return { mode: 0o040000 | (writable ? 0o755 : 0o555), uid, gid, size: 4096, nlink: 2, mtime: mountedMs, atime: mountedMs, ctime: mountedMs, blocks: 8, blksize: 4096 }
  }

  function fileStat (volume: Volume) {
    return {
      mode: 0o100000 | volume.mode, uid: volume.uid, gid: volume.gid, size: volume.size, nlink: 1, blksize: pool.blockBytes,
      blocks: Math.ceil(volume.storedBytes / 512),
      mtime: volume.mtimeMs, atime: volume.mtimeMs, ctime: volume.mtimeMs
    }
  }

  function lookup (path: string): Volume {
    const parsed = parse(path)
    if (parsed.type !== 'file') throw new VdiskError('NOT_FOUND', `${path} does not exist`)
    return pool.get(parsed.kind, parsed.name)
  }

  function open (path: string, flags: number, cb: (code: number, fh?: number) => void): void {
    const parsed = parse(path)
    if (parsed.type !== 'file') { cb(parsed.type === 'invalid' ? ENOENT : EISDIR); return }
    const volume = pool.find(parsed.kind, parsed.name)
    if (volume === undefined) { cb(ENOENT); return }
    const writable = (flags & 3) !== fs.constants.O_RDONLY
    try { pool.opened(volume, writable) } catch (err) { cb(toErrno(err, log)); return }
    const fh = nextHandle++
    handles.set(fh, { volume, writable })
    cb(0, fh)
  }

  function handleVolume (path: string, fh: number): Volume {
    return handles.get(fh)?.volume ?? lookup(path)
  }

  /** truncate(2) and ftruncate(2); a change of size is an event for the log. */
  async function resize (path: string, volume: Volume, size: number): Promise<void> {
    const before = volume.size
    await volume.truncate(size)
    if (size !== before) log(`resize: ${path.slice(1)} from ${before} to ${size} bytes`)
  }

  return {
    init (cb: (code: number) => void) { cb(0) },

    statfs (_path: string, cb: (code: number, stat?: object) => void) {
      pool.statfs().then(stat => cb(0, {
        bsize: stat.bsize, frsize: stat.bsize, blocks: stat.blocks, bfree: stat.bfree, bavail: stat.bavail,
        files: stat.files, ffree: stat.ffree, favail: stat.ffree, fsid: 0, flag: 0, namemax: 255
      }), fail(cb))
    },

    getattr (path: string, cb: (code: number, stat?: object) => void) {
      const parsed = parse(path)
      if (parsed.type === 'root') { cb(0, dirStat(false)); return }
      if (parsed.type === 'dir') { cb(0, dirStat(parsed.kind === 'disk')); return }
      if (parsed.type === 'invalid') { cb(ENOENT); return }
      const volume = pool.find(parsed.kind, parsed.name)
      if (volume === undefined) { cb(ENOENT); return }
      cb(0, fileStat(volume))
    },

    fgetattr (path: string, fh: number, cb: (code: number, stat?: object) => void) {
      const handle = handles.get(fh)
      if (handle !== undefined) { cb(0, fileStat(handle.volume)); return }
      this.getattr(path, cb)
    },

    readdir (path: string, cb: (code: number, names?: string[]) => void) {
      const parsed = parse(path)
      if (parsed.type === 'root') { cb(0, ['.', '..', 'disks', 'backups', 'clones']); return }
      if (parsed.type !== 'dir') { cb(ENOENT); return }
      const names = pool.visible(parsed.kind).map(v => v.name).sort()
      cb(0, ['.', '..', ...names])
    },

    open (path: string, flags: number, cb: (code: number, fh?: number) => void) { open(path, flags, cb) },

    create (path: string, _mode: number, cb: (code: number, fh?: number) => void) {
      const parsed = parse(path)
      if (parsed.type !== 'file') { cb(EPERM); return }
      // The handle is counted by create itself, before its commit: an rm during that commit sees the
      // volume in use instead of removing it under the handle about to be returned.
      pool.create(parsed.kind, parsed.name, { open: true }).then(
        volume => { const fh = nextHandle++; handles.set(fh, { volume, writable: true }); log(`create: ${path.slice(1)}`); cb(0, fh) },
        fail(cb))
    },

    release (_path: string, fh: number, cb: (code: number) => void) {
      const handle = handles.get(fh)
      handles.delete(fh)
      if (handle === undefined) { cb(0); return }
      pool.released(handle.volume).then(() => cb(0), err => { log(`release: ${(err as Error).message}`); cb(0) })
    },

    read (path: string, fh: number, buf: Buffer, len: number, pos: number, cb: (bytes: number) => void) {
      let volume: Volume
      try { volume = handleVolume(path, fh) } catch (err) { cb(toErrno(err, log)); return }
      volume.read(len === buf.length ? buf : buf.subarray(0, len), pos).then(cb, fail(cb))
    },

    write (path: string, fh: number, buf: Buffer, len: number, pos: number, cb: (bytes: number) => void) {
      let volume: Volume
      try { volume = handleVolume(path, fh) } catch (err) { cb(toErrno(err, log)); return }
      volume.write(len === buf.length ? buf : buf.subarray(0, len), pos).then(() => cb(len), fail(cb))
    },

    truncate (path: string, size: number, cb: (code: number) => void) {
      let volume: Volume
      try { volume = lookup(path) } catch (err) { cb(toErrno(err, log)); return }
      resize(path, volume, size).then(() => cb(0), fail(cb))
    },

    ftruncate (path: string, fh: number, size: number, cb: (code: number) => void) {
      let volume: Volume
      try { volume = handleVolume(path, fh) } catch (err) { cb(toErrno(err, log)); return }
      resize(path, volume, size).then(() => cb(0), fail(cb))
    },

    // fallocate(2), wired by our fuse-native patch; the modes are volume-ops.ts's.
    fallocate (path: string, mode: number, offset: number, length: number, fh: number, cb: (code: number) => void) {
      let volume: Volume
      try { volume = handleVolume(path, fh) } catch (err) { cb(toErrno(err, log)); return }
      const done = fallocate(volume, mode, offset, length)
      if (done === null) { cb(ENOTSUP); return }
      done.then(() => cb(0), fail(cb))
    },

    fsync (_path: string, _datasync: boolean, _fh: number, cb: (code: number) => void) {
      pool.commit().then(() => cb(0), fail(cb))
    },

    flush (_path: string, fh: number, cb: (code: number) => void) {
      // close(2): commit what this handle wrote, so a closed file survives a crash of the daemon.
      if (handles.get(fh)?.writable !== true) { cb(0); return }
      pool.commit().then(() => cb(0), fail(cb))
    },

    unlink (path: string, cb: (code: number) => void) {
      const parsed = parse(path)
      if (parsed.type !== 'file') { cb(EPERM); return }
      const volume = pool.find(parsed.kind, parsed.name)
      if (volume === undefined) { cb(ENOENT); return }
      pool.unlink(volume).then(() => { log(`rm: ${path.slice(1)} (unlinked through the mount)`); cb(0) }, fail(cb))
    },

    rename (source: string, target: string, cb: (code: number) => void) {
      const from = parse(source)
      const to = parse(target)
      if (from.type !== 'file' || to.type !== 'file') { cb(from.type === 'file' ? EINVAL : EPERM); return }
      const volume = pool.find(from.kind, from.name)
      if (volume === undefined) { cb(ENOENT); return }
      pool.move(volume, to.kind, to.name).then(() => { log(`rename: ${source.slice(1)} -> ${target.slice(1)}`); cb(0) }, fail(cb))
    },

    utimens (path: string, _atime: number, mtime: number, cb: (code: number) => void) {
      // The directories' times are fixed, as their modes: a change is accepted and ignored, so that
      // rsync -a into disks/ (it sets the directory's times last) does not fail.
      const type = parse(path).type
      if (type !== 'file') { cb(type === 'invalid' ? ENOENT : 0); return }
      try { lookup(path).touch(mtime) } catch (err) { cb(toErrno(err, log)); return }
      cb(0)
    },

    // The kernel has checked who may chmod/chown (default_permissions); the change is committed. The
    // directories' modes and owner are fixed: a change to them is accepted and ignored, as before, so
    // that `cp -a` and rsync into the mount keep working.
    chmod (path: string, mode: number, cb: (code: number) => void) {
      const type = parse(path).type
      if (type !== 'file') { cb(type === 'invalid' ? ENOENT : 0); return }
      try { lookup(path).chmod(mode) } catch (err) { cb(toErrno(err, log)); return }
      pool.commit().then(() => cb(0), fail(cb))
    },

    chown (path: string, newUid: number, newGid: number, cb: (code: number) => void) {
      const type = parse(path).type
      if (type !== 'file') { cb(type === 'invalid' ? ENOENT : 0); return }
      // -1 (as an unsigned 32-bit value) means "leave it as it is".
      const keep = (id: number) => id === 0xffffffff || id === -1 ? null : id
      try { lookup(path).chown(keep(newUid), keep(newGid)) } catch (err) { cb(toErrno(err, log)); return }
      pool.commit().then(() => cb(0), fail(cb))
    },

    mkdir (_path: string, _mode: number, cb: (code: number) => void) { cb(EPERM) },
    rmdir (_path: string, cb: (code: number) => void) { cb(EPERM) },
    mknod (_path: string, _mode: number, _dev: number, cb: (code: number) => void) { cb(EPERM) },
    link (_source: string, _target: string, cb: (code: number) => void) { cb(EPERM) },
    symlink (_source: string, _target: string, cb: (code: number) => void) { cb(EPERM) },

    getxattr (path: string, name: string, _position: number, cb: (code: number, value?: Buffer) => void) {
      if (xattrs !== true) { cb(ENOSYS); return }
      const parsed = parse(path)
      if (parsed.type === 'root' || parsed.type === 'dir') { cb(ENODATA); return }
      let volume: Volume
      try { volume = lookup(path) } catch (err) { cb(toErrno(err, log)); return }
      if (!name.startsWith(xattrPrefix)) { cb(ENODATA); return }
      const value = xattrValue(pool, space, volume, name.slice(xattrPrefix.length))
      if (value === undefined) { cb(ENODATA); return }
      cb(0, Buffer.from(value))
    },

    listxattr (path: string, cb: (code: number, names?: string[]) => void) {
      if (xattrs !== true) { cb(ENOSYS); return }
      const parsed = parse(path)
      if (parsed.type !== 'file') { cb(0, []); return }
      if (pool.find(parsed.kind, parsed.name) === undefined) { cb(ENOENT); return }
      cb(0, xattrNames)
    },

    // Without --xattrs the filesystem has none, and says so (EOPNOTSUPP), which cp -a and rsync -X skip quietly.
    setxattr (_path: string, _name: string, _value: Buffer, _position: number, _flags: number, cb: (code: number) => void) {
      if (xattrs !== true) { cb(ENOSYS); return }
      cb(toErrno(notPermitted('vdiskfs attributes are read-only'), log))
    },

    removexattr (_path: string, _name: string, cb: (code: number) => void) {
      if (xattrs !== true) { cb(ENOSYS); return }
      cb(toErrno(readOnly('vdiskfs attributes'), log))
    }
  }

}

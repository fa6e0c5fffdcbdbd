/**
 * Target D of the benchmark: the smallest fuse-native filesystem that serves one image file from
 * memory, mounted with the same options as vdiskfs (src/fuse/mount-options.ts). It measures the
 * ceiling of FUSE through Node on this machine: anything vdiskfs loses against it is its own cost.
 * Usage: node dist/bench/memfs.js MNT SIZE_BYTES   (prints "ready", unmounts on SIGTERM)
 */
import { VdiskFuse } from '../src/fuse/mount-options'

const [mountpoint, sizeText] = process.argv.slice(2)
let size = Number(sizeText)
const chunkBytes = 64 * 1024
const chunks = new Map<number, Buffer>()
const now = Date.now()
const ENOENT = -2

function io (buf: Buffer, len: number, pos: number, write: boolean): number {
  const end = write ? pos + len : Math.min(pos + len, size)
  if (write && end > size) size = end
  let done = 0
  while (pos + done < end) {
    const at = pos + done
    const index = Math.floor(at / chunkBytes)
    const offset = at % chunkBytes
    const count = Math.min(chunkBytes - offset, end - at)
    let chunk = chunks.get(index)
    if (write) {
      if (chunk === undefined) chunks.set(index, chunk = Buffer.alloc(chunkBytes))
      buf.copy(chunk, offset, done, done + count)
    } else if (chunk === undefined) buf.fill(0, done, done + count)
    else chunk.copy(buf, done, offset, offset + count)
    done += count
  }
  return done
}

const file = () => ({ mode: 0o100644, size, uid: 0, gid: 0, nlink: 1, mtime: now, atime: now, ctime: now, blksize: chunkBytes, blocks: chunks.size * 128 })
const ops = {
  getattr (path: string, cb: (code: number, stat?: object) => void) {
    if (path === '/') cb(0, { mode: 0o040755, size: 4096, uid: 0, gid: 0, nlink: 2, mtime: now, atime: now, ctime: now })
    else if (path === '/disk.img') cb(0, file())
    else cb(ENOENT)
  },
  readdir (_path: string, cb: (code: number, names: string[]) => void) { cb(0, ['.', '..', 'disk.img']) },
  open (_path: string, _flags: number, cb: (code: number, fh: number) => void) { cb(0, 1) },
  release (_path: string, _fh: number, cb: (code: number) => void) { cb(0) },
  read (_path: string, _fh: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) { cb(io(buf, len, pos, false)) },
  write (_path: string, _fh: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void) { cb(io(buf, len, pos, true)) },
  truncate (_path: string, s: number, cb: (code: number) => void) { size = s; cb(0) },
  ftruncate (_path: string, _fh: number, s: number, cb: (code: number) => void) { size = s; cb(0) },
  fsync (_path: string, _d: boolean, _fh: number, cb: (code: number) => void) { cb(0) },
  flush (_path: string, _fh: number, cb: (code: number) => void) { cb(0) }
}

const fuse = new VdiskFuse(mountpoint, ops, { timeout: false, allowOther: true, fsname: 'benchmemfs', subtype: 'benchmemfs' })
fuse.mount(err => {
  if (err !== null && err !== undefined) { process.stderr.write(`memfs: ${err.message}\n`); process.exit(1) }
  process.stdout.write('ready\n')
})
process.on('SIGTERM', () => fuse.unmount(() => process.exit(0)))

/**
 * Target D of the benchmark on the FUSE 3 transport: the smallest filesystem that serves one image file
 * from memory through our own addon (src/fuse/fuse3-transport.ts) with vdiskfs's mount options. It is the
 * ceiling of FUSE through Node on this machine: anything vdiskfs loses against it is its own cost.
 * Usage: node dist/bench/memfs.js MNT SIZE_BYTES   (prints "ready", unmounts on SIGTERM)
 */
import { Fuse3Transport } from '../src/fuse/fuse3-transport'

const [mountpoint, sizeText] = process.argv.slice(2)
let size = Number(sizeText)
const chunkBytes = 64 * 1024
const chunks = new Map<number, Buffer>()
const spare = Buffer.allocUnsafe(4 << 20)
const now = Date.now()
const ENOENT = -2
const rootIno = 1
const fileIno = 2
type Callback = (code: number, ...results: any[]) => void

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

const dir = () => ({ ino: rootIno, mode: 0o040755, nlink: 2, uid: 0, gid: 0, size: 4096, blocks: 0, blksize: 4096, mtimeMs: now })
const file = () => ({ ino: fileIno, mode: 0o100644, nlink: 1, uid: 0, gid: 0, size, blocks: chunks.size * 128, blksize: chunkBytes, mtimeMs: now })
const ops = {
  lookup (parent: number, name: string, cb: Callback) { if (parent === rootIno && name === 'disk.img') cb(0, file()); else cb(ENOENT) },
  getattr (ino: number, _fh: number | null, cb: Callback) { cb(0, ino === rootIno ? dir() : file()) },
  setattr (ino: number, _fh: number | null, toSet: number, _mode: number, _uid: number, _gid: number, newSize: number, _mtimeMs: number, cb: Callback) {
    if (ino === fileIno && (toSet & 8) !== 0) size = newSize
    cb(0, ino === rootIno ? dir() : file())
  },
  readdir (_ino: number, _size: number, _offset: number, cb: Callback) {
    cb(0, [{ name: '.', ino: rootIno, mode: 0o040000 }, { name: '..', ino: rootIno, mode: 0o040000 }, { name: 'disk.img', ino: fileIno, mode: 0o100000 }])
  },
  open (_ino: number, _flags: number, _resent: number, _unique: number, cb: Callback) { cb(0, 1) },
  release (_ino: number, _fh: number | null, cb: Callback) { cb(0) },
  flush (_ino: number, _fh: number | null, cb: Callback) { cb(0) },
  fsync (_ino: number, _fh: number | null, _datasync: number, cb: Callback) { cb(0) },
  // One buffer serves every read: the reply copies it into the kernel before cb returns.
  read (_ino: number, _fh: number | null, len: number, pos: number, cb: Callback) {
    const buffer = len <= spare.length ? spare.subarray(0, len) : Buffer.allocUnsafe(len)
    cb(0, buffer, io(buffer, len, pos, false))
  },
  write (_ino: number, _fh: number | null, data: Buffer, pos: number, cb: Callback) { cb(0, io(data, data.length, pos, true)) }
}

const fuse = new Fuse3Transport(mountpoint, ops, { fsname: 'benchmemfs', subtype: 'benchmemfs', defaultPermissions: true, allowOther: true, log: m => process.stderr.write(`memfs: ${m}\n`) })
fuse.mount(err => {
  if (err !== null) { process.stderr.write(`memfs: ${err.message}\n`); process.exit(1) }
  process.stdout.write('ready\n')
})
process.on('SIGTERM', () => fuse.unmount(() => process.exit(0)))

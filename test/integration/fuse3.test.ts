/**
 * Our own FUSE 3 transport: the mount served by native/fuse3 over libfuse 3's low-level API. dd and cmp; ext4 on a loop device; a 1 MiB write
 * arriving as one request (the addon's counters in `vdiskfs status --json`); SEEK_DATA/SEEK_HOLE
 * (qemu-img map in the mount equals qemu-img map of the same bytes copied to ext4; cp reads only the
 * data of a sparse image); copy_file_range sharing whole blocks (cp in the mount uses it); backup, clone, rm and restore through bin/vdiskfs; the
 * caller owning the disk it creates; unmount by vdiskfs umount and SIGTERM.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { isMounted, run, sha256, vdiskfs, withMount } from '../helpers/mount'

const MiB = 1024 * 1024

interface Fuse3Status { maxWrite: number, maxWriteSeen: number, writeSizes: number[], readBytes: number, protoMinor: number, want: number }

async function fuse3Status (mnt: string): Promise<Fuse3Status> {
  const result = await vdiskfs('status', mnt, '--json')
  if (result.code !== 0) throw new Error(result.stderr)
  const status = JSON.parse(result.stdout) as { daemon: { fuse3: Fuse3Status } }
  return status.daemon.fuse3
}

/** Whether the data ranges of `map` (qemu-img map's JSON) hold the same bytes in both files. */
function sameRanges (a: string, b: string, map: Array<{ start: number, length: number, data: boolean }>): boolean {
  const fa = fs.openSync(a, 'r')
  const fb = fs.openSync(b, 'r')
  try {
    for (const range of map.filter(r => r.data)) {
      const ba = Buffer.alloc(range.length)
      const bb = Buffer.alloc(range.length)
      fs.readSync(fa, ba, 0, range.length, range.start)
      fs.readSync(fb, bb, 0, range.length, range.start)
      if (!ba.equals(bb)) return false
    }
    return true
  } finally { fs.closeSync(fa); fs.closeSync(fb) }
}

/** Writes `ranges` ([offset, length] in bytes) of random data into `file`, sized `size`. */
function writeRanges (file: string, size: number, ranges: Array<[number, number]>): void {
  const fd = fs.openSync(file, 'r+')
  try {
    fs.ftruncateSync(fd, size)
    for (const [offset, length] of ranges) fs.writeSync(fd, crypto.randomBytes(length), 0, length, offset)
    fs.fsyncSync(fd)
  } finally { fs.closeSync(fd) }
}

test.serial('dd in 1 MiB direct writes arrives as 1 MiB requests; cmp equal; status shows what INIT negotiated', async t => {
  const m = await withMount(t)
  const source = path.join(m.dir, 'source.raw')
  await run('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', 'count=32', 'status=none'])
  const before = await fuse3Status(m.mnt)
  t.is(before.maxWrite, MiB)
  t.true(before.protoMinor >= 31, `protocol 7.${before.protoMinor}`)
  await run('dd', [`if=${source}`, `of=${m.image('disks', 'dd.img')}`, 'bs=1M', 'oflag=direct', 'status=none'])
  const after = await fuse3Status(m.mnt)
  // Index 20 counts requests of (512 KiB, 1 MiB]: each 1 MiB write is one request.
  t.is(after.writeSizes[20] - before.writeSizes[20], 32)
  t.is(after.maxWriteSeen, MiB)
  await run('cmp', [source, m.image('disks', 'dd.img')])
  // Buffered reads and writes at odd offsets and sizes.
  await run('dd', [`if=${source}`, `of=${m.image('disks', 'dd.img')}`, 'bs=7777', 'skip=3', 'seek=5', 'count=100', 'conv=notrunc', 'status=none'])
  const expected = fs.readFileSync(source)
  expected.set(fs.readFileSync(source).subarray(3 * 7777, 103 * 7777), 5 * 7777)
  t.true(fs.readFileSync(m.image('disks', 'dd.img')).equals(expected))
  // O_TRUNC of an existing image truncates it (the kernel sends its own SETATTR).
  fs.writeFileSync(m.image('disks', 'dd.img'), 'short')
  t.is(fs.statSync(m.image('disks', 'dd.img')).size, 5)
  t.is(fs.readFileSync(m.image('disks', 'dd.img'), 'utf8'), 'short')
  t.regex(fs.readFileSync('/proc/self/mountinfo', 'utf8'), new RegExp(`${m.mnt} .* fuse\\.vdiskfs `))
})

test.serial('mkfs.ext4, loop mount, files, umount: e2fsck clean, and the files survive a remount', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'fs.img')
  await run('truncate', ['-s', '512M', disk])
  await run('mkfs.ext4', ['-q', '-F', disk])
  const lm = await m.loopMount(disk)
  const sums: Record<string, string> = {}
  for (let i = 0; i < 10; i++) {
    const data = crypto.randomBytes(5000 + i * 300000)
    fs.writeFileSync(path.join(lm, `f${i}`), data)
    sums[`f${i}`] = crypto.createHash('sha256').update(data).digest('hex')
  }
  await run('cp', ['-r', '/usr/share/doc/util-linux', lm])
  await m.loopUmount(lm)
  await run('e2fsck', ['-fn', disk])
  await m.umount()
  await m.mount()
  const again = await m.loopMount(disk, 'loop,ro')
  for (const [name, sum] of Object.entries(sums)) t.is(crypto.createHash('sha256').update(fs.readFileSync(path.join(again, name))).digest('hex'), sum, name)
  await run('diff', ['-r', '/usr/share/doc/util-linux', path.join(again, 'util-linux')])
  await m.loopUmount(again)
  await run('e2fsck', ['-fn', disk])
})

test.serial('SEEK_DATA/SEEK_HOLE: qemu-img map in the mount equals qemu-img map of the same image copied to ext4', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'sparse.img')
  fs.writeFileSync(disk, '')
  // Whole 64 KiB blocks (the pool's block size): ext4 keeps exactly these ranges too.
  writeRanges(disk, 3 * 1024 * MiB + 123 * 65536, [[0, 65536], [5 * MiB, 3 * MiB], [100 * MiB + 65536, 65536], [1024 * MiB, 2 * MiB], [3 * 1024 * MiB, 65536 * 7]])
  const copy = path.join(os.tmpdir(), `vdiskfs-fuse3-${process.pid}.img`)
  t.teardown(() => fs.rmSync(copy, { force: true }))
  t.is((await run('df', ['--output=fstype', os.tmpdir()])).split('\n')[1].trim(), 'ext4')
  await run('cp', ['--sparse=always', disk, copy])
  const inMount = JSON.parse(await run('qemu-img', ['map', '--output=json', '-f', 'raw', disk]))
  const onExt4 = JSON.parse(await run('qemu-img', ['map', '--output=json', '-f', 'raw', copy]))
  t.deepEqual(inMount, onExt4)
  t.is(inMount.filter((r: { data: boolean }) => r.data).length, 5)
  t.true(sameRanges(disk, copy, inMount))
  // A clone: the backup's data is data, what the clone wrote over it too, a zero it wrote a hole.
  t.is((await vdiskfs('backup', disk, 'sb')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'sb.img'), 'sc')).code, 0)
  const clone = m.image('clones', 'sc.img')
  // Direct I/O, so that each write reaches the daemon as whole blocks (a block is a hole again only
  // when one request writes all of it as zeros).
  await run('dd', ['if=/dev/urandom', `of=${clone}`, 'bs=64k', 'count=1', `seek=${50 * 16}`, 'oflag=direct', 'conv=notrunc', 'status=none'])
  await run('dd', ['if=/dev/zero', `of=${clone}`, 'bs=1M', 'count=2', 'seek=1024', 'oflag=direct', 'conv=notrunc', 'status=none'])
  const cloneCopy = copy + '.clone'
  t.teardown(() => fs.rmSync(cloneCopy, { force: true }))
  await run('cp', ['--sparse=always', clone, cloneCopy])
  const cloneMap = JSON.parse(await run('qemu-img', ['map', '--output=json', '-f', 'raw', clone]))
  t.deepEqual(cloneMap, JSON.parse(await run('qemu-img', ['map', '--output=json', '-f', 'raw', cloneCopy])))
  t.is(cloneMap.filter((r: { data: boolean }) => r.data).length, 5)
  t.true(sameRanges(clone, cloneCopy, cloneMap))
  // lseek(2) itself, past the end and at it: ENXIO.
  const probe = await run('python3', ['-c', `
import os, errno
fd = os.open(${JSON.stringify(disk)}, os.O_RDONLY)
size = os.fstat(fd).st_size
out = [os.lseek(fd, 0, os.SEEK_HOLE), os.lseek(fd, 65536, os.SEEK_DATA), os.lseek(fd, 8 * 1048576, os.SEEK_HOLE), os.lseek(fd, size - 1, os.SEEK_HOLE), os.lseek(fd, 1024 * 1048576 + 1, os.SEEK_HOLE)]
for whence in (os.SEEK_DATA, os.SEEK_HOLE):
    try:
        os.lseek(fd, size, whence); out.append('no error')
    except OSError as e:
        out.append(errno.errorcode[e.errno])
try:
    os.lseek(fd, 3 * 1024 * 1048576 + 7 * 65536, os.SEEK_DATA); out.append('no error')
except OSError as e:
    out.append(errno.errorcode[e.errno])
print(out)`])
  t.is(probe.trim(), `[65536, ${5 * MiB}, ${8 * MiB}, ${3 * 1024 * MiB + 123 * 65536 - 1}, ${1026 * MiB}, 'ENXIO', 'ENXIO', 'ENXIO']`)
})

test.serial('cp of a sparse 1 GiB image with one data range out of the mount reads only the data', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'big.img')
  fs.writeFileSync(disk, '')
  writeRanges(disk, 1024 * MiB, [[700 * MiB, MiB]])
  const before = await fuse3Status(m.mnt)
  const target = path.join(m.dir, 'out.img')
  const started = Date.now()
  await run('cp', [disk, target])
  const elapsedMs = Date.now() - started
  const after = await fuse3Status(m.mnt)
  t.true(after.readBytes - before.readBytes <= 4 * MiB, `read ${after.readBytes - before.readBytes} bytes`)
  t.true(elapsedMs < 5000, `${elapsedMs} ms`)
  t.is(fs.statSync(target).size, 1024 * MiB)
  t.true(fs.statSync(target).blocks * 512 <= 2 * MiB)
  t.true(sameRanges(disk, target, [{ start: 700 * MiB, length: MiB, data: true }]))
  t.true(sameRanges(target, '/dev/zero', [{ start: 0, length: MiB, data: true }]))
})

interface SpaceReport { storedBytes: number, volumes: Array<{ kind: string, name: string, uniqueBytes: number }> }

async function space (mnt: string): Promise<SpaceReport> {
  const result = await vdiskfs('du', mnt, '--json')
  if (result.code !== 0) throw new Error(result.stderr)
  return JSON.parse(result.stdout) as SpaceReport
}

test.serial('copy_file_range inside the mount shares whole blocks (O(1), nothing stored twice) and copies the rest; cp uses it', async t => {
  const m = await withMount(t)
  const source = m.image('disks', 'from.img')
  fs.writeFileSync(source, '')
  writeRanges(source, 32 * MiB, [[0, 32 * MiB]])
  const before = await space(m.mnt)
  const copy = (to: string, from: number, at: number, length: number): string => `
import os
src = os.open(${JSON.stringify(source)}, os.O_RDONLY)
dst = os.open(${JSON.stringify(to)}, os.O_RDWR | os.O_CREAT, 0o600)
total = 0
while total < ${length}:
    n = os.copy_file_range(src, dst, ${length} - total, ${from} + total, ${at} + total)
    if n == 0: break
    total += n
os.fsync(dst)
print(total)`
  t.is((await run('python3', ['-c', copy(m.image('disks', 'to.img'), 0, 0, 32 * MiB)])).trim(), String(32 * MiB))
  t.is(sha256(m.image('disks', 'to.img')), sha256(source))
  const after = await space(m.mnt)
  const unique = after.volumes.find(v => v.name === 'to.img')?.uniqueBytes
  t.is(unique, 0, 'the copy holds no block of its own: every one is shared with from.img')
  t.true(after.storedBytes - before.storedBytes < 4 * MiB, `the pool grew by ${after.storedBytes - before.storedBytes} bytes for a 32 MiB copy`)
  // At one offset within a block on both sides: the middle is shared, the ends copied. At different
  // offsets: copied. Both give the same bytes as dd would.
  t.is((await run('python3', ['-c', copy(m.image('disks', 'mid.img'), 1000, 1000, 10 * MiB)])).trim(), String(10 * MiB))
  t.is((await run('python3', ['-c', copy(m.image('disks', 'odd.img'), 1000, 5000, 3 * MiB)])).trim(), String(3 * MiB))
  const expect = (from: number, at: number, length: number): Buffer => {
    const data = fs.readFileSync(source).subarray(from, from + length)
    return Buffer.concat([Buffer.alloc(at), data])
  }
  t.true(fs.readFileSync(m.image('disks', 'mid.img')).equals(expect(1000, 1000, 10 * MiB)))
  t.true(fs.readFileSync(m.image('disks', 'odd.img')).equals(expect(1000, 5000, 3 * MiB)))
  // Writes after the copy stay on their side.
  writeRanges(source, 32 * MiB, [[MiB, MiB]])
  t.not(sha256(source), sha256(m.image('disks', 'to.img')))
  t.true(fs.readFileSync(m.image('disks', 'to.img')).subarray(2 * MiB).equals(fs.readFileSync(source).subarray(2 * MiB)))
  // cp(1) inside the mount goes through copy_file_range: the copy is shared too.
  const beforeCp = await space(m.mnt)
  await run('cp', [source, m.image('disks', 'cp.img')])
  t.is(sha256(m.image('disks', 'cp.img')), sha256(source))
  const afterCp = await space(m.mnt)
  t.true(afterCp.storedBytes - beforeCp.storedBytes < 4 * MiB, `cp grew the pool by ${afterCp.storedBytes - beforeCp.storedBytes} bytes`)
  // Through a seal pass, gc and a remount every copy reads the same.
  const sums = ['to.img', 'mid.img', 'odd.img', 'cp.img', 'from.img'].map(name => sha256(m.image('disks', name)))
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  t.is((await vdiskfs('gc', m.mnt)).code, 0)
  await m.umount()
  await m.mount()
  t.deepEqual(['to.img', 'mid.img', 'odd.img', 'cp.img', 'from.img'].map(name => sha256(m.image('disks', name))), sums)
})

test.serial('backup, clone, rm, restore and rename through bin/vdiskfs and the mount', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'vm.img')
  fs.writeFileSync(disk, '')
  writeRanges(disk, 64 * MiB, [[0, 4 * MiB], [32 * MiB, MiB]])
  const original = sha256(disk)
  t.is((await vdiskfs('backup', disk, 'b1')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'b1.img'), 'c1')).code, 0)
  t.is(sha256(m.image('backups', 'b1.img')), original)
  t.is(sha256(m.image('clones', 'c1.img')), original)
  await run('dd', ['if=/dev/urandom', `of=${m.image('clones', 'c1.img')}`, 'bs=64k', 'count=3', 'seek=7', 'conv=notrunc', 'status=none'])
  t.not(sha256(m.image('clones', 'c1.img')), original)
  t.is(sha256(m.image('backups', 'b1.img')), original)
  writeRanges(disk, 64 * MiB, [[MiB, MiB]])
  t.not(sha256(disk), original)
  t.is((await vdiskfs('restore', m.image('backups', 'b1.img'), disk)).code, 0)
  t.is(sha256(disk), original)
  // Backups are read-only through the mount, and inodes follow volumes across renames.
  t.throws(() => fs.writeFileSync(m.image('backups', 'b1.img'), 'x'), { code: 'EROFS' })
  t.throws(() => fs.mkdirSync(m.image('disks', 'dir')), { code: 'EPERM' })
  const ino = fs.statSync(disk).ino
  fs.renameSync(disk, m.image('disks', 'vm2.img'))
  t.is(fs.statSync(m.image('disks', 'vm2.img')).ino, ino)
  t.throws(() => fs.renameSync(m.image('disks', 'vm2.img'), m.image('clones', 'vm2.img')), { code: 'EXDEV' })
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')), ['vm2.img'])
  t.is((await vdiskfs('rm', m.image('clones', 'c1.img'))).code, 0)
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'clones')), [])
  // Unlinked while open: the holder keeps reading it.
  const fd = fs.openSync(m.image('disks', 'vm2.img'), 'r')
  fs.unlinkSync(m.image('disks', 'vm2.img'))
  t.false(fs.existsSync(m.image('disks', 'vm2.img')))
  const head = Buffer.alloc(65536)
  fs.readSync(fd, head, 0, head.length, 0)
  t.is(fs.fstatSync(fd).nlink, 0)
  fs.closeSync(fd)
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')), [])
})

test.serial('the kernel\'s caches follow what the CLI changes: restore --force under an open file, rename, rm, promote', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'vm.img')
  fs.writeFileSync(disk, '')
  const a = crypto.randomBytes(4 * MiB)
  const b = crypto.randomBytes(4 * MiB)
  fs.writeFileSync(disk, a)
  t.is((await vdiskfs('backup', disk, 'b1')).code, 0)
  fs.writeFileSync(disk, b)
  // An open file whose pages the kernel holds (b), restored from b1 (a) behind its back: the next
  // read through the same descriptor sees a.
  const fd = fs.openSync(disk, 'r')
  try {
    const seen = Buffer.alloc(4 * MiB)
    fs.readSync(fd, seen, 0, seen.length, 0)
    t.true(seen.equals(b))
    t.is((await vdiskfs('restore', m.image('backups', 'b1.img'), disk, '--force')).code, 0)
    fs.readSync(fd, seen, 0, seen.length, 0)
    t.true(seen.equals(a), 'a read after restore --force returns the restored bytes, not the pages cached before')
    // The name stays valid for the kernel: the descriptor still shows the image's path (not "(deleted)"),
    // which is how vdiskfs names who holds an image.
    t.is(fs.readlinkSync(`/proc/self/fd/${fd}`), disk)
    t.is(fs.fstatSync(fd).size, 4 * MiB)
  } finally { fs.closeSync(fd) }
  t.true(fs.readFileSync(disk).equals(a))
  // Names the kernel has looked up (and may cache) follow renames, removals and promotions made
  // with bin/vdiskfs at once.
  t.is((await vdiskfs('clone', m.image('backups', 'b1.img'), 'c1')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'b1.img'), 'c2')).code, 0)
  for (const name of ['disks/vm.img', 'clones/c1.img', 'clones/c2.img', 'disks/vm-new.img', 'disks/c2.img']) {
    try { fs.statSync(path.join(m.mnt, name)) } catch {}
  }
  const ino = fs.statSync(disk).ino
  t.is((await vdiskfs('rename', disk, 'vm-new')).code, 0)
  t.false(fs.existsSync(disk))
  t.is(fs.statSync(m.image('disks', 'vm-new.img')).ino, ino)
  t.is((await vdiskfs('rm', m.image('clones', 'c1.img'))).code, 0)
  t.false(fs.existsSync(m.image('clones', 'c1.img')))
  t.is((await vdiskfs('promote', m.image('clones', 'c2.img'))).code, 0)
  t.false(fs.existsSync(m.image('clones', 'c2.img')))
  t.true(fs.readFileSync(m.image('disks', 'c2.img')).equals(a))
  // A name removed and made again names the new volume, with the new volume's bytes.
  t.is((await vdiskfs('rm', m.image('disks', 'vm-new.img'))).code, 0)
  fs.writeFileSync(m.image('disks', 'vm-new.img'), b)
  t.true(fs.readFileSync(m.image('disks', 'vm-new.img')).equals(b))
})

test.serial('a disk created through the mount belongs to the caller (FUSE 3 tells who asks)', async t => {
  const m = await withMount(t, '--allow-other')
  // uid 4321 with CAP_DAC_OVERRIDE, so that it may create in disks/ (the daemon user's, 0755).
  await run('setpriv', ['--reuid=4321', '--regid=4322', '--clear-groups', '--inh-caps=+dac_override', '--ambient-caps=+dac_override', 'truncate', '-s', '1M', m.image('disks', 'theirs.img')])
  const stat = fs.statSync(m.image('disks', 'theirs.img'))
  t.is(stat.uid, 4321)
  t.is(stat.gid, 4322)
  t.is(stat.mode & 0o777, 0o600)
  fs.writeFileSync(m.image('disks', 'mine.img'), 'x')
  t.is(fs.statSync(m.image('disks', 'mine.img')).uid, 0)
  fs.chownSync(m.image('disks', 'mine.img'), 1000, 1000)
  fs.chmodSync(m.image('disks', 'mine.img'), 0o640)
  t.like(fs.statSync(m.image('disks', 'mine.img')), { uid: 1000, gid: 1000, mode: 0o100640 })
})

test.serial('vdiskfs umount and SIGTERM unmount the mount and stop the daemon', async t => {
  const m = await withMount(t)
  fs.writeFileSync(m.image('disks', 'a.img'), 'hello')
  await m.umount()
  t.false(isMounted(m.mnt))
  await m.mount()
  t.is((await fuse3Status(m.mnt)).maxWrite, MiB)
  t.is(fs.readFileSync(m.image('disks', 'a.img'), 'utf8'), 'hello')
  await m.terminate()
  t.false(isMounted(m.mnt))
})

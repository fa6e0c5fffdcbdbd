/**
 * Disks through a real mount (issue #2): ext4 on a loop device survives remount, qemu-img round trips,
 * cp in and out, truncate like a regular file, errors with the right errno, second mount refused,
 * fsync'd data survives kill -9, and an unmount from outside stops the daemon.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { isMounted, run, sha256, vdiskfs, waitForExit, withMount } from '../helpers/mount'

test.serial('mkfs.ext4, loop mount and files survive an unmount and a fresh mount', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'fs.img')
  await run('truncate', ['-s', '1G', disk])
  await run('mkfs.ext4', ['-q', '-F', disk])
  const lm = await m.loopMount(disk)
  const files: Record<string, string> = {}
  for (let i = 0; i < 20; i++) {
    const data = crypto.randomBytes(1000 + i * 50000)
    fs.writeFileSync(path.join(lm, `f${i}`), data)
    files[`f${i}`] = crypto.createHash('sha256').update(data).digest('hex')
  }
  await run('cp', ['-r', '/usr/share/doc/util-linux', lm])
  await m.loopUmount(lm)
  const before = sha256(disk)
  await m.umount()
  t.false(isMounted(m.mnt))
  await m.mount()
  t.is(sha256(disk), before)
  const again = await m.loopMount(disk, 'loop,ro')
  for (const [name, sum] of Object.entries(files)) {
    t.is(crypto.createHash('sha256').update(fs.readFileSync(path.join(again, name))).digest('hex'), sum, name)
  }
  await run('diff', ['-r', '/usr/share/doc/util-linux', path.join(again, 'util-linux')])
  await m.loopUmount(again)
  const fsck = await run('e2fsck', ['-fn', disk])
  t.regex(fsck, /files/)
})

test.serial('qemu-img info and convert raw -> qcow2 -> raw into disks/', async t => {
  const m = await withMount(t)
  const source = path.join(m.dir, 'source.raw')
  const data = Buffer.alloc(64 * 1024 * 1024)
  for (let off = 0; off < data.length; off += 1024 * 1024) crypto.randomBytes(300 * 1024).copy(data, off)
  fs.writeFileSync(source, data)
  await run('qemu-img', ['create', '-f', 'raw', m.image('disks', 'made.img'), '100M'])
  t.regex(await run('qemu-img', ['info', m.image('disks', 'made.img')]), /virtual size: 100 MiB/)
  const qcow = path.join(m.dir, 'image.qcow2')
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', source, qcow])
  await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', qcow, m.image('disks', 'back.img')])
  t.is(sha256(m.image('disks', 'back.img')), sha256(source))
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, m.image('disks', 'back.img')])
})

test.serial('cp of a 200 MB file in and out, checked with cmp', async t => {
  const m = await withMount(t)
  const source = path.join(m.dir, 'big.raw')
  await run('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', 'count=200', 'status=none'])
  await run('cp', [source, m.image('disks', 'big.img')])
  await run('cmp', [source, m.image('disks', 'big.img')])
  const out = path.join(m.dir, 'out.raw')
  await run('cp', [m.image('disks', 'big.img'), out])
  await run('cmp', [source, out])
  t.is(fs.statSync(m.image('disks', 'big.img')).size, 200 * 1024 * 1024)
  t.is(fs.statSync(m.image('disks', 'big.img')).blocks, 200 * 1024 * 2)
})

test.serial('fio randwrite with verify=crc32c, bs 4k and 64k, iodepth 1 and 8', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'fio.img')
  await run('truncate', ['-s', '256M', disk])
  for (const bs of ['4k', '64k']) {
    for (const depth of ['1', '8']) {
      const out = await run('fio', ['--name=verify', `--filename=${disk}`, '--rw=randwrite', `--bs=${bs}`, `--iodepth=${depth}`,
        '--ioengine=libaio', '--direct=0', '--size=256M', '--io_size=32M', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0',
        '--do_verify=1', '--output-format=json'])
      const result = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<{ error: number }> }
      t.is(result.jobs[0].error, 0, `bs=${bs} iodepth=${depth}`)
    }
  }
})

test.serial('truncate grows and shrinks exactly like a regular file', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 't.img')
  const plain = path.join(m.dir, 'plain')
  const steps: Array<[string, number, number?]> = [
    ['size', 3 * 65536 + 100], ['write', 70000, 200000], ['size', 100001], ['size', 5 * 65536],
    ['write', 65536 * 4 - 10, 30], ['size', 65536 * 4 - 5], ['size', 1 << 30], ['write', (1 << 30) - 4096, 4096],
    ['size', 12345], ['size', 0], ['size', 70000], ['write', 0, 100]
  ]
  for (const file of [disk, plain]) fs.writeFileSync(file, '')
  for (const [op, a, b] of steps) {
    for (const file of [disk, plain]) {
      if (op === 'size') fs.truncateSync(file, a)
      else {
        const fd = fs.openSync(file, 'r+')
        fs.writeSync(fd, crypto.createHash('sha256').update(`${a}`).digest().toString('hex').repeat(Math.ceil((b ?? 0) / 64)).slice(0, b), a)
        fs.closeSync(fd)
      }
    }
    t.is(fs.statSync(disk).size, fs.statSync(plain).size, `${op} ${a}`)
    t.is(sha256(disk), sha256(plain), `${op} ${a}`)
  }
  // Sparse up to 16 TiB.
  fs.truncateSync(disk, 16 * 1024 ** 4)
  const fd = fs.openSync(disk, 'r+')
  fs.writeSync(fd, 'end', 16 * 1024 ** 4 - 3)
  fs.closeSync(fd)
  t.is(fs.statSync(disk).size, 16 * 1024 ** 4)
  const tail = Buffer.alloc(3)
  const rfd = fs.openSync(disk, 'r')
  fs.readSync(rfd, tail, 0, 3, 16 * 1024 ** 4 - 3)
  fs.closeSync(rfd)
  t.is(tail.toString(), 'end')
})

test.serial('all-zero blocks take no space; touch, dd and mv work; bad names and mkdir are refused', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'z.img')
  await run('dd', ['if=/dev/zero', `of=${disk}`, 'bs=1M', 'count=16', 'status=none'])
  t.is(fs.statSync(disk).size, 16 * 1024 * 1024)
  t.is(fs.statSync(disk).blocks, 0)
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=64k', 'count=2', 'conv=notrunc', 'status=none'])
  t.is(fs.statSync(disk).blocks, 256)
  await run('dd', ['if=/dev/zero', `of=${disk}`, 'bs=64k', 'count=1', 'conv=notrunc', 'status=none'])
  t.is(fs.statSync(disk).blocks, 128)
  await run('touch', [m.image('disks', 'empty.img')])
  t.is(fs.statSync(m.image('disks', 'empty.img')).size, 0)
  fs.renameSync(disk, m.image('disks', 'moved.img'))
  t.false(fs.existsSync(disk))
  t.is(fs.statSync(m.image('disks', 'moved.img')).blocks, 128)
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')).sort(), ['empty.img', 'moved.img'])
  const code = (f: () => void) => { try { f(); return 'ok' } catch (err) { return (err as NodeJS.ErrnoException).code } }
  // Names are what a Linux filesystem accepts (names.test.ts has the rest).
  t.is(code(() => fs.writeFileSync(m.image('disks', 'x'.repeat(256)), 'x')), 'EINVAL')
  t.is(code(() => fs.mkdirSync(m.image('disks', 'sub'))), 'EPERM')
  t.is(code(() => fs.mkdirSync(path.join(m.mnt, 'other'))), 'EPERM')
  t.is(code(() => fs.writeFileSync(m.image('backups', 'b.img'), 'x')), 'EROFS')
  t.is(code(() => fs.symlinkSync('moved.img', m.image('disks', 'link.img'))), 'EPERM')
  t.is(code(() => fs.linkSync(m.image('disks', 'moved.img'), m.image('disks', 'hard.img'))), 'EPERM')
  t.is(code(() => fs.renameSync(m.image('disks', 'moved.img'), m.image('clones', 'moved.img'))), 'EXDEV')
  fs.unlinkSync(m.image('disks', 'moved.img'))
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')), ['empty.img'])
  const df = await run('df', ['-B1', m.mnt])
  t.regex(df, /vdiskfs/)
})

test.serial('a second mount of the same pool is refused with a clear message', async t => {
  const m = await withMount(t)
  const other = path.join(m.dir, 'mnt2')
  fs.mkdirSync(other)
  const result = await vdiskfs('mount', m.pool, other)
  t.not(result.code, 0)
  t.regex(result.stderr, /^vdiskfs mount: the pool is in use/)
  t.is(result.stderr.trim().split('\n').length, 1)
  t.false(isMounted(other))
})

test.serial('data written before a successful fsync survives kill -9 and a fresh mount', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'durable.img')
  const data = crypto.randomBytes(8 * 1024 * 1024 + 12345)
  const fd = fs.openSync(disk, 'w')
  fs.writeSync(fd, data, 0, data.length, 0)
  fs.fsyncSync(fd)
  // Overwrite part of it in place (active extent) and fsync again.
  const patch = crypto.randomBytes(100000)
  fs.writeSync(fd, patch, 0, patch.length, 3 * 65536 + 17)
  patch.copy(data, 3 * 65536 + 17)
  fs.fsyncSync(fd)
  await m.kill()
  t.false(isMounted(m.mnt))
  await m.mount()
  t.true(fs.readFileSync(disk).equals(data))
})

test.serial('an unmount from outside (fusermount3 -u) stops the daemon cleanly', async t => {
  const m = await withMount(t)
  fs.writeFileSync(m.image('disks', 'a.img'), 'hello')
  await run('fusermount3', ['-u', m.mnt])
  t.true(await waitForExit(m.pid, 10000))
  const log = fs.readFileSync(path.join(m.pool, 'daemon.log'), 'utf8')
  t.regex(log, /stopping: unmounted from outside/)
  await m.mount()
  t.is(fs.readFileSync(m.image('disks', 'a.img'), 'utf8'), 'hello')
})

test.serial('SIGTERM unmounts and keeps the data', async t => {
  const m = await withMount(t)
  fs.writeFileSync(m.image('disks', 'a.img'), 'term')
  process.kill(m.pid, 'SIGTERM')
  t.true(await waitForExit(m.pid, 10000))
  t.false(isMounted(m.mnt))
  await m.mount()
  t.is(fs.readFileSync(m.image('disks', 'a.img'), 'utf8'), 'term')
})

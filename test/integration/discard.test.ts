/**
 * Discard gives space back through a real mount (issue #11): `fallocate --punch-hole` and
 * `--zero-range` on an image read back as zeros and lower its referenced bytes (`vdiskfs du`), `fstrim`
 * in a loop-mounted ext4 returns deleted files' space (the loop device punches holes in the image),
 * `blkdiscard` on a loop device and `qemu-io discard` zero and free, plain allocation grows the size
 * without reserving, and a backup taken before a discard keeps its bytes. Each failed
 * while the transport did not serve fallocate (fallocate(1) got EOPNOTSUPP; qemu-io reported success
 * and kept the data).
 */
import test from 'ava'
import fs from 'node:fs'
import path from 'node:path'
import { run, sha256, vdiskfs, withMount } from '../helpers/mount'

const MiB = 1 << 20

interface Usage { name: string, kind: string, logicalBytes: number, referencedBytes: number }

async function referenced (mnt: string, kind: string, name: string): Promise<number> {
  const result = await vdiskfs('du', mnt, '--json')
  if (result.code !== 0) throw new Error(result.stderr)
  const usage = (JSON.parse(result.stdout) as { volumes: Usage[] }).volumes.find(v => v.kind === kind && v.name === name)
  if (usage === undefined) throw new Error(`no usage for ${kind} ${name}`)
  return usage.referencedBytes
}

function readRange (file: string, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length)
  const fd = fs.openSync(file, 'r')
  try { fs.readSync(fd, buf, 0, length, offset) } finally { fs.closeSync(fd) }
  return buf
}

test.serial('fallocate --punch-hole and --zero-range read back as zeros, free space and spare a backup', async t => {
  const m = await withMount(t)
  const image = m.image('disks', 'data.img')
  const source = path.join(m.dir, 'source.raw')
  await run('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', 'count=16', 'status=none'])
  await run('cp', [source, image])
  const before = await referenced(m.mnt, 'disk', 'data.img')
  t.true(before >= 16 * MiB)
  t.is((await vdiskfs('backup', image, 'before')).code, 0)

  // Unaligned ends: partial blocks are zeroed in place, whole ones become holes.
  await run('fallocate', ['--punch-hole', '--offset', String(MiB + 4096), '--length', String(4 * MiB), image])
  await run('fallocate', ['--zero-range', '--offset', String(8 * MiB), '--length', String(4 * MiB + 512), image])
  await run('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches'])

  t.is(fs.statSync(image).size, 16 * MiB)
  const original = fs.readFileSync(source)
  const now = fs.readFileSync(image)
  const expected = Buffer.from(original)
  expected.fill(0, MiB + 4096, 5 * MiB + 4096)
  expected.fill(0, 8 * MiB, 12 * MiB + 512)
  t.true(now.equals(expected), 'the discarded ranges read as zeros and nothing else changed')
  const after = await referenced(m.mnt, 'disk', 'data.img')
  // At 64 KiB blocks, at least 7.5 MiB of whole blocks became holes.
  t.true(before - after >= 7 * MiB, `referenced ${before} -> ${after}`)

  // The backup taken before still reads its old bytes.
  t.is(sha256(m.image('backups', 'before.img')), sha256(source))
  // A backup refuses a discard (its file cannot even be opened for writing).
  const refused = await run('sh', ['-c', `fallocate --punch-hole --offset 0 --length 65536 ${m.image('backups', 'before.img')} 2>&1; echo "exit $?"`])
  t.regex(refused, /Read-only file system[\s\S]*exit 1/)
})

test.serial('plain fallocate grows the size without reserving; KEEP_SIZE alone succeeds', async t => {
  const m = await withMount(t)
  const image = m.image('disks', 'grow.img')
  fs.writeFileSync(image, '')
  await run('fallocate', ['--length', String(8 * MiB), image])
  t.is(fs.statSync(image).size, 8 * MiB)
  await run('fallocate', ['--keep-size', '--offset', String(8 * MiB), '--length', String(8 * MiB), image])
  t.is(fs.statSync(image).size, 8 * MiB)
  t.is(await referenced(m.mnt, 'disk', 'grow.img'), 0, 'nothing reserved')
  t.true(readRange(image, 0, 8 * MiB).equals(Buffer.alloc(8 * MiB)))
})

test.serial('fstrim in a loop-mounted ext4 gives deleted files back to the pool', async t => {
  const m = await withMount(t)
  const image = m.image('disks', 'fs.img')
  await run('truncate', ['-s', '256M', image])
  await run('mkfs.ext4', ['-q', '-E', 'nodiscard', image])
  const fsMount = await m.loopMount(image)
  await run('dd', ['if=/dev/urandom', `of=${path.join(fsMount, 'big')}`, 'bs=1M', 'count=64', 'status=none', 'conv=fsync'])
  await run('sync', [])
  const full = await referenced(m.mnt, 'disk', 'fs.img')
  t.true(full >= 64 * MiB, `referenced ${full}`)
  fs.rmSync(path.join(fsMount, 'big'))
  await run('sync', [])
  const trimmed = await run('fstrim', ['-v', fsMount])
  t.log(trimmed.trim())
  await m.loopUmount(fsMount)
  const after = await referenced(m.mnt, 'disk', 'fs.img')
  t.log(`referenced ${full} -> ${after} bytes`)
  t.true(full - after >= 60 * MiB, `referenced ${full} -> ${after}`)
  // The filesystem is still sound.
  await run('e2fsck', ['-fn', image])
})

test.serial('blkdiscard on a loop device zeroes and frees the range', async t => {
  const m = await withMount(t)
  const image = m.image('disks', 'blk.img')
  await run('dd', ['if=/dev/urandom', `of=${image}`, 'bs=1M', 'count=32', 'status=none'])
  const before = await referenced(m.mnt, 'disk', 'blk.img')
  const device = (await run('losetup', ['-f', '--show', image])).trim()
  try {
    await run('blkdiscard', ['-o', String(4 * MiB), '-l', String(16 * MiB), device])
  } finally {
    await run('losetup', ['-d', device])
  }
  await run('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches'])
  t.true(readRange(image, 4 * MiB, 16 * MiB).equals(Buffer.alloc(16 * MiB)))
  t.false(readRange(image, 0, MiB).equals(Buffer.alloc(MiB)))
  const after = await referenced(m.mnt, 'disk', 'blk.img')
  t.true(before - after >= 16 * MiB, `referenced ${before} -> ${after}`)
})

test.serial('qemu-io discard on a raw image zeroes and frees the range', async t => {
  const m = await withMount(t)
  const image = m.image('disks', 'vm.img')
  await run('dd', ['if=/dev/urandom', `of=${image}`, 'bs=1M', 'count=8', 'status=none'])
  const before = await referenced(m.mnt, 'disk', 'vm.img')
  const out = await run('qemu-io', ['-f', 'raw', '-c', `discard ${MiB} ${4 * MiB}`, image])
  t.notRegex(out, /failed|not supported/i)
  await run('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches'])
  t.true(readRange(image, MiB, 4 * MiB).equals(Buffer.alloc(4 * MiB)))
  const after = await referenced(m.mnt, 'disk', 'vm.img')
  t.true(before - after >= 4 * MiB, `referenced ${before} -> ${after}`)
})

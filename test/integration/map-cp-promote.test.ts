/**
 * Allocation maps and instant copies (issue #11): `vdiskfs map` answers in qemu-img map's JSON shape
 * (an empty 20 GiB image is one unallocated range; a clone's shared blocks are depth 1); `vdiskfs cp`
 * copies any volume to a new disk that shares its blocks and diverges on write, and survives the
 * removal of its source, gc, verify, a remount and an offline repair; `vdiskfs promote` turns a clone
 * into a disk, refusing while the clone is open.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { TestMount, run, vdiskfs, withMount } from '../helpers/mount'

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB

interface Range { start: number, length: number, depth: number, present: boolean, zero: boolean, data: boolean, offset?: number }

async function map (image: string): Promise<Range[]> {
  const result = await vdiskfs('map', image, '--json')
  if (result.code !== 0) throw new Error(`vdiskfs map failed: ${result.stderr}`)
  return JSON.parse(result.stdout) as Range[]
}

const hole = (start: number, length: number, depth = 0): Range => ({ start, length, depth, present: false, zero: true, data: false })
const data = (start: number, length: number, depth = 0): Range => ({ start, length, depth, present: true, zero: false, data: true, offset: start })

function writeAt (file: string, bytes: Buffer, position: number): void {
  const fd = fs.openSync(file, 'r+')
  try { fs.writeSync(fd, bytes, 0, bytes.length, position); fs.fsyncSync(fd) } finally { fs.closeSync(fd) }
}

/**
 * A vdiskfs command (rm, promote), tried again while it says the image is in use: the kernel sends RELEASE after close(2)
 * returned, and on a loaded machine it can come later than the daemon's 500 ms grace.
 */
async function whenReleased (...args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  let result = await vdiskfs(...args)
  for (let tries = 0; tries < 5 && result.code !== 0 && /in use/.test(result.stderr); tries++) {
    await new Promise(resolve => setTimeout(resolve, 1000))
    result = await vdiskfs(...args)
  }
  return result
}

async function rmWhenReleased (image: string): Promise<{ code: number, stderr: string }> {
  return await whenReleased('rm', image)
}

async function listed (m: TestMount): Promise<Array<{ kind: string, name: string, sourceLabel: string | null }>> {
  return JSON.parse((await vdiskfs('ls', m.mnt, '--json')).stdout)
}

test.serial('map: an empty 20 GiB image is one unallocated range; data ranges merge; a clone reads its backup at depth 1', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'big.img')
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, 20 * GiB)
  t.deepEqual(await map(disk), [hole(0, 20 * GiB)])
  // 128 KiB at 0 (two blocks, one range), 64 KiB at 1 MiB, a block of zeros at 2 MiB (stored as nothing).
  writeAt(disk, crypto.randomBytes(128 * KiB), 0)
  writeAt(disk, crypto.randomBytes(64 * KiB), MiB)
  writeAt(disk, Buffer.alloc(64 * KiB), 2 * MiB)
  const expected = [data(0, 128 * KiB), hole(128 * KiB, MiB - 128 * KiB), data(MiB, 64 * KiB), hole(MiB + 64 * KiB, 20 * GiB - MiB - 64 * KiB)]
  t.deepEqual(await map(disk), expected)
  // Sealed into the chunk store, the map is the same.
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  t.deepEqual(await map(disk), expected)
  // The text form is qemu-img map's: data ranges only.
  const text = (await vdiskfs('map', disk)).stdout.trim().split('\n')
  t.deepEqual(text.map(line => line.split(/\s+/).slice(0, 3).join(' ')), ['Offset Length Mapped', '0 0x20000 0', '0x100000 0x10000 0x100000'])
  t.true(text[1].endsWith(disk))
  // The same shape as qemu-img map's: copied out as a sparse raw file, qemu-img finds the same data ranges.
  const raw = path.join(m.dir, 'big-copy.img')
  t.is((await vdiskfs('cp', disk, raw)).code, 0)
  const qemu = JSON.parse(await run('qemu-img', ['map', '--output=json', '-f', 'raw', raw])) as Range[]
  const dataOf = (ranges: Range[]) => ranges.filter(r => r.data).map(r => ({ start: r.start, length: r.length, depth: r.depth, present: r.present, zero: r.zero, data: r.data, offset: r.offset }))
  t.deepEqual(dataOf(await map(disk)), dataOf(qemu))
  t.deepEqual(Object.keys((await map(disk))[0]), Object.keys(qemu[0]))
  // A clone: what it shares with its backup is depth 1; its own writes depth 0; a hole it punched over
  // its backup's data is a zero of its own.
  t.is((await vdiskfs('backup', disk, 'b')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'b.img'), 'c')).code, 0)
  const clone = m.image('clones', 'c.img')
  writeAt(clone, crypto.randomBytes(64 * KiB), MiB)
  writeAt(clone, crypto.randomBytes(64 * KiB), 4 * MiB)
  await run('fallocate', ['--punch-hole', '--keep-size', '--offset', String(64 * KiB), '--length', String(64 * KiB), clone])
  t.deepEqual(await map(clone), [
    data(0, 64 * KiB, 1),
    { start: 64 * KiB, length: 64 * KiB, depth: 0, present: true, zero: true, data: false },
    hole(128 * KiB, MiB - 128 * KiB, 1),
    data(MiB, 64 * KiB),
    hole(MiB + 64 * KiB, 3 * MiB - 64 * KiB, 1),
    data(4 * MiB, 64 * KiB),
    hole(4 * MiB + 64 * KiB, 20 * GiB - 4 * MiB - 64 * KiB, 1)
  ])
  const cloneText = (await vdiskfs('map', clone)).stdout
  t.true(cloneText.includes(m.image('backups', 'b.img')), 'depth 1 ranges name the backup')
  // A size that is not a multiple of the block size ends where the image ends.
  const odd = m.image('disks', 'odd.img')
  fs.writeFileSync(odd, crypto.randomBytes(100000))
  t.deepEqual(await map(odd), [data(0, 100000)])
  fs.writeFileSync(m.image('disks', 'zero.img'), '')
  t.deepEqual(await map(m.image('disks', 'zero.img')), [])
  t.is((await vdiskfs('map', m.image('disks', 'missing.img'))).code, 1)
})

test.serial('cp: a copy shares blocks, diverges on write, and outlives its source through gc, verify, remount and repair', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'src.img')
  const original = crypto.randomBytes(3 * MiB)
  fs.writeFileSync(disk, original)
  fs.truncateSync(disk, 256 * MiB)
  const saved = path.join(m.dir, 'original.img')
  fs.writeFileSync(saved, original)
  fs.truncateSync(saved, 256 * MiB)
  // To a path, to the disks/ directory (keeps the name: refused, it exists), to a plain name.
  const copy = m.image('disks', 'copy.img')
  const result = await vdiskfs('cp', disk, copy, '--json')
  t.is(result.code, 0, result.stderr)
  const json = JSON.parse(result.stdout)
  t.is(json.kind, 'disk')
  t.is(json.name, 'copy.img')
  t.is(json.from.name, 'src.img')
  t.is(json.sourceId, null)
  t.is((await vdiskfs('cp', disk, path.join(m.mnt, 'disks'))).code, 1, 'disks/src.img exists')
  t.is((await vdiskfs('cp', disk, copy)).code, 1, 'the copy exists')
  t.is((await vdiskfs('cp', disk, m.image('clones', 'x.img'))).code, 1, 'a copy is a disk')
  t.is((await vdiskfs('cp', disk, 'plain')).code, 0)
  await run('cmp', [saved, copy])
  await run('cmp', [saved, m.image('disks', 'plain.img')])
  t.deepEqual(await map(copy), await map(disk))
  t.regex(fs.readFileSync(path.join(m.pool, 'daemon.log'), 'utf8'), /cp: disks\/src\.img -> disks\/copy\.img \(/, 'the daemon log names the copy')
  // Writes to either side do not reach the other.
  writeAt(disk, Buffer.alloc(64 * KiB, 1), 0)
  writeAt(copy, Buffer.alloc(64 * KiB, 2), MiB)
  await run('cmp', [saved, m.image('disks', 'plain.img')])
  t.is(fs.readFileSync(copy).subarray(0, 4).toString('hex'), original.subarray(0, 4).toString('hex'))
  t.is(fs.readFileSync(disk).subarray(MiB, MiB + 4).toString('hex'), original.subarray(MiB, MiB + 4).toString('hex'))
  writeAt(saved, Buffer.alloc(64 * KiB, 2), MiB)
  await run('cmp', [saved, copy])
  // A backup and a clone copy too.
  t.is((await vdiskfs('backup', copy, 'b')).code, 0)
  t.is((await vdiskfs('cp', m.image('backups', 'b.img'), 'from-backup')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'b.img'), 'c')).code, 0)
  t.is((await vdiskfs('cp', m.image('clones', 'c.img'), 'from-clone')).code, 0)
  await run('cmp', [saved, m.image('disks', 'from-backup.img')])
  await run('cmp', [saved, m.image('disks', 'from-clone.img')])
  // The sources go; sealing, gc and verify find everything the copies need.
  for (const image of [disk, m.image('clones', 'c.img'), m.image('backups', 'b.img')]) {
    const removed = await rmWhenReleased(image)
    t.is(removed.code, 0, removed.stderr)
  }
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  t.is((await vdiskfs('gc', m.mnt)).code, 0)
  const verify = await vdiskfs('verify', m.mnt, '--json')
  t.is(verify.code, 0, verify.stdout)
  for (const name of ['copy.img', 'from-backup.img', 'from-clone.img']) await run('cmp', [saved, m.image('disks', name)])
  const du = JSON.parse((await vdiskfs('du', m.mnt, '--json')).stdout) as { volumes: Array<{ name: string, referencedBytes: number }> }
  t.deepEqual(du.volumes.map(v => v.name).sort(), ['copy.img', 'from-backup.img', 'from-clone.img', 'plain.img'])
  t.true(du.volumes.every(v => v.referencedBytes > 0))
  await m.umount()
  const repair = await vdiskfs('repair', m.pool, '--json')
  t.is(repair.code, 0, repair.stderr)
  t.true(JSON.parse(repair.stdout).after.ok)
  await m.mount()
  for (const name of ['copy.img', 'from-backup.img', 'from-clone.img']) await run('cmp', [saved, m.image('disks', name)])
  t.deepEqual((await listed(m)).map(v => `${v.kind}/${v.name}`).sort(), ['disk/copy.img', 'disk/from-backup.img', 'disk/from-clone.img', 'disk/plain.img'])
})

test.serial('promote: a clone becomes a disk, refused while open; it keeps its data and its lineage', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'golden.img')
  const content = crypto.randomBytes(2 * MiB)
  fs.writeFileSync(disk, content)
  t.is((await vdiskfs('backup', disk, 'golden-v1')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'golden-v1.img'), 'vm1')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'golden-v1.img'), 'vm2')).code, 0)
  const vm1 = m.image('clones', 'vm1.img')
  writeAt(vm1, Buffer.alloc(4096, 7), 0)
  // Held open: refused, and nothing changes.
  const holder = spawn('sh', ['-c', 'exec 3<"$0"; exec sleep 600', vm1], { stdio: 'ignore' })
  t.teardown(() => { try { holder.kill('SIGKILL') } catch {} })
  for (let i = 0; i < 200 && !fs.readdirSync(`/proc/${String(holder.pid)}/fd`).includes('3'); i++) await new Promise(resolve => setTimeout(resolve, 25))
  const busy = await vdiskfs('promote', vm1)
  t.is(busy.code, 1)
  t.regex(busy.stderr, /clones\/vm1\.img is in use by pid \d+ \(sleep\)/)
  t.true(fs.existsSync(vm1))
  holder.kill('SIGKILL')
  await new Promise(resolve => setTimeout(resolve, 200))
  // Refusals: not a clone, a taken name, too many arguments.
  t.is((await vdiskfs('promote', disk)).code, 1)
  t.is((await vdiskfs('promote', m.image('backups', 'golden-v1.img'))).code, 1)
  t.is((await vdiskfs('promote', vm1, 'golden')).code, 1, 'disks/golden.img exists')
  t.is((await vdiskfs('promote', vm1, 'a', 'b')).code, 2)
  const result = await whenReleased('promote', vm1, '--json')
  t.is(result.code, 0, result.stderr)
  t.is(JSON.parse(result.stdout).kind, 'disk')
  t.is((await vdiskfs('promote', m.image('clones', 'vm2.img'), 'server', '--json')).code, 0)
  t.regex(fs.readFileSync(path.join(m.pool, 'daemon.log'), 'utf8'), /promote: clones\/vm2\.img -> disks\/server\.img \(/, 'the daemon log names the promotion')
  t.false(fs.existsSync(vm1))
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'clones')), [])
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')).sort(), ['golden.img', 'server.img', 'vm1.img'])
  const promoted = m.image('disks', 'vm1.img')
  const expected = Buffer.from(content)
  expected.fill(7, 0, 4096)
  t.true(fs.readFileSync(promoted).equals(expected))
  t.true(fs.readFileSync(m.image('disks', 'server.img')).equals(content))
  // A disk now: it takes writes, backups of its own, and a new clone may take its old name.
  writeAt(promoted, Buffer.alloc(4096, 8), 4096)
  t.is((await vdiskfs('backup', promoted, 'vm1-b')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'golden-v1.img'), 'vm1')).code, 0)
  t.true(fs.readFileSync(m.image('clones', 'vm1.img')).equals(content))
  // Without the backup it came from, after gc and a remount, it reads the same.
  for (const image of [m.image('clones', 'vm1.img'), m.image('backups', 'golden-v1.img'), disk]) {
    const removed = await rmWhenReleased(image)
    t.is(removed.code, 0, removed.stderr)
  }
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  t.is((await vdiskfs('gc', m.mnt)).code, 0)
  await m.umount()
  await m.mount()
  expected.fill(8, 4096, 8192)
  t.true(fs.readFileSync(promoted).equals(expected))
  t.true(fs.readFileSync(m.image('disks', 'server.img')).equals(content))
  const volumes = await listed(m)
  t.deepEqual(volumes.map(v => `${v.kind}/${v.name}`).sort(), ['backup/vm1-b.img', 'disk/server.img', 'disk/vm1.img'])
  t.is(volumes.find(v => v.name === 'vm1.img')?.sourceLabel, 'backup golden-v1.img', 'the lineage is kept')
  t.is((await vdiskfs('verify', m.mnt)).code, 0)
})

test.serial('cp out of the pool copies only the data ranges (a sparse file); cp --reflink=always cannot clone through this FUSE', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'out.img')
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, 20 * GiB)
  const empty = path.join(m.dir, 'empty-copy.img')
  const result = await vdiskfs('cp', disk, empty, '--json')
  t.is(result.code, 0, result.stderr)
  t.is(JSON.parse(result.stdout).copiedBytes, 0)
  t.is(fs.statSync(empty).size, 20 * GiB)
  t.is(fs.statSync(empty).blocks, 0, 'all holes')
  // Data at both ends and in the middle of a 256 MiB image; a directory target takes the image's name.
  fs.truncateSync(disk, 256 * MiB)
  writeAt(disk, crypto.randomBytes(100000), 0)
  writeAt(disk, crypto.randomBytes(3 * MiB), 100 * MiB + 5)
  writeAt(disk, crypto.randomBytes(4096), 256 * MiB - 4096)
  const outside = path.join(m.dir, 'outside')
  fs.mkdirSync(outside)
  const copied = await vdiskfs('cp', disk, outside, '--json')
  t.is(copied.code, 0, copied.stderr)
  const copy = path.join(outside, 'out.img')
  await run('cmp', [disk, copy])
  t.true(fs.statSync(copy).blocks * 512 < 8 * MiB, 'holes stay holes')
  t.is((await vdiskfs('cp', disk, copy)).code, 1, 'an existing file is not overwritten')
  // cp --reflink=always: the kernel refuses FICLONE on this FUSE mount after cp created the target.
  const reflinked = m.image('disks', 'reflink.img')
  const reflink = await run('sh', ['-c', `cp --reflink=always "$0" "$1" 2>&1; echo "status $?"`, disk, reflinked])
  t.regex(reflink, /failed to clone.*Operation not supported[\s\S]*status 1/)
  t.is(fs.statSync(reflinked).size, 0, 'cp leaves the empty file it created (the README says: use vdiskfs cp)')
  t.is((await vdiskfs('rm', reflinked)).code, 0)
  t.is((await vdiskfs('cp', disk, reflinked)).code, 0)
  await run('cmp', [disk, reflinked])
})

for (const signal of ['SIGKILL', 'SIGINT'] as const) {
  test.serial(`cp out of the pool interrupted by ${signal}: no file under the target's name, and the same command then works`, async t => {
    const m = await withMount(t)
    const disk = m.image('disks', 'big.img')
    // 256 MiB of data (a copy takes long enough to be interrupted half-way).
    await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=1M', 'count=256', 'conv=fsync', 'status=none'])
    const outside = path.join(m.dir, 'outside')
    fs.mkdirSync(outside)
    const target = path.join(outside, 'copy.img')
    const child = spawn(path.join(__dirname, '..', '..', '..', 'bin', 'vdiskfs'), ['cp', disk, target], { stdio: 'ignore' })
    const exited = new Promise(resolve => child.once('exit', resolve))
    const partial = (): string | undefined => fs.readdirSync(outside).find(f => /^\.copy\.img\.[0-9a-f]+\.partial$/.test(f))
    const copiedBytes = (): number => { const p = partial(); try { return p === undefined ? 0 : fs.statSync(path.join(outside, p)).blocks * 512 } catch { return 0 } }
    for (let i = 0; i < 800 && copiedBytes() < 16 * MiB; i++) await new Promise(resolve => setTimeout(resolve, 10))
    t.true(copiedBytes() >= 16 * MiB, 'the copy did not start')
    child.kill(signal)
    await exited
    t.false(fs.existsSync(target), 'nothing under the target name')
    if (signal === 'SIGINT') t.is(partial(), undefined, 'Ctrl-C removes the partial file')
    const again = await vdiskfs('cp', disk, target)
    t.is(again.code, 0, again.stderr)
    await run('cmp', [disk, target])
  })
}

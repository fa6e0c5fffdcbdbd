/**
 * Images in use (issue #9, item 4 and the smaller things): `vdiskfs rm` and `vdiskfs restore` refuse an
 * image that a loop device or a process holds open and say which; `rm --force` and a plain `rm` through
 * the mount keep POSIX unlink semantics (the holder keeps its fsynced data until it closes, then the
 * volume is gone and gc frees it); a volume removed while open does not come back after a crash; a user
 * cannot hide a closed image by renaming it to libfuse's `.fuse_hidden*` names (they are ordinary names).
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { ChildProcess, spawn, spawnSync } from 'node:child_process'
import Database from 'better-sqlite3'
import { TestMount, execFileAsync, run, vdiskfs, waitForExit, withMount } from '../helpers/mount'

/** The catalog's volume names, read once the pool is unmounted (the daemon holds its lock). */
function catalogNames (m: TestMount): string[] {
  const db = new Database(path.join(m.pool, 'catalog.sqlite'), { readonly: true })
  try {
    return (db.prepare('SELECT kind, name FROM volumes ORDER BY id').all() as Array<{ kind: string, name: string }>).map(v => `${v.kind}/${v.name}`)
  } finally { db.close() }
}

async function listed (m: TestMount): Promise<string[]> {
  const result = await vdiskfs('ls', m.mnt, '--json')
  return (JSON.parse(result.stdout) as Array<{ kind: string, name: string }>).map(v => `${v.kind}/${v.name}`).sort()
}

/** A `sleep` holding `file` open on fd 3, read-write as `exec 3<>file` in sh (or read-only: `3<file`). */
async function holdOpen (t: any, file: string, readOnly = false): Promise<ChildProcess> {
  const child = spawn('sh', ['-c', `exec 3${readOnly ? '<' : '<>'}"$0"; exec sleep 600`, file], { stdio: 'ignore' })
  t.teardown(() => { try { child.kill('SIGKILL') } catch {} })
  for (let i = 0; i < 200; i++) {
    try { if (fs.readlinkSync(`/proc/${String(child.pid)}/fd/3`) === file && fs.readFileSync(`/proc/${String(child.pid)}/comm`, 'utf8').trim() === 'sleep') return child } catch {}
    await new Promise(resolve => setTimeout(resolve, 25))
  }
  throw new Error('the holder did not open the file')
}

function duBytes (dir: string): number {
  return Number(spawnSync('du', ['-sb', dir], { encoding: 'utf8' }).stdout.split('\t')[0])
}

function writeSynced (file: string, data: Buffer): void {
  const fd = fs.openSync(file, 'w')
  try { fs.writeSync(fd, data); fs.fsyncSync(fd) } finally { fs.closeSync(fd) }
}

function dropCaches (): void {
  try { fs.writeFileSync('/proc/sys/vm/drop_caches', '3') } catch {}
}

function oneLine (t: any, result: { code: number, stderr: string }, pattern: RegExp, what: string): void {
  t.is(result.code, 1, `${what}: exit 1 (${result.stderr})`)
  t.is(result.stderr.trim().split('\n').length, 1, `${what}: one line (${result.stderr})`)
  t.regex(result.stderr, pattern, what)
}

test.serial('a loop device on a disk: rm and restore refuse, naming the loop device; nothing changes', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'web.img')
  fs.writeFileSync(disk, crypto.randomBytes(1024 * 1024))
  const before = fs.readFileSync(disk)
  t.is((await vdiskfs('backup', disk, 'b')).code, 0)
  fs.writeFileSync(disk, crypto.randomBytes(1024 * 1024))
  const content = fs.readFileSync(disk)
  const device = (await run('losetup', ['-f', '--show', disk])).trim()
  t.teardown(() => { spawnSync('losetup', ['-d', device]) })
  oneLine(t, await vdiskfs('rm', disk), new RegExp(`disks/web\\.img is in use by loop device ${device} \\(backing file .*web\\.img\\)`), 'rm')
  oneLine(t, await vdiskfs('restore', m.image('backups', 'b.img'), disk), new RegExp(`disks/web\\.img is in use by loop device ${device}`), 'restore')
  t.deepEqual(await listed(m), ['backup/b.img', 'disk/web.img'])
  t.true(fs.readFileSync(disk).equals(content), 'restore changed nothing')
  t.true(fs.readFileSync(device).subarray(0, content.length).equals(content))
  // Once the loop device is gone, both work.
  await run('losetup', ['-d', device])
  const restored = await vdiskfs('restore', m.image('backups', 'b.img'), disk)
  t.is(restored.code, 0, restored.stderr)
  t.true(fs.readFileSync(disk).equals(before))
  const removed = await vdiskfs('rm', disk)
  t.is(removed.code, 0, removed.stderr)
  t.deepEqual(await listed(m), ['backup/b.img'])
})

test.serial('a process holding an image open: rm and restore refuse, naming its pid; --force overrides', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'vm.img')
  fs.writeFileSync(disk, 'hello')
  t.is((await vdiskfs('backup', disk, 'b')).code, 0)
  fs.writeFileSync(disk, 'world')
  const holder = await holdOpen(t, disk)
  oneLine(t, await vdiskfs('rm', disk), new RegExp(`disks/vm\\.img is in use by pid ${String(holder.pid)} \\(sleep\\)`), 'rm')
  oneLine(t, await vdiskfs('restore', m.image('backups', 'b.img'), disk), new RegExp(`in use by pid ${String(holder.pid)} \\(sleep\\)`), 'restore')
  t.is(fs.readFileSync(disk, 'utf8'), 'world')
  const forced = await vdiskfs('restore', '--force', m.image('backups', 'b.img'), disk)
  t.is(forced.code, 0, forced.stderr)
  t.is(fs.readFileSync(disk, 'utf8'), 'hello')
  // A backup held open is refused too.
  const backupHolder = spawn('sh', ['-c', 'exec 3<"$0"; exec sleep 600', m.image('backups', 'b.img')], { stdio: 'ignore' })
  t.teardown(() => { try { backupHolder.kill('SIGKILL') } catch {} })
  await new Promise(resolve => setTimeout(resolve, 300))
  oneLine(t, await vdiskfs('rm', m.image('backups', 'b.img')), /backups\/b\.img is in use by pid \d+ \(sleep\)/, 'rm of a backup')
  backupHolder.kill('SIGKILL')
  await waitForExit(backupHolder.pid ?? 0)
  t.is((await vdiskfs('rm', m.image('backups', 'b.img'))).code, 0)
  // rm --force: the holder keeps its file, and a new image of the same name is another file (another
  // inode: no page cache shared with the holder's).
  const forcedRm = await vdiskfs('rm', '--force', disk, '--json')
  t.is(forcedRm.code, 0, forcedRm.stderr)
  t.like(JSON.parse(forcedRm.stdout), { removed: { kind: 'disk', name: 'vm.img' }, stillOpen: true })
  t.false(fs.existsSync(disk))
  fs.writeFileSync(disk, 'another file')
  const held = `/proc/${String(holder.pid)}/fd/3`
  t.not(fs.statSync(held).ino, fs.statSync(disk).ino)
  t.is(fs.readFileSync(held, 'utf8'), 'hello')
  t.is(fs.readFileSync(disk, 'utf8'), 'another file')
  holder.kill('SIGKILL')
  await waitForExit(holder.pid ?? 0)
  t.is((await vdiskfs('rm', disk)).code, 0)
  t.deepEqual(await listed(m), [])
})

test.serial('rm --force under a loop-mounted ext4: the holder keeps its fsynced data; after it lets go, gc frees it', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'web.img')
  await run('truncate', ['-s', '256M', disk])
  await run('mkfs.ext4', ['-q', '-F', disk])
  const lm = await m.loopMount(disk)
  const first = crypto.randomBytes(8 * 1024 * 1024)
  writeSynced(path.join(lm, 'first'), first)
  oneLine(t, await vdiskfs('rm', disk), /disks\/web\.img is in use by loop device \/dev\/loop\d+/, 'rm without --force')
  // rm --force while the filesystem is being written (dd with O_DSYNC writes runs across it).
  const source = path.join(m.dir, 'stream.src')
  fs.writeFileSync(source, crypto.randomBytes(64 * 1024 * 1024))
  const writeStarted = Date.now()
  const writer = execFileAsync('dd', [`if=${source}`, `of=${path.join(lm, 'stream')}`, 'bs=256k', 'oflag=dsync', 'status=none'])
  await new Promise(resolve => setTimeout(resolve, 50))
  const forced = await vdiskfs('rm', '--force', disk)
  t.is(forced.code, 0, forced.stderr)
  const removedAtMs = Date.now() - writeStarted
  await writer
  t.log(`rm --force returned ${removedAtMs} ms into the write, which took ${Date.now() - writeStarted} ms`)
  // Gone from the namespace: not listed, not reachable, and its name is free again.
  t.false(fs.existsSync(disk))
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')), [])
  t.deepEqual(await listed(m), [])
  fs.writeFileSync(disk, 'a new disk')
  t.is(fs.readFileSync(disk, 'utf8'), 'a new disk')
  t.deepEqual(await listed(m), ['disk/web.img'])
  t.is((await vdiskfs('rm', disk)).code, 0)
  // The holder goes on writing; sealing and gc keep its data.
  const second = crypto.randomBytes(8 * 1024 * 1024)
  writeSynced(path.join(lm, 'second'), second)
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  t.is((await vdiskfs('gc', m.mnt)).code, 0)
  dropCaches()
  t.true(fs.readFileSync(path.join(lm, 'first')).equals(first), 'written before rm')
  t.true(fs.readFileSync(path.join(lm, 'second')).equals(second), 'written after rm')
  t.true(fs.readFileSync(path.join(lm, 'stream')).equals(fs.readFileSync(source)), 'written across rm')
  const third = crypto.randomBytes(4 * 1024 * 1024)
  writeSynced(path.join(lm, 'third'), third)
  t.true(fs.readFileSync(path.join(lm, 'third')).equals(third))
  t.deepEqual(await listed(m), [])
  // Let go: umount detaches the loop device (autoclear); the volume is removed at the last release.
  await m.loopUmount(lm)
  const poolBefore = duBytes(m.pool)
  let freed = 0
  for (let i = 0; i < 40 && freed === 0; i++) {
    const gc = await vdiskfs('gc', m.mnt, '--json')
    t.is(gc.code, 0, gc.stderr)
    const report = JSON.parse(gc.stdout) as { chunksFreed: number, extentsFreed: number }
    freed = report.chunksFreed + report.extentsFreed
    if (freed === 0) await new Promise(resolve => setTimeout(resolve, 100))
  }
  t.true(freed > 0, 'gc freed the removed volume\'s data')
  t.true(duBytes(m.pool) < poolBefore - 8 * 1024 * 1024, `the pool shrank (${poolBefore} -> ${duBytes(m.pool)})`)
  await m.umount()
  t.deepEqual(catalogNames(m), [], 'no volume row left')
})

test.serial('a volume removed while open does not come back after the daemon is killed', async t => {
  const m = await withMount(t)
  const forced = m.image('disks', 'forced.img')
  const plain = m.image('disks', 'plain.img')
  const kept = m.image('disks', 'kept.img')
  fs.writeFileSync(forced, crypto.randomBytes(256 * 1024))
  fs.writeFileSync(plain, crypto.randomBytes(256 * 1024))
  const keptData = crypto.randomBytes(256 * 1024)
  fs.writeFileSync(kept, keptData)
  const holder = await holdOpen(t, forced)
  t.is((await vdiskfs('rm', '--force', forced)).code, 0)
  // A backup cannot be unlinked through the mount: the daemon hides it itself. Its loop device reads on.
  t.is((await vdiskfs('backup', kept, 'b')).code, 0)
  const device = (await run('losetup', ['-r', '-f', '--show', m.image('backups', 'b.img')])).trim()
  t.teardown(() => { spawnSync('losetup', ['-d', device]) })
  oneLine(t, await vdiskfs('rm', m.image('backups', 'b.img')), /backups\/b\.img is in use by loop device/, 'rm of a backup on a loop device')
  const backupId = (JSON.parse((await vdiskfs('ls', m.mnt, '--json')).stdout) as Array<{ id: number, name: string }>).find(v => v.name === 'b.img')?.id
  t.is((await vdiskfs('rm', '--force', m.image('backups', 'b.img'))).code, 0)
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'backups')), [])
  t.false(fs.existsSync(m.image('backups', `.removed-${String(backupId)}`)), 'not reachable by its hidden name either')
  dropCaches()
  t.true(fs.readFileSync(device).equals(keptData), 'the loop device still reads the removed backup')
  // A plain rm through the mount while open: hidden (no name) until the last close.
  const fd = fs.openSync(plain, 'r+')
  fs.unlinkSync(plain)
  fs.writeSync(fd, Buffer.from('still mine'), 0, 10, 0)
  fs.fsyncSync(fd)
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')), ['kept.img'])
  t.deepEqual(await listed(m), ['disk/kept.img'])
  await m.kill()
  try { fs.closeSync(fd) } catch {}
  holder.kill('SIGKILL')
  spawnSync('losetup', ['-d', device])
  await waitForExit(holder.pid ?? 0)
  await m.mount()
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')), ['kept.img'])
  t.deepEqual(await listed(m), ['disk/kept.img'])
  fs.writeFileSync(forced, 'new')
  await m.umount()
  t.deepEqual(catalogNames(m).sort(), ['disk/forced.img', 'disk/kept.img'], 'the hidden volumes were dropped at start')
})

test.serial('a plain rm, or mv over, an open image through the mount: the holder keeps it until close, then it is gone', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'scratch.img')
  const data = crypto.randomBytes(2 * 1024 * 1024)
  writeSynced(disk, data)
  const fd = fs.openSync(disk, 'r+')
  fs.unlinkSync(disk)
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')), [])
  t.deepEqual(await listed(m), [])
  fs.writeFileSync(disk, 'new')
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')), ['scratch.img'])
  fs.writeSync(fd, Buffer.from('tail'), 0, 4, data.length)
  fs.fsyncSync(fd)
  const back = Buffer.alloc(data.length + 4)
  t.is(fs.readSync(fd, back, 0, back.length, 0), back.length)
  t.true(back.subarray(0, data.length).equals(data))
  t.is(back.subarray(data.length).toString(), 'tail')
  fs.closeSync(fd)
  await new Promise(resolve => setTimeout(resolve, 200))
  t.is((await vdiskfs('gc', m.mnt)).code, 0)
  // mv over an image held open: the holder keeps the old one until it closes.
  const other = m.image('disks', 'other.img')
  fs.writeFileSync(other, 'other')
  const held = fs.openSync(disk, 'r')
  fs.renameSync(other, disk)
  t.is(fs.readFileSync(disk, 'utf8'), 'other')
  const old = Buffer.alloc(3)
  t.is(fs.readSync(held, old, 0, 3, 0), 3)
  t.is(old.toString(), 'new')
  fs.closeSync(held)
  await new Promise(resolve => setTimeout(resolve, 200))
  t.deepEqual(await listed(m), ['disk/scratch.img'])
  await m.umount()
  t.deepEqual(catalogNames(m), ['disk/scratch.img'], 'only the last scratch.img is left')
})

test.serial('renaming a closed image to a .fuse_hidden name does not hide it: it stays visible under that name', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  fs.writeFileSync(disk, 'x')
  fs.renameSync(disk, m.image('disks', '.fuse_hidden123'))
  const libfuseLike = m.image('disks', '.fuse_hidden0000000100000002')
  fs.renameSync(m.image('disks', '.fuse_hidden123'), libfuseLike)
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')), ['.fuse_hidden0000000100000002'])
  t.deepEqual(await listed(m), ['disk/.fuse_hidden0000000100000002'])
  t.is(fs.readFileSync(libfuseLike, 'utf8'), 'x')
})

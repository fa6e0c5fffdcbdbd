/**
 * Backups and clones through a real mount (issue #3), with ext4 inside: isolation by checksums,
 * backups of clones and clones of those, growing a clone with resize2fs, a 50-deep chain, deleting a
 * backup under its clones, a backup taken under continuous writes, --freeze, restore, ls, xattrs and
 * name errors.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { call } from '../../src/control/client'
import { run, sha256, vdiskfs, withMount } from '../helpers/mount'

function writeAt (file: string, offset: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+')
  try { fs.writeSync(fd, data, 0, data.length, offset); fs.fsyncSync(fd) } finally { fs.closeSync(fd) }
}

async function cliOk (t: { is: (a: unknown, b: unknown, m?: string) => void }, ...args: string[]): Promise<string> {
  const result = await vdiskfs(...args)
  t.is(result.code, 0, `vdiskfs ${args.join(' ')}: ${result.stderr}`)
  return result.stdout
}

test.serial('backups and clones of an ext4 disk stay isolated, at any depth, across a remount', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'base.img')
  await run('truncate', ['-s', '256M', disk])
  await run('mkfs.ext4', ['-q', '-F', disk])
  let lm = await m.loopMount(disk)
  fs.writeFileSync(path.join(lm, 'shared.txt'), 'written before the backup\n')
  await m.loopUmount(lm)
  // 1. Back it up.
  await cliOk(t, 'backup', disk, 'base-mon')
  const backup = m.image('backups', 'base-mon.img')
  const backupSum = sha256(backup)
  t.is(backupSum, sha256(disk))
  t.is(fs.statSync(backup).mode & 0o777, 0o400)
  // 2. Two clones, each written through ext4.
  await cliOk(t, 'clone', backup, 'one')
  await cliOk(t, 'clone', backup, 'two')
  const clones = [m.image('clones', 'one.img'), m.image('clones', 'two.img')]
  for (const [i, clone] of clones.entries()) {
    lm = await m.loopMount(clone)
    t.is(fs.readFileSync(path.join(lm, 'shared.txt'), 'utf8'), 'written before the backup\n')
    fs.writeFileSync(path.join(lm, `clone${i}.bin`), crypto.randomBytes(3 * 1024 * 1024))
    await m.loopUmount(lm)
  }
  const cloneSums = clones.map(sha256)
  t.not(cloneSums[0], cloneSums[1])
  t.not(cloneSums[0], backupSum)
  // 3. Change the base disk: backup and clones do not change.
  lm = await m.loopMount(disk)
  fs.writeFileSync(path.join(lm, 'after.bin'), crypto.randomBytes(5 * 1024 * 1024))
  await m.loopUmount(lm)
  t.not(sha256(disk), backupSum)
  t.is(sha256(backup), backupSum)
  t.deepEqual(clones.map(sha256), cloneSums)
  // 4. Back up a clone, clone that backup.
  await cliOk(t, 'backup', clones[0], 'one-snap')
  await cliOk(t, 'clone', m.image('backups', 'one-snap.img'), 'grand')
  const grand = m.image('clones', 'grand.img')
  t.is(sha256(grand), cloneSums[0])
  // 5. Grow it, fsck, resize2fs, mount.
  await run('truncate', ['-s', '512M', grand])
  await run('e2fsck', ['-fy', grand])
  await run('resize2fs', [grand])
  lm = await m.loopMount(grand)
  t.true(fs.existsSync(path.join(lm, 'clone0.bin')))
  t.false(fs.existsSync(path.join(lm, 'clone1.bin')))
  const df = await run('df', ['-B1M', '--output=size', lm])
  t.true(Number(df.trim().split('\n')[1]) > 400)
  await m.loopUmount(lm)
  const grandSum = sha256(grand)
  // 6. Remount: every checksum holds.
  const diskSum = sha256(disk)
  await m.umount()
  await m.mount('--xattrs') // the xattrs below are opt-in
  t.is(sha256(disk), diskSum)
  t.is(sha256(backup), backupSum)
  t.deepEqual(clones.map(sha256), cloneSums)
  t.is(sha256(grand), grandSum)
  // Lineage and xattrs.
  const list = JSON.parse(await cliOk(t, 'ls', m.mnt, '--json')) as Array<{ kind: string, name: string, sourceId: number | null, id: number }>
  const byName = new Map(list.map(v => [v.name, v]))
  t.is(byName.get('grand.img')?.sourceId, byName.get('one-snap.img')?.id)
  t.is(byName.get('one-snap.img')?.sourceId, byName.get('one.img')?.id)
  t.is(byName.get('one.img')?.sourceId, byName.get('base-mon.img')?.id)
  t.is(byName.get('base-mon.img')?.sourceId, byName.get('base.img')?.id)
  const tree = await cliOk(t, 'ls', m.mnt)
  t.regex(tree, /disks\/base\.img[\s\S]*└─ backups\/base-mon\.img/)
  // Clone two was never backed up, so what it wrote is its alone (clone one's blocks are shared with one-snap).
  const attrs = await run('getfattr', ['-d', '-m', '-', clones[1]])
  t.regex(attrs, /user\.vdiskfs\.kind="clone"/)
  t.regex(attrs, /user\.vdiskfs\.source="backups\/base-mon\.img"/)
  const unique = Number(/user\.vdiskfs\.unique="(\d+)"/.exec(attrs)?.[1])
  const referenced = Number(/user\.vdiskfs\.referenced="(\d+)"/.exec(attrs)?.[1])
  t.true(unique >= 3 * 1024 * 1024 && unique < 16 * 1024 * 1024, `a clone stores only what was written to it (${unique})`)
  t.true(referenced > unique)
})

test.serial('a chain of 50 backup -> clone -> write steps reads back right at every level', async t => {
  const m = await withMount(t)
  let current = m.image('disks', 'root.img')
  // Each level stamps its own 256 KiB stretch (at its own offset within it), so the last clone shows
  // every level's write and each backup only the levels below it.
  const at = (level: number): number => level * 256 * 1024 + 4096 * (level % 8)
  await run('truncate', ['-s', '16M', current])
  const sums: Array<[string, string]> = []
  // The first two levels through the CLI; the rest over the control socket, as the CLI asks it (a
  // process start per call was most of this test's minute under make test's load).
  for (let level = 0; level < 50; level++) {
    writeAt(current, at(level), Buffer.from(`level ${level} `.repeat(300)))
    const backup = m.image('backups', `b${level}.img`)
    if (level < 2) {
      await cliOk(t, 'backup', current, `b${level}`)
      await cliOk(t, 'clone', backup, `c${level}`)
    } else {
      await call(m.mnt, 'backup', { sourceKind: 'clone', sourceName: `c${level - 1}.img`, name: `b${level}.img` })
      await call(m.mnt, 'clone', { sourceKind: 'backup', sourceName: `b${level}.img`, name: `c${level}.img` })
    }
    sums.push([backup, sha256(backup)])
    current = m.image('clones', `c${level}.img`)
  }
  for (const [file, sum] of sums) t.is(sha256(file), sum, file)
  const last = fs.readFileSync(current)
  for (let level = 0; level < 50; level++) {
    const stamp = `level ${level} `
    t.is(last.toString('latin1', at(level), at(level) + stamp.length), stamp)
  }
})

test.serial('deleting a backup keeps its clones intact; space comes back once they are gone', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=1M', 'count=32', 'conv=fsync', 'status=none'])
  await cliOk(t, 'backup', disk, 'b')
  await cliOk(t, 'clone', m.image('backups', 'b.img'), 'c')
  const clone = m.image('clones', 'c.img')
  const sum = sha256(clone)
  // The source is then overwritten: only the backup (and the clone) keep the old blocks.
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=1M', 'count=32', 'conv=fsync,notrunc', 'status=none'])
  const extentBytes = () => fs.readdirSync(path.join(m.pool, 'extents')).reduce((n, f) => n + fs.statSync(path.join(m.pool, 'extents', f)).blocks * 512, 0)
  t.is((await vdiskfs('rm', m.image('backups', 'b.img'))).code, 0)
  t.false(fs.existsSync(m.image('backups', 'b.img')))
  t.is(sha256(clone), sum)
  await cliOk(t, 'gc', m.mnt)
  t.is(sha256(clone), sum)
  const before = extentBytes()
  fs.unlinkSync(clone)
  await cliOk(t, 'gc', m.mnt)
  const after = extentBytes()
  t.true(before - after >= 30 * 1024 * 1024, `gc freed ${before - after} bytes`)
})

test.serial('a backup taken during continuous writes holds a prefix of the acknowledged writes', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'w.img')
  const records = 65536
  await run('truncate', ['-s', String((records + 1) * 4096), disk])
  // A writer process stamps record i into 4 KiB slot i, in order, and after each write returns prints i
  // and the time (ms since the epoch) the write started; until killed, or done (far more than needed).
  const writer = path.join(m.dir, 'writer.js')
  fs.writeFileSync(writer, `
    const fs = require('fs'); const fd = fs.openSync(process.argv[2], 'r+')
    for (let i = 1; i <= ${records}; i++) {
      const b = Buffer.alloc(4096, 0); b.write('record ' + i)
      const started = Date.now(); fs.writeSync(fd, b, 0, 4096, i * 4096); process.stdout.write(i + ' ' + started + '\\n')
    }
  `)
  const { spawn } = await import('node:child_process')
  const child = spawn(process.execPath, [writer, disk])
  const exited = new Promise(resolve => child.on('exit', resolve))
  let acknowledged = 0
  let finished = false
  const startedMs = new Map<number, number>()
  let partial = ''
  let latestStartMs = 0
  child.on('exit', () => { finished = true })
  child.stdout.on('data', chunk => {
    const lines = (partial + String(chunk)).split('\n')
    partial = lines.pop() ?? ''
    for (const line of lines) { const [i, ms] = line.split(' ').map(Number); startedMs.set(i, ms); acknowledged = i; latestStartMs = Math.max(latestStartMs, ms) }
  })
  const until = async (done: () => boolean): Promise<void> => {
    while (!done() && !finished) await new Promise(resolve => setTimeout(resolve, 5))
  }
  await until(() => acknowledged >= 500)
  const ackedBefore = acknowledged
  await cliOk(t, 'backup', disk, 'mid')
  const returnedMs = Date.now()
  // Let writes that started well after the backup returned land: none of them may be in it. Waited for
  // by their start times, not by a count: on a loaded machine the lines read next can all be of writes
  // that started before the backup returned, queued in the pipe while this process waited for a core.
  await until(() => latestStartMs > returnedMs + 5)
  const enough = acknowledged + 300
  await until(() => acknowledged >= enough)
  t.false(finished, `the writer wrote all ${records} records before the test could look`)
  child.kill('SIGKILL')
  await exited
  const image = fs.readFileSync(m.image('backups', 'mid.img'))
  let last = 0
  for (let i = 1; i <= records; i++) {
    const text = image.toString('latin1', i * 4096, i * 4096 + 14).replace(/\0.*$/, '')
    if (text === `record ${i}`) { t.is(last, i - 1, `record ${i} present after a gap`); last = i }
  }
  t.true(last >= ackedBefore, `backup holds ${last} records, ${ackedBefore} were acknowledged before it`)
  // 5 ms of slack for the two processes' clocks and the CLI's exit.
  const later = [...startedMs].find(([, ms]) => ms > returnedMs + 5)
  t.truthy(later, 'some write started after the backup returned')
  if (later !== undefined) t.true(last < later[0], `backup holds ${last} records; record ${later[0]} started ${later[1] - returnedMs} ms after it returned`)
})

test.serial('--freeze gives a clean filesystem; restore brings a backup back; bad names are refused', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'f.img')
  await run('truncate', ['-s', '128M', disk])
  await run('mkfs.ext4', ['-q', '-F', disk])
  const lm = await m.loopMount(disk)
  fs.writeFileSync(path.join(lm, 'a.txt'), 'frozen content\n')
  await cliOk(t, 'backup', disk, 'frozen', '--freeze', lm)
  // The filesystem was thawed: it takes writes again.
  fs.writeFileSync(path.join(lm, 'b.txt'), 'after thaw\n')
  await m.loopUmount(lm)
  const frozen = m.image('backups', 'frozen.img')
  await run('e2fsck', ['-fn', frozen])
  const backupSum = sha256(frozen)
  // Restore.
  t.not(sha256(disk), backupSum)
  await cliOk(t, 'restore', frozen, disk)
  t.is(sha256(disk), backupSum)
  const again = await m.loopMount(disk)
  t.is(fs.readFileSync(path.join(again, 'a.txt'), 'utf8'), 'frozen content\n')
  t.false(fs.existsSync(path.join(again, 'b.txt')))
  await m.loopUmount(again)
  // Names: taken, empty, '/', '.', '..', too long (256 bytes with .img), an option. Nothing changes.
  const before = fs.readdirSync(path.join(m.mnt, 'backups'))
  for (const name of ['frozen', '', 'a/b', '.', '..', 'x'.repeat(252), '-lead']) {
    const result = await vdiskfs('backup', disk, name)
    t.not(result.code, 0, `name '${name}'`)
    t.is(result.stderr.trim().split('\n').length, 1, `one line for '${name}'`)
    t.notRegex(result.stderr, /\bat .*\.js/, 'no stack trace')
  }
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'backups')), before)
  await cliOk(t, 'clone', frozen, 'taken')
  for (const args of [['clone', disk, 'x'], ['clone', frozen, 'taken'], ['restore', disk, disk], ['rm', m.image('disks', 'none.img')], ['backup', frozen, 'y']]) {
    const result = await vdiskfs(...args)
    t.not(result.code, 0, args.join(' '))
    t.is(result.stderr.trim().split('\n').length, 1)
  }
  // Plain rm of a backup is refused; the CLI removes it.
  t.throws(() => fs.unlinkSync(frozen), { code: 'EROFS' })
  t.throws(() => fs.truncateSync(frozen, 0), { code: 'EROFS' })
  await cliOk(t, 'rm', frozen)
  t.false(fs.existsSync(frozen))
})

/**
 * Backups as admins run them (issue #21), through a real mount: protection against prune and rm (with
 * and without --force, while open too), notes shown by ls and info, rename of any kind of volume
 * through the CLI (rename(2) of a backup through the mount stays refused), and all of it kept across a
 * remount; prune per source on a host that receives imports; consistency groups (one atomic backup of
 * several disks under writers on every disk, restore and clone of the group).
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { cli, isMounted, sha256, vdiskfs, logMatching, waitForExit, withMount } from '../helpers/mount'

async function cliOk (t: { is: (a: unknown, b: unknown, m?: string) => void }, ...args: string[]): Promise<string> {
  const result = await vdiskfs(...args)
  t.is(result.code, 0, `vdiskfs ${args.join(' ')}: ${result.stderr}`)
  return result.stdout
}

interface Listed { kind: string, name: string, protected: boolean, note: string | null }

async function listed (mnt: string): Promise<Listed[]> {
  const result = await vdiskfs('ls', mnt, '--json')
  if (result.code !== 0) throw new Error(`ls: ${result.stderr}`)
  return JSON.parse(result.stdout) as Listed[]
}

function writeAt (file: string, offset: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+')
  try { fs.writeSync(fd, data, 0, data.length, offset); fs.fsyncSync(fd) } finally { fs.closeSync(fd) }
}

test.serial('protect: prune keeps a protected backup, rm refuses it with and without --force (open or not) until unprotect; notes in ls and info; kept across a remount', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'web.img')
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, 4 * 1024 * 1024)
  for (const name of ['mon', 'tue', 'wed']) {
    writeAt(disk, 0, crypto.randomBytes(65536))
    await cliOk(t, 'backup', disk, name)
  }
  const mon = m.image('backups', 'mon.img')
  const protectedJson = JSON.parse(await cliOk(t, 'protect', mon, '--json')) as Listed
  t.true(protectedJson.protected)
  // protect is for backups.
  const onDisk = await vdiskfs('protect', disk)
  t.is(onDisk.code, 1)
  t.regex(onDisk.stderr, /not a backup/)

  // rm refuses it, with and without --force, and while it is held open.
  for (const extra of [[], ['--force']]) {
    const refused = await vdiskfs('rm', mon, ...extra)
    t.is(refused.code, 1, `rm ${extra.join(' ')}`)
    t.regex(refused.stderr, /^vdiskfs rm: backup mon\.img is protected: run vdiskfs unprotect on it first\n$/)
  }
  const fd = fs.openSync(mon, 'r')
  try {
    const refused = await vdiskfs('rm', mon, '--force')
    t.is(refused.code, 1)
    t.regex(refused.stderr, /protected/)
  } finally { fs.closeSync(fd) }
  t.true(fs.existsSync(mon))

  // prune keeps it, and it takes no rule's place: keep-last 1 keeps wed, removes tue.
  const pruned = JSON.parse(await cliOk(t, 'prune', m.mnt, '--keep-last', '1', '--json')) as { backups: Array<{ name: string, keep: boolean, rule: string | null, removed: boolean }> }
  t.deepEqual(pruned.backups.map(b => `${b.name}:${b.keep ? String(b.rule) : b.removed ? 'removed' : 'failed'}`).sort(), ['mon.img:protected', 'tue.img:removed', 'wed.img:last'])
  const text = await cliOk(t, 'prune', m.mnt, '--keep-last', '1', '--dry-run')
  t.regex(text, /mon\.img .* keep +protected/)

  // Notes: set, shown by ls and info (text and --json), cleared by ''.
  await cliOk(t, 'note', m.image('backups', 'wed.img'), 'before the upgrade to 12.4')
  await cliOk(t, 'note', disk, 'the web server')
  const notes = Object.fromEntries((await listed(m.mnt)).map(v => [`${v.kind}/${v.name}`, v.note]))
  t.deepEqual(notes, { 'disk/web.img': 'the web server', 'backup/mon.img': null, 'backup/wed.img': 'before the upgrade to 12.4' })
  t.regex(await cliOk(t, 'ls', m.mnt), /backups\/wed\.img .* note: before the upgrade to 12\.4/)
  t.regex(await cliOk(t, 'ls', m.mnt), /backups\/mon\.img .* protected/)
  const info = JSON.parse(await cliOk(t, 'info', m.image('backups', 'wed.img'), '--json')) as { note: string | null, protected: boolean }
  t.is(info.note, 'before the upgrade to 12.4')
  t.false(info.protected)
  t.regex(await cliOk(t, 'info', mon), /protected: +yes/)
  t.regex(await cliOk(t, 'info', m.image('backups', 'wed.img')), /note: +before the upgrade to 12\.4/)
  const tooLong = await vdiskfs('note', disk, 'x'.repeat(5000))
  t.is(tooLong.code, 1)
  t.regex(tooLong.stderr, /at most 4096 bytes/)
  await cliOk(t, 'note', disk, '')

  // Across a remount: protection and notes stay.
  await m.umount()
  await m.mount()
  const after = Object.fromEntries((await listed(m.mnt)).map(v => [`${v.kind}/${v.name}`, [v.protected, v.note]]))
  t.deepEqual(after, { 'disk/web.img': [false, null], 'backup/mon.img': [true, null], 'backup/wed.img': [false, 'before the upgrade to 12.4'] })
  t.is((await vdiskfs('rm', mon, '--force')).code, 1)

  // Unprotected, it goes.
  await cliOk(t, 'unprotect', mon)
  await cliOk(t, 'rm', mon)
  t.false(fs.existsSync(mon))
  const log = fs.readFileSync(`${m.pool}/daemon.log`, 'utf8')
  t.regex(log, /protect: backups\/mon\.img/)
  t.regex(log, /unprotect: backups\/mon\.img/)
})

test.serial('rename: a backup, a disk and a clone through the CLI, content and lineage kept; EXISTS for a taken name, BUSY while open; mv of a backup through the mount stays EROFS', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'vm1.img')
  fs.writeFileSync(disk, crypto.randomBytes(256 * 1024))
  await cliOk(t, 'backup', disk, 'monday')
  await cliOk(t, 'backup', disk, 'tuesday')
  const monday = m.image('backups', 'monday.img')
  const sum = sha256(monday)

  // A backup: the CLI renames it; rename(2) through the mount does not.
  t.throws(() => fs.renameSync(monday, m.image('backups', 'x.img')), { code: 'EROFS' })
  const renamed = JSON.parse(await cliOk(t, 'rename', monday, 'vm1-monday', '--json')) as { name: string, from: { name: string } }
  t.is(renamed.name, 'vm1-monday.img')
  t.is(renamed.from.name, 'monday.img')
  t.false(fs.existsSync(monday))
  t.is(sha256(m.image('backups', 'vm1-monday.img')), sum)

  // Never replaces: EXISTS, nothing changed.
  const taken = await vdiskfs('rename', m.image('backups', 'tuesday.img'), 'vm1-monday')
  t.is(taken.code, 1)
  t.regex(taken.stderr, /already exists/)
  t.true(fs.existsSync(m.image('backups', 'tuesday.img')))

  // A clone of the renamed backup; then the clone and the disk are renamed. Lineage follows ids.
  await cliOk(t, 'clone', m.image('backups', 'vm1-monday.img'), 'test')
  await cliOk(t, 'rename', m.image('clones', 'test.img'), 'test2')
  await cliOk(t, 'rename', disk, 'vm1-root')
  t.is(sha256(m.image('clones', 'test2.img')), sum)
  const info = JSON.parse(await cliOk(t, 'info', m.image('clones', 'test2.img'), '--json')) as { source: string }
  t.is(info.source, 'backups/vm1-monday.img')
  const backupInfo = JSON.parse(await cliOk(t, 'info', m.image('backups', 'tuesday.img'), '--json')) as { source: string }
  t.is(backupInfo.source, 'disks/vm1-root.img')

  // Open: BUSY, naming the holder.
  const fd = fs.openSync(m.image('disks', 'vm1-root.img'), 'r')
  try {
    const busy = await vdiskfs('rename', m.image('disks', 'vm1-root.img'), 'other')
    t.is(busy.code, 1)
    t.regex(busy.stderr, /in use by pid \d+/)
  } finally { fs.closeSync(fd) }

  // Kept across a remount.
  await m.umount()
  await m.mount()
  t.deepEqual((await listed(m.mnt)).map(v => `${v.kind}/${v.name}`).sort(), ['backup/tuesday.img', 'backup/vm1-monday.img', 'clone/test2.img', 'disk/vm1-root.img'])
  const log = fs.readFileSync(`${m.pool}/daemon.log`, 'utf8')
  t.regex(log, /rename: backups\/monday\.img -> backups\/vm1-monday\.img/)
  // Refusals through the mount are logged too.
  t.regex(log, /refused: rename of backup monday\.img to backup x\.img \(READ_ONLY\)/)
  t.regex(log, /rename refused \(EXISTS\): backup vm1-monday\.img already exists/)
})

test.serial('prune per source on a host that only receives imports: backups of two disks, exported and imported, group by their source identity there as here', async t => {
  const sender = await withMount(t)
  const receiver = await withMount(t)
  const streams = fs.mkdtempSync(`${sender.dir}/streams-`)
  const disks = ['vm1', 'vm2'].map(name => sender.image('disks', `${name}.img`))
  for (const disk of disks) { fs.writeFileSync(disk, ''); fs.truncateSync(disk, 1024 * 1024) }
  // Interleaved in time: vm1-1, vm2-1, vm1-2, vm2-2; each exported whole and imported.
  for (const i of [1, 2]) {
    for (const [d, disk] of disks.entries()) {
      writeAt(disk, 0, crypto.randomBytes(65536))
      const name = `vm${d + 1}-${i}`
      await cliOk(t, 'backup', disk, name)
      const file = `${streams}/${name}.vdstream`
      await cliOk(t, 'export', sender.image('backups', `${name}.img`), '-o', file)
      await cliOk(t, 'import', receiver.mnt, file, name)
    }
  }
  type Decisions = { backups: Array<{ name: string, group: string, keep: boolean, rule: string | null }> }
  const decide = async (mnt: string): Promise<string[]> => {
    const result = JSON.parse(await cliOk(t, 'prune', mnt, '--keep-last', '1', '--dry-run', '--json')) as Decisions
    return result.backups.map(b => `${b.name}:${b.group}:${b.keep ? 'keep' : 'remove'}`).sort()
  }
  const expected = ['vm1-1.img:disk vm1.img:remove', 'vm1-2.img:disk vm1.img:keep', 'vm2-1.img:disk vm2.img:remove', 'vm2-2.img:disk vm2.img:keep']
  t.deepEqual(await decide(sender.mnt), expected)
  t.deepEqual(await decide(receiver.mnt), expected)
  // The receiving host prunes for real: one backup per source is left.
  await cliOk(t, 'prune', receiver.mnt, '--keep-last', '1')
  t.deepEqual(fs.readdirSync(`${receiver.mnt}/backups`).sort(), ['vm1-2.img', 'vm2-2.img'])
  // Renaming the source on the sender does not split its group (it is told apart by identity).
  await cliOk(t, 'rename', disks[0], 'vm1-root')
  t.deepEqual((await decide(sender.mnt)).filter(line => line.startsWith('vm1')), ['vm1-1.img:disk vm1-root.img:remove', 'vm1-2.img:disk vm1-root.img:keep'])
})

/**
 * Writers on every disk, one worker thread each, sharing a global sequence: each write (one 4 KiB slot,
 * the disk's next) takes the next number and records with it the watermark: the highest number up to
 * which every write had returned when this one was issued. The main thread prints the count of
 * numbers taken every 20 ms.
 */
const groupWriter = `
const { Worker, isMainThread, workerData } = require('node:worker_threads')
const fs = require('node:fs')
const max = 1 << 20
if (isMainThread) {
  const shared = new SharedArrayBuffer(4 * (max + 2))
  const state = new Int32Array(shared)
  for (const file of process.argv.slice(2)) new Worker(__filename, { workerData: { file, shared } })
  setInterval(() => process.stdout.write(Atomics.load(state, 0) + '\\n'), 20)
} else {
  const state = new Int32Array(workerData.shared)
  const fd = fs.openSync(workerData.file, 'r+')
  const slots = fs.fstatSync(fd).size / 4096
  let watermark = 0
  for (let slot = 0; slot < slots; slot++) {
    while (Atomics.load(state, 2 + watermark + 1) === 1) watermark++
    const seq = Atomics.add(state, 0, 1) + 1
    if (seq >= max) break
    const block = Buffer.alloc(4096)
    block.write('seq ' + seq + ' after ' + watermark + '\\n')
    fs.writeSync(fd, block, 0, 4096, slot * 4096)
    Atomics.store(state, 2 + seq, 1)
  }
}
`

/** seq -> watermark of every record in `file`. */
function records (file: string, into = new Map<number, number>()): Map<number, number> {
  const data = fs.readFileSync(file)
  for (let at = 0; at < data.length; at += 4096) {
    const match = /^seq (\d+) after (\d+)\n/.exec(data.subarray(at, at + 64).toString('latin1'))
    if (match !== null) into.set(Number(match[1]), Number(match[2]))
  }
  return into
}

test.serial('a group backup under writers on every disk is one instant of all of them (the sequence numbers in it are a prefix-closed cut); --json; restore and clone of the whole group', async t => {
  const m = await withMount(t)
  const names = ['root', 'data', 'log']
  const disks = names.map(n => m.image('disks', `${n}.img`))
  for (const disk of disks) { fs.writeFileSync(disk, ''); fs.truncateSync(disk, 16 * 1024 * 1024) }
  const writerFile = path.join(m.dir, 'group-writer.js')
  fs.writeFileSync(writerFile, groupWriter)
  const child = spawn(process.execPath, [writerFile, ...disks], { stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = new Promise(resolve => child.on('exit', resolve))
  t.teardown(() => { child.kill('SIGKILL') })
  let taken = 0
  child.stdout.on('data', (chunk: Buffer) => { const last = chunk.toString().trim().split('\n').pop(); if (last !== undefined && last !== '') taken = Number(last) })
  const waitFor = async (count: number): Promise<void> => {
    // Up to 2 minutes: on a loaded machine (CI beside long runs) the writers reached 12,288 of 12,888 in 30 s.
    for (let i = 0; i < 12000 && taken < count; i++) await new Promise(resolve => setTimeout(resolve, 10))
    t.true(taken >= count, `the writers reached ${taken} writes, not ${count}`)
  }
  await waitFor(600)
  const made = JSON.parse(await cliOk(t, 'backup', ...disks, '--group', 'vm1-mon', '--json')) as Array<{ image: string, backup: string }>
  const atBackup = taken
  await waitFor(atBackup + 600)
  child.kill('SIGKILL')
  await exited
  t.deepEqual(made, disks.map((disk, i) => ({ image: disk, backup: m.image('backups', `vm1-mon-${names[i]}.img`) })))

  // The cut: every write in the group's backups has all writes up to its watermark in them too.
  const present = new Map<number, number>()
  for (const { backup } of made) {
    const before = present.size
    records(backup, present)
    t.true(present.size > before, `${backup} holds writes`)
  }
  let firstMissing = 1
  while (present.has(firstMissing)) firstMissing++
  const violations = [...present].filter(([, watermark]) => watermark >= firstMissing)
  t.deepEqual(violations.slice(0, 5), [], `writes in the group whose predecessors (up to ${firstMissing}, missing) are not`)
  // The writers went on after it: the disks hold more than the backups.
  const all = new Map<number, number>()
  for (const disk of disks) records(disk, all)
  t.true(all.size > present.size)

  // A second group of that name: EXISTS, nothing made.
  const again = await vdiskfs('backup', disks[0], '--group', 'vm1-mon')
  t.is(again.code, 1)
  t.regex(again.stderr, /already exists/)
  t.is(fs.readdirSync(path.join(m.mnt, 'backups')).length, 3)
  const info = JSON.parse(await cliOk(t, 'info', made[0].backup, '--json')) as { group: string | null }
  t.is(info.group, 'vm1-mon')

  // Restore of the whole group: every disk back to its backup; a clone of each.
  const sums = made.map(({ backup }) => sha256(backup))
  await cliOk(t, 'restore', '--group', 'vm1-mon', m.mnt)
  t.deepEqual(disks.map(sha256), sums)
  const clones = JSON.parse(await cliOk(t, 'clone', '--group', 'vm1-mon', m.mnt, 'test', '--json')) as Array<{ clone: string }>
  t.deepEqual(clones.map(c => c.clone), names.map(n => m.image('clones', `test-${n}.img`)))
  t.deepEqual(clones.map(c => sha256(c.clone)), sums)
  t.regex(fs.readFileSync(`${m.pool}/daemon.log`, 'utf8'), /backup group vm1-mon: disks\/root\.img -> backups\/vm1-mon-root\.img/)

  // Prune treats a group as one unit: a second group of the same disks, keep-last 1 removes the
  // first group whole, and a lone backup of one of the disks is a source of its own.
  await cliOk(t, 'backup', ...disks, '--group', 'vm1-tue')
  await cliOk(t, 'backup', disks[0], 'root-only')
  const pruned = JSON.parse(await cliOk(t, 'prune', m.mnt, '--keep-last', '1', '--json')) as { backups: Array<{ name: string, backupGroup: string | null, keep: boolean, removed: boolean }> }
  t.deepEqual(pruned.backups.map(b => `${b.name}:${String(b.backupGroup)}:${b.keep ? 'keep' : b.removed ? 'removed' : 'failed'}`).sort(), [
    'root-only.img:null:keep',
    ...names.map(n => `vm1-mon-${n}.img:vm1-mon:removed`),
    ...names.map(n => `vm1-tue-${n}.img:vm1-tue:keep`)
  ].sort())
  // The clones of the removed group keep what they read.
  t.deepEqual(clones.map(c => sha256(c.clone)), sums)
})

test.serial('a mount whose daemon was killed: status and ls say what happened and what to do, umount cleans it up, and the next daemon logs the unclean stop; refusals are logged', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  fs.writeFileSync(disk, crypto.randomBytes(65536))
  await cliOk(t, 'backup', disk, 'keep')
  await cliOk(t, 'protect', m.image('backups', 'keep.img'))
  t.is((await vdiskfs('rm', m.image('backups', 'keep.img'))).code, 1)
  // Without its holder, which would otherwise start a daemon that takes the mount over.
  m.killHolders()
  process.kill(m.pid, 'SIGKILL')
  t.true(await waitForExit(m.pid))
  t.true(isMounted(m.mnt), 'the kernel still lists the dead mount')
  for (const args of [['status', m.mnt], ['ls', m.mnt], ['info', disk]]) {
    const result = await vdiskfs(...args)
    t.is(result.code, 1, args[0])
    t.is(result.stderr, `vdiskfs ${args[0]}: the daemon of ${m.mnt} is gone (killed?) and its mount is left dead (ENOTCONN): ` +
      `run vdiskfs umount ${m.mnt} (or fusermount3 -uz ${m.mnt}) and mount the pool again (what was committed is kept)\n`)
  }
  const umount = await vdiskfs('umount', m.mnt, '--json')
  t.is(umount.code, 0, umount.stderr)
  t.like(JSON.parse(umount.stdout), { unmounted: m.mnt, daemonWasGone: true })
  t.false(isMounted(m.mnt))
  // Nothing is mounted now: the plain answer again.
  t.regex((await vdiskfs('status', m.mnt)).stderr, /is not a mounted vdiskfs pool/)
  await m.mount()
  t.is(sha256(disk), sha256(m.image('backups', 'keep.img')))
  const log = fs.readFileSync(`${m.pool}/daemon.log`, 'utf8')
  t.regex(log, /rm refused \(NOT_PERMITTED\): backup keep\.img is protected/)
  t.regex(log, /start: the last run of this pool did not stop cleanly \(its daemon was killed, or the host crashed\)/)
  // A clean stop is not reported as unclean.
  await m.umount()
  await m.mount()
  t.is(fs.readFileSync(`${m.pool}/daemon.log`, 'utf8').match(/did not stop cleanly/g)?.length, 1)
})

test.serial('small items: a running export is a job in status; a refused --block-size leaves no pool directory; help lines fit 100 columns', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'big.img')
  fs.writeFileSync(disk, crypto.randomBytes(24 * 1024 * 1024))
  await cliOk(t, 'backup', disk, 'big')
  // An export into a pipe nobody reads yet: it waits, and status shows it as a job with its progress.
  const child = spawn(cli, ['export', m.image('backups', 'big.img'), '-o', '-'], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { child.kill('SIGKILL') })
  child.stdout.pause()
  let jobs: Array<{ name: string, progress: { done: number, total: number } | null }> = []
  for (let i = 0; i < 200 && !jobs.some(j => j.name === 'export big.img'); i++) {
    await new Promise(resolve => setTimeout(resolve, 50))
    jobs = (JSON.parse(await cliOk(t, 'status', m.mnt, '--json')) as { jobs: typeof jobs }).jobs
  }
  const job = jobs.find(j => j.name === 'export big.img')
  t.truthy(job, JSON.stringify(jobs))
  t.is(job?.progress?.total, 24 * 1024 * 1024 / 65536)
  t.regex(await cliOk(t, 'status', m.mnt), /export big\.img/)
  let streamBytes = 0
  child.stdout.on('data', (chunk: Buffer) => { streamBytes += chunk.length })
  child.stdout.resume()
  t.is(await new Promise(resolve => child.on('exit', resolve)), 0)
  t.true(streamBytes > 24 * 1024 * 1024)
  t.false((JSON.parse(await cliOk(t, 'status', m.mnt, '--json')) as { jobs: typeof jobs }).jobs.some(j => j.name.startsWith('export')))

  const pool = path.join(m.dir, 'bad-pool')
  fs.mkdirSync(path.join(m.dir, 'bad-mnt'))
  const refused = await vdiskfs('mount', pool, path.join(m.dir, 'bad-mnt'), '--block-size', '3k')
  t.is(refused.code, 1)
  t.is(refused.stderr, 'vdiskfs mount: invalid block size 3072: use a power of two from 4K to 1M\n')
  t.false(fs.existsSync(pool), 'no pool directory was made')

  const help = await vdiskfs('--help')
  t.is(help.code, 0)
  const widest = Math.max(...help.stdout.split('\n').map(line => line.length))
  t.true(widest <= 100, `a help line of ${widest} characters`)
  // And each command's own --help, usage lines included (prune's was 154 characters).
  for (const command of ['mount', 'backup', 'restore', 'clone', 'export', 'import', 'prune', 'remote add', 'push', 'pull']) {
    const own = await vdiskfs(...command.split(' '), '--help')
    t.is(own.code, 0)
    const lines = own.stdout.split('\n')
    t.true(lines.every(line => line.length <= 100), `vdiskfs ${command} --help: a line of ${Math.max(...lines.map(line => line.length))} characters`)
  }
})

test.serial('operations a backup refuses through the mount (truncate, chmod +w, a new mtime) fail with EROFS and are logged with their reason', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'db.img')
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, 1024 * 1024)
  await cliOk(t, 'backup', disk, 'fri')
  const backup = m.image('backups', 'fri.img')
  t.throws(() => fs.truncateSync(backup, 4096), { code: 'EROFS' })
  t.throws(() => fs.chmodSync(backup, 0o644), { code: 'EROFS' })
  t.throws(() => fs.utimesSync(backup, new Date(), new Date(1000)), { code: 'EROFS' })
  t.is(fs.statSync(backup).size, 1024 * 1024)
  // Node's truncateSync opens the file for writing first (refused there); truncate(2) would be a setattr.
  const expected = [/refused: (truncate to 4096 bytes|open for writing) of backup fri\.img \(READ_ONLY\)/, /refused: chmod 644 of backup fri\.img \(READ_ONLY\)/,
    /refused: change of the modification time of backup fri\.img \(READ_ONLY\)/]
  const log = await logMatching(m.pool, expected)
  for (const pattern of expected) t.regex(log, pattern)
})

/**
 * Bad input everywhere (issue #5): every CLI command with wrong argument counts, missing volumes,
 * duplicate and malformed names gets one line on stderr and a non-zero exit, never a stack trace or a
 * hang; every refused filesystem operation gets its errno; --help and --version answer.
 */
import test from 'ava'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import os from 'node:os'
import { cli, run, vdiskfs, withMount } from '../helpers/mount'

const commands = ['mount', 'umount', 'backup', 'clone', 'restore', 'rm', 'ls', 'du', 'sync', 'verify', 'repair', 'gc']

function oneCleanLine (t: any, result: { code: number, stderr: string }, what: string): void {
  t.not(result.code, 0, `${what} exits non-zero`)
  t.is(result.stderr.trim().split('\n').length, 1, `${what}: one line (${result.stderr})`)
  t.regex(result.stderr, /^vdiskfs/, what)
  t.notRegex(result.stderr, /\n\s+at |internal error/, `${what}: no stack trace`)
}

test.serial('help and version answer for every command', async t => {
  const help = await vdiskfs('--help')
  t.is(help.code, 0)
  for (const command of commands) {
    t.regex(help.stdout, new RegExp(`\\b${command}\\b`))
    const own = await vdiskfs(command, '--help')
    t.is(own.code, 0, command)
    t.regex(own.stdout, new RegExp(`^usage: vdiskfs ${command}`))
  }
  t.regex((await vdiskfs('--version')).stdout, /^vdiskfs \d+\.\d+\.\d+/)
  oneCleanLine(t, await vdiskfs('frobnicate'), 'unknown command')
  oneCleanLine(t, await vdiskfs('ls', '--bogus', 'x'), 'unknown option')
})

test.serial('a missing /dev/fuse or FUSE 3 addon is named in one line, with what to do', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-nofuse-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.mkdirSync(path.join(dir, 'mnt'))
  const run = (env: Record<string, string>) => spawnSync(cli, ['mount', path.join(dir, 'pool'), path.join(dir, 'mnt')], { encoding: 'utf8', env: { ...process.env, ...env } })
  const noDevice = run({ VDISKFS_DEV_FUSE: path.join(dir, 'no-such-device') })
  oneCleanLine(t, { code: noDevice.status ?? 1, stderr: noDevice.stderr }, 'missing /dev/fuse')
  t.regex(noDevice.stderr, /no-such-device is missing: load the fuse module/)
  const noAddon = run({ VDISKFS_FUSE3_ADDON: path.join(dir, 'vdiskfs_fuse3.node') })
  oneCleanLine(t, { code: noAddon.status ?? 1, stderr: noAddon.stderr }, 'missing FUSE 3 addon')
  t.regex(noAddon.stderr, /FUSE 3 addon is missing or does not load .*install libfuse3-3 and run make native/)
  t.false(fs.existsSync(path.join(dir, 'pool')), 'nothing was created')
})

test.serial('every command refuses bad arguments with one clean line', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  await run('truncate', ['-s', '10M', disk])
  t.is((await vdiskfs('backup', disk, 'b')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'b.img'), 'c')).code, 0)
  const backup = m.image('backups', 'b.img')
  const before = JSON.stringify(JSON.parse((await vdiskfs('ls', m.mnt, '--json')).stdout).map((v: { name: string, kind: string }) => `${v.kind}/${v.name}`).sort())
  // Wrong argument counts.
  for (const command of commands) {
    oneCleanLine(t, await vdiskfs(command), `${command} with no arguments`)
    oneCleanLine(t, await vdiskfs(command, 'a', 'b', 'c', 'd'), `${command} with four arguments`)
  }
  // Missing volumes and mounts.
  oneCleanLine(t, await vdiskfs('backup', m.image('disks', 'none.img'), 'x'), 'backup of a missing disk')
  oneCleanLine(t, await vdiskfs('clone', m.image('backups', 'none.img'), 'x'), 'clone of a missing backup')
  oneCleanLine(t, await vdiskfs('restore', m.image('backups', 'none.img'), disk), 'restore from a missing backup')
  oneCleanLine(t, await vdiskfs('restore', backup, m.image('disks', 'none.img')), 'restore onto a missing disk')
  oneCleanLine(t, await vdiskfs('rm', m.image('clones', 'none.img')), 'rm of a missing clone')
  oneCleanLine(t, await vdiskfs('ls', m.dir), 'ls of a directory that is not a mount')
  oneCleanLine(t, await vdiskfs('backup', '/etc/passwd', 'x'), 'backup of a file outside any mount')
  oneCleanLine(t, await vdiskfs('umount', m.dir), 'umount of something not mounted')
  oneCleanLine(t, await vdiskfs('verify', '/nonexistent'), 'verify of nothing')
  oneCleanLine(t, await vdiskfs('repair', m.dir), 'repair of a directory that is not a pool')
  oneCleanLine(t, await vdiskfs('repair', m.pool), 'repair of a mounted pool')
  oneCleanLine(t, await vdiskfs('mount', m.pool, m.mnt), 'mount onto a mounted mountpoint')
  oneCleanLine(t, await vdiskfs('mount', path.join(m.dir, 'p2'), path.join(m.dir, 'missing')), 'mount onto a missing mountpoint')
  oneCleanLine(t, await vdiskfs('mount', path.join(m.dir, 'p3'), m.mnt + '/disks/d.img'), 'mount onto a file')
  oneCleanLine(t, await vdiskfs('mount', path.join(m.dir, 'p4'), m.dir, '--block-size', '3000'), 'a bad block size')
  // Names: duplicate, '/', '..', '.', empty, too long (names.test.ts has those that are accepted).
  oneCleanLine(t, await vdiskfs('backup', disk, 'b'), 'a backup name that is taken')
  oneCleanLine(t, await vdiskfs('clone', backup, 'c'), 'a clone name that is taken')
  const names = ['a/b', '..', '.', '', 'x'.repeat(252)]
  for (const name of names) {
    oneCleanLine(t, await vdiskfs('backup', disk, name), `backup named ${JSON.stringify(name)}`)
    oneCleanLine(t, await vdiskfs('clone', backup, name), `clone named ${JSON.stringify(name)}`)
  }
  // Kinds that do not fit.
  oneCleanLine(t, await vdiskfs('backup', backup, 'x'), 'backup of a backup')
  oneCleanLine(t, await vdiskfs('clone', disk, 'x'), 'clone of a disk')
  oneCleanLine(t, await vdiskfs('restore', disk, m.image('clones', 'c.img')), 'restore from a disk')
  oneCleanLine(t, await vdiskfs('restore', backup, backup), 'restore onto a backup')
  const after = JSON.stringify(JSON.parse((await vdiskfs('ls', m.mnt, '--json')).stdout).map((v: { name: string, kind: string }) => `${v.kind}/${v.name}`).sort())
  t.is(after, before, 'nothing changed')
  t.false(fs.existsSync(path.join(m.dir, 'p2')) && fs.readdirSync(path.join(m.dir, 'p2')).length > 0)
})

test.serial('refused filesystem operations get the right errno', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  fs.writeFileSync(disk, 'x')
  t.is((await vdiskfs('backup', disk, 'b')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'b.img'), 'c')).code, 0)
  const backup = m.image('backups', 'b.img')
  const code = (f: () => unknown): string => { try { f(); return 'ok' } catch (err) { return (err as NodeJS.ErrnoException).code ?? 'error' } }
  t.is(code(() => fs.openSync(backup, 'r+')), 'EROFS')
  t.is(code(() => fs.writeFileSync(backup, 'y')), 'EROFS')
  t.is(code(() => fs.truncateSync(backup, 0)), 'EROFS')
  t.is(code(() => fs.unlinkSync(backup)), 'EROFS')
  t.is(code(() => fs.renameSync(backup, m.image('backups', 'b2.img'))), 'EROFS')
  t.is(code(() => fs.utimesSync(backup, new Date(), new Date())), 'EROFS')
  t.is(code(() => fs.mkdirSync(m.image('disks', 'dir'))), 'EPERM')
  t.is(code(() => fs.mkdirSync(m.image('clones', 'dir'))), 'EPERM')
  t.is(code(() => fs.rmdirSync(path.join(m.mnt, 'disks'))), 'EPERM')
  t.is(code(() => fs.renameSync(disk, m.image('clones', 'moved.img'))), 'EXDEV')
  t.is(code(() => fs.renameSync(m.image('clones', 'c.img'), m.image('disks', 'c.img'))), 'EXDEV')
  t.is(code(() => fs.linkSync(disk, m.image('disks', 'hard.img'))), 'EPERM')
  t.is(code(() => fs.symlinkSync('d.img', m.image('disks', 'sym.img'))), 'EPERM')
  t.is(spawnSync('mkfifo', [m.image('disks', 'fifo')]).status !== 0, true)
  t.is(spawnSync('mknod', [m.image('disks', 'dev'), 'b', '7', '0']).status !== 0, true)
  t.is(code(() => fs.writeFileSync(m.image('clones', 'new.img'), 'x')), 'EPERM')
  t.is(code(() => fs.writeFileSync(path.join(m.mnt, 'top.img'), 'x')), 'EPERM')
  t.is(code(() => fs.writeFileSync(m.image('disks', 'ü'.repeat(128)), 'x')), 'EINVAL')
  t.is(code(() => fs.readFileSync(m.image('disks', 'missing.img'))), 'ENOENT')
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')), ['d.img'])
  t.is(fs.readFileSync(disk, 'utf8'), 'x')
})

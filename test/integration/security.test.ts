/**
 * Nobody gets in where they don't belong (issue #9): a real unprivileged user (made here with useradd,
 * driven with runuser) gets EACCES/EPERM for every attack on a root-owned mount, on the pool's files
 * and on the control socket; modes and owners are kept in the catalog and enforced by the kernel
 * (default_permissions); the pool and the socket stay private whatever the umask; a non-root user can
 * mount and unmount a pool of their own.
 */
import test, { ExecutionContext } from 'ava'
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { TestMount, cli, holderPidsOf, isMounted, repoRoot, run, sha256, vdiskfs, waitForExit, withMount } from '../helpers/mount'
import { ensureUser, testUser } from '../helpers/users'
import { socketPathFor } from '../../src/control/protocol'
import Database from 'better-sqlite3'

const user = testUser

interface Outcome { code: number, stdout: string, stderr: string }

/** Runs a command as the test user. */
function asUser (command: string, args: string[], env: Record<string, string> = {}): Outcome {
  const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`)
  const result = spawnSync('runuser', ['-u', user, '--', 'env', ...envArgs, command, ...args], { encoding: 'utf8', cwd: '/', timeout: 60000 })
  return { code: result.status ?? 1, stdout: result.stdout ?? '', stderr: result.stderr ?? '' }
}

const deniedPattern = /Permission denied|Operation not permitted|EACCES|EPERM/

function denied (t: ExecutionContext, outcome: Outcome, what: string): void {
  t.not(outcome.code, 0, `${what} must fail`)
  t.true(deniedPattern.test(outcome.stderr), `${what}: EACCES/EPERM, got: ${outcome.stderr.trim().slice(0, 200)}`)
}

/**
 * Lets the test user reach the mountpoint: the temporary directory gets o+x (search, not read). The
 * pool directory inside it is not touched: it must keep other users out on its own.
 */
function letUserTraverse (mount: TestMount): void {
  fs.chmodSync(mount.dir, 0o711)
}

function statOf (file: string): { mode: number, uid: number, gid: number } {
  const stat = fs.statSync(file)
  return { mode: stat.mode & 0o7777, uid: stat.uid, gid: stat.gid }
}

/** Connects to a Unix socket as the test user; prints `connected` or the error code. */
function connectAsUser (socket: string): Outcome {
  const script = `require('net').connect(${JSON.stringify(socket)}).on('connect', () => { console.log('connected'); process.exit(0) }).on('error', e => { console.error(e.code); process.exit(3) })`
  return asUser(process.execPath, ['-e', script])
}

/** Mounts `mount` through `sh -c 'umask MASK; exec vdiskfs mount ...'`. */
async function mountWithUmask (mount: TestMount, mask: string, ...extra: string[]): Promise<void> {
  const quoted = [cli, 'mount', mount.pool, mount.mnt, ...extra].map(a => `'${a}'`).join(' ')
  const child = spawn('sh', ['-c', `umask ${mask}; exec ${quoted}`], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', chunk => { stderr += String(chunk) })
  const code = await new Promise<number | null>(resolve => child.on('exit', resolve))
  if (code !== 0) throw new Error(`mount failed: ${stderr}`)
  mount.pid = Number(fs.readFileSync(path.join(mount.pool, 'daemon.pid'), 'utf8'))
}

/** A fresh pool mounted by a daemon started under umask `mask`, its parent traversable by the test user. */
async function mountUnder (t: ExecutionContext, mask: string): Promise<TestMount> {
  const dir = fs.mkdtempSync(path.join(process.env.VDISKFS_TEST_DIR ?? os.tmpdir(), 'vdiskfs-test-'))
  const mount = new TestMount(dir, path.join(dir, 'pool'), path.join(dir, 'mnt'))
  fs.mkdirSync(mount.mnt)
  t.teardown(async () => await mount.cleanup())
  letUserTraverse(mount)
  await mountWithUmask(mount, mask)
  return mount
}

/** Every directory and file under `dir` (the directory included), as [path, stat]. */
function walk (dir: string): Array<[string, fs.Stats]> {
  const found: Array<[string, fs.Stats]> = [[dir, fs.lstatSync(dir)]]
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name)
    if (entry.isDirectory()) found.push(...walk(full))
    else found.push([full, fs.lstatSync(full)])
  }
  return found
}

/** Every directory in the pool is 0700 and every file 0600; packs, extents, log and pid among them. */
function expectPrivatePool (t: ExecutionContext, pool: string): void {
  const entries = walk(pool)
  t.true(entries.some(([file]) => file.includes('/packs/')) && entries.some(([file]) => file.includes('/extents/')), 'packs and extents exist')
  t.true(entries.some(([file]) => file.endsWith('daemon.log')) && entries.some(([file]) => file.endsWith('daemon.pid')))
  for (const [file, stat] of entries) {
    const expected = stat.isDirectory() ? 0o700 : 0o600
    t.is((stat.mode & 0o777).toString(8), expected.toString(8), `${file} is ${expected.toString(8)}`)
  }
}

/** A disk with data, a backup of it and a clone of the backup. */
async function populate (mount: TestMount): Promise<void> {
  const disk = mount.image('disks', 'a.img')
  await run('truncate', ['-s', '4M', disk])
  await run('dd', ['if=/dev/urandom', `of=${disk}`, 'bs=64k', 'count=16', 'conv=notrunc,fsync', 'status=none'])
  const backup = await vdiskfs('backup', disk, 'b')
  if (backup.code !== 0) throw new Error(backup.stderr)
  const clone = await vdiskfs('clone', mount.image('backups', 'b.img'), 'c')
  if (clone.code !== 0) throw new Error(clone.stderr)
}

test.serial('without --allow-other another user cannot even stat the mount root', async t => {
  ensureUser()
  const mount = await withMount(t)
  letUserTraverse(mount)
  await populate(mount)
  denied(t, asUser('stat', [mount.mnt]), 'stat of the mount root')
  denied(t, asUser('cat', [mount.image('disks', 'a.img')]), 'read of a disk')
  t.true(fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some(line => line.includes(` ${mount.mnt} `) && /default_permissions/.test(line)), 'mounted with default_permissions')
})

test.serial('with --allow-other, the kernel enforces each image\'s owner and mode', async t => {
  ensureUser()
  const mount = await withMount(t, '--allow-other')
  letUserTraverse(mount)
  await populate(mount)
  const disk = mount.image('disks', 'a.img')
  const backup = mount.image('backups', 'b.img')
  const clone = mount.image('clones', 'c.img')
  const before = sha256(disk)
  t.deepEqual(statOf(disk), { mode: 0o600, uid: 0, gid: 0 })
  t.deepEqual(statOf(backup), { mode: 0o400, uid: 0, gid: 0 })
  t.deepEqual(statOf(clone), { mode: 0o600, uid: 0, gid: 0 })
  t.is(asUser('stat', [mount.mnt]).code, 0, 'the root is reachable with --allow-other')

  for (const image of [disk, backup, clone]) denied(t, asUser('cat', [image]), `read of ${image}`)
  for (const image of [disk, clone]) {
    denied(t, asUser('dd', ['if=/dev/zero', `of=${image}`, 'bs=4k', 'count=1', 'conv=notrunc', 'status=none']), `write to ${image}`)
    denied(t, asUser('truncate', ['-s', '0', image]), `truncate of ${image}`)
  }
  denied(t, asUser('mv', [disk, mount.image('disks', 'x.img')]), 'rename of a disk')
  denied(t, asUser('mv', [clone, mount.image('clones', 'x.img')]), 'rename of a clone')
  denied(t, asUser('rm', ['-f', disk]), 'unlink of a disk')
  denied(t, asUser('rm', ['-f', clone]), 'unlink of a clone')
  denied(t, asUser('truncate', ['-s', '1M', mount.image('disks', 'new.img')]), 'creating a disk')
  denied(t, asUser('chmod', ['0666', disk]), 'chmod of somebody else\'s disk')
  denied(t, asUser('touch', [disk]), 'utimens of somebody else\'s disk')

  t.is(sha256(disk), before, 'the disk is unchanged')
  t.true(fs.existsSync(clone))
  t.false(fs.existsSync(mount.image('disks', 'new.img')))
  t.deepEqual(fs.readdirSync(path.join(mount.mnt, 'disks')), ['a.img'])
})

test.serial('pool files and the control socket are out of another user\'s reach (umask 022)', async t => {
  ensureUser()
  const mount = await mountUnder(t, '022')
  await populate(mount)
  const synced = await vdiskfs('sync', mount.mnt)
  t.is(synced.code, 0, synced.stderr)
  await run('dd', ['if=/dev/urandom', `of=${mount.image('disks', 'a.img')}`, 'bs=64k', 'count=1', 'conv=notrunc,fsync', 'status=none'])
  const extents = fs.readdirSync(path.join(mount.pool, 'extents'))
  const packs = fs.readdirSync(path.join(mount.pool, 'packs'))
  t.true(extents.length > 0 && packs.length > 0, 'the pool has extents and packs')
  expectPrivatePool(t, mount.pool)
  denied(t, asUser('ls', [mount.pool]), 'listing the pool')
  for (const file of ['catalog.sqlite', 'catalog.sqlite-wal', 'vdiskfs-pool.json', 'daemon.log', `extents/${extents[0]}`, `packs/${packs[0]}`]) {
    denied(t, asUser('cat', [path.join(mount.pool, file)]), `reading ${file}`)
  }
  const socket = socketPathFor(mount.mnt)
  t.true(fs.existsSync(socket))
  denied(t, connectAsUser(socket), 'connecting to the control socket')
  const rm = asUser(cli, ['rm', mount.image('backups', 'b.img')], { VDISKFS_RUN_DIR: path.dirname(socket) })
  t.not(rm.code, 0, 'vdiskfs rm as another user fails')
  const mine = asUser(cli, ['rm', mount.image('backups', 'b.img')])
  t.not(mine.code, 0, 'vdiskfs rm as another user, with its own control directory, fails')
  t.true(fs.existsSync(mount.image('backups', 'b.img')), 'the backup is still there')
})

test.serial('under umask 000 the pool is 0700 with 0600 files and the socket 0600 in a 0700 directory', async t => {
  ensureUser()
  const mount = await mountUnder(t, '000')
  await populate(mount)
  t.is((await vdiskfs('sync', mount.mnt)).code, 0)
  await run('dd', ['if=/dev/urandom', `of=${mount.image('disks', 'a.img')}`, 'bs=64k', 'count=1', 'conv=notrunc,fsync', 'status=none'])
  expectPrivatePool(t, mount.pool)
  const socket = socketPathFor(mount.mnt)
  t.is((fs.statSync(socket).mode & 0o777).toString(8), '600', 'the socket is 0600')
  t.is((fs.statSync(path.dirname(socket)).mode & 0o777).toString(8), '700', 'its directory is 0700')
  denied(t, connectAsUser(socket), 'connecting to the control socket')
  const rm = asUser(cli, ['rm', mount.image('backups', 'b.img')], { VDISKFS_RUN_DIR: path.dirname(socket) })
  t.not(rm.code, 0, `vdiskfs rm as another user fails (${rm.stderr.trim()})`)
  t.true(fs.existsSync(mount.image('backups', 'b.img')), 'the backup is still there')
  const list = await vdiskfs('ls', mount.mnt, '--json')
  t.true((JSON.parse(list.stdout) as Array<{ name: string }>).some(v => v.name === 'b.img'))
})

test.serial('chmod and chown are kept across a remount, and the kernel uses the stored mode', async t => {
  const account = ensureUser()
  const mount = await withMount(t, '--allow-other')
  letUserTraverse(mount)
  await populate(mount)
  const disk = mount.image('disks', 'a.img')
  const backup = mount.image('backups', 'b.img')
  denied(t, asUser('cat', [disk]), 'read before chmod')
  await run('chmod', ['0644', disk])
  t.is(statOf(disk).mode, 0o644)
  const read = spawnSync('runuser', ['-u', user, '--', 'sha256sum', disk], { encoding: 'utf8' })
  t.is(read.status, 0, `read after chmod 0644: ${read.stderr}`)
  t.is(read.stdout.split(' ')[0], sha256(disk))
  denied(t, asUser('dd', ['if=/dev/zero', `of=${disk}`, 'bs=4k', 'count=1', 'conv=notrunc', 'status=none']), 'write with 0644')

  // Backups never get write bits; read bits may change.
  const refused = spawnSync('chmod', ['0644', backup], { encoding: 'utf8' })
  t.not(refused.status, 0, 'chmod u+w of a backup is refused')
  t.regex(refused.stderr, /Read-only file system/)
  await run('chmod', ['0444', backup])
  t.is(statOf(backup).mode, 0o444)

  // Hand the disk to the test user, as a VM manager hands images to its qemu user.
  await run('chown', [`${account.uid}:${account.gid}`, disk])
  await run('chmod', ['0600', disk])
  t.deepEqual(statOf(disk), { mode: 0o600, uid: account.uid, gid: account.gid })
  t.is(asUser('dd', ['if=/dev/zero', `of=${disk}`, 'bs=4k', 'count=1', 'conv=notrunc', 'status=none']).code, 0, 'the new owner writes')
  t.is(asUser('chmod', ['0640', disk]).code, 0, 'the owner may chmod')
  denied(t, asUser('chown', ['0', disk]), 'giving a file away')

  // Backups and clones of it take its owner.
  t.is((await vdiskfs('backup', disk, 'b2')).code, 0)
  t.is((await vdiskfs('clone', mount.image('backups', 'b2.img'), 'c2')).code, 0)
  t.deepEqual(statOf(mount.image('backups', 'b2.img')), { mode: 0o400, uid: account.uid, gid: account.gid })
  t.deepEqual(statOf(mount.image('clones', 'c2.img')), { mode: 0o600, uid: account.uid, gid: account.gid })
  t.is(asUser('sha256sum', [mount.image('clones', 'c2.img')]).code, 0, 'the owner reads the clone')

  await mount.umount()
  await mount.mount('--allow-other')
  t.deepEqual(statOf(disk), { mode: 0o640, uid: account.uid, gid: account.gid }, 'kept across a remount')
  t.deepEqual(statOf(backup), { mode: 0o444, uid: 0, gid: 0 })
  t.deepEqual(statOf(mount.image('clones', 'c.img')), { mode: 0o600, uid: 0, gid: 0 })
  t.is(asUser('sha256sum', [backup]).code, 0, 'the 0444 backup is readable by others after the remount')
})

test.serial('a non-root user mounts a pool of their own, whose mount outlives a SIGKILL of its daemon, and unmounts it', async t => {
  const account = ensureUser()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-user-'))
  fs.chownSync(dir, account.uid, account.gid)
  const pool = path.join(dir, 'pool')
  const mnt = path.join(dir, 'mnt')
  asUser('mkdir', [mnt])
  let pid = 0
  const devFuse = '/dev/fuse'
  const devFuseMode = fs.statSync(devFuse).mode & 0o777
  t.teardown(async () => {
    fs.chmodSync(devFuse, devFuseMode)
    for (const holder of holderPidsOf(pool)) { try { process.kill(holder, 'SIGKILL') } catch {} }
    if (pid !== 0) { try { process.kill(pid, 'SIGKILL') } catch {} await waitForExit(pid) }
    spawnSync('fusermount3', ['-uz', mnt])
    fs.rmSync(dir, { recursive: true, force: true })
  })
  // Unprivileged FUSE needs read and write access to /dev/fuse (0666 on Debian). Where it is 0600, the
  // mount must say so in one line; then the test gives it the usual mode for the rest of the test.
  if ((devFuseMode & 0o006) !== 0o006) {
    const refused = asUser(cli, ['mount', pool, mnt])
    t.not(refused.code, 0)
    t.is(refused.stderr.trim().split('\n').length, 1, refused.stderr)
    t.regex(refused.stderr, /\/dev\/fuse/)
    fs.chmodSync(devFuse, 0o666)
  }
  // A user's mount goes through fusermount3 (Debian's fuse3 package): where it is not on PATH (here a
  // PATH holding only node), one line says so, before anything is made.
  const nodeOnly = path.join(dir, 'node-only')
  fs.mkdirSync(nodeOnly, { mode: 0o755 })
  fs.symlinkSync(process.execPath, path.join(nodeOnly, 'node'))
  const refused = asUser(cli, ['mount', pool, mnt], { PATH: nodeOnly })
  t.not(refused.code, 0)
  t.is(refused.stderr.trim().split('\n').length, 1, refused.stderr)
  t.regex(refused.stderr, /fusermount3.*apt-get install fuse3/)
  t.false(fs.existsSync(pool), 'no pool directory was made')
  const mounted = asUser(cli, ['mount', pool, mnt])
  t.is(mounted.code, 0, `mount as ${user}: ${mounted.stderr}`)
  if (mounted.code !== 0) return
  pid = Number(fs.readFileSync(path.join(pool, 'daemon.pid'), 'utf8'))
  t.true(isMounted(mnt))
  // A user's daemon may not take real-time priority (no CAP_SYS_NICE, RLIMIT_RTPRIO 0): it says so and serves.
  t.regex(fs.readFileSync(path.join(pool, 'daemon.log'), 'utf8'), /event loop: normal priority \(real-time priority not permitted: EPERM\)/)
  const created = asUser('truncate', ['-s', '1M', path.join(mnt, 'disks', 'u.img')])
  t.is(created.code, 0, `the user creates a disk: ${created.stderr}`)
  const written = asUser('dd', ['if=/dev/urandom', `of=${path.join(mnt, 'disks', 'u.img')}`, 'bs=64k', 'count=4', 'conv=notrunc,fsync', 'status=none'])
  t.is(written.code, 0, `the user writes it: ${written.stderr}`)
  const backup = asUser(cli, ['backup', path.join(mnt, 'disks', 'u.img'), 'ub'])
  t.is(backup.code, 0, backup.stderr)
  const list = asUser(cli, ['ls', mnt, '--json'])
  t.is(list.code, 0, list.stderr)
  // A later command from a session with XDG_RUNTIME_DIR still finds the daemon started without it.
  const runtime = path.join(dir, 'runtime')
  asUser('mkdir', ['-m', '0700', runtime])
  const fromSession = asUser(cli, ['ls', mnt], { XDG_RUNTIME_DIR: runtime })
  t.is(fromSession.code, 0, fromSession.stderr)
  const image = statOf(path.join(pool, 'catalog.sqlite'))
  t.deepEqual(image, { mode: 0o600, uid: account.uid, gid: account.gid })
  t.is(statOf(pool).mode, 0o700)
  const socket = asUser(process.execPath, ['-e', `process.stdout.write(require(${JSON.stringify(path.join(repoRoot, 'dist', 'src', 'control', 'protocol.js'))}).socketPathFor(${JSON.stringify(mnt)}))`])
  t.is(socket.code, 0, socket.stderr)
  t.deepEqual(statOf(socket.stdout), { mode: 0o600, uid: account.uid, gid: account.gid })
  t.deepEqual(statOf(path.dirname(socket.stdout)), { mode: 0o700, uid: account.uid, gid: account.gid })
  const rootStat = spawnSync('stat', [mnt], { encoding: 'utf8' })
  t.not(rootStat.status, 0, 'without --allow-other not even root reaches a user\'s mount')
  // The user's mount outlives its daemon too: the holder (the user's own process, holding the descriptor
  // fusermount3 passed back) starts a daemon that takes the mount over after a SIGKILL.
  const content = asUser('sha256sum', [path.join(mnt, 'disks', 'u.img')])
  t.is(content.code, 0, content.stderr)
  const holders = holderPidsOf(pool)
  t.is(holders.length, 1, 'a holder keeps the user\'s mount')
  t.is(fs.statSync(`/proc/${holders[0]}`).uid, account.uid, 'the holder runs as the user')
  process.kill(pid, 'SIGKILL')
  t.true(await waitForExit(pid))
  let next = 0
  for (let waited = 0; waited < 30000 && (next === 0 || next === pid); waited += 100) {
    await new Promise(resolve => setTimeout(resolve, 100))
    try { next = Number(fs.readFileSync(path.join(pool, 'daemon.pid'), 'utf8')) } catch {}
  }
  t.not(next, pid, 'a new daemon serves the mount')
  pid = next
  const after = asUser('sha256sum', [path.join(mnt, 'disks', 'u.img')])
  t.is(after.code, 0, `the image reads after the takeover: ${after.stderr}`)
  t.is(after.stdout, content.stdout)
  t.is(fs.statSync(`/proc/${pid}`).uid, account.uid, 'the new daemon runs as the user')
  const unmounted = asUser(cli, ['umount', mnt])
  t.is(unmounted.code, 0, unmounted.stderr)
  t.false(isMounted(mnt))
  t.true(await waitForExit(pid))
  for (const holder of holders) t.true(await waitForExit(holder), 'the holder stopped with the clean unmount')
  // eslint-disable-next-line require-atomic-updates -- only the teardown reads pid, and it runs after this test body has returned
  pid = 0
})

test.serial('a pool made before owners and modes existed still opens: volumes get 0600/0400 and the pool owner, the directory 0700', async t => {
  const mount = await withMount(t)
  await populate(mount)
  await mount.umount()
  // What the earlier vdiskfs left under umask 022: catalog schema 1 (no owner columns), 0755/0644.
  const catalog = path.join(mount.pool, 'catalog.sqlite')
  const db = new Database(catalog)
  db.exec('ALTER TABLE volumes DROP COLUMN owner_uid; ALTER TABLE volumes DROP COLUMN owner_gid; ALTER TABLE volumes DROP COLUMN mode')
  db.prepare('UPDATE meta SET value = ? WHERE key = ?').run('1', 'schema_version')
  db.close()
  fs.chmodSync(mount.pool, 0o755)
  fs.chmodSync(catalog, 0o644)
  await mount.mount()
  t.deepEqual(statOf(mount.image('disks', 'a.img')), { mode: 0o600, uid: 0, gid: 0 })
  t.deepEqual(statOf(mount.image('backups', 'b.img')), { mode: 0o400, uid: 0, gid: 0 })
  t.deepEqual(statOf(mount.image('clones', 'c.img')), { mode: 0o600, uid: 0, gid: 0 })
  t.is(statOf(mount.pool).mode, 0o700)
  t.is(statOf(catalog).mode, 0o600)
  await run('chmod', ['0640', mount.image('disks', 'a.img')])
  await mount.umount()
  await mount.mount()
  t.is(statOf(mount.image('disks', 'a.img')).mode, 0o640, 'the migrated catalog keeps chmod')
})

test.serial('a control directory owned by another user is refused', async t => {
  ensureUser()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-xdg-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.chmodSync(dir, 0o755)
  fs.mkdirSync(path.join(dir, 'vdiskfs'), { mode: 0o777 })
  fs.chmodSync(path.join(dir, 'vdiskfs'), 0o777)
  const listed = asUser(cli, ['ls', path.join(dir, 'mnt')], { XDG_RUNTIME_DIR: dir })
  t.not(listed.code, 0)
  t.regex(listed.stderr, /owned by/, listed.stderr)
})

test.serial('a pool directory another user made (or links to) is refused before anything is written in it', async t => {
  ensureUser()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-claim-'))
  t.teardown(() => { spawnSync('fusermount3', ['-uz', path.join(dir, 'mnt')]); fs.rmSync(dir, { recursive: true, force: true }) })
  fs.chmodSync(dir, 0o777)
  fs.mkdirSync(path.join(dir, 'mnt'))
  // The attacker makes the pool directory first, world-writable, and a symbolic link to it.
  t.is(asUser('mkdir', ['-m', '777', path.join(dir, 'pool')]).code, 0)
  t.is(asUser('ln', ['-s', path.join(dir, 'pool'), path.join(dir, 'link')]).code, 0)
  for (const target of ['pool', 'link']) {
    const result = await vdiskfs('mount', path.join(dir, target), path.join(dir, 'mnt'))
    t.not(result.code, 0, `${target}: mount refused`)
    t.regex(result.stderr, /belongs to uid \d+, not to you/, target)
    t.false(isMounted(path.join(dir, 'mnt')))
  }
  t.deepEqual(fs.readdirSync(path.join(dir, 'pool')), [], 'nothing was written into the attacker\'s directory')
})

// Attack: root mounts on a directory inside one the user may write (their home, a shared directory).
// Between the daemon's look at the mountpoint (its real path, empty) and mount(2), which follows links,
// the user swaps it for a link to any directory (renameat2 RENAME_EXCHANGE in a loop: won about once in
// ten mounts here) and root's pool is mounted over it (/etc, say), left there dead (ENOTCONN) once the
// daemon sees its mountpoint unmounted. Refused before the mount: a mountpoint any of whose directories
// another user can change (owned by them, or writable by others and not sticky with the entry ours).
test.serial('a mountpoint in a directory another user may change is refused: they could swap it for a link while the mount is made', async t => {
  const account = ensureUser()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-mnt-'))
  t.teardown(() => { spawnSync('fusermount3', ['-uz', path.join(dir, 'user', 'mnt')]); spawnSync('fusermount3', ['-uz', path.join(dir, 'shared', 'mnt')]); fs.rmSync(dir, { recursive: true, force: true }) })
  fs.chmodSync(dir, 0o755)
  fs.mkdirSync(path.join(dir, 'user'))
  fs.chownSync(path.join(dir, 'user'), account.uid, account.gid)
  t.is(asUser('mkdir', [path.join(dir, 'user', 'mnt')]).code, 0)
  fs.mkdirSync(path.join(dir, 'shared'), { mode: 0o777 })
  fs.chmodSync(path.join(dir, 'shared'), 0o777)
  fs.mkdirSync(path.join(dir, 'shared', 'mnt'))
  for (const [where, reason] of [['user', /owned by uid \d+/], ['shared', /writable by others/]] as const) {
    const mnt = path.join(dir, where, 'mnt')
    const result = await vdiskfs('mount', path.join(dir, `pool-${where}`), mnt)
    if (result.code === 0) await vdiskfs('umount', mnt)
    t.not(result.code, 0, `${where}: mount refused`)
    t.regex(result.stderr, reason, where)
    t.regex(result.stderr, /could replace/, where)
    t.false(isMounted(mnt), where)
  }
  // The same directory, sticky (as /tmp) with the entry root's: nobody else can rename it.
  fs.chmodSync(path.join(dir, 'shared'), 0o1777)
  const mnt = path.join(dir, 'shared', 'mnt')
  const mounted = await vdiskfs('mount', path.join(dir, 'pool-sticky'), mnt)
  t.is(mounted.code, 0, mounted.stderr)
  t.is((await vdiskfs('umount', mnt)).code, 0)
})

test.serial('a pool holding a symbolic link is refused: the daemon writes only its own files', async t => {
  const m = await withMount(t)
  await m.umount()
  fs.rmSync(path.join(m.pool, 'daemon.log'), { force: true })
  const victim = path.join(m.dir, 'victim')
  fs.writeFileSync(victim, 'precious\n', { mode: 0o600 })
  fs.symlinkSync(victim, path.join(m.pool, 'daemon.log'))
  const result = await vdiskfs('mount', m.pool, m.mnt)
  t.not(result.code, 0)
  t.regex(result.stderr, /symbolic link/)
  t.is(fs.readFileSync(victim, 'utf8'), 'precious\n')
})

test.serial('a malformed control request is refused and the daemon keeps serving; a symlinked mountpoint works', async t => {
  const m = await withMount(t)
  const net = await import('node:net')
  for (const line of ['null', '[]', '"x"', '{"id":1,"op":"ls","args":null}', '{"id":1}']) {
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(socketPathFor(fs.realpathSync(m.mnt)))
      let data = ''
      socket.on('data', chunk => { data += chunk; if (data.includes('\n')) { socket.end(); resolve(data) } })
      socket.on('error', reject)
      socket.write(line + '\n')
    })
    t.regex(reply, /"ok":false/, line)
  }
  t.is((await vdiskfs('ls', m.mnt)).code, 0, 'still answering')
  await m.umount()
  // Mounted through a symbolic link: the daemon mounts and watches the real path, and the CLI finds it.
  const link = path.join(m.dir, 'mnt-link')
  fs.symlinkSync(m.mnt, link)
  const mounted = await vdiskfs('mount', m.pool, link)
  t.is(mounted.code, 0, mounted.stderr)
  m.pid = Number(fs.readFileSync(path.join(m.pool, 'daemon.pid'), 'utf8'))
  await new Promise(resolve => setTimeout(resolve, 2500)) // longer than the unmount watcher's period
  t.true(isMounted(m.mnt), 'still mounted at the real path')
  t.is((await vdiskfs('ls', link)).code, 0)
  t.is((await vdiskfs('umount', link)).code, 0)
  t.false(isMounted(m.mnt))
})

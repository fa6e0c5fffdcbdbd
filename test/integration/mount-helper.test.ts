/**
 * Boot-time mounts (issue #11): mount(8) runs /sbin/mount.fuse.vdiskfs for `mount -t fuse.vdiskfs` and
 * for an fstab line `POOL MNT fuse.vdiskfs defaults,_netdev 0 0` (tested with a temporary fstab through
 * `mount -T`); our options map to vdiskfs mount flags, the generic ones are ignored, `ro` is refused with
 * its reason; a plain `umount` stops the daemon and keeps the data.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { TestMount, isMounted, repoRoot, vdiskfs, waitForExit } from '../helpers/mount'

const helper = '/sbin/mount.fuse.vdiskfs'
const ours = path.join(repoRoot, 'bin', 'mount.fuse.vdiskfs')

/**
 * Makes /sbin/mount.fuse.vdiskfs this tree's helper for the test: a link made here is removed after,
 * an installed one (make install) is put back as it was.
 */
function useOurHelper (t: { teardown: (f: () => void) => void }): void {
  let previous: string | null = null
  try { previous = fs.readlinkSync(helper) } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EINVAL') throw new Error(`${helper} is a file, not a link: leave it alone`)
  }
  if (previous === ours) return
  fs.rmSync(helper, { force: true })
  fs.symlinkSync(ours, helper)
  t.teardown(() => {
    fs.rmSync(helper, { force: true })
    if (previous !== null) fs.symlinkSync(previous, helper)
  })
}

function newMount (t: { teardown: (f: () => Promise<void>) => void }): TestMount {
  const dir = fs.mkdtempSync(path.join(process.env.VDISKFS_TEST_DIR ?? os.tmpdir(), 'vdiskfs-test-'))
  const m = new TestMount(dir, path.join(dir, 'pool'), path.join(dir, 'mnt'))
  fs.mkdirSync(m.mnt)
  t.teardown(async () => await m.cleanup())
  return m
}

function mount (...args: string[]): { status: number | null, stderr: string } {
  const result = spawnSync('mount', args, { encoding: 'utf8', timeout: 90000 })
  return { status: result.status, stderr: result.stderr }
}

function daemonPid (m: TestMount): number {
  return Number(fs.readFileSync(path.join(m.pool, 'daemon.pid'), 'utf8'))
}

function mountType (mnt: string): string {
  return spawnSync('findmnt', ['-n', '-o', 'FSTYPE', mnt], { encoding: 'utf8' }).stdout.trim()
}

async function plainUmount (t: { is: (a: unknown, b: unknown, m?: string) => void, true: (a: boolean, m?: string) => void }, m: TestMount): Promise<void> {
  const pid = daemonPid(m)
  t.is(spawnSync('umount', [m.mnt], { encoding: 'utf8', timeout: 30000 }).status, 0, 'umount')
  t.true(await waitForExit(pid), 'the daemon exits after a plain umount')
  t.true(!isMounted(m.mnt))
}

test.serial('mount -t fuse.vdiskfs with options, a plain umount, then an fstab line through mount -T', async t => {
  useOurHelper(t)
  const m = newMount(t)
  const first = mount('-t', 'fuse.vdiskfs', m.pool, m.mnt, '-o', 'defaults,_netdev,nofail,noatime,allow_other,block_size=16K,x-systemd.device-timeout=10')
  t.is(first.status, 0, first.stderr)
  m.pid = daemonPid(m)
  t.is(mountType(m.mnt), 'fuse.vdiskfs')
  t.regex(fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find(line => line.split(' ')[4] === m.mnt) ?? '', /allow_other/)
  const data = crypto.randomBytes(1024 * 1024)
  const disk = m.image('disks', 'boot.img')
  fs.writeFileSync(disk, data)
  // block_size=16K reached the new pool: one 4 KiB write maps as one 16 KiB block.
  fs.writeFileSync(m.image('disks', 'probe.img'), Buffer.alloc(1024 * 1024))
  const fd = fs.openSync(m.image('disks', 'probe.img'), 'r+')
  fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 0)
  fs.closeSync(fd)
  const map = JSON.parse((await vdiskfs('map', m.image('disks', 'probe.img'), '--json')).stdout) as Array<{ length: number, data: boolean }>
  t.deepEqual(map.filter(r => r.data).map(r => r.length), [16384])
  await plainUmount(t, m)
  // The fstab line of the README, exactly.
  const fstab = path.join(m.dir, 'fstab')
  fs.writeFileSync(fstab, `# vdiskfs test\n${m.pool} ${m.mnt} fuse.vdiskfs defaults,_netdev 0 0\n`)
  const second = mount('-T', fstab, m.mnt)
  t.is(second.status, 0, second.stderr)
  m.pid = daemonPid(m)
  t.is(mountType(m.mnt), 'fuse.vdiskfs')
  t.true(fs.readFileSync(disk).equals(data), 'what was written before the umount is there')
  // Mounted already: mount says so and fails; the mount stays.
  t.not(mount('-T', fstab, m.mnt).status, 0)
  t.true(isMounted(m.mnt))
  // mount -a, as at boot a second time: the line is mounted already (the source is the pool's path), nothing to do.
  const all = mount('-a', '-T', fstab)
  t.is(all.status, 0, all.stderr)
  t.is(all.stderr, '')
  t.true(isMounted(m.mnt))
  await plainUmount(t, m)
})

test.serial('the helper refuses ro and unknown options with one line; -f mounts nothing; -s skips unknown options', async t => {
  useOurHelper(t)
  const m = newMount(t)
  const ro = mount('-t', 'fuse.vdiskfs', m.pool, m.mnt, '-o', 'ro')
  t.not(ro.status, 0)
  t.regex(ro.stderr, /no read-only mount/)
  const unknown = mount('-t', 'fuse.vdiskfs', m.pool, m.mnt, '-o', 'frobnicate')
  t.not(unknown.status, 0)
  t.regex(unknown.stderr, /unknown option frobnicate/)
  t.is(mount('-f', '-t', 'fuse.vdiskfs', m.pool, m.mnt).status, 0)
  t.false(isMounted(m.mnt))
  t.false(fs.existsSync(m.pool), 'nothing was created')
  const direct = spawnSync(ours, [m.pool, m.mnt, '-s', '-o', 'frobnicate,rw'], { encoding: 'utf8', timeout: 90000 })
  t.is(direct.status, 0, direct.stderr)
  t.regex(direct.stderr, /ignoring unknown option frobnicate/)
  m.pid = daemonPid(m)
  t.true(isMounted(m.mnt))
  await plainUmount(t, m)
  // A mount that fails (the mountpoint is missing) exits 32, as mount(8) helpers do.
  const failed = spawnSync(ours, [m.pool, path.join(m.dir, 'missing')], { encoding: 'utf8', timeout: 90000 })
  t.is(failed.status, 32)
  t.is(failed.stderr.trim().split('\n').length, 1, failed.stderr)
  const help = spawnSync(ours, ['--help'], { encoding: 'utf8' })
  t.is(help.status, 0)
  for (const section of ['NAME', 'SYNOPSIS', 'DESCRIPTION', 'OPTIONS', 'EXIT STATUS', 'SEE ALSO']) t.regex(help.stdout, new RegExp(`^${section}$`, 'm'))
})

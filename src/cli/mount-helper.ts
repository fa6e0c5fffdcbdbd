/**
 * The mount(8) helper: `mount -t fuse.vdiskfs POOL MNT -o OPTS` and the fstab line
 * `POOL MNT fuse.vdiskfs defaults,_netdev 0 0` run `/sbin/mount.fuse.vdiskfs POOL MNT [-sfnv] [-o OPTS]`
 * (mount(8) looks for /sbin/mount.TYPE before /sbin/mount.fuse, whose convention, `vdiskfs POOL MNT -o
 * OPTS`, our CLI does not follow). It maps our options to `vdiskfs mount` flags, accepts and ignores the
 * generic ones mount(8) and systemd pass along, refuses what vdiskfs cannot honour, and runs
 * `vdiskfs mount`, which returns once the mount is ready (the daemon stays in the background).
 *
 * Exit status, as mount(8) helpers give it: 0 mounted, 1 a usage error (a bad or refused option), 32
 * the mount failed.
 */
import { spawnSync } from 'node:child_process'
import path from 'node:path'
import { version } from '../version'
import { printable } from './holders'

export class HelperUsageError extends Error {}

/** Options of mount(8) and systemd that say nothing to vdiskfs: accepted and ignored. */
const ignored = new Set([
  'defaults', 'rw', '_netdev', 'nofail', 'auto', 'noauto', 'user', 'nouser', 'users', 'owner', 'group',
  'suid', 'nosuid', 'dev', 'nodev', 'exec', 'noexec', 'async', 'atime', 'noatime', 'relatime', 'norelatime',
  'strictatime', 'nostrictatime', 'lazytime', 'nolazytime', 'diratime', 'nodiratime', 'silent', 'loud',
  // FUSE's own, which vdiskfs always sets: the kernel checks permissions.
  'default_permissions', 'noxattrs', 'no_xattrs'
])

/** Options vdiskfs cannot honour: refused with the reason rather than silently not honoured. */
const refused: Record<string, string> = {
  ro: 'vdiskfs has no read-only mount (backups are read-only in any mount)',
  sync: 'vdiskfs does not make every write durable on return: fsync does (see the README, Durability)',
  dirsync: 'vdiskfs does not make every write durable on return: fsync does (see the README, Durability)',
  allow_root: 'vdiskfs offers allow_other only',
  mand: 'vdiskfs has no mandatory locks'
}

export interface HelperPlan {
  pool: string
  mountpoint: string
  /** Arguments for `vdiskfs mount` after POOL and MNT. */
  flags: string[]
  /** -f: mount(8)'s "fake": check everything, mount nothing. */
  fake: boolean
  verbose: boolean
  /** Unknown options skipped under -s (sloppy). */
  skipped: string[]
}

/** Parses mount(8)'s helper arguments: SPEC DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]. */
export function planMount (argv: string[]): HelperPlan {
  const positionals: string[] = []
  const options: string[] = []
  let fake = false
  let verbose = false
  let sloppy = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '-o' || arg === '-t' || arg === '-N') {
      const value = argv[++i]
      if (value === undefined) throw new HelperUsageError(`${arg} needs a value`)
      if (arg === '-o') options.push(...value.split(',').filter(o => o !== ''))
      if (arg === '-N') throw new HelperUsageError('mounting in another mount namespace (-N) is not supported')
      continue
    }
    if (arg.startsWith('-o') && arg.length > 2) { options.push(...arg.slice(2).split(',').filter(o => o !== '')); continue }
    if (/^-[sfnv]+$/.test(arg)) {
      if (arg.includes('f')) fake = true
      if (arg.includes('v')) verbose = true
      if (arg.includes('s')) sloppy = true
      continue
    }
    if (arg.startsWith('-') && arg !== '-') throw new HelperUsageError(`unknown option ${arg}`)
    positionals.push(arg)
  }
  if (positionals.length !== 2) throw new HelperUsageError(`expected POOL and MOUNTPOINT, got ${positionals.length} argument${positionals.length === 1 ? '' : 's'} (see mount.fuse.vdiskfs --help)`)
  const flags: string[] = []
  const skipped: string[] = []
  for (const option of options) {
    const [key, value] = option.includes('=') ? [option.slice(0, option.indexOf('=')), option.slice(option.indexOf('=') + 1)] : [option, undefined]
    if (ignored.has(option) || /^(x-|X-|comment=)/.test(option)) continue
    if (refused[option] !== undefined) throw new HelperUsageError(`option ${option}: ${refused[option]}`)
    if (option === 'allow_other') { flags.push('--allow-other'); continue }
    if (option === 'xattrs') { flags.push('--xattrs'); continue }
    if ((key === 'block_size' || key === 'blocksize') && value !== undefined && value !== '') { flags.push('--block-size', value); continue }
    if (sloppy) { skipped.push(option); continue }
    throw new HelperUsageError(`unknown option ${option} (see mount.fuse.vdiskfs --help; -s skips unknown options)`)
  }
  return { pool: path.resolve(positionals[0]), mountpoint: path.resolve(positionals[1]), flags, fake, verbose, skipped }
}

export function helperHelp (): string {
  return `MOUNT.FUSE.VDISKFS(8)                 vdiskfs ${version}

NAME
       mount.fuse.vdiskfs - mount a vdiskfs pool; the mount(8) helper for type fuse.vdiskfs

SYNOPSIS
       mount -t fuse.vdiskfs POOL MOUNTPOINT [-o OPTIONS]
       mount MOUNTPOINT                 (with a line in /etc/fstab)
       mount.fuse.vdiskfs POOL MOUNTPOINT [-sfnv] [-o OPTIONS]

       /etc/fstab:
       /srv/vdiskfs  /mnt/vd  fuse.vdiskfs  defaults,_netdev  0  0

DESCRIPTION
       Serves the vdiskfs pool in the directory POOL (created on first mount) at MOUNTPOINT, as
       'vdiskfs mount POOL MOUNTPOINT' does: it returns once the mount is ready and the daemon runs
       on in the background, logging to POOL/daemon.log. Unmount with 'umount MOUNTPOINT' (the
       daemon commits and exits) or 'vdiskfs umount MOUNTPOINT'.

OPTIONS
       allow_other       other users may reach the mount (file modes still apply): --allow-other
       xattrs            serve the user.vdiskfs.* attributes: --xattrs
       block_size=SIZE   block size of a new pool (64K by default): --block-size SIZE

       Accepted and ignored: defaults, rw, _netdev, nofail, auto, noauto, user, users, owner, group,
       nouser, (no)suid, (no)dev, (no)exec, async, atime and its variants, lazytime, silent, loud,
       default_permissions (always on), noxattrs (the default), x-* and comment=* (systemd's).

       Refused, with the reason: ro, sync, dirsync, allow_root, mand.

       -f     fake: check the arguments, mount nothing
       -v     print the vdiskfs command it runs
       -s     sloppy: skip unknown options instead of failing
       -n     accepted (there is no /etc/mtab to skip)

EXIT STATUS
       0 mounted; 1 a usage error (a bad or refused option); 32 the mount failed.

FILES
       /sbin/mount.fuse.vdiskfs   this helper ('make install' links it there)
       POOL/daemon.log            the daemon's log

SEE ALSO
       vdiskfs --help, mount(8), fstab(5), systemd.mount(5), examples/systemd/ in the sources
`
}

/** Runs the helper; returns the exit status. `cli` is the vdiskfs command line script (bin/vdiskfs). */
export function helperMain (argv: string[], cli: string): number {
  process.stderr.on('error', () => {})
  process.stdout.on('error', () => {})
  if (argv.includes('--help') || argv.includes('-h')) { process.stdout.write(helperHelp()); return 0 }
  if (argv.includes('--version') || argv.includes('-V')) { process.stdout.write(`mount.fuse.vdiskfs (vdiskfs ${version})\n`); return 0 }
  let plan: HelperPlan
  try {
    plan = planMount(argv)
  } catch (err) {
    process.stderr.write(`mount.fuse.vdiskfs: ${printable((err as Error).message)}\n`)
    return 1
  }
  for (const option of plan.skipped) process.stderr.write(`mount.fuse.vdiskfs: ignoring unknown option ${printable(option)} (-s)\n`)
  const args = [cli, 'mount', plan.pool, plan.mountpoint, ...plan.flags]
  if (plan.verbose) process.stderr.write(`mount.fuse.vdiskfs: ${printable([process.execPath, ...args].join(' '))}\n`)
  if (plan.fake) return 0
  const result = spawnSync(process.execPath, args, { stdio: ['ignore', 'ignore', 'inherit'] })
  if (result.error !== undefined) {
    process.stderr.write(`mount.fuse.vdiskfs: cannot run ${printable(cli)}: ${printable(result.error.message)}\n`)
    return 32
  }
  return result.status === 0 ? 0 : 32
}

/**
 * Checks made before mounting, each failing with one line that says what is wrong or what to install:
 * /dev/fuse, fusermount3 for a non-root mount, and the mountpoint (missing, not a directory, not empty, already
 * mounted, or a dead mount left by a killed daemon).
 */
import fs from 'node:fs'
import path from 'node:path'
import { VdiskError, invalid } from '../errors'
import { mountsSync } from '../io/mountinfo'
import { loadFuse3Native } from '../fuse/fuse3-transport'

function onPath (program: string): boolean {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    try { fs.accessSync(path.join(dir, program), fs.constants.X_OK); return true } catch {}
  }
  return false
}

/** /dev/fuse, and our FUSE 3 addon with the libfuse 3 it links (loaded here, before a pool is made). */
export function checkFuseAvailable (): void {
  const devFuse = process.env.VDISKFS_DEV_FUSE ?? '/dev/fuse'
  if (!fs.existsSync(devFuse)) throw invalid(`${devFuse} is missing: load the fuse module (modprobe fuse) or give the container access to /dev/fuse`)
  try { loadFuse3Native() } catch (err) { throw invalid((err as Error).message) }
}

/**
 * A non-root mount goes through fusermount3 (setuid), from Debian's fuse3 package. Without it libfuse's
 * reason would go to the background daemon's discarded stderr; this says it in one line instead. Root
 * mounts and unmounts with mount(2) and umount2(2) itself.
 */
export function checkFuse3Helper (): void {
  if ((process.getuid?.() ?? 0) === 0) return
  if (!onPath('fusermount3')) throw invalid('a non-root mount needs fusermount3, which is missing: install it with apt-get install fuse3 (or run make run), or mount as root')
}

/**
 * What a non-root mount needs beyond root's (fusermount3 is setuid, but opens /dev/fuse as the caller):
 * /dev/fuse readable and writable, a mountpoint the user may write to, and user_allow_other in
 * /etc/fuse.conf for --allow-other. Each missing piece is one INVALID line saying what to do.
 */
export function checkUnprivilegedMount (mountpoint: string, allowOther: boolean): void {
  const uid = process.getuid?.() ?? 0
  if (uid === 0) return
  const devFuse = process.env.VDISKFS_DEV_FUSE ?? '/dev/fuse'
  try {
    fs.accessSync(devFuse, fs.constants.R_OK | fs.constants.W_OK)
  } catch {
    let detail = ''
    try { const stat = fs.statSync(devFuse); detail = ` (mode ${(stat.mode & 0o777).toString(8).padStart(4, '0')}, owner uid ${stat.uid})` } catch {}
    throw invalid(`${devFuse}${detail} is not readable and writable by you (uid ${uid}): a mount by a non-root user needs it mode 0666, its usual mode (as root: chmod 0666 ${devFuse}), or mount as root`)
  }
  try {
    fs.accessSync(mountpoint, fs.constants.W_OK)
  } catch {
    throw invalid(`you (uid ${uid}) may not write to mountpoint ${mountpoint}: fusermount3 mounts only on a directory you own or may write to`)
  }
  if (allowOther) {
    let conf = ''
    try { conf = fs.readFileSync('/etc/fuse.conf', 'utf8') } catch {}
    if (!/^\s*user_allow_other\b/m.test(conf)) throw invalid('--allow-other by a non-root user needs user_allow_other in /etc/fuse.conf (ask root to add it), or mount without --allow-other')
  }
}

/**
 * Refuses a mountpoint (a real path) that a user other than this one and root could replace: one of
 * its directories' parents owned by somebody else, or writable by others without the sticky bit (or
 * sticky, with the entry somebody else's). mount(2) follows links: such a user could swap the
 * mountpoint, between the checks and the mount, for a link to any directory (/etc), and this pool
 * would be mounted over it and left there dead once the daemon saw its own mountpoint unmounted.
 * Checked right before the mount. Throws NOT_PERMITTED.
 */
export function checkMountpointKept (mountpoint: string): void {
  const uid = process.getuid?.() ?? 0
  const trusted = (owner: number): boolean => owner === 0 || owner === uid
  for (let entry = mountpoint; path.dirname(entry) !== entry; entry = path.dirname(entry)) {
    const parent = path.dirname(entry)
    const dir = fs.lstatSync(parent)
    const sticky = (dir.mode & 0o1000) !== 0
    let why: string | null = null
    if (!trusted(dir.uid)) why = `is owned by uid ${dir.uid}`
    else if ((dir.mode & 0o022) !== 0 && !(sticky && trusted(fs.lstatSync(entry).uid))) why = `is writable by others (mode ${(dir.mode & 0o7777).toString(8).padStart(4, '0')})`
    if (why !== null) {
      throw new VdiskError('NOT_PERMITTED', `mountpoint ${mountpoint}: ${parent} ${why}, so another user could replace ${entry} (with a symbolic link while the mount is made) ` +
        'and have this pool mounted over any directory: mount on a directory that only you and root can change')
    }
  }
}

/**
 * Refuses a pool and a mountpoint that overlap (the same directory, the mountpoint inside the pool or
 * the pool inside the mountpoint): the mount would hide the pool or serve it inside itself. Checked on
 * real paths (the pool may not exist yet: its nearest existing parent is resolved), before anything
 * is created. Throws INVALID.
 */
export function checkPoolApart (pool: string, mountpoint: string): void {
  const real = (target: string): string => {
    const absolute = path.resolve(target)
    try { return fs.realpathSync(absolute) } catch {}
    const parent = path.dirname(absolute)
    return parent === absolute ? absolute : path.join(real(parent), path.basename(absolute))
  }
  const poolDir = real(pool)
  const mnt = real(mountpoint)
  const inside = (child: string, parent: string) => child.startsWith(parent === '/' ? '/' : parent + '/')
  if (poolDir === mnt) throw invalid(`the pool ${poolDir} and the mountpoint are the same directory: mount it somewhere else (for example ${poolDir}.mnt)`)
  if (inside(mnt, poolDir)) throw invalid(`the mountpoint ${mnt} is inside the pool ${poolDir}: mount it outside the pool`)
  if (inside(poolDir, mnt)) throw invalid(`the pool ${poolDir} is inside the mountpoint ${mnt}: the mount would hide it; keep the pool elsewhere`)
}

export function checkMountpoint (mountpoint: string): void {
  if (mountsSync().some(m => m.mountpoint === mountpoint)) {
    let alive = true
    try { fs.statSync(mountpoint) } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOTCONN') alive = false
    }
    if (!alive) throw new VdiskError('BUSY', `${mountpoint} is a dead mount left by a stopped daemon: run fusermount3 -uz ${mountpoint}`)
    throw new VdiskError('BUSY', `${mountpoint} is already mounted`)
  }
  let stat: fs.Stats
  try {
    stat = fs.statSync(mountpoint)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw invalid(`mountpoint ${mountpoint} does not exist (mkdir -p ${mountpoint})`)
    if (code === 'ENOTCONN') throw new VdiskError('BUSY', `${mountpoint} is a dead mount left by a stopped daemon: run fusermount3 -uz ${mountpoint}`)
    throw invalid(`mountpoint ${mountpoint}: ${(err as Error).message}`)
  }
  if (!stat.isDirectory()) throw invalid(`mountpoint ${mountpoint} is not a directory`)
  if (fs.readdirSync(mountpoint).length > 0) throw invalid(`mountpoint ${mountpoint} is not empty`)
}

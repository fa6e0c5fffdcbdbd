/**
 * Checks made before mounting, each failing with one line that says what is wrong or what to install:
 * /dev/fuse, libfuse2 and fusermount, and the mountpoint (missing, not a directory, not empty, already
 * mounted, or a dead mount left by a killed daemon).
 */
import fs from 'node:fs'
import path from 'node:path'
import { VdiskError, invalid } from '../errors'
import { mountsSync } from './mountinfo'

const libfuseCandidates = [
  '/lib/x86_64-linux-gnu/libfuse.so.2', '/usr/lib/x86_64-linux-gnu/libfuse.so.2',
  '/lib/aarch64-linux-gnu/libfuse.so.2', '/usr/lib/aarch64-linux-gnu/libfuse.so.2',
  '/lib64/libfuse.so.2', '/usr/lib64/libfuse.so.2', '/usr/lib/libfuse.so.2', '/lib/libfuse.so.2'
]

function onPath (program: string): boolean {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    try { fs.accessSync(path.join(dir, program), fs.constants.X_OK); return true } catch {}
  }
  return false
}

export function checkFuseAvailable (): void {
  const devFuse = process.env.VDISKFS_DEV_FUSE ?? '/dev/fuse'
  if (!fs.existsSync(devFuse)) throw invalid(`${devFuse} is missing: load the fuse module (modprobe fuse) or give the container access to /dev/fuse`)
  const libfuse = process.env.VDISKFS_LIBFUSE ?? ''
  const haveLib = libfuse !== '' ? fs.existsSync(libfuse) : libfuseCandidates.some(file => fs.existsSync(file))
  if (!haveLib) throw invalid('libfuse2 is missing: install it with apt-get install libfuse2 fuse (or run make run)')
  if (!onPath('fusermount')) throw invalid('fusermount is missing: install it with apt-get install fuse (or run make run)')
}

export function checkMountpoint (mountpoint: string): void {
  if (mountsSync().some(m => m.mountpoint === mountpoint)) {
    let alive = true
    try { fs.statSync(mountpoint) } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOTCONN') alive = false
    }
    if (!alive) throw new VdiskError('BUSY', `${mountpoint} is a dead mount left by a stopped daemon: run fusermount -uz ${mountpoint}`)
    throw new VdiskError('BUSY', `${mountpoint} is already mounted`)
  }
  let stat: fs.Stats
  try {
    stat = fs.statSync(mountpoint)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT') throw invalid(`mountpoint ${mountpoint} does not exist (mkdir -p ${mountpoint})`)
    if (code === 'ENOTCONN') throw new VdiskError('BUSY', `${mountpoint} is a dead mount left by a stopped daemon: run fusermount -uz ${mountpoint}`)
    throw invalid(`mountpoint ${mountpoint}: ${(err as Error).message}`)
  }
  if (!stat.isDirectory()) throw invalid(`mountpoint ${mountpoint} is not a directory`)
  if (fs.readdirSync(mountpoint).length > 0) throw invalid(`mountpoint ${mountpoint} is not empty`)
}

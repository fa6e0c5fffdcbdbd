/**
 * The control protocol between the CLI and the daemon that owns a pool: one JSON object per line over a
 * Unix socket. A request names an operation and its arguments; a reply carries a result or an error
 * with its code. The socket lives in the user's control directory (controlDir below), named after the
 * mountpoint, so the CLI finds the daemon from any path inside the mount.
 *
 * Who may talk to a daemon: only the pool's owner. The control directory is 0700 and the socket 0600,
 * both owned by the daemon's user, whatever the umask; connect(2) needs write permission on the socket,
 * so the kernel turns every other user away (root aside) with EACCES. The daemon cannot check the peer
 * itself: Node exposes no SO_PEERCRED (and no getpeereid) for Unix sockets, so those permissions are
 * the whole check.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { ErrorCode, VdiskError } from '../errors'
import { Operation } from './operations'

/**
 * Where this user's daemons put their sockets: VDISKFS_RUN_DIR when set; /run/vdiskfs for root;
 * $XDG_RUNTIME_DIR/vdiskfs (a per-user 0700 tmpfs) or else /tmp/vdiskfs-UID for everybody else, since
 * /run is root's. The daemon uses the first of controlDirs(); the CLI looks in each, in order, so a
 * command run without XDG_RUNTIME_DIR (cron, su) still finds a daemon started with it, and back.
 */
export function controlDirs (): string[] {
  const explicit = process.env.VDISKFS_RUN_DIR
  if (explicit !== undefined && explicit !== '') return [explicit]
  const uid = process.getuid?.() ?? 0
  if (uid === 0) return ['/run/vdiskfs']
  const fallback = `/tmp/vdiskfs-${uid}`
  const runtime = process.env.XDG_RUNTIME_DIR
  if (runtime !== undefined && runtime !== '' && path.isAbsolute(runtime)) return [path.join(runtime, 'vdiskfs'), fallback]
  return [fallback]
}

export function controlDir (): string { return controlDirs()[0] }

/**
 * Makes sure `dir` is a directory of this user's, mode 0700, creating it when `create`. A directory
 * that somebody else owns (a stranger's /tmp/vdiskfs-UID, say, set up to catch our sockets) is refused:
 * NOT_PERMITTED. Returns false when it does not exist and `create` is false.
 */
export function checkControlDir (dir: string, create: boolean): boolean {
  if (create) {
    try { fs.mkdirSync(dir, { recursive: true, mode: 0o700 }) } catch (err) {
      throw new VdiskError('IO', `cannot create the control directory ${dir}: ${(err as Error).message}`, { cause: err })
    }
  }
  let stat: fs.Stats
  try { stat = fs.lstatSync(dir) } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false
    throw new VdiskError('IO', `cannot read the control directory ${dir}: ${(err as Error).message}`, { cause: err })
  }
  const uid = process.getuid?.() ?? 0
  if (!stat.isDirectory()) throw new VdiskError('NOT_PERMITTED', `the control directory ${dir} is not a directory: remove it`)
  if (stat.uid !== uid) throw new VdiskError('NOT_PERMITTED', `the control directory ${dir} is owned by uid ${stat.uid}, not by you (uid ${uid}): refusing to use it (set VDISKFS_RUN_DIR to a directory of yours)`)
  // Made by an older vdiskfs (0755) or under another umask: tighten it.
  if ((stat.mode & 0o077) !== 0) fs.chmodSync(dir, 0o700)
  return true
}

export interface Request { id: number, op: Operation, args: Record<string, unknown> }
export type Reply =
  | { id: number, ok: true, result: unknown }
  | { id: number, ok: false, error: { code: ErrorCode, message: string } }

/** The control socket path for a mountpoint (an absolute, resolved path): where the daemon listens. */
export function socketPathFor (mountpoint: string): string {
  return socketPathsFor(mountpoint)[0]
}

/** Every place the CLI looks for a mountpoint's control socket, the daemon's own first. */
export function socketPathsFor (mountpoint: string): string[] {
  const key = createHash('sha256').update(path.resolve(mountpoint)).digest('hex').slice(0, 20)
  return controlDirs().map(dir => path.join(dir, `${key}.sock`))
}

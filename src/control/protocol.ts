/**
 * The control protocol between the CLI and the daemon that owns a pool: one JSON object per line over a
 * Unix socket. A request names an operation and its arguments; a reply carries a result or an error
 * with its code. The socket lives in /run/vdiskfs, named after the mountpoint, so the CLI finds the
 * daemon from any path inside the mount.
 */
import { createHash } from 'node:crypto'
import path from 'node:path'
import { ErrorCode } from '../errors'

export const controlDir = process.env.VDISKFS_RUN_DIR ?? '/run/vdiskfs'

export type Operation = 'status' | 'commit' | 'sync' | 'progress' | 'verify' | 'ls' | 'du' | 'backup' | 'clone' | 'restore' | 'rm' | 'gc'

export interface Request { id: number, op: Operation, args: Record<string, unknown> }
export type Reply =
  | { id: number, ok: true, result: unknown }
  | { id: number, ok: false, error: { code: ErrorCode, message: string } }

/** The control socket path for a mountpoint (an absolute, resolved path). */
export function socketPathFor (mountpoint: string): string {
  const key = createHash('sha256').update(path.resolve(mountpoint)).digest('hex').slice(0, 20)
  return path.join(controlDir, `${key}.sock`)
}

export interface StatusResult { pid: number, pool: string, mountpoint: string, version: string, blockBytes: number }

/**
 * Maps vdiskfs error codes to the (negative) errno values the FUSE operations reply with. An error that is
 * not a VdiskError is a bug: it becomes EIO and is logged with its stack.
 */
import { ErrorCode, VdiskError } from '../errors'

const errnoOf: Record<ErrorCode, number> = {
  NOT_FOUND: -2, // ENOENT
  EXISTS: -17, // EEXIST
  INVALID: -22, // EINVAL
  READ_ONLY: -30, // EROFS
  NOT_PERMITTED: -1, // EPERM
  NO_SPACE: -28, // ENOSPC
  CORRUPT: -5, // EIO
  IO: -5, // EIO
  BUSY: -16, // EBUSY
  TOO_BIG: -27, // EFBIG
  CROSS_DEVICE: -18, // EXDEV
  NOT_EMPTY: -39 // ENOTEMPTY
}

export const ENOENT = -2
export const EPERM = -1
export const EROFS = -30
export const EINVAL = -22
export const EXDEV = -18
export const EISDIR = -21
export const ENODATA = -61
export const ENOTSUP = -95
export const ENOSYS = -38

export function toErrno (err: unknown, log: (message: string) => void): number {
  if (err instanceof VdiskError) {
    if (err.code === 'CORRUPT' || err.code === 'IO') log(`error: ${err.message}`)
    return errnoOf[err.code]
  }
  log(`bug: ${(err as Error)?.stack ?? String(err)}`)
  return -5
}

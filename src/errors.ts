/**
 * The closed set of errors vdiskfs raises for operating conditions (not programmer errors, which are
 * assertions). Each class has a stable code; the FUSE adapter maps codes to errno, the CLI prints the
 * message as one line.
 */

export type ErrorCode =
  | 'NOT_FOUND' | 'EXISTS' | 'INVALID' | 'READ_ONLY' | 'NOT_PERMITTED'
  | 'NO_SPACE' | 'CORRUPT' | 'IO' | 'BUSY' | 'TOO_BIG' | 'CROSS_DEVICE' | 'NOT_EMPTY'

export class VdiskError extends Error {
  readonly code: ErrorCode
  constructor (code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.name = 'VdiskError'
  }
}

export const notFound = (what: string): VdiskError => new VdiskError('NOT_FOUND', `${what} does not exist`)
export const exists = (what: string): VdiskError => new VdiskError('EXISTS', `${what} already exists`)
export const invalid = (message: string): VdiskError => new VdiskError('INVALID', message)
export const readOnly = (what: string): VdiskError => new VdiskError('READ_ONLY', `${what} is read-only`)
export const notPermitted = (message: string): VdiskError => new VdiskError('NOT_PERMITTED', message)
export const corrupt = (message: string, cause?: unknown): VdiskError => new VdiskError('CORRUPT', message, { cause })

/** Turns an error from node:fs into a VdiskError, keeping ENOSPC apart from other I/O errors. */
export function fromSystemError (err: unknown, doing: string): VdiskError {
  if (err instanceof VdiskError) return err
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL') return new VdiskError('NO_SPACE', `${doing}: no space left on the pool's filesystem`, { cause: err })
  return new VdiskError('IO', `${doing}: ${(err as Error)?.message ?? String(err)}`, { cause: err })
}

/**
 * A checked read that writes of the same extent kept racing (readRetriesMax times): not damage. The
 * volume reads once more with the block's writers held off (Volume.readBlock); only then does a
 * mismatch count as damage.
 */
export class RacedRead extends VdiskError {
  constructor (message: string) {
    super('IO', message)
    this.name = 'RacedRead'
  }
}

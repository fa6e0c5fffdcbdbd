/**
 * The pool header (pool.json, format/pool-format.ts) and the durability of the pool's directories:
 * reading and checking the header, creating it for a new pool (written to a temporary file, fsynced,
 * renamed, and the directory synced), and creating the extents and packs directories durably.
 *
 * Assumes: the header never changes after creation; a header that does not parse, has a bad magic or
 * a newer format version is refused with INVALID, never guessed at.
 */
import fs from 'node:fs'
import path from 'node:path'
import { randomUUID } from 'node:crypto'
import { fromSystemError, invalid, notFound } from '../errors'
import { PoolHeader, poolFormatVersion, poolHeaderFile, poolMagic } from '../format/pool-format'
import { assertLimits, blockBytesDefault, zstdLevelDefault } from '../limits'

export interface HeaderOptions {
  /** Create the pool when the directory does not exist or is empty. */
  create?: boolean
  blockBytes?: number
  /** zstd level of a new pool. */
  zstdLevel?: number
}

/** Reads the header of the pool in `dir`, or creates one when asked and the directory is missing or empty. */
export function readOrCreateHeader (dir: string, options: HeaderOptions): PoolHeader {
  const headerPath = path.join(dir, poolHeaderFile)
  let text: string | undefined
  try {
    text = fs.readFileSync(headerPath, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code !== 'ENOENT' && code !== 'ENOTDIR') throw fromSystemError(err, `reading ${headerPath}`)
    if (code === 'ENOTDIR') throw invalid(`${dir} is not a directory`)
  }
  if (text === undefined) {
    let entries: string[] | undefined
    try { entries = fs.readdirSync(dir) } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromSystemError(err, `reading ${dir}`)
    }
    if (entries !== undefined && entries.length > 0) throw invalid(`${dir} exists but is not a vdiskfs pool (no ${poolHeaderFile}, and it is not empty)`)
    if (options.create !== true) throw notFound(`pool ${dir}`)
    const header: PoolHeader = {
      magic: poolMagic,
      formatVersion: poolFormatVersion,
      blockBytes: options.blockBytes ?? blockBytesDefault,
      zstdLevel: options.zstdLevel ?? zstdLevelDefault,
      createdMs: Date.now(),
      poolId: randomUUID()
    }
    assertLimitsUserFacing(header.blockBytes)
    fs.mkdirSync(dir, { recursive: true })
    const temporary = headerPath + '.tmp'
    const fd = fs.openSync(temporary, 'w')
    fs.writeSync(fd, JSON.stringify(header, null, 2) + '\n')
    fs.fsyncSync(fd)
    fs.closeSync(fd)
    fs.renameSync(temporary, headerPath)
    syncDirectorySync(dir)
    return header
  }
  let header: PoolHeader
  try {
    header = JSON.parse(text) as PoolHeader
  } catch {
    throw invalid(`${headerPath} is damaged (not JSON)`)
  }
  if (header === null || typeof header !== 'object' || header.magic !== poolMagic) throw invalid(`${dir} is not a vdiskfs pool (bad magic in ${poolHeaderFile})`)
  if (!Number.isInteger(header.formatVersion) || header.formatVersion < 1) throw invalid(`${dir}: unknown pool format version ${String(header.formatVersion)}`)
  if (header.formatVersion > poolFormatVersion) {
    throw invalid(`${dir} has pool format version ${header.formatVersion}, newer than this vdiskfs reads (${poolFormatVersion}); upgrade vdiskfs`)
  }
  assertLimitsUserFacing(header.blockBytes)
  return header
}

/** Block size checks that a user or a damaged header can fail, as INVALID rather than an assertion. */
/** INVALID, in one line, for a block size no pool can have. */
export function assertLimitsUserFacing (blockBytes: unknown): void {
  try {
    if (typeof blockBytes !== 'number') throw new Error('not a number')
    assertLimits(blockBytes)
  } catch (err) {
    throw invalid(`invalid block size ${String(blockBytes)}: use a power of two from 4K to 1M`)
  }
}

/** Makes a directory's entries durable (after a rename or a create in it). */
export function syncDirectorySync (dir: string): void {
  const fd = fs.openSync(dir, 'r')
  try { fs.fsyncSync(fd) } finally { fs.closeSync(fd) }
}

/** Creates `parent/name` if missing, durably: the new entry is synced into its parent. */
export function makeDurableDirectory (parent: string, name: string): void {
  const dir = path.join(parent, name)
  if (fs.existsSync(dir)) return
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  syncDirectorySync(parent)
}

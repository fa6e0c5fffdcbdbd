/**
 * Map entry and map page encoding, shared by the block map and the catalog.
 *
 * A map entry says where a block's bytes are. In memory it is an integer below 2^53 (a JS number);
 * stored, it is a u64 little-endian. Its top bits (value / 2^48) give the kind:
 *
 *   kind 0  value 0                          a hole: the block reads as zeros and takes no space
 *   kind 1  2^48 + extentId * 2^24 + slot    slot `slot` of delta extent `extentId`
 *   kind 2  2 * 2^48 + chunkId              chunk `chunkId` of the chunk store
 *   kind 3  3 * 2^48                         lost: `vdiskfs repair` found the block's data gone or damaged;
 *                                            reads fail with EIO until the whole block is written again
 *
 * A map page is pageEntries entries, stored as one BLOB: the entries (pageBytes bytes), then a
 * checksum trailer (format 2, below). A BLOB of exactly pageBytes bytes is a format-1 page, written
 * before pages had checksums: it is read as legacy, and gets a trailer the next time it is written.
 * A root is the list of page ids of a volume (0 = no page: all its blocks are holes), stored as u64
 * little-endian.
 *
 * Page trailer (format 2), at offset pageBytes of the stored BLOB:
 *
 *   offset  size              field
 *   0       4                 magic 0x47504456 ("VDPG")
 *   4       2                 version, 2
 *   6       2                 entries per checksum group (pageGroupEntries, 16)
 *   8       4 * pageGroups    CRC-32 of each group's 128 bytes, seeded with crc32(page id) ^ group
 *   8 + 4 * pageGroups   4    CRC-32 of the trailer's bytes before it, seeded with crc32(page id) ^ 0xffffffff
 *
 * One flipped byte thus damages one group of 16 entries, and is found again by trying every single
 * byte change of that group against its CRC (repair); the seed binds every group to its page id and
 * place, so a group copied from elsewhere does not pass.
 */
import zlib from 'node:zlib'
import { mapEntryBytes, pageBytes, pageEntries } from '../limits'
import { addonFunction } from './native-addon'

export const entryKindShift = 2 ** 48
export const entrySlotShift = 2 ** 24
export const entryKindHole = 0
export const entryKindDelta = 1
export const entryKindChunk = 2
export const entryKindLost = 3
export const lostEntry = entryKindLost * entryKindShift

export function deltaEntry (extentId: number, slot: number): number {
  return entryKindDelta * entryKindShift + extentId * entrySlotShift + slot
}

export function entryKind (entry: number): number {
  return Math.floor(entry / entryKindShift)
}

export function entryExtentId (entry: number): number {
  return Math.floor((entry % entryKindShift) / entrySlotShift)
}

export function entrySlot (entry: number): number {
  return entry % entrySlotShift
}

/** Encodes integers below 2^53 as u64 little-endian. */
export function encodeU64Array (values: Float64Array | Uint32Array): Buffer {
  const out = Buffer.allocUnsafe(values.length * 8)
  encodeU64Into(values, out)
  return out
}

/** encodeU64Array into the start of `out`, whose offset in its ArrayBuffer is a multiple of 4 (a commit of many pages makes no second copy of each). */
function encodeU64Into (values: Float64Array | Uint32Array, out: Buffer): void {
  const words = new Uint32Array(out.buffer, out.byteOffset, values.length * 2)
  for (let i = 0; i < values.length; i++) {
    const v = values[i]
    const lo = v % 4294967296
    words[2 * i] = lo
    words[2 * i + 1] = (v - lo) / 4294967296
  }
}

/**
 * Decodes u64 little-endian values; throws when a value does not fit below 2^53 (corrupt input).
 * `compact`: a Uint32Array when every value fits 32 bits.
 */
export function decodeU64Array (bytes: Uint8Array, count: number): Float64Array
export function decodeU64Array (bytes: Uint8Array, count: number, compact: true): Float64Array | Uint32Array
export function decodeU64Array (bytes: Uint8Array, count: number, compact = false): Float64Array | Uint32Array {
  if (bytes.byteLength < count * 8) throw new RangeError(`expected ${count * 8} bytes, got ${bytes.byteLength}`)
  // Read in place when aligned (SQLite's blobs are: a mount decodes 10,000 roots of 32 KiB, issue #21);
  // else from an aligned copy. The values are copied out either way.
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : new Uint8Array(bytes.subarray(0, count * 8))
  const words = new Uint32Array(aligned.buffer, aligned.byteOffset, count * 2)
  if (compact) {
    let wide = false
    for (let i = 0; i < count; i++) if (words[2 * i + 1] !== 0) { wide = true; break }
    if (!wide) {
      const narrow = new Uint32Array(count)
      for (let i = 0; i < count; i++) narrow[i] = words[2 * i]
      return narrow
    }
  }
  const out = new Float64Array(count)
  for (let i = 0; i < count; i++) {
    const hi = words[2 * i + 1]
    if (hi >= 2 ** 21) throw new RangeError(`map value ${i} is out of range`)
    out[i] = hi * 4294967296 + words[2 * i]
  }
  return out
}

export function chunkEntry (chunkId: number): number {
  return entryKindChunk * entryKindShift + chunkId
}

export function entryChunkId (entry: number): number {
  return entry % entryKindShift
}

export const pageTrailerMagic = 0x47504456
export const pageFormatVersion = 2
export const pageGroupEntries = 16
export const pageGroups = pageEntries / pageGroupEntries
export const pageGroupBytes = pageGroupEntries * mapEntryBytes
export const pageTrailerHeaderBytes = 8
export const pageTrailerBytes = pageTrailerHeaderBytes + 4 * pageGroups + 4
/** Bytes of a stored format-2 page: the entries and the trailer. */
export const storedPageBytes = pageBytes + pageTrailerBytes
/** The largest kind a map entry may have (lost). */
const entryKindMax = 3

function pageSeed (pageId: number): number {
  const id = Buffer.alloc(8)
  id.writeBigUInt64LE(BigInt(pageId))
  return zlib.crc32(id)
}

/** The addon's crc32Groups when it loads (native-addon.ts): every group of a page in one call. */
type GroupCrcs = (data: Uint8Array, groupBytes: number, groups: number, seed: number, out: Uint32Array) => void
let groupCrcsNative: GroupCrcs | null | undefined

/** Whether page checksums are the addon's (for tests). */
export function pageCrcsNative (): boolean { return (groupCrcsNative ??= addonFunction<GroupCrcs>('crc32Groups')) !== null }

/**
 * The CRC-32 of every group of `stored` (entries of a page whose seed is `seed`): pageGroupCrc of each,
 * in one call to the addon when it loads (256 calls of node:zlib's for 128 bytes each took most of a
 * page's decoding: `du` and gc's walks decode every page they read, a commit encodes each it writes).
 */
export function pageGroupCrcs (stored: Uint8Array, seed: number): Uint32Array {
  const out = new Uint32Array(pageGroups)
  if (pageCrcsNative() && groupCrcsNative != null) groupCrcsNative(stored, pageGroupBytes, pageGroups, seed, out)
  else for (let g = 0; g < pageGroups; g++) out[g] = zlib.crc32(stored.subarray(g * pageGroupBytes, (g + 1) * pageGroupBytes), (seed ^ g) >>> 0)
  return out
}

/** CRC-32 of group `group` of `stored` (entries of page `pageId`). */
export function pageGroupCrc (stored: Uint8Array, group: number, pageId: number, seed = pageSeed(pageId)): number {
  return zlib.crc32(stored.subarray(group * pageGroupBytes, (group + 1) * pageGroupBytes), (seed ^ group) >>> 0)
}

/** Encodes a page's entries with its checksum trailer (format 2). */
export function encodePage (entries: Float64Array, pageId: number): Buffer {
  const out = Buffer.alloc(storedPageBytes) // its own ArrayBuffer (past the pool's size): offset 0
  encodeU64Into(entries, out)
  const seed = pageSeed(pageId)
  out.writeUInt32LE(pageTrailerMagic, pageBytes)
  out.writeUInt16LE(pageFormatVersion, pageBytes + 4)
  out.writeUInt16LE(pageGroupEntries, pageBytes + 6)
  const crcs = pageGroupCrcs(out, seed)
  for (let g = 0; g < pageGroups; g++) out.writeUInt32LE(crcs[g], pageBytes + pageTrailerHeaderBytes + 4 * g)
  out.writeUInt32LE(trailerCrc(out, seed), storedPageBytes - 4)
  return out
}

function trailerCrc (stored: Uint8Array, seed: number): number {
  return zlib.crc32(stored.subarray(pageBytes, storedPageBytes - 4), (seed ^ 0xffffffff) >>> 0)
}

export interface DecodedPage {
  /** The entries; an entry in `invalid` or `unverified` reads as lost. */
  entries: Float64Array
  /** Whether the page carried checksums (format 2) rather than being a legacy (format 1) page. */
  checksummed: boolean
  /** A problem of the whole page (wrong length): nothing in it can be trusted. */
  problem: string | null
  /** Entries whose stored value is impossible (out of range, unknown kind). */
  invalid: number[]
  /** Checksum groups whose bytes fail their CRC and could not be corrected: their entries are unknown. */
  unverified: number[]
  /** Corrections made (single bytes proven by a group's CRC), for the report. */
  corrected: string[]
}

/** Whether the page can be served as it is: no damage of any kind. */
export function pageIsSound (page: DecodedPage): boolean {
  return page.problem === null && page.invalid.length === 0 && page.unverified.length === 0 && page.corrected.length === 0
}

/** One line describing a page's damage. */
export function describePageDamage (page: DecodedPage): string {
  const parts: string[] = []
  if (page.problem !== null) parts.push(page.problem)
  if (page.unverified.length > 0) parts.push(`checksum mismatch in ${page.unverified.length} group(s) of ${pageGroupEntries} entries (first: entries ${page.unverified[0] * pageGroupEntries}-${page.unverified[0] * pageGroupEntries + pageGroupEntries - 1})`)
  if (page.invalid.length > 0) parts.push(`${page.invalid.length} impossible entries (first: entry ${page.invalid[0]})`)
  parts.push(...page.corrected)
  return parts.join('; ')
}

/**
 * Decodes a stored page, checking its checksums (format 2) or, for a legacy page, each entry's range.
 * Never throws: damage is reported in the result. With `correct`, a group that fails its CRC is
 * searched for the one byte change that makes it pass (about 33,000 CRCs of 128 bytes); a change is
 * taken only when exactly one exists.
 */
export function decodePage (stored: Uint8Array, pageId: number, correct = false): DecodedPage {
  const result: DecodedPage = { entries: new Float64Array(pageEntries), checksummed: false, problem: null, invalid: [], unverified: [], corrected: [] }
  if (stored.byteLength !== pageBytes && stored.byteLength !== storedPageBytes) {
    result.problem = `has ${stored.byteLength} bytes, expected ${storedPageBytes} (or ${pageBytes} for a legacy page)`
    result.entries.fill(lostEntry)
    return result
  }
  const bytes = Buffer.from(stored) // a private, aligned copy that corrections may change
  if (bytes.length === storedPageBytes) {
    result.checksummed = true
    const seed = pageSeed(pageId)
    const crcAt = (g: number) => pageBytes + pageTrailerHeaderBytes + 4 * g
    const headerOk = bytes.readUInt32LE(pageBytes) === pageTrailerMagic && bytes.readUInt16LE(pageBytes + 4) === pageFormatVersion && bytes.readUInt16LE(pageBytes + 6) === pageGroupEntries
    const trailerOk = headerOk && trailerCrc(bytes, seed) === bytes.readUInt32LE(storedPageBytes - 4)
    let bad: number[] = []
    const crcs = pageGroupCrcs(bytes, seed)
    for (let g = 0; g < pageGroups; g++) if (crcs[g] !== bytes.readUInt32LE(crcAt(g))) bad.push(g)
    if (!trailerOk && bad.length === 1) {
      // One damaged spot: either the group's bytes or its stored CRC. If putting the group's computed
      // CRC in place makes the trailer's own CRC pass, the stored CRC was the damaged part.
      const patched = Buffer.from(bytes.subarray(pageBytes))
      patched.writeUInt32LE(pageGroupCrc(bytes, bad[0], pageId, seed), crcAt(bad[0]) - pageBytes)
      const trailer = Buffer.concat([bytes.subarray(0, pageBytes), patched])
      if (headerOk && trailerCrc(trailer, seed) === trailer.readUInt32LE(storedPageBytes - 4)) {
        result.corrected.push(`the checksum of entries ${bad[0] * pageGroupEntries}-${bad[0] * pageGroupEntries + pageGroupEntries - 1} was damaged; the entries are intact`)
        bad = []
      }
    } else if (!trailerOk && bad.length === 0) {
      result.corrected.push('the page trailer was damaged; every entry passed its checksum')
    }
    for (const g of bad) {
      if (correct && correctGroup(bytes, g, pageId, seed, bytes.readUInt32LE(crcAt(g)), result.corrected)) continue
      result.unverified.push(g)
    }
  }
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, pageEntries * 2)
  const unverified = new Set(result.unverified)
  for (let i = 0; i < pageEntries; i++) {
    if (unverified.has(Math.floor(i / pageGroupEntries))) { result.entries[i] = lostEntry; continue }
    const hi = words[2 * i + 1]
    const value = hi * 4294967296 + words[2 * i]
    if (hi >= 2 ** 21 || Math.floor(value / entryKindShift) > entryKindMax) { result.invalid.push(i); result.entries[i] = lostEntry; continue }
    result.entries[i] = value
  }
  return result
}

/** Finds the single byte change of group `g` that makes it match `expected`; applies it when unique. */
function correctGroup (bytes: Buffer, g: number, pageId: number, seed: number, expected: number, notes: string[]): boolean {
  const start = g * pageGroupBytes
  let found: { at: number, value: number } | null = null
  let count = 0
  for (let at = start; at < start + pageGroupBytes && count < 2; at++) {
    const original = bytes[at]
    for (let value = 0; value < 256; value++) {
      if (value === original) continue
      bytes[at] = value
      if (pageGroupCrc(bytes, g, pageId, seed) === expected) { found = { at, value }; count++ }
    }
    bytes[at] = original
  }
  if (count !== 1 || found === null) return false
  notes.push(`entry ${Math.floor(found.at / mapEntryBytes)}: byte ${found.at % mapEntryBytes} was 0x${bytes[found.at].toString(16)}, restored to 0x${found.value.toString(16)} (proven by its group's checksum)`)
  bytes[found.at] = found.value
  return true
}

/**
 * A stored root (format 2): the page ids (u64 each), then 8 bytes: magic 0x54524456 ("VDRT") and the
 * CRC-32 of the volume id (u64) followed by the ids. A root of exactly 8 bytes per page is a
 * legacy (format 1) root, read unchecked. Without the check a damaged page id would send a volume's
 * reads to another volume's page, which passes its own checksums.
 */
export const rootTrailerMagic = 0x54524456
export const rootTrailerBytes = 8

export function encodeRoot (root: Float64Array | Uint32Array, volumeId: number): Buffer {
  const ids = encodeU64Array(root)
  const out = Buffer.alloc(ids.length + rootTrailerBytes)
  ids.copy(out, 0)
  out.writeUInt32LE(rootTrailerMagic, ids.length)
  out.writeUInt32LE(rootCrc(ids, volumeId), ids.length + 4)
  return out
}

function rootCrc (ids: Uint8Array, volumeId: number): number {
  const seed = Buffer.alloc(8)
  seed.writeBigUInt64LE(BigInt(volumeId))
  // The CRC of the seed and the ids as one run, without copying the ids after the seed; zlib.crc32 of
  // an empty buffer ignores its initial value (an empty root is common), so that case stops at the seed.
  const seedCrc = zlib.crc32(seed)
  return ids.byteLength === 0 ? seedCrc : zlib.crc32(ids, seedCrc)
}

/**
 * Decodes a stored root of `count` page ids, 4 bytes an id when every id fits 32 bits (block-map.ts,
 * RootIds); throws RangeError when it is damaged.
 */
export function decodeRoot (stored: Uint8Array, count: number, volumeId: number): Float64Array | Uint32Array {
  if (stored.byteLength === count * 8) return decodeU64Array(stored, count, true)
  if (stored.byteLength !== count * 8 + rootTrailerBytes) throw new RangeError(`the root has ${stored.byteLength} bytes, expected ${count * 8 + rootTrailerBytes}`)
  const bytes = Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength) // a view: decodeU64Array copies the ids out
  if (bytes.readUInt32LE(count * 8) !== rootTrailerMagic || bytes.readUInt32LE(count * 8 + 4) !== rootCrc(bytes.subarray(0, count * 8), volumeId)) {
    throw new RangeError('the root fails its checksum')
  }
  return decodeU64Array(bytes, count, true)
}

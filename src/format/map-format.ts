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
 * A map page is pageEntries entries, stored as one BLOB of pageBytes bytes. A root is the list of
 * page ids of a volume (0 = no page: all its blocks are holes), stored as u64 little-endian.
 */

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
export function encodeU64Array (values: Float64Array): Buffer {
  const out = Buffer.allocUnsafe(values.length * 8)
  const words = new Uint32Array(out.buffer, out.byteOffset, values.length * 2)
  for (let i = 0; i < values.length; i++) {
    const v = values[i]
    const lo = v % 4294967296
    words[2 * i] = lo
    words[2 * i + 1] = (v - lo) / 4294967296
  }
  return out
}

/** Decodes u64 little-endian values; throws when a value does not fit below 2^53 (corrupt input). */
export function decodeU64Array (bytes: Uint8Array, count: number): Float64Array {
  if (bytes.byteLength < count * 8) throw new RangeError(`expected ${count * 8} bytes, got ${bytes.byteLength}`)
  const copy = Buffer.from(bytes.subarray(0, count * 8)) // aligned copy
  const words = new Uint32Array(copy.buffer, copy.byteOffset, count * 2)
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

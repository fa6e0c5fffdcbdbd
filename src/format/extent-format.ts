/**
 * Delta extent file format, shared by its writer and reader (src/extent/delta-extent.ts).
 *
 * A delta extent is a file of block slots. The header occupies the first extentHeaderBytes.
 *
 * Version 2 (written since issue #9): a checksum table follows the header, then the slots. Every
 * 4 KiB sector of every slot has a u32 in the table, written with the sector: 0 = never written (the
 * sector must read as zeros), else sectorSum() of its bytes (CRC-32, 0 stored as 0xFFFFFFFF). Reads
 * and sealing check every sector they touch: bit rot or a truncated file is EIO plus a report, never
 * zeros or wrong data. The file is created at least dataStart bytes long, so a file shorter than that
 * is damage; a sector past the end of the file reads as zeros and must have entry 0.
 *   table entry of sector k of slot i: extentHeaderBytes + (i * sectorsPerSlot + k) * 4
 *   slot i:                            dataStart = extentHeaderBytes + tableBytes, + i * blockBytes
 *   tableBytes = extentSlotsMax * sectorsPerSlot * 4, rounded up to 4 KiB (1 MiB at 64 KiB blocks; sparse)
 *
 * Version 3 (written since issue #10): as version 2, plus a base table between the checksum table and
 * the slots, so that a first write of part of a sealed block writes only the sectors it covers (qcow2's
 * extended L2 idea). Each slot has a 16-byte entry in it: all zero = a whole slot (a sector with table
 * entry 0 reads as zeros, as in version 2); else u64 the map entry (always a chunk entry) of the block
 * the slot was written over, u32 CRC-32 of (extent id u64, slot u64, that entry u64), u32 zero: a
 * *partial* slot. An entry that fails its CRC makes its slot fail with CORRUPT (never zeros or
 * another block's bytes). A sector of a partial slot with table entry 0 was never written and reads
 * from that chunk; its bytes in the file (zeros) are not served. The base entry is written with the
 * slot's first sectors, before any map points at the slot, and never changes while a map does.
 *   base entry of slot i: extentHeaderBytes + tableBytes + i * 16
 *   slot i:               dataStart = extentHeaderBytes + tableBytes + baseTableBytes, + i * blockBytes
 *   baseTableBytes = extentSlotsMax * 16, rounded up to 4 KiB (256 KiB; sparse)
 *
 * Version 1 (older pools): no table; slot i starts at extentHeaderBytes + i * blockBytes, and is
 * read unchecked.
 *
 *   offset size description (little-endian)
 *   0      8    magic "VDXTENT1"
 *   8      4    format version (1, 2 or 3)
 *   12     4    block bytes
 *   16     8    extent id
 *   24     8    id of the volume that wrote it
 *   32     8    creation time, ms since the epoch
 *   40     4056 zero
 */
import { crc32 } from 'node:zlib'
import { extentHeaderBytes, extentSlotsMax } from '../limits'
import { addonFunction } from './native-addon'

/**
 * The CRC-32 of sectors: the FUSE 3 addon's (native/fuse3/crc32_fast.c, carry-less multiplication where
 * the CPU has it: 500-640 ns per 4 KiB from JavaScript against 1,440-2,300 for node:zlib's, measured in
 * one process) when it loads, in the daemon and in the workers alike, else zlib's. The two are the same
 * function (test/unit/crc32.test.ts checks every length, alignment and starting value), so a sum
 * written by either is checked by either.
 */
function loadSectorCrc (): { crc: (bytes: Uint8Array) => number, native: boolean } {
  const native = addonFunction<(data: Uint8Array, crc: number) => number>('crc32')
  if (native !== null) return { crc: bytes => native(bytes, 0), native: true }
  return { crc: bytes => crc32(bytes) >>> 0, native: false }
}
/** Loaded at the first sum (a CLI that never sums a sector never loads the addon). */
let sectorCrc: { crc: (bytes: Uint8Array) => number, native: boolean } | null = null

/** Whether sector sums are the addon's (for tests). */
export function sectorCrcNative (): boolean { return (sectorCrc ??= loadSectorCrc()).native }

export const extentMagic = Buffer.from('VDXTENT1', 'latin1')
/** The version new extents get; readers accept 1, 2 and 3. */
export const extentFormatVersion = 3
export const extentFormatVersionUnchecked = 1
/** Version 2: sector checksums, no base table (no partial slots). */
export const extentFormatVersionChecked = 2
export const extentHeaderFields = {
  magic: 0, version: 8, blockBytes: 12, extentId: 16, volumeId: 24, createdMs: 32
} as const

/** Bytes covered by one checksum table entry. */
export const extentSectorBytes = 4096
/** Bytes of one table entry (u32 little-endian). */
export const extentSumBytes = 4

export function sectorsPerSlot (blockBytes: number): number {
  return blockBytes / extentSectorBytes
}

export function tableBytes (blockBytes: number): number {
  return Math.ceil(extentSlotsMax * sectorsPerSlot(blockBytes) * extentSumBytes / 4096) * 4096
}

/** Bytes of one base table entry: u64 map entry, u32 CRC-32, u32 zero (little-endian). */
export const extentBaseBytes = 16

export function baseTableBytes (): number {
  return Math.ceil(extentSlotsMax * extentBaseBytes / 4096) * 4096
}

/** Whether extents of this version have a base table (may hold partial slots). */
export function hasBases (version: number): boolean {
  return version >= 3
}

/** Where the base table entry of slot `slot` is (version 3). */
export function baseOffset (slot: number, blockBytes: number): number {
  return extentHeaderBytes + tableBytes(blockBytes) + slot * extentBaseBytes
}

/** Where slot 0 starts. */
export function dataStart (version: number, blockBytes: number): number {
  if (version === extentFormatVersionUnchecked) return extentHeaderBytes
  return extentHeaderBytes + tableBytes(blockBytes) + (hasBases(version) ? baseTableBytes() : 0)
}

export function slotOffset (slot: number, blockBytes: number, version = extentFormatVersion): number {
  return dataStart(version, blockBytes) + slot * blockBytes
}

/** Where the table entry of sector `sector` of slot `slot` is. */
export function sumOffset (slot: number, sector: number, blockBytes: number): number {
  return extentHeaderBytes + (slot * sectorsPerSlot(blockBytes) + sector) * extentSumBytes
}

/** The checksum a written sector stores: CRC-32 of its bytes, never 0 (0 means never written). */
export function sectorSum (bytes: Uint8Array): number {
  const sum = (sectorCrc ??= loadSectorCrc()).crc(bytes)
  return sum === 0 ? 0xffffffff : sum
}

/** Whether `bytes` (one sector) match table entry `entry`. */
export function sectorMatches (bytes: Uint8Array, entry: number): boolean {
  if (entry !== 0) return sectorSum(bytes) === entry
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false
  return true
}

function baseCheck (extentId: number, slot: number, entry: number): number {
  const key = Buffer.alloc(24)
  key.writeBigUInt64LE(BigInt(extentId), 0)
  key.writeBigUInt64LE(BigInt(slot), 8)
  key.writeBigUInt64LE(BigInt(entry), 16)
  return crc32(key) >>> 0
}

/** The stored base entry of slot `slot` of extent `extentId` over map entry `entry` (not 0). */
export function encodeBase (extentId: number, slot: number, entry: number): Buffer {
  const out = Buffer.alloc(extentBaseBytes)
  out.writeBigUInt64LE(BigInt(entry), 0)
  out.writeUInt32LE(baseCheck(extentId, slot, entry), 8)
  return out
}

/** A stored base entry: 0 for a whole slot, the map entry underneath, or null when it fails its check. */
export function decodeBase (stored: Uint8Array, extentId: number, slot: number): number | null {
  let zero = true
  for (let i = 0; i < extentBaseBytes; i++) if (stored[i] !== 0) { zero = false; break }
  if (zero) return 0
  const view = Buffer.from(stored.buffer, stored.byteOffset, extentBaseBytes)
  const big = view.readBigUInt64LE(0)
  if (big >= 2n ** 53n || view.readUInt32LE(12) !== 0) return null
  const entry = Number(big)
  return entry !== 0 && view.readUInt32LE(8) === baseCheck(extentId, slot, entry) ? entry : null
}

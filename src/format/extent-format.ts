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
 * Version 1 (older pools): no table; slot i starts at extentHeaderBytes + i * blockBytes, and is
 * read unchecked.
 *
 *   offset size description (little-endian)
 *   0      8    magic "VDXTENT1"
 *   8      4    format version (1 or 2)
 *   12     4    block bytes
 *   16     8    extent id
 *   24     8    id of the volume that wrote it
 *   32     8    creation time, ms since the epoch
 *   40     4056 zero
 */
import { crc32 } from 'node:zlib'
import { extentHeaderBytes, extentSlotsMax } from '../limits'

export const extentMagic = Buffer.from('VDXTENT1', 'latin1')
/** The version new extents get; readers accept 1 and 2. */
export const extentFormatVersion = 2
export const extentFormatVersionUnchecked = 1
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

/** Where slot 0 starts. */
export function dataStart (version: number, blockBytes: number): number {
  return version === extentFormatVersionUnchecked ? extentHeaderBytes : extentHeaderBytes + tableBytes(blockBytes)
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
  const sum = crc32(bytes) >>> 0
  return sum === 0 ? 0xffffffff : sum
}

/** Whether `bytes` (one sector) match table entry `entry`. */
export function sectorMatches (bytes: Uint8Array, entry: number): boolean {
  if (entry !== 0) return sectorSum(bytes) === entry
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false
  return true
}

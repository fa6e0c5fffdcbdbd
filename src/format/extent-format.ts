/**
 * Delta extent file format, shared by its writer and reader (src/extent/delta-extent.ts).
 *
 * A delta extent is an append-only file of block slots. The header occupies the first
 * extentHeaderBytes; slot i starts at extentHeaderBytes + i * blockBytes. A slot past the end of the
 * file (or the part of it past the end) reads as zeros: a partial write to a hole writes only its bytes.
 *
 *   offset size description (little-endian)
 *   0      8    magic "VDXTENT1"
 *   8      4    format version (1)
 *   12     4    block bytes
 *   16     8    extent id
 *   24     8    id of the volume that wrote it
 *   32     8    creation time, ms since the epoch
 *   40     4056 zero
 */
import { extentHeaderBytes } from '../limits'

export const extentMagic = Buffer.from('VDXTENT1', 'latin1')
export const extentFormatVersion = 1
export const extentHeaderFields = {
  magic: 0, version: 8, blockBytes: 12, extentId: 16, volumeId: 24, createdMs: 32
} as const

export function slotOffset (slot: number, blockBytes: number): number {
  return extentHeaderBytes + slot * blockBytes
}

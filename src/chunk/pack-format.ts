/**
 * Pack file format, shared by the chunk store's writer and the open worker's reader.
 *
 * A pack is an append-only file of chunk records after a header:
 *
 *   header (packHeaderBytes = 64)
 *   offset size field
 *   0      8    magic "VDPACK01"
 *   8      4    format version (1)
 *   12     4    block bytes of the pool
 *   16     8    pack id
 *   24     8    creation time, ms since the epoch
 *   32     32   zero
 *
 *   chunk record (chunkHeaderBytes = 56, then the payload)
 *   0      4    magic 0x4b434456 ("VDCK")
 *   4      4    flags: bit 0 = payload is zstd-compressed
 *   8      4    raw bytes (the block's length)
 *   12     4    stored bytes (the payload's length)
 *   16     32   BLAKE3-256 of the raw block
 *   48     8    chunk id (what map entries name)
 *   56     ...  payload
 *
 * The catalog's chunk index points at the payload; the header makes a pack self-describing, so the
 * index can be rebuilt from the packs alone.
 */
export const packMagic = Buffer.from('VDPACK01', 'latin1')
export const packFormatVersion = 1
export const packHeaderBytes = 64
export const chunkMagic = 0x4b434456
export const chunkHeaderBytes = 56
export const chunkHeaderFields = { magic: 0, flags: 4, rawBytes: 8, storedBytes: 12, hash: 16, id: 48 } as const
export const chunkFlagCompressed = 1

export { packFileName } from '../format/pool-format'

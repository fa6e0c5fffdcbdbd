/**
 * A lazy pull's references file, `lazy/UUID.refs` (docs/FORMAT.md, "Lazy pull's references"): written
 * by the pull's stream as the references arrive and read by the apply after the reply, both in
 * volume/lazy-refs.ts. A header, then one record per reference, in strictly increasing block order (a
 * binary search over the records finds a block's batch). All integers little-endian.
 *
 * | offset | size | header field |
 * |---|---|---|
 * | 0 | 8 | magic `VDLZREFS` |
 * | 8 | 4 | format version, 1 |
 * | 12 | 4 | bytes per record, 44 |
 *
 * | offset | size | record field |
 * |---|---|---|
 * | 0 | 6 | block index (u48: a 64 TiB volume of 4 KiB blocks has 2^34 blocks) |
 * | 6 | 2 | 0 (the index's top bytes as a u64) |
 * | 8 | 32 | the block's BLAKE3-256 id |
 * | 40 | 4 | CRC-32 of bytes 0..39 (a damaged record is refused, never mapped) |
 */
export const refsMagic = 'VDLZREFS'
export const refsFormatVersion = 1
export const refsHeaderBytes = 16
/** Bytes per record: the block index (u64 LE, its top 2 bytes 0), the BLAKE3 id, the CRC-32 of the 40 before. */
export const refBytes = 44
/** Where a record's CRC-32 (of its bytes before it) lies. */
export const refCrcOffset = 40
export const refIndexBytes = 6
export const refHashOffset = 8
export const refHashBytes = 32
/** The file of pull UUID in lazyDir: `${uuid}${refsSuffix}`. */
export const refsSuffix = '.refs'

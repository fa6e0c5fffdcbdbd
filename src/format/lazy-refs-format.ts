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

/**
 * A pending clone's record, `lazy/PULL.CLONE.clone` (docs/FORMAT.md, "A pending clone's record"): which
 * block ranges of pull PULL's references are in the map of clone CLONE (a volume's uuid), so that an apply
 * after a kill sets into the clone only the others (a range the clone may have written since is never set
 * again). Written by volume/lazy-refs.ts (CloneRecord): the header and the ranges the clone was made with,
 * fdatasynced (and its directory) before the clone's row can be committed; one record appended and
 * fdatasynced per batch applied into the clone, after the commit that makes the batch's entries durable
 * and before any write of the clone may reach them. A record that fails its CRC (a torn append) ends the
 * file: the ranges after it are applied again, which nothing of the clone's can have changed.
 *
 * | offset | size | header field |
 * |---|---|---|
 * | 0 | 8 | magic `VDLZCLON` |
 * | 8 | 4 | format version, 1 |
 * | 12 | 4 | bytes per record, 16 |
 * | 16 | 8 | the backup's size in blocks (u48, then 2 bytes 0): no reference is at or past it |
 *
 * | offset | size | record field |
 * |---|---|---|
 * | 0 | 6 | first block of the range (u48) |
 * | 6 | 6 | the block after its last (u48; 2^48 - 1: to the end) |
 * | 12 | 4 | CRC-32 of bytes 0..11 |
 */
export const cloneMagic = 'VDLZCLON'
export const cloneFormatVersion = 1
export const cloneHeaderBytes = 24
export const cloneRecordBytes = 16
/** A range's end that stands for "to the end of the volume" (Infinity in memory). */
export const cloneRangeEnd = 2 ** 48 - 1
/** The record of clone CLONE pending with pull PULL, in lazyDir: `${pull}.${clone}${cloneSuffix}`. */
export const cloneSuffix = '.clone'

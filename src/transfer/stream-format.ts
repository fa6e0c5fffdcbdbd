/**
 * The export stream's constants (docs/FORMAT.md, "Export stream"), shared by its encoder and its
 * decoder (stream.ts) and nothing else. All integers are little-endian.
 *
 *   header   magic, version, the backup's identity, its size and block size, the base's identity
 *   records  one per changed block, in increasing block order: data (raw or zstd) or zero
 *   trailer  the record count and the BLAKE3-256 of every byte before the trailer
 */

/** "VDSTREAM": the first 8 bytes of every stream. */
export const streamMagic = Buffer.from('VDSTREAM', 'ascii')
/** The version this vdiskfs writes and reads. */
export const streamVersion = 1

/**
 * Header: a fixed part, then the backup's name (UTF-8, nameBytes long).
 *
 *   offset  size  field
 *   0       8     magic "VDSTREAM"
 *   8       2     version (1)
 *   10      2     nameBytes: length of the name that follows the fixed part
 *   12      4     blockBytes: the block size of the source pool
 *   16      16    uuid: the backup's stable identity (RFC 4122 bytes)
 *   32      16    baseUuid: the base backup's identity for an incremental stream; all zero for a full one
 *   48      8     size: the backup's size in bytes
 *   56      8     createdMs: the backup's creation time (ms since the epoch, UTC)
 *   64      8     records: how many block records follow
 *   72      4     flags: 0, or headerFlagSource (readers refuse any other bit)
 *   76      4     CRC-32 of bytes 0-75 followed by the name and the source part
 *   80      N     name
 *
 * With headerFlagSource, the source part follows the name: the identity of the volume the backup was
 * taken from (prune groups by it on the importing host as on the exporting one) and its label.
 *
 *   0       16    sourceUuid (RFC 4122 bytes)
 *   16      2     labelBytes (at most headerNameBytesMax + 10)
 *   18      L     label, e.g. "disk web.img" (UTF-8)
 */
export const headerFields = { magic: 0, version: 8, nameBytes: 10, blockBytes: 12, uuid: 16, baseUuid: 32, size: 48, createdMs: 56, records: 64, flags: 72, crc: 76 } as const
export const headerFixedBytes = 80
/** Longest name a header carries (a volume name is at most 128 bytes). */
export const headerNameBytesMax = 255
/** Flag: the header carries its source part (the source volume's identity and label) after the name. */
export const headerFlagSource = 1
/** The source part's fixed bytes (uuid, labelBytes), and the longest label ("disk " + a name). */
export const headerSourceFixedBytes = 18
export const headerSourceLabelBytesMax = headerNameBytesMax + 10

/**
 * Block record: a fixed part, then payloadBytes of payload.
 *
 *   offset  size  field
 *   0       4     magic 0x4b424456 ("VDBK")
 *   4       1     type: 1 raw data, 2 zstd-compressed data, 3 zero (the block reads as zeros; no payload)
 *   5       3     reserved, 0
 *   8       8     block index (bytes index * blockBytes .. + blockBytes of the volume)
 *   16      4     payloadBytes: stored bytes that follow (0 for a zero block)
 *   20      4     rawBytes: bytes of the block once decompressed; always blockBytes
 *   24      32    BLAKE3-256 of the block's raw bytes (its chunk id); all zero for a zero block
 *   56      -     payload
 */
export const recordMagic = 0x4b424456
export const recordFields = { magic: 0, type: 4, index: 8, payloadBytes: 16, rawBytes: 20, hash: 24 } as const
export const recordFixedBytes = 56
export const recordTypeRaw = 1
export const recordTypeZstd = 2
export const recordTypeZero = 3

/**
 * Trailer:
 *
 *   offset  size  field
 *   0       4     magic 0x444e4556 ("VEND")
 *   4       4     reserved, 0
 *   8       8     records: the number of block records (equals the header's)
 *   16      32    BLAKE3-256 of every byte of the stream before the trailer
 *   48            end of stream: nothing may follow
 */
export const trailerMagic = 0x444e4556
export const trailerFields = { magic: 0, records: 8, checksum: 16 } as const
export const trailerBytes = 48

export const hashBytes = 32

/** zstd level of the encoder: level 1 is about 770 MB/s on an ext4 image here, at ratio 0.29. */
export const streamZstdLevel = 1
/** Largest block size a stream may carry (a pool's largest). */
export const streamBlockBytesMax = 1024 * 1024
/** Largest volume size a stream may carry (a pool's largest, limits.ts volumeBytesMax). */
export const streamVolumeBytesMax = 64 * 1024 ** 4

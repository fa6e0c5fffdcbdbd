/*
 * Verified pieces of a sealed chunk (docs/FORMAT.md, "Pieced payload"): a compressed chunk's payload
 * may start with a zstd skippable frame holding a table (each piece's frame length and the BLAKE3
 * chaining value of its subtree), followed by one zstd frame per 16 KiB piece. The chaining values
 * of the pieces merge to the chunk's BLAKE3-256, so one piece is checked against the chunk's id
 * without reading the others (BLAKE3's tree, as bao uses it).
 */
#ifndef VDISKFS_PIECES_H
#define VDISKFS_PIECES_H
#include <stddef.h>
#include <stdint.h>

#define PIECE_SHIFT 14u
#define PIECE_BYTES (1u << PIECE_SHIFT)
#define PIECE_MAX 64u
#define PIECE_MAGIC 0x184D2A56u   /* a zstd skippable frame's magic (0x184D2A50..5F) */
#define PIECE_TAG 0x43504456u     /* "VDPC" */
#define PIECE_VERSION 1u
/* Bytes of the table's skippable frame for `count` pieces: magic, length, tag, version, shift, count, lengths, values. */
#define PIECE_TABLE_BYTES(count) (20u + 36u * (count))

/* How many pieces a block of `raw` bytes is cut into: 0 when it is not (not a power of two of at least two pieces). */
unsigned pieces_count(uint64_t raw);
/* The chaining value (non-root) of the BLAKE3 subtree `input` (PIECE_BYTES) at piece `index`. */
void pieces_value(const uint8_t *input, unsigned index, uint8_t out[32]);
/* The BLAKE3-256 root that `count` (a power of two, >= 2) pieces' chaining values merge to. */
void pieces_root(const uint8_t *values, unsigned count, uint8_t out[32]);
/* The values of every piece of `input` (count * 32 bytes) and their root (the block's BLAKE3-256). */
void pieces_all(const uint8_t *input, unsigned count, uint8_t *values, uint8_t root[32]);
#endif

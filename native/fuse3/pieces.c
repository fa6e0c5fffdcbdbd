/* Verified pieces of sealed chunks: BLAKE3 subtree values and their root (see pieces.h). */
#include <string.h>
#include "blake3_impl.h"
#include "pieces.h"

unsigned pieces_count(uint64_t raw) {
  if (raw < 2u * PIECE_BYTES || raw % PIECE_BYTES != 0) return 0;
  uint64_t n = raw / PIECE_BYTES;
  if ((n & (n - 1)) != 0 || n > PIECE_MAX) return 0;
  return (unsigned)n;
}

/* Merges `n` (a power of two, >= 2) chaining values in `level` pairwise, in place, down to the last two (one parent block). */
static void merge_to_two(uint8_t *level, unsigned n) {
  while (n > 2) {
    for (unsigned i = 0; i < n / 2; i++) {
      uint32_t cv[8];
      memcpy(cv, IV, sizeof(cv));
      uint8_t block[BLAKE3_BLOCK_LEN];
      memcpy(block, level + (size_t)i * 64, 64);
      blake3_compress_in_place(cv, block, BLAKE3_BLOCK_LEN, 0, PARENT);
      store_cv_words(level + (size_t)i * 32, cv);
    }
    n /= 2;
  }
}

void pieces_value(const uint8_t *input, unsigned index, uint8_t out[32]) {
  enum { CHUNKS = PIECE_BYTES / BLAKE3_CHUNK_LEN };
  const uint8_t *inputs[CHUNKS];
  uint8_t values[CHUNKS * BLAKE3_OUT_LEN];
  for (unsigned i = 0; i < CHUNKS; i++) inputs[i] = input + (size_t)i * BLAKE3_CHUNK_LEN;
  blake3_hash_many(inputs, CHUNKS, BLAKE3_CHUNK_LEN / BLAKE3_BLOCK_LEN, IV, (uint64_t)index * CHUNKS, true, 0, CHUNK_START, CHUNK_END, values);
  merge_to_two(values, CHUNKS);
  uint32_t cv[8];
  memcpy(cv, IV, sizeof(cv));
  blake3_compress_in_place(cv, values, BLAKE3_BLOCK_LEN, 0, PARENT);
  store_cv_words(out, cv);
}

void pieces_root(const uint8_t *values, unsigned count, uint8_t out[32]) {
  uint8_t level[PIECE_MAX * 32];
  memcpy(level, values, (size_t)count * 32);
  merge_to_two(level, count);
  uint32_t cv[8];
  memcpy(cv, IV, sizeof(cv));
  blake3_compress_in_place(cv, level, BLAKE3_BLOCK_LEN, 0, PARENT | ROOT);
  store_cv_words(out, cv);
}

void pieces_all(const uint8_t *input, unsigned count, uint8_t *values, uint8_t root[32]) {
  for (unsigned i = 0; i < count; i++) pieces_value(input + (size_t)i * PIECE_BYTES, i, values + (size_t)i * 32);
  pieces_root(values, count, root);
}

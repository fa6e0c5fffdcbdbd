/*
 * The fast path's published words (docs/FASTPATH.md, "Sparse pages"): per open volume, one 64-bit word
 * per block that tells the addon's threads what they may do with it (its kind, extent and slot, flags),
 * in a three-level table of sparse pages. JavaScript publishes, clears and freezes runs of words (its
 * thread only); the addon's worker threads read words and set the word of a block a native first write
 * gave a slot. Apart from the addon (vdiskfs_fuse3.c) so that a harness (native/fuse3/test/words-test.c,
 * test/unit/native-words.test.ts) drives the same code against a model, with threads and failed mallocs.
 */
#ifndef VDISKFS_WORDS_H
#define VDISKFS_WORDS_H
#include <stddef.h>
#include <stdint.h>

#define FAST_PAGE_BITS 12
#define FAST_PAGE (1u << FAST_PAGE_BITS)
#define FAST_MID (1u << 12)
#define FAST_TOP (1u << 12)
#define FAST_BLOCKS_MAX ((uint64_t)FAST_PAGE * FAST_MID * FAST_TOP)
/*
 * A page of words is FAST_SUBS slots of FAST_SUB words each. A slot is either the address of its
 * sub-page (even: FAST_SUB words in memory) or, odd, (word << 1) | 1: every word of the sub-page is
 * `word`, with no memory of its own (a run of holes, or of "ask the engine"). A sparse 1 TiB disk's
 * pages are mostly holes: 512 bytes a page and 512 per sub-page that holds other words, against 32 KiB
 * a page. Only a compare-and-swap changes a slot: from one uniform word to another (JavaScript, for a
 * whole sub-page), or from a uniform word to a sub-page filled with it (whoever must change one word of
 * it: fast_sub_words). A sub-page once in memory stays until the volume's record is freed, so a word's
 * address, once had, stays valid while the volume is referenced.
 */
#define FAST_SUB_BITS 6
#define FAST_SUB (1u << FAST_SUB_BITS)
#define FAST_SUBS (FAST_PAGE / FAST_SUB)
#define FAST_UNIFORM(word) (((word) << 1) | 1)

/* FAST_WRITABLE: as FAST_DELTA, and a WRITE of whole sectors within the block may overwrite the slot
 * here (the slot is in one of the volume's writable extents; see "WRITEs" below). */
enum { FAST_NONE = 0, FAST_DELTA = 1, FAST_HOLE = 2, FAST_WRITABLE = 3, FAST_CHUNK = 4, FAST_CHUNK_UNREAD = 5 };
/* FAST_CHUNK_UNREAD: a sealed chunk (id in the high half) the addon does not read (not registered):
 * READs go to the engine; a first write of part of it makes a partial slot over it (docs/FASTPATH.md). */
/* Flags in a word's low byte beside its kind (docs/FASTPATH.md, "First writes"): FAST_ALLOC, a WRITE of
 * the whole block may give it a new slot from the volume's lease; FAST_NATIVE, the word was set by such
 * a write here and the engine has not taken it into its map yet (fastPublish leaves it alone). */
#define FAST_KIND_MASK 0x1full
/* FAST_PARTIAL (with FAST_DELTA or FAST_WRITABLE): the slot is partial, over a chunk: a sector whose
 * checksum entry is 0 is the chunk's, not zeros (a READ of it goes to the engine). */
#define FAST_PARTIAL 0x20ull
#define FAST_NATIVE 0x40ull
#define FAST_ALLOC 0x80ull

/* A volume's words: top -> mid (FAST_MID page pointers) -> page (FAST_SUBS slots: a sub-page, or a uniform word). */
typedef struct fast_words { uint64_t **top[FAST_TOP]; } fast_words;

/* Memory the pages and sub-pages of every volume take (status: fastWordBytes). */
extern uint64_t fast_word_bytes;

/* Block's word (0 when never published: ask the engine); any thread. */
uint64_t fast_word(fast_words *w, uint64_t block);
/* Where block's word is (NULL: its page was never published, or memory ran out: then the word is 0), for a worker thread. */
uint64_t *fast_word_at(fast_words *w, uint64_t block);
/* A native first write's word: `word` if the one at `at` is still `expected` (1), else FAST_NATIVE alone (0). */
int fast_word_set_native(uint64_t *at, uint64_t expected, uint64_t word);
/* Publishes n words ([low, high] pairs) from block `first` (JavaScript's thread); 0 when memory ran out. */
int fast_words_publish(fast_words *w, uint64_t first, const uint32_t *pairs, size_t n);
/* Blocks [first, end) cleared (`freeze` 0: they ask the engine) or frozen (1: FAST_WRITABLE -> FAST_DELTA, no FAST_ALLOC). */
void fast_words_change(fast_words *w, uint64_t first, uint64_t end, int freeze);
/* Frees every page and sub-page (no thread may use them any more). */
void fast_words_free(fast_words *w);
#endif

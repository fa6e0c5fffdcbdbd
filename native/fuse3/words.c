/* The fast path's published words: see words.h. */
#include <stdlib.h>
#include "words.h"

/* A harness builds this file with -DWORDS_MALLOC=its_malloc to make allocations fail. */
#ifdef WORDS_MALLOC
void *WORDS_MALLOC(size_t n);
void *WORDS_CALLOC(size_t n, size_t size);
#else
#define WORDS_MALLOC malloc
#define WORDS_CALLOC calloc
#endif

/* And with -DWORDS_RACE=its_hook, called between a load and the compare-and-swap after it (with the
 * word's address where it is one word), so that the harness can act there as another thread would. */
#ifdef WORDS_RACE
void WORDS_RACE(uint64_t *word);
#else
#define WORDS_RACE(word) ((void)0)
#endif

uint64_t fast_word_bytes;

uint64_t fast_word(fast_words *w, uint64_t block) {
  if (block >= FAST_BLOCKS_MAX) return 0;
  uint64_t **mid = __atomic_load_n(&w->top[block >> 24], __ATOMIC_ACQUIRE);
  if (mid == NULL) return 0;
  uint64_t *page = __atomic_load_n(&mid[(block >> FAST_PAGE_BITS) & (FAST_MID - 1)], __ATOMIC_ACQUIRE);
  if (page == NULL) return 0;
  uint64_t slot = __atomic_load_n(&page[(block >> FAST_SUB_BITS) & (FAST_SUBS - 1)], __ATOMIC_SEQ_CST);
  if (slot & 1) return slot >> 1;
  return __atomic_load_n(&((uint64_t *)(uintptr_t)slot)[block & (FAST_SUB - 1)], __ATOMIC_SEQ_CST);
}

/*
 * The words of the sub-page in `slot`, in memory: made from its uniform word when it has none (a
 * compare-and-swap from the uniform word seen; lost to another thread's change, it starts again from
 * what that thread stored). NULL when memory ran out: the slot is then made uniformly 0 (ask the
 * engine), which is always safe, so that no caller is left with a word it could not change.
 */
static uint64_t *fast_sub_words(uint64_t *slot) {
  uint64_t seen = __atomic_load_n(slot, __ATOMIC_SEQ_CST);
  for (;;) {
    if (!(seen & 1)) return (uint64_t *)(uintptr_t)seen;
    WORDS_RACE(NULL);
    uint64_t *sub = WORDS_MALLOC(FAST_SUB * sizeof(uint64_t));
    if (sub == NULL) {
      while ((seen & 1) && seen != FAST_UNIFORM(0) && !__atomic_compare_exchange_n(slot, &seen, FAST_UNIFORM(0), 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
      if (seen & 1) return NULL;
      continue;
    }
    for (unsigned i = 0; i < FAST_SUB; i++) sub[i] = seen >> 1;
    if (__atomic_compare_exchange_n(slot, &seen, (uint64_t)(uintptr_t)sub, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
      __atomic_add_fetch(&fast_word_bytes, FAST_SUB * sizeof(uint64_t), __ATOMIC_RELAXED);
      return sub;
    }
    free(sub);
  }
}

/* Where block's word is (NULL: its page was never published, or memory ran out: then the word is 0), for a worker thread. */
uint64_t *fast_word_at(fast_words *w, uint64_t block) {
  if (block >= FAST_BLOCKS_MAX) return NULL;
  uint64_t **mid = __atomic_load_n(&w->top[block >> 24], __ATOMIC_ACQUIRE);
  if (mid == NULL) return NULL;
  uint64_t *page = __atomic_load_n(&mid[(block >> FAST_PAGE_BITS) & (FAST_MID - 1)], __ATOMIC_ACQUIRE);
  if (page == NULL) return NULL;
  uint64_t *sub = fast_sub_words(&page[(block >> FAST_SUB_BITS) & (FAST_SUBS - 1)]);
  return sub == NULL ? NULL : &sub[block & (FAST_SUB - 1)];
}

static uint64_t *fast_page(fast_words *w, uint64_t block, int make) {
  if (block >= FAST_BLOCKS_MAX) return NULL;
  uint64_t **mid = w->top[block >> 24];
  if (mid == NULL) {
    if (!make) return NULL;
    mid = WORDS_CALLOC(FAST_MID, sizeof(uint64_t *));
    if (mid == NULL) return NULL;
    __atomic_store_n(&w->top[block >> 24], mid, __ATOMIC_RELEASE);
  }
  uint64_t *page = mid[(block >> FAST_PAGE_BITS) & (FAST_MID - 1)];
  if (page == NULL) {
    if (!make) return NULL;
    page = WORDS_MALLOC(FAST_SUBS * sizeof(uint64_t));
    if (page == NULL) return NULL;
    for (unsigned k = 0; k < FAST_SUBS; k++) page[k] = FAST_UNIFORM(0);
    __atomic_add_fetch(&fast_word_bytes, FAST_SUBS * sizeof(uint64_t), __ATOMIC_RELAXED);
    __atomic_store_n(&mid[(block >> FAST_PAGE_BITS) & (FAST_MID - 1)], page, __ATOMIC_RELEASE);
  }
  return page;
}

/* A uniform word after fast_words_change: 0 (a clear), or as a freeze leaves it. */
static uint64_t fast_word_changed(uint64_t word, int freeze) {
  if (!freeze) return 0;
  if ((word & FAST_KIND_MASK) == FAST_WRITABLE) return (word & ~(FAST_KIND_MASK | FAST_ALLOC)) | FAST_DELTA;
  return word & ~FAST_ALLOC;
}

int fast_word_set_native(uint64_t *at, uint64_t expected, uint64_t word) {
  WORDS_RACE(NULL);
  if (!__atomic_compare_exchange_n(at, &expected, word, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    /* The engine changed the word meanwhile (a freeze, a clear): it asks the engine from now on, and
     * carries FAST_NATIVE (kind 0) so that no publication from a map that does not hold this slot
     * yet replaces it before the engine took the queue (whose set of the block clears it). */
    __atomic_store_n(at, FAST_NATIVE, __ATOMIC_SEQ_CST);
    return 0;
  }
  return 1;
}

int fast_words_publish(fast_words *w, uint64_t first, const uint32_t *pairs, size_t n) {
#define PUBLISHED(k) ((uint64_t)pairs[2 * (k)] | ((uint64_t)pairs[2 * (k) + 1] << 32))
  for (size_t i = 0; i < n;) {
    /* The words given for one sub-page at a time. */
    uint64_t block = first + i;
    size_t run = (size_t)(((block | (FAST_SUB - 1)) + 1) - block);
    if (run > n - i) run = n - i;
    uint64_t w0 = PUBLISHED(i);
    int uniform = 1, any = w0 != 0;
    for (size_t k = 1; k < run; k++) { uint64_t x = PUBLISHED(i + k); if (x != w0) uniform = 0; if (x != 0) any = 1; }
    uint64_t *page = fast_page(w, block, any);
    if (page == NULL) { if (any) return 0; i += run; continue; }
    uint64_t *slot = &page[(block >> FAST_SUB_BITS) & (FAST_SUBS - 1)];
    if (uniform && (w0 >> 63) == 0) {
      /* A uniform sub-page given one word for all of it, or a part of it given the word it has: it
       * stays uniform (a uniform slot holds no word a native first write set). */
      uint64_t seen = __atomic_load_n(slot, __ATOMIC_SEQ_CST);
      int done = 0;
      WORDS_RACE(NULL);
      while ((seen & 1) && !done) {
        if (seen == FAST_UNIFORM(w0)) done = 1;
        else if (run < FAST_SUB) break;
        else done = __atomic_compare_exchange_n(slot, &seen, FAST_UNIFORM(w0), 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
      }
      if (done) { i += run; continue; }
    }
    uint64_t *sub = fast_sub_words(slot);
    if (sub == NULL) return 0;
    for (size_t k = 0; k < run; k++) {
      /* A word a native first write set stays until the engine took its slot into the map (whose set
       * clears it): the map published here may not hold that slot yet. */
      uint64_t *at = &sub[(block + k) & (FAST_SUB - 1)];
      uint64_t word = PUBLISHED(i + k);
      uint64_t old = __atomic_load_n(at, __ATOMIC_SEQ_CST);
      WORDS_RACE(at);
      while (!(old & FAST_NATIVE) && !__atomic_compare_exchange_n(at, &old, word, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    }
    i += run;
  }
#undef PUBLISHED
  return 1;
}

void fast_words_change(fast_words *w, uint64_t first, uint64_t end, int freeze) {
  for (uint64_t block = first; block < end;) {
    uint64_t *page = fast_page(w, block, 0);
    uint64_t page_end = (block | (FAST_PAGE - 1)) + 1;
    if (page_end > end) page_end = end;
    if (page == NULL) {
      /* Skip the whole mid table when it is missing. */
      if (w->top[block >> 24] == NULL) block = ((block >> 24) + 1) << 24;
      else block = page_end;
      continue;
    }
    while (block < page_end) {
      uint64_t sub_end = (block | (FAST_SUB - 1)) + 1;
      if (sub_end > page_end) sub_end = page_end;
      uint64_t *slot = &page[(block >> FAST_SUB_BITS) & (FAST_SUBS - 1)];
      /* A uniform sub-page changed whole stays uniform; one changed in part is made real first. */
      uint64_t seen = __atomic_load_n(slot, __ATOMIC_SEQ_CST);
      int done = 0;
      WORDS_RACE(NULL);
      while ((seen & 1) && !done) {
        uint64_t to = fast_word_changed(seen >> 1, freeze);
        if (to == seen >> 1) done = 1;
        else if (sub_end - block < FAST_SUB) break;
        else done = __atomic_compare_exchange_n(slot, &seen, FAST_UNIFORM(to), 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
      }
      uint64_t *sub = done ? NULL : fast_sub_words(slot);
      /* NULL and not done: memory ran out and the slot is uniformly 0 now, which a clear or a freeze allows. */
      if (sub == NULL) { block = sub_end; continue; }
      for (; block < sub_end; block++) {
        uint64_t *at = &sub[block & (FAST_SUB - 1)];
        if (!freeze) { __atomic_store_n(at, 0, __ATOMIC_SEQ_CST); continue; }
        /* Writable words become read-only, and none may take a new slot any more; a word a native first
         * write set keeps its FAST_NATIVE flag (the engine has yet to take it). A compare-and-swap: a
         * native first write may set its word between the load and the change (a plain store would
         * then drop the slot it wrote, and a READ would be answered from the word before). */
        uint64_t word = __atomic_load_n(at, __ATOMIC_SEQ_CST);
        uint64_t to = fast_word_changed(word, 1);
        WORDS_RACE(at);
        while (to != word && !__atomic_compare_exchange_n(at, &word, to, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) to = fast_word_changed(word, 1);
      }
    }
  }
}

void fast_words_free(fast_words *w) {
  for (unsigned t = 0; t < FAST_TOP; t++) {
    uint64_t **mid = w->top[t];
    if (mid == NULL) continue;
    for (unsigned m = 0; m < FAST_MID; m++) {
      uint64_t *page = mid[m];
      if (page == NULL) continue;
      for (unsigned k = 0; k < FAST_SUBS; k++) {
        if (page[k] & 1) continue;
        free((void *)(uintptr_t)page[k]);
        __atomic_sub_fetch(&fast_word_bytes, FAST_SUB * sizeof(uint64_t), __ATOMIC_RELAXED);
      }
      free(page);
      __atomic_sub_fetch(&fast_word_bytes, FAST_SUBS * sizeof(uint64_t), __ATOMIC_RELAXED);
    }
    free(mid);
    w->top[t] = NULL;
  }
}

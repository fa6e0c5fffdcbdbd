/*
 * A harness of the fast path's published words (native/fuse3/words.c), built with it and run by
 * test/unit/native-words.test.ts (and under ThreadSanitizer and AddressSanitizer by `make native-sanitize`).
 *
 * 1. Model: random publications (uniform runs, runs with a few different words, words with the top bit
 *    set, which cannot be uniform), clears, freezes and native first writes over blocks that cross page,
 *    middle-table and top-table boundaries, against a dense array of the words each block may hold; with
 *    --fail-malloc, allocations fail at random, and a word may then also read 0 (ask the engine) where
 *    the addon allows that, but a word a native first write set is never lost. Every word is compared
 *    after every step; the memory count returns to 0 when the table is freed.
 * 2. Threads: writer threads make native first writes (as the addon's WRITE does: the word loaded, then
 *    fast_word_set_native) and reader threads load words, while this thread publishes and freezes runs
 *    over the same blocks and takes set blocks back as the engine does (checks, clears, publishes them
 *    again). Inside words.c's windows between a load and its compare-and-swap (WORDS_RACE), a native
 *    first write of that word's block is made now and then right there, so every window is tried
 *    whatever the scheduler does (a plain store in place of the freeze's or the publication's
 *    compare-and-swap is caught in every run). A reader may see only a word for its own block, a hole,
 *    0, or FAST_NATIVE alone; a block a writer set holds its word (frozen or not), or FAST_NATIVE alone
 *    when the writer's compare-and-swap lost, when taken and at the end.
 * Usage: words-test [--seed N] [--ops N] [--threads N] [--rounds N] [--fail-malloc]. Exit 0: passed.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../words.h"

static uint64_t rng_state;
static uint64_t rnd(void) {
  /* splitmix64 */
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static uint64_t below(uint64_t n) { return n == 0 ? 0 : rnd() % n; }

static int fail_malloc;
static __thread uint64_t fail_state = 1;
void *words_test_malloc(size_t n) {
  if (fail_malloc) { fail_state = fail_state * 6364136223846793005ull + 1442695040888963407ull; if ((fail_state >> 33) % 5 == 0) return NULL; }
  return malloc(n);
}
void *words_test_calloc(size_t n, size_t size) {
  if (fail_malloc) { fail_state = fail_state * 6364136223846793005ull + 1442695040888963407ull; if ((fail_state >> 33) % 5 == 0) return NULL; }
  return calloc(n, size);
}

/* The blocks: a window across a top-table boundary (1 << 24), so pages, middle tables and top tables are crossed. */
#define SPAN (3u * FAST_PAGE + 300u)
static const uint64_t base_block = (1ull << 24) - FAST_PAGE - 150;

/* What a freeze makes of a word (words.c's rule, restated). */
static uint64_t frozen(uint64_t word) {
  if ((word & FAST_KIND_MASK) == FAST_WRITABLE) return (word & ~(FAST_KIND_MASK | FAST_ALLOC)) | FAST_DELTA;
  return word & ~FAST_ALLOC;
}

/* A word for block b: its own block number in the high half (extent field), a kind, maybe FAST_ALLOC. */
static uint64_t word_for(uint64_t b, unsigned variant) {
  static const uint64_t kinds[] = { FAST_DELTA, FAST_WRITABLE | FAST_ALLOC, FAST_HOLE | FAST_ALLOC, FAST_CHUNK, FAST_CHUNK_UNREAD | FAST_ALLOC, FAST_DELTA | FAST_PARTIAL };
  return ((b & 0xffffffffull) << 32) | ((uint64_t)(variant & 0xffff) << 8) | kinds[variant % 6];
}

/* ---- 1. the model ---- */

/* Per block: the word it must hold (`must`), unless `may_zero` (a failed malloc may have left the run uniformly 0). */
static uint64_t must[SPAN];
static unsigned char may_zero[SPAN];
static int failures;

static void check_all(fast_words *w, const char *step, uint64_t n) {
  for (uint64_t i = 0; i < SPAN; i++) {
    uint64_t got = fast_word(w, base_block + i);
    if (got == must[i]) { may_zero[i] = 0; continue; }
    if (may_zero[i] && got == 0) { must[i] = 0; may_zero[i] = 0; continue; }
    if (failures++ < 10) fprintf(stderr, "model: after step %" PRIu64 " (%s), block %" PRIu64 " reads %#" PRIx64 ", the model says %#" PRIx64 "%s\n",
                                 n, step, base_block + i, got, must[i], may_zero[i] ? " or 0" : "");
  }
}

/* A failed malloc inside a sub-page's run may make it uniformly 0: allowed for words no native first write set. */
static void zero_allowed(uint64_t from, uint64_t to) {
  uint64_t s = (base_block + from) & ~(uint64_t)(FAST_SUB - 1), e = ((base_block + to + FAST_SUB - 1) & ~(uint64_t)(FAST_SUB - 1));
  for (uint64_t b = s < base_block ? base_block : s; b < e && b - base_block < SPAN; b++) if (!(must[b - base_block] & FAST_NATIVE)) may_zero[b - base_block] = 1;
}

static int run_model(uint64_t ops) {
  fast_words *w = calloc(1, sizeof(fast_words));
  uint32_t *pairs = malloc(sizeof(uint32_t) * 2 * SPAN);
  memset(must, 0, sizeof(must));
  memset(may_zero, 0, sizeof(may_zero));
  uint64_t slot = 1;
  for (uint64_t n = 0; n < ops && failures == 0; n++) {
    uint64_t op = below(100);
    /* A run: mostly whole sub-pages or pages, sometimes ragged. */
    uint64_t first = below(SPAN);
    /* Mostly from a sub-page's first block (absolute: the table's alignment), sometimes anywhere. */
    if (below(4) != 0 && ((base_block + first) & ~(uint64_t)(FAST_SUB - 1)) >= base_block) first = ((base_block + first) & ~(uint64_t)(FAST_SUB - 1)) - base_block;
    uint64_t count = below(3) == 0 ? 1 + below(FAST_SUB * 3) : below(2) == 0 ? FAST_SUB : FAST_PAGE;
    if (first + count > SPAN) count = SPAN - first;
    const char *step;
    if (op < 45) {
      step = "publish";
      unsigned shape = (unsigned)below(5), variant = (unsigned)below(1 << 16);
      uint64_t uniform = shape == 0 ? 0 : shape == 1 ? (FAST_HOLE | FAST_ALLOC) : shape == 2 ? word_for(12345, variant) : 0;
      for (uint64_t k = 0; k < count; k++) {
        uint64_t word = shape <= 2 ? uniform : shape == 3 ? word_for(base_block + first + k, variant + (below(8) == 0 ? 1 : 0)) : word_for(base_block + first + k, (unsigned)below(1 << 16));
        if (shape == 4 && below(7) == 0) word |= 1ull << 63;
        pairs[2 * k] = (uint32_t)word;
        pairs[2 * k + 1] = (uint32_t)(word >> 32);
      }
      int taken = fast_words_publish(w, base_block + first, pairs, count);
      for (uint64_t k = 0; k < count; k++) {
        uint64_t i = first + k;
        if (must[i] & FAST_NATIVE) continue;
        must[i] = (uint64_t)pairs[2 * k] | ((uint64_t)pairs[2 * k + 1] << 32);
      }
      if (!taken && !fail_malloc) { fprintf(stderr, "model: publish refused with no failed malloc\n"); failures++; }
      /* A refused publication stopped part-way: the words after it kept their old values or are 0. */
      if (!taken) {
        for (uint64_t k = 0; k < count; k++) if (!(must[first + k] & FAST_NATIVE)) may_zero[first + k] = 1;
        /* ...and those not reached kept the old word: accept whatever the table holds for them, once. */
        for (uint64_t k = 0; k < count; k++) {
          uint64_t i = first + k, got = fast_word(w, base_block + i);
          if (!(must[i] & FAST_NATIVE)) must[i] = got;
        }
      }
      if (fail_malloc) zero_allowed(first, first + count);
    } else if (op < 60) {
      step = "clear";
      fast_words_change(w, base_block + first, base_block + first + count, 0);
      for (uint64_t k = 0; k < count; k++) must[first + k] = 0;
      /* A sub-page cleared in part that could not be made real is made uniformly 0 whole. */
      if (fail_malloc) zero_allowed(first, first + count);
    } else if (op < 75) {
      step = "freeze";
      fast_words_change(w, base_block + first, base_block + first + count, 1);
      for (uint64_t k = 0; k < count; k++) must[first + k] = frozen(must[first + k]);
      if (fail_malloc) zero_allowed(first, first + count);
    } else {
      step = "native first write";
      /* As the addon's WRITE: the word loaded; a first write only of a word with FAST_ALLOC. */
      uint64_t i = below(SPAN), b = base_block + i;
      uint64_t expected = fast_word(w, b);
      if (!(expected & FAST_ALLOC)) continue;
      uint64_t *at = fast_word_at(w, b);
      if (at == NULL) {
        if (!fail_malloc) { fprintf(stderr, "model: fast_word_at failed with no failed malloc\n"); failures++; }
        /* The engine writes it; the sub-page's run asks the engine now (uniformly 0). */
        zero_allowed(i, i + 1);
      } else {
        uint64_t word = ((b & 0xffffffffull) << 32) | ((slot++ & 0xffffff) << 8) | FAST_NATIVE | FAST_WRITABLE;
        if (!fast_word_set_native(at, expected, word)) { fprintf(stderr, "model: a native set lost with one thread\n"); failures++; }
        must[i] = word;
      }
    }
    check_all(w, step, n);
  }
  fast_words_free(w);
  if (__atomic_load_n(&fast_word_bytes, __ATOMIC_SEQ_CST) != 0) { fprintf(stderr, "model: %" PRIu64 " bytes of words left after the free\n", fast_word_bytes); failures++; }
  free(w);
  free(pairs);
  return failures == 0;
}

/* ---- 2. threads ---- */

#define WRITERS_MAX 8
static fast_words *shared;
static int stop_threads;
static unsigned writers;
static uint64_t set_word[SPAN];   /* what the owning writer set (0: nothing) */
static unsigned char set_won[SPAN];
/* Per block: 0 open to a first write, 1 a writer is in it, 2 set (until this thread takes it, as the engine takes the queue). */
static unsigned char bstate[SPAN];
static uint64_t reader_bad;

static void *writer(void *arg) {
  unsigned t = (unsigned)(uintptr_t)arg;
  uint64_t state = 0x1234567ull * (t + 1), slot = (uint64_t)t << 20;
  while (!__atomic_load_n(&stop_threads, __ATOMIC_SEQ_CST)) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t i = ((state >> 33) % (SPAN / writers)) * writers + t;
    unsigned char open = 0;
    if (i >= SPAN || !__atomic_compare_exchange_n(&bstate[i], &open, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) continue;
    uint64_t b = base_block + i, expected = fast_word(shared, b);
    uint64_t *at = (expected & FAST_ALLOC) ? fast_word_at(shared, b) : NULL;
    if (at == NULL) { __atomic_store_n(&bstate[i], 0, __ATOMIC_SEQ_CST); continue; }
    uint64_t word = ((b & 0xffffffffull) << 32) | ((++slot & 0xffffff) << 8) | FAST_NATIVE | FAST_WRITABLE;
    set_won[i] = (unsigned char)fast_word_set_native(at, expected, word);
    set_word[i] = word;
    __atomic_store_n(&bstate[i], 2, __ATOMIC_SEQ_CST);
  }
  return NULL;
}

/*
 * Between a load and its compare-and-swap in words.c (race_on: the threads part): at a word's address,
 * now and then a native first write of that word's block right there, as a writer thread on the other
 * core could make it (a word this harness published names its block in its high half); elsewhere a
 * short spin. So every window is tried, whatever the scheduler does.
 */
static int race_on;
static __thread int in_race;
static __thread uint64_t race_state = 7;
static uint64_t injected;
void words_test_race(uint64_t *at) {
  if (!race_on || in_race) return;
  race_state = race_state * 6364136223846793005ull + 1442695040888963407ull;
  if ((race_state >> 33) % 4 != 0) return;
  if (at == NULL) { for (volatile unsigned spin = 0; spin < 500; spin++) {} return; }
  uint64_t word = __atomic_load_n(at, __ATOMIC_SEQ_CST), b = word >> 32;
  if (!(word & FAST_ALLOC) || (word & FAST_NATIVE) || b < base_block || b - base_block >= SPAN) return;
  uint64_t i = b - base_block;
  unsigned char open = 0;
  if (!__atomic_compare_exchange_n(&bstate[i], &open, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return;
  in_race = 1;
  uint64_t native = (b << 32) | ((0xf00000 | (race_state >> 40)) & 0xffffff) << 8 | FAST_NATIVE | FAST_WRITABLE;
  set_won[i] = (unsigned char)fast_word_set_native(at, word, native);
  set_word[i] = native;
  in_race = 0;
  __atomic_add_fetch(&injected, 1, __ATOMIC_RELAXED);
  __atomic_store_n(&bstate[i], 2, __ATOMIC_SEQ_CST);
}

static void *reader(void *arg) {
  uint64_t state = (uint64_t)(uintptr_t)arg * 0x9e3779b9ull + 7;
  while (!__atomic_load_n(&stop_threads, __ATOMIC_SEQ_CST)) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t i = (state >> 33) % SPAN, b = base_block + i, word = fast_word(shared, b);
    if (word == 0 || word == FAST_NATIVE || (word >> 32) == 0 || (word >> 32) == (b & 0xffffffffull) || (word >> 32) == (12345 & 0xffffffffull)) continue;
    if (__atomic_fetch_add(&reader_bad, 1, __ATOMIC_SEQ_CST) < 5) fprintf(stderr, "threads: block %" PRIu64 " read another block's word %#" PRIx64 "\n", b, word);
  }
  return NULL;
}

/* Block i's word holds what its writer set: the word (frozen or not) when the writer's compare-and-swap won, else FAST_NATIVE alone. */
static uint64_t takes, bad_takes;
static int holds_set(uint64_t i, const char *when) {
  uint64_t word = set_word[i], got = fast_word(shared, base_block + i);
  int ok = set_won[i] ? (got == word || got == frozen(word)) : got == FAST_NATIVE;
  if (!ok && failures++ < 10) fprintf(stderr, "threads (%s): block %" PRIu64 ": a native first write set %#" PRIx64 " (%s), the table holds %#" PRIx64 "\n",
                                       when, base_block + i, word, set_won[i] ? "its compare-and-swap won" : "lost", got);
  return ok;
}

static int run_threads(unsigned threads, uint64_t rounds) {
  shared = calloc(1, sizeof(fast_words));
  memset(set_word, 0, sizeof(set_word));
  memset(bstate, 0, sizeof(bstate));
  writers = threads < 1 ? 1 : threads > WRITERS_MAX ? WRITERS_MAX : threads;
  stop_threads = 0;
  uint32_t *pairs = malloc(sizeof(uint32_t) * 2 * SPAN);
  /* Everything open to first writes to begin with. */
  for (uint64_t k = 0; k < SPAN; k++) { uint64_t word = FAST_HOLE | FAST_ALLOC; pairs[2 * k] = (uint32_t)word; pairs[2 * k + 1] = 0; }
  fast_words_publish(shared, base_block, pairs, SPAN);
  pthread_t tw[WRITERS_MAX], tr[2];
  for (unsigned t = 0; t < writers; t++) pthread_create(&tw[t], NULL, writer, (void *)(uintptr_t)t);
  for (unsigned t = 0; t < 2; t++) pthread_create(&tr[t], NULL, reader, (void *)(uintptr_t)(t + 1));
  for (uint64_t r = 0; r < rounds; r++) {
    uint64_t first = below(SPAN), count = 1 + below(below(2) ? FAST_SUB * 2 : FAST_PAGE);
    if (first + count > SPAN) count = SPAN - first;
    unsigned what = (unsigned)below(8);
    if (what < 3) {
      /* The engine takes set blocks into its map (their words must hold what the writers set), clears
       * them and publishes them again, some open to a first write once more. */
      for (unsigned k = 0; k < 64; k++) {
        uint64_t i = below(SPAN);
        if (__atomic_load_n(&bstate[i], __ATOMIC_SEQ_CST) != 2) continue;
        takes++;
        if (!holds_set(i, "taken")) bad_takes++;
        fast_words_change(shared, base_block + i, base_block + i + 1, 0);
        uint64_t word = word_for(base_block + i, (unsigned)below(1 << 16)) | (below(2) ? FAST_ALLOC : 0);
        uint32_t pair[2] = { (uint32_t)word, (uint32_t)(word >> 32) };
        fast_words_publish(shared, base_block + i, pair, 1);
        set_word[i] = 0;
        __atomic_store_n(&bstate[i], 0, __ATOMIC_SEQ_CST);
      }
    } else if (what < 5) {
      fast_words_change(shared, base_block + first, base_block + first + count, 1);
    } else {
      unsigned variant = (unsigned)below(1 << 16);
      int uniform = below(2) == 0;
      for (uint64_t k = 0; k < count; k++) {
        uint64_t word = uniform ? (FAST_HOLE | FAST_ALLOC) : word_for(base_block + first + k, variant);
        if (!uniform && ((word & FAST_KIND_MASK) == FAST_DELTA || (word & FAST_KIND_MASK) == FAST_CHUNK)) word |= FAST_ALLOC;
        pairs[2 * k] = (uint32_t)word;
        pairs[2 * k + 1] = (uint32_t)(word >> 32);
      }
      fast_words_publish(shared, base_block + first, pairs, count);
    }
  }
  __atomic_store_n(&stop_threads, 1, __ATOMIC_SEQ_CST);
  for (unsigned t = 0; t < writers; t++) pthread_join(tw[t], NULL);
  for (unsigned t = 0; t < 2; t++) pthread_join(tr[t], NULL);
  uint64_t sets = 0, lost = 0;
  for (uint64_t i = 0; i < SPAN; i++) {
    if (bstate[i] != 2) continue;
    sets++;
    if (!set_won[i]) lost++;
    holds_set(i, "at the end");
  }
  if (reader_bad > 0) failures++;
  printf("threads: %u writers, %" PRIu64 " rounds: %" PRIu64 " native first writes taken by the engine, %" PRIu64 " left (%" PRIu64 " of them lost to a change: FAST_NATIVE alone), %" PRIu64 " made inside a publication's or a freeze's window\n", writers, rounds, takes, sets, lost, injected);
  fast_words_free(shared);
  free(shared);
  free(pairs);
  return failures == 0;
}

int main(int argc, char **argv) {
  uint64_t seed = 1, ops = 20000, rounds = 20000;
  unsigned threads = 3;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--ops") == 0 && i + 1 < argc) ops = strtoull(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) rounds = strtoull(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = (unsigned)strtoul(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--fail-malloc") == 0) fail_malloc = 1;
    else { fprintf(stderr, "words-test: unknown argument %s\n", argv[i]); return 2; }
  }
  rng_state = seed;
  int ok = run_model(ops);
  race_on = 1; /* the threads part only: the model's words are not in its blocks' bookkeeping */
  printf("model: seed %" PRIu64 ", %" PRIu64 " steps%s: %s\n", seed, ops, fail_malloc ? " with failed mallocs" : "", ok ? "matched" : "FAILED");
  if (ok && !fail_malloc && rounds > 0) ok = run_threads(threads, rounds);
  return ok ? 0 : 1;
}

/*
 * vdiskfs's own FUSE transport: a small N-API addon over libfuse 3's low-level API (docs/TRANSPORT.md).
 *
 * Threads. mount() mounts from the JavaScript thread, then starts one loop thread that runs
 * fuse_session_loop_mt (clone_fd: each worker reads its own /dev/fuse descriptor). A worker turns each
 * request it reads into a `request` record (copying what it needs: names, a write's data) and queues it
 * to JavaScript through the session's thread-safe function, then goes back to reading: it never waits
 * for the answer. JavaScript answers later, on its own thread, through the reply* functions, which call
 * fuse_reply_* (libfuse allows a reply from any thread). A request reaches JavaScript as an external
 * (an opaque handle); a reply frees its record, so each request is answered exactly once (the
 * TypeScript side guards that).
 *
 * What needs no engine is answered here: FORGET (inodes are volume ids; nothing is kept per lookup),
 * and EPERM for mkdir, mknod, symlink, link and rmdir. INIT is negotiated here (fuse3_init).
 *
 * Teardown: unmount() detaches the mount (umount2 MNT_DETACH as root; otherwise the caller runs
 * fusermount); once the kernel drops the connection the workers read ENODEV and the loop ends, and the
 * loop thread queues a last "exit" record. After it, JavaScript calls destroy(), which joins the thread
 * and frees the session; replies to requests still in flight are then dropped.
 */
#define FUSE_USE_VERSION 312
#define _GNU_SOURCE
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <node_api.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <endian.h>
#include <malloc.h>

/* Request kinds, as JavaScript sees them (src/fuse/fuse3-transport.ts keeps the same list). */
enum {
  OP_EXIT = 0, OP_LOOKUP, OP_GETATTR, OP_SETATTR, OP_READDIR, OP_OPEN, OP_CREATE, OP_READ, OP_WRITE,
  OP_FLUSH, OP_RELEASE, OP_FSYNC, OP_UNLINK, OP_RENAME, OP_FALLOCATE, OP_STATFS, OP_LSEEK,
  OP_COPY_FILE_RANGE, OP_GETXATTR, OP_LISTXATTR, OP_SETXATTR, OP_REMOVEXATTR,
  OP_LEASE /* not a request: a volume's lease of slots for first writes runs low (fast_write) */
};

#define SIZE_BUCKETS 22 /* request sizes by power of two: bucket b counts sizes in (2^(b-1), 2^b], up to 2 MiB */

/* ---- the fast path: READs served in these threads (docs/FASTPATH.md) ---- */

/*
 * The engine publishes, per volume it has read (inode = volume id), one word per block: what a READ of
 * it may do here without the engine. Kind in bits 0-7 (FAST_DELTA: a whole slot of a checked delta
 * extent, FAST_HOLE: zeros), the slot in bits 8-31, the extent id in bits 32-63; 0 asks the engine.
 * Only the JavaScript thread writes words (fast_publish, fast_clear*): it clears a block's word in the
 * same synchronous step as the map change that moves the block (BlockMap.watch), before the change's
 * reply, so a READ that arrives after a WRITE's reply never loads the word the WRITE replaced. Slots
 * are never reused and sealing never changes a slot's bytes; an extent's descriptor here is our own
 * (dup) and stays open while a reader uses it, so a word naming an extent that was sealed and removed
 * still reads the bytes the block held, and a word naming an extent no longer registered hands the
 * request to the engine. Every sector read is checked against the extent's checksum table, as the
 * engine checks it: a mismatch (a write in place racing the read, or damage) hands the request to the
 * engine, which reads again or reports the damage (EIO). Nothing here ever answers an error.
 */
#include <zlib.h>
#include <zstd.h>
#include "blake3.h"
#include "pieces.h"
#include "crc32_fast.h"
#include "words.h"
#define FAST_DEAD (1ULL << 62)
#define FAST_BUCKETS 1024
#define FAST_SECTOR 4096u
#define FAST_READ_MAX (1024u * 1024u)
#define FAST_EXTENTS_MAX 1024
#define FAST_OVERWRITE_BITS 65536 /* 8 KiB an extent: fastWriteback's count of distinct overwritten pages */
#define FAST_CHUNKS_MAX 262144
#define FAST_CHUNK_BUCKETS 65536
#define FAST_CHUNK_MAX_BYTES (1024u * 1024u)
#define FAST_LEASE_QUEUE_MAX (1u << 20)
#define FAST_THREADS_MAX 64
#define FAST_STRIPES 256

/* Why the fast path handed a WRITE to the engine (status --json: fastWriteHandedWhy, by name). */
enum {
  HAND_FAILED,      /* a pwrite failed, or the queue of first writes had no memory: the engine writes it again */
  HAND_NO_VOLUME,   /* the volume is not published to the addon */
  HAND_ZEROS,       /* a whole block of zeros (or zeros into a hole): the engine makes it a hole */
  HAND_NOT_OPEN,    /* a block neither writable here nor open to a first write (shared, frozen, unpublished) */
  HAND_PAST_END,    /* past the end with no first write to grow it */
  HAND_NO_LEASE,    /* first writes, and the volume has no lease of slots (or it ran out) */
  HAND_LEASE_GONE,  /* the lease's extent is no longer registered */
  HAND_EXTENT_GONE, /* a block's extent is no longer registered */
  HAND_REASONS
};
static const char *const hand_names[HAND_REASONS] = { "failed", "noVolume", "zeros", "notOpen", "pastEnd", "noLease", "leaseGone", "extentGone" };

typedef struct fast_extent {
  struct fast_extent *next;
  uint64_t id;
  int fd;
  uint64_t data_start; /* where slot 0 starts */
  uint64_t sums_start; /* where the checksum entry of slot 0's sector 0 is */
  uint64_t refs;       /* readers using it, | FAST_DEAD once unregistered: the last one out closes it */
  uint64_t dirty;      /* 1 once a native WRITE changed it: the next commit fdatasyncs it (fastTakeDirty) */
  uint64_t seq;        /* bumped before and after each native WRITE's pwrites: a read that saw it move may have raced one */
  uint64_t writing;    /* native WRITEs of it in flight: a read while one is may have raced it though seq did not move */
  uint64_t last_write_ms; /* the last native WRITE (sealing's idleness) */
  uint64_t kicked;     /* where the writeback of first writes was last started (fast_kick_writeback) */
  uint64_t overwritten; /* distinct 4 KiB pages native overwrites changed (since the last commit took it) and not yet counted by a writeback start, times 4096 (fastWriteback) */
  uint64_t *overwritten_pages; /* which: a bit per page, the page number modulo FAST_OVERWRITE_BITS (an estimate: a few alias) */
  uint64_t read_end;   /* where the last READ of it ended, and how far it is read ahead (fast_read_ahead) */
  uint64_t ahead;
} fast_extent;

/* A pack file the fast path reads sealed chunks from: its own descriptor, closed once no reader holds it. */
typedef struct fast_pack {
  struct fast_pack *next;
  uint64_t id;
  int fd;
  uint64_t refs;       /* readers using it, | FAST_DEAD once dropped: the last one out closes it */
} fast_pack;

/*
 * A sealed chunk (docs/FORMAT.md, "Pack"): where its payload lies and the BLAKE3-256 of the block it
 * holds. Immutable once linked; a reader copies it under the table's read lock. The hash is what makes
 * a read right: whatever the pack holds at that place, only bytes that hash to it are served.
 */
typedef struct fast_chunk {
  struct fast_chunk *next;
  uint64_t id, pack, offset;
  uint32_t stored, raw;
  int compressed;
  uint8_t hash[32];
} fast_chunk;

typedef struct fast_volume {
  struct fast_volume *next;
  uint64_t ino;
  uint64_t size;
  uint64_t refs;
  uint64_t writes;     /* native WRITEs served (the engine takes it as a change of mtime) */
  /* The slots native first writes may take (fastLease): [lease_next, lease_end) of extent lease_extent
   * (0: none), under lease_lock. */
  pthread_mutex_t lease_lock;
  uint64_t lease_extent, lease_next, lease_end;
  uint64_t lease_grow; /* first writes may grow the volume up to this size (bytes; fastGrow) */
  int lease_low;        /* set once a first write told JavaScript the lease runs low (OP_LEASE); fastLease clears it */
  uint64_t lease_size;  /* slots the lease gave */
  uint64_t lease_bases; /* where the lease extent's base table starts (0: it holds no partial slots) */
  uint64_t volume_id;   /* the engine's id of the volume (the journal's records name it) */
  fast_words words;    /* the published words (words.h) */
} fast_volume;

typedef struct fast_state {
  pthread_rwlock_t lock; /* the two tables' chains: held only to look up or link, never across I/O */
  fast_volume *volumes[FAST_BUCKETS];
  fast_extent *extents[FAST_BUCKETS];
  unsigned extent_count;
  fast_pack *packs[FAST_BUCKETS];
  fast_chunk **chunks; /* FAST_CHUNK_BUCKETS chains, allocated at the first chunk */
  unsigned chunk_count;
  uint64_t chunk_reads, chunk_hits, chunk_mismatches, chunk_pieces;
  unsigned block_bytes;
  uint64_t served, handed, bytes, mismatches;
  /* WRITEs: on once JavaScript says so (fastWrites); per worker thread an epoch, odd while the thread
   * is inside a native WRITE (the engine's quiesce waits for each odd one to move); stripes serialize
   * native WRITEs of one block. */
  int writes_on;
  unsigned threads;
  uint64_t epochs[FAST_THREADS_MAX];
  pthread_mutex_t stripes[FAST_STRIPES];
  uint64_t written, write_handed, write_bytes;
  uint64_t hand_why[HAND_REASONS]; /* WRITEs handed to the engine, by reason (hand_names) */
  /* Blocks native first writes gave a new slot, for the engine to take into its maps (fastAllocs):
   * [ino, block, extent, slot] each, under alloc_lock; alloc_count (memory JavaScript reads directly,
   * fastAllocCount) counts every one queued. */
  pthread_mutex_t alloc_lock;
  uint64_t *alloc_queue;
  size_t alloc_n, alloc_cap;
  uint32_t *alloc_count;
  uint64_t allocated;
  /* fastWriteback: the passes started and the extents whose writeback they started. */
  uint64_t writeback_passes, writeback_kicks;
  /* The change journal's current file (docs/ARCHITECTURE.md, "The change journal"): a descriptor of
   * the addon's own, under alloc_lock; each first write appends its records there before it is queued,
   * so a daemon killed before the engine took the queue loses no acknowledged write. -1: none. */
  int journal_fd;
} fast_state;

static void fast_volume_free(fast_volume *v) {
  pthread_mutex_destroy(&v->lease_lock);
  fast_words_free(&v->words);
  free(v);
}

static void fast_extent_free(fast_extent *e) {
  close(e->fd);
  free(e->overwritten_pages);
  free(e);
}

static fast_volume *fast_volume_get(fast_state *f, uint64_t ino) {
  pthread_rwlock_rdlock(&f->lock);
  fast_volume *v = f->volumes[ino % FAST_BUCKETS];
  while (v != NULL && v->ino != ino) v = v->next;
  if (v != NULL) __atomic_add_fetch(&v->refs, 1, __ATOMIC_SEQ_CST);
  pthread_rwlock_unlock(&f->lock);
  return v;
}

static void fast_volume_put(fast_volume *v) {
  if (__atomic_sub_fetch(&v->refs, 1, __ATOMIC_SEQ_CST) == FAST_DEAD) fast_volume_free(v);
}

static fast_extent *fast_extent_get(fast_state *f, uint64_t id) {
  pthread_rwlock_rdlock(&f->lock);
  fast_extent *e = f->extents[id % FAST_BUCKETS];
  while (e != NULL && e->id != id) e = e->next;
  if (e != NULL) __atomic_add_fetch(&e->refs, 1, __ATOMIC_SEQ_CST);
  pthread_rwlock_unlock(&f->lock);
  return e;
}

static void fast_extent_put(fast_extent *e) {
  if (__atomic_sub_fetch(&e->refs, 1, __ATOMIC_SEQ_CST) == FAST_DEAD) fast_extent_free(e);
}



/* The buffers a worker thread reads into (freed when the thread ends). */
typedef struct fast_buffers {
  char *out; char *scratch; uint32_t sums[FAST_READ_MAX / FAST_SECTOR + 2];
  /* Sealed chunks: the payload as read, the block it decompresses to, and which verified chunk that
   * block holds now (its id and hash: the next READ of the same chunk is served from it). */
  char *packed; size_t packed_cap;
  char *chunk; size_t chunk_cap;
  ZSTD_DCtx *dctx;
  int chunk_valid; uint64_t chunk_id; uint32_t chunk_raw; uint8_t chunk_hash[32];
  /* A pieced chunk (pieces.h): its table, checked against the chunk's hash, and which of its pieces
   * the block holds verified (chunk_valid stays 0 then; chunk_id/raw/hash say which chunk). */
  int pieced; unsigned piece_count; uint64_t piece_mask;
  uint32_t piece_at[PIECE_MAX + 1]; uint8_t piece_values[PIECE_MAX * 32];
} fast_buffers;
static pthread_key_t fast_key;
static pthread_once_t fast_key_once = PTHREAD_ONCE_INIT;
static void fast_buffers_free(void *p) {
  fast_buffers *b = p;
  free(b->out);
  free(b->scratch);
  free(b->packed);
  free(b->chunk);
  if (b->dctx != NULL) ZSTD_freeDCtx(b->dctx);
  free(b);
}
static void fast_key_make(void) { pthread_key_create(&fast_key, fast_buffers_free); }
static fast_buffers *fast_buffers_get(void) {
  pthread_once(&fast_key_once, fast_key_make);
  fast_buffers *b = pthread_getspecific(fast_key);
  if (b != NULL) return b;
  b = calloc(1, sizeof(fast_buffers));
  if (b == NULL) return NULL;
  b->out = malloc(FAST_READ_MAX);
  b->scratch = malloc(FAST_READ_MAX + 2 * FAST_SECTOR);
  if (b->out == NULL || b->scratch == NULL) { fast_buffers_free(b); return NULL; }
  pthread_setspecific(fast_key, b);
  return b;
}

/* pread of all `length` bytes; what lies past the end of the file reads as zeros. 0, or -1. */
static int fast_pread(int fd, char *target, size_t length, uint64_t position) {
  size_t done = 0;
  while (done < length) {
    ssize_t n = pread(fd, target + done, length - done, (off_t)(position + done));
    if (n < 0) { if (errno == EINTR) continue; return -1; }
    if (n == 0) { memset(target + done, 0, length - done); break; }
    done += (size_t)n;
  }
  return 0;
}

/* The checksum a written sector stores (format/extent-format.ts sectorSum): CRC-32, never 0. */
static int fast_sector_matches(const unsigned char *sector, uint32_t entry) {
  if (entry == 0) {
    for (unsigned i = 0; i < FAST_SECTOR; i += 8) { uint64_t w; memcpy(&w, sector + i, 8); if (w != 0) return 0; }
    return 1;
  }
  uint32_t sum = vd_crc32(0, sector, FAST_SECTOR);
  if (sum == 0) sum = 0xffffffffu;
  return sum == entry;
}

/*
 * Extent data is written FAST_FOLIO_BYTES at a time, never more in one pwrite. ext4 (6.16 on) gives a
 * file's page cache folios as large as the write that made them (up to 2 MiB), and every later write
 * into a folio walks all its buffer heads: a 4 KiB overwrite of a block first written by a 1 MiB
 * WRITE cost 17.7 us of CPU in the kernel, against 5.9 us when it came in 64 KiB pieces (3.9 in 16 KiB pieces)
 * (docs/PERFORMANCE.md, "Folios"). Extents are read without readahead for the same reason
 * (fast_extent_add). VDISKFS_FOLIO_BYTES=0 writes each run whole and keeps readahead (for measuring it).
 */
static size_t folio_bytes = 65536;
__attribute__((constructor)) static void fast_folio_setting(void) {
  const char *v = getenv("VDISKFS_FOLIO_BYTES");
  if (v != NULL) folio_bytes = strtoul(v, NULL, 10);
}

/*
 * Extents are read with POSIX_FADV_RANDOM (fast_extent_add: the kernel's readahead would fill the page
 * cache with large folios that make later 4 KiB writes slow), so sequential readers get a readahead of
 * the addon's own: a READ of at least FAST_AHEAD_MIN that starts near where the last one ended asks for
 * the FAST_AHEAD_BYTES after it, data and checksums (POSIX_FADV_WILLNEED: reads into small folios,
 * without waiting), once per half of that. Random 4 KiB READs never trigger it. Threads race only on
 * which of them asks (a compare-and-swap of how far it is asked).
 */
#define FAST_AHEAD_BYTES (16u << 20)
#define FAST_AHEAD_MIN (64u << 10)
static void fast_read_ahead(fast_extent *e, uint64_t at, uint64_t length) {
  if (folio_bytes == 0 || length < FAST_AHEAD_MIN) return;
  uint64_t end = at + length;
  uint64_t last = __atomic_exchange_n(&e->read_end, end, __ATOMIC_RELAXED);
  if (at + FAST_AHEAD_BYTES < last || last + FAST_AHEAD_BYTES < at) return;
  uint64_t ahead = __atomic_load_n(&e->ahead, __ATOMIC_RELAXED);
  if (ahead >= end + FAST_AHEAD_BYTES / 2) return;
  uint64_t from = ahead > end ? ahead : end, to = end + FAST_AHEAD_BYTES;
  if (!__atomic_compare_exchange_n(&e->ahead, &ahead, to, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return;
  posix_fadvise(e->fd, (off_t)from, (off_t)(to - from), POSIX_FADV_WILLNEED);
  if (from < e->data_start) return;
  uint64_t sums_from = e->sums_start + (from - e->data_start) / FAST_SECTOR * 4;
  uint64_t sums_to = e->sums_start + (to - e->data_start) / FAST_SECTOR * 4;
  posix_fadvise(e->fd, (off_t)sums_from, (off_t)(sums_to - sums_from), POSIX_FADV_WILLNEED);
}

/*
 * Reads `count` bytes at `offset` within slot `slot` of extent `id` (running on into the next slots,
 * which the caller checked are the same blocks' slots in order) into `target`, checking every sector
 * touched. Returns 1, or 0 to hand the request to the engine.
 */
static int fast_read_run(fast_state *f, fast_buffers *b, uint64_t id, uint64_t slot, uint64_t offset, size_t count, char *target, int partial) {
  fast_extent *e = fast_extent_get(f, id);
  if (e == NULL) return 0;
  int ok = 0;
  uint64_t first = offset / FAST_SECTOR, last = (offset + count - 1) / FAST_SECTOR, sectors = last - first + 1;
  int aligned = offset % FAST_SECTOR == 0 && count % FAST_SECTOR == 0;
  char *bytes = aligned ? target : b->scratch;
  uint64_t spp = f->block_bytes / FAST_SECTOR;
  if (fast_pread(e->fd, bytes, sectors * FAST_SECTOR, e->data_start + slot * f->block_bytes + first * FAST_SECTOR) != 0) goto out;
  if (fast_pread(e->fd, (char *)b->sums, sectors * 4, e->sums_start + (slot * spp + first) * 4) != 0) goto out;
  for (uint64_t k = 0; k < sectors; k++) {
    /* A partial slot's unwritten sector is the chunk's: the engine reads it. */
    if (partial && b->sums[k] == 0) goto out;
    if (!fast_sector_matches((const unsigned char *)bytes + k * FAST_SECTOR, le32toh(b->sums[k]))) {
      __atomic_add_fetch(&f->mismatches, 1, __ATOMIC_RELAXED);
      goto out;
    }
  }
  if (!aligned) memcpy(target, bytes + (offset - first * FAST_SECTOR), count);
  fast_read_ahead(e, e->data_start + slot * f->block_bytes + first * FAST_SECTOR, sectors * FAST_SECTOR);
  ok = 1;
out:
  fast_extent_put(e);
  return ok;
}


static fast_pack *fast_pack_get(fast_state *f, uint64_t id) {
  pthread_rwlock_rdlock(&f->lock);
  fast_pack *p = f->packs[id % FAST_BUCKETS];
  while (p != NULL && p->id != id) p = p->next;
  if (p != NULL) __atomic_add_fetch(&p->refs, 1, __ATOMIC_SEQ_CST);
  pthread_rwlock_unlock(&f->lock);
  return p;
}

static void fast_pack_free(fast_pack *p) {
  close(p->fd);
  free(p);
}

static void fast_pack_put(fast_pack *p) {
  if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_SEQ_CST) == FAST_DEAD) fast_pack_free(p);
}

/* Makes a buffer hold at least `size` bytes. 0, or -1. */
static int fast_reserve(char **buf, size_t *cap, size_t size) {
  if (*cap >= size) return 0;
  char *grown = realloc(*buf, size);
  if (grown == NULL) return -1;
  *buf = grown;
  *cap = size;
  return 0;
}

/* Reads `length` bytes at `at` of pack `p` into `into`: 0, or -1 (a failed or short read). */
static int fast_pread_full(fast_pack *p, char *into, size_t length, uint64_t at) {
  size_t done = 0;
  while (done < length) {
    ssize_t n = pread(p->fd, into + done, length - done, (off_t)(at + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    done += (size_t)n;
  }
  return 0;
}

static uint32_t le32(const uint8_t *at) { return (uint32_t)at[0] | (uint32_t)at[1] << 8 | (uint32_t)at[2] << 16 | (uint32_t)at[3] << 24; }

/*
 * Takes a pieced payload's table (the first PIECE_TABLE_BYTES(count) bytes, in `table`) into `b`, for
 * chunk `c`: 1 when it is one (well formed, its frames' lengths adding up to the payload, its values
 * merging to the chunk's hash), 0 when the payload is not pieced, -1 when it claims to be but is not
 * right (damage: the engine reads the whole chunk and reports it).
 */
static int fast_piece_table(fast_buffers *b, const fast_chunk *c, const uint8_t *table, unsigned count) {
  if (le32(table) != PIECE_MAGIC) return 0;
  if (le32(table + 4) != PIECE_TABLE_BYTES(count) - 8 || le32(table + 8) != PIECE_TAG || table[12] != PIECE_VERSION || table[13] != 0 ||
      table[14] != PIECE_SHIFT || table[15] != 0 || le32(table + 16) != count) return -1;
  uint64_t at = PIECE_TABLE_BYTES(count);
  for (unsigned i = 0; i < count; i++) {
    b->piece_at[i] = (uint32_t)at;
    at += le32(table + 20 + 4 * i);
    if (at > c->stored) return -1;
  }
  if (at != c->stored) return -1;
  b->piece_at[count] = (uint32_t)at;
  memcpy(b->piece_values, table + 20 + 4 * count, (size_t)count * 32);
  uint8_t root[32];
  pieces_root(b->piece_values, count, root);
  return memcmp(root, c->hash, 32) == 0 ? 1 : -1;
}

/* Piece `i` of the pieced chunk whose table `b` holds, from its frame (read already, at `frame`):
 * decompressed into its place in b->chunk and checked against its value. 1, or 0 (hand to the engine). */
static int fast_piece_load(fast_state *f, fast_buffers *b, const char *frame, unsigned i) {
  uint32_t length = b->piece_at[i + 1] - b->piece_at[i];
  char *piece = b->chunk + (size_t)i * PIECE_BYTES;
  size_t n = ZSTD_decompressDCtx(b->dctx, piece, PIECE_BYTES, frame, length);
  uint8_t value[32];
  if (!ZSTD_isError(n) && n == PIECE_BYTES) pieces_value((const uint8_t *)piece, i, value);
  if (ZSTD_isError(n) || n != PIECE_BYTES || memcmp(value, b->piece_values + (size_t)i * 32, 32) != 0) {
    __atomic_add_fetch(&f->chunk_mismatches, 1, __ATOMIC_RELAXED);
    return 0;
  }
  __atomic_add_fetch(&f->chunk_pieces, 1, __ATOMIC_RELAXED);
  b->piece_mask |= 1ULL << i;
  return 1;
}

/*
 * Reads `count` bytes at `offset` of sealed chunk `id` into `target`, checked against the chunk's
 * BLAKE3-256 before a byte is copied (as the engine's workers do): a pieced payload (pieces.h) reads,
 * decompresses and checks only the pieces the range touches, against its table whose values merge to
 * the chunk's hash; any other payload is read whole, decompressed and hashed whole. Returns 1, or 0 to
 * hand the request to the engine (no record, no pack, a short or failed read, a payload that does not
 * decompress to the block, a hash or a value that does not match: the engine reads it again and
 * reports damage).
 */
static int fast_read_chunk(fast_state *f, fast_buffers *b, uint64_t id, uint64_t offset, size_t count, char *target) {
  fast_chunk c;
  int found = 0;
  pthread_rwlock_rdlock(&f->lock);
  if (f->chunks != NULL) {
    for (fast_chunk *at = f->chunks[id % FAST_CHUNK_BUCKETS]; at != NULL; at = at->next) {
      if (at->id == id) { c = *at; found = 1; break; }
    }
  }
  pthread_rwlock_unlock(&f->lock);
  if (!found || count == 0 || offset + count > c.raw) return 0;
  __atomic_add_fetch(&f->chunk_reads, 1, __ATOMIC_RELAXED);
  int same = b->chunk_id == id && b->chunk_raw == c.raw && memcmp(b->chunk_hash, c.hash, 32) == 0;
  unsigned first = (unsigned)(offset >> PIECE_SHIFT), last = (unsigned)((offset + count - 1) >> PIECE_SHIFT);
  uint64_t wanted = 0;
  if (same && b->pieced) for (unsigned i = first; i <= last; i++) wanted |= 1ULL << i;
  if (same && (b->chunk_valid || (b->pieced && (b->piece_mask & wanted) == wanted))) {
    __atomic_add_fetch(&f->chunk_hits, 1, __ATOMIC_RELAXED);
    memcpy(target, b->chunk + offset, count);
    return 1;
  }
  if (c.raw > FAST_CHUNK_MAX_BYTES || c.stored > ZSTD_compressBound(FAST_CHUNK_MAX_BYTES)) return 0;
  if (fast_reserve(&b->packed, &b->packed_cap, c.stored) != 0 || fast_reserve(&b->chunk, &b->chunk_cap, c.raw) != 0) return 0;
  if (c.compressed && b->dctx == NULL && (b->dctx = ZSTD_createDCtx()) == NULL) return 0;
  fast_pack *p = fast_pack_get(f, c.pack);
  if (p == NULL) return 0;
  int ok = 0;
  size_t head = 0; /* bytes of the payload read into b->packed by this call, from its start */
  if (!(same && b->pieced)) {
    b->chunk_valid = 0;
    b->pieced = 0;
    b->piece_mask = 0;
    b->chunk_id = id;
    b->chunk_raw = c.raw;
    memcpy(b->chunk_hash, c.hash, 32);
    unsigned pieces = c.compressed ? pieces_count(c.raw) : 0;
    if (pieces > 0 && c.stored > PIECE_TABLE_BYTES(pieces)) {
      /* A READ of the whole chunk (sequential reads) reads the whole payload at once; any other, the
       * table first, then only the frames it needs. */
      head = first == 0 && last == pieces - 1 ? c.stored : PIECE_TABLE_BYTES(pieces);
      if (fast_pread_full(p, b->packed, head, c.offset) != 0) goto out;
      int table = fast_piece_table(b, &c, (const uint8_t *)b->packed, pieces);
      if (table < 0) { __atomic_add_fetch(&f->chunk_mismatches, 1, __ATOMIC_RELAXED); goto out; }
      if (table > 0) {
        b->pieced = 1;
        b->piece_count = pieces;
      }
    }
    if (!b->pieced) {
      /* A whole payload: the rest of it after what was read for the table's check. */
      char *payload = c.compressed ? b->packed : b->chunk;
      if (head > 0 && payload != b->packed) memcpy(payload, b->packed, head);
      if (fast_pread_full(p, payload + head, c.stored - head, c.offset + head) != 0) goto out;
      if (c.compressed) {
        size_t n = ZSTD_decompressDCtx(b->dctx, b->chunk, c.raw, b->packed, c.stored);
        if (ZSTD_isError(n) || n != c.raw) { __atomic_add_fetch(&f->chunk_mismatches, 1, __ATOMIC_RELAXED); goto out; }
      } else if (c.stored != c.raw) goto out;
      uint8_t hash[32];
      blake3_hasher hasher;
      blake3_hasher_init(&hasher);
      blake3_hasher_update(&hasher, b->chunk, c.raw);
      blake3_hasher_finalize(&hasher, hash, 32);
      if (memcmp(hash, c.hash, 32) != 0) { __atomic_add_fetch(&f->chunk_mismatches, 1, __ATOMIC_RELAXED); goto out; }
      b->chunk_valid = 1;
      memcpy(target, b->chunk + offset, count);
      ok = 1;
      goto out;
    }
  }
  /* The frames of the pieces not yet here, read in one pread (they are contiguous) unless the whole
   * payload was just read. */
  unsigned lo = first, hi = last;
  while (lo <= hi && (b->piece_mask & (1ULL << lo)) != 0) lo++;
  while (hi > lo && (b->piece_mask & (1ULL << hi)) != 0) hi--;
  if (lo <= hi) {
    uint32_t from = b->piece_at[lo];
    const char *frames = b->packed;
    if (head == c.stored) frames = b->packed + from;
    else if (fast_pread_full(p, b->packed, b->piece_at[hi + 1] - from, c.offset + from) != 0) goto out;
    for (unsigned i = lo; i <= hi; i++) {
      if ((b->piece_mask & (1ULL << i)) == 0 && !fast_piece_load(f, b, frames + (b->piece_at[i] - from), i)) goto out;
    }
  }
  memcpy(target, b->chunk + offset, count);
  ok = 1;
out:
  if (!ok) { b->chunk_valid = 0; b->pieced = 0; b->piece_mask = 0; b->chunk_id = 0; b->chunk_raw = 0; }
  fast_pack_put(p);
  return ok;
}

typedef struct session {
  napi_threadsafe_function tsfn;
  struct fuse_session *se;
  pthread_t thread;
  int thread_started;
  int loop_result;
  int destroyed;
  char *mountpoint;
  unsigned max_threads;
  unsigned max_write_wanted;
  unsigned max_background;
  unsigned congestion_threshold;
  /* 0: each worker reads its own cloned /dev/fuse descriptor. Off when a holder keeps the descriptor for
   * a takeover: requests a worker has read must stay on the one open file the holder shares, so the
   * kernel can resend them to the next daemon (a cloned descriptor's requests end with its close). */
  int clone_fd;
  /* What INIT negotiated (written once by the worker that runs INIT, read after). */
  unsigned proto_major, proto_minor, max_write, max_readahead, capable, want;
  /* Counters for status and tests, touched by the workers: atomics. */
  uint64_t requests;
  uint64_t write_sizes[SIZE_BUCKETS];
  uint64_t read_sizes[SIZE_BUCKETS];
  uint64_t max_write_seen;
  uint64_t read_bytes;
  uint64_t write_bytes;
  /* A takeover's FUSE_NOTIFY_RESEND: 0, or the errno its write got (-1: no takeover). */
  int resend_result;
  /* How long the kernel may keep names and attributes (seconds), and whether an open keeps the file's
   * pages: safe because every change the kernel does not make itself is invalidated (notify below). */
  double entry_timeout, attr_timeout;
  int keep_cache;
  uint64_t notifications;
  /* Requests the kernel resent after a takeover (FUSE_UNIQUE_RESEND in their unique). */
  uint64_t resent;
  /* The socket to the holder's notifier (-1: none, notifications are written here): io_writev. */
  int notify_fd;
  pthread_mutex_t notify_lock;
  /* The fast path (READs served in the workers): on once JavaScript configured it. */
  int fast_on;
  fast_state fast;
} session;

typedef struct request {
  session *s;
  fuse_req_t req;
  int op;
  uint64_t ino, ino2;
  uint64_t fh, fh2;
  int has_fh;
  int64_t off, off2;
  uint64_t size;
  int64_t i1, i2, i3;
  char *name, *name2;
  char *data;
  size_t data_len;
  /* A WRITE's data once JavaScript has it: an external ArrayBuffer, detached (and so freed) by a
   * successful reply. */
  napi_ref data_ref;
  struct stat attr;
  uid_t uid;
  gid_t gid;
  pid_t pid;
  /* The kernel resent it after a takeover: the dead daemon may have done it already (FUSE_UNIQUE_RESEND). */
  int resent;
  /* Its unique without that bit: the same when resent (an OPEN's or CREATE's handle is saved with it). */
  uint64_t unique;
} request;

/*
 * The unique of the request this worker thread read last: libfuse 3.14's fuse_req_t keeps it private,
 * so the session reads /dev/fuse through a custom read (io_read) that notes it, and the handler of that
 * request, which runs on the same thread right after the read, takes its FUSE_UNIQUE_RESEND bit.
 */
static __thread uint64_t current_unique;
#define VDISKFS_UNIQUE_RESEND (1ULL << 63) /* FUSE_UNIQUE_RESEND, kernel 6.9+ */

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata) {
  (void)userdata;
  ssize_t n = read(fd, buf, len);
  current_unique = n >= (ssize_t)sizeof(struct fuse_in_header) ? ((struct fuse_in_header *)buf)->unique : 0;
  return n;
}

/*
 * A notification (unique 0) handed to the holder's notifier (native/fuse3/vdiskfs_holder.c), which
 * writes it to /dev/fuse and answers with the errno: the wait in the kernel (for a lock a request this
 * daemon has not answered may hold) is then the notifier's, and a daemon killed meanwhile dies whole.
 * Returns what writev would, or -2 when the notifier is gone (the caller then writes it itself).
 */
static ssize_t notify_via_holder(session *s, int nfd, struct iovec *iov, int count) {
  char buf[65536];
  size_t len = 0;
  for (int i = 0; i < count; i++) {
    if (len + iov[i].iov_len > sizeof(buf)) return -2;
    memcpy(buf + len, iov[i].iov_base, iov[i].iov_len);
    len += iov[i].iov_len;
  }
  pthread_mutex_lock(&s->notify_lock);
  int err = 0;
  ssize_t got = -1;
  if (send(nfd, buf, len, MSG_NOSIGNAL) == (ssize_t)len) {
    do { got = recv(nfd, &err, sizeof(err), 0); } while (got < 0 && errno == EINTR);
  }
  pthread_mutex_unlock(&s->notify_lock);
  if (got != (ssize_t)sizeof(err)) return -2;
  if (err != 0) { errno = err; return -1; }
  return (ssize_t)len;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata) {
  session *s = userdata;
  if (s != NULL && count > 0 && iov[0].iov_len >= sizeof(struct fuse_out_header) && ((struct fuse_out_header *)iov[0].iov_base)->unique == 0) {
    int nfd = __atomic_load_n(&s->notify_fd, __ATOMIC_ACQUIRE);
    if (nfd >= 0) {
      ssize_t n = notify_via_holder(s, nfd, iov, count);
      if (n != -2) return n;
    }
  }
  return writev(fd, iov, count);
}

static const struct fuse_custom_io custom_io = { .writev = io_writev, .read = io_read };

static unsigned size_bucket(uint64_t size) {
  unsigned b = 0;
  while (b < SIZE_BUCKETS - 1 && ((uint64_t)1 << b) < size) b++;
  return b;
}

static void queue(request *r) {
  __atomic_add_fetch(&r->s->requests, 1, __ATOMIC_RELAXED);
  if (napi_call_threadsafe_function(r->s->tsfn, r, napi_tsfn_blocking) != napi_ok) {
    /* The function is closing (the session is being torn down). */
    if (r->req != NULL) fuse_reply_err(r->req, EIO);
    free(r->name);
    free(r->name2);
    free(r->data);
    free(r);
  }
}

static request *new_request(fuse_req_t req, int op, fuse_ino_t ino) {
  session *s = fuse_req_userdata(req);
  request *r = calloc(1, sizeof(request));
  if (r == NULL) { fuse_reply_err(req, ENOMEM); return NULL; }
  r->s = s;
  r->req = req;
  r->op = op;
  r->ino = ino;
  const struct fuse_ctx *ctx = fuse_req_ctx(req);
  r->uid = ctx->uid;
  r->gid = ctx->gid;
  r->pid = ctx->pid;
  r->unique = current_unique & ~VDISKFS_UNIQUE_RESEND;
  if ((current_unique & VDISKFS_UNIQUE_RESEND) != 0) {
    r->resent = 1;
    __atomic_add_fetch(&s->resent, 1, __ATOMIC_RELAXED);
  }
  return r;
}

/* ---- the fast path's READ (see "the fast path" above) ---- */

static int fast_read(session *s, fuse_req_t req, uint64_t ino, size_t size, off_t off) {
  fast_state *f = &s->fast;
  if (!__atomic_load_n(&s->fast_on, __ATOMIC_RELAXED) || off < 0 || size > FAST_READ_MAX) return 0;
  fast_volume *v = fast_volume_get(f, ino);
  if (v == NULL) return 0;
  int served = 0;
  fast_buffers *b = fast_buffers_get();
  uint64_t bb = f->block_bytes;
  if (b == NULL || bb == 0) goto out;
  uint64_t vsize = __atomic_load_n(&v->size, __ATOMIC_SEQ_CST);
  /* At or past the end: the engine answers (no READ is answered here from a size alone). */
  if ((uint64_t)off >= vsize || size == 0) goto out;
  uint64_t length = vsize - (uint64_t)off < size ? vsize - (uint64_t)off : size;
  uint64_t done = 0;
  while (done < length) {
    uint64_t at = (uint64_t)off + done, block = at / bb, offset = at % bb;
    uint64_t count = bb - offset < length - done ? bb - offset : length - done;
    uint64_t word = fast_word(&v->words, block);
    unsigned kind = (unsigned)(word & FAST_KIND_MASK);
    if (kind == FAST_HOLE) { memset(b->out + done, 0, count); done += count; continue; }
    if (kind == FAST_CHUNK) {
      if (!fast_read_chunk(f, b, word >> 32, offset, count, b->out + done)) goto out;
      done += count;
      continue;
    }
    if (kind != FAST_DELTA && kind != FAST_WRITABLE) goto out;
    /* The blocks that follow in the next slots of the same extent: one read. */
    uint64_t id = word >> 32, slot = (word >> 8) & 0xffffff, run = count;
    int partial = (word & FAST_PARTIAL) != 0;
    while (!partial && done + run < length) {
      uint64_t next = fast_word(&v->words, block + (run + offset) / bb);
      if (next & FAST_PARTIAL) break;
      unsigned next_kind = (unsigned)(next & FAST_KIND_MASK);
      if ((next_kind != FAST_DELTA && next_kind != FAST_WRITABLE) || next >> 32 != id || ((next >> 8) & 0xffffff) != slot + (run + offset) / bb) break;
      run += bb < length - done - run ? bb : length - done - run;
    }
    if (!fast_read_run(f, b, id, slot, offset, run, b->out + done, partial)) goto out;
    done += run;
  }
  fuse_reply_buf(req, b->out, length);
  __atomic_add_fetch(&s->read_bytes, length, __ATOMIC_RELAXED);
  __atomic_add_fetch(&f->bytes, length, __ATOMIC_RELAXED);
  served = 1;
out:
  fast_volume_put(v);
  __atomic_add_fetch(served ? &f->served : &f->handed, 1, __ATOMIC_RELAXED);
  return served;
}

/* ---- the fast path's WRITE ----
 *
 * A WRITE of whole sectors whose every block's word is FAST_WRITABLE, inside the published size, and
 * with no whole block of zeros (the engine makes that a hole), is written here: the sectors with pwrite
 * into the slots, their CRC-32s into the extents' checksum tables, as the engine's writeSectors does,
 * under the blocks' stripe locks (native writers of one block one at a time; taken in ascending order).
 * Blocks in consecutive slots of one extent are one run: one pwrite of data, one of checksums.
 * Anything else, and any failure, goes to the engine, which writes (or fails) the whole request again.
 *
 * Exclusion from the engine (docs/FASTPATH.md, "Writes"): the thread's epoch is made odd (a seq_cst
 * read-modify-write) before the word is loaded (seq_cst) and even after the last pwrite. The engine,
 * before anything that must not overlap a native write (an in-place write of the block, a freeze of
 * the extent by a backup or sealing, a truncate), stores the word without its writable kind (seq_cst),
 * then snapshots the odd epochs and waits until each has moved: a writer either loaded the word after
 * the store (and went to the engine) or is one of those waited for.
 */
/* This worker's epoch slot in its session (-1: more workers than slots; they hand WRITEs to the engine). */
static __thread session *fast_thread_session;
static __thread int fast_thread_slot = -1;
static int fast_thread_index(session *s) {
  if (fast_thread_session != s) {
    unsigned n = __atomic_fetch_add(&s->fast.threads, 1, __ATOMIC_SEQ_CST);
    fast_thread_slot = n < FAST_THREADS_MAX ? (int)n : -1;
    fast_thread_session = s;
  }
  return fast_thread_slot;
}
static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int fast_pwrite(int fd, const char *data, size_t length, uint64_t position) {
  size_t done = 0;
  while (done < length) {
    size_t piece = length - done;
    if (folio_bytes > 0 && piece > folio_bytes) piece = folio_bytes;
    ssize_t n = pwrite(fd, data + done, piece, (off_t)(position + done));
    if (n < 0) { if (errno == EINTR) continue; return -1; }
    if (n == 0) return -1;
    done += (size_t)n;
  }
  return 0;
}

static int fast_all_zero(const char *data, size_t length) {
  for (size_t i = 0; i < length; i += 8) { uint64_t w; memcpy(&w, data + i, 8); if (w != 0) return 0; }
  return 1;
}

/* One run of a native WRITE: consecutive slots of one extent, written with one pwrite of data and one of checksums. */
/*
 * First writes fill new slots in order (a `dd` or `cp` to a new image): once FAST_KICK_BYTES more of
 * the extent are written, the kernel is asked to start writing them back (sync_file_range WRITE: no
 * wait, no durability change), so that the disk works while the writer goes on and the commit's
 * fdatasync at the end finds little left to write (qsd's writes reach the disk as they come). One
 * thread starts each range (a compare-and-swap of where the last one ended).
 */
#define FAST_KICK_BYTES (8u << 20)
static int kick_off;
__attribute__((constructor)) static void fast_kick_setting(void) {
  const char *v = getenv("VDISKFS_WRITEBACK_KICK"); /* 0: off (for measuring it) */
  kick_off = v != NULL && strcmp(v, "0") == 0;
}
static void fast_kick_writeback(fast_extent *e, uint64_t end) {
  if (kick_off) return;
  uint64_t from = __atomic_load_n(&e->kicked, __ATOMIC_RELAXED);
  if (end < from + FAST_KICK_BYTES) return;
  if (!__atomic_compare_exchange_n(&e->kicked, &from, end, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return;
  sync_file_range(e->fd, (off64_t)from, (off64_t)(end - from), SYNC_FILE_RANGE_WRITE);
}

/* Counts the pages of an overwrite not overwritten since the last commit took the extent (fastTakeDirty):
 * a block rewritten again and again counts once between two commits, and fastWriteback starts its
 * writeback at most once before the commit writes it. */
static void fast_note_overwrite(fast_extent *e, uint64_t position, uint64_t length) {
  if (e->overwritten_pages == NULL || length == 0) return;
  for (uint64_t page = position / 4096, last = (position + length - 1) / 4096; page <= last; page++) {
    uint64_t bit = page % FAST_OVERWRITE_BITS, mask = 1ull << (bit % 64);
    if ((__atomic_fetch_or(&e->overwritten_pages[bit / 64], mask, __ATOMIC_RELAXED) & mask) == 0) __atomic_add_fetch(&e->overwritten, 4096, __ATOMIC_RELAXED);
  }
}

typedef struct fast_write_run { fast_extent *e; uint64_t slot, offset, length, at, base; int fresh_partial, fresh; } fast_write_run;

static int fast_stripe_cmp(const void *a, const void *b) {
  unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
  return x < y ? -1 : x > y;
}


/* Queues [ino, block, extent, slot, base] for the engine's map (fastAllocs; base: the chunk entry a
 * partial slot lies over, else 0); 0 when the queue is full. */
/* One change journal record (volume/journal.ts: u32 kind, u32 CRC-32 of bytes 0..3 and 8..31, three
 * f64), written to the journal's file; 1 when written (or there is no journal), under alloc_lock. */
static int fast_journal_record(fast_state *f, uint32_t kind, double a, double b, double c) {
  if (f->journal_fd < 0) return 1;
  unsigned char record[32];
  uint32_t k = htole32(kind);
  memcpy(record, &k, 4);
  memcpy(record + 8, &a, 8);
  memcpy(record + 16, &b, 8);
  memcpy(record + 24, &c, 8);
  uint32_t check = htole32((uint32_t)crc32(crc32(0L, record, 4), record + 8, 24));
  memcpy(record + 4, &check, 4);
  for (;;) {
    ssize_t n = write(f->journal_fd, record, sizeof(record));
    if (n == (ssize_t)sizeof(record)) return 1;
    if (n < 0 && errno == EINTR) continue;
    return 0;
  }
}

static int fast_alloc_queue(fast_state *f, uint64_t ino, uint64_t block, uint64_t id, uint64_t slot, uint64_t base, uint64_t volume_id) {
  pthread_mutex_lock(&f->alloc_lock);
  /* The journal's record first (kind 2: a size; kind 1: an entry, map entry 1 << 48 | extent << 24 | slot). */
  int journaled = id == 0
    ? fast_journal_record(f, 2, (double)volume_id, (double)block, 0)
    : fast_journal_record(f, 1, (double)volume_id, (double)block, (double)((1ull << 48) + (id << 24) + slot));
  if (!journaled) { pthread_mutex_unlock(&f->alloc_lock); return 0; }
  if (f->alloc_n + 5 > f->alloc_cap) {
    size_t cap = f->alloc_cap == 0 ? 5 * 1024 : f->alloc_cap * 2;
    uint64_t *grown = cap / 5 > FAST_LEASE_QUEUE_MAX ? NULL : realloc(f->alloc_queue, cap * sizeof(uint64_t));
    if (grown == NULL) { pthread_mutex_unlock(&f->alloc_lock); return 0; }
    f->alloc_queue = grown;
    f->alloc_cap = cap;
  }
  uint64_t *at = f->alloc_queue + f->alloc_n;
  at[0] = ino; at[1] = block; at[2] = id; at[3] = slot; at[4] = base;
  f->alloc_n += 5;
  __atomic_add_fetch(f->alloc_count, 1, __ATOMIC_SEQ_CST);
  pthread_mutex_unlock(&f->alloc_lock);
  return 1;
}

static int fast_write(session *s, fuse_req_t req, uint64_t ino, const char *buf, size_t size, off_t off) {
  fast_state *f = &s->fast;
  if (!__atomic_load_n(&s->fast_on, __ATOMIC_RELAXED) || !__atomic_load_n(&f->writes_on, __ATOMIC_RELAXED)) return 0;
  uint64_t bb = f->block_bytes;
  if (bb == 0 || off < 0 || size == 0 || size > FAST_READ_MAX || size % FAST_SECTOR != 0 || (uint64_t)off % FAST_SECTOR != 0) return 0;
  /* Every block it covers (at most FAST_READ_MAX / FAST_SECTOR) must be writable here. */
  uint64_t first_block = (uint64_t)off / bb, blocks = ((uint64_t)off + size - 1) / bb - first_block + 1;
  if (blocks > FAST_READ_MAX / FAST_SECTOR) return 0;
  int t = fast_thread_index(s);
  if (t < 0) return 0;
  uint64_t *epoch = &f->epochs[t];
  __atomic_add_fetch(epoch, 1, __ATOMIC_SEQ_CST); /* odd */
  int served = 0, why = HAND_FAILED;
  fast_write_run runs[FAST_READ_MAX / FAST_SECTOR];
  unsigned stripes[FAST_READ_MAX / FAST_SECTOR];
  uint64_t words[FAST_READ_MAX / FAST_SECTOR]; /* per block: the word loaded */
  uint64_t exts[FAST_READ_MAX / FAST_SECTOR], slots[FAST_READ_MAX / FAST_SECTOR]; /* where it is written */
  unsigned char fresh[FAST_READ_MAX / FAST_SECTOR]; /* a first write: a new slot from the lease */
  uint64_t bases[FAST_READ_MAX / FAST_SECTOR];      /* a first write of part of a chunk: the chunk's map entry */
  uint64_t *ats[FAST_READ_MAX / FAST_SECTOR];       /* a first write: where its block's word is */
  unsigned over_chunks = 0;
  unsigned nruns = 0, nstripes = 0, locked = 0, allocs = 0;
  fast_extent *lease = NULL;
  uint64_t lease_bases = 0;
  fast_volume *v = fast_volume_get(f, ino);
  if (v == NULL) { why = HAND_NO_VOLUME; goto out; }
  /* Past the end: only first writes, within what the lease lets the volume grow to (checked with it). */
  uint64_t grows_to = (uint64_t)off + size > __atomic_load_n(&v->size, __ATOMIC_SEQ_CST) ? (uint64_t)off + size : 0;
  /* The blocks' stripe locks, each once, in ascending order (no two writers wait on each other in a
   * cycle), before the words are loaded: a first write and the word it sets are one step for other
   * native writers of the block. */
  for (uint64_t i = 0; i < blocks; i++) stripes[nstripes++] = (unsigned)((ino * 1000003u + first_block + i) % FAST_STRIPES);
  qsort(stripes, nstripes, sizeof(unsigned), fast_stripe_cmp);
  for (unsigned i = 0; i < nstripes; i++) if (locked == 0 || stripes[locked - 1] != stripes[i]) stripes[locked++] = stripes[i];
  for (unsigned i = 0; i < locked; i++) pthread_mutex_lock(&f->stripes[stripes[i]]);
  for (uint64_t i = 0, done = 0; i < blocks; i++) {
    uint64_t block = first_block + i, offset = i == 0 ? (uint64_t)off % bb : 0;
    uint64_t length = bb - offset < size - done ? bb - offset : size - done;
    uint64_t word = fast_word(&v->words, block);
    words[i] = word;
    /* A whole block of zeros: the engine makes it a hole (and zeros written into a hole stay one). */
    if ((length == bb || (word & FAST_KIND_MASK) == FAST_HOLE) && fast_all_zero(buf + done, length)) { why = HAND_ZEROS; goto out; }
    unsigned kind = (unsigned)(word & FAST_KIND_MASK);
    bases[i] = 0;
    if (kind == FAST_WRITABLE) { exts[i] = word >> 32; slots[i] = (word >> 8) & 0xffffff; fresh[i] = 0; }
    /* A first write: of the whole block, or of part of a hole (the rest of a fresh slot reads as zeros),
     * or of part of a sealed chunk (a partial slot over it: the rest is the chunk's; map entry
     * 2 << 48 | chunk id, docs/FORMAT.md). */
    else if ((word & FAST_ALLOC) && (length == bb || kind == FAST_HOLE)) { fresh[i] = 1; allocs++; }
    else if ((word & FAST_ALLOC) && (kind == FAST_CHUNK || kind == FAST_CHUNK_UNREAD)) {
      fresh[i] = 1; allocs++; over_chunks++;
      bases[i] = (2ull << 48) + (word >> 32);
    }
    else { why = HAND_NOT_OPEN; goto out; }
    /* Where the word the first write sets is, in memory before anything is written (its run of words
     * made real now: fast_sub_words). Memory run out: the engine writes it (the run asks it now). */
    if (fresh[i] && (ats[i] = fast_word_at(&v->words, block)) == NULL) { why = HAND_FAILED; goto out; }
    done += length;
  }
  if (grows_to != 0 && allocs == 0) { why = HAND_PAST_END; goto out; }
  if (allocs > 0) {
    /* New slots for the first writes, consecutive, from the volume's lease (none left: the engine). */
    uint64_t id = 0, next = 0;
    pthread_mutex_lock(&v->lease_lock);
    int tell = 0;
    if (v->lease_extent != 0 && v->lease_end - v->lease_next >= allocs && grows_to <= v->lease_grow && (over_chunks == 0 || v->lease_bases != 0)) {
      id = v->lease_extent;
      next = v->lease_next;
      lease_bases = v->lease_bases;
      v->lease_next += allocs;
      /* A quarter left: JavaScript renews it before it runs out (once per lease). */
      if (!v->lease_low && (v->lease_end - v->lease_next) * 4 < v->lease_size) { v->lease_low = 1; tell = 1; }
    } else if (v->lease_extent != 0 && !v->lease_low) {
      v->lease_low = 1;
      tell = 1;
    }
    pthread_mutex_unlock(&v->lease_lock);
    if (tell) {
      request *low = calloc(1, sizeof(request));
      if (low != NULL) {
        low->s = s;
        low->op = OP_LEASE;
        low->ino = ino;
        if (napi_call_threadsafe_function(s->tsfn, low, napi_tsfn_nonblocking) != napi_ok) free(low);
      }
    }
    if (id == 0) { why = HAND_NO_LEASE; goto out; }
    lease = fast_extent_get(f, id);
    if (lease == NULL) { why = HAND_LEASE_GONE; goto out; }
    for (uint64_t i = 0; i < blocks; i++) if (fresh[i]) { exts[i] = id; slots[i] = next++; }
  }
  for (uint64_t i = 0, done = 0; i < blocks; i++) {
    uint64_t offset = i == 0 ? (uint64_t)off % bb : 0;
    uint64_t length = bb - offset < size - done ? bb - offset : size - done;
    uint64_t id = exts[i], slot = slots[i];
    fast_write_run *last = nruns > 0 ? &runs[nruns - 1] : NULL;
    int partial_fresh = fresh[i] && length != bb;
    if (partial_fresh || (last != NULL && last->fresh_partial)) last = NULL;
    if (last != NULL && last->e->id == id && last->slot + (last->offset + last->length) / bb == slot && (last->offset + last->length) % bb == 0 && offset == 0) {
      last->length += length;
      last->fresh |= fresh[i];
    } else {
      fast_extent *e = fast_extent_get(f, id);
      if (e == NULL) { why = HAND_EXTENT_GONE; goto out; }
      runs[nruns++] = (fast_write_run){ .e = e, .slot = slot, .offset = offset, .length = length, .at = done, .fresh_partial = partial_fresh, .fresh = fresh[i], .base = bases[i] };
    }
    done += length;
  }
  uint64_t sectors = size / FAST_SECTOR, spp = bb / FAST_SECTOR;
  uint32_t sums[FAST_READ_MAX / FAST_SECTOR];
  for (uint64_t k = 0; k < sectors; k++) {
    uint32_t sum = vd_crc32(0, (const unsigned char *)buf + k * FAST_SECTOR, FAST_SECTOR);
    sums[k] = htole32(sum == 0 ? 0xffffffffu : sum);
  }
  int ok = 1;
  for (unsigned r = 0; r < nruns; r++) {
    fast_extent *e = runs[r].e;
    uint64_t first = runs[r].offset / FAST_SECTOR;
    __atomic_add_fetch(&e->writing, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&e->seq, 1, __ATOMIC_SEQ_CST);
    if (ok && runs[r].fresh_partial) {
      /* Part of a fresh slot: every sector's checksum entry, 0 (reads as zeros) for those not written,
       * as the engine's first write of a slot does (a crash may have left stale entries past the end). */
      uint32_t whole[FAST_READ_MAX / FAST_SECTOR];
      memset(whole, 0, spp * 4);
      memcpy(whole + first, sums + runs[r].at / FAST_SECTOR, runs[r].length / FAST_SECTOR * 4);
      ok = fast_pwrite(e->fd, buf + runs[r].at, runs[r].length, e->data_start + runs[r].slot * bb + runs[r].offset) == 0 &&
           fast_pwrite(e->fd, (const char *)whole, spp * 4, e->sums_start + runs[r].slot * spp * 4) == 0;
      if (ok && runs[r].base != 0) {
        /* Over a chunk: the slot's base entry (docs/FORMAT.md: the map entry underneath, CRC-32 of
         * extent id, slot and entry, little-endian), written with the data, before any map names it. */
        unsigned char key[24], entry[16];
        uint64_t values[3] = { htole64(e->id), htole64(runs[r].slot), htole64(runs[r].base) };
        memcpy(key, values, 24);
        uint64_t stored = htole64(runs[r].base);
        uint32_t check = htole32((uint32_t)crc32(0L, key, 24)), zero = 0;
        memcpy(entry, &stored, 8);
        memcpy(entry + 8, &check, 4);
        memcpy(entry + 12, &zero, 4);
        ok = lease_bases != 0 && fast_pwrite(e->fd, (const char *)entry, 16, lease_bases + runs[r].slot * 16) == 0;
      }
    } else if (ok) {
      ok = fast_pwrite(e->fd, buf + runs[r].at, runs[r].length, e->data_start + runs[r].slot * bb + runs[r].offset) == 0 &&
           fast_pwrite(e->fd, (const char *)(sums + runs[r].at / FAST_SECTOR), runs[r].length / FAST_SECTOR * 4, e->sums_start + (runs[r].slot * spp + first) * 4) == 0;
    }
    if (ok && runs[r].fresh) fast_kick_writeback(e, e->data_start + runs[r].slot * bb + runs[r].offset + runs[r].length);
    else if (ok) fast_note_overwrite(e, e->data_start + runs[r].slot * bb + runs[r].offset, runs[r].length);
    /* Even a failed pwrite may have changed bytes: the next commit syncs the extent either way (and
     * the engine writes the whole request again). */
    __atomic_store_n(&e->dirty, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&e->last_write_ms, now_ms(), __ATOMIC_RELAXED);
    __atomic_add_fetch(&e->seq, 1, __ATOMIC_SEQ_CST);
    __atomic_sub_fetch(&e->writing, 1, __ATOMIC_SEQ_CST);
  }
  if (ok && grows_to != 0) {
    /* The new size: here before the reply (a READ after it reads up to it), and queued before the
     * blocks past the old end, for the engine (extent 0 names a size). */
    uint64_t seen = __atomic_load_n(&v->size, __ATOMIC_SEQ_CST);
    while (seen < grows_to && !__atomic_compare_exchange_n(&v->size, &seen, grows_to, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    if (!fast_alloc_queue(f, ino, grows_to, 0, 0, 0, v->volume_id)) ok = 0;
  }
  if (ok && allocs > 0) {
    /* The first writes' blocks now read their new slots: here at once (a word set only if it is still
     * the one loaded; else it asks the engine), and in the engine's map once it takes the queue, which
     * it does before it next reads a map (docs/FASTPATH.md, "First writes"). Queued before the reply. */
    for (uint64_t i = 0; i < blocks; i++) {
      if (!fresh[i]) continue;
      uint64_t block = first_block + i;
      uint64_t *at = ats[i];
      uint64_t expected = words[i];
      uint64_t word = (exts[i] << 32) | (slots[i] << 8) | FAST_NATIVE | FAST_WRITABLE | (bases[i] != 0 ? FAST_PARTIAL : 0);
      fast_word_set_native(at, expected, word);
      /* The queue is bounded by the leases (JavaScript takes it before it leases again): full only
       * when memory ran out, and then the word just set must not stay either (the engine writes it). */
      if (!fast_alloc_queue(f, ino, block, exts[i], slots[i], bases[i], v->volume_id)) {
        __atomic_store_n(at, 0, __ATOMIC_SEQ_CST);
        ok = 0;
        break;
      }
    }
  }
  if (ok) __atomic_add_fetch(&v->writes, 1, __ATOMIC_SEQ_CST);
  served = ok;
out:
  for (unsigned i = locked; i > 0; i--) pthread_mutex_unlock(&f->stripes[stripes[i - 1]]);
  for (unsigned r = 0; r < nruns; r++) fast_extent_put(runs[r].e);
  if (lease != NULL) fast_extent_put(lease);
  if (v != NULL) fast_volume_put(v);
  __atomic_add_fetch(epoch, 1, __ATOMIC_SEQ_CST); /* even: after the last pwrite, before the reply */
  if (served) {
    fuse_reply_write(req, size);
    __atomic_add_fetch(&f->written, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&f->write_bytes, size, __ATOMIC_RELAXED);
    if (allocs > 0) __atomic_add_fetch(&f->allocated, allocs, __ATOMIC_RELAXED);
  } else {
    __atomic_add_fetch(&f->write_handed, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&f->hand_why[why], 1, __ATOMIC_RELAXED);
  }
  return served;
}

static void set_fh(request *r, struct fuse_file_info *fi) {
  if (fi != NULL) { r->fh = fi->fh; r->has_fh = 1; }
}

/* ---- INIT: what the kernel and libfuse offer, what we take ---- */

static void fuse3_init(void *userdata, struct fuse_conn_info *conn) {
  session *s = userdata;
  /* 1 MiB requests: libfuse 3.14 derives max_pages (256 with 4 KiB pages) from max_write, and its
   * receive buffer holds FUSE_MAX_MAX_PAGES pages. */
  conn->max_write = s->max_write_wanted;
  conn->max_readahead = conn->max_readahead < s->max_write_wanted ? conn->max_readahead : s->max_write_wanted;
  if (s->max_background > 0) conn->max_background = s->max_background;
  if (s->congestion_threshold > 0) conn->congestion_threshold = s->congestion_threshold;
  unsigned wanted = FUSE_CAP_ASYNC_READ | FUSE_CAP_ASYNC_DIO | FUSE_CAP_PARALLEL_DIROPS;
  conn->want |= conn->capable & wanted;
  /* Off for now: the kernel would own size and mtime and batch writes in its page cache (docs/TRANSPORT.md).
   * ATOMIC_O_TRUNC off: the kernel then truncates with a SETATTR of its own instead of passing O_TRUNC to
   * OPEN; HANDLE_KILLPRIV off: the kernel clears set-id bits itself, as for the path-based transport. */
  conn->want &= ~(FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_HANDLE_KILLPRIV | FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE |
                  FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO | FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS |
                  FUSE_CAP_AUTO_INVAL_DATA);
  s->proto_major = conn->proto_major;
  s->proto_minor = conn->proto_minor;
  s->max_write = conn->max_write;
  s->max_readahead = conn->max_readahead;
  s->capable = conn->capable;
  s->want = conn->want;
}

/* ---- low-level operations: each queues a request for JavaScript ---- */

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  request *r = new_request(req, OP_LOOKUP, parent);
  if (r == NULL) return;
  r->name = strdup(name);
  queue(r);
}

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  (void)ino; (void)nlookup;
  fuse_reply_none(req);
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  (void)count; (void)forgets;
  fuse_reply_none(req);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  request *r = new_request(req, OP_GETATTR, ino);
  if (r == NULL) return;
  set_fh(r, fi);
  queue(r);
}

static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  request *r = new_request(req, OP_SETATTR, ino);
  if (r == NULL) return;
  set_fh(r, fi);
  r->attr = *attr;
  r->i1 = to_set;
  queue(r);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  request *r = new_request(req, OP_READDIR, ino);
  if (r == NULL) return;
  set_fh(r, fi);
  r->size = size;
  r->off = off;
  queue(r);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  request *r = new_request(req, OP_OPEN, ino);
  if (r == NULL) return;
  r->i1 = fi->flags;
  queue(r);
}

static void ll_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi) {
  request *r = new_request(req, OP_CREATE, parent);
  if (r == NULL) return;
  r->name = strdup(name);
  r->i1 = fi->flags;
  r->i2 = mode;
  queue(r);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  session *s = fuse_req_userdata(req);
  __atomic_add_fetch(&s->read_sizes[size_bucket(size)], 1, __ATOMIC_RELAXED);
  if (fast_read(s, req, ino, size, off)) return;
  request *r = new_request(req, OP_READ, ino);
  if (r == NULL) return;
  set_fh(r, fi);
  r->size = size;
  r->off = off;
  queue(r);
}

static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
  session *s = fuse_req_userdata(req);
  __atomic_add_fetch(&s->write_sizes[size_bucket(size)], 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&s->write_bytes, size, __ATOMIC_RELAXED);
  uint64_t seen = __atomic_load_n(&s->max_write_seen, __ATOMIC_RELAXED);
  while (size > seen && !__atomic_compare_exchange_n(&s->max_write_seen, &seen, size, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
  if (fast_write(s, req, ino, buf, size, off)) return;
  request *r = new_request(req, OP_WRITE, ino);
  if (r == NULL) return;
  set_fh(r, fi);
  /* The buffer is libfuse's receive buffer, reused once we return: the data goes to JavaScript in a copy. */
  r->data = malloc(size > 0 ? size : 1);
  if (r->data == NULL) { fuse_reply_err(req, ENOMEM); free(r); return; }
  memcpy(r->data, buf, size);
  r->data_len = size;
  r->off = off;
  queue(r);
}

static void ll_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  request *r = new_request(req, OP_FLUSH, ino);
  if (r == NULL) return;
  set_fh(r, fi);
  queue(r);
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  request *r = new_request(req, OP_RELEASE, ino);
  if (r == NULL) return;
  set_fh(r, fi);
  queue(r);
}

static void ll_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  request *r = new_request(req, OP_FSYNC, ino);
  if (r == NULL) return;
  set_fh(r, fi);
  r->i1 = datasync;
  queue(r);
}

static void ll_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
  request *r = new_request(req, OP_UNLINK, parent);
  if (r == NULL) return;
  r->name = strdup(name);
  queue(r);
}

static void ll_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname, unsigned int flags) {
  request *r = new_request(req, OP_RENAME, parent);
  if (r == NULL) return;
  r->name = strdup(name);
  r->ino2 = newparent;
  r->name2 = strdup(newname);
  r->i1 = flags;
  queue(r);
}

static void ll_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, struct fuse_file_info *fi) {
  request *r = new_request(req, OP_FALLOCATE, ino);
  if (r == NULL) return;
  set_fh(r, fi);
  r->i1 = mode;
  r->off = offset;
  r->off2 = length;
  queue(r);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) {
  request *r = new_request(req, OP_STATFS, ino);
  if (r == NULL) return;
  queue(r);
}

static void ll_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi) {
  request *r = new_request(req, OP_LSEEK, ino);
  if (r == NULL) return;
  set_fh(r, fi);
  r->off = off;
  r->i1 = whence;
  queue(r);
}

static void ll_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in, struct fuse_file_info *fi_in,
                               fuse_ino_t ino_out, off_t off_out, struct fuse_file_info *fi_out, size_t len, int flags) {
  request *r = new_request(req, OP_COPY_FILE_RANGE, ino_in);
  if (r == NULL) return;
  set_fh(r, fi_in);
  r->off = off_in;
  r->ino2 = ino_out;
  r->fh2 = fi_out != NULL ? fi_out->fh : 0;
  r->off2 = off_out;
  r->size = len;
  r->i1 = flags;
  queue(r);
}

static void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  request *r = new_request(req, OP_GETXATTR, ino);
  if (r == NULL) return;
  r->name = strdup(name);
  r->size = size;
  queue(r);
}

static void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  request *r = new_request(req, OP_LISTXATTR, ino);
  if (r == NULL) return;
  r->size = size;
  queue(r);
}

static void ll_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags) {
  (void)value; (void)size;
  request *r = new_request(req, OP_SETXATTR, ino);
  if (r == NULL) return;
  r->name = strdup(name);
  r->i1 = flags;
  queue(r);
}

static void ll_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
  request *r = new_request(req, OP_REMOVEXATTR, ino);
  if (r == NULL) return;
  r->name = strdup(name);
  queue(r);
}

/* Images are files only: no directories, nodes or links (as the path-based adapter answers). */
static void ll_mkdir(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m) { (void)p; (void)n; (void)m; fuse_reply_err(req, EPERM); }
static void ll_mknod(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, dev_t d) { (void)p; (void)n; (void)m; (void)d; fuse_reply_err(req, EPERM); }
static void ll_symlink(fuse_req_t req, const char *l, fuse_ino_t p, const char *n) { (void)l; (void)p; (void)n; fuse_reply_err(req, EPERM); }
static void ll_link(fuse_req_t req, fuse_ino_t i, fuse_ino_t p, const char *n) { (void)i; (void)p; (void)n; fuse_reply_err(req, EPERM); }
static void ll_rmdir(fuse_req_t req, fuse_ino_t p, const char *n) { (void)p; (void)n; fuse_reply_err(req, EPERM); }

static const struct fuse_lowlevel_ops operations = {
  .init = fuse3_init,
  .lookup = ll_lookup,
  .forget = ll_forget,
  .forget_multi = ll_forget_multi,
  .getattr = ll_getattr,
  .setattr = ll_setattr,
  .readdir = ll_readdir,
  .open = ll_open,
  .create = ll_create,
  .read = ll_read,
  .write = ll_write,
  .flush = ll_flush,
  .release = ll_release,
  .fsync = ll_fsync,
  .unlink = ll_unlink,
  .rename = ll_rename,
  .fallocate = ll_fallocate,
  .statfs = ll_statfs,
  .lseek = ll_lseek,
  .copy_file_range = ll_copy_file_range,
  .getxattr = ll_getxattr,
  .listxattr = ll_listxattr,
  .setxattr = ll_setxattr,
  .removexattr = ll_removexattr,
  .mkdir = ll_mkdir,
  .mknod = ll_mknod,
  .symlink = ll_symlink,
  .link = ll_link,
  .rmdir = ll_rmdir,
};

/* ---- N-API helpers ---- */

#define CHECK(call) do { if ((call) != napi_ok) { napi_throw_error(env, NULL, "vdiskfs_fuse3: " #call " failed"); return NULL; } } while (0)

static napi_value num(napi_env env, double value) {
  napi_value v;
  napi_create_double(env, value, &v);
  return v;
}

static napi_value str_or_null(napi_env env, const char *text) {
  napi_value v;
  if (text == NULL) napi_get_null(env, &v);
  else napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &v);
  return v;
}

static double ms_of(struct timespec ts) { return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6; }

/*
 * A WRITE's data, given to JavaScript as an external ArrayBuffer over the malloc'd copy. A successful
 * reply detaches it, which frees the memory at once: the engine's write has resolved, so nothing uses
 * the bytes any more (and a view kept by mistake would read as empty, never as freed memory). Telling
 * V8 of the size instead (napi_adjust_external_memory) made it run a major collection every few dozen
 * 1 MiB writes: a fifth of the daemon's time in a sequential write. An error reply leaves the buffer to
 * the garbage collector, since a failed write may still have pieces in flight.
 */
static void free_data(napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  free(data);
}

static void release_data(napi_env env, request *r, int detach) {
  if (r->data_ref == NULL) return;
  napi_value buffer;
  if (detach && napi_get_reference_value(env, r->data_ref, &buffer) == napi_ok && buffer != NULL) napi_detach_arraybuffer(env, buffer);
  napi_delete_reference(env, r->data_ref);
  r->data_ref = NULL;
}

/* Runs on the JavaScript thread for each queued request: calls dispatch(op, handle, ...args). */
static void call_js(napi_env env, napi_value js_callback, void *context, void *data) {
  (void)context;
  request *r = data;
  if (env == NULL) {
    if (r->req != NULL) fuse_reply_err(r->req, EIO);
    free(r->name); free(r->name2); free(r->data); free(r);
    return;
  }
  napi_value args[12];
  size_t argc = 0;
  napi_value handle;
  args[argc++] = num(env, r->op);
  if (r->op == OP_EXIT) {
    napi_get_null(env, &handle);
    args[argc++] = handle;
    args[argc++] = num(env, r->s->loop_result);
    free(r);
  } else if (r->op == OP_LEASE) {
    napi_get_null(env, &handle);
    args[argc++] = handle;
    args[argc++] = num(env, (double)r->ino);
    free(r);
  } else {
    napi_create_external(env, r, NULL, NULL, &handle);
    args[argc++] = handle;
    args[argc++] = num(env, (double)r->ino);
    napi_value fh;
    if (r->has_fh) fh = num(env, (double)r->fh); else napi_get_null(env, &fh);
    switch (r->op) {
      case OP_LOOKUP: case OP_REMOVEXATTR:
        args[argc++] = str_or_null(env, r->name);
        break;
      case OP_UNLINK:
        args[argc++] = str_or_null(env, r->name);
        args[argc++] = num(env, r->resent);
        break;
      case OP_GETATTR: case OP_FLUSH: case OP_RELEASE:
        args[argc++] = fh;
        break;
      case OP_SETATTR:
        args[argc++] = fh;
        args[argc++] = num(env, (double)r->i1);
        args[argc++] = num(env, r->attr.st_mode);
        args[argc++] = num(env, r->attr.st_uid);
        args[argc++] = num(env, r->attr.st_gid);
        args[argc++] = num(env, (double)r->attr.st_size);
        args[argc++] = num(env, ms_of(r->attr.st_mtim));
        break;
      case OP_READDIR:
        args[argc++] = num(env, (double)r->size);
        args[argc++] = num(env, (double)r->off);
        break;
      case OP_OPEN:
        args[argc++] = num(env, (double)r->i1);
        args[argc++] = num(env, r->resent);
        args[argc++] = num(env, (double)r->unique);
        break;
      case OP_CREATE:
        args[argc++] = str_or_null(env, r->name);
        args[argc++] = num(env, (double)r->i2);
        args[argc++] = num(env, (double)r->i1);
        args[argc++] = num(env, r->uid);
        args[argc++] = num(env, r->gid);
        args[argc++] = num(env, r->resent);
        args[argc++] = num(env, (double)r->unique);
        break;
      case OP_READ:
        args[argc++] = fh;
        args[argc++] = num(env, (double)r->size);
        args[argc++] = num(env, (double)r->off);
        break;
      case OP_WRITE: {
        napi_value buffer, array;
        if (napi_create_external_arraybuffer(env, r->data, r->data_len, free_data, NULL, &array) == napi_ok &&
            napi_create_typedarray(env, napi_uint8_array, r->data_len, array, 0, &buffer) == napi_ok) {
          if (napi_create_reference(env, array, 1, &r->data_ref) != napi_ok) r->data_ref = NULL;
        } else {
          void *copy;
          napi_create_buffer_copy(env, r->data_len, r->data, &copy, &buffer);
          free(r->data);
        }
        r->data = NULL;
        args[argc++] = fh;
        args[argc++] = buffer;
        args[argc++] = num(env, (double)r->off);
        break;
      }
      case OP_FSYNC:
        args[argc++] = fh;
        args[argc++] = num(env, (double)r->i1);
        break;
      case OP_RENAME:
        args[argc++] = str_or_null(env, r->name);
        args[argc++] = num(env, (double)r->ino2);
        args[argc++] = str_or_null(env, r->name2);
        args[argc++] = num(env, (double)r->i1);
        args[argc++] = num(env, r->resent);
        break;
      case OP_FALLOCATE:
        args[argc++] = fh;
        args[argc++] = num(env, (double)r->i1);
        args[argc++] = num(env, (double)r->off);
        args[argc++] = num(env, (double)r->off2);
        break;
      case OP_STATFS:
        break;
      case OP_LSEEK:
        args[argc++] = fh;
        args[argc++] = num(env, (double)r->off);
        args[argc++] = num(env, (double)r->i1);
        break;
      case OP_COPY_FILE_RANGE:
        args[argc++] = fh;
        args[argc++] = num(env, (double)r->off);
        args[argc++] = num(env, (double)r->ino2);
        args[argc++] = num(env, (double)r->fh2);
        args[argc++] = num(env, (double)r->off2);
        args[argc++] = num(env, (double)r->size);
        args[argc++] = num(env, (double)r->i1);
        break;
      case OP_GETXATTR:
        args[argc++] = str_or_null(env, r->name);
        args[argc++] = num(env, (double)r->size);
        break;
      case OP_LISTXATTR:
        args[argc++] = num(env, (double)r->size);
        break;
      case OP_SETXATTR:
        args[argc++] = str_or_null(env, r->name);
        args[argc++] = num(env, (double)r->i1);
        break;
    }
    free(r->name); r->name = NULL;
    free(r->name2); r->name2 = NULL;
  }
  napi_value global, result;
  napi_get_global(env, &global);
  napi_status status = napi_call_function(env, global, js_callback, argc, args, &result);
  if (status == napi_pending_exception) {
    /* dispatch catches its own errors; an exception here is a bug: let Node report it. */
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    napi_fatal_exception(env, exception);
  }
}

/* The request a handle names, or NULL (with an exception thrown) for a bad handle. */
static request *request_of(napi_env env, napi_value value) {
  void *pointer = NULL;
  if (napi_get_value_external(env, value, &pointer) != napi_ok || pointer == NULL) {
    napi_throw_type_error(env, NULL, "vdiskfs_fuse3: not a request handle");
    return NULL;
  }
  return pointer;
}

/* Frees a request's record after its reply; a reply after the session was destroyed is dropped. */
static int done(request *r) {
  int live = !r->s->destroyed;
  if (!live) { free(r->data); free(r); }
  return live;
}

static void finish(request *r) { free(r->data); free(r); }

static double arg_number(napi_env env, napi_value value) {
  double d = 0;
  napi_get_value_double(env, value, &d);
  return d;
}

/* The elements of typed array `value` if it is one of `type`: 1 with `data` and `count` set, else 0. */
static int typed_array(napi_env env, napi_value value, napi_typedarray_type type, void **data, size_t *count) {
  napi_typedarray_type got;
  size_t byte_offset = 0;
  napi_value arraybuffer;
  return napi_get_typedarray_info(env, value, &got, count, data, &arraybuffer, &byte_offset) == napi_ok && got == type;
}

static void fill_attr(napi_env env, napi_value *args, struct stat *st) {
  /* mode, nlink, uid, gid, size, blocks, blksize, mtimeMs */
  memset(st, 0, sizeof(*st));
  st->st_mode = (mode_t)arg_number(env, args[0]);
  st->st_nlink = (nlink_t)arg_number(env, args[1]);
  st->st_uid = (uid_t)arg_number(env, args[2]);
  st->st_gid = (gid_t)arg_number(env, args[3]);
  st->st_size = (off_t)arg_number(env, args[4]);
  st->st_blocks = (blkcnt_t)arg_number(env, args[5]);
  st->st_blksize = (blksize_t)arg_number(env, args[6]);
  double ms = arg_number(env, args[7]);
  struct timespec ts = { .tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)((ms - (double)(time_t)(ms / 1000) * 1000) * 1e6) };
  if (ts.tv_nsec < 0) ts.tv_nsec = 0;
  if (ts.tv_nsec > 999999999) ts.tv_nsec = 999999999;
  st->st_atim = ts;
  st->st_mtim = ts;
  st->st_ctim = ts;
}

#define GET_ARGS(n) \
  size_t argc = (n); napi_value args[(n) > 0 ? (n) : 1]; \
  CHECK(napi_get_cb_info(env, info, &argc, args, NULL, NULL)); \
  if (argc < (n)) { napi_throw_type_error(env, NULL, "vdiskfs_fuse3: missing arguments"); return NULL; }

/* replyErr(handle, errno): errno positive, 0 for success without data. */
static napi_value reply_err(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  request *r = request_of(env, args[0]);
  if (r == NULL) return NULL;
  release_data(env, r, 0);
  if (!done(r)) return NULL;
  fuse_reply_err(r->req, (int)arg_number(env, args[1]));
  finish(r);
  return NULL;
}

/*
 * replyEntry(handle, ino, mode, nlink, uid, gid, size, blocks, blksize, mtimeMs, generation). The
 * generation tells a volume from an earlier one with the same id (a restarted daemon may give a removed
 * volume's id again): the kernel then drops the inode it had, and with it the old volume's pages.
 */
static napi_value reply_entry(napi_env env, napi_callback_info info) {
  GET_ARGS(11);
  request *r = request_of(env, args[0]);
  if (r == NULL || !done(r)) return NULL;
  struct fuse_entry_param e;
  memset(&e, 0, sizeof(e));
  e.ino = (fuse_ino_t)arg_number(env, args[1]);
  fill_attr(env, args + 2, &e.attr);
  e.attr.st_ino = e.ino;
  e.generation = (uint64_t)arg_number(env, args[10]);
  e.attr_timeout = r->s->attr_timeout;
  e.entry_timeout = r->s->entry_timeout;
  fuse_reply_entry(r->req, &e);
  finish(r);
  return NULL;
}

/* replyAttr(handle, ino, mode, nlink, uid, gid, size, blocks, blksize, mtimeMs) */
static napi_value reply_attr(napi_env env, napi_callback_info info) {
  GET_ARGS(10);
  request *r = request_of(env, args[0]);
  if (r == NULL || !done(r)) return NULL;
  struct stat st;
  fill_attr(env, args + 2, &st);
  st.st_ino = (ino_t)arg_number(env, args[1]);
  fuse_reply_attr(r->req, &st, r->s->attr_timeout);
  finish(r);
  return NULL;
}

/* replyOpen(handle, fh) */
static napi_value reply_open(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  request *r = request_of(env, args[0]);
  if (r == NULL || !done(r)) return NULL;
  struct fuse_file_info fi;
  memset(&fi, 0, sizeof(fi));
  fi.fh = (uint64_t)arg_number(env, args[1]);
  fi.keep_cache = r->s->keep_cache ? 1 : 0;
  fuse_reply_open(r->req, &fi);
  finish(r);
  return NULL;
}

/* replyCreate(handle, ino, mode, nlink, uid, gid, size, blocks, blksize, mtimeMs, fh, generation) */
static napi_value reply_create(napi_env env, napi_callback_info info) {
  GET_ARGS(12);
  request *r = request_of(env, args[0]);
  if (r == NULL || !done(r)) return NULL;
  struct fuse_entry_param e;
  memset(&e, 0, sizeof(e));
  e.ino = (fuse_ino_t)arg_number(env, args[1]);
  fill_attr(env, args + 2, &e.attr);
  e.attr.st_ino = e.ino;
  e.generation = (uint64_t)arg_number(env, args[11]);
  e.attr_timeout = r->s->attr_timeout;
  e.entry_timeout = r->s->entry_timeout;
  struct fuse_file_info fi;
  memset(&fi, 0, sizeof(fi));
  fi.fh = (uint64_t)arg_number(env, args[10]);
  fi.keep_cache = r->s->keep_cache ? 1 : 0;
  fuse_reply_create(r->req, &e, &fi);
  finish(r);
  return NULL;
}

/* replyBuf(handle, buffer, length) */
static napi_value reply_buf(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  request *r = request_of(env, args[0]);
  if (r == NULL || !done(r)) return NULL;
  void *data = NULL;
  size_t length = 0;
  if (napi_get_buffer_info(env, args[1], &data, &length) != napi_ok) { fuse_reply_err(r->req, EIO); finish(r); return NULL; }
  size_t wanted = (size_t)arg_number(env, args[2]);
  if (wanted > length) wanted = length;
  if (r->op == OP_READ) __atomic_add_fetch(&r->s->read_bytes, wanted, __ATOMIC_RELAXED);
  fuse_reply_buf(r->req, data, wanted);
  finish(r);
  return NULL;
}

/* replyWrite(handle, count) */
static napi_value reply_write(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  request *r = request_of(env, args[0]);
  if (r == NULL) return NULL;
  release_data(env, r, 1);
  if (!done(r)) return NULL;
  fuse_reply_write(r->req, (size_t)arg_number(env, args[1]));
  finish(r);
  return NULL;
}

/* replyStatfs(handle, bsize, blocks, bfree, bavail, files, ffree) */
static napi_value reply_statfs(napi_env env, napi_callback_info info) {
  GET_ARGS(7);
  request *r = request_of(env, args[0]);
  if (r == NULL || !done(r)) return NULL;
  struct statvfs st;
  memset(&st, 0, sizeof(st));
  st.f_bsize = (unsigned long)arg_number(env, args[1]);
  st.f_frsize = st.f_bsize;
  st.f_blocks = (fsblkcnt_t)arg_number(env, args[2]);
  st.f_bfree = (fsblkcnt_t)arg_number(env, args[3]);
  st.f_bavail = (fsblkcnt_t)arg_number(env, args[4]);
  st.f_files = (fsfilcnt_t)arg_number(env, args[5]);
  st.f_ffree = (fsfilcnt_t)arg_number(env, args[6]);
  st.f_favail = st.f_ffree;
  st.f_namemax = 255;
  fuse_reply_statfs(r->req, &st);
  finish(r);
  return NULL;
}

/* replyLseek(handle, offset) */
static napi_value reply_lseek(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  request *r = request_of(env, args[0]);
  if (r == NULL || !done(r)) return NULL;
  fuse_reply_lseek(r->req, (off_t)arg_number(env, args[1]));
  finish(r);
  return NULL;
}

/* replyXattr(handle, size): the size a getxattr/listxattr asked with size 0 needs. */
static napi_value reply_xattr(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  request *r = request_of(env, args[0]);
  if (r == NULL || !done(r)) return NULL;
  fuse_reply_xattr(r->req, (size_t)arg_number(env, args[1]));
  finish(r);
  return NULL;
}

/*
 * replyDir(handle, names[], inos[], modes[]): the whole listing; this answers the part the request's
 * offset and size ask for (an entry's offset is its index + 1).
 */
static napi_value reply_dir(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  request *r = request_of(env, args[0]);
  if (r == NULL || !done(r)) return NULL;
  uint32_t count = 0;
  napi_get_array_length(env, args[1], &count);
  size_t size = r->size;
  char *buf = malloc(size > 0 ? size : 1);
  if (buf == NULL) { fuse_reply_err(r->req, ENOMEM); finish(r); return NULL; }
  size_t used = 0;
  char name[1024];
  for (uint32_t i = (uint32_t)(r->off < 0 ? 0 : r->off); i < count; i++) {
    napi_value v;
    size_t len = 0;
    napi_get_element(env, args[1], i, &v);
    if (napi_get_value_string_utf8(env, v, name, sizeof(name), &len) != napi_ok) continue;
    struct stat st;
    memset(&st, 0, sizeof(st));
    napi_get_element(env, args[2], i, &v);
    st.st_ino = (ino_t)arg_number(env, v);
    napi_get_element(env, args[3], i, &v);
    st.st_mode = (mode_t)arg_number(env, v);
    size_t need = fuse_add_direntry(r->req, buf + used, size - used, name, &st, (off_t)i + 1);
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(r->req, buf, used);
  free(buf);
  finish(r);
  return NULL;
}

/* ---- session lifecycle ---- */

static void *loop_thread(void *arg) {
  session *s = arg;
  /* Signals are Node's business: they must not land on libfuse's threads. */
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  struct fuse_loop_config *config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(config, s->clone_fd);
  fuse_loop_cfg_set_max_threads(config, s->max_threads);
  fuse_loop_cfg_set_idle_threads(config, s->max_threads);
  s->loop_result = fuse_session_loop_mt(s->se, config);
  fuse_loop_cfg_destroy(config);
  request *r = calloc(1, sizeof(request));
  if (r != NULL) {
    r->s = s;
    r->op = OP_EXIT;
    if (napi_call_threadsafe_function(s->tsfn, r, napi_tsfn_blocking) != napi_ok) free(r);
  }
  return NULL;
}

static void session_finalize(napi_env env, void *data, void *hint) {
  (void)env; (void)data; (void)hint;
  /* The session record stays: replies to requests still in flight read its 'destroyed' flag. */
}

/*
 * A takeover (docs/TRANSPORT.md, "A mount that outlives its daemon"): the /dev/fuse descriptor comes
 * from the holder, on a connection the kernel initialised with the daemon that died. The kernel sends
 * no second INIT, and libfuse answers every request before INIT with EIO, so libfuse is given an INIT
 * of our making with what the kernel negotiated (the protocol minor the first daemon saw, the
 * capabilities it took). libfuse's reply to it names a request the kernel does not know: the write gets
 * ENOENT, which libfuse ignores, and the kernel's side is unchanged.
 */
#define VDISKFS_FUSE_NOTIFY_RESEND 7
#define VDISKFS_TAKEOVER_UNIQUE 0x7ffffffffffffff1ULL
static void take_over(session *s, unsigned proto_minor) {
  struct {
    struct fuse_in_header h;
    struct fuse_init_in init;
  } msg;
  memset(&msg, 0, sizeof(msg));
  msg.h.len = sizeof(msg);
  msg.h.opcode = FUSE_INIT;
  msg.h.unique = VDISKFS_TAKEOVER_UNIQUE;
  msg.init.major = FUSE_KERNEL_VERSION;
  msg.init.minor = proto_minor != 0 ? proto_minor : FUSE_KERNEL_MINOR_VERSION;
  msg.init.max_readahead = s->max_write_wanted;
  msg.init.flags = FUSE_ASYNC_READ | FUSE_POSIX_LOCKS | FUSE_ATOMIC_O_TRUNC | FUSE_EXPORT_SUPPORT | FUSE_BIG_WRITES |
    FUSE_DONT_MASK | FUSE_FLOCK_LOCKS | FUSE_AUTO_INVAL_DATA | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS |
    FUSE_HANDLE_KILLPRIV | FUSE_MAX_PAGES;
  struct fuse_buf buf = { .size = sizeof(msg), .mem = &msg };
  fuse_session_process_buf(s->se, &buf);
}

/* FUSE_NOTIFY_RESEND: a notification with no body. Returns 0 or the errno of its write. */
static int notify_resend(session *s) {
  struct fuse_out_header out = { .len = sizeof(struct fuse_out_header), .error = VDISKFS_FUSE_NOTIFY_RESEND, .unique = 0 };
  ssize_t n = write(fuse_session_fd(s->se), &out, sizeof(out));
  return n == (ssize_t)sizeof(out) ? 0 : errno;
}

/*
 * notify(session, kind, ino, offset, length, name) -> Promise<errno>: tells the kernel to drop what it
 * cached of a change it did not make itself (a restore, a rename or rm from bin/vdiskfs).
 * kind 0: fuse_lowlevel_notify_inval_inode(ino, offset, length): offset < 0 drops attributes only,
 * length 0 means to the end. kind 1: fuse_lowlevel_notify_inval_entry(parent ino, name).
 * The write to /dev/fuse can wait in the kernel: for the lock of a page a READ is filling (which the
 * engine answers on the JavaScript thread) or of a directory a request holds. So it runs on a libuv
 * pool thread, never on the JavaScript thread; the caller keeps one in flight at a time, and destroys
 * the session only once none is (after the loop ended, the kernel refuses them at once).
 */
typedef struct notify_job {
  napi_async_work work;
  napi_deferred deferred;
  session *s;
  int kind;
  uint64_t ino;
  int64_t off, len;
  char *name;
  int result;
} notify_job;

static void notify_execute(napi_env env, void *data) {
  (void)env;
  notify_job *job = data;
  session *s = job->s;
  if (s->destroyed || s->se == NULL) { job->result = ENOTCONN; return; }
  int rc = job->kind == 0
    ? fuse_lowlevel_notify_inval_inode(s->se, (fuse_ino_t)job->ino, (off_t)job->off, (off_t)job->len)
    : fuse_lowlevel_notify_inval_entry(s->se, (fuse_ino_t)job->ino, job->name, strlen(job->name));
  job->result = rc < 0 ? -rc : rc;
  __atomic_add_fetch(&s->notifications, 1, __ATOMIC_RELAXED);
}

static void notify_complete(napi_env env, napi_status status, void *data) {
  notify_job *job = data;
  napi_resolve_deferred(env, job->deferred, num(env, status == napi_ok ? job->result : EIO));
  napi_delete_async_work(env, job->work);
  free(job->name);
  free(job);
}

static session *session_of(napi_env env, napi_value value);

static napi_value notify_session(napi_env env, napi_callback_info info) {
  GET_ARGS(6);
  session *s = session_of(env, args[0]);
  if (s == NULL) return NULL;
  notify_job *job = calloc(1, sizeof(notify_job));
  if (job == NULL) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  job->s = s;
  job->kind = (int)arg_number(env, args[1]);
  job->ino = (uint64_t)arg_number(env, args[2]);
  job->off = (int64_t)arg_number(env, args[3]);
  job->len = (int64_t)arg_number(env, args[4]);
  napi_valuetype type;
  napi_typeof(env, args[5], &type);
  if (type == napi_string) {
    size_t len = 0;
    napi_get_value_string_utf8(env, args[5], NULL, 0, &len);
    job->name = malloc(len + 1);
    if (job->name != NULL) napi_get_value_string_utf8(env, args[5], job->name, len + 1, &len);
  }
  if (job->kind == 1 && job->name == NULL) { free(job); napi_throw_type_error(env, NULL, "vdiskfs_fuse3: notify of an entry needs its name"); return NULL; }
  napi_value promise, resource;
  CHECK(napi_create_promise(env, &job->deferred, &promise));
  napi_create_string_utf8(env, "vdiskfs-fuse3-notify", NAPI_AUTO_LENGTH, &resource);
  CHECK(napi_create_async_work(env, NULL, resource, notify_execute, notify_complete, job, &job->work));
  CHECK(napi_queue_async_work(env, job->work));
  return promise;
}

/* fd(session) -> the session's /dev/fuse descriptor (for the holder). */
static napi_value session_fd(napi_env env, napi_callback_info info);

/*
 * mount(mountpoint, options, dispatch, settings) -> session handle. options: the -o string (fsname,
 * subtype, default_permissions, allow_other...). settings: { maxWrite, maxThreads, maxBackground,
 * congestionThreshold }. Throws with libfuse's reason on failure.
 */
static napi_value mount_session(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  char mountpoint[4096], options[4096];
  size_t len;
  CHECK(napi_get_value_string_utf8(env, args[0], mountpoint, sizeof(mountpoint), &len));
  CHECK(napi_get_value_string_utf8(env, args[1], options, sizeof(options), &len));
  session *s = calloc(1, sizeof(session));
  if (s == NULL) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  s->resend_result = -1;
  s->notify_fd = -1;
  pthread_mutex_init(&s->notify_lock, NULL);
  pthread_rwlock_init(&s->fast.lock, NULL);
  pthread_mutex_init(&s->fast.alloc_lock, NULL);
  s->fast.journal_fd = -1;
  /* Never freed: JavaScript may hold a view of it past the session (fastAllocCount). */
  s->fast.alloc_count = calloc(4, sizeof(uint32_t));
  for (unsigned i = 0; i < FAST_STRIPES; i++) pthread_mutex_init(&s->fast.stripes[i], NULL);
  s->max_write_wanted = 1024 * 1024;
  s->max_threads = 8;
  napi_value v;
  bool has;
  if (napi_has_named_property(env, args[3], "maxWrite", &has) == napi_ok && has) { napi_get_named_property(env, args[3], "maxWrite", &v); s->max_write_wanted = (unsigned)arg_number(env, v); }
  if (napi_has_named_property(env, args[3], "maxThreads", &has) == napi_ok && has) { napi_get_named_property(env, args[3], "maxThreads", &v); s->max_threads = (unsigned)arg_number(env, v); }
  if (napi_has_named_property(env, args[3], "maxBackground", &has) == napi_ok && has) { napi_get_named_property(env, args[3], "maxBackground", &v); s->max_background = (unsigned)arg_number(env, v); }
  if (napi_has_named_property(env, args[3], "congestionThreshold", &has) == napi_ok && has) { napi_get_named_property(env, args[3], "congestionThreshold", &v); s->congestion_threshold = (unsigned)arg_number(env, v); }
  int takeover_fd = -1;
  unsigned takeover_minor = 0;
  s->clone_fd = 1;
  if (napi_has_named_property(env, args[3], "cloneFd", &has) == napi_ok && has) { napi_get_named_property(env, args[3], "cloneFd", &v); s->clone_fd = (int)arg_number(env, v); }
  if (napi_has_named_property(env, args[3], "takeoverFd", &has) == napi_ok && has) { napi_get_named_property(env, args[3], "takeoverFd", &v); takeover_fd = (int)arg_number(env, v); }
  if (napi_has_named_property(env, args[3], "protoMinor", &has) == napi_ok && has) { napi_get_named_property(env, args[3], "protoMinor", &v); takeover_minor = (unsigned)arg_number(env, v); }
  if (takeover_fd >= 0) s->clone_fd = 0;
  if (napi_has_named_property(env, args[3], "entryTimeout", &has) == napi_ok && has) { napi_get_named_property(env, args[3], "entryTimeout", &v); s->entry_timeout = arg_number(env, v); }
  if (napi_has_named_property(env, args[3], "attrTimeout", &has) == napi_ok && has) { napi_get_named_property(env, args[3], "attrTimeout", &v); s->attr_timeout = arg_number(env, v); }
  if (napi_has_named_property(env, args[3], "keepCache", &has) == napi_ok && has) { napi_get_named_property(env, args[3], "keepCache", &v); s->keep_cache = arg_number(env, v) != 0; }
  if (napi_has_named_property(env, args[3], "notifyFd", &has) == napi_ok && has) { napi_get_named_property(env, args[3], "notifyFd", &v); s->notify_fd = (int)arg_number(env, v); if (s->notify_fd >= 0) fcntl(s->notify_fd, F_SETFD, FD_CLOEXEC); }

  napi_value name;
  napi_create_string_utf8(env, "vdiskfs-fuse3", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, args[2], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &s->tsfn) != napi_ok) {
    free(s);
    napi_throw_error(env, NULL, "vdiskfs_fuse3: could not create the thread-safe function");
    return NULL;
  }
  char *argv[] = { "vdiskfs", "-o", options, NULL };
  struct fuse_args fargs = FUSE_ARGS_INIT(options[0] != '\0' ? 3 : 1, argv);
  s->se = fuse_session_new(&fargs, &operations, sizeof(operations), s);
  if (s->se == NULL) {
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    free(s);
    napi_throw_error(env, NULL, "fuse_session_new failed (see the line libfuse printed above)");
    return NULL;
  }
  char fd_path[64];
  if (takeover_fd >= 0) snprintf(fd_path, sizeof(fd_path), "/dev/fd/%d", takeover_fd);
  if (fuse_session_mount(s->se, takeover_fd >= 0 ? fd_path : mountpoint) != 0) {
    fuse_session_destroy(s->se);
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    free(s);
    napi_throw_error(env, NULL, "fuse_session_mount failed (see the line libfuse printed above)");
    return NULL;
  }
  s->mountpoint = strdup(mountpoint);
  /* The same descriptor, read through io_read (the resend bit of each request). */
  if (fuse_session_custom_io(s->se, &custom_io, fuse_session_fd(s->se)) != 0) {
    fuse_session_unmount(s->se);
    fuse_session_destroy(s->se);
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    free(s->mountpoint);
    free(s);
    napi_throw_error(env, NULL, "fuse_session_custom_io failed (see the line libfuse printed above)");
    return NULL;
  }
  if (takeover_fd >= 0) take_over(s, takeover_minor);
  int err = pthread_create(&s->thread, NULL, loop_thread, s);
  if (err != 0) {
    fuse_session_unmount(s->se);
    fuse_session_destroy(s->se);
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    free(s->mountpoint);
    free(s);
    napi_throw_error(env, NULL, strerror(err));
    return NULL;
  }
  s->thread_started = 1;
  /* The requests the dead daemon had read and not answered go back to the queue (kernel 6.9+). */
  if (takeover_fd >= 0) s->resend_result = notify_resend(s);
  napi_value handle;
  CHECK(napi_create_external(env, s, session_finalize, NULL, &handle));
  return handle;
}

static session *session_of(napi_env env, napi_value value) {
  void *pointer = NULL;
  if (napi_get_value_external(env, value, &pointer) != napi_ok || pointer == NULL) {
    napi_throw_type_error(env, NULL, "vdiskfs_fuse3: not a session handle");
    return NULL;
  }
  return pointer;
}

static napi_value session_fd(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  session *s = session_of(env, args[0]);
  if (s == NULL) return NULL;
  return num(env, s->destroyed || s->se == NULL ? -1 : fuse_session_fd(s->se));
}

/*
 * notifier(session) -> [daemon end, holder end]: a new SOCK_SEQPACKET pair (both close-on-exec; the
 * holder's end goes to it as its fd 4, then is closed here); notifications go to the holder's notifier
 * through the daemon's end from then on (io_writev). Throws when the pair cannot be made.
 */
static napi_value session_notifier(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  session *s = session_of(env, args[0]);
  if (s == NULL) return NULL;
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) { napi_throw_error(env, NULL, strerror(errno)); return NULL; }
  __atomic_store_n(&s->notify_fd, pair[0], __ATOMIC_RELEASE);
  napi_value out;
  napi_create_array_with_length(env, 2, &out);
  napi_set_element(env, out, 0, num(env, pair[0]));
  napi_set_element(env, out, 1, num(env, pair[1]));
  return out;
}

/*
 * unmount(session) -> 0, or an errno: asks the loop to end and, as root, detaches the mount (lazily,
 * as libfuse does; the connection ends once nothing uses the mount). Not root: returns EPERM and the
 * caller runs fusermount3 -uz.
 */
static napi_value unmount_session(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  session *s = session_of(env, args[0]);
  if (s == NULL) return NULL;
  if (s->destroyed) return num(env, 0);
  fuse_session_exit(s->se);
  if (geteuid() != 0) return num(env, EPERM);
  int result = umount2(s->mountpoint, MNT_DETACH) == 0 ? 0 : errno;
  /* EINVAL: not mounted any more (unmounted from outside). */
  return num(env, result == EINVAL ? 0 : result);
}

/* destroy(session): after the exit record: joins the loop thread and frees libfuse's session. */
/* ---- the fast path's tables, written from JavaScript (src/fuse/fast-reads.ts) ---- */

/* Takes the volume's record (made when missing) with the table lock held for writing. */
static fast_volume *fast_volume_make(fast_state *f, uint64_t ino) {
  fast_volume *v = f->volumes[ino % FAST_BUCKETS];
  while (v != NULL && v->ino != ino) v = v->next;
  if (v != NULL) return v;
  v = calloc(1, sizeof(fast_volume));
  if (v == NULL) return NULL;
  pthread_mutex_init(&v->lease_lock, NULL);
  v->ino = ino;
  v->next = f->volumes[ino % FAST_BUCKETS];
  __atomic_store_n(&f->volumes[ino % FAST_BUCKETS], v, __ATOMIC_RELEASE);
  return v;
}

/* The record of `ino` as the JavaScript thread sees it (only it adds or removes records: no reference needed). */
static fast_volume *fast_volume_find(fast_state *f, uint64_t ino) {
  fast_volume *v = f->volumes[ino % FAST_BUCKETS];
  while (v != NULL && v->ino != ino) v = v->next;
  return v;
}


static session *live_session(napi_env env, napi_value value) {
  session *s = session_of(env, value);
  return s == NULL || s->destroyed ? NULL : s;
}

/* fastConfigure(session, blockBytes, on) */
static napi_value fast_configure(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  session *s = live_session(env, args[0]);
  if (s == NULL) return NULL;
  s->fast.block_bytes = (unsigned)arg_number(env, args[1]);
  __atomic_store_n(&s->fast_on, arg_number(env, args[2]) != 0, __ATOMIC_SEQ_CST);
  return NULL;
}

/* fastSize(session, ino, size): makes the volume's record when missing. */
static napi_value fast_size(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  session *s = live_session(env, args[0]);
  if (s == NULL) return NULL;
  pthread_rwlock_wrlock(&s->fast.lock);
  fast_volume *v = fast_volume_make(&s->fast, (uint64_t)arg_number(env, args[1]));
  pthread_rwlock_unlock(&s->fast.lock);
  if (v != NULL) __atomic_store_n(&v->size, (uint64_t)arg_number(env, args[2]), __ATOMIC_SEQ_CST);
  return NULL;
}

/* fastPublish(session, ino, firstBlock, words: Uint32Array of [low, high] pairs) -> whether it was taken. */
static napi_value fast_publish(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  napi_value result;
  napi_get_boolean(env, false, &result);
  session *s = live_session(env, args[0]);
  if (s == NULL) return result;
  fast_volume *v = fast_volume_find(&s->fast, (uint64_t)arg_number(env, args[1]));
  if (v == NULL) return result;
  uint64_t first = (uint64_t)arg_number(env, args[2]);
  size_t count = 0;
  void *data = NULL;
  if (!typed_array(env, args[3], napi_uint32_array, &data, &count)) {
    napi_throw_type_error(env, NULL, "vdiskfs_fuse3: fastPublish needs a Uint32Array");
    return NULL;
  }
  const uint32_t *pairs = data;
  if (!fast_words_publish(&v->words, first, pairs, count / 2)) return result;
  napi_get_boolean(env, true, &result);
  return result;
}


/* The words of blocks [block, block + count) (count < 0: to the end) of the volume named by the call's
 * arguments (session, ino, block, count): cleared (`freeze` 0: they ask the engine again), or, for the
 * FAST_WRITABLE ones, made FAST_DELTA (`freeze` 1: reads stay here, WRITEs go to the engine). */
static napi_value fast_words_change_js(napi_env env, napi_callback_info info, int freeze) {
  GET_ARGS(4);
  session *s = live_session(env, args[0]);
  if (s == NULL) return NULL;
  fast_volume *v = fast_volume_find(&s->fast, (uint64_t)arg_number(env, args[1]));
  if (v == NULL) return NULL;
  double from = arg_number(env, args[2]), n = arg_number(env, args[3]);
  uint64_t first = from < 0 ? 0 : (uint64_t)from;
  uint64_t end = n < 0 ? FAST_BLOCKS_MAX : first + (uint64_t)n;
  if (end > FAST_BLOCKS_MAX) end = FAST_BLOCKS_MAX;
  fast_words_change(&v->words, first, end, freeze);
  return NULL;
}

/* fastClear(session, ino, block, count): the words of blocks [block, block + count) ask the engine again (count < 0: to the end). */
static napi_value fast_clear(napi_env env, napi_callback_info info) {
  return fast_words_change_js(env, info, 0);
}

/* fastWrites(session, on): native WRITEs on or off (off: every WRITE to the engine). */
static napi_value fast_writes(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  session *s = live_session(env, args[0]);
  if (s == NULL) return NULL;
  __atomic_store_n(&s->fast.writes_on, arg_number(env, args[1]) != 0, __ATOMIC_SEQ_CST);
  return NULL;
}

/* fastFreeze(session, ino, block, count): words of [block, block + count) (count < 0: to the end) that
 * were FAST_WRITABLE become FAST_DELTA (reads stay here, WRITEs go to the engine). */
static napi_value fast_freeze(napi_env env, napi_callback_info info) {
  return fast_words_change_js(env, info, 1);
}

/* fastOdd(session) -> Float64Array of [slot, epoch] pairs: the workers inside a native WRITE now. */
static napi_value fast_odd(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  session *s = live_session(env, args[0]);
  double pairs[2 * FAST_THREADS_MAX];
  size_t n = 0;
  if (s != NULL) {
    unsigned threads = __atomic_load_n(&s->fast.threads, __ATOMIC_SEQ_CST);
    if (threads > FAST_THREADS_MAX) threads = FAST_THREADS_MAX;
    for (unsigned i = 0; i < threads; i++) {
      uint64_t e = __atomic_load_n(&s->fast.epochs[i], __ATOMIC_SEQ_CST);
      if (e & 1) { pairs[n++] = i; pairs[n++] = (double)e; }
    }
  }
  napi_value buffer, array;
  void *data = NULL;
  napi_create_arraybuffer(env, n * sizeof(double), &data, &buffer);
  if (n > 0) memcpy(data, pairs, n * sizeof(double));
  napi_create_typedarray(env, napi_float64_array, n, buffer, 0, &array);
  return array;
}

/* fastMoved(session, pairs) -> whether every worker of fastOdd's snapshot has left that native WRITE. */
static napi_value fast_moved(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  napi_value result;
  session *s = live_session(env, args[0]);
  size_t count = 0;
  void *data = NULL;
  int moved = 1;
  if (s != NULL && typed_array(env, args[1], napi_float64_array, &data, &count)) {
    const double *pairs = data;
    for (size_t i = 0; i + 1 < count && moved; i += 2) {
      unsigned slot = (unsigned)pairs[i];
      if (slot < FAST_THREADS_MAX && (double)__atomic_load_n(&s->fast.epochs[slot], __ATOMIC_SEQ_CST) == pairs[i + 1]) moved = 0;
    }
  }
  napi_get_boolean(env, moved, &result);
  return result;
}

/*
 * fastExtentSeq(session, id) -> the extent's native write sequence (-1: not registered; -2: a native
 * WRITE of it is in flight). A read is not raced by a native WRITE when two calls around it return the
 * same sequence, neither -2: one that began before the first call and ended after the second shows as
 * -2 in both.
 */
static napi_value fast_extent_seq(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  session *s = live_session(env, args[0]);
  if (s == NULL) return num(env, -1);
  fast_extent *e = fast_extent_get(&s->fast, (uint64_t)arg_number(env, args[1]));
  if (e == NULL) return num(env, -1);
  double seq = __atomic_load_n(&e->writing, __ATOMIC_SEQ_CST) > 0 ? -2 : (double)__atomic_load_n(&e->seq, __ATOMIC_SEQ_CST);
  fast_extent_put(e);
  return num(env, seq);
}

/* fastExtentLastWrite(session, id) -> ms since the epoch of its last native WRITE (0: none). */
static napi_value fast_extent_last_write(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  session *s = live_session(env, args[0]);
  if (s == NULL) return num(env, 0);
  fast_extent *e = fast_extent_get(&s->fast, (uint64_t)arg_number(env, args[1]));
  if (e == NULL) return num(env, 0);
  double ms = (double)__atomic_load_n(&e->last_write_ms, __ATOMIC_RELAXED);
  fast_extent_put(e);
  return num(env, ms);
}

/*
 * fastWriteback(session, bytes) -> extents whose writeback it started: overwrites land anywhere in an
 * extent, so the first writes' kick (fast_kick_writeback) never starts theirs, and the next commit's
 * fdatasync wrote back everything since the last one at once (4k random overwrites at 20,000 a second:
 * 0.3-0.45 s every 5 s, during which this machine's timer interrupts came up to 20 ms late, for a
 * SCHED_FIFO thread too: docs/PERFORMANCE.md, "The event loop under 4k random writes"). Each extent
 * in which overwrites changed `bytes` of pages not counted before (fast_note_overwrite: each page
 * counts once between two commits) gets sync_file_range WRITE over the whole file (no wait for the
 * disk, no change to what is durable when: the commit still fdatasyncs it), in the libuv pool, on a
 * duplicate of its descriptor (the extent may be dropped meanwhile). A page rewritten after its
 * writeback started is written by the commit again: at most twice between two commits (when every
 * pass counted again, fio's 128k sequential rewrite of a 1 GiB image started 46 writebacks in 5 s and
 * ran 12% slower; counted once, 6 or 7, and 8% slower without a flush in its window). One pass at a
 * time; VDISKFS_WRITEBACK_KICK=0 turns it off with the kick.
 */
#define WRITEBACK_FDS_MAX 64
typedef struct writeback_work { napi_async_work work; int fds[WRITEBACK_FDS_MAX]; unsigned n; } writeback_work;
static int writeback_running; /* main thread only */
static void writeback_execute(napi_env env, void *data) {
  (void)env;
  writeback_work *w = data;
  for (unsigned i = 0; i < w->n; i++) sync_file_range(w->fds[i], 0, 0, SYNC_FILE_RANGE_WRITE);
}
static void writeback_complete(napi_env env, napi_status status, void *data) {
  (void)status;
  writeback_work *w = data;
  for (unsigned i = 0; i < w->n; i++) close(w->fds[i]);
  napi_delete_async_work(env, w->work);
  free(w);
  writeback_running = 0;
}
static napi_value fast_writeback(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  session *s = live_session(env, args[0]);
  if (s == NULL || kick_off || writeback_running) return num(env, 0);
  uint64_t bytes = (uint64_t)arg_number(env, args[1]);
  writeback_work *w = calloc(1, sizeof(writeback_work));
  if (w == NULL) return num(env, 0);
  pthread_rwlock_rdlock(&s->fast.lock);
  for (unsigned i = 0; i < FAST_BUCKETS && w->n < WRITEBACK_FDS_MAX; i++) {
    for (fast_extent *e = s->fast.extents[i]; e != NULL && w->n < WRITEBACK_FDS_MAX; e = e->next) {
      if (__atomic_load_n(&e->overwritten, __ATOMIC_RELAXED) < bytes) continue;
      int fd = fcntl(e->fd, F_DUPFD_CLOEXEC, 3);
      if (fd < 0) continue;
      /* Its pages stay marked until the next commit takes the extent (fastTakeDirty): a page rewritten
       * before then is not counted again, so no page's writeback is started twice between two commits
       * (a sequential rewrite of the whole extent, again and again: once, then the commit). */
      __atomic_store_n(&e->overwritten, 0, __ATOMIC_RELAXED);
      w->fds[w->n++] = fd;
    }
  }
  pthread_rwlock_unlock(&s->fast.lock);
  unsigned n = w->n;
  napi_value name;
  napi_create_string_utf8(env, "vdiskfs-writeback", NAPI_AUTO_LENGTH, &name);
  if (n == 0 || napi_create_async_work(env, NULL, name, writeback_execute, writeback_complete, w, &w->work) != napi_ok) {
    for (unsigned i = 0; i < n; i++) close(w->fds[i]);
    free(w);
    return num(env, 0);
  }
  if (napi_queue_async_work(env, w->work) != napi_ok) {
    for (unsigned i = 0; i < n; i++) close(w->fds[i]);
    napi_delete_async_work(env, w->work);
    free(w);
    return num(env, 0);
  }
  writeback_running = 1;
  __atomic_add_fetch(&s->fast.writeback_passes, 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&s->fast.writeback_kicks, n, __ATOMIC_RELAXED);
  return num(env, n);
}

/* fastTakeDirty(session, take) -> ids of the extents native WRITEs changed since the last take (take 0: only look). */
static napi_value fast_take_dirty(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  napi_value array;
  napi_create_array(env, &array);
  session *s = live_session(env, args[0]);
  if (s == NULL) return array;
  int take = arg_number(env, args[1]) != 0;
  uint32_t n = 0;
  pthread_rwlock_rdlock(&s->fast.lock);
  for (unsigned i = 0; i < FAST_BUCKETS; i++) {
    for (fast_extent *e = s->fast.extents[i]; e != NULL; e = e->next) {
      if ((take ? __atomic_exchange_n(&e->dirty, 0, __ATOMIC_SEQ_CST) : __atomic_load_n(&e->dirty, __ATOMIC_SEQ_CST)) != 0) {
        napi_set_element(env, array, n++, num(env, (double)e->id));
        /* The commit fdatasyncs it: overwrites from here on count again for fastWriteback (a writer
         * racing these stores may go uncounted once: an estimate). */
        if (take && e->overwritten_pages != NULL) {
          __atomic_store_n(&e->overwritten, 0, __ATOMIC_RELAXED);
          for (unsigned k = 0; k < FAST_OVERWRITE_BITS / 64; k++) __atomic_store_n(&e->overwritten_pages[k], 0, __ATOMIC_RELAXED);
        }
      }
    }
  }
  pthread_rwlock_unlock(&s->fast.lock);
  return array;
}

/* fastVolumeWrites(session, ino) -> native WRITEs served to the volume so far (0 when unknown). */
static napi_value fast_volume_writes(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  session *s = live_session(env, args[0]);
  if (s == NULL) return num(env, 0);
  fast_volume *v = fast_volume_find(&s->fast, (uint64_t)arg_number(env, args[1]));
  return num(env, v == NULL ? 0 : (double)__atomic_load_n(&v->writes, __ATOMIC_SEQ_CST));
}

/* fastLease(session, ino, extent, first, end, bases) -> whether it was taken: native first writes of the
 * volume may take slots [first, end) of the extent (registered), the lease it had before ended; `bases`
 * is where the extent's base table starts (0: no partial slots in it); the last argument is the
 * volume's id, for the change journal's records. */
static napi_value fast_lease(napi_env env, napi_callback_info info) {
  GET_ARGS(7);
  napi_value result;
  napi_get_boolean(env, false, &result);
  session *s = live_session(env, args[0]);
  if (s == NULL) return result;
  fast_volume *v = fast_volume_find(&s->fast, (uint64_t)arg_number(env, args[1]));
  if (v == NULL) return result;
  pthread_mutex_lock(&v->lease_lock);
  v->lease_extent = (uint64_t)arg_number(env, args[2]);
  v->lease_next = (uint64_t)arg_number(env, args[3]);
  v->lease_end = (uint64_t)arg_number(env, args[4]);
  v->lease_size = v->lease_end - v->lease_next;
  v->lease_bases = (uint64_t)arg_number(env, args[5]);
  v->volume_id = (uint64_t)arg_number(env, args[6]);
  v->lease_grow = 0;
  v->lease_low = 0;
  pthread_mutex_unlock(&v->lease_lock);
  napi_get_boolean(env, true, &result);
  return result;
}

/* fastGrow(session, ino, bytes): first writes of the volume's lease may grow it up to `bytes` (0: not at all). */
static napi_value fast_grow(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  session *s = live_session(env, args[0]);
  fast_volume *v = s == NULL ? NULL : fast_volume_find(&s->fast, (uint64_t)arg_number(env, args[1]));
  if (v == NULL) return NULL;
  pthread_mutex_lock(&v->lease_lock);
  v->lease_grow = v->lease_extent == 0 ? 0 : (uint64_t)arg_number(env, args[2]);
  pthread_mutex_unlock(&v->lease_lock);
  return NULL;
}

/* fastLeaseTake(session, ino, extent) -> the lease's next slot, taken for the engine's own write (-1: the
 * volume has no lease in that extent, or none is left). */
static napi_value fast_lease_take(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  double slot = -1;
  session *s = live_session(env, args[0]);
  fast_volume *v = s == NULL ? NULL : fast_volume_find(&s->fast, (uint64_t)arg_number(env, args[1]));
  if (v != NULL) {
    pthread_mutex_lock(&v->lease_lock);
    if (v->lease_extent != 0 && v->lease_extent == (uint64_t)arg_number(env, args[2]) && v->lease_next < v->lease_end) slot = (double)v->lease_next++;
    pthread_mutex_unlock(&v->lease_lock);
  }
  return num(env, slot);
}

/* fastLeaseEnd(session, ino) -> [extent, next, end] of the lease it ends (extent 0: none): slots from
 * `next` on were not taken. Writers that took slots before may still be writing them (quiesce). */
static napi_value fast_lease_end(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  double out[3] = { 0, 0, 0 };
  session *s = live_session(env, args[0]);
  fast_volume *v = s == NULL ? NULL : fast_volume_find(&s->fast, (uint64_t)arg_number(env, args[1]));
  if (v != NULL) {
    pthread_mutex_lock(&v->lease_lock);
    out[0] = (double)v->lease_extent; out[1] = (double)v->lease_next; out[2] = (double)v->lease_end;
    v->lease_extent = 0; v->lease_next = 0; v->lease_end = 0; v->lease_grow = 0;
    pthread_mutex_unlock(&v->lease_lock);
  }
  napi_value buffer, array;
  void *data = NULL;
  napi_create_arraybuffer(env, sizeof(out), &data, &buffer);
  memcpy(data, out, sizeof(out));
  napi_create_typedarray(env, napi_float64_array, 3, buffer, 0, &array);
  return array;
}

/* fastAllocs(session, journalFd) -> Float64Array of [ino, block, extent, slot, base]: the first writes
 * queued since the last call, oldest first; the queue is emptied. In the same step (alloc_lock), a
 * journalFd >= 0 becomes the file later records go to (the addon keeps a duplicate; -2: none, -1: as
 * it was): a commit takes into its snapshot exactly the writes whose records are in the file it
 * replaces. */
static napi_value fast_allocs(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  double journal = arg_number(env, args[1]);
  /* Also after the session ended: what was queued still goes into the maps (the last commit). */
  session *s = session_of(env, args[0]);
  fast_state *f = s == NULL ? NULL : &s->fast;
  napi_value buffer, array;
  void *data = NULL;
  size_t n = 0;
  if (f != NULL) pthread_mutex_lock(&f->alloc_lock);
  if (f != NULL) n = f->alloc_n;
  if (napi_create_arraybuffer(env, n * sizeof(double), &data, &buffer) != napi_ok) {
    if (f != NULL) pthread_mutex_unlock(&f->alloc_lock);
    return NULL;
  }
  for (size_t i = 0; i < n; i++) ((double *)data)[i] = (double)f->alloc_queue[i];
  if (f != NULL) {
    f->alloc_n = 0;
    if (journal >= 0 || journal == -2) {
      if (f->journal_fd >= 0) close(f->journal_fd);
      f->journal_fd = journal >= 0 ? fcntl((int)journal, F_DUPFD_CLOEXEC, 0) : -1;
    }
    pthread_mutex_unlock(&f->alloc_lock);
  }
  napi_create_typedarray(env, napi_float64_array, n, buffer, 0, &array);
  return array;
}

/* fastAllocCount(session) -> a Uint32Array over the count of first writes ever queued (read without a
 * call: JavaScript takes the queue when it moved). */
static napi_value fast_alloc_count(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  session *s = live_session(env, args[0]);
  if (s == NULL || s->fast.alloc_count == NULL) return NULL;
  napi_value buffer, array;
  if (napi_create_external_arraybuffer(env, s->fast.alloc_count, 4 * sizeof(uint32_t), NULL, NULL, &buffer) != napi_ok) return NULL;
  napi_create_typedarray(env, napi_uint32_array, 1, buffer, 0, &array);
  return array;
}

/* fastDrop(session, ino): forgets the volume (removed, or closed for good); readers using it finish first. */
static napi_value fast_drop(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  session *s = live_session(env, args[0]);
  if (s == NULL) return NULL;
  uint64_t ino = (uint64_t)arg_number(env, args[1]);
  pthread_rwlock_wrlock(&s->fast.lock);
  fast_volume **at = &s->fast.volumes[ino % FAST_BUCKETS];
  while (*at != NULL && (*at)->ino != ino) at = &(*at)->next;
  fast_volume *v = *at;
  if (v != NULL) *at = v->next;
  pthread_rwlock_unlock(&s->fast.lock);
  if (v != NULL && __atomic_or_fetch(&v->refs, FAST_DEAD, __ATOMIC_SEQ_CST) == FAST_DEAD) fast_volume_free(v);
  return NULL;
}

/* fastExtent(session, id, fd, dataStart, sumsStart) -> whether the extent is registered (its descriptor dup'd). */
static napi_value fast_extent_add(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  napi_value result;
  napi_get_boolean(env, false, &result);
  session *s = live_session(env, args[0]);
  if (s == NULL) return result;
  fast_state *f = &s->fast;
  uint64_t id = (uint64_t)arg_number(env, args[1]);
  fast_extent *e = f->extents[id % FAST_BUCKETS];
  while (e != NULL && e->id != id) e = e->next;
  if (e != NULL) { napi_get_boolean(env, true, &result); return result; }
  if (f->extent_count >= FAST_EXTENTS_MAX) return result;
  int fd = fcntl((int)arg_number(env, args[2]), F_DUPFD_CLOEXEC, 3);
  if (fd < 0) return result;
  /* No readahead on extents (the open file the engine's descriptor shares): readahead fills the page
   * cache with large folios, which make every later 4 KiB write into them cost a walk of the folio
   * (fast_pwrite). A READ's own run is still read in one go. */
  if (folio_bytes > 0) posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  e = calloc(1, sizeof(fast_extent));
  if (e == NULL) { close(fd); return result; }
  e->id = id;
  e->fd = fd;
  e->overwritten_pages = calloc(FAST_OVERWRITE_BITS / 64, sizeof(uint64_t)); /* NULL: its overwrites are left to the commit */
  e->data_start = (uint64_t)arg_number(env, args[3]);
  e->sums_start = (uint64_t)arg_number(env, args[4]);
  pthread_rwlock_wrlock(&f->lock);
  e->next = f->extents[id % FAST_BUCKETS];
  f->extents[id % FAST_BUCKETS] = e;
  f->extent_count++;
  pthread_rwlock_unlock(&f->lock);
  napi_get_boolean(env, true, &result);
  return result;
}

/* fastExtentDrop(session, id): the extent is being removed; its descriptor closes once no reader uses it. */
static napi_value fast_extent_drop(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  session *s = live_session(env, args[0]);
  if (s == NULL) return NULL;
  fast_state *f = &s->fast;
  uint64_t id = (uint64_t)arg_number(env, args[1]);
  pthread_rwlock_wrlock(&f->lock);
  fast_extent **at = &f->extents[id % FAST_BUCKETS];
  while (*at != NULL && (*at)->id != id) at = &(*at)->next;
  fast_extent *e = *at;
  if (e != NULL) { *at = e->next; f->extent_count--; }
  pthread_rwlock_unlock(&f->lock);
  if (e != NULL && __atomic_or_fetch(&e->refs, FAST_DEAD, __ATOMIC_SEQ_CST) == FAST_DEAD) fast_extent_free(e);
  return NULL;
}

/* fastPack(session, id, path) -> whether the addon now holds a descriptor of pack `id` (opened here: read only). */
static napi_value fast_pack_add(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  napi_value result;
  napi_get_boolean(env, false, &result);
  session *s = live_session(env, args[0]);
  if (s == NULL) return result;
  fast_state *f = &s->fast;
  uint64_t id = (uint64_t)arg_number(env, args[1]);
  char file[4096];
  size_t len = 0;
  if (napi_get_value_string_utf8(env, args[2], file, sizeof(file), &len) != napi_ok || len >= sizeof(file) - 1) return result;
  fast_pack *p = f->packs[id % FAST_BUCKETS];
  while (p != NULL && p->id != id) p = p->next;
  if (p != NULL) { napi_get_boolean(env, true, &result); return result; }
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return result;
  if (fd < 3) { int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3); close(fd); if (moved < 0) return result; fd = moved; }
  p = calloc(1, sizeof(fast_pack));
  if (p == NULL) { close(fd); return result; }
  p->id = id;
  p->fd = fd;
  pthread_rwlock_wrlock(&f->lock);
  p->next = f->packs[id % FAST_BUCKETS];
  f->packs[id % FAST_BUCKETS] = p;
  pthread_rwlock_unlock(&f->lock);
  napi_get_boolean(env, true, &result);
  return result;
}

/* fastPackDrop(session, id): the pack is being removed or moved; its descriptor closes once no reader uses it. */
static napi_value fast_pack_drop(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  session *s = live_session(env, args[0]);
  if (s == NULL) return NULL;
  fast_state *f = &s->fast;
  uint64_t id = (uint64_t)arg_number(env, args[1]);
  pthread_rwlock_wrlock(&f->lock);
  fast_pack **at = &f->packs[id % FAST_BUCKETS];
  while (*at != NULL && (*at)->id != id) at = &(*at)->next;
  fast_pack *p = *at;
  if (p != NULL) *at = p->next;
  pthread_rwlock_unlock(&f->lock);
  if (p != NULL && __atomic_or_fetch(&p->refs, FAST_DEAD, __ATOMIC_SEQ_CST) == FAST_DEAD) fast_pack_free(p);
  return NULL;
}

/*
 * fastChunk(session, id, pack, offset, stored, raw, compressed, hash) -> whether the addon now knows
 * chunk `id`: its payload of `stored` bytes at `offset` of pack `pack`, zstd-compressed or not, holding
 * a block of `raw` bytes whose BLAKE3-256 is `hash` (a 32-byte Buffer). A record of the same id is
 * replaced. False when the table is full (FAST_CHUNKS_MAX) or the arguments are out of range.
 */
static napi_value fast_chunk_add(napi_env env, napi_callback_info info) {
  GET_ARGS(8);
  napi_value result;
  napi_get_boolean(env, false, &result);
  session *s = live_session(env, args[0]);
  if (s == NULL) return result;
  fast_state *f = &s->fast;
  void *hash = NULL;
  size_t hash_len = 0;
  if (napi_get_buffer_info(env, args[7], &hash, &hash_len) != napi_ok || hash_len != 32) return result;
  double stored = arg_number(env, args[4]), raw = arg_number(env, args[5]);
  if (stored <= 0 || raw <= 0 || raw > FAST_CHUNK_MAX_BYTES || stored > (double)ZSTD_compressBound(FAST_CHUNK_MAX_BYTES)) return result;
  fast_chunk *c = calloc(1, sizeof(fast_chunk));
  if (c == NULL) return result;
  c->id = (uint64_t)arg_number(env, args[1]);
  c->pack = (uint64_t)arg_number(env, args[2]);
  c->offset = (uint64_t)arg_number(env, args[3]);
  c->stored = (uint32_t)stored;
  c->raw = (uint32_t)raw;
  bool compressed = false;
  napi_get_value_bool(env, args[6], &compressed);
  c->compressed = compressed ? 1 : 0;
  memcpy(c->hash, hash, 32);
  fast_chunk *old = NULL;
  pthread_rwlock_wrlock(&f->lock);
  if (f->chunks == NULL) f->chunks = calloc(FAST_CHUNK_BUCKETS, sizeof(fast_chunk *));
  if (f->chunks != NULL) {
    fast_chunk **at = &f->chunks[c->id % FAST_CHUNK_BUCKETS];
    while (*at != NULL && (*at)->id != c->id) at = &(*at)->next;
    if (*at != NULL) { old = *at; *at = old->next; f->chunk_count--; }
    if (f->chunk_count < FAST_CHUNKS_MAX) {
      c->next = f->chunks[c->id % FAST_CHUNK_BUCKETS];
      f->chunks[c->id % FAST_CHUNK_BUCKETS] = c;
      f->chunk_count++;
      c = NULL;
      napi_get_boolean(env, true, &result);
    }
  }
  pthread_rwlock_unlock(&f->lock);
  free(old); /* readers copy a record under the read lock: none holds it now */
  free(c);
  return result;
}

/* fastChunkDrop(session, id): the addon forgets chunk `id` (a word naming it then hands its READs to the engine). */
static napi_value fast_chunk_drop(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  session *s = live_session(env, args[0]);
  if (s == NULL) return NULL;
  fast_state *f = &s->fast;
  uint64_t id = (uint64_t)arg_number(env, args[1]);
  fast_chunk *c = NULL;
  pthread_rwlock_wrlock(&f->lock);
  if (f->chunks != NULL) {
    fast_chunk **at = &f->chunks[id % FAST_CHUNK_BUCKETS];
    while (*at != NULL && (*at)->id != id) at = &(*at)->next;
    if (*at != NULL) { c = *at; *at = c->next; f->chunk_count--; }
  }
  pthread_rwlock_unlock(&f->lock);
  free(c);
  return NULL;
}

/* After the session loop ended (destroy): no reader is left; frees the tables. */
static void fast_free_all(fast_state *f) {
  for (unsigned i = 0; i < FAST_BUCKETS; i++) {
    for (fast_volume *v = f->volumes[i], *next; v != NULL; v = next) { next = v->next; fast_volume_free(v); }
    for (fast_extent *e = f->extents[i], *next; e != NULL; e = next) { next = e->next; fast_extent_free(e); }
    for (fast_pack *p = f->packs[i], *next; p != NULL; p = next) { next = p->next; fast_pack_free(p); }
    f->volumes[i] = NULL;
    f->extents[i] = NULL;
    f->packs[i] = NULL;
  }
  f->extent_count = 0;
  if (f->chunks != NULL) {
    for (unsigned i = 0; i < FAST_CHUNK_BUCKETS; i++) {
      for (fast_chunk *c = f->chunks[i], *next; c != NULL; c = next) { next = c->next; free(c); }
    }
    free(f->chunks);
    f->chunks = NULL;
  }
  f->chunk_count = 0;
}

static napi_value destroy_session(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  session *s = session_of(env, args[0]);
  if (s == NULL || s->destroyed) return NULL;
  if (s->thread_started) pthread_join(s->thread, NULL);
  s->thread_started = 0;
  fuse_session_unmount(s->se);
  fuse_session_destroy(s->se);
  s->se = NULL;
  s->destroyed = 1;
  /* The workers have ended: nobody reads the fast path's tables any more. */
  pthread_rwlock_wrlock(&s->fast.lock);
  fast_free_all(&s->fast);
  pthread_rwlock_unlock(&s->fast.lock);
  int nfd = __atomic_exchange_n(&s->notify_fd, -1, __ATOMIC_ACQ_REL);
  if (nfd >= 0) close(nfd);
  napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
  return NULL;
}

static napi_value number_array(napi_env env, const uint64_t *values, size_t count) {
  napi_value array;
  napi_create_array_with_length(env, count, &array);
  for (size_t i = 0; i < count; i++) napi_set_element(env, array, (uint32_t)i, num(env, (double)__atomic_load_n(&values[i], __ATOMIC_RELAXED)));
  return array;
}

/* stats(session): what INIT negotiated and the request counters. */
static napi_value session_stats(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  session *s = session_of(env, args[0]);
  if (s == NULL) return NULL;
  napi_value out;
  napi_create_object(env, &out);
  napi_set_named_property(env, out, "protoMajor", num(env, s->proto_major));
  napi_set_named_property(env, out, "protoMinor", num(env, s->proto_minor));
  napi_set_named_property(env, out, "maxWrite", num(env, s->max_write));
  napi_set_named_property(env, out, "maxReadahead", num(env, s->max_readahead));
  napi_set_named_property(env, out, "capable", num(env, s->capable));
  napi_set_named_property(env, out, "want", num(env, s->want));
  napi_set_named_property(env, out, "maxThreads", num(env, s->max_threads));
  napi_set_named_property(env, out, "requests", num(env, (double)__atomic_load_n(&s->requests, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "writeBytes", num(env, (double)__atomic_load_n(&s->write_bytes, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "readBytes", num(env, (double)__atomic_load_n(&s->read_bytes, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "maxWriteSeen", num(env, (double)__atomic_load_n(&s->max_write_seen, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "writeSizes", number_array(env, s->write_sizes, SIZE_BUCKETS));
  napi_set_named_property(env, out, "resendResult", num(env, s->resend_result));
  napi_set_named_property(env, out, "cloneFd", num(env, s->clone_fd));
  napi_set_named_property(env, out, "notifications", num(env, (double)__atomic_load_n(&s->notifications, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "resent", num(env, (double)__atomic_load_n(&s->resent, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "entryTimeout", num(env, s->entry_timeout));
  napi_set_named_property(env, out, "attrTimeout", num(env, s->attr_timeout));
  napi_set_named_property(env, out, "keepCache", num(env, s->keep_cache));
  napi_set_named_property(env, out, "readSizes", number_array(env, s->read_sizes, SIZE_BUCKETS));
  napi_set_named_property(env, out, "fastOn", num(env, __atomic_load_n(&s->fast_on, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastServed", num(env, (double)__atomic_load_n(&s->fast.served, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastHanded", num(env, (double)__atomic_load_n(&s->fast.handed, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastBytes", num(env, (double)__atomic_load_n(&s->fast.bytes, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastMismatches", num(env, (double)__atomic_load_n(&s->fast.mismatches, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastExtents", num(env, s->fast.extent_count));
  napi_set_named_property(env, out, "fastWordBytes", num(env, (double)__atomic_load_n(&fast_word_bytes, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastChunks", num(env, s->fast.chunk_count));
  napi_set_named_property(env, out, "fastChunkReads", num(env, (double)__atomic_load_n(&s->fast.chunk_reads, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastChunkHits", num(env, (double)__atomic_load_n(&s->fast.chunk_hits, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastChunkMismatches", num(env, (double)__atomic_load_n(&s->fast.chunk_mismatches, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastChunkPieces", num(env, (double)__atomic_load_n(&s->fast.chunk_pieces, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastWritesOn", num(env, __atomic_load_n(&s->fast.writes_on, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastWritten", num(env, (double)__atomic_load_n(&s->fast.written, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastWriteHanded", num(env, (double)__atomic_load_n(&s->fast.write_handed, __ATOMIC_RELAXED)));
  {
    napi_value why;
    napi_create_object(env, &why);
    for (unsigned i = 0; i < HAND_REASONS; i++) napi_set_named_property(env, why, hand_names[i], num(env, (double)__atomic_load_n(&s->fast.hand_why[i], __ATOMIC_RELAXED)));
    napi_set_named_property(env, out, "fastWriteHandedWhy", why);
  }
  napi_set_named_property(env, out, "fastWritebackPasses", num(env, (double)__atomic_load_n(&s->fast.writeback_passes, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastWritebackKicks", num(env, (double)__atomic_load_n(&s->fast.writeback_kicks, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastAllocated", num(env, (double)__atomic_load_n(&s->fast.allocated, __ATOMIC_RELAXED)));
  napi_set_named_property(env, out, "fastWriteBytes", num(env, (double)__atomic_load_n(&s->fast.write_bytes, __ATOMIC_RELAXED)));
  return out;
}

/*
 * preadNowait(fd, target, offset, length, position) -> bytes read (0 at the end of the file), or -errno:
 * -EAGAIN when the bytes are not all in the page cache (preadv2 with RWF_NOWAIT, which never waits for
 * the disk). The engine reads its extents so on the JavaScript thread, synchronously, when they are
 * cached: a microsecond or two, against a libuv pool round trip of tens (src/io/file-io.ts). Not a FUSE
 * call: it lives in this addon because the addon is vdiskfs's one native module.
 */
static napi_value pread_nowait(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  int32_t fd = 0;
  napi_get_value_int32(env, args[0], &fd);
  size_t count = 0;
  void *data = NULL;
  if (!typed_array(env, args[1], napi_uint8_array, &data, &count)) {
    napi_throw_type_error(env, NULL, "vdiskfs_fuse3: preadNowait needs a Uint8Array");
    return NULL;
  }
  double offset = arg_number(env, args[2]), length = arg_number(env, args[3]), position = arg_number(env, args[4]);
  if (offset < 0 || length < 0 || offset + length > (double)count || position < 0) {
    napi_throw_range_error(env, NULL, "vdiskfs_fuse3: preadNowait out of range");
    return NULL;
  }
  struct iovec iov = { .iov_base = (char *)data + (size_t)offset, .iov_len = (size_t)length };
  ssize_t n = preadv2(fd, &iov, 1, (off_t)position, RWF_NOWAIT);
  return num(env, n >= 0 ? (double)n : -(double)errno);
}

/*
 * blake3Pieces(input, out) -> the number of 16 KiB pieces `input` (a Uint8Array) is cut into
 * (pieces.h; 0 when its length is not a power of two of at least two pieces, and `out` is untouched),
 * with its BLAKE3-256 in out[0..32) and each piece's chaining value after it (out: a Uint8Array of at
 * least 32 * (1 + pieces) bytes). For the sealing workers, which write the table of a pieced payload.
 */
static napi_value blake3_pieces(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  size_t length = 0, out_length = 0;
  void *data = NULL, *out = NULL;
  if (!typed_array(env, args[0], napi_uint8_array, &data, &length) || !typed_array(env, args[1], napi_uint8_array, &out, &out_length)) {
    napi_throw_type_error(env, NULL, "vdiskfs_fuse3: blake3Pieces needs two Uint8Arrays");
    return NULL;
  }
  unsigned count = pieces_count(length);
  if (count > 0) {
    if (out_length < 32u * (1 + count)) {
      napi_throw_range_error(env, NULL, "vdiskfs_fuse3: blake3Pieces's output is too short");
      return NULL;
    }
    pieces_all(data, count, (uint8_t *)out + 32, out);
  }
  return num(env, count);
}

/* crc32(data, crc) -> zlib's CRC-32 of `data` (a Uint8Array) continuing `crc`: the addon's own (crc32_fast.c), for its test. */
static napi_value crc32_napi(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  size_t length = 0;
  void *data = NULL;
  if (!typed_array(env, args[0], napi_uint8_array, &data, &length)) {
    napi_throw_type_error(env, NULL, "vdiskfs_fuse3: crc32 needs a Uint8Array");
    return NULL;
  }
  uint32_t crc = 0;
  napi_get_value_uint32(env, args[1], &crc);
  return num(env, vd_crc32(crc, data, length));
}

/*
 * crc32Groups(data, groupBytes, groups, seed, out): out[g] = the CRC-32 of data's bytes
 * [g * groupBytes, (g + 1) * groupBytes) started from (seed ^ g), as zlib.crc32(group, seed ^ g), for g
 * below groups: a map page's checksum groups (format/map-format.ts) in one call instead of 256.
 */
static napi_value crc32_groups_napi(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  size_t length = 0, slots = 0;
  void *data = NULL, *out = NULL;
  if (!typed_array(env, args[0], napi_uint8_array, &data, &length) || !typed_array(env, args[4], napi_uint32_array, &out, &slots)) {
    napi_throw_type_error(env, NULL, "vdiskfs_fuse3: crc32Groups needs a Uint8Array and a Uint32Array");
    return NULL;
  }
  double group_bytes = arg_number(env, args[1]), groups = arg_number(env, args[2]);
  uint32_t seed = 0;
  napi_get_value_uint32(env, args[3], &seed);
  if (!(group_bytes >= 1) || !(groups >= 0) || groups > (double)slots || groups * group_bytes > (double)length) {
    napi_throw_range_error(env, NULL, "vdiskfs_fuse3: crc32Groups: the groups do not fit the arrays");
    return NULL;
  }
  const unsigned char *bytes = data;
  uint32_t *crcs = out;
  size_t size = (size_t)group_bytes;
  for (size_t g = 0; g < (size_t)groups; g++) crcs[g] = vd_crc32(seed ^ (uint32_t)g, bytes + g * size, size);
  return NULL;
}

/*
 * mallocTrim(): returns the free memory of the C heap to the system (glibc's malloc_trim(0), which
 * also releases free pages inside the heap, not only at its top), in a detached thread so that the
 * event loop never waits for it; returns at once, 0 or the errno of pthread_create. Why: a commit's
 * transient buffers (map pages' encodings, catalog.log records, SQLite's) are freed to malloc, which
 * keeps them: docs/PERFORMANCE.md, "The daemon's memory".
 */
static int trims_running = 0;
/* Trims ended, and the last one's time and what it gave back (resident bytes of the process, before - after). */
static uint64_t trims_done = 0;
static uint64_t trim_last_ns = 0;
static int64_t trim_last_freed = 0;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int64_t resident_bytes(void) {
  long pages = 0, resident = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f == NULL) return 0;
  if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  fclose(f);
  return (int64_t)resident * sysconf(_SC_PAGESIZE);
}

static void *malloc_trim_thread(void *unused) {
  int64_t before = resident_bytes();
  uint64_t start = now_ns();
  malloc_trim(0);
  uint64_t took = now_ns() - start;
  int64_t freed = before - resident_bytes();
  __atomic_store_n(&trim_last_ns, took, __ATOMIC_RELAXED);
  __atomic_store_n(&trim_last_freed, freed, __ATOMIC_RELAXED);
  __atomic_add_fetch(&trims_done, 1, __ATOMIC_RELAXED);
  __atomic_store_n(&trims_running, 0, __ATOMIC_RELEASE);
  return NULL;
}

/* mallocTrimStats(): [trims ended, the last one's milliseconds, the bytes it gave back]. */
static napi_value malloc_trim_stats(napi_env env, napi_callback_info info) {
  napi_value out;
  napi_create_array_with_length(env, 3, &out);
  napi_set_element(env, out, 0, num(env, (double)__atomic_load_n(&trims_done, __ATOMIC_RELAXED)));
  napi_set_element(env, out, 1, num(env, (double)__atomic_load_n(&trim_last_ns, __ATOMIC_RELAXED) / 1e6));
  napi_set_element(env, out, 2, num(env, (double)__atomic_load_n(&trim_last_freed, __ATOMIC_RELAXED)));
  return out;
}

static napi_value malloc_trim_napi(napi_env env, napi_callback_info info) {
  int expected = 0;
  // One at a time: a trim asked while one runs is that one.
  if (!__atomic_compare_exchange_n(&trims_running, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return num(env, 0);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t thread;
  int err = pthread_create(&thread, &attr, malloc_trim_thread, NULL);
  pthread_attr_destroy(&attr);
  if (err != 0) __atomic_store_n(&trims_running, 0, __ATOMIC_RELEASE);
  return num(env, err);
}

/*
 * loopPriority(realtime): the calling thread's scheduling policy (Linux schedules threads, not
 * processes: called on the event loop, it changes only the event loop's thread). 1: SCHED_RR at
 * priority 1 with SCHED_RESET_ON_FORK, so that no thread or process created after it (the libuv
 * pool's threads, workers, fusermount3) inherits it; 0: SCHED_OTHER again. Returns 0 or the errno
 * (EPERM without CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 1). docs/ARCHITECTURE.md, "The event
 * loop's priority".
 */
static napi_value loop_priority(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int realtime = (int)arg_number(env, args[0]);
  struct sched_param param = { .sched_priority = realtime ? 1 : 0 };
  int policy = realtime ? (SCHED_RR | SCHED_RESET_ON_FORK) : SCHED_OTHER;
  int result = sched_setscheduler(0, policy, &param) == 0 ? 0 : errno;
  return num(env, result);
}

static napi_value init_module(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "mount", NULL, mount_session, NULL, NULL, NULL, napi_default, NULL },
    { "unmount", NULL, unmount_session, NULL, NULL, NULL, napi_default, NULL },
    { "destroy", NULL, destroy_session, NULL, NULL, NULL, napi_default, NULL },
    { "stats", NULL, session_stats, NULL, NULL, NULL, napi_default, NULL },
    { "fd", NULL, session_fd, NULL, NULL, NULL, napi_default, NULL },
    { "notifier", NULL, session_notifier, NULL, NULL, NULL, napi_default, NULL },
    { "notify", NULL, notify_session, NULL, NULL, NULL, napi_default, NULL },
    { "preadNowait", NULL, pread_nowait, NULL, NULL, NULL, napi_default, NULL },
    { "blake3Pieces", NULL, blake3_pieces, NULL, NULL, NULL, napi_default, NULL },
    { "crc32", NULL, crc32_napi, NULL, NULL, NULL, napi_default, NULL },
    { "crc32Groups", NULL, crc32_groups_napi, NULL, NULL, NULL, napi_default, NULL },
    { "loopPriority", NULL, loop_priority, NULL, NULL, NULL, napi_default, NULL },
    { "mallocTrim", NULL, malloc_trim_napi, NULL, NULL, NULL, napi_default, NULL },
    { "mallocTrimStats", NULL, malloc_trim_stats, NULL, NULL, NULL, napi_default, NULL },
    { "fastConfigure", NULL, fast_configure, NULL, NULL, NULL, napi_default, NULL },
    { "fastSize", NULL, fast_size, NULL, NULL, NULL, napi_default, NULL },
    { "fastPublish", NULL, fast_publish, NULL, NULL, NULL, napi_default, NULL },
    { "fastClear", NULL, fast_clear, NULL, NULL, NULL, napi_default, NULL },
    { "fastDrop", NULL, fast_drop, NULL, NULL, NULL, napi_default, NULL },
    { "fastExtent", NULL, fast_extent_add, NULL, NULL, NULL, napi_default, NULL },
    { "fastExtentDrop", NULL, fast_extent_drop, NULL, NULL, NULL, napi_default, NULL },
    { "fastWrites", NULL, fast_writes, NULL, NULL, NULL, napi_default, NULL },
    { "fastFreeze", NULL, fast_freeze, NULL, NULL, NULL, napi_default, NULL },
    { "fastOdd", NULL, fast_odd, NULL, NULL, NULL, napi_default, NULL },
    { "fastMoved", NULL, fast_moved, NULL, NULL, NULL, napi_default, NULL },
    { "fastLease", NULL, fast_lease, NULL, NULL, NULL, napi_default, NULL },
    { "fastLeaseEnd", NULL, fast_lease_end, NULL, NULL, NULL, napi_default, NULL },
    { "fastGrow", NULL, fast_grow, NULL, NULL, NULL, napi_default, NULL },
    { "fastLeaseTake", NULL, fast_lease_take, NULL, NULL, NULL, napi_default, NULL },
    { "fastAllocs", NULL, fast_allocs, NULL, NULL, NULL, napi_default, NULL },
    { "fastAllocCount", NULL, fast_alloc_count, NULL, NULL, NULL, napi_default, NULL },
    { "fastExtentSeq", NULL, fast_extent_seq, NULL, NULL, NULL, napi_default, NULL },
    { "fastPack", NULL, fast_pack_add, NULL, NULL, NULL, napi_default, NULL },
    { "fastPackDrop", NULL, fast_pack_drop, NULL, NULL, NULL, napi_default, NULL },
    { "fastChunk", NULL, fast_chunk_add, NULL, NULL, NULL, napi_default, NULL },
    { "fastChunkDrop", NULL, fast_chunk_drop, NULL, NULL, NULL, napi_default, NULL },
    { "fastExtentLastWrite", NULL, fast_extent_last_write, NULL, NULL, NULL, napi_default, NULL },
    { "fastTakeDirty", NULL, fast_take_dirty, NULL, NULL, NULL, napi_default, NULL },
    { "fastWriteback", NULL, fast_writeback, NULL, NULL, NULL, napi_default, NULL },
    { "fastVolumeWrites", NULL, fast_volume_writes, NULL, NULL, NULL, napi_default, NULL },
    { "replyErr", NULL, reply_err, NULL, NULL, NULL, napi_default, NULL },
    { "replyEntry", NULL, reply_entry, NULL, NULL, NULL, napi_default, NULL },
    { "replyAttr", NULL, reply_attr, NULL, NULL, NULL, napi_default, NULL },
    { "replyOpen", NULL, reply_open, NULL, NULL, NULL, napi_default, NULL },
    { "replyCreate", NULL, reply_create, NULL, NULL, NULL, napi_default, NULL },
    { "replyBuf", NULL, reply_buf, NULL, NULL, NULL, napi_default, NULL },
    { "replyWrite", NULL, reply_write, NULL, NULL, NULL, napi_default, NULL },
    { "replyStatfs", NULL, reply_statfs, NULL, NULL, NULL, napi_default, NULL },
    { "replyLseek", NULL, reply_lseek, NULL, NULL, NULL, napi_default, NULL },
    { "replyXattr", NULL, reply_xattr, NULL, NULL, NULL, napi_default, NULL },
    { "replyDir", NULL, reply_dir, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

NAPI_MODULE(vdiskfs_fuse3, init_module)

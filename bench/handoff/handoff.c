/*
 * A benchmark addon, not part of vdiskfs: how a request record gets from a native thread to the
 * JavaScript thread and its reply back (issue #18, docs/TRANSPORT.md "A thread-safe function, not a shared
 * ring"). bench/handoff.ts drives it; `make bench-handoff` builds it.
 *
 * N producer threads (like libfuse's workers) each keep `depth` requests in flight (1: a synchronous
 * reader; 16: async direct I/O). A request is a 4 KiB READ: opcode, a 64-bit handle, offset, length; its
 * reply carries 4 KiB of data, copied once (as the reply's writev would), whose first 4 bytes echo the
 * offset (checked). A producer waits for a reply on a futex word of its own, woken only when it sleeps.
 *
 *   A (tsfn): what native/fuse3 does today. A calloc'd record per request goes through one
 *     napi_threadsafe_function; call_js makes napi values (op, an external handle, ino, fh, size, offset)
 *     and calls dispatch(op, handle, ino, fh, size, offset); JavaScript replies with
 *     aReply(handle, buffer, length), which copies the data, frees the record and wakes the producer.
 *   B (ring): records go into a ring of 64-byte cells in a SharedArrayBuffer (a bounded MPSC queue:
 *     each cell's sequence word says when it is written), then uv_async_send wakes the JavaScript thread
 *     (libuv coalesces: one wake-up for however many records are in). The drain function reads every
 *     record present as typed-array reads, writes each reply (data into a per-slot area of the same
 *     buffer, then the request's id into the slot's reply word, Atomics.store) and bumps the producer's
 *     futex word (Atomics.add); then one ringWake() call per drain wakes the producers that sleep
 *     (or, variant "ring + reply call", one ringWake(p) per reply). The drain is called with
 *     napi_make_callback: a callback scope per wake-up, as the thread-safe function opens one per request. Atomics.notify cannot do that wake:
 *     V8's waiters are its own (probeNotify() shows it), not futex waiters.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include <uv.h>
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_PRODUCERS 8
#define MAX_DEPTH 16
#define DATA_SIZE 4096
#define OP_READ 7

/* The shared buffer's layout (bench/handoff.ts has the same numbers). */
#define RING 256                      /* cells; more than MAX_PRODUCERS * MAX_DEPTH, so never full */
#define CELL_U32 16                   /* 64 bytes: seq, op, tag, len, id, fh lo/hi, offset lo/hi */
#define CELLS_OFF 64
#define DONE_OFF (CELLS_OFF + RING * CELL_U32 * 4)          /* a futex word per producer, 64 bytes apart */
#define REPLY_OFF (DONE_OFF + MAX_PRODUCERS * 64)            /* a reply word per slot */
#define DATA_OFF (REPLY_OFF + MAX_PRODUCERS * MAX_DEPTH * 4) /* 4 KiB of reply data per slot */
#define SHARED_SIZE (DATA_OFF + MAX_PRODUCERS * MAX_DEPTH * DATA_SIZE)

#define CHECK(call) do { if ((call) != napi_ok) { napi_throw_error(env, NULL, "handoff: " #call " failed"); return NULL; } } while (0)

typedef struct producer {
  int index;
  pthread_t thread;
  uint32_t *done;                 /* futex word: bumped by every reply to this producer */
  uint32_t done_local;            /* mechanism A's word (B's lives in the shared buffer) */
  int waiting;                    /* 1 while the producer may sleep on *done */
  uint32_t *reply;                /* per slot: the id of the request last answered */
  uint32_t reply_local[MAX_DEPTH];
  uint8_t *data;                  /* per slot: 4 KiB of reply data */
  uint8_t data_local[MAX_DEPTH * DATA_SIZE];
  uint32_t id[MAX_DEPTH];         /* per slot: the id of the request in flight, 0 when none */
  uint64_t t0[MAX_DEPTH];
  uint32_t *lat;                  /* round trips in ns */
  size_t nlat, cap;
  uint64_t mismatches;
} producer;

typedef struct request { /* mechanism A's record, calloc'd per request as native/fuse3 does */
  producer *p;
  int slot;
  int op;
  uint32_t id;
  uint64_t ino, fh, size;
  int64_t off;
  char pad[160];                  /* about the size of native/fuse3's record */
} request;

static struct {
  napi_env env;
  int mech;                       /* 0: tsfn, 1: ring */
  int threads, depth;
  int running;                    /* producers still running */
  int stop;
  producer prod[MAX_PRODUCERS];
  napi_threadsafe_function tsfn;  /* A */
  napi_threadsafe_function done_tsfn;
  uint8_t *shared;                /* B: the SharedArrayBuffer's memory */
  napi_ref shared_ref;
  uint32_t *enqueue;              /* B: producers' position (header word 0) */
  uv_async_t async;
  int async_ready;
  napi_ref drain_ref;
  napi_async_context drain_ctx;
} g;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void futex_wait(uint32_t *word, uint32_t seen) {
  syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}

static void futex_wake(uint32_t *word) {
  syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* A reply has landed for producer p (its reply word and data written): bump its word, wake it if it sleeps. */
static void wake_if_waiting(producer *p) {
  if (__atomic_load_n(&p->waiting, __ATOMIC_SEQ_CST)) futex_wake(p->done);
}

static void submit(producer *p, int slot) {
  static __thread uint32_t counter;
  uint32_t id = ++counter;
  if (id == 0) id = ++counter;
  p->id[slot] = id;
  uint64_t fh = 0x123400000000ull + (uint64_t)p->index;
  int64_t off = (int64_t)(((uint64_t)id * 2654435761u) % 262144u) * DATA_SIZE;
  p->t0[slot] = now_ns();
  if (g.mech == 0) {
    request *r = calloc(1, sizeof(request));
    r->p = p; r->slot = slot; r->op = OP_READ; r->id = id;
    r->ino = (uint64_t)p->index + 2; r->fh = fh; r->size = DATA_SIZE; r->off = off;
    if (napi_call_threadsafe_function(g.tsfn, r, napi_tsfn_blocking) != napi_ok) abort();
  } else {
    uint32_t pos = __atomic_fetch_add(g.enqueue, 1, __ATOMIC_RELAXED);
    uint32_t *cell = (uint32_t *)(g.shared + CELLS_OFF) + (pos % RING) * CELL_U32;
    while (__atomic_load_n(&cell[0], __ATOMIC_ACQUIRE) != pos) sched_yield(); /* full: never, in flight < RING */
    cell[1] = OP_READ;
    cell[2] = (uint32_t)(p->index << 8 | slot);
    cell[3] = DATA_SIZE;
    cell[4] = id;
    cell[5] = (uint32_t)fh; cell[6] = (uint32_t)(fh >> 32);
    cell[7] = (uint32_t)off; cell[8] = (uint32_t)((uint64_t)off >> 32);
    __atomic_store_n(&cell[0], pos + 1, __ATOMIC_RELEASE);
    /* uv_async_send's first look at its pending flag is a relaxed load: order it after the publish. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uv_async_send(&g.async);
  }
}

static void record(producer *p, uint64_t ns) {
  if (p->nlat == p->cap) {
    p->cap = p->cap ? p->cap * 2 : 65536;
    p->lat = realloc(p->lat, p->cap * sizeof(uint32_t));
  }
  p->lat[p->nlat++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static void *producer_main(void *arg) {
  producer *p = arg;
  int outstanding = 0;
  for (int s = 0; s < g.depth; s++) { submit(p, s); outstanding++; }
  while (outstanding > 0) {
    uint32_t seen = __atomic_load_n(p->done, __ATOMIC_SEQ_CST);
    int progressed = 0;
    for (int s = 0; s < g.depth; s++) {
      if (p->id[s] == 0 || __atomic_load_n(&p->reply[s], __ATOMIC_ACQUIRE) != p->id[s]) continue;
      uint64_t t = now_ns();
      record(p, t - p->t0[s]);
      uint32_t echoed;
      memcpy(&echoed, p->data + (size_t)s * DATA_SIZE, 4);
      int64_t off = (int64_t)(((uint64_t)p->id[s] * 2654435761u) % 262144u) * DATA_SIZE;
      if (echoed != (uint32_t)off) p->mismatches++;
      p->id[s] = 0;
      outstanding--;
      progressed = 1;
      if (!__atomic_load_n(&g.stop, __ATOMIC_RELAXED)) { submit(p, s); outstanding++; }
    }
    if (progressed || outstanding == 0) continue;
    __atomic_store_n(&p->waiting, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(p->done, __ATOMIC_SEQ_CST) == seen) futex_wait(p->done, seen);
    __atomic_store_n(&p->waiting, 0, __ATOMIC_RELAXED);
  }
  if (__atomic_sub_fetch(&g.running, 1, __ATOMIC_ACQ_REL) == 0) {
    napi_call_threadsafe_function(g.done_tsfn, NULL, napi_tsfn_blocking);
    napi_release_threadsafe_function(g.done_tsfn, napi_tsfn_release);
  }
  return NULL;
}

/* A: on the JavaScript thread for each request, as native/fuse3's call_js: dispatch(op, handle, ino, fh, size, offset). */
static napi_value num(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

static void call_js(napi_env env, napi_value js_callback, void *context, void *data) {
  request *r = data;
  if (env == NULL) { free(r); return; }
  napi_value args[6], handle, global, result;
  args[0] = num(env, r->op);
  napi_create_external(env, r, NULL, NULL, &handle);
  args[1] = handle;
  args[2] = num(env, (double)r->ino);
  args[3] = num(env, (double)r->fh);
  args[4] = num(env, (double)r->size);
  args[5] = num(env, (double)r->off);
  napi_get_global(env, &global);
  if (napi_call_function(env, global, js_callback, 6, args, &result) == napi_pending_exception) {
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    napi_fatal_exception(env, exception);
  }
}

/* aReply(handle, buffer, length), as native/fuse3's replyBuf. */
static napi_value a_reply(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value args[3];
  CHECK(napi_get_cb_info(env, info, &argc, args, NULL, NULL));
  void *pointer = NULL;
  if (argc < 3 || napi_get_value_external(env, args[0], &pointer) != napi_ok || pointer == NULL) {
    napi_throw_type_error(env, NULL, "handoff: not a request handle");
    return NULL;
  }
  request *r = pointer;
  void *data = NULL;
  size_t length = 0;
  CHECK(napi_get_buffer_info(env, args[1], &data, &length));
  double wanted = 0;
  napi_get_value_double(env, args[2], &wanted);
  if ((size_t)wanted < length) length = (size_t)wanted;
  if (length > DATA_SIZE) length = DATA_SIZE;
  producer *p = r->p;
  memcpy(p->data + (size_t)r->slot * DATA_SIZE, data, length);
  __atomic_store_n(&p->reply[r->slot], r->id, __ATOMIC_RELEASE);
  __atomic_add_fetch(p->done, 1, __ATOMIC_SEQ_CST);
  wake_if_waiting(p);
  free(r);
  return NULL;
}

/* B: the ring's wake-up, on the JavaScript thread: calls drain(). */
static void on_async(uv_async_t *handle) {
  napi_env env = g.env;
  napi_handle_scope scope;
  if (g.drain_ref == NULL || napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value drain, global, result;
  napi_get_reference_value(env, g.drain_ref, &drain);
  napi_get_global(env, &global);
  if (napi_make_callback(env, g.drain_ctx, global, drain, 0, NULL, &result) == napi_pending_exception) {
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    napi_fatal_exception(env, exception);
  }
  napi_close_handle_scope(env, scope);
}

/* ringWake(p): wakes producer p if it sleeps; ringWake(-1): every producer that sleeps. */
static napi_value ring_wake(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg;
  CHECK(napi_get_cb_info(env, info, &argc, &arg, NULL, NULL));
  int32_t which = -1;
  if (argc > 0) napi_get_value_int32(env, arg, &which);
  if (which >= 0 && which < g.threads) wake_if_waiting(&g.prod[which]);
  else for (int i = 0; i < g.threads; i++) wake_if_waiting(&g.prod[i]);
  return NULL;
}

static void call_done(napi_env env, napi_value js_callback, void *context, void *data) {
  if (env == NULL) return;
  napi_value global, result;
  napi_get_global(env, &global);
  napi_call_function(env, global, js_callback, 0, NULL, &result);
}

/* ringInit(sharedArrayBufferView, drain): the ring's memory (a Uint8Array over a SharedArrayBuffer of
 * sharedSize bytes) and the drain function. */
static napi_value ring_init(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value args[2];
  CHECK(napi_get_cb_info(env, info, &argc, args, NULL, NULL));
  napi_typedarray_type type;
  size_t length = 0;
  void *data = NULL;
  CHECK(napi_get_typedarray_info(env, args[0], &type, &length, &data, NULL, NULL));
  if (length < SHARED_SIZE || data == NULL) { napi_throw_range_error(env, NULL, "handoff: shared buffer too small"); return NULL; }
  g.shared = data;
  g.enqueue = (uint32_t *)g.shared;
  CHECK(napi_create_reference(env, args[0], 1, &g.shared_ref));
  CHECK(napi_create_reference(env, args[1], 1, &g.drain_ref));
  napi_value name;
  CHECK(napi_create_string_utf8(env, "handoff-ring", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, NULL, name, &g.drain_ctx));
  if (!g.async_ready) {
    uv_loop_t *loop;
    CHECK(napi_get_uv_event_loop(env, &loop));
    uv_async_init(loop, &g.async, on_async);
    uv_unref((uv_handle_t *)&g.async);
    g.async_ready = 1;
  }
  return NULL;
}

/* start(mech, threads, depth, dispatch, onDone): mech 0 tsfn (dispatch is called per request), 1 ring. */
static napi_value start(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value args[5];
  CHECK(napi_get_cb_info(env, info, &argc, args, NULL, NULL));
  int32_t mech, threads, depth;
  CHECK(napi_get_value_int32(env, args[0], &mech));
  CHECK(napi_get_value_int32(env, args[1], &threads));
  CHECK(napi_get_value_int32(env, args[2], &depth));
  if (threads < 1 || threads > MAX_PRODUCERS || depth < 1 || depth > MAX_DEPTH || (mech == 1 && g.shared == NULL)) {
    napi_throw_range_error(env, NULL, "handoff: bad arguments (or ringInit not called)");
    return NULL;
  }
  g.env = env;
  g.mech = mech; g.threads = threads; g.depth = depth;
  g.stop = 0;
  g.running = threads;
  napi_value name;
  CHECK(napi_create_string_utf8(env, "handoff", NAPI_AUTO_LENGTH, &name));
  if (mech == 0) CHECK(napi_create_threadsafe_function(env, args[3], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &g.tsfn));
  CHECK(napi_create_threadsafe_function(env, args[4], NULL, name, 0, 1, NULL, NULL, NULL, call_done, &g.done_tsfn));
  if (mech == 1) {
    memset(g.shared, 0, SHARED_SIZE);
    for (uint32_t i = 0; i < RING; i++) ((uint32_t *)(g.shared + CELLS_OFF))[i * CELL_U32] = i;
    uv_ref((uv_handle_t *)&g.async);
  }
  for (int i = 0; i < threads; i++) {
    producer *p = &g.prod[i];
    free(p->lat);
    memset(p, 0, sizeof(*p));
    p->index = i;
    if (mech == 0) {
      p->done = &p->done_local; p->reply = p->reply_local; p->data = p->data_local;
    } else {
      p->done = (uint32_t *)(g.shared + DONE_OFF + i * 64);
      p->reply = (uint32_t *)(g.shared + REPLY_OFF) + i * MAX_DEPTH;
      p->data = g.shared + DATA_OFF + (size_t)i * MAX_DEPTH * DATA_SIZE;
    }
  }
  for (int i = 0; i < threads; i++) pthread_create(&g.prod[i].thread, NULL, producer_main, &g.prod[i]);
  return NULL;
}

static napi_value stop(napi_env env, napi_callback_info info) {
  __atomic_store_n(&g.stop, 1, __ATOMIC_RELAXED);
  return NULL;
}

/* finish(): after onDone; joins the producers and returns { requests, mismatches, latencies: Uint32Array (ns) }. */
static napi_value finish(napi_env env, napi_callback_info info) {
  size_t total = 0;
  uint64_t mismatches = 0;
  for (int i = 0; i < g.threads; i++) {
    pthread_join(g.prod[i].thread, NULL);
    total += g.prod[i].nlat;
    mismatches += g.prod[i].mismatches;
  }
  if (g.mech == 0) napi_release_threadsafe_function(g.tsfn, napi_tsfn_release);
  else uv_unref((uv_handle_t *)&g.async);
  napi_value buffer, array, result, value;
  void *data;
  CHECK(napi_create_arraybuffer(env, total * sizeof(uint32_t), &data, &buffer));
  size_t at = 0;
  for (int i = 0; i < g.threads; i++) {
    memcpy((uint32_t *)data + at, g.prod[i].lat, g.prod[i].nlat * sizeof(uint32_t));
    at += g.prod[i].nlat;
    free(g.prod[i].lat);
    g.prod[i].lat = NULL;
  }
  CHECK(napi_create_typedarray(env, napi_uint32_array, total, buffer, 0, &array));
  CHECK(napi_create_object(env, &result));
  CHECK(napi_set_named_property(env, result, "latencies", array));
  CHECK(napi_create_double(env, (double)total, &value));
  CHECK(napi_set_named_property(env, result, "requests", value));
  CHECK(napi_create_double(env, (double)mismatches, &value));
  CHECK(napi_set_named_property(env, result, "mismatches", value));
  return result;
}

/* threadCpuUs(): this thread's CPU time in µs, [user, system]. */
static napi_value thread_cpu_us(napi_env env, napi_callback_info info) {
  struct rusage ru;
  getrusage(RUSAGE_THREAD, &ru);
  napi_value array, user, sys;
  CHECK(napi_create_array_with_length(env, 2, &array));
  CHECK(napi_create_double(env, (double)ru.ru_utime.tv_sec * 1e6 + (double)ru.ru_utime.tv_usec, &user));
  CHECK(napi_create_double(env, (double)ru.ru_stime.tv_sec * 1e6 + (double)ru.ru_stime.tv_usec, &sys));
  CHECK(napi_set_element(env, array, 0, user));
  CHECK(napi_set_element(env, array, 1, sys));
  return array;
}

/* probeNotify(int32ArrayOverSharedBuffer): a thread waits (FUTEX_WAIT, 500 ms) on element 0; probeResult()
 * then says how it ended: 1 woken, 2 timed out, 3 the word was not 0, 0 still waiting. Shows whether Atomics.notify reaches it. */
static uint32_t *probe_word;
static int probe_result;
static pthread_t probe_thread;

static void *probe_main(void *arg) {
  struct timespec timeout = { 0, 500000000 };
  long rc = syscall(SYS_futex, probe_word, FUTEX_WAIT_PRIVATE, 0, &timeout, NULL, 0);
  __atomic_store_n(&probe_result, rc == 0 ? 1 : errno == ETIMEDOUT ? 2 : 3, __ATOMIC_SEQ_CST);
  return NULL;
}

static napi_value probe_notify(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg;
  CHECK(napi_get_cb_info(env, info, &argc, &arg, NULL, NULL));
  napi_typedarray_type type;
  size_t length = 0;
  void *data = NULL;
  CHECK(napi_get_typedarray_info(env, arg, &type, &length, &data, NULL, NULL));
  probe_word = data;
  probe_result = 0;
  pthread_create(&probe_thread, NULL, probe_main, NULL);
  return NULL;
}

static napi_value probe_result_fn(napi_env env, napi_callback_info info) {
  int r = __atomic_load_n(&probe_result, __ATOMIC_SEQ_CST);
  if (r != 0) pthread_join(probe_thread, NULL);
  napi_value v;
  CHECK(napi_create_int32(env, r, &v));
  return v;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "start", NULL, start, NULL, NULL, NULL, napi_default, NULL },
    { "stop", NULL, stop, NULL, NULL, NULL, napi_default, NULL },
    { "finish", NULL, finish, NULL, NULL, NULL, napi_default, NULL },
    { "aReply", NULL, a_reply, NULL, NULL, NULL, napi_default, NULL },
    { "ringInit", NULL, ring_init, NULL, NULL, NULL, napi_default, NULL },
    { "ringWake", NULL, ring_wake, NULL, NULL, NULL, napi_default, NULL },
    { "threadCpuUs", NULL, thread_cpu_us, NULL, NULL, NULL, napi_default, NULL },
    { "probeNotify", NULL, probe_notify, NULL, NULL, NULL, napi_default, NULL },
    { "probeResult", NULL, probe_result_fn, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  napi_value size;
  napi_create_uint32(env, SHARED_SIZE, &size);
  napi_set_named_property(env, exports, "sharedSize", size);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)

/*
 * Shows that a buffered read is not atomic against a buffered write of the same bytes on Linux: one
 * thread rewrites 16 KiB of FILE (from byte 1000) alternately with 'A's and 'B's, the other reads the
 * 512 bytes at 4096 again and again and counts the reads that hold both. Used for docs/TRANSPORT.md
 * ("Caching"): it finds such torn sectors on ext4, on tmpfs and on a vdiskfs mount alike.
 *
 *   cc -O2 -pthread -o /tmp/torn-read scripts/torn-read.c && /tmp/torn-read FILE [SECONDS]
 *
 * FILE is overwritten (its first 64 KiB).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int fd;
static volatile int stop;
static const size_t span = 16384;
static const off_t from = 1000;

static void *writer(void *arg) {
  (void)arg;
  char *buf = malloc(span);
  for (long i = 0; !stop; i++) {
    memset(buf, (i & 1) ? 'A' : 'B', span);
    if (pwrite(fd, buf, span, from) != (ssize_t)span) { perror("pwrite"); exit(1); }
  }
  free(buf);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: %s FILE [SECONDS]\n", argv[0]); return 2; }
  fd = open(argv[1], O_RDWR | O_CREAT, 0600);
  if (fd < 0) { perror("open"); return 1; }
  int seconds = argc > 2 ? atoi(argv[2]) : 5;
  char *zeros = calloc(1, 65536);
  if (pwrite(fd, zeros, 65536, 0) != 65536) { perror("pwrite"); return 1; }
  pthread_t thread;
  pthread_create(&thread, NULL, writer, NULL);
  char sector[512];
  long reads = 0, torn = 0;
  time_t end = time(NULL) + seconds;
  while (time(NULL) < end) {
    if (pread(fd, sector, sizeof(sector), 4096) != (ssize_t)sizeof(sector)) { perror("pread"); return 1; }
    reads++;
    int a = 0, b = 0;
    for (size_t i = 0; i < sizeof(sector); i++) { a += sector[i] == 'A'; b += sector[i] == 'B'; }
    if (a > 0 && b > 0) {
      if (++torn <= 3) printf("torn: %d bytes A, %d bytes B\n", a, b);
    }
  }
  stop = 1;
  pthread_join(thread, NULL);
  printf("%s: %ld reads, %ld torn\n", argv[1], reads, torn);
  return 0;
}

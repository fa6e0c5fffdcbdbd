# vdiskfs: set-up, build, run and test. `make run` and `make test` do all set-up on a fresh Debian 12
# machine as root: Debian packages, npm ci, the build.
POOL ?= ./pool
MNT ?= ./mnt
# libfuse3-dev (with libfuse3-3), pkg-config and gcc: our own FUSE 3 addon and holder (native/fuse3, `make
# native`). fuse3: fusermount3, which non-root mounts go through (it replaces Debian's libfuse 2 `fuse`
# package, which vdiskfs no longer uses). gcc, libc6-dev and xfslibs-dev (<xfs/xfs.h>, which fsstress.c
# needs): xfstests' fsx and fsstress, built from third_party/xfstests/ by `make xfstests-tools` (without
# libaio, liburing or libbtrfsutil).
DEB_PACKAGES := libfuse3-3 libfuse3-dev fuse3 pkg-config zlib1g-dev libzstd-dev qemu-utils fio e2fsprogs zstd attr util-linux rsync gcc libc6-dev xfslibs-dev
BENCH_PACKAGES := qemu-system-common
# Issue #12's remote tests run against a real single-node Ceph RGW (scripts/ceph-rgw.sh).
S3_PACKAGES := ceph-mon ceph-osd radosgw ceph-common curl
export DEBIAN_FRONTEND := noninteractive

.PHONY: all install uninstall deps debs bench-debs s3-debs node-modules native native-sanitize build lint xfstests-tools run umount test test-unit test-integration crash-test fuzz-long concurrent-long fsx-long bench-basic bench bench-handoff bench-scale bench-scale-10k bench-quick soak soak-quick clean

all: build

debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing </dev/null; \
	fi

# JOBS=max: node-gyp compiles the native modules (SQLite, zstd) on every core.
node_modules/.installed: package.json package-lock.json
	JOBS=max npm ci --no-audit --no-fund </dev/null
	node scripts/check-native.js
	touch $@

node-modules: node_modules/.installed

# The FUSE 3 transport's N-API addon (docs/TRANSPORT.md): plain C against libfuse3 and Node's own
# headers (include/node beside the running node binary: N-API only, so no node-gyp and no download).
NODE_INCLUDE := $(shell node -p "require('path').resolve(process.execPath, '../../include/node')" 2>/dev/null)
# Sealed chunks are read in its threads too: libzstd, and BLAKE3's C code (third_party/blake3, with its
# x86-64 SIMD assembly there, the portable code alone elsewhere).
FUSE3_ADDON := native/fuse3/build/vdiskfs_fuse3.node
BLAKE3_C := third_party/blake3/blake3.c third_party/blake3/blake3_dispatch.c third_party/blake3/blake3_portable.c
ifeq ($(shell uname -m),x86_64)
BLAKE3_SRC := $(BLAKE3_C) $(wildcard third_party/blake3/*_x86-64_unix.S)
BLAKE3_FLAGS :=
else
BLAKE3_SRC := $(BLAKE3_C)
BLAKE3_FLAGS := -DBLAKE3_NO_SSE2 -DBLAKE3_NO_SSE41 -DBLAKE3_NO_AVX2 -DBLAKE3_NO_AVX512
endif
$(FUSE3_ADDON): native/fuse3/vdiskfs_fuse3.c native/fuse3/pieces.c native/fuse3/pieces.h native/fuse3/crc32_fast.c native/fuse3/crc32_fast.h native/fuse3/words.c native/fuse3/words.h $(BLAKE3_SRC)
	@pkg-config --exists fuse3 zlib libzstd 2>/dev/null && command -v fusermount3 >/dev/null || $(MAKE) --no-print-directory debs
	@test -f "$(NODE_INCLUDE)/node_api.h" || { echo "Node's headers are missing ($(NODE_INCLUDE)/node_api.h): install Node.js 20 with its headers (nodesource's nodejs, or Debian's libnode-dev)"; exit 1; }
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -Wno-unused-parameter -fPIC -shared -pthread -I"$(NODE_INCLUDE)" -Ithird_party/blake3 $(BLAKE3_FLAGS) $$(pkg-config --cflags fuse3 libzstd) $< native/fuse3/pieces.c native/fuse3/crc32_fast.c native/fuse3/words.c $(BLAKE3_SRC) -o $@.tmp $$(pkg-config --libs fuse3 libzstd) -lz
	mv $@.tmp $@
	node scripts/check-native.js --fuse3

# The holder keeps a FUSE 3 mount's /dev/fuse descriptor across a daemon's death (docs/TRANSPORT.md).
FUSE3_HOLDER := native/fuse3/build/vdiskfs-holder
$(FUSE3_HOLDER): native/fuse3/vdiskfs_holder.c
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra $< -o $@.tmp
	mv $@.tmp $@

# The published words' harness (native/fuse3/test/words-test.c, run by test/unit/native-words.test.ts): words.c
# against a model and under threads; `make native-sanitize` runs it under ThreadSanitizer and AddressSanitizer.
WORDS_TEST := native/fuse3/build/words-test
WORDS_TEST_SRC := native/fuse3/test/words-test.c native/fuse3/words.c native/fuse3/words.h
WORDS_TEST_CFLAGS := -g -Wall -Wextra -pthread -DWORDS_MALLOC=words_test_malloc -DWORDS_CALLOC=words_test_calloc -DWORDS_RACE=words_test_race
$(WORDS_TEST): $(WORDS_TEST_SRC)
	@mkdir -p $(@D)
	$(CC) -O2 $(WORDS_TEST_CFLAGS) native/fuse3/test/words-test.c native/fuse3/words.c -o $@.tmp
	mv $@.tmp $@

native: $(FUSE3_ADDON) $(FUSE3_HOLDER) $(WORDS_TEST)

native-sanitize: $(WORDS_TEST_SRC)
	@mkdir -p native/fuse3/build
	$(CC) -O1 -fsanitize=thread $(WORDS_TEST_CFLAGS) native/fuse3/test/words-test.c native/fuse3/words.c -o native/fuse3/build/words-test-tsan
	$(CC) -O1 -fsanitize=address,undefined $(WORDS_TEST_CFLAGS) native/fuse3/test/words-test.c native/fuse3/words.c -o native/fuse3/build/words-test-asan
	for seed in 1 2 3; do native/fuse3/build/words-test-tsan --seed $$seed --ops 5000 --rounds 5000 || exit 1; done
	for seed in 1 2 3; do native/fuse3/build/words-test-asan --seed $$seed --ops 20000 || exit 1; native/fuse3/build/words-test-asan --seed $$seed --ops 20000 --fail-malloc || exit 1; done

# Issue #18's hand-off benchmark (bench/handoff.ts, docs/TRANSPORT.md "A thread-safe function, not a shared
# ring"): a standalone addon, not the transport, built like it (Node's headers, no node-gyp; no libfuse).
HANDOFF_ADDON := bench/handoff/build/handoff.node
$(HANDOFF_ADDON): bench/handoff/handoff.c
	@test -f "$(NODE_INCLUDE)/node_api.h" || { echo "Node's headers are missing ($(NODE_INCLUDE)/node_api.h)"; exit 1; }
	@mkdir -p $(@D)
	$(CC) -O2 -g -Wall -Wextra -Wno-unused-parameter -fPIC -shared -pthread -I"$(NODE_INCLUDE)" $< -o $@.tmp
	mv $@.tmp $@

deps: debs node-modules

build: node-modules native
	npx tsc -p tsconfig.json

# Issue #17's interleaving rules (eslint-rules/eslint.config.mjs; README, "Lint"): a closure in a loop reading a variable
# the loop changes, check-then-act across an await, promises nobody awaits or catches. Type-aware, ~20 s.
# Then scripts/layers.js --check: no folders of src/ (and workers/) import each other in a circle (docs/ARCHITECTURE.md);
# and --check-long: no function of the engine over 80 lines without a "long: REASON" comment beside it.
lint: node-modules
	node eslint-rules/loop-capture.test.mjs
	node eslint-rules/check-then-act.test.mjs
	npx eslint --config eslint-rules/eslint.config.mjs --max-warnings 0 .
	node scripts/layers.js --check >/dev/null || node scripts/layers.js --check
	node scripts/layers.js --check-long >/dev/null || node scripts/layers.js --check-long

# xfstests' fsx and fsstress (third_party/xfstests/README.md): separate test programs, not linked into vdiskfs,
# that test/integration/fsx.test.ts and fsstress.test.ts run against a mount.
XFSTESTS := third_party/xfstests
XFSTESTS_CFLAGS := -std=gnu11 -funsigned-char -fno-strict-aliasing -Wall -O2 -g -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -DXFS -DFALLOCATE -I$(XFSTESTS)/include -I$(XFSTESTS)/src
XFSTESTS_HEADERS := $(XFSTESTS)/include/config.h $(XFSTESTS)/src/global.h $(XFSTESTS)/src/statx.h

build/xfstests/%: $(XFSTESTS)/ltp/%.c $(XFSTESTS_HEADERS)
	@test -f /usr/include/xfs/xfs.h && command -v gcc >/dev/null || $(MAKE) --no-print-directory debs
	@mkdir -p $(@D)
	gcc $(XFSTESTS_CFLAGS) -o $@ $< -lm

xfstests-tools: build/xfstests/fsx build/xfstests/fsstress

run: deps build
	@mkdir -p "$(MNT)"
	bin/vdiskfs mount "$(POOL)" "$(MNT)"
	@echo
	@echo "Disks go in $(MNT)/disks, for example:"
	@echo "  truncate -s 20G $(MNT)/disks/web.img && mkfs.ext4 $(MNT)/disks/web.img"
	@echo "  bin/vdiskfs backup $(MNT)/disks/web.img web-monday; bin/vdiskfs clone $(MNT)/backups/web-monday.img test1"
	@echo "Unmount with: bin/vdiskfs umount $(MNT)   (or: make umount)"

umount:
	bin/vdiskfs umount "$(MNT)"

# The built tree goes to $(PREFIX)/lib/vdiskfs; the CLI is linked on PATH as $(PREFIX)/bin/vdiskfs and the
# mount(8) helper as $(SBINDIR)/mount.fuse.vdiskfs, where mount(8) looks for it, so `mount -t fuse.vdiskfs`
# and /etc/fstab lines work (README, "Mounting at boot"; systemd units in examples/systemd/).
PREFIX ?= /usr/local
SBINDIR ?= /sbin
install: deps build
	install -d "$(DESTDIR)$(PREFIX)/lib/vdiskfs/dist" "$(DESTDIR)$(PREFIX)/bin" "$(DESTDIR)$(SBINDIR)"
	rm -rf "$(DESTDIR)$(PREFIX)/lib/vdiskfs/dist/src" "$(DESTDIR)$(PREFIX)/lib/vdiskfs/dist/workers" "$(DESTDIR)$(PREFIX)/lib/vdiskfs/bin" "$(DESTDIR)$(PREFIX)/lib/vdiskfs/node_modules" "$(DESTDIR)$(PREFIX)/lib/vdiskfs/native"
	cp -a dist/src dist/workers "$(DESTDIR)$(PREFIX)/lib/vdiskfs/dist/"
	install -d "$(DESTDIR)$(PREFIX)/lib/vdiskfs/native/fuse3/build"
	cp -a $(FUSE3_ADDON) $(FUSE3_HOLDER) "$(DESTDIR)$(PREFIX)/lib/vdiskfs/native/fuse3/build/"
	cp -a bin node_modules package.json package-lock.json "$(DESTDIR)$(PREFIX)/lib/vdiskfs/"
# Only what runs: the devDependencies (typescript, eslint, ava ...: half of node_modules) go, offline.
	cd "$(DESTDIR)$(PREFIX)/lib/vdiskfs" && npm prune --omit=dev --offline --no-audit --no-fund </dev/null
	ln -sfn "$(PREFIX)/lib/vdiskfs/bin/vdiskfs" "$(DESTDIR)$(PREFIX)/bin/vdiskfs"
	ln -sfn "$(PREFIX)/lib/vdiskfs/bin/mount.fuse.vdiskfs" "$(DESTDIR)$(SBINDIR)/mount.fuse.vdiskfs"
	@echo "installed: $(PREFIX)/bin/vdiskfs, $(SBINDIR)/mount.fuse.vdiskfs (mount.fuse.vdiskfs --help)"

# What install made, and nothing else (pools, mounts and /etc/fstab lines are left alone).
uninstall:
	rm -f "$(DESTDIR)$(PREFIX)/bin/vdiskfs" "$(DESTDIR)$(SBINDIR)/mount.fuse.vdiskfs"
	rm -rf "$(DESTDIR)$(PREFIX)/lib/vdiskfs"
	@echo "removed $(PREFIX)/lib/vdiskfs, $(PREFIX)/bin/vdiskfs and $(SBINDIR)/mount.fuse.vdiskfs"

# make lint runs first: a violation fails make test before anything is built or run.
# The packages first (one apt at a time), then lint, the build and the xfstests tools side by side (each
# mostly one core), then the tests.
test: deps s3-debs
	$(MAKE) --no-print-directory -j2 lint build xfstests-tools
	node scripts/run-tests.js

test-unit: build
	npx ava 'dist/test/unit/**/*.test.js'

test-integration: deps s3-debs build xfstests-tools
	npx ava 'dist/test/integration/**/*.test.js'

# The long variants of the crash harness and the model test (make test runs 20 kill points, 40 sequences).
crash-test: deps build
	VDISKFS_CRASH_POINTS=200 npx ava --timeout=40m --verbose 'dist/test/integration/crash.test.js'
	VDISKFS_POWERCUT_SEEDS=20 VDISKFS_POWERCUT_OPS=40 npx ava --timeout=40m --verbose 'dist/test/unit/power-cut.test.js'

fuzz-long: deps build
	VDISKFS_FUZZ_RUNS=2000 npx ava --timeout=40m --verbose 'dist/test/unit/engine-model.test.js'
	VDISKFS_FUZZ_RUNS=1000 npx ava --timeout=40m --verbose 'dist/test/unit/fast-reads-model.test.js'
	VDISKFS_GC_COUNTS_RUNS=200 npx ava --timeout=40m --verbose 'dist/test/unit/gc-counts.test.js'

# Issue #17: the concurrent model (batches of operations issued at once, per-sector candidates), 1,000
# runs of each property (make test runs 40); VDISKFS_CONCURRENT_SEED=N replays a seed.
concurrent-long: deps build
	VDISKFS_CONCURRENT_RUNS=1000 npx ava --timeout=60m --verbose 'dist/test/unit/concurrent-model.test.js'

# fsx against the mount (fsx.test.ts) with many more operations and more seeds than make test's short runs:
# on each configuration its fixed seeds and 2 random ones, 30,000 operations each (about 50 minutes on 2 cores).
fsx-long: deps build xfstests-tools
	VDISKFS_FSX_OPS=30000 VDISKFS_FSX_RANDOM_SEEDS=2 npx ava --timeout=120m --verbose 'dist/test/integration/fsx.test.js'

bench-debs:
	@missing=""; for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q --no-install-recommends $$missing </dev/null; fi

s3-debs:
	@missing=""; for p in $(S3_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -q && apt-get install -y -q --no-install-recommends $$missing </dev/null; fi

bench-basic: deps build
	node dist/bench/basic.js

# The full benchmark (about 22 minutes on 2 cores) and a subset for development (under 5 minutes); both
# include issue #10's scenario C (a clone of a sealed backup) with its baselines.
# Then issue #12's transfers: export/import (bench/transfer.ts) and push/pull against a real Ceph RGW
# (bench/remote.ts, which starts its own); their tables land in bench/results/{transfer,remote}-latest.md.
bench: deps bench-debs s3-debs build $(HANDOFF_ADDON)
	node dist/bench/run.js
	node dist/bench/transfer.js > bench/results/transfer-latest.md; status=$$?; cat bench/results/transfer-latest.md; exit $$status
	node dist/bench/remote.js > bench/results/remote-latest.md; status=$$?; cat bench/results/remote-latest.md; exit $$status
	node dist/bench/scale.js
	node dist/bench/handoff.js

# Issue #18: a thread-safe function against a shared ring for the native-to-JavaScript hand-off (about
# 2 minutes); bench/results/handoff-latest.{json,md}.
bench-handoff: build $(HANDOFF_ADDON)
	node dist/bench/handoff.js

# Issue #21's scale: 10,000 backups of a 1 TiB sparse disk and a chain of 1,000 clones (bench/scale.ts;
# VDISKFS_BENCH_SCALE_BACKUPS and VDISKFS_BENCH_SCALE_CHAIN make it smaller); bench/results/scale-latest.{json,md}.
bench-scale: deps build
	node dist/bench/scale.js

# Issue #21's 10,000 backups of the 1 TiB disk alone (no chain; about an hour on 2 shared cores; not
# part of make test or make bench): bench/results/scale-10000.{json,md}, the figures in
# docs/PERFORMANCE.md's scale table.
bench-scale-10k: deps build
	VDISKFS_BENCH_SCALE_BACKUPS=10000 VDISKFS_BENCH_SCALE_CHAIN=0 VDISKFS_BENCH_REPS=1 VDISKFS_BENCH_SCALE_NAME=scale-10000 node dist/bench/scale.js

bench-quick: deps bench-debs build
	node dist/bench/run.js --quick

# Issue #10's soak: one daemon, a mixed workload on several disks (writes, sealed reads, backups, clones, rm,
# sync, gc); per-minute throughput, RSS, fds, FUSE thread records; bench/results/soak-latest.{json,md}.
soak: deps build
	node dist/bench/soak.js --minutes 60

soak-quick: deps build
	node dist/bench/soak.js --minutes 10

clean:
	rm -rf dist build node_modules/.installed native/fuse3/build bench/handoff/build

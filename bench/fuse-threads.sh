#!/usr/bin/env bash
# Measures the fuse-native thread-record leak (issue #10): rounds of 16 parallel dd readers of a sealed
# image (page cache dropped before each round); prints each round's MB/s, the daemon's thread records
# (each one a libuv async handle the event loop walks on every wakeup) and its RSS.
#   bench/fuse-threads.sh [ROUNDS] [IMAGE_MIB]                      the patched build (build/Release)
#   FUSE_NATIVE_PREBUILD=DIR bench/fuse-threads.sh ...              the fuse-native binary under DIR
# (node-gyp-build loads DIR/build/Release, else DIR/prebuilds: a copy of the unpatched package with only
# its prebuilds measures the leak). Needs root (drop_caches) and a built tree (make build).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-40}
image_mib=${2:-1024}
readers=16
work=$(mktemp -d /tmp/vdiskfs-threads-XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
cleanup () { bin/vdiskfs umount "$mnt" >/dev/null 2>&1 || fusermount -uz "$mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
bin/vdiskfs mount "$work/pool" "$mnt" >/dev/null
image=$mnt/disks/read.img
# Compressible, like a real disk: a tar of /usr, cut or padded to IMAGE_MIB.
tar -cf - /usr 2>/dev/null | head -c $((image_mib << 20)) > "$work/source.raw" || true
truncate -s $((image_mib << 20)) "$work/source.raw"
cp "$work/source.raw" "$image"
rm "$work/source.raw"
bin/vdiskfs sync "$mnt" >/dev/null
status () { node -e "require('./dist/src/control/client').call(process.argv[1], 'status').then(s => console.log(s.fuseThreadRecords, Math.round(s.rssBytes / 1048576)))" "$mnt"; }
per_reader=$((image_mib / readers))
echo "round MB/s records rss_MiB"
for round in $(seq 1 "$rounds"); do
  echo 3 > /proc/sys/vm/drop_caches
  start=$(date +%s%N)
  for i in $(seq 0 $((readers - 1))); do
    dd if="$image" of=/dev/null bs=1M skip=$((i * per_reader)) count="$per_reader" status=none &
  done
  wait
  end=$(date +%s%N)
  echo "$round $(( (image_mib << 20) * 1000 / (end - start) )) $(status)"
done

#!/usr/bin/env bash
# Boot throwaway VMs from clones of one golden image: each VM writes only to its own clone.
# Usage: examples/vm-from-clone.sh MNT GOLDEN.raw NAME   (needs qemu-system-x86_64 to actually boot)
set -euo pipefail
mnt=$1 golden=$2 name=$3
cd "$(dirname "$0")/.."
[ -e "$mnt/disks/golden.img" ] || cp --sparse=always "$golden" "$mnt/disks/golden.img"
[ -e "$mnt/backups/golden.img" ] || bin/vdiskfs backup "$mnt/disks/golden.img" golden
bin/vdiskfs clone "$mnt/backups/golden.img" "$name"
echo "clone ready: $mnt/clones/$name.img"
if command -v qemu-system-x86_64 >/dev/null; then
  exec qemu-system-x86_64 -m 1024 -nographic -drive "file=$mnt/clones/$name.img,format=raw,if=virtio"
fi

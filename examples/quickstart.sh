#!/usr/bin/env bash
# A tour of vdiskfs: a disk with ext4 on it, a backup taken while it is mounted, two clones that
# diverge, a restore, and where the space went. Run as root from the repository (after `make build`).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/vdiskfs-example.XXXXXX)
mkdir -p "$work/mnt" "$work/web"
cleanup () {
  umount "$work/web" 2>/dev/null || true
  bin/vdiskfs umount "$work/mnt" 2>/dev/null || fusermount3 -uz "$work/mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

bin/vdiskfs mount "$work/pool" "$work/mnt"
truncate -s 2G "$work/mnt/disks/web.img"
mkfs.ext4 -q "$work/mnt/disks/web.img"
mount -o loop "$work/mnt/disks/web.img" "$work/web"
echo "monday" > "$work/web/index.html"

# An application-consistent backup of the mounted filesystem: fsfreeze around a metadata-only copy.
bin/vdiskfs backup "$work/mnt/disks/web.img" web-monday --freeze "$work/web"
echo "tuesday" > "$work/web/index.html"
umount "$work/web"

# Two clones of Monday's backup: each writable, each storing only what it changes.
bin/vdiskfs clone "$work/mnt/backups/web-monday.img" test1
bin/vdiskfs clone "$work/mnt/backups/web-monday.img" test2
mount -o loop "$work/mnt/clones/test1.img" "$work/web"
echo "test1 says: $(cat "$work/web/index.html")"      # monday
dd if=/dev/urandom of="$work/web/blob" bs=1M count=8 status=none
umount "$work/web"

bin/vdiskfs ls "$work/mnt"
bin/vdiskfs sync "$work/mnt"                             # seal: hash, compress, dedup
bin/vdiskfs du "$work/mnt"

# Back to Monday, keeping every backup.
bin/vdiskfs restore "$work/mnt/backups/web-monday.img" "$work/mnt/disks/web.img"
mount -o loop,ro "$work/mnt/disks/web.img" "$work/web"
echo "web.img says: $(cat "$work/web/index.html")"      # monday again
umount "$work/web"
bin/vdiskfs verify "$work/mnt"

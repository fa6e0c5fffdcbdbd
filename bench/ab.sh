#!/bin/bash
# Quick A/B measurements of single changes, for a machine shared with other work: each alternates the
# two settings and reports rates together with the daemon's CPU per operation (which moves less with the
# load than the rates do). Not part of `make bench`. Usage: bench/ab.sh pieces|kick|loop [rounds]
#   pieces  4k O_DIRECT random reads of a clone of a sealed backup (512 MiB of /usr/lib), sealed pieced
#           (16 KiB verified pieces) against sealed whole (VDISKFS_CHUNK_PIECES=0): IOPS, daemon ns/read
#   kick    dd of 1 GiB to a new image, conv=fsync, with first writes' early writeback on and off
#           (VDISKFS_WRITEBACK_KICK): MB/s
#   loop    fio 4k randwrite for 22 s on a fresh 1 GiB disk: the daemon's event-loop delay (status)
#   folio   dd of 1 GiB to a new image (bs=1M, conv=fsync), then fio 4k randwrite over it for 10 s, with
#           extent writes cut at 64 KiB (small page-cache folios) and whole (VDISKFS_FOLIO_BYTES=0):
#           MB/s, IOPS, daemon ns/write
set -e
REPO=$(cd "$(dirname "$0")/.." && pwd); V=$REPO/bin/vdiskfs
W=${VDISKFS_AB_DIR:-/tmp/vdiskfs-ab}; ROUNDS=${2:-3}
mkdir -p "$W"
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
load() { cut -d' ' -f1 /proc/loadavg; }
fio_rate() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s.slice(s.indexOf("{"))).jobs[0];const side=j.read.iops>0?j.read:j.write;console.log(Math.round(process.argv[1]==="bw"?side.bw_bytes/1e6:side.iops))})' "$1"; }
case "$1" in
pieces)
  for mode in 1 0; do
    P=$W/pool$mode; M=$W/mnt$mode; mkdir -p "$M"
    if [ ! -d "$P" ]; then
      VDISKFS_CHUNK_PIECES=$mode "$V" mount "$P" "$M" >/dev/null
      tar cf - /usr/lib 2>/dev/null | head -c 536870912 > "$M/disks/src.img"
      "$V" backup "$M/disks/src.img" b >/dev/null; "$V" sync "$M" >/dev/null
      "$V" clone "$M/backups/b.img" c >/dev/null
      "$V" umount "$M" >/dev/null
    fi
  done
  for round in $(seq 1 "$ROUNDS"); do for mode in 1 0; do
    P=$W/pool$mode; M=$W/mnt$mode
    "$V" mount "$P" "$M" >/dev/null
    cat "$M/clones/c.img" > /dev/null
    pid=$(cat "$P/daemon.pid"); c0=$(cpu "$pid")
    iops=$(fio --name=ab --filename="$M/clones/c.img" --rw=randread --bs=4k --ioengine=psync --direct=1 --size=512m --runtime=5 --time_based --output-format=json | fio_rate iops)
    c1=$(cpu "$pid")
    echo "round $round pieces=$mode: $iops IOPS, daemon $(( (c1 - c0) * 10000000 / (iops * 5 + 1) )) ns/read (load $(load))"
    "$V" umount "$M" >/dev/null
  done; done ;;
kick)
  head -c 1073741824 /dev/urandom > "$W/src.raw"
  for round in $(seq 1 "$ROUNDS"); do for kick in 1 0; do
    rm -rf "$W/kpool"; mkdir -p "$W/kmnt"
    VDISKFS_WRITEBACK_KICK=$kick "$V" mount "$W/kpool" "$W/kmnt" >/dev/null
    cat "$W/src.raw" > /dev/null
    rate=$(dd if="$W/src.raw" of="$W/kmnt/disks/n.img" bs=1M conv=fsync 2>&1 | tail -1 | awk '{print $(NF-1), $NF}')
    echo "round $round kick=$kick: $rate (load $(load))"
    "$V" umount "$W/kmnt" >/dev/null
  done; done ;;
loop)
  for round in $(seq 1 "$ROUNDS"); do
    rm -rf "$W/lpool"; mkdir -p "$W/lmnt"
    "$V" mount "$W/lpool" "$W/lmnt" >/dev/null
    dd if=/dev/urandom of="$W/lmnt/disks/d.img" bs=1M count=1024 conv=fsync status=none
    iops=$(fio --name=ab --filename="$W/lmnt/disks/d.img" --rw=randwrite --bs=4k --ioengine=psync --size=1g --runtime=22 --time_based --output-format=json | fio_rate iops)
    echo "round $round: $iops IOPS; $("$V" status "$W/lmnt" | grep 'event loop') (load $(load))"
    "$V" umount "$W/lmnt" >/dev/null
  done ;;
folio)
  head -c 1073741824 /dev/urandom > "$W/src.raw"
  for round in $(seq 1 "$ROUNDS"); do for folio in 65536 0; do
    rm -rf "$W/fpool"; mkdir -p "$W/fmnt"
    VDISKFS_FOLIO_BYTES=$folio "$V" mount "$W/fpool" "$W/fmnt" >/dev/null
    cat "$W/src.raw" > /dev/null
    rate=$(dd if="$W/src.raw" of="$W/fmnt/disks/f.img" bs=1M conv=fsync 2>&1 | tail -1 | awk '{print $(NF-1), $NF}')
    pid=$(cat "$W/fpool/daemon.pid"); c0=$(cpu "$pid")
    iops=$(fio --name=ab --filename="$W/fmnt/disks/f.img" --rw=randwrite --bs=4k --ioengine=psync --size=1g --runtime=10 --time_based --output-format=json | fio_rate iops)
    c1=$(cpu "$pid")
    echo "round $round folio=$folio: dd $rate, randwrite $iops IOPS, daemon $(( (c1 - c0) * 10000000 / (iops * 10 + 1) )) ns/write (load $(load))"
    "$V" umount "$W/fmnt" >/dev/null
  done; done ;;
*) echo "usage: bench/ab.sh pieces|kick|loop|folio [rounds]" >&2; exit 2 ;;
esac

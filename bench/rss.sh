#!/bin/bash
# The daemon's peak RSS (VmHWM) with disks of 1 GiB, 64 GiB and 1 TiB, a 64 KiB block written every 64 MiB
# (as bench/run.ts's backup latency section), then 5 backups and clones of each; then the memory figures of
# `vdiskfs status --json`. Usage: bench/rss.sh [keep] (keep: leave the pool mounted). docs/PERFORMANCE.md, "Peak RSS".
REPO=$(cd "$(dirname "$0")/.." && pwd); V=$REPO/bin/vdiskfs; W=${VDISKFS_RSS_DIR:-/tmp/vdiskfs-rss}; P=$W/pool; M=$W/mnt
fusermount3 -uz $M 2>/dev/null; rm -rf $W; mkdir -p $M
$V mount $P $M >/dev/null || exit 1
pid=$(cat $P/daemon.pid)
rss() { grep -E 'VmRSS|VmHWM' /proc/$pid/status | tr '\n' ' '; echo; }
echo "start: $(rss)"
for label in 1G 64G 1T; do
  case $label in 1G) b=1;; 64G) b=64;; 1T) b=1024;; esac
  disk=$M/disks/d$label.img
  : > $disk; truncate -s ${b}G $disk
  python3 - $disk $b <<'PY'
import os,sys
fd=os.open(sys.argv[1],os.O_RDWR); blk=b'\x5a'*65536
for off in range(0,int(sys.argv[2])<<30,64<<20): os.pwrite(fd,blk,off)
os.fsync(fd); os.close(fd)
PY
  echo "$label written: $(rss)"
  for i in 0 1 2 3 4; do $V backup $disk b$label-$i >/dev/null; $V clone $M/backups/b$label-$i.img c$label-$i >/dev/null; done
  echo "$label backups: $(rss)"
done
$V status $M --json > $W/status.json
node -e 'const s=require("'$W'/status.json"); const f=(o,p)=>{for(const[k,v] of Object.entries(o)){ if(typeof v==="object"&&v) f(v,p+k+"."); else if(/[Bb]ytes|[Mm]em|rss|heap|words|pages/i.test(k)) console.log(p+k, v)}}; f(s,"")' | head -40
[ "$1" = keep ] || $V umount $M >/dev/null

#!/bin/bash
# Daemon CPU per read: fio 4k randread (psync, page cache dropped first) on FILE served by the vdiskfs
# daemon PID, and the CPU time (utime + stime from /proc/PID/task/*/stat) its main thread and its other
# threads (workers, libfuse, V8) spent per request. On a shared machine CPU per request is a much
# steadier figure than IOPS, which swing with the other jobs' load (docs/PERFORMANCE.md).
# Usage: bench/read-cost.sh PID FILE [JOBS=1] [SECONDS=5]   (as root: it writes /proc/sys/vm/drop_caches)
set -euo pipefail
pid=$1 file=$2 jobs=${3:-1} seconds=${4:-5}
ticks() { for t in /proc/"$pid"/task/*; do echo "${t##*/} $(awk '{print $14 + $15}' "$t/stat")"; done | sort; }
sync; echo 3 > /proc/sys/vm/drop_caches
before=$(ticks)
result=$(fio --name=read-cost --filename="$file" --rw=randread --bs=4k --ioengine=psync --iodepth=1 --numjobs="$jobs" \
  --group_reporting --size="$(stat -c %s "$file")" --runtime="$seconds" --time_based --output-format=json |
  python3 -c "import json, sys; r = json.load(sys.stdin)['jobs'][0]['read']; print(r['total_ios'], round(r['iops']))")
after=$(ticks)
hz=$(getconf CLK_TCK)
join <(echo "$before") <(echo "$after") | awk -v result="$result" -v main="$pid" -v hz="$hz" '
  { d = $3 - $2; total += d; if ($1 == main) m += d; else other += d }
  END { split(result, r, " "); us = 1e6 / hz / r[1]
        printf "requests %d, %d IOPS; daemon CPU per request: %.0f us (main thread %.0f, other threads %.0f)\n", r[1], r[2], total * us, m * us, other * us }'

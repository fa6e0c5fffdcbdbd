#!/bin/bash
# A single-node Ceph (monitor, one BlueStore OSD on a sparse file, RGW/S3) on 127.0.0.1, for issue #12's tests
# and bench. From /work/shared/recipes/ceph-rgw-single-node.sh (the team's recipe, verified on Debian 12 with
# Ceph 16: about 25 s including the apt install); changed here: the monitor's ports are chosen by the caller
# (MON_PORT, MON_PORT_V1) so several clusters can run at once, the manager is off unless WITH_MGR=1 (RGW needs
# none), `stop` waits for the daemons to exit, and a failed start leaves no daemon behind.
# Needs: apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common (make s3-debs).
# Usage: ceph-rgw.sh start DIR | stop DIR.
# Env: RGW_PORT (7480), MON_PORT (3300), MON_PORT_V1 (6789), OSD_SIZE (bytes, 10 GiB sparse), S3_KEY, S3_SECRET.
set -euo pipefail
cmd=$1; D=$2; C="-c $D/ceph.conf"
stop () {
  for p in rgw osd mgr mon; do [ -f "$D/$p.pid" ] && kill "$(cat "$D/$p.pid")" 2>/dev/null || true; done
  for p in rgw osd mgr mon; do
    [ -f "$D/$p.pid" ] || continue
    pid=$(cat "$D/$p.pid")
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$D/$p.pid"
  done
}
if [ "$cmd" = stop ]; then stop; exit 0; fi
trap 'stop' ERR
RGW_PORT=${RGW_PORT:-7480}; MON_PORT=${MON_PORT:-3300}; MON_PORT_V1=${MON_PORT_V1:-6789}
MON_ADDR="[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$MON_PORT_V1]"
rm -rf "$D"; mkdir -p $D/{mon,osd,run,log,rgw,mgr/ceph-x}
FSID=$(cat /proc/sys/kernel/random/uuid)
cat > $D/ceph.conf <<CONF
[global]
fsid = $FSID
mon host = $MON_ADDR
mon initial members = a
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms bind ipv6 = false
run dir = $D/run
admin socket = $D/run/\$name.asok
log file = $D/log/\$name.log
mon data = $D/mon/\$cluster-\$id
mgr data = $D/mgr/\$cluster-\$id
osd data = $D/osd/\$cluster-\$id
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
auth allow insecure global id reclaim = false
osd crush chooseleaf type = 0
[osd]
osd objectstore = bluestore
bluestore block create = true
bluestore block size = ${OSD_SIZE:-10737418240}
osd memory target = 1073741824
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw data = $D/rgw
CONF
monmaptool --create --addv a "$MON_ADDR" --fsid $FSID $D/monmap >/dev/null
ceph-mon $C --mkfs -i a --monmap $D/monmap
nohup ceph-mon $C -i a -f >$D/log/mon.out 2>&1 & echo $! >$D/mon.pid
if [ -n "${WITH_MGR:-}" ]; then nohup ceph-mgr $C -i x -f >$D/log/mgr.out 2>&1 & echo $! >$D/mgr.pid; fi
U=$(cat /proc/sys/kernel/random/uuid); ID=$(timeout 60 ceph $C osd new $U)
mkdir -p $D/osd/ceph-$ID; ceph-osd $C -i $ID --mkfs --osd-uuid $U >$D/log/osd-mkfs.out 2>&1
nohup ceph-osd $C -i $ID -f >$D/log/osd.out 2>&1 & echo $! >$D/osd.pid
nohup radosgw $C -n client.rgw.a -f >$D/log/rgw.out 2>&1 & echo $! >$D/rgw.pid
up=""
for i in $(seq 1 240); do curl -sf -o /dev/null http://127.0.0.1:$RGW_PORT/ && { up=1; break; }; sleep 0.5; done
[ -n "$up" ] || { echo "RGW did not answer on 127.0.0.1:$RGW_PORT within 120 s (see $D/log)" >&2; false; }
timeout 60 radosgw-admin $C user create --uid=test --display-name=test --access-key=${S3_KEY:-TESTACCESSKEY} --secret-key=${S3_SECRET:-TESTSECRETKEY0123456789} >/dev/null
echo "S3 endpoint http://127.0.0.1:$RGW_PORT key=${S3_KEY:-TESTACCESSKEY}"

#!/bin/bash
# vm-tests/scenarios/93-rbd-cluster-restart.sh: the whole Ceph cluster stops and starts again under
# a guest's I/O on an RBD origin, and the guest recovers. snapblk serves rbd:rbd/vol (read-write, an
# origin of a `serve --config` graph, exported) with the cluster's client op timeout
# (rados_osd_op_timeout) set to OP_TIMEOUT seconds in its ceph.conf. The guest loops over N numbered
# 4 KiB blocks: each iteration writes the block's next generation (O_DIRECT) and reads it back
# (O_DIRECT); a write or read that fails is counted (the block's contents are then unknown until its
# next write), a read that succeeds after an acknowledged write must return that write. Mid-run the
# host stops the cluster (mon, mgr and OSD), waits OUTAGE seconds (longer than the op timeout, so
# requests in flight and new ones fail rather than wait), and starts the same cluster again. Then
# guest I/O must resume: N + 16 iterations in a row without an error, after which every block reads
# back the generation last acknowledged, in the guest and in `rbd export` on the host. The guest
# must have seen errors during the outage (failed requests, not an endless stall); snapblk must stay
# up throughout (same PID, the export socket listening, counting the errors in `stats`) and stop
# with status 0. The figures (errors, outage, time to resume) are printed as a note. snapblk only.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init_multi rbd-cluster-restart

if [ "$VMT_BACKEND" != snapblk ]; then
    vmt_skip "skipped for $VMT_BACKEND (needs snapblk's RBD origins)"
fi

OP_TIMEOUT=5 # rados_osd_op_timeout, seconds
OUTAGE=12    # seconds from the stop of the cluster to its start
N=64         # blocks of 4 KiB the guest cycles over, from block A
A=4096

vmt_ceph_start
# The clients' op timeout (the daemon's librbd reads this conf; it sets 30 s unless the conf says).
printf '\n[client]\nrados_osd_op_timeout = %s\n' "$OP_TIMEOUT" >>"$VMT_CEPH_CONF"
expect_eq "$(ceph-conf -c "$VMT_CEPH_CONF" --name client.admin rados_osd_op_timeout)" "$OP_TIMEOUT" \
    "rados_osd_op_timeout in $VMT_CEPH_CONF"
vmt_rbd create --size 64M rbd/vol || vmt_fail "rbd create rbd/vol failed"

sock="$VMT_TMP/vol.sock"
ctlsock="$VMT_TMP/ctl.sock"
cat >"$VMT_TMP/graph.toml" <<EOF
[[origin]]
name = "vol"
image = "rbd:rbd/vol"
ceph_conf = "$VMT_CEPH_CONF"

[[export]]
node = "vol"
socket = "$sock"
num_queues = 2
EOF
start_backend_control d "$ctlsock" "$VMT_TMP/state" --config "$VMT_TMP/graph.toml"
wait_for 20 backend_listening_all "${VMT_BACKEND_PID[d]}" "$sock" || vmt_fail "export $sock not listening"
pid=${VMT_BACKEND_PID[d]}

guest_script "$VMT_TMP/test.sh" "N=$N" "A=$A" <<GUEST
$VMT_BLOCK_FN
GUEST
cat >>"$VMT_TMP/test.sh" <<'GUEST'
stty -F /dev/ttyS1 -echo raw 2>/dev/null || true
exec 3</dev/ttyS1
# st[b]: the generation of block b's last acknowledged write; -1 after a failed write (unknown).
declare -a st
ok=0 werr=0 rerr=0 streak=0 i=0
echo "VMT-PROG ok 0"
# Until the host writes on the control port ("stop"; a read with a timeout may return part of a
# line, so any byte stops the loop).
while :; do
    if read -t 0.001 -r -n 1 _ <&3; then break; fi
    b=$((i % N))
    g=$((i / N + 1))
    vmt_block "$g" "$b" >/tmp/w
    if dd if=/tmp/w of=/dev/vda bs=4k seek=$((A + b)) oflag=direct conv=notrunc status=none 2>/dev/null; then
        st[b]=$g
        if dd if=/dev/vda of=/tmp/r bs=4k skip=$((A + b)) count=1 iflag=direct status=none 2>/dev/null; then
            cmp -s /tmp/w /tmp/r || fail "block $b read back wrong after its acknowledged write (gen $g, iteration $i)"
            ok=$((ok + 1))
            streak=$((streak + 1))
        else
            rerr=$((rerr + 1))
            streak=0
            echo "VMT-PROG err $((werr + rerr))"
        fi
    else
        werr=$((werr + 1))
        st[b]=-1
        streak=0
        echo "VMT-PROG err $((werr + rerr))"
    fi
    echo "VMT-PROG ok $ok"
    echo "VMT-PROG streak $streak"
    i=$((i + 1))
done
out iterations "$i"
out ok "$ok"
out werr "$werr"
out rerr "$rerr"
# The host stops the loop only after N + 16 error-free iterations: every block was rewritten since
# the last failure, so every block's contents are known.
: >/tmp/want
for ((b = 0; b < N; b++)); do
    [ "${st[b]:--1}" -ge 1 ] || fail "block $b unknown at the end (generation ${st[b]:-none})"
    vmt_block "${st[b]}" "$b" >>/tmp/want
done
sha=$(sha256sum </tmp/want | cut -d' ' -f1)
expect_eq "$(dd if=/dev/vda bs=4k skip="$A" count="$N" iflag=direct status=none | sha256sum | cut -d' ' -f1)" \
    "$sha" "the blocks' last acknowledged generations at the end"
out sha "$sha"
GUEST

now_ms() { echo $(($(date +%s%N) / 1000000)); }
prog() { guest_prog_n 1 "$1"; }
backend_up() {
    kill -0 "$pid" 2>/dev/null || vmt_fail "snapblk (PID $pid) exited $1"
    socket_listening "$sock" || vmt_fail "snapblk's export socket stopped listening $1"
}

guest_start_n 1 "$sock" "$VMT_TMP/test.sh"
wait_console "VMT-PROG ok 0" 120
_ok_reached() {
    [ "$(prog ok)" -ge "$1" ] && return 0
    kill -0 "$VMT_GUEST_PID" 2>/dev/null || return 2
    return 1
}
wait_for 120 _ok_reached 32 || { guest_dump; vmt_fail "guest made $(prog ok) verified iterations in 120 s, want 32 before the outage"; }
expect_eq "$(prog err)" 0 "guest errors before the outage"

# The outage: stop every daemon of the cluster (the OSD first), wait, start it again (same data,
# same mon port). Iterations that finish while the stop runs are not counted as outage.
t0=$(now_ms)
vmt_ceph stop
t1=$(now_ms)
ok1=$(prog ok)
vmt_log "cluster stopped in $((t1 - t0)) ms, $ok1 verified iterations by then"
rest=$((OUTAGE - (t1 - t0) / 1000))
[ "$rest" -ge 1 ] || rest=1
sleep "$rest"
backend_up "during the outage"
ok2=$(prog ok)
err2=$(prog err)
t2=$(now_ms)
vmt_log "cluster fully down for $((t2 - t1)) ms: $((ok2 - ok1)) verified iterations, $err2 errors"
# The start in the background: recovery is timed from its beginning, while it runs.
"$VMT_REPO/scripts/ceph-cluster.sh" start "$VMT_CEPH_DIR" >>"$VMT_TMP/ceph-cluster.log" 2>&1 &
cpid=$!
start_done() {
    kill -0 "$cpid" 2>/dev/null && return 1
    wait "$cpid" || { tail -n 40 "$VMT_TMP/ceph-cluster.log" >&2; vmt_fail "ceph-cluster.sh start failed"; }
}
# Recovery: the first verified iteration after the start began, then N + 16 in a row without an
# error.
if ! wait_for 150 _ok_reached $((ok2 + 1)); then
    wait "$cpid" || { tail -n 40 "$VMT_TMP/ceph-cluster.log" >&2; vmt_fail "ceph-cluster.sh start failed"; }
    guest_dump
    vmt_fail "guest I/O did not resume within 150 s of the cluster's start ($(prog err) errors)"
fi
t3=$(now_ms)
started_before=no
! kill -0 "$cpid" 2>/dev/null || started_before=yes
wait_for 150 start_done || { kill "$cpid" || true; wait "$cpid" || true; vmt_fail "ceph-cluster.sh start still runs after 150 s"; }
start_ms=$(grep -a -o 'cluster restarted in [0-9.]* s' "$VMT_TMP/ceph-cluster.log" | tail -n1 | grep -o '[0-9.]*')
vmt_log "guest I/O resumed $((t3 - t2)) ms after the cluster's start began (before the start returned: $started_before); start took ${start_ms} s"
backend_up "after the cluster started"
_streak_reached() {
    [ "$(prog streak)" -ge $((N + 16)) ] && return 0
    kill -0 "$VMT_GUEST_PID" 2>/dev/null || return 2
    return 1
}
wait_for 120 _streak_reached ||
    { guest_dump; vmt_fail "no $((N + 16)) error-free iterations in a row within 120 s of recovery (streak $(prog streak), $(prog err) errors)"; }
t5=$(now_ms)
backend_up "after the recovery"
guest_sync_reply stop
guest_wait_n 1

iterations=$(guest_out iterations)
werr=$(guest_out werr)
rerr=$(guest_out rerr)
errors=$((werr + rerr))
vmt_log "guest: $iterations iterations, $(guest_out ok) verified, $werr failed writes, $rerr failed reads; $((N + 16)) in a row $((t5 - t2)) ms after the start began"
# Failed requests, not a stall: with a ${OP_TIMEOUT}s op timeout and ${OUTAGE}s down, some fail.
[ "$errors" -gt 0 ] || vmt_fail "the guest saw no I/O error in a ${OUTAGE}s outage (op timeout ${OP_TIMEOUT}s): $((ok2 - ok1)) iterations during it"
expect_eq "${VMT_BACKEND_PID[d]}" "$pid" "snapblk's PID"
backend_up "at the end"
stats=$(ctl stats --json)
xerr=$(json_field "$stats" errors)
[ "$xerr" -ge "$errors" ] || vmt_fail "snapblk counted $xerr export errors, the guest saw $errors failed requests: $stats"
stop_backend d

expect_eq "$(vmt_rbd export rbd/vol - 2>/dev/null | dd bs=4k skip=$A count=$N iflag=fullblock status=none | sha256sum | cut -d' ' -f1)" \
    "$(guest_out sha)" "host: rbd export of rbd/vol, the guest's blocks"
vmt_note "cluster stopped $(((t2 - t0) / 1000))s in all (op timeout ${OP_TIMEOUT}s): the guest saw $werr failed writes + $rerr failed reads ($xerr export errors), $((ok2 - ok1)) verified iterations from the stop's end to the start; I/O resumed $(((t3 - t2) / 1000))s into the cluster's ${start_ms}s start; snapblk PID $pid up throughout"

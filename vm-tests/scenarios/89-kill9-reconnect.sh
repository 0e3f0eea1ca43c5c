#!/bin/bash
# vm-tests/scenarios/89-kill9-reconnect.sh: the daemon crashes (SIGKILL) under a writing guest and is
# started again with the same --state-dir and --control; it restores the origin and its export by
# itself, QEMU (reconnect=1) reconnects with the inflight region it kept, and the guest finishes
# without an I/O error.
#
# The guest writes numbered 4 KiB blocks, each with `dd oflag=direct conv=fsync` (a write, then a
# flush) and prints "VMT-PROG aW N" once writer W has N blocks written and flushed. The host kills
# the daemon mid-stream, then checks on the image file, before the restart, that every block
# acknowledged on the console is there; at the end every block of every writer must be there.
# VMT_KILL9_QD (default 1) is the number of concurrent writers: 1 keeps one request in flight at a
# time; more put several in flight at the kill. VMT_KILL9_FIO=DEPTH (default 16; 0: none) adds a fio job
# (4 KiB random O_DIRECT writes at iodepth DEPTH over [40, 56) MiB, crc32c-verified after every
# loop) that runs across the kill. VMT_KILL9_SNAPSHOT=1 (the default) gives the origin a persistent
# snapshot (4 KiB chunks) first, so first writes to a chunk wait for a copy-out and its commit and
# are more likely to be in flight at the kill; the restarted daemon then resubmits them from the
# inflight region QEMU kept.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init_multi kill9-reconnect

if [ "$VMT_BACKEND" != snapblk ]; then
    vmt_skip "skipped for $VMT_BACKEND (needs snapblk's control plane and state directory)"
fi

qd=${VMT_KILL9_QD:-1}
fio_depth=${VMT_KILL9_FIO:-16}
with_snapshot=${VMT_KILL9_SNAPSHOT:-1}
N=512 # blocks per writer; writer W writes [4 + 4W, 6 + 4W) MiB
img="$VMT_TMP/origin.img"
ctlsock="$VMT_TMP/ctl.sock"
osock="$VMT_TMP/origin.sock"
make_image "$img" 64M
start_backend_control d "$ctlsock" "$VMT_TMP/state"
ctl origin add vm --image "$img" >/dev/null
ctl_export_add vm "$osock"
if [ "$with_snapshot" = 1 ]; then
    ctl snapshot create vm snap --cow "$VMT_TMP/snap.cow" --size 256M --chunk-size 4k --store P >/dev/null
fi

guest_script "$VMT_TMP/writer.sh" "qd=$qd" "N=$N" "fio_depth=$fio_depth" <<GUEST
$VMT_BLOCK_FN
GUEST
cat >>"$VMT_TMP/writer.sh" <<'GUEST'
writer() {
    local w=$1 i base=$((1024 + 1024 * $1))
    vmt_blocks "w$w" 0 "$N" >/tmp/g$w
    for ((i = 0; i < N; i++)); do
        dd if=/tmp/g$w of=/dev/vda bs=4k skip="$i" seek=$((base + i)) count=1 oflag=direct conv=notrunc,fsync status=none ||
            { echo "writer $w: block $i failed" >/tmp/werr$w; exit 1; }
        echo "VMT-PROG a$w $((i + 1))"
    done
}
pids=()
if [ "$fio_depth" -gt 0 ]; then
    (
        echo "VMT-PROG fio 1"
        fio --name=deep --filename=/dev/vda --offset=40M --size=16M --rw=randwrite --bs=4k --direct=1 \
            --ioengine=libaio --iodepth="$fio_depth" --verify=crc32c --do_verify=1 --loops=100 \
            --runtime=25 --output=/tmp/fio.out >/dev/null 2>&1 || { echo "fio failed: $(tail -n 5 /tmp/fio.out | tr '\n' ' ')" >/tmp/werrfio; exit 1; }
        echo "VMT-PROG fio 2"
    ) &
    fio_pid=$!
fi
for ((w = 0; w < qd; w++)); do
    taskset -c $((w % 2)) bash -c "$(declare -f vmt_block vmt_blocks writer); N=$N; writer $w" &
    pids+=($!)
done
# Bounded wait: a request lost at the kill leaves its writer blocked for ever.
n=0
while [ "$n" -lt 1800 ]; do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    n=$((n + 1))
    sleep 0.1
done
if [ "$alive" = 1 ]; then
    stuck=$(ps -o pid,stat,args 2>/dev/null | grep -e ' dd ' | grep -v grep | head -n 4 | tr '\n' ';' || true)
    fail "writers still blocked 180 s into the run (request lost at the kill?): $stuck"
fi
for ((w = 0; w < qd; w++)); do
    wait "${pids[$w]}" || fail "$(cat /tmp/werr$w 2>/dev/null || echo "writer $w failed")"
done
if [ "$fio_depth" -gt 0 ]; then
    n=0
    while kill -0 "$fio_pid" 2>/dev/null && [ "$n" -lt 900 ]; do n=$((n + 1)); sleep 0.1; done
    kill -0 "$fio_pid" 2>/dev/null && fail "fio (iodepth $fio_depth) still blocked 90 s after the writers ended (request lost at the kill?)"
    wait "$fio_pid" || fail "$(cat /tmp/werrfio 2>/dev/null || echo "fio failed")"
fi
for ((w = 0; w < qd; w++)); do
    expect_eq "$(sha_region /dev/vda $((4 + 4 * w)) 2)" "$(sha256sum </tmp/g$w | cut -d' ' -f1)" "writer $w's blocks at the end"
done
if dmesg | grep -q -e 'I/O error' -e 'is not a head'; then fail "guest kernel: $(dmesg | grep -m1 -e 'I/O error' -e 'is not a head')"; fi
GUEST

# block_ok W FIRST COUNT: writer W's blocks [FIRST, FIRST + COUNT) are in the image file.
blocks_sha() { dd if="$img" bs=4k skip=$((1024 + 1024 * $1 + $2)) count="$3" status=none | sha256sum | cut -d' ' -f1; }
want_sha() { vmt_blocks "w$1" "$2" "$3" | sha256sum | cut -d' ' -f1; }

VMT_CHARDEV_OPTS=",reconnect=1" guest_start_n g "$osock" "$VMT_TMP/writer.sh"
wait_prog_n g a0 100
kill_backend d
t_kill=$SECONDS
[ "$fio_depth" = 0 ] || vmt_log "fio (iodepth $fio_depth) state at the kill: $(guest_prog_n g fio) (1 running, 2 done)"
acks=()
for ((w = 0; w < qd; w++)); do acks+=("$(guest_prog_n g a$w)"); done
vmt_log "daemon killed (SIGKILL) with writers acknowledged at: ${acks[*]} of $N blocks"
for ((w = 0; w < qd; w++)); do
    expect_eq "$(blocks_sha $w 0 "${acks[$w]}")" "$(want_sha $w 0 "${acks[$w]}")" \
        "host: writer $w's ${acks[$w]} acknowledged blocks in the image after the kill"
done
sleep 1
start_backend_control d "$ctlsock" "$VMT_TMP/state"
wait_for 20 socket_listening "$osock" || vmt_fail "the restarted daemon did not restore the export on $osock"
vmt_log "daemon restarted, export restored $((SECONDS - t_kill)) s after the kill"
exports=$(ctl export list --json)
expect_eq "$(json_field "$exports" node)" vm "export restored by the state directory"
# The guest goes on: every writer must move on past its acknowledged count.
for ((w = 0; w < qd; w++)); do
    want=$((acks[w] + 2 < N ? acks[w] + 2 : N))
    wait_prog_n g a$w "$want" 120
done
vmt_log "writers moving again $((SECONDS - t_kill)) s after the kill"
# QEMU keeps the inflight region snapblk gave it (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) and hands it
# to the restarted daemon, which resubmits what the killed one had in flight (often nothing here:
# a request spends microseconds in the daemon; tests/inflight.rs kills with requests in flight).
since_restart=$(awk '/^\$ .* serve /{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$VMT_TMP/d.backend.log")
grep -q 'frontend keeps an inflight region' <<<"$since_restart" ||
    vmt_fail "QEMU did not hand an inflight region to the restarted daemon"
resubmitted=$({ grep -o 'resubmitting [0-9]* requests' <<<"$since_restart" || true; } | awk '{n += $2} END {print n + 0}')
fio_note=''
[ "$fio_depth" = 0 ] || fio_note=", fio iodepth $fio_depth"
vmt_note "SIGKILL at ${acks[*]} flushed blocks (writers: $qd$fio_note); writers moving again $((SECONDS - t_kill)) s later; $resubmitted requests resubmitted"
guest_wait_n g
stats=$(ctl stats --json)
for e in $(json_fields "$stats" errors); do expect_eq "$e" 0 "export errors after the restart in: $stats"; done
stop_backend d
for ((w = 0; w < qd; w++)); do
    expect_eq "$(blocks_sha $w 0 $N)" "$(want_sha $w 0 $N)" "host: writer $w's $N blocks in the image at the end"
done

#!/bin/bash
# vm-tests/scenarios/55-restart-inflight.sh: a backend restart (SIGTERM, start again) while the guest
# has O_DIRECT writes in flight, under a QEMU with reconnect=1: the writer must finish without an
# I/O error and every byte must land. snapblk completes every request it popped before it
# closes the connection, so QEMU resumes at exactly the used index. Skipped for qsd: QEMU 7.2 +
# qemu-storage-daemon replay a request the old daemon already completed in about half the runs
# ("req.0:id 1 is not a head!").
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init restart-inflight

if [ "$VMT_BACKEND" = qsd ]; then
    vmt_skip "skipped for qsd (its reconnect replays completed requests under in-flight I/O)"
fi

img="$VMT_TMP/disk.img"
sock="$VMT_TMP/blk.sock"
make_image "$img" 128M
start_backend b "$img" "$sock" --num-queues 2

guest_script "$VMT_TMP/test.sh" <<'GUEST'
dd if=/dev/urandom of=/tmp/a bs=1M count=4 status=none
dd if=/dev/urandom of=/tmp/c bs=1M count=16 status=none
dd if=/tmp/a of=/dev/vda bs=1M seek=32 oflag=direct conv=notrunc status=none || fail "write A failed"
sha_a=$(sha256sum /tmp/a | cut -d' ' -f1)
sha_c=$(sha256sum /tmp/c | cut -d' ' -f1)
# Two writers (one per CPU, so one per queue) of 4 KiB O_DIRECT writes run across the restart.
taskset -c 0 dd if=/tmp/c of=/dev/vda bs=4k count=2048 seek=$((40 * 256)) oflag=direct conv=notrunc status=none &
w0=$!
taskset -c 1 dd if=/tmp/c of=/dev/vda bs=4k skip=2048 count=2048 seek=$((40 * 256 + 2048)) oflag=direct conv=notrunc status=none &
w1=$!
host_sync restart
overlapped=0
if kill -0 "$w0" 2>/dev/null || kill -0 "$w1" 2>/dev/null; then overlapped=1; fi
# Bounded wait: requests lost in the restart would leave the writers blocked for ever.
n=0
while { kill -0 "$w0" || kill -0 "$w1"; } 2>/dev/null && [ "$n" -lt 1200 ]; do
    n=$((n + 1))
    sleep 0.05
done
if kill -0 "$w0" 2>/dev/null || kill -0 "$w1" 2>/dev/null; then
    fail "writers still blocked 60 s after the backend restart (in-flight requests lost?)"
fi
wait "$w0" || fail "writer on CPU 0 failed across the backend restart"
wait "$w1" || fail "writer on CPU 1 failed across the backend restart"
expect_eq "$(sha_region /dev/vda 32 4)" "$sha_a" "data written before the restart"
expect_eq "$(sha_region /dev/vda 40 16)" "$sha_c" "data written across the restart"
dd if=/dev/urandom of=/tmp/b bs=1M count=4 status=none
dd if=/tmp/b of=/dev/vda bs=1M seek=64 oflag=direct conv=notrunc status=none || fail "write B failed"
sha_b=$(sha256sum /tmp/b | cut -d' ' -f1)
expect_eq "$(sha_region /dev/vda 64 4)" "$sha_b" "data written after the restart"
if dmesg | grep -q -e 'is not a head' -e 'I/O error'; then fail "guest kernel: $(dmesg | grep -m1 -e 'is not a head' -e 'I/O error')"; fi
out a "$sha_a"
out b "$sha_b"
out c "$sha_c"
out overlapped "$overlapped"
GUEST
VMT_CHARDEV_OPTS=",reconnect=1" guest_start "$sock" "$VMT_TMP/test.sh"
guest_sync_wait restart
stop_backend b
start_backend b "$img" "$sock" --num-queues 2
guest_sync_reply restart
guest_wait
stop_backend b
expect_eq "$(img_sha "$img" 32 4)" "$(guest_out a)" "host sha256 of A (before restart)"
expect_eq "$(img_sha "$img" 40 16)" "$(guest_out c)" "host sha256 of C (across restart)"
expect_eq "$(img_sha "$img" 64 4)" "$(guest_out b)" "host sha256 of B (after restart)"
vmt_log "writers still in flight when the backend restarted: $(guest_out overlapped)"

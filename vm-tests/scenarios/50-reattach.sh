#!/bin/bash
# vm-tests/scenarios/50-reattach.sh: one backend serves successive guests: a second QEMU on the same
# socket sees the first one's data; a guest reboot (device reset) keeps working; and a QEMU with
# reconnect=1 survives a backend restart (SIGTERM + start again).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init reattach

img="$VMT_TMP/disk.img"
sock="$VMT_TMP/blk.sock"
make_image "$img" 128M
start_backend b "$img" "$sock" --num-queues 2
backend_pid=${VMT_BACKEND_PID[b]}

# 1. Guest 1 writes [4, 12) MiB and powers off; guest 2 (a new QEMU process) reads it back.
guest_script "$VMT_TMP/write.sh" <<'GUEST'
dd if=/dev/urandom of=/tmp/p bs=1M count=8 status=none
dd if=/tmp/p of=/dev/vda bs=1M seek=4 oflag=direct conv=notrunc status=none || fail "write failed"
sha=$(sha256sum /tmp/p | cut -d' ' -f1)
expect_eq "$(sha_region /dev/vda 4 8)" "$sha" "read-back in guest 1"
out pattern "$sha"
GUEST
run_guest "$sock" "$VMT_TMP/write.sh"
pattern=$(guest_out pattern)
kill -0 "$backend_pid" 2>/dev/null || vmt_fail "backend exited when guest 1 disconnected"
expect_eq "$(img_sha "$img" 4 8)" "$pattern" "host sha256 of [4, 12) MiB after guest 1"

guest_script "$VMT_TMP/verify.sh" "want=$pattern" <<'GUEST'
expect_eq "$(sha_region /dev/vda 4 8)" "$want" "guest 2 reads guest 1's pattern"
GUEST
run_guest "$sock" "$VMT_TMP/verify.sh"
kill -0 "$backend_pid" 2>/dev/null || vmt_fail "backend exited when guest 2 disconnected"

# 2. reboot -f inside one QEMU (device reset and re-negotiation on the same connection).
guest_script "$VMT_TMP/reboot.sh" <<'GUEST'
marker=$(dd if=/dev/vda bs=512 count=1 iflag=direct status=none | tr -d '\0' | head -c 100)
case "$marker" in
    "")
        dd if=/dev/urandom of=/tmp/p bs=1M count=4 status=none
        dd if=/tmp/p of=/dev/vda bs=1M seek=16 oflag=direct conv=notrunc status=none || fail "write failed"
        sha=$(sha256sum /tmp/p | cut -d' ' -f1)
        printf 'VMTBOOT1 %s' "$sha" | dd of=/dev/vda bs=512 count=1 conv=sync,notrunc oflag=direct status=none
        out before_reboot "$sha"
        reboot -f
        ;;
    "VMTBOOT1 "*)
        expect_eq "$(sha_region /dev/vda 16 4)" "${marker#VMTBOOT1 }" "pattern after reboot"
        ;;
    *) fail "unexpected marker in sector 0: $marker" ;;
esac
GUEST
VMT_REBOOT=1 run_guest "$sock" "$VMT_TMP/reboot.sh"
boots=$(tr -d '\r' <"$VMT_GUEST_DIR/console.log" | grep -a -c 'VMT-BOOTED' || true)
expect_eq "$boots" 2 "boots in the reboot guest"
expect_eq "$(img_sha "$img" 16 4)" "$(guest_out before_reboot)" "host sha256 of [16, 20) MiB after the reboot"
kill -0 "$backend_pid" 2>/dev/null || vmt_fail "backend exited during the guest reboot"

# 3. Backend restart (SIGTERM, start again on the same socket) under a QEMU with reconnect=1, with
# the guest idle at the restart; in-flight I/O across a restart is 55-restart-inflight.
guest_script "$VMT_TMP/reconnect.sh" "want=$pattern" <<'GUEST'
dd if=/dev/urandom of=/tmp/a bs=1M count=4 status=none
dd if=/tmp/a of=/dev/vda bs=1M seek=32 oflag=direct conv=notrunc status=none || fail "write A failed"
sha_a=$(sha256sum /tmp/a | cut -d' ' -f1)
host_sync restart
expect_eq "$(sha_region /dev/vda 32 4)" "$sha_a" "data written before the restart"
dd if=/dev/urandom of=/tmp/b bs=1M count=4 status=none
dd if=/tmp/b of=/dev/vda bs=1M seek=64 oflag=direct conv=notrunc status=none || fail "write B failed"
sha_b=$(sha256sum /tmp/b | cut -d' ' -f1)
expect_eq "$(sha_region /dev/vda 64 4)" "$sha_b" "data written after the restart"
expect_eq "$(sha_region /dev/vda 4 8)" "$want" "guest 1's pattern after the restart"
out a "$sha_a"
out b "$sha_b"
GUEST
VMT_CHARDEV_OPTS=",reconnect=1" guest_start "$sock" "$VMT_TMP/reconnect.sh"
guest_sync_wait restart
stop_backend b
start_backend b "$img" "$sock" --num-queues 2
guest_sync_reply restart
guest_wait
stop_backend b
expect_eq "$(img_sha "$img" 32 4)" "$(guest_out a)" "host sha256 of A (before restart)"
expect_eq "$(img_sha "$img" 64 4)" "$(guest_out b)" "host sha256 of B (after restart)"
expect_eq "$(img_sha "$img" 4 8)" "$pattern" "host sha256 of guest 1's pattern at the end"

#!/bin/bash
# vm-tests/scenarios/40-readonly.sh: a --readonly export is read-only in the guest (sysfs ro = 1,
# O_DIRECT writes fail), still reads the image's bytes, and leaves the image unchanged.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init readonly

img="$VMT_TMP/disk.img"
sock="$VMT_TMP/blk.sock"
fill_random "$img" 32
sum_before=$(file_sha "$img")
mtime_before=$(stat -c %y "$img")
start_backend b "$img" "$sock" --readonly --num-queues 2

guest_script "$VMT_TMP/test.sh" "want_sha=$(img_sha "$img" 0 32)" <<'GUEST'
expect_eq "$(cat /sys/block/vda/ro)" 1 "/sys/block/vda/ro"
expect_eq "$(blockdev --getro /dev/vda)" 1 "blockdev --getro"
expect_eq "$(sha_region /dev/vda 0 32)" "$want_sha" "sha256 of the read-only disk"
if dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct conv=notrunc status=none 2>/tmp/dd.err; then
    fail "O_DIRECT write to the read-only disk succeeded"
fi
out dd_error "$(tr ' ' '_' </tmp/dd.err | head -n1)"
if dd if=/dev/zero of=/dev/vda bs=4k count=1 seek=100 conv=notrunc,fsync status=none 2>/dev/null; then
    fail "buffered write + fsync to the read-only disk succeeded"
fi
if mkfs.ext4 -q -F /dev/vda >/dev/null 2>&1; then fail "mkfs.ext4 on the read-only disk succeeded"; fi
expect_eq "$(sha_region /dev/vda 0 32)" "$want_sha" "sha256 of the read-only disk after the write attempts"
GUEST
run_guest "$sock" "$VMT_TMP/test.sh"
stop_backend b
expect_eq "$(file_sha "$img")" "$sum_before" "host sha256 of the image"
expect_eq "$(stat -c %y "$img")" "$mtime_before" "image mtime"
vmt_log "guest write error: $(guest_out dd_error)"

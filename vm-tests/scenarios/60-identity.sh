#!/bin/bash
# vm-tests/scenarios/60-identity.sh: the guest sees the image's capacity (size * 512 == image bytes)
# and the serial: the --serial value (20 bytes, the virtio maximum) or a non-empty default.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init identity

img="$VMT_TMP/disk.img"
sock="$VMT_TMP/blk.sock"
# 64 MiB + 3 sectors: a capacity that is not a multiple of 4 KiB.
size=$((64 * 1024 * 1024 + 3 * 512))
make_image "$img" "$size"

# No --serial: the guest must still see a non-empty serial.
start_backend b "$img" "$sock" --num-queues 2
guest_script "$VMT_TMP/default.sh" "want_bytes=$size" <<'GUEST'
expect_eq "$(($(cat /sys/block/vda/size) * 512))" "$want_bytes" "capacity in bytes"
expect_eq "$(blockdev --getsize64 /dev/vda)" "$want_bytes" "blockdev --getsize64"
serial=$(cat /sys/block/vda/serial)
[ -n "$serial" ] || fail "default serial is empty"
out serial "$serial"
# The last sector is readable and writable; one past it is not.
last=$((want_bytes / 512 - 1))
printf 'VMT-LAST-SECTOR' | dd of=/dev/vda bs=512 seek="$last" count=1 conv=sync,notrunc oflag=direct status=none ||
    fail "write to the last sector failed"
if dd if=/dev/vda of=/dev/null bs=512 skip=$((last + 1)) count=1 iflag=direct status=none 2>/dev/null &&
    [ -n "$(dd if=/dev/vda bs=512 skip=$((last + 1)) count=1 iflag=direct status=none | head -c 1)" ]; then
    fail "read past the last sector returned data"
fi
GUEST
run_guest "$sock" "$VMT_TMP/default.sh"
stop_backend b
vmt_log "default serial: $(guest_out serial)"
expect_eq "$(stat -c %s "$img")" "$size" "image size after the guest"
expect_eq "$(dd if="$img" bs=512 skip=$((size / 512 - 1)) count=1 status=none | head -c 15)" "VMT-LAST-SECTOR" \
    "last sector of the image on the host"

if [ "$VMT_BACKEND" = qsd ]; then
    vmt_note "--serial check skipped for qsd"
    exit 0
fi
serial=VMTSERIAL-0123456789
start_backend b "$img" "$sock" --num-queues 2 --serial "$serial"
guest_script "$VMT_TMP/serial.sh" "want_serial=$serial" <<'GUEST'
expect_eq "$(cat /sys/block/vda/serial)" "$want_serial" "/sys/block/vda/serial"
GUEST
run_guest "$sock" "$VMT_TMP/serial.sh"
stop_backend b

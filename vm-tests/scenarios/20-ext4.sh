#!/bin/bash
# vm-tests/scenarios/20-ext4.sh: mkfs.ext4, mount, write files, sync, remount and verify, umount,
# e2fsck -fn in the guest; then on the host e2fsck -fn of the image and file contents via debugfs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init ext4

img="$VMT_TMP/disk.img"
sock="$VMT_TMP/blk.sock"
make_image "$img" 128M
start_backend b "$img" "$sock" --num-queues 2

guest_script "$VMT_TMP/test.sh" <<'GUEST'
mkfs.ext4 -q -F -L vmt /dev/vda || fail "mkfs.ext4 failed"
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt || fail "mount failed"
mkdir /mnt/data
for i in 1 2 3 4 5 6 7 8; do
    dd if=/dev/urandom of="/mnt/data/f$i" bs=4k count=$((i * 97)) status=none
done
dd if=/dev/urandom of=/mnt/data/big bs=1M count=16 status=none
(cd /mnt/data && sha256sum f* big >/tmp/manifest)
sync
umount /mnt || fail "umount failed"
mount -t ext4 /dev/vda /mnt || fail "second mount failed"
(cd /mnt/data && sha256sum -c /tmp/manifest >/tmp/check.log 2>&1) ||
    { cat /tmp/check.log; fail "file checksums differ after remount"; }
umount /mnt || fail "second umount failed"
e2fsck -fn /dev/vda >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "guest e2fsck -fn found problems"; }
while read -r sum name; do out "$name" "$sum"; done </tmp/manifest
GUEST
run_guest "$sock" "$VMT_TMP/test.sh"
stop_backend b

e2fsck -fn "$img" >"$VMT_TMP/fsck.log" 2>&1 || { cat "$VMT_TMP/fsck.log" >&2; vmt_fail "host e2fsck -fn found problems"; }
for f in f1 f5 f8 big; do
    got=$(debugfs -R "cat /data/$f" "$img" 2>/dev/null | sha256sum | cut -d' ' -f1)
    expect_eq "$got" "$(guest_out "$f")" "host sha256 of /data/$f"
done

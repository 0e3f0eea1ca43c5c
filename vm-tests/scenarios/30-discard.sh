#!/bin/bash
# vm-tests/scenarios/30-discard.sh: blkdiscard of a region and fstrim on a mounted ext4 must punch
# holes in the image: allocated bytes drop, the region reads as zeros, the rest is unchanged.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init discard

mib=$((1024 * 1024))
zero16=$(head -c 16M /dev/zero | sha256sum | cut -d' ' -f1)

# Part 1: blkdiscard [8 MiB, 24 MiB) of a fully allocated 64 MiB image of random bytes.
img="$VMT_TMP/raw.img"
sock="$VMT_TMP/raw.sock"
fill_random "$img" 64
before=$(alloc_bytes "$img")
[ "$before" -ge $((64 * mib)) ] || vmt_fail "random image only has $before bytes allocated"
head_sha=$(img_sha "$img" 0 8)
tail_sha=$(img_sha "$img" 24 40)
start_backend raw "$img" "$sock" --num-queues 2

guest_script "$VMT_TMP/blkdiscard.sh" <<'GUEST'
max=$(cat /sys/block/vda/queue/discard_max_bytes)
[ "$max" -gt 0 ] || fail "device offers no discard (discard_max_bytes = 0)"
blkdiscard -o $((8 << 20)) -l $((16 << 20)) /dev/vda || fail "blkdiscard failed"
out discard_max "$max"
GUEST
run_guest "$sock" "$VMT_TMP/blkdiscard.sh"
stop_backend raw
after=$(alloc_bytes "$img")
vmt_log "blkdiscard: allocated $((before / mib)) MiB -> $((after / mib)) MiB"
[ $((before - after)) -ge $((16 * mib)) ] ||
    vmt_fail "blkdiscard of 16 MiB freed only $((before - after)) bytes in the image"
expect_eq "$(img_sha "$img" 8 16)" "$zero16" "discarded region reads as zeros on the host"
expect_eq "$(img_sha "$img" 0 8)" "$head_sha" "bytes before the discarded region"
expect_eq "$(img_sha "$img" 24 40)" "$tail_sha" "bytes after the discarded region"

# Part 2: fstrim of an ext4 made without discard on a fully allocated random image.
img="$VMT_TMP/fs.img"
sock="$VMT_TMP/fs.sock"
fill_random "$img" 64
before=$(alloc_bytes "$img")
start_backend fs "$img" "$sock" --num-queues 2

guest_script "$VMT_TMP/fstrim.sh" <<'GUEST'
mkfs.ext4 -q -F -E nodiscard /dev/vda || fail "mkfs.ext4 failed"
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt || fail "mount failed"
dd if=/dev/urandom of=/mnt/keep bs=1M count=4 status=none
dd if=/dev/urandom of=/mnt/gone bs=1M count=8 status=none
sha256sum /mnt/keep | cut -d' ' -f1 >/tmp/keep.sha
sync
rm /mnt/gone
sync
trimmed=$(fstrim -v /mnt | sed -n 's/.*(\([0-9]*\) bytes) trimmed.*/\1/p')
[ -n "$trimmed" ] && [ "$trimmed" -gt $((32 << 20)) ] || fail "fstrim trimmed '${trimmed}' bytes, want > 32 MiB"
out trimmed "$trimmed"
out keep "$(cat /tmp/keep.sha)"
umount /mnt
GUEST
run_guest "$sock" "$VMT_TMP/fstrim.sh"
stop_backend fs
after=$(alloc_bytes "$img")
vmt_log "fstrim: guest trimmed $(($(guest_out trimmed) / mib)) MiB, allocated $((before / mib)) MiB -> $((after / mib)) MiB"
[ $((before - after)) -ge $((32 * mib)) ] ||
    vmt_fail "fstrim freed only $((before - after)) bytes in the image, want >= 32 MiB"
e2fsck -fn "$img" >"$VMT_TMP/fsck.log" 2>&1 || { cat "$VMT_TMP/fsck.log" >&2; vmt_fail "host e2fsck -fn after fstrim"; }
expect_eq "$(debugfs -R "cat /keep" "$img" 2>/dev/null | sha256sum | cut -d' ' -f1)" "$(guest_out keep)" \
    "host sha256 of /keep after fstrim"

#!/bin/bash
# demo.sh: the main job, end to end: builds snapblk, builds a small Linux guest, serves a fresh
# 1 GiB disk image over vhost-user-blk and boots the guest on it under QEMU. The guest formats
# the disk, writes and reads files, and its console is shown. Run as root on Debian 12.
# DEMO_IMAGE=PATH serves that raw image or block device instead (created, sparse 1 GiB, if it
# does not exist; the guest formats it).
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/install-deps.sh
cargo build --release --locked
bash vm-tests/build-guest.sh

export VMT_BACKEND=snapblk
# shellcheck source=vm-tests/lib.sh
. vm-tests/lib.sh
vmt_init demo
img="${DEMO_IMAGE:-$VMT_TMP/demo.img}"
[ -e "$img" ] || truncate -s 1G "$img"
sock="$VMT_TMP/demo.sock"
start_backend snapblk "$img" "$sock" --num-queues 2
echo "snapblk is serving $img on $sock; booting a guest on it (QEMU, TCG)..."

guest_script "$VMT_TMP/demo-guest.sh" <<'GUEST'
set -x
cat /sys/block/vda/serial; echo
echo "capacity: $(($(cat /sys/block/vda/size) * 512)) bytes, queues: $(ls /sys/block/vda/mq | wc -l)"
mkfs.ext4 -q -F /dev/vda
mkdir -p /mnt && mount /dev/vda /mnt
for i in 1 2 3; do dd if=/dev/urandom of=/mnt/file$i bs=1M count=8 status=none; done
sha256sum /mnt/file* > /mnt/SUMS
sync && echo 3 > /proc/sys/vm/drop_caches
sha256sum -c /mnt/SUMS
df -h /mnt
ls -l /mnt
umount /mnt
e2fsck -fn /dev/vda
GUEST
run_guest "$sock" "$VMT_TMP/demo-guest.sh"
# The console as plain text: the firmware's screen resets and colour codes would garble the
# terminal, and a log of it.
console_text "$VMT_GUEST_DIR/console.log" | grep -av '^VMT-' | sed 's/^/guest| /'
stop_backend snapblk
echo "demo: the guest used the snapblk disk; snapblk stopped cleanly (SIGTERM, exit 0)."

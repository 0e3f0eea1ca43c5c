#!/bin/bash
# vm-tests/scenarios/10-rw-checksums-2q.sh: two queues, two fio writers on two CPUs with crc32c
# verify, read-back verify, and the host checks the image holds the bytes the guest read.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init rw-checksums-2q

img="$VMT_TMP/disk.img"
sock="$VMT_TMP/blk.sock"
make_image "$img" 256M
start_backend b "$img" "$sock" --num-queues 2

guest_script "$VMT_TMP/test.sh" <<'GUEST'
expect_eq "$(nproc)" 2 "guest CPUs"
expect_eq "$(ls /sys/block/vda/mq | wc -l)" 2 "virtio-blk queues (hctx)"
expect_eq "$(cat /sys/block/vda/mq/0/cpu_list),$(cat /sys/block/vda/mq/1/cpu_list)" "0,1" "CPU to queue map"
# irqs Q: completion interrupts of request queue Q so far (summed over CPUs).
irqs() { awk -v q="virtio0-req.$1" '$NF == q {for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) s += $i} END {print s + 0}' /proc/interrupts; }
before0=$(irqs 0) before1=$(irqs 1)
fio_job=(--filename=/dev/vda --direct=1 --ioengine=libaio --iodepth=8 --thread
    --rw=randwrite --bsrange=4k-64k --size=32M --offset_increment=32M --numjobs=2
    --cpus_allowed=0,1 --cpus_allowed_policy=split --verify=crc32c --verify_fatal=1
    --randseed=4242 --group_reporting --output-format=terse)
fio --name=write "${fio_job[@]}" --do_verify=1 >/tmp/fio-write.log 2>&1 ||
    { cat /tmp/fio-write.log; fail "fio write+verify failed"; }
echo 3 >/proc/sys/vm/drop_caches
fio --name=write "${fio_job[@]}" --verify_only=1 >/tmp/fio-verify.log 2>&1 ||
    { cat /tmp/fio-verify.log; fail "fio read-back verify failed"; }
n0=$(($(irqs 0) - before0)) n1=$(($(irqs 1) - before1))
out irqs0 "$n0"
out irqs1 "$n1"
[ "$n0" -gt 100 ] && [ "$n1" -gt 100 ] || fail "completion interrupts per queue $n0/$n1: both queues should see the I/O"
out sha0_64 "$(sha_region /dev/vda 0 64)"
out sha64_32 "$(sha_region /dev/vda 64 32)"
GUEST
run_guest "$sock" "$VMT_TMP/test.sh"
stop_backend b

expect_eq "$(img_sha "$img" 0 64)" "$(guest_out sha0_64)" "host sha256 of image [0, 64 MiB)"
expect_eq "$(img_sha "$img" 64 32)" "$(guest_out sha64_32)" "host sha256 of image [64, 96 MiB) (untouched)"
expect_eq "$(guest_out sha64_32)" "$(head -c 32M /dev/zero | sha256sum | cut -d' ' -f1)" "untouched region is zero"
vmt_log "completion irqs per queue: $(guest_out irqs0) / $(guest_out irqs1)"

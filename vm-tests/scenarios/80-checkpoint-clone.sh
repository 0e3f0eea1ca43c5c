#!/bin/bash
# vm-tests/scenarios/80-checkpoint-clone.sh: instant checkpoint clone of a running guest over the
# live control plane. Guest 1 on the origin export rewrites numbered 4 KiB blocks one O_DIRECT write
# at a time (generation 1 -> 2) and prints its progress; mid-stream the host takes a snapshot with
# `snapblk snapshot create` and exports it writable; guest 2 boots from that clone while guest 1 keeps
# writing. The clone must be one consistent point of guest 1's stream: every block whole (gen 1 or
# gen 2, never torn), gen 2 exactly on a prefix [0, k), with k between the progress the host saw
# before the snapshot and the first block guest 1 started after it heard the snapshot was taken.
# Guest 2's writes stay in the clone: guest 1 (and the origin image on the host) never see them,
# and guest 1 never sees an I/O error. The snapshot is `--resettable`: after guest 2 is done, and
# while guest 1 keeps writing the origin, `clone reset` returns the clone to the checkpoint, which
# a third guest checks (the origin chunks changed since are restored from the hidden anchor).
# snapblk only (the control plane).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init_multi checkpoint-clone

if [ "$VMT_BACKEND" != snapblk ]; then
    vmt_skip "skipped for $VMT_BACKEND (needs snapblk's control plane)"
fi

img="$VMT_TMP/origin.img"
ctlsock="$VMT_TMP/ctl.sock"
osock="$VMT_TMP/origin.sock"
csock="$VMT_TMP/clone.sock"
make_image "$img" 64M
start_backend_control d "$ctlsock" "$VMT_TMP/state"
ctl origin add vm1 --image "$img" >/dev/null
ctl_export_add vm1 "$osock"

# Layout, in 4 KiB blocks: A = the stream (N blocks from block 1024 = 4 MiB), C = [16, 20) MiB
# written before the snapshot, D = [32, 33) MiB rewritten in a loop after the stream (load while
# the clone runs), E = [40, 44) MiB written by the clone only.
N=768
A=1024
layout=("N=$N" "A=$A" C=4096 NC=1024 D=8192 ND=256 E=40)

guest_script "$VMT_TMP/writer.sh" "${layout[@]}" <<GUEST
$VMT_BLOCK_FN
GUEST
cat >>"$VMT_TMP/writer.sh" <<'GUEST'
vmt_blocks 1 0 "$N" >/tmp/g1
vmt_blocks 2 0 "$N" >/tmp/g2
vmt_blocks c 0 "$NC" >/tmp/gc
vmt_blocks d 0 "$ND" >/tmp/gd
dd if=/tmp/g1 of=/dev/vda bs=4k seek="$A" oflag=direct conv=notrunc status=none || fail "gen 1 write failed"
dd if=/tmp/gc of=/dev/vda bs=4k seek="$C" oflag=direct conv=notrunc status=none || fail "C write failed"
sha_g2=$(sha256sum </tmp/g2 | cut -d' ' -f1)
sha_gc=$(sha256sum </tmp/gc | cut -d' ' -f1)
sha_gd=$(sha256sum </tmp/gd | cut -d' ' -f1)
sha_e=$(head -c $((4 << 20)) /dev/zero | sha256sum | cut -d' ' -f1)
stty -F /dev/ttyS1 -echo raw 2>/dev/null || true
exec 3</dev/ttyS1
# The stream: block i goes from gen 1 to gen 2, one O_DIRECT write at a time; "VMT-PROG a P" once
# P blocks are done. The host writes a line on the control port once the snapshot is taken: the
# first block started after it was read is "seen".
seen=-1
echo "VMT-PROG a 0"
for ((i = 0; i < N; i++)); do
    if [ "$seen" -lt 0 ] && read -t 0.001 -r line <&3; then seen=$i; fi
    dd if=/tmp/g2 of=/dev/vda bs=4k skip="$i" seek=$((A + i)) count=1 oflag=direct conv=notrunc status=none ||
        fail "stream write of block $i failed"
    echo "VMT-PROG a $((i + 1))"
done
[ "$seen" -ge 0 ] || fail "the snapshot was not taken while the stream ran (no word from the host)"
out seen "$seen"
expect_eq "$(dd if=/dev/vda bs=4k skip="$A" count="$N" iflag=direct status=none | sha256sum | cut -d' ' -f1)" \
    "$sha_g2" "stream region after the stream"
# Load while the clone runs: D rewritten (1 MiB, 4 KiB O_DIRECT writes) until the host says stop.
(
    n=0
    while [ ! -e /tmp/stop ]; do
        dd if=/tmp/gd of=/dev/vda bs=4k seek="$D" oflag=direct conv=notrunc status=none || { echo x >/tmp/dfail; exit 1; }
        n=$((n + 1))
        echo "VMT-PROG d $n"
    done
) &
loader=$!
host_sync clone-done
touch /tmp/stop
wait "$loader" || fail "write to D failed while the clone ran"
[ ! -e /tmp/dfail ] || fail "write to D failed while the clone ran"
expect_eq "$(dd if=/dev/vda bs=4k skip="$A" count="$N" iflag=direct status=none | sha256sum | cut -d' ' -f1)" \
    "$sha_g2" "stream region at the end (the clone wrote gen 9 over part of it)"
expect_eq "$(sha_region /dev/vda 16 4)" "$sha_gc" "C at the end (the clone overwrote it)"
expect_eq "$(sha_region /dev/vda 32 1)" "$sha_gd" "D at the end"
expect_eq "$(sha_region /dev/vda "$E" 4)" "$sha_e" "E at the end (only the clone wrote it)"
if dmesg | grep -q -e 'I/O error' -e 'blk_update_request'; then fail "guest kernel: $(dmesg | grep -m1 -e 'I/O error' -e 'blk_update_request')"; fi
GUEST

guest_script "$VMT_TMP/clone.sh" "${layout[@]}" <<GUEST
$VMT_BLOCK_FN
GUEST
cat >>"$VMT_TMP/clone.sh" <<'GUEST'
dd if=/dev/vda bs=4k skip="$A" count="$N" iflag=direct status=none >/tmp/snap
# Every 64-byte line of block b reads "vmt g1 bb" or "vmt g2 bb", the same generation over the whole
# block (else torn); k = the number of leading gen-2 blocks; no gen-2 block after a gen-1 one.
k=$(awk -v n="$N" '
    { b = int((NR - 1) / 64)
      if (length($0) != 63 || $1 != "vmt" || $3 != "b" b || ($2 != "g1" && $2 != "g2")) { print "bad line " NR ": " $0; exit 1 }
      if (NR % 64 == 1) g[b] = $2; else if (g[b] != $2) { print "torn block " b; exit 1 } }
    END { if (NR != 64 * n) { print "read " NR " lines"; exit 1 }
          k = 0; while (k < n && g[k] == "g2") k++
          for (b = k; b < n; b++) if (g[b] != "g1") { print "not a prefix: block " b " is gen 2 after gen 1 at " k; exit 1 }
          print k }' /tmp/snap) || fail "clone's stream region is no consistent point: $k"
{ vmt_blocks 2 0 "$k"; vmt_blocks 1 "$k" $((N - k)); } >/tmp/want
expect_eq "$(sha256sum </tmp/snap | cut -d' ' -f1)" "$(sha256sum </tmp/want | cut -d' ' -f1)" "clone's stream region (k=$k)"
expect_eq "$(sha_region /dev/vda 16 4)" "$(vmt_blocks c 0 "$NC" | sha256sum | cut -d' ' -f1)" "clone's C (written before the snapshot)"
zero1=$(head -c $((1 << 20)) /dev/zero | sha256sum | cut -d' ' -f1)
expect_eq "$(sha_region /dev/vda 32 1)" "$zero1" "clone's D (the origin wrote it only after the snapshot)"
out k "$k"
# The clone's own writes: gen 9 over C and over the first 64 stream blocks, random data in E.
vmt_blocks 9 0 "$NC" >/tmp/g9
dd if=/tmp/g9 of=/dev/vda bs=4k seek="$C" oflag=direct conv=notrunc status=none || fail "clone: C write failed"
dd if=/tmp/g9 of=/dev/vda bs=4k count=64 seek="$A" oflag=direct conv=notrunc status=none || fail "clone: A write failed"
dd if=/dev/urandom of=/tmp/e bs=1M count=4 status=none
dd if=/tmp/e of=/dev/vda bs=1M seek="$E" oflag=direct conv=notrunc status=none || fail "clone: E write failed"
expect_eq "$(sha_region /dev/vda 16 4)" "$(sha256sum </tmp/g9 | cut -d' ' -f1)" "clone's C after its write"
expect_eq "$(sha_region /dev/vda "$E" 4)" "$(sha256sum </tmp/e | cut -d' ' -f1)" "clone's E after its write"
{ head -c $((64 * 4096)) /tmp/g9; tail -c +$((64 * 4096 + 1)) /tmp/want; } >/tmp/want2
expect_eq "$(dd if=/dev/vda bs=4k skip="$A" count="$N" iflag=direct status=none | sha256sum | cut -d' ' -f1)" \
    "$(sha256sum </tmp/want2 | cut -d' ' -f1)" "clone's stream region after its write"
if dmesg | grep -q -e 'I/O error'; then fail "guest kernel: $(dmesg | grep -m1 -e 'I/O error')"; fi
GUEST

guest_start_n 1 "$osock" "$VMT_TMP/writer.sh"
wait_prog_n 1 a $((N / 5))
lo=$(guest_prog_n 1 a)
snap=$(ctl snapshot create vm1 ckpt --cow "$VMT_TMP/ckpt.cow" --size 1G --chunk-size 4k --resettable --json)
pause=$(json_field "$snap" vm1)
guest_use 1
guest_sync_reply snap
hi=$(guest_prog_n 1 a)
[ -n "$pause" ] || vmt_fail "no pause for vm1 in: $snap"
vmt_log "snapshot taken after $lo stream blocks (host view; $hi after), writes paused ${pause} us"
vmt_note "snapshot pause ${pause} us under a guest's O_DIRECT stream"
[ "$hi" -lt "$N" ] || vmt_fail "the stream ended before the snapshot returned (lo=$lo hi=$hi)"

ctl_export_add ckpt "$csock"
guest_start_n 2 "$csock" "$VMT_TMP/clone.sh"
guest_wait_n 2
k=$(guest_out k)
at_clone_end=$(guest_prog_n 1 a)
d_at_clone_end=$(guest_prog_n 1 d)
guest_use 1
guest_sync_wait clone-done
seen=$(guest_out seen)
vmt_log "clone point k=$k; host saw $lo blocks done before the snapshot, guest 1 heard of it at block $seen"
vmt_log "guest 1 at the clone's end: stream $at_clone_end/$N, D rewritten $d_at_clone_end times"
[ "$k" -ge "$lo" ] || vmt_fail "clone point $k is before the $lo blocks done before the snapshot"
[ "$k" -le "$seen" ] || vmt_fail "clone point $k is after block $seen, started after the snapshot returned"

# Reset the clone while guest 1 keeps rewriting D; a third guest finds the checkpoint again.
t0=$(date +%s%N)
ctl clone reset ckpt >/dev/null
vmt_log "clone reset under origin writes took $((($(date +%s%N) - t0) / 1000000)) ms"
guest_script "$VMT_TMP/reset.sh" "${layout[@]}" "k=$k" <<GUEST
$VMT_BLOCK_FN
GUEST
cat >>"$VMT_TMP/reset.sh" <<'GUEST'
want=$({ vmt_blocks 2 0 "$k"; vmt_blocks 1 "$k" $((N - k)); } | sha256sum | cut -d' ' -f1)
expect_eq "$(dd if=/dev/vda bs=4k skip="$A" count="$N" iflag=direct status=none | sha256sum | cut -d' ' -f1)" \
    "$want" "reset clone's stream region (the checkpoint, k=$k)"
expect_eq "$(sha_region /dev/vda 16 4)" "$(vmt_blocks c 0 "$NC" | sha256sum | cut -d' ' -f1)" "reset clone's C"
zero1=$(head -c $((1 << 20)) /dev/zero | sha256sum | cut -d' ' -f1)
expect_eq "$(sha_region /dev/vda 32 1)" "$zero1" "reset clone's D (rewritten by the origin meanwhile)"
expect_eq "$(sha_region /dev/vda "$E" 4)" "$(head -c $((4 << 20)) /dev/zero | sha256sum | cut -d' ' -f1)" "reset clone's E"
if dmesg | grep -q -e 'I/O error'; then fail "guest kernel: $(dmesg | grep -m1 -e 'I/O error')"; fi
GUEST
guest_start_n 3 "$csock" "$VMT_TMP/reset.sh"
guest_wait_n 3
# A few rounds of D (writes after the stream, with the snapshot attached) before stopping.
wait_prog_n 1 d 3 120
guest_sync_reply clone-done
guest_wait_n 1

stats=$(ctl stats --json)
for e in $(json_fields "$stats" errors); do expect_eq "$e" 0 "export errors in: $stats"; done
list=$(ctl snapshot list --json)
expect_eq "$(json_field "$list" name)" ckpt "snapshot list"
exc=$(json_field "$list" exceptions)
[ "$exc" -gt 0 ] || vmt_fail "snapshot ckpt has no exceptions after both guests wrote: $list"
vmt_log "ckpt: $exc exceptions, $(json_field "$list" used_bytes) bytes used"
stop_backend d

# Host side: the origin image holds guest 1's data only.
expect_eq "$(dd if="$img" bs=4k skip=$A count=$N status=none | sha256sum | cut -d' ' -f1)" \
    "$(vmt_blocks 2 0 $N | sha256sum | cut -d' ' -f1)" "host: origin's stream region"
expect_eq "$(img_sha "$img" 16 4)" "$(vmt_blocks c 0 1024 | sha256sum | cut -d' ' -f1)" "host: origin's C"
expect_eq "$(img_sha "$img" 32 1)" "$(vmt_blocks d 0 256 | sha256sum | cut -d' ' -f1)" "host: origin's D"
expect_eq "$(img_sha "$img" 40 4)" "$(head -c $((4 << 20)) /dev/zero | sha256sum | cut -d' ' -f1)" "host: origin's E"
g9=$(grep -a -c 'vmt g9 ' "$img" || true)
expect_eq "$g9" 0 "host: lines of the clone's gen 9 in the origin image"

#!/bin/bash
# vm-tests/scenarios/88-merge-under-load.sh: online merge of a snapshot back into its origin while a
# guest writes to the origin. The origin (random data) is exported; a persistent snapshot of it is
# exported too, and guest A writes 192 MiB over region S through the snapshot and powers off. Guest B
# boots on the origin export (and sees S unchanged there), then, once the host has started
# `snapblk merge start --wait`, rewrites region W in a loop during the merge. The snapshot never
# had W (nothing wrote W before the merge started), so afterwards the origin holds guest A's S, guest
# B's W and the original data everywhere else: checked by guest B and, with the daemon stopped, on
# the host image. The snapshot and its export are gone after the merge. snapblk only.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init_multi merge-under-load

if [ "$VMT_BACKEND" != snapblk ]; then
    vmt_skip "skipped for $VMT_BACKEND (needs snapblk's control plane)"
fi

img="$VMT_TMP/origin.img"
ctlsock="$VMT_TMP/ctl.sock"
osock="$VMT_TMP/origin.sock"
ssock="$VMT_TMP/snap.sock"
# Regions in MiB: K0 = [0, 64) random, kept; S = [64, 256) written through the snapshot; W =
# [448, 456) written to the origin during the merge; K2 = [456, 512) zeros, kept. S is large so the
# merge (49152 exceptions of 4 KiB) lasts long enough for the guest to write during it.
make_image "$img" 512M
dd if=/dev/urandom of="$img" bs=1M count=64 conv=notrunc,fsync status=none
k0=$(img_sha "$img" 0 64)
zs=$(img_sha "$img" 64 192)
zw=$(img_sha "$img" 448 8)
k2=$(img_sha "$img" 456 56)

start_backend_control d "$ctlsock" "$VMT_TMP/state"
ctl origin add vm --image "$img" >/dev/null
ctl_export_add vm "$osock"
ctl snapshot create vm snap --cow "$VMT_TMP/snap.cow" --size 1G --chunk-size 4k >/dev/null
ctl_export_add snap "$ssock"

# Guest A: S = 6 segments of 32 MiB, segment i = a 32 MiB random buffer P rotated by i MiB (each
# segment differs, so a misplaced MiB shows). The host rebuilds the expected S from segment 0.
guest_script "$VMT_TMP/snapwrite.sh" "k0=$k0" "zw=$zw" <<'GUEST'
expect_eq "$(sha_region /dev/vda 0 64)" "$k0" "snapshot's K0"
dd if=/dev/urandom of=/tmp/p bs=1M count=32 status=none
for i in $(seq 0 5); do
    base=$((64 + 32 * i))
    dd if=/tmp/p of=/dev/vda bs=1M skip="$i" seek="$base" oflag=direct conv=notrunc status=none ||
        fail "S write of segment $i failed"
    [ "$i" -eq 0 ] || dd if=/tmp/p of=/dev/vda bs=1M count="$i" seek=$((base + 32 - i)) oflag=direct conv=notrunc status=none ||
        fail "S write of segment $i failed"
done
p_sha=$(sha256sum </tmp/p | cut -d' ' -f1)
s7=$({ tail -c +$((5 * 1048576 + 1)) /tmp/p; head -c $((5 * 1048576)) /tmp/p; } | sha256sum | cut -d' ' -f1)
expect_eq "$(sha_region /dev/vda $((64 + 32 * 5)) 32)" "$s7" "snapshot's segment 5 read back"
expect_eq "$(sha_region /dev/vda 448 8)" "$zw" "snapshot's W"
out p "$p_sha"
out s7 "$s7"
GUEST
guest_start_n a "$ssock" "$VMT_TMP/snapwrite.sh"
guest_wait_n a
p_sha=$(guest_out p)
s7=$(guest_out s7)
list=$(ctl snapshot list --json)
exc=$(json_field "$list" exceptions)
[ "$exc" -ge 49152 ] || vmt_fail "snapshot has $exc exceptions after 192 MiB of 4 KiB chunks, want >= 49152"
expect_eq "$(img_sha "$img" 64 192)" "$zs" "host: origin's S after the snapshot's writes"

guest_script "$VMT_TMP/origin.sh" "zs0=$(img_sha "$img" 64 32)" "s0=$p_sha" "s7=$s7" "k0=$k0" "k2=$k2" <<'GUEST'
expect_eq "$(sha_region /dev/vda 64 32)" "$zs0" "origin's first 32 MiB of S before the merge"
dd if=/dev/urandom of=/tmp/w bs=1M count=8 status=none
w_sha=$(sha256sum </tmp/w | cut -d' ' -f1)
host_sync merging
# W rewritten (16 KiB O_DIRECT writes, 256 KiB per round) from the merge's start until the host
# says it ended; "VMT-PROG w N" after N rounds.
(
    n=0
    while [ ! -e /tmp/stop ]; do
        dd if=/tmp/w of=/dev/vda bs=16k skip=$((n % 32 * 16)) seek=$((448 * 64 + n % 32 * 16)) count=16 \
            oflag=direct conv=notrunc status=none || { echo x >/tmp/wfail; exit 1; }
        n=$((n + 1))
        echo "VMT-PROG w $n"
    done
    # Complete W (the last rounds may have stopped part-way through it).
    dd if=/tmp/w of=/dev/vda bs=16k seek=$((448 * 64)) oflag=direct conv=notrunc status=none || echo x >/tmp/wfail
) &
writer=$!
host_sync merged
touch /tmp/stop
wait "$writer" || fail "a write to W failed during the merge"
[ ! -e /tmp/wfail ] || fail "a write to W failed during the merge"
expect_eq "$(sha_region /dev/vda 448 8)" "$w_sha" "origin's W after the merge"
expect_eq "$(sha_region /dev/vda 64 32)" "$s0" "origin's first 32 MiB of S after the merge (the snapshot's data)"
expect_eq "$(sha_region /dev/vda $((64 + 32 * 5)) 32)" "$s7" "origin's last 32 MiB of S after the merge"
expect_eq "$(sha_region /dev/vda 0 64)" "$k0" "origin's K0 after the merge"
expect_eq "$(sha_region /dev/vda 456 56)" "$k2" "origin's K2 after the merge"
if dmesg | grep -q -e 'I/O error'; then fail "guest kernel: $(dmesg | grep -m1 -e 'I/O error')"; fi
out w "$w_sha"
GUEST
guest_start_n b "$osock" "$VMT_TMP/origin.sh"
guest_sync_wait merging
# The merge starts first, then the guest writes W: the snapshot must never hold W.
"$SNAPBLK" merge start snap --wait >"$VMT_TMP/merge.out" 2>&1 &
merge_pid=$!
merge_state() { json_field "$("$SNAPBLK" merge status --json 2>/dev/null)" state; }
merge_started() { [ -n "$(merge_state)" ] && return 0; kill -0 "$merge_pid" 2>/dev/null || return 2; return 1; }
wait_for 20 merge_started || true
state=$(merge_state)
vmt_log "merge state when the guest starts writing: ${state:-none}"
guest_sync_reply merging
# Overlap, soundly: rounds the guest had completed before a `merge status` that still said running.
overlap=0
while kill -0 "$merge_pid" 2>/dev/null; do
    p=$(guest_prog_n b w)
    [ "$(merge_state)" != running ] || overlap=$p
done
rc=0
wait "$merge_pid" || rc=$?
cat "$VMT_TMP/merge.out" >>"$VMT_TMP/ctl.log"
[ "$rc" -eq 0 ] || vmt_fail "merge start --wait (status $rc): $(cat "$VMT_TMP/merge.out")"
mstatus=$(ctl merge status --json)
expect_eq "$(json_field "$mstatus" state)" finished "merge state after merge start --wait: $mstatus"
secs=$(json_field "$mstatus" elapsed_s)
vmt_log "merge: $(json_field "$mstatus" total_exceptions) exceptions in $secs s; $((overlap * 256)) KiB of guest writes to W done while it ran"
vmt_note "merge of $exc exceptions: $secs s, $((overlap * 256)) KiB of guest writes to the origin completed while it ran"
[ "$overlap" -ge 1 ] || vmt_fail "no guest write completed while the merge ran (state at the guest's start: ${state:-none}, merge $secs s)"
guest_use b
guest_sync_wait merged
guest_sync_reply merged
guest_wait_n b
w_sha=$(guest_out w)

expect_eq "$(ctl snapshot list --json)" '{"snapshots":[]}' "snapshot list after the merge"
exports=$(ctl export list --json)
case "$exports" in *"$ssock"*) vmt_fail "the merged snapshot's export is still listed: $exports" ;; esac
events=$(ctl events --json)
case "$events" in *'"kind":"merge_finished","node":"snap"'*) ;; *) vmt_fail "no merge_finished event for snap: $events" ;; esac
stats=$(ctl stats --json)
for e in $(json_fields "$stats" errors); do expect_eq "$e" 0 "export errors in: $stats"; done
stop_backend d
if grep -a -e ERROR "$VMT_TMP/d.backend.log" >&2; then vmt_fail "errors in the daemon's log (above)"; fi

# S: segment 0 is P itself; the whole of S must be P's 6 rotations.
dd if="$img" bs=1M skip=64 count=32 status=none >"$VMT_TMP/p"
expect_eq "$(file_sha "$VMT_TMP/p")" "$p_sha" "host: origin's S segment 0 (the snapshot's P)"
s_sha=$(for i in 0 1 2 3 4 5; do
    tail -c +$((i * 1048576 + 1)) "$VMT_TMP/p"
    head -c $((i * 1048576)) "$VMT_TMP/p"
done | sha256sum | cut -d' ' -f1)
expect_eq "$(img_sha "$img" 64 192)" "$s_sha" "host: origin's S (the snapshot's writes)"
expect_eq "$(img_sha "$img" 256 192)" "$(head -c $((192 << 20)) /dev/zero | sha256sum | cut -d' ' -f1)" "host: origin's [256, 448) MiB"
expect_eq "$(img_sha "$img" 448 8)" "$w_sha" "host: origin's W (guest B's writes during the merge)"
expect_eq "$(img_sha "$img" 0 64)" "$k0" "host: origin's K0"
expect_eq "$(img_sha "$img" 456 56)" "$k2" "host: origin's K2"

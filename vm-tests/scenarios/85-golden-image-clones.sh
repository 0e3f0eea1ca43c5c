#!/bin/bash
# vm-tests/scenarios/85-golden-image-clones.sh: the CI golden-image pattern over the live control
# plane. One golden origin (random data, not exported), three persistent snapshots of it exported
# writable, three guests running at once, one per clone. Each guest reads the golden data, writes
# its own marker at the same shared place and in a private region, waits until all three have
# written, and checks it sees only its own writes. On the host: the golden image is unchanged at the
# end, and `snapshot list`/`status` show the three snapshots with exceptions. Then `clone reset`
# of clone 2 while its guest stays running: that guest reads the golden contents again (O_DIRECT)
# and the others keep theirs. snapblk only.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init_multi golden-image-clones

if [ "$VMT_BACKEND" != snapblk ]; then
    vmt_skip "skipped for $VMT_BACKEND (needs snapblk's control plane)"
fi

golden="$VMT_TMP/golden.img"
ctlsock="$VMT_TMP/ctl.sock"
fill_random "$golden" 64
golden_sha=$(file_sha "$golden")
golden_mtime=$(stat -c %Y.%y "$golden")
# Golden shas of the regions (MiB): [0, 8) [8, 12) [12, 20) [20, 24) [24, 28) [28, 32) [32, 64).
gs=()
for r in "0 8" "8 4" "12 8" "20 4" "24 4" "28 4" "32 32"; do
    # shellcheck disable=SC2086 # two numbers
    gs+=("$(img_sha "$golden" $r)")
done

start_backend_control d "$ctlsock" "$VMT_TMP/state"
ctl origin add golden --image "$golden" >/dev/null
for j in 1 2 3; do
    ctl snapshot create golden ci$j --cow "$VMT_TMP/ci$j.cow" --size 256M --chunk-size 4k --store P >/dev/null
    ctl_export_add ci$j "$VMT_TMP/ci$j.sock" --serial ci$j
done

# Guest j: marker blocks "gjJ" over the shared [8, 12) MiB, random data over its private
# [16 + 4j, 20 + 4j) MiB; the other private regions and the rest stay golden for it.
guest_script "$VMT_TMP/ci.sh" "golden_sha=$golden_sha" "g0_8=${gs[0]}" "g12_8=${gs[2]}" \
    "g20=${gs[3]}" "g24=${gs[4]}" "g28=${gs[5]}" "g32_32=${gs[6]}" <<GUEST
$VMT_BLOCK_FN
GUEST
cat >>"$VMT_TMP/ci.sh" <<'GUEST'
id=$(cat /sys/block/vda/serial)
id=${id#ci}
case "$id" in 1 | 2 | 3) ;; *) fail "unexpected disk serial '$(cat /sys/block/vda/serial)'" ;; esac
out id "$id"
expect_eq "$(sha_region /dev/vda 0 64)" "$golden_sha" "golden data seen by clone $id"
vmt_blocks "j$id" 0 1024 >/tmp/mark
dd if=/tmp/mark of=/dev/vda bs=4k seek=2048 oflag=direct conv=notrunc status=none || fail "marker write failed"
dd if=/dev/urandom of=/tmp/own bs=1M count=4 status=none
own=$((16 + 4 * id))
dd if=/tmp/own of=/dev/vda bs=1M seek="$own" oflag=direct conv=notrunc status=none || fail "private write failed"
host_sync written
expect_eq "$(sha_region /dev/vda 8 4)" "$(sha256sum </tmp/mark | cut -d' ' -f1)" "clone $id: its marker at [8, 12) MiB"
expect_eq "$(sha_region /dev/vda "$own" 4)" "$(sha256sum </tmp/own | cut -d' ' -f1)" "clone $id: its private region"
expect_eq "$(sha_region /dev/vda 0 8)" "$g0_8" "clone $id: [0, 8) MiB golden"
expect_eq "$(sha_region /dev/vda 12 8)" "$g12_8" "clone $id: [12, 20) MiB golden"
for k in 1 2 3; do
    [ "$k" != "$id" ] || continue
    r=$((16 + 4 * k))
    want=$(eval echo "\$g$r")
    expect_eq "$(sha_region /dev/vda "$r" 4)" "$want" "clone $id: clone $k's private region [$r, $((r + 4))) MiB golden"
done
expect_eq "$(sha_region /dev/vda 32 32)" "$g32_32" "clone $id: [32, 64) MiB golden"
others=$(dd if=/dev/vda bs=1M iflag=direct status=none | grep -a -c -E "^vmt gj[^$id ]" || true)
expect_eq "$others" 0 "clone $id: lines of other clones' markers on its disk"
if [ "$id" = 2 ]; then
    host_sync reset
    expect_eq "$(sha_region /dev/vda 0 64)" "$golden_sha" "clone 2 after clone reset: the golden contents"
    dd if=/tmp/own of=/dev/vda bs=1M seek=4 oflag=direct conv=notrunc status=none || fail "write after reset failed"
    expect_eq "$(sha_region /dev/vda 4 4)" "$(sha256sum </tmp/own | cut -d' ' -f1)" "clone 2 writable after reset"
fi
if dmesg | grep -q -e 'I/O error'; then fail "guest kernel: $(dmesg | grep -m1 -e 'I/O error')"; fi
GUEST

start=$SECONDS
for j in 1 2 3; do
    guest_start_n $j "$VMT_TMP/ci$j.sock" "$VMT_TMP/ci.sh"
done
vmt_log "three guests booted in $((SECONDS - start))s"
for j in 1 2 3; do
    guest_use $j
    guest_sync_wait written
done
vmt_log "three guests wrote their markers after $((SECONDS - start))s"
# All three hold their writes now: only then may each one look for the others'.
for j in 1 2 3; do
    guest_use $j
    guest_sync_reply written
done
guest_use 2
guest_sync_wait reset
t0=$(date +%s%N)
ctl clone reset ci2 >/dev/null
vmt_log "clone reset of ci2 (guest connected) took $((($(date +%s%N) - t0) / 1000000)) ms"
guest_sync_reply reset
for j in 1 2 3; do
    guest_wait_n $j
done
vmt_log "three guests done after $((SECONDS - start))s"

list=$(ctl snapshot list --json)
mapfile -t names < <(json_fields "$list" name)
expect_eq "${names[*]}" "ci1 ci2 ci3" "snapshot list"
mapfile -t excs < <(json_fields "$list" exceptions)
# Clones 1 and 3 wrote 8 MiB in 4 KiB chunks: 2048 exceptions at least (the COW file's metadata
# aside); clone 2 only 4 MiB after its reset.
for e in "${excs[0]}" "${excs[2]}"; do
    [ "$e" -ge 2048 ] || vmt_fail "a clone has $e exceptions, want >= 2048: $list"
done
expect_eq "${excs[1]}" 1024 "exceptions of clone 2 (reset, then 4 MiB written)"
expect_eq "$(json_fields "$(ctl events --json)" kind)" "clone_reset" "events"
status=$(ctl status --json)
mapfile -t kinds < <(json_fields "$status" kind)
expect_eq "${kinds[*]}" "origin snapshot snapshot snapshot" "node kinds in status"
mapfile -t sexc < <(json_fields "$status" exceptions)
expect_eq "${sexc[*]}" "0 ${excs[*]}" "exceptions in status (origin first) vs snapshot list"
vmt_log "exceptions per clone: ${excs[*]}"
ctl status >>"$VMT_TMP/status.txt"
stats=$(ctl stats --json)
for e in $(json_fields "$stats" errors); do expect_eq "$e" 0 "export errors in: $stats"; done
stop_backend d

expect_eq "$(file_sha "$golden")" "$golden_sha" "host: golden image sha256 at the end"
expect_eq "$(stat -c %Y.%y "$golden")" "$golden_mtime" "host: golden image mtime at the end"

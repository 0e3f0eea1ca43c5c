#!/bin/bash
# vm-tests/scenarios/71-kill9-kernel-reads-cow.sh: Linux's dm-snapshot opens the COW files of a snapblk
# killed with SIGKILL under load. snapblk serves a 64 MiB origin of random bytes with two persistent
# snapshots (4 KiB and 64 KiB chunks, so copy-outs, held origin writes and group commits of both run
# at once); a guest runs fio on the origin (random writes of 4-64 KiB, 32 in flight, a flush every 16
# writes). Once both COWs hold data, the daemon gets SIGKILL mid-stream and the guest is stopped.
# Nothing was written to the snapshots, so whatever instant the kill hit, each must still read the
# origin as it was when snapblk started: the kernel's `snapshot` target built on the origin image and
# each COW must read exactly that, with `dmsetup status` equal to `snapblk cow inspect`'s, and the
# COW files must come back unchanged; then snapblk opens the same files again and serves the
# snapshots, which must read the same bytes.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source-path=SCRIPTDIR source=../dmsnap.sh
. "$(dirname "$0")/../dmsnap.sh"
vmt_init_multi kill9-kernel-reads-cow

if [ "$VMT_BACKEND" != snapblk ]; then
    vmt_skip "skipped for $VMT_BACKEND (needs snapblk's device graphs)"
fi

size=$((64 * DMS_MIB))
cow_size=$((32 * DMS_MIB))
kibs=(4 64)
origin="$VMT_TMP/origin.img"
fill_random "$origin" $((size / DMS_MIB))
cp "$origin" "$VMT_TMP/want.img"

# write_config FILE NODE...: the origin, a snapshot sK per chunk size K, an export of each NODE.
write_config() {
    local file=$1 k n
    shift
    {
        printf '[[origin]]\nname = "o"\nimage = "%s"\n\n' "$origin"
        for k in "${kibs[@]}"; do
            printf '[[snapshot]]\nname = "s%s"\norigin = "o"\ncow = "%s"\nstore = "P"\nchunk_size = "%sK"\ncreate_size = %s\n\n' \
                "$k" "$VMT_TMP/s$k.cow" "$k" "$cow_size"
        done
        for n in "$@"; do
            printf '[[export]]\nnode = "%s"\nsocket = "%s"\nnum_queues = 2\nserial = "%s"\n\n' "$n" "$VMT_TMP/$n.sock" "$n"
        done
    } >"$file"
}

# 1. fio on the origin until both COWs hold at least 2 MiB of copied chunks, then SIGKILL.
write_config "$VMT_TMP/serve.toml" o
start_backend_config sb "$VMT_TMP/serve.toml" "$VMT_TMP/o.sock"
guest_script "$VMT_TMP/fio.sh" < <(dms_guest_lib; cat <<'GUEST'
echo "VMT-PROG fio 1"
fio --name=load --filename="$(disk o)" --ioengine=libaio --direct=1 --iodepth=32 --rw=randwrite \
    --bsrange=4k-64k --fdatasync=16 --time_based --runtime=600 --randseed=7101 \
    --output=/tmp/fio.out >/dev/null 2>&1 || true
GUEST
)
guest_start_n load "$VMT_TMP/o.sock" "$VMT_TMP/fio.sh"
wait_prog_n load fio 1
# Counted from each COW's table (`snapblk cow inspect` reads a live COW), not from the blocks the
# file has: zero-ahead allocates a COW 16 MiB ahead of its chunks.
cows_hold_data() {
    local k n
    for k in "${kibs[@]}"; do
        n=$("$SNAPBLK" cow inspect "$VMT_TMP/s$k.cow" 2>/dev/null |
            awk '$1 == "exceptions:" {print $2; found = 1} END {exit !found}') || return 1
        [ "$((n * k * 1024))" -ge $((2 * DMS_MIB)) ] || return 1
    done
}
wait_for "$VMT_TIMEOUT" cows_hold_data || vmt_fail "the COWs did not reach 2 MiB of copied chunks under fio"
kill_backend sb
# TERM, not KILL: the PID is `timeout`'s (see guest_start), which passes TERM on to QEMU; a KILL
# left QEMU running on, orphaned, for the rest of the run.
kill -TERM "${VMT_GN_PID[load]}" 2>/dev/null || true
wait "${VMT_GN_PID[load]}" 2>/dev/null || true
VMT_GN_PID[load]=
VMT_GUEST_PID=
for k in "${kibs[@]}"; do
    vmt_log "${k}K chunks at the kill: $(dms_inspect "$VMT_TMP/s$k.cow" exceptions) exceptions, status $(dms_inspect "$VMT_TMP/s$k.cow" status)"
    [ "$(dms_inspect "$VMT_TMP/s$k.cow" exceptions)" -gt 0 ] || vmt_fail "${k}K chunks: no exception committed before the kill"
done
cmp -s "$origin" "$VMT_TMP/want.img" && vmt_fail "the origin image is unchanged: fio wrote nothing"

# 2. The kernel's snapshot target on the origin image and each COW reads the creation-time origin.
args=()
qemu_plain_disk args "$origin" origin
declare -A cow_sha=()
for k in "${kibs[@]}"; do
    qemu_plain_disk args "$VMT_TMP/s$k.cow" "c$k"
    dms_dump_disk args "k$k" "$size"
    cow_sha[$k]=$(file_sha "$VMT_TMP/s$k.cow")
done
guest_script "$VMT_TMP/kernel.sh" "kibs=${kibs[*]}" < <(dms_guest_lib; cat <<'GUEST'
o=$(disk origin)
sectors=$(cat "/sys/block/${o#/dev/}/size")
for k in $kibs; do
    dmsetup create "k$k" --table "0 $sectors snapshot $o $(disk "c$k") P $((k * 2))" || fail "dmsetup create k$k failed"
    out "status_$k" "$(snap_status "k$k")"
    dump "/dev/mapper/k$k" "k$k"
    dmsetup remove "k$k" || fail "dmsetup remove k$k failed"
done
GUEST
)
run_guest none "$VMT_TMP/kernel.sh" "${args[@]}"
for k in "${kibs[@]}"; do
    dms_same_bytes "$VMT_TMP/k$k.dump" "$VMT_TMP/want.img" $((k * 1024)) "${k}K chunks: the kernel's snapshot after the kill"
    expect_eq "$(guest_out "status_$k" | tr _ ' ')" "$(dms_inspect "$VMT_TMP/s$k.cow" status)" \
        "${k}K chunks: kernel dmsetup status vs snapblk cow inspect after the kill"
    expect_eq "$(file_sha "$VMT_TMP/s$k.cow")" "${cow_sha[$k]}" "${k}K chunks: COW file after the kernel read it"
    rm -f "$VMT_TMP/k$k.dump"
done

# 3. snapblk opens the same files again: its snapshots read the same bytes.
write_config "$VMT_TMP/again.toml" s4 s64
args=()
start_backend_config sb "$VMT_TMP/again.toml" "$VMT_TMP/s4.sock" "$VMT_TMP/s64.sock"
for k in "${kibs[@]}"; do
    qemu_vhost_user args "c-s$k" "$VMT_TMP/s$k.sock"
    dms_dump_disk args "s$k" "$size"
done
guest_script "$VMT_TMP/read.sh" "kibs=${kibs[*]}" < <(dms_guest_lib; cat <<'GUEST'
for k in $kibs; do dump "$(disk "s$k")" "s$k"; done
GUEST
)
run_guest none "$VMT_TMP/read.sh" "${args[@]}"
stop_backend sb
for k in "${kibs[@]}"; do
    dms_same_bytes "$VMT_TMP/s$k.dump" "$VMT_TMP/want.img" $((k * 1024)) "${k}K chunks: snapblk's snapshot export after the kill"
done
vmt_note "SIGKILL under fio with $(dms_inspect "$VMT_TMP/s4.cow" exceptions) + $(dms_inspect "$VMT_TMP/s64.cow" exceptions) exceptions committed; the kernel and snapblk read both snapshots intact"

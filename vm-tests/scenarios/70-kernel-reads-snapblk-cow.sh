#!/bin/bash
# vm-tests/scenarios/70-kernel-reads-snapblk-cow.sh: Linux's dm-snapshot reads COW files that snapblk
# wrote. snapblk serves four origins (64 MiB of random bytes) with a persistent snapshot each: three
# take a fixed write plan with 4, 16 and 64 KiB chunks (4 KiB: about 620 exceptions over three
# exception areas), the fourth (4 KiB chunks) concurrent random fio writes to origin and snapshot at
# once. One guest does the writes and reads every snapshot export whole. Then a guest gets the
# origin images and COW files as plain disks and builds the kernel's `snapshot` target on each pair:
# its bytes must equal what snapblk served (and, for the plans, what the host computes), and
# `dmsetup status` must equal `snapblk cow inspect`'s status. Again after a partial offline merge
# (`snapblk cow merge --runs 2`); then the merge is finished and each origin must equal its
# snapshot's view.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source-path=SCRIPTDIR source=../dmsnap.sh
. "$(dirname "$0")/../dmsnap.sh"
vmt_init kernel-reads-snapblk-cow

if [ "$VMT_BACKEND" != snapblk ]; then
    vmt_skip "skipped for $VMT_BACKEND (needs snapblk's device graphs)"
fi

size=$((64 * DMS_MIB))
cow_size=$((16 * DMS_MIB))
cow_sectors=$((cow_size / 512))
# Graphs: origin oG, snapshot sG with kib[G] KiB chunks. Plan graphs are 4, 16, 64; r is fio's.
graphs=(4 16 64 r)
planned=(4 16 64)
declare -A kib=([4]=4 [16]=16 [64]=64 [r]=4) plan=() chunks=() n_before=() entries_before=()
data="$VMT_TMP/data.img"
fill_random "$data" 16
for g in "${graphs[@]}"; do
    fill_random "$VMT_TMP/o$g.img" $((size / DMS_MIB))
done
for g in "${planned[@]}"; do
    plan[$g]=$(dms_plan $((kib[$g] * 1024)) "$size" $((16 * DMS_MIB)))
    chunks[$g]=$(dms_plan_chunks "${plan[$g]}" $((kib[$g] * 1024)))
    # What the plan must leave: the origin = the image with the origin writes; the snapshot's view
    # = the image as it was, with the snapshot writes.
    cp "$VMT_TMP/o$g.img" "$VMT_TMP/s$g.want"
    dms_apply_host "${plan[$g]}" s "$VMT_TMP/s$g.want" "$data"
    cp "$VMT_TMP/o$g.img" "$VMT_TMP/o$g.want"
    dms_apply_host "${plan[$g]}" o "$VMT_TMP/o$g.want" "$data"
done
[ "$(wc -l <<<"${chunks[4]}")" -gt 300 ] || vmt_fail "the 4 KiB plan writes only $(wc -l <<<"${chunks[4]}") chunks"
late_failures=()

# write_config FILE NODE...: all graphs, and an export of each NODE on $VMT_TMP/NODE.sock, serial NODE.
write_config() {
    local file=$1 g n
    shift
    {
        for g in "${graphs[@]}"; do
            printf '[[origin]]\nname = "o%s"\nimage = "%s"\n\n' "$g" "$VMT_TMP/o$g.img"
            printf '[[snapshot]]\nname = "s%s"\norigin = "o%s"\ncow = "%s"\nstore = "P"\nchunk_size = "%sK"\ncreate_size = %s\n\n' \
                "$g" "$g" "$VMT_TMP/s$g.cow" "${kib[$g]}" "$cow_size"
        done
        for n in "$@"; do
            printf '[[export]]\nnode = "%s"\nsocket = "%s"\nnum_queues = 2\nserial = "%s"\n\n' "$n" "$VMT_TMP/$n.sock" "$n"
        done
    } >"$file"
}

# serve_and_attach CONFIG ARRAY NODE...: starts snapblk on CONFIG, appends a vhost-user disk per NODE.
serve_and_attach() {
    local config=$1 arr=$2 n socks=()
    shift 2
    for n in "$@"; do socks+=("$VMT_TMP/$n.sock"); done
    start_backend_config sb "$config" "${socks[@]}"
    for n in "$@"; do qemu_vhost_user "$arr" "c-$n" "$VMT_TMP/$n.sock"; done
}

# check_cow G WHAT: host checks of sG.cow: chunk size, table (chunks as planned, no duplicates,
# allocation order), inspect's exception count and status against the count in the table. Sets
# cow_n to the number of exceptions.
check_cow() {
    local g=$1 what="$2, ${kib[$1]}K chunks (graph $1)" cs=$((kib[$1] * 2)) n order
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" "chunk size")" "$cs sectors" "$what: inspect chunk size"
    n=$(dms_check_table "$VMT_TMP/s$g.cow" "${chunks[$g]:--}" "$what: COW table")
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" exceptions)" "$n" "$what: inspect exceptions"
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" status)" "$(dms_status "$n" "$cs" "$cow_sectors")" \
        "$what: inspect status for $n exceptions"
    order=$(dms_order_errors "$VMT_TMP/s$g.cow")
    if [ "$order" != 0 ]; then
        # Reported at the end, so that the kernel and merge checks still run.
        late_failures+=("$what: table entries out of allocation order: $order")
    fi
    cow_n=$n
}

# kernel_check WHAT: a guest with every oG.img and sG.cow as plain disks builds the kernel's snapshot
# target on each pair: its bytes must be sG.want's, its status what `snapblk cow inspect` prints for
# sG.cow, and the COW files must come back unchanged.
kernel_check() {
    local what=$1 g args=()
    declare -A cow_sha=()
    for g in "${graphs[@]}"; do
        qemu_plain_disk args "$VMT_TMP/o$g.img" "o$g"
        qemu_plain_disk args "$VMT_TMP/s$g.cow" "c$g"
        dms_dump_disk args "k$g-$what" "$size"
        cow_sha[$g]=$(file_sha "$VMT_TMP/s$g.cow")
    done
    local kibs
    kibs=$(for g in "${graphs[@]}"; do printf '%s:%s ' "$g" "${kib[$g]}"; done)
    guest_script "$VMT_TMP/kernel-$what.sh" "graphs=${graphs[*]}" "kibs=$kibs" "what=$what" < <(dms_guest_lib; cat <<'GUEST'
declare -A kib=()
for gk in $kibs; do kib[${gk%:*}]=${gk#*:}; done
for g in $graphs; do
    o=$(disk "o$g") c=$(disk "c$g")
    sectors=$(cat "/sys/block/${o#/dev/}/size")
    dmsetup create "k$g" --table "0 $sectors snapshot $o $c P $((kib[$g] * 2))" || fail "dmsetup create k$g failed"
    out "status_$g" "$(snap_status "k$g")"
    dump "/dev/mapper/k$g" "k$g-$what"
    out "status_after_$g" "$(snap_status "k$g")"
    dmsetup remove "k$g" || fail "dmsetup remove k$g failed"
done
GUEST
)
    run_guest none "$VMT_TMP/kernel-$what.sh" "${args[@]}"
    for g in "${graphs[@]}"; do
        local w="$what, ${kib[$g]}K chunks (graph $g)"
        dms_same_bytes "$VMT_TMP/k$g-$what.dump" "$VMT_TMP/s$g.want" $((kib[$g] * 1024)) "$w: the kernel's snapshot"
        expect_eq "$(guest_out "status_$g" | tr _ ' ')" "$(dms_inspect "$VMT_TMP/s$g.cow" status)" \
            "$w: kernel dmsetup status vs snapblk cow inspect"
        expect_eq "$(guest_out "status_after_$g")" "$(guest_out "status_$g")" "$w: kernel status after reading"
        expect_eq "$(file_sha "$VMT_TMP/s$g.cow")" "${cow_sha[$g]}" "$w: COW file after the kernel read it"
        rm -f "$VMT_TMP/k$g-$what.dump"
    done
}

# 1. snapblk: the plans' writes through each origin and to each snapshot, fio on graph r (origin
# and snapshot at once, 4 KiB random writes, 16 in flight each), then whole-snapshot reads.
write_config "$VMT_TMP/serve.toml" o4 s4 o16 s16 o64 s64 or sr
args=()
qemu_plain_disk args "$data" data ro
serve_and_attach "$VMT_TMP/serve.toml" args o4 s4 o16 s16 o64 s64 or sr
script_vars=("graphs=${graphs[*]}" "planned=${planned[*]}")
for g in "${planned[@]}"; do
    script_vars+=("plan_$g=${plan[$g]}")
    dms_dump_disk args "s$g-served" "$size"
done
dms_dump_disk args "sr-served" "$size"
guest_script "$VMT_TMP/write.sh" "${script_vars[@]}" < <(dms_guest_lib; cat <<'GUEST'
data=$(disk data)
for g in $planned; do
    p=plan_$g
    apply_plan "${!p}" "$data" "$(disk "o$g")" "$(disk "s$g")"
done
fio --ioengine=libaio --direct=1 --iodepth=16 --rw=randwrite --bs=4k --io_size=3M --randrepeat=0 \
    --name=origin --randseed=7001 --filename="$(disk or)" --name=snapshot --randseed=7002 --filename="$(disk sr)" \
    --output-format=terse >/tmp/fio.log 2>&1 || { cat /tmp/fio.log; fail "fio on graph r failed"; }
for g in $graphs; do dump "$(disk "s$g")" "s$g-served"; done
GUEST
)
run_guest none "$VMT_TMP/write.sh" "${args[@]}"
stop_backend sb

cp "$VMT_TMP/sr-served.dump" "$VMT_TMP/sr.want"
cp "$VMT_TMP/or.img" "$VMT_TMP/or.want"
for g in "${graphs[@]}"; do
    what="${kib[$g]}K chunks (graph $g)"
    dms_same_bytes "$VMT_TMP/s$g-served.dump" "$VMT_TMP/s$g.want" $((kib[$g] * 1024)) "$what: snapblk's snapshot export"
    dms_same_bytes "$VMT_TMP/o$g.img" "$VMT_TMP/o$g.want" $((kib[$g] * 1024)) "$what: origin image"
    check_cow "$g" written
    n_before[$g]=$cow_n
    entries_before[$g]=$(dms_cow_entries "$VMT_TMP/s$g.cow")
    vmt_log "$what: ${n_before[$g]} exceptions, status $(dms_inspect "$VMT_TMP/s$g.cow" status)"
    rm -f "$VMT_TMP/s$g-served.dump"
done
[ "${n_before[4]}" -gt $((4 * 2 * 32)) ] || vmt_fail "4K chunks: ${n_before[4]} exceptions fit in one area"
[ "${n_before[r]}" -gt 100 ] || vmt_fail "graph r: fio left only ${n_before[r]} exceptions"

# 2. The kernel reads the COW files snapblk wrote.
kernel_check fresh

# 3. Partial merge (two runs, from the end of the table): the table loses a suffix, the origin gets
# the snapshot's bytes of exactly those chunks, and the snapshot's view stays.
for g in "${graphs[@]}"; do
    what="${kib[$g]}K chunks (graph $g)"
    out=$("$SNAPBLK" cow merge --origin "$VMT_TMP/o$g.img" --runs 2 "$VMT_TMP/s$g.cow" 2>&1) ||
        vmt_fail "$what: snapblk cow merge --runs 2 failed: $out"
    after=$(dms_cow_entries "$VMT_TMP/s$g.cow")
    n=$(grep -c . <<<"$after" || true)
    [ "$n" -lt "${n_before[$g]}" ] || vmt_fail "$what: the partial merge left $n of ${n_before[$g]} exceptions"
    [ "$n" -gt 0 ] || vmt_fail "$what: two runs merged the whole table (${n_before[$g]} exceptions)"
    expect_eq "$after" "$(head -n "$n" <<<"${entries_before[$g]}")" \
        "$what: table after the partial merge (a prefix of the one before)"
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" exceptions)" "$n" "$what: inspect exceptions after the partial merge"
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" status)" "$(dms_status "$n" $((kib[$g] * 2)) "$cow_sectors")" \
        "$what: inspect status after the partial merge"
    cp "$VMT_TMP/o$g.want" "$VMT_TMP/o$g.merged"
    while read -r old new; do
        dd if="$VMT_TMP/s$g.want" of="$VMT_TMP/o$g.merged" bs=$((kib[$g] * 1024)) skip="$old" seek="$old" count=1 \
            conv=notrunc status=none
    done < <(tail -n +"$((n + 1))" <<<"${entries_before[$g]}")
    dms_same_bytes "$VMT_TMP/o$g.img" "$VMT_TMP/o$g.merged" $((kib[$g] * 1024)) \
        "$what: origin after merging $((n_before[$g] - n)) exceptions"
    rm -f "$VMT_TMP/o$g.merged" "$VMT_TMP/o$g.want"
    vmt_log "$what: partial merge: ${n_before[$g]} -> $n exceptions, status $(dms_inspect "$VMT_TMP/s$g.cow" status)"
done

# 4. snapblk serves the partly merged snapshots: the views must not have changed.
write_config "$VMT_TMP/merged.toml" s4 s16 s64 sr
args=()
serve_and_attach "$VMT_TMP/merged.toml" args s4 s16 s64 sr
for g in "${graphs[@]}"; do dms_dump_disk args "s$g-merged" "$size"; done
guest_script "$VMT_TMP/read.sh" "graphs=${graphs[*]}" < <(dms_guest_lib; cat <<'GUEST'
for g in $graphs; do dump "$(disk "s$g")" "s$g-merged"; done
GUEST
)
run_guest none "$VMT_TMP/read.sh" "${args[@]}"
stop_backend sb
for g in "${graphs[@]}"; do
    dms_same_bytes "$VMT_TMP/s$g-merged.dump" "$VMT_TMP/s$g.want" $((kib[$g] * 1024)) \
        "${kib[$g]}K chunks (graph $g): snapblk's snapshot export after the partial merge"
    rm -f "$VMT_TMP/s$g-merged.dump"
done

# 5. The kernel reads the partly merged COW files.
kernel_check merged

# 6. Finish the merge offline: empty table, a fresh store's status, origin == the snapshot's view.
for g in "${graphs[@]}"; do
    what="${kib[$g]}K chunks (graph $g)"
    out=$("$SNAPBLK" cow merge --origin "$VMT_TMP/o$g.img" "$VMT_TMP/s$g.cow" 2>&1) ||
        vmt_fail "$what: snapblk cow merge failed: $out"
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" exceptions)" 0 "$what: exceptions after the full merge"
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" status)" "$(dms_status 0 $((kib[$g] * 2)) "$cow_sectors")" \
        "$what: status after the full merge"
    dms_same_bytes "$VMT_TMP/o$g.img" "$VMT_TMP/s$g.want" $((kib[$g] * 1024)) "$what: origin after the full merge"
done

for f in "${late_failures[@]}"; do printf '[%s] FAIL: %s\n' "$VMT_NAME" "$f" >&2; done
[ "${#late_failures[@]}" -eq 0 ] || vmt_fail "${#late_failures[@]} deferred check(s) failed (above)"

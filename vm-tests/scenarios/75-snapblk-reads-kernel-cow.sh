#!/bin/bash
# vm-tests/scenarios/75-snapblk-reads-kernel-cow.sh: snapblk reads (and goes on writing) COW files
# that Linux's dm-snapshot wrote. A guest gets three origins (64 MiB of random bytes) and three
# zeroed COW files as plain disks and builds the kernel's snapshot-origin and snapshot targets (P,
# chunks of 8, 128 and 16 sectors); a fixed write plan goes through the first two origins and to
# their snapshots, fio (16 in flight, origin and snapshot at once) to the third; the guest copies out
# each snapshot's view and `dmsetup status`, then removes the targets. snapblk serves the same
# files (chunk_size omitted: the on-disk value): its snapshot exports must read as the kernel's,
# `snapblk cow inspect` must print the kernel's status, and the table must be the one the plan
# implies. Then snapblk writes more (a second plan, fio again) and the kernel reads that back.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source-path=SCRIPTDIR source=../dmsnap.sh
. "$(dirname "$0")/../dmsnap.sh"
vmt_init snapblk-reads-kernel-cow

if [ "$VMT_BACKEND" != snapblk ]; then
    vmt_skip "skipped for $VMT_BACKEND (needs snapblk's device graphs)"
fi

size=$((64 * DMS_MIB))
cow_size=$((32 * DMS_MIB))
cow_sectors=$((cow_size / 512))
# Graphs: origin oG, COW sG.cow, chunk size cs[G] sectors; 8 and 128 follow plans, r takes fio.
graphs=(8 128 r)
planned=(8 128)
declare -A cs=([8]=8 [128]=128 [r]=16) plan=() plan2=() chunks=() chunks2=()
data="$VMT_TMP/data.img"
fill_random "$data" 16
for g in "${graphs[@]}"; do
    fill_random "$VMT_TMP/o$g.img" $((size / DMS_MIB))
    make_image "$VMT_TMP/s$g.cow" "$cow_size"
done
for g in "${planned[@]}"; do
    plan[$g]=$(dms_plan $((cs[$g] * 512)) "$size" $((16 * DMS_MIB)))
    plan2[$g]=$(dms_plan $((cs[$g] * 512)) "$size" $((16 * DMS_MIB)) 7)
    chunks[$g]=$(dms_plan_chunks "${plan[$g]}" $((cs[$g] * 512)))
    chunks2[$g]=$(dms_plan_chunks "${plan[$g]}"$'\n'"${plan2[$g]}" $((cs[$g] * 512)))
    cp "$VMT_TMP/o$g.img" "$VMT_TMP/s$g.want"
    dms_apply_host "${plan[$g]}" s "$VMT_TMP/s$g.want" "$data"
    cp "$VMT_TMP/o$g.img" "$VMT_TMP/o$g.want"
    dms_apply_host "${plan[$g]}" o "$VMT_TMP/o$g.want" "$data"
    cp "$VMT_TMP/s$g.want" "$VMT_TMP/s$g.want2"
    dms_apply_host "${plan2[$g]}" s "$VMT_TMP/s$g.want2" "$data"
    cp "$VMT_TMP/o$g.want" "$VMT_TMP/o$g.want2"
    dms_apply_host "${plan2[$g]}" o "$VMT_TMP/o$g.want2" "$data"
done
[ "$(wc -l <<<"${chunks[8]}")" -gt 300 ] || vmt_fail "the 8-sector plan writes only $(wc -l <<<"${chunks[8]}") chunks"
graph_kv=$(for g in "${graphs[@]}"; do printf '%s:%s ' "$g" "${cs[$g]}"; done)

# check_cow G WANT_CHUNKS STATUS WHAT: host checks of sG.cow against the kernel's status line STATUS:
# snapblk cow inspect (chunk size, exceptions, status) and the table read with od (the chunks
# WANT_CHUNKS lists, "-" for any; no duplicates; allocation order). Sets cow_n to the exception count.
check_cow() {
    local g=$1 what="$4, chunks of ${cs[$1]} sectors (graph $1)" n order
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" "chunk size")" "${cs[$g]} sectors" "$what: inspect chunk size"
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" status)" "$3" \
        "$what: snapblk cow inspect status vs the kernel's dmsetup status"
    n=$(dms_check_table "$VMT_TMP/s$g.cow" "$2" "$what: COW table")
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" exceptions)" "$n" "$what: inspect exceptions"
    expect_eq "$3" "$(dms_status "$n" "${cs[$g]}" "$cow_sectors")" "$what: status for $n exceptions in allocation order"
    order=$(dms_order_errors "$VMT_TMP/s$g.cow")
    expect_eq "$order" 0 "$what: table entries out of allocation order"
    cow_n=$n
}

# 1. The kernel writes: snapshot-origin and snapshot targets on each origin + zeroed COW.
args=()
qemu_plain_disk args "$data" data ro
for g in "${graphs[@]}"; do
    qemu_plain_disk args "$VMT_TMP/o$g.img" "o$g"
    qemu_plain_disk args "$VMT_TMP/s$g.cow" "c$g"
    dms_dump_disk args "s$g-kernel" "$size"
done
script_vars=("graphs=${graphs[*]}" "planned=${planned[*]}" "graph_kv=$graph_kv")
for g in "${planned[@]}"; do script_vars+=("plan_$g=${plan[$g]}"); done
guest_script "$VMT_TMP/kernel-write.sh" "${script_vars[@]}" < <(dms_guest_lib; cat <<'GUEST'
declare -A cs=()
for kv in $graph_kv; do cs[${kv%:*}]=${kv#*:}; done
data=$(disk data)
for g in $graphs; do
    o=$(disk "o$g") c=$(disk "c$g")
    sectors=$(cat "/sys/block/${o#/dev/}/size")
    dmsetup create "snap$g" --table "0 $sectors snapshot $o $c P ${cs[$g]}" || fail "dmsetup create snap$g failed"
    dmsetup create "orig$g" --table "0 $sectors snapshot-origin $o" || fail "dmsetup create orig$g failed"
    expect_eq "$(snap_status "snap$g")" "$((2 * cs[$g]))/$(cat "/sys/block/${c#/dev/}/size")_$((2 * cs[$g]))" \
        "status of the kernel's fresh store $g"
done
for g in $planned; do
    p=plan_$g
    apply_plan "${!p}" "$data" "/dev/mapper/orig$g" "/dev/mapper/snap$g"
done
fio --ioengine=libaio --direct=1 --iodepth=16 --rw=randwrite --bs=4k --io_size=3M --randrepeat=0 \
    --name=origin --randseed=7501 --filename=/dev/mapper/origr --name=snapshot --randseed=7502 --filename=/dev/mapper/snapr \
    --output-format=terse >/tmp/fio.log 2>&1 || { cat /tmp/fio.log; fail "fio on graph r failed"; }
for g in $graphs; do
    dump "/dev/mapper/snap$g" "s$g-kernel"
    out "status_$g" "$(snap_status "snap$g")"
    dmsetup remove "orig$g" || fail "dmsetup remove orig$g failed"
    dmsetup remove "snap$g" || fail "dmsetup remove snap$g failed"
done
GUEST
)
run_guest none "$VMT_TMP/kernel-write.sh" "${args[@]}"
declare -A kstatus=() n_kernel=() entries_kernel=()
cp "$VMT_TMP/sr-kernel.dump" "$VMT_TMP/sr.want"
for g in "${graphs[@]}"; do
    what="kernel, chunks of ${cs[$g]} sectors (graph $g)"
    kstatus[$g]=$(guest_out "status_$g" | tr _ ' ')
    if [ -n "${plan[$g]:-}" ]; then
        # The kernel against the host's model of the plan: checks the oracle and the model.
        dms_same_bytes "$VMT_TMP/s$g-kernel.dump" "$VMT_TMP/s$g.want" $((cs[$g] * 512)) "$what: the kernel's snapshot"
        dms_same_bytes "$VMT_TMP/o$g.img" "$VMT_TMP/o$g.want" $((cs[$g] * 512)) "$what: origin image"
    fi
    check_cow "$g" "${chunks[$g]:--}" "${kstatus[$g]}" "kernel-written COW"
    n_kernel[$g]=$cow_n
    entries_kernel[$g]=$(dms_cow_entries "$VMT_TMP/s$g.cow")
    vmt_log "$what: ${n_kernel[$g]} exceptions, status ${kstatus[$g]}"
done
[ "${n_kernel[8]}" -gt $((8 * 32)) ] || vmt_fail "8-sector chunks: ${n_kernel[8]} exceptions fit in one area"
[ "${n_kernel[r]}" -gt 100 ] || vmt_fail "graph r: fio left only ${n_kernel[r]} exceptions"

# 2. snapblk serves the kernel's files (chunk size from the header), reads each snapshot whole,
# then writes a second plan (fio on r) and reads again.
cp "$VMT_TMP/or.img" "$VMT_TMP/or.want"
{
    for g in "${graphs[@]}"; do
        printf '[[origin]]\nname = "o%s"\nimage = "%s"\n\n' "$g" "$VMT_TMP/o$g.img"
        printf '[[snapshot]]\nname = "s%s"\norigin = "o%s"\ncow = "%s"\nstore = "P"\n\n' "$g" "$g" "$VMT_TMP/s$g.cow"
        for n in "o$g" "s$g"; do
            printf '[[export]]\nnode = "%s"\nsocket = "%s"\nnum_queues = 2\nserial = "%s"\n\n' "$n" "$VMT_TMP/$n.sock" "$n"
        done
    done
} >"$VMT_TMP/serve.toml"
args=()
qemu_plain_disk args "$data" data ro
socks=()
for g in "${graphs[@]}"; do
    socks+=("$VMT_TMP/o$g.sock" "$VMT_TMP/s$g.sock")
    dms_dump_disk args "s$g-served" "$size"
    dms_dump_disk args "s$g-served2" "$size"
done
start_backend_config sb "$VMT_TMP/serve.toml" "${socks[@]}"
for g in "${graphs[@]}"; do
    qemu_vhost_user args "c-o$g" "$VMT_TMP/o$g.sock"
    qemu_vhost_user args "c-s$g" "$VMT_TMP/s$g.sock"
done
script_vars=("graphs=${graphs[*]}" "planned=${planned[*]}")
for g in "${planned[@]}"; do script_vars+=("plan_$g=${plan2[$g]}"); done
guest_script "$VMT_TMP/snapblk.sh" "${script_vars[@]}" < <(dms_guest_lib; cat <<'GUEST'
for g in $graphs; do dump "$(disk "s$g")" "s$g-served"; done
data=$(disk data)
for g in $planned; do
    p=plan_$g
    apply_plan "${!p}" "$data" "$(disk "o$g")" "$(disk "s$g")"
done
fio --ioengine=libaio --direct=1 --iodepth=16 --rw=randwrite --bs=4k --io_size=2M --randrepeat=0 \
    --name=origin --randseed=7503 --filename="$(disk or)" --name=snapshot --randseed=7504 --filename="$(disk sr)" \
    --output-format=terse >/tmp/fio.log 2>&1 || { cat /tmp/fio.log; fail "fio on graph r failed"; }
for g in $graphs; do dump "$(disk "s$g")" "s$g-served2"; done
GUEST
)
run_guest none "$VMT_TMP/snapblk.sh" "${args[@]}"
stop_backend sb
while read -r line; do
    vmt_log "snapblk loaded $line"
done < <(sed -n 's/.*snapshot \(s[0-9r]*\) of .*: /\1: /p' "$VMT_TMP/sb.backend.log")
cp "$VMT_TMP/sr-served2.dump" "$VMT_TMP/sr.want2"
cp "$VMT_TMP/or.img" "$VMT_TMP/or.want2"
late_failures=()
for g in "${graphs[@]}"; do
    what="chunks of ${cs[$g]} sectors (graph $g)"
    dms_same_bytes "$VMT_TMP/s$g-served.dump" "$VMT_TMP/s$g-kernel.dump" $((cs[$g] * 512)) \
        "$what: snapblk's snapshot export of the kernel's COW vs the kernel's snapshot"
    dms_same_bytes "$VMT_TMP/s$g-served2.dump" "$VMT_TMP/s$g.want2" $((cs[$g] * 512)) \
        "$what: snapblk's snapshot after its own writes"
    dms_same_bytes "$VMT_TMP/o$g.img" "$VMT_TMP/o$g.want2" $((cs[$g] * 512)) "$what: origin after snapblk's writes"
    n=$(dms_check_table "$VMT_TMP/s$g.cow" "${chunks2[$g]:--}" "$what: COW table after snapblk's writes")
    [ "$n" -gt "${n_kernel[$g]}" ] || vmt_fail "$what: snapblk's writes added no exception (${n_kernel[$g]} -> $n)"
    expect_eq "$(dms_cow_entries "$VMT_TMP/s$g.cow" | head -n "${n_kernel[$g]}")" "${entries_kernel[$g]}" \
        "$what: the kernel's entries stay at the head of the table"
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" exceptions)" "$n" "$what: inspect exceptions after snapblk's writes"
    expect_eq "$(dms_inspect "$VMT_TMP/s$g.cow" status)" "$(dms_status "$n" "${cs[$g]}" "$cow_sectors")" \
        "$what: inspect status after snapblk's writes"
    order=$(dms_order_errors "$VMT_TMP/s$g.cow")
    # Deferred: the kernel check below still runs.
    [ "$order" = 0 ] || late_failures+=("$what: snapblk's entries out of allocation order: $order")
    rm -f "$VMT_TMP/s$g-kernel.dump" "$VMT_TMP/s$g-served.dump" "$VMT_TMP/s$g-served2.dump" \
        "$VMT_TMP/s$g.want" "$VMT_TMP/o$g.want"
done

# 3. The kernel reads what snapblk added.
args=()
for g in "${graphs[@]}"; do
    qemu_plain_disk args "$VMT_TMP/o$g.img" "o$g"
    qemu_plain_disk args "$VMT_TMP/s$g.cow" "c$g"
    dms_dump_disk args "s$g-kernel2" "$size"
done
guest_script "$VMT_TMP/kernel-read.sh" "graphs=${graphs[*]}" "graph_kv=$graph_kv" < <(dms_guest_lib; cat <<'GUEST'
declare -A cs=()
for kv in $graph_kv; do cs[${kv%:*}]=${kv#*:}; done
for g in $graphs; do
    o=$(disk "o$g") c=$(disk "c$g")
    sectors=$(cat "/sys/block/${o#/dev/}/size")
    dmsetup create "snap$g" --table "0 $sectors snapshot $o $c P ${cs[$g]}" || fail "dmsetup create snap$g failed"
    out "status_$g" "$(snap_status "snap$g")"
    dump "/dev/mapper/snap$g" "s$g-kernel2"
    dmsetup remove "snap$g" || fail "dmsetup remove snap$g failed"
done
GUEST
)
run_guest none "$VMT_TMP/kernel-read.sh" "${args[@]}"
for g in "${graphs[@]}"; do
    what="chunks of ${cs[$g]} sectors (graph $g)"
    dms_same_bytes "$VMT_TMP/s$g-kernel2.dump" "$VMT_TMP/s$g.want2" $((cs[$g] * 512)) \
        "$what: the kernel's view of snapblk's additions"
    expect_eq "$(guest_out "status_$g" | tr _ ' ')" "$(dms_inspect "$VMT_TMP/s$g.cow" status)" \
        "$what: kernel dmsetup status vs snapblk cow inspect after snapblk's writes"
    rm -f "$VMT_TMP/s$g-kernel2.dump"
done

for f in "${late_failures[@]}"; do printf '[%s] FAIL: %s\n' "$VMT_NAME" "$f" >&2; done
[ "${#late_failures[@]}" -eq 0 ] || vmt_fail "${#late_failures[@]} deferred check(s) failed (above)"

# shellcheck shell=bash
# vm-tests/dmsnap.sh: helpers shared by the kernel-interop scenarios (70-, 75-), sourced after
# lib.sh: a deterministic write plan for an origin and its snapshot, the views the plan must give
# (computed on the host from the images), a reader of the persistent COW table independent of
# snapblk, the status line dm-snapshot must print for N exceptions, and the guest-side helpers.
#
# A plan is one write a line, `T OFFSET LENGTH SOURCE` in bytes (multiples of 512): T is o (through
# the origin) or s (to the snapshot); the data is LENGTH bytes at SOURCE of a random data disk that
# the host keeps a copy of, so the host can apply the same plan to copies of the origin image.

DMS_MIB=$((1024 * 1024))
# Helpers here run inside $(...); a failing command there must end the substitution with an error.
shopt -s inherit_errexit

# dms_plan CS_BYTES DEV_BYTES DATA_BYTES [SEED]: the plan for a DEV_BYTES origin (a multiple of 4 MiB,
# at least 32 MiB) with CS_BYTES chunks; SEED moves the scattered writes and, by SEED % 5 * DEV/64,
# the blocks. In order: origin writes (a 1 MiB block, a 300 KiB block with partial chunks at both
# ends, 24 scattered 0.5-12 KiB writes), snapshot writes (into chunks the origin already copied out,
# 12 scattered partial-chunk writes, two whole chunks, a 512 KiB block), origin writes again (into
# chunks the snapshot already has: no new exception, the snapshot keeps its own bytes; 10 scattered
# fresh ones; a 256 KiB block). 64 MiB, 4 KiB chunks: about 620 exceptions, three areas.
dms_plan() {
    local cs=$1 size=$2 data=$3 x=${4:-20251125} u src=0 b
    u=$((size / 64))
    b=$((x % 5 * u))
    _dms_emit() {
        if [ $(($2 % 512)) -ne 0 ] || [ $(($3 % 512)) -ne 0 ] || [ $(($2 + $3)) -gt "$size" ]; then
            vmt_fail "dms_plan: bad write $*"
        fi
        echo "$1 $2 $3 $src"
        src=$(((src + $3 + 4096) % (data - 2 * DMS_MIB)))
    }
    # _dms_rand: x = next value of a 31-bit LCG; offsets are sectors below size - 64 KiB.
    _dms_rand() { x=$(((x * 1103515245 + 12345) & 0x7fffffff)); }
    _dms_scatter() {
        local t=$1 n=$2 i off len
        for ((i = 0; i < n; i++)); do
            _dms_rand
            off=$(((x % (size / 512 - 128)) * 512))
            _dms_rand
            len=$((512 * (1 + (x >> 8) % 24)))
            _dms_emit "$t" "$off" "$len"
        done
    }
    src=$((x % 64 * 4096))
    _dms_emit o $((8 * u + b)) "$DMS_MIB"
    _dms_emit o $((40 * u + b + 1536)) $((300 * 1024))
    _dms_scatter o 24
    _dms_emit s $((8 * u + b + 2048)) $((8 * 1024))
    _dms_scatter s 12
    _dms_emit s $((20 * u + b)) $((2 * cs))
    _dms_emit s $((50 * u + b)) $((512 * 1024))
    _dms_emit o $((50 * u + b + 4096)) $((8 * 1024))
    _dms_emit o $((8 * u + b + 4096)) 4096
    _dms_scatter o 10
    _dms_emit o $((30 * u + b)) $((256 * 1024))
}

# dms_apply_host PLAN T IMAGE DATA: applies the plan's writes of type T (o or s) to IMAGE.
dms_apply_host() {
    local t off len src
    while read -r t off len src; do
        [ "$t" = "$2" ] || continue
        dd if="$4" of="$3" bs=1M iflag=skip_bytes,count_bytes skip="$src" count="$len" \
            oflag=seek_bytes seek="$off" conv=notrunc status=none || vmt_fail "host apply of $t $off+$len failed"
    done <<<"$1"
}

# dms_plan_chunks PLAN CS_BYTES: the chunks the plan writes (origin or snapshot), sorted, one a line:
# exactly the chunks that must have an exception afterwards.
dms_plan_chunks() {
    local t off len src c
    while read -r t off len src; do
        for ((c = off / $2; c <= (off + len - 1) / $2; c++)); do echo "$c"; done
    done <<<"$1" | sort -n -u
}

# dms_status N CS_SECTORS COW_SECTORS: what dm-snapshot's status prints for a persistent store holding
# N exceptions committed in allocation order: `<next_free*cs>/<cow sectors> <(current_area+2)*cs>`.
dms_status() {
    local n=$1 cs=$2 epa=$(($2 * 32)) nf area
    local stride=$((epa + 1))
    if [ "$n" -eq 0 ]; then
        nf=2
    else
        # The last entry: area (n-1)/epa, slot (n-1)%epa; next_free is one past its data chunk.
        area=$(((n - 1) / epa))
        nf=$((2 + area * stride + (n - 1) % epa + 1))
        [ $((nf % stride)) -ne 1 ] || nf=$((nf + 1))
    fi
    echo "$((nf * cs))/$3 $(((n / epa + 2) * cs))"
}

# dms_cow_entries COW: the exception table of a persistent COW file, `old_chunk new_chunk` a line in
# table order, read with od (independent of snapblk): areas of cs*32 16-byte entries at chunk
# 1 + a*(cs*32 + 1), ending at the first entry whose new_chunk is 0.
dms_cow_entries() {
    local cow=$1 cs epa a=0 n old new
    cs=$(od -An -t u4 -j 12 -N 4 "$cow" | tr -d ' ')
    if [ -z "$cs" ] || [ "$cs" -eq 0 ]; then vmt_fail "$cow: no chunk size in the header"; fi
    epa=$((cs * 32))
    while :; do
        n=0
        while read -r old new; do
            [ "$new" != 0 ] || return 0
            echo "$old $new"
            n=$((n + 1))
        done < <(od -An -v -t u8 -w16 -j $(((1 + a * (epa + 1)) * cs * 512)) -N $((cs * 512)) "$cow")
        [ "$n" -eq "$epa" ] || vmt_fail "$cow: area $a ends after $n entries without a zero entry"
        a=$((a + 1))
    done
}

# dms_check_table COW WANT_CHUNKS WHAT: the table read by dms_cow_entries maps no origin chunk twice
# and holds exactly the chunks WANT_CHUNKS lists (sorted, one a line; "-": not checked). Prints the
# number of entries.
dms_check_table() {
    local entries got
    entries=$(dms_cow_entries "$1")
    got=$(cut -s -d' ' -f1 <<<"$entries" | sort -n)
    [ "$got" = "$(sort -n -u <<<"$got")" ] || vmt_fail "$3: the table maps some origin chunk twice"
    if [ "$2" != - ] && [ "$got" != "$2" ]; then
        vmt_fail "$3: table chunks differ from the written chunks (< written, > table):" \
            "$(diff <(echo "$2") <(echo "$got") | grep '^[<>]' | head -n 5 | tr '\n' ' ')"
    fi
    grep -c . <<<"$got" || true
}

# dms_order_errors COW: entries of the table that break allocation order, as "N (first: entry J maps
# chunk OLD to COW chunk NEW, want W)" or "0". Linux commits exceptions in allocation order (it
# holds back completions that finish early), so entry j of area a always maps to data chunk
# 1 + a*stride + 1 + j; out of order, a crash leaks the chunks allocated below a committed one.
dms_order_errors() {
    local cs
    cs=$(od -An -t u4 -j 12 -N 4 "$1" | tr -d ' ')
    dms_cow_entries "$1" | awk -v epa=$((cs * 32)) '
        { i = NR - 1; want = 1 + int(i / epa) * (epa + 1) + 1 + i % epa
          if ($2 != want) { if (!bad++) first = sprintf("entry %d maps chunk %s to COW chunk %s, want %d", i, $1, $2, want) } }
        END { if (bad) printf "%d (first: %s)\n", bad, first; else print 0 }'
}

# dms_same_bytes GOT WANT CS_BYTES WHAT: fails unless files GOT and WANT are equal; on a difference it
# names the first differing byte and the differing chunks (both files are kept).
dms_same_bytes() {
    [ "$(file_sha "$1")" = "$(file_sha "$2")" ] && return 0
    local diffs
    diffs=$(cmp -l "$1" "$2" 2>&1 | awk -v cs="$3" '
        $1 ~ /^[0-9]+$/ { c = int(($1 - 1) / cs); if (!(c in seen)) { seen[c] = 1; if (++n <= 8) l = l " " c } }
        END { print n + 0, "chunks differ:" l }')
    vmt_fail "$4: $1 differs from $2 ($(cmp "$1" "$2" 2>&1 | head -n1); $diffs)"
}

# dms_inspect COW FIELD: one field of `snapblk cow inspect COW` ("status", "exceptions", "chunk size").
dms_inspect() {
    local out
    out=$("$SNAPBLK" cow inspect "$1" 2>&1) || vmt_fail "snapblk cow inspect $1 failed: $out"
    # The value without the bytes shown beside it for people: "8 sectors (4.0 KiB)" -> "8 sectors".
    awk -v f="$2:" 'index($0, f) == 1 {sub(f, ""); sub(/^ +/, ""); sub(/ \(.*\)$/, ""); print; found = 1} END {exit !found}' <<<"$out" ||
        vmt_fail "snapblk cow inspect $1 printed no '$2:' line"
}

# dms_dump_disk ARRAY NAME SIZE: a SIZE-byte file $VMT_TMP/NAME.dump attached (QEMU args appended to
# ARRAY) as the plain disk with serial dump-NAME, for the guest's `dump DEV NAME`.
dms_dump_disk() {
    make_image "$VMT_TMP/$2.dump" "$3"
    qemu_plain_disk "$1" "$VMT_TMP/$2.dump" "dump-$2"
}

# dms_guest_lib: guest-side helpers, to put in front of a guest script.
dms_guest_lib() {
    cat <<'GUESTLIB'
export DM_DISABLE_UDEV=1
# disk SERIAL: the /dev/vdX whose virtio serial is SERIAL.
disk() {
    local f
    for f in /sys/block/vd*/serial; do
        if [ "$(cat "$f")" = "$1" ]; then echo "/dev/$(basename "$(dirname "$f")")"; return 0; fi
    done
    fail "no disk with serial $1 (have: $(cat /sys/block/vd*/serial | tr '\n' ' '))"
}
# apply_plan PLAN DATA ORIGIN SNAPSHOT: the plan's writes, O_DIRECT, one dd each.
apply_plan() {
    local t off len src dev
    while read -r t off len src; do
        [ -n "$t" ] || continue
        case "$t" in o) dev=$3 ;; s) dev=$4 ;; *) fail "bad plan line '$t $off $len $src'" ;; esac
        dd if="$2" of="$dev" bs=$((len < 1048576 ? len : 1048576)) iflag=direct,skip_bytes,count_bytes \
            skip="$src" count="$len" oflag=direct,seek_bytes seek="$off" conv=notrunc status=none ||
            fail "write $t $off+$len to $dev failed"
    done <<<"$1"
}
# dump DEV NAME: copies the whole of DEV, read with O_DIRECT in 1 MiB blocks, to the disk whose serial
# is dump-NAME (the host hashes and compares it: cheaper than hashing under TCG, and kept on failure).
dump() {
    dd if="$1" of="$(disk "dump-$2")" bs=1M iflag=direct oflag=direct conv=notrunc status=none ||
        fail "reading $1 (dump $2) failed"
}
# snap_status NAME: what `dmsetup status NAME` prints after "snapshot", spaces as '_' (for out).
snap_status() {
    local s
    s=$(dmsetup status "$1") || fail "dmsetup status $1 failed"
    set -- $s
    [ "${3:-}" = snapshot ] || fail "dmsetup status: not a snapshot target: $s"
    shift 3
    echo "$*" | tr ' ' _
}
GUESTLIB
}

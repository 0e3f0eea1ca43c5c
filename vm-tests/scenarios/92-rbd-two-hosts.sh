#!/bin/bash
# vm-tests/scenarios/92-rbd-two-hosts.sh: two snapblk daemons standing for two hosts serve clones of
# the same golden image in Ceph RBD to two guests running at once. The scenario's one-node cluster
# holds rbd/golden (32 MiB of random data) and its RBD snapshot @base; each host has its own Ceph
# user (client.host1, client.host2: `profile rbd` keys in keyrings of their own, given as ceph_id
# and ceph_keyring; the mon must list a session of each), its own directory with its `serve
# --config` graph, state directory, control socket and COW file: origin rbd:rbd/golden@base, a
# persistent snapshot with 4 KiB chunks exported writable. Each guest reads the golden data, writes
# its own marker blocks over a region both write and random data over a private region, waits until
# both have written, and checks it sees its own writes and the golden data everywhere else (the
# other guest's private region included): each region of the disk is compared whole. On the host:
# each daemon counts the exceptions of its guest's writes and no error; the RBD image (snapshot and
# head) still exports the golden bytes; each COW, merged offline (`snapblk cow merge`) into a copy
# of the golden bytes, gives its own guest's data and none of the other's. snapblk only.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init_multi rbd-two-hosts

if [ "$VMT_BACKEND" != snapblk ]; then
    vmt_skip "skipped for $VMT_BACKEND (needs snapblk's RBD origins)"
fi

golden="$VMT_TMP/golden.img"
fill_random "$golden" 32
golden_sha=$(file_sha "$golden")
# Golden shas of the regions (MiB): [0, 4) [4, 8) [8, 12) [12, 16) [16, 32); guest j writes its
# marker over [4, 8) and its private data over [4 + 4j, 8 + 4j): every region is checked whole.
gs=()
for r in "0 4" "4 4" "8 4" "12 4" "16 16"; do
    # shellcheck disable=SC2086 # two numbers
    gs+=("$(img_sha "$golden" $r)")
done

vmt_ceph_start
vmt_rbd import "$golden" rbd/golden >/dev/null || vmt_fail "rbd import of the golden image failed"
vmt_rbd snap create rbd/golden@base >/dev/null || vmt_fail "rbd snap create rbd/golden@base failed"

for h in 1 2; do
    hd="$VMT_TMP/host$h"
    mkdir -p "$hd"
    ceph -c "$VMT_CEPH_CONF" --connect-timeout 10 auth get-or-create client.host$h \
        mon 'profile rbd' osd 'profile rbd pool=rbd' -o "$hd/keyring" 2>>"$VMT_TMP/ceph-cluster.log" ||
        vmt_fail "ceph auth get-or-create client.host$h failed"
    cat >"$hd/graph.toml" <<EOF
[[origin]]
name = "golden"
image = "rbd:rbd/golden@base"
ceph_conf = "$VMT_CEPH_CONF"
ceph_id = "host$h"
ceph_keyring = "$hd/keyring"

[[snapshot]]
name = "clone"
origin = "golden"
cow = "$hd/clone.cow"
store = "P"
chunk_size = "4K"
create_size = "256M"

[[export]]
node = "clone"
socket = "$hd/clone.sock"
num_queues = 2
serial = "host$h"
EOF
    start_backend_control host$h "$hd/ctl.sock" "$hd/state" --config "$hd/graph.toml"
    wait_for 20 backend_listening_all "${VMT_BACKEND_PID[host$h]}" "$hd/clone.sock" ||
        vmt_fail "export of host $h not listening"
done
[ "${VMT_BACKEND_PID[host1]}" != "${VMT_BACKEND_PID[host2]}" ] || vmt_fail "one daemon for both hosts"
# Each daemon opened the image as its own Ceph client: the mon has a session of each.
sessions=$(ceph -c "$VMT_CEPH_CONF" --connect-timeout 10 tell mon.a sessions 2>/dev/null) ||
    vmt_fail "ceph tell mon.a sessions failed"
for h in 1 2; do
    grep -a -q "client.host$h\b" <<<"$sessions" || vmt_fail "no session of client.host$h at the mon: $sessions"
done

guest_script "$VMT_TMP/clone.sh" "golden_sha=$golden_sha" "g0=${gs[0]}" "g8=${gs[2]}" \
    "g12=${gs[3]}" "g16_16=${gs[4]}" <<GUEST
$VMT_BLOCK_FN
GUEST
cat >>"$VMT_TMP/clone.sh" <<'GUEST'
id=$(cat /sys/block/vda/serial)
id=${id#host}
case "$id" in 1 | 2) ;; *) fail "unexpected disk serial '$(cat /sys/block/vda/serial)'" ;; esac
other=$((3 - id))
out id "$id"
expect_eq "$(sha_region /dev/vda 0 32)" "$golden_sha" "golden data seen by host $id's clone"
vmt_blocks "h$id" 0 1024 >/tmp/mark
dd if=/tmp/mark of=/dev/vda bs=4k seek=1024 oflag=direct conv=notrunc status=none || fail "marker write failed"
dd if=/dev/urandom of=/tmp/own bs=1M count=4 status=none
own=$((4 + 4 * id))
dd if=/tmp/own of=/dev/vda bs=1M seek="$own" oflag=direct conv=notrunc status=none || fail "private write failed"
out mark "$(sha256sum </tmp/mark | cut -d' ' -f1)"
out own "$(sha256sum </tmp/own | cut -d' ' -f1)"
host_sync written
expect_eq "$(sha_region /dev/vda 4 4)" "$(sha256sum </tmp/mark | cut -d' ' -f1)" "host $id: its marker at [4, 8) MiB"
expect_eq "$(sha_region /dev/vda "$own" 4)" "$(sha256sum </tmp/own | cut -d' ' -f1)" "host $id: its private region"
expect_eq "$(sha_region /dev/vda 0 4)" "$g0" "host $id: [0, 4) MiB golden"
r=$((4 + 4 * other))
want=$(eval echo "\$g$r")
expect_eq "$(sha_region /dev/vda "$r" 4)" "$want" "host $id: host $other's private region [$r, $((r + 4))) MiB golden"
expect_eq "$(sha_region /dev/vda 16 16)" "$g16_16" "host $id: [16, 32) MiB golden"
if dmesg | grep -q -e 'I/O error'; then fail "guest kernel: $(dmesg | grep -m1 -e 'I/O error')"; fi
GUEST

start=$SECONDS
for h in 1 2; do
    guest_start_n $h "$VMT_TMP/host$h/clone.sock" "$VMT_TMP/clone.sh"
done
vmt_log "two guests booted in $((SECONDS - start))s"
for h in 1 2; do
    guest_use $h
    guest_sync_wait written
done
vmt_log "both guests wrote after $((SECONDS - start))s"
# Both hold their writes now: only then may each look for the other's.
for h in 1 2; do
    guest_use $h
    guest_sync_reply written
done
for h in 1 2; do
    guest_wait_n $h
done
vmt_log "both guests done after $((SECONDS - start))s"

declare -A exc
for h in 1 2; do
    export SNAPBLK_CONTROL="$VMT_TMP/host$h/ctl.sock"
    stats=$(ctl stats --json)
    for e in $(json_fields "$stats" errors); do expect_eq "$e" 0 "host $h: export errors in: $stats"; done
    status=$(ctl status --json)
    mapfile -t excs < <(json_fields "$status" exceptions)
    expect_eq "${excs[0]}" 0 "host $h: exceptions of the origin"
    # 8 MiB written in 4 KiB chunks: 2048 exceptions.
    [ "${excs[1]}" -ge 2048 ] || vmt_fail "host $h: the clone has ${excs[1]} exceptions, want >= 2048: $status"
    exc[$h]=${excs[1]}
    stop_backend host$h
    if grep -a -e ERROR "$VMT_TMP/host$h.backend.log" >&2; then vmt_fail "errors in host $h's daemon log (above)"; fi
done

expect_eq "$(vmt_rbd export rbd/golden@base - 2>/dev/null | sha256sum | cut -d' ' -f1)" "$golden_sha" \
    "rbd export of rbd/golden@base after the run"
vmt_rbd export rbd/golden "$VMT_TMP/golden-head.img" >/dev/null 2>&1 || vmt_fail "rbd export rbd/golden failed"
expect_eq "$(file_sha "$VMT_TMP/golden-head.img")" "$golden_sha" "rbd export of rbd/golden (head) after the run"

# Each host's clone without its daemon: a copy of its COW merged into a copy of the golden bytes.
for h in 1 2; do
    guest_use $h
    o=$((3 - h))
    m="$VMT_TMP/merged$h.img"
    cp --sparse=always "$VMT_TMP/golden-head.img" "$m"
    cp --sparse=always "$VMT_TMP/host$h/clone.cow" "$VMT_TMP/merge$h.cow"
    "$SNAPBLK" cow merge --origin "$m" "$VMT_TMP/merge$h.cow" >"$VMT_TMP/merge$h.log" 2>&1 ||
        { cat "$VMT_TMP/merge$h.log" >&2; vmt_fail "cow merge of host $h's COW failed"; }
    expect_eq "$(img_sha "$m" 4 4)" "$(guest_out mark)" "host $h's merged clone: its marker"
    expect_eq "$(img_sha "$m" $((4 + 4 * h)) 4)" "$(guest_out own)" "host $h's merged clone: its private region"
    expect_eq "$(img_sha "$m" $((4 + 4 * o)) 4)" "${gs[$((1 + o))]}" "host $h's merged clone: host $o's private region golden"
    expect_eq "$(img_sha "$m" 0 4)" "${gs[0]}" "host $h's merged clone: [0, 4) MiB golden"
    expect_eq "$(img_sha "$m" 16 16)" "${gs[4]}" "host $h's merged clone: [16, 32) MiB golden"
    expect_eq "$(grep -a -c "^vmt gh$o " "$m" || true)" 0 "host $h's merged clone: lines of host $o's markers"
done
vmt_note "two daemons, clones of rbd:rbd/golden@base as client.host1/client.host2: ${exc[1]} and ${exc[2]} exceptions of 4 KiB, RBD image unchanged"

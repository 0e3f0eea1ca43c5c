#!/bin/bash
# vm-tests/scenarios/91-rbd-clone-boot.sh: a guest runs from a local clone of a golden image that
# lives in Ceph RBD. A one-node cluster of the scenario's own holds rbd/golden, an ext4 file
# system of known files (checksums in a manifest) imported from the host, and its RBD snapshot
# @base. A `serve --config` graph opens rbd:rbd/golden@base as an origin (read-only, through
# librbd) and exports a persistent (P) snapshot of it with 4 KiB chunks in a local COW file. The
# guest mounts the clone, checks every golden file against the manifest, then writes new files,
# rewrites one golden file and deletes another, remounts, checks all of it again and runs e2fsck.
# On the host: the RBD image (the snapshot @base and the image head) still exports the golden
# bytes, the COW file is valid with 4 KiB chunks and holds the exceptions, and the clone's
# contents are rebuilt without the daemon: `snapblk cow merge` of a copy of the COW into the
# golden bytes exported from RBD gives a file system (e2fsck clean) whose files are what the guest
# wrote and read. snapblk only.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "$0")/../lib.sh"
vmt_init rbd-clone-boot

if [ "$VMT_BACKEND" != snapblk ]; then
    vmt_skip "skipped for $VMT_BACKEND (needs snapblk's RBD origins)"
fi

# The golden file system: eight random files of various sizes, one of 8 MiB, and the manifest.
golden="$VMT_TMP/golden.img"
mkdir -p "$VMT_TMP/golden/data"
for i in 1 2 3 4 5 6 7 8; do
    dd if=/dev/urandom of="$VMT_TMP/golden/data/f$i" bs=4k count=$((i * 61)) status=none
done
dd if=/dev/urandom of="$VMT_TMP/golden/data/big" bs=1M count=8 status=none
(cd "$VMT_TMP/golden/data" && sha256sum f* big) >"$VMT_TMP/manifest"
cp "$VMT_TMP/manifest" "$VMT_TMP/golden/MANIFEST"
mkfs.ext4 -q -F -L golden -E root_owner=0:0 -d "$VMT_TMP/golden" "$golden" 64M ||
    vmt_fail "mkfs.ext4 -d of the golden image failed"
golden_sha=$(file_sha "$golden")

vmt_ceph_start
vmt_rbd import "$golden" rbd/golden >/dev/null || vmt_fail "rbd import of the golden image failed"
vmt_rbd snap create rbd/golden@base >/dev/null || vmt_fail "rbd snap create rbd/golden@base failed"
expect_eq "$(vmt_rbd export rbd/golden@base - 2>/dev/null | sha256sum | cut -d' ' -f1)" "$golden_sha" \
    "rbd export of rbd/golden@base before the run"

ctlsock="$VMT_TMP/ctl.sock"
sock="$VMT_TMP/vm1.sock"
cow="$VMT_TMP/vm1.cow"
config="$VMT_TMP/graph.toml"
cat >"$config" <<EOF
[[origin]]
name = "golden"
image = "rbd:rbd/golden@base"
ceph_conf = "$VMT_CEPH_CONF"

[[snapshot]]
name = "vm1"
origin = "golden"
cow = "$cow"
store = "P"
chunk_size = "4K"
create_size = "256M"

[[export]]
node = "vm1"
socket = "$sock"
num_queues = 2
serial = "vm1"
EOF
start_backend_control d "$ctlsock" "$VMT_TMP/state" --config "$config"
wait_for 20 backend_listening_all "${VMT_BACKEND_PID[d]}" "$sock" || vmt_fail "export $sock not listening"

guest_script "$VMT_TMP/test.sh" <<'GUEST'
expect_eq "$(cat /sys/block/vda/serial)" vm1 "disk serial"
expect_eq "$(blockdev --getsize64 /dev/vda)" $((64 << 20)) "size of the clone (the RBD image's)"
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt || fail "mount of the clone failed"
(cd /mnt/data && sha256sum -c /mnt/MANIFEST >/tmp/check.log 2>&1) ||
    { cat /tmp/check.log; fail "golden files differ from the manifest"; }
# New files, one golden file rewritten in place (its blocks copied out of the golden image, not
# read), one deleted.
mkdir /mnt/new
for i in 1 2 3 4; do
    dd if=/dev/urandom of="/mnt/new/n$i" bs=4k count=$((i * 53)) status=none
done
dd if=/dev/urandom of=/mnt/new/big bs=1M count=12 status=none
dd if=/dev/urandom of=/mnt/data/f3 bs=4k count=$((3 * 61)) conv=notrunc status=none
rm /mnt/data/f5
(cd /mnt && sha256sum new/* data/f*[0-9] data/big) >/tmp/manifest2
sync
umount /mnt || fail "umount failed"
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 /dev/vda /mnt || fail "second mount failed"
(cd /mnt && sha256sum -c /tmp/manifest2 >/tmp/check2.log 2>&1) ||
    { cat /tmp/check2.log; fail "files differ after the remount"; }
[ ! -e /mnt/data/f5 ] || fail "deleted file data/f5 is back after the remount"
umount /mnt || fail "second umount failed"
e2fsck -fn /dev/vda >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "guest e2fsck -fn found problems"; }
while read -r sum name; do out "$name" "$sum"; done </tmp/manifest2
if dmesg | grep -q -e 'I/O error' -e 'EXT4-fs error'; then fail "guest kernel: $(dmesg | grep -m1 -e 'I/O error' -e 'EXT4-fs error')"; fi
GUEST
start=$SECONDS
run_guest "$sock" "$VMT_TMP/test.sh"
vmt_log "guest done in $((SECONDS - start))s"

stats=$(ctl stats --json)
for e in $(json_fields "$stats" errors); do expect_eq "$e" 0 "export errors in: $stats"; done
status=$(ctl status --json)
mapfile -t kinds < <(json_fields "$status" kind)
expect_eq "${kinds[*]}" "origin snapshot" "node kinds in status"
mapfile -t excs < <(json_fields "$status" exceptions)
expect_eq "${excs[0]}" 0 "exceptions of the origin"
# 12 MiB of new data alone is 3072 chunks of 4 KiB.
[ "${excs[1]}" -ge 3072 ] || vmt_fail "clone vm1 has ${excs[1]} exceptions, want >= 3072: $status"
ctl status >>"$VMT_TMP/status.txt"
stop_backend d
if grep -a -e ERROR "$VMT_TMP/d.backend.log" >&2; then vmt_fail "errors in the daemon's log (above)"; fi

# The RBD side: the snapshot and the image head (nothing opened it writable) hold the golden bytes.
expect_eq "$(vmt_rbd export rbd/golden@base - 2>/dev/null | sha256sum | cut -d' ' -f1)" "$golden_sha" \
    "rbd export of rbd/golden@base after the run"
vmt_rbd export rbd/golden "$VMT_TMP/golden-head.img" >/dev/null 2>&1 || vmt_fail "rbd export rbd/golden failed"
expect_eq "$(file_sha "$VMT_TMP/golden-head.img")" "$golden_sha" "rbd export of rbd/golden (head) after the run"

# The COW file: valid, 4 KiB chunks, the exceptions the daemon reported.
inspect=$("$SNAPBLK" cow inspect --json "$cow") || vmt_fail "cow inspect $cow failed: $inspect"
expect_eq "$(json_field "$inspect" valid)" true "COW valid"
expect_eq "$(json_field "$inspect" chunk_bytes)" 4096 "COW chunk size"
expect_eq "$(json_field "$inspect" exceptions)" "${excs[1]}" "COW exceptions (cow inspect vs the daemon's status)"

# The clone without the daemon: a copy of the COW merged into the golden bytes RBD exported.
cp --sparse=always "$cow" "$VMT_TMP/merge.cow"
"$SNAPBLK" cow merge --origin "$VMT_TMP/golden-head.img" "$VMT_TMP/merge.cow" >"$VMT_TMP/merge.log" 2>&1 ||
    { cat "$VMT_TMP/merge.log" >&2; vmt_fail "cow merge into the exported golden image failed"; }
merged="$VMT_TMP/golden-head.img"
e2fsck -fn "$merged" >"$VMT_TMP/fsck.log" 2>&1 || { cat "$VMT_TMP/fsck.log" >&2; vmt_fail "host e2fsck -fn of the merged clone found problems"; }
for f in new/n1 new/n4 new/big data/f1 data/f3 data/f8 data/big; do
    got=$(debugfs -R "cat /$f" "$merged" 2>/dev/null | sha256sum | cut -d' ' -f1)
    expect_eq "$got" "$(guest_out "$f")" "host: sha256 of /$f in the merged clone"
done
# f3 was rewritten, f1 not: the golden manifest says so too.
[ "$(guest_out data/f3)" != "$(awk '$2 == "f3" {print $1}' "$VMT_TMP/manifest")" ] || vmt_fail "data/f3 still golden"
expect_eq "$(guest_out data/f1)" "$(awk '$2 == "f1" {print $1}' "$VMT_TMP/manifest")" "data/f1 golden"
if debugfs -R "stat /data/f5" "$merged" 2>&1 | grep -q 'Inode:'; then vmt_fail "data/f5 exists in the merged clone"; fi
vmt_note "clone of rbd:rbd/golden@base (64 MiB ext4): ${excs[1]} exceptions of 4 KiB in the local COW, RBD image unchanged"

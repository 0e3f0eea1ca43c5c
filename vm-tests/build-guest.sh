#!/bin/bash
# vm-tests/build-guest.sh: builds the cached test guest (Debian kernel + busybox initramfs base archive).
#
# Outputs vm-tests/.cache/vmlinuz and vm-tests/.cache/base.cpio (uncompressed newc). Idempotent: it
# does nothing when both exist and were built by this exact script; VMT_REBUILD=1 forces a rebuild.
# Needs root on Debian 12 (apt-get installs missing tools, apt-get download fetches the kernel).
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache="$here/.cache"
stamp="$cache/stamp"
want_stamp=$(sha256sum "$here/build-guest.sh" | cut -d' ' -f1)

# Real binaries copied into the guest with their shared libraries (busybox covers the rest).
guest_bins=(
    /usr/bin/bash /usr/bin/fio /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/blkdiscard
    /usr/sbin/fstrim /usr/sbin/dmsetup /usr/sbin/blockdev /usr/bin/sha256sum /usr/bin/dd
)
# Modules the guest loads; modprobe --show-depends (on the depmod output) expands and orders them.
# crc32c-intel is left out: the TCG CPU model has no SSE4.2, crc32c_generic serves ext4 and jbd2.
guest_modules=(virtio_pci virtio_blk crc32c_generic libcrc32c ext4 dm-snapshot)

log() { printf 'build-guest: %s\n' "$*" >&2; }
die() { printf 'build-guest: error: %s\n' "$*" >&2; exit 1; }

ensure_tools() {
    local cmd missing=()
    for cmd in qemu-system-x86_64 qemu-img qemu-storage-daemon busybox cpio depmod modprobe \
        dpkg-deb fio mke2fs e2fsck debugfs blkdiscard fstrim dmsetup blockdev bash timeout; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing packages (missing: ${missing[*]})"
    apt-get update -qq
    apt-get install -y -qq qemu-system-x86 busybox-static cpio kmod fio e2fsprogs dmsetup \
        util-linux >/dev/null
    # qemu-system-x86 can pull an older qemu-utils out; put it back.
    command -v qemu-img >/dev/null || apt-get install -y -qq qemu-utils >/dev/null
    for cmd in "${missing[@]}"; do
        command -v "$cmd" >/dev/null || die "$cmd still missing after apt-get install"
    done
}

# Downloads linux-image-amd64 and the versioned package its Depends names, into $cache/kernel.
fetch_kernel_deb() {
    local dir="$cache/kernel" meta pkg
    mkdir -p "$dir"
    if ! compgen -G "$dir/linux-image-6*.deb" >/dev/null; then
        log "downloading Debian kernel"
        (cd "$dir" && { apt-get download -qq linux-image-amd64 2>/dev/null ||
            { apt-get update -qq && apt-get download -qq linux-image-amd64 2>/dev/null; }; })
        meta=$(compgen -G "$dir/linux-image-amd64_*.deb" | head -n1)
        [ -n "$meta" ] || die "apt-get download linux-image-amd64 gave no package"
        pkg=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | awk '$1 ~ /^linux-image-[0-9]/ {print $1; exit}')
        [ -n "$pkg" ] || die "no linux-image-<version> in the Depends of $meta"
        (cd "$dir" && apt-get download -qq "$pkg" 2>/dev/null)
    fi
    compgen -G "$dir/linux-image-6*.deb" | head -n1
}

# Copies a binary (symlinks resolved) and the libraries ldd lists to the same paths under $1.
copy_with_libs() {
    local root=$1 bin=$2 lib
    install -D -m 0755 "$(readlink -f "$bin")" "$root$bin"
    while read -r lib; do
        [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
}

write_init() {
    local root=$1
    cat >"$root/init" <<'EOF'
#!/bin/sh
# /init of the vm-tests guest: loads modules, runs /test.sh under bash, prints VMT-RESULT, powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/shm && mount -t tmpfs tmpfs /dev/shm
# Console: errors and worse only (hung tasks included, reported after 30 s).
echo 4 >/proc/sys/kernel/printk
echo 30 >/proc/sys/kernel/hung_task_timeout_secs
echo "vmt-init: loading modules"
result() {
    echo "VMT-RESULT: $*"
    [ "$1" = PASS ] || dmesg | sed -n '/Run \/init/,$p' | tail -n 40
    sync
    poweroff -f
}
while read -r m; do
    insmod "/lib/modules/$m.ko" || result FAIL "insmod $m"
done </etc/vmt-modules
echo "vmt-init: waiting for /dev/vda"
n=0
while [ ! -b /dev/vda ] && [ "$n" -lt 200 ]; do
    n=$((n + 1))
    sleep 0.05
done
[ -b /dev/vda ] || result FAIL "no /dev/vda after 10 s"
[ -f /test.sh ] || result FAIL "no /test.sh in the initramfs"
echo "VMT-BOOTED"
/usr/bin/bash -c 'set -Eeuo pipefail
trap '\''[ -s /tmp/vmt-reason ] || echo "test.sh line $LINENO: $BASH_COMMAND (status $?)" >/tmp/vmt-reason'\'' ERR
. /lib/vmt.sh
. /test.sh'
rc=$?
if [ "$rc" -eq 0 ]; then
    result PASS
elif [ -s /tmp/vmt-reason ]; then
    result FAIL "$(head -n1 /tmp/vmt-reason)"
else
    result FAIL "test.sh exited with status $rc"
fi
EOF
    chmod 0755 "$root/init"

    cat >"$root/lib/vmt.sh" <<'EOF'
# /lib/vmt.sh: helpers for guest test scripts (bash, sourced by /init before /test.sh).
# fail MSG: record the reason and stop the test.
fail() { printf '%s\n' "$*" >/tmp/vmt-reason; printf 'guest: FAIL %s\n' "$*"; exit 1; }
# expect_eq GOT WANT WHAT: fail unless GOT == WANT.
expect_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; }
# out KEY VALUE: report a value to the host (read there with guest_out KEY).
out() { printf 'VMT-OUT %s %s\n' "$1" "$2"; }
# sha_region DEV OFFSET_MIB LEN_MIB: sha256 of a region read with O_DIRECT.
sha_region() {
    dd if="$1" bs=1M skip="$2" count="$3" iflag=direct status=none | sha256sum | cut -d' ' -f1
}
# host_sync TOKEN: tell the host TOKEN and block until it answers TOKEN on the control port.
host_sync() {
    local line
    stty -F /dev/ttyS1 -echo raw 2>/dev/null || true
    printf 'VMT-SYNC %s\n' "$1"
    IFS= read -r line </dev/ttyS1 || fail "control port closed while waiting for $1"
    line=${line%$'\r'}
    expect_eq "$line" "$1" "host answer to sync"
}
EOF
}

build() {
    local deb work root kver mod
    deb=$(fetch_kernel_deb)
    work="$cache/work"
    rm -rf "$work"
    mkdir -p "$work/kernel" "$work/root"
    dpkg-deb -x "$deb" "$work/kernel"
    kver=$(basename "$(compgen -G "$work/kernel/lib/modules/*" | head -n1)")
    [ -n "$kver" ] || die "no lib/modules/<version> in $deb"
    depmod -b "$work/kernel" "$kver"

    root="$work/root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib/modules,etc,proc,sys,dev,tmp,mnt,run,root}
    install -m 0755 "$(readlink -f "$(command -v busybox)")" "$root/bin/busybox"
    for mod in $(busybox --list); do
        [ -e "$root/bin/$mod" ] || ln -s busybox "$root/bin/$mod"
    done
    local bin
    for bin in "${guest_bins[@]}"; do
        [ -x "$bin" ] || bin=$(command -v "$(basename "$bin")")
        copy_with_libs "$root" "$bin"
    done
    ln -sf mke2fs "$root/usr/sbin/mkfs.ext4"
    cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"

    : >"$root/etc/vmt-modules"
    local path name
    while read -r path; do
        name=$(basename "$path" .ko)
        if ! grep -qx "$name" "$root/etc/vmt-modules"; then
            cp "$path" "$root/lib/modules/$name.ko"
            echo "$name" >>"$root/etc/vmt-modules"
        fi
    done < <(for mod in "${guest_modules[@]}"; do
        modprobe -d "$work/kernel" -S "$kver" --show-depends "$mod"
    done | awk '$1 == "insmod" && $2 !~ /crc32c-intel/ {print $2}')
    for mod in virtio_blk ext4 dm-snapshot crc32c_generic; do
        grep -qx "$mod" "$root/etc/vmt-modules" || die "module $mod not found for $kver"
    done

    write_init "$root"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z |
        cpio --quiet -o -0 -H newc --reproducible -R 0:0) >"$cache/base.cpio.tmp"
    cp "$work/kernel/boot/vmlinuz-$kver" "$cache/vmlinuz.tmp"
    mv "$cache/base.cpio.tmp" "$cache/base.cpio"
    mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
    echo "$kver" >"$cache/kernel-version"
    log "built kernel $kver, base.cpio $(($(stat -c %s "$cache/base.cpio") / 1048576)) MiB," \
        "modules: $(paste -sd' ' "$root/etc/vmt-modules")"
    rm -rf "$work"
}

main() {
    [ "$(id -u)" -eq 0 ] || die "run as root (apt-get, kernel download)"
    ensure_tools
    if [ "${VMT_REBUILD:-0}" != 1 ] && [ -s "$cache/vmlinuz" ] && [ -s "$cache/base.cpio" ] &&
        [ "$(cat "$stamp" 2>/dev/null)" = "$want_stamp" ]; then
        return 0
    fi
    mkdir -p "$cache"
    rm -f "$stamp"
    build
    echo "$want_stamp" >"$stamp"
}

main "$@"

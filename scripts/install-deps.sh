#!/bin/bash
# scripts/install-deps.sh: installs what building and testing snapblk needs from Debian's
# packages (idempotent: does nothing when everything is present). Run as root.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have qemu-system-x86_64 || need+=(qemu-system-x86)
have qemu-storage-daemon || need+=(qemu-system-x86)
have busybox || need+=(busybox-static)
have cpio || need+=(cpio)
have depmod || need+=(kmod)
have fio || need+=(fio)
have mkfs.ext4 || need+=(e2fsprogs)
have dmsetup || need+=(dmsetup)
have blkdiscard || need+=(util-linux)
have gcc || need+=(gcc)
# scripts/check-vendor.sh applies vendor/patches to the pristine crate.
have patch || need+=(patch)
# The Debian package test (scripts/test-package.sh) and the README examples' checks.
have dpkg-shlibdeps || need+=(dpkg-dev)
have strip || need+=(binutils)
have man || need+=(man-db)
have systemd-analyze || need+=(systemd)
have virt-xml-validate || need+=(libvirt-clients)
have xmllint || need+=(libxml2-utils)

if [ "${#need[@]}" -gt 0 ]; then
    echo "install-deps: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Installing qemu-system-x86 may remove a newer qemu-utils that the image shipped.
if ! have qemu-img; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils >/dev/null
fi
if ! have cargo; then
    echo "install-deps: no Rust toolchain (cargo) found; install Rust 1.80 or newer" >&2
    exit 1
fi

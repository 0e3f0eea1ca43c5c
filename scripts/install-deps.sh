#!/bin/bash
# scripts/install-deps.sh: checks that the Rust toolchain is at least Cargo.toml's rust-version
# (Debian 12's is older: see check_rust), then installs what building and testing snapblk needs
# from Debian's packages (idempotent: does nothing when everything is present). Run as root.
# `install-deps.sh --check-rust` runs only the toolchain check.
set -euo pipefail

# tool_version CMD: the version `CMD --version` reports (x.y.z, no -nightly suffix), or "none".
tool_version() {
    local out
    out=$("$1" --version 2>/dev/null | head -n 1) || true
    out=$(grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' <<<"$out" | head -n 1) || true
    echo "${out:-none}"
}

# version_at_least HAVE WANT: true when version HAVE >= WANT (1.85 counts as 1.85.0).
version_at_least() {
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# check_rust: fails, saying what is installed, what is needed and how to get it, unless rustc
# and cargo are both at least the rust-version that Cargo.toml declares.
check_rust() {
    local want rustc_v cargo_v v
    want=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$(dirname "$0")/../Cargo.toml" | head -n 1)
    [ -n "$want" ] || { echo "install-deps: Cargo.toml declares no rust-version" >&2; return 1; }
    rustc_v=$(tool_version rustc)
    cargo_v=$(tool_version cargo)
    for v in "$rustc_v" "$cargo_v"; do
        [ "$v" != none ] && version_at_least "$v" "$want" && continue
        cat >&2 <<EOF
install-deps: snapblk needs Rust $want or newer (Cargo.toml's rust-version); installed:
    rustc: $rustc_v ($(command -v rustc || echo 'not on PATH'))
    cargo: $cargo_v ($(command -v cargo || echo 'not on PATH'))
Debian 12's own rustc (1.63) and cargo (0.66) are too old. Install a current toolchain with
rustup (into ~/.cargo and ~/.rustup of the user who runs it):
    apt-get install -y curl
    curl https://sh.rustup.rs -sSf | sh -s -- -y --profile minimal
    . "\$HOME/.cargo/env"    # puts ~/.cargo/bin first on PATH; new login shells have it
or, where rustup is already installed: rustup update stable. Then run this again.
EOF
        return 1
    done
}

if [ "${1:-}" = --check-rust ]; then
    check_rust
    exit
fi
check_rust

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
# The RBD tests' one-node Ceph cluster (scripts/ceph-cluster.sh; Debian 12's Ceph is 16.2,
# Pacific) and librbd, which the daemon loads; installed without their recommends (ceph-base's
# are ceph-mds and an NTP daemon). From nothing: 84 packages, 55 MB to fetch, 219 MB installed.
ceph=()
have ceph-mon || ceph+=(ceph-mon)
have ceph-osd || ceph+=(ceph-osd)
have ceph-mgr || ceph+=(ceph-mgr)
have rbd || ceph+=(ceph-common)
have monmaptool || ceph+=(ceph-base)
ldconfig -p | grep -q librbd.so.1 || ceph+=(librbd1)
# scripts/lint-markdown.sh installs its pinned linter into a Python virtual environment.
have python3 || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)

if [ "${#need[@]}" -gt 0 ]; then
    echo "install-deps: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "${#ceph[@]}" -gt 0 ]; then
    echo "install-deps: installing ${ceph[*]} (no recommends)"
    export DEBIAN_FRONTEND=noninteractive
    [ "${#need[@]}" -gt 0 ] || apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${ceph[@]}" >/dev/null
fi
# Installing qemu-system-x86 may remove a newer qemu-utils that the image shipped.
if ! have qemu-img; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils >/dev/null
fi

#!/bin/bash
# scripts/check-vendor.sh: checks that vendor/vhost-user-backend, the tree cargo builds through
# [patch.crates-io], is exactly the crates.io release (vendor/vhost-user-backend-0.24.0.crate,
# checked against the sha256 crates.io publishes for it) with vendor/patches/*.patch applied in
# order: any other difference fails. With --test, also runs the patched crate's own unit and
# integration tests (its dev-dependencies come from crates.io; about 15 s on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

crate=vendor/vhost-user-backend-0.24.0.crate
# crates.io's checksum of the .crate (the "cksum" of version 0.24.0 in the registry index).
sha256=65345e6a9b7c53b97c0225b2cf7ddb42bc7732a44904856f1b88351aed569362
tree=vendor/vhost-user-backend

echo "$sha256  $crate" | sha256sum --check --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$crate" -C "$tmp"
applied="$tmp/vhost-user-backend-0.24.0"
count=0
for p in vendor/patches/*.patch; do
    if ! patch -d "$applied" -p1 --quiet --batch --forward --fuzz=0 \
        --no-backup-if-mismatch <"$p" >"$tmp/patch.log"; then
        cat "$tmp/patch.log" >&2
        echo "check-vendor: $p does not apply cleanly to the release" >&2
        exit 1
    fi
    count=$((count + 1))
done
if ! diff -r "$applied" "$tree" >"$tmp/diff"; then
    cat "$tmp/diff" >&2
    echo "check-vendor: $tree differs from the release with its $count patches applied" >&2
    echo "(every change must be a patch in vendor/patches/, listed in vendor/README.md)" >&2
    exit 1
fi
echo "check-vendor: $tree is vhost-user-backend 0.24.0 (sha256 ok) + $count patches, nothing else"

if [ "${1:-}" = "--test" ]; then
    cargo test --locked --manifest-path "$tree/Cargo.toml" --target-dir target/vendor-tests
fi

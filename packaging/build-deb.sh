#!/bin/bash
# packaging/build-deb.sh: builds the Debian package: the release binary (unless --no-build),
# man pages and shell completions generated from it into packaging/generated/, then
# `cargo deb`. Installs the pinned cargo-deb first when it is missing. Prints the .deb's path
# as its last line.
#   packaging/build-deb.sh [--no-build] [--output DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: `cargo install --locked` of a fixed version builds the same tool every time.
CARGO_DEB_VERSION=3.8.0

build=1
output=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --output) output=$2; shift ;;
        *) echo "usage: $0 [--no-build] [--output DIR]" >&2; exit 2 ;;
    esac
    shift
done

target=${CARGO_TARGET_DIR:-target}
if [ "$build" = 1 ]; then
    cargo build --release --locked
fi
bin="$target/release/snapblk"
[ -x "$bin" ] || { echo "build-deb: $bin is missing (build it, or leave out --no-build)" >&2; exit 1; }

rm -rf packaging/generated
"$bin" generate man --out packaging/generated/man >/dev/null
"$bin" generate completions bash zsh fish --out packaging/generated/completions >/dev/null

have=$(cargo deb --version 2>/dev/null || true)
if [ "${have##* }" != "$CARGO_DEB_VERSION" ]; then
    echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION (have: ${have:-none})" >&2
    start=$SECONDS
    # --debug: half the cost of a release build (from a clean CARGO_HOME on 2 shared cores:
    # 48 s of CPU, 40-80 s wall, against 100 s of CPU, 85-150 s wall), and as fast at
    # packaging (6 s either way): cargo-deb's dev profile builds its compressors optimized.
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --debug --quiet
    echo "build-deb: cargo-deb installed in $((SECONDS - start)) s" >&2
fi

# The release profile keeps line tables for profiling; the package ships a stripped binary.
args=(--no-build --locked --strip)
[ -z "$output" ] || args+=(--output "$output")
cargo deb "${args[@]}" | tail -n 1

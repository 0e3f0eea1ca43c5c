#!/bin/bash
# packaging/build-deb.sh: builds the Debian package: the release binary (unless --no-build),
# man pages and shell completions generated from it into packaging/generated/, then
# `cargo deb`. Installs the pinned cargo-deb first (scripts/cargo-tools.sh) when the installed
# one is another version. Prints the .deb's path as its last line.
#   packaging/build-deb.sh [--no-build] [--output DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

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

bash scripts/cargo-tools.sh cargo-deb

# The release profile keeps line tables for profiling; the package ships a stripped binary.
args=(--no-build --locked --strip)
[ -z "$output" ] || args+=(--output "$output")
cargo deb "${args[@]}" | tail -n 1

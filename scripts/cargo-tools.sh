#!/bin/bash
# scripts/cargo-tools.sh: installs the cargo subcommands that the tests and the Debian package
# use, at pinned versions from crates.io: each one named (default: all) whose installed version
# differs from its pin is built with `cargo install --locked NAME@VERSION`. test.sh runs it for
# all of them, packaging/build-deb.sh for cargo-deb.
#   scripts/cargo-tools.sh [cargo-nextest] [cargo-deb]
set -euo pipefail

# The pins: `cargo install --locked` of a fixed version builds the same tool every time.
declare -A PIN=(
    [cargo-nextest]=0.9.143
    [cargo-deb]=3.8.0
)
# Extra `cargo install` arguments. cargo-deb --debug: half the cost of a release build (from a
# clean CARGO_HOME on 2 shared cores: 48 s of CPU, 40-80 s wall, against 100 s of CPU, 85-150 s
# wall), and as fast at packaging (6 s either way): its dev profile builds its compressors
# optimized.
declare -A INSTALL_ARGS=(
    [cargo-nextest]=""
    [cargo-deb]="--debug"
)

# installed NAME: the version `cargo SUBCOMMAND --version` reports, or "none".
installed() {
    local v
    v=$(cargo "${1#cargo-}" --version 2>/dev/null | head -n 1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' |
        head -n 1) || true
    echo "${v:-none}"
}

[ $# -gt 0 ] || set -- cargo-nextest cargo-deb
for tool in "$@"; do
    want=${PIN[$tool]:-}
    [ -n "$want" ] || { echo "cargo-tools: no pin for '$tool' (${!PIN[*]})" >&2; exit 2; }
    have=$(installed "$tool")
    [ "$have" != "$want" ] || continue
    echo "cargo-tools: installing $tool $want from crates.io (installed: $have)" >&2
    start=$SECONDS
    # shellcheck disable=SC2086 # INSTALL_ARGS holds words to split
    cargo install --locked --quiet ${INSTALL_ARGS[$tool]} "$tool@$want"
    have=$(installed "$tool")
    [ "$have" = "$want" ] ||
        { echo "cargo-tools: cargo still runs $tool $have after installing $want" >&2; exit 1; }
    echo "cargo-tools: $tool $want installed in $((SECONDS - start)) s" >&2
done

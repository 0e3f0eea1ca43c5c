#!/bin/bash
# vm-tests/run.sh: builds the guest, runs the scenarios (all, or those named as arguments, e.g.
# `run.sh ext4 50-reattach`), prints PASS/FAIL per scenario and a final count line.
# VMT_BACKEND=snapblk|qsd picks the backend (default snapblk); see lib.sh for other settings.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$here/build-guest.sh"

scenarios=()
optional=()
if [ $# -eq 0 ]; then
    # Scenarios tagged "# vmt-optional:" run only when named.
    for f in "$here"/scenarios/[0-9][0-9]-*.sh; do
        if grep -q '^# vmt-optional:' "$f"; then
            base=$(basename "$f" .sh)
            optional+=("${base#[0-9][0-9]-}")
        else
            scenarios+=("$f")
        fi
    done
else
    for want in "$@"; do
        match=()
        for f in "$here"/scenarios/[0-9][0-9]-*.sh; do
            base=$(basename "$f" .sh)
            if [ "$want" = "$base" ] || [ "$want" = "${base#[0-9][0-9]-}" ]; then match+=("$f"); fi
        done
        [ "${#match[@]}" -eq 1 ] || { echo "vm-tests: no scenario named '$want'" >&2; exit 2; }
        scenarios+=("${match[0]}")
    done
fi

echo "vm-tests: backend ${VMT_BACKEND:-snapblk}, ${#scenarios[@]} scenario(s)${optional[0]:+ (optional, not run: ${optional[*]})}"
logdir=$(mktemp -d "${VMT_TMPDIR:-/tmp}/vmt-run.XXXXXX")
passed=0 failed=0 total_start=$SECONDS
for f in "${scenarios[@]}"; do
    base=$(basename "$f" .sh)
    name=${base#[0-9][0-9]-}
    log="$logdir/$base.log"
    start=$SECONDS
    if bash "$f" >"$log" 2>&1; then
        echo "PASS $name ($((SECONDS - start))s)"
        sed -n 's/^note: /    note: /p' "$log"
        passed=$((passed + 1))
    else
        echo "FAIL $name"
        sed 's/^/    /' "$log"
        echo "    (failed after $((SECONDS - start))s)"
        failed=$((failed + 1))
    fi
done
rm -rf "$logdir"
echo "vm-tests: total $((SECONDS - total_start))s"
echo "vm-tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/bin/bash
# vm-tests/run.sh: builds the guest, runs the scenarios (all, or those named as arguments, e.g.
# `run.sh ext4 50-reattach`), prints the file system the images are on (VMT_TMPDIR's), PASS/FAIL
# per scenario and a final count line.
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

tmpdir=${VMT_TMPDIR:-/tmp}
echo "vm-tests: backend ${VMT_BACKEND:-snapblk}, ${#scenarios[@]} scenario(s)${optional[0]:+ (optional, not run: ${optional[*]})}"
# Where images live decides how snapblk does I/O (tmpfs: through a shared mapping when dense).
alloc=sparse
[ "${VMT_DENSE:-0}" != 1 ] || alloc="fully allocated (VMT_DENSE=1)"
echo "vm-tests: images in $tmpdir ($(stat -f -c %T "$tmpdir") file system), $alloc"
logdir=$(mktemp -d "$tmpdir/vmt-run.XXXXXX")
passed=0 failed=0 skipped=0 total_start=$SECONDS
for f in "${scenarios[@]}"; do
    base=$(basename "$f" .sh)
    name=${base#[0-9][0-9]-}
    log="$logdir/$base.log"
    start=$SECONDS
    rc=0
    bash "$f" >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "PASS $name ($((SECONDS - start))s)"
        sed -n 's/^note: /    note: /p' "$log"
        passed=$((passed + 1))
    elif [ "$rc" -eq 77 ] && [ -z "${SNAPBLK_CI:-}" ]; then
        echo "SKIP $name: $(sed -n 's/^skip: //p' "$log")"
        skipped=$((skipped + 1))
    else
        echo "FAIL $name"
        [ "$rc" -ne 77 ] || echo "    (skipped, and nothing may be skipped under SNAPBLK_CI=1)"
        sed 's/^/    /' "$log"
        echo "    (failed after $((SECONDS - start))s)"
        failed=$((failed + 1))
    fi
done
rm -rf "$logdir"
echo "vm-tests: total $((SECONDS - total_start))s"
echo "vm-tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]

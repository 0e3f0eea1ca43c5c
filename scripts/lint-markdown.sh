#!/bin/bash
# scripts/lint-markdown.sh: lints README.md, docs/*.md and vm-tests/README.md with pymarkdownlnt
# (rules and why: .pymarkdown.yml; a rule of our own: scripts/mdlint/), installing the pinned
# linter from PyPI (scripts/mdlint/requirements.txt) into a virtual environment under
# target/tools/ first when it is not there; checks that the README names Cargo.toml's
# rust-version. Run by test.sh; exits non-zero on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."

reqs=scripts/mdlint/requirements.txt
version=$(sed -n 's/^pymarkdownlnt==//p' "$reqs")
venv=target/tools/pymarkdownlnt-$version
if [ "$("$venv/bin/pymarkdown" version 2>/dev/null)" != "$version" ]; then
    echo "lint-markdown: installing pymarkdownlnt $version from PyPI into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$reqs"
fi

files=(README.md docs/*.md)
[ ! -f vm-tests/README.md ] || files+=(vm-tests/README.md)
"$venv/bin/pymarkdown" --strict-config scan "${files[@]}"
# The README states the Rust version that Cargo.toml requires.
rust=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
grep -qF "Rust $rust or newer" README.md || {
    echo "lint-markdown: README.md does not say \"Rust $rust or newer\" (Cargo.toml's rust-version)" >&2
    exit 1
}
echo "lint-markdown: ${#files[@]} files clean (pymarkdownlnt $version)"

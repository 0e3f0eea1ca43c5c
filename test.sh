#!/bin/bash
# test.sh: the whole test suite: the markdown lint, unit and integration tests (cargo nextest),
# the Debian package (built, installed, checked, purged), then real-guest vm-tests under QEMU.
# Installs what it needs: Debian's packages (scripts/install-deps.sh, which first checks the Rust
# version), cargo-nextest and cargo-deb from crates.io (scripts/cargo-tools.sh) and the markdown
# linter from PyPI (scripts/lint-markdown.sh), each tool at a pinned version. Run as root.
#
# Everything a test needs is installed first, so nothing may be skipped: SNAPBLK_CI=1 makes a
# test whose prerequisite is missing fail instead of skipping (SNAPBLK_CI=0 allows skips, which
# are then listed and counted apart from passes).
set -euo pipefail
cd "$(dirname "$0")"
export SNAPBLK_CI=${SNAPBLK_CI:-1}
[ "$SNAPBLK_CI" != 0 ] || unset SNAPBLK_CI

bash scripts/install-deps.sh
bash scripts/cargo-tools.sh
bash scripts/lint-markdown.sh
# The vendored vhost-user-backend is the crates.io release plus vendor/patches, and its tests pass.
bash scripts/check-vendor.sh --test
cargo build --release --locked
SNAPBLK_SKIP_LOG=$(mktemp /tmp/snapblk-skips.XXXXXX)
export SNAPBLK_SKIP_LOG
cargo nextest run --release --locked --no-fail-fast
echo "tests: $(grep -c '^SKIP' "$SNAPBLK_SKIP_LOG" || true) skipped check(s)"
sed 's/^/    /' "$SNAPBLK_SKIP_LOG"
rm -f "$SNAPBLK_SKIP_LOG"
# The vhost-user boundary fuzzed for three minutes with a fresh seed (printed; a failing case
# is saved under target/fuzz-failures/, replay it with SNAPBLK_FUZZ_REPLAY=FILE).
export SNAPBLK_FUZZ_SECS=180 SNAPBLK_FUZZ_SEED="$(date +%s)"
cargo test --release --locked --test fuzz_vhost -- --nocapture
unset SNAPBLK_FUZZ_SECS SNAPBLK_FUZZ_SEED
bash scripts/test-package.sh
bash vm-tests/run.sh
# Again on fully allocated tmpfs images, which snapblk reads and writes through a shared mapping.
echo "vm-tests again, images fully allocated on /dev/shm ($(stat -f -c %T /dev/shm))"
VMT_TMPDIR=/dev/shm VMT_DENSE=1 bash vm-tests/run.sh 10-rw-checksums-2q 20-ext4 55-restart-inflight \
    89-kill9-reconnect

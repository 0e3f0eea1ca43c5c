#!/bin/bash
# scripts/test-package.sh: the Debian package end to end on this machine: builds the .deb
# (packaging/build-deb.sh), installs it with dpkg, checks the binary runs from /usr/bin, the
# user and directories exist, every man page renders without warnings, the units pass
# `systemd-analyze verify` (offline: no running systemd needed), the bash completion loads;
# then purges it and checks nothing of it is left. Run as root, on a machine without snapblk
# installed (CI); prints a summary of the package (name, version, size, file count, the key
# paths checked in it) and the verification output.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "test-package: FAIL: $*" >&2
    exit 1
}
step() { echo "test-package: $*"; }

[ "$(id -u)" = 0 ] || fail "must run as root (dpkg -i)"
if dpkg-query -W -f='${Status}' snapblk 2>/dev/null | grep -q 'ok installed'; then
    fail "snapblk is already installed here; this test installs and purges its own build"
fi
start=$SECONDS
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# What a user needs from the package: each must be in it, and gone after the purge.
key_paths=(/usr/bin/snapblk /lib/systemd/system/snapblk@.service
    /lib/systemd/system/snapblk-metrics@.service /lib/systemd/system/snapblk-metrics@.timer
    /etc/snapblk/example.toml /usr/share/man/man1/snapblk.1.gz
    /usr/share/bash-completion/completions/snapblk /usr/share/doc/snapblk/README.md
    /usr/share/doc/snapblk/control-protocol.md)

deb=$(bash packaging/build-deb.sh --output "$out" | tail -n 1)
[ -f "$deb" ] || fail "build-deb.sh made no package ($deb)"
dpkg-deb -c "$deb" | awk '$1 !~ /^d/ {sub(/^\./, "", $6); print $6}' >"$out/files"
for p in "${key_paths[@]}"; do
    grep -qxF "$p" "$out/files" || fail "the package lacks $p"
done
step "built $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version) ($(basename "$deb")):" \
    "$(stat -c %s "$deb") bytes, $(dpkg-deb -f "$deb" Installed-Size) KiB installed," \
    "$(wc -l <"$out/files") files"
step "key paths in it: ${key_paths[*]}"

# Minimal images exclude man pages and docs from installs (dpkg.cfg.d path-exclude); a later
# path-include wins, so the pages under test are installed either way.
dpkg --path-include='/usr/share/man/man1/snapblk*' --path-include='/usr/share/doc/snapblk/*' \
    -i "$deb" >"$out/dpkg.log" 2>&1 || { cat "$out/dpkg.log"; fail "dpkg -i"; }
step "installed"

want="snapblk $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
got=$(/usr/bin/snapblk --version)
[ "$got" = "$want" ] || fail "/usr/bin/snapblk --version says '$got', not '$want'"
step "/usr/bin/snapblk --version: $got"

getent passwd snapblk >/dev/null || fail "no user snapblk"
getent group snapblk >/dev/null || fail "no group snapblk"
[ "$(stat -c %U:%G /var/lib/snapblk/images)" = snapblk:snapblk ] ||
    fail "/var/lib/snapblk/images is not snapblk's"
dpkg-query -W -f='${Conffiles}\n' snapblk | grep -q '/etc/snapblk/example.toml' ||
    fail "/etc/snapblk/example.toml is not a conffile"
# The postinst is idempotent: configuring again changes nothing and fails nowhere.
/var/lib/dpkg/info/snapblk.postinst configure "$(dpkg-query -W -f='${Version}' snapblk)" ||
    fail "postinst is not idempotent"

# Every page renders, without a groff or man warning; `man snapblk` finds the main one.
export MANWIDTH=80 MAN_DISABLE_SECCOMP=1
pages=(/usr/share/man/man1/snapblk*.1.gz)
[ "${#pages[@]}" -gt 10 ] || fail "only ${#pages[@]} man pages installed"
for p in "${pages[@]}"; do
    man --warnings -l "$p" >"$out/page" 2>"$out/warn" || fail "man -l $p"
    [ ! -s "$out/warn" ] || { cat "$out/warn"; fail "warnings rendering $p"; }
done
man --warnings snapblk >"$out/page" 2>"$out/warn" || fail "man snapblk"
[ ! -s "$out/warn" ] || { cat "$out/warn"; fail "warnings rendering man snapblk"; }
for want in ENVIRONMENT FILES 'snapblk-serve(1)'; do
    grep -q "$want" "$out/page" || fail "man snapblk lacks $want"
done
step "${#pages[@]} man pages render without warnings"

bash -c 'source /usr/share/bash-completion/completions/snapblk && complete -p snapblk' >/dev/null ||
    fail "the bash completion does not load"

# systemd-analyze verify checks unit syntax, ExecStart binaries and Documentation= man pages;
# template units are verified through an instance name.
units="$out/units"
mkdir -p "$units"
ln -s /lib/systemd/system/snapblk@.service "$units/snapblk@example.service"
ln -s /lib/systemd/system/snapblk-metrics@.service "$units/snapblk-metrics@example.service"
ln -s /lib/systemd/system/snapblk-metrics@.timer "$units/snapblk-metrics@example.timer"
step "systemd-analyze verify snapblk@example.service snapblk-metrics@example.{service,timer}:"
systemd-analyze verify "$units/snapblk@example.service" "$units/snapblk-metrics@example.service" \
    "$units/snapblk-metrics@example.timer" >"$out/verify" 2>&1 || { cat "$out/verify"; fail "systemd-analyze verify"; }
sed 's/^/  /' "$out/verify"
! grep -i snapblk "$out/verify" || fail "systemd-analyze verify complains about snapblk's units"
echo "  (no complaints)"
if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    systemd-analyze security --offline=true "$units/snapblk@example.service" >"$out/security" 2>&1 || true
    step "systemd-analyze security: $(grep -i 'overall exposure' "$out/security" || echo 'n/a')"
fi

dpkg --purge snapblk >"$out/dpkg.log" 2>&1 || { cat "$out/dpkg.log"; fail "dpkg --purge"; }
if dpkg-query -W -f='${Status}' snapblk 2>/dev/null | grep -q 'installed'; then
    fail "dpkg still lists snapblk after the purge"
fi
for f in "${key_paths[@]}" /etc/snapblk /usr/share/doc/snapblk /var/lib/snapblk; do
    [ ! -e "$f" ] || fail "$f is left after the purge"
done
step "purged, nothing left"
step "passed in $((SECONDS - start)) s"

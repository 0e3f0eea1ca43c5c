# shellcheck shell=bash
# vm-tests/lib.sh: helpers sourced by the scenarios: backends (snapblk or qemu-storage-daemon),
# QEMU TCG guest boots with a per-test script, and host-side image checks.
#
# Environment: VMT_BACKEND=snapblk|qsd (default snapblk), SNAPBLK (default target/release/snapblk),
# VMT_TIMEOUT (seconds per guest boot, default 240), VMT_TMPDIR (default /tmp), VMT_KEEP=1 keeps the
# per-run directory, VMT_DENSE=1 allocates new images fully (with VMT_TMPDIR=/dev/shm, snapblk
# then reads and writes them through a shared mapping). A scenario calls vmt_init NAME first; every helper that detects a failure calls
# vmt_fail, which prints the reason and ends the scenario (the EXIT trap cleans up).

VMT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VMT_REPO=$(cd "$VMT_DIR/.." && pwd)
VMT_CACHE="$VMT_DIR/.cache"
VMT_BACKEND=${VMT_BACKEND:-snapblk}
SNAPBLK=${SNAPBLK:-$VMT_REPO/target/release/snapblk}
VMT_TIMEOUT=${VMT_TIMEOUT:-240}
export PATH="$PATH:/usr/sbin:/sbin"

declare -A VMT_BACKEND_PID=()
VMT_NAME=
VMT_TMP=
VMT_GUEST_PID=
declare -A VMT_GUEST_ENDED=() # PID -> exit status of a guest that guest_watch_boot saw end before /init
VMT_GUEST_DIR=
VMT_GUEST_SEQ=0

vmt_log() { printf '[%s] %s\n' "$VMT_NAME" "$*"; }
vmt_note() { printf 'note: %s\n' "$*"; }

vmt_fail() {
    printf '[%s] FAIL: %s\n' "$VMT_NAME" "$*" >&2
    exit 1
}

# VMT_SKIP: the exit status of a scenario that does not apply (run.sh counts it as SKIP, and as
# a failure under SNAPBLK_CI=1, where nothing may be skipped).
VMT_SKIP=77

# vmt_skip REASON: ends the scenario as skipped.
vmt_skip() {
    printf 'skip: %s\n' "$*"
    exit "$VMT_SKIP"
}

# vmt_init NAME: per-scenario setup: temp dir, cleanup trap, backend sanity.
vmt_init() {
    VMT_NAME=$1
    case "$VMT_BACKEND" in
        snapblk) [ -x "$SNAPBLK" ] || vmt_fail "no snapblk binary at $SNAPBLK (set SNAPBLK or VMT_BACKEND=qsd)" ;;
        qsd) command -v qemu-storage-daemon >/dev/null || vmt_fail "qemu-storage-daemon not installed" ;;
        *) vmt_fail "unknown VMT_BACKEND '$VMT_BACKEND' (snapblk or qsd)" ;;
    esac
    if [ ! -s "$VMT_CACHE/vmlinuz" ] || [ ! -s "$VMT_CACHE/base.cpio" ]; then
        vmt_fail "guest not built: run vm-tests/build-guest.sh"
    fi
    VMT_TMP=$(mktemp -d "${VMT_TMPDIR:-/tmp}/vmt-$VMT_NAME.XXXXXX")
    trap vmt_cleanup EXIT
}

vmt_cleanup() {
    local rc=$? name pid
    trap - EXIT
    if [ "$rc" -eq "$VMT_SKIP" ]; then
        [ -z "$VMT_TMP" ] || rm -rf "$VMT_TMP"
        exit "$rc"
    fi
    if [ -n "$VMT_GUEST_PID" ] && kill -0 "$VMT_GUEST_PID" 2>/dev/null; then
        # The pid is timeout(1): SIGTERM makes it stop QEMU too (and SIGKILL it 10 s later).
        kill -TERM "$VMT_GUEST_PID" 2>/dev/null || true
        wait "$VMT_GUEST_PID" 2>/dev/null || true
    fi
    for name in "${!VMT_BACKEND_PID[@]}"; do
        pid=${VMT_BACKEND_PID[$name]}
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        if [ "$rc" -ne 0 ]; then
            echo "--- backend $name log (tail) ---" >&2
            tail -n 30 "$VMT_TMP/$name.backend.log" >&2 2>/dev/null || true
        fi
    done
    if [ -n "$VMT_TMP" ]; then
        if [ "$rc" -ne 0 ] || [ "${VMT_KEEP:-0}" = 1 ]; then
            echo "[$VMT_NAME] logs and images kept in $VMT_TMP" >&2
        else
            rm -rf "$VMT_TMP"
        fi
    fi
    exit "$rc"
}

# wait_for SECONDS CMD...: polls CMD every 50 ms until it succeeds (returns 0); returns 1 after
# SECONDS, or 2 at once when CMD returns 2 (nothing left to wait for).
wait_for() {
    local deadline=$((SECONDS + $1)) rc
    shift
    while :; do
        "$@" && return 0
        rc=$?
        [ "$rc" -ne 2 ] || return 2
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

pid_gone() { ! kill -0 "$1" 2>/dev/null; }

# socket_listening PATH: true when a process listens on the unix socket PATH (/proc/net/unix flag
# __SO_ACCEPTCON), without connecting to it.
socket_listening() {
    [ -S "$1" ] && awk -v p="$1" '$NF == p && $4 == "00010000" {found = 1} END {exit !found}' /proc/net/unix
}

backend_alive_and_listening() {
    kill -0 "$1" 2>/dev/null || return 2
    socket_listening "$2"
}

# start_backend NAME IMAGE SOCKET [--readonly] [--num-queues N] [--serial S] [other snapblk args]
# Starts the backend in the background and returns once SOCKET accepts connections. --num-queues
# defaults to $VMT_QUEUES or 2, what run_guest's QEMU asks for.
start_backend() {
    local name=$1 image=$2 sock=$3
    shift 3
    [ -z "${VMT_BACKEND_PID[$name]:-}" ] || vmt_fail "backend $name already running"
    case "$sock" in /*) ;; *) sock="$PWD/$sock" ;; esac
    local readonly=0 queues=${VMT_QUEUES:-2} serial='' extra=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --readonly) readonly=1 ;;
            --num-queues) queues=$2; shift ;;
            --serial) serial=$2; shift ;;
            *) extra+=("$1") ;;
        esac
        shift
    done
    local cmd=()
    case "$VMT_BACKEND" in
        snapblk)
            cmd=("$SNAPBLK" serve --socket "$sock" --image "$image")
            [ "$readonly" = 0 ] || cmd+=(--readonly)
            cmd+=(--num-queues "$queues")
            [ -z "$serial" ] || cmd+=(--serial "$serial")
            cmd+=("${extra[@]}")
            ;;
        qsd)
            [ -z "$serial" ] || vmt_fail "qsd cannot set a serial (skip that check for qsd)"
            [ "${#extra[@]}" -eq 0 ] || vmt_fail "qsd backend: unsupported args: ${extra[*]}"
            local writable=on
            [ "$readonly" = 0 ] || writable=off
            local ro=''
            [ "$readonly" = 0 ] || ro=",read-only=on"
            cmd=(qemu-storage-daemon
                --blockdev "driver=file,node-name=d,filename=$image,aio=io_uring,discard=unmap$ro"
                --export "type=vhost-user-blk,id=e,addr.type=unix,addr.path=$sock,node-name=d,writable=$writable,num-queues=$queues")
            ;;
    esac
    # A socket file nobody listens on is stale (a killed backend); remove it so the check is honest.
    if [ -e "$sock" ] && ! socket_listening "$sock"; then rm -f "$sock"; fi
    socket_listening "$sock" && vmt_fail "something already listens on $sock"
    printf '$ %s\n' "${cmd[*]}" >>"$VMT_TMP/$name.backend.log"
    "${cmd[@]}" >>"$VMT_TMP/$name.backend.log" 2>&1 </dev/null &
    local pid=$!
    VMT_BACKEND_PID[$name]=$pid
    local rc=0
    wait_for 20 backend_alive_and_listening "$pid" "$sock" || rc=$?
    if [ "$rc" -ne 0 ]; then
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || rc=$?
            unset "VMT_BACKEND_PID[$name]"
            vmt_fail "backend $name exited (status $rc) before listening on $sock"
        fi
        vmt_fail "backend $name not listening on $sock after 20 s"
    fi
}

# backend_listening_all PID SOCKET...: 2 when PID is gone, 0 when every SOCKET listens, else 1.
backend_listening_all() {
    local pid=$1 s
    shift
    kill -0 "$pid" 2>/dev/null || return 2
    for s in "$@"; do socket_listening "$s" || return 1; done
}

# start_backend_config NAME CONFIG SOCKET...: `snapblk serve --config CONFIG` (a device graph) in
# the background; returns once every SOCKET (the exports of CONFIG, absolute paths) listens. Same
# bookkeeping as start_backend: stop_backend NAME stops it, the cleanup trap kills it. snapblk only.
start_backend_config() {
    local name=$1 config=$2 s
    shift 2
    [ "$VMT_BACKEND" = snapblk ] || vmt_fail "start_backend_config needs VMT_BACKEND=snapblk"
    [ -z "${VMT_BACKEND_PID[$name]:-}" ] || vmt_fail "backend $name already running"
    [ -f "$config" ] || vmt_fail "config file $config missing"
    [ $# -gt 0 ] || vmt_fail "start_backend_config $name: no sockets to wait for"
    for s in "$@"; do
        case "$s" in /*) ;; *) vmt_fail "start_backend_config: socket $s is not an absolute path" ;; esac
        if [ -e "$s" ] && ! socket_listening "$s"; then rm -f "$s"; fi
        socket_listening "$s" && vmt_fail "something already listens on $s"
    done
    local cmd=("$SNAPBLK" serve --config "$config")
    printf '$ %s\n' "${cmd[*]}" >>"$VMT_TMP/$name.backend.log"
    "${cmd[@]}" >>"$VMT_TMP/$name.backend.log" 2>&1 </dev/null &
    local pid=$!
    VMT_BACKEND_PID[$name]=$pid
    local rc=0
    wait_for 20 backend_listening_all "$pid" "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || rc=$?
            unset "VMT_BACKEND_PID[$name]"
            vmt_fail "backend $name exited (status $rc) before listening on all of: $*"
        fi
        vmt_fail "backend $name not listening on all of $* after 20 s"
    fi
}

# stop_backend NAME: SIGTERM, wait (bounded), and require exit status 0 (snapblk and qsd alike).
stop_backend() {
    local name=$1 pid rc=0
    pid=${VMT_BACKEND_PID[$name]:-}
    [ -n "$pid" ] || vmt_fail "stop_backend: no backend named $name"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_for 20 pid_gone "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        unset "VMT_BACKEND_PID[$name]"
        vmt_fail "backend $name ignored SIGTERM for 20 s (killed)"
    fi
    wait "$pid" || rc=$?
    unset "VMT_BACKEND_PID[$name]"
    [ "$rc" -eq 0 ] || vmt_fail "backend $name exited with status $rc after SIGTERM"
}

# --- guests ---------------------------------------------------------------------------------

# guest_start SOCKET SCRIPT [qemu args...]: boots a guest in the background that runs SCRIPT (a
# file) as /test.sh. SOCKET "none" attaches no vhost-user disk (the qemu args must then give the
# guest a virtio disk: see qemu_vhost_user and qemu_plain_disk). Env: VMT_QUEUES (virtqueues asked
# by QEMU, default 2), VMT_CHARDEV_OPTS (appended to the vhost-user chardev, e.g. ",reconnect=1"),
# VMT_REBOOT=1 (leave out -no-reboot), VMT_APPEND (more kernel arguments, e.g. "loglevel=7" to see
# the boot).
guest_start() {
    local sock=$1 script=$2 vhost=()
    shift 2
    [ -f "$script" ] || vmt_fail "guest script $script missing"
    # shellcheck disable=SC2054 # commas are QEMU option syntax
    [ "$sock" = none ] || vhost=(-chardev "socket,id=c0,path=$sock${VMT_CHARDEV_OPTS:-}"
        -device "vhost-user-blk-pci,chardev=c0,num-queues=${VMT_QUEUES:-2}")
    [ -z "$VMT_GUEST_PID" ] || vmt_fail "a guest is already running"
    VMT_GUEST_SEQ=$((VMT_GUEST_SEQ + 1))
    VMT_GUEST_DIR="$VMT_TMP/guest$VMT_GUEST_SEQ"
    mkdir -p "$VMT_GUEST_DIR/cpio"
    cp "$script" "$VMT_GUEST_DIR/cpio/test.sh"
    (cd "$VMT_GUEST_DIR/cpio" && echo test.sh | cpio --quiet -o -H newc -R 0:0) >"$VMT_GUEST_DIR/test.cpio"
    cat "$VMT_CACHE/base.cpio" "$VMT_GUEST_DIR/test.cpio" >"$VMT_GUEST_DIR/initrd"
    mkfifo "$VMT_GUEST_DIR/ctl.in" "$VMT_GUEST_DIR/ctl.out"
    # no_timer_check: on a loaded host the TCG guest's early IO-APIC timer check can fail and panic
    # ("IO-APIC + timer doesn't work!", seen while benchmarks ran beside the tests).
    : >"$VMT_GUEST_DIR/console.log"
    local reboot=(-no-reboot)
    [ "${VMT_REBOOT:-0}" != 1 ] || reboot=()
    # shellcheck disable=SC2054 # commas are QEMU option syntax
    local cmd=(timeout --kill-after=10 "$VMT_TIMEOUT" qemu-system-x86_64
        -accel tcg -m 512 -smp 2
        -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem
        -nographic -nodefaults -no-user-config "${reboot[@]}"
        -serial "file:$VMT_GUEST_DIR/console.log" -serial "pipe:$VMT_GUEST_DIR/ctl"
        -kernel "$VMT_CACHE/vmlinuz" -initrd "$VMT_GUEST_DIR/initrd"
        -append "console=ttyS0 quiet panic=-1 no_timer_check ${VMT_APPEND:-}"
        "${vhost[@]}" "$@")
    printf '$ %s\n' "${cmd[*]}" >"$VMT_GUEST_DIR/qemu.log"
    "${cmd[@]}" >>"$VMT_GUEST_DIR/qemu.log" 2>&1 </dev/null &
    VMT_GUEST_PID=$!
    guest_watch_boot "${cmd[@]}"
}

# qemu_vhost_user ARRAY ID SOCKET [QUEUES]: appends to the bash array ARRAY the QEMU args of one more
# vhost-user-blk disk (chardev ID, default 2 queues; ID must not be c0, which guest_start uses).
qemu_vhost_user() {
    local -n _qv_args=$1
    # shellcheck disable=SC2054 # commas are QEMU option syntax
    _qv_args+=(-chardev "socket,id=$2,path=$3${VMT_CHARDEV_OPTS:-}"
        -device "vhost-user-blk-pci,chardev=$2,num-queues=${4:-2}")
}

# qemu_plain_disk ARRAY IMAGE SERIAL [ro]: appends to ARRAY the QEMU args of a plain virtio-blk disk
# backed by the raw file IMAGE (QEMU's own block layer, O_DIRECT), with SERIAL: the guest finds it
# as the /sys/block/vdX whose serial file holds SERIAL. "ro" makes it read-only.
qemu_plain_disk() {
    local -n _qp_args=$1
    local ro=''
    [ "${4:-}" != ro ] || ro=",readonly=on"
    # shellcheck disable=SC2054 # commas are QEMU option syntax
    _qp_args+=(-drive "file=$2,if=none,id=d-$3,format=raw,cache=none,aio=threads$ro"
        -device "virtio-blk-pci,drive=d-$3,serial=$3")
}

# guest_watch_boot QEMU-CMD...: waits until the guest's /init runs. TCG guests here very rarely stall
# in early kernel boot (seen twice in ~150 boots, no output after the kernel starts), and QEMU itself
# has once died of SIGSEGV while the firmware loaded the kernel (a guest of plain virtio-blk disks,
# no vhost-user). Before /init nothing has touched the disks (virtio modules load in /init), so either
# is retried once, with a note. Any other early end is left for guest_wait to report.
guest_watch_boot() {
    local secs=${VMT_BOOT_STALL:-60} try rc why
    for try in 1 2; do
        wait_for "$secs" guest_has_or_ended "vmt-init:" || true
        console_has "vmt-init:" && return 0
        if kill -0 "$VMT_GUEST_PID" 2>/dev/null; then
            [ "$try" = 1 ] || { guest_dump; vmt_fail "guest boot stalled before /init twice"; }
            kill -TERM "$VMT_GUEST_PID" 2>/dev/null || true
            wait "$VMT_GUEST_PID" 2>/dev/null || true
            why="guest boot stalled before /init for ${secs}s under TCG"
        else
            rc=0
            wait "$VMT_GUEST_PID" || rc=$?
            # 124/137: timeout(1) stopped it; 129-159 other than those: QEMU died of a signal.
            if [ "$try" = 2 ] || [ "$rc" -le 128 ] || [ "$rc" -eq 137 ] || [ "$rc" -ge 160 ]; then
                VMT_GUEST_ENDED[$VMT_GUEST_PID]=$rc
                return 0
            fi
            why="QEMU died of signal $((rc - 128)) before /init (qemu.log, console.crashed.log)"
            guest_dump
        fi
        vmt_note "$why; retried once"
        mv "$VMT_GUEST_DIR/console.log" "$VMT_GUEST_DIR/console.crashed.log"
        : >"$VMT_GUEST_DIR/console.log"
        printf '$ %s\n' "$*" >>"$VMT_GUEST_DIR/qemu.log"
        "$@" >>"$VMT_GUEST_DIR/qemu.log" 2>&1 </dev/null &
        VMT_GUEST_PID=$!
    done
}

# console_text FILE: a guest console log as plain text: terminal escape sequences (the
# firmware's screen resets, colour and cursor codes) and other control characters, \r included,
# left out. Tabs, newlines and UTF-8 text stay.
console_text() {
    LC_ALL=C sed -e 's/\x1b\[[0-?]*[ -/]*[@-~]//g' \
        -e 's/\x1b\][^\x07\x1b]*\(\x07\|\x1b\\\)//g' \
        -e 's/\x1b[()][0-9A-Za-z]//g' \
        -e 's/\x1b[@-Z\\^_c78=>]//g' "$1" | LC_ALL=C tr -d '\000-\010\013-\037\177'
}

guest_dump() {
    {
        echo "--- guest console ($VMT_GUEST_DIR/console.log) ---"
        console_text "$VMT_GUEST_DIR/console.log" | tail -n 80
        echo "--- qemu output ---"
        tail -n 20 "$VMT_GUEST_DIR/qemu.log"
    } >&2
}

# guest_wait: waits for the running guest to end and requires "VMT-RESULT: PASS" on its console.
guest_wait() {
    local rc=0 pid=$VMT_GUEST_PID result
    [ -n "$pid" ] || vmt_fail "guest_wait: no guest running"
    if [ -n "${VMT_GUEST_ENDED[$pid]:-}" ]; then
        rc=${VMT_GUEST_ENDED[$pid]} # guest_watch_boot already reaped it
    else
        wait "$pid" || rc=$?
    fi
    VMT_GUEST_PID=
    result=$(tr -d '\r' <"$VMT_GUEST_DIR/console.log" | grep -a -o 'VMT-RESULT: .*' | tail -n1 || true)
    if [ "$result" = "VMT-RESULT: PASS" ] && [ "$rc" -eq 0 ]; then
        return 0
    fi
    guest_dump
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        vmt_fail "guest timed out after ${VMT_TIMEOUT}s (last result: ${result:-none})"
    elif [ -z "$result" ]; then
        vmt_fail "guest ended (qemu status $rc) without a VMT-RESULT line"
    elif [ "$rc" -ne 0 ]; then
        vmt_fail "qemu exited with status $rc (${result})"
    fi
    vmt_fail "guest: ${result#VMT-RESULT: }"
}

# run_guest SOCKET SCRIPT [qemu args...]: boots, runs SCRIPT in the guest, requires PASS.
run_guest() {
    guest_start "$@"
    guest_wait
}

console_has() { tr -d '\r' <"$VMT_GUEST_DIR/console.log" | grep -a -q -- "$1"; }

guest_has_or_ended() {
    console_has "$1" && return 0
    kill -0 "$VMT_GUEST_PID" 2>/dev/null || return 0
    return 1
}

# wait_console PATTERN [SECONDS]: waits until the running guest prints PATTERN.
wait_console() {
    local pat=$1 secs=${2:-$VMT_TIMEOUT}
    wait_for "$secs" guest_has_or_ended "$pat" || { guest_dump; vmt_fail "no '$pat' on the console after ${secs}s"; }
    console_has "$pat" || { guest_wait; vmt_fail "guest ended before printing '$pat'"; }
}

# guest_sync TOKEN: waits for the guest's host_sync TOKEN, then answers it (unblocks the guest).
guest_sync_wait() { wait_console "VMT-SYNC $1"; }
guest_sync_reply() { printf '%s\n' "$1" >"$VMT_GUEST_DIR/ctl.in"; }

# guest_out KEY: the last value the guest reported with `out KEY VALUE`.
guest_out() {
    local v
    v=$(tr -d '\r' <"$VMT_GUEST_DIR/console.log" | awk -v k="$1" '$1 == "VMT-OUT" && $2 == k {v = $3} END {print v}')
    [ -n "$v" ] || vmt_fail "guest did not report '$1'"
    printf '%s\n' "$v"
}

# --- host-side image helpers ----------------------------------------------------------------

# make_image PATH SIZE: sparse image of SIZE (truncate syntax, e.g. 64M); allocated if VMT_DENSE=1.
make_image() {
    rm -f "$1" && truncate -s "$2" "$1" || return
    if [ "${VMT_DENSE:-0}" = 1 ]; then
        # Zeroes written, not fallocate: tmpfs reports fallocated pages as a hole.
        dd if=/dev/zero of="$1" bs=1M count=$(($(stat -c %s "$1") >> 20)) conv=notrunc status=none
    fi
}

# fill_random PATH MIB: fully allocated image of MIB MiB of random bytes.
fill_random() { dd if=/dev/urandom of="$1" bs=1M count="$2" status=none conv=fsync; }

# img_sha PATH OFFSET_MIB LEN_MIB: sha256 of a MiB-aligned region of an image file.
img_sha() { dd if="$1" bs=1M skip="$2" count="$3" status=none | sha256sum | cut -d' ' -f1; }

# file_sha PATH: sha256 of a whole file.
file_sha() { sha256sum "$1" | cut -d' ' -f1; }

# alloc_bytes PATH: bytes allocated on disk for a file.
alloc_bytes() { echo $(($(stat -c '%b * %B' "$1"))); }

# expect_eq GOT WANT WHAT: fails the scenario unless GOT == WANT.
expect_eq() { [ "$1" = "$2" ] || vmt_fail "$3: got '$1', want '$2'"; }

# guest_script PATH [VAR=VALUE...] <<'EOF': writes a guest test script: the VAR assignments
# (shell-quoted), then stdin.
guest_script() {
    local path=$1 kv
    shift
    {
        for kv in "$@"; do printf '%s=%q\n' "${kv%%=*}" "${kv#*=}"; done
        cat
    } >"$path"
}

# ============================================================================================
# --- live control plane and concurrent guests (helpers of the 8X scenarios) -------------------
# Appended block: uses the functions above and changes none of them.

# start_backend_control NAME CTLSOCK STATEDIR [serve args...]: `snapblk serve --state-dir STATEDIR
# --control CTLSOCK` in the background (an empty graph unless STATEDIR holds one); returns once the
# control socket listens, and exports SNAPBLK_CONTROL=CTLSOCK for the CLI (see ctl). Same bookkeeping
# as start_backend: stop_backend NAME stops it, kill_backend NAME kills it, the cleanup trap kills it.
start_backend_control() {
    local name=$1 ctlsock=$2 statedir=$3
    shift 3
    [ "$VMT_BACKEND" = snapblk ] || vmt_fail "start_backend_control needs VMT_BACKEND=snapblk"
    [ -z "${VMT_BACKEND_PID[$name]:-}" ] || vmt_fail "backend $name already running"
    case "$ctlsock" in /*) ;; *) vmt_fail "start_backend_control: $ctlsock is not an absolute path" ;; esac
    if [ -e "$ctlsock" ] && ! socket_listening "$ctlsock"; then rm -f "$ctlsock"; fi
    socket_listening "$ctlsock" && vmt_fail "something already listens on $ctlsock"
    local cmd=("$SNAPBLK" serve --state-dir "$statedir" --control "$ctlsock" "$@")
    printf '$ %s\n' "${cmd[*]}" >>"$VMT_TMP/$name.backend.log"
    "${cmd[@]}" >>"$VMT_TMP/$name.backend.log" 2>&1 </dev/null &
    local pid=$!
    VMT_BACKEND_PID[$name]=$pid
    local rc=0
    wait_for 20 backend_alive_and_listening "$pid" "$ctlsock" || rc=$?
    if [ "$rc" -ne 0 ]; then
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || rc=$?
            unset "VMT_BACKEND_PID[$name]"
            vmt_fail "backend $name exited (status $rc) before listening on $ctlsock"
        fi
        vmt_fail "backend $name: control socket $ctlsock not listening after 20 s"
    fi
    export SNAPBLK_CONTROL=$ctlsock
}

# kill_backend NAME: SIGKILL (a crash), reaped; the sockets it listened on are left behind.
kill_backend() {
    local name=$1 pid
    pid=${VMT_BACKEND_PID[$name]:-}
    [ -n "$pid" ] || vmt_fail "kill_backend: no backend named $name"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "VMT_BACKEND_PID[$name]"
}

# ctl ARGS...: one snapblk control command (SNAPBLK_CONTROL from start_backend_control); prints its
# stdout, logs command and output to $VMT_TMP/ctl.log, fails the scenario on a non-zero status.
ctl() {
    local out rc=0
    out=$("$SNAPBLK" "$@" 2>&1) || rc=$?
    printf '$ snapblk %s\n%s\n' "$*" "$out" >>"$VMT_TMP/ctl.log"
    [ "$rc" -eq 0 ] || vmt_fail "snapblk $* (status $rc): $out"
    printf '%s\n' "$out"
}

# ctl_export_add NODE SOCKET [export add args...]: exports NODE on SOCKET (absolute) and waits until
# the socket listens. --num-queues defaults to $VMT_QUEUES or 2, what guest_start's QEMU asks for.
ctl_export_add() {
    local node=$1 sock=$2
    shift 2
    case "$sock" in /*) ;; *) vmt_fail "ctl_export_add: $sock is not an absolute path" ;; esac
    ctl export add "$node" --socket "$sock" --num-queues "${VMT_QUEUES:-2}" "$@" >/dev/null
    wait_for 20 socket_listening "$sock" || vmt_fail "export of $node: $sock not listening after 20 s"
}

# json_field JSON KEY: the first scalar value of "KEY" in a JSON text (numbers, booleans, strings
# without quotes or escapes); empty when absent. Enough for the CLI's --json lines.
json_field() {
    printf '%s' "$1" | grep -o "\"$2\":[^,}]*" | head -n1 | sed 's/^[^:]*://; s/^"//; s/"$//'
}

# json_fields JSON KEY: every scalar value of "KEY", one a line.
json_fields() {
    printf '%s' "$1" | grep -o "\"$2\":[^,}]*" | sed 's/^[^:]*://; s/^"//; s/"$//'
}

# Several guests at once. guest_start runs one guest (VMT_GUEST_PID/VMT_GUEST_DIR); these helpers keep
# one such pair per ID and select it, so every helper above (wait_console, guest_out,
# guest_sync_wait/reply, guest_dump) works on guest ID after guest_use ID.
declare -A VMT_GN_PID=() VMT_GN_DIR=()

# vmt_init_multi NAME: vmt_init, plus a cleanup that also stops the guests of guest_start_n.
vmt_init_multi() {
    vmt_init "$1"
    trap vmt_cleanup_multi EXIT
}

vmt_cleanup_multi() {
    local rc=$? id pid
    trap - EXIT
    for id in "${!VMT_GN_PID[@]}"; do
        pid=${VMT_GN_PID[$id]}
        [ -n "$pid" ] || continue
        if [ "$rc" -ne 0 ] && [ -n "${VMT_GN_DIR[$id]:-}" ]; then
            echo "--- guest $id ---" >&2
            VMT_GUEST_DIR=${VMT_GN_DIR[$id]} guest_dump
        fi
        kill -TERM "$pid" 2>/dev/null || true
    done
    for id in "${!VMT_GN_PID[@]}"; do
        pid=${VMT_GN_PID[$id]}
        [ -z "$pid" ] || wait "$pid" 2>/dev/null || true
    done
    set +e # the next line sets $? for vmt_cleanup, which must run whatever it is
    (exit "$rc")
    vmt_cleanup
}

# guest_start_n ID SOCKET SCRIPT [qemu args...]: guest_start for guest ID, which then runs alongside
# the others (guest_wait_n ID waits for it).
guest_start_n() {
    local id=$1
    shift
    [ -z "${VMT_GN_PID[$id]:-}" ] || vmt_fail "guest $id already running"
    VMT_GUEST_PID=
    guest_start "$@"
    VMT_GN_PID[$id]=$VMT_GUEST_PID
    VMT_GN_DIR[$id]=$VMT_GUEST_DIR
}

# guest_use ID: makes guest ID the current one for the single-guest helpers.
guest_use() {
    [ -n "${VMT_GN_DIR[$1]:-}" ] || vmt_fail "no guest $1"
    VMT_GUEST_PID=${VMT_GN_PID[$1]}
    VMT_GUEST_DIR=${VMT_GN_DIR[$1]}
}

# guest_wait_n ID: guest_wait for guest ID (requires its VMT-RESULT: PASS).
guest_wait_n() {
    guest_use "$1"
    [ -n "$VMT_GUEST_PID" ] || vmt_fail "guest $1 already waited for"
    VMT_GN_PID[$1]=
    guest_wait
}

# guest_prog_n ID KEY: the last value guest ID printed as "VMT-PROG KEY VALUE" (0 if none yet);
# progress markers the host reads while the guest runs (guest_out needs the value to exist).
guest_prog_n() {
    tr -d '\r' <"${VMT_GN_DIR[$1]}/console.log" |
        awk -v k="$2" '$1 == "VMT-PROG" && $2 == k && $3 ~ /^[0-9]+$/ {v = $3} END {print v + 0}'
}

# wait_prog_n ID KEY MIN [SECONDS]: waits until guest ID's progress KEY reaches MIN.
wait_prog_n() {
    local id=$1 key=$2 min=$3 secs=${4:-$VMT_TIMEOUT}
    guest_use "$id"
    _prog_reached() {
        [ "$(guest_prog_n "$id" "$key")" -ge "$min" ] && return 0
        kill -0 "$VMT_GUEST_PID" 2>/dev/null || return 2
        return 1
    }
    wait_for "$secs" _prog_reached || { guest_dump; vmt_fail "guest $id: progress $key below $min after ${secs}s"; }
}

# vmt_block G I: the 4 KiB test block of generation G, number I: 64 lines of 64 bytes, each
# "vmt gG bI" padded with spaces and a newline. Same function in the guests (see VMT_BLOCK_FN).
vmt_block() {
    local l s
    printf -v l '%-63s\n' "vmt g$1 b$2"
    s=$l$l$l$l$l$l$l$l
    s=$s$s$s$s$s$s$s$s
    printf '%s' "$s"
}

# vmt_blocks G FIRST COUNT: COUNT consecutive test blocks of generation G from number FIRST.
vmt_blocks() {
    local i
    for ((i = $2; i < $2 + $3; i++)); do vmt_block "$1" "$i"; done
}

# VMT_BLOCK_FN: the definitions of vmt_block and vmt_blocks, to paste into a guest script.
VMT_BLOCK_FN="$(declare -f vmt_block vmt_blocks)"

# ============================================================================================
# --- Ceph RBD (helpers of the 9X scenarios) ---------------------------------------------------
# Appended block: uses the functions above and changes none of them.

VMT_CEPH_DIR=

# vmt_ceph_start: a one-node Ceph cluster of its own for the scenario (scripts/ceph-cluster.sh
# start, pool rbd) in $VMT_TMP/ceph, its output in $VMT_TMP/ceph-cluster.log; sets VMT_CEPH_DIR
# and VMT_CEPH_CONF; skips the scenario when Ceph is not installed. After vmt_init or
# vmt_init_multi. The EXIT trap becomes vmt_cleanup_ceph: guests and backends are stopped first,
# then the cluster's daemons (data kept: a failing run's $VMT_TMP holds their logs, a passing
# run's is removed), then vmt_cleanup_multi's cleanup runs (fine after vmt_init too).
vmt_ceph_start() {
    [ -n "$VMT_TMP" ] || vmt_fail "vmt_ceph_start before vmt_init"
    [ -z "$VMT_CEPH_DIR" ] || vmt_fail "vmt_ceph_start: a cluster already runs in $VMT_CEPH_DIR"
    # Skipped without Ceph, which counts as a failure under SNAPBLK_CI=1.
    local tool
    for tool in ceph-mon ceph-mgr ceph-osd rbd; do
        command -v "$tool" >/dev/null || vmt_skip "Ceph not installed, no $tool (scripts/install-deps.sh installs it)"
    done
    VMT_CEPH_DIR="$VMT_TMP/ceph"
    VMT_CEPH_CONF="$VMT_CEPH_DIR/ceph.conf"
    # Unix socket paths (the daemons' admin sockets in run/) must stay under 108 bytes.
    [ ${#VMT_CEPH_DIR} -le 80 ] || vmt_fail "VMT_TMPDIR too long for Ceph's socket paths: $VMT_CEPH_DIR"
    trap vmt_cleanup_ceph EXIT
    "$VMT_REPO/scripts/ceph-cluster.sh" start "$VMT_CEPH_DIR" >>"$VMT_TMP/ceph-cluster.log" 2>&1 ||
        { tail -n 40 "$VMT_TMP/ceph-cluster.log" >&2; vmt_fail "ceph-cluster.sh start failed"; }
    vmt_log "$(grep -a 'ceph-cluster: cluster' "$VMT_TMP/ceph-cluster.log" | tail -n1)"
}

# vmt_ceph CMD: scripts/ceph-cluster.sh CMD on the scenario's cluster (stop, start, stop-osd,
# start-osd...); output to $VMT_TMP/ceph-cluster.log, failure fails the scenario.
vmt_ceph() {
    [ -n "$VMT_CEPH_DIR" ] || vmt_fail "vmt_ceph $1: no cluster (vmt_ceph_start first)"
    "$VMT_REPO/scripts/ceph-cluster.sh" "$1" "$VMT_CEPH_DIR" >>"$VMT_TMP/ceph-cluster.log" 2>&1 ||
        { tail -n 40 "$VMT_TMP/ceph-cluster.log" >&2; vmt_fail "ceph-cluster.sh $1 failed"; }
}

# vmt_rbd ARGS...: the rbd CLI on the scenario's cluster (no progress output).
vmt_rbd() { rbd -c "$VMT_CEPH_CONF" --no-progress "$@"; }

vmt_cleanup_ceph() {
    local rc=$? id pid
    trap - EXIT
    set +e
    # Guests, then backends: nothing uses the cluster when it stops. vmt_cleanup_multi and
    # vmt_cleanup find them gone and still dump the consoles and logs of a failed run.
    for pid in "$VMT_GUEST_PID" "${VMT_GN_PID[@]}"; do
        [ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null
    done
    for pid in "$VMT_GUEST_PID" "${VMT_GN_PID[@]}"; do
        [ -z "$pid" ] || wait "$pid" 2>/dev/null
    done
    for id in "${!VMT_BACKEND_PID[@]}"; do
        kill -KILL "${VMT_BACKEND_PID[$id]}" 2>/dev/null
        wait "${VMT_BACKEND_PID[$id]}" 2>/dev/null
    done
    if [ -n "$VMT_CEPH_DIR" ] && [ -f "$VMT_CEPH_DIR/ceph.conf" ]; then
        "$VMT_REPO/scripts/ceph-cluster.sh" stop "$VMT_CEPH_DIR" >>"$VMT_TMP/ceph-cluster.log" 2>&1 ||
            echo "[$VMT_NAME] stopping the Ceph cluster in $VMT_CEPH_DIR failed" >&2
    fi
    (exit "$rc")
    vmt_cleanup_multi
}

#!/bin/bash
# scripts/ceph-cluster.sh: a throwaway one-node Ceph cluster (one mon, one mgr, one bluestore
# OSD on a sparse file) for the RBD tests, from Debian 12's ceph packages (16.2, Pacific; see
# scripts/install-deps.sh), without systemd: every file of it lives in DIR, its daemons run in
# the background and are stopped by the PIDs recorded in DIR/*.pid. Run as root.
#   scripts/ceph-cluster.sh start DIR      new cluster in DIR (absent or empty); when DIR holds
#                                          a stopped cluster, starts that one again, data kept
#   scripts/ceph-cluster.sh stop DIR       stops the daemons (TERM, then KILL), keeps the data
#   scripts/ceph-cluster.sh restart DIR    stop, then start: same cluster, same images
#   scripts/ceph-cluster.sh stop-osd DIR   stops only the OSD (I/O to the pool blocks)
#   scripts/ceph-cluster.sh start-osd DIR  starts it again and waits until the pool serves I/O
#   scripts/ceph-cluster.sh status DIR     which daemons run, and `ceph -s`
#   scripts/ceph-cluster.sh env DIR        prints `export CEPH_CONF=DIR/ceph.conf`: eval it
#   scripts/ceph-cluster.sh destroy DIR    stop, then rm -rf DIR (only a DIR this script made)
# start returns once an `rbd create` and `rbd rm` of a probe image in the pool succeed (or fails
# after CEPH_START_TIMEOUT seconds, printing the tail of the logs), and prints how long it took.
# Clients need only DIR/ceph.conf: it names the mon (127.0.0.1, v2 and v1) and, with
# `keyring = DIR/keyring`, client.admin's cephx key; e.g. `rbd -c DIR/ceph.conf ls`, or with
# CEPH_CONF set, plain `rbd ls`; librbd: rados_create(&c, "admin"), rados_conf_read_file(c,
# "DIR/ceph.conf") (or NULL, which reads $CEPH_CONF), rados_connect(c).
# Files in DIR: ceph.conf, keyring (client.admin), {mon,mgr,osd}/ (daemon data; osd/block is
# the sparse bluestore device), {mon,mgr,osd}.pid, log/ (NAME.log: the daemons' logs; NAME.out:
# their stdout and stderr; cluster.log), run/ (admin sockets: `ceph daemon DIR/run/ceph-osd.0.asok
# ...`). Mind the 107-byte limit of a socket path: keep DIR short.
# Settings (environment):
#   CEPH_POOL           the replicated pool (size 1) that start creates and inits for rbd (rbd)
#   CEPH_PG_NUM         its placement groups (16)
#   CEPH_OSD_SIZE       the OSD's sparse block file, bytes or with K/M/G/T (4G); fresh start only
#   CEPH_MON_PORT       the mon's msgr v2 port, v1 one above it; fresh start only (default: a free
#                       even port in 10000-31998, below the kernel's ephemeral range, so clusters
#                       coexist; the mon keeps it across restarts)
#   CEPH_START_TIMEOUT  seconds that start and start-osd wait for the pool to serve I/O (120)
#   CEPH_STOP_TIMEOUT   seconds stop waits for each daemon after TERM before a KILL (20)
set -euo pipefail

usage() {
    sed -n '6,14s/^#   /  /p' "$0" >&2
    exit 2
}
[ $# -eq 2 ] || usage
cmd=$1
dir=$(realpath -m "$2")
conf=$dir/ceph.conf
pool=${CEPH_POOL:-rbd}
pg_num=${CEPH_PG_NUM:-16}
start_timeout=${CEPH_START_TIMEOUT:-120}
stop_timeout=${CEPH_STOP_TIMEOUT:-20}
daemons=(mon mgr osd)

# Every ceph tool here gets its -c; a CEPH_ARGS meant for the caller's clients stays out.
unset CEPH_ARGS

log() { echo "ceph-cluster: $*" >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
elapsed() { local ms=$(($(now_ms) - $1)); printf '%d.%01d' $((ms / 1000)) $((ms % 1000 / 100)); }

# The daemon each name stands for: its binary and id.
daemon_args() {
    case $1 in
    mon) echo "ceph-mon -i a" ;;
    mgr) echo "ceph-mgr -i x" ;;
    osd) echo "ceph-osd -i 0" ;;
    esac
}

# pid_of NAME: the PID of this cluster's daemon NAME when it runs (the recorded PID is alive and
# its command line names this cluster's ceph.conf, so a reused PID is not taken for it).
pid_of() {
    local pid
    pid=$(cat "$dir/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-c $conf " ||
        return 1
    echo "$pid"
}

ceph_() { ceph -c "$conf" --connect-timeout 10 "$@"; }

# tails: the end of every log, for a failure's message.
tails() {
    local f
    for f in "$dir"/log/*; do
        [ -s "$f" ] || continue
        echo "==> $f <==" >&2
        tail -n 25 "$f" >&2
    done
}

fail() {
    log "FAIL: $*"
    tails
    stop_all
    log "FAIL: $* (the daemons are stopped; logs in $dir/log)"
    exit 1
}

start_daemon() {
    local name=$1 args
    read -ra args <<<"$(daemon_args "$name")"
    (
        # Keep the caller's pipes (a test's $(...), a CI log) from being held open by a daemon.
        for fd in /proc/"$BASHPID"/fd/*; do
            fd=${fd##*/}
            [ "$fd" -le 2 ] || exec {fd}>&- 2>/dev/null || true
        done
        exec "${args[@]}" -f -c "$conf" </dev/null >>"$dir/log/$name.out" 2>&1
    ) &
    echo $! >"$dir/$name.pid"
}

# stop_daemons NAME...: TERM to each of them that runs, then waits for them all to exit, for
# CEPH_STOP_TIMEOUT seconds before a KILL.
stop_daemons() {
    local name pid pids=() i
    for name in "$@"; do
        if pid=$(pid_of "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    for pid in "${pids[@]}"; do
        for ((i = 0; i < stop_timeout * 10; i++)); do
            [ -d "/proc/$pid" ] || break
            sleep 0.1
        done
        if [ -d "/proc/$pid" ]; then
            log "PID $pid still runs ${stop_timeout}s after TERM: KILL"
            kill -KILL "$pid" 2>/dev/null || true
            while [ -d "/proc/$pid" ]; do sleep 0.1; done
        fi
    done
    for name in "$@"; do rm -f "$dir/$name.pid"; done
}

# stop_all: the OSD first, while the mon can still take its "going down" message (without it,
# the mon would think it up until the OSD boots again), then the mgr and mon together.
stop_all() {
    stop_daemons osd
    stop_daemons mgr mon
}

running() {
    local name
    for name in "${daemons[@]}"; do pid_of "$name" >/dev/null && return 0; done
    return 1
}

# wait_for DEADLINE_MS WHAT CMD...: polls CMD until it succeeds, or fails the start.
wait_for() {
    local deadline=$1 what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(now_ms)" -lt "$deadline" ] || fail "no $what after ${start_timeout}s"
        local name
        for name in "${daemons[@]}"; do
            [ ! -f "$dir/$name.pid" ] || pid_of "$name" >/dev/null || fail "$name exited"
        done
        sleep 0.5
    done
}

mon_answers() { ceph_ mon stat; }
osd_up() { ceph_ osd stat -f json | grep -q '"num_up_osds":1,'; }
# probe: what the cluster is for: an RBD image can be created and removed in the pool.
probe() {
    local image=$pool/ceph-cluster-probe
    timeout 15 rbd -c "$conf" rm --no-progress "$image" >/dev/null 2>&1 || true
    timeout 15 rbd -c "$conf" create --size 1M "$image" &&
        timeout 15 rbd -c "$conf" rm --no-progress "$image"
}

# free_port: an even port P in 10000-31998 such that P and P+1 are free on 127.0.0.1.
free_port() {
    python3 - <<'EOF'
import random, socket
for _ in range(500):
    port = random.randrange(10000, 31998, 2)
    try:
        for p in (port, port + 1):
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(port)
    break
else:
    raise SystemExit("ceph-cluster: no free port pair found in 10000-31999")
EOF
}

# authtool KEYRING ARGS...: ceph-authtool, quiet unless it fails.
authtool() {
    local out
    out=$(CEPH_CONF=/dev/null ceph-authtool "$@" 2>&1) || { echo "$out" >&2; fail "ceph-authtool $*"; }
}

size_bytes() { numfmt --from=iec "$1"; }

write_conf() {
    local fsid=$1 port=$2 block_size=$3
    cat >"$conf" <<EOF
# Written by scripts/ceph-cluster.sh: a one-node test cluster, everything under $dir.
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]
public_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
# client.admin's key: clients need no -k.
keyring = $dir/keyring
run_dir = $dir/run
crash_dir = $dir/crash
log_file = $dir/log/\$name.log
# One OSD: one copy of each object, placed on any OSD (not one per host).
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
# A stopped OSD is never marked out (out, its PGs would have nowhere to go).
mon_osd_down_out_interval = 0
mon_warn_on_osd_down_out_interval_zero = false
# The mgr modules a new cluster enables (the mon reads it at its mkfs).
mgr_initial_modules = iostat

[mon]
mon_data = $dir/mon
keyring = $dir/mon/keyring
mon_cluster_log_file = $dir/log/cluster.log
# 256 MiB, not 2 GiB; its RocksDB cache must stay under that (512 MiB is "Cache kv ratio (2)
# must be in range [0,<1.0]").
mon_memory_target = 268435456
rocksdb_cache_size = 67108864
# The host's disk filling up is not this cluster's business (the mon stops at the crit ratio).
mon_data_avail_warn = 2
mon_data_avail_crit = 1

[mgr]
mgr_data = $dir/mgr
keyring = $dir/mgr/keyring
# Load only the modules the mgr always runs (disabling one of those is a health error) and
# iostat: no dashboard, restful, prometheus... The always-on pg_autoscaler leaves the pools
# alone (pg_autoscale_mode off above), devicehealth is told not to monitor (no pool of its own,
# no smartctl) by create.
mgr_disabled_modules = alerts cephadm dashboard diskprediction_local influx insights k8sevents localpool mirroring nfs osd_perf_query osd_support prometheus restful rook selftest snap_schedule stats telegraf test_orchestrator zabbix

[osd]
osd_data = $dir/osd
keyring = $dir/osd/keyring
osd_objectstore = bluestore
# No bluestore_block_path: it would be a symlink's target; unset, the block file is osd/block.
bluestore_block_create = true
bluestore_block_size = $block_size
# Small for a 2-core CI box (the default target is 4 GiB).
osd_memory_target = 536870912
osd_memory_base = 268435456
osd_memory_cache_min = 67108864
# RocksDB's defaults but for the memtables: 2 of 32 MiB, not 4 of 256 MiB (which took the OSD
# past 850 MiB under small random writes, deferred through RocksDB on a rotational disk).
bluestore_rocksdb_options = compression=kNoCompression,max_write_buffer_number=2,min_write_buffer_number_to_merge=1,recycle_log_file_num=2,write_buffer_size=33554432,writable_file_max_buffer_size=0,compaction_readahead_size=2097152,max_background_compactions=1,max_total_wal_size=134217728
# A PG's log: at most 1000 entries (10000 by default; 16 PGs' logs took 48 MiB).
osd_max_pg_log_entries = 1000

[client]
# Many short-lived clients (rbd, ceph, a daemon's librbd): no admin socket each.
admin_socket =
EOF
}

# create: a new cluster in the empty DIR, its mon, mgr and OSD started.
create() {
    local fsid osd_uuid port block_size key
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    port=${CEPH_MON_PORT:-$(free_port)}
    block_size=$(size_bytes "${CEPH_OSD_SIZE:-4G}")
    mkdir -p "$dir"/{mon,mgr,osd,log,run,crash}
    write_conf "$fsid" "$port" "$block_size"

    # The keys, all known to the mon from its mkfs on: no `ceph auth` round trips.
    key=$dir/mon.mkfs.keyring
    authtool "$key" --create-keyring --gen-key -n mon. --cap mon 'allow *'
    authtool "$dir/keyring" --create-keyring --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
    authtool "$dir/mgr/keyring" --create-keyring --gen-key -n mgr.x \
        --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *'
    authtool "$dir/osd/keyring" --create-keyring --gen-key -n osd.0 \
        --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *'
    for k in "$dir/keyring" "$dir/mgr/keyring" "$dir/osd/keyring"; do
        authtool "$key" --import-keyring "$k"
    done
    CEPH_CONF=/dev/null monmaptool --create --fsid "$fsid" --enable-all-features \
        --set-min-mon-release pacific --addv a "[v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$key" \
        >>"$dir/log/mon.out" 2>&1 || fail "ceph-mon --mkfs"
    rm -f "$key" "$dir/monmap"

    start_daemon mon
    wait_for "$deadline" "answer from the mon on 127.0.0.1:$port" mon_answers
    ceph_ config set mgr mgr/devicehealth/enable_monitoring false --force || fail "ceph config set"
    start_daemon mgr
    [ "$(ceph_ osd new "$osd_uuid" 0 2>>"$dir/log/mon.out")" = 0 ] || fail "ceph osd new"
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$dir/log/osd.out" 2>&1 ||
        fail "ceph-osd --mkfs"
    start_daemon osd
    wait_for "$deadline" "OSD up" osd_up
    touch "$dir/created"
}

# ensure_pool: the pool CEPH_POOL, created and initialized for RBD unless it exists.
ensure_pool() {
    local pools
    pools=$(ceph_ osd pool ls) || fail "ceph osd pool ls"
    ! grep -qxF "$pool" <<<"$pools" || return 0
    ceph_ osd pool create "$pool" "$pg_num" "$pg_num" replicated >/dev/null 2>&1 ||
        fail "ceph osd pool create $pool"
    timeout 60 rbd -c "$conf" pool init "$pool" || fail "rbd pool init $pool"
}

# restart: the stopped cluster in DIR, started again.
restart_existing() {
    local port
    [ -f "$dir/created" ] || {
        log "$dir holds a cluster whose creation did not finish: destroy it first"
        exit 1
    }
    port=$(sed -n 's/^mon_host = \[v2:127.0.0.1:\([0-9]*\),.*/\1/p' "$conf")
    mkdir -p "$dir/run"
    start_daemon mon
    wait_for "$deadline" "answer from the mon on 127.0.0.1:$port (is the port taken?)" mon_answers
    start_daemon mgr
    start_daemon osd
    wait_for "$deadline" "OSD up" osd_up
}

cmd_start() {
    local t0 what
    t0=$(now_ms)
    deadline=$((t0 + start_timeout * 1000))
    if running; then
        log "$dir already holds a running cluster (stop it first)"
        exit 1
    fi
    if [ -f "$conf" ]; then
        what="restarted"
        restart_existing
    elif [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
        log "$dir is neither empty nor a cluster's directory"
        exit 1
    else
        what="created"
        create
    fi
    ensure_pool
    wait_for "$deadline" "RBD image create+remove in pool $pool" probe
    log "cluster $what in $(elapsed "$t0") s: $dir (mon $(sed -n 's/^mon_host = //p' "$conf"), pool $pool)"
}

cmd_start_osd() {
    local t0
    t0=$(now_ms)
    deadline=$((t0 + start_timeout * 1000))
    pid_of mon >/dev/null || { log "the mon of $dir does not run"; exit 1; }
    pid_of osd >/dev/null || start_daemon osd
    wait_for "$deadline" "OSD up" osd_up
    wait_for "$deadline" "RBD image create+remove in pool $pool" probe
    log "OSD started in $(elapsed "$t0") s"
}

cmd_status() {
    local name pid
    for name in mon mgr osd; do
        if pid=$(pid_of "$name"); then
            echo "$name: running, PID $pid, RSS $(awk '/^VmRSS/ {print $2, $3}' "/proc/$pid/status")"
        else
            echo "$name: stopped"
        fi
    done
    if pid_of mon >/dev/null; then ceph_ -s; fi
}

case $cmd in
start)
    cmd_start
    ;;
stop)
    [ -f "$conf" ] || { log "no cluster in $dir"; exit 1; }
    stop_all
    ;;
restart)
    [ -f "$conf" ] || { log "no cluster in $dir"; exit 1; }
    stop_all
    cmd_start
    ;;
stop-osd)
    [ -f "$conf" ] || { log "no cluster in $dir"; exit 1; }
    stop_daemons osd
    ;;
start-osd)
    [ -f "$conf" ] || { log "no cluster in $dir"; exit 1; }
    cmd_start_osd
    ;;
status)
    [ -f "$conf" ] || { log "no cluster in $dir"; exit 1; }
    cmd_status
    ;;
env)
    [ -f "$conf" ] || { log "no cluster in $dir"; exit 1; }
    printf 'export CEPH_CONF=%q\n' "$conf"
    ;;
destroy)
    # Only what this script made: a directory whose ceph.conf it wrote, or an empty one.
    if grep -qs '^# Written by scripts/ceph-cluster.sh' "$conf"; then
        stop_all
    elif [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
        log "$dir holds no cluster of this script's: not removing it"
        exit 1
    fi
    rm -rf "$dir"
    ;;
*)
    usage
    ;;
esac

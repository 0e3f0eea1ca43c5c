#!/usr/bin/env python3
"""scripts/bench.py: snapblk beside qemu-storage-daemon (qsd) and host fio, in one run (issue 5).

Starts snapblk and qsd on the same images, drives both with `snapblk bench` with identical
parameters, alternates the runs (the order rotates every run) and prints one markdown table of
medians and ratios, with the CPU seconds each daemon used per million requests.

Groups (--rows, default all but rbd):
  tmpfs     raw image on /dev/shm: 4 KiB randread/randwrite at QD1 and QD32 on 1 and 2 queues,
            64 KiB sequential read and write at QD8
  rootfs    the same on the root filesystem (/var/tmp)
  snapshot  reads of unchanged chunks through a snapblk snapshot (P, 4 KiB chunks) vs a qsd qcow2
            overlay over the same raw base, with the raw figures beside them; COW-break 4 KiB
            randwrite on a fresh snapshot / overlay each run
  origin    the whole origin rewritten once, 4 KiB writes in a scrambled order at QD32 (a first
            write to every chunk) with 0, 1, 4 and 16 fresh P snapshots (4 KiB chunks): IOPS and
            peak RSS (qsd: the same pass on the raw image, for reference); then one pass of
            64 KiB sequential writes (QD8) with 4 snapshots and with none
  fio       the ceiling: fio on the host against the tmpfs/rootfs image (psync and io_uring)
  qos       snapblk's QoS limits on a raw image on /dev/shm, in a table of their own: IOPS limits
            (500 to 100k, 4 KiB randread QD32) and bandwidth limits (10 MiB/s to 1 GiB/s, 64 KiB
            sequential reads QD8), 10 s runs, achieved rate / limit; then the cost of limits set
            far above the rate on the tmpfs 4 KiB randread QD32 row (at least 5 runs of each)
  rbd       Ceph RBD, in a table of its own: a one-node cluster started for the run
            (scripts/ceph-cluster.sh, under /tmp), one --size image written in full once;
            snapblk's rbd: origin vs qsd's rbd driver (cache.direct=on and =off) on it: 4 KiB
            randread/randwrite QD32, 64 KiB sequential read and write QD8, rate and daemon CPU
            per request; then a P snapshot (4 KiB chunks, COW in --dir rbd=, /dev/shm by
            default) of an RBD snapshot of the image: 4 KiB randread QD32 of the clone (every
            chunk unchanged, read from RBD) vs its origin's export, in one daemon. Only when
            named (--rows rbd): it needs root and Ceph (scripts/install-deps.sh)

    python3 scripts/bench.py [--runs 3] [--seconds 5] [--size 1G] [--rows tmpfs,rootfs,...]
                             [--dir rootfs=/mnt/nvme] [--json results.json]
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from benchlib import (SNAPBLK, ROOT, BenchFailure, cleanup, cpu_seconds, ensure_tools,
                      exit_on_signals, fs_type, make_image, RssPeak, run_json,
                      snapblk_bench, spawn, stop, wait_socket, workdir)
from benchlib import CephCluster, ensure_ceph, log_tail

# The daemon binary (default: the one that drives the runs); set to compare two builds.
DAEMON = os.environ.get("SNAPBLK_DAEMON", SNAPBLK)
GROUPS = ("tmpfs", "rootfs", "snapshot", "origin", "fio", "qos", "rbd")
# What runs without --rows: all but rbd, which starts a Ceph cluster.
DEFAULT_ROWS = tuple(g for g in GROUPS if g != "rbd")
DEFAULT_DIRS = {"tmpfs": "/dev/shm", "rootfs": "/var/tmp", "snapshot": "/dev/shm",
                "origin": "/var/tmp", "qos": "/dev/shm", "rbd": "/dev/shm"}
# The groups that start qemu-storage-daemon (qemu-img for the overlays).
QSD_GROUPS = ("tmpfs", "rootfs", "snapshot", "origin")
ORIGIN_SNAPSHOTS = (0, 1, 4, 16)
RSS_TARGET_MIB = 256


@dataclass(frozen=True)
class Workload:
    rw: str
    bs: str
    iodepth: int
    queues: int = 1
    once: bool = False
    # Length of each timed run; 0: --seconds.
    seconds: int = 0

    @property
    def label(self):
        text = f"{self.bs} {self.rw} QD{self.iodepth} {self.queues}q"
        if self.seconds:
            text += f", {self.seconds} s"
        return text + ", one pass" if self.once else text

    @property
    def sequential(self):
        return self.rw in ("read", "write")

    @property
    def bs_bytes(self):
        return int(self.bs[:-1]) << 10

    def bench_args(self, seconds):
        args = ["--rw", self.rw, "--bs", self.bs, "--iodepth", str(self.iodepth),
                "--queues", str(self.queues), "--seconds", str(seconds)]
        return args + ["--once"] if self.once else args


RAW_WORKLOADS = [Workload(rw, "4k", qd, q) for rw in ("randread", "randwrite")
                 for qd in (1, 32) for q in (1, 2)]
RAW_WORKLOADS += [Workload("read", "64k", 8), Workload("write", "64k", 8)]
SNAP_READ = Workload("randread", "4k", 32)
COW_BREAK = Workload("randwrite", "4k", 32)
ORIGIN_PASS = Workload("randwrite", "4k", 32, once=True)
ORIGIN_SEQ = Workload("write", "64k", 8, once=True)
ORIGIN_SEQ_SNAPSHOTS = 4
# A one-pass workload ends when the pass does: --seconds is only its safety limit.
PASS_LIMIT_S = 3600
# qos: the limits measured (serve flags), each over QOS_SECONDS from a fresh daemon (a full
# bucket: a burst of 0.1 s worth first, so a greedy client gets limit × (1 + 0.1 / 10)).
QOS_SECONDS = 10
QOS_IOPS = (500, 5000, 50000, 100000)
QOS_IOPS_WL = Workload("randread", "4k", 32, seconds=QOS_SECONDS)
QOS_BPS_MIB = (10, 100, 1024)
QOS_BPS_WL = Workload("read", "64k", 8, seconds=QOS_SECONDS)
QOS_TOLERANCE = 0.05
# Overhead: the tmpfs randread row with limits no request ever waits for, against no limits.
QOS_OVERHEAD_WL = Workload("randread", "4k", 32)
QOS_FAR = ("--iops-total", "100000000", "--bps-total", "100G")
# At least this many runs of each (this 2-core VM's 1-queue rate moves by 10-20% between runs).
QOS_OVERHEAD_MIN_RUNS = 5
QOS_OVERHEAD_TARGET = 0.97
# rbd: the Ceph cluster's directory goes under RBD_CLUSTER_PARENT (short: the admin sockets'
# paths); --dir rbd= holds the clone's COW file and the sockets.
RBD_CLUSTER_PARENT = "/tmp"
RBD_POOL, RBD_IMAGE, RBD_SNAP = "rbd", "bench", "base"
RBD_WORKLOADS = [Workload("randread", "4k", 32), Workload("randwrite", "4k", 32),
                 Workload("read", "64k", 8), Workload("write", "64k", 8)]
# qsd's rbd driver both ways: cache.direct=on makes QEMU set rbd_cache=false, off (QEMU's
# default, writeback) rbd_cache=true. snapblk/qsd is taken against the faster one of each row.
RBD_QSD_CACHE_DIRECT = ("on", "off")
RBD_CLONE_READ = Workload("randread", "4k", 32)
RBD_CLONE_TARGET = 0.9


@dataclass
class Contender:
    """One side of a comparison: `run(workload)` measures once and returns a sample dict."""
    name: str
    run: Callable[[Workload], dict]


@dataclass
class Row:
    group: str
    title: str
    workload: str
    med: dict
    note: str = ""
    sequential: bool = False
    # qos rows: the limit (in `unit`: "IOPS" or "MiB/s"; None: no limit) and each run's rate.
    limit: float = None
    unit: str = ""
    limit_text: str = ""
    per_run: list = field(default_factory=list)


@dataclass
class Options:
    runs: int
    seconds: int
    size_mib: int
    rows: list
    dirs: dict
    samples: list = field(default_factory=list)
    # rbd: what the notes say about the cluster (filled in by group_rbd).
    rbd_info: dict = field(default_factory=dict)


def progress(msg):
    print(msg, file=sys.stderr, flush=True)


def sample(iops, mib_s, p50, cpu_per_m=None, rss=None):
    return {"iops": iops, "mib_s": mib_s, "p50_us": p50, "cpu_s_per_m": cpu_per_m, "rss_mib": rss}


def median_sample(samples):
    keys = samples[0].keys()
    vals = {k: [s[k] for s in samples if s[k] is not None] for k in keys}
    return {k: statistics.median(v) if v else None for k, v in vals.items()}


# --- daemons -------------------------------------------------------------------------------

def qsd_cmd(sock, queues, node, *blockdevs):
    cmd = ["qemu-storage-daemon"]
    for b in blockdevs:
        cmd += ["--blockdev", b]
    return cmd + ["--export", f"type=vhost-user-blk,id=e,addr.type=unix,addr.path={sock},"
                  f"node-name={node},writable=on,num-queues={queues}"]


def file_node(node, path, readonly=False):
    ro = ",read-only=on" if readonly else ""
    return f"driver=file,node-name={node},filename={path},aio=io_uring{ro}"


def snapblk_raw(image, extra=()):
    """snapblk serving the raw `image`; `extra`: more serve flags (QoS limits)."""
    def prepare(wl, rundir):
        sock = f"{rundir}/snapblk.sock"
        return [DAEMON, "serve", "--socket", sock, "--image", image,
                "--num-queues", str(wl.queues), *extra], sock
    return prepare


def qsd_raw(image):
    def prepare(wl, rundir):
        sock = f"{rundir}/qsd.sock"
        return qsd_cmd(sock, wl.queues, "d", file_node("d", image)), sock
    return prepare


def qsd_overlay(base):
    """A fresh qcow2 overlay (qemu-img defaults) over the raw `base`, base opened read-only."""
    def prepare(wl, rundir):
        ov, sock = f"{rundir}/overlay.qcow2", f"{rundir}/qsd.sock"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", ov],
                       check=True)
        return qsd_cmd(sock, wl.queues, "q", file_node("base", base, readonly=True),
                       file_node("f", ov), "driver=qcow2,node-name=q,file=f,backing=base"), sock
    return prepare


def graph_toml(rundir, origin, snapshots, export, queues, cow_bytes):
    parts = [f'[[origin]]\nname = "o"\nimage = "{origin}"\n']
    for i in range(snapshots):
        parts.append(f'[[snapshot]]\nname = "s{i}"\norigin = "o"\ncow = "{rundir}/s{i}.cow"\n'
                     f'store = "P"\nchunk_size = "4K"\ncreate_size = {cow_bytes}\n')
    parts.append(f'[[export]]\nnode = "{export}"\nsocket = "{rundir}/snapblk.sock"\n'
                 f'num_queues = {queues}\n')
    return "\n".join(parts)


def snapblk_graph(origin, snapshots, export):
    """snapblk serving a graph: `origin` with fresh P snapshots (4 KiB chunks), one exported."""
    def prepare(wl, rundir):
        size = os.path.getsize(origin)
        cow_bytes = size + size // 64 + (8 << 20)
        cfg = f"{rundir}/graph.toml"
        with open(cfg, "w") as f:
            f.write(graph_toml(rundir, origin, snapshots, export, wl.queues, cow_bytes))
        return [DAEMON, "serve", "--config", cfg], f"{rundir}/snapblk.sock"
    return prepare


def run_daemon(prepare, wl, gdir, opts):
    """Starts a daemon in a fresh run directory, benches it once, stops it, removes the files."""
    rundir = os.path.join(gdir, "run")
    os.mkdir(rundir)
    p = None
    try:
        cmd, sock = prepare(wl, rundir)
        p = spawn(cmd, f"{rundir}/daemon.log")
        wait_socket(sock, p)
        c0 = cpu_seconds(p.pid)
        peak = RssPeak(p.pid)
        try:
            seconds = PASS_LIMIT_S if wl.once else wl.seconds or opts.seconds
            r = snapblk_bench(sock, *wl.bench_args(seconds))
        finally:
            rss = peak.stop()
        cpu = cpu_seconds(p.pid) - c0
    finally:
        if p is not None:
            stop(p)
        shutil.rmtree(rundir, ignore_errors=True)
    if r["errors"]:
        raise BenchFailure(f"{cmd[0]}: {r['errors']} I/O errors in {wl.label}")
    p50 = r["latency_us"]["p50"]
    return sample(r["iops"], r["mib_per_s"], p50, cpu / max(r["ops"], 1) * 1e6, rss)


def daemon(name, prepare, gdir, opts):
    return Contender(name, lambda wl: run_daemon(prepare, wl, gdir, opts))


# --- fio -----------------------------------------------------------------------------------

def fio_cmd(engine, image, wl, seconds):
    """psync: queues x iodepth jobs of one request each; io_uring: one job per queue at the
    workload's depth. Each job has its own share of the file, as each bench queue has."""
    jobs = wl.queues * (wl.iodepth if engine == "psync" else 1)
    depth = 1 if engine == "psync" else wl.iodepth
    share = os.path.getsize(image) // jobs // wl.bs_bytes * wl.bs_bytes
    return ["fio", "--name=ceiling", f"--filename={image}", f"--rw={wl.rw}", f"--bs={wl.bs}",
            f"--ioengine={engine}", f"--iodepth={depth}", f"--numjobs={jobs}",
            f"--size={share}", f"--offset_increment={share}", "--time_based",
            f"--runtime={seconds}", "--group_reporting", "--norandommap", "--randrepeat=0",
            "--output-format=json"]


def run_fio(engine, image, wl, opts):
    job = run_json(fio_cmd(engine, image, wl, opts.seconds))["jobs"][0]
    side = job["write" if wl.rw.endswith("write") else "read"]
    p50 = side["clat_ns"]["percentile"]["50.000000"] / 1000
    return sample(side["iops"], side["bw_bytes"] / (1 << 20), p50)


def fio(engine, image, opts):
    return Contender(f"fio {engine}", lambda wl: run_fio(engine, image, wl, opts))


# --- measuring -----------------------------------------------------------------------------

def evict(path):
    """Writes the file's dirty pages back and drops it from the page cache (not on tmpfs,
    where the pages are the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(group, contenders, wl, opts, cold=None, runs=None):
    """`runs` (default `opts.runs`) runs of every contender, alternating, the order rotated
    each run; medians, and every run's sample in `opts.samples`.
    `cold`: a file evicted from the page cache before every run. Every run issues the same
    offsets (the bench's fixed seed), so without that a run would find the previous one's
    reads cached, and which contender follows which decides the result."""
    n = runs or opts.runs
    runs = {c.name: [] for c in contenders}
    for i in range(n):
        k = i % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            if cold:
                evict(cold)
            s = c.run(wl)
            runs[c.name].append(s)
            opts.samples.append({"group": group, "workload": wl.label, "contender": c.name, **s})
            progress(f"{group}: {wl.label}: run {i + 1}/{n} {c.name}: "
                     f"{s['iops']:,.0f} IOPS ({s['mib_s']:,.1f} MiB/s), p50 {s['p50_us']:.0f} us")
    return {name: median_sample(s) for name, s in runs.items()}


def group_dir(key, opts, need_mib):
    parent = opts.dirs[key]
    free_mib = shutil.disk_usage(parent).free >> 20
    if free_mib < need_mib:
        raise BenchFailure(f"{key}: {parent} has {free_mib} MiB free, the group needs ~{need_mib}")
    return workdir(parent)


def title(key, opts):
    return f"{key}: {opts.dirs[key]} ({fs_type(opts.dirs[key])})"


def group_raw(key, opts, rows):
    d = group_dir(key, opts, opts.size_mib + 64)
    image = make_image(f"{d}/raw.img", opts.size_mib)
    contenders = [daemon("snapblk", snapblk_raw(image), d, opts),
                  daemon("qsd", qsd_raw(image), d, opts)]
    if "fio" in opts.rows:
        contenders += [fio("psync", image, opts), fio("io_uring", image, opts)]
    for wl in RAW_WORKLOADS:
        med = measure(key, contenders, wl, opts, cold=image if fs_type(d) != "tmpfs" else None)
        rows.append(Row(key, title(key, opts), wl.label, med, sequential=wl.sequential))
    shutil.rmtree(d)


def group_snapshot(opts, rows):
    key = "snapshot"
    d = group_dir(key, opts, opts.size_mib * 3 + 64)
    base = make_image(f"{d}/base.img", opts.size_mib)
    snap, raw = snapblk_graph(base, 1, "s0"), snapblk_raw(base)
    contenders = [daemon("snapblk", snap, d, opts), daemon("qsd", qsd_overlay(base), d, opts),
                  daemon("snapblk raw", raw, d, opts), daemon("qsd raw", qsd_raw(base), d, opts)]
    med = measure(key, contenders, SNAP_READ, opts)
    cow = measure(key, contenders[:2], COW_BREAK, opts)
    shutil.rmtree(d)
    t = title(key, opts)
    raw_med = {"snapblk": med.pop("snapblk raw"), "qsd": med.pop("qsd raw")}
    note = (f"snapblk snapshot/raw {ratio(med['snapblk'], raw_med['snapblk'])}, "
            f"qsd overlay/raw {ratio(med['qsd'], raw_med['qsd'])}")
    rows.append(Row(key, t, f"{SNAP_READ.label}, unchanged chunks: snapshot vs overlay", med, note))
    rows.append(Row(key, t, f"{SNAP_READ.label}, raw base (reference)", raw_med))
    rows.append(Row(key, t, f"{COW_BREAK.label}, COW break: fresh snapshot vs fresh overlay", cow))


def group_origin(opts, rows):
    key = "origin"
    d = group_dir(key, opts, opts.size_mib * (2 + max(ORIGIN_SNAPSHOTS) * 103 // 100) + 64)
    origin = make_image(f"{d}/origin.img", opts.size_mib)
    contenders = [daemon(f"snapblk {n}", snapblk_graph(origin, n, "o"), d, opts)
                  for n in ORIGIN_SNAPSHOTS]
    contenders.append(daemon("qsd", qsd_raw(origin), d, opts))
    med = measure(key, contenders, ORIGIN_PASS, opts)
    zero = med["snapblk 0"]
    for n in ORIGIN_SNAPSHOTS:
        s = med[f"snapblk {n}"]
        pair = {"snapblk": s, "qsd": med["qsd"] if n == 0 else None}
        note = "qsd: raw image, no snapshots" if n == 0 else f"{ratio(s, zero)} the 0-snapshot IOPS"
        label = f"{ORIGIN_PASS.label}, {n} snapshot{'' if n == 1 else 's'}"
        rows.append(Row(key, title(key, opts), label, pair, note))
    seq = [c for c in contenders if c.name in ("snapblk 0", f"snapblk {ORIGIN_SEQ_SNAPSHOTS}")]
    med = measure(key, seq, ORIGIN_SEQ, opts)
    s, zero = med[f"snapblk {ORIGIN_SEQ_SNAPSHOTS}"], med["snapblk 0"]
    label = f"{ORIGIN_SEQ.label}, {ORIGIN_SEQ_SNAPSHOTS} snapshots"
    rows.append(Row(key, title(key, opts), label, {"snapblk": s, "qsd": None},
                    f"{s['mib_s']:,.0f} MiB/s; 0 snapshots: {zero['mib_s']:,.0f} MiB/s",
                    sequential=True))
    shutil.rmtree(d)


def runs_of(opts, group, wl, name, key):
    """`key` of every run of contender `name` on `wl` in `group`, in the order run."""
    return [s[key] for s in opts.samples
            if s["group"] == group and s["workload"] == wl.label and s["contender"] == name]


def group_qos(opts, rows):
    """QoS limits: the rate each limit lets through, and what limits no request waits for cost."""
    key = "qos"
    d = group_dir(key, opts, opts.size_mib + 64)
    image = make_image(f"{d}/raw.img", opts.size_mib)
    t = title(key, opts)
    plain = daemon("snapblk", snapblk_raw(image), d, opts)

    # The cost first: its unlimited median is the reference the IOPS rows are read against.
    far = daemon("snapblk " + " ".join(QOS_FAR), snapblk_raw(image, QOS_FAR), d, opts)
    wl = QOS_OVERHEAD_WL
    med = measure(key, [plain, far], wl, opts, runs=max(opts.runs, QOS_OVERHEAD_MIN_RUNS))
    free = med[plain.name]
    x = med[far.name]["iops"] / free["iops"]
    cpu = med[far.name]["cpu_s_per_m"] / free["cpu_s_per_m"]
    rows.append(Row(key, t, f"{wl.label}, no limits", {"snapblk": free}, unit="IOPS",
                    per_run=runs_of(opts, key, wl, plain.name, "iops"),
                    note="the reference for the IOPS rows and the overhead row"))
    rows.append(Row(key, t, f"{wl.label}, limits far above the rate",
                    {"snapblk": med[far.name]}, unit="IOPS", limit_text=" ".join(QOS_FAR),
                    per_run=runs_of(opts, key, wl, far.name, "iops"),
                    note=f"overhead: limited/unlimited IOPS {x:.3f}× ({1 - x:+.1%} cost); "
                    f"daemon CPU per request {cpu:.3f}×"))

    for n in QOS_IOPS:
        flags = ("--iops-total", str(n))
        c = daemon("snapblk " + " ".join(flags), snapblk_raw(image, flags), d, opts)
        s = measure(key, [c], QOS_IOPS_WL, opts)[c.name]
        note = ""
        if free["iops"] < n * (1 + QOS_TOLERANCE):
            note = (f"unlimited rate ({free['iops']:,.0f} IOPS, {wl.label}) is "
                    f"{free['iops'] / n:.2f}× this limit: the client/CPUs bound it, not the limit")
        rows.append(Row(key, t, f"{QOS_IOPS_WL.label}, --iops-total {n}", {"snapblk": s}, note,
                        limit=n, unit="IOPS",
                        per_run=runs_of(opts, key, QOS_IOPS_WL, c.name, "iops")))

    wl = QOS_BPS_WL
    ref = measure(key, [plain], wl, opts)[plain.name]
    rows.append(Row(key, t, f"{wl.label}, no limits", {"snapblk": ref}, unit="MiB/s",
                    per_run=runs_of(opts, key, wl, plain.name, "mib_s"),
                    note="the reference for the bandwidth rows", sequential=True))
    for mib in QOS_BPS_MIB:
        arg = f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"
        flags = ("--bps-total", arg)
        c = daemon("snapblk " + " ".join(flags), snapblk_raw(image, flags), d, opts)
        s = measure(key, [c], wl, opts)[c.name]
        note = ""
        if ref["mib_s"] < mib * (1 + QOS_TOLERANCE):
            note = (f"unlimited rate ({ref['mib_s']:,.0f} MiB/s) is "
                    f"{ref['mib_s'] / mib:.2f}× this limit")
        rows.append(Row(key, t, f"{wl.label}, --bps-total {arg}", {"snapblk": s}, note,
                        sequential=True, limit=mib, unit="MiB/s",
                        per_run=runs_of(opts, key, wl, c.name, "mib_s")))
    shutil.rmtree(d)


# --- rbd -----------------------------------------------------------------------------------

def snapblk_rbd(image, conf):
    """snapblk serving the RBD image `image` (POOL/IMAGE[@SNAP]) of the cluster of `conf`."""
    def prepare(wl, rundir):
        sock = f"{rundir}/snapblk.sock"
        return [DAEMON, "serve", "--socket", sock, "--image", f"rbd:{image}", "--ceph-conf", conf,
                "--num-queues", str(wl.queues)], sock
    return prepare


def qsd_rbd_node(pool, image, conf, direct):
    return (f"driver=rbd,node-name=r,pool={pool},image={image},conf={conf},"
            f"cache.direct={direct}")


def qsd_rbd(pool, image, conf, direct):
    """qsd's rbd driver on the image; `direct`: cache.direct, on or off."""
    def prepare(wl, rundir):
        sock = f"{rundir}/qsd.sock"
        return qsd_cmd(sock, wl.queues, "r", qsd_rbd_node(pool, image, conf, direct)), sock
    return prepare


def rbd_daemon(name, prepare, gdir, opts, cluster):
    """A fresh daemon per run (run_daemon), the OSD's caches dropped before it."""
    def run(wl):
        cluster.drop_caches()
        return run_daemon(prepare, wl, gdir, opts)
    return Contender(name, run)


def bench_running(p, sock, wl, opts):
    """One bench of `sock`, served by the running daemon `p`: its CPU and peak RSS meanwhile."""
    if p.poll() is not None:
        raise BenchFailure(f"daemon exited with {p.returncode}:\n{log_tail(p)}")
    c0 = cpu_seconds(p.pid)
    peak = RssPeak(p.pid)
    try:
        r = snapblk_bench(sock, *wl.bench_args(wl.seconds or opts.seconds))
    finally:
        rss = peak.stop()
    cpu = cpu_seconds(p.pid) - c0
    if r["errors"]:
        raise BenchFailure(f"{sock}: {r['errors']} I/O errors in {wl.label}")
    p50 = r["latency_us"]["p50"]
    return sample(r["iops"], r["mib_per_s"], p50, cpu / max(r["ops"], 1) * 1e6, rss)


def rbd_clone_toml(gdir, origin, conf, size):
    """The clone graph: origin "golden" (the RBD snapshot `origin`), P snapshot "vm1" of it
    (4 KiB chunks, fresh COW in `gdir`), both exported (golden read-only)."""
    cow_bytes = size + size // 64 + (8 << 20)
    return (f'[[origin]]\nname = "golden"\nimage = "rbd:{origin}"\nceph_conf = "{conf}"\n\n'
            f'[[snapshot]]\nname = "vm1"\norigin = "golden"\ncow = "{gdir}/vm1.cow"\n'
            f'store = "P"\nchunk_size = "4K"\ncreate_size = {cow_bytes}\n\n'
            f'[[export]]\nnode = "vm1"\nsocket = "{gdir}/vm1.sock"\n\n'
            f'[[export]]\nnode = "golden"\nsocket = "{gdir}/golden.sock"\nreadonly = true\n')


def group_rbd_clone(opts, rows, cluster, gdir, origin):
    """4 KiB randread of a P snapshot of the RBD snapshot `origin`, every chunk unchanged (read
    from RBD through the snapshot), vs the origin's own export, both in one daemon."""
    key, wl = "rbd", RBD_CLONE_READ
    cfg = f"{gdir}/clone.toml"
    with open(cfg, "w") as f:
        f.write(rbd_clone_toml(gdir, origin, cluster.conf, opts.size_mib << 20))
    p = spawn([DAEMON, "serve", "--config", cfg], f"{gdir}/clone.log")
    try:
        for node in ("vm1", "golden"):
            wait_socket(f"{gdir}/{node}.sock", p)

        def reader(node):
            def run(wl):
                cluster.drop_caches()
                return bench_running(p, f"{gdir}/{node}.sock", wl, opts)
            return run
        contenders = [Contender("clone", reader("vm1")), Contender("origin", reader("golden"))]
        med = measure(key, contenders, wl, opts)
    finally:
        stop(p)
    t = (f"rbd: clone, COW on {opts.dirs[key]} ({fs_type(opts.dirs[key])})")
    clone, orig = med["clone"], med["origin"]
    rows.append(Row(key, t, f"{wl.label}, clone vm1 of rbd:{origin} (P, 4 KiB chunks, all "
                    "unchanged: reads go to RBD)", {"snapblk": clone},
                    note=f"clone/origin {ratio(clone, orig)} IOPS, "
                    f"{ratio(clone, orig, 'cpu_s_per_m')} CPU per request"))
    rows.append(Row(key, t, f"{wl.label}, origin golden = rbd:{origin}, exported read-only, "
                    "same daemon", {"snapblk": orig}))


def group_rbd(opts, rows):
    """snapblk's librbd origin vs qsd's rbd driver on a one-node cluster, then a clone's reads."""
    key = "rbd"
    size = opts.size_mib << 20
    # The OSD's sparse block file: the image, once, and room for BlueStore and RocksDB.
    osd_bytes = max(4 << 30, 2 * size + (2 << 30))
    free = shutil.disk_usage(RBD_CLUSTER_PARENT).free
    if free < size + (2 << 30):
        raise BenchFailure(f"rbd: {RBD_CLUSTER_PARENT} has {free >> 20} MiB free, the cluster "
                           f"needs ~{(size >> 20) + 2048}")
    gdir = group_dir(key, opts, 64)
    progress(f"{key}: starting a one-node Ceph cluster under {RBD_CLUSTER_PARENT}")
    with CephCluster(osd_bytes, RBD_CLUSTER_PARENT, RBD_POOL) as cl:
        fs = fs_type(RBD_CLUSTER_PARENT)
        opts.rbd_info.update(version=cl.version(), dir=cl.dir, fs=fs, osd_gib=osd_bytes / 2**30,
                             start_s=round(cl.start_s, 1))
        progress(f"{key}: cluster up in {cl.start_s:.0f} s in {cl.dir}")
        image = f"{RBD_POOL}/{RBD_IMAGE}"
        cl.run("rbd", "create", "--size", f"{opts.size_mib}M", image)
        t0 = time.monotonic()
        cl.run("rbd", "bench", "--io-type", "write", "--io-size", "4M", "--io-pattern", "seq",
               "--io-total", f"{opts.size_mib}M", image, timeout=3600)
        fill_s = time.monotonic() - t0
        opts.rbd_info["fill_mib_s"] = round(opts.size_mib / fill_s)
        progress(f"{key}: {image} written in {fill_s:.1f} s")
        contenders = [rbd_daemon("snapblk", snapblk_rbd(image, cl.conf), gdir, opts, cl)]
        contenders += [rbd_daemon(f"qsd cache.direct={m}",
                                  qsd_rbd(RBD_POOL, RBD_IMAGE, cl.conf, m), gdir, opts, cl)
                       for m in RBD_QSD_CACHE_DIRECT]
        t = f"rbd: {image}, 1 OSD, {RBD_CLUSTER_PARENT} ({fs})"
        for wl in RBD_WORKLOADS:
            med = measure(key, contenders, wl, opts)
            rows.append(Row(key, t, wl.label, med, sequential=wl.sequential))
        # The RBD snapshot after the rows above: their writes were no first writes after a
        # snapshot (no RADOS object clones), and nothing writes to the image after it.
        cl.run("rbd", "snap", "create", f"{image}@{RBD_SNAP}")
        group_rbd_clone(opts, rows, cl, gdir, f"{image}@{RBD_SNAP}")
    shutil.rmtree(gdir)


# --- report --------------------------------------------------------------------------------

COLUMNS = ["group", "workload", "snapblk IOPS", "qsd IOPS", "snapblk/qsd", "p50 µs snapblk",
           "p50 µs qsd", "CPU s/M req snapblk", "CPU s/M req qsd", "peak RSS MiB snapblk/qsd",
           "fio psync IOPS", "fio io_uring IOPS", "snapblk/fio io_uring", "note"]


def ratio(a, b, key="iops"):
    if not a or not b or not a.get(key) or not b.get(key):
        return "-"
    return f"{a[key] / b[key]:.2f}×"


def num(s, key, fmt="{:,.0f}"):
    if not s or s.get(key) is None:
        return "-"
    return fmt.format(s[key])


def rate(s, sequential):
    text = num(s, "iops")
    if sequential and text != "-":
        text += f" ({s['mib_s']:,.0f} MiB/s)"
    return text


def cells(row):
    a, b = row.med.get("snapblk"), row.med.get("qsd")
    psync, uring = row.med.get("fio psync"), row.med.get("fio io_uring")
    rss = f"{num(a, 'rss_mib')} / {num(b, 'rss_mib')}"
    return [row.title, row.workload, rate(a, row.sequential), rate(b, row.sequential),
            ratio(a, b), num(a, "p50_us", "{:,.1f}"), num(b, "p50_us", "{:,.1f}"),
            num(a, "cpu_s_per_m", "{:.2f}"), num(b, "cpu_s_per_m", "{:.2f}"), rss,
            rate(psync, row.sequential), rate(uring, row.sequential), ratio(a, uring), row.note]


def table(rows, columns=COLUMNS, cells=cells):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


QOS_COLUMNS = ["group", "workload", "limit", "achieved (median)", "achieved/limit",
               "each run (/limit)", "p50 µs", "CPU s/M req", "daemon CPU, cores", "note"]


def qos_value(v, unit):
    return f"{v:,.0f} {unit}" if unit == "IOPS" or v >= 100 else f"{v:,.2f} {unit}"


def qos_cells(row):
    s = row.med["snapblk"]
    got = s["iops"] if row.unit == "IOPS" else s["mib_s"]
    if row.limit:
        limit, x = qos_value(row.limit, row.unit), f"{got / row.limit:.3f}"
        each = ", ".join(f"{v / row.limit:.3f}" for v in row.per_run)
    else:
        limit, x = row.limit_text or "none", "-"
        each = ", ".join(qos_value(v, row.unit) for v in row.per_run)
    cores = "-" if s.get("cpu_s_per_m") is None else f"{s['cpu_s_per_m'] * s['iops'] / 1e6:.2f}"
    return [row.title, row.workload, limit, qos_value(got, row.unit), x, each,
            num(s, "p50_us", "{:,.1f}"), num(s, "cpu_s_per_m", "{:.2f}"), cores, row.note]


RBD_COLUMNS = ["group", "workload", "snapblk", "qsd cache.direct=on", "qsd cache.direct=off",
               "snapblk/qsd", "p50 µs snapblk / qsd", "CPU µs/req snapblk",
               "CPU µs/req qsd on / off", "CPU/req snapblk/qsd",
               "peak RSS MiB snapblk / qsd on / off", "note"]


def rbd_cells(row):
    """qsd: the faster of its two configurations in the row, for the ratios and the p50."""
    a = row.med.get("snapblk")
    on, off = (row.med.get(f"qsd cache.direct={m}") for m in RBD_QSD_CACHE_DIRECT)
    both = [(m, q) for m, q in zip(RBD_QSD_CACHE_DIRECT, (on, off)) if q and q.get("iops")]
    mode, best = max(both, key=lambda mq: mq[1]["iops"], default=(None, None))
    note = row.note
    if best:
        note = (f"qsd: cache.direct={mode} (the faster here)" + (f"; {note}" if note else ""))
    cpu = "-" if not both else f"{num(on, 'cpu_s_per_m', '{:.1f}')} / " \
        f"{num(off, 'cpu_s_per_m', '{:.1f}')}"
    rss = " / ".join(num(x, "rss_mib") for x in (a, on, off)) if both else num(a, "rss_mib")
    return [row.title, row.workload, rate(a, row.sequential), rate(on, row.sequential),
            rate(off, row.sequential), ratio(a, best),
            f"{num(a, 'p50_us', '{:,.0f}')} / {num(best, 'p50_us', '{:,.0f}')}",
            num(a, "cpu_s_per_m", "{:.1f}"), cpu, ratio(a, best, "cpu_s_per_m"), rss, note]


def rbd_targets(rows):
    out = []
    clone = find(rows, "rbd", f"{RBD_CLONE_READ.label}, clone")
    orig = find(rows, "rbd", f"{RBD_CLONE_READ.label}, origin")
    if clone and orig:
        x = clone.med["snapblk"]["iops"] / orig.med["snapblk"]["iops"]
        out.append(check(f"RBD clone read of unchanged chunks / origin read, "
                         f"{RBD_CLONE_READ.label}", x, f"≥ {RBD_CLONE_TARGET}",
                         x >= RBD_CLONE_TARGET))
    return out


def find(rows, group, prefix):
    return next((r for r in rows if r.group == group and r.workload.startswith(prefix)), None)


def check(label, value, target, ok):
    return f"- [{'x' if ok else ' '}] {label}: {value:.2f} (target {target})"


def targets(rows):
    """The issue's targets, evaluated on the medians measured (those this run has data for)."""
    out = []
    for q in (1, 2):
        r = find(rows, "tmpfs", f"4k randread QD32 {q}q")
        if r:
            x = r.med["snapblk"]["iops"] / r.med["qsd"]["iops"]
            out.append(check(f"tmpfs 4k randread QD32 {q}q, snapblk/qsd IOPS", x, "≥ 3", x >= 3))
    r = find(rows, "rootfs", "4k randread QD32 1q")
    if r and r.med.get("fio io_uring"):
        x = r.med["snapblk"]["iops"] / r.med["fio io_uring"]["iops"]
        out.append(check("rootfs 4k randread QD32 1q, snapblk/fio io_uring", x, "≥ 0.8", x >= 0.8))
    for r in rows:
        if r.group in ("tmpfs", "rootfs") and " QD1 " in r.workload:
            x = r.med["snapblk"]["p50_us"] / r.med["qsd"]["p50_us"]
            out.append(check(f"{r.group} {r.workload}, p50 snapblk/qsd", x, "≤ 0.5", x <= 0.5))
    out += snapshot_targets(rows)
    r = find(rows, "origin", f"{ORIGIN_PASS.label}, {max(ORIGIN_SNAPSHOTS)} snapshots")
    if r:
        x = r.med["snapblk"]["rss_mib"]
        out.append(check(f"origin rewritten with {max(ORIGIN_SNAPSHOTS)} snapshots, peak RSS MiB",
                         x, f"< {RSS_TARGET_MIB}", x < RSS_TARGET_MIB))
    zero = find(rows, "origin", f"{ORIGIN_PASS.label}, 0 snapshots")
    for n, want in ((1, 0.5), (4, 0.3), (16, 0.1)):
        r = find(rows, "origin", f"{ORIGIN_PASS.label}, {n} snapshot{'' if n == 1 else 's'}")
        if r and zero:
            x = r.med["snapblk"]["iops"] / zero.med["snapblk"]["iops"]
            out.append(check(f"{r.title}: first writes with {n} snapshot(s) / 0 snapshots", x,
                             f"≥ {want}", x >= want))
    r = find(rows, "origin", f"{ORIGIN_SEQ.label}, {ORIGIN_SEQ_SNAPSHOTS} snapshots")
    if r and "tmpfs" in r.title:
        x = r.med["snapblk"]["mib_s"]
        out.append(check(f"64 KiB sequential origin writes, {ORIGIN_SEQ_SNAPSHOTS} snapshots, "
                         "MiB/s", x, "≥ 1024", x >= 1024))
    return out


def qos_targets(rows):
    out = []
    for r in rows:
        if r.group == "qos" and r.limit:
            got = r.med["snapblk"]["iops" if r.unit == "IOPS" else "mib_s"]
            x = got / r.limit
            out.append(check(f"{r.workload}: achieved/limit", x,
                             f"1 ± {QOS_TOLERANCE:.2f}", abs(x - 1) <= QOS_TOLERANCE))
    free = find(rows, "qos", f"{QOS_OVERHEAD_WL.label}, no limits")
    far = find(rows, "qos", f"{QOS_OVERHEAD_WL.label}, limits far above")
    if free and far:
        x = far.med["snapblk"]["iops"] / free.med["snapblk"]["iops"]
        out.append(check(f"{QOS_OVERHEAD_WL.label}, limits far above the rate / no limits, IOPS",
                         x, f"≥ {QOS_OVERHEAD_TARGET}", x >= QOS_OVERHEAD_TARGET))
    return out


def snapshot_targets(rows):
    out = []
    snap = find(rows, "snapshot", f"{SNAP_READ.label}, unchanged")
    raw = find(rows, "snapshot", f"{SNAP_READ.label}, raw")
    if snap and raw:
        x = snap.med["snapblk"]["iops"] / raw.med["snapblk"]["iops"]
        out.append(check("snapshot read of unchanged chunks / raw read, snapblk", x, "≥ 0.9",
                         x >= 0.9))
    cow = find(rows, "snapshot", f"{COW_BREAK.label}, COW")
    if cow:
        x = cow.med["snapblk"]["iops"] / cow.med["qsd"]["iops"]
        out.append(check("COW-break randwrite, snapblk snapshot / qcow2 overlay", x, "≥ 2", x >= 2))
    return out


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        return out.splitlines()[0].strip() if out else "?"
    except OSError:
        return "missing"


def header(opts):
    rev = version(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    dirs = ", ".join(f"{k} {opts.dirs[k]} ({fs_type(opts.dirs[k])})" for k in GROUPS
                     if k in DEFAULT_DIRS and k in opts.rows)
    return [f"snapblk {rev} vs {version(['qemu-storage-daemon', '--version'])}, "
            f"{version(['fio', '--version'])}; {os.cpu_count()} CPUs, "
            f"kernel {os.uname().release}, {datetime.date.today()}",
            f"{opts.runs} alternating runs of {opts.seconds} s per contender (order rotated "
            f"each run), medians; image {opts.size_mib} MiB; {dirs}", ""]


def notes(opts):
    if not set(opts.rows) - {"qos", "rbd"}:
        return [""] + notes_qos(opts) + notes_rbd(opts)
    return notes_main(opts) + notes_qos(opts) + notes_rbd(opts)


def notes_main(opts):
    out = ["", "- IOPS, p50: `snapblk bench` as the client of both daemons, identical parameters; "
           "CPU s/M req: the daemon's user+system CPU seconds per million requests "
           "(/proc/PID/stat); peak RSS: the daemon's resident memory less shared memory "
           "(VmRSS - RssShmem: the guest RAM it maps, and the page cache of a memory-backed "
           "image snapblk maps), sampled every 20 ms."]
    if "rootfs" in opts.rows:
        out.append(f"- rootfs ({opts.dirs['rootfs']}): every run starts cold, the image "
                   "written back and dropped from the page cache (fsync, POSIX_FADV_DONTNEED), "
                   "so reads reach the device until the run has cached them; the tmpfs rows "
                   "never do.")
    if "fio" in opts.rows:
        out.append("- fio: on the host against the same file, no virtio. psync runs queues × "
                   "iodepth jobs of one request each (the same requests in flight); io_uring "
                   "one job per queue at the same depth; each job on its own share of the "
                   "file, as each bench queue is.")
    if "snapshot" in opts.rows:
        out.append("- snapshot: snapblk P snapshot, 4 KiB chunks, exported; qsd: qcow2 overlay "
                   "(qemu-img defaults: 64 KiB clusters) over the same raw base. COW break: "
                   f"{opts.seconds} s of random 4 KiB writes on a fresh snapshot/overlay each run.")
    if "origin" in opts.rows:
        out.append("- origin: the whole origin written once (4 KiB writes in a scrambled order, "
                   "QD32: a first write to every chunk) with N fresh P snapshots (4 KiB chunks), "
                   "each run; qsd: the same pass on the raw image. The 64 KiB row: one "
                   "sequential pass at QD8.")
    return out


def notes_qos(opts):
    out = []
    if "qos" in opts.rows:
        fs = fs_type(opts.dirs["qos"])
        out.append(f"- qos: snapblk only, raw image on {opts.dirs['qos']} ({fs}: "
                   f"{'no device behind it' if fs == 'tmpfs' else 'not tmpfs'}), 1 queue. "
                   f"Limit rows: {opts.runs} runs of {QOS_SECONDS} s each, a fresh daemon "
                   "per run (a full bucket: a burst of 0.1 s worth, so a client that never "
                   f"stops reaches limit × {1 + 0.1 / QOS_SECONDS:.2f}; a request held for its "
                   "budget waits in the daemon and is never failed; the drain of the requests "
                   "in flight at the end counts in the time). Overhead rows: "
                   f"{max(opts.runs, QOS_OVERHEAD_MIN_RUNS)} alternating runs of "
                   f"{opts.seconds} s each (order rotated each run), no limits vs "
                   f"`{' '.join(QOS_FAR)}`. daemon CPU: cores busy on average "
                   "(CPU s/M req × IOPS).")
    return out


def notes_rbd(opts):
    if "rbd" not in opts.rows:
        return []
    i = opts.rbd_info
    cluster = (f"{i['version']}, in {i['dir']} on {RBD_CLUSTER_PARENT} ({i['fs']}): one mon, "
               f"one mgr, one BlueStore OSD on a sparse {i['osd_gib']:.0f} GiB file; started in "
               f"{i['start_s']} s" if i else "not started")
    size = f"{opts.size_mib} MiB"
    qsd = qsd_rbd_node(RBD_POOL, RBD_IMAGE, "DIR/ceph.conf", "on|off")
    fill = f" ({i['fill_mib_s']} MiB/s)" if "fill_mib_s" in i else ""
    return [
        f"- rbd: a one-node Ceph cluster made for this run by scripts/ceph-cluster.sh ({cluster}"
        f"), pool {RBD_POOL} (size 1, 16 PGs) on this host: its OSD shares the CPUs with the "
        "daemon under test and the client, and sets the pace, so the rates say more about the "
        "cluster than about the daemons; CPU µs/req (the daemon's user+system CPU, librbd's "
        "threads included, per request, from /proc/PID/stat) is the daemons' own cost. Image "
        f"{RBD_POOL}/{RBD_IMAGE}, {size}, written in full once before the rows (`rbd bench "
        f"--io-type write --io-size 4M --io-pattern seq`{fill}), so every read reaches a "
        "written object; a fresh daemon per run, the OSD's caches dropped before each run "
        "(`ceph tell osd.0 cache drop`). The write rows overwrite the image (no snapshot yet).",
        f"- rbd rows: snapblk `serve --socket S --image rbd:{RBD_POOL}/{RBD_IMAGE} --ceph-conf "
        "DIR/ceph.conf` (1 queue; librbd's settings as the conf leaves them: Pacific's "
        "rbd_cache=true, rbd_cache_policy=writearound). qsd: `--blockdev " + qsd +
        " --export type=vhost-user-blk,...,writable=on,num-queues=1`, both ways: cache.direct=on "
        "makes QEMU set rbd_cache=false, cache.direct=off (QEMU's default, writeback) "
        "rbd_cache=true. snapblk/qsd, p50 and CPU/req snapblk/qsd are against the faster qsd "
        "configuration of the row (the note names it). The client sends no flush, so "
        "rbd_cache_writethrough_until_flush (true by default) keeps librbd from completing "
        "writes early in every configuration.",
        f"- rbd clone: `snapblk serve --config` with origin golden = "
        f"rbd:{RBD_POOL}/{RBD_IMAGE}@{RBD_SNAP} (an RBD snapshot taken after the rows above) and "
        "a P snapshot vm1 of it (chunk_size 4K, a fresh COW file of the image's size + 1/64 + "
        f"8 MiB on {opts.dirs['rbd']} ({fs_type(opts.dirs['rbd'])})), both exported (golden "
        f"read-only) by one daemon started once; {opts.runs} alternating runs of "
        f"{RBD_CLONE_READ.label} on each export, the OSD's caches dropped before each; vm1's "
        "chunks are all unchanged, so its reads go through the snapshot to RBD.",
    ]


def report(rows, opts, failure):
    main = [r for r in rows if r.group not in ("qos", "rbd")]
    qos = [r for r in rows if r.group == "qos"]
    rbd = [r for r in rows if r.group == "rbd"]
    lines = header(opts)
    if main or set(opts.rows) - {"qos", "rbd"}:
        lines.append(table(main))
    if qos:
        lines += (["", "QoS limits (snapblk):", ""] if main else []) + \
            [table(qos, QOS_COLUMNS, qos_cells)]
    if rbd:
        lines += (["", "Ceph RBD (snapblk's rbd: origins vs qsd's rbd driver):", ""]
                  if main or qos else []) + [table(rbd, RBD_COLUMNS, rbd_cells)]
    lines += notes(opts)
    checks = targets(main)
    if checks:
        lines += ["", "Targets (issues 5 and 15):"] + checks
    checks = qos_targets(qos)
    if checks:
        lines += ["", "QoS targets:"] + checks
    checks = rbd_targets(rbd)
    if checks:
        lines += ["", "RBD targets:"] + checks
    if failure:
        lines += ["", f"INCOMPLETE: stopped by {failure!r}"]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------

def parse_mib(text):
    units = {"M": 1, "G": 1024}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t and t[-1] in units:
        return int(t[:-1]) * units[t[-1]]
    return int(t) >> 20


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--runs", type=int, default=3, help="runs per contender and workload")
    ap.add_argument("--seconds", type=int, default=5, help="length of each timed run")
    ap.add_argument("--size", default="1G", help="image size (M/G suffix), default 1G")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                    help=f"groups: {','.join(GROUPS)} (default: {','.join(DEFAULT_ROWS)})")
    ap.add_argument("--dir", action="append", default=[], metavar="GROUP=PATH",
                    help="where a group's files go (defaults: " +
                    ", ".join(f"{k}={v}" for k, v in DEFAULT_DIRS.items()) + ")")
    ap.add_argument("--json", metavar="FILE", help="also write every sample and the medians")
    a = ap.parse_args(argv)
    rows = a.rows.split(",")
    if any(g not in GROUPS for g in rows) or a.runs < 1 or a.seconds < 1:
        ap.error(f"--runs and --seconds must be positive, --rows from {','.join(GROUPS)}")
    if any("=" not in kv for kv in a.dir):
        ap.error("--dir takes GROUP=PATH")
    dirs = dict(DEFAULT_DIRS, **dict(kv.split("=", 1) for kv in a.dir))
    bad = [f"{k}={v}" for k, v in dirs.items() if k not in DEFAULT_DIRS or not os.path.isdir(v)]
    if bad:
        ap.error(f"--dir: unknown group or not a directory: {', '.join(bad)}")
    return Options(a.runs, a.seconds, parse_mib(a.size), rows, dirs), a.json


def run_groups(opts, rows):
    for key in ("tmpfs", "rootfs"):
        if key in opts.rows:
            group_raw(key, opts, rows)
    if "snapshot" in opts.rows:
        group_snapshot(opts, rows)
    if "origin" in opts.rows:
        group_origin(opts, rows)
    if "qos" in opts.rows:
        group_qos(opts, rows)
    if "rbd" in opts.rows:
        group_rbd(opts, rows)


def write_json(path, opts, rows):
    with open(path, "w") as f:
        json.dump({"options": {k: v for k, v in vars(opts).items() if k != "samples"},
                   "medians": [vars(r) for r in rows], "samples": opts.samples}, f, indent=1)


def main(argv):
    opts, json_path = parse_args(argv)
    if not os.access(SNAPBLK, os.X_OK):
        sys.exit(f"{SNAPBLK} not found: run `cargo build --release` (or set SNAPBLK)")
    tools = {}
    if any(g in opts.rows for g in QSD_GROUPS):
        tools = {"qemu-storage-daemon": "qemu-system-x86", "qemu-img": "qemu-utils"}
    ensure_tools(dict(tools, fio="fio") if "fio" in opts.rows else tools)
    if "rbd" in opts.rows:
        ensure_ceph()
    exit_on_signals()
    rows, failure = [], None
    try:
        run_groups(opts, rows)
    except (BenchFailure, KeyboardInterrupt, OSError, subprocess.CalledProcessError) as e:
        failure = e
    finally:
        cleanup()
    print(report(rows, opts, failure), flush=True)
    if json_path:
        write_json(json_path, opts, rows)
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

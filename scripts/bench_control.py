#!/usr/bin/env python3
"""scripts/bench_control.py: live-control timings under load, through the real CLI.

- snapshot creation pause (p50/p99 over --snapshots creations) while `snapblk bench` drives
  4 KiB random writes at the origin, and the write latency p99 with and without snapshots;
- clone export time (export add until the socket accepts), clone reset time;
- merge throughput of a snapshot with a known number of exceptions.

    python3 scripts/bench_control.py [--dir /dev/shm] [--snapshots 20]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import SNAPBLK, listening, make_image, wait_socket  # noqa: E402


def ctl(ctlsock, *args):
    out = subprocess.run([SNAPBLK, *args, "--control", ctlsock, "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else {}


def bench(sock, seconds, out):
    r = subprocess.run([SNAPBLK, "bench", "--socket", sock, "--rw", "randwrite", "--bs", "4k",
                        "--iodepth", "32", "--seconds", str(seconds), "--json"],
                       check=True, capture_output=True, text=True).stdout
    out.append(json.loads(r))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--snapshots", type=int, default=20)
    ap.add_argument("--size-mib", type=int, default=512)
    args = ap.parse_args()
    d = tempfile.mkdtemp(dir=args.dir, prefix="snapblk-ctl-")
    ctlsock = f"{d}/ctl.sock"
    origin = f"{d}/origin.img"
    make_image(origin, args.size_mib)
    p = subprocess.Popen([SNAPBLK, "serve", "--state-dir", f"{d}/state", "--control", ctlsock],
                         stdout=subprocess.DEVNULL, stderr=open(f"{d}/daemon.log", "w"))
    wait_socket(ctlsock, p)
    try:
        ctl(ctlsock, "origin", "add", "o", "--image", origin)
        ctl(ctlsock, "export", "add", "o", "--socket", f"{d}/o.sock")
        while not listening(f"{d}/o.sock"):
            time.sleep(0.01)
        base = []
        bench(f"{d}/o.sock", 5, base)
        loaded = []
        t = threading.Thread(target=bench, args=(f"{d}/o.sock", 5 + args.snapshots // 2, loaded))
        t.start()
        time.sleep(2)
        pauses = []
        for i in range(args.snapshots):
            r = ctl(ctlsock, "snapshot", "create", "o", f"s{i}", "--cow", f"{d}/s{i}.cow",
                    "--size", f"{args.size_mib * 2}M", "--chunk-size", "4k")
            pauses.extend(r["pause_us"].values())
            time.sleep(0.3)
        t.join()
        print(f"### Live control timings ({args.dir}, {args.size_mib} MiB origin, 4 KiB chunks)\n")
        print(f"- snapshot creation pause under 4 KiB randwrite QD32 ({len(pauses)} snapshots taken in turn): "
              f"p50 {pct(pauses, 50)} us, p99 {pct(pauses, 99)} us, max {max(pauses)} us (all: {sorted(pauses)})")
        print(f"- write latency p99: {base[0]['latency_us']['p99']:.0f} us without snapshots "
              f"({base[0]['iops']:,.0f} IOPS); {loaded[0]['latency_us']['p99']:.0f} us over the run "
              f"that took the snapshots ({loaded[0]['iops']:,.0f} IOPS, max {loaded[0]['latency_us']['max']:.0f} us)")
        for i in range(args.snapshots - 1):
            ctl(ctlsock, "snapshot", "delete", f"s{i}")
        # Clone export and reset on a fresh snapshot of an idle origin.
        ctl(ctlsock, "snapshot", "create", "o", "clone", "--cow", f"{d}/clone.cow",
            "--size", f"{args.size_mib}M", "--chunk-size", "4k")
        t0 = time.monotonic()
        ctl(ctlsock, "export", "add", "clone", "--socket", f"{d}/clone.sock")
        while not listening(f"{d}/clone.sock"):
            time.sleep(0.001)
        export_ms = (time.monotonic() - t0) * 1000
        subprocess.run([SNAPBLK, "bench", "--socket", f"{d}/clone.sock", "--rw", "randwrite",
                        "--seconds", "2"], check=True, capture_output=True)
        t0 = time.monotonic()
        ctl(ctlsock, "clone", "reset", "clone")
        reset_ms = (time.monotonic() - t0) * 1000
        print(f"- clone export (export add until the socket accepts): {export_ms:.1f} ms; "
              f"clone reset after 2 s of random writes: {reset_ms:.1f} ms")
        # A resettable clone: its origin is written after it was taken, then it is reset (the
        # changed chunks come back from its anchor) while the origin keeps being written.
        ctl(ctlsock, "snapshot", "delete", "clone", "--force")
        ctl(ctlsock, "snapshot", "create", "o", "rclone", "--cow", f"{d}/rclone.cow",
            "--size", f"{args.size_mib * 2}M", "--chunk-size", "4k", "--resettable")
        ctl(ctlsock, "export", "add", "rclone", "--socket", f"{d}/rclone.sock")
        while not listening(f"{d}/rclone.sock"):
            time.sleep(0.001)
        subprocess.run([SNAPBLK, "bench", "--socket", f"{d}/rclone.sock", "--rw", "randwrite",
                        "--seconds", "2"], check=True, capture_output=True)
        subprocess.run([SNAPBLK, "bench", "--socket", f"{d}/o.sock", "--rw", "randwrite",
                        "--seconds", "2"], check=True, capture_output=True)
        changed = ctl(ctlsock, "status", "rclone")
        during = []
        t = threading.Thread(target=bench, args=(f"{d}/o.sock", 3, during))
        t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        ctl(ctlsock, "clone", "reset", "rclone")
        rreset_ms = (time.monotonic() - t0) * 1000
        t.join()
        events = ctl(ctlsock, "events")
        restored = [e["message"] for e in events.get("events", []) if e["kind"] == "clone_reset"]
        print(f"- resettable clone reset after 2 s of clone writes and 2 s of origin writes, "
              f"under origin randwrite QD32: {rreset_ms:.1f} ms ({restored[-1] if restored else '?'}; "
              f"origin write p99 around it {during[0]['latency_us']['p99']:.0f} us); "
              f"the clone before: {changed['nodes'][0]['status_line']}, "
              f"{changed['nodes'][0]['exceptions']} exceptions")
        # Merge throughput: fill the last snapshot, merge it.
        last = f"s{args.snapshots - 1}"
        ctl(ctlsock, "export", "add", last, "--socket", f"{d}/m.sock")
        while not listening(f"{d}/m.sock"):
            time.sleep(0.01)
        subprocess.run([SNAPBLK, "bench", "--socket", f"{d}/m.sock", "--rw", "write", "--bs", "1M",
                        "--once", "--seconds", "600"], check=True, capture_output=True)
        ctl(ctlsock, "export", "remove", "--socket", f"{d}/m.sock")
        t0 = time.monotonic()
        subprocess.run([SNAPBLK, "merge", "start", last, "--wait", "--control", ctlsock],
                       check=True, capture_output=True)
        secs = time.monotonic() - t0
        print(f"- merge of a fully written {args.size_mib} MiB snapshot (4 KiB chunks): {secs:.2f} s, "
              f"{args.size_mib / secs:.0f} MiB/s")
    finally:
        p.terminate()
        p.wait(timeout=60)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""scripts/bench_compare.py: snapblk vs qemu-storage-daemon, side by side, in one run.

Starts both daemons on the same images, drives each with `snapblk bench` using identical
parameters, alternates A/B runs (--runs each), and prints a markdown table of medians, ratios
and the CPU time each daemon used per million requests (from /proc/PID/stat).

    python3 scripts/bench_compare.py [--runs 3] [--seconds 5] [--rows tmpfs,rootfs]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPBLK = os.environ.get("SNAPBLK", os.path.join(ROOT, "target", "release", "snapblk"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_socket(path, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"daemon for {path} exited with {proc.returncode}")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.01)
    sys.exit(f"{path} not listening after {timeout}s")


class Daemon:
    def __init__(self, kind, image, sock, queues):
        self.kind, self.sock = kind, sock
        if kind == "snapblk":
            cmd = [SNAPBLK, "serve", "--socket", sock, "--image", image, "--num-queues", str(queues)]
        else:
            cmd = ["qemu-storage-daemon", "--blockdev",
                   f"driver=file,node-name=d,filename={image},aio=io_uring",
                   "--export", f"type=vhost-user-blk,id=e,addr.type=unix,addr.path={sock},"
                   f"node-name=d,writable=on,num-queues={queues}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_socket(sock, self.proc)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def bench(sock, rw, bs, iodepth, queues, seconds):
    out = subprocess.run([SNAPBLK, "bench", "--socket", sock, "--rw", rw, "--bs", bs,
                          "--iodepth", str(iodepth), "--queues", str(queues),
                          "--seconds", str(seconds), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def make_image(path, mib):
    with open(path, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rows", default="tmpfs,rootfs")
    args = ap.parse_args()

    cases = [("randread", "4k", 32, 1), ("randread", "4k", 32, 2)]
    places = {"tmpfs": "/dev/shm", "rootfs": "/var/tmp"}
    print(f"snapblk bench, {args.runs} alternating runs of {args.seconds}s each, medians; "
          f"CPU = daemon CPU seconds per million requests\n")
    print("| image | workload | snapblk IOPS | qsd IOPS | ratio | snapblk p50 us | qsd p50 us "
          "| snapblk CPU s/M | qsd CPU s/M |")
    print("|---|---|---|---|---|---|---|---|---|")
    for place in args.rows.split(","):
        d = tempfile.mkdtemp(dir=places[place], prefix="snapblk-bench-")
        img = os.path.join(d, "bench.img")
        make_image(img, args.size_mib)
        for rw, bs, depth, queues in cases:
            res = {"snapblk": [], "qsd": []}
            for _ in range(args.runs):
                for kind in ("snapblk", "qsd"):
                    sock = os.path.join(d, f"{kind}.sock")
                    dm = Daemon(kind, img, sock, queues)
                    c0 = cpu_seconds(dm.proc.pid)
                    r = bench(sock, rw, bs, depth, queues, args.seconds)
                    c1 = cpu_seconds(dm.proc.pid)
                    dm.stop()
                    ios = r["reads"] + r["writes"]
                    if r.get("errors", 0):
                        sys.exit(f"{kind}: {r['errors']} I/O errors in {rw} {bs} QD{depth} {queues}q")
                    res[kind].append((r["iops"], r["latency_us"]["p50"], (c1 - c0) / max(ios, 1) * 1e6))
            med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in res.items()}
            s, q = med["snapblk"], med["qsd"]
            print(f"| {place} ({places[place]}) | {rw} {bs} QD{depth} {queues}q | {s[0]:,.0f} | {q[0]:,.0f} "
                  f"| {s[0] / q[0]:.2f}x | {s[1]:.0f} | {q[1]:.0f} | {s[2]:.2f} | {q[2]:.2f} |", flush=True)
        os.unlink(img)
        os.rmdir(d)


if __name__ == "__main__":
    main()

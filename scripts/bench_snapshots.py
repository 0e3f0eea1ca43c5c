#!/usr/bin/env python3
"""scripts/bench_snapshots.py: snapshot workloads through a served socket.

1. "many snapshots of the same volume" (dm test suite): a filled origin, K snapshots with 4 KiB
   chunks (store P or N), the whole origin rewritten once through the origin's socket with
   `snapblk bench --rw write --once`: wall time and the daemon's peak RSS (VmHWM).
2. snapshot first-write (COW break) 4 KiB randwrite IOPS: snapblk P snapshot vs a qcow2 overlay
   served by qemu-storage-daemon over the same raw base, same client, same session.

    python3 scripts/bench_snapshots.py [--dir /var/tmp] [--size-mib 1024] [--only many|cow]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_compare import SNAPBLK, cpu_seconds, make_image, wait_socket  # noqa: E402


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def serve_graph(d, origin, snaps, store, chunk, cow_size, export):
    lines = [f'[[origin]]\nname = "o"\nimage = "{origin}"\n']
    for i in range(snaps):
        lines.append(f'[[snapshot]]\nname = "s{i}"\norigin = "o"\ncow = "{d}/s{i}.cow"\nstore = "{store}"\n'
                     f'chunk_size = "{chunk}"\ncreate_size = {cow_size}\n')
    sock = f"{d}/{export}.sock"
    lines.append(f'[[export]]\nnode = "{export}"\nsocket = "{sock}"\n')
    cfg = f"{d}/graph.toml"
    with open(cfg, "w") as f:
        f.write("\n".join(lines))
    p = subprocess.Popen([SNAPBLK, "serve", "--config", cfg], stdout=subprocess.DEVNULL,
                         stderr=open(f"{d}/daemon.log", "w"))
    wait_socket(sock, p, timeout=120)
    return p, sock


def bench(sock, *extra):
    out = subprocess.run([SNAPBLK, "bench", "--socket", sock, "--json", *extra],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def many(args):
    print("### Many snapshots of one volume: whole origin rewritten once (1 MiB writes, QD8)\n")
    print(f"origin {args.size_mib} MiB, chunk 4 KiB, files on {args.dir}\n")
    print("| snapshots | store | wall s | MiB/s | peak RSS MiB | daemon CPU s |")
    print("|---|---|---|---|---|---|")
    for snaps, store in [(16, "P"), (16, "N"), (1, "P"), (0, "-")]:
        d = tempfile.mkdtemp(dir=args.dir, prefix="snapblk-many-")
        origin = f"{d}/origin.img"
        make_image(origin, args.size_mib)
        cow_size = (args.size_mib + args.size_mib // 64 + 8) << 20
        p, sock = serve_graph(d, origin, snaps, store if snaps else "P", "4K", cow_size, "o")
        c0 = cpu_seconds(p.pid)
        t0 = time.monotonic()
        bench(sock, "--rw", "write", "--bs", "1M", "--iodepth", "8", "--once", "--seconds", "3600")
        wall = time.monotonic() - t0
        rss = peak_rss_mib(p.pid)
        cpu = cpu_seconds(p.pid) - c0
        p.terminate()
        p.wait(timeout=120)
        print(f"| {snaps} | {store} | {wall:.1f} | {args.size_mib / wall:.0f} | {rss:.0f} | {cpu:.1f} |", flush=True)
        subprocess.run(["rm", "-rf", d], check=True)


def cow_break(args):
    backends = args.backends.split(",")
    print("\n### Snapshot first write (COW break), 4 KiB, QD32, 1 queue\n")
    print(f"base {args.size_mib} MiB on {args.dir}; each run on a fresh snapshot/overlay. 'first-write': "
          f"sequential 4 KiB writes over the whole disk once (every write breaks a chunk); "
          f"'randwrite': {args.seconds} s of random 4 KiB writes (first and repeated writes)\n")
    print("| backend | workload | IOPS | p50 us | p99 us |")
    print("|---|---|---|---|---|")
    d = tempfile.mkdtemp(dir=args.dir, prefix="snapblk-cow-")
    base = f"{d}/base.img"
    make_image(base, args.size_mib)
    rows = []
    for kind, wl in [(k, w) for k in backends for w in ("first-write", "randwrite")]:
        for f in os.listdir(d):
            if f != "base.img":
                os.unlink(os.path.join(d, f))
        if kind.startswith("snapblk"):
            p, sock = serve_graph(d, base, 1, "P", "4K", (args.size_mib * 2) << 20, "s0")
        else:
            cluster = kind.split()[-1]
            ov = f"{d}/overlay.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base,
                            "-o", f"cluster_size={cluster}", ov], check=True)
            sock = f"{d}/qsd.sock"
            p = subprocess.Popen(["qemu-storage-daemon", "--blockdev",
                                  f"driver=file,node-name=f,filename={ov},aio=io_uring",
                                  "--blockdev", "driver=qcow2,node-name=q,file=f",
                                  "--export", f"type=vhost-user-blk,id=e,addr.type=unix,addr.path={sock},"
                                  "node-name=q,writable=on,num-queues=1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_socket(sock, p)
        if wl == "first-write":
            r = bench(sock, "--rw", "write", "--bs", "4k", "--iodepth", "32", "--once", "--seconds", "3600")
        else:
            r = bench(sock, "--rw", "randwrite", "--bs", "4k", "--iodepth", "32", "--seconds", str(args.seconds))
        p.terminate()
        p.wait(timeout=60)
        rows.append((kind, r))
        print(f"| {kind} | {wl} | {r['iops']:,.0f} | {r['latency_us']['p50']:.0f} | {r['latency_us']['p99']:.0f} |",
              flush=True)
    subprocess.run(["rm", "-rf", d], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--only", choices=["many", "cow"])
    ap.add_argument("--backends", default="snapblk P 4K,qsd qcow2 64K,qsd qcow2 4K")
    args = ap.parse_args()
    if args.only in (None, "many"):
        many(args)
    if args.only in (None, "cow"):
        cow_break(args)


if __name__ == "__main__":
    main()

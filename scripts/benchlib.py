"""scripts/benchlib.py: what the benchmark scripts share (stdlib only).

Processes started and directories made through spawn() and workdir() are recorded and undone by
cleanup(), which the scripts call in a `finally`, so an error or Ctrl-C leaves no daemon running
and no image behind.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SNAPBLK = os.environ.get("SNAPBLK", os.path.join(_TARGET, "release", "snapblk"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

_procs = []
_dirs = []


class BenchFailure(Exception):
    """A daemon or a client failed; the message says which and why."""


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid`, all its threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def private_rss_mib(pid):
    """Resident memory of process `pid` less its shared memory (RssShmem: the guest RAM it
    maps, and memory-backed images it maps), MiB; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kb = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in f)
                  if k in ("VmRSS", "RssShmem")}
    except (OSError, ValueError):
        return None
    return (kb.get("VmRSS", 0) - kb.get("RssShmem", 0)) / 1024


class RssPeak:
    """Samples private_rss_mib(pid) every 20 ms on a thread; stop() returns the peak.
    VmHWM would count the image pages a daemon maps as its own memory (page cache shared
    with every other reader of the file), so it is not used."""

    def __init__(self, pid):
        self.pid, self.peak = pid, 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self):
        v = private_rss_mib(self.pid)
        if v is not None:
            self.peak = max(self.peak, v)

    def _run(self):
        while not self.done.wait(0.02):
            self._sample()

    def stop(self):
        self.done.set()
        self.thread.join()
        self._sample()
        return self.peak


def workdir(parent, prefix="snapblk-bench-"):
    """A fresh directory under `parent`, removed by cleanup()."""
    d = tempfile.mkdtemp(dir=parent, prefix=prefix)
    _dirs.append(d)
    return d


def spawn(cmd, log_path):
    """Starts a daemon with stderr to `log_path`; cleanup() stops it if stop() has not."""
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    p.log_path = log_path
    _procs.append(p)
    return p


def log_tail(p, lines=20):
    try:
        with open(p.log_path) as f:
            return "".join(f.readlines()[-lines:])
    except (OSError, AttributeError):
        return ""


def stop(p, timeout=60):
    """SIGTERM, then SIGKILL if the process has not exited within `timeout` seconds."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in _procs:
        _procs.remove(p)


def cleanup():
    """Stops every daemon still running and removes every work directory."""
    while _procs:
        stop(_procs[-1], timeout=10)
    while _dirs:
        shutil.rmtree(_dirs.pop(), ignore_errors=True)


def exit_on_signals():
    """SIGTERM and SIGHUP unwind like Ctrl-C, so `finally: cleanup()` runs."""
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def listening(path):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_socket(path, proc, timeout=120.0):
    """Returns once `path` accepts a connection; fails if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchFailure(f"daemon for {path} exited with {proc.returncode}:\n"
                               f"{log_tail(proc)}")
        if listening(path):
            return
        time.sleep(0.005)
    raise BenchFailure(f"{path} not listening after {timeout:.0f}s:\n{log_tail(proc)}")


def make_image(path, mib):
    """A raw image of `mib` MiB of random data, on disk (fsync'd)."""
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return path


def run_json(cmd):
    """Runs a client that prints JSON on stdout; its stderr goes into the failure message."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchFailure(f"{' '.join(cmd)} exited with {r.returncode}:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout)


def snapblk_bench(sock, *args):
    """One `snapblk bench --json` run against `sock`."""
    return run_json([SNAPBLK, "bench", "--socket", sock, "--json", *args])


def fs_type(path):
    """The filesystem type `path` lives on (from /proc/self/mountinfo)."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            mnt = left.split()[4]
            inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, kind = mnt, right.split()[0]
    return kind


def ensure_tools(tools):
    """Installs from Debian's packages whatever of {command: package} is missing (as root)."""
    missing = sorted({pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: run `apt-get install {' '.join(missing)}` as root")
    print(f"installing {' '.join(missing)} from apt", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    # Installing qemu-system-x86 may remove a newer qemu-utils that the image shipped.
    if shutil.which("qemu-img") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "qemu-utils"], check=True, env=env,
                       stdout=subprocess.DEVNULL)


# --- Ceph (the rbd group) ------------------------------------------------------------------

CEPH_CLUSTER_SH = os.path.join(ROOT, "scripts", "ceph-cluster.sh")
# What scripts/ceph-cluster.sh and the rbd clients need: {command: Debian package}.
CEPH_TOOLS = {"ceph-mon": "ceph-mon", "ceph-osd": "ceph-osd", "ceph-mgr": "ceph-mgr",
              "ceph": "ceph-common", "rbd": "ceph-common", "monmaptool": "ceph-base",
              "qemu-storage-daemon": "qemu-system-x86"}


def _have_lib(name):
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    return name in out


def ensure_ceph():
    """Installs (as root, without recommends, as scripts/install-deps.sh does) what the rbd
    group needs and is missing: the Ceph daemons and tools, librbd (which snapblk loads) and
    QEMU's rbd block driver (qemu-block-extra: block-rbd.so)."""
    missing = {pkg for cmd, pkg in CEPH_TOOLS.items() if shutil.which(cmd) is None}
    if not _have_lib("librbd.so.1"):
        missing.add("librbd1")
    if not any(os.path.exists(f"/usr/lib/{d}/qemu/block-rbd.so")
               for d in ("x86_64-linux-gnu", "aarch64-linux-gnu", ".")):
        missing.add("qemu-block-extra")
    if not missing:
        return
    missing = sorted(missing)
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: run scripts/install-deps.sh (or `apt-get "
                 f"install --no-install-recommends {' '.join(missing)}`) as root")
    print(f"installing {' '.join(missing)} from apt (no recommends)", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                   check=True, env=env, stdout=subprocess.DEVNULL)


class CephCluster:
    """A throwaway one-node Ceph cluster (scripts/ceph-cluster.sh: one mon, one mgr, one
    BlueStore OSD on a sparse file) in a fresh short directory under `parent` (its admin socket
    paths must stay under 107 bytes). A context manager: the cluster is destroyed (daemons
    stopped, directory removed) on the way out, error and Ctrl-C included, and when its start
    fails."""

    def __init__(self, osd_bytes, parent="/tmp", pool="rbd"):
        self.osd_bytes, self.parent, self.pool = osd_bytes, parent, pool
        self.dir = self.conf = None
        self.start_s = None

    def _script(self, action, env=None):
        return subprocess.run([CEPH_CLUSTER_SH, action, self.dir], capture_output=True,
                              text=True, env=env)

    def __enter__(self):
        self.dir = tempfile.mkdtemp(dir=self.parent, prefix="cb")
        self.conf = os.path.join(self.dir, "ceph.conf")
        env = dict(os.environ, CEPH_OSD_SIZE=str(self.osd_bytes), CEPH_POOL=self.pool)
        t0 = time.monotonic()
        try:
            r = self._script("start", env)
            if r.returncode != 0:
                raise BenchFailure(f"ceph-cluster.sh start {self.dir} exited with "
                                   f"{r.returncode}:\n{r.stderr[-3000:]}")
        except BaseException:
            self.destroy()
            raise
        self.start_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc):
        self.destroy()
        return False

    def destroy(self):
        if self.dir is None:
            return
        r = self._script("destroy")
        if r.returncode != 0:
            print(f"ceph-cluster.sh destroy {self.dir} exited with {r.returncode}:\n"
                  f"{r.stderr[-2000:]}", file=sys.stderr)
        self.dir = None

    def run(self, tool, *args, timeout=600):
        """`tool -c CONF ARGS...` (rbd, ceph); its stdout, or BenchFailure with its stderr."""
        cmd = [tool, "-c", self.conf, *args]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchFailure(f"{' '.join(cmd)}: no answer in {timeout} s") from None
        if r.returncode != 0:
            raise BenchFailure(f"{' '.join(cmd)} exited with {r.returncode}:\n{r.stderr[-2000:]}")
        return r.stdout

    def drop_caches(self):
        """Empties the OSD's caches (BlueStore's onodes and buffers): a run that follows another
        on the same offsets does not find them cached. BlueStore reads object data from its block
        file with O_DIRECT: no host page cache holds it either."""
        self.run("ceph", "tell", "osd.0", "cache", "drop", timeout=60)

    def version(self):
        try:
            out = subprocess.run(["ceph", "--version"], capture_output=True, text=True).stdout
        except OSError:
            return "?"
        return " ".join(out.split()[:3]) if out else "?"

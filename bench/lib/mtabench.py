"""Shared helpers for the benchmark scripts: start the release server, read its metrics and CPU time."""
import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "target", "release", "mta-server")
# The benchmark programs (package mta-bench, bench/rust): fill_spool, bench_dns, recovery_bench, ...
PROGRAMS = os.path.join(ROOT, "target", "release")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def build(programs=False):
    """Build the release server (and the benchmark programs of bench/rust), then run a private copy of the binaries so
    that other builds in the shared target directory cannot swap them mid-run. `MTA_BENCH_NO_BUILD=1` skips the
    build and uses what target/release holds."""
    global BIN, PROGRAMS
    if os.environ.get("MTA_BENCH_BIN"):
        # A given binary (e.g. an older commit's, for before/after comparisons in the same run).
        BIN = os.environ["MTA_BENCH_BIN"]
        PROGRAMS = os.path.dirname(BIN)
        return
    if not os.environ.get("MTA_BENCH_NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "-p", "mta-server"], cwd=ROOT, check=True)
        if programs:
            # A command of its own: built together, mta-bench's `testing` feature of mta-core would be unified
            # into the server binary too.
            subprocess.run(["cargo", "build", "--release", "-p", "mta-bench"], cwd=ROOT, check=True)
    snap = tempfile.mkdtemp(prefix="mta-bench-bin-")
    shutil.copy2(os.path.join(ROOT, "target", "release", "mta-server"), snap)
    if programs:
        for name in ("fill_spool", "bench_dns", "recovery_bench"):
            shutil.copy2(os.path.join(ROOT, "target", "release", name), snap)
    BIN = os.path.join(snap, "mta-server")
    PROGRAMS = snap
    atexit.register(shutil.rmtree, snap, True)


def describe():
    """One line naming the code measured, the machine and its load, for the results' notes."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, commit {rev}{' + uncommitted changes' if dirty else ''}, "
            f"{os.cpu_count()} CPUs ({cpu}), load average {os.getloadavg()[0]:.2f}")


def loadavg():
    return os.getloadavg()[0]


def wait_port(port, timeout=120.0, host="127.0.0.1"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def fill_spool(path, count, domains, size=1024, node="bench", delay_secs=None):
    """Write `count` queued messages to `domains` domains (d0.bench ...) straight into a spool (fill_spool, bench/rust)."""
    cmd = [os.path.join(PROGRAMS, "fill_spool"), path, str(count), str(domains), str(size), node]
    if delay_secs:
        cmd += ["--delay-secs", str(delay_secs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
    return out


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Perf:
    """`perf record --call-graph dwarf` attached to a running process until stop() (for the profiles quoted in BENCHMARKS.md)."""

    def __init__(self, pid, output, freq=250):
        # DWARF unwinding: the release build has debug info but no frame pointers.
        self.proc = subprocess.Popen(["perf", "record", "--call-graph", "dwarf,16384", "-F", str(freq), "-p", str(pid),
                                      "-o", output],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.output = output
        time.sleep(0.3)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Sink:
    """Postfix's smtp-sink on a fresh loopback port: accepts and discards everything."""

    def __init__(self, max_sessions=4096, backlog=1024):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="smtp-sink-", suffix=".out", delete=False)
        # -u is required when run as root; -m raises the 256-session default; no -M (it quits early).
        self.proc = subprocess.Popen(["smtp-sink", "-u", "nobody", "-m", str(max_sessions),
                                      f"127.0.0.1:{self.port}", str(backlog)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_port(self.port, 10):
            raise RuntimeError("smtp-sink did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.unlink(self.log.name)


class Dns:
    """The bench_dns program (bench/rust): zones d0.bench ... d{N-1}.bench (and sender.bench) with MX -> `ip`."""

    def __init__(self, domains, ip="127.0.0.1"):
        self.proc = subprocess.Popen([os.path.join(PROGRAMS, "bench_dns"), str(domains), ip],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            raise RuntimeError(f"bench_dns printed {line!r}")
        self.addr = line[1]

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """The release binary on fresh ports and a fresh spool (or a given directory)."""

    def __init__(self, extra="", directory=None, strace=None, wait=True, spool_extra="", ready_timeout=30,
                 smtp_extra=""):
        self.dir = directory or tempfile.mkdtemp(prefix="mta-bench-")
        self.smtp = free_port()
        self.http = free_port()
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(
                f'[server]\nhostname = "bench.test"\nnode_id = "bench"\n'
                f'[smtp]\nlisten = ["127.0.0.1:{self.smtp}"]\n'
                + ("" if "max_connections_per_ip" in smtp_extra else "max_connections_per_ip = 10000\n")
                + f'{smtp_extra}\n'
                f'[http]\nlisten = "127.0.0.1:{self.http}"\n'
                f'[spool]\npath = "{self.dir}/spool"\n{spool_extra}\n[log]\nevents = "{self.dir}/events.jsonl"\n{extra}\n'
            )
            if "[dns]" not in extra:
                # Benchmarks never query DNS off the machine.
                f.write('[dns]\nnameservers = ["127.0.0.1:9"]\n')
        self.config = cfg
        cmd = [BIN, "serve", "--config", cfg]
        if strace:
            cmd = ["strace", "-f", "-c", "-o", strace, "-e", "trace=fsync,fdatasync,sync_file_range"] + cmd
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stderr=open(os.path.join(self.dir, "stderr"), "w"), env={**os.environ, "RUST_LOG": "warn"})
        self.pid = self.proc.pid
        if wait:
            self.wait_ready(ready_timeout)

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.http), timeout=1).close()
                socket.create_connection(("127.0.0.1", self.smtp), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mta-server exited: {open(os.path.join(self.dir, 'stderr')).read()[-2000:]}")
                time.sleep(0.05)
        self.pid = self._server_pid()

    def _server_pid(self):
        if os.path.basename(self.proc.args[0]) != "strace":
            return self.proc.pid
        # strace's child is the server.
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else self.proc.pid

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_kb(self):
        return rss_kb(self.pid)

    def metrics(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=10).read().decode()
        return text

    def stop(self):
        # Signal the server itself (under --strace, self.proc is strace, which writes its summary when the
        # server exits but loses it when killed).
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_server(attempts=5, **kw):
    """Server(**kw), retried when it exits at start with EADDRINUSE: the server's mail-auth DNS stub binds UDP on
    127.0.0.1:0 and then TCP on the same port number, which fails when that port is taken by a TCP socket (for
    instance one of the many outbound/TIME_WAIT connections a delivery benchmark leaves behind)."""
    for i in range(attempts):
        try:
            return Server(**kw)
        except RuntimeError as e:
            if "Address already in use" not in str(e) or i == attempts - 1:
                raise
            print(f"# mta-server start failed with EADDRINUSE (DNS stub port clash), retry {i + 1}", flush=True)


def metric_sum(text, name, labels=None):
    """Sum of every sample of `name` (optionally only those whose label set contains `labels`)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        if labels and labels not in (m.group(2) or ""):
            continue
        total += float(m.group(3))
    return total


def histogram(text, name):
    """{le: cumulative count} of a Prometheus histogram summed over its label sets."""
    buckets = {}
    for line in text.splitlines():
        m = re.match(r"^" + re.escape(name) + r'_bucket\{(.*)\}\s+(\S+)', line)
        if not m:
            continue
        le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
        le = float("inf") if le == "+Inf" else float(le)
        buckets[le] = buckets.get(le, 0.0) + float(m.group(2))
    return buckets


def hist_delta(after, before):
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def quantile(buckets, q):
    """Upper bound of the bucket holding quantile q (bucket resolution)."""
    if not buckets:
        return float("nan")
    items = sorted(buckets.items())
    total = items[-1][1]
    if total <= 0:
        return float("nan")
    for le, count in items:
        if count >= q * total:
            return le
    return float("inf")

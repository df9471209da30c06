"""Shared helpers for the benchmark scripts: start the release server, read its metrics and CPU time."""
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "target", "release", "mta-server")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def build():
    subprocess.run(["cargo", "build", "--release", "-p", "mta-server"], cwd=ROOT, check=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """The release binary on fresh ports and a fresh spool (or a given directory)."""

    def __init__(self, extra="", directory=None, strace=None):
        self.dir = directory or tempfile.mkdtemp(prefix="mta-bench-")
        self.smtp = free_port()
        self.http = free_port()
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(
                f'[server]\nhostname = "bench.test"\nnode_id = "bench"\n'
                f'[smtp]\nlisten = ["127.0.0.1:{self.smtp}"]\nmax_connections_per_ip = 10000\n'
                f'[http]\nlisten = "127.0.0.1:{self.http}"\n'
                f'[spool]\npath = "{self.dir}/spool"\n[log]\nevents = "{self.dir}/events.jsonl"\n{extra}\n'
            )
            if "[dns]" not in extra:
                # Benchmarks never query DNS off the machine.
                f.write('[dns]\nnameservers = ["127.0.0.1:9"]\n')
        self.config = cfg
        cmd = [BIN, "serve", "--config", cfg]
        if strace:
            cmd = ["strace", "-f", "-c", "-o", strace, "-e", "trace=fsync,fdatasync,sync_file_range"] + cmd
        self.proc = subprocess.Popen(cmd, stderr=open(os.path.join(self.dir, "stderr"), "w"), env={**os.environ, "RUST_LOG": "warn"})
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.http), timeout=1).close()
                socket.create_connection(("127.0.0.1", self.smtp), timeout=1).close()
                break
            except OSError:
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

    def metrics(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=10).read().decode()
        return text

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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

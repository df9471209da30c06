#!/usr/bin/env python3
"""Hostile HTTP bodies: many concurrent large injections, plus oversize requests, against the release mta-server.

What it does (delivery off, default limits: `smtp.max_message_size` 50 MiB, so the body cap is 100 MiB + 64 KiB):
- COUNT clients at once (`--concurrency`), each `POST /api/v1/messages` with a raw `content` of SIZE MiB
  (78-octet lines, so the JSON has a `\\n` escape per line to decode). A client refused with 503 (the body memory
  budget stayed exhausted) or cut off retries after `Retry-After`, until `--time-limit`; each attempt is counted.
  `--expect-continue` makes the clients send `Expect: 100-continue` and the body only after `100 Continue`.
- While they run: VmRSS of the server from /proc/PID/status every 20 ms (peak minus the baseline taken after a
  warm-up), the server's own event-loop lag gauge `mta_backpressure_signal{signal="event_loop_lag"}` from /metrics
  every 250 ms (the p90 of a 100 ms ticker's lateness over the back-pressure window), and the latency of
  `GET /health/live` every 50 ms (the same stall seen from outside).
- Oversize requests during the storm: `Content-Length` of 200 MiB sent as headers only (with and without
  `Expect: 100-continue`), and headers plus 1 MiB of body then nothing: each must be answered 413 within 5 s,
  which proves the server did not read (or wait for) the body. After the storm: a chunked body sent past the cap
  without an end must also get its 413.

Targets (issue "safe to expose"): peak RSS growth < 768 MiB; event-loop lag p99 < 100 ms.

Usage: bench/hostile/http_large.py [--count 100] [--concurrency 100] [--size-mib 30] [--time-limit 300]
       [--expect-continue] [--binary PATH]   (MTA_BENCH_NO_BUILD=1: use target/release as it is)
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import mtabench as mb  # noqa: E402

MIB = 1 << 20
LAG = re.compile(r'^mta_backpressure_signal\{[^}]*signal="event_loop_lag"[^}]*\}\s+(\S+)', re.M)


def build(binary):
    """The release binary to measure (built with `nice`, then copied so concurrent builds cannot swap it)."""
    if binary:
        mb.BIN = os.path.abspath(binary)
        return
    if not os.environ.get("MTA_BENCH_NO_BUILD"):
        subprocess.run(["nice", "cargo", "build", "--release", "-p", "mta-server"], cwd=mb.ROOT, check=True)
    snap = tempfile.mkdtemp(prefix="mta-bench-bin-")
    shutil.copy2(os.path.join(mb.ROOT, "target", "release", "mta-server"), snap)
    mb.BIN = os.path.join(snap, "mta-server")


def body_of(size):
    line = "x" * 77 + "\n"
    content = "From: a@sender.bench\nTo: b@dest.bench\nSubject: large\n\n" + line * (size // len(line) + 1)
    return json.dumps({"envelope_sender": "a@sender.bench", "recipients": ["b@dest.bench"],
                       "content": content}).encode()


def read_response(sock, deadline):
    """(status, headers dict, body) of one response; status None when the connection broke first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.1, deadline - time.time()))
        chunk = sock.recv(65536)
        if not chunk:
            return None, {}, buf
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        sock.settimeout(max(0.1, deadline - time.time()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


def head_of(port, length, extra=""):
    return (f"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}Connection: close\r\n\r\n").encode()


def answer_label(status, body):
    """`202`, or the status with the error code (`503 overloaded`)."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return str(status)
    return f"{status} {code}"


def attempt(port, body, expect, timeout=180.0):
    """One injection on a fresh connection: ("202"|"503 <code>"|...|"reset", Retry-After seconds)."""
    deadline = time.time() + timeout
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            if expect:
                s.sendall(head_of(port, len(body), "Expect: 100-continue\r\n"))
                status, headers, answer = read_response(s, deadline)
                if status == 100:
                    s.sendall(body)
                    status, headers, answer = read_response(s, deadline)
            else:
                s.sendall(head_of(port, len(body)))
                s.sendall(body)
                status, headers, answer = read_response(s, deadline)
    except OSError:
        return "reset", 1.0
    if status is None:
        return "reset", 1.0
    return answer_label(status, answer), float(headers.get("retry-after", "1"))


class Sampler(threading.Thread):
    """Calls `fn` every `period` seconds until stopped, keeping what it returns (None is skipped)."""

    def __init__(self, fn, period):
        super().__init__(daemon=True)
        self.fn, self.period, self.values, self.stop_flag = fn, period, [], threading.Event()

    def run(self):
        while not self.stop_flag.is_set():
            t = time.time()
            try:
                v = self.fn()
            except Exception:  # noqa: BLE001 - a failed sample is a missing sample
                v = None
            if v is not None:
                self.values.append(v)
            self.stop_flag.wait(max(0.0, self.period - (time.time() - t)))

    def stop(self):
        self.stop_flag.set()
        self.join()


def lag_ms(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    m = LAG.search(text)
    return float(m.group(1)) if m else None


def live_ms(port):
    t = time.time()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=30) as r:
        r.read()
    return (time.time() - t) * 1000.0


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def oversize_announced(port, expect, body_bytes=0):
    """Headers announcing 200 MiB (and `body_bytes` of it): (status, seconds to the answer)."""
    t = time.time()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(head_of(port, 200 * MIB, "Expect: 100-continue\r\n" if expect else "") + b" " * body_bytes)
            status, _, _ = read_response(s, time.time() + 10)
    except OSError as e:
        status = f"error ({e.__class__.__name__})"
    return status, time.time() - t


def oversize_chunked(port, cap):
    """A chunked body sent past the cap and never ended: (answer, bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST /api/v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                  f"Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"%x\r\n" % MIB + b"x" * MIB + b"\r\n"
        sent = 0

        def send():
            nonlocal sent
            try:
                while sent < cap + 8 * MIB:
                    s.sendall(chunk)
                    sent += MIB
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            status, _, answer = read_response(s, time.time() + 60)
            status = answer_label(status, answer)
        except OSError as e:
            status = f"error ({e.__class__.__name__})"
        sender.join(timeout=30)
    return status, sent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--size-mib", type=float, default=30)
    ap.add_argument("--time-limit", type=float, default=300)
    ap.add_argument("--expect-continue", action="store_true")
    ap.add_argument("--binary")
    args = ap.parse_args()

    build(args.binary)
    print(f"# {mb.describe()}", flush=True)
    print(f"# binary {mb.BIN}; {args.count} injections of {args.size_mib} MiB, {args.concurrency} at once"
          f"{', Expect: 100-continue' if args.expect_continue else ''}", flush=True)
    server = mb.start_server(extra="[delivery]\nenabled = false\n")
    try:
        port = server.http
        cap = 2 * 52428800 + 64 * 1024
        small = body_of(4096)
        for _ in range(5):
            attempt(port, small, False)
        time.sleep(1.0)
        baseline = server.rss_kb()
        body = body_of(int(args.size_mib * MIB))
        print(f"# body {len(body) / MIB:.1f} MiB; baseline RSS {baseline / 1024:.0f} MiB; load {mb.loadavg():.2f}",
              flush=True)

        rss = Sampler(server.rss_kb, 0.02)
        lag = Sampler(lambda: lag_ms(port), 0.25)
        live = Sampler(lambda: live_ms(port), 0.05)
        for s in (rss, lag, live):
            s.start()

        outcomes, lock = {}, threading.Lock()
        accepted = []
        deadline = time.time() + args.time_limit
        pending = list(range(args.count))

        def client():
            while True:
                with lock:
                    if not pending:
                        return
                    pending.pop()
                while time.time() < deadline:
                    kind, retry_after = attempt(port, body, args.expect_continue)
                    with lock:
                        outcomes[kind] = outcomes.get(kind, 0) + 1
                    if kind == "202":
                        with lock:
                            accepted.append(time.time())
                        break
                    if not (kind.startswith("503") or kind == "reset"):
                        break
                    time.sleep(min(retry_after, max(0.0, deadline - time.time())))

        t0 = time.time()
        clients = [threading.Thread(target=client, daemon=True) for _ in range(args.concurrency)]
        for c in clients:
            c.start()
        # Oversize requests while the storm holds the budget: refused on their announced size alone.
        time.sleep(2.0)
        oversize = [oversize_announced(port, expect, extra)
                    for expect, extra in ((False, 0), (True, 0), (False, MIB), (False, 0), (True, 0))]
        for c in clients:
            c.join(timeout=max(1.0, deadline + 200 - time.time()))
        elapsed = time.time() - t0
        load_during = mb.loadavg()
        for s in (rss, lag, live):
            s.stop()
        # After the storm the node may shed for a while (spool commit latency): wait until it is ready again.
        ready_by = time.time() + 60
        while time.time() < ready_by:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5).read()
                break
            except OSError:
                time.sleep(0.5)
        chunked = oversize_chunked(port, cap)
        cpu = server.cpu_seconds()
    finally:
        server.stop()
        # The spool holds COUNT x SIZE of messages.
        shutil.rmtree(server.dir, ignore_errors=True)

    peak = max(rss.values or [baseline])
    print(f"# load average at the end of the storm {load_during:.2f}")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| injections accepted (202) | {len(accepted)} of {args.count} in {elapsed:.1f} s "
          f"({len(accepted) * len(body) / MIB / max(elapsed, 1e-9):.0f} MiB/s) | all |")
    print(f"| attempts by answer | {', '.join(f'{k}: {v}' for k, v in sorted(outcomes.items()))} | |")
    print(f"| peak RSS growth (VmRSS peak - baseline) | {(peak - baseline) / 1024:.0f} MiB "
          f"(peak {peak / 1024:.0f} MiB) | < 768 MiB |")
    print(f"| event-loop lag gauge p99 / max ({len(lag.values)} samples) | {pct(lag.values, 0.99):.1f} / "
          f"{max(lag.values or [float('nan')]):.1f} ms | p99 < 100 ms |")
    print(f"| /health/live latency p50 / p99 / max ({len(live.values)} probes) | {pct(live.values, 0.5):.1f} / "
          f"{pct(live.values, 0.99):.1f} / {max(live.values or [float('nan')]):.1f} ms | |")
    print(f"| oversize, announced (status, s to answer) | "
          f"{', '.join(f'{st} in {t:.2f}' for st, t in oversize)} | 413 in < 5 s |")
    print(f"| oversize, chunked past the cap (status, MiB sent) | {chunked[0]}, {chunked[1] / MIB:.0f} | 413 too_large |")
    print(f"| server CPU | {cpu:.1f} s | |")
    ok = (peak - baseline) / 1024 < 768 and pct(lag.values, 0.99) < 100 \
        and all(st == 413 and t < 5 for st, t in oversize) and chunked[0] == "413 too_large"
    print(f"# {'targets met' if ok else 'TARGETS MISSED'}")


if __name__ == "__main__":
    main()

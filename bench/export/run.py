#!/usr/bin/env python3
"""Issue 14 (event export) benchmarks, both against a baseline in the same run.

(a) dead endpoint: Postfix's smtp-source -> MTA -> smtp-sink (a `[[route]]` to the sink, no DNS), 1 KiB, 64 sessions,
    distinct recipients; end-to-end messages/s (smtp-source start until every message is delivered) with no webhook
    against a webhook whose endpoint accepts TCP and never answers (10 s timeout, 4 in flight), alternating
    runs. The outbox bound (`outbox.max_bytes`, 4 MiB here so the run exceeds it) is sampled every 100 ms: its
    peak entries/bytes and the events dropped for space are reported.

(b) export throughput: N messages x R recipients injected with delivery off and the webhook pointed at a closed
    port (every reception event stays in the outbox), the server stopped, then restarted with the webhook pointed
    at a local receiver (Python, threaded HTTP/1.1 keep-alive, answers 200 at once, counts events). Throughput =
    events received / time from the first to the last request, per batch size. Baseline in the same run: the same
    receiver fed by a Python client posting the same bytes (what the receiver itself can take).

Usage: bench/export/run.py [--messages 20000] [--sessions 64] [--repeat 2] [--export-messages 5000 --rcpts 10]
       [--only a|b]
Env: MTA_BENCH_BIN=/path/to/release/mta-server uses that binary; MTA_BENCH_NO_BUILD=1 uses target/release.
"""
import argparse
import http.client
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import mtabench as mb  # noqa: E402


class DeadEndpoint:
    """Accepts TCP connections and never answers (keeps them open, at most 10,000)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if len(self.conns) < 10000:
                self.conns.append(c)
            else:
                c.close()

    def stop(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


class Receiver:
    """A webhook receiver answering 200 at once; counts events (occurrences of "event_id") and request times."""

    def __init__(self):
        outer = self
        self.lock = threading.Lock()
        self.events = 0
        self.requests = 0
        self.first = None
        self.last = None

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                count = body.count(b'"event_id"')
                now = time.time()
                with outer.lock:
                    outer.events += count
                    outer.requests += 1
                    outer.first = outer.first or now
                    outer.last = now
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reset(self):
        with self.lock:
            self.events, self.requests, self.first, self.last = 0, 0, None, None

    def stop(self):
        self.httpd.shutdown()


def smtp_source(port, n, sessions, rcpts=1, domain="d1.bench"):
    args = ["smtp-source", "-d", "-N", "-s", str(sessions), "-m", str(n), "-l", "1024", "-r", str(rcpts),
            "-f", "bench@sender.bench", "-t", f"user@{domain}", "-M", "client.test", f"127.0.0.1:{port}"]
    t0 = time.time()
    subprocess.run(args, check=True, timeout=3600)
    return t0, time.time()


def dead_endpoint_run(n, sessions, dead, max_bytes):
    """One relay run; `dead` is a DeadEndpoint or None (no webhook). Returns the figures."""
    sink = mb.Sink()
    extra = (f'[delivery]\nmta_sts = "off"\n[[route]]\ndomain = "*"\nrelay = "127.0.0.1:{sink.port}"\n'
             f'[outbox]\nmax_bytes = {max_bytes}\n')
    if dead:
        extra += (f'[[webhook]]\nname = "dead"\nurl = "http://127.0.0.1:{dead.port}/hook"\nsecret = "s"\n'
                  f'timeout = "10s"\n')
    srv = mb.start_server(extra=extra)
    peak = {"bytes": 0.0, "entries": 0.0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                m = srv.metrics()
                peak["bytes"] = max(peak["bytes"], mb.metric_sum(m, "mta_export_outbox_bytes"))
                peak["entries"] = max(peak["entries"], mb.metric_sum(m, "mta_export_outbox_entries"))
            except OSError:
                pass
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        cpu0 = srv.cpu_seconds()
        t0, t_inj = smtp_source(srv.smtp, n, sessions)
        deadline = time.time() + 600
        while time.time() < deadline:
            if mb.metric_sum(srv.metrics(), "mta_delivery_results_total", 'result="delivered"') >= n:
                break
            time.sleep(0.02)
        t_done = time.time()
        cpu = srv.cpu_seconds() - cpu0
        time.sleep(0.5)
        m = srv.metrics()
        dropped = mb.metric_sum(m, "mta_export_dropped_total", 'reason="outbox_full"')
        final_bytes = mb.metric_sum(m, "mta_export_outbox_bytes")
        # The server's own high-water mark (after every commit), not only what the 100 ms sampler saw.
        peak["bytes"] = max(peak["bytes"], mb.metric_sum(m, "mta_export_outbox_peak_bytes"))
    finally:
        stop.set()
        sampler.join()
        srv.stop()
        sink.stop()
    return {"rate": n / (t_done - t0), "inject": n / (t_inj - t0), "cpu_ms": 1000 * cpu / n,
            "peak_bytes": peak["bytes"], "peak_entries": peak["entries"], "final_bytes": final_bytes,
            "dropped": dropped}


def export_run(messages, rcpts, batch, receiver, concurrency=4):
    """Fill the outbox with messages x rcpts reception events, then time their export to `receiver`."""
    closed = mb.free_port()
    base = f'[delivery]\nenabled = false\n[outbox]\nmax_bytes = {1 << 32}\n'
    hook = ('[[webhook]]\nname = "app"\nurl = "http://127.0.0.1:{port}/hook"\nsecret = "s"\n'
            f'batch_size = {batch}\nbatch_delay = "200ms"\ntimeout = "30s"\nconcurrency = {concurrency}\n')
    srv = mb.start_server(extra=base + hook.format(port=closed))
    directory = srv.dir
    try:
        smtp_source(srv.smtp, messages, 32, rcpts=rcpts)
        # Every reception event durable in the outbox.
        deadline = time.time() + 120
        while time.time() < deadline:
            if mb.metric_sum(srv.metrics(), "mta_export_outbox_entries") >= messages * rcpts:
                break
            time.sleep(0.2)
    finally:
        srv.stop()
    total = messages * rcpts
    receiver.reset()
    # The restart reads its config again: point the webhook at the receiver.
    cfg = open(os.path.join(directory, "config.toml")).read()
    open(os.path.join(directory, "config.toml"), "w").write(cfg.replace(f"127.0.0.1:{closed}/hook",
                                                                        f"127.0.0.1:{receiver.port}/hook"))
    srv = restart(directory)
    try:
        cpu0 = srv.cpu_seconds()
        deadline = time.time() + 600
        while time.time() < deadline and receiver.events < total:
            time.sleep(0.05)
        cpu = srv.cpu_seconds() - cpu0
    finally:
        srv.stop()
    with receiver.lock:
        got, reqs, first, last = receiver.events, receiver.requests, receiver.first, receiver.last
    span = (last - first) if first and last and last > first else float("nan")
    return {"events": got, "total": total, "requests": reqs, "rate": got / span, "span": span,
            "cpu_us": 1e6 * cpu / max(got, 1)}


def restart(directory):
    """The release server again on the config and spool in `directory` (ports as written there)."""
    srv = mb.Server.__new__(mb.Server)
    srv.dir = directory
    srv.config = os.path.join(directory, "config.toml")
    cfg = open(srv.config).read()
    srv.smtp = int(cfg.split('listen = ["127.0.0.1:', 1)[1].split('"', 1)[0])
    srv.http = int(cfg.split('[http]\nlisten = "127.0.0.1:', 1)[1].split('"', 1)[0])
    srv.started = time.time()
    srv.proc = subprocess.Popen([mb.BIN, "serve", "--config", srv.config],
                                stderr=open(os.path.join(directory, "stderr2"), "w"),
                                env={**os.environ, "RUST_LOG": "warn"})
    srv.pid = srv.proc.pid
    srv.wait_ready(60)
    return srv


def receiver_baseline(receiver, total, batch, event_bytes, threads=4):
    """What the receiver takes from a plain client: `threads` keep-alive connections posting `batch`-event bodies."""
    receiver.reset()
    body = b"[" + b",".join([b'{"event_id":"' + b"0" * 32 + b'"' + b" " * max(0, event_bytes - 48) + b"}"] * batch) + b"]"
    per_thread = total // batch // threads

    def post():
        c = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=30)
        for _ in range(per_thread):
            c.request("POST", "/hook", body, {"Content-Type": "application/json"})
            c.getresponse().read()
        c.close()

    ts = [threading.Thread(target=post) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with receiver.lock:
        return receiver.events / (receiver.last - receiver.first)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--max-bytes", type=int, default=4 << 20)
    ap.add_argument("--export-messages", type=int, default=5000)
    ap.add_argument("--rcpts", type=int, default=10)
    ap.add_argument("--batches", default="100,1000")
    ap.add_argument("--only", choices=["a", "b"])
    args = ap.parse_args()
    mb.build()
    print("#", mb.describe(), flush=True)
    if args.only in (None, "a"):
        dead = DeadEndpoint()
        print(f"## (a) dead endpoint: {args.messages} msgs x 1 KiB, {args.sessions} sessions, outbox.max_bytes = "
              f"{args.max_bytes}", flush=True)
        print("| run | webhook | end-to-end msgs/s | injection msgs/s | CPU/msg | outbox peak entries / bytes | "
              "dropped (outbox_full) | load |")
        print("|---|---|---|---|---|---|---|---|")
        for i in range(args.repeat):
            # Alternate which goes first: the second run of a pair inherits the first's disk writeback.
            pair = (("none", None), ("dead", dead))
            for name, endpoint in (pair if i % 2 == 0 else pair[::-1]):
                r = dead_endpoint_run(args.messages, args.sessions, endpoint, args.max_bytes)
                print(f"| {i + 1} | {name} | {r['rate']:,.0f} | {r['inject']:,.0f} | {r['cpu_ms']:.3f} ms | "
                      f"{r['peak_entries']:,.0f} / {r['peak_bytes']:,.0f} | {r['dropped']:,.0f} | "
                      f"{os.getloadavg()[0]:.1f} |", flush=True)
        dead.stop()
    if args.only in (None, "b"):
        receiver = Receiver()
        total = args.export_messages * args.rcpts
        print(f"## (b) export: {total} reception events ({args.export_messages} msgs x {args.rcpts} rcpts) "
              f"from the outbox to a local receiver, concurrency 4", flush=True)
        print("| batch_size | events/s (first→last request) | requests | server CPU/event | receiver alone "
              "(same bodies, 4 conns) | load |")
        print("|---|---|---|---|---|---|")
        for i in range(args.repeat):
            for batch in [int(b) for b in args.batches.split(",")]:
                r = export_run(args.export_messages, args.rcpts, batch, receiver)
                base = receiver_baseline(receiver, total, batch, 420)
                print(f"| {batch} | {r['rate']:,.0f} ({r['events']:,} of {r['total']:,} in {r['span']:.2f} s) | "
                      f"{r['requests']:,} | {r['cpu_us']:.1f} µs | {base:,.0f} | {os.getloadavg()[0]:.1f} |",
                      flush=True)
        receiver.stop()


if __name__ == "__main__":
    main()

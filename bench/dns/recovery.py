#!/usr/bin/env python3
"""DNS recovery benchmark ("slow recovery after DNS trouble"), end to end through the release mta-server.

Load: the server's only DNS upstream is a fault-injecting UDP proxy (this script) in front of the loopback DNS
server `bench_dns` (d0.bench ... d{N-1}.bench, each `MX 10 mx.dK.bench` -> 127.0.0.1); delivery goes to Postfix's
smtp-sink; `[delivery] retry_intervals = ["2s"]`, `[backpressure] dns_action = "defer"` (so intake is not shed
during the storm). The proxy answers SERVFAIL to 50 % of queries (at random) for 15 s; meanwhile one message per
new destination domain is injected over HTTP (`POST /api/v1/messages`, 200 domains spread evenly over the 15 s).
Then the proxy heals (forwards everything). Measured: time from the heal until the last of the 200 messages is
delivered (`mta_delivery_results_total{result="delivered"}`, polled every 50 ms), plus the transient failures and
the DNS packets the upstream saw during the storm and after the heal.

Usage: bench/dns/recovery.py [--domains 200] [--storm-secs 15] [--servfail 0.5] [--retry 2s] [--timeout 180]
                             [--bin-dir DIR] [--repeat 1]
  --bin-dir: a directory holding `mta-server` and `bench_dns` built elsewhere (e.g. from an older commit); then
             nothing is built. Without it the release binaries are built (`MTA_BENCH_NO_BUILD=1` skips that) and a
             private copy is run.
"""
import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import mtabench as mb  # noqa: E402


class FaultyDnsProxy:
    """UDP proxy in front of a DNS server: answers SERVFAIL to a fraction of queries (at random), forwards the
    rest, counts every packet received. Replies are matched to queries by (id, question)."""

    def __init__(self, upstream):
        host, port = upstream.rsplit(":", 1)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = "%s:%d" % self.sock.getsockname()
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.up.connect((host, int(port)))
        self.servfail = 0.0
        self.lock = threading.Lock()
        self.pending = {}
        self.received = 0
        self.servfailed = 0
        self.stop = False
        for target in (self._clients, self._answers):
            threading.Thread(target=target, daemon=True).start()

    @staticmethod
    def _question(packet):
        """Bytes of the (first) question: name labels up to the root, then type and class."""
        i = 12
        while i < len(packet) and packet[i] != 0:
            i += 1 + packet[i]
        return packet[12:i + 5]

    def _clients(self):
        while not self.stop:
            try:
                packet, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if len(packet) < 12:
                continue
            question = self._question(packet)
            with self.lock:
                self.received += 1
                fail = random.random() < self.servfail
                if fail:
                    self.servfailed += 1
                else:
                    self.pending[(packet[:2], question)] = peer
            if fail:
                # header: same id, QR=1 with the query's opcode and RD, RA=1, RCODE=2; the question only
                flags = bytes([0x80 | (packet[2] & 0x79), 0x80 | 2])
                reply = packet[:2] + flags + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question
                self.sock.sendto(reply, peer)
            else:
                self.up.send(packet)

    def _answers(self):
        while not self.stop:
            try:
                packet = self.up.recv(65535)
            except OSError:
                return
            if len(packet) < 12:
                continue
            with self.lock:
                peer = self.pending.pop((packet[:2], self._question(packet)), None)
            if peer:
                self.sock.sendto(packet, peer)

    def counts(self):
        with self.lock:
            return self.received, self.servfailed

    def close(self):
        self.stop = True
        self.sock.close()
        self.up.close()


def inject(http_port, domain):
    msg = (f"From: bench@sender.bench\r\nTo: user@{domain}\r\nSubject: dns recovery\r\n"
           f"Message-ID: <{domain}.{time.time()}@sender.bench>\r\n\r\nhello\r\n")
    body = json.dumps({"envelope_sender": "bench@sender.bench", "recipients": [f"user@{domain}"],
                       "content": msg}).encode()
    for _ in range(50):
        req = urllib.request.Request(f"http://127.0.0.1:{http_port}/api/v1/messages", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status in (200, 201, 202):
                    return True
        except urllib.error.HTTPError as e:
            if e.code not in (429, 503):
                raise
        time.sleep(0.1)
    return False


def run(a, dns, sink):
    proxy = FaultyDnsProxy(dns.addr)
    extra = (f'[dns]\nnameservers = ["{proxy.addr}"]\n'
             f'[delivery]\nport = {sink.port}\nretry_intervals = ["{a.retry}"]\n'
             f'[backpressure]\ndns_action = "defer"\n')
    srv = mb.start_server(extra=extra)
    try:
        proxy.servfail = a.servfail
        t0 = time.time()
        injected, failed_injections = 0, 0
        for i in range(a.domains):
            due = t0 + a.storm_secs * i / a.domains
            time.sleep(max(0.0, due - time.time()))
            if inject(srv.http, f"d{i}.bench"):
                injected += 1
            else:
                failed_injections += 1
        time.sleep(max(0.0, t0 + a.storm_secs - time.time()))
        proxy.servfail = 0.0
        t_heal = time.time()
        storm_packets, storm_servfails = proxy.counts()
        m = srv.metrics()
        at_heal = mb.metric_sum(m, "mta_delivery_results_total", 'result="delivered"')
        transient_at_heal = mb.metric_sum(m, "mta_delivery_results_total", 'result="transient"')
        delivered, t_last, marks = at_heal, None, {}
        while time.time() < t_heal + a.timeout:
            d = mb.metric_sum(srv.metrics(), "mta_delivery_results_total", 'result="delivered"')
            if d > delivered:
                delivered, t_last = d, time.time() - t_heal
            for s in (2, 5, 10, 30, 60, 120):
                if s not in marks and time.time() - t_heal >= s:
                    marks[s] = delivered
            if delivered >= injected:
                break
            time.sleep(0.05)
        m = srv.metrics()
        transient = mb.metric_sum(m, "mta_delivery_results_total", 'result="transient"')
        packets, _ = proxy.counts()
        return {
            "injected": injected, "failed_injections": failed_injections, "delivered_at_heal": at_heal,
            "delivered": delivered, "heal_to_last": t_last if delivered >= injected else None,
            "waited": time.time() - t_heal, "marks": marks, "transient_at_heal": transient_at_heal,
            "transient_after_heal": transient - transient_at_heal, "storm_packets": storm_packets,
            "storm_servfails": storm_servfails, "packets_after_heal": packets - storm_packets,
            "load": mb.loadavg(),
        }
    finally:
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)
        proxy.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", type=int, default=200)
    ap.add_argument("--storm-secs", type=float, default=15)
    ap.add_argument("--servfail", type=float, default=0.5)
    ap.add_argument("--retry", default="2s")
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--bin-dir")
    a = ap.parse_args()
    if a.bin_dir:
        mb.BIN = os.path.join(a.bin_dir, "mta-server")
        mb.PROGRAMS = a.bin_dir
    else:
        if not os.environ.get("MTA_BENCH_NO_BUILD"):
            # two commands, as mtabench.build does: together, mta-bench's `testing` feature of mta-core would be
            # unified into the server binary
            subprocess.run(["cargo", "build", "--release", "-p", "mta-server"], cwd=mb.ROOT, check=True)
            subprocess.run(["cargo", "build", "--release", "-p", "mta-bench", "--bin", "bench_dns"], cwd=mb.ROOT,
                           check=True)
        snap = tempfile.mkdtemp(prefix="mta-bench-bin-")
        shutil.copy2(os.path.join(mb.ROOT, "target", "release", "mta-server"), snap)
        shutil.copy2(os.path.join(mb.ROOT, "target", "release", "bench_dns"), snap)
        mb.BIN, mb.PROGRAMS = os.path.join(snap, "mta-server"), snap
    print("#", mb.describe(), f"binaries: {os.path.dirname(mb.BIN)}", flush=True)
    print(f"# load: {a.domains} new domains injected evenly during {a.storm_secs:.0f} s of {a.servfail:.0%} SERVFAIL, "
          f"then healed; delivery.retry_intervals = [\"{a.retry}\"]", flush=True)
    dns = mb.Dns(a.domains)
    sink = mb.Sink()
    try:
        for rep in range(a.repeat):
            r = run(a, dns, sink)
            last = f"{r['heal_to_last']:.2f} s" if r["heal_to_last"] is not None else \
                f"not reached ({r['injected'] - r['delivered']:.0f} undelivered after {r['waited']:.0f} s)"
            marks = ", ".join(f"+{s} s: {v:.0f}" for s, v in sorted(r["marks"].items()))
            print(f"run {rep + 1}: injected {r['injected']} ({r['failed_injections']} refused); delivered at heal "
                  f"{r['delivered_at_heal']:.0f}; heal -> last delivered: {last}; delivered by {marks or '-'}; "
                  f"transient delivery failures {r['transient_at_heal']:.0f} during the storm, "
                  f"{r['transient_after_heal']:.0f} after the heal; DNS packets at the upstream: "
                  f"{r['storm_packets']} during the storm ({r['storm_servfails']} SERVFAIL), "
                  f"{r['packets_after_heal']} after; load {r['load']:.2f}", flush=True)
    finally:
        sink.stop()
        dns.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Issue 16 cost figure: relay to a destination publishing an MTA-STS `enforce` policy over verified TLS, against the
same destination with opportunistic TLS (`delivery.mta_sts = "off"`: STARTTLS, no certificate check), in the same run,
alternating. Both cases: Postfix's smtp-source -> our relay -> our own server as the receiving MX (STARTTLS with a
certificate for mx.d1.bench from a private CA, `delivery.enabled = false`: it only spools), 1 KiB, `--sessions`
sessions with reuse, distinct recipients at d1.bench. The policy host is a Python HTTPS server (same CA) that counts
its fetches; bench_dns publishes `_mta-sts.d1.bench` and `mta-sts.d1.bench`.

Reported per run: end-to-end messages/s (smtp-source start until the relay counted every delivery), relay CPU per
message, connections opened, verified connections (`mta_tls_policy_total{result="tls_verified"}`), policy fetches seen
by the policy host, and DNS queries the relay sent (so the policy's TXT/A lookups show: max_age and the DNS TTL are
both an hour, so a run should cost one TXT lookup and one fetch per destination).

Usage: bench/delivery/tls_policy.py [--messages 10000] [--sessions 32] [--repeat 2]
Env: MTA_BENCH_NO_BUILD=1 uses target/release as it is; MTA_BENCH_BIN=path uses that binary (and bench_dns beside it).
"""
import argparse
import http.server
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import mtabench as mb  # noqa: E402

DOMAIN = "d1.bench"
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx.d1.bench\r\nmax_age: 3600\r\n"


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d):
    """A private CA and certificates for the receiving MX and the policy host (P-256)."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            f"{d}/ca.key", "-out", f"{d}/ca.pem", "-days", "2", "-subj", "/CN=bench ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for name in ("mx.d1.bench", "mta-sts.d1.bench"):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{d}/{name}.key",
                "-out", f"{d}/{name}.csr", "-subj", f"/CN={name}")
        with open(f"{d}/{name}.ext", "w") as f:
            f.write(f"subjectAltName=DNS:{name}\n")
        openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
                "-CAcreateserial", "-out", f"{d}/{name}.pem", "-days", "2", "-extfile", f"{d}/{name}.ext")


class PolicyHost:
    """`GET /.well-known/mta-sts.txt` over HTTPS, counting requests."""

    def __init__(self, d):
        self.fetches = 0
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host.fetches += 1
                body = POLICY.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.port = mb.free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"{d}/mta-sts.d1.bench.pem", f"{d}/mta-sts.d1.bench.key")
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def smtp_source(port, n, sessions):
    args = ["smtp-source", "-d", "-N", "-s", str(sessions), "-m", str(n), "-l", "1024",
            "-f", "bench@sender.bench", "-t", f"user@{DOMAIN}", "-M", "client.test", f"127.0.0.1:{port}"]
    t0 = time.time()
    subprocess.run(args, check=True, timeout=3600)
    return t0, time.time()


def run(mode, n, sessions, dns, receiver, pki, policy):
    sts = "enforce" if mode == "verified" else "off"
    extra = (f'[dns]\nnameservers = ["{dns.addr}"]\n[delivery]\nport = {receiver.smtp}\nmta_sts = "{sts}"\n'
             f'mta_sts_port = {policy.port}\ntls_ca_file = "{pki}/ca.pem"\n')
    fetches0 = policy.fetches
    srv = mb.start_server(extra=extra)
    try:
        cpu0 = srv.cpu_seconds()
        t0, _ = smtp_source(srv.smtp, n, sessions)
        delivered = 0
        deadline = time.time() + 600
        while time.time() < deadline:
            delivered = mb.metric_sum(srv.metrics(), "mta_delivery_results_total", 'result="delivered"')
            if delivered >= n:
                break
            time.sleep(0.02)
        t_done = time.time()
        cpu = srv.cpu_seconds() - cpu0
        m = srv.metrics()
        return {
            "mode": mode,
            "delivered": delivered,
            "rate": delivered / (t_done - t0),
            "cpu_ms": cpu * 1000 / n,
            "conns": mb.metric_sum(m, "mta_delivery_connections_opened_total"),
            "verified": mb.metric_sum(m, "mta_tls_policy_total", 'result="tls_verified"'),
            "policy_lookups": mb.metric_sum(m, "mta_tls_policy_total", 'result="matched"'),
            "fetches": policy.fetches - fetches0,
            "dns_queries": mb.metric_sum(m, "mta_dns_queries_total"),
            "load": mb.loadavg(),
        }
    finally:
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    mb.build(programs=True)
    pki = tempfile.mkdtemp(prefix="mta-bench-pki-")
    make_pki(pki)
    policy = PolicyHost(pki)
    os.environ["BENCH_DNS_TXT"] = f"_mta-sts.{DOMAIN}=v=STSv1; id=bench1;"
    os.environ["BENCH_DNS_A"] = f"mta-sts.{DOMAIN}=127.0.0.1"
    dns = mb.Dns(4)
    receiver = mb.start_server(
        extra='[delivery]\nenabled = false\n',
        smtp_extra=f'tls_cert = "{pki}/mx.d1.bench.pem"\ntls_key = "{pki}/mx.d1.bench.key"\n')
    print(f"# {mb.describe()}")
    print(f"# {a.messages} messages of 1 KiB, {a.sessions} sessions, receiver = our server with STARTTLS (spool only)")
    print("| run | TLS | msgs/s | relay CPU/msg | connections | verified conns | policy lookups | fetches | DNS queries | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        for i in range(a.repeat):
            for mode in ("opportunistic", "verified") if i % 2 == 0 else ("verified", "opportunistic"):
                r = run(mode, a.messages, a.sessions, dns, receiver, pki, policy)
                print(f"| {i + 1} | {r['mode']} | {r['rate']:,.0f} | {r['cpu_ms']:.3f} ms | {r['conns']:.0f} | "
                      f"{r['verified']:.0f} | {r['policy_lookups']:.0f} | {r['fetches']} | {r['dns_queries']:.0f} | "
                      f"{r['load']} |", flush=True)
    finally:
        receiver.stop()
        shutil.rmtree(receiver.dir, ignore_errors=True)
        dns.stop()
        policy.stop()
        shutil.rmtree(pki, ignore_errors=True)


if __name__ == "__main__":
    main()

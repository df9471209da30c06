#!/usr/bin/env python3
"""Injection rate with DKIM signing off / RSA-2048 / Ed25519 (issue 6): smtp-source, 64 sessions, 1 KiB,
connection reuse, delivery off. The From: of smtp-source's messages is the -f address, whose domain has the key.

Usage: bench/auth/run.py [count]
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import mtabench as mb  # noqa: E402

FIXTURES = os.path.join(mb.ROOT, "crates", "mta-core", "tests", "fixtures", "auth")
COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 20000


def run(label, extra):
    server = mb.Server(extra="[delivery]\nenabled = false\n" + extra)
    try:
        cpu0 = server.cpu_seconds()
        t0 = time.time()
        subprocess.run(["smtp-source", "-d", "-s", "64", "-m", str(COUNT), "-l", "1024", "-f", "app@signed.bench",
                        "-t", "rcpt@dest.bench", "-M", "client.bench", f"127.0.0.1:{server.smtp}"], check=True, timeout=900)
        elapsed = time.time() - t0
        cpu = server.cpu_seconds() - cpu0
        metrics = server.metrics()
        signed = mb.metric_sum(metrics, "mta_dkim_signatures_total")
    finally:
        server.stop()
    print(f"| {label} | {COUNT / elapsed:,.0f} | {cpu * 1000 / COUNT:.3f} ms | {signed:,.0f} |", flush=True)


def key(alg, file):
    return (f'[[dkim.key]]\ndomain = "signed.bench"\nselector = "s1"\nalgorithm = "{alg}"\n'
            f'key_file = "{os.path.join(FIXTURES, file)}"\n')


def main():
    mb.build()
    print("| signing | msgs/s | server CPU/msg | signatures made |")
    print("|---|---|---|---|")
    run("off", "")
    run("RSA-2048", key("rsa-sha256", "rsa2048.pem"))
    run("Ed25519", key("ed25519-sha256", "ed25519.pem"))


if __name__ == "__main__":
    main()

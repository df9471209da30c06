#!/usr/bin/env python3
"""Inbound verification throughput (issue 9 of the contract, tracker 12): SMTP injection from an outsider
address (not in relay_networks, mail for a relay domain) with SPF, DKIM and DMARC on, cached DNS, smtp-source,
64 sessions, ~1 KiB messages signed by dkimpy (RSA-2048, relaxed/relaxed), connection reuse, delivery off.

Each run compares, in the same run: verification off (the same outsider mail, auth policies off) and on; and
with MTA_BENCH_OLD=<binary> the same pair on an older binary. The DNS records (SPF, DKIM key, DMARC) come from
`bench_dns` on loopback; after the first message every answer is cached.

Usage: bench/auth/inbound.py [count]
"""
import base64
import os
import subprocess
import sys
import tempfile
import time

import dkim

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import mtabench as mb  # noqa: E402

FIXTURES = os.path.join(mb.ROOT, "crates", "mta-core", "tests", "fixtures", "auth")
COUNT = int(sys.argv[1]) if len(sys.argv) > 1 else 20000


def public_key_b64(pem_path):
    der = subprocess.run(["openssl", "pkey", "-in", pem_path, "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    return base64.b64encode(der).decode()


def signed_message(path):
    """A ~1 KiB message from app@signed.bench signed with s1._domainkey.signed.bench, written for smtp-source -F
    (LF line ends: smtp-source sends each line with CRLF)."""
    body = "".join(f"Line {i:03d} of a one kilobyte benchmark message, lorem ipsum dolor sit.\r\n" for i in range(12))
    head = ("From: App <app@signed.bench>\r\nTo: <rcpt@dest.bench>\r\nSubject: inbound benchmark\r\n"
            "Date: Fri, 27 Nov 2026 17:00:00 +0000\r\nMessage-ID: <bench-1@signed.bench>\r\n")
    message = (head + "\r\n" + body).encode()
    with open(os.path.join(FIXTURES, "rsa2048.pem"), "rb") as f:
        key = f.read()
    sig = dkim.sign(message, b"s1", b"signed.bench", key, canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    with open(path, "wb") as f:
        f.write((sig + message).replace(b"\r\n", b"\n"))
    return len(sig) + len(message)


def run(binary, label, dns_addr, verify, message_file):
    mb.BIN = binary
    policy = "record" if verify else "off"
    server = mb.Server(
        smtp_extra='relay_networks = []\nrelay_domains = ["dest.bench"]\n',
        extra=(f'[delivery]\nenabled = false\n[auth]\nspf = "{policy}"\ndkim = "{policy}"\ndmarc = "{policy}"\n'
               f'[dns]\nnameservers = ["{dns_addr}"]\n'
               '[[route]]\ndomain = "dest.bench"\nrelay = "127.0.0.1:9"\n'))
    try:
        def source(count):
            return ["smtp-source", "-d", "-s", "64", "-m", str(count), "-f", "app@signed.bench", "-t",
                    "rcpt@dest.bench", "-M", "client.bench", "-F", message_file, f"127.0.0.1:{server.smtp}"]
        # Warm the DNS cache (and the connection pool) first.
        subprocess.run(source(200), check=True, timeout=300)
        cpu0 = server.cpu_seconds()
        t0 = time.time()
        subprocess.run(source(COUNT), check=True, timeout=900)
        elapsed = time.time() - t0
        cpu = server.cpu_seconds() - cpu0
        metrics = server.metrics()
        passed = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                     if line.startswith("mta_auth_results_total{") and 'method="dmarc"' in line
                     and 'result="pass"' in line)
    finally:
        server.stop()
    print(f"| {label} | {'on' if verify else 'off'} | {COUNT / elapsed:,.0f} | {cpu * 1000 / COUNT:.3f} ms | "
          f"{passed:,.0f} | {mb.loadavg():.2f} |", flush=True)


def main():
    mb.build(programs=True)
    print("#", mb.describe(), flush=True)
    work = tempfile.mkdtemp(prefix="mta-inbound-")
    message_file = os.path.join(work, "message.txt")
    size = signed_message(message_file)
    records = "|".join([
        "signed.bench=v=spf1 ip4:127.0.0.0/8 -all",
        f"s1._domainkey.signed.bench=v=DKIM1; k=rsa; p={public_key_b64(os.path.join(FIXTURES, 'rsa2048.pem'))}",
        "_dmarc.signed.bench=v=DMARC1; p=reject",
    ])
    dns = subprocess.Popen([os.path.join(mb.PROGRAMS, "bench_dns"), "1", "127.0.0.1"], stdout=subprocess.PIPE,
                           text=True, env={**os.environ, "BENCH_DNS_TXT": records})
    try:
        dns_addr = dns.stdout.readline().split()[1]
        print(f"# message {size} octets, DKIM rsa-sha256 relaxed/relaxed, SPF ip4 pass, DMARC p=reject", flush=True)
        print("| binary | verification | msgs/s | server CPU/msg | DMARC passes (metric) | load |")
        print("|---|---|---|---|---|---|")
        binaries = [("new", mb.BIN)]
        if os.environ.get("MTA_BENCH_OLD"):
            binaries.append(("old", os.environ["MTA_BENCH_OLD"]))
        for label, binary in binaries:
            run(binary, label, dns_addr, False, message_file)
            run(binary, label, dns_addr, True, message_file)
    finally:
        dns.kill()


if __name__ == "__main__":
    main()

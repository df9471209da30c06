#!/usr/bin/env python3
"""SMTP injection benchmark: Postfix's smtp-source (not our client) against the release mta-server.

Matrix: 1 KiB and 100 KiB messages x 1, 8, 64 sessions x connection reuse on/off. Reports messages/s,
p50/p99 time from end-of-data to the 250 (server histogram, bucket resolution), fsyncs per message and server
CPU per message. Usage: bench/smtp/run.py [--quick] [--strace] [--only SIZE,SESSIONS,yes|no]
"""
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import mtabench as mb  # noqa: E402

QUICK = "--quick" in sys.argv
# --only SIZE,SESSIONS,REUSE (e.g. --only 1024,64,yes): one case of the matrix (with --strace: its syscall counts).
ONLY = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None


def run_case(server, size, sessions, reuse, count):
    before = server.metrics()
    cpu0 = server.cpu_seconds()
    args = ["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size),
            "-f", "sender@bench.test", "-t", "rcpt@dest.test", "-M", "client.test"]
    if reuse:
        args.insert(1, "-d")
    t0 = time.time()
    subprocess.run(args + [f"127.0.0.1:{server.smtp}"], check=True, timeout=900)
    elapsed = time.time() - t0
    cpu = server.cpu_seconds() - cpu0
    after = server.metrics()
    fsyncs = mb.metric_sum(after, "mta_spool_fsyncs_total") - mb.metric_sum(before, "mta_spool_fsyncs_total")
    h = mb.hist_delta(mb.histogram(after, "mta_smtp_ack_seconds"), mb.histogram(before, "mta_smtp_ack_seconds"))
    return {
        "size": size, "sessions": sessions, "reuse": reuse, "count": count,
        "rate": count / elapsed, "p50_ms": mb.quantile(h, 0.5) * 1000, "p99_ms": mb.quantile(h, 0.99) * 1000,
        "fsync_per_msg": fsyncs / count, "cpu_ms_per_msg": cpu * 1000 / count,
    }


def main():
    mb.build()
    print("#", mb.describe(), flush=True)
    strace_file = "/tmp/mta-bench-strace.txt" if "--strace" in sys.argv else None
    # Injection only: delivery off, so the figures are what intake costs.
    server = mb.Server(extra="[delivery]\nenabled = false\n", strace=strace_file)
    rows = []
    try:
        for size in (1024, 102400):
            for sessions in (1, 8, 64):
                for reuse in (True, False):
                    if ONLY and ONLY != f"{size},{sessions},{'yes' if reuse else 'no'}":
                        continue
                    n = 2000 if sessions == 1 else 20000
                    if size > 1024:
                        n //= 4
                    if not reuse:
                        n //= 2
                    if QUICK:
                        n //= 10
                    r = run_case(server, size, sessions, reuse, max(n, 200))
                    rows.append(r)
                    print(f"{size:>7} B  {sessions:>3} sess  reuse={'yes' if reuse else 'no ':<3}  "
                          f"{r['rate']:>8.0f} msg/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                          f"{r['fsync_per_msg']:.3f} fsync/msg  {r['cpu_ms_per_msg']:.3f} ms CPU/msg", flush=True)
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
    if strace_file:
        print(open(strace_file).read())
    print("\n| size | sessions | reuse | msgs/s | p50 to 250 | p99 to 250 | fsyncs/msg | server CPU/msg |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size'] // 1024} KiB | {r['sessions']} | {'yes' if r['reuse'] else 'no'} | {r['rate']:.0f} | "
              f"≤{r['p50_ms']:.2f} ms | ≤{r['p99_ms']:.2f} ms | {r['fsync_per_msg']:.3f} | {r['cpu_ms_per_msg']:.3f} ms |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Issue 5 recovery benchmark: restart the release mta-server on a spool of 1,000,000 queued 1 KiB messages (due
now, 100 domains, written by fill_spool from bench/rust) with delivery to Postfix's smtp-sink through the loopback DNS server
(bench_dns): time from exec until the SMTP port accepts and until the first delivery (deliveries resume), then the
delivery rate over the next seconds. The server is stopped (SIGTERM, graceful) and restarted on the same spool for
the second run, i.e. a real restart with ~1M still queued.

Also, when --engine-spool names a spool made by recovery_bench (bench/rust; 1M messages scheduled in the future),
the embedded engine's open + queue rebuild time on it (recovery_bench, delivery off, loopback DNS only).

Usage: bench/delivery/recovery.py [--messages 1000000] [--repeat 2] [--drain-secs 15] [--engine-spool /tmp/mta-recovery]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import mtabench as mb  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--domains", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--drain-secs", type=float, default=15)
    ap.add_argument("--engine-spool")
    a = ap.parse_args()
    mb.build(programs=True)
    print("#", mb.describe(), flush=True)
    if a.engine_spool:
        out = subprocess.run([os.path.join(mb.PROGRAMS, "recovery_bench"), a.engine_spool, str(a.messages)],
                             capture_output=True, text=True, check=True).stdout.strip()
        print(f"# recovery_bench {a.engine_spool}: {out}", flush=True)
    d = tempfile.mkdtemp(prefix="mta-recovery-srv-")
    t = time.time()
    print("#", mb.fill_spool(os.path.join(d, "spool"), a.messages, a.domains), f"({time.time() - t:.1f} s)", flush=True)
    du = subprocess.run(["du", "-sh", os.path.join(d, "spool")], capture_output=True, text=True).stdout.split()[0]
    print(f"# spool size {du}", flush=True)
    dns = mb.Dns(a.domains)
    sink = mb.Sink()
    rows = []
    try:
        for rep in range(a.repeat):
            extra = f'[dns]\nnameservers = ["{dns.addr}"]\n[delivery]\nport = {sink.port}\n'
            srv = mb.start_server(extra=extra, directory=d, ready_timeout=300)
            t0 = srv.started
            t_port = time.time() - t0
            t_first = None
            d_first = 0
            records0 = None
            try:
                deadline = time.time() + 300
                while time.time() < deadline:
                    m = srv.metrics()
                    if records0 is None:
                        records0 = mb.metric_sum(m, "mta_spool_records")
                    delivered = mb.metric_sum(m, "mta_delivery_results_total", 'result="delivered"')
                    if delivered > 0:
                        t_first = time.time() - t0
                        d_first = delivered
                        break
                    time.sleep(0.02)
                time.sleep(a.drain_secs)
                m = srv.metrics()
                delivered = mb.metric_sum(m, "mta_delivery_results_total", 'result="delivered"')
                rate = (delivered - d_first) / (time.time() - t0 - t_first) if t_first else 0
                rss = srv.rss_kb()
                cpu = srv.cpu_seconds()
            finally:
                ts = time.time()
                srv.stop()
                t_stop = time.time() - ts
            r = {"rep": rep + 1, "queued": records0, "t_port": t_port, "t_first": t_first, "rate": rate,
                 "delivered": delivered, "rss": rss, "cpu": cpu, "t_stop": t_stop, "load": mb.loadavg()}
            rows.append(r)
            print(f"run {rep + 1}: {records0:.0f} queued at start; SMTP port after {t_port:.2f} s, first delivery "
                  f"after {t_first:.2f} s; then {rate:.0f} msg/s for {a.drain_secs:.0f} s ({delivered:.0f} delivered); "
                  f"RSS {rss / 1024:.0f} MiB, CPU {cpu:.1f} s; graceful stop {t_stop:.1f} s; load {r['load']:.2f}",
                  flush=True)
    finally:
        sink.stop()
        dns.stop()
        shutil.rmtree(d, ignore_errors=True)
    print("\n| run | queued at start | SMTP port accepts after | first delivery after | delivery rate after resume | "
          "RSS | graceful stop | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rep']} | {r['queued']:.0f} | {r['t_port']:.2f} s | {r['t_first']:.2f} s | {r['rate']:.0f} msg/s | "
              f"{r['rss'] / 1024:.0f} MiB | {r['t_stop']:.1f} s | {r['load']:.2f} |")


if __name__ == "__main__":
    main()

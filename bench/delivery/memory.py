#!/usr/bin/env python3
"""Issue 5 memory benchmark: resident memory of the release mta-server per queued (scheduled, not yet due)
message, with sled's page cache capped at a stated size (`[spool] cache_bytes`).

For each case: a spool filled by fill_spool (bench/rust) with `--delay-secs` (first attempt a day ahead: queued,
nothing due), the server started on it (delivery enabled, loopback DNS that is never needed), VmRSS from
/proc/PID/status once the SMTP port accepts and RSS has settled; the baseline is the same server on an empty spool.
Growth per message = (RSS(filled) - RSS(empty)) / messages. The per-domain overhead shows as the difference between
the same message count spread over 100 and over 100,000 distinct domains.

Usage: bench/delivery/memory.py [--messages 500000] [--cache-mb 16] [--domains 100,100000] [--repeat 2]
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


def settled_rss(srv, settle=3.0, limit=60.0):
    """VmRSS once it changed by < 1% over `settle` seconds (kB), and the peak seen."""
    start = time.time()
    last = srv.rss_kb()
    peak = last
    while time.time() - start < limit:
        time.sleep(settle)
        now = srv.rss_kb()
        peak = max(peak, now)
        if abs(now - last) <= 0.01 * last:
            return now, peak
        last = now
    return last, peak


def trimmed_rss(srv):
    """RSS after glibc's malloc_trim(0) (called through gdb): how much of the RSS is freed-but-retained heap."""
    subprocess.run(["gdb", "-p", str(srv.pid), "-batch", "-ex", "call (int)malloc_trim(0)"],
                   capture_output=True, timeout=120)
    time.sleep(0.5)
    return srv.rss_kb()


def anon_kb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    return 0


def measure(directory, cache_bytes, sink_port, trim=False):
    extra = f'[dns]\nnameservers = ["127.0.0.1:9"]\n[delivery]\nport = {sink_port}\n'
    srv = mb.start_server(extra=extra, directory=directory, spool_extra=f"cache_bytes = {cache_bytes}")
    try:
        t_ready = time.time() - srv.started
        rss, peak = settled_rss(srv)
        if trim:
            anon = anon_kb(srv.pid)
            after = trimmed_rss(srv)
            print(f"#   RSS {rss / 1024:.1f} MiB (anonymous {anon / 1024:.1f} MiB); after malloc_trim(0): "
                  f"{after / 1024:.1f} MiB", flush=True)
        m = srv.metrics()
        records = mb.metric_sum(m, "mta_spool_records")
        delivered = mb.metric_sum(m, "mta_delivery_results_total")
    finally:
        srv.stop()
    return rss, peak, t_ready, records, delivered


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=500_000)
    ap.add_argument("--cache-mb", type=int, default=16)
    ap.add_argument("--domains", default="100,100000")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--trim", action="store_true", help="also report RSS after malloc_trim(0) via gdb")
    a = ap.parse_args()
    mb.build(programs=True)
    print("#", mb.describe(), flush=True)
    cache = a.cache_mb << 20
    rows = []
    sink_port = 9  # nothing is due; nothing may be delivered anyway
    empty = tempfile.mkdtemp(prefix="mta-mem-empty-")
    spools = {}
    try:
        for dom in (int(x) for x in a.domains.split(",")):
            d = tempfile.mkdtemp(prefix=f"mta-mem-{dom}-")
            t = time.time()
            print("#", mb.fill_spool(os.path.join(d, "spool"), a.messages, dom, delay_secs=86400),
                  f"({time.time() - t:.1f} s)", flush=True)
            spools[dom] = d
        for rep in range(a.repeat):
            base, base_peak, _, _, _ = measure(empty, cache, sink_port, a.trim)
            print(f"run {rep + 1} empty spool: RSS {base / 1024:.1f} MiB", flush=True)
            for dom, d in spools.items():
                rss, peak, t_ready, records, delivered = measure(d, cache, sink_port, a.trim)
                per_msg = (rss - base) * 1024 / a.messages
                r = {"rep": rep + 1, "domains": dom, "base": base, "rss": rss, "peak": peak, "per_msg": per_msg,
                     "t_ready": t_ready, "records": records, "delivered": delivered, "load": mb.loadavg()}
                rows.append(r)
                print(f"run {rep + 1} {a.messages} msgs / {dom} domains: RSS {rss / 1024:.1f} MiB (peak "
                      f"{peak / 1024:.1f}), empty {base / 1024:.1f} MiB -> {per_msg:.0f} bytes/message, ready in "
                      f"{t_ready:.1f} s, spool records {records:.0f}, delivery results {delivered:.0f}, "
                      f"load {r['load']:.2f}", flush=True)
    finally:
        shutil.rmtree(empty, ignore_errors=True)
        for d in spools.values():
            shutil.rmtree(d, ignore_errors=True)
    print(f"\n| run | messages | domains | sled cache cap | RSS empty spool | RSS filled (settled) | peak RSS | "
          f"growth per message | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rep']} | {a.messages} | {r['domains']} | {a.cache_mb} MiB | {r['base'] / 1024:.1f} MiB | "
              f"{r['rss'] / 1024:.1f} MiB | {r['peak'] / 1024:.1f} MiB | {r['per_msg']:.0f} B | {r['load']:.2f} |")


if __name__ == "__main__":
    main()

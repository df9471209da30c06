#!/usr/bin/env python3
"""Queue transfer benchmark (issue 13): N queued 1 KiB messages move from node A to node B over B's HTTP API
(`POST /api/v1/queue/transfer` on A). A's spool is filled offline by fill_spool (scheduled an hour ahead, so A
delivers nothing meanwhile); B runs with delivery off, so the figure is the transfer alone: A reads, claims and
encodes, B decodes and commits durably, A deletes.

Baseline in the same run: fill_spool's own rate writing the same messages straight into a spool (the group-committed
spool put path that B's import also ends in), so the transfer's cost over the spool's is visible.

Usage: bench/delivery/transfer.py [--messages 50000] [--repeat 2]
Env: MTA_BENCH_NO_BUILD=1 uses target/release as it is; MTA_BENCH_BIN=path uses that binary (and fill_spool beside it).
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import mtabench as mb  # noqa: E402


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


def run(n):
    a_dir = tempfile.mkdtemp(prefix="mta-bench-xfer-a-")
    t0 = time.time()
    out = mb.fill_spool(os.path.join(a_dir, "spool"), n, 100, 1024, "src", delay_secs=3600)
    fill_rate = n / (time.time() - t0)
    m = re.search(r"in ([0-9.]+) s", out)
    if m:
        fill_rate = n / float(m.group(1))
    a = mb.start_server(directory=a_dir)
    b = mb.start_server(extra="[delivery]\nenabled = false\n")
    try:
        cpu_a, cpu_b = a.cpu_seconds(), b.cpu_seconds()
        t0 = time.time()
        status, started = post(a.http, "/api/v1/queue/transfer", {"to": f"http://127.0.0.1:{b.http}", "token": "k"})
        assert status == 202, started
        tid = started["transfer_id"]
        deadline = time.time() + 1800
        while time.time() < deadline:
            s = get(a.http, f"/api/v1/queue/transfer/{tid}")
            if s["state"] != "running":
                break
            time.sleep(0.02)
        elapsed = time.time() - t0
        cpu_a, cpu_b = a.cpu_seconds() - cpu_a, b.cpu_seconds() - cpu_b
        on_b = get(b.http, "/api/v1/queue")["spool_messages"]
        on_a = get(a.http, "/api/v1/queue")["spool_messages"]
        fsyncs_b = mb.metric_sum(b.metrics(), "mta_spool_fsyncs_total")
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(a.dir, ignore_errors=True)
        shutil.rmtree(b.dir, ignore_errors=True)
    return {"state": s["state"], "moved": s["moved"], "failed": s["failed"], "rate": s["moved"] / elapsed,
            "elapsed": elapsed, "on_a": on_a, "on_b": on_b, "fill_rate": fill_rate,
            "cpu_a_ms": cpu_a * 1000 / max(1, s["moved"]), "cpu_b_ms": cpu_b * 1000 / max(1, s["moved"]),
            "fsync_b": fsyncs_b, "load": mb.loadavg()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    mb.build(programs=True)
    print("#", mb.describe(), flush=True)
    rows = []
    for rep in range(a.repeat):
        r = run(a.messages)
        r["rep"] = rep + 1
        rows.append(r)
        print(f"run {r['rep']}: {r['state']}, moved {r['moved']} failed {r['failed']} in {r['elapsed']:.2f} s = "
              f"{r['rate']:.0f} msgs/s (A left {r['on_a']}, B holds {r['on_b']}); baseline fill_spool "
              f"{r['fill_rate']:.0f} msgs/s; CPU A {r['cpu_a_ms']:.3f} ms/msg, B {r['cpu_b_ms']:.3f} ms/msg; "
              f"B fsyncs {r['fsync_b']:.0f}; load {r['load']:.2f}", flush=True)
    print("\n| run | messages | transfer msgs/s | baseline: fill_spool msgs/s | CPU A / B per msg | left on A | on B | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rep']} | {r['moved']} | {r['rate']:.0f} | {r['fill_rate']:.0f} | {r['cpu_a_ms']:.3f} / "
              f"{r['cpu_b_ms']:.3f} ms | {r['on_a']} | {r['on_b']} | {r['load']:.2f} |")


if __name__ == "__main__":
    main()

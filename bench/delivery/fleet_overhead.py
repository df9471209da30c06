#!/usr/bin/env python3
"""Fleet-limits overhead benchmark (issue 13): the relay benchmark of relay.py (Postfix's smtp-source -> mta-server
-> smtp-sink, 1 KiB, 64 sessions) run with `cluster.redis_url` set (leases and token grants on a real redis-server on
a loopback port, no persistence) and without it, alternately in the same run. Goal: under 15% fewer msgs/s with Redis.

A `[[shaping]]` rate far above what the machine reaches is set in both runs, so the Redis run exercises the token
buckets as well as the connection leases, and the local run pays for its local bucket.

Usage: bench/delivery/fleet_overhead.py [--messages 30000] [--sessions 64] [--repeat 2]
Env: MTA_BENCH_NO_BUILD=1 / MTA_BENCH_BIN=path as for relay.py.
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
sys.path.insert(0, os.path.dirname(__file__))
import mtabench as mb  # noqa: E402
import relay  # noqa: E402

SHAPING = '[[shaping]]\ndomain = "d1.bench"\nrate = "1000000/s"\n'


class Redis:
    """redis-server on a free loopback port, in memory only."""

    def __init__(self):
        self.port = mb.free_port()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not mb.wait_port(self.port, 10):
            raise RuntimeError("redis-server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    mb.build(programs=True)
    print("#", mb.describe(), flush=True)
    dns = mb.Dns(100)
    sink = mb.Sink()
    redis = Redis()
    rows = []
    try:
        for rep in range(a.repeat):
            for mode in ("local", "redis"):
                cluster = f'[cluster]\nredis_url = "redis://127.0.0.1:{redis.port}/0"\n' if mode == "redis" else ""
                # relay.run_ours puts its argument after its own [delivery] lines: shaping and cluster tables follow.
                r = relay.run_ours(a.messages, a.sessions, dns, sink, f"{SHAPING}{cluster}")
                r["rep"], r["mode"] = rep + 1, mode
                rows.append(r)
                print(f"run {rep + 1} {mode}: {r['delivered']:.0f} delivered, end-to-end {r['rate']:.0f} msg/s, "
                      f"inject {r['inject_rate']:.0f} msg/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
                      f"{r['cpu_ms']:.3f} ms CPU/msg, {r['conns']:.0f} connections, load {r['load']:.2f}", flush=True)
                time.sleep(2)
    finally:
        redis.stop()
        sink.stop()
        dns.stop()
    print("\n| run | limits | delivered | end-to-end msgs/s | p50 | p99 | CPU/msg | connections | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rep']} | {r['mode']} | {r['delivered']:.0f} | {r['rate']:.0f} | {r['p50_ms']:.0f} ms | "
              f"{r['p99_ms']:.0f} ms | {r['cpu_ms']:.3f} ms | {r['conns']:.0f} | {r['load']:.2f} |")
    for rep in range(1, a.repeat + 1):
        loc = [r for r in rows if r["rep"] == rep and r["mode"] == "local"]
        red = [r for r in rows if r["rep"] == rep and r["mode"] == "redis"]
        if loc and red and loc[0]["rate"] > 0:
            print(f"run {rep}: Redis limits cost {100 * (1 - red[0]['rate'] / loc[0]['rate']):.1f}% of msgs/s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Issue 5 drain benchmark: a spool pre-filled with N queued 1 KiB messages to D domains (fill_spool, bench/rust),
then the release mta-server started on it with delivery to Postfix's smtp-sink (not our SMTP server) through a
loopback DNS server (bench_dns, bench/rust) naming the sink as every domain's MX.

Reports, per delivery setting (connections_per_domain x messages_per_connection): time until the SMTP port
accepts, until the first and the last delivery, messages/s (whole run from process start, and first to last
delivery), connections opened (mta_delivery_connections_opened_total), server CPU ms per message (user+sys of the
whole process from exec, queue rebuild included), peak RSS.

Usage: bench/delivery/drain.py [--messages 100000] [--domains 100] [--settings 16x100,4x1000,...] [--repeat 2]
Env: MTA_BENCH_NO_BUILD=1 uses target/release as it is.
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


def run_one(template, n, dns, sink, cpd, mpc, timeout=600, perf=None, more=""):
    d = tempfile.mkdtemp(prefix="mta-drain-")
    shutil.copytree(os.path.join(template, "spool"), os.path.join(d, "spool"))
    extra = (f'[dns]\nnameservers = ["{dns.addr}"]\n'
             f"[delivery]\nport = {sink.port}\nconnections_per_domain = {cpd}\nmessages_per_connection = {mpc}\n"
             + more)
    srv = mb.start_server(extra=extra, directory=d)
    t0 = srv.started
    prof = mb.Perf(srv.pid, perf) if perf else None
    try:
        t_port = time.time() - t0
        t_first = None
        peak_rss = 0
        delivered = 0
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = srv.metrics()
            delivered = mb.metric_sum(m, "mta_delivery_results_total", 'result="delivered"')
            now = time.time() - t0
            peak_rss = max(peak_rss, srv.rss_kb())
            if delivered > 0 and t_first is None:
                t_first = now
            if delivered >= n:
                break
            time.sleep(0.05)
        t_done = time.time() - t0
        cpu = srv.cpu_seconds()
        if prof:
            prof.stop()
        m = srv.metrics()
        other = {k: mb.metric_sum(m, "mta_delivery_results_total", f'result="{k}"')
                 for k in ("transient", "transient_failure", "bounce", "bounced")}
        conns = mb.metric_sum(m, "mta_delivery_connections_opened_total")
        records = mb.metric_sum(m, "mta_spool_records")
        fsyncs = mb.metric_sum(m, "mta_spool_fsyncs_total")
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)
    return {
        "cpd": cpd, "mpc": mpc, "delivered": delivered, "t_port": t_port, "t_first": t_first or float("nan"),
        "t_done": t_done, "rate_total": delivered / t_done,
        "rate_drain": delivered / (t_done - t_first) if t_first and t_done > t_first else float("nan"),
        "conns": conns, "cpu_ms": cpu * 1000 / max(delivered, 1), "rss_mb": peak_rss / 1024,
        "records_left": records, "fsync_per_msg": fsyncs / max(delivered, 1),
        "other": {k: v for k, v in other.items() if v}, "load": mb.loadavg(),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--domains", type=int, default=100)
    ap.add_argument("--settings", default="16x100,4x1000,32x100,16x1000")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--config", default="", help="more config for the server (TOML, e.g. '[history]\\nretention = \"0s\"')")
    ap.add_argument("--perf", help="perf record -g the server of each case into this file (last case wins)")
    a = ap.parse_args()
    mb.build(programs=True)
    print("#", mb.describe(), flush=True)
    template = tempfile.mkdtemp(prefix="mta-drain-template-")
    t = time.time()
    print("#", mb.fill_spool(os.path.join(template, "spool"), a.messages, a.domains), flush=True)
    print(f"# fill took {time.time() - t:.1f} s", flush=True)
    dns = mb.Dns(a.domains)
    sink = mb.Sink()
    rows = []
    try:
        for rep in range(a.repeat):
            for s in a.settings.split(","):
                cpd, mpc = (int(x) for x in s.split("x"))
                r = run_one(template, a.messages, dns, sink, cpd, mpc, perf=a.perf, more=a.config.replace("\\n", "\n"))
                r["rep"] = rep + 1
                rows.append(r)
                print(f"run {rep + 1} {cpd:>3} conn/domain x {mpc:>5} msg/conn: {r['delivered']:.0f} delivered, "
                      f"port {r['t_port']:.2f} s, first {r['t_first']:.2f} s, done {r['t_done']:.2f} s, "
                      f"{r['rate_total']:.0f} msg/s overall, {r['rate_drain']:.0f} msg/s first->last, "
                      f"{r['conns']:.0f} connections, {r['cpu_ms']:.3f} ms CPU/msg, peak RSS {r['rss_mb']:.0f} MiB, "
                      f"{r['fsync_per_msg']:.3f} fsync/msg, left {r['records_left']:.0f} {r['other']} "
                      f"load {r['load']:.2f}", flush=True)
    finally:
        sink.stop()
        dns.stop()
        shutil.rmtree(template, ignore_errors=True)
    print("\n| run | conns/domain × msgs/conn | delivered | msgs/s (from exec) | msgs/s (first→last delivery) | "
          "first delivery after exec | connections opened | server CPU/msg | peak RSS | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rep']} | {r['cpd']} × {r['mpc']} | {r['delivered']:.0f} | {r['rate_total']:.0f} | "
              f"{r['rate_drain']:.0f} | {r['t_first']:.2f} s | {r['conns']:.0f} | {r['cpu_ms']:.3f} ms | "
              f"{r['rss_mb']:.0f} MiB | {r['load']:.2f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Issue 5 relay benchmark: Postfix's smtp-source -> MTA -> Postfix's smtp-sink, 1 KiB, 64 sessions with connection
reuse (-d), distinct recipients (-N) at a domain that the loopback DNS server (bench_dns, bench/rust) maps to the sink.
The same script runs Postfix itself (a private instance under /tmp: own config_directory and queue_directory,
smtpd on its own loopback port, relayhost = the sink) the same way, as the comparison.

Per MTA: injection time (smtp-source exit), end-to-end messages/s (smtp-source start until every message is
delivered), inject-to-delivery p50/p99 (ours: `reception` and `delivery` timestamps of the event log, ms resolution;
Postfix: the `delay=` of its `status=sent` log lines, which counts from its reception of the message), server CPU
per message (ours: the process; Postfix: every process of the instance, from the cgroup-less sum of
/proc/PID/stat of the postfix user's processes and master, sampled before/after).

Usage: bench/delivery/relay.py [--messages 50000] [--sessions 64] [--repeat 2] [--only ours|postfix]
Env: MTA_BENCH_NO_BUILD=1 uses target/release as it is.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import mtabench as mb  # noqa: E402

DOMAIN = "d1.bench"


def smtp_source(port, n, sessions):
    args = ["smtp-source", "-d", "-N", "-s", str(sessions), "-m", str(n), "-l", "1024",
            "-f", "bench@sender.bench", "-t", f"user@{DOMAIN}", "-M", "client.test", f"127.0.0.1:{port}"]
    t0 = time.time()
    subprocess.run(args, check=True, timeout=3600)
    return t0, time.time()


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def ts(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def run_ours(n, sessions, dns, sink, delivery_extra="", perf=None):
    extra = f'[dns]\nnameservers = ["{dns.addr}"]\n[delivery]\nport = {sink.port}\n{delivery_extra}\n'
    srv = mb.start_server(extra=extra)
    prof = mb.Perf(srv.pid, perf) if perf else None
    try:
        cpu0 = srv.cpu_seconds()
        t0, t_inj = smtp_source(srv.smtp, n, sessions)
        delivered = 0
        deadline = time.time() + 600
        while time.time() < deadline:
            delivered = mb.metric_sum(srv.metrics(), "mta_delivery_results_total", 'result="delivered"')
            if delivered >= n:
                break
            time.sleep(0.02)
        t_done = time.time()
        cpu = srv.cpu_seconds() - cpu0
        if prof:
            prof.stop()
        m = srv.metrics()
        conns = mb.metric_sum(m, "mta_delivery_connections_opened_total")
        fsyncs = mb.metric_sum(m, "mta_spool_fsyncs_total")
        # Event log: wait for the writer thread to flush the last lines.
        path = os.path.join(srv.dir, "events.jsonl")
        rec, lat = {}, []
        for _ in range(100):
            rec.clear()
            lat.clear()
            with open(path) as f:
                for line in f:
                    e = json.loads(line)
                    key = (e["id"], e["recipient"])
                    if e["type"] == "reception":
                        rec[key] = ts(e["timestamp"])
                    elif e["type"] == "delivery" and key in rec:
                        lat.append(ts(e["timestamp"]) - rec[key])
            if len(lat) >= n:
                break
            time.sleep(0.1)
    finally:
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)
    return {"mta": "mta-server", "delivered": delivered, "inject_rate": n / (t_inj - t0), "rate": delivered / (t_done - t0),
            "p50_ms": pct(lat, 0.5) * 1000, "p99_ms": pct(lat, 0.99) * 1000, "cpu_ms": cpu * 1000 / n,
            "conns": conns, "fsync_per_msg": fsyncs / n, "latencies": len(lat), "load": mb.loadavg()}


class Postfix:
    """A private Postfix instance: config and queue under a temp dir, smtpd on a free loopback port."""

    def __init__(self, sink_port):
        self.dir = tempfile.mkdtemp(prefix="pfbench-")
        os.chmod(self.dir, 0o755)
        self.conf = os.path.join(self.dir, "conf")
        os.makedirs(self.conf)
        self.port = mb.free_port()
        self.log = os.path.join(self.dir, "maillog")
        d = self.dir
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(f"""compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = pfbench.test
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
default_transport = smtp
relay_transport = relay
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
maillog_file_prefixes = /tmp
maillog_file = {self.log}
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
""")
        # Debian's master.cf with smtpd moved to our port and chroot off (the queue is not a prepared chroot).
        out = []
        for line in open("/etc/postfix/master.cf"):
            if line.startswith("#") or line.startswith(" ") or not line.strip():
                out.append(line)
                continue
            cols = line.split()
            if cols[0] == "smtp" and cols[1] == "inet":
                cols[0] = f"127.0.0.1:{self.port}"
            if len(cols) >= 8 and cols[4] == "y":
                cols[4] = "n"
            out.append("  ".join(cols) + "\n")
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.writelines(out)
        os.makedirs(os.path.join(self.dir, "queue"))
        os.makedirs(os.path.join(self.dir, "data"))
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        # Postfix reports start-up errors to syslog (absent here) or the maillog: show it when start fails.
        if subprocess.run(["postfix", "-c", self.conf, "start"]).returncode != 0:
            raise RuntimeError("postfix start failed: " + (open(self.log).read()[-2000:] if os.path.exists(self.log) else ""))
        if not mb.wait_port(self.port, 30):
            raise RuntimeError("postfix smtpd did not start")

    def pids(self):
        """Every process of this instance: the master and its children."""
        master = int(open(os.path.join(self.dir, "queue", "pid", "master.pid")).read().strip())
        kids = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
        return [master] + [int(k) for k in kids]

    def stop(self):
        subprocess.run(["postfix", "-c", self.conf, "stop"], check=False)
        time.sleep(1)
        shutil.rmtree(self.dir, ignore_errors=True)


def proc_cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime: children that exited (smtpd/smtp/cleanup recycle) are counted by the master.
        return sum(int(x) for x in fields[11:15]) / mb.CLK_TCK
    except OSError:
        return 0.0


def postfix_cpu(pf):
    pids = pf.pids()
    master = pids[0]
    # Master's cumulative (includes reaped children) plus live children's own.
    return proc_cpu(master) + sum(proc_cpu(p) for p in pids[1:])


def run_postfix(n, sessions, sink):
    pf = Postfix(sink.port)
    try:
        cpu0 = postfix_cpu(pf)
        t0, t_inj = smtp_source(pf.port, n, sessions)
        sent, delays = 0, []
        pos = 0
        buf = ""
        deadline = time.time() + 1800
        while time.time() < deadline:
            with open(pf.log) as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            buf += chunk
            lines = buf.split("\n")
            buf = lines.pop()
            for line in lines:
                if "status=sent" in line:
                    sent += 1
                    m = re.search(r" delay=([0-9.]+)", line)
                    if m:
                        delays.append(float(m.group(1)))
            if sent >= n:
                break
            time.sleep(0.05)
        t_done = time.time()
        cpu = postfix_cpu(pf) - cpu0
    finally:
        pf.stop()
    return {"mta": "Postfix 3.7", "delivered": sent, "inject_rate": n / (t_inj - t0), "rate": sent / (t_done - t0),
            "p50_ms": pct(delays, 0.5) * 1000, "p99_ms": pct(delays, 0.99) * 1000, "cpu_ms": cpu * 1000 / n,
            "conns": float("nan"), "fsync_per_msg": float("nan"), "latencies": len(delays), "load": mb.loadavg()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--postfix-messages", type=int, default=None)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--only", choices=["ours", "postfix"])
    ap.add_argument("--perf", help="perf record -g our server into this file")
    ap.add_argument("--delivery", default="", help='extra [delivery] TOML lines for ours, e.g. '
                    '"connections_per_domain = 64\\nmessages_per_connection = 1000"')
    a = ap.parse_args()
    mb.build(programs=True)
    print("#", mb.describe(), flush=True)
    if a.delivery:
        print("# mta-server [delivery] extra:", a.delivery, flush=True)
    dns = mb.Dns(100)
    sink = mb.Sink()
    rows = []
    try:
        for rep in range(a.repeat):
            for which in ("ours", "postfix"):
                if a.only and a.only != which:
                    continue
                if which == "ours":
                    r = run_ours(a.messages, a.sessions, dns, sink, a.delivery.replace("\\n", "\n"), a.perf)
                else:
                    r = run_postfix(a.postfix_messages or a.messages, a.sessions, sink)
                r["rep"] = rep + 1
                rows.append(r)
                print(f"run {rep + 1} {r['mta']}: {r['delivered']:.0f} delivered, inject {r['inject_rate']:.0f} msg/s, "
                      f"end-to-end {r['rate']:.0f} msg/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms "
                      f"({r['latencies']} samples), {r['cpu_ms']:.3f} ms CPU/msg, {r['conns']:.0f} connections, "
                      f"{r['fsync_per_msg']:.3f} fsync/msg, load {r['load']:.2f}", flush=True)
    finally:
        sink.stop()
        dns.stop()
    print("\n| run | MTA | delivered | injection msgs/s | end-to-end msgs/s | inject→delivery p50 | p99 | "
          "CPU/msg | connections opened | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rep']} | {r['mta']} | {r['delivered']:.0f} | {r['inject_rate']:.0f} | {r['rate']:.0f} | "
              f"{r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r['cpu_ms']:.3f} ms | {r['conns']:.0f} | {r['load']:.2f} |")
    for rep in range(1, a.repeat + 1):
        ours = [r for r in rows if r["rep"] == rep and r["mta"] == "mta-server"]
        pf = [r for r in rows if r["rep"] == rep and r["mta"] != "mta-server"]
        if ours and pf and pf[0]["rate"] > 0:
            print(f"run {rep}: mta-server / Postfix end-to-end = {ours[0]['rate'] / pf[0]['rate']:.1f}x")


if __name__ == "__main__":
    main()

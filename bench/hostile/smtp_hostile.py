#!/usr/bin/env python3
"""Hostile-client benchmark for the SMTP listener (issue 8, "Safe exposure"): memory under big and stalled
messages, how long slow or silent clients hold a connection slot, and event-loop lag, against the release
mta-server on loopback (127.0.0.0/8 only; DNS at the closed port 127.0.0.1:9; delivery disabled, so every
accepted message stays queued and can be read back offline).

(a) memory: B clients (default 200) each send one unique S MiB message (default 20 MiB; CRLF text lines, its
    own nonce, id and part numbers) while D clients (default 200) stream DATA slowly (--slow-chunk bytes every
    --slow-interval s) and drop the connection (RST) mid-DATA. VmRSS of the server is sampled every 100 ms:
    peak growth over the idle baseline (target < 512 MiB). Then SIGTERM, and offline: every message that got
    `250 ... queued as ID` must be in the spool byte-exact (`spool show ID --raw` = the server's prepended
    header block + the client's content), and nothing else (spool ids == acknowledged ids: nothing from the
    dropped clients).
(c) connection flood: F = --flood-factor x smtp.max_connections (default 5 x 100) connection slots from
    127.0.0.2..127.0.0.251, half silent after the greeting, half sending one byte of an endless command line
    every 3 s; each slot reconnects when closed (after 1 s when refused) until the flood ends. Per connection:
    how long the server held it before closing (vs smtp.timeout_command, 10 s here), and what it said. A
    legitimate client (--legit-src, default 127.0.1.1: another /24 than the flood's, as a real client on another
    network would be; smtp.network_share counts per /24) arrives every --legit-every s during the flood: it
    must get its 220 and finish a whole transaction (EHLO .. 250 queued as) within 5 s.
(d) event-loop lag: the back-pressure gauge `mta_backpressure_signal{signal="event_loop_lag"}` (ms; p90 of the
    100 ms ticker's lateness over the back-pressure window, 10 s by default, `--bp-window` changes it) scraped
    from /metrics every 250 ms during (a): max and p99 of the samples (target p99 < 100 ms).

Config: [smtp] timeout_command = "10s" (both), and for the new server (issue 8) min_data_rate /
data_rate_grace. `--old` leaves out every key today's code does not know (it refuses unknown keys at start).

Safety: the run stops feeding the server (aborts every client) when the server's RSS grows beyond
--rss-abort-mib or the machine's MemAvailable falls below --min-available-mib; the table then says so.
Every loop is bounded in count and time (--time-limit per phase).

Usage:
  nice -n 10 python3 bench/hostile/smtp_hostile.py [--old] [--only a,c] [--bin PATH/mta-server]
      [--big-clients 200] [--big-mib 20] [--slow-clients 200] [--max-connections 100] [--flood-secs 45]
  --bin runs a given binary (e.g. /work/baseline-bin/mta-server) instead of building target/release.
  Env MTA_BENCH_NO_BUILD=1 uses target/release as it is.
"""
import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import mtabench as mb  # noqa: E402

LAG_METRIC = "mta_backpressure_signal"
LAG_LABEL = 'signal="event_loop_lag"'

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by word "
    "but not what all were we when your can said there use an each which she do how their if will up other about "
    "out many then them these so some her would make like him into time has look two more write go see number no "
    "way could people my than first water been call who oil its now find long down day did get come made may part "
    "invoice shipment delivery account meeting report quarterly schedule agenda budget project customer order "
    "review approval contract payment reminder update status warehouse inventory forecast analysis minutes draft "
    "please thanks regards attached following previous request confirm available tomorrow monday friday office"
).split()


# ----------------------------------------------------------------------------------------------------------------
# Message content: realistic text lines, unique per message, generated on the fly (never held whole in memory).

def make_corpus(variants=32, block_bytes=64 * 1024, seed=1):
    """`variants` blocks of ~64 KiB of CRLF-terminated sentences (no line starts with a dot, all < 100 octets)."""
    rng = random.Random(seed)
    blocks = []
    for _ in range(variants):
        lines, size = [], 0
        while size < block_bytes:
            n = rng.randint(6, 14)
            words = [rng.choice(WORDS) for _ in range(n)]
            words[0] = words[0].capitalize()
            line = " ".join(words) + rng.choice([".", ".", ",", "?", ":"]) + "\r\n"
            if rng.random() < 0.08:
                line = "\r\n"  # paragraph break
            lines.append(line)
            size += len(line)
        blocks.append("".join(lines).encode())
    return blocks


class Message:
    """Message `i` of a run: headers + body blocks up to `size` octets; iterating yields its chunks (the content
    as sent, before the terminating `.`), `digest`/`length` are filled while iterating."""

    def __init__(self, i, size, corpus, run_nonce):
        self.i = i
        self.size = size
        self.corpus = corpus
        self.nonce = f"{run_nonce}-{i:04d}-{random.getrandbits(48):012x}"
        self.sender = f"sender{i}@bench.test"
        self.rcpt = f"rcpt{i}@dest.test"
        self.digest = None
        self.length = 0

    def chunks(self):
        h = hashlib.sha256()
        date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        head = (f"From: Bench Sender {self.i} <{self.sender}>\r\nTo: <{self.rcpt}>\r\n"
                f"Subject: hostile bench message {self.i} ({self.nonce})\r\nDate: {date}\r\n"
                f"Message-ID: <{self.nonce}@bench.test>\r\nMIME-Version: 1.0\r\n"
                f"Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
        rng = random.Random(self.nonce)
        out = head
        total = len(head)
        part = 0
        while total < self.size:
            block = b"-- %s part %05d --\r\n" % (self.nonce.encode(), part) + rng.choice(self.corpus)
            if total + len(block) > self.size:
                cut = block.rfind(b"\r\n", 0, self.size - total)
                block = block[:cut + 2] if cut > 0 else b""
                if not block:
                    break
            out = block if out is None else out + block
            total += len(block)
            part += 1
            if len(out) >= 256 * 1024:
                h.update(out)
                yield out
                out = None
        if out:
            h.update(out)
            yield out
        self.digest = h.hexdigest()
        self.length = total


# ----------------------------------------------------------------------------------------------------------------
# Small async SMTP helpers

class Closed(Exception):
    pass


async def read_reply(reader, timeout):
    """One (possibly multi-line) reply as text; raises Closed on EOF, asyncio.TimeoutError on timeout."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise Closed("".join(lines))
        lines.append(line.decode(errors="replace"))
        if len(line) < 4 or line[3:4] != b"-":
            return "".join(lines)


async def command(reader, writer, line, timeout=60):
    writer.write(line.encode() + b"\r\n")
    await writer.drain()
    return await read_reply(reader, timeout)


def rst_close(writer):
    """Drop the connection with a RST (no FIN handshake): a client that vanished mid-DATA."""
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class Abort:
    """Set when the run must stop feeding the server (memory guard or time limit)."""

    def __init__(self):
        self.reason = None
        self.event = None  # asyncio.Event, created inside the loop

    def trip(self, reason, loop=None):
        if self.reason is None:
            self.reason = reason
            if self.event is not None and loop is not None:
                loop.call_soon_threadsafe(self.event.set)


# ----------------------------------------------------------------------------------------------------------------
# Samplers (threads, so a busy client event loop does not delay them)

class Sampler(threading.Thread):
    def __init__(self, server, abort, loop, rss_abort_kb, min_avail_kb, lag=True):
        super().__init__(daemon=True)
        self.server, self.abort, self.loop = server, abort, loop
        self.rss_abort_kb, self.min_avail_kb = rss_abort_kb, min_avail_kb
        self.base_kb = 0
        self.rss = []  # (t, kB)
        self.lag = []  # (t, ms)
        self.scrape_errors = 0
        self.min_avail_seen = None
        self.stop_flag = threading.Event()
        self.with_lag = lag
        self._lag_thread = None

    def run(self):
        if self.with_lag:
            self._lag_thread = threading.Thread(target=self._lag_loop, daemon=True)
            self._lag_thread.start()
        while not self.stop_flag.is_set():
            t = time.time()
            try:
                kb = self.server.rss_kb()
            except OSError:
                break
            self.rss.append((t, kb))
            avail = mem_available_kb()
            self.min_avail_seen = avail if self.min_avail_seen is None else min(self.min_avail_seen, avail)
            if kb - self.base_kb > self.rss_abort_kb:
                self.abort.trip(f"server RSS grew by {(kb - self.base_kb) / 1024:.0f} MiB (> --rss-abort-mib)", self.loop)
            elif avail < self.min_avail_kb:
                self.abort.trip(f"MemAvailable fell to {avail / 1024:.0f} MiB (< --min-available-mib)", self.loop)
            self.stop_flag.wait(max(0.0, 0.1 - (time.time() - t)))

    def _lag_loop(self):
        while not self.stop_flag.is_set():
            t = time.time()
            try:
                v = lag_value(self.server.metrics())
                if v is not None:
                    self.lag.append((t, v))
            except Exception:  # noqa: BLE001 - a slow scrape is data too: count it
                self.scrape_errors += 1
            self.stop_flag.wait(max(0.0, 0.25 - (time.time() - t)))

    def stop(self):
        self.stop_flag.set()
        self.join(5)
        if self._lag_thread:
            self._lag_thread.join(15)


def set_lag_metric(spec):
    global LAG_METRIC, LAG_LABEL
    m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?", spec)
    if not m:
        raise SystemExit(f"--lag-metric: cannot parse {spec!r}")
    LAG_METRIC, LAG_LABEL = m.group(1), m.group(2) or ""


def lag_value(text):
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name == LAG_METRIC and LAG_LABEL in line:
            try:
                return float(line.rsplit(None, 1)[1])
            except ValueError:
                return None
    return None


def mem_available_kb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


# ----------------------------------------------------------------------------------------------------------------
# (a) big messages + slow droppers

async def big_client(port, msg, res, abort, deadline):
    r = {"i": msg.i, "state": "start", "id": None, "reply": None}
    res.append(r)
    writer = None
    t_start = time.time()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        writer.transport.set_write_buffer_limits(high=1 << 20)
        g = await read_reply(reader, 60)
        if not g.startswith("220"):
            r.update(state="refused", reply=g.strip())
            return
        t_conn = time.time()
        r["greet_s"] = t_conn - t_start
        for line in ("EHLO big.bench.test", f"MAIL FROM:<{msg.sender}> SIZE={msg.size}", f"RCPT TO:<{msg.rcpt}>",
                     "DATA"):
            r["stage"] = line.split()[0]
            rep = await command(reader, writer, line)
            if not rep.startswith(("250", "354")):
                r.update(state="refused", reply=f"{rep.strip()} (to {r['stage']}, {time.time() - t_conn:.1f} s "
                                                 f"after the greeting)")
                return
        r["cmds_s"] = time.time() - t_conn
        r["state"] = "data"
        for chunk in msg.chunks():
            if abort.reason or time.time() > deadline:
                r["state"] = "aborted"
                rst_close(writer)
                writer = None
                return
            writer.write(chunk)
            await writer.drain()
        writer.write(b".\r\n")
        await writer.drain()
        rep = await read_reply(reader, max(5.0, deadline - time.time()))
        r["reply"] = rep.strip()
        m = re.search(r"queued as (\S+)", rep)
        if rep.startswith("250") and m:
            r.update(state="acked", id=m.group(1), digest=msg.digest, length=msg.length)
        else:
            r["state"] = "rejected"
        try:
            await command(reader, writer, "QUIT", 10)
        except (Closed, OSError, asyncio.TimeoutError):
            pass
    except Closed as e:
        r.update(state=r["state"] + ":closed", reply=str(e).strip()[:200])
    except (OSError, asyncio.TimeoutError) as e:
        r.update(state=r["state"] + ":" + type(e).__name__, reply=str(e)[:200])
    finally:
        if writer is not None:
            writer.close()


async def slow_client(i, port, res, abort, drop_after, chunk, interval, stop_evt, corpus, rate_nonce):
    """Streams DATA at `chunk` bytes every `interval` s and drops (RST) after `drop_after` s or when told."""
    r = {"i": i, "state": "start", "sent": 0, "reply": None}
    res.append(r)
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        g = await read_reply(reader, 60)
        if not g.startswith("220"):
            r.update(state="refused", reply=g.strip())
            return
        await command(reader, writer, "EHLO slow.bench.test")
        for line in (f"MAIL FROM:<slow{i}@bench.test>", f"RCPT TO:<slow{i}@dest.test>", "DATA"):
            rep = await command(reader, writer, line)
            if not rep.startswith(("250", "354")):
                r.update(state="refused", reply=rep.strip())
                return
        r["state"] = "data"
        body = (f"From: <slow{i}@bench.test>\r\nTo: <slow{i}@dest.test>\r\n"
                f"Subject: slow dropper {i} ({rate_nonce})\r\n\r\n").encode()
        src = random.Random(i)
        t0 = time.time()
        # A reply from the server while we stream (e.g. 421 for too slow) ends it; read in the background.
        reply_task = asyncio.ensure_future(reader.readline())
        while time.time() - t0 < drop_after and not stop_evt.is_set() and not abort.reason:
            while len(body) < chunk:
                body += src.choice(corpus)
            piece, body = body[:chunk], body[chunk:]
            writer.write(piece)
            await writer.drain()
            r["sent"] += len(piece)
            done, _ = await asyncio.wait({reply_task}, timeout=interval)
            if done:
                line = reply_task.result()
                r.update(state="closed_by_server", reply=line.decode(errors="replace").strip() or "(EOF)",
                         held=time.time() - t0)
                return
        reply_task.cancel()
        r["state"] = "dropped"
        rst_close(writer)
        writer = None
    except (Closed, OSError, asyncio.TimeoutError) as e:
        r.update(state=r["state"] + ":" + type(e).__name__, reply=str(e)[:200])
    finally:
        if writer is not None:
            writer.close()


async def run_memory(a, server, sampler, abort, corpus):
    loop = asyncio.get_running_loop()
    abort.event = asyncio.Event()
    run_nonce = f"{int(time.time()):x}"
    msgs = [Message(i, a.big_mib << 20, corpus, run_nonce) for i in range(a.big_clients)]
    big, slow = [], []
    stop_slow = asyncio.Event()
    deadline = time.time() + a.time_limit
    rng = random.Random(7)
    slow_tasks = [asyncio.ensure_future(slow_client(
        i, server.smtp, slow, abort, rng.uniform(a.slow_min_secs, a.slow_max_secs), a.slow_chunk, a.slow_interval,
        stop_slow, corpus, run_nonce)) for i in range(a.slow_clients)]
    await asyncio.sleep(0.5)
    t0 = time.time()
    big_tasks = [asyncio.ensure_future(big_client(server.smtp, m, big, abort, deadline)) for m in msgs]
    done_all = asyncio.ensure_future(asyncio.gather(*big_tasks))
    aborted = asyncio.ensure_future(abort.event.wait())
    await asyncio.wait({done_all, aborted}, timeout=max(1.0, deadline - time.time()),
                       return_when=asyncio.FIRST_COMPLETED)
    if not done_all.done():
        if abort.reason is None:
            abort.trip("time limit", loop)
        # Big clients see abort.reason at their next chunk; give them a moment, then cancel.
        await asyncio.wait({done_all}, timeout=30)
        for t in big_tasks:
            t.cancel()
    t_big = time.time() - t0
    stop_slow.set()
    await asyncio.wait(slow_tasks, timeout=30)
    for t in slow_tasks:
        t.cancel()
    aborted.cancel()
    return big, slow, t_big


def verify_spool(server, big):
    """Offline: the spool holds exactly the acknowledged messages, each byte-exact after our header block."""
    out = subprocess.run([mb.BIN, "spool", "list", "--json", "--config", server.config], capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        return {"error": f"spool list failed: {out.stderr.strip()[:300]}"}
    listed = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    listed_ids = {m["id"] for m in listed}
    acked = {r["id"]: r for r in big if r.get("state") == "acked"}
    missing, corrupt, headers_seen = [], [], {}
    for qid, r in acked.items():
        if qid not in listed_ids:
            missing.append(qid)
            continue
        show = subprocess.run([mb.BIN, "spool", "show", qid, "--raw", "--config", server.config],
                              capture_output=True, timeout=300)
        raw = show.stdout
        n = r["length"]
        ok = show.returncode == 0 and len(raw) >= n and hashlib.sha256(raw[len(raw) - n:]).hexdigest() == r["digest"]
        prefix = raw[:len(raw) - n] if ok else b""
        # The prefix must be a header block we prepended: starts with Received:, whole header lines.
        if ok:
            ok = prefix.startswith(b"Received: ") and prefix.endswith(b"\r\n")
            for line in prefix.split(b"\r\n")[:-1]:
                if line[:1] in (b" ", b"\t"):
                    continue
                name = line.split(b":", 1)[0]
                if b":" not in line or not re.fullmatch(rb"[!-9;-~]+", name):
                    ok = False
                    break
                headers_seen[name.decode()] = headers_seen.get(name.decode(), 0) + 1
        if not ok:
            corrupt.append(qid)
    extra = sorted(listed_ids - set(acked))
    return {"listed": len(listed), "acked": len(acked), "missing": missing, "corrupt": corrupt, "extra": extra,
            "prepended": headers_seen}


def phase_a(a, corpus):
    smtp_extra = f'timeout_command = "{a.timeout_command}"\n{a.smtp_extra}\n'
    if not a.old:
        smtp_extra += f'min_data_rate = {a.min_data_rate}\ndata_rate_grace = "{a.data_rate_grace}"\n'
    extra = "[delivery]\nenabled = false\n"
    if a.bp_window:
        extra += f'[backpressure]\nwindow = "{a.bp_window}"\n'
    server = mb.start_server(extra=extra, smtp_extra=smtp_extra)
    print(f"# (a) server pid {server.pid}, smtp 127.0.0.1:{server.smtp}, dir {server.dir}", flush=True)
    abort = Abort()
    loop = asyncio.new_event_loop()
    sampler = Sampler(server, abort, loop, a.rss_abort_mib * 1024, a.min_available_mib * 1024)
    try:
        time.sleep(2.0)
        base = []
        for _ in range(10):
            base.append(server.rss_kb())
            time.sleep(0.1)
        sampler.base_kb = sorted(base)[len(base) // 2]
        cpu0 = server.cpu_seconds()
        client_cpu0 = time.process_time()
        sampler.start()
        t0 = time.time()
        big, slow, t_big = loop.run_until_complete(run_memory(a, server, sampler, abort, corpus))
        wall = time.time() - t0
        time.sleep(1.0)
        sampler.stop()
        cpu = server.cpu_seconds() - cpu0
        client_cpu = time.process_time() - client_cpu0
        load = mb.loadavg()
        t_stop = time.time()
        server.stop()
        stop_secs = time.time() - t_stop
        exit_code = server.proc.returncode
        ver = verify_spool(server, big)
    finally:
        sampler.stop_flag.set()
        loop.close()
        if server.proc.poll() is None:
            server.proc.kill()
        if not a.keep:
            shutil.rmtree(server.dir, ignore_errors=True)
    peak_t, peak_kb = max(sampler.rss, key=lambda x: x[1]) if sampler.rss else (t0, 0)
    states_big, states_slow = {}, {}
    for r in big:
        states_big[r["state"]] = states_big.get(r["state"], 0) + 1
    for r in slow:
        states_slow[r["state"]] = states_slow.get(r["state"], 0) + 1
    slow_replies = {}
    for r in slow:
        if r["state"] == "closed_by_server":
            k = (r["reply"] or "")[:40]
            slow_replies[k] = slow_replies.get(k, 0) + 1
    acked_bytes = sum(r.get("length", 0) for r in big if r.get("state") == "acked")
    lag = [v for _, v in sampler.lag]
    return {
        "base_mib": sampler.base_kb / 1024, "peak_mib": peak_kb / 1024,
        "growth_mib": (peak_kb - sampler.base_kb) / 1024, "peak_at": peak_t - t0,
        "rss_samples": len(sampler.rss), "big": states_big, "slow": states_slow, "slow_replies": slow_replies,
        "acked": sum(1 for r in big if r.get("state") == "acked"), "acked_mib": acked_bytes / (1 << 20),
        "t_big": t_big, "wall": wall, "cpu": cpu, "client_cpu": client_cpu, "load": load, "abort": abort.reason, "verify": ver,
        "stop_secs": stop_secs, "exit": exit_code, "lag_n": len(lag), "lag_max": max(lag) if lag else float("nan"),
        "lag_p99": pct(lag, 0.99), "lag_p50": pct(lag, 0.5), "scrape_errors": sampler.scrape_errors,
        "min_avail_mib": (sampler.min_avail_seen or 0) / 1024,
        "refusals": [r["reply"] for r in big if r["state"] in ("refused", "rejected")][:3],
        "greet_p50": pct([r["greet_s"] for r in big if "greet_s" in r], 0.5),
        "greet_max": max([r["greet_s"] for r in big if "greet_s" in r], default=float("nan")),
        "cmds_p50": pct([r["cmds_s"] for r in big if "cmds_s" in r], 0.5),
        "cmds_max": max([r["cmds_s"] for r in big if "cmds_s" in r], default=float("nan")),
    }


# ----------------------------------------------------------------------------------------------------------------
# (c) connection flood + legitimate client

async def flood_slot(slot, kind, src, port, t_end, conns, max_conns=10_000):
    """One attacker slot: connect, stay silent (or trickle one byte every 3 s), reconnect when closed."""
    n = 0
    while time.time() < t_end and n < max_conns:
        n += 1
        c = {"slot": slot, "kind": kind, "t0": time.time(), "greeting": None, "closed": None, "said": ""}
        conns.append(c)
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), 5)
            try:
                g = await read_reply(reader, max(0.1, t_end - time.time()))
            except Closed as e:
                c.update(greeting="(closed)", closed=time.time(), said=str(e).strip()[:80])
                await asyncio.sleep(1.0)
                continue
            c["greeting"] = g.strip()[:80]
            c["t_greet"] = time.time()
            if not g.startswith("220"):
                c["closed"] = time.time()
                await asyncio.sleep(1.0)
                continue
            trickle = None
            if kind == "trickle":
                async def drip():
                    line = b"EHLO " + b"a" * 10_000
                    for k in range(len(line)):
                        await asyncio.sleep(3.0)
                        writer.write(line[k:k + 1])
                        await writer.drain()
                trickle = asyncio.ensure_future(drip())
            try:
                while True:
                    left = t_end - time.time()
                    if left <= 0:
                        break
                    data = await asyncio.wait_for(reader.read(4096), left)
                    if not data:
                        c["closed"] = time.time()
                        break
                    c["said"] = (c["said"] + data.decode(errors="replace"))[-120:]
            except asyncio.TimeoutError:
                pass
            except OSError:
                c["closed"] = time.time()
            finally:
                if trickle:
                    trickle.cancel()
                    try:
                        await trickle
                    except (asyncio.CancelledError, OSError, ConnectionError):
                        pass
                    except Exception:  # noqa: BLE001
                        pass
            if c["closed"] is None:
                break  # flood over: still held
            await asyncio.sleep(0.1)
        except (OSError, asyncio.TimeoutError) as e:
            c.update(greeting=f"(connect failed: {type(e).__name__})", closed=time.time())
            await asyncio.sleep(1.0)
        finally:
            if writer is not None:
                writer.transport.abort()


async def legit_attempt(port, k, src):
    r = {"k": k, "t0": time.time(), "ok": False, "greet_s": None, "done_s": None, "stage": "connect", "reply": ""}
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port,
                                                                        local_addr=(src, 0)), 10)
        r["stage"] = "greeting"
        g = await read_reply(reader, 10)
        r["greet_s"] = time.time() - r["t0"]
        if not g.startswith("220"):
            r["reply"] = g.strip()[:80]
            return r
        body = (f"From: <legit@bench.test>\r\nTo: <legit{k}@dest.test>\r\nSubject: legit {k}\r\n\r\n"
                "A legitimate message during the flood.\r\n.")
        for stage, line, want in (("ehlo", "EHLO legit.bench.test", "250"), ("mail", "MAIL FROM:<legit@bench.test>", "250"),
                                  ("rcpt", f"RCPT TO:<legit{k}@dest.test>", "250"), ("data", "DATA", "354"),
                                  ("eod", body, "250")):
            r["stage"] = stage
            rep = await command(reader, writer, line, 10)
            if not rep.startswith(want):
                r["reply"] = rep.strip()[:80]
                return r
        r["done_s"] = time.time() - r["t0"]
        r["ok"] = r["done_s"] <= 5.0
        r["stage"] = "done"
        try:
            await command(reader, writer, "QUIT", 5)
        except (Closed, OSError, asyncio.TimeoutError):
            pass
    except Closed as e:
        r["reply"] = f"closed: {str(e).strip()[:60]}"
    except (OSError, asyncio.TimeoutError) as e:
        r["reply"] = type(e).__name__
    finally:
        if writer is not None:
            writer.transport.abort()
    return r


async def run_flood(a, port):
    slots = a.flood_factor * a.max_connections
    t_start = time.time()
    t_end = t_start + a.flood_secs
    conns = []
    tasks = []
    for s in range(slots):
        src = f"127.0.0.{2 + s % 250}"
        kind = "silent" if s % 2 == 0 else "trickle"
        tasks.append(asyncio.ensure_future(flood_slot(s, kind, src, port, t_end, conns)))
        if s % 50 == 49:
            await asyncio.sleep(0.05)
    legit = []
    k = 0
    t_next = t_start + a.legit_first
    while t_next < t_end - 6 and k < 100:
        await asyncio.sleep(max(0.0, t_next - time.time()))
        legit.append(await legit_attempt(port, k, a.legit_src))
        k += 1
        t_next += a.legit_every
    await asyncio.wait(tasks, timeout=max(1.0, t_end - time.time()) + 30)
    for t in tasks:
        t.cancel()
    return conns, legit, t_end


def phase_c(a):
    smtp_extra = (f'timeout_command = "{a.timeout_command}"\nmax_connections = {a.max_connections}\n'
                  f'max_connections_per_ip = 10000\n{a.smtp_extra}\n')
    if not a.old:
        smtp_extra += f'min_data_rate = {a.min_data_rate}\ndata_rate_grace = "{a.data_rate_grace}"\n'
    server = mb.start_server(extra="[delivery]\nenabled = false\n", smtp_extra=smtp_extra)
    print(f"# (c) server pid {server.pid}, smtp 127.0.0.1:{server.smtp}, max_connections {a.max_connections}, "
          f"{a.flood_factor * a.max_connections} flood slots for {a.flood_secs} s", flush=True)
    loop = asyncio.new_event_loop()
    try:
        cpu0 = server.cpu_seconds()
        conns, legit, t_end = loop.run_until_complete(run_flood(a, server.smtp))
        cpu = server.cpu_seconds() - cpu0
        load = mb.loadavg()
        server.stop()
    finally:
        loop.close()
        if server.proc.poll() is None:
            server.proc.kill()
        if not a.keep:
            shutil.rmtree(server.dir, ignore_errors=True)
    deadline = parse_secs(a.timeout_command)
    rows = {}
    for kind in ("silent", "trickle"):
        cs = [c for c in conns if c["kind"] == kind]
        served = [c for c in cs if (c["greeting"] or "").startswith("220")]
        closed = [c for c in served if c["closed"]]
        held = [c["closed"] - c["t0"] for c in closed]
        open_end = [t_end - c["t0"] for c in served if not c["closed"]]
        said = {}
        for c in closed:
            code = (c["said"].strip().splitlines() or ["(no reply)"])[-1][:48]
            said[code] = said.get(code, 0) + 1
        refused = {}
        for c in cs:
            if not (c["greeting"] or "").startswith("220"):
                key = (c["greeting"] or "(none)")[:48]
                refused[key] = refused.get(key, 0) + 1
        rows[kind] = {
            "conns": len(cs), "served": len(served), "closed": len(closed),
            "held_p50": pct(held, 0.5), "held_p90": pct(held, 0.9), "held_max": max(held) if held else float("nan"),
            "over_deadline": sum(1 for h in held if h > deadline + 2.0) + sum(1 for h in open_end if h > deadline + 2.0),
            "open_end": len(open_end), "open_end_max": max(open_end) if open_end else float("nan"),
            "said": said, "refused": refused,
        }
    return {"rows": rows, "legit": legit, "cpu": cpu, "load": load, "deadline": deadline}


def parse_secs(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise ValueError(text)
    v = float(m.group(1))
    return v * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


# ----------------------------------------------------------------------------------------------------------------

def fmt_counts(d):
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda x: -x[1])) or "–"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", action="store_true", help="leave out the config keys today's code does not know")
    ap.add_argument("--only", default="a,c", help="phases to run: a (memory + lag d), c (flood)")
    ap.add_argument("--bin", help="run this mta-server binary (no build)")
    ap.add_argument("--big-clients", type=int, default=200)
    ap.add_argument("--big-mib", type=int, default=20)
    ap.add_argument("--slow-clients", type=int, default=200)
    ap.add_argument("--slow-chunk", type=int, default=1024, help="bytes per slow write")
    ap.add_argument("--slow-interval", type=float, default=0.5, help="seconds between slow writes")
    ap.add_argument("--slow-min-secs", type=float, default=10.0)
    ap.add_argument("--slow-max-secs", type=float, default=60.0)
    ap.add_argument("--timeout-command", default="10s")
    ap.add_argument("--min-data-rate", type=int, default=1024, help="new server: smtp.min_data_rate (bytes/s)")
    ap.add_argument("--data-rate-grace", default="10s", help="new server: smtp.data_rate_grace")
    ap.add_argument("--bp-window", help='[backpressure] window for the lag gauge (server default "10s")')
    ap.add_argument("--max-connections", type=int, default=100)
    ap.add_argument("--flood-factor", type=int, default=5)
    ap.add_argument("--flood-secs", type=float, default=45.0)
    ap.add_argument("--legit-first", type=float, default=4.0, help="first legitimate client, s into the flood")
    ap.add_argument("--legit-every", type=float, default=6.0)
    ap.add_argument("--legit-src", default="127.0.1.1",
                    help="the legitimate client's source address (the flood's are 127.0.0.2..251)")
    ap.add_argument("--time-limit", type=float, default=900.0, help="per phase, seconds")
    ap.add_argument("--rss-abort-mib", type=int, default=10240, help="stop feeding when server RSS grows beyond")
    ap.add_argument("--min-available-mib", type=int, default=3072, help="stop feeding below this MemAvailable")
    ap.add_argument("--keep", action="store_true", help="keep the spool directories")
    ap.add_argument("--smtp-extra", default="", help='more [smtp] TOML lines, e.g. "max_errors = 5\\n"')
    ap.add_argument("--lag-metric", default=f"{LAG_METRIC}{{{LAG_LABEL}}}",
                    help="Prometheus sample holding the event-loop lag in ms: NAME or NAME{label=\"value\"}")
    a = ap.parse_args()
    a.smtp_extra = a.smtp_extra.replace("\\n", "\n")
    set_lag_metric(a.lag_metric)
    phases = set(a.only.split(","))

    if a.bin:
        mb.BIN = os.path.abspath(a.bin)
        commit_file = os.path.join(os.path.dirname(mb.BIN), "COMMIT")
        binary_note = f"binary {mb.BIN}" + (f" (commit {open(commit_file).read().strip()})"
                                            if os.path.exists(commit_file) else "")
    else:
        mb.build()
        binary_note = "binary built from this tree"
    print("#", mb.describe(), flush=True)
    print(f"# {binary_note}; {'--old: new config keys left out' if a.old else 'new config keys set'}; "
          f"timeout_command {a.timeout_command}" + ("" if a.old else
                                                    f", min_data_rate {a.min_data_rate} B/s after {a.data_rate_grace}"),
          flush=True)

    res_a = res_c = None
    if "c" in phases:
        res_c = phase_c(a)
        print(f"# (c) done, load {res_c['load']:.2f}", flush=True)
    if "a" in phases:
        corpus = make_corpus()
        res_a = phase_a(a, corpus)
        print(f"# (a) done, load {res_a['load']:.2f}", flush=True)

    print()
    print(f"## Hostile SMTP clients ({'today' if a.old else 'new'} config), {mb.describe()}")
    print(f"{binary_note}")
    if res_a:
        r, v = res_a, res_a["verify"]
        print(f"\n### (a) {a.big_clients} x {a.big_mib} MiB messages + {a.slow_clients} slow droppers, "
              f"(d) event-loop lag\n")
        print("| measure | value | target |")
        print("|---|---|---|")
        print(f"| server RSS idle baseline | {r['base_mib']:.1f} MiB | |")
        print(f"| peak RSS (100 ms samples, {r['rss_samples']}) | {r['peak_mib']:.1f} MiB at +{r['peak_at']:.1f} s | |")
        verdict = "met" if r["growth_mib"] < 512 and not r["abort"] else "**missed**"
        print(f"| peak growth over baseline | **{r['growth_mib']:.1f} MiB** | < 512 MiB ({verdict}) |")
        print(f"| big clients | {fmt_counts(r['big'])} | all acked |")
        print(f"| acknowledged | {r['acked']} messages, {r['acked_mib']:.0f} MiB in {r['t_big']:.1f} s "
              f"({r['acked_mib'] / max(r['t_big'], 1e-9):.1f} MiB/s) | |")
        print(f"| big clients: connect→220 p50 / max, 220→354 p50 / max | {r['greet_p50']:.1f} / {r['greet_max']:.1f} s, "
              f"{r['cmds_p50']:.1f} / {r['cmds_max']:.1f} s | |")
        if r["refusals"]:
            print(f"| first refusals | {'; '.join(x or '' for x in r['refusals'])[:200]} | |")
        print(f"| slow droppers | {fmt_counts(r['slow'])} | |")
        if r["slow_replies"]:
            print(f"| slow: server's closing reply | {fmt_counts(r['slow_replies'])} | |")
        if "error" in v:
            print(f"| spool check | {v['error']} | |")
        else:
            ok = not v["missing"] and not v["corrupt"] and not v["extra"] and v["listed"] == v["acked"]
            print(f"| spool after SIGTERM: listed / acked | {v['listed']} / {v['acked']} | equal "
                  f"({'met' if ok else '**missed**'}) |")
            print(f"| acked but missing / not byte-exact / unacked in spool | {len(v['missing'])} / "
                  f"{len(v['corrupt'])} / {len(v['extra'])} | 0 / 0 / 0 |")
            print(f"| headers the server prepended | {fmt_counts(v['prepended'])} | |")
        print(f"| graceful stop | {r['stop_secs']:.1f} s, exit {r['exit']} | |")
        lag_verdict = "met" if r["lag_p99"] < 100 else "**missed**"
        print(f"| (d) `{a.lag_metric}` ({r['lag_n']} samples / 250 ms, "
              f"window {a.bp_window or '10s (default)'}) p50 / p99 / max | {r['lag_p50']:.1f} / **{r['lag_p99']:.1f}** / "
              f"{r['lag_max']:.1f} ms | p99 < 100 ms ({lag_verdict}) |")
        if r["scrape_errors"]:
            print(f"| /metrics scrapes failed | {r['scrape_errors']} | |")
        print(f"| server CPU / this client's CPU | {r['cpu']:.1f} s / {r['client_cpu']:.1f} s over {r['wall']:.1f} s | |")
        print(f"| machine MemAvailable, lowest | {r['min_avail_mib']:.0f} MiB | |")
        print(f"| load average (1 min) at the end | {r['load']:.2f} | |")
        if r["abort"]:
            print(f"| **run stopped early** | {r['abort']} | |")
    if res_c:
        c = res_c
        print(f"\n### (c) flood: {a.flood_factor * a.max_connections} slots vs max_connections "
              f"{a.max_connections}, {a.flood_secs:.0f} s, timeout_command {a.timeout_command}\n")
        print("| clients | connections | served (220) | closed by server | held p50 / p90 / max | "
              f"held > deadline + 2 s | still open at the end (longest) | server's last words | refused at connect |")
        print("|---|---|---|---|---|---|---|---|---|")
        for kind, row in c["rows"].items():
            print(f"| {kind} | {row['conns']} | {row['served']} | {row['closed']} | {row['held_p50']:.1f} / "
                  f"{row['held_p90']:.1f} / {row['held_max']:.1f} s | {row['over_deadline']} | {row['open_end']} "
                  f"({row['open_end_max']:.1f} s) | {fmt_counts(row['said'])} | {fmt_counts(row['refused'])} |")
        ok = sum(1 for x in c["legit"] if x["ok"])
        print(f"\nLegitimate client ({a.legit_src}) during the flood: **{ok} / {len(c['legit'])}** got 220 and "
              f"`250 queued` within 5 s; server CPU {c['cpu']:.1f} s, load {c['load']:.2f}\n")
        print("| attempt | at | greeting after | 250 queued after | result |")
        print("|---|---|---|---|---|")
        t_first = c["legit"][0]["t0"] if c["legit"] else 0
        for x in c["legit"]:
            g = f"{x['greet_s']:.2f} s" if x["greet_s"] is not None else "–"
            d = f"{x['done_s']:.2f} s" if x["done_s"] is not None else "–"
            res = "ok" if x["ok"] else f"**failed** at {x['stage']}: {x['reply']}"
            print(f"| {x['k'] + 1} | +{x['t0'] - t_first + a.legit_first:.0f} s | {g} | {d} | {res} |")


if __name__ == "__main__":
    main()

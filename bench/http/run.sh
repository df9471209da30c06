#!/usr/bin/env bash
# HTTP injection benchmark with wrk (not our load generator) against the release mta-server.
#
# Cases: 1 KiB messages with 1 recipient and with 100 recipients, 64 connections, DURATION seconds each.
# Prints messages/s, recipients/s, p50/p99 latency of the 202 (wrk --latency), fsyncs per message (from
# /metrics mta_spool_fsyncs_total) and server CPU per message. For comparison in the same run, the SMTP
# injection rate of Postfix's smtp-source (1 KiB, 64 sessions, connection reuse) when it is installed.
#
# Usage: bench/http/run.sh [DURATION_SECONDS]   (env: CONNECTIONS=64 THREADS=2 SKIP_BUILD=1 KEEP=1)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
DURATION=${1:-15}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
BIN="$ROOT/target/release/mta-server"
SCRIPT="$ROOT/bench/http/inject.lua"

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p mta-server >&2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DIR=$(mktemp -d /tmp/mta-http-bench.XXXXXX)
HTTP_PORT=$(free_port)
SMTP_PORT=$(free_port)
cat > "$DIR/config.toml" <<TOML
[server]
hostname = "bench.test"
node_id = "bench"
[smtp]
listen = ["127.0.0.1:$SMTP_PORT"]
max_connections_per_ip = 10000
[http]
listen = "127.0.0.1:$HTTP_PORT"
[spool]
path = "$DIR/spool"
[log]
events = "$DIR/events.jsonl"
[delivery]
enabled = false
[dns]
nameservers = ["127.0.0.1:9"]
TOML

RUST_LOG=warn "$BIN" serve --config "$DIR/config.toml" 2>"$DIR/stderr" &
PID=$!
cleanup() {
    kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
done

fsyncs() { curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^mta_spool_fsyncs_total/ {s += $NF} END {print s + 0}'; }
cpu_ticks() { awk '{ split($0, a, ") "); split(a[2], f, " "); print f[12] + f[13] }' "/proc/$PID/stat"; }
HZ=$(getconf CLK_TCK)

run_case() {
    local rcpts=$1
    local f0 c0 out line
    # Warm-up (connections, allocator, sled caches), not measured.
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$SCRIPT" "http://127.0.0.1:$HTTP_PORT" -- "$rcpts" >/dev/null
    f0=$(fsyncs); c0=$(cpu_ticks)
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$SCRIPT" "http://127.0.0.1:$HTTP_PORT" -- "$rcpts")
    local f1 c1
    f1=$(fsyncs); c1=$(cpu_ticks)
    line=$(grep '^RESULT' <<<"$out")
    python3 - "$rcpts" "$f0" "$f1" "$c0" "$c1" "$HZ" "$line" <<'PY'
import sys
rcpts, f0, f1, c0, c1, hz = (float(x) for x in sys.argv[1:7])
kv = dict(p.split("=") for p in sys.argv[7].split()[1:])
ok, dur = float(kv["ok"]), float(kv["duration_s"])
rate = ok / dur
print(f"{int(rcpts):>3} rcpt/msg  {rate:>8.0f} msg/s  {rate * rcpts:>9.0f} rcpt/s  "
      f"p50 {float(kv['p50_ms']):.2f} ms  p99 {float(kv['p99_ms']):.2f} ms  "
      f"{(f1 - f0) / max(ok, 1):.4f} fsync/msg  {(c1 - c0) / hz * 1000 / max(ok, 1):.3f} ms CPU/msg  "
      f"(non-2xx {kv['non2xx']}, socket errors {kv['socket_errors']})", flush=True)
PY
}

echo "HTTP injection, 1 KiB messages, $CONNECTIONS connections, wrk -t$THREADS, ${DURATION}s per case, $(nproc) CPUs"
run_case 1
run_case 100

if command -v smtp-source >/dev/null; then
    N=$((DURATION * 2000))
    t0=$(date +%s.%N)
    smtp-source -d -s 64 -m "$N" -l 1024 -f sender@bench.test -t rcpt@dest.test -M client.test "127.0.0.1:$SMTP_PORT"
    t1=$(date +%s.%N)
    python3 -c "import sys; n, a, b = map(float, sys.argv[1:]); print(f'SMTP (smtp-source -s 64 -d, 1 KiB, 1 rcpt): {n / (b - a):>8.0f} msg/s')" "$N" "$t0" "$t1"
fi

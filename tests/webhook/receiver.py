"""A flaky webhook receiver for the export tests: checks every signature, fails 30% of requests (a few of them by
hanging past the client's timeout) and records the events of the batches it confirmed, one JSON line each.

usage: receiver.py SECRET EVENTS_FILE BAD_SIGNATURES_FILE [FAIL_RATE] [HANG_RATE] [HANG_SECONDS]
Prints the port it listens on (127.0.0.1) on its first line of stdout.
"""
import hashlib
import hmac
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = sys.argv[1].encode()
EVENTS = open(sys.argv[2], "ab", buffering=0)
BAD = open(sys.argv[3], "ab", buffering=0)
FAIL_RATE = float(sys.argv[4]) if len(sys.argv) > 4 else 0.30
HANG_RATE = float(sys.argv[5]) if len(sys.argv) > 5 else 0.05
HANG_SECONDS = float(sys.argv[6]) if len(sys.argv) > 6 else 3.0
LOCK = threading.Lock()


def valid(header: str, body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    mac = hmac.new(SECRET, parts.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, parts.get("v1", ""))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code: int):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if not valid(self.headers.get("X-MTA-Signature", ""), body):
            with LOCK:
                BAD.write(b"1\n")
            return self.answer(401)
        r = random.random()
        if r < HANG_RATE:
            # Past the client's timeout: it has given up, so this batch is not recorded.
            time.sleep(HANG_SECONDS)
            return self.answer(503)
        if r < FAIL_RATE:
            return self.answer(500)
        import json

        events = json.loads(body)
        with LOCK:
            EVENTS.write(b"".join(json.dumps(e).encode() + b"\n" for e in events))
        self.answer(200)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()

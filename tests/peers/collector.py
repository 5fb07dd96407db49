#!/usr/bin/env python3
"""A test collector for depmap's http sink: records every POST and answers as the test says.

  collector.py --port P --log FILE [--script S,S:R,...] [--delay-ms D] [--location L]
               [--tls-cert F --tls-key F [--tls-client-ca F]]

Listens on 127.0.0.1:P (0: any free port), prints {"listening": port} on stdout, and appends
one JSON line per request to FILE, written before the answer is sent:
  {"t", "status", "batch", "created", "table", "records", "gzip", "auth", "type", "body": [...records]}
The first requests are answered by the script, one entry each: a status, with `:R` for a
`Retry-After: R` header; the rest get 200. A 3xx carries `Location: L` (--location L). Every request waits D ms before its answer.
`POST /_control` with a JSON object changes these at run time: {"script": [[S, R], ...],
"delay_ms": D}. With --tls-cert it speaks HTTPS; with --tls-client-ca it requires a client
certificate signed by that CA and logs its subject's CN as "peer". Stops on SIGTERM.
"""
import argparse
import gzip
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
state = {"script": [], "delay_ms": 0, "location": None}
log_file = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=()):
        try:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sink gave up waiting (its timeout): it will send the batch again

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if self.path == "/_control":
            with lock:
                state.update(json.loads(raw or b"{}"))
            self.answer(204)
            return
        with lock:
            status, retry_after = state["script"].pop(0) if state["script"] else (200, None)
            delay = state["delay_ms"] / 1000.0
        gz = self.headers.get("Content-Encoding") == "gzip"
        try:
            data = gzip.decompress(raw) if gz else raw
            text = data.decode("utf-8")
            if self.headers.get("Content-Type", "").startswith("application/json"):
                records = json.loads(text)
            else:
                records = [json.loads(l) for l in text.splitlines() if l]
        except Exception as e:  # a body the sink should never send
            records = None
            status = 422
            print(f"collector: unreadable body: {e}", file=sys.stderr, flush=True)
        entry = {
            "t": time.time(),
            "status": status,
            "batch": self.headers.get("X-Depmap-Batch-Id"),
            "created": self.headers.get("X-Depmap-Batch-Created"),
            "table": self.headers.get("X-Depmap-Table"),
            "records": int(self.headers.get("X-Depmap-Records", "-1")),
            "gzip": gz,
            "auth": self.headers.get("Authorization"),
            "type": self.headers.get("Content-Type"),
            "peer": peer_cn(self.connection),
            "body": records,
        }
        with lock:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
        if delay:
            time.sleep(delay)
        headers = [("Retry-After", str(retry_after))] if retry_after is not None else []
        if 300 <= status < 400 and state["location"]:
            headers.append(("Location", state["location"]))
        self.answer(status, b"" if status < 300 else b"collector says no\n", headers)


def peer_cn(conn):
    try:
        cert = conn.getpeercert()
    except (AttributeError, ValueError):
        return None
    for rdn in (cert or {}).get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return None


def main():
    global log_file
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", required=True)
    p.add_argument("--script", default="")
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--location")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-client-ca")
    a = p.parse_args()
    script = []
    for item in filter(None, a.script.split(",")):
        status, _, after = item.partition(":")
        script.append([int(status), int(after) if after else None])
    state.update(script=script, delay_ms=a.delay_ms, location=a.location)
    log_file = open(a.log, "a")
    ThreadingHTTPServer.allow_reuse_address = True
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    if a.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        if a.tls_client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(a.tls_client_ca)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: (log_file.flush(), sys.exit(0)))
    print(json.dumps({"listening": srv.server_address[1]}), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()

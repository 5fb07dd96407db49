#!/usr/bin/env python3
"""Test peers for depmap's integration tests: a server and a client whose traffic is known.

Protocol: each exchange is an 8-byte header (request payload length, response length, both
big-endian u32) followed by the request payload; the server answers with `response length`
bytes. Every byte either side writes is counted, and each side prints one JSON line with its
totals when done, so the tests can compare depmap's records with the truth to the byte.

  peer.py serve  --host H --port P [--prefork N] [--delay-ms D]
                 prints {"listening": port, "pid": pid}; waits D ms before each response
  peer.py client --host H --port P --conns C --exchanges E --req R --resp S
                 [--think-ms T] [--hold-ms H] [--concurrent]
                 [--window-ms W --guard-ms G --expect-ms X]
                 prints {"sent": .., "received": .., "events": [...], ...}
  peer.py fail   --host H[,H2...] --port P --count N [--timeout-ms T] [--window-ms W --guard-ms G]
                 N connection attempts (cycling over the hosts) that must fail
With --window-ms, nothing starts within G ms of a window boundary (multiples of W since the
epoch) or would run across one, so the tests know in which window each event happened.
Every event is logged with its wall-clock time. Servers stop on SIGTERM; clients by themselves.
"""
import argparse
import errno
import json
import os
import signal
import socket
import struct
import sys
import threading
import time


def recv_exact(sock, n):
    chunks = []
    while n > 0:
        b = sock.recv(min(n, 65536))
        if not b:
            return None
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


DELAY_S = 0.0
# --log: one JSON line per closed connection with the bytes it received and sent (the truth of
# a connection whose client is not a peer, e.g. curl).
LOG = None
LOG_LOCK = threading.Lock()
HTTP_BODY = None


def recv_counted(conn, n, seen):
    """recv_exact that also counts what arrived, whole message or not."""
    chunks = []
    while n > 0:
        b = conn.recv(min(n, 65536))
        if not b:
            seen[0] += sum(len(c) for c in chunks)
            return None
        chunks.append(b)
        n -= len(b)
    data = b"".join(chunks)
    seen[0] += len(data)
    return data


def handle(conn):
    seen, sent = [0], 0
    try:
        with conn:
            while True:
                hdr = recv_counted(conn, 8, seen)
                if hdr is None:
                    return
                req, resp = struct.unpack("!II", hdr)
                if recv_counted(conn, req, seen) is None:
                    return
                if DELAY_S:
                    time.sleep(DELAY_S)
                conn.sendall(b"r" * resp)
                sent += resp
    finally:
        if LOG:
            with LOG_LOCK, open(LOG, "a") as f:
                f.write(json.dumps({"received": seen[0], "sent": sent}) + "\n")


def settle(args, duration_s):
    """Waits until an action of `duration_s` can run without coming within the guard of a
    window boundary."""
    if not getattr(args, "window_ms", 0):
        return
    w = args.window_ms / 1000.0
    g = args.guard_ms / 1000.0
    while True:
        now = time.time()
        into = now % w
        if into >= g and into + duration_s + g <= w:
            return
        wait = w - into + g if into >= g else g - into
        time.sleep(wait)


def handle_http(conn):
    """One HTTP/1.0 request (curl's), answered with HTTP_BODY bytes, then close."""
    seen, sent = [0], 0
    try:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                b = conn.recv(4096)
                if not b:
                    return
                data += b
                seen[0] += len(b)
            body = b"h" * HTTP_BODY
            head = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            conn.sendall(head + body)
            sent += len(head) + len(body)
    finally:
        if LOG:
            with LOG_LOCK, open(LOG, "a") as f:
                f.write(json.dumps({"received": seen[0], "sent": sent}) + "\n")


def accept_loop(ls):
    while True:
        try:
            conn, _ = ls.accept()
        except OSError:
            return
        target = handle_http if HTTP_BODY is not None else handle
        threading.Thread(target=target, args=(conn,), daemon=True).start()


def serve(args):
    global DELAY_S, LOG, HTTP_BODY
    DELAY_S = args.delay_ms / 1000.0
    LOG = args.log or None
    HTTP_BODY = args.http
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.reuseport:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    ls.bind((args.host, args.port))
    ls.listen(512)
    children = []
    if args.prefork:
        # Pre-forked: the parent only listens; children accept and serve.
        for _ in range(args.prefork):
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
                accept_loop(ls)
                os._exit(0)
            children.append(pid)
    def stop(*_):
        for c in children:
            try:
                os.kill(c, signal.SIGTERM)
            except OSError:
                pass
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    print(json.dumps({"listening": ls.getsockname()[1], "pid": os.getpid(), "children": children}), flush=True)
    if args.prefork:
        while True:
            time.sleep(3600)
    accept_loop(ls)


def one_connection(args, totals, lock):
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    if args.source:
        s.bind((args.source, 0))
    exchange_s = args.expect_ms / 1000.0 + 0.05
    one_shot = args.exchanges == 1 and not args.hold_ms
    # A one-shot connection (connect, exchange, close) must fit between boundaries whole.
    settle(args, exchange_s + 0.05 if one_shot else 0.05)
    began = time.monotonic()
    s.connect((args.host, args.port))
    events = [{"t": time.time(), "kind": "connect"}]
    sent = received = 0
    for i in range(args.exchanges):
        if i and args.think_ms:
            time.sleep(args.think_ms / 1000.0)
        if not one_shot:
            settle(args, exchange_s)
        msg = struct.pack("!II", args.req, args.resp) + b"q" * args.req
        t0 = time.time()
        s.sendall(msg)
        got = recv_exact(s, args.resp)
        if got is None:
            raise SystemExit("server closed early")
        t1 = time.time()
        sent += len(msg)
        received += len(got)
        events.append({"t": t0, "end": t1, "kind": "exchange", "sent": len(msg), "received": len(got)})
    if args.hold_ms:
        time.sleep(args.hold_ms / 1000.0)
    if not one_shot:
        settle(args, 0.05)
    s.close()
    events.append({"t": time.time(), "kind": "close"})
    lived_ms = (time.monotonic() - began) * 1000.0
    with lock:
        totals["sent"] += sent
        totals["received"] += received
        totals["conns"] += 1
        totals["max_ms"] = max(totals["max_ms"], lived_ms)
        totals["events"].extend(events)


def client(args):
    totals = {"sent": 0, "received": 0, "conns": 0, "max_ms": 0.0, "pid": os.getpid(), "events": []}
    lock = threading.Lock()
    if args.concurrent:
        threads = [threading.Thread(target=one_connection, args=(args, totals, lock)) for _ in range(args.conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for _ in range(args.conns):
            one_connection(args, totals, lock)
    print(json.dumps(totals), flush=True)


def fail(args):
    """Connection attempts that must fail: refused (nothing listens) or timed out."""
    events = []
    hosts = args.host.split(",")
    for i in range(args.count):
        host = hosts[i % len(hosts)]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        settle(args, args.timeout_ms / 1000.0 + 0.1)
        s = socket.socket(family, socket.SOCK_STREAM)
        if args.source:
            s.bind((args.source, 0))
        s.settimeout(args.timeout_ms / 1000.0)
        t0 = time.time()
        try:
            s.connect((host, args.port))
        except ConnectionRefusedError:
            kind = "refused"
        except (socket.timeout, TimeoutError):
            kind = "timeout"
        except OSError as e:
            kind = "unreachable" if e.errno == errno.EHOSTUNREACH else "error:%s" % e.errno
        else:
            raise SystemExit("connection to %s:%d succeeded" % (host, args.port))
        s.close()
        events.append({"t": t0, "end": time.time(), "kind": kind, "host": host})
        if args.think_ms:
            time.sleep(args.think_ms / 1000.0)
    print(json.dumps({"pid": os.getpid(), "events": events}), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--prefork", type=int, default=0)
    s.add_argument("--delay-ms", type=int, default=0)
    s.add_argument("--tag", default="", help="ignored; lets a test put a marker in the command line")
    s.add_argument("--log", default="", help="append each closed connection's bytes (JSON lines)")
    s.add_argument("--http", type=int, default=None, help="speak HTTP/1.0 (for curl): answer this many body bytes")
    s.add_argument("--reuseport", action="store_true", help="SO_REUSEPORT: share the port with other servers")
    c = sub.add_parser("client")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--source", default="")
    c.add_argument("--conns", type=int, default=1)
    c.add_argument("--exchanges", type=int, default=1)
    c.add_argument("--req", type=int, default=100)
    c.add_argument("--resp", type=int, default=1000)
    c.add_argument("--think-ms", type=int, default=0)
    c.add_argument("--hold-ms", type=int, default=0)
    c.add_argument("--concurrent", action="store_true")
    c.add_argument("--window-ms", type=int, default=0)
    c.add_argument("--guard-ms", type=int, default=300)
    c.add_argument("--expect-ms", type=int, default=0)
    c.add_argument("--tag", default="", help="ignored; lets a test tell clients apart by command line")
    f = sub.add_parser("fail")
    f.add_argument("--host", required=True)
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--source", default="")
    f.add_argument("--count", type=int, default=1)
    f.add_argument("--timeout-ms", type=int, default=500)
    f.add_argument("--think-ms", type=int, default=0)
    f.add_argument("--window-ms", type=int, default=0)
    f.add_argument("--guard-ms", type=int, default=300)
    a = p.parse_args()
    {"serve": serve, "client": client, "fail": fail}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())

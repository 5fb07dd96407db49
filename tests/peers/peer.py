#!/usr/bin/env python3
"""Test peers for depmap's integration tests: a server and a client whose traffic is known.

Protocol: each exchange is an 8-byte header (request payload length, response length, both
big-endian u32) followed by the request payload; the server answers with `response length`
bytes. Every byte either side writes is counted, and each side prints one JSON line with its
totals when done, so the tests can compare depmap's records with the truth to the byte.

  peer.py serve  --host H --port P [--prefork N]       prints {"listening": port, "pid": pid}
  peer.py client --host H --port P --conns C --exchanges E --req R --resp S
                 [--think-ms T] [--hold-ms H] [--concurrent]
                                                        prints {"sent": .., "received": .., ...}
Servers stop on SIGTERM; clients stop by themselves.
"""
import argparse
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


def handle(conn):
    with conn:
        while True:
            hdr = recv_exact(conn, 8)
            if hdr is None:
                return
            req, resp = struct.unpack("!II", hdr)
            if recv_exact(conn, req) is None:
                return
            conn.sendall(b"r" * resp)


def accept_loop(ls):
    while True:
        try:
            conn, _ = ls.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def serve(args):
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    began = time.monotonic()
    s.connect((args.host, args.port))
    sent = received = 0
    for i in range(args.exchanges):
        if i and args.think_ms:
            time.sleep(args.think_ms / 1000.0)
        msg = struct.pack("!II", args.req, args.resp) + b"q" * args.req
        s.sendall(msg)
        sent += len(msg)
        got = recv_exact(s, args.resp)
        if got is None:
            raise SystemExit("server closed early")
        received += len(got)
    if args.hold_ms:
        time.sleep(args.hold_ms / 1000.0)
    s.close()
    lived_ms = (time.monotonic() - began) * 1000.0
    with lock:
        totals["sent"] += sent
        totals["received"] += received
        totals["conns"] += 1
        totals["max_ms"] = max(totals["max_ms"], lived_ms)


def client(args):
    totals = {"sent": 0, "received": 0, "conns": 0, "max_ms": 0.0, "pid": os.getpid()}
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


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--prefork", type=int, default=0)
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
    a = p.parse_args()
    serve(a) if a.cmd == "serve" else client(a)


if __name__ == "__main__":
    sys.exit(main())

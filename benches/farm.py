#!/usr/bin/env python3
"""Connection farm for benchmarks: N loopback connections to itself, held open.

  farm.py PORT N     listens on 127.0.0.1:PORT, opens N connections to it, accepts them,
                     prints "ready N" and holds everything until stdin closes or SIGTERM.
The machine caps open files at 20,000 per process: keep 2*N + 1 under that.
"""
import resource
import socket
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * n + 64), hard))
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(4096)
clients, servers = [], []
while len(clients) < n:
    batch = min(1000, n - len(clients))
    for _ in range(batch):
        c = socket.socket()
        c.connect(("127.0.0.1", port))
        clients.append(c)
    for _ in range(batch):
        servers.append(ls.accept()[0])
print("ready", len(clients), flush=True)
sys.stdin.read()

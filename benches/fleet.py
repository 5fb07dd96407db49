#!/usr/bin/env python3
"""A fleet of processes holding connections, for the steady-state benchmark.

  fleet.py PORT PROCS CONNS INTERVAL
      listens on 127.0.0.1:PORT, then forks PROCS processes one after the other; each opens
      CONNS connections to the listener and accepts CONNS (so holds 2*CONNS sockets), then
      every INTERVAL seconds (0: never) sends a 100-byte request on one of its client
      sockets, round robin, and echoes whatever arrives on its accepted sockets. Prints
      "ready PROCS*CONNS" once every process holds its connections, and runs until killed
      (the benchmark's namespace guard kills every process in the namespace).
"""
import os
import selectors
import socket
import sys
import time

port, procs, conns, interval = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                 float(sys.argv[4]))
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(4096)


def member(ready_w):
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(conns)]
    servers = [ls.accept()[0] for _ in range(conns)]
    ls.close()
    os.write(ready_w, b"r")
    os.close(ready_w)
    sel = selectors.DefaultSelector()
    for s in servers:
        sel.register(s, selectors.EVENT_READ, "server")
    for c in clients:
        sel.register(c, selectors.EVENT_READ, "client")
    turn = 0
    # Spread the members' requests over the interval.
    next_send = time.monotonic() + (interval * (os.getpid() % 1000) / 1000 if interval else 0)
    while True:
        timeout = max(0.0, next_send - time.monotonic()) if interval else None
        for key, _ in sel.select(timeout):
            data = key.fileobj.recv(4096)
            if not data:
                sel.unregister(key.fileobj)
            elif key.data == "server":
                key.fileobj.sendall(data)
        if interval and time.monotonic() >= next_send:
            clients[turn % len(clients)].sendall(b"q" * 100)
            turn += 1
            next_send += interval


for _ in range(procs):
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        try:
            member(w)
        finally:
            os._exit(0)
    os.close(w)
    if os.read(r, 1) != b"r":
        sys.exit("a fleet member failed to connect")
    os.close(r)
print("ready", procs * conns, flush=True)
while True:
    time.sleep(3600)

#!/usr/bin/env python3
"""Churn load for benchmarks: short connections at a fixed rate.

  churn.py HOST PORT RATE SECONDS   opens RATE connections a second for SECONDS; each sends one
                                    exchange in peer.py's protocol (100 B request, 100 B
                                    response) and closes. Prints {"conns", "sent", "received"}.
"""
import json
import socket
import struct
import sys
import time

host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
msg = struct.pack("!II", 92, 100) + b"q" * 92
conns = sent = received = 0
start = time.monotonic()
while True:
    now = time.monotonic() - start
    if now >= seconds:
        break
    due = int(now * rate)
    while conns < due:
        s = socket.create_connection((host, port))
        s.sendall(msg)
        sent += len(msg)
        got = 0
        while got < 100:
            b = s.recv(100 - got)
            if not b:
                break
            got += len(b)
        received += got
        s.close()
        conns += 1
    time.sleep(0.001)
print(json.dumps({"conns": conns, "sent": sent, "received": received}), flush=True)

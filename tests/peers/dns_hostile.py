#!/usr/bin/env python3
"""Hostile DNS traffic for depmap's capture tests, on loopback in the test's namespace.

  dns_hostile.py forge
      Five answers that name 127.0.0.77 as bank.depmap.test, none of which answers a query
      this host sent as asked: no query at all; a query answered with another id; with
      another question; from another server address; from another port to the asking one.
      Then one real exchange naming 127.0.0.78 as ok.depmap.test (the control).
  dns_hostile.py amplify N
      One exchange: a query for a 194-character name, answered by one 64 KB message of
      1,500 CNAME records pointing (compressed) at that name and 2,700 A records, addresses
      10.N.x.y.
Prints one JSON line with what it sent.
"""
import json
import socket
import struct
import sys

LONG = ".".join(["x" * 60] * 3) + ".depmap.test"


def encode(name):
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def question(name):
    return encode(name) + struct.pack("!HH", 1, 1)


def query(qid, name):
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question(name)


def answer(qid, name, address):
    a = encode(name) + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question(name) + a


def amplifying(qid, n):
    # The question's name sits at offset 12: every other name is a pointer to it (0xC00C).
    pointer = b"\xc0\x0c"
    cname = pointer + struct.pack("!HHIH", 5, 1, 60, 2) + pointer
    records = [cname] * 1500
    for i in range(2700):
        address = bytes([10, n, i // 256, i % 256])
        records.append(pointer + struct.pack("!HHIH", 1, 1, 60, 4) + address)
    header = struct.pack("!HHHHHH", qid, 0x8180, 1, len(records), 0, 0)
    return header + question(LONG) + b"".join(records)


def udp(host, port=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    s.settimeout(10)
    return s


def exchange(client, server, qid, name, reply):
    """The client asks the server; `reply(peer)` answers (or not) the asking socket."""
    client.sendto(query(qid, name), server.getsockname())
    msg, peer = server.recvfrom(4096)
    assert msg[:2] == struct.pack("!H", qid)
    reply(peer)


def forge():
    server = udp("127.0.0.1", 53)
    other = udp("127.0.0.2", 53)
    client = udp("127.0.0.1")
    other_port = udp("127.0.0.1", 5353)
    sent = 0
    bank = lambda qid: answer(qid, "bank.depmap.test", "127.0.0.77")
    # 1. Nobody asked.
    server.sendto(bank(1), client.getsockname())
    sent += 1
    # 2. Asked with id 2, answered with id 3.
    exchange(client, server, 2, "bank.depmap.test", lambda p: server.sendto(bank(3), p))
    sent += 1
    # 3. Asked for another name.
    exchange(client, server, 4, "www.depmap.test", lambda p: server.sendto(bank(4), p))
    sent += 1
    # 4. Answered by another server address.
    exchange(client, server, 5, "bank.depmap.test", lambda p: other.sendto(bank(5), p))
    sent += 1
    # 5. Answered from a socket whose port is not 53: not DNS to the capture, not counted.
    exchange(client, server, 6, "bank.depmap.test", lambda p: other_port.sendto(bank(6), p))
    # The answers go unread by the client; the capture saw them arrive.
    exchange(
        client,
        server,
        7,
        "ok.depmap.test",
        lambda p: server.sendto(answer(7, "ok.depmap.test", "127.0.0.78"), p),
    )
    print(json.dumps({"unsolicited": sent, "answered": 1}), flush=True)


def amplify(n):
    server = udp("127.0.0.1", 53)
    client = udp("127.0.0.1")
    msg = amplifying(100 + n, n)
    exchange(client, server, 100 + n, LONG, lambda p: server.sendto(msg, p))
    print(json.dumps({"answered": 1, "bytes": len(msg)}), flush=True)


def main():
    if sys.argv[1] == "forge":
        forge()
    else:
        amplify(int(sys.argv[2]))


if __name__ == "__main__":
    main()

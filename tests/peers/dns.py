#!/usr/bin/env python3
"""A DNS server for depmap's tests (UDP, 127.0.0.1:53 in the test's namespace).

  dns.py NAME=CNAME1,CNAME2,...,ADDRESS [...] [ADDRESS~PTRNAME ...]
For each NAME, an A query is answered with the CNAME chain NAME → CNAME1 → CNAME2 ... and an
A record of ADDRESS for the last name; an AAAA query with the chain only (no data). Any other
name: NXDOMAIN. ADDRESS~PTRNAME answers the PTR query of ADDRESS (IPv4) with PTRNAME.
TTLs are 60 s. Prints {"listening": 53} once bound; stops on SIGTERM.
"""
import json
import signal
import socket
import struct
import sys


def encode(name):
    out = b""
    for label in name.strip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def read_name(msg, off):
    labels = []
    while msg[off]:
        n = msg[off]
        labels.append(msg[off + 1:off + 1 + n].decode())
        off += 1 + n
    return ".".join(labels), off + 1


def rr(name, rtype, rdata):
    return encode(name) + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata


def main():
    zones = {}
    ptrs = {}
    for arg in sys.argv[1:]:
        if "~" in arg:
            address, _, ptr = arg.partition("~")
            rev = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
            ptrs[rev] = ptr
            continue
        name, _, rest = arg.partition("=")
        parts = rest.split(",")
        zones[name.lower()] = (parts[:-1], parts[-1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"listening": 53}), flush=True)
    while True:
        msg, peer = s.recvfrom(4096)
        if len(msg) < 12:
            continue
        qid = msg[:2]
        name, off = read_name(msg, 12)
        qtype, _ = struct.unpack("!HH", msg[off:off + 4])
        question = msg[12:off + 4]
        zone = zones.get(name.lower())
        answers = []
        if qtype == 12 and name.lower() in ptrs:
            flags = 0x8180
            answers.append(rr(name, 12, encode(ptrs[name.lower()])))
        elif zone is None:
            flags = 0x8183  # NXDOMAIN
        else:
            flags = 0x8180
            chain, address = zone
            prev = name
            for target in chain:
                answers.append(rr(prev, 5, encode(target)))
                prev = target
            if qtype == 1:
                answers.append(rr(prev, 1, socket.inet_aton(address)))
        header = qid + struct.pack("!HHHHH", flags, 1, len(answers), 0, 0)
        s.sendto(header + question + b"".join(answers), peer)


if __name__ == "__main__":
    main()

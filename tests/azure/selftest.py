#!/usr/bin/env python3
"""Self-test of packaging/azure/ and tests/azure/fake_ingestion.py (Python 3 stdlib only).

    python3 tests/azure/selftest.py [--depmap target/release/depmap] [--keep]

1. Static: dcr.json (kind Direct, one Custom-VM* stream per table, dataFlow to the matching
   _CL table, a transformKql each, no reserved column) and tables/*_CL.json agree column by
   column (name and type).
2. The fake, driven over loopback: Entra ID client credentials (right/wrong secret, both scope
   spellings), IMDS managed identity (Metadata header), ingestion -> 204, gzip, keep-alive,
   chunked, the 1 MiB limit (exactly 1 MiB passes, 1.1 MB -> 413, also when gzipped small),
   reserved/undeclared/mistyped columns -> 400, 401 for missing/unknown/expired/wrong-audience
   tokens, 404/405/415, injected 429 with Retry-After, 503, connection reset, delay, token
   endpoint faults, garbage on the socket, SIGTERM -> exit 0.
3. Real records: `depmap once --duration 2s --format ndjson` (needs root) while a local HTTP
   server is exercised, transformed as the sink must (drop `Type`, `_ResourceId` ->
   `ResourceId`), split at 1 MiB of uncompressed JSON, gzipped and posted to all four
   streams with every declared column required; the stored records must equal what was sent,
   and each stream's columns must be exactly the records' keys.

Every wait is bounded. Exit 0 when everything passed, 1 otherwise.
"""

import argparse
import gzip
import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
AZURE = REPO / "packaging" / "azure"
FAKE = HERE / "fake_ingestion.py"
TABLES = ["VMComputer", "VMProcess", "VMBoundPort", "VMConnection"]
RESERVED = {"_resourceid", "id", "_subscriptionid", "tenantid", "type", "uniqueid", "title"}
TENANT = "00000000-0000-0000-0000-000000000000"
CLIENT_ID = "11111111-1111-1111-1111-111111111111"
SECRET = "fake-client-secret"
DCR_ID = "dcr-00000000000000000000000000000000"
LIMIT = 1024 * 1024

FAILURES = []


def check(cond, what):
    print(("  ok    " if cond else "  FAIL  ") + what, flush=True)
    if not cond:
        FAILURES.append(what)
    return cond


def section(title):
    print(f"\n== {title}", flush=True)


# ---------------------------------------------------------------------------- helpers
class Fake:
    def __init__(self, outdir, *extra):
        self.outdir = Path(outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = self.outdir.parent / f"{self.outdir.name}.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(FAKE), "--outdir", str(outdir), *extra],
                stdout=subprocess.PIPE, stderr=err)
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + 10
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                ch = os.read(fd, 1)
                if not ch:
                    break
                line += ch
        sel.close()
        if not line.startswith(b"listening "):
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise RuntimeError(f"fake did not start: {line!r} "
                               f"{self.stderr_path.read_text(errors='replace')}")
        self.port = int(line.split()[1])

    def stop(self):
        """SIGTERM; the exit code (None when it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                return None
        return self.proc.returncode


def request(port, method, path, body=b"", headers=None, conn=None, timeout=15):
    """(status, {lower-case header: value}, body bytes)."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        if own:
            c.close()


def jbody(data):
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        return None


def aad_token(port, secret=SECRET, scope="https://monitor.azure.com/.default", **over):
    form = {"client_id": CLIENT_ID, "scope": scope, "client_secret": secret,
            "grant_type": "client_credentials", **over}
    return request(port, "POST", f"/{TENANT}/oauth2/v2.0/token",
                   urllib.parse.urlencode(form).encode(),
                   {"Content-Type": "application/x-www-form-urlencoded"})


def token(port):
    s, _, b = aad_token(port)
    assert s == 200, (s, b)
    return jbody(b)["access_token"]


def ingest_path(stream, dcr=DCR_ID, api="2023-01-01"):
    q = f"?api-version={api}" if api else ""
    return f"/dataCollectionRules/{dcr}/streams/{stream}{q}"


def ingest(port, stream, payload, tok, gz=False, extra=None, raw=None, conn=None, **kw):
    body = raw if raw is not None else json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {tok}",
               "x-ms-client-request-id": str(uuid.uuid4())}
    if gz:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    headers.update(extra or {})
    headers = {k: v for k, v in headers.items() if v is not None}
    return request(port, "POST", ingest_path(stream, **kw), body, headers, conn=conn)


def control(port, obj=None):
    if obj is None:
        s, _, b = request(port, "GET", "/_control")
    else:
        s, _, b = request(port, "POST", "/_control", json.dumps(obj).encode(),
                          {"Content-Type": "application/json"})
    return s, jbody(b)


def read_ndjson(path):
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]


def stream_columns():
    dcr = json.loads((AZURE / "dcr.json").read_text(encoding="utf-8"))
    return {name: [(c["name"], c["type"].lower()) for c in d["columns"]]
            for name, d in dcr["properties"]["streamDeclarations"].items()}


def sample_record(cols, i=0):
    """A valid record with every declared column."""
    val = {"string": f"s{i}", "int": 7, "long": 1234567890123, "real": 1.5,
           "boolean": True, "datetime": "2026-11-25T12:34:00.000Z", "dynamic": ["a", "b"]}
    rec = {name: val[t] for name, t in cols}
    if "TimeGenerated" in rec:
        rec["TimeGenerated"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return rec


def to_sink_shape(rec):
    """What the azure_logs sink must send for one depmap record."""
    out = {}
    for k, v in rec.items():
        if k == "Type":
            continue
        out["ResourceId" if k == "_ResourceId" else k] = v
    return out


def split_batches(records, limit=LIMIT):
    """JSON arrays of at most `limit` bytes (uncompressed), in order."""
    batches, cur, size = [], [], 2
    for r in records:
        b = json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(b) + 2 > limit:
            raise ValueError("a single record exceeds the limit")
        add = len(b) + (1 if cur else 0)
        if cur and size + add > limit:
            batches.append(b"[" + b",".join(cur) + b"]")
            cur, size = [], 2
            add = len(b)
        cur.append(b)
        size += add
    if cur:
        batches.append(b"[" + b",".join(cur) + b"]")
    return batches


# ---------------------------------------------------------------------------- 1. static
def static_checks():
    section("static: packaging/azure")
    dcr = json.loads((AZURE / "dcr.json").read_text(encoding="utf-8"))
    props = dcr["properties"]
    check(dcr.get("kind") == "Direct", "dcr.json kind is Direct")
    decls = props["streamDeclarations"]
    check(sorted(decls) == sorted(f"Custom-{t}" for t in TABLES),
          f"one stream per table: {sorted(decls)}")
    dests = {d["name"] for d in props["destinations"]["logAnalytics"]}
    flows = {tuple(f["streams"]): f for f in props["dataFlows"]}
    for t in TABLES:
        f = flows.get((f"Custom-{t}",))
        check(f is not None and f.get("outputStream") == f"Custom-{t}_CL"
              and f.get("transformKql") and set(f["destinations"]) <= dests,
              f"dataFlow Custom-{t} -> Custom-{t}_CL with a transformKql")
    cols = stream_columns()
    for t in TABLES:
        sc = cols[f"Custom-{t}"]
        bad = [n for n, _ in sc if n.lower() in RESERVED or n.startswith("_")]
        check(not bad, f"Custom-{t}: no reserved column names {bad}")
        check(("TimeGenerated", "datetime") in sc, f"Custom-{t}: TimeGenerated is datetime")
        check(("ResourceId", "string") in sc, f"Custom-{t}: ResourceId (for _ResourceId)")
        tbl = json.loads((AZURE / "tables" / f"{t}_CL.json").read_text(encoding="utf-8"))
        schema = tbl["properties"]["schema"]
        check(schema["name"] == f"{t}_CL", f"tables/{t}_CL.json names {t}_CL")
        tc = [(c["name"], c["type"].lower()) for c in schema["columns"]]
        check(tc == sc, f"tables/{t}_CL.json columns == dcr.json Custom-{t} columns "
                        f"({len(tc)} vs {len(sc)}; diff {sorted(set(tc) ^ set(sc))})")
        check(all(c.get("description") for c in schema["columns"]),
              f"tables/{t}_CL.json: every column has a description")


# ---------------------------------------------------------------------------- 2. fake
def fake_checks(workdir):
    out = Path(workdir) / "fake"
    fake = Fake(out)
    port = fake.port
    cols = stream_columns()
    try:
        section(f"fake: Entra ID token endpoint (port {port})")
        s, h, b = aad_token(port)
        j = jbody(b) or {}
        check(s == 200 and j.get("token_type") == "Bearer" and isinstance(j.get("expires_in"), int)
              and j.get("access_token"), f"client credentials, scope /.default -> 200 {s}")
        check(h.get("cache-control", "").startswith("no-store"), "token response is no-store")
        s, _, b = aad_token(port, scope="https://monitor.azure.com//.default")
        check(s == 200, f"scope with the double slash (official sample) -> 200 ({s})")
        s, _, b = aad_token(port, secret="wrong")
        j = jbody(b) or {}
        check(s == 401 and j.get("error") == "invalid_client" and j.get("error_codes") == [7000215]
              and j.get("error_description", "").startswith("AADSTS7000215"),
              f"wrong secret -> 401 invalid_client AADSTS7000215 ({s} {j.get('error')})")
        s, _, b = aad_token(port, scope="https://management.azure.com/.default")
        check(s == 400 and (jbody(b) or {}).get("error") == "invalid_scope",
              f"other scope -> 400 invalid_scope ({s})")
        s, _, b = aad_token(port, grant_type="password")
        check(s == 400 and (jbody(b) or {}).get("error") == "unsupported_grant_type",
              f"grant_type=password -> 400 unsupported_grant_type ({s})")
        s, _, b = request(port, "POST", f"/{TENANT}/oauth2/v2.0/token",
                          json.dumps({"client_id": CLIENT_ID}).encode(),
                          {"Content-Type": "application/json"})
        check(s == 400 and (jbody(b) or {}).get("error") == "invalid_request",
              f"JSON instead of a form -> 400 invalid_request ({s})")
        s, _, b = request(port, "POST", "/another-tenant/oauth2/v2.0/token",
                          urllib.parse.urlencode({"client_id": CLIENT_ID}).encode(),
                          {"Content-Type": "application/x-www-form-urlencoded"})
        check(s == 400, f"unknown tenant -> 400 ({s})")

        section("fake: IMDS managed identity")
        imds = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=" + \
            urllib.parse.quote("https://monitor.azure.com", safe="")
        s, _, b = request(port, "GET", imds)
        check(s == 400 and (jbody(b) or {}).get("error") == "bad_request_102",
              f"no Metadata header -> 400 bad_request_102 ({s})")
        s, _, b = request(port, "GET", imds, headers={"Metadata": "True"})
        check(s == 400, f"Metadata: True (not lower case) -> 400 ({s})")
        s, _, b = request(port, "GET", imds.replace("api-version=2018-02-01&", ""),
                          headers={"Metadata": "true"})
        check(s == 400, f"no api-version -> 400 ({s})")
        s, _, b = request(port, "GET", imds, headers={"Metadata": "true"})
        j = jbody(b) or {}
        check(s == 200 and all(isinstance(j.get(k), str) for k in
                               ("access_token", "expires_in", "expires_on", "not_before",
                                "resource", "token_type")) and j.get("refresh_token") == ""
              and j.get("resource") == "https://monitor.azure.com",
              f"Metadata: true -> 200, all values strings as in the IMDS sample ({s})")
        mi_token = j.get("access_token")
        s, _, _ = request(port, "POST", imds, headers={"Metadata": "true"})
        check(s == 405, f"POST to IMDS -> 405 ({s})")
        s, _, b = request(port, "GET", "/metadata/identity/oauth2/token?api-version=2018-02-01"
                          "&resource=https://management.azure.com/", headers={"Metadata": "true"})
        arm_token = (jbody(b) or {}).get("access_token")
        check(s == 200 and arm_token, "IMDS token for another resource is issued (200)")

        section("fake: ingestion")
        tok = token(port)
        rec = sample_record(cols["Custom-VMConnection"])
        s, h, b = ingest(port, "Custom-VMConnection", [rec], tok,
                         extra={"x-ms-client-request-id": "7d6b0e43-5d0e-4f0b-9a52-0f8f8a1e2c11"})
        check(s == 204 and b == b"", f"valid record -> 204, empty body ({s})")
        check(h.get("x-ms-client-request-id") == "7d6b0e43-5d0e-4f0b-9a52-0f8f8a1e2c11",
              "x-ms-client-request-id echoed")
        check(read_ndjson(out / "Custom-VMConnection.ndjson") == [rec],
              "record appended to Custom-VMConnection.ndjson as sent")
        reqs = read_ndjson(out / "requests.ndjson")
        check(any(r.get("client_request_id") == "7d6b0e43-5d0e-4f0b-9a52-0f8f8a1e2c11"
                  and r.get("status") == 204 and r.get("records") == 1 for r in reqs),
              "requests.ndjson logs status, records and x-ms-client-request-id")
        s, _, _ = ingest(port, "Custom-VMConnection", [rec], mi_token)
        check(s == 204, f"IMDS token (resource https://monitor.azure.com) accepted ({s})")
        s, _, _ = ingest(port, "Custom-VMConnection", [rec, rec], tok, gz=True)
        check(s == 204, f"Content-Encoding: gzip -> 204 ({s})")
        check(len(read_ndjson(out / "Custom-VMConnection.ndjson")) == 4, "4 records stored")
        s, _, _ = ingest(port, "Custom-VMConnection", [], tok)
        check(s == 204, f"empty array -> 204 ({s})")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            codes = [ingest(port, "Custom-VMComputer", [sample_record(cols["Custom-VMComputer"])],
                            tok, conn=conn)[0] for _ in range(3)]
        finally:
            conn.close()
        check(codes == [204] * 3, f"3 requests on one keep-alive connection -> 204 {codes}")
        body = json.dumps([sample_record(cols["Custom-VMProcess"])]).encode()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            c.putrequest("POST", ingest_path("Custom-VMProcess"))
            for k, v in {"Content-Type": "application/json", "Authorization": f"Bearer {tok}",
                         "Transfer-Encoding": "chunked"}.items():
                c.putheader(k, v)
            c.endheaders()
            for i in range(0, len(body), 100):
                part = body[i:i + 100]
                c.send(b"%x\r\n%s\r\n" % (len(part), part))
            c.send(b"0\r\n\r\n")
            s = c.getresponse().status
        finally:
            c.close()
        check(s == 204, f"chunked transfer encoding -> 204 ({s})")

        section("fake: authorization")
        s, h, b = ingest(port, "Custom-VMConnection", [rec], tok,
                         extra={"Authorization": None})
        check(s == 401 and "www-authenticate" in h, f"no Authorization -> 401 + WWW-Authenticate ({s})")
        s, _, _ = ingest(port, "Custom-VMConnection", [rec], "not-a-token")
        check(s == 401, f"unknown token -> 401 ({s})")
        s, _, _ = ingest(port, "Custom-VMConnection", [rec], arm_token)
        check(s == 401, f"token for another audience -> 401 ({s})")
        control(port, {"token_lifetime": 1})
        short = token(port)
        s1, _, _ = ingest(port, "Custom-VMConnection", [rec], short)
        time.sleep(2.2)
        s2, _, b = ingest(port, "Custom-VMConnection", [rec], short)
        check(s1 == 204 and s2 == 401 and b"expired" in b,
              f"token_lifetime 1 s: 204, then 401 expired after 2 s ({s1}, {s2})")
        s, st = control(port, {"token_lifetime": 3599})
        fresh = token(port)
        s, _, _ = ingest(port, "Custom-VMConnection", [rec], fresh)
        check(s == 204, f"refreshed token -> 204 ({s})")
        control(port, {"expire_tokens": True})
        s, _, _ = ingest(port, "Custom-VMConnection", [rec], fresh)
        check(s == 401, f"expire_tokens -> earlier tokens get 401 ({s})")
        tok = token(port)

        section("fake: limits (1 MiB compressed and uncompressed)")
        big_rec = sample_record(cols["Custom-VMProcess"])
        base = json.dumps([dict(big_rec, CommandLine="")], separators=(",", ":")).encode()
        exact = dict(big_rec, CommandLine="x" * (LIMIT - len(base)))
        raw = json.dumps([exact], separators=(",", ":")).encode()
        s, _, b = ingest(port, "Custom-VMProcess", None, tok, raw=raw)
        check(len(raw) == LIMIT and s == 204, f"body of exactly {LIMIT} bytes -> 204 ({s})")
        over = json.dumps([dict(big_rec, CommandLine="x" * 1_100_000)]).encode()
        s, h, b = ingest(port, "Custom-VMProcess", None, tok, raw=over)
        j = jbody(b) or {}
        check(s == 413 and j.get("error", {}).get("code") == "ContentLengthLimitExceeded"
              and h.get("x-ms-error-code") == "ContentLengthLimitExceeded",
              f"1.1 MB body -> 413 ContentLengthLimitExceeded ({s})")
        s, _, b = ingest(port, "Custom-VMProcess", None, tok, raw=over, gz=True)
        check(s == 413, f"1.1 MB body gzipped to {len(gzip.compress(over))} bytes -> 413 "
                        f"(uncompressed limit) ({s})")
        s, _, _ = ingest(port, "Custom-VMProcess", None, tok, raw=b"\x1f\x8bnot gzip",
                         extra={"Content-Encoding": "gzip"})
        check(s == 400, f"broken gzip -> 400 ({s})")
        s, _, _ = ingest(port, "Custom-VMProcess", [big_rec], tok, extra={"Content-Encoding": "br"})
        check(s == 415, f"Content-Encoding: br -> 415 ({s})")

        section("fake: schema (declared columns of dcr.json)")
        for key, value in (("_ResourceId", "m-x"), ("Type", "VMConnection"),
                           ("TenantId", "t"), ("_SubscriptionId", "s"), ("_BilledSize", 1)):
            s, _, b = ingest(port, "Custom-VMConnection", [dict(rec, **{key: value})], tok)
            check(s == 400 and b"reserved" in b, f"reserved column {key} -> 400 ({s})")
        s, _, b = ingest(port, "Custom-VMConnection", [dict(rec, Foo=1)], tok)
        check(s == 400 and b"not a column" in b, f"undeclared column -> 400 ({s})")
        for key, value in (("DestinationPort", "80"), ("BytesSent", 1.5), ("LinksLive", True),
                           ("RemoteLatitude", "47.6"), ("TimeGenerated", "yesterday"),
                           ("Computer", 5), ("DestinationPort", 2 ** 40)):
            s, _, b = ingest(port, "Custom-VMConnection", [dict(rec, **{key: value})], tok)
            check(s == 400, f"{key}={value!r} (wrong type) -> 400 ({s})")
        s, _, _ = ingest(port, "Custom-VMBoundPort",
                         [dict(sample_record(cols["Custom-VMBoundPort"]), IsWildcardBind="true")],
                         tok)
        check(s == 400, f"boolean as a string -> 400 ({s})")
        nulls = {k: None for k in rec}
        s, _, _ = ingest(port, "Custom-VMConnection", [nulls], tok)
        check(s == 204, f"all-null record -> 204 ({s})")
        for what, raw in (("an object", b'{"Computer": "x"}'), ("invalid JSON", b"[{"),
                          ("invalid UTF-8", b'[{"Computer": "\xff"}]'),
                          ("NaN", b'[{"RemoteLatitude": NaN}]'),
                          ("a duplicate key", b'[{"Computer": "a", "Computer": "b"}]'),
                          ("a scalar element", b'[1]')):
            s, _, _ = ingest(port, "Custom-VMConnection", None, tok, raw=raw)
            check(s == 400, f"body with {what} -> 400 ({s})")
        control(port, {"lenient_columns": True})
        s, _, _ = ingest(port, "Custom-VMConnection", [dict(rec, _ResourceId="m", Extra=1)], tok)
        last = read_ndjson(out / "requests.ndjson")[-1]
        check(s == 204 and last["notes"].get("dropped_columns") == ["Extra", "_ResourceId"],
              f"lenient_columns: undeclared keys dropped and noted ({s})")
        control(port, {"lenient_columns": False, "require_all_columns": True})
        partial = dict(rec)
        del partial["Severity"]
        s, _, b = ingest(port, "Custom-VMConnection", [partial], tok)
        check(s == 400 and b"missing" in b, f"require_all_columns: missing Severity -> 400 ({s})")
        control(port, {"require_all_columns": False})

        section("fake: routing and headers")
        s, _, _ = ingest(port, "Custom-VMConnection", [rec], tok, dcr="dcr-ffffffffffffffffffffffffffffffff")
        check(s == 404, f"unknown DCR immutable id -> 404 ({s})")
        s, _, _ = ingest(port, "Custom-VMConnection_CL", [rec], tok)
        check(s == 404, f"unknown stream -> 404 ({s})")
        s, _, _ = ingest(port, "Custom-VMConnection", [rec], tok, api=None)
        check(s == 400, f"no api-version -> 400 ({s})")
        s, _, _ = ingest(port, "Custom-VMConnection", [rec], tok, extra={"Content-Type": "text/plain"})
        check(s == 415, f"Content-Type text/plain -> 415 ({s})")
        s, _, _ = ingest(port, "Custom-VMConnection", [rec], tok,
                         extra={"Content-Type": "application/json; charset=utf-8"})
        check(s == 204, f"Content-Type application/json; charset=utf-8 -> 204 ({s})")
        s, _, _ = request(port, "GET", ingest_path("Custom-VMConnection"),
                          headers={"Authorization": f"Bearer {tok}"})
        check(s == 405, f"GET on the ingestion URI -> 405 ({s})")

        section("fake: fault injection")
        s, st = control(port, {"fail": {"count": 2, "status": 429, "retry_after": 3}})
        check(s == 200 and len(st["faults"]["ingest"]) == 1, "POST /_control queues a fault")
        r1 = ingest(port, "Custom-VMConnection", [rec], tok)
        r2 = ingest(port, "Custom-VMConnection", [rec], tok)
        r3 = ingest(port, "Custom-VMConnection", [rec], tok)
        check(r1[0] == 429 and r1[1].get("retry-after") == "3" and r2[0] == 429
              and r2[1].get("retry-after") == "3" and r3[0] == 204,
              f"next 2 requests -> 429 Retry-After: 3, third -> 204 "
              f"({r1[0]}, {r2[0]}, {r3[0]})")
        control(port, {"fail": {"count": 1, "status": 503}})
        s, h, _ = ingest(port, "Custom-VMConnection", [rec], tok)
        check(s == 503 and "retry-after" not in h, f"injected 503 (no Retry-After) ({s})")
        control(port, {"fail": {"count": 1, "status": 503, "retry_after": 2}})
        s, h, _ = ingest(port, "Custom-VMConnection", [rec], tok)
        check(s == 503 and h.get("retry-after") == "2", f"injected 503 with Retry-After: 2 ({s})")
        control(port, {"fail": {"count": 1, "reset": True}})
        try:
            ingest(port, "Custom-VMConnection", [rec], tok)
            reset_seen = False
        except (ConnectionError, http.client.HTTPException, OSError):
            reset_seen = True
        check(reset_seen, "injected connection reset -> client sees a connection error")
        control(port, {"fail": {"count": 1, "status": 500, "delay": 1}})
        t0 = time.monotonic()
        s, _, _ = ingest(port, "Custom-VMConnection", [rec], tok)
        check(s == 500 and time.monotonic() - t0 >= 0.9, f"injected delay 1 s then 500 ({s})")
        control(port, {"fail": {"count": 1, "status": 503, "target": "aad"}})
        s1 = aad_token(port)[0]
        s2 = aad_token(port)[0]
        check(s1 == 503 and s2 == 200, f"token endpoint fault: 503 then 200 ({s1}, {s2})")
        control(port, {"fail": {"count": 5, "status": 429}})
        s, st = control(port, {"clear_faults": True, "fail": {"count": 1, "status": 500}})
        check([f["count"] for f in st["faults"]["ingest"]] == [1],
              "clear_faults + fail in one request replaces the queue")
        s, st = control(port, {"clear_faults": True})
        check(not st["faults"]["ingest"], "clear_faults empties the queue")
        s, _ = control(port, {"fail": {"count": 0}})
        check(s == 400, f"bad control JSON -> 400 ({s})")
        s, _ = control(port, {"nonsense": 1})
        check(s == 400, f"unknown control key -> 400 ({s})")

        section("fake: concurrency")
        before = len(read_ndjson(out / "Custom-VMBoundPort.ndjson"))
        results = []
        lock = threading.Lock()

        def worker(n):
            for k in range(10):
                recs = [dict(sample_record(cols["Custom-VMBoundPort"], n * 100 + k), Port=n)
                        for _ in range(5)]
                st_ = ingest(port, "Custom-VMBoundPort", recs, tok, gz=bool(k % 2))[0]
                with lock:
                    results.append(st_)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        stored = read_ndjson(out / "Custom-VMBoundPort.ndjson")
        check(results == [204] * 160 and len(stored) - before == 800,
              f"16 clients x 10 requests x 5 records in parallel -> 160 x 204, 800 whole "
              f"lines ({sorted(set(results))}, {len(stored) - before})")

        section("fake: robustness")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sk:
            sk.sendall(b"\x00\x01garbage garbage\r\n\r\n")
            try:
                sk.recv(4096)
            except OSError:
                pass
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sk:
            sk.sendall(b"POST " + ingest_path("Custom-VMConnection").encode() +
                       b" HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
            try:
                sk.recv(4096)
            except OSError:
                pass
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sk:
            sk.sendall(b"POST " + ingest_path("Custom-VMConnection").encode() +
                       b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort")
        s, _, _ = ingest(port, "Custom-VMConnection", [rec], tok)
        check(s == 204, f"server still answers after garbage, a bad Content-Length and a "
                        f"truncated body ({s})")
        check(any(r.get("kind") == "malformed" and r.get("status") == 400
                  for r in read_ndjson(out / "requests.ndjson")),
              "the malformed request is logged in requests.ndjson")
        s, st = control(port)
        check(s == 200 and st["records"].get("Custom-VMConnection", 0) > 0
              and st["tokens_issued"] > 0, "GET /_control returns the counters")
    finally:
        code = fake.stop()
    check(code == 0, f"SIGTERM -> clean exit 0 ({code})")

    section("fake: command-line faults and settings")
    fake = Fake(Path(workdir) / "flags", "--fail-next", "2", "--fail-status", "503",
                "--retry-after", "4", "--token-lifetime", "60", "--dcr-id", "dcr-abc",
                "--client-secret", "s3cret")
    try:
        s, _, b = aad_token(fake.port, secret="s3cret")
        j = jbody(b) or {}
        check(s == 200 and j.get("expires_in") == 60, f"--client-secret, --token-lifetime 60 ({s})")
        tok = j.get("access_token")
        rec = sample_record(cols["Custom-VMConnection"])
        got = [ingest(fake.port, "Custom-VMConnection", [rec], tok, dcr="dcr-abc")
               for _ in range(3)]
        check([g[0] for g in got] == [503, 503, 204]
              and [g[1].get("retry-after") for g in got[:2]] == ["4", "4"],
              f"--fail-next 2 --fail-status 503 --retry-after 4 -> {[g[0] for g in got]}")
    finally:
        code = fake.stop()
    check(code == 0, f"SIGTERM -> clean exit 0 ({code})")


# ---------------------------------------------------------------------------- 3. real records
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def depmap_records(depmap):
    """Records of one 2 s window while a local HTTP server is exercised."""
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           cwd=tempfile.gettempdir())
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            except OSError:
                pass
            stop.wait(0.05)

    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        t = threading.Thread(target=load, daemon=True)
        t.start()
        res = subprocess.run([depmap, "once", "--duration", "2s", "--format", "ndjson"],
                             capture_output=True, text=True, timeout=120)
        stop.set()
        t.join(timeout=5)
    finally:
        stop.set()
        srv.terminate()
        try:
            srv.wait(timeout=5)
        except subprocess.TimeoutExpired:
            srv.kill()
    if res.returncode != 0:
        raise RuntimeError(f"depmap once exited {res.returncode}: {res.stderr[-2000:]}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def real_record_checks(workdir, depmap):
    section("real records: depmap once -> sink shape -> fake")
    if not depmap or not Path(depmap).exists():
        print(f"  SKIP  no depmap binary at {depmap} (build with cargo build --release)")
        return
    if os.geteuid() != 0:
        print("  SKIP  depmap once needs root to see every process's sockets")
        return
    recs = depmap_records(depmap)
    by_table = {}
    for r in recs:
        by_table.setdefault(r.get("Type"), []).append(r)
    check(all(by_table.get(t) for t in TABLES),
          "depmap emitted all four tables: " + ", ".join(f"{t} {len(by_table.get(t, []))}"
                                                        for t in TABLES))
    cols = stream_columns()
    out = Path(workdir) / "real"
    fake = Fake(out, "--require-all-columns")
    try:
        tok = token(fake.port)
        for t in TABLES:
            stream = f"Custom-{t}"
            sent = [to_sink_shape(r) for r in by_table.get(t, [])]
            declared = [n for n, _ in cols[stream]]
            keys = set().union(*(r.keys() for r in sent)) if sent else set()
            check(keys == set(declared),
                  f"{stream}: record keys == declared columns (extra {sorted(keys - set(declared))}, "
                  f"missing {sorted(set(declared) - keys)})")
            statuses = []
            for batch in split_batches(sent):
                s, _, b = ingest(fake.port, stream, None, tok, raw=batch, gz=True)
                statuses.append(s)
                if s != 204:
                    print("        ", b[:300])
            check(statuses and all(s == 204 for s in statuses),
                  f"{stream}: {len(sent)} records in {len(statuses)} gzip request(s) -> {statuses}")
            stored = read_ndjson(out / f"{stream}.ndjson")
            check(stored == sent, f"{stream}: stored records == sent records ({len(stored)})")
        # the 1 MiB split rule on a realistic volume: ~2.5 MB of VMConnection records
        conn = [to_sink_shape(r) for r in by_table.get("VMConnection", [])]
        if conn:
            many = [dict(conn[i % len(conn)], ConnectionId=f"c-{i:040x}") for i in range(4000)]
            batches = split_batches(many)
            statuses = [ingest(fake.port, "Custom-VMConnection", None, tok, raw=b)[0]
                        for b in batches]
            total = sum(len(b) for b in batches)
            check(len(batches) >= 2 and all(len(b) <= LIMIT for b in batches)
                  and all(s == 204 for s in statuses),
                  f"{len(many)} records ({total} bytes) split into {len(batches)} arrays "
                  f"<= {LIMIT} bytes, sent uncompressed -> {sorted(set(statuses))}")
            stored = read_ndjson(out / "Custom-VMConnection.ndjson")
            check(stored[-len(many):] == many, "all split records stored, in order")
            whole = json.dumps(many, separators=(",", ":")).encode()
            s, _, _ = ingest(fake.port, "Custom-VMConnection", None, tok, raw=whole, gz=True)
            check(s == 413, f"the same records unsplit ({len(whole)} bytes, gzipped to "
                            f"{len(gzip.compress(whole))}) -> 413 ({s})")
    finally:
        code = fake.stop()
    check(code == 0, f"SIGTERM -> clean exit 0 ({code})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depmap", default=str(REPO / "target" / "release" / "depmap"),
                    help="depmap binary (default target/release/depmap)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="depmap-azure-selftest-")
    print(f"work directory {workdir}")
    t0 = time.monotonic()
    try:
        static_checks()
        fake_checks(workdir)
        real_record_checks(workdir, args.depmap)
    finally:
        if not args.keep and not FAILURES:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'FAILED' if FAILURES else 'PASSED'} in {time.monotonic() - t0:.1f} s"
          + (f": {len(FAILURES)} failure(s)" if FAILURES else ""))
    for f in FAILURES:
        print(f"  - {f}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())

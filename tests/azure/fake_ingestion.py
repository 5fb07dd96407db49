#!/usr/bin/env python3
"""Loopback stand-in for the Azure services depmap's `azure_logs` sink talks to.

One threaded HTTP server (Python 3 standard library only) that answers:

  POST /{tenant}/oauth2/v2.0/token
      Microsoft Entra ID client-credentials token endpoint.
  GET  /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://monitor.azure.com
      IMDS managed-identity token endpoint (header `Metadata: true` required).
  POST /dataCollectionRules/{dcrImmutableId}/streams/{stream}?api-version=2023-01-01
      Azure Monitor Logs Ingestion API; the streams and their columns come from the
      `streamDeclarations` of packaging/azure/dcr.json (the single source of truth).
  GET|POST /_control
      Test control: fault injection, token lifetime, strictness; GET returns the state.

It prints `listening PORT` on stdout once it accepts connections (bind 127.0.0.1, port 0 by
default) and writes, under --outdir:

  <stream>.ndjson     every accepted record, one JSON object a line, as received
  requests.ndjson     one line per request: method, path, status, sizes, headers of interest

SIGTERM or SIGINT shuts it down cleanly (exit 0).

Protocol sources (what each check emulates):
  * Logs Ingestion API: learn.microsoft.com/azure/azure-monitor/logs/logs-ingestion-api-overview
    (URI, headers Authorization/Content-Type/Content-Encoding/x-ms-client-request-id, JSON array
    body in UTF-8, reserved column names `_ResourceId, id, _SubscriptionId, TenantId, Type,
    UniqueId, Title`), service limits (1 MB per call "both compressed and uncompressed", 64 KB
    per field value, Retry-After on throttling), REST spec DataCollectionRules.json 2023-01-01
    (204 on success; error body {"error": {"code", "message"}} with header x-ms-error-code).
    Observed 413 body: {"error": {"code": "ContentLengthLimitExceeded", "message": "Maximum
    allowed content length: 1048576 bytes (1 MB). Provided content length: N bytes."}}
    (github.com/JulianHayward/AzADServicePrincipalInsights/issues/30).
  * Entra ID client credentials: learn.microsoft.com/entra/identity-platform/
    v2-oauth2-client-creds-grant-flow (form fields client_id, scope, client_secret,
    grant_type=client_credentials; success {"token_type": "Bearer", "expires_in": 3599,
    "access_token": ...}; error body {error, error_description, error_codes, timestamp,
    trace_id, correlation_id}). The scope for Azure Monitor is `https://monitor.azure.com/.default`
    (REST spec); the official PowerShell sample sends `https://monitor.azure.com//.default`
    (tutorial-logs-ingestion-code) - both are accepted. A wrong secret gives 401 invalid_client
    AADSTS7000215, as Entra ID does.
  * IMDS managed identity: https://learn.microsoft.com/entra/identity/managed-identities-azure-
    resources/how-to-use-vm-token#get-a-token-using-http (source: MicrosoftDocs/entra-docs,
    docs/identity/managed-identities-azure-resources/how-to-use-vm-token.md, ms.date 02/27/2025):
        GET 'http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01
             &resource=https://management.azure.com/' HTTP/1.1  Metadata: true
        curl '...token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F'
             -H Metadata:true -s
    Sample response (all values are strings, expires_in included):
        {"access_token": "eyJ0eXAi...", "refresh_token": "", "expires_in": "3599",
         "expires_on": "1506484173", "not_before": "1506480273",
         "resource": "https://management.azure.com/", "token_type": "Bearer"}
    Errors: 400 bad_request_102 "Required metadata header not specified" when `Metadata` is
    missing or not exactly "true" (all lower case); optional query parameters client_id,
    object_id, msi_res_id select a user-assigned identity. IMDS also rejects requests that
    carry X-Forwarded-For and duplicate query parameters (instance-metadata-service article).

Run `fake_ingestion.py --help` for the flags and the /_control JSON.
"""

import argparse
import base64
import datetime as dt
import hashlib
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import zlib
from pathlib import Path

DEFAULT_DCR = Path(__file__).resolve().parents[2] / "packaging" / "azure" / "dcr.json"
DEFAULT_DCR_ID = "dcr-00000000000000000000000000000000"
DEFAULT_TENANT = "00000000-0000-0000-0000-000000000000"
DEFAULT_CLIENT_ID = "11111111-1111-1111-1111-111111111111"
DEFAULT_CLIENT_SECRET = "fake-client-secret"
MONITOR_AUDIENCE = "https://monitor.azure.com"
ACCEPTED_SCOPES = {"https://monitor.azure.com/.default", "https://monitor.azure.com//.default"}
ACCEPTED_RESOURCES = {"https://monitor.azure.com", "https://monitor.azure.com/"}
INGEST_API_VERSION = "2023-01-01"
MAX_CALL_BYTES = 1024 * 1024  # "Maximum size of API call: 1 MB", both compressed and not
MAX_FIELD_BYTES = 64 * 1024  # "Fields longer than 64 KB are truncated" (counted, not changed)
HARD_READ_CAP = 64 * 1024 * 1024  # bodies beyond this are not read at all: 413 and close
RESERVED = {"_resourceid", "id", "_subscriptionid", "tenantid", "type", "uniqueid", "title"}
COLUMN_TYPES = {"string", "int", "long", "real", "boolean", "datetime", "dynamic"}
COLUMN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,44}$")
DATETIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,7})?)?(Z|[+-]\d{2}:?\d{2})?$")
INT32 = (-(2 ** 31), 2 ** 31 - 1)
INT64 = (-(2 ** 63), 2 ** 63 - 1)

HELP_EPILOG = """\
control endpoint (POST /_control, JSON object; any subset of the keys; GET returns the state):
  {"fail": {"count": N, "status": 429, "retry_after": S, "target": "ingest",
            "delay": SECONDS, "reset": false}}
        queue a fault for the next N requests of target ("ingest" | "aad" | "imds").
        status: the HTTP status answered (Azure-style error body); retry_after: the
        Retry-After header in seconds (default 1 for 429, none otherwise); delay: sleep that
        long first (<= 60 s); reset: close the connection without an answer.
        "fail" may also be a list of such objects; faults are consumed in order.
  {"clear_faults": true}        drop all queued faults (done before "fail" of the same
                                request, so both together replace the queue)
  {"token_lifetime": S}         lifetime (s) of tokens issued from now on (>= 1)
  {"expire_tokens": true}       every token issued so far is expired from now on
  {"require_all_columns": B}    400 when a record lacks a declared column (default false)
  {"lenient_columns": B}        drop keys the stream does not declare (Azure ignores them)
                                instead of answering 400 (default false)
Faults are applied after the request body is read and before any other check, so the
N requests that follow get them whatever they carry.

output files (under --outdir):
  <stream>.ndjson   accepted records of that stream (e.g. Custom-VMConnection.ndjson)
  requests.ndjson   one JSON line per request: ts, kind (aad|imds|ingest|control|other),
                    method, path, query, status, error_code, bytes_wire, bytes_decoded,
                    records, content_type, content_encoding, client_request_id,
                    request_id, user_agent, auth, token (sha256 prefix), dcr, stream,
                    fault, retry_after, notes

the first line on stdout is `listening PORT`; everything else goes to stderr.
"""


class DcrError(Exception):
    pass


def load_dcr(path):
    """Stream name -> list of (column, type), from a DCR body's streamDeclarations."""
    try:
        dcr = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DcrError(f"{path}: {exc}") from exc
    props = dcr.get("properties", dcr)
    decls = props.get("streamDeclarations")
    if not isinstance(decls, dict) or not decls:
        raise DcrError(f"{path}: no properties.streamDeclarations")
    flows = {}
    for flow in props.get("dataFlows", []):
        for s in flow.get("streams", []):
            flows[s] = flow.get("outputStream")
    streams = {}
    for name, decl in decls.items():
        if not name.startswith("Custom-"):
            raise DcrError(f"{path}: stream {name} does not start with Custom-")
        cols = []
        seen = set()
        for col in decl.get("columns", []):
            cname, ctype = col.get("name"), str(col.get("type", "")).lower()
            if not isinstance(cname, str) or not COLUMN_NAME.match(cname):
                raise DcrError(f"{path}: {name}: bad column name {cname!r}")
            if cname.lower() in RESERVED:
                raise DcrError(f"{path}: {name}: reserved column name {cname}")
            if ctype not in COLUMN_TYPES:
                raise DcrError(f"{path}: {name}.{cname}: bad type {col.get('type')!r}")
            if cname in seen:
                raise DcrError(f"{path}: {name}: duplicate column {cname}")
            seen.add(cname)
            cols.append((cname, ctype))
        streams[name] = cols
    return streams, flows


def now_iso():
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fingerprint(token):
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class State:
    """Everything shared by the handler threads, behind one lock."""

    def __init__(self, args, streams, flows):
        self.args = args
        self.streams = streams
        self.flows = flows
        self.columns = {s: dict(cols) for s, cols in streams.items()}
        self.dcr_ids = set(args.dcr_id or [DEFAULT_DCR_ID])
        self.outdir = Path(args.outdir)
        self.lock = threading.Lock()
        self.file_lock = threading.Lock()
        self.tokens = {}  # token -> {"exp": float, "aud": str, "kind": str, "revoked": bool}
        self.token_lifetime = args.token_lifetime
        self.faults = {"ingest": [], "aad": [], "imds": []}
        self.require_all_columns = args.require_all_columns
        self.lenient_columns = args.lenient_columns
        self.counts = {"requests": {}, "records": {}, "tokens_issued": 0}
        self.port = None
        if args.fail_next:
            self.faults["ingest"].append(self._fault({
                "count": args.fail_next, "status": args.fail_status,
                "retry_after": args.retry_after}))
        self.req_log = open(self.outdir / "requests.ndjson", "a", encoding="utf-8")
        self.stream_files = {}

    # -- tokens
    def issue_token(self, aud, kind, subject):
        now = time.time()
        with self.lock:
            lifetime = self.token_lifetime
            header = {"typ": "JWT", "alg": "none", "x-fake": "depmap fake_ingestion"}
            payload = {
                "aud": aud, "iss": f"https://sts.windows.net/{self.args.tenant_id}/",
                "iat": int(now), "nbf": int(now), "exp": int(now + lifetime),
                "tid": self.args.tenant_id, "appid": subject, "oid": subject,
                "idtyp": "app", "jti": str(uuid.uuid4()), "kind": kind,
            }
            token = ".".join([
                b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()),
                b64url(os.urandom(32))])
            self.tokens[token] = {"exp": now + lifetime, "aud": aud, "kind": kind,
                                  "revoked": False}
            self.counts["tokens_issued"] += 1
        return token, lifetime, now

    def check_token(self, token):
        """'ok', 'unknown', 'expired' or 'audience'."""
        with self.lock:
            info = self.tokens.get(token)
            if info is None:
                return "unknown"
            if info["revoked"] or time.time() >= info["exp"]:
                return "expired"
            if info["aud"].rstrip("/") != MONITOR_AUDIENCE:
                return "audience"
            return "ok"

    # -- faults
    @staticmethod
    def _fault(spec):
        if not isinstance(spec, dict):
            raise ValueError("a fault is a JSON object")
        count = int(spec.get("count", 1))
        if count < 1:
            raise ValueError("count must be >= 1")
        reset = bool(spec.get("reset", False))
        status = int(spec.get("status", 429))
        if not reset and not 400 <= status <= 599:
            raise ValueError("status must be 400..599")
        retry_after = spec.get("retry_after")
        if retry_after is None and status == 429 and not reset:
            retry_after = 1
        if retry_after is not None:
            retry_after = int(retry_after)
            if retry_after < 0:
                raise ValueError("retry_after must be >= 0")
        delay = float(spec.get("delay", 0))
        if not 0 <= delay <= 60:
            raise ValueError("delay must be 0..60 seconds")
        target = spec.get("target", "ingest")
        if target not in ("ingest", "aad", "imds"):
            raise ValueError("target must be ingest, aad or imds")
        return {"count": count, "status": status, "retry_after": retry_after,
                "delay": delay, "reset": reset, "target": target}

    def add_faults(self, spec):
        specs = spec if isinstance(spec, list) else [spec]
        parsed = [self._fault(s) for s in specs]
        with self.lock:
            for f in parsed:
                self.faults[f["target"]].append(f)

    def take_fault(self, target):
        with self.lock:
            queue = self.faults[target]
            if not queue:
                return None
            f = queue[0]
            f["count"] -= 1
            if f["count"] <= 0:
                queue.pop(0)
            taken = dict(f, remaining=f["count"])
            del taken["count"]
            return taken

    def snapshot(self):
        with self.lock:
            return {
                "port": self.port, "outdir": str(self.outdir),
                "dcr_ids": sorted(self.dcr_ids), "streams": sorted(self.streams),
                "token_lifetime": self.token_lifetime,
                "require_all_columns": self.require_all_columns,
                "lenient_columns": self.lenient_columns,
                "faults": {k: [dict(f) for f in v] for k, v in self.faults.items()},
                "tokens_issued": self.counts["tokens_issued"],
                "requests": dict(self.counts["requests"]),
                "records": dict(self.counts["records"]),
            }

    # -- output
    def log_request(self, entry):
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self.file_lock:
            self.req_log.write(line)
            self.req_log.flush()
        with self.lock:
            key = f"{entry.get('kind')} {entry.get('status')}"
            self.counts["requests"][key] = self.counts["requests"].get(key, 0) + 1

    def append_records(self, stream, records):
        text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n"
                       for r in records)
        with self.file_lock:
            f = self.stream_files.get(stream)
            if f is None:
                f = open(self.outdir / f"{stream}.ndjson", "a", encoding="utf-8")
                self.stream_files[stream] = f
            f.write(text)
            f.flush()
        with self.lock:
            self.counts["records"][stream] = self.counts["records"].get(stream, 0) + len(records)

    def close(self):
        with self.file_lock:
            for f in list(self.stream_files.values()) + [self.req_log]:
                try:
                    f.close()
                except OSError:
                    pass


class BodyTooLarge(Exception):
    pass


class BadRequestBody(Exception):
    pass


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs):
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise ValueError(f"duplicate key {k!r}")
        obj[k] = v
    return obj


def check_value(ctype, value):
    """None when `value` fits the declared column type, else the reason."""
    if value is None or ctype == "dynamic":
        return None
    if ctype == "string":
        return None if isinstance(value, str) else "expected a string"
    if ctype in ("int", "long"):
        lo, hi = INT32 if ctype == "int" else INT64
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer ({ctype})"
        return None if lo <= value <= hi else f"out of range for {ctype}"
    if ctype == "real":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "expected a number (real)"
    if ctype == "boolean":
        return None if isinstance(value, bool) else "expected true or false"
    if ctype == "datetime":
        if not isinstance(value, str) or not DATETIME.match(value):
            return "expected an ISO 8601 datetime string"
        try:
            parse_datetime(value)
        except ValueError:
            return "not a valid datetime"
        return None
    return f"unknown type {ctype}"


def parse_datetime(text):
    t = text.replace(" ", "T", 1)
    m = re.match(r"^(.*\.\d{6})\d+(.*)$", t)  # Python takes at most 6 fraction digits
    if m:
        t = m.group(1) + m.group(2)
    d = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return d


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-azure-ingestion/1"
    timeout = 30  # idle keep-alive connections are closed after this

    # set by make_handler
    state: State = None

    def version_string(self):
        return self.server_version

    def send_error(self, code, message=None, explain=None):
        """Requests the base class rejects before dispatch (bad request line, headers)."""
        super().send_error(code, message, explain)
        try:
            self.state.log_request({
                "ts": now_iso(), "kind": "malformed", "method": getattr(self, "command", None),
                "path": getattr(self, "path", None), "status": code,
                "error_code": message, "notes": {"requestline": getattr(
                    self, "requestline", "")[:200]}})
        except Exception:
            pass

    def log_message(self, fmt, *args):  # noqa: N802 - BaseHTTPRequestHandler API
        if self.state.args.verbose:
            sys.stderr.write("fake_ingestion: %s - %s\n" % (self.address_string(), fmt % args))

    # ---------------------------------------------------------------- plumbing
    def _entry(self, kind):
        url = urllib.parse.urlsplit(self.path)
        return {
            "ts": now_iso(), "kind": kind, "method": self.command, "path": url.path,
            "query": url.query, "status": None, "error_code": None,
            "bytes_wire": 0, "bytes_decoded": None, "records": None,
            "content_type": self.headers.get("Content-Type"),
            "content_encoding": self.headers.get("Content-Encoding"),
            "client_request_id": self.headers.get("x-ms-client-request-id"),
            "request_id": str(uuid.uuid4()),
            "user_agent": self.headers.get("User-Agent"),
            "auth": None, "token": None, "dcr": None, "stream": None,
            "fault": None, "retry_after": None, "notes": {},
        }

    def _send(self, entry, status, body=None, headers=None, content_type="application/json"):
        data = b""
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        entry["status"] = status
        # logged before the answer leaves, so a client that got it finds it in requests.ndjson
        self.state.log_request(entry)
        self.send_response(status)
        if status not in (204, 304):  # RFC 9110: no Content-Length/Type on 204
            self.send_header("Content-Type", content_type + "; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", entry["request_id"])
        if entry.get("client_request_id"):
            self.send_header("x-ms-client-request-id", entry["client_request_id"])
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _read_body(self, entry, cap):
        """The raw body; BodyTooLarge past `cap` (connection then closed)."""
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise BadRequestBody("truncated chunked body")
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError as exc:
                    raise BadRequestBody("bad chunk size") from exc
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(1024)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                total += size
                if total > cap:
                    self.close_connection = True
                    entry["bytes_wire"] = total
                    raise BodyTooLarge(total)
                chunk = self.rfile.read(size)
                if len(chunk) != size:
                    raise BadRequestBody("truncated chunk")
                self.rfile.readline(8)
                chunks.append(chunk)
            body = b"".join(chunks)
        else:
            length = self.headers.get("Content-Length")
            if length is None:
                body = b""
            else:
                try:
                    n = int(length)
                    if n < 0:
                        raise ValueError
                except ValueError as exc:
                    self.close_connection = True
                    raise BadRequestBody("bad Content-Length") from exc
                if n > cap:
                    self.close_connection = True
                    entry["bytes_wire"] = n
                    raise BodyTooLarge(n)
                body = self.rfile.read(n)
                if len(body) != n:
                    self.close_connection = True
                    raise BadRequestBody("truncated body")
        entry["bytes_wire"] = len(body)
        return body

    def _dispatch(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_control":
            return self._control()
        if path == "/metadata/identity/oauth2/token":
            return self._imds()
        if re.fullmatch(r"/[^/]+/oauth2/v2\.0/token", path):
            return self._aad()
        if path.startswith("/dataCollectionRules/"):
            return self._ingest()
        entry = self._entry("other")
        try:
            self._read_body(entry, HARD_READ_CAP)
        except (BodyTooLarge, BadRequestBody):
            self.close_connection = True
        entry["error_code"] = "NotFound"
        self._send(entry, 404, {"error": {"code": "NotFound",
                                          "message": f"No route for {path}"}},
                   headers={"x-ms-error-code": "NotFound"})

    def _guarded(self):
        try:
            self._dispatch()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception as exc:  # never let one request kill the server
            self.close_connection = True
            sys.stderr.write(f"fake_ingestion: internal error on {self.command} "
                             f"{self.path}: {exc!r}\n")
            try:
                entry = self._entry("other")
                self._send(entry, 500, {"error": {"code": "InternalServerError",
                                                  "message": repr(exc)}})
            except Exception:
                pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _guarded  # noqa: N815

    def _apply_fault(self, entry, target, error_body):
        fault = self.state.take_fault(target)
        if fault is None:
            return False
        entry["fault"] = fault
        if fault["delay"]:
            time.sleep(fault["delay"])
        if fault["reset"]:
            entry["status"] = 0
            entry["error_code"] = "connection reset (injected)"
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            self.state.log_request(entry)
            return True
        headers = {}
        if fault["retry_after"] is not None:
            headers["Retry-After"] = str(fault["retry_after"])
            entry["retry_after"] = fault["retry_after"]
        body, code = error_body(fault["status"])
        if code:
            headers["x-ms-error-code"] = code
        entry["error_code"] = code
        self._send(entry, fault["status"], body, headers=headers)
        return True

    # ---------------------------------------------------------------- control
    def _control(self):
        entry = self._entry("control")
        try:
            body = self._read_body(entry, MAX_CALL_BYTES)
        except (BodyTooLarge, BadRequestBody) as exc:
            self._send(entry, 400, {"error": str(exc)})
            return
        st = self.state
        if self.command == "GET":
            self._send(entry, 200, st.snapshot())
            return
        if self.command != "POST":
            self._send(entry, 405, {"error": "GET or POST"}, headers={"Allow": "GET, POST"})
            return
        try:
            req = json.loads(body.decode("utf-8") or "{}")
            if not isinstance(req, dict):
                raise ValueError("expected a JSON object")
            unknown = set(req) - {"fail", "clear_faults", "token_lifetime", "expire_tokens",
                                  "require_all_columns", "lenient_columns"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            if req.get("clear_faults"):
                with st.lock:
                    for q in st.faults.values():
                        q.clear()
            if "fail" in req:
                st.add_faults(req["fail"])
            if "token_lifetime" in req:
                lifetime = int(req["token_lifetime"])
                if lifetime < 1:
                    raise ValueError("token_lifetime must be >= 1")
                with st.lock:
                    st.token_lifetime = lifetime
            if req.get("expire_tokens"):
                with st.lock:
                    for info in st.tokens.values():
                        info["revoked"] = True
            for key in ("require_all_columns", "lenient_columns"):
                if key in req:
                    with st.lock:
                        setattr(st, key, bool(req[key]))
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            entry["error_code"] = "BadControl"
            self._send(entry, 400, {"error": str(exc)})
            return
        entry["notes"] = {"control": req}
        self._send(entry, 200, st.snapshot())

    # ---------------------------------------------------------------- Entra ID
    def _aad_error(self, entry, status, error, code, message, headers=None):
        trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": error,
            "error_description": (f"AADSTS{code}: {message}\r\nTrace ID: {trace}\r\n"
                                  f"Correlation ID: {corr}\r\nTimestamp: {stamp}"),
            "error_codes": [code], "timestamp": stamp, "trace_id": trace,
            "correlation_id": corr,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        }
        entry["error_code"] = f"{error} AADSTS{code}"
        h = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
        h.update(headers or {})
        self._send(entry, status, body, headers=h)

    def _aad(self):
        entry = self._entry("aad")
        st = self.state
        try:
            body = self._read_body(entry, MAX_CALL_BYTES)
        except BodyTooLarge:
            return self._aad_error(entry, 400, "invalid_request", 900144, "Request too large.")
        except BadRequestBody as exc:
            return self._aad_error(entry, 400, "invalid_request", 900144, str(exc))
        if self._apply_fault(entry, "aad", lambda s: ({
                "error": "temporarily_unavailable",
                "error_description": "AADSTS90033: injected fault", "error_codes": [90033]},
                None)):
            return
        if self.command != "POST":
            return self._aad_error(entry, 405, "invalid_request", 900561,
                                   "The endpoint only accepts POST requests.",
                                   headers={"Allow": "POST"})
        tenant = urllib.parse.urlsplit(self.path).path.split("/")[1]
        if tenant != st.args.tenant_id:
            return self._aad_error(entry, 400, "invalid_request", 90002,
                                   f"Tenant '{tenant}' not found.")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            return self._aad_error(entry, 400, "invalid_request", 900144,
                                   "The request body must contain the following parameter: "
                                   "'grant_type'. (Content-Type must be "
                                   "application/x-www-form-urlencoded)")
        try:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                           strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError):
            return self._aad_error(entry, 400, "invalid_request", 900144,
                                   "The request body is not a valid form.")
        form = {}
        for k, v in pairs:
            if k in form:
                return self._aad_error(entry, 400, "invalid_request", 90015,
                                       f"Duplicate parameter '{k}'.")
            form[k] = v
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):  # RFC 6749 2.3.1, accepted by Entra ID
            try:
                cid, _, secret = base64.b64decode(auth[6:].strip()).decode().partition(":")
                form.setdefault("client_id", urllib.parse.unquote_plus(cid))
                form.setdefault("client_secret", urllib.parse.unquote_plus(secret))
            except (ValueError, UnicodeDecodeError):
                return self._aad_error(entry, 401, "invalid_client", 7000216,
                                       "Bad Basic authorization header.")
        for p in ("grant_type", "client_id", "scope"):
            if not form.get(p):
                return self._aad_error(entry, 400, "invalid_request", 900144,
                                       f"The request body must contain the following "
                                       f"parameter: '{p}'.")
        if form["grant_type"] != "client_credentials":
            return self._aad_error(entry, 400, "unsupported_grant_type", 70003,
                                   "The app requested an unsupported grant type "
                                   f"'{form['grant_type']}'.")
        if form["client_id"] != st.args.client_id:
            return self._aad_error(entry, 400, "unauthorized_client", 700016,
                                   f"Application with identifier '{form['client_id']}' was "
                                   f"not found in the directory '{tenant}'.")
        if form["scope"] not in ACCEPTED_SCOPES:
            return self._aad_error(entry, 400, "invalid_scope", 70011,
                                   "The provided value for the input parameter 'scope' is "
                                   f"not valid. The scope {form['scope']} is not valid.")
        if not form.get("client_secret"):
            return self._aad_error(entry, 401, "invalid_client", 7000216,
                                   "'client_assertion', 'client_secret' or 'request' is "
                                   "required for the 'client_credentials' grant type.")
        if form["client_secret"] != st.args.client_secret:
            return self._aad_error(entry, 401, "invalid_client", 7000215,
                                   "Invalid client secret provided. Ensure the secret being "
                                   "sent in the request is the client secret value, not the "
                                   "client secret ID, for a secret added to app "
                                   f"'{form['client_id']}'.")
        token, lifetime, _ = st.issue_token(MONITOR_AUDIENCE, "aad", form["client_id"])
        entry["token"] = fingerprint(token)
        entry["notes"] = {"scope": form["scope"], "lifetime": lifetime}
        self._send(entry, 200, {"token_type": "Bearer", "expires_in": lifetime,
                                "ext_expires_in": lifetime, "access_token": token},
                   headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    # ---------------------------------------------------------------- IMDS
    def _imds_error(self, entry, status, error, description):
        entry["error_code"] = error
        self._send(entry, status, {"error": error, "error_description": description})

    def _imds(self):
        entry = self._entry("imds")
        st = self.state
        try:
            self._read_body(entry, MAX_CALL_BYTES)
        except (BodyTooLarge, BadRequestBody):
            return self._imds_error(entry, 400, "invalid_request", "Bad request body")
        if self._apply_fault(entry, "imds", lambda s: (
                {"error": "unknown", "error_description": "injected fault"}, None)):
            return
        if self.command != "GET":
            entry["error_code"] = "method_not_allowed"
            self._send(entry, 405, {"error": "method_not_allowed",
                                    "error_description": "Only GET is allowed"},
                       headers={"Allow": "GET"})
            return
        if self.headers.get("Metadata") != "true":
            return self._imds_error(entry, 400, "bad_request_102",
                                    "Required metadata header not specified")
        if self.headers.get("X-Forwarded-For") is not None:
            return self._imds_error(entry, 400, "invalid_request",
                                    "X-Forwarded-For header is not allowed")
        query = urllib.parse.urlsplit(self.path).query
        try:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        except ValueError:
            return self._imds_error(entry, 400, "invalid_request", "Bad query string")
        q = {}
        for k, v in pairs:
            if k in q:
                return self._imds_error(entry, 400, "invalid_request",
                                        f"Duplicate query parameter '{k}'")
            q[k] = v
        version = q.get("api-version")
        if not version:
            return self._imds_error(entry, 400, "invalid_request",
                                    "Required query variable 'api-version' is missing")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", version) or version < "2018-02-01":
            return self._imds_error(entry, 400, "invalid_request",
                                    f"Unsupported api-version '{version}'")
        resource = q.get("resource")
        if not resource:
            return self._imds_error(entry, 400, "invalid_request",
                                    "Required query variable 'resource' is missing")
        ids = {k: q[k] for k in ("client_id", "object_id", "msi_res_id") if q.get(k)}
        if len(ids) > 1:
            return self._imds_error(entry, 400, "invalid_request",
                                    "Only one of client_id, object_id, msi_res_id is allowed")
        if "client_id" in ids and st.args.mi_client_id and ids["client_id"] != st.args.mi_client_id:
            return self._imds_error(entry, 400, "invalid_request", "Identity not found")
        subject = ids.get("client_id") or st.args.mi_client_id or "managed-identity"
        token, lifetime, now = st.issue_token(resource.rstrip("/") if resource in
                                              ACCEPTED_RESOURCES else resource, "imds", subject)
        entry["token"] = fingerprint(token)
        entry["notes"] = {"resource": resource, "lifetime": lifetime, **ids}
        self._send(entry, 200, {
            "access_token": token, "refresh_token": "", "expires_in": str(lifetime),
            "expires_on": str(int(now + lifetime)), "not_before": str(int(now)),
            "resource": resource, "token_type": "Bearer"})

    # ---------------------------------------------------------------- ingestion
    def _ingest_error(self, entry, status, code, message, headers=None):
        entry["error_code"] = code
        h = {"x-ms-error-code": code}
        h.update(headers or {})
        self._send(entry, status, {"error": {"code": code, "message": message}}, headers=h)

    def _ingest(self):
        entry = self._entry("ingest")
        st = self.state
        limit = st.args.max_body_bytes
        url = urllib.parse.urlsplit(self.path)
        m = re.fullmatch(r"/dataCollectionRules/([^/]+)/streams/([^/]+)", url.path)
        if m:
            entry["dcr"] = urllib.parse.unquote(m.group(1))
            entry["stream"] = urllib.parse.unquote(m.group(2))
        try:
            body = self._read_body(entry, max(limit, HARD_READ_CAP))
        except BodyTooLarge as exc:
            return self._ingest_error(entry, 413, "ContentLengthLimitExceeded",
                                      f"Maximum allowed content length: {limit} bytes (1 MB). "
                                      f"Provided content length: {exc.args[0]} bytes.")
        except BadRequestBody as exc:
            return self._ingest_error(entry, 400, "InvalidRequestBody", str(exc))

        def fault_body(status):
            code = {429: "TooManyRequests", 503: "ServiceUnavailable",
                    500: "InternalServerError"}.get(status, "InjectedFault")
            return {"error": {"code": code, "message": f"Injected {status} fault."}}, code

        if self._apply_fault(entry, "ingest", fault_body):
            return
        if not m:
            return self._ingest_error(entry, 404, "NotFound", f"No route for {url.path}")
        if self.command != "POST":
            return self._ingest_error(entry, 405, "MethodNotAllowed",
                                      "The Logs Ingestion API only accepts POST.",
                                      headers={"Allow": "POST"})
        # Authorization: Bearer <token issued here, not expired, audience Azure Monitor>
        auth = self.headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        unauth = {"WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.'
                                      f'com/{st.args.tenant_id}", resource="{MONITOR_AUDIENCE}"'}
        if scheme.lower() != "bearer" or not token:
            entry["auth"] = "missing"
            return self._ingest_error(entry, 401, "Unauthorized",
                                      "The request is missing a Bearer token in the "
                                      "Authorization header.", headers=unauth)
        entry["token"] = fingerprint(token)
        verdict = st.check_token(token)
        entry["auth"] = verdict
        if verdict != "ok":
            msg = {"unknown": "The access token is invalid.",
                   "expired": "The access token has expired.",
                   "audience": f"The access token audience is not {MONITOR_AUDIENCE}."}[verdict]
            return self._ingest_error(entry, 401, "Unauthorized", msg, headers=unauth)
        qs = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        if qs.get("api-version") != [INGEST_API_VERSION]:
            return self._ingest_error(entry, 400, "InvalidApiVersion",
                                      f"api-version must be {INGEST_API_VERSION} "
                                      f"(got {qs.get('api-version')}).")
        if entry["dcr"] not in st.dcr_ids:
            return self._ingest_error(entry, 404, "NotFound",
                                      f"Data collection rule with immutable Id "
                                      f"'{entry['dcr']}' not found.")
        stream = entry["stream"]
        if stream not in st.streams:
            return self._ingest_error(entry, 404, "InvalidStream",
                                      f"Stream '{stream}' is not declared in data collection "
                                      f"rule '{entry['dcr']}'.")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return self._ingest_error(entry, 415, "UnsupportedMediaType",
                                      "Content-Type must be application/json.")
        if len(body) > limit:
            return self._ingest_error(entry, 413, "ContentLengthLimitExceeded",
                                      f"Maximum allowed content length: {limit} bytes (1 MB). "
                                      f"Provided content length: {len(body)} bytes.")
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
        if encoding == "gzip":
            try:
                d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                raw = d.decompress(body, limit + 1)
                if len(raw) > limit:
                    entry["bytes_decoded"] = len(raw)
                    return self._ingest_error(
                        entry, 413, "ContentLengthLimitExceeded",
                        f"Maximum allowed content length: {limit} bytes (1 MB) uncompressed. "
                        f"The decompressed body is larger.")
                if not d.eof or d.unused_data:
                    raise zlib.error("truncated or trailing data")
            except zlib.error as exc:
                return self._ingest_error(entry, 400, "InvalidContentEncoding",
                                          f"The body is not valid gzip: {exc}.")
        elif encoding in ("", "identity"):
            raw = body
        else:
            return self._ingest_error(entry, 415, "UnsupportedContentEncoding",
                                      f"Content-Encoding '{encoding}' is not supported; "
                                      f"use gzip or none.")
        entry["bytes_decoded"] = len(raw)
        crid = entry["client_request_id"]
        try:
            records, notes = self._validate(stream, raw)
        except BadRequestBody as exc:
            return self._ingest_error(entry, 400, "InvalidRequestBody", str(exc))
        entry["records"] = len(records)
        if crid is not None:
            try:
                uuid.UUID(crid)
            except ValueError:
                notes["client_request_id_not_guid"] = True
        entry["notes"] = notes
        if records:
            st.append_records(stream, records)
        self._send(entry, 204)

    def _validate(self, stream, raw):
        st = self.state
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequestBody(f"The body is not valid UTF-8: {exc}.") from exc
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates,
                              parse_constant=_reject_constant)
        except ValueError as exc:
            raise BadRequestBody(f"The body is not valid JSON: {exc}.") from exc
        if not isinstance(data, list):
            raise BadRequestBody("The body must be a JSON array of records.")
        columns = st.columns[stream]
        with st.lock:
            lenient, require_all = st.lenient_columns, st.require_all_columns
        errors, dropped, oversized, stale = [], set(), 0, 0
        now = dt.datetime.now(dt.timezone.utc)
        out = []
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                errors.append(f"record {i}: not a JSON object")
                continue
            clean = {}
            for key, value in rec.items():
                reserved = key.lower() in RESERVED or key.startswith("_")
                if reserved or key not in columns:
                    if lenient:
                        dropped.add(key)
                        continue
                    why = ("is a reserved column name" if reserved
                           else f"is not a column of stream {stream}")
                    errors.append(f"record {i}: '{key}' {why}")
                    continue
                reason = check_value(columns[key], value)
                if reason:
                    errors.append(f"record {i}: '{key}' ({columns[key]}): {reason}, "
                                  f"got {json.dumps(value)[:80]}")
                    continue
                if isinstance(value, str) and len(value.encode("utf-8")) > MAX_FIELD_BYTES:
                    oversized += 1
                if key == "TimeGenerated" and isinstance(value, str):
                    t = parse_datetime(value)
                    if t < now - dt.timedelta(days=2) or t > now + dt.timedelta(days=1):
                        stale += 1
                clean[key] = value
            if require_all:
                missing = [c for c in columns if c not in rec]
                if missing:
                    errors.append(f"record {i}: missing columns {missing[:10]}")
            out.append(clean)
            if len(errors) >= 20:
                break
        if errors:
            raise BadRequestBody("Schema mismatch: " + "; ".join(errors[:20]))
        notes = {}
        if dropped:
            notes["dropped_columns"] = sorted(dropped)
        if oversized:
            notes["fields_over_64KB"] = oversized  # Azure truncates these
        if stale:
            notes["time_generated_replaced"] = stale  # Azure replaces with receive time
        return out, notes


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="fake_ingestion.py",
        description="Loopback fake of Entra ID client credentials, the IMDS managed-identity "
                    "token endpoint and the Azure Monitor Logs Ingestion API, for testing "
                    "depmap's azure_logs sink.",
        epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free)")
    p.add_argument("--outdir", help="directory for <stream>.ndjson and requests.ndjson "
                                    "(default: a new temporary directory, named on stderr)")
    p.add_argument("--dcr", default=str(DEFAULT_DCR),
                   help="DCR JSON whose streamDeclarations define the streams "
                        "(default packaging/azure/dcr.json of this repository)")
    p.add_argument("--dcr-id", action="append",
                   help=f"accepted DCR immutable id (repeatable; default {DEFAULT_DCR_ID})")
    p.add_argument("--tenant-id", default=DEFAULT_TENANT, help=f"default {DEFAULT_TENANT}")
    p.add_argument("--client-id", default=DEFAULT_CLIENT_ID, help=f"default {DEFAULT_CLIENT_ID}")
    p.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET,
                   help=f"default {DEFAULT_CLIENT_SECRET}")
    p.add_argument("--client-secret-file", help="read the client secret from this file "
                                                "(trailing newline stripped)")
    p.add_argument("--mi-client-id", default="",
                   help="user-assigned managed identity client_id that IMDS knows; a request "
                        "naming another client_id gets 400 (default: any)")
    p.add_argument("--token-lifetime", type=int, default=3599,
                   help="lifetime of issued tokens in seconds (default 3599)")
    p.add_argument("--fail-next", type=int, default=0, metavar="N",
                   help="the first N ingestion requests fail with --fail-status")
    p.add_argument("--fail-status", type=int, default=429, help="default 429")
    p.add_argument("--retry-after", type=int, default=None, metavar="S",
                   help="Retry-After seconds for --fail-next (default 1 for 429)")
    p.add_argument("--max-body-bytes", type=int, default=MAX_CALL_BYTES,
                   help=f"request size limit, compressed and uncompressed (default "
                        f"{MAX_CALL_BYTES}, the service's 1 MB)")
    p.add_argument("--require-all-columns", action="store_true",
                   help="400 when a record lacks a declared column")
    p.add_argument("--lenient-columns", action="store_true",
                   help="drop keys the stream does not declare, reserved ones included, "
                        "instead of answering 400 (Azure ignores undeclared keys)")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    args = p.parse_args(argv)
    if args.client_secret_file:
        args.client_secret = Path(args.client_secret_file).read_text().rstrip("\r\n")
    if args.token_lifetime < 1:
        p.error("--token-lifetime must be >= 1")
    if args.max_body_bytes < 1:
        p.error("--max-body-bytes must be >= 1")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        streams, flows = load_dcr(args.dcr)
    except DcrError as exc:
        sys.stderr.write(f"fake_ingestion: {exc}\n")
        return 2
    if args.outdir:
        Path(args.outdir).mkdir(parents=True, exist_ok=True)
    else:
        args.outdir = tempfile.mkdtemp(prefix="fake-ingestion-")
    state = State(args, streams, flows)
    handler = type("BoundHandler", (Handler,), {"state": state})
    try:
        server = Server((args.host, args.port), handler)
    except OSError as exc:
        sys.stderr.write(f"fake_ingestion: cannot bind {args.host}:{args.port}: {exc}\n")
        return 1
    state.port = server.server_address[1]

    stopping = threading.Event()

    def stop(signum, _frame):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write(f"fake_ingestion: outdir {args.outdir}; streams "
                     f"{', '.join(sorted(streams))}; dcr ids {', '.join(sorted(state.dcr_ids))}\n")
    sys.stdout.write(f"listening {state.port}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        state.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

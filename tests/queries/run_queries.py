#!/usr/bin/env python3
"""Runs the VM Insights sample queries of docs/queries.md with a real KQL engine (duckdb-kql on
DuckDB) over depmap's records, and checks every answer.

Usage:
    python run_queries.py RECORDS_DIR FACTS_JSON [--report OUT.md] [--doc docs/queries.md]
                          [--reference vminsights-log-query.md] [--now 2026-11-25T15:00:00Z]

RECORDS_DIR holds depmap's NDJSON files, `<Table>-<hour>-<seq>.ndjson`. Each of the four tables
is created with its Azure column types (string VARCHAR, int INTEGER, long BIGINT, real DOUBLE,
bool BOOLEAN, datetime TIMESTAMP in UTC, dynamic JSON); a table without files is created empty.
A null string is stored as "" (Kusto has no null strings); other nulls stay null. A record with
a column missing or unknown, a wrong `Type`, or a datetime that is not RFC 3339 UTC with
milliseconds is a load failure.

The queries come from docs/queries.md (the only copy, so the page and the test cannot drift):
one `### Qn. <title>` section per sample, the original in a ```kusto block and, where it cannot
run as it is, ```kusto-run <label> blocks with the query actually run (labels: substituted,
translated, corrected, intended, complement). Every block is run; each has an expectation below,
computed independently of the engine: plain DuckDB SQL over the same tables and the facts
(truths of the test bed). An original that cannot work must fail the way the page says.
`--reference` (optional) also compares titles and originals with the article's text. `--now`
pins `now()`/`ago()` (default: the clock when the script starts), to re-run saved records.

FACTS_JSON keys:
    computer            Computer of the test bed's VMComputer record        (string)   {{COMPUTER}}
    machine             Machine id, "m-" + AgentId                          (string)   {{MACHINE}}
    ip                  an IPv4 address of the machine                      (string)   {{IP}}
    sql_marker          substring of one process's command line holding "sql", e.g.
                        "fake-mysqld"; null when no such process ran   (string|null)
    physical_memory_mb  MemTotal of /proc/meminfo in MiB (kB // 1024)        (int)
    curl_version        dpkg version of curl; null when no curl process ran  (string|null)
    ports               list of {port, ip, process_name, bytes_sent, bytes_received,
                        links_established}: the truth for the VMBoundPort records of a server
                        port on a specific Ip (sums over the run; the server's view)
    links_failed        failed outbound connection attempts on the machine (int)
    boot_time           optional: the kernel boot time, RFC 3339 (string)

Prints one line per query: PASS|FAIL, id, title, rows per block, note. Writes a markdown report
with --report. Exits 1 if any check failed (including loading and parsing), 0 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

try:
    import duckdb
    import duckdb_kql
except ImportError as exc:  # pragma: no cover - environment problem
    print(f"FAIL setup: {exc} (needs duckdb and duckdb-kql)")
    sys.exit(1)

# --------------------------------------------------------------------------------------------
# Table schemas (Azure table references; service columns _BilledSize, _IsBillable,
# _SubscriptionId and TenantId are not produced by depmap).

S, I, L, B, R, T, D = "VARCHAR", "INTEGER", "BIGINT", "BOOLEAN", "DOUBLE", "TIMESTAMP", "JSON"

SCHEMAS: dict[str, list[tuple[str, str]]] = {
    "VMComputer": [
        ("AgentId", S), ("AzureCloudServiceDeployment", S), ("AzureCloudServiceInstanceId", S),
        ("AzureCloudServiceName", S), ("AzureCloudServiceRoleName", S),
        ("AzureCloudServiceRoleType", S), ("AzureFaultDomain", S), ("AzureImageOffering", S),
        ("AzureImagePublisher", S), ("AzureImageSku", S), ("AzureImageVersion", S),
        ("AzureLocation", S), ("AzureResourceGroup", S), ("AzureResourceName", S),
        ("AzureServiceFabricClusterId", S), ("AzureServiceFabricClusterName", S),
        ("AzureSize", S), ("AzureSubscriptionId", S), ("AzureUpdateDomain", S), ("AzureVmId", S),
        ("AzureVmScaleSetDeployment", S), ("AzureVmScaleSetInstanceId", S),
        ("AzureVmScaleSetName", S), ("AzureVmScaleSetResourceId", S), ("BootTime", T),
        ("Computer", S), ("Cpus", I), ("CpuSpeed", I), ("DependencyAgentVersion", S),
        ("DisplayName", S), ("DnsNames", D), ("FullDisplayName", S), ("HostingProvider", S),
        ("HostName", S), ("HypervisorId", S), ("HypervisorType", S), ("Ipv4Addresses", D),
        ("Ipv4DefaultGateways", D), ("Ipv4SubnetMasks", D), ("Ipv6Addresses", D),
        ("MacAddresses", D), ("Machine", S), ("OperatingSystemFamily", S),
        ("OperatingSystemFullName", S), ("PhysicalMemoryMB", L), ("_ResourceId", S),
        ("SourceSystem", S), ("TimeGenerated", T), ("TimeZone", S), ("Type", S),
        ("VirtualizationState", S), ("VirtualMachineHypervisorId", S),
        ("VirtualMachineNativeId", S), ("VirtualMachineNativeName", S),
        ("VirtualMachineType", S),
    ],
    "VMProcess": [
        ("AgentId", S), ("CommandLine", S), ("CompanyName", S), ("Computer", S),
        ("Description", S), ("DisplayName", S), ("ExecutableName", S), ("ExecutablePath", S),
        ("FileVersion", S), ("FirstPid", I), ("Group", S), ("InternalName", S), ("Machine", S),
        ("Process", S), ("ProductName", S), ("ProductVersion", S), ("_ResourceId", S),
        ("Role", S), ("Services", D), ("SourceSystem", S), ("StartTime", T),
        ("TimeGenerated", T), ("Type", S), ("UserDomain", S), ("UserName", S),
        ("WorkingDirectory", S),
    ],
    "VMConnection": [
        ("AgentId", S), ("BytesReceived", L), ("BytesSent", L), ("Computer", S),
        ("Confidence", S), ("ConnectionId", S), ("Description", S), ("DestinationIp", S),
        ("DestinationPort", I), ("Direction", S), ("FirstReportedDateTime", S),
        ("IndicatorThreatType", S), ("IsActive", S), ("LastReportedDateTime", S),
        ("LinksEstablished", L), ("LinksFailed", L), ("LinksLive", L), ("LinksTerminated", L),
        ("Machine", S), ("MaliciousIp", S), ("Process", S), ("ProcessName", S), ("Protocol", S),
        ("RemoteClassification", S), ("RemoteCountry", S), ("RemoteDnsCanonicalNames", S),
        ("RemoteDnsQuestions", S), ("RemoteIp", S), ("RemoteLatitude", R),
        ("RemoteLongitude", R), ("_ResourceId", S), ("Responses", L), ("ResponseTimeMax", L),
        ("ResponseTimeMin", L), ("ResponseTimeSum", L), ("Severity", I), ("SourceIp", S),
        ("SourceSystem", S), ("TimeGenerated", T), ("TLPLevel", S), ("Type", S),
    ],
    "VMBoundPort": [
        ("AgentId", S), ("BytesReceived", L), ("BytesSent", L), ("Computer", S), ("Ip", S),
        ("IsWildcardBind", B), ("LinksEstablished", L), ("LinksLive", L),
        ("LinksTerminated", L), ("Machine", S), ("Port", I), ("PortId", S), ("Process", S),
        ("ProcessName", S), ("Protocol", S), ("_ResourceId", S), ("Responses", L),
        ("ResponseTimeMax", L), ("ResponseTimeMin", L), ("ResponseTimeSum", L),
        ("SourceSystem", S), ("TimeGenerated", T), ("Type", S),
    ],
}

RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FILE_NAME = re.compile(r"^(VMComputer|VMProcess|VMConnection|VMBoundPort)-.*\.ndjson$")


def load_tables(con: Any, records_dir: Path) -> tuple[dict[str, int], list[str]]:
    """Creates the four tables and loads the NDJSON files. Returns row counts and problems."""
    problems: list[str] = []
    counts: dict[str, int] = {}
    files: dict[str, list[Path]] = {t: [] for t in SCHEMAS}
    if not records_dir.is_dir():
        problems.append(f"{records_dir} is not a directory")
    else:
        for p in sorted(records_dir.iterdir()):
            m = FILE_NAME.match(p.name)
            if m:
                files[m.group(1)].append(p)
    for table, cols in SCHEMAS.items():
        con.execute(
            f'CREATE TABLE "{table}" ('
            + ", ".join(f'"{c}" {ty}' for c, ty in cols)
            + ")"
        )
        names = [c for c, _ in cols]
        rows: list[list[Any]] = []
        for path in files[table]:
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    where = f"{path.name}:{n}"
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        problems.append(f"{where}: not JSON ({e})")
                        continue
                    missing = [c for c in names if c not in rec]
                    extra = [k for k in rec if k not in names]
                    if missing or extra:
                        problems.append(f"{where}: missing {missing} unknown {extra}")
                    if rec.get("Type") != table:
                        problems.append(f"{where}: Type {rec.get('Type')!r} in a {table} file")
                    row = []
                    for c, ty in cols:
                        v = rec.get(c)
                        try:
                            v = convert(v, ty)
                        except ValueError as e:
                            problems.append(f"{where}: {c}: {e}")
                            v = None
                        row.append(v)
                    rows.append(row)
        if rows:
            con.executemany(
                f'INSERT INTO "{table}" VALUES (' + ", ".join("?" * len(cols)) + ")", rows
            )
        counts[table] = len(rows)
    return counts, problems


def convert(v: Any, ty: str) -> Any:
    if ty == S:
        if v is None:
            return ""  # Kusto strings are never null: a null ingested reads as ""
        if not isinstance(v, str):
            raise ValueError(f"string expected, got {v!r}")
        return v
    if v is None:
        return None
    if ty == T:
        if not isinstance(v, str) or not RFC3339_MS.match(v):
            raise ValueError(f"datetime {v!r} is not RFC 3339 UTC with milliseconds")
        return dt.datetime.strptime(v, "%Y-%m-%dT%H:%M:%S.%fZ")
    if ty == D:
        return json.dumps(v)
    if ty in (I, L):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"integer expected, got {v!r}")
        return v
    if ty == R:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"number expected, got {v!r}")
        return float(v)
    if ty == B:
        if not isinstance(v, bool):
            raise ValueError(f"bool expected, got {v!r}")
        return v
    raise ValueError(f"unknown type {ty}")


# --------------------------------------------------------------------------------------------
# docs/queries.md

@dataclass
class Section:
    qid: str
    title: str
    original: str | None = None
    runs: list[tuple[str, str]] = field(default_factory=list)  # (label, text)
    problems: list[str] = field(default_factory=list)


HEADING = re.compile(r"^### (Q(\d+))\. (.+?)\s*$")


def parse_doc(text: str) -> tuple[list[Section], list[str]]:
    sections: list[Section] = []
    problems: list[str] = []
    cur: Section | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = HEADING.match(line)
        if m:
            cur = Section(m.group(1), m.group(3))
            sections.append(cur)
        elif line.startswith("## "):
            cur = None
        elif line.startswith("```"):
            info = line[3:].strip().split()
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if cur is not None and info:
                block = "\n".join(body)
                if info[0] == "kusto":
                    if cur.original is not None:
                        cur.problems.append("more than one kusto block")
                    cur.original = block
                elif info[0] == "kusto-run":
                    label = info[1] if len(info) > 1 else "run"
                    if any(lbl == label for lbl, _ in cur.runs):
                        cur.problems.append(f"two kusto-run {label} blocks")
                    cur.runs.append((label, block))
        i += 1
    ids = [s.qid for s in sections]
    if ids != [f"Q{n}" for n in range(1, 21)]:
        problems.append(f"sections are {ids}, expected Q1..Q20 in order")
    for s in sections:
        if s.original is None:
            s.problems.append("no kusto block")
    return sections, problems


def reference_queries(text: str) -> list[tuple[str, str]]:
    """(title, query) of the article's section 'Sample map queries'."""
    start = text.find("## Sample map queries")
    if start < 0:
        return []
    end = text.find("\n## ", start + 1)
    part = text[start:end if end > 0 else len(text)]
    out: list[tuple[str, str]] = []
    title = ""
    lines = part.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("**") and line.rstrip().endswith("**"):
            title = line.strip().strip("*")
        elif line.startswith("```kusto"):
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out.append((title, "\n".join(body)))
        i += 1
    return out


PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")


def substitute(text: str, values: dict[str, str]) -> str:
    def rep(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"unknown placeholder {{{{{key}}}}}")
        # Every placeholder sits inside a KQL string literal.
        return values[key].replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")

    return PLACEHOLDER.sub(rep, text)


# --------------------------------------------------------------------------------------------
# Results

class CheckFailed(Exception):
    pass


@dataclass
class Result:
    columns: list[str]
    rows: list[dict[str, Any]]

    def col(self, name: str) -> list[Any]:
        return [r[name] for r in self.rows]

    def tuples(self, *names: str) -> list[tuple[Any, ...]]:
        return [tuple(freeze(r[n]) for n in names) for r in self.rows]


def normalize(v: Any, ty: str) -> Any:
    if v is None:
        return None
    if ty == "JSON" and isinstance(v, str):
        return json.loads(v)
    if isinstance(v, dt.datetime) and v.tzinfo is not None:
        return v.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return v


def freeze(v: Any) -> Any:
    """Hashable form of a (JSON) value, for sets."""
    if isinstance(v, dict):
        return tuple(sorted((k, freeze(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(freeze(x) for x in v)
    return v


def fetch(rel: Any) -> Result:
    if rel is None:
        return Result([], [])
    cols = list(rel.columns)
    types = [str(t) for t in rel.types]
    rows = [
        {c: normalize(v, ty) for c, ty, v in zip(cols, types, row)} for row in rel.fetchall()
    ]
    return Result(cols, rows)


class Ctx:
    def __init__(self, con: Any, facts: dict[str, Any], now: dt.datetime):
        self.con = con
        self.facts = facts
        self.now = now  # naive UTC; the queries' now()

    def sql(self, query: str, params: list[Any] | None = None) -> Result:
        """Plain DuckDB SQL (no KQL involved)."""
        rel = self.con.sql(query, params=params) if params else self.con.sql(query)
        return fetch(rel)

    def one(self, query: str, params: list[Any] | None = None) -> Any:
        r = self.sql(query, params)
        return r.rows[0][r.columns[0]] if r.rows else None

    # facts
    @property
    def computer(self) -> str:
        return self.facts["computer"]

    @property
    def machine(self) -> str:
        return self.facts["machine"]

    def ports(self, loopback: bool | None = None) -> list[dict[str, Any]]:
        ps = self.facts["ports"]
        if loopback is None:
            return ps
        return [p for p in ps if p["ip"].startswith("127.") == loopback]

    def totals(self) -> tuple[int, int, int]:
        """The machine's VMConnection totals (bytes sent, received, links established) as the
        test bed made them: the server end of every port, and the client end of the loopback
        ports (on the same machine). Every connection of the test bed's namespace is a port's."""
        ports, lo = self.ports(), self.ports(loopback=True)
        sent = sum(p["bytes_sent"] for p in ports) + sum(p["bytes_received"] for p in lo)
        received = sum(p["bytes_received"] for p in ports) + sum(p["bytes_sent"] for p in lo)
        established = sum(p["links_established"] for p in ports + lo)
        return sent, received, established


def expect(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


def same_set(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]], what: str) -> None:
    g, w = sorted_multiset(got), sorted_multiset(want)
    if g != w:
        missing = [x for x in w if x not in g]
        extra = [x for x in g if x not in w]
        raise CheckFailed(f"{what}: missing {short(missing)}, unexpected {short(extra)}")


def sorted_multiset(xs: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(xs, key=repr)


def short(v: Any, n: int = 300) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def expect_sorted(res: Result, keys: list[tuple[str, bool]], what: str) -> None:
    """keys: (column, descending). Kusto puts nulls first ascending, last descending."""
    def cmp(a: dict[str, Any], b: dict[str, Any]) -> int:
        for k, desc in keys:
            x, y = a[k], b[k]
            if x == y:
                continue
            if x is None or y is None:  # asc: null first; desc: null last
                return (1 if x is None else -1) if desc else (-1 if x is None else 1)
            return (-1 if x < y else 1) * (-1 if desc else 1)
        return 0

    for a, b in zip(res.rows, res.rows[1:]):
        if cmp(a, b) > 0:
            raise CheckFailed(f"{what}: rows not in order {keys}: {short(a)} before {short(b)}")


def latest_candidates(ctx: Ctx, table: str, key: str, where: str = "TRUE",
                      params: list[Any] | None = None) -> dict[Any, list[dict[str, Any]]]:
    """Per key value, the records holding the key's max TimeGenerated (SQL)."""
    r = ctx.sql(
        f'SELECT * EXCLUDE (_last) FROM (SELECT *, max(TimeGenerated) OVER '
        f'(PARTITION BY "{key}") AS _last FROM "{table}" t WHERE {where}) '
        f'WHERE TimeGenerated = _last',
        params,
    )
    out: dict[Any, list[dict[str, Any]]] = {}
    for row in r.rows:
        out.setdefault(row[key], []).append(row)
    return out


def check_arg_max(ctx: Ctx, res: Result, table: str, key: str, where: str = "TRUE",
                  params: list[Any] | None = None) -> None:
    """res is `T | where ... | summarize arg_max(TimeGenerated, *) by key`."""
    cand = latest_candidates(ctx, table, key, where, params)
    want_cols = [key, "TimeGenerated"] + [c for c, _ in SCHEMAS[table]
                                          if c not in (key, "TimeGenerated")]
    expect(res.columns == want_cols, f"columns {res.columns}, expected {want_cols}")
    got_keys = res.col(key)
    expect(len(got_keys) == len(set(got_keys)), f"more than one row per {key}")
    same_set([(k,) for k in got_keys], [(k,) for k in cand], f"{key} values")
    for row in res.rows:
        if not any(all(freeze(row[c]) == freeze(rec[c]) for c in rec) for rec in cand[row[key]]):
            diff = {c: (row[c], cand[row[key]][0][c]) for c in cand[row[key]][0]
                    if freeze(row[c]) != freeze(cand[row[key]][0][c])}
            raise CheckFailed(f"{key}={row[key]}: not its latest record; differs in {short(diff)}")


def rows_note(res: Result) -> str:
    return f"{len(res.rows)} row" + ("" if len(res.rows) == 1 else "s")


def string_dynamic_columns(table: str) -> list[str]:
    return [c for c, ty in SCHEMAS[table] if ty in (S, D)]


def check_search_translation(query: str, table: str, op: str) -> None:
    """A `search in (T)` translation must test every string and dynamic column of T."""
    missing = [c for c in string_dynamic_columns(table)
               if not re.search(rf"(?<![\w]){re.escape(c)} {op} term\b", query)]
    expect(not missing, f"the translation of search skips columns {missing}")


# --------------------------------------------------------------------------------------------
# The checks, one per block. Each returns a short note or raises CheckFailed.

@dataclass
class Fails:
    """The block must fail in the engine, with an error matching `pattern`."""
    pattern: str
    why: str


@dataclass
class Empty:
    """The block must return no rows (and SQL must agree that nothing matches)."""
    sql_count: str
    why: str


def q1(ctx: Ctx, res: Result, q: str) -> str:
    check_arg_max(ctx, res, "VMComputer", "_ResourceId")
    expect(len(res.rows) == 1, f"{len(res.rows)} machines, the test bed has 1")
    row = res.rows[0]
    expect(row["Machine"] == ctx.machine, f"Machine {row['Machine']} != {ctx.machine}")
    expect(row["Computer"] == ctx.computer, f"Computer {row['Computer']} != {ctx.computer}")
    return "the machine's latest VMComputer record"


def q2(ctx: Ctx, res: Result, q: str) -> str:
    want = ctx.sql('SELECT DISTINCT Computer, BootTime FROM VMComputer')
    same_set(res.tuples("Computer", "BootTime"), want.tuples("Computer", "BootTime"),
             "(Computer, BootTime)")
    now = ctx.now
    for row in res.rows:
        if row["BootTime"] is None:
            continue
        since = row["DaysSinceBoot"]
        expect(isinstance(since, dt.timedelta), f"DaysSinceBoot {since!r} is not a timespan")
        expect(since == now - row["BootTime"], f"DaysSinceBoot {since} != now - BootTime")
    expect_sorted(res, [("BootTime", False)], "sort by BootTime asc")
    note = "BootTime per machine, DaysSinceBoot = now - BootTime"
    expect(bool(ctx.facts.get("boot_time")), "the facts lack the kernel's boot time")
    if ctx.facts.get("boot_time"):
        truth = dt.datetime.fromisoformat(ctx.facts["boot_time"].replace("Z", "+00:00"))
        truth = truth.astimezone(dt.timezone.utc).replace(tzinfo=None)
        mine = [r for r in res.rows if r["Computer"] == ctx.computer]
        expect(bool(mine) and all(r["BootTime"] is not None for r in mine),
               "no BootTime for the machine")
        expect(all(abs(r["BootTime"] - truth) <= dt.timedelta(seconds=1) for r in mine),
               f"BootTime {mine[0]['BootTime']} != boot time {truth}")
        note += " = the kernel's boot time"
    return note


AZ_SUMMARY = ["Computer", "AzureImageOffering", "AzureLocation", "AzureImageSku"]


@dataclass
class Rows:
    """A block checked as data: its columns, the same rows by plain DuckDB SQL over the same
    tables (what the query means, independent of the KQL engine), its order, and then the test
    bed's truth (`truth` raises CheckFailed or returns the note). Blocks without a truth are
    the samples whose answer is about records (counts of them), not about the traffic."""
    columns: list[str]
    sql: str
    params: Callable[[Ctx], list[Any]] | None = None
    order: list[tuple[str, bool]] = field(default_factory=list)
    truth: Callable[[Ctx, Result], str] | None = None
    check_columns: bool = True

    def __call__(self, ctx: Ctx, res: Result, q: str) -> str:
        if self.check_columns:
            expect(res.columns == self.columns, f"columns {res.columns}, expected {self.columns}")
        want = ctx.sql(self.sql, self.params(ctx) if self.params else None)
        same_set(res.tuples(*self.columns), want.tuples(*want.columns), "rows against SQL")
        if self.order:
            expect_sorted(res, self.order, f"order {self.order}")
        return self.truth(ctx, res) if self.truth else "= SQL (records, not traffic)"


def only(ctx: Ctx, res: Result, column: str) -> list[Any]:
    """`column` of the test bed machine's rows."""
    return [r[column] for r in res.rows if r["Computer"] == ctx.computer]


def truth_no_azure(ctx: Ctx, res: Result) -> str:
    expect(not res.rows, f"{len(res.rows)} rows for machines with an Azure location")
    return "no Azure location: no rows"


def truth_not_azure(ctx: Ctx, res: Result) -> str:
    expect(res.tuples(*AZ_SUMMARY) == [(ctx.computer, "", "", "")],
           f"rows {res.tuples(*AZ_SUMMARY)} != the machine with empty Azure columns")
    return "the machine, Azure columns empty"


def q4(ctx: Ctx, res: Result, q: str) -> str:
    n = ctx.one("SELECT count(DISTINCT _ResourceId) FROM VMComputer")
    expect(len(res.rows) == n, f"{len(res.rows)} rows, {n} machines")
    expect(res.columns == ["PhysicalMemoryMB", "Computer"], f"columns {res.columns}")
    mine = [r for r in res.rows if r["Computer"] == ctx.computer]
    expect(len(mine) == 1, f"{len(mine)} rows for {ctx.computer}")
    want = ctx.facts["physical_memory_mb"]
    expect(mine[0]["PhysicalMemoryMB"] == want,
           f"PhysicalMemoryMB {mine[0]['PhysicalMemoryMB']} != MemTotal {want} MB")
    return f"PhysicalMemoryMB = MemTotal ({want})"


def q5(ctx: Ctx, res: Result, q: str) -> str:
    cols = ["Computer", "OperatingSystemFullName", "DnsNames", "Ipv4Addresses"]
    expect(res.columns == cols, f"columns {res.columns}")
    cand = latest_candidates(ctx, "VMComputer", "_ResourceId")
    want = [tuple(freeze(recs[0][c]) for c in cols) for recs in cand.values()]
    same_set(res.tuples(*cols), want, "rows")
    mine = [r for r in res.rows if r["Computer"] == ctx.computer]
    expect(len(mine) == 1, f"{len(mine)} rows for {ctx.computer}")
    ips = mine[0]["Ipv4Addresses"]
    expect(isinstance(ips, list) and ctx.facts["ip"] in ips,
           f"Ipv4Addresses {ips} lacks {ctx.facts['ip']}")
    expect(isinstance(mine[0]["DnsNames"], list) and mine[0]["DnsNames"], "DnsNames empty")
    expect(mine[0]["OperatingSystemFullName"] != "", "OperatingSystemFullName empty")
    return f"Ipv4Addresses holds {ctx.facts['ip']}, DnsNames and OS set"


def q6(ctx: Ctx, res: Result, q: str) -> str:
    check_arg_max(ctx, res, "VMProcess", "_ResourceId", "contains(t.CommandLine, 'sql')")
    marker = ctx.facts.get("sql_marker")
    if marker:
        expect(any(marker in r["CommandLine"] for r in res.rows),
               f"no process with {marker!r} in its command line")
        return f"the {marker} process among {rows_note(res)}"
    return "no process with sql in its command line" if not res.rows else "matches SQL"


def q7(ctx: Ctx, res: Result, q: str) -> str:
    check_search_translation(q, "VMComputer", "has")
    check_arg_max(ctx, res, "VMComputer", "_ResourceId", "t.Machine = ?", [ctx.machine])
    expect(len(res.rows) == 1 and res.rows[0]["Machine"] == ctx.machine,
           f"expected the one record set of {ctx.machine}")
    return f"found {ctx.machine}"


def q8(ctx: Ctx, res: Result, q: str) -> str:
    check_search_translation(q, "VMComputer", "has")
    ip = ctx.facts["ip"]
    check_arg_max(ctx, res, "VMComputer", "_ResourceId",
                  "list_contains(from_json(t.Ipv4Addresses, '[\"VARCHAR\"]'), ?)", [ip])
    expect(len(res.rows) == 1 and res.rows[0]["Machine"] == ctx.machine,
           f"expected one row, {ctx.machine}")
    return f"found {ctx.machine} by {ip}"


def q9(ctx: Ctx, res: Result, q: str) -> str:
    check_arg_max(ctx, res, "VMProcess", "_ResourceId", "t.Machine = ?", [ctx.machine])
    names = set(res.col("ExecutableName"))
    for p in ctx.ports():
        expect(p["process_name"] in names, f"no process {p['process_name']} (port {p['port']})")
    marker = ctx.facts.get("sql_marker")
    if marker:
        expect(any(marker in r["CommandLine"] for r in res.rows), f"no {marker} process")
    if ctx.facts.get("curl_version"):
        expect("curl" in names, "no curl process")
    return "the port owners" + (", the sql server" if marker else "") + (
        ", curl" if ctx.facts.get("curl_version") else "")


def sql_any_contains(table: str, needle: str) -> str:
    return " OR ".join(
        f"contains(lower(CAST(\"{c}\" AS VARCHAR)), '{needle}')"
        for c in string_dynamic_columns(table)
    )


def q10(ctx: Ctx, res: Result, q: str, key: str) -> str:
    check_search_translation(q, "VMProcess", "contains")
    want = ctx.sql(
        f"SELECT DISTINCT Computer FROM VMComputer WHERE {key} IN "
        f"(SELECT Machine FROM VMProcess WHERE {sql_any_contains('VMProcess', 'sql')})"
    )
    same_set(res.tuples("Computer"), want.tuples("Computer"), "computers")
    if key == "Machine" and ctx.facts.get("sql_marker"):
        expect(ctx.computer in res.col("Computer"), f"{ctx.computer} missing")
        return f"{ctx.computer} (runs {ctx.facts['sql_marker']})"
    if key == "AzureResourceName" and not res.rows:
        return "no rows: AzureResourceName is never a Machine id"
    return f"= SQL ({rows_note(res)})"


def truth_some_rows(ctx: Ctx, res: Result) -> str:
    expect(bool(res.rows), "no rows for the machine in the last 24 h")
    return "distinct counter values per hour = SQL (values, not traffic)"


def truth_curl(ctx: Ctx, res: Result) -> str:
    version = ctx.facts.get("curl_version")
    if version:
        expect(res.col("ProductVersion") == [version],
               f"versions {res.col('ProductVersion')} != [{version!r}] (dpkg)")
        return f"curl {version} = dpkg's"
    expect(not res.rows, "no curl ran, yet rows")
    return "no curl ran: no rows"


def truth_bytes(ctx: Ctx, res: Result) -> str:
    sent, recv = sum(only(ctx, res, "sum_BytesSent")), sum(only(ctx, res, "sum_BytesReceived"))
    truth_sent, truth_recv, _ = ctx.totals()
    expect((sent, recv) == (truth_sent, truth_recv),
           f"sent/received {sent}/{recv} != the test bed's {truth_sent}/{truth_recv}")
    return f"{sent} B sent, {recv} B received = the test bed's"


def truth_join_count(ctx: Ctx, res: Result) -> str:
    n_conn = ctx.one("SELECT count(*) FROM VMConnection WHERE Computer = ?", [ctx.computer])
    n_comp = ctx.one("SELECT count(*) FROM VMComputer WHERE Computer = ?", [ctx.computer])
    got = sum(only(ctx, res, "count_BytesSent"))
    expect(got == n_conn * n_comp,
           f"count_BytesSent {got} != {n_conn} connection x {n_comp} computer records")
    return f"count_BytesSent = {n_conn} connection x {n_comp} computer records (a join, not bytes)"


def truth_bytes_sent(ctx: Ctx, res: Result) -> str:
    mine, truth = only(ctx, res, "BytesSent"), ctx.totals()[0]
    expect(mine == [truth], f"BytesSent {mine} != the test bed's [{truth}]")
    return f"{ctx.computer}: {truth} B sent = the test bed's"


def truth_links(ctx: Ctx, res: Result) -> str:
    failed = sum(res.col("sum_LinksFailed"))
    expect(failed == ctx.facts["links_failed"],
           f"sum_LinksFailed {failed} != {ctx.facts['links_failed']} failed attempts")
    est, terminated = sum(res.col("sum_LinksEstablished")), sum(res.col("sum_LinksTerminated"))
    truth = ctx.totals()[2]
    expect((est, terminated) == (truth, truth),
           f"established/terminated {est}/{terminated} != the test bed's {truth} (all closed)")
    return f"{failed} failed = the refused attempts; {est} established, {terminated} terminated"


def truth_failures(ctx: Ctx, res: Result) -> str:
    failed = sum(res.col("failCount"))
    expect(failed == ctx.facts["links_failed"],
           f"failCount {failed} != {ctx.facts['links_failed']} failed attempts")
    return f"failCount = {failed} = the refused attempts"


def truth_ports(ctx: Ctx, res: Result) -> str:
    got = set(res.tuples("Port", "ProcessName"))
    truth = {(p["port"], p["process_name"]) for p in ctx.ports()}
    expect(got == truth, f"ports {sorted(got)} != the servers' {sorted(truth)}")
    return "the servers' ports " + ", ".join(str(p["port"]) for p in ctx.ports())


def truth_open_ports(ctx: Ctx, res: Result) -> str:
    mine = [r["OpenPorts"] for r in res.rows if r["Machine"] == ctx.machine]
    truth = len({p["port"] for p in ctx.ports(loopback=False)})
    expect(mine == [truth], f"OpenPorts {mine} != [{truth}] servers off loopback")
    return f"OpenPorts = {truth} server(s) off loopback"


def truth_ports_per_process(ctx: Ctx, res: Result) -> str:
    truth: dict[str, int] = {}
    for p in ctx.ports(loopback=False):
        truth[p["process_name"]] = truth.get(p["process_name"], 0) + 1
    got = dict(res.tuples("ProcessName", "OpenPorts"))
    expect(got == truth, f"open ports per process {got} != the servers' {truth}")
    return ", ".join(f"{n}: {k}" for n, k in truth.items())


LAST_DAY = "TimeGenerated >= ?::TIMESTAMP - INTERVAL 24 HOUR AND Computer = ?"


def last_day(ctx: Ctx) -> list[Any]:
    return [ctx.now, ctx.computer]


def of_machine(ctx: Ctx) -> list[Any]:
    return [ctx.computer]


LINKS = ["LinksEstablished", "LinksFailed", "LinksTerminated"]
DCOUNTED = ["LinksEstablished", "LinksLive", "LinksFailed", "LinksTerminated"]
OFF_LOOPBACK = "FROM VMBoundPort WHERE Ip <> '127.0.0.1'"

Q3 = Rows(AZ_SUMMARY, f"SELECT DISTINCT {', '.join(AZ_SUMMARY)} FROM VMComputer "
          "WHERE AzureLocation <> ''", truth=truth_no_azure, check_columns=False)
Q3_COMPLEMENT = Rows(AZ_SUMMARY, f"SELECT DISTINCT {', '.join(AZ_SUMMARY)} FROM VMComputer "
                     "WHERE AzureLocation = ''", truth=truth_not_azure, check_columns=False)
Q11 = Rows(["ProductVersion"], "SELECT DISTINCT ProductVersion FROM VMProcess "
           "WHERE ExecutableName = 'curl'", truth=truth_curl, check_columns=False)
Q12 = Rows(["TimeGenerated", "Computer", "sum_BytesSent", "sum_BytesReceived"],
           "SELECT time_bucket(INTERVAL 1 hour, TimeGenerated), Computer, sum(BytesSent), "
           "sum(BytesReceived) FROM VMConnection GROUP BY ALL",
           order=[("Computer", True)], truth=truth_bytes)
Q13_CORRECTED = Rows(["Computer", "AzureSize", "count_BytesSent"],
                     "SELECT c.Computer, m.AzureSize, count(*) FROM VMConnection c "
                     "FULL OUTER JOIN VMComputer m ON c.Computer = m.Computer GROUP BY ALL",
                     order=[("count_BytesSent", True)], truth=truth_join_count)
Q13_INTENDED = Rows(["Computer", "AzureSize", "BytesSent"],
                    "SELECT c.Computer, (SELECT m.AzureSize FROM VMComputer m WHERE m.Computer = "
                    "c.Computer ORDER BY m.TimeGenerated DESC LIMIT 1), sum(c.BytesSent) "
                    "FROM VMConnection c GROUP BY c.Computer",
                    order=[("BytesSent", True)], truth=truth_bytes_sent)
Q14_SUBSTITUTED = Rows(["TimeGenerated"] + [f"dcount_{n}" for n in DCOUNTED],
                       "SELECT time_bucket(INTERVAL 1 hour, TimeGenerated), "
                       + ", ".join(f"count(DISTINCT {n})" for n in DCOUNTED)
                       + f" FROM VMConnection WHERE {LAST_DAY} GROUP BY 1", params=last_day,
                       truth=truth_some_rows)
Q14_CORRECTED = Rows(["TimeGenerated"] + [f"sum_{n}" for n in LINKS],
                     "SELECT time_bucket(INTERVAL 1 hour, TimeGenerated), "
                     + ", ".join(f"coalesce(sum({n}), 0)" for n in LINKS)
                     + f" FROM VMConnection WHERE {LAST_DAY} GROUP BY 1",
                     params=last_day, truth=truth_links)
Q15_SUBSTITUTED = Rows(["bythehour", "failCount"],
                       "SELECT hour(TimeGenerated), count(*) FROM VMConnection "
                       "WHERE Computer = ? GROUP BY 1", params=of_machine,
                       order=[("bythehour", False)])
Q15_CORRECTED = Rows(["bythehour", "failCount"],
                     "SELECT hour(TimeGenerated), coalesce(sum(LinksFailed), 0) FROM VMConnection "
                     "WHERE Computer = ? GROUP BY 1", params=of_machine,
                     order=[("bythehour", False)], truth=truth_failures)
Q16 = Rows(["Port", "ProcessName"],
           f"SELECT DISTINCT Port, ProcessName FROM VMBoundPort WHERE {LAST_DAY}",
           params=last_day, truth=truth_ports, check_columns=False)
Q17 = Rows(["Computer", "Machine", "OpenPorts"],
           "SELECT Computer, Machine, count(*) FROM (SELECT DISTINCT Computer, Machine, Port, "
           f"Protocol {OFF_LOOPBACK}) GROUP BY ALL",
           order=[("OpenPorts", True)], truth=truth_open_ports)
Q18 = Rows(["ProcessName", "OpenPorts"],
           f"SELECT ProcessName, count(*) FROM (SELECT DISTINCT ProcessName, Port, Protocol "
           f"{OFF_LOOPBACK}) GROUP BY ALL",
           order=[("OpenPorts", True)], truth=truth_ports_per_process)


Q19_KEYS = ["Machine", "Computer", "ProcessName", "Ip", "Port", "IsWildcardBind"]


def q19(ctx: Ctx, res: Result, q: str, loopback: bool = False) -> str:
    """The original (Ip != 127.0.0.1) or its complement (Ip == 127.0.0.1)."""
    ip_filter = "Ip = '127.0.0.1'" if loopback else "Ip <> '127.0.0.1'"
    sums = ["BytesSent", "BytesReceived", "LinksEstablished", "LinksTerminated"]
    expect(res.columns == Q19_KEYS + sums + ["LinksLive"], f"columns {res.columns}")
    keys = ", ".join(Q19_KEYS)
    want = ctx.sql(
        f"WITH b AS (SELECT * FROM VMBoundPort WHERE {ip_filter}), "
        f"g AS (SELECT {keys}, " + ", ".join(f"sum({s}) AS {s}" for s in sums)
        + f", max(TimeGenerated) AS last FROM b GROUP BY ALL) "
        f"SELECT g.*, (SELECT list(DISTINCT b.LinksLive) FROM b WHERE b.TimeGenerated = g.last AND "
        + " AND ".join(f"b.{k} = g.{k}" for k in Q19_KEYS) + ") AS lives FROM g"
    )
    same_set(res.tuples(*Q19_KEYS, *sums), want.tuples(*Q19_KEYS, *sums), "sums per port")
    lives = {tuple(freeze(w[k]) for k in Q19_KEYS): w["lives"] for w in want.rows}
    for r in res.rows:
        k = tuple(freeze(r[c]) for c in Q19_KEYS)
        expect(r["LinksLive"] in (lives.get(k) or []),
               f"LinksLive {r['LinksLive']} of {k} is not the latest window's {lives.get(k)}")
    expect_sorted(res, [(c, True) for c in ["Machine", "Computer", "Port", "Ip", "ProcessName"]],
                  "order by ... (descending)")
    for p in ctx.ports(loopback=loopback):
        mine = [r for r in res.rows if r["Machine"] == ctx.machine and r["Ip"] == p["ip"]
                and r["Port"] == p["port"]]
        expect(len(mine) == 1, f"{len(mine)} rows for {p['ip']}:{p['port']}")
        r = mine[0]
        got = (r["ProcessName"], r["BytesSent"], r["BytesReceived"], r["LinksEstablished"])
        truth = (p["process_name"], p["bytes_sent"], p["bytes_received"], p["links_established"])
        expect(got == truth, f"{p['ip']}:{p['port']} (name, sent, received, established) "
                             f"{got} != truth {truth}")
    expect(all((r["Ip"] == "127.0.0.1") == loopback for r in res.rows),
           "127.0.0.1 rows " + ("missing" if loopback else "not filtered out"))
    shown = ", ".join(f"{p['ip']}:{p['port']} {p['bytes_sent']}/{p['bytes_received']} B "
                      f"{p['links_established']} link(s)" for p in ctx.ports(loopback=loopback))
    return f"= truth for {shown}"


Q20_GROUP = ["ConnectionId", "Direction", "Machine", "Process", "ProcessName", "SourceIp",
             "DestinationIp", "DestinationPort", "Protocol"]


def q20(ctx: Ctx, res: Result, q: str, monitored_by: str) -> str:
    """Recomputes the sample's answer in Python from SQL rows, following its text step by step."""
    machines = {ctx.machine}
    expect(res.columns == Q20_GROUP + ["Remote"], f"columns {res.columns}")
    out = [recs[0] for recs in latest_candidates(
        ctx, "VMConnection", "ConnectionId", "t.Machine = ?", [ctx.machine]).values()]
    ipmap: dict[str, set[str]] = {}
    for row in ctx.sql(f"SELECT {monitored_by} AS mm, Ipv4Addresses FROM VMComputer").rows:
        for ip in row["Ipv4Addresses"] or []:
            ipmap.setdefault(ip, set()).add(row["mm"])
    pairs = []  # (connection, RemoteMachine)
    for o in out:
        if o["RemoteIp"].startswith("127."):
            pairs.append((o, o["Machine"]))
        else:
            for rm in sorted(ipmap.get(o["RemoteIp"], {""})):
                pairs.append((o, rm))
    remote_machines = {rm for o, rm in pairs if not o["RemoteIp"].startswith("127.")}
    ports = [recs[0] for recs in latest_candidates(ctx, "VMBoundPort", "PortId").values()
             if recs[0]["Machine"] in remote_machines]
    want: dict[tuple[Any, ...], set[Any]] = {}
    for o, rm in pairs:
        if not (o["Direction"] == "outbound" or (o["Direction"] == "inbound"
                                                 and rm not in machines)):
            continue
        key = tuple(o[c] for c in Q20_GROUP)
        elems = want.setdefault(key, set())
        if rm == "":
            elems.add(freeze({}))
            continue
        rport = o["DestinationPort"] if o["Direction"] == "outbound" else 0
        hits = [p for p in ports if (p["Machine"], p["Ip"], p["Port"], p["Protocol"])
                == (rm, o["RemoteIp"], rport, o["Protocol"])]
        for p in hits or [{"Process": "", "ProcessName": ""}]:
            elems.add(freeze({"Machine": rm, "Process": p["Process"],
                              "ProcessName": p["ProcessName"]}))

    def blank(v: Any) -> Any:  # outer-join misses: NULL in this engine, "" in Kusto
        if isinstance(v, dict):
            return {k: ("" if x is None else x) for k, x in v.items()}
        return v

    got = {tuple(r[c] for c in Q20_GROUP): {freeze(blank(e)) for e in r["Remote"]}
           for r in res.rows}
    expect(len(got) == len(res.rows), "two rows for one connection")
    same_set(list(got), list(want), "connections")
    for k in want:
        expect(got[k] == want[k], f"{k[0]}: Remote {short(got[k])} != {short(want[k])}")
    # Truths of the test bed.
    for p in ctx.ports(loopback=True):
        hits = [r for r in res.rows if r["Direction"] == "outbound" and r["DestinationPort"] ==
                p["port"] and r["DestinationIp"] == p["ip"]]
        expect(bool(hits), f"no outbound connection to {p['ip']}:{p['port']}")
        expect(all(any(e.get("Machine") == ctx.machine for e in r["Remote"]) for r in hits),
               f"the connection to {p['ip']}:{p['port']} lacks Remote Machine {ctx.machine}")
    for p in ctx.ports(loopback=False):
        hits = [r for r in res.rows if r["Direction"] == "inbound" and r["DestinationPort"] ==
                p["port"] and r["DestinationIp"] == p["ip"]]
        expect(bool(hits), f"no inbound connection on {p['ip']}:{p['port']}")
    expect(not any(r["Direction"] == "inbound" and r["SourceIp"].startswith("127.")
                   for r in res.rows), "a loopback inbound connection was kept")
    return (f"{sum(1 for r in res.rows if r['Direction'] == 'outbound')} outbound, "
            f"{sum(1 for r in res.rows if r['Direction'] == 'inbound')} inbound from unmonitored")


SEARCH = Fails("SearchOperator", "search is not implemented")
EXPECTATIONS: dict[str, dict[str, Any]] = {
    "Q1": {"original": q1},
    "Q2": {"original": q2},
    "Q3": {"original": Q3, "complement": Q3_COMPLEMENT},
    "Q4": {"original": q4},
    "Q5": {"original": q5},
    "Q6": {"original": q6},
    "Q7": {"original": SEARCH, "translated": q7},
    "Q8": {"original": SEARCH, "translated": q8},
    "Q9": {"original": Empty("SELECT count(*) FROM VMProcess WHERE Machine = "
                             "'m-559dbcd8-3130-454d-8d1d-f624e57961bc'", "the sample's machine"),
           "substituted": q9},
    "Q10": {"original": SEARCH,
            "translated": lambda c, r, q: q10(c, r, q, "AzureResourceName"),
            "corrected": lambda c, r, q: q10(c, r, q, "Machine")},
    "Q11": {"original": Q11},
    "Q12": {"original": Q12},
    "Q13": {"original": Fails("aggregate:BytesSent", "count(Expr) has no mapping"),
            "translated": Fails("AzureVMSize", "no column AzureVMSize"),
            "corrected": Q13_CORRECTED, "intended": Q13_INTENDED},
    "Q14": {"original": Empty("SELECT count(*) FROM VMConnection WHERE Computer = 'acme-demo'",
                              "the sample's computer"),
            "substituted": Q14_SUBSTITUTED, "corrected": Q14_CORRECTED},
    "Q15": {"original": Empty("SELECT count(*) FROM VMConnection WHERE Computer = 'acme-demo'",
                              "the sample's computer"),
            "substituted": Q15_SUBSTITUTED, "corrected": Q15_CORRECTED},
    "Q16": {"original": Empty("SELECT count(*) FROM VMBoundPort WHERE Computer = 'admdemo-appsvr'",
                              "the sample's computer"),
            "substituted": Q16},
    "Q17": {"original": Q17},
    "Q18": {"original": Q18},
    "Q19": {"original": q19, "complement": lambda c, r, q: q19(c, r, q, loopback=True)},
    "Q20": {"original": Fails("makeset", "makeset has no mapping"),
            "translated": lambda c, r, q: q20(c, r, q, "AzureResourceName"),
            "corrected": lambda c, r, q: q20(c, r, q, "Machine")},
}


# --------------------------------------------------------------------------------------------
# Running

@dataclass
class RunOutcome:
    label: str
    query: str
    ok: bool
    summary: str  # "1 row", "error (...)"
    note: str
    result: Result | None = None
    error: str | None = None


def one_line(s: str, n: int = 160) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def run_block(ctx: Ctx, label: str, query: str, exp: Any) -> RunOutcome:
    try:
        res = fetch(duckdb_kql.kql(ctx.con, query, query_now=ctx.now))
        err = None
    except Exception as e:  # noqa: BLE001 - any engine error is an answer to check
        res, err = None, f"{type(e).__name__}: {e}"
    if isinstance(exp, Fails):
        if err is None:
            return RunOutcome(label, query, False, rows_note(res), f"expected an error ({exp.why})",
                              res)
        if exp.pattern not in err:
            return RunOutcome(label, query, False, "error",
                              f"expected an error matching {exp.pattern!r}, got {one_line(err)}",
                              error=err)
        return RunOutcome(label, query, True, "error", exp.why, error=err)
    if err is not None:
        return RunOutcome(label, query, False, "error", one_line(err), error=err)
    assert res is not None
    try:
        if isinstance(exp, Empty):
            n = ctx.one(exp.sql_count)
            expect(n == 0, f"SQL finds {n} records for {exp.why}")
            expect(not res.rows, f"{len(res.rows)} rows, expected none ({exp.why})")
            note = f"no rows ({exp.why})"
        else:
            note = exp(ctx, res, query)
        return RunOutcome(label, query, True, rows_note(res), note, res)
    except CheckFailed as e:
        return RunOutcome(label, query, False, rows_note(res), str(e), res)
    except Exception as e:  # noqa: BLE001 - a broken check is a failure, not a crash
        return RunOutcome(label, query, False, rows_note(res),
                          f"check raised {type(e).__name__}: {one_line(str(e))}", res)


def fmt_value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        s = json.dumps(v, separators=(",", ":"))
    elif isinstance(v, dt.datetime):
        s = v.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    else:
        s = "" if v is None else str(v)
    s = s.replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= 60 else s[:57] + "..."


def md_table(res: Result, limit: int = 10) -> list[str]:
    cols = res.columns
    if len(cols) > 8:
        cols = cols[:8]
    out = ["| " + " | ".join(cols) + (" | …" if len(res.columns) > 8 else "") + " |",
           "|" + "---|" * (len(cols) + (1 if len(res.columns) > 8 else 0))]
    for row in res.rows[:limit]:
        out.append("| " + " | ".join(fmt_value(row[c]) for c in cols)
                   + (" | …" if len(res.columns) > 8 else "") + " |")
    if len(res.rows) > limit:
        out.append(f"\n({len(res.rows) - limit} more rows)")
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records_dir", type=Path)
    ap.add_argument("facts_json", type=Path)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--doc", type=Path,
                    default=Path(__file__).resolve().parents[2] / "docs" / "queries.md")
    ap.add_argument("--reference", type=Path,
                    help="the article's markdown, to compare titles and originals with")
    ap.add_argument("--now", help="RFC 3339 UTC time for now()/ago(); default: the clock")
    args = ap.parse_args(argv)
    if args.now:
        now = dt.datetime.fromisoformat(args.now.replace("Z", "+00:00"))
        now = now.astimezone(dt.timezone.utc).replace(tzinfo=None) if now.tzinfo else now
    else:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)

    failures = 0
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    try:
        facts = json.loads(args.facts_json.read_text())
        need = ["computer", "machine", "ip", "sql_marker", "physical_memory_mb", "curl_version",
                "ports", "links_failed"]
        missing = [k for k in need if k not in facts]
        if missing:
            raise ValueError(f"missing keys {missing}")
        for p in facts["ports"]:
            for k in ["port", "ip", "process_name", "bytes_sent", "bytes_received",
                      "links_established"]:
                if k not in p:
                    raise ValueError(f"port {p} lacks {k}")
    except (OSError, ValueError) as e:
        emit(f"FAIL facts {args.facts_json}: {e}")
        return 1

    try:
        doc_text = args.doc.read_text(encoding="utf-8")
    except OSError as e:
        emit(f"FAIL doc {args.doc}: {e}")
        return 1
    sections, doc_problems = parse_doc(doc_text)
    for p in doc_problems:
        emit(f"FAIL doc {p}")
        failures += 1
    if args.reference:
        ref = reference_queries(args.reference.read_text(encoding="utf-8"))
        if len(ref) != len(sections):
            emit(f"FAIL reference has {len(ref)} queries, the page {len(sections)}")
            failures += 1
        for s, (title, query) in zip(sections, ref):
            if s.title != title or (s.original or "").strip() != query.strip():
                emit(f"FAIL reference {s.qid}: title or original differs from the article")
                failures += 1

    con = duckdb_kql.connect()
    counts, load_problems = load_tables(con, args.records_dir)
    for p in load_problems[:20]:
        emit(f"FAIL load {p}")
    if len(load_problems) > 20:
        emit(f"FAIL load ... {len(load_problems) - 20} more problems")
    failures += len(load_problems)
    ctx = Ctx(con, facts, now)
    values = {"COMPUTER": facts["computer"], "MACHINE": facts["machine"], "IP": facts["ip"]}

    outcomes: list[tuple[Section, bool, list[RunOutcome], list[str]]] = []
    for s in sections:
        exp = EXPECTATIONS.get(s.qid, {})
        problems = list(s.problems)
        labels = ["original"] + [lbl for lbl, _ in s.runs]
        if sorted(labels) != sorted(exp):
            problems.append(f"blocks {labels}, the test expects {sorted(exp)}")
        runs: list[RunOutcome] = []
        blocks = ([("original", s.original)] if s.original is not None else []) + s.runs
        for label, text in blocks:
            if label not in exp:
                continue
            try:
                query = substitute(text, values) if label != "original" else text
                if "{{" in query and label != "original":
                    raise KeyError(f"unreplaced placeholder in {one_line(query, 80)}")
            except KeyError as e:
                runs.append(RunOutcome(label, text, False, "not run", str(e)))
                continue
            runs.append(run_block(ctx, label, query, exp[label]))
        ok = not problems and all(r.ok for r in runs) and len(runs) == len(exp)
        if not ok:
            failures += 1
        detail = "; ".join(f"{r.label}: {r.summary}" for r in runs)
        notes = "; ".join(([f"{r.label}: {r.note}" for r in runs if not r.ok] or
                           [r.note for r in runs]) + problems)
        emit(f"{'PASS' if ok else 'FAIL'} {s.qid:<4}{s.title} | {detail} | {notes}")
        outcomes.append((s, ok, runs, problems))

    if args.report:
        write_report(args, counts, facts, outcomes, lines, load_problems + doc_problems)
    return 1 if failures else 0


def status_of(s: Section) -> str:
    labels = {lbl for lbl, _ in s.runs}
    if "corrected" in labels:
        return "corrected" + (" + translated" if "translated" in labels else "")
    if "translated" in labels:
        return "translated"
    if "substituted" in labels:
        return "as-is (our names)"
    return "as-is"


def write_report(args: Any, counts: dict[str, int], facts: dict[str, Any],
                 outcomes: list[tuple[Section, bool, list[RunOutcome], list[str]]],
                 lines: list[str], problems: list[str]) -> None:
    out = ["# Sample queries on depmap data — test report", ""]
    out.append(f"Records: `{args.records_dir}` — "
               + ", ".join(f"{t} {n}" for t, n in counts.items()) + ".  ")
    out.append(f"Engine: duckdb {duckdb.__version__}, duckdb-kql "
               f"{getattr(duckdb_kql, '__version__', '?')}.  ")
    out.append(f"Facts: `{json.dumps(facts, separators=(',', ':'))}`")
    out.append("")
    passed = sum(1 for _, ok, _, _ in outcomes if ok)
    out.append(f"**{passed} of {len(outcomes)} queries pass"
               + (f"; {len(problems)} load/doc problems" if problems else "") + ".**")
    out.append("")
    out.append("| | Query | Status | Blocks | Check |")
    out.append("|---|---|---|---|---|")
    for s, ok, runs, probs in outcomes:
        blocks = "<br>".join(f"{r.label}: {r.summary}" for r in runs)
        notes = "<br>".join([f"{r.label}: {r.note}" for r in runs] + probs)
        out.append(f"| {'PASS' if ok else '**FAIL**'} | {s.qid}. {s.title} | {status_of(s)} | "
                   f"{blocks} | {notes.replace('|', '/')} |")
    out.append("")
    for s, ok, runs, _ in outcomes:
        out.append(f"## {s.qid}. {s.title}")
        out.append("")
        for r in runs:
            out.append(f"**{r.label}** — {'pass' if r.ok else 'FAIL'}: {r.note}")
            out.append("")
            if r.label != "original":
                out.append("```kusto")
                out.append(r.query)
                out.append("```")
                out.append("")
            if r.error:
                out.append(f"Error: `{one_line(r.error, 300)}`")
                out.append("")
            elif r.result is not None:
                if r.result.rows:
                    out.extend(md_table(r.result))
                else:
                    out.append("(no rows)")
                out.append("")
    out.append("## Output")
    out.append("")
    out.append("```")
    out.extend(lines)
    out.append("```")
    args.report.write_text("\n".join(out) + "\n", encoding="utf-8")


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - report, never a bare traceback
        print(f"FAIL internal error: {type(e).__name__}: {e}")
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        print("".join(tb[-3:]), file=sys.stderr)
        sys.exit(1)

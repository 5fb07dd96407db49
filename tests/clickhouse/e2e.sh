#!/usr/bin/env bash
# End-to-end check of the ClickHouse schema against real depmap records, using only the HTTP
# interface (what the sink does). Manual / CI helper; run as root:
#
#   tests/clickhouse/e2e.sh            # uses target/release/depmap, HTTP port 18123
#   DEPMAP_BIN=... CH_HTTP_PORT=... tests/clickhouse/e2e.sh
#
# Steps: start a private server (server.sh), create the schema (packaging/clickhouse/schema.sql,
# one statement per POST), collect one window with `depmap once --format ndjson` while making
# some loopback traffic to the server, split the records by `Type`, POST each table's lines to
#   /?query=INSERT INTO depmap.<Type> FORMAT JSONEachRow&date_time_input_format=best_effort
#     &input_format_skip_unknown_fields=0
# query them back, check the error answers the sink must classify, stop the server.
# Needs: clickhouse-server, curl, python3 (only to drop null-valued keys, see README).
# Every wait is bounded.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
port=${CH_HTTP_PORT:-18123}
depmap=${DEPMAP_BIN:-$root/target/release/depmap}
base="http://127.0.0.1:$port/"
# Strict about unknown fields here (proves the schema has every column depmap emits); the
# sink itself should send input_format_skip_unknown_fields=1 (packaging/clickhouse/README.md).
settings="date_time_input_format=best_effort&input_format_skip_unknown_fields=0"

dir=$(mktemp -d /tmp/depmap-ch.XXXXXX)
work=$(mktemp -d /tmp/depmap-ch-work.XXXXXX)
cleanup() {
    "$here/server.sh" stop "$dir" || true
    rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "e2e: FAIL: $*" >&2; exit 1; }

# post URL_SUFFIX BODY_FILE -> sets $status and $body
post() {
    status=$(curl -sS --max-time 30 -o "$work/resp" -w '%{http_code}' \
        "$base$1" --data-binary "@$2") || status=000
    body=$(cat "$work/resp" 2>/dev/null || true)
}
sql() { # sql QUERY -> prints result (TSV), fails on non-200
    printf '%s' "$1" >"$work/q"
    post "" "$work/q"
    [ "$status" = 200 ] || fail "query failed ($status): $1: $body"
    printf '%s' "$body"
}

echo "e2e: starting server on 127.0.0.1:$port in $dir"
"$here/server.sh" start "$dir" "$port" >/dev/null

echo "e2e: creating schema"
# One statement per POST: split at semicolons (the schema's only semicolons end statements).
i=0
while IFS= read -r -d ';' stmt || [ -n "$stmt" ]; do
    # drop comment lines and blank lines
    stmt=$(printf '%s\n' "$stmt" | sed '/^[[:space:]]*--/d;/^[[:space:]]*$/d')
    [ -n "$stmt" ] || continue
    printf '%s' "$stmt" >"$work/stmt.$i"
    post "" "$work/stmt.$i"
    [ "$status" = 200 ] || fail "schema statement $i failed ($status): $body"
    i=$((i + 1))
done <"$root/packaging/clickhouse/schema.sql"
[ "$i" -eq 5 ] || fail "expected 5 schema statements, ran $i"

echo "e2e: collecting one window with $depmap"
(for _ in $(seq 1 40); do curl -s --max-time 1 "${base}ping" >/dev/null || true; sleep 0.05; done) &
traffic=$!
timeout 60 "$depmap" once --duration 3s --format ndjson >"$work/records.ndjson" 2>"$work/cap.txt" ||
    fail "depmap once failed: $(cat "$work/cap.txt")"
wait "$traffic" || true

# ClickHouse 18.16 cannot read JSON null into Array(String) (VMProcess.Services), so the sink
# omits null-valued keys; omitted keys get NULL (Nullable) or [] (Array). Same here.
python3 -c '
import json, sys
for line in sys.stdin:
    if line.strip():
        r = json.loads(line)
        print(json.dumps({k: v for k, v in r.items() if v is not None}, separators=(",", ":")))
' <"$work/records.ndjson" >"$work/nonull.ndjson"

for t in VMComputer VMProcess VMBoundPort VMConnection; do
    grep -F "\"Type\":\"$t\"" "$work/nonull.ndjson" >"$work/$t.ndjson" || true
    n=$(wc -l <"$work/$t.ndjson")
    [ "$n" -gt 0 ] || { echo "e2e: no $t records in this window"; continue; }
    post "?query=INSERT%20INTO%20depmap.$t%20FORMAT%20JSONEachRow&$settings" "$work/$t.ndjson"
    [ "$status" = 200 ] || fail "insert into $t failed ($status): $body"
    got=$(sql "SELECT count() FROM depmap.$t")
    [ "$got" -eq "$n" ] || fail "$t: inserted $n lines, table has $got rows"
    echo "e2e: $t: $n rows inserted"
done

echo "e2e: VMConnection rows (DestinationPort, BytesSent):"
sql "SELECT Direction, DestinationIp, DestinationPort, BytesSent, BytesReceived, TimeGenerated
     FROM depmap.VMConnection ORDER BY Direction, DestinationPort FORMAT TSVWithNames" | sed 's/^/    /'
echo
hits=$(sql "SELECT count() FROM depmap.VMConnection WHERE DestinationPort = $port AND BytesSent > 0")
[ "$hits" -gt 0 ] || fail "no VMConnection row for the loopback traffic to port $port"

echo "e2e: error answers"
head -n 1 "$work/VMConnection.ndjson" | head -c 100 >"$work/bad" # truncated JSON
post "?query=INSERT%20INTO%20depmap.VMConnection%20FORMAT%20JSONEachRow&$settings" "$work/bad"
echo "    malformed row: $status ${body%%,*}"
case $status in 2*) fail "malformed row accepted" ;; esac
case $body in "Code: "*) ;; *) fail "no 'Code: N' in error body: $body" ;; esac
post "?query=INSERT%20INTO%20depmap.NoSuchTable%20FORMAT%20JSONEachRow&$settings" \
    "$work/VMConnection.ndjson"
echo "    unknown table: $status ${body%%,*}"
[ "$status" = 404 ] || fail "unknown table gave $status"

echo "e2e: auth"
s=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -H 'X-ClickHouse-User: depmap' \
    -H "X-ClickHouse-Key: ${CH_DEPMAP_PASSWORD:-depmap-test}" "$base" --data-binary 'SELECT 1')
[ "$s" = 200 ] || fail "header auth gave $s"
s=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -H 'X-ClickHouse-User: depmap' \
    -H 'X-ClickHouse-Key: wrong' "$base" --data-binary 'SELECT 1')
[ "$s" = 401 ] || fail "wrong password gave $s"
echo "    X-ClickHouse-User/Key: 200; wrong key: 401"

echo "e2e: ok"

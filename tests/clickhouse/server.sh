#!/usr/bin/env bash
# Start / stop a private, throw-away ClickHouse server for depmap's ClickHouse sink tests.
#
#   server.sh start DIR HTTP_PORT   # prints a pid (see below) on stdout; returns once GET /ping
#                                   # answers "Ok.", or fails (exit 1) after a bounded wait,
#                                   # printing the tail of the server log on stderr
#   server.sh stop DIR              # stops that server (TERM, bounded wait, then KILL) and
#                                   # removes everything `start` created under DIR (and DIR
#                                   # itself if that leaves it empty); CH_KEEP_DIR=1 keeps it.
#                                   # Call it after a failed start too: a failed start leaves
#                                   # DIR (logs included) for inspection. Safe to call twice.
#
# What `start` does:
#   * writes DIR/config.xml and DIR/users.xml; data, tmp and logs live under DIR too, nothing
#     under /etc or /var is read or written (the distro's /etc/clickhouse-server is ignored);
#   * the ONLY listener is the HTTP interface on 127.0.0.1:HTTP_PORT: tcp_port, https_port,
#     tcp_port_secure and interserver_http_port are deliberately absent from the config, and
#     ClickHouse 18.16 (Debian 12's package) opens no listener for an absent port setting;
#   * users: `default` with no password and `depmap` with password $CH_DEPMAP_PASSWORD
#     (default "depmap-test"), both accepted only from 127.0.0.1 / ::1;
#   * server time zone UTC;
#   * the server runs under `timeout`, so even if the test crashes and never calls `stop`, it
#     is killed after $CH_LIFETIME seconds (default 900). The pid printed is that of the
#     `timeout` wrapper: signals sent to it are forwarded to the server, and `stop` uses it.
#
# Environment (all optional):
#   CH_SERVER_BIN       server binary (default: clickhouse-server on PATH, else /usr/sbin/...)
#   CH_START_TIMEOUT    seconds to wait for /ping (default 60)
#   CH_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default 20)
#   CH_LIFETIME         hard limit on the server's life in seconds (default 900)
#   CH_DEPMAP_PASSWORD  password of the `depmap` user (default depmap-test)
#
# Needs: bash, coreutils (timeout, tail), procps (pgrep), and curl (else bash's /dev/tcp).
# Works as root (as CI runs it) or as any user who owns DIR.
set -euo pipefail

die() { echo "server.sh: $*" >&2; exit 1; }
usage() { die "usage: server.sh start DIR HTTP_PORT | server.sh stop DIR"; }

# GET http://127.0.0.1:PORT/ping, prints the body; non-zero exit if nothing answers.
# Every attempt is bounded to ~2 s.
ping_http() {
    local port=$1
    if command -v curl >/dev/null 2>&1; then
        curl -sS --max-time 2 "http://127.0.0.1:${port}/ping" 2>/dev/null
    else
        # shellcheck disable=SC2016 # $1 is expanded by the inner bash
        timeout 2 bash -c '
            exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
            printf "GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
            # print the body: everything after the blank line ending the headers
            sed "1,/^\r\{0,1\}$/d" <&3' _ "$port" 2>/dev/null
    fi
}

log_tail() {
    local dir=$1 f
    for f in "$dir/log/server.err.log" "$dir/log/server.log" "$dir/log/stdout.log"; do
        [ -s "$f" ] || continue
        echo "----- tail of $f -----" >&2
        tail -n 40 "$f" >&2
    done
}

# True while PID is alive and not a zombie.
alive() {
    local pid=$1 state
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo X)
    [ "$state" != Z ]
}

# Stop the server whose wrapper pid is in DIR/server.pid. Bounded: TERM, wait, KILL, wait.
stop_server() {
    local dir=$1 pid i
    [ -f "$dir/server.pid" ] || return 0
    pid=$(cat "$dir/server.pid")
    [ -n "$pid" ] || return 0
    if alive "$pid"; then
        # `timeout` forwards TERM to clickhouse-server, which shuts down cleanly.
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < ${CH_STOP_TIMEOUT:-20} * 5; i++)); do
            alive "$pid" || break
            sleep 0.2
        done
        if alive "$pid"; then
            echo "server.sh: server did not stop after TERM; sending KILL" >&2
            # `timeout` made itself a process-group leader: kill the whole group.
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 25; i++)); do
                alive "$pid" || break
                sleep 0.2
            done
        fi
    fi
    # The server itself (child of the wrapper) must be gone as well.
    if [ -f "$dir/clickhouse.pid" ]; then
        local spid
        spid=$(cat "$dir/clickhouse.pid" 2>/dev/null || true)
        if [ -n "$spid" ] && alive "$spid" &&
            grep -q clickhouse "/proc/$spid/cmdline" 2>/dev/null; then
            kill -KILL "$spid" 2>/dev/null || true
        fi
    fi
    rm -f "$dir/server.pid"
}

cmd_start() {
    local dir=$1 port=$2 bin pid i body
    if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
        die "HTTP_PORT must be a port number, got '$port'"
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    case $dir in *[\<\>\&\"\']*) die "DIR must not contain < > & \" ' characters" ;; esac
    [ ! -f "$dir/server.pid" ] || die "$dir/server.pid exists: a server may already run there"

    bin=${CH_SERVER_BIN:-$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)}
    [ -x "$bin" ] || die "no clickhouse-server binary (apt-get install -y clickhouse-server)"

    # Refuse a port on which something already answers: the test would talk to the wrong server.
    if ping_http "$port" >/dev/null; then die "something already answers on 127.0.0.1:$port"; fi

    mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
    : >"$dir/.depmap-clickhouse" # marks DIR's content as ours for `stop`

    cat >"$dir/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Private test server written by tests/clickhouse/server.sh. Only HTTP on loopback. -->
<yandex>
    <logger>
        <level>information</level>
        <log>$dir/log/server.log</log>
        <errorlog>$dir/log/server.err.log</errorlog>
        <size>10M</size>
        <count>1</count>
    </logger>
    <!-- Only listener. No tcp_port / https_port / tcp_port_secure / interserver_http_port:
         absent means "do not listen". -->
    <listen_host>127.0.0.1</listen_host>
    <http_port>$port</http_port>

    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>

    <!-- Small caches: this is a test server on a small machine. -->
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <max_concurrent_queries>50</max_concurrent_queries>
</yandex>
EOF

    cat >"$dir/users.xml" <<EOF
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <depmap>
            <password>${CH_DEPMAP_PASSWORD:-depmap-test}</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </depmap>
    </users>
    <quotas>
        <default></default>
    </quotas>
</yandex>
EOF

    # Background, detached from our stdout/stderr (so a caller reading our output does not
    # wait for the server), under a hard lifetime limit.
    timeout --kill-after=10 "${CH_LIFETIME:-900}" \
        "$bin" --config-file="$dir/config.xml" \
        </dev/null >>"$dir/log/stdout.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/server.pid"

    # Bounded wait for readiness.
    for ((i = 0; i < ${CH_START_TIMEOUT:-60} * 5; i++)); do
        if ! alive "$pid"; then
            echo "server.sh: clickhouse-server exited during start-up" >&2
            log_tail "$dir"
            rm -f "$dir/server.pid"
            exit 1
        fi
        if body=$(ping_http "$port") && [ "${body%%[[:space:]]*}" = "Ok." ]; then
            # Remember the server's own pid (the wrapper's child) so `stop` can make sure it
            # is gone too.
            pgrep -P "$pid" >"$dir/clickhouse.pid" 2>/dev/null || true
            echo "$pid"
            return 0
        fi
        sleep 0.2
    done
    echo "server.sh: no 'Ok.' from http://127.0.0.1:$port/ping after ${CH_START_TIMEOUT:-60}s" >&2
    log_tail "$dir"
    stop_server "$dir"
    exit 1
}

cmd_stop() {
    local dir=$1
    [ -d "$dir" ] || return 0
    stop_server "$dir"
    # Remove only what `start` created, and only if `start` marked the directory.
    if [ -f "$dir/.depmap-clickhouse" ] && [ -z "${CH_KEEP_DIR:-}" ]; then
        rm -rf "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log" \
            "$dir/config.xml" "$dir/users.xml" "$dir/clickhouse.pid" "$dir/.depmap-clickhouse"
    fi
    rmdir "$dir" 2>/dev/null || true # only if (now) empty
}

case ${1:-} in
start) [ $# -eq 3 ] || usage; cmd_start "$2" "$3" ;;
stop) [ $# -eq 2 ] || usage; cmd_stop "$2" ;;
*) usage ;;
esac

#!/usr/bin/env bash
# Checks systemd/depmap.service the way .ci/run wants it: `systemd-analyze verify` clean (in a
# throw-away root holding the distribution's units, the unit and a built depmap at
# /usr/bin/depmap), and `systemd-analyze security --offline=true` exposure 2.5 or lower.
#   systemd/check.sh [path/to/depmap]      default: target/debug/depmap
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/depmap}
unit=systemd/depmap.service
[ -x "$bin" ] || { echo "check.sh: $bin not built" >&2; exit 1; }

root=$(mktemp -d /tmp/depmap-unit.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$bin" "$root/usr/bin/depmap"
cp /bin/kill "$root/bin/kill"
cp "$unit" "$root/etc/systemd/system/depmap.service"
out=$(systemd-analyze verify --root="$root" /etc/systemd/system/depmap.service 2>&1) || {
    echo "systemd-analyze verify failed:" >&2; echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then
    echo "systemd-analyze verify is not clean:" >&2; echo "$out" >&2; exit 1
fi

report=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1)
level=$(echo "$report" | sed -n 's/.*Overall exposure level for depmap.service: \([0-9.]*\).*/\1/p')
[ -n "$level" ] || { echo "$report" >&2; echo "check.sh: no exposure level" >&2; exit 1; }
if awk -v l="$level" 'BEGIN { exit !(l > 2.5) }'; then
    echo "$report" >&2
    echo "check.sh: exposure $level is above 2.5" >&2
    exit 1
fi
echo "depmap.service: verify clean, exposure $level"

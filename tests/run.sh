#!/usr/bin/env bash
# depmap's test command (README "On a fresh machine"; .ci/run runs exactly this), as root on a
# Debian-family machine with the Rust toolchain:
#
#   tests/run.sh
#
# 1. Installs what the suite needs when it is missing: the distribution's packages (apt) and
#    the pinned cargo tools the packaging tests use (cargo install --locked).
# 2. Runs `cargo fmt --check`, `cargo clippy --all-targets -D warnings`, every test file
#    (`cargo test --no-fail-fast`: a failing file does not hide the others) and the unit
#    check (systemd/check.sh). Each step runs whatever the earlier ones gave; the exit status
#    is 1 when any failed, and the last lines name them.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: run as root: the tests create network namespaces, run processes as" \
        "other users and boot systemd in a container" >&2
    exit 1
fi

# Programs on PATH only: `kill` is also a shell builtin.
need() { type -P "$1" >/dev/null 2>&1; }

# command → Debian package, for every program the tests, the benches' helpers and the
# scripts they call use.
missing=()
need cc || missing+=(gcc libc6-dev)           # the linker cargo uses
need ip && need ss || missing+=(iproute2)     # ip netns, veth, ss
need kill || missing+=(procps)                # not in a minimal Debian
need curl || missing+=(curl)
need python3 || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
need openssl || missing+=(openssl)            # the TLS tests' certificates
need clickhouse-server || missing+=(clickhouse-server)
need rpm || missing+=(rpm)                    # inspecting the .rpm
need setpriv || missing+=(util-linux)         # depmap as nobody with chosen capabilities
need systemd-analyze || missing+=(systemd)
need debootstrap || missing+=(debootstrap)    # the real-systemd test's root
need systemd-nspawn || missing+=(systemd-container)
need xz || missing+=(xz-utils)
need clang || missing+=(clang)                 # bpf/build.sh: the BPF object's check
need llvm-strip || missing+=(llvm)
[ -e /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
need chromium || missing+=(chromium)           # tests/map.rs: the map as a browser draws it
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || missing+=(fonts-dejavu-core)  # its text

if [ ${#missing[@]} -gt 0 ]; then
    if ! need apt-get; then
        echo "tests/run.sh: missing ${missing[*]} and no apt-get to install them" >&2
        exit 1
    fi
    echo "tests/run.sh: installing ${missing[*]}" >&2
    apt-get update -qq || exit 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || exit 1
fi
# The package enables a system service; the ClickHouse test starts a private server of its own.
systemctl disable --now clickhouse-server >/dev/null 2>&1 || true

# The packaging tests' tools, pinned.
need cargo-deb || cargo install --locked --quiet cargo-deb@3.8.0 || exit 1
need cargo-generate-rpm || cargo install --locked --quiet cargo-generate-rpm@0.21.1 || exit 1
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "tests/run.sh: the toolchain has no $component (rustup component add $component)" >&2
        exit 1
    fi
done

failed=()
step() {
    echo "tests/run.sh: $*" >&2
    "$@" || failed+=("$*")
}
step cargo fmt --check
step cargo clippy --locked --all-targets -- -D warnings
# The test output is kept (target/test-output.log) and, when a test failed, each failure's
# message is printed again at the end: a CI log that shows only its tail still says why.
tests() {
    mkdir -p target
    cargo test --locked --no-fail-fast 2>&1 | tee target/test-output.log
}
step tests
# The systemd unit: `systemd-analyze verify` clean, `security` exposure 2.5 or lower.
step systemd/check.sh target/debug/depmap

if [ ${#failed[@]} -gt 0 ]; then
    if [ -s target/test-output.log ]; then
        echo "tests/run.sh: the failures' messages (all output: target/test-output.log):" >&2
        # From each '---- <test> stdout ----' to the next one or 'failures:', 40 lines at
        # most, without depmap's INFO log lines.
        awk '/^---- .* ----$/ { p = 1; n = 0 }
             /^failures:$/ { p = 0 }
             p && !/^[0-9T:.-]+Z +INFO / && n < 40 { print; n++ }' \
            target/test-output.log | grep -v '^ *[0-9]*: \|^ *at ' >&2
    fi
    printf 'tests/run.sh: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "tests/run.sh: everything passed" >&2

#!/usr/bin/env bash
# Builds depmap's .deb and .rpm (metadata in Cargo.toml: [package.metadata.deb] and
# [package.metadata.generate-rpm]; maintainer scripts in packaging/debian and packaging/rpm).
#
#   packaging/build.sh                       release build, packages in target/packages/
#   packaging/build.sh --no-build --profile dev --fast --out DIR
#                                            package the binary already built, with quick
#                                            compression (the tests do; the .rpm payload
#                                            uncompressed: zstd of a debug binary takes 100 s)
#   packaging/build.sh ... --deb-only        only the .deb
#
# Installs cargo-deb and cargo-generate-rpm with `cargo install --locked` when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
build=1
fast=()
rpm_fast=()
rpm=1
out=target/packages
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --fast) fast=(--fast); rpm_fast=(--payload-compress none) ;;
        --deb-only) rpm=0 ;;
        --profile) profile=$2; shift ;;
        --out) out=$2; shift ;;
        *) echo "usage: packaging/build.sh [--no-build] [--profile P] [--fast] [--deb-only] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done

for tool in cargo-deb cargo-generate-rpm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build.sh: installing $tool" >&2
        case "$tool" in cargo-deb) v=3.8.0 ;; *) v=0.21.1 ;; esac
        cargo install --locked --quiet "$tool@$v"
    fi
done

if [ "$build" = 1 ]; then
    cargo build --locked --profile "$profile" --bin depmap
fi
mkdir -p "$out"
cargo deb --no-build --no-strip "${fast[@]}" --profile "$profile" --output "$out" >/dev/null
if [ "$rpm" = 1 ]; then
    cargo generate-rpm --profile "$profile" "${rpm_fast[@]}" --output "$out" >/dev/null
    ls "$out"/*.rpm
fi
ls "$out"/*.deb

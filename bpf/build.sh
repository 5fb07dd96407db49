#!/bin/sh
# Rebuilds bpf/depmap.bpf.o from bpf/depmap.bpf.c (README "Kernel events").
#
# The object is committed, so `cargo build` needs no clang; tests/bpf_object.rs rebuilds it
# with this script and fails when the committed object differs from what its source gives.
# Needs Debian's clang, llvm (llvm-strip) and libbpf-dev (the bpf_*.h headers):
#   apt-get install clang llvm libbpf-dev
# Usage: bpf/build.sh [OUTPUT]   (default: bpf/depmap.bpf.o)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/depmap.bpf.o}
# Relative paths and a fixed working directory: nothing of the machine's paths goes into the
# object's BTF line information, so the build is the same on every machine with this clang.
cd "$here"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -Wall -Werror -fdebug-prefix-map="$here"=. \
    -c depmap.bpf.c -o "$tmp"
# DWARF out, BTF kept (CO-RE needs it).
llvm-strip -g "$tmp"
cp "$tmp" "$out"

#!/usr/bin/env bash
# Measures `smartvm run --kernel K` as a user runs it, from exec to exit, next to a bare
# `firecracker --config-file` running the same guest, as medians of paired runs
# (BenchmarkRealRunExec in internal/cli). Needs KVM and a real Firecracker binary.
#
# Usage: bench/run.sh [FIRECRACKER_BIN [RUNS [COUNT]]]
#   FIRECRACKER_BIN  the binary (default: $SMARTVM_FIRECRACKER_BIN, else firecracker in PATH)
#   RUNS             pairs of runs per measurement (default: 50)
#   COUNT            measurements (default: 3)
# Prints the medians in ms (smartvm-ms, bare-ms) and smartvm-ms / bare-ms as "ratio" (the
# target is at most 1.1). It also times bench/execfloor, a Go command that only runs the bare
# firecracker and waits for it, around the same bare run: floor-ms and floor-ratio are the
# least any Go command adds on this host before it does anything for the VM.
#
# smartvm is built as the README installs it: static (CGO_ENABLED=0). CGO_ENABLED=1 in the
# environment measures the dynamic build that a plain `go build` makes where a C compiler is
# installed (about 1 ms slower to start on a nested-KVM host: ld.so loads libc first).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-${SMARTVM_FIRECRACKER_BIN:-$(command -v firecracker || true)}}
runs=${2:-50}
count=${3:-3}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "bench/run.sh: no firecracker binary: pass one or set SMARTVM_FIRECRACKER_BIN" >&2
  exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cgo=${CGO_ENABLED:-0}
CGO_ENABLED=$cgo go build -o "$tmp/smartvm" ./cmd/smartvm
CGO_ENABLED=$cgo go build -o "$tmp/execfloor" ./bench/execfloor
echo "firecracker: $bin ($("$bin" --version | head -n1)), $(nproc) CPUs; smartvm built with CGO_ENABLED=$cgo"
SMARTVM_FIRECRACKER_BIN=$bin SMARTVM_BENCH_SMARTVM=$tmp/smartvm SMARTVM_BENCH_FLOOR=$tmp/execfloor go test -run '^$' \
  -bench '^BenchmarkRealRunExec$' -benchtime "${runs}x" -count "$count" ./internal/cli |
  awk '/^BenchmarkRealRunExec/ {
    line = $1
    for (i = 3; i < NF; i += 2) if ($(i+1) ~ /-ms$|ratio$/) line = line sprintf("  %s %s", $(i+1), $i)
    print line
  } /^(FAIL|ok)/'

#!/usr/bin/env bash
# Measures the time from the call to smartvm's Start until the test guest's first serial byte,
# next to a bare `firecracker --config-file` run of the same VM reaching its first serial byte,
# in the same run (BenchmarkRealBootToSerial in the root package). Needs KVM and a real
# Firecracker binary.
#
# Usage: bench/boot.sh [FIRECRACKER_BIN [RUNS [COUNT]]]
#   FIRECRACKER_BIN  the binary (default: $SMARTVM_FIRECRACKER_BIN, else firecracker in PATH)
#   RUNS             boots of each kind per measurement (default: 100)
#   COUNT            measurements (default: 3)
# Prints, per boot mode, the medians in ms (start-ms: smartvm; bare-ms: bare --config-file;
# bare-api-ms: bare Firecracker booted through its API by hand) and start-ms / bare-ms as
# "ratio" (the target is at most 1.2).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-${SMARTVM_FIRECRACKER_BIN:-$(command -v firecracker || true)}}
runs=${2:-100}
count=${3:-3}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "bench/boot.sh: no firecracker binary: pass one or set SMARTVM_FIRECRACKER_BIN" >&2
  exit 2
fi
echo "firecracker: $bin ($("$bin" --version | head -n1)), $(nproc) CPUs"
SMARTVM_FIRECRACKER_BIN=$bin go test -run '^$' -bench '^BenchmarkRealBootToSerial$' \
  -benchtime "${runs}x" -count "$count" . |
  awk '/^BenchmarkRealBootToSerial/ {
    line = $1
    for (i = 3; i < NF; i += 2) if ($(i+1) ~ /-ms$|^ratio$/) line = line sprintf("  %s %s", $(i+1), $i)
    print line
  } /^(FAIL|ok)/'

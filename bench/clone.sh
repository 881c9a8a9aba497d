#!/usr/bin/env bash
# Measures snapshots as templates with the real Firecracker and the counter test guest
# (128 MiB of memory), in the root package:
#   BenchmarkRealRestore   Manager.Restore under a new name until the VM runs (restore-ms),
#                          next to a bare firecracker loading the same snapshot through its
#                          API in the same run (bare-ms); "ratio" is restore-ms / bare-ms
#                          (the target is at most 1.15)
#   BenchmarkRealClone     Clone of 20 VMs from one snapshot until all run: clones/s
#   BenchmarkRealClonePSS  Pss of a booted VM's firecracker (booted-MiB), the mean Pss of each
#                          of 20 clones (clone-MiB) and the difference (beyond-MiB; the target
#                          is at most 2)
# Needs KVM, root and a real Firecracker binary.
#
# Usage: bench/clone.sh [FIRECRACKER_BIN [RUNS [COUNT]]]
#   FIRECRACKER_BIN  the binary (default: $SMARTVM_FIRECRACKER_BIN, else firecracker in PATH)
#   RUNS             iterations per measurement (default: 20)
#   COUNT            measurements (default: 1)
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-${SMARTVM_FIRECRACKER_BIN:-$(command -v firecracker || true)}}
runs=${2:-20}
count=${3:-1}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "bench/clone.sh: no firecracker binary: pass one or set SMARTVM_FIRECRACKER_BIN" >&2
  exit 2
fi
echo "firecracker: $bin ($("$bin" --version | head -n1)), $(nproc) CPUs"
SMARTVM_FIRECRACKER_BIN=$bin go test -run '^$' -bench '^BenchmarkReal(Restore|Clone|ClonePSS)$' \
  -benchtime "${runs}x" -count "$count" -timeout 30m . |
  awk '/^BenchmarkReal/ {
    line = $1
    for (i = 3; i < NF; i += 2) if ($(i+1) != "ns/op") line = line sprintf("  %s %s", $(i+1), $i)
    print line
  } /^(FAIL|ok)/'

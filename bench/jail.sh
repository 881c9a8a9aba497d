#!/usr/bin/env bash
# Measures Start without the jailer, with it (a jail of its own), and in a warm jail
# (Manager.WarmJails), rotating the three in one run, with the real
# jailer and firecracker of one release booting the test guest under KVM
# (BenchmarkRealStartJailer), and against the fake firecracker and fake jailer
# (BenchmarkStartJailer). Needs root; the real variant also needs KVM.
#
# Usage: bench/jail.sh [JAILER_BIN FIRECRACKER_BIN [RUNS [COUNT]]]
#   JAILER_BIN       the jailer (default: $SMARTVM_JAILER_BIN; without one, only the fake runs)
#   FIRECRACKER_BIN  the firecracker of the jailer's release (default: $SMARTVM_FIRECRACKER_BIN)
#   RUNS             starts of each kind per measurement (default: 40)
#   COUNT            measurements (default: 3)
# Prints the medians in ms (direct-ms, jailed-ms, warm-ms), jailed-ms / direct-ms as "ratio"
# and warm-ms / direct-ms as "warm-ratio" (the target is at most 1.3). With a jailer it also runs BenchmarkRealJailerAlone: the jailer on
# its own (jailer-ms) against firecracker --version (direct-ms), without smartvm, and
# BenchmarkRealRestoreJailer: a clone of a running guest's snapshot, the same three ways.
set -euo pipefail
cd "$(dirname "$0")/.."

jailer=${1:-${SMARTVM_JAILER_BIN:-}}
fc=${2:-${SMARTVM_FIRECRACKER_BIN:-}}
runs=${3:-40}
count=${4:-3}
bench='^BenchmarkStartJailer$'
if [ -n "$jailer" ]; then
  if [ ! -x "$jailer" ] || [ -z "$fc" ] || [ ! -x "$fc" ]; then
    echo "bench/jail.sh: pass a jailer and the firecracker of its release, or set SMARTVM_JAILER_BIN and SMARTVM_FIRECRACKER_BIN" >&2
    exit 2
  fi
  echo "jailer: $jailer ($("$jailer" --version | head -n1)), firecracker: $fc ($("$fc" --version | head -n1)), $(nproc) CPUs"
  bench='^(BenchmarkStartJailer|BenchmarkRealStartJailer|BenchmarkRealRestoreJailer)$'
else
  echo "no jailer given: only the fake (BenchmarkStartJailer) runs; $(nproc) CPUs"
fi
SMARTVM_JAILER_BIN=$jailer SMARTVM_FIRECRACKER_BIN=$fc go test -run '^$' -bench "$bench" \
  -benchtime "${runs}x" -count "$count" . |
  awk '/^Benchmark(Real)?(Start|Restore)Jailer/ {
    line = $1
    for (i = 3; i < NF; i += 2) if ($(i+1) ~ /-ms$|ratio$/) line = line sprintf("  %s %s", $(i+1), $i)
    print line
  } /^(FAIL|ok)/'
if [ -n "$jailer" ]; then
  # The jailer's own share: jailer-ms - direct-ms (see BenchmarkRealJailerAlone).
  SMARTVM_JAILER_BIN=$jailer SMARTVM_FIRECRACKER_BIN=$fc go test -run '^$' -bench '^BenchmarkRealJailerAlone$' \
    -benchtime "${runs}x" -count "$count" ./internal/jailer |
    awk '/^BenchmarkRealJailerAlone/ {
      line = $1
      for (i = 3; i < NF; i += 2) if ($(i+1) ~ /-ms$/) line = line sprintf("  %s %s", $(i+1), $i)
      print line
    } /^(FAIL|ok)/'
fi

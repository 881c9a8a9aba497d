#!/usr/bin/env bash
# Measures OCI image conversion and cached resolution (issue 13), in one run:
#   - BenchmarkOCIConvert: pulling an image of about 100 MiB of layer data from an in-process
#     registry and converting it into a cached ext4 bundle, next to `tar -x` of the same layers
#     followed by `mkfs.ext4 -d` of the tree into an image of the same size, in MB/s of layer
#     data, and their ratio;
#   - BenchmarkPullOCICached: Pull of a converted image by tag and by digest with the registry
#     gone (target: under 1 ms).
#
# Usage: bench/oci.sh [COUNT]   (default 3 iterations of the conversion)
# Needs e2fsprogs (mkfs.ext4, e2fsck, debugfs) and tar. Everything it creates is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-3}
go test -run '^$' -bench 'BenchmarkOCIConvert$' -benchtime "${count}x" ./baseimage/
go test -run '^$' -bench 'BenchmarkPullOCICached' -benchtime 2000x ./baseimage/

#!/usr/bin/env bash
# Compares smartvm's drive staging (internal/stage, through internal/stage/cmd/stagecopy) with
# `cp --sparse=always` on the same file: a 1 GiB sparse image holding 100 MiB of random data in
# 100 extents of 1 MiB.
#
# Usage: bench/stage.sh [SRC_DIR [DST_DIR [RUNS]]]
#   SRC_DIR  where the image is made (default: $TMPDIR or /tmp)
#   DST_DIR  where the copies go (default: SRC_DIR; give another filesystem, such as /dev/shm,
#            to measure a copy across filesystems)
#   RUNS     runs of each tool (default: 5)
# Prints, per tool, the fastest and the median wall time (process start included) and the
# storage the copy occupies. Everything it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

src_dir=${1:-${TMPDIR:-/tmp}}
dst_root=${2:-$src_dir}
runs=${3:-5}

work=$(mktemp -d "$src_dir/stage-bench.XXXXXX")
out_dir=$(mktemp -d "$dst_root/stage-bench-out.XXXXXX")
trap 'rm -rf "$work" "$out_dir"' EXIT

go build -o "$work/stagecopy" ./internal/stage/cmd/stagecopy

img=$work/image
truncate -s 1G "$img"
for i in $(seq 0 99); do
  dd if=/dev/urandom of="$img" bs=1M count=1 seek=$((i * 10)) conv=notrunc status=none
done
echo "image: $img, $(stat -c %s "$img") bytes, $(( $(stat -c '%b * %B' "$img") )) allocated"
echo "copies to: $out_dir ($(stat -f -c %T "$out_dir"))"

run_tool() { # name command...
  local name=$1; shift
  local times=() alloc=0 start end
  for _ in $(seq "$runs"); do
    rm -f "$out_dir/copy"
    start=$(date +%s%N)
    "$@" "$img" "$out_dir/copy" >/dev/null
    end=$(date +%s%N)
    times+=($(( (end - start) / 1000 )))
    alloc=$(( $(stat -c '%b * %B' "$out_dir/copy") ))
    cmp -s "$img" "$out_dir/copy" || { echo "$name: copy differs from the image" >&2; exit 1; }
  done
  rm -f "$out_dir/copy"
  local sorted
  sorted=($(printf '%s\n' "${times[@]}" | sort -n))
  awk -v name="$name" -v min="${sorted[0]}" -v med="${sorted[$(( runs / 2 ))]}" -v alloc="$alloc" \
    'BEGIN { printf "%-22s min %8.1f ms   median %8.1f ms   allocated %d bytes\n", name, min / 1000, med / 1000, alloc }'
}

run_tool stagecopy "$work/stagecopy"
run_tool "cp --sparse=always" cp --sparse=always

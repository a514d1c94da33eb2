#!/usr/bin/env bash
# Cold-cache reads (issue 10): does the order in which vitconv reads a source cost anything when the file is
# not in the page cache? The converter reads in output order with positional reads (a stacked big_vision
# member slice by slice, block after block), not front to back. Each command runs with the source evicted
# from the page cache first (posix_fadvise DONTNEED, which needs no privileges), and again warm; outputs go to
# tmpfs (/dev/shm) so that the disk's slow flush does not hide the reads. Baseline: `cat` of the same file to
# /dev/null, a front-to-back read, cold and warm. What matters is the cold - warm difference of each.
#
# Usage: RUNS=5 scripts/bench-cold.sh   (uses target/bench/vit-l32.npz and bv-l16.npz, made if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
work=target/bench
mkdir -p "$work"
runs=$work/cold-runs.tsv
. scripts/bench-lib.sh
out=/dev/shm/vitconv-bench-cold
[ -d /dev/shm ] || out=$work/out/cold

cargo build --release --quiet
bin=$PWD/target/release/vitconv
[ -f "$work/vit-l32.npz" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py fixtures/shapes/ViT-L_32-imagenet2012-384.json "$work/vit-l32.npz"
[ -f "$work/bv-l16.npz" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py fixtures/big_vision/shapes/bv-ViT-L_16-224-map-scan.json "$work/bv-l16.npz"
evict='import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)'

: > "$runs"
echo "runs: $RUNS, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); outputs in $out"
for _ in $(seq "$RUNS"); do
  for name in vit-l32 bv-l16; do
    src=$work/$name.npz
    run_once "$name cat, cold" sh -c "python3 -c '$evict' '$src' && cat '$src' > /dev/null"
    run_once "$name cat, warm" sh -c "cat '$src' > /dev/null"
    run_once "$name vitconv, cold" sh -c "rm -rf '$out' && mkdir -p '$out' && python3 -c '$evict' '$src' && '$bin' npz-to-pt '$src' '$out/o.safetensors' --layout timm --quiet"
    run_once "$name vitconv, warm" sh -c "rm -rf '$out' && mkdir -p '$out' && '$bin' npz-to-pt '$src' '$out/o.safetensors' --layout timm --quiet"
  done
done
rm -rf "$out"

summarize "$work/cold-results.tsv" 24

awk -F'\t' '
  { md[$1]=$4 }
  END {
    printf "\ncold - warm, medians (seconds):\n"
    split("vit-l32 bv-l16", names, " ")
    for (i=1; i<=2; i++) {
      n=names[i]
      printf "  %-8s cat %+.2f   vitconv %+.2f\n", n, md[n " cat, cold"]-md[n " cat, warm"], md[n " vitconv, cold"]-md[n " vitconv, warm"]
    }
  }' "$work/cold-results.tsv"

#!/usr/bin/env bash
# A/B benchmark of two vitconv binaries on the same conversions, for a change to the converter's hot path:
# the random ViT-L/32 of scripts/bench-convert.sh to .pt and .safetensors, and the big_vision L/16 of
# scripts/bench-big-vision.sh to .safetensors, each by binary A then binary B, interleaved run by run, beside
# `cp` of the ViT-L/32 in the same invocation. A goes first in odd runs and B in even ones, so that neither
# always follows the same command.
#
# Usage: scripts/bench-ab.sh A_BINARY B_BINARY   (RUNS, default 9: runs of each command)
# Build A from the commit before the change, e.g.
#   git worktree add --detach ../old REV && (cd ../old && CARGO_TARGET_DIR=/tmp/old cargo build --release)
# Figures: best and median wall seconds, median CPU (user + sys) seconds and peak RSS, and B / A ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: scripts/bench-ab.sh A_BINARY B_BINARY" >&2; exit 2; }
a=$1 b=$2
RUNS=${RUNS:-9}
work=target/bench
mkdir -p "$work"
runs=$work/ab-runs.tsv
. scripts/bench-lib.sh

[ -f "$work/vit-l32.npz" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py fixtures/shapes/ViT-L_32-imagenet2012-384.json "$work/vit-l32.npz"
[ -f "$work/bv-l16.npz" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py fixtures/big_vision/shapes/bv-ViT-L_16-224-map-scan.json "$work/bv-l16.npz"

: > "$runs"
cat "$work/vit-l32.npz" "$work/bv-l16.npz" > /dev/null
echo "A: $a; B: $b; runs: $RUNS, interleaved, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for k in $(seq "$RUNS"); do
  run_once "cp L/32 (baseline)" cp "$work/vit-l32.npz" "$work/out/copy.npz"
  order="A B"; [ $((k % 2)) -eq 0 ] && order="B A"
  for which in $order; do
    bin=$a; [ $which = B ] && bin=$b
    run_once "$which L/32 -> .pt" "$bin" npz-to-pt "$work/vit-l32.npz" "$work/out/l32.pt" --layout timm --quiet
    run_once "$which L/32 -> .safetensors" "$bin" npz-to-pt "$work/vit-l32.npz" "$work/out/l32.safetensors" --layout timm --quiet
    run_once "$which bv L/16 -> .safetensors" "$bin" npz-to-pt "$work/bv-l16.npz" "$work/out/l16.safetensors" --layout timm --quiet
  done
done

summarize "$work/ab-results.tsv" 30

awk -F'\t' '
  { s[$1]=$2; m[$1]=$3; md[$1]=$4; c[$1]=$5 }
  END {
    cp=s["cp L/32 (baseline)"]; mcp=md["cp L/32 (baseline)"]
    printf "\nB / A (best, median, median CPU, peak RSS) and each against cp L/32 (best, median):\n"
    n=split("L/32 -> .pt|L/32 -> .safetensors|bv L/16 -> .safetensors", runs, "|")
    for (i=1; i<=n; i++) {
      A="A " runs[i]; B="B " runs[i]
      printf "  %-24s %.3f  %.3f  %.3f  %.2f   A %.2fx %.2fx  B %.2fx %.2fx cp\n", runs[i], s[B]/s[A], md[B]/md[A], c[B]/c[A], m[B]/m[A], s[A]/cp, md[A]/mcp, s[B]/cp, md[B]/mcp
    }
  }' "$work/ab-results.tsv"

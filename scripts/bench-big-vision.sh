#!/usr/bin/env bash
# big_vision conversion benchmark (issue 13): random-valued checkpoints with the exact keys and shapes of
# published big_vision files (fixtures/big_vision/shapes/): the L/16 MAP-head classifier in scan format
# (317 M parameters; its stacked MLP kernels are [24, 1024, 4096], 403 MB each, never held whole) and the
# S/16 sincos2d/gap/rep classifier in scan format, converted by vitconv side by side with `cp` of the same
# file. Peak memory of the L/16 conversion against the S/16 one shows it flat in model size.
#
# Figures are wall seconds (best and median of RUNS runs, interleaved, warm page cache, `sync` before each)
# and peak RSS (/usr/bin/time -v), quoted as ratios against the baseline measured in the same invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
work=target/bench
mkdir -p "$work"
runs=$work/bv-runs.tsv
. scripts/bench-lib.sh

cargo build --release --quiet
bin=target/release/vitconv

make_ckpt() { # shapes-json name
  [ -f "$work/$2.npz" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py "fixtures/big_vision/shapes/$1.json" "$work/$2.npz"
}
make_ckpt bv-ViT-L_16-224-map-scan bv-l16
make_ckpt bv-ViT-S_16-i1k-sincos-gap bv-s16
# The vision_transformer ViT-L/32 of scripts/bench-convert.sh, for a same-invocation comparison with the
# unstacked path.
[ -f "$work/vit-l32.npz" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py fixtures/shapes/ViT-L_32-imagenet2012-384.json "$work/vit-l32.npz"

: > "$runs"
cat "$work"/bv-*.npz "$work/vit-l32.npz" > /dev/null
echo "files: $work/bv-l16.npz ($(du -h "$work/bv-l16.npz" | cut -f1)), $work/bv-s16.npz ($(du -h "$work/bv-s16.npz" | cut -f1)); runs: $RUNS, interleaved, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$RUNS"); do
  run_once "cp L/16 (baseline)" cp "$work/bv-l16.npz" "$work/out/copy.npz"
  # vitconv fsyncs its output before renaming it into place; this is cp with the same durability.
  run_once "cp + sync L/16 (durable copy)" sh -c "cp '$work/bv-l16.npz' '$work/out/copy.npz' && sync '$work/out/copy.npz'"
  run_once "vitconv vit_jax L/32 -> .pt (timm)" $bin npz-to-pt "$work/vit-l32.npz" "$work/out/l32.pt" --layout timm --quiet
  run_once "cp L/32" cp "$work/vit-l32.npz" "$work/out/copy32.npz"
  run_once "vitconv L/16 -> .pt (timm)" $bin npz-to-pt "$work/bv-l16.npz" "$work/out/l16.pt" --layout timm --quiet
  run_once "vitconv L/16 -> .safetensors (timm)" $bin npz-to-pt "$work/bv-l16.npz" "$work/out/l16.safetensors" --layout timm --quiet
  run_once "vitconv L/16 -> hf (SiglipVisionModel)" $bin npz-to-pt "$work/bv-l16.npz" "$work/out/l16-hf" --layout hf --drop-head --quiet
  run_once "cp S/16" cp "$work/bv-s16.npz" "$work/out/copy-s.npz"
  run_once "vitconv S/16 -> .pt (timm)" $bin npz-to-pt "$work/bv-s16.npz" "$work/out/s16.pt" --layout timm --drop-head --image-size 224 --quiet
done

summarize "$work/bv-results.tsv" 40

awk -F'\t' '
  { s[$1]=$2; m[$1]=$3; md[$1]=$4 }
  END {
    cp=s["cp L/16 (baseline)"]; mcp=md["cp L/16 (baseline)"]
    printf "\nratios (same invocation; best of each, then median of each):\n"
    printf "  L/16 .pt vs cp:             %.2fx  %.2fx  (target <= 1.5x)\n", s["vitconv L/16 -> .pt (timm)"]/cp, md["vitconv L/16 -> .pt (timm)"]/mcp
    printf "  L/16 .safetensors vs cp:    %.2fx  %.2fx  (target <= 1.5x)\n", s["vitconv L/16 -> .safetensors (timm)"]/cp, md["vitconv L/16 -> .safetensors (timm)"]/mcp
    printf "  L/16 .pt vs cp + sync:      %.2fx  %.2fx\n", s["vitconv L/16 -> .pt (timm)"]/s["cp + sync L/16 (durable copy)"], md["vitconv L/16 -> .pt (timm)"]/md["cp + sync L/16 (durable copy)"]
    printf "  vit_jax L/32 .pt vs cp L/32: %.2fx  %.2fx  (the unstacked path, same invocation)\n", s["vitconv vit_jax L/32 -> .pt (timm)"]/s["cp L/32"], md["vitconv vit_jax L/32 -> .pt (timm)"]/md["cp L/32"]
    printf "  L/16 hf vs cp:              %.2fx  %.2fx\n", s["vitconv L/16 -> hf (SiglipVisionModel)"]/cp, md["vitconv L/16 -> hf (SiglipVisionModel)"]/mcp
    printf "  S/16 .pt vs cp S/16:        %.2fx  %.2fx\n", s["vitconv S/16 -> .pt (timm)"]/s["cp S/16"], md["vitconv S/16 -> .pt (timm)"]/md["cp S/16"]
    printf "  peak RSS L/16 .pt:          %d MB  (target < 200 MB)\n", m["vitconv L/16 -> .pt (timm)"]
    printf "  peak RSS L/16 vs S/16:      %.2fx  (target: flat)\n", m["vitconv L/16 -> .pt (timm)"]/m["vitconv S/16 -> .pt (timm)"]
  }' "$work/bv-results.tsv"

#!/usr/bin/env bash
# Deflated checkpoints (issue 10): the big_vision L/16 MAP-head and S/16 sincos2d classifiers of
# scripts/bench-big-vision.sh and the vision_transformer ViT-L/32 of scripts/bench-convert.sh, their members
# deflated as np.savez_compressed writes them (make_random_checkpoint.py --deflate). A deflated member cannot
# be read from the middle, so each stacked [depth, ...] member is inflated once, front to back, and its slices
# handed to their blocks' outputs as they come out (crates/tensors/src/bands.rs, `Stream`), and an unstacked
# one is inflated as it is read wherever the recipe reads it in file order (`sequential_bands`): memory stays
# at a few slices or bands, not the model.
#
# Baseline: `unzip -p` of the same file to /dev/null, which inflates every member once and checks its CRC-32
# (the least any reader of the file must do). Also the stored L/16 converted in the same invocation.
# Figures are wall seconds (best and median of RUNS runs, interleaved, warm page cache, `sync` before each)
# and peak RSS (/usr/bin/time -v), quoted as ratios against the baselines measured in the same invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
work=target/bench
mkdir -p "$work"
runs=$work/df-runs.tsv
. scripts/bench-lib.sh
command -v unzip >/dev/null || { echo "bench: unzip missing: apt-get install -y unzip" >&2; exit 2; }

cargo build --release --quiet
bin=target/release/vitconv

make_ckpt() { # shapes-json name [--deflate]
  [ -f "$work/$2.npz" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py "fixtures/big_vision/shapes/$1.json" "$work/$2.npz" ${3:-}
}
make_ckpt bv-ViT-L_16-224-map-scan bv-l16
make_ckpt bv-ViT-L_16-224-map-scan bv-l16-deflate --deflate
make_ckpt bv-ViT-S_16-i1k-sincos-gap bv-s16-deflate --deflate
[ -f "$work/vit-l32.npz" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py fixtures/shapes/ViT-L_32-imagenet2012-384.json "$work/vit-l32.npz"
[ -f "$work/vit-l32-deflate.npz" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py fixtures/shapes/ViT-L_32-imagenet2012-384.json "$work/vit-l32-deflate.npz" --deflate

: > "$runs"
cat "$work/bv-l16.npz" "$work/bv-l16-deflate.npz" "$work/bv-s16-deflate.npz" "$work/vit-l32.npz" "$work/vit-l32-deflate.npz" > /dev/null
echo "files: $work/bv-l16-deflate.npz ($(du -h "$work/bv-l16-deflate.npz" | cut -f1)), $work/bv-s16-deflate.npz ($(du -h "$work/bv-s16-deflate.npz" | cut -f1)); runs: $RUNS, interleaved, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$RUNS"); do
  run_once "unzip -p L/16 deflated (baseline)" sh -c "unzip -p '$work/bv-l16-deflate.npz' > /dev/null"
  run_once "vitconv L/16 deflated -> .safetensors" $bin npz-to-pt "$work/bv-l16-deflate.npz" "$work/out/l16d.safetensors" --layout timm --quiet
  run_once "vitconv L/16 stored -> .safetensors" $bin npz-to-pt "$work/bv-l16.npz" "$work/out/l16.safetensors" --layout timm --quiet
  run_once "vitconv S/16 deflated -> .safetensors" $bin npz-to-pt "$work/bv-s16-deflate.npz" "$work/out/s16d.safetensors" --layout timm --drop-head --image-size 224 --quiet
  run_once "unzip -p ViT-L/32 deflated" sh -c "unzip -p '$work/vit-l32-deflate.npz' > /dev/null"
  run_once "vitconv ViT-L/32 deflated -> .safetensors" $bin npz-to-pt "$work/vit-l32-deflate.npz" "$work/out/l32d.safetensors" --layout timm --quiet
  run_once "vitconv ViT-L/32 stored -> .safetensors" $bin npz-to-pt "$work/vit-l32.npz" "$work/out/l32.safetensors" --layout timm --quiet
done

summarize "$work/df-results.tsv" 44

awk -F'\t' -v filemb="$(( $(stat -c %s "$work/bv-l16.npz") / 1048576 ))" '
  { s[$1]=$2; m[$1]=$3; md[$1]=$4 }
  END {
    uz="unzip -p L/16 deflated (baseline)"; d="vitconv L/16 deflated -> .safetensors"; st="vitconv L/16 stored -> .safetensors"; sd="vitconv S/16 deflated -> .safetensors"
    printf "\nratios (same invocation; best of each, then median of each):\n"
    printf "  L/16 deflated vs unzip -p:      %.2fx  %.2fx\n", s[d]/s[uz], md[d]/md[uz]
    printf "  L/16 deflated vs L/16 stored:   %.2fx  %.2fx\n", s[d]/s[st], md[d]/md[st]
    printf "  peak RSS L/16 deflated:         %d MB  (the model: %d MB of f32; target < 200 MB)\n", m[d], filemb
    printf "  peak RSS L/16 deflated / stored: %.2fx\n", m[d]/m[st]
    printf "  peak RSS L/16 / S/16, deflated: %.2fx  (target: flat)\n", m[d]/m[sd]
    vd="vitconv ViT-L/32 deflated -> .safetensors"; vs="vitconv ViT-L/32 stored -> .safetensors"; vu="unzip -p ViT-L/32 deflated"
    printf "  ViT-L/32 deflated vs unzip -p:  %.2fx  %.2fx\n", s[vd]/s[vu], md[vd]/md[vu]
    printf "  peak RSS ViT-L/32 deflated / stored: %d MB / %d MB\n", m[vd], m[vs]
  }' "$work/df-results.tsv"

#!/usr/bin/env bash
# SigLIP two-tower conversion benchmark (issue 14): a random-valued checkpoint with the exact keys and shapes
# of the published So400m/14-384 (fixtures/big_vision/shapes/siglip-So400m_14-384.json: 878 M parameters,
# 3.5 GB f32, both towers stacked in scan format, a [32000, 1152] token embedding), converted by vitconv to
# the transformers SiglipModel folder and to the open_clip folder, side by side with `cp` of the same file.
#
# The path transformers documents for these files (convert_siglip_to_hf.py) needs JAX and big_vision, which
# this machine has not; the comparison is timm's own npz loader (vision_transformer._load_weights, which
# reads the image tower under params/img/) into vit_so400m_patch14_siglip_384 plus torch.save: the image
# tower only, with the whole file in memory.
#
# Figures are wall seconds (best and median of RUNS runs, interleaved, warm page cache, `sync` before each)
# and peak RSS (/usr/bin/time -v), quoted as ratios against the baseline measured in the same invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
work=target/bench
mkdir -p "$work"
runs=$work/sg-runs.tsv
. scripts/bench-lib.sh

cargo build --release --quiet
bin=target/release/vitconv
src="$work/siglip-so400m.npz"
[ -f "$src" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py fixtures/big_vision/shapes/siglip-So400m_14-384.json "$src"

: > "$runs"
cat "$src" > /dev/null
echo "file: $src ($(du -h "$src" | cut -f1)); runs: $RUNS, interleaved, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$RUNS"); do
  run_once "cp (baseline)" cp "$src" "$work/out/copy.npz"
  # vitconv fsyncs its output before renaming it into place; this is cp with the same durability.
  run_once "cp + sync (durable copy)" sh -c "cp '$src' '$work/out/copy.npz' && sync '$work/out/copy.npz'"
  run_once "vitconv -> hf (SiglipModel)" $bin npz-to-pt "$src" "$work/out/hf" --layout hf --image-size 384 --quiet
  run_once "vitconv -> open_clip (CustomTextCLIP)" $bin npz-to-pt "$src" "$work/out/oc" --layout open_clip --image-size 384 --quiet
done
# Once: it holds the whole file in memory and converts the image tower only.
run_once "timm _load_weights + torch.save (image tower)" scripts/with-libtorch python scripts/timm_npz_to_pt.py "$src" "$work/out/timm.pt" vit_so400m_patch14_siglip_384

summarize "$work/sg-results.tsv" 46

awk -F'\t' '
  { s[$1]=$2; m[$1]=$3; md[$1]=$4 }
  END {
    cp=s["cp (baseline)"]; mcp=md["cp (baseline)"]; cs=s["cp + sync (durable copy)"]; mcs=md["cp + sync (durable copy)"]
    hf="vitconv -> hf (SiglipModel)"; oc="vitconv -> open_clip (CustomTextCLIP)"; tm="timm _load_weights + torch.save (image tower)"
    printf "\nratios (same invocation; best of each, then median of each):\n"
    printf "  hf vs cp:                 %.2fx  %.2fx  (target <= 1.5x)\n", s[hf]/cp, md[hf]/mcp
    printf "  open_clip vs cp:          %.2fx  %.2fx  (target <= 1.5x)\n", s[oc]/cp, md[oc]/mcp
    printf "  hf vs cp + sync:          %.2fx  %.2fx\n", s[hf]/cs, md[hf]/mcs
    printf "  open_clip vs cp + sync:   %.2fx  %.2fx\n", s[oc]/cs, md[oc]/mcs
    printf "  timm image tower vs cp:   %.2fx\n", s[tm]/cp
    printf "  peak RSS hf / open_clip:  %d MB / %d MB  (target < 200 MB); timm loader %d MB\n", m[hf], m[oc], m[tm]
  }' "$work/sg-results.tsv"

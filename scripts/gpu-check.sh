#!/usr/bin/env bash
# The one GPU check of `vitconv verify`, run once on a lent H100/H200 machine.
#
# That machine has torch 2.11.0+cu130, python3 and numpy installed system-wide but no
# cargo: build here with `scripts/with-libtorch cargo build --release --features verify`,
# copy target/release/vitconv and target/release/vitconv-verify (which `vitconv verify` runs, the only one
# linking libtorch) to .gpu/target/release/, carry .gpu, and run this
# from the repository root. It:
#   1. points LD_LIBRARY_PATH at the system torch's libtorch and asks the binary whether
#      it sees CUDA (device "auto" in a verify report);
#   2. converts every golden case to every layout that holds it and verifies each on
#      CUDA (falling back to the CPU when there is no GPU), JSON reports to $OUT/json: the
#      vision_transformer cases, the big_vision ViTs, and the SigLIP two-tower models (image
#      and text embeddings and logits_per_image, on the golden images and token ids);
#   3. builds random-valued ViT-L/32 and ViT-H/14 .npz files with the published shapes
#      (fixtures/shapes), converts them to timm, and verifies them on CUDA and CPU in f32
#      and bf16, recording the time per forward and the drift, and times their conversion
#      to .pt against cp of the same file;
#   4. writes $OUT/gpu-summary.txt.
# Every step runs under `timeout`, and steps are skipped once the time budget
# (GPU_CHECK_BUDGET_S, default 420 s) is spent, so the whole run ends well inside 8 minutes.
#
# Environment: VITCONV_BIN (default .gpu/target/release/vitconv), OUT (default ./gpu-out),
# GPU_CHECK_MODELS (default "ViT-L_32-imagenet2012-384 ViT-H_14-imagenet21k"),
# GPU_CHECK_BUDGET_S, GPU_CHECK_CPU_BATCH (default 2), GPU_CHECK_CUDA_BATCH (default 8).
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${VITCONV_BIN:-.gpu/target/release/vitconv}
OUT=${OUT:-$PWD/gpu-out}
BUDGET=${GPU_CHECK_BUDGET_S:-420}
MODELS=${GPU_CHECK_MODELS:-"ViT-L_32-imagenet2012-384 ViT-H_14-imagenet21k"}
CPU_BATCH=${GPU_CHECK_CPU_BATCH:-2}
CUDA_BATCH=${GPU_CHECK_CUDA_BATCH:-8}
mkdir -p "$OUT/json" "$OUT/logs"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vitconv-gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SUMMARY="$OUT/gpu-summary.txt"
ROWS="$WORK/rows.tsv"
: >"$ROWS"
start=$SECONDS

say() { printf '%s\n' "$*" | tee -a "$SUMMARY" >&2; }
left() { echo $((BUDGET - (SECONDS - start))); }

: >"$SUMMARY"
say "vitconv GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [ ! -x "$BIN" ]; then
  say "FATAL: $BIN is missing or not executable (build with --features verify and carry .gpu/)"
  exit 2
fi
torch_lib=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")' 2>/dev/null) || torch_lib=""
if [ -z "$torch_lib" ] && [ -n "${VIRTUAL_ENV:-}" ]; then
  torch_lib=$("$VIRTUAL_ENV/bin/python" -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')
fi
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "torch: $(python3 -c 'import torch;print(torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1)"
say "libtorch: $torch_lib"
if command -v nvidia-smi >/dev/null; then
  say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
fi

# One JSON field of a report (python3 is there; jq may not be).
field() { python3 -c 'import json,sys
d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    d = d.get(k) if isinstance(d, dict) else None
print("-" if d is None else (f"{d:.3e}" if isinstance(d, float) else d))' "$1" "$2" 2>/dev/null || echo "-"; }

# Does the binary itself see CUDA? Ask it: device auto picks cuda:0 when libtorch sees a GPU.
timeout 120 "$BIN" npz-to-pt fixtures/vit-token/checkpoint.npz "$WORK/probe.safetensors" --layout timm --quiet
timeout 120 "$BIN" verify fixtures/vit-token/checkpoint.npz "$WORK/probe.safetensors" --device auto --json >"$OUT/json/probe.json" 2>"$OUT/logs/probe.err"
probe_device=$(field "$OUT/json/probe.json" device)
if [ "${probe_device#cuda}" != "$probe_device" ]; then
  CUDA=1
  say "CUDA available to vitconv: yes ($probe_device)"
else
  CUDA=0
  say "CUDA available to vitconv: NO (device $probe_device; $(head -c 300 "$OUT/logs/probe.err")); running the CPU part only"
fi
MAIN_DEVICE=$([ "$CUDA" = 1 ] && echo cuda || echo cpu)

# verify NAME SOURCE CONVERTED DEVICE DTYPE [extra args]: runs one verify, records a summary row.
verify() {
  local name=$1 src=$2 conv=$3 device=$4 dtype=$5
  shift 5
  local json="$OUT/json/$name.json" limit
  limit=$(left)
  if [ "$limit" -le 5 ]; then
    printf '%s\t%s\t%s\tSKIPPED(budget)\n' "$name" "$device" "$dtype" >>"$ROWS"
    return
  fi
  [ "$limit" -gt 240 ] && limit=240
  timeout "$limit" "$BIN" verify "$src" "$conv" --device "$device" --dtype "$dtype" --json "$@" >"$json" 2>"$OUT/logs/$name.err"
  local rc=$?
  printf '%s\t%s\t%s\trc=%s pass=%s judged=%s\t%s\t%s\t%s\t%s\n' "$name" "$(field "$json" device)" "$dtype" "$rc" \
    "$(field "$json" pass)" "$(field "$json" judged)" "$(l=$(field "$json" logits.max_abs_diff); [ "$l" = - ] && l=$(field "$json" two_tower.logits_per_image.max_abs_diff); echo "$l")" \
    "$(field "$json" features.max_abs_diff)" "$(field "$json" reference_ms)" "$(field "$json" target_ms)" >>"$ROWS"
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
    say "  $name: exit $rc: $(head -c 300 "$OUT/logs/$name.err")"
  fi
}

convert() {
  local src=$1 out=$2 layout=$3
  shift 3
  timeout 300 "$BIN" npz-to-pt "$src" "$out" --layout "$layout" --quiet --force "$@" 2>>"$OUT/logs/convert.err"
}

say ""
say "== golden cases on $MAIN_DEVICE (f32, the golden input, reference held to the flax logits) =="
golden() {
  local case=$1 layout=$2 src=$3 input=$4 expect=$5
  shift 5
  local out="$WORK/$case-$layout"
  [ "$layout" != hf ] && out="$out.safetensors"
  if convert "fixtures/$src" "$out" "$layout" "$@"; then
    local extra=(--input "fixtures/$input")
    [ -n "$expect" ] && extra+=(--expect "fixtures/$expect")
    verify "golden-$case-$layout" "fixtures/$src" "$out" "$MAIN_DEVICE" f32 "${extra[@]}"
  else
    printf '%s\t-\t-\tCONVERT FAILED\n' "golden-$case-$layout" >>"$ROWS"
  fi
}
for layout in timm hf open_clip; do golden vit-token $layout vit-token/checkpoint.npz vit-token/input.npy vit-token/logits.npy; done
for layout in timm hf open_clip clip; do golden vit-mlp4 $layout vit-mlp4/checkpoint.npz vit-mlp4/input.npy vit-mlp4/logits.npy; done
golden vit-gap timm vit-gap/checkpoint.npz vit-gap/input.npy vit-gap/logits.npy
for layout in timm hf open_clip; do golden vit-prelogits $layout vit-prelogits/checkpoint.npz vit-prelogits/input.npy "" --drop-head; done
golden hybrid-r2 timm hybrid-r2/checkpoint.npz hybrid-r2/input.npy hybrid-r2/logits.npy
golden hybrid-root timm hybrid-root/checkpoint.npz hybrid-root/input.npy hybrid-root/logits.npy
golden bf16-weights timm vit-token-variants/bfloat16.npz vit-token/input.npy vit-token-variants/bfloat16_logits.npy
golden opt-target hf vit-token-variants/opt-target-prefix.npz vit-token/input.npy vit-token/logits.npy
golden bv-tok-scan timm big_vision/bv-vit-tok-scan/checkpoint.npz big_vision/bv-vit-tok-scan/input.npy big_vision/bv-vit-tok-scan/logits.npy
# pre_logits (rep_size) has no place in timm: the MAP features, after the checkpoint's encoder, as a feature extractor.
golden bv-map-scan timm big_vision/bv-vit-map-scan/checkpoint.npz big_vision/bv-vit-map-scan/input.npy "" --drop-head
golden bv-gap-sincos hf big_vision/bv-vit-gap-sincos/checkpoint.npz big_vision/bv-vit-gap-sincos/input.npy big_vision/bv-vit-gap-sincos/logits.npy --image-size 32

# SigLIP two-tower models: both towers and the logits, on the golden images and token ids (folders).
siglip() {
  local case=$1 layout=$2
  local src="fixtures/big_vision/$case/checkpoint.npz" out="$WORK/$case-$layout"
  if convert "$src" "$out" "$layout"; then
    verify "golden-$case-$layout" "$src" "$out" "$MAIN_DEVICE" f32 \
      --input "fixtures/big_vision/$case/input.npy" --text-ids "fixtures/big_vision/$case/text.npy"
  else
    printf '%s\t-\t-\tCONVERT FAILED\n' "golden-$case-$layout" >>"$ROWS"
  fi
}
siglip siglip-tiny open_clip
siglip siglip-nohead open_clip
siglip siglip-nohead hf

say ""
say "== full-size random-valued models (published shapes), timm layout =="
for model in $MODELS; do
  shapes="fixtures/shapes/$model.json"
  npz="$WORK/$model.npz"
  conv="$WORK/$model.safetensors"
  if [ "$(left)" -le 60 ]; then
    say "  $model: skipped, budget spent"
    continue
  fi
  t0=$SECONDS
  # Not scripts/make_random_checkpoint.py: its N(0, 0.02) everywhere (LayerNorm scales
  # included) shrinks every activation to ~1e-3, where float rounding says nothing about a
  # real model. Here kernels get std 1/sqrt(fan_in), norm scales 1 + N(0, 0.02), the rest
  # N(0, 0.02), so activations and logits are of order one, as in trained checkpoints.
  # Written one array at a time like np.savez does, so ViT-H needs one tensor of memory.
  timeout 240 python3 - "$shapes" "$npz" <<'PY' >>"$OUT/logs/random.log" 2>&1
import json, sys, zipfile
import numpy as np
spec = json.load(open(sys.argv[1]))
rng = np.random.default_rng(0)
with zipfile.ZipFile(sys.argv[2], "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
    for key, shape in spec["tensors"].items():
        shape = tuple(shape)
        a = rng.standard_normal(shape, dtype=np.float32)
        leaf = key.rsplit("/", 1)[-1]
        if leaf == "kernel":
            qkv = key.split("/")[-2] in ("query", "key", "value")
            fan_in = shape[0] if qkv else int(np.prod(shape[:-1]))
            a *= np.float32(1.0 / np.sqrt(fan_in))
        elif leaf == "scale":
            a = 1.0 + 0.02 * a
        else:
            a *= np.float32(0.02)
        with zf.open(key + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, a.astype(np.float32, copy=False), allow_pickle=False)
print(f"wrote {sys.argv[2]}: {len(spec['tensors'])} tensors")
PY
  if [ ! -f "$npz" ]; then
    say "  $model: could not build the random checkpoint (see logs/random.log)"
    continue
  fi
  t1=$SECONDS
  # timm has no place for pre_logits (ViT-H/14 21k has one): convert those as feature extractors.
  head_opt=()
  grep -q '"pre_logits/kernel"' "$shapes" && head_opt=(--drop-head)
  convert "$npz" "$conv" timm "${head_opt[@]}" || { say "  $model: conversion failed (logs/convert.err)"; continue; }
  say "  $model: random npz in $((t1 - t0)) s, converted in $((SECONDS - t1)) s"
  # Conversion speed on this machine against cp of the same file: 3 rounds, interleaved, warm page cache,
  # a sync before each run (wall seconds, best and all).
  if [ "$(left)" -gt 90 ]; then
    cat "$npz" >/dev/null
    TIMEFORMAT=%R
    cp_s=(); pt_s=()
    for _ in 1 2 3; do
      rm -f "$WORK/copy.npz" "$WORK/speed.pt"; sync
      cp_s+=("$( { time cp "$npz" "$WORK/copy.npz" >/dev/null 2>&1; } 2>&1 )")
      rm -f "$WORK/copy.npz"; sync
      pt_s+=("$( { time "$BIN" npz-to-pt "$npz" "$WORK/speed.pt" --layout timm "${head_opt[@]}" --quiet --force >/dev/null 2>&1; } 2>&1 )")
    done
    rm -f "$WORK/copy.npz" "$WORK/speed.pt"
    best() { printf '%s\n' "$@" | sort -n | head -1; }
    bcp=$(best "${cp_s[@]}"); bpt=$(best "${pt_s[@]}")
    say "  $model: npz-to-pt .pt ${pt_s[*]} s, cp ${cp_s[*]} s; best vs best $(python3 -c "print(f'{$bpt/$bcp:.2f}x')" 2>/dev/null) ($(nproc) cores)"
  fi
  if [ "$CUDA" = 1 ]; then
    verify "$model-cuda-f32" "$npz" "$conv" cuda f32 --batch "$CUDA_BATCH" --seed 1
    verify "$model-cuda-bf16" "$npz" "$conv" cuda bf16 --batch "$CUDA_BATCH" --seed 1
    verify "$model-cuda-f16" "$npz" "$conv" cuda f16 --batch "$CUDA_BATCH" --seed 1
  fi
  verify "$model-cpu-f32" "$npz" "$conv" cpu f32 --batch "$CPU_BATCH" --seed 1
  verify "$model-cpu-bf16" "$npz" "$conv" cpu bf16 --batch "$CPU_BATCH" --seed 1
  rm -f "$npz" "$conv"
done

say ""
say "== results (max abs diff of logits and pooled features; time of one forward after a warm-up) =="
{
  printf '%-44s %-7s %-5s %-28s %-10s %-10s %-10s %-10s\n' check device dtype status logits feat ref_ms target_ms
  while IFS=$'\t' read -r name device dtype status lg ft rm tm; do
    printf '%-44s %-7s %-5s %-28s %-10s %-10s %-10s %-10s\n' "$name" "$device" "$dtype" "$status" "${lg:--}" "${ft:--}" "${rm:--}" "${tm:--}"
  done <"$ROWS"
} | tee -a "$SUMMARY" >&2
failed=$(grep -c -E 'pass=False|CONVERT FAILED|rc=[2-9]|rc=1[0-9]' "$ROWS" || true)
say ""
say "total $((SECONDS - start)) s; rows with a failure: $failed (golden clip rows are reported, not judged)"
exit 0

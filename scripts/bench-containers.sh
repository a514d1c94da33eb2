#!/usr/bin/env bash
# Checkpoint containers (issue 20): the full-size big_vision L/16 scan+MAP classifier and the SigLIP So400m/14-384
# two-tower model, random-valued from their published shapes (make_random_checkpoint.py), written by the
# `write_container` example as big_vision `.bv` folders (zstd level 1 with one chunk per array, zstd with four
# chunks per array split along a non-leading axis where one divides, and uncompressed) and as an Orbax zarr v3
# checkpoint (sharding_indexed, zstd level 3, per-array folders), then converted side by side with:
# - the same model's stored `.npz` converted to the same layout (the target: containers within 1.5x of it);
# - a durable copy of the container's bytes (`cp -r` then `sync -f`; the target for uncompressed data: <= 1.0x).
# Peak memory (target < 200 MB, flat in model size) is compared with the SigLIP B/16's `.bv`.
# Figures are wall seconds (best and median of RUNS runs, interleaved, warm page cache, `sync` before each), peak
# RSS and CPU seconds (/usr/bin/time -v), quoted as ratios against baselines measured in the same invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
work=target/bench
mkdir -p "$work"
runs=$work/ct-runs.tsv
. scripts/bench-lib.sh

cargo build --release --quiet
cargo build --release --quiet -p vitconv-tensors --example write_container
bin=target/release/vitconv
wc=target/release/examples/write_container

make_npz() { # shapes-json name
  [ -f "$work/$2.npz" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py "fixtures/big_vision/shapes/$1.json" "$work/$2.npz"
}
make_container() { # mode name
  [ -d "$work/$2-$1" ] || $wc "$1" "$work/$2.npz" "$work/$2-$1"
}
make_npz bv-ViT-L_16-224-map-scan l16
make_npz siglip-So400m_14-384 so400m
make_npz siglip-B_16-224 sigb16
for m in bv bv4 bvraw orbax3; do make_container $m l16; make_container $m so400m; done
make_container bv sigb16

: > "$runs"
du -sh "$work"/l16-* "$work"/so400m-* "$work"/l16.npz "$work"/so400m.npz | sed 's/^/size /'
echo "runs: $RUNS, interleaved, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
copy() { rm -rf "$work/out/copy"; cp -r "$1" "$work/out/copy" && sync -f "$work/out/copy"; }
export -f copy; export work
for _ in $(seq "$RUNS"); do
  run_once "L/16 .npz -> timm (baseline)" $bin npz-to-pt "$work/l16.npz" "$work/out/a.safetensors" --layout timm --quiet
  run_once "L/16 .bv zstd, 1 chunk -> timm" $bin npz-to-pt "$work/l16-bv" "$work/out/a.safetensors" --layout timm --quiet
  run_once "L/16 .bv zstd, 4 chunks -> timm" $bin npz-to-pt "$work/l16-bv4" "$work/out/a.safetensors" --layout timm --quiet
  run_once "L/16 .bv uncompressed -> timm" $bin npz-to-pt "$work/l16-bvraw" "$work/out/a.safetensors" --layout timm --quiet
  run_once "L/16 Orbax zarr3 -> timm" $bin npz-to-pt "$work/l16-orbax3/ckpt" "$work/out/a.safetensors" --layout timm --quiet
  run_once "L/16 durable copy of .bv zstd" bash -c "copy '$work/l16-bv'"
  run_once "L/16 durable copy of .bv uncompressed" bash -c "copy '$work/l16-bvraw'"
  run_once "So400m .npz -> open_clip (baseline)" $bin npz-to-pt "$work/so400m.npz" "$work/out/oc" --layout open_clip --image-size 384 --quiet
  run_once "So400m .bv zstd, 1 chunk -> open_clip" $bin npz-to-pt "$work/so400m-bv" "$work/out/oc" --layout open_clip --image-size 384 --quiet
  run_once "So400m .bv zstd, 4 chunks -> open_clip" $bin npz-to-pt "$work/so400m-bv4" "$work/out/oc" --layout open_clip --image-size 384 --quiet
  run_once "So400m .bv uncompressed -> open_clip" $bin npz-to-pt "$work/so400m-bvraw" "$work/out/oc" --layout open_clip --image-size 384 --quiet
  run_once "So400m Orbax zarr3 -> open_clip" $bin npz-to-pt "$work/so400m-orbax3/ckpt" "$work/out/oc" --layout open_clip --image-size 384 --quiet
  run_once "So400m durable copy of .bv zstd" bash -c "copy '$work/so400m-bv'"
  run_once "So400m durable copy of .bv uncompressed" bash -c "copy '$work/so400m-bvraw'"
  run_once "SigLIP B/16 .bv zstd -> open_clip" $bin npz-to-pt "$work/sigb16-bv" "$work/out/oc" --layout open_clip --quiet
done

summarize "$work/ct-results.tsv" 44

awk -F'\t' '
  { s[$1]=$2; m[$1]=$3; md[$1]=$4 }
  END {
    printf "\nratios (same invocation; best of each, then median of each):\n"
    split("L/16 So400m", models, " ")
    for (i = 1; i <= 2; i++) {
      x = models[i]; lay = (x == "L/16") ? "timm" : "open_clip"
      base = x " .npz -> " lay " (baseline)"
      n = split(".bv zstd, 1 chunk|.bv zstd, 4 chunks|.bv uncompressed|Orbax zarr3", kinds, "|")
      for (k = 1; k <= n; k++) {
        c = x " " kinds[k] " -> " lay
        printf "  %-40s vs .npz: %.2fx %.2fx   peak %d MB\n", c, s[c]/s[base], md[c]/md[base], m[c]
      }
      z = x " .bv zstd, 1 chunk -> " lay; zc = x " durable copy of .bv zstd"
      r = x " .bv uncompressed -> " lay; rc = x " durable copy of .bv uncompressed"
      printf "  %-40s vs durable copy: %.2fx %.2fx\n", z, s[z]/s[zc], md[z]/md[zc]
      printf "  %-40s vs durable copy: %.2fx %.2fx\n", r, s[r]/s[rc], md[r]/md[rc]
    }
    b = "SigLIP B/16 .bv zstd -> open_clip"; so = "So400m .bv zstd, 1 chunk -> open_clip"
    printf "  peak RSS So400m / B/16 (.bv zstd):       %.2fx  (%d MB / %d MB; target: flat, < 200 MB)\n", m[so]/m[b], m[so], m[b]
  }' "$work/ct-results.tsv"

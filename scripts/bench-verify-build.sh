#!/usr/bin/env bash
# Verify-build benchmark (issue 19): what a build with `--features verify` costs the commands that do not
# verify. Builds the plain binary into target/plain and the verify-enabled one into target/release (where
# `vitconv verify` finds `vitconv-verify`), then measures side by side, best of RUNS with a warm page cache:
#   - `vitconv inspect fixtures/vit-token/checkpoint.npz` (a 0.5 MB fixture)
#       target: the verify build within 0.05 s and 30 MB of the plain build
#   - `vitconv npz-to-pt ViT-L/32 OUT.safetensors --layout timm` (random values, published shapes, 1.2 GB)
#       target: the verify build at the plain build's time and memory
# and says which executables load libtorch (ldd). Figures: wall seconds and peak RSS from /usr/bin/time -v.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
work=target/bench
ckpt=$work/vit-l32.npz
mkdir -p "$work"

CARGO_TARGET_DIR=target/plain cargo build --release --quiet --bin vitconv
scripts/with-libtorch cargo build --release --quiet --features verify
plain=target/plain/release/vitconv
verify=target/release/vitconv
[ -f "$ckpt" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py \
  fixtures/shapes/ViT-L_32-imagenet2012-384.json "$ckpt"

# best LABEL RUNS CMD...: prints "LABEL  best wall s  best peak RSS MB".
best() {
  local label=$1 runs=$2; shift 2
  local bs="" bkb=""
  for _ in $(seq "$runs"); do
    sync
    /usr/bin/time -v -o "$work/time.txt" "$@" >/dev/null 2>"$work/stderr.txt" || { cat "$work/stderr.txt" >&2; exit 1; }
    local s kb
    s=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); t=0; for(i=1;i<=n;i++) t=t*60+a[i]; print t}' "$work/time.txt")
    kb=$(awk -F': ' '/Maximum resident set size/{print $2}' "$work/time.txt")
    if [ -z "$bs" ] || awk -v a="$s" -v b="$bs" 'BEGIN{exit !(a<b)}'; then bs=$s; fi
    if [ -z "$bkb" ] || [ "$kb" -lt "$bkb" ]; then bkb=$kb; fi
  done
  printf '%-44s %8.3f s %8.1f MB\n' "$label" "$bs" "$(awk -v k="$bkb" 'BEGIN{print k/1024}')"
}

echo "libtorch loaded by (ldd):"
for b in "$plain" "$verify" target/release/vitconv-verify; do
  printf '  %-36s %s\n' "$b" "$(ldd "$b" | grep -c 'libtorch' || true) libtorch libraries"
done
fixture=fixtures/vit-token/checkpoint.npz
best "inspect fixture, plain build" "$RUNS" "$plain" inspect "$fixture"
best "inspect fixture, verify build" "$RUNS" "$verify" inspect "$fixture"
out=$work/verify-build-out.safetensors
best "ViT-L/32 to timm, plain build" 3 bash -c "rm -f $out; $plain npz-to-pt $ckpt $out --layout timm --quiet"
best "ViT-L/32 to timm, verify build" 3 bash -c "rm -f $out; $verify npz-to-pt $ckpt $out --layout timm --quiet"
rm -f "$out"

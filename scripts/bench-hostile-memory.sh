#!/usr/bin/env bash
# Memory on hostile inputs (issue 23): every input under 10 MB must keep vitconv under 100 MB above its
# resting size. Builds the inputs of the causes fixed there, small files that claim much, and prints the peak
# RSS of `inspect` and `npz-to-pt` on each next to the resting figure (`inspect` of a 0.5 MB fixture), from
# /usr/bin/time -v:
#   - a scan-format big_vision file whose stack claims 1,000,000 and 60,000 blocks (its depth-giving LayerNorm
#     as deflated zeros);
#   - a sincos2d source cut to patch 1, converted at --image-size 512 (a 262,144-cell grid, streamed) and
#     8192 (refused by the grid limit);
#   - a learned position table resized from 4x4 to 512x512 with --resize bicubic.
set -euo pipefail
cd "$(dirname "$0")/.."
work=target/bench/hostile
rm -rf "$work"; mkdir -p "$work"
bin=${VITCONV_BIN:-target/release/vitconv}
[ -x "$bin" ] || cargo build --release --quiet --bin vitconv

scripts/with-libtorch python - "$work" <<'PY'
import sys, zipfile, io
import numpy as np
work = sys.argv[1]
src = np.load("fixtures/big_vision/bv-vit-map-scan/checkpoint.npz")
def save(path, arrays):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for k, v in arrays.items():
            buf = io.BytesIO(); np.lib.format.write_array(buf, np.ascontiguousarray(v)); z.writestr(k + ".npy", buf.getvalue())
for depth in (1_000_000, 60_000):
    arrays = {k: src[k] for k in src.files}
    # The stacked LayerNorm that gives the depth (the others keep theirs: the depth is read first).
    k = "params/Transformer/encoderblock/LayerNorm_0/scale"
    arrays[k] = np.zeros((depth,) + src[k].shape[1:], src[k].dtype)
    save(f"{work}/deep-{depth}.npz", arrays)
s = np.load("fixtures/big_vision/bv-vit-gap-sincos/checkpoint.npz")
arrays = {k: s[k] for k in s.files}
arrays["params/embedding/kernel"] = s["params/embedding/kernel"][:1, :1]
save(f"{work}/patch1.npz", arrays)
PY
ls -la "$work"

peak() {  # peak LABEL CMD...: prints the label, exit status and peak RSS in MB
  local label=$1; shift
  sync
  set +e
  /usr/bin/time -v -o "$work/time.txt" "$@" >/dev/null 2>"$work/err.txt"
  local rc=$?
  set -e
  local kb
  kb=$(awk -F': ' '/Maximum resident set size/{print $2}' "$work/time.txt")
  printf '%-58s exit %d  %7.1f MB  %s\n' "$label" "$rc" "$(awk -v k="$kb" 'BEGIN{print k/1024}')" "$(head -c 120 "$work/err.txt")"
}
peak "resting: inspect fixtures/vit-token (0.5 MB)" "$bin" inspect fixtures/vit-token/checkpoint.npz
for d in 1000000 60000; do
  f="$work/deep-$d.npz"
  peak "inspect deep-$d ($(du -k "$f" | cut -f1) kB)" "$bin" inspect "$f"
  peak "npz-to-pt deep-$d" "$bin" npz-to-pt "$f" "$work/o-$d.safetensors" --layout timm --quiet
done
peak "npz-to-pt patch1 --image-size 512 (262,144 cells)" "$bin" npz-to-pt "$work/patch1.npz" "$work/p512.safetensors" --layout timm --image-size 512 --quiet
peak "npz-to-pt patch1 --image-size 8192" "$bin" npz-to-pt "$work/patch1.npz" "$work/p8192.safetensors" --layout timm --image-size 8192 --quiet
peak "npz-to-pt vit-token resized to 512x512 bicubic" "$bin" npz-to-pt fixtures/vit-token/checkpoint.npz "$work/r.safetensors" --layout timm --image-size 8192 --resize bicubic --quiet
echo "left in $work: $(ls -A "$work" | grep -c partial || true) temporaries"

#!/usr/bin/env bash
# Conversion benchmark (issue 3): a random-valued ViT-L/32 with the exact
# published keys and shapes, converted to .pt and .safetensors by vitconv,
# side by side with `cp` of the same file and with the Python path users take
# today (timm's npz loader, then torch.save). Also converts random ViT-B/16 and
# ViT-H/14 to show that peak memory does not grow with the model.
#
# Figures are wall seconds and peak RSS (/usr/bin/time -v "Maximum resident set
# size"), each the best of RUNS runs with a warm page cache, quoted as ratios
# against the baselines measured in the same invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
work=target/bench
mkdir -p "$work"
command -v /usr/bin/time >/dev/null || { echo "bench: /usr/bin/time missing: apt-get install -y time" >&2; exit 2; }

scripts/with-libtorch cargo build --release --quiet
bin=target/release/vitconv

make_ckpt() { # shapes-json name
  [ -f "$work/$2.npz" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py "fixtures/shapes/$1.json" "$work/$2.npz"
}
make_ckpt ViT-L_32-imagenet2012-384 vit-l32
make_ckpt ViT-B_16-imagenet2012-384 vit-b16
make_ckpt ViT-H_14-imagenet21k vit-h14

# measure LABEL CMD...: best wall seconds and best peak RSS (MB) over RUNS runs.
measure() {
  local label=$1; shift
  local best_s="" best_kb=""
  for _ in $(seq "$RUNS"); do
    rm -rf "$work/out"; mkdir -p "$work/out"
    /usr/bin/time -v -o "$work/time.txt" "$@" >/dev/null 2>"$work/stderr.txt" || { cat "$work/stderr.txt" >&2; exit 1; }
    local s kb
    s=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); t=0; for(i=1;i<=n;i++) t=t*60+a[i]; print t}' "$work/time.txt")
    kb=$(awk -F': ' '/Maximum resident set size/{print $2}' "$work/time.txt")
    if [ -z "$best_s" ] || awk "BEGIN{exit !($s < $best_s)}"; then best_s=$s; fi
    if [ -z "$best_kb" ] || [ "$kb" -lt "$best_kb" ]; then best_kb=$kb; fi
  done
  printf '%s\t%s\t%s\n' "$label" "$best_s" "$((best_kb / 1024))" >> "$work/results.tsv"
  printf '%-34s %8.2f s %8d MB\n' "$label" "$best_s" "$((best_kb / 1024))"
}

: > "$work/results.tsv"
cat "$work"/*.npz > /dev/null   # warm the page cache for everyone alike
echo "file: $work/vit-l32.npz ($(du -h "$work/vit-l32.npz" | cut -f1)), runs: $RUNS, best of each, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
measure "cp (baseline)" cp "$work/vit-l32.npz" "$work/out/copy.npz"
# cp copies inside the kernel (copy_file_range: no pass through user space); cat moves every
# byte through a user-space buffer, the floor for any converter that reads and writes tensors.
measure "cat > file (user-space copy)" sh -c "cat '$work/vit-l32.npz' > '$work/out/cat.npz'"
# vitconv fsyncs its output before renaming it into place (a crash must not leave a renamed but
# empty file); this is cp with the same durability.
measure "cp + sync (durable copy)" sh -c "cp '$work/vit-l32.npz' '$work/out/copy.npz' && sync '$work/out/copy.npz'"
measure "vitconv -> .pt (timm)" $bin npz-to-pt "$work/vit-l32.npz" "$work/out/l32.pt" --layout timm --quiet
measure "vitconv -> .safetensors (timm)" $bin npz-to-pt "$work/vit-l32.npz" "$work/out/l32.safetensors" --layout timm --quiet
measure "python timm _load_weights+save" scripts/with-libtorch python scripts/timm_npz_to_pt.py "$work/vit-l32.npz" "$work/out/timm.pt"
measure "vitconv ViT-B/16 -> .pt" $bin npz-to-pt "$work/vit-b16.npz" "$work/out/b16.pt" --layout timm --quiet
measure "vitconv ViT-H/14 -> .pt" $bin npz-to-pt "$work/vit-h14.npz" "$work/out/h14.pt" --layout timm --drop-head --quiet

awk -F'\t' '
  { s[$1]=$2; m[$1]=$3 }
  END {
    cp=s["cp (baseline)"]; py=s["python timm _load_weights+save"]
    printf "\nratios (same invocation):\n"
    printf "  .pt vs cp:                 %.2fx  (target <= 1.5x)\n", s["vitconv -> .pt (timm)"]/cp
    printf "  .safetensors vs cp:        %.2fx  (target <= 1.5x)\n", s["vitconv -> .safetensors (timm)"]/cp
    printf "  .pt vs cp + sync:          %.2fx\n", s["vitconv -> .pt (timm)"]/s["cp + sync (durable copy)"]
    printf "  .safetensors vs cp + sync: %.2fx\n", s["vitconv -> .safetensors (timm)"]/s["cp + sync (durable copy)"]
    printf "  .pt vs cat > file:         %.2fx\n", s["vitconv -> .pt (timm)"]/s["cat > file (user-space copy)"]
    printf "  .safetensors vs cat > file: %.2fx\n", s["vitconv -> .safetensors (timm)"]/s["cat > file (user-space copy)"]
    printf "  timm path vs .pt:          %.1fx slower  (target >= 6x)\n", py/s["vitconv -> .pt (timm)"]
    printf "  timm path vs cp:           %.1fx\n", py/cp
    printf "  peak RSS .pt:              %d MB  (target < 200 MB)\n", m["vitconv -> .pt (timm)"]
    printf "  peak RSS H/14 vs B/16:     %.2fx  (target <= 1.2x)\n", m["vitconv ViT-H/14 -> .pt"]/m["vitconv ViT-B/16 -> .pt"]
  }' "$work/results.tsv"

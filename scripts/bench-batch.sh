#!/usr/bin/env bash
# Batch conversion benchmark (issue 11): `vitconv npz-to-pt SRC_DIR OUT_DIR` against a shell loop of
# single-file conversions of the same files, in the same invocation.
#
# Two sets: SMALL (default 200) copies of the bundled fixtures (vit-token and its variants, vit-mlp4;
# 0.5 MB each) in nested directories, and BIG (default 4) ViT-B/16-size checkpoints (random values, the
# published keys and shapes of fixtures/shapes/ViT-B_16-imagenet2012-384.json, 350 MB each). Every command
# converts to --layout timm .safetensors into a fresh output directory, after a `sync` so that no command
# pays for the writeback of the one before it. The loop is given its output directories before the clock
# starts (batch mode makes its own). The commands take turns, run by run, so a slow spell of this shared
# machine hits them alike; figures are wall seconds, best and median of RUNS runs, and the ratios
# loop / batch (target for the small set: >= 1.6 on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SMALL=${SMALL:-200}
BIG=${BIG:-4}
work=target/bench-batch
mkdir -p "$work"

CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --quiet
bin=target/release/vitconv

# The small set: the fixtures in turn, at paths like a sweep's (lr*/seed*/checkpoint.npz).
small=$work/small
fixtures=(vit-token/checkpoint.npz vit-token-variants/compressed.npz vit-token-variants/bfloat16.npz
  vit-mlp4/checkpoint.npz vit-token-variants/opt-target-prefix.npz)
if [ "$(find "$small" -name '*.npz' 2>/dev/null | wc -l)" -ne "$SMALL" ]; then
  rm -rf "$small"
  for i in $(seq 0 $((SMALL - 1))); do
    d="$small/lr$((i / 20))/seed$((i % 20))"
    mkdir -p "$d"
    cp "fixtures/${fixtures[$((i % ${#fixtures[@]}))]}" "$d/checkpoint.npz"
  done
fi

# The big set: one random ViT-B/16 (shared with bench-convert.sh when it made one), copied BIG times.
big=$work/big
b16=target/bench/vit-b16.npz
if [ ! -f "$b16" ]; then
  mkdir -p target/bench
  scripts/with-libtorch python scripts/make_random_checkpoint.py fixtures/shapes/ViT-B_16-imagenet2012-384.json "$b16"
fi
if [ "$(find "$big" -name '*.npz' 2>/dev/null | wc -l)" -ne "$BIG" ]; then
  rm -rf "$big"
  for i in $(seq 0 $((BIG - 1))); do
    mkdir -p "$big/run$i"
    cp "$b16" "$big/run$i/checkpoint.npz"
  done
fi

# loop SRC OUT: what a user writes today, one process per file.
loop() {
  local src=$1 out=$2 f rel
  while IFS= read -r f; do
    rel=${f#"$src"/}
    "$bin" npz-to-pt "$f" "$out/${rel%.npz}.safetensors" --layout timm --quiet
  done < <(find "$src" -name '*.npz' | sort)
}

# run_once LABEL SRC MODE CMD...: one timed run into a fresh $work/out (MODE `loop`: its directories made
# first; `resume`: converted once, untimed, so that the timed run finds everything up to date); appends
# LABEL and wall seconds to runs.tsv.
run_once() {
  local label=$1 src=$2 mode=$3
  shift 3
  rm -rf "$work/out"
  case $mode in
    loop) (cd "$src" && find . -type d) | while IFS= read -r d; do mkdir -p "$work/out/$d"; done ;;
    resume) "$bin" npz-to-pt "$src" "$work/out" --layout timm --quiet ;;
  esac
  sync
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null 2>"$work/stderr.txt" || { cat "$work/stderr.txt" >&2; exit 1; }
  t1=$(date +%s%N)
  printf '%s\t%s\n' "$label" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')" >> "$work/runs.tsv"
}

: > "$work/runs.tsv"
cat "$small"/*/*/*.npz "$big"/*/*.npz > /dev/null # warm the page cache for everyone alike
echo "sets: $SMALL small ($(du -sh "$small" | cut -f1)), $BIG ViT-B/16 ($(du -sh "$big" | cut -f1)); runs: $RUNS, interleaved; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$RUNS"); do
  run_once "small: shell loop" "$small" loop loop "$small" "$work/out"
  run_once "small: batch" "$small" - "$bin" npz-to-pt "$small" "$work/out" --layout timm --quiet
  run_once "small: batch --jobs 1" "$small" - "$bin" npz-to-pt "$small" "$work/out" --layout timm --quiet --jobs 1
  run_once "small: batch, all up to date" "$small" resume "$bin" npz-to-pt "$small" "$work/out" --layout timm --quiet
  run_once "big: shell loop" "$big" loop loop "$big" "$work/out"
  run_once "big: batch" "$big" - "$bin" npz-to-pt "$big" "$work/out" --layout timm --quiet
done
rm -rf "$work/out"

# Best and median wall seconds of each command.
: > "$work/results.tsv"
while IFS= read -r label; do
  grep -F "$label"$'\t' "$work/runs.tsv" | cut -f2 | sort -g > "$work/walls.txt"
  best=$(head -1 "$work/walls.txt")
  median=$(awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}' "$work/walls.txt")
  printf '%s\t%s\t%s\n' "$label" "$best" "$median" >> "$work/results.tsv"
  printf '%-30s %8.3f s best %8.3f s median\n' "$label" "$best" "$median"
done < <(cut -f1 "$work/runs.tsv" | awk '!seen[$0]++')

awk -F'\t' '
  { s[$1]=$2; md[$1]=$3 }
  END {
    printf "\nratios loop / batch (same invocation; best of each, then median of each):\n"
    printf "  small set:            %.2fx  %.2fx  (target >= 1.6x)\n", s["small: shell loop"]/s["small: batch"], md["small: shell loop"]/md["small: batch"]
    printf "  small set, --jobs 1:  %.2fx  %.2fx\n", s["small: shell loop"]/s["small: batch --jobs 1"], md["small: shell loop"]/md["small: batch --jobs 1"]
    printf "  big set:              %.2fx  %.2fx\n", s["big: shell loop"]/s["big: batch"], md["big: shell loop"]/md["big: batch"]
  }' "$work/results.tsv"

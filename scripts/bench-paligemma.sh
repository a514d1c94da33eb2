#!/usr/bin/env bash
# PaliGemma image-tower conversion benchmark (issue 21): a random-valued checkpoint with the exact keys and
# shapes of the published PaliGemma 2 3B-224 `.b16.npz` (fixtures/siglip2/shapes/paligemma2-3b-pt-224.json:
# 3.03 B parameters, every array bf16 stored as numpy's '|V2', 6.1 GB), converted by vitconv with
# `--tower image` to the transformers SiglipVisionModel folder (+ multi_modal_projector): the 0.43 B-parameter
# image tower and its projection are written, the 2.6 B-parameter Gemma 2 LLM is left out.
#
# The baselines are `cp` and `cp` + `sync` of a file as large as the image tower's bytes in the source (what a
# converter must at least read and write), made once from the source's first bytes.
#
# Figures are wall seconds (best and median of RUNS runs, interleaved, warm page cache, `sync` before each)
# and peak RSS (/usr/bin/time -v), quoted as ratios against the baselines measured in the same invocation.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
work=target/bench
mkdir -p "$work"
runs=$work/pg-runs.tsv
. scripts/bench-lib.sh

cargo build --release --quiet
bin=target/release/vitconv
shapes=fixtures/siglip2/shapes/paligemma2-3b-pt-224.json
src="$work/paligemma2-3b-pt-224.b16.npz"
[ -f "$src" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py "$shapes" "$src"
# The image tower's bytes in the source: every params/img/ array, 2 bytes a value.
tower_bytes=$(scripts/with-libtorch python -c "
import json, math, sys
t = json.load(open(sys.argv[1]))['tensors']
print(sum(2 * math.prod(s) for k, s in t.items() if k.startswith('params/img/')))" "$shapes")
tower="$work/paligemma2-tower-bytes.bin"
[ "$(stat -c %s "$tower" 2>/dev/null || echo 0)" = "$tower_bytes" ] || head -c "$tower_bytes" "$src" > "$tower"

: > "$runs"
cat "$src" > /dev/null
cat "$tower" > /dev/null
echo "file: $src ($(du -h "$src" | cut -f1)); image tower $tower_bytes bytes; runs: $RUNS, interleaved, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$RUNS"); do
  run_once "cp of the tower's bytes (baseline)" cp "$tower" "$work/out/copy.bin"
  # vitconv fsyncs its output before renaming it into place; this is cp with the same durability.
  run_once "cp + sync of the tower's bytes" sh -c "cp '$tower' '$work/out/copy.bin' && sync '$work/out/copy.bin'"
  run_once "vitconv --tower image -> hf" $bin npz-to-pt "$src" "$work/out/hf" --layout hf --tower image --dtype bf16 --quiet
done

summarize "$work/pg-results.tsv" 40

awk -F'\t' '
  { s[$1]=$2; m[$1]=$3; md[$1]=$4 }
  END {
    cp=s["cp of the tower'"'"'s bytes (baseline)"]; mcp=md["cp of the tower'"'"'s bytes (baseline)"]
    cs=s["cp + sync of the tower'"'"'s bytes"]; mcs=md["cp + sync of the tower'"'"'s bytes"]
    hf="vitconv --tower image -> hf"
    printf "\nratios (same invocation; best of each, then median of each):\n"
    printf "  hf vs cp:          %.2fx  %.2fx\n", s[hf]/cp, md[hf]/mcp
    printf "  hf vs cp + sync:   %.2fx  %.2fx\n", s[hf]/cs, md[hf]/mcs
    printf "  peak RSS hf:       %d MB\n", m[hf]
  }' "$work/pg-results.tsv"

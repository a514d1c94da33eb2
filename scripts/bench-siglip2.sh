#!/usr/bin/env bash
# SigLIP 2 fixed-resolution conversion benchmark (issue 21): random-valued checkpoints with the exact keys and
# shapes of the published So400m/16-384 (fixtures/siglip2/shapes/siglip2-So400m_16-384.json: 1.14 B
# parameters, 4.5 GB f32, Gemma's [256000, 1152] token embedding) and g-opt/16-384
# (siglip2-g-opt_16-384.json: 1.87 B parameters, 7.5 GB f32; image width 1536 without img/head, text width
# 1152 with txt/head 1152 -> 1536), each converted by vitconv to the transformers SiglipModel folder and to the
# open_clip folder, against a durable copy of the same file (`cp` then `sync`: vitconv fsyncs its outputs
# before renaming them into place) and a plain `cp`, measured in the same invocation.
#
# Figures are wall seconds (best and median of RUNS runs, interleaved, warm page cache, `sync` before each)
# and peak RSS (/usr/bin/time -v). Targets: <= 1.0x the durable copy, peak < 200 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-2}
work=target/bench
mkdir -p "$work"
runs=$work/sg2-runs.tsv
. scripts/bench-lib.sh

cargo build --release --quiet
bin=target/release/vitconv
so="$work/siglip2-so400m16-384.npz"
gopt="$work/siglip2-gopt16-384.npz"
[ -f "$so" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py fixtures/siglip2/shapes/siglip2-So400m_16-384.json "$so"
[ -f "$gopt" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py fixtures/siglip2/shapes/siglip2-g-opt_16-384.json "$gopt"

: > "$runs"
echo "files: $so ($(du -h "$so" | cut -f1)), $gopt ($(du -h "$gopt" | cut -f1)); runs: $RUNS, interleaved, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$RUNS"); do
  for pair in "so400m:$so" "g-opt:$gopt"; do
    name=${pair%%:*}; src=${pair#*:}
    cat "$src" > /dev/null
    run_once "$name cp" cp "$src" "$work/out/copy.npz"
    run_once "$name cp + sync" sh -c "cp '$src' '$work/out/copy.npz' && sync '$work/out/copy.npz'"
    run_once "$name -> hf" $bin npz-to-pt "$src" "$work/out/hf" --layout hf --quiet
    run_once "$name -> open_clip" $bin npz-to-pt "$src" "$work/out/oc" --layout open_clip --quiet
  done
done

summarize "$work/sg2-results.tsv" 24

awk -F'\t' '
  { s[$1]=$2; m[$1]=$3; md[$1]=$4 }
  END {
    printf "\nratios (same invocation; best of each, then median of each):\n"
    n = split("so400m g-opt", names, " ")
    for (i = 1; i <= n; i++) {
      k = names[i]; cs = s[k " cp + sync"]; mcs = md[k " cp + sync"]; cp = s[k " cp"]; mcp = md[k " cp"]
      printf "  %-7s hf vs cp + sync:        %.2fx  %.2fx  (target <= 1.0x)\n", k, s[k " -> hf"]/cs, md[k " -> hf"]/mcs
      printf "  %-7s open_clip vs cp + sync: %.2fx  %.2fx  (target <= 1.0x)\n", k, s[k " -> open_clip"]/cs, md[k " -> open_clip"]/mcs
      printf "  %-7s hf vs cp:               %.2fx  %.2fx\n", k, s[k " -> hf"]/cp, md[k " -> hf"]/mcp
      printf "  %-7s open_clip vs cp:        %.2fx  %.2fx\n", k, s[k " -> open_clip"]/cp, md[k " -> open_clip"]/mcp
      printf "  %-7s peak RSS hf / open_clip: %d MB / %d MB  (target < 200 MB)\n", k, m[k " -> hf"], m[k " -> open_clip"]
    }
  }' "$work/sg2-results.tsv"

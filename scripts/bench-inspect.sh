#!/usr/bin/env bash
# Inspect benchmark (issue 2): a random-valued ViT-L/32 .npz with the exact keys and
# shapes of the published ViT-L_32-imagenet2012-384 (306.6 M parameters, 1.23 GB),
# measured side by side in one run:
#   - `vitconv inspect FILE`          target: < 0.1 s wall, < 50 MB peak RSS
#   - `vitconv inspect --stats FILE`  target: within 2x of `cat FILE > /dev/null`
#   - `cat FILE > /dev/null`          the baseline
# Figures are the best of RUNS runs with a warm page cache: wall seconds and maximum
# resident set size as `/usr/bin/time -v` reports them.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
work=target/bench
ckpt=$work/vit-l32.npz
mkdir -p "$work"

if [ ! -x /usr/bin/time ]; then
  echo "bench: installing GNU time for /usr/bin/time -v" >&2
  apt-get install -y time >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y time >/dev/null; }
fi
probe=$(/usr/bin/time -v true 2>&1 || true)
grep -q "Maximum resident set size" <<<"$probe" || { echo "bench: /usr/bin/time -v is not GNU time" >&2; exit 2; }

cargo build --release --quiet --bin vitconv
bin=target/release/vitconv

# Built once and cached (the conversion benchmark shares it).
[ -f "$ckpt" ] || scripts/with-libtorch python scripts/make_random_checkpoint.py \
  fixtures/shapes/ViT-L_32-imagenet2012-384.json "$ckpt"

# measure LABEL CMD...: appends "LABEL<TAB>best wall s<TAB>best peak RSS KB<TAB>best CPU s" to
# the results. CPU time (user + system) is reported too because it is what a busy machine
# distorts least; wall time is the target's measure.
measure() {
  local label=$1; shift
  local best_s="" best_kb="" best_cpu=""
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -v -o "$work/time.txt" "$@" >/dev/null 2>"$work/stderr.txt" || { cat "$work/stderr.txt" >&2; exit 1; }
    local s kb cpu
    s=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); t=0; for(i=1;i<=n;i++) t=t*60+a[i]; print t}' "$work/time.txt")
    kb=$(awk -F': ' '/Maximum resident set size/{print $2}' "$work/time.txt")
    cpu=$(awk -F': ' '/User time|System time/{t+=$2} END{print t}' "$work/time.txt")
    if [ -z "$best_s" ] || awk "BEGIN{exit !($s < $best_s)}"; then best_s=$s; fi
    if [ -z "$best_kb" ] || [ "$kb" -lt "$best_kb" ]; then best_kb=$kb; fi
    if [ -z "$best_cpu" ] || awk "BEGIN{exit !($cpu < $best_cpu)}"; then best_cpu=$cpu; fi
  done
  printf '%s\t%s\t%s\t%s\n' "$label" "$best_s" "$best_kb" "$best_cpu" >> "$work/inspect-results.tsv"
}

: > "$work/inspect-results.tsv"
cat "$ckpt" > /dev/null   # warm the page cache for everyone alike
echo "file: $ckpt ($(du -h "$ckpt" | cut -f1)), $(nproc) cores, best of $RUNS runs, warm cache, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: scripts/bench-inspect.sh"
measure "vitconv inspect" "$bin" inspect "$ckpt"
measure "vitconv inspect --stats" "$bin" inspect --stats "$ckpt"
measure "cat file > /dev/null" sh -c "cat '$ckpt' > /dev/null"

# /usr/bin/time's elapsed time has 10 ms resolution; inspect itself is timed again
# with date's nanoseconds for a finer figure.
fine=$(for _ in $(seq "$RUNS"); do
  t0=$(date +%s%N); "$bin" inspect "$ckpt" >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000 ))
done | sort -n | head -1)

awk -F'\t' -v fine_us="$fine" -v ncores="$(nproc)" '
  { s[$1]=$2; kb[$1]=$3; cpu[$1]=$4; order[NR]=$1 }
  END {
    printf "\n%-26s %10s %12s %10s\n", "", "wall (s)", "max RSS (MB)", "CPU (s)"
    for (i = 1; i <= NR; i++) printf "%-26s %10.2f %12.1f %10.2f\n", order[i], s[order[i]], kb[order[i]]/1024, cpu[order[i]]
    printf "\nvitconv inspect, finer clock: %.3f s\n", fine_us/1e6
    cat = s["cat file > /dev/null"]; st = s["vitconv inspect --stats"]
    printf "inspect:          %.3f s (target < 0.1 s), %.1f MB (target < 50 MB)\n", fine_us/1e6, kb["vitconv inspect"]/1024
    if (cat > 0) printf "inspect --stats:  %.2fx cat wall (target <= 2x); CPU %.2f s on %d cores vs cat %.2f s\n", st/cat, cpu["vitconv inspect --stats"], ncores, cpu["cat file > /dev/null"]
    else printf "inspect --stats:  cat took under 10 ms; ratio not measurable\n"
  }' "$work/inspect-results.tsv"

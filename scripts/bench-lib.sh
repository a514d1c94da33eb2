# Shared by the bench-*.sh scripts that time whole commands (sourced, not run). The caller sets `work` (its
# scratch folder, with the outputs under $work/out) and `runs` (its runs file, one line per timed run).
#
# run_once LABEL CMD...   one run of CMD, with $work/out emptied and `sync` first, timed by /usr/bin/time -v;
#                         appends "LABEL<TAB>wall seconds<TAB>peak RSS KB<TAB>user + sys seconds" to $runs. A
#                         failing CMD stops the bench.
# summarize RESULTS WIDTH the best and median wall seconds, the least peak RSS and the median CPU seconds of each
#                         label, in the order first run: printed (labels padded to WIDTH) and written to RESULTS
#                         as "label<TAB>best<TAB>MB<TAB>median<TAB>median CPU" for the caller's ratios.
command -v /usr/bin/time >/dev/null || { echo "bench: /usr/bin/time missing: apt-get install -y time" >&2; exit 2; }

run_once() {
  local label=$1; shift
  rm -rf "$work/out"; mkdir -p "$work/out"; sync
  /usr/bin/time -v -o "$work/time.txt" "$@" >/dev/null 2>"$work/stderr.txt" || { cat "$work/stderr.txt" >&2; exit 1; }
  local s kb cpu
  s=$(awk -F': ' '/Elapsed \(wall clock\)/{n=split($2,a,":"); t=0; for(i=1;i<=n;i++) t=t*60+a[i]; print t}' "$work/time.txt")
  kb=$(awk -F': ' '/Maximum resident set size/{print $2}' "$work/time.txt")
  cpu=$(awk -F': ' '/User time|System time/{t+=$2} END{print t}' "$work/time.txt")
  printf '%s\t%s\t%s\t%s\n' "$label" "$s" "$kb" "$cpu" >> "$runs"
}

summarize() {
  local results=$1 width=$2 label best median kb cpu
  : > "$results"
  middle() { sort -g | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
  while IFS= read -r label; do
    grep -F "$label"$'\t' "$runs" | cut -f2 | sort -g > "$work/walls.txt"
    best=$(head -1 "$work/walls.txt")
    median=$(middle < "$work/walls.txt")
    kb=$(grep -F "$label"$'\t' "$runs" | cut -f3 | sort -n | head -1)
    cpu=$(grep -F "$label"$'\t' "$runs" | cut -f4 | middle)
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$best" "$((kb / 1024))" "$median" "$cpu" >> "$results"
    printf "%-${width}s %8.2f s best %8.2f s median %8d MB %7.2f s CPU\n" "$label" "$best" "$median" "$((kb / 1024))" "$cpu"
  done < <(cut -f1 "$runs" | awk '!seen[$0]++')
}

#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs them one at a time, then prints how many
# inputs each executed.
#
# Usage: [FUZZ_MAX_LEN=BYTES] scripts/fuzz.sh TARGET|all SECONDS
#   TARGET: npy_header, npz, pickle, pt, safetensors, zip_alias, detect, ocdbt, msgpack, zarr, sentencepiece, batch_manifest
#
# Corpora live in fuzz/corpus/<target>/ (not committed). Each run seeds them from the
# fixtures, from files our own writer produces (the `recode` example), from the hand-made
# seeds in fuzz/seeds/<target>/ and from the committed crash inputs in
# crates/tensors/tests/regressions/<target>/. Crashes land in fuzz/artifacts/<target>/:
# copy each into crates/tensors/tests/regressions/<target>/ so the test command replays it
# (batch_manifest: crates/batch/tests/regressions/batch_manifest/, replayed by that crate).
# Needs cargo-fuzz; stable Rust gets the nightly flags it uses from RUSTC_BOOTSTRAP=1.
set -euo pipefail

ALL_TARGETS=(npy_header npz pickle pt safetensors zip_alias detect ocdbt msgpack zarr sentencepiece batch_manifest)
if [[ $# -ne 2 ]] || ! [[ $2 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 TARGET|all SECONDS   (targets: ${ALL_TARGETS[*]})" >&2
    exit 2
fi
if [[ $1 == all ]]; then
    targets=("${ALL_TARGETS[@]}")
else
    [[ " ${ALL_TARGETS[*]} " == *" $1 "* ]] || { echo "$0: unknown target $1" >&2; exit 2; }
    targets=("$1")
fi
seconds=$2

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export RUSTC_BOOTSTRAP=1
corpus="$root/fuzz/corpus"
seeds="$root/fuzz/seeds"
regressions="$root/crates/tensors/tests/regressions"
# The batch manifest parser lives in its own crate, which replays its own regressions.
regressions_of() {
    case $1 in
        batch_manifest) echo "$root/crates/batch/tests/regressions/$1" ;;
        *) echo "$regressions/$1" ;;
    esac
}

# Largest input per target: headers and pickles are small; whole files may hold a fixture.
# FUZZ_MAX_LEN overrides it for every target (fixtures above it are not seeded): small inputs
# run orders of magnitude faster, at the price of never seeing a whole real checkpoint.
max_len() {
    [[ -n ${FUZZ_MAX_LEN:-} ]] && { echo "$FUZZ_MAX_LEN"; return; }
    case $1 in
        npy_header) echo 4096 ;;
        pickle | detect | ocdbt | zarr | sentencepiece) echo 65536 ;;
        # Past the manifest's longest line (64 KiB), so that an overlong line is among the inputs.
        batch_manifest) echo 262144 ;;
        *) echo 1048576 ;;
    esac
}

# Seeds every corpus (cp -n: what the fuzzer found before is kept).
seed() {
    mkdir -p "$corpus"/{npy_header,npz,pickle,pt,safetensors,zip_alias,detect,ocdbt,msgpack,zarr,sentencepiece,batch_manifest}
    local f name tmp
    # Real SentencePiece models: any in the fixtures or the shared golden data (the hand-made ones are in
    # fuzz/seeds/sentencepiece/).
    while IFS= read -r -d '' f; do
        cp -n "$f" "$corpus/sentencepiece/$(echo "$f" | tr / _)"
    done < <(find fixtures shared ../shared -name '*.model' -size -2M -print0 2>/dev/null)
    for f in fixtures/*/*.npy; do
        name=$(echo "${f#fixtures/}" | tr / _)
        head -c 4096 "$f" >"$corpus/npy_header/$name"
    done
    for f in fixtures/*/*.npz fixtures/*/*/*.npz; do
        [[ -e $f ]] || continue
        [[ $(stat -c %s "$f") -le $(max_len npz) ]] || continue
        cp -n "$f" "$corpus/npz/$(echo "${f#fixtures/}" | tr / _)"
    done
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    cargo build --quiet --release -p vitconv-tensors --example recode
    local recode="$root/target/release/examples/recode"
    for f in fixtures/vit-prelogits/checkpoint.npz fixtures/vit-token/logits.npy fixtures/vit-token-variants/bfloat16.npz; do
        name=$(echo "${f#fixtures/}" | tr / _)
        name=${name%.*}
        "$recode" "$f" "$tmp/$name.safetensors"
        "$recode" "$f" "$tmp/$name.pt"
        "$recode" "$f" "$tmp/$name.npz"
        cp -n "$tmp/$name.safetensors" "$corpus/safetensors/"
        cp -n "$tmp/$name.npz" "$corpus/npz/written_$name.npz"
        # The pt target's first byte 0 means "the rest is the whole file".
        { printf '\0'; cat "$tmp/$name.pt"; } >"$corpus/pt/written_$name.pt"
        python3 - "$tmp/$name.pt" "$corpus/pickle/written_$name.pkl" "$corpus/pt/written_$name.wrapped" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
open(sys.argv[2], "wb").write(pkl)
# Mode 1 of the pt target: the pickle inside a generated archive.
open(sys.argv[3], "wb").write(b"\x01\xff" + pkl)
PY
    done
    # The detector's input: one `NAME DIM,DIM,...` line per tensor.
    python3 - "$corpus/detect" fixtures/shapes/*.json fixtures/*/checkpoint.npz fixtures/vit-token-variants/*.npz <<'PY'
import ast, json, os, sys, zipfile
out = sys.argv[1]
for path in sys.argv[2:]:
    if path.endswith(".json"):
        shapes = json.load(open(path))["tensors"]
    else:
        shapes = {}
        with zipfile.ZipFile(path) as z:
            for n in z.namelist():
                with z.open(n) as m:
                    head = m.read(4096)
                hlen = int.from_bytes(head[8:10], "little")
                shapes[n[:-4]] = list(ast.literal_eval(head[10:10 + hlen].decode())["shape"])
    text = "".join(f"{k} {','.join(map(str, v))}\n" for k, v in shapes.items())
    name = path.replace("/", "_").replace("fixtures_", "")
    open(os.path.join(out, name + ".txt"), "w").write(text)
PY
}

seed
summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/artifacts/$t"
    extra=()
    [[ -d $seeds/$t ]] && extra+=("$seeds/$t")
    [[ -d $(regressions_of "$t") ]] && extra+=("$(regressions_of "$t")")
    log="fuzz/artifacts/$t/last-run.log"
    echo "== $t: ${seconds}s" >&2
    # Allocation limits make a large allocation a finding rather than a slow pass.
    set +e
    # -a: debug assertions and overflow checks, so unchecked arithmetic on parsed sizes is a
    # finding rather than a silent wrap.
    cargo fuzz run -O -a --fuzz-dir fuzz "$t" "$corpus/$t" "${extra[@]}" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 \
        -rss_limit_mb=2048 -malloc_limit_mb=1536 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" 2>&1 | tee "$log" | grep -E '^#[0-9]+[[:space:]]+(DONE|INITED)|ERROR|SUMMARY|panicked' >&2
    rc=${PIPESTATUS[0]}
    set -e
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')
    secs=$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')
    summary+=("$t: ${seconds}s, ${execs} executions (${secs}/s), exit ${rc}")
    [[ $rc -eq 0 ]] || echo "$t: libFuzzer exited $rc; see $log and fuzz/artifacts/$t/" >&2
done
printf '%s\n' "${summary[@]}"

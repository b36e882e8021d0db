#!/usr/bin/env bash
# llama.cpp's llama-diffusion-cli and fastdllm on the same GGUF files of the 0.95B LLaDA shape
# (hidden 2048, 16 layers, 16 heads, MLP 5632, vocab 32000, random weights): f16, Q8_0, Q4_K_M
# (docs/BENCHMARKS.md, "CPU kernels: one thread pool, AVX-512 f32, half-precision weights").
#
# Files, made with llama.cpp's own tools when missing: the f16 GGUF by llama.cpp's gguf-py
# (scripts/llada-random.py gguf), Q8_0 and Q4_K_M from it by `llama-quantize`. They are 1.9, 1.0
# and 0.6 GB: keep them out of the repository (DIR).
#
# One pass per format and generation length, alternating the programs (llama.cpp, fastdllm
# --cache none, fastdllm --cache dual), each run under `flock $LOCK` (the machine is shared) and
# `/usr/bin/time -v` (peak RSS):
#   * ms per forward: llama.cpp = the median gap between its step progress lines, from a run of
#     LLAMA_STEPS steps (its forward covers the whole canvas whatever the step count, so a short
#     run measures the same forward; default one step per block: llama.cpp's blocks tile the whole
#     canvas, prompt included, and it needs the step count to be a multiple of their number); fastdllm --cache none = wall time / NFE of a run of
#     NONE_STEPS steps (a full-canvas forward each).
#   * ms per generated token with one token per step (steps = GEN, fixed rule): llama.cpp
#     recomputes the canvas every step, so its ms per token = its ms per forward; fastdllm
#     --cache dual = wall time / GEN of the whole generation.
#
# Usage: scripts/llama-cpp-095b.sh [FORMAT...]       (default: q4_k_m q8_0 f16)
# Env:   LLAMA_CPP_BIN (directory of the built llama.cpp binaries; default /work/llama-cpp/build/bin),
#        PYTHON (with numpy; default /work/llama-cpp/venv/bin/python), GGUF_PY (llama.cpp's gguf-py),
#        DIR (files and logs; default /work/gguf095), FASTDLLM (default target/release/fastdllm),
#        THREADS (2), PROMPT_LEN (128), GENS ("128 256"), BLOCK (32), LLAMA_STEPS (default
#        (PROMPT_LEN + GEN) / BLOCK), NONE_STEPS (8, a multiple of GEN/BLOCK), LOCK (/work/bench.lock).
# Output: a markdown table on stdout, logs under $DIR/logs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${LLAMA_CPP_BIN:-/work/llama-cpp/build/bin}
PYTHON=${PYTHON:-/work/llama-cpp/venv/bin/python}
DIR=${DIR:-/work/gguf095}
FASTDLLM=${FASTDLLM:-$ROOT/target/release/fastdllm}
THREADS=${THREADS:-2}
PROMPT_LEN=${PROMPT_LEN:-128}
GENS=${GENS:-128 256}
BLOCK=${BLOCK:-32}
NONE_STEPS=${NONE_STEPS:-8}
LOCK=${LOCK:-/work/bench.lock}
FORMATS=("$@")
(( ${#FORMATS[@]} )) || FORMATS=(q4_k_m q8_0 f16)
LOGS=$DIR/logs
mkdir -p "$LOGS"
for tool in llama-diffusion-cli llama-quantize; do
  [[ -x $BIN/$tool ]] || { echo "no $BIN/$tool (set LLAMA_CPP_BIN to llama.cpp's build/bin)" >&2; exit 2; }
done
[[ -x $FASTDLLM ]] || { echo "no $FASTDLLM (cargo build --release -p fastdllm-cli, or set FASTDLLM)" >&2; exit 2; }

# --- the files ---------------------------------------------------------------------------------
F16=$DIR/llada-095b-f16.gguf
[[ -f $F16 ]] || "$PYTHON" "$ROOT/scripts/llada-random.py" gguf "$F16"
for f in "${FORMATS[@]}"; do
  out=$DIR/llada-095b-$f.gguf
  [[ $f == f16 || -f $out ]] || "$BIN/llama-quantize" "$F16" "$out" "${f^^}" "$THREADS" > "$LOGS/quantize-$f.log" 2>&1
done

# A prompt of PROMPT_LEN tokens (BOS included): the vocabulary of the file is the tiny fixture's,
# one token per character of this text.
PROMPT=$(printf 'rot cmdbqxuwa.=%.0s' $(seq 1 64) | head -c $((PROMPT_LEN - 1)))

timed() { # log cmd...: run under the lock and /usr/bin/time -v; stdout to log.out
  local log=$1; shift
  cat /proc/loadavg > "$LOGS/$log.load"
  flock "$LOCK" /usr/bin/time -v "$@" > "$LOGS/$log.out" 2> "$LOGS/$log.err" || true
  cat /proc/loadavg >> "$LOGS/$log.load"
}
cpu_pct() { awk -F': ' '/Percent of CPU/ {print $2}' "$LOGS/$1.err"; }
rss_gb() { awk '/Maximum resident set size/ {printf "%.2f", $6 / 1e6}' "$LOGS/$1.err"; }
llama_ms_forward() {
  "$PYTHON" - "$LOGS/$1.err" <<'PY'
import re, statistics, sys
text = open(sys.argv[1], errors="replace").read()
t = [((int(a) * 60 + int(b)) * 1000 + int(c) + int(d) / 1000)
     for a, b, c, d in re.findall(r"(\d+)\.(\d\d)\.(\d{3})\.(\d{3}) I\s*diffusion step:", text)]
gaps = [y - x for x, y in zip(t, t[1:])]
print(f"{statistics.median(gaps):.0f}" if gaps else "n/a")
PY
}
fast_ms() { # log divisor(nfe|gen)
  "$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); n=d["nfe"] if sys.argv[2]=="nfe" else int(sys.argv[2]); print("%.0f" % (d["wall_ms"]/n))' "$LOGS/$1.out" "$2"
}

echo "| GGUF | gen | llama.cpp ms/forward (= ms/token) | fastdllm none ms/forward | fastdllm dual ms/token | dual vs llama.cpp per token | none / llama.cpp per forward | peak RSS llama.cpp / none / dual (GB) | CPU llama.cpp / none / dual |"
echo "|---|---:|---:|---:|---:|---:|---:|---|---|"
for f in "${FORMATS[@]}"; do
  gguf=$DIR/llada-095b-$f.gguf
  for gen in $GENS; do
    canvas=$((PROMPT_LEN + gen))
    (( canvas % BLOCK == 0 )) || { echo "PROMPT_LEN + GEN = $canvas is not a multiple of BLOCK $BLOCK" >&2; exit 2; }
    llama_steps=${LLAMA_STEPS:-$((canvas / BLOCK))}
    tag=$f-g$gen
    timed "$tag-llama" nice -n 0 "$BIN/llama-diffusion-cli" -m "$gguf" -p "$PROMPT" -ub "$canvas" -b "$canvas" \
      -c "$canvas" -t "$THREADS" -tb "$THREADS" --top-k 1 --top-p 1 --temp 0 --seed 0 \
      --diffusion-algorithm 4 --diffusion-block-length "$BLOCK" --diffusion-steps "$llama_steps" \
      -n "$gen"
    timed "$tag-none" env RAYON_NUM_THREADS="$THREADS" "$FASTDLLM" generate --model "$gguf" \
      --prompt "$PROMPT" --raw --gen-length "$gen" --block-length "$BLOCK" --steps "$NONE_STEPS" \
      --cache none --finish canvas --json
    timed "$tag-dual" env RAYON_NUM_THREADS="$THREADS" "$FASTDLLM" generate --model "$gguf" \
      --prompt "$PROMPT" --raw --gen-length "$gen" --block-length "$BLOCK" --steps "$gen" \
      --cache dual --finish canvas --json
    l=$(llama_ms_forward "$tag-llama"); n=$(fast_ms "$tag-none" nfe); d=$(fast_ms "$tag-dual" "$gen")
    ratio=$("$PYTHON" -c "import sys; l,n,d=sys.argv[1:]; print('%.1fx' % (float(l)/float(d)), '%.2f' % (float(n)/float(l)))" "$l" "$n" "$d" 2>/dev/null || echo "n/a n/a")
    echo "| $f | $gen | $l | $n | $d | ${ratio% *} | ${ratio#* } | $(rss_gb "$tag-llama") / $(rss_gb "$tag-none") / $(rss_gb "$tag-dual") | $(cpu_pct "$tag-llama") / $(cpu_pct "$tag-none") / $(cpu_pct "$tag-dual") |"
  done
done

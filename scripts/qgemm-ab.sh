#!/usr/bin/env bash
# Our int8 quantized CPU kernels (fastdllm-models/src/layers/cpu_qgemm.rs) against candle's, on the
# 0.95B-shape GGUF files of scripts/llama-cpp-095b.sh (docs/BENCHMARKS.md, "Our int8 quantized
# kernels"): an OLD binary (candle's quantized kernels) and a NEW one alternating, per format, on
# this CPU's best path and with the AVX2 path forced (NEW: FASTDLLM_CPU_QGEMM=avx2; OLD: candle's
# MISTRALRS_FORCE_AVX2=1; both FASTDLLM_CPU_GEMM=avx2 for the f32 parts), each run under
# `flock $LOCK` and `/usr/bin/time -v`.
#
# One measurement = two runs of `generate --cache none`, prompt 128 tokens, gen 128, block 32
# (full-canvas forwards of 256 positions), with 4 and with 12 steps: ms per forward =
# (wall_ms(12) - wall_ms(4)) / 8, so one-off costs (candle repacks each weight on its first
# forward) cancel; peak RSS = the 12-step process (load + 12 forwards).
#
# Usage: OLD=path/to/fastdllm-before NEW=target/release/fastdllm scripts/qgemm-ab.sh [FORMAT...]
#        (default formats: q8_0 q4_k_m)
# Env:   DIR (the GGUF files, default /work/gguf095), THREADS (2), REPS (2), PATHS ("best avx2"),
#        LOCK (/work/bench.lock).
# Output: one markdown table row per run on stdout (format, path, side, ms/forward, peak RSS GB,
#         load average before / after).
set -euo pipefail
OLD=${OLD:?set OLD to the binary before the change}
NEW=${NEW:?set NEW to the binary after the change}
DIR=${DIR:-/work/gguf095}
THREADS=${THREADS:-2}
REPS=${REPS:-2}
PATHS=${PATHS:-best avx2}
LOCK=${LOCK:-/work/bench.lock}
FORMATS=("$@")
(( ${#FORMATS[@]} )) || FORMATS=(q8_0 q4_k_m)
# The tiny fixture's vocabulary: one token per character (BOS included: 128 tokens).
PROMPT=$(printf 'rot cmdbqxuwa.=%.0s' $(seq 1 64) | head -c 127)

run() { # side path format
  local bin env=(RAYON_NUM_THREADS=$THREADS)
  case $1 in old) bin=$OLD ;; new) bin=$NEW ;; esac
  case $1/$2 in
    old/avx2) env+=(MISTRALRS_FORCE_AVX2=1 FASTDLLM_CPU_GEMM=avx2) ;;
    new/avx2) env+=(FASTDLLM_CPU_QGEMM=avx2 FASTDLLM_CPU_GEMM=avx2) ;;
  esac
  local err before after wall4 wall12 model=$DIR/llada-095b-$3.gguf
  err=$(mktemp)
  before=$(cut -d' ' -f1 /proc/loadavg)
  gen() { # steps
    flock "$LOCK" env "${env[@]}" /usr/bin/time -v "$bin" generate \
      --model "$model" --prompt "$PROMPT" --raw --gen-length 128 \
      --block-length 32 --steps "$1" --cache none --json 2> "$err" | jq -r .wall_ms
  }
  wall4=$(gen 4)
  wall12=$(gen 12)
  after=$(cut -d' ' -f1 /proc/loadavg)
  local ms rss
  ms=$(awk -v a="$wall4" -v b="$wall12" 'BEGIN {printf "%.0f", (b - a) / 8}')
  rss=$(awk '/Maximum resident set size/ {printf "%.2f", $6 / 1e6}' "$err")
  echo "| $3 | $2 | $1 | $ms | $rss | $before / $after |"
  rm -f "$err"
}

echo "| GGUF | path | binary | ms/forward | peak RSS (GB) | load avg before / after |"
echo "|---|---|---|---:|---:|---|"
for rep in $(seq 1 "$REPS"); do
  for f in "${FORMATS[@]}"; do
    for path in $PATHS; do
      if (( rep % 2 )); then run old $path "$f"; run new $path "$f"
      else run new $path "$f"; run old $path "$f"; fi
    done
  done
done

#!/usr/bin/env bash
# LLaDA-MoE-7B-A1B shape (random weights, Q4_K_M, scripts/llada-moe-random-gguf.py 7b-a1b) against
# llama.cpp's llama-diffusion-cli on the same file, 2 threads, in one alternating run
# (docs/BENCHMARKS.md, "LLaDA-MoE-7B-A1B shape against llama.cpp").
#
#   1. agreement: a short prompt, block length 1, one token per step, greedy (--top-k 1, llama.cpp's
#      confidence algorithm 4), the setting in which llama.cpp's order equals Fast-dLLM's
#      generate(block_length=1) (as scripts/llama-cpp-compare.sh and scripts/llada-moe-llama-cpp.sh):
#      llama.cpp's printed text against fastdllm's generated ids rendered with the GGUF's vocabulary;
#   2. speed, ROUNDS times in the order llama.cpp, fastdllm --cache none, fastdllm --cache dual,
#      each command under `flock $LOCK` and `/usr/bin/time -v` (peak RSS): prompt P (BOS + 63
#      characters = 64), GEN, BLOCK, STEPS (fastdllm's fixed rule: GEN/STEPS tokens per forward).
#      ms per forward: llama.cpp's median gap between its step progress lines (it recomputes the
#      whole canvas every step; LLAMA_STEPS of them, fewer than fastdllm's because its block tiling
#      also spends steps on blocks past the canvas), fastdllm's wall time / NFE (`generate --json`,
#      generation only, no load). ms per generated token: fastdllm's wall / GEN; llama.cpp's
#      forward time x STEPS / GEN (the same schedule's forwards, without its no-op blocks).
#
# Usage: scripts/llada-moe-7b-bench.sh [GGUF]   (default /work/moe7b/llada-moe-7b-a1b-random-Q4_K_M.gguf)
# Env:   FASTDLLM (default target/release/fastdllm), BASE_FASTDLLM (optional: a second fastdllm
#        binary run with --cache none after the others in every round, e.g. an older commit),
#        LLAMA_CPP_BIN (/work/llama-cpp/build/bin),
#        THREADS (2), GEN (64), BLOCK (32), STEPS (16), LLAMA_STEPS (8), ROUNDS (2),
#        LOCK (/work/bench.lock), LOGS (target/moe7b-bench), GGUF_PY (gguf-py of that llama.cpp).
# Output: a markdown table on stdout; logs and /usr/bin/time reports under $LOGS.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GGUF=${1:-/work/moe7b/llada-moe-7b-a1b-random-Q4_K_M.gguf}
FASTDLLM=${FASTDLLM:-$ROOT/target/release/fastdllm}
BIN=${LLAMA_CPP_BIN:-/work/llama-cpp/build/bin}
GGUF_PY=${GGUF_PY:-/work/llama-cpp/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py}
PY=${PY:-/work/llama-cpp/venv/bin/python}
THREADS=${THREADS:-2}
GEN=${GEN:-64}
BLOCK=${BLOCK:-32}
STEPS=${STEPS:-16}
LLAMA_STEPS=${LLAMA_STEPS:-8}
ROUNDS=${ROUNDS:-2}
LOCK=${LOCK:-/work/bench.lock}
LOGS=${LOGS:-$ROOT/target/moe7b-bench}
mkdir -p "$LOGS"
# 63 characters of the tiny vocabulary (one token each) + BOS = 64 prompt tokens.
PROMPT=${PROMPT:-copy the quick brown fox jumps over the lazy dog then rot abcd=}
P=$(( ${#PROMPT} + 1 ))
CANVAS=$((P + GEN))
if (( CANVAS % BLOCK != 0 )); then
  echo "llama-diffusion-cli needs the canvas (prompt $P + GEN $GEN) to be a multiple of BLOCK ($BLOCK)" >&2
  exit 2
fi

timed() { # name cmd...: flock + /usr/bin/time -v; stdout to $LOGS/name.out, stderr to .err
  local name=$1; shift
  flock "$LOCK" /usr/bin/time -v -o "$LOGS/$name.time" "$@" > "$LOGS/$name.out" 2> "$LOGS/$name.err" || {
    echo "$name failed (exit $?); see $LOGS/$name.err" >&2; return 1; }
}
llama() { # name prompt block steps ctx
  LD_LIBRARY_PATH=$BIN timed "$1" "$BIN/llama-diffusion-cli" -m "$GGUF" -p "$2" -ub "$5" -b "$5" -c "$5" \
    -t "$THREADS" -tb "$THREADS" --top-k 1 --top-p 1 --temp 0 --seed 0 --diffusion-algorithm 4 \
    --diffusion-block-length "$3" --diffusion-steps "$4"
}
fast() { # name prompt cache gen block steps
  RAYON_NUM_THREADS=$THREADS timed "$1" "$FASTDLLM" generate --model "$GGUF" --prompt "$2" --raw \
    --cache "$3" --gen-length "$4" --block-length "$5" --steps "$6" --json
}
rss_mib() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$LOGS/$1.time"; }
elapsed() { awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$LOGS/$1.time"; }
llama_forward_ms() { # median time of llama.cpp's forwards over the answer's blocks
  # Its progress line "M.SS.mmm.uuu I diffusion step: N/STEPS" is printed before forward N (not
  # for every N). Its blocks tile the canvas from the prompt's end, (P+GEN)/BLOCK of them, so only
  # the first LLAMA_STEPS * GEN / (P+GEN) steps forward the answer; the rest are blocks past the
  # canvas. A forward's time is the gap from line N to line N+1, taken where both are printed.
  python3 - "$LOGS/$1.err" $(( LLAMA_STEPS * GEN / CANVAS )) <<'PY'
import re, statistics, sys
text = open(sys.argv[1], errors="replace").read()
real = int(sys.argv[2])
at = {int(n): ((int(a) * 60 + int(b)) * 1000 + int(c) + int(d) / 1000)
      for a, b, c, d, n in re.findall(r"(\d+)\.(\d\d)\.(\d{3})\.(\d{3}) I\s*diffusion step: (\d+)/", text)}
gaps = [at[n + 1] - at[n] for n in range(real) if n in at and n + 1 in at]
print(f"{statistics.median(gaps):.0f}" if gaps else "n/a")
PY
}
fast_field() { # name python-expression over d
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$LOGS/$1.out"
}

echo "loadavg before: $(cat /proc/loadavg)" | tee "$LOGS/loadavg"

# 1. agreement: 8 tokens after a 7-character prompt, block length 1 (llama.cpp: one block per
# canvas position, so the context is kept short).
AGREE_PROMPT="rot abc="
AGREE_GEN=8
AGREE_CTX=$(( ${#AGREE_PROMPT} + 1 + AGREE_GEN ))
llama agree-llama "$AGREE_PROMPT" 1 "$AGREE_CTX" "$AGREE_CTX"
fast agree-fast "$AGREE_PROMPT" none "$AGREE_GEN" 1 "$AGREE_GEN"
A=$(tail -n 1 "$LOGS/agree-llama.err")
B=$(PYTHONPATH=$GGUF_PY "$PY" "$ROOT/scripts/gguf-render-ids.py" "$GGUF" "$LOGS/agree-fast.out")

# 2. speed, alternating
for r in $(seq 1 "$ROUNDS"); do
  llama "llama-$r" "$PROMPT" "$BLOCK" "$LLAMA_STEPS" "$CANVAS"
  fast "none-$r" "$PROMPT" none "$GEN" "$BLOCK" "$STEPS"
  fast "dual-$r" "$PROMPT" dual "$GEN" "$BLOCK" "$STEPS"
  if [[ -n ${BASE_FASTDLLM:-} ]]; then
    FASTDLLM=$BASE_FASTDLLM fast "base-none-$r" "$PROMPT" none "$GEN" "$BLOCK" "$STEPS"
  fi
done
echo "loadavg after: $(cat /proc/loadavg)" | tee -a "$LOGS/loadavg"

echo
echo "GGUF $(basename "$GGUF"), prompt $P tokens, gen $GEN, block $BLOCK, fastdllm $STEPS steps (fixed rule), llama.cpp $LLAMA_STEPS steps, $THREADS threads"
echo
echo "| round | program | peak RSS (MiB) | ms per forward | NFE | ms per generated token | wall (incl. load) |"
echo "|---|---|---:|---:|---:|---:|---|"
for r in $(seq 1 "$ROUNDS"); do
  f=$(llama_forward_ms "llama-$r")
  echo "| $r | llama-diffusion-cli (no cache) | $(rss_mib "llama-$r") | $f | $LLAMA_STEPS | $(python3 -c "print('%.0f' % ($f * $STEPS / $GEN))" 2>/dev/null || echo n/a) | $(elapsed "llama-$r") |"
  sides="none dual"; [[ -n ${BASE_FASTDLLM:-} ]] && sides="none dual base-none"
  for c in $sides; do
    label="fastdllm --cache ${c#base-}"; [[ $c == base-* ]] && label="$label (BASE_FASTDLLM)"
    echo "| $r | $label | $(rss_mib "$c-$r") | $(fast_field "$c-$r" '"%.0f" % (d["wall_ms"] / max(d["nfe"], 1))') | $(fast_field "$c-$r" 'd["nfe"]') | $(fast_field "$c-$r" '"%.0f" % (d["wall_ms"] / '"$GEN"')') | $(elapsed "$c-$r") |"
  done
done
echo
if [[ "$A" == "$B" ]]; then
  echo "agreement (prompt '$AGREE_PROMPT', $AGREE_GEN tokens, block length 1, greedy): equal: '$A'"
else
  echo "agreement (prompt '$AGREE_PROMPT', $AGREE_GEN tokens, block length 1, greedy): DIFFER: llama.cpp '$A' vs fastdllm '$B'"
fi

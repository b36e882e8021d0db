#!/usr/bin/env bash
# llama.cpp's llama-diffusion-cli and fastdllm side by side on the same GGUF file
# (docs/BENCHMARKS.md, "Against llama.cpp's `llama-diffusion-cli`").
#
# Builds llama-diffusion-cli from the llama.cpp sources vendored in the llama-cpp-python sdist on
# PyPI (pinned: LLAMA_CPP_PYTHON_VERSION, default 0.3.36 = llama.cpp 0c1e57098, the version that
# made fixtures/gguf), with cmake and ninja from PyPI, then runs both programs on the same GGUF,
# prompt, generation length, block length, steps and threads:
#
#   1. agreement: LLaDA with block length 1 and greedy decoding (--top-k 1), the setting in which
#      llama.cpp's order (highest confidence, ties to the left) equals Fast-dLLM's
#      generate(block_length=1): llama.cpp's printed output must equal every token fastdllm
#      generated (after the first EOS too), rendered with the GGUF's vocabulary;
#   2. speed: GEN / BLOCK / STEPS; llama.cpp recomputes the whole canvas every step (no cache),
#      fastdllm runs --cache none and --cache dual. ms per forward = the median gap between
#      llama.cpp's step progress lines (its own "time per step" is shown too), fastdllm's wall
#      time / NFE (--json). llama.cpp needs prompt + GEN to be a multiple of BLOCK.
#
# Usage: scripts/llama-cpp-compare.sh [GGUF]      (default fixtures/gguf/llada-tiny-q8_0.gguf)
# Env:   WORK (build dir, default target/llama-cpp), THREADS (default 2), PROMPT, GEN (32),
#        BLOCK (8), STEPS (GEN), JOBS (build jobs, default 2), FASTDLLM (binary; default: build
#        target/release/fastdllm), LLAMA_CPP_PYTHON_VERSION.
# Output: a markdown table on stdout (paste into docs/BENCHMARKS.md), logs under $WORK/logs.
# Needs: python3 with venv + pip (PyPI reachable), a C/C++ compiler, cargo. About 15 min to build
# llama.cpp on 2 cores.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GGUF=${1:-$ROOT/fixtures/gguf/llada-tiny-q8_0.gguf}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
WORK=${WORK:-$ROOT/target/llama-cpp}
THREADS=${THREADS:-2}
JOBS=${JOBS:-2}
PROMPT=${PROMPT:-rot cmdbqxuwa.=}
GEN=${GEN:-32}
BLOCK=${BLOCK:-8}
STEPS=${STEPS:-$GEN}
mkdir -p "$WORK/logs"
LOGS=$WORK/logs

# --- build llama-diffusion-cli ----------------------------------------------------------------
CLI=$WORK/build/bin/llama-diffusion-cli
if [[ ! -x $CLI ]]; then
  python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install --quiet cmake ninja numpy pyyaml
  # The sdist only (`--no-binary :all:` would also build its build dependencies, cmake
  # included, from source).
  "$WORK/venv/bin/pip" download --quiet --no-binary llama-cpp-python --no-deps "llama-cpp-python==$VERSION" -d "$WORK/sdist"
  tar -xzf "$WORK/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
  SRC=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp
  PATH=$WORK/venv/bin:$PATH cmake -S "$SRC" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=OFF > "$LOGS/cmake.log"
  PATH=$WORK/venv/bin:$PATH nice -n 10 cmake --build "$WORK/build" --target llama-diffusion-cli -j "$JOBS" > "$LOGS/build.log"
fi

# --- fastdllm -------------------------------------------------------------------------------
if [[ -z ${FASTDLLM:-} ]]; then
  (cd "$ROOT" && cargo build --release -p fastdllm-cli --quiet)
  FASTDLLM=$ROOT/target/release/fastdllm
fi

# Prompt length P (BOS included) from fastdllm's tokenizer (the same ids llama-tokenize prints on
# the fixture files; fixtures/gguf/results.jsonl).
P=$("$FASTDLLM" generate --model "$GGUF" --prompt "$PROMPT" --raw --gen-length "$BLOCK" \
      --block-length "$BLOCK" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["prompt_ids"]))')
CANVAS=$((P + GEN))
if (( CANVAS % BLOCK != 0 )); then
  echo "llama-diffusion-cli needs the canvas (prompt $P + GEN $GEN = $CANVAS) to be a multiple of BLOCK ($BLOCK)" >&2
  exit 2
fi

# llama.cpp's LLaDA blocks tile the whole canvas from the prompt's end: (P+G)/B blocks (the ones
# past the end are no-op forwards), steps split evenly over them. Give every block of the answer
# STEPS/(GEN/BLOCK) steps, as fastdllm does.
llama() { # block steps log
  local blocks=$(( (CANVAS + $1 - 1) / $1 ))
  local per_block=$(( $2 / (GEN / $1) ))
  local ub=$CANVAS
  nice -n 0 "$CLI" -m "$GGUF" -p "$PROMPT" -ub "$ub" -b "$ub" -c "$ub" -t "$THREADS" -tb "$THREADS" \
    --top-k 1 --top-p 1 --temp 0 --seed 0 --diffusion-algorithm 4 \
    --diffusion-block-length "$1" --diffusion-steps $((blocks * per_block)) > "$LOGS/$3.out" 2> "$LOGS/$3.err" || true
}
fast() { # cache block steps log
  RAYON_NUM_THREADS=$THREADS "$FASTDLLM" generate --model "$GGUF" --prompt "$PROMPT" --raw \
    --gen-length "$GEN" --block-length "$2" --steps "$3" --cache "$1" --json > "$LOGS/$4.json"
}
# llama.cpp: its own "time per step" divides the total by its step count, no-op blocks past the
# canvas included; the median gap between its progress lines ("M.SS.mmm.uuu I diffusion step:")
# is the time of one real forward.
ms_per_step_llama() { grep -o 'ms, time per step: [0-9.]*' "$LOGS/$1.err" | tail -1 | awk '{print $5}'; }
ms_per_forward_llama() {
  python3 - "$LOGS/$1.err" <<'PY'
import re, statistics, sys
text = open(sys.argv[1], errors="replace").read()
t = [((int(a) * 60 + int(b)) * 1000 + int(c) + int(d) / 1000)
     for a, b, c, d in re.findall(r"(\d+)\.(\d\d)\.(\d{3})\.(\d{3}) I\s*diffusion step:", text)]
gaps = [y - x for x, y in zip(t, t[1:])]
print(f"{statistics.median(gaps):.2f}" if gaps else "n/a")
PY
}
text_llama() { tail -n 1 "$LOGS/$1.err"; }
ms_per_step_fast() {
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f" % (d["wall_ms"] / max(d["nfe"], 1)))' "$LOGS/$1.json"
}
# fastdllm's answer stops at the first EOS; llama-diffusion-cli prints every generated token
# (control tokens such as EOS as nothing). For the agreement, render all of fastdllm's generated
# ids the way llama.cpp does, with the GGUF's own vocabulary (scripts/gguf-render-ids.py, gguf-py
# from the same llama.cpp tree).
text_fast_all() {
  PYTHONPATH=$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp/gguf-py "$WORK/venv/bin/python" \
    "$ROOT/scripts/gguf-render-ids.py" "$GGUF" "$LOGS/$1.json"
}
text_fast() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["text"])' "$LOGS/$1.json"; }

# 1. agreement (block length 1, GEN steps: one token per step, left to right)
llama 1 "$GEN" agree-llama
fast none 1 "$GEN" agree-fast
# 2. speed
llama "$BLOCK" "$STEPS" speed-llama
fast none "$BLOCK" "$STEPS" speed-none
fast dual "$BLOCK" "$STEPS" speed-dual

A=$(text_llama agree-llama); B=$(text_fast_all agree-fast)
echo "GGUF $(basename "$GGUF"), prompt '$PROMPT' (P=$P), gen $GEN, block $BLOCK, steps $STEPS, $THREADS threads, llama-cpp-python $VERSION"
echo
echo "| program | ms per forward | answer |"
echo "|---|---:|---|"
echo "| llama-diffusion-cli (no cache) | $(ms_per_forward_llama speed-llama) (its own \"time per step\": $(ms_per_step_llama speed-llama)) | $(text_llama speed-llama) |"
echo "| fastdllm --cache none | $(ms_per_step_fast speed-none) | $(text_fast speed-none) |"
echo "| fastdllm --cache dual | $(ms_per_step_fast speed-dual) | $(text_fast speed-dual) |"
echo
if [[ "$A" == "$B" ]]; then
  echo "greedy block-length-1 outputs agree (every generated token, as llama.cpp prints them): '$A'"
else
  echo "greedy block-length-1 answers DIFFER: llama.cpp '$A' vs fastdllm '$B'"
fi

#!/usr/bin/env bash
# Makes fixtures/gguf/llada-w256-q5_k_m.gguf and records llama.cpp's `llama-diffusion-cli` answers
# on it into fixtures/gguf/llada-w256-q5_k_m-results.jsonl (the test:
# fastdllm-cli/tests/gguf.rs, `q5_k_m_gguf_agrees_with_llama_cpp`).
#
# The file: a random LLaDA of a shape whose rows are whole 256-value k-quant superblocks (hidden
# 256, 2 layers, 4 heads, MLP 512, the tiny 64-token vocabulary), matrices N(0, 0.06^2) so that
# the logits are not flat, written in f16 by scripts/llada-random.py (llama.cpp's gguf-py), then
# `llama-quantize ... Q5_K_M`: Q5_K for most matrices and the embedding, Q6_K for layer 1's
# attn_v and ffn_down and the head (llama.cpp's Q5_K_M mix).
# The records: greedy (--top-k 1, --temp 0), block length 1, one token per step, 16 answer tokens,
# 1 thread, as fixtures/gguf/results.jsonl.
#
# Usage: scripts/q5k-m-fixture.sh [LLAMA_CPP_BIN_DIR]   (default /work/llama-cpp/build/bin)
# Env:   PYTHON (with numpy; default /work/llama-cpp/venv/bin/python).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-/work/llama-cpp/build/bin}
PYTHON=${PYTHON:-/work/llama-cpp/venv/bin/python}
FILE=llada-w256-q5_k_m.gguf
OUT=$ROOT/fixtures/gguf/llada-w256-q5_k_m-results.jsonl
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" "$ROOT/scripts/llada-random.py" gguf "$TMP/w256-f16.gguf" --hidden 256 --layers 2 \
  --heads 4 --mlp 512 --vocab 64 --std 0.06
"$BIN/llama-quantize" "$TMP/w256-f16.gguf" "$ROOT/fixtures/gguf/$FILE" Q5_K_M 1 > "$TMP/quantize.log" 2>&1
PROMPTS=("copy 3dbk......=" "copy ysp8......=" "inc 1234......=" "rot xy........=" "3+4=")
: > "$OUT"
for prompt in "${PROMPTS[@]}"; do
  # One token per character, plus BOS; llama-diffusion-cli decodes the whole context.
  ctx=$(( ${#prompt} + 1 + 16 ))
  cmd=(llama-diffusion-cli -m "$FILE" -p "$prompt" -ub $ctx -b $ctx -c $ctx -t 1 -tb 1 --top-k 1
       --top-p 1 --temp 0 --seed 0 --diffusion-algorithm 4 --diffusion-block-length 1 --diffusion-steps $ctx)
  # llama-diffusion-cli aborts now and then before printing (see results.jsonl's "attempts"): a
  # run counts once it printed "total time:".
  attempts=0; text=
  while [ $attempts -lt 8 ]; do
    attempts=$((attempts + 1))
    log=$(cd "$ROOT/fixtures/gguf" && LD_LIBRARY_PATH=$BIN "$BIN/${cmd[0]}" "${cmd[@]:1}" 2>&1 || true)
    if grep -q "^total time:" <<< "$log"; then text=$(tail -n 1 <<< "$log"); break; fi
  done
  python3 -c 'import json,sys; print(json.dumps({"gguf": sys.argv[1], "prompt": sys.argv[2], "gen_length": 16, "command": sys.argv[3], "llama_cpp_text": sys.argv[4], "attempts": int(sys.argv[5])}))' \
    "$FILE" "$prompt" "${cmd[*]:0:4} '$prompt' ${cmd[*]:5}" "$text" "$attempts" >> "$OUT"
done
cat "$OUT"

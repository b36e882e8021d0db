#!/usr/bin/env bash
# Records llama.cpp's `llama-diffusion-cli` answers on the LLaDA-MoE GGUF fixtures
# (fixtures/gguf/llada-moe-tiny-{f32,q8_0}.gguf) into fixtures/gguf/llada-moe-results.jsonl, with
# the settings of the llada-tiny records (results.jsonl): greedy (--top-k 1, --temp 0), block
# length 1, one token per step, 16 answer tokens, 1 thread. Block length 1 left to right is
# Fast-dLLM's generate(block_length=1), so fastdllm must print the same answer
# (fastdllm-cli/tests/gguf.rs, `llama_cpp_llada_moe_answers`).
#
# Usage: scripts/llada-moe-llama-cpp.sh [LLAMA_CPP_BIN_DIR]   (default /work/llama-cpp/build/bin)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-/work/llama-cpp/build/bin}
OUT=$ROOT/fixtures/gguf/llada-moe-results.jsonl
PROMPTS=("copy 3dbk......=" "copy ysp8......=" "inc 1234......=" "rot xy........=" "3+4=")
: > "$OUT"
for file in llada-moe-tiny-f32.gguf llada-moe-tiny-q8_0.gguf; do
  for prompt in "${PROMPTS[@]}"; do
    # The tiny vocabulary has one token per character, plus BOS (llama-diffusion-cli decodes
    # the whole context: prompt + 16).
    ctx=$(( ${#prompt} + 1 + 16 ))
    cmd=(llama-diffusion-cli -m "$file" -p "$prompt" -ub $ctx -b $ctx -c $ctx -t 1 -tb 1 --top-k 1
         --top-p 1 --temp 0 --seed 0 --diffusion-algorithm 4 --diffusion-block-length 1 --diffusion-steps $ctx)
    # llama-diffusion-cli aborts now and then in diffusion_generate before printing (as for the
    # llada-tiny records, see their "attempts"): a run counts once it printed "total time:".
    attempts=0; text=
    while [ $attempts -lt 8 ]; do
      attempts=$((attempts + 1))
      log=$(cd "$ROOT/fixtures/gguf" && LD_LIBRARY_PATH=$BIN "$BIN/${cmd[0]}" "${cmd[@]:1}" 2>&1 || true)
      if grep -q "^total time:" <<< "$log"; then text=$(tail -n 1 <<< "$log"); break; fi
    done
    python3 -c 'import json,sys; print(json.dumps({"gguf": sys.argv[1], "prompt": sys.argv[2], "gen_length": 16, "command": sys.argv[3], "llama_cpp_text": sys.argv[4], "attempts": int(sys.argv[5])}))' \
      "$file" "$prompt" "${cmd[*]:0:4} '$prompt' ${cmd[*]:5}" "$text" "$attempts" >> "$OUT"
  done
done
cat "$OUT"

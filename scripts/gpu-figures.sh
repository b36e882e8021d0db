#!/usr/bin/env bash
# gpu-figures.sh: the GPU figures of docs/BENCHMARKS.md, in one run on a lent GPU machine.
# Expects gpu/fastdllm (built with scripts/build-cuda.sh -p fastdllm-cli) and gpu/cuda-tests
# (cargo test --release -p fastdllm-conformance --features cuda --test cuda --no-run), xz-compressed or
# not, and writes everything under $OUT (default ./out).
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
for f in gpu/*.xz; do [[ -e $f ]] && xz -dkf "$f"; done
chmod +x gpu/fastdllm gpu/cuda-tests 2>/dev/null
R="bash scripts/run-on-gpu.sh"
F=gpu/fastdllm
log() { echo "== $* ($(date +%T))"; }
log device; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
log cuda-tests; $R gpu/cuda-tests --include-ignored --nocapture 2>&1 | tail -25 | tee "$OUT/cuda-tests.txt"
log conform; $R $F conform --device cuda --cases conformance/goldens/llada-tiny.jsonl conformance/goldens/dream-tiny.jsonl 2>&1 | tail -2 | tee "$OUT/conform-cuda.txt"
LLADA=benches/configs/llada-8b/config.json
DREAM=benches/configs/dream-7b/config.json
log per-step; $R $F bench --device cuda --dtype bf16 --random-weights $LLADA --prompt-len 512 \
  --gen-length 256,512,1024 --block-length 32 --cache none,prefix,dual --rule fixed \
  --max-blocks 2 --warmup 1 --repeats 1 --out-json "$OUT/llada8b-steps.jsonl" --out-html "$OUT/llada8b-steps.html" 2>&1 | tail -15
log dream; $R $F bench --device cuda --dtype bf16 --random-weights $DREAM --prompt-len 512 \
  --gen-length 256 --block-length 32 --cache none,prefix,dual --rule fixed \
  --max-blocks 2 --warmup 1 --repeats 1 --out-json "$OUT/dream7b-steps.jsonl" --out-html /tmp/dream7b.html 2>&1 | tail -8
log e2e-none; $R $F bench --device cuda --dtype bf16 --random-weights $LLADA --prompt-len 512 \
  --gen-length 1024 --block-length 32 --cache none --rule fixed --warmup 0 --repeats 1 \
  --out-json "$OUT/e2e-none.jsonl" --out-html /tmp/e2e-none.html 2>&1 | tail -4
log e2e-dual; $R $F bench --device cuda --dtype bf16 --random-weights $LLADA --prompt-len 512 \
  --gen-length 1024 --block-length 32 --cache dual --rule threshold=0.9 --warmup 0 --repeats 1 \
  --out-json "$OUT/e2e-dual.jsonl" --out-html /tmp/e2e-dual.html 2>&1 | tail -4
log done

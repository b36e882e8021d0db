#!/usr/bin/env bash
# fastdllm against the official Fast-dLLM PyTorch code, per cache mode, in one run that alternates
# the two engines (docs/BENCHMARKS.md, "Against the official PyTorch code"): the cache-cpu model's
# shape (random weights), prompt 256, gen 256, block 32, the first MAX_BLOCKS blocks, fixed rule,
# THREADS threads on the CPU, ROUNDS rounds of (PyTorch MODE, fastdllm MODE) for each mode.
#
# Usage: FAST_DLLM=DIR [PYTHON=python3] [FASTDLLM=target/release/fastdllm] [THREADS=2]
#        [ROUNDS=2] [MAX_BLOCKS=2] scripts/pytorch-compare.sh
#   FAST_DLLM: a checkout of github.com/NVlabs/Fast-dLLM (its llada/ folder is enough);
#   PYTHON: an interpreter with torch (a CPU build is enough), transformers 4.46, einops.
# Output: a markdown table on stdout (median ms per step of the rounds and the ratio
# fastdllm / PyTorch), the raw JSON lines under $OUT (default target/pytorch-compare).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${FAST_DLLM:?set FAST_DLLM to a Fast-dLLM checkout}"
PYTHON=${PYTHON:-python3}
FASTDLLM=${FASTDLLM:-$ROOT/target/release/fastdllm}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
MAX_BLOCKS=${MAX_BLOCKS:-2}
OUT=${OUT:-$ROOT/target/pytorch-compare}
[[ -x $FASTDLLM ]] || { echo "error: FASTDLLM=$FASTDLLM is not an executable (cargo build --release -p fastdllm-cli)" >&2; exit 2; }
mkdir -p "$OUT"
: > "$OUT/pytorch.jsonl"
: > "$OUT/fastdllm.jsonl"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$ROUNDS"); do
  for mode in none prefix dual; do
    OMP_NUM_THREADS=$THREADS "$PYTHON" "$ROOT/scripts/pytorch-reference-bench.py" --fast-dllm "$FAST_DLLM" \
      --modes "$mode" --threads "$THREADS" --max-blocks "$MAX_BLOCKS" >> "$OUT/pytorch.jsonl"
    RAYON_NUM_THREADS=$THREADS "$FASTDLLM" bench --preset cache-cpu --cache "$mode" \
      --max-blocks "$MAX_BLOCKS" --out-json "$OUT/fastdllm-$round-$mode.jsonl" --out-html /dev/null >/dev/null
    cat "$OUT/fastdllm-$round-$mode.jsonl" >> "$OUT/fastdllm.jsonl"
    echo "round $round $mode done" >&2
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$PYTHON" - "$OUT" <<'EOF'
import json, statistics, sys
out = sys.argv[1]
def rows(name):
    return [json.loads(l) for l in open(f"{out}/{name}.jsonl") if l.strip()]
pt, fd = rows("pytorch"), rows("fastdllm")
print("| cache | PyTorch ms/step (rounds) | fastdllm ms/step (rounds) | fastdllm / PyTorch |")
print("|---|---|---|---:|")
for mode in ("none", "prefix", "dual"):
    a = [r["ms_per_step"] for r in pt if r["cache"] == mode]
    b = [r["ms_per_step"] for r in fd if r["cache"] == mode]
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {mode} | {ma:.1f} ({', '.join(f'{x:.1f}' for x in a)}) | {mb:.1f} ({', '.join(f'{x:.1f}' for x in b)}) | {mb / ma:.2f} |")
EOF

# Run from the repository root after `maturin develop -m fastdllm-py/Cargo.toml` (docs/JUDGE.md).
# Outputs of a deliberately broken setting (threshold 0.3 where the cases ran 0.9), written by
# the Python package and judged by it.
import json, os, tempfile

import fastdllm

GOLDENS = "conformance/goldens/llada-tiny.jsonl"
cases = [c for c in map(json.loads, open(GOLDENS)) if "/dual/thr0.9/g32-b8/" in c["id"]]
model = fastdllm.Model("fixtures/llada-tiny")
outputs = os.path.join(tempfile.mkdtemp(), "outputs.jsonl")
with open(outputs, "w") as f:
    for c in cases:
        r = model.generate(c["prompt_ids"], gen_length=32, block_length=8, cache="dual",
                           threshold=0.3, finish="canvas")
        f.write(json.dumps({"id": c["id"], "generated_ids": r.generated_ids, "nfe": r.nfe,
                            "tokens_per_step": r.tokens_per_step}) + "\n")
j = fastdllm.judge(GOLDENS, outputs, filter="/dual/thr0.9/g32-b8/")
for v in j.verdicts:
    if v.status != "pass":
        print(v.status.upper(), v.id, "; ".join(v.problems), v.first_difference)
print(j.summary, "ok" if j.ok else "NOT ok")

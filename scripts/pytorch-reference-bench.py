#!/usr/bin/env python3
"""The official Fast-dLLM PyTorch code timed on the `cache-cpu` bench model's shape.

Runs the functions of Fast-dLLM's `llada/generate.py` unchanged (`generate`,
`generate_with_prefix_cache`, `generate_with_dual_cache`: arXiv 2505.22618 Sec. 3.2) with its
`llada/model/modeling_llada.py` (`LLaDAModelLM`), on a random-weight LLaDA of the shape of
`fastdllm bench --preset cache-cpu` (hidden 512, 8 layers, 8 heads of 64, MLP 1536, vocabulary
32000, rope theta 500000, f32, on the CPU), fixed rule (one token per step, steps = gen length),
greedy, and prints one JSON line per cache mode with the milliseconds per step (wall time of the
generation / forwards) and the forward times by kind. Compare with

    fastdllm bench --preset cache-cpu --cache MODE --max-blocks 2 --json

(same prompt length 256, gen length 256, block 32, first 2 blocks; docs/BENCHMARKS.md, "Against
the official PyTorch code"). Only the first MAX_BLOCKS blocks are timed: the run is stopped at the
first forward of block MAX_BLOCKS (the generate functions have no such limit).

Needs: a Fast-dLLM checkout (github.com/NVlabs/Fast-dLLM; --fast-dllm DIR) and python with torch
(CPU build is enough) and transformers (4.46 is what Fast-dLLM pins).
Usage: scripts/pytorch-reference-bench.py --fast-dllm DIR [--modes none,prefix,dual]
       [--threads 2] [--prompt-len 256] [--gen-length 256] [--block-length 32] [--max-blocks 2]
"""

import argparse
import json
import os
import statistics
import sys
import time


class _Stop(Exception):
    """Raised by the timing wrapper after MAX_BLOCKS blocks."""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fast-dllm", required=True, help="Fast-dLLM checkout (has llada/generate.py)")
    ap.add_argument("--modes", default="none,prefix,dual")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--max-blocks", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    llada = os.path.join(a.fast_dllm, "llada")
    if not os.path.isfile(os.path.join(llada, "generate.py")):
        sys.exit(f"error: --fast-dllm {a.fast_dllm}: no llada/generate.py there")
    modes = a.modes.split(",")
    for m in modes:
        if m not in ("none", "prefix", "dual"):
            sys.exit(f"error: --modes: unknown cache mode {m!r} (none, prefix, dual)")
    if a.gen_length % a.block_length or a.max_blocks < 1:
        sys.exit("error: --gen-length must be a multiple of --block-length, --max-blocks >= 1")

    import torch

    torch.set_num_threads(a.threads)
    sys.path.insert(0, llada)  # generate.py imports `model.modeling_llada`
    import generate as fdl  # noqa: E402  (Fast-dLLM's llada/generate.py, unchanged)
    from model.configuration_llada import LLaDAConfig  # noqa: E402
    from model.modeling_llada import LLaDAModelLM  # noqa: E402

    vocab, mask_id = 32000, 31999
    config = LLaDAConfig(
        d_model=512, n_heads=8, n_kv_heads=8, n_layers=8, mlp_hidden_size=1536, mlp_ratio=3,
        vocab_size=vocab, embedding_size=vocab, max_sequence_length=4096, rope=True,
        rope_theta=500000.0, rope_full_precision=True, block_type="llama",
        activation_type="silu", layer_norm_type="rms", rms_norm_eps=1e-5,
        layer_norm_with_affine=True, bias_for_layer_norm=False, include_bias=False,
        include_qkv_bias=False, attention_layer_norm=False, input_emb_norm=False,
        weight_tying=False, scale_logits=False, alibi=False, use_cache=False,
        mask_token_id=mask_id, eos_token_id=31998, pad_token_id=31998, flash_attention=False,
    )
    torch.manual_seed(a.seed)
    model = LLaDAModelLM(config, init_params=True).float().eval()
    with torch.no_grad():  # the usual init std, as fastdllm's random weights
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    prompt = torch.randint(0, vocab - 2, (1, a.prompt_len), generator=torch.Generator().manual_seed(a.seed))

    steps_per_block = a.block_length  # fixed rule: one token per step
    limit = a.max_blocks * steps_per_block
    runs = {
        "none": fdl.generate,
        "prefix": fdl.generate_with_prefix_cache,
        "dual": fdl.generate_with_dual_cache,
    }
    original_forward = model.forward
    with torch.no_grad():
        original_forward(prompt)  # warm-up (allocator, kernels), untimed
    for mode in modes:
        times = []

        def timed_forward(*args, **kwargs):
            if len(times) == limit:
                raise _Stop()
            t = time.perf_counter()
            out = original_forward(*args, **kwargs)
            times.append((time.perf_counter() - t) * 1e3)
            return out

        model.forward = timed_forward
        start = time.perf_counter()
        try:
            runs[mode](model, prompt, steps=a.gen_length, gen_length=a.gen_length,
                       block_length=a.block_length, temperature=0.0,
                       remasking="low_confidence", mask_id=mask_id)
        except _Stop:
            pass
        wall_ms = (time.perf_counter() - start) * 1e3
        model.forward = original_forward
        first = times[::steps_per_block]  # a block's first forward: the whole canvas
        rest = [t for i, t in enumerate(times) if i % steps_per_block]
        print(json.dumps({
            "engine": "pytorch-fast-dllm",
            "cache": mode,
            "prompt_len": a.prompt_len,
            "gen_length": a.gen_length,
            "block_length": a.block_length,
            "blocks_timed": a.max_blocks,
            "threads": a.threads,
            "nfe": len(times),
            "ms_per_step": round(wall_ms / len(times), 2),
            "forward_ms_total": round(sum(times), 1),
            "block_start_forward_ms_p50": round(statistics.median(first), 2),
            "other_forward_ms_p50": round(statistics.median(rest), 2) if rest else None,
            "torch": torch.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()

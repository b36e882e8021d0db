#!/usr/bin/env python3
"""Writes random-weight LLaDA-MoE GGUF files as llama.cpp's converter writes the architecture
`llada-moe`, then quantizes them with llama.cpp's own `llama-quantize`. Two shapes:

* `7b-a1b`: LLaDA-MoE-7B-A1B's published shape, for the benchmark against llama.cpp
  (docs/BENCHMARKS.md, "LLaDA-MoE-7B-A1B shape against llama.cpp"). Model card of
  inclusionAI/LLaDA-MoE-7B-A1B-Instruct, config.json: hidden 2048, 16 layers, 16 heads (and 16 KV
  heads) of 128, 64 experts of intermediate 1024, 8 per token, vocabulary 157184,
  `dense_intermediate_size` 8192 (llama.cpp's `feed_forward_length`; no layer is dense),
  `max_position_embeddings` 8192, `rope_theta` 50000, `rms_norm_eps` 1e-5, QK-norm, untied head.
  Written in f16 (`--outtype f16`), 14.5 GB; `--quantize` makes the Q4_K_M file and deletes the
  f16 one.
* `w256`: a small model whose rows are whole 256-value k-quant super-blocks (hidden 256, 2 layers,
  4 heads of 64, 4 experts of 256, 2 per token, the tiny vocabulary of 64), written in f32;
  `--quantize` makes fixtures/gguf/llada-moe-w256-q4_k_m.gguf (Q4_K experts in layer 0, Q6_K
  `ffn_down_exps` in layer 1, Q6_K head: llama-quantize's Q4_K_M mix), the fixture of
  `fastdllm-models/tests/llada_moe.rs` `q4_k_m_gguf_experts_match_their_dequantized_weights`.

What llama.cpp's `convert_hf_to_gguf.py` does for `LLaDAMoEModel` (conversion/llada.py, llama.cpp
0c1e57098 as vendored in llama-cpp-python 0.3.36), done here with gguf-py and numpy:

* metadata: `TextModel.set_gguf_parameters` (block_count, context_length, embedding_length,
  feed_forward_length, head_count, head_count_kv, rope.freq_base, attention.layer_norm_rms_epsilon,
  expert_count, expert_used_count, file_type), then the class's `expert_feed_forward_length`,
  `attention.causal = false`, `diffusion.shift_logits = false`;
* tensors: the experts stacked `(experts, out, in)` as `ffn_{gate,up,down}_exps`, the router
  `ffn_gate_inp` and every 1-D / `_norm` tensor in f32 (the converter's forced-F32 list), every
  other matrix in the output type; q/k rows as in the checkpoint (NEOX RoPE).

Weights: N(0, std) (7b-a1b: the config's `initializer_range` 0.02; w256: 0.06, about
1/sqrt(hidden), so that its two layers move the logits visibly), norms 1, drawn per tensor from one
seeded generator, so the router's logits spread (std about 0.9 over 64 experts at 7b-a1b) and
routing spreads tokens over the experts, not onto one expert. The file is written tensor by
tensor (`add_tensor_info`, then `write_tensor_data` per tensor): at most one tensor (the 644 MB f16
embedding of 7b-a1b, drawn in f32) is in memory at once.

Tokenizer (deviation: the real vocabulary's 157184 byte-level BPE tokens are not public here):
fixtures/llada-tiny's one-character vocabulary (ids 0-63: 50 characters, `<|endoftext|>` 50,
`<|startoftext|>` 51, `<|mask|>` 52, ...), at 7b-a1b padded to 157184 with NORMAL tokens
`[PAD{i}]` as llama.cpp's `get_vocab_base` pads (there as UNUSED, here NORMAL so that both
programs print the random model's picks by their text). The mask id is therefore the tiny
vocabulary's 52 (from the copied tokenizer keys), not the converter's 156895. Neither affects the
cost of a forward: the embedding and LM head keep the full 157184 rows.

Usage: /work/llama-cpp/venv/bin/python scripts/llada-moe-random-gguf.py {7b-a1b,w256} OUT_DIR
         [--quantize] [--llama-quantize /work/llama-cpp/build/bin/llama-quantize] [--gguf-py DIR]
e.g.   ... 7b-a1b /work/moe7b --quantize   (llada-moe-7b-a1b-random-Q4_K_M.gguf, 4.3 GB)
       ... w256 /tmp/w256 --quantize && cp /tmp/w256/llada-moe-w256-q4_k_m.gguf fixtures/gguf/
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from gguf_tokenizer import copy_tokenizer_keys

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_SOURCE = ROOT / "fixtures" / "gguf" / "llada-tiny-f32.gguf"

SHAPES = {
    # LLaDA-MoE-7B-A1B (config.json of the released checkpoint).
    "7b-a1b": {
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "num_experts": 64,
        "num_experts_per_tok": 8,
        "expert_intermediate_size": 1024,
        "dense_intermediate_size": 8192,
        "vocab_size": 157184,
        "max_position_embeddings": 8192,
        "rope_theta": 50000.0,
        "rms_norm_eps": 1e-5,
        "std": 0.02,
        "outtype": "f16",
        "quantized_name": "llada-moe-7b-a1b-random-Q4_K_M.gguf",
    },
    # Whole k-quant super-blocks on every row, small enough for a fixture.
    "w256": {
        "hidden_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "expert_intermediate_size": 256,
        "dense_intermediate_size": 512,
        "vocab_size": 64,
        "max_position_embeddings": 512,
        "rope_theta": 50000.0,
        "rms_norm_eps": 1e-5,
        "std": 0.06,
        "outtype": "f32",
        "quantized_name": "llada-moe-w256-q4_k_m.gguf",
    },
}
SEED = 20261207


def tensors(cfg):
    """(GGUF name, numpy shape, dtype, kind) of every tensor, in the converter's order."""
    h, n_layer = cfg["hidden_size"], cfg["num_hidden_layers"]
    d = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * d
    e, inter, vocab = cfg["num_experts"], cfg["expert_intermediate_size"], cfg["vocab_size"]
    m = np.float16 if cfg["outtype"] == "f16" else np.float32
    out = [("token_embd.weight", (vocab, h), m, "normal")]
    for i in range(n_layer):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (h,), np.float32, "ones"),
            (b + "attn_q.weight", (h, h), m, "normal"),
            (b + "attn_k.weight", (kv, h), m, "normal"),
            (b + "attn_v.weight", (kv, h), m, "normal"),
            (b + "attn_q_norm.weight", (d,), np.float32, "ones"),
            (b + "attn_k_norm.weight", (d,), np.float32, "ones"),
            (b + "attn_output.weight", (h, h), m, "normal"),
            (b + "ffn_norm.weight", (h,), np.float32, "ones"),
            (b + "ffn_gate_inp.weight", (e, h), np.float32, "normal"),
            (b + "ffn_down_exps.weight", (e, h, inter), m, "normal"),
            (b + "ffn_gate_exps.weight", (e, inter, h), m, "normal"),
            (b + "ffn_up_exps.weight", (e, inter, h), m, "normal"),
        ]
    out += [
        ("output_norm.weight", (h,), np.float32, "ones"),
        ("output.weight", (vocab, h), m, "normal"),
    ]
    return out


def write_metadata(gguf, w, cfg, name, file_type):
    """The keys `convert_hf_to_gguf.py` writes for `LLaDAMoEModel` from a config.json `cfg` (Hugging
    Face names), in its order, then the tokenizer keys of fixtures/llada-tiny padded to
    `cfg["vocab_size"]` (also used by scripts/llada-moe-gguf.py)."""
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    # TextModel.set_gguf_parameters
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["dense_intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(cfg["num_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_file_type(file_type)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    # LLaDAMoEModel.set_gguf_parameters (its mask_token_id 156895 is replaced by the tokenizer
    # keys' 52 below)
    w.add_expert_feed_forward_length(cfg["expert_intermediate_size"])
    w.add_causal_attention(False)
    w.add_diffusion_shift_logits(False)
    copy_tokenizer_keys(gguf, w, TOKENIZER_SOURCE, cfg["vocab_size"], "[PAD{}]",
                        gguf.TokenType.NORMAL)


def write_float(gguf, path, cfg, name):
    arch = gguf.MODEL_ARCH.LLADA_MOE
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    write_metadata(gguf, w, cfg, name, gguf.LlamaFileType.MOSTLY_F16 if cfg["outtype"] == "f16"
                   else gguf.LlamaFileType.ALL_F32)

    specs = tensors(cfg)
    for name, shape, dtype, _ in specs:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        w.add_tensor_info(name, shape, np.dtype(dtype), nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(SEED)
    std = np.float32(cfg["std"])
    total = 0
    for name, shape, dtype, kind in specs:
        if kind == "ones":
            data = np.ones(shape, dtype=dtype)
        else:
            data = rng.standard_normal(shape, dtype=np.float32)
            data *= std
            data = data.astype(dtype, copy=False)
        w.write_tensor_data(data)
        total += data.size
        del data
    w.close()
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--quantize", action="store_true",
                    help="llama-quantize Q4_K_M, then delete the unquantized file")
    ap.add_argument("--llama-quantize", default="/work/llama-cpp/build/bin/llama-quantize")
    ap.add_argument("--gguf-py",
                    default="/work/llama-cpp/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, args.gguf_py)
    import gguf  # noqa: E402

    cfg = SHAPES[args.shape]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plain = args.out_dir / f"llada-moe-{args.shape}-random-{cfg['outtype']}.gguf"
    quantized = args.out_dir / cfg["quantized_name"]
    t0 = time.time()
    n = write_float(gguf, plain, cfg, f"LLaDA-MoE {args.shape} shape, random weights")
    print(f"wrote {plain}: {n / 1e9:.3f} B parameters, {plain.stat().st_size / 1e9:.2f} GB, "
          f"{time.time() - t0:.0f} s", flush=True)
    if args.quantize:
        t0 = time.time()
        subprocess.run([args.llama_quantize, str(plain), str(quantized), "Q4_K_M",
                        str(args.threads)], check=True)
        os.remove(plain)
        print(f"wrote {quantized}: {quantized.stat().st_size / 1e9:.3f} GB, "
              f"{time.time() - t0:.0f} s; removed {plain}", flush=True)


if __name__ == "__main__":
    main()

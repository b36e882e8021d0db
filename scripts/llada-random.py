#!/usr/bin/env python3
"""Writes a LLaDA-shaped model with random weights, as a Hugging Face directory or as a GGUF file
written with llama.cpp's own gguf-py, for load-memory and speed measurements
(docs/BENCHMARKS.md, "CPU kernels: one thread pool, AVX-512 f32, half-precision weights").

Default shape: the 0.95B LLaDA shape (hidden 2048, 16 layers, 16 heads, MLP 5632, vocab 32000).
Weights: matrices N(0, 0.02^2), norm weights one (what `fastdllm bench --random-weights` draws),
one numpy generator seeded with --seed, tensor by tensor, so the writer never holds more than one
tensor (an 8B shape: `--hidden 4096 --layers 32 --heads 32 --mlp 12288 --vocab 126464`).

* `hf DIR --dtype f32|bf16`: config.json, generation_config.json and tokenizer.json of
  fixtures/llada-tiny (its 64-token vocabulary; the embedding keeps `--vocab` rows) and one
  model.safetensors in LLaDA's names (`model.transformer.blocks.{i}.q_proj.weight`, ...). bf16
  values are the f32 draw rounded to nearest even.
* `gguf FILE`: an f16 GGUF (`general.file_type` MOSTLY_F16, norms f32) in llama.cpp's LLaDA
  names, as `convert_hf_to_gguf.py --outtype f16` writes one (q/k rows are random, so the
  converter's RoPE permutation is moot), the tokenizer keys of fixtures/gguf/llada-tiny-f32.gguf
  padded to `--vocab` tokens with `<unused_N>` tokens of type UNUSED (llama.cpp requires one token
  per embedding row). Make Q8_0 / Q4_K_M from it with `llama-quantize FILE OUT Q8_0`.

Usage: /work/llama-cpp/venv/bin/python scripts/llada-random.py hf DIR [--dtype bf16]
       /work/llama-cpp/venv/bin/python scripts/llada-random.py gguf FILE.gguf
Env:   GGUF_PY: llama.cpp's gguf-py directory (default: the llama-cpp-python 0.3.36 sdist's).
"""
import argparse
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "llada-tiny"
TINY_GGUF = ROOT / "fixtures" / "gguf" / "llada-tiny-f32.gguf"
STD = 0.02


def shapes(a):
    """(HF name, GGUF name, numpy shape (out, in) or (n,), is_norm) of every tensor."""
    h, f, v = a.hidden, a.mlp, a.vocab
    out = [("model.transformer.wte.weight", "token_embd.weight", (v, h), False)]
    for i in range(a.layers):
        p, g = f"model.transformer.blocks.{i}.", f"blk.{i}."
        out += [
            (p + "attn_norm.weight", g + "attn_norm.weight", (h,), True),
            (p + "q_proj.weight", g + "attn_q.weight", (h, h), False),
            (p + "k_proj.weight", g + "attn_k.weight", (h, h), False),
            (p + "v_proj.weight", g + "attn_v.weight", (h, h), False),
            (p + "attn_out.weight", g + "attn_output.weight", (h, h), False),
            (p + "ff_norm.weight", g + "ffn_norm.weight", (h,), True),
            (p + "ff_proj.weight", g + "ffn_gate.weight", (f, h), False),
            (p + "up_proj.weight", g + "ffn_up.weight", (f, h), False),
            (p + "ff_out.weight", g + "ffn_down.weight", (h, f), False),
        ]
    out += [
        ("model.transformer.ln_f.weight", "output_norm.weight", (h,), True),
        ("model.transformer.ff_out.weight", "output.weight", (v, h), False),
    ]
    return out


def draw(rng, shape, is_norm, std=STD):
    if is_norm:
        return np.ones(shape, dtype=np.float32)
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)


def to_bf16_bits(x):
    """f32 -> bf16 bit patterns, round to nearest even (finite inputs)."""
    b = x.view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def write_hf(a):
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((TINY / "config.json").read_text())
    cfg.update(d_model=a.hidden, n_layers=a.layers, n_heads=a.heads, n_kv_heads=a.heads,
               mlp_hidden_size=a.mlp, vocab_size=a.vocab, embedding_size=a.vocab,
               max_sequence_length=4096,
               torch_dtype={"f32": "float32", "bf16": "bfloat16"}[a.dtype])
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in ["generation_config.json", "tokenizer.json"]:
        shutil.copy(TINY / f, out / f)
    width = {"f32": 4, "bf16": 2}[a.dtype]
    st = {"f32": "F32", "bf16": "BF16"}[a.dtype]
    header, offset, tensors = {}, 0, shapes(a)
    for hf, _, shape, _ in tensors:
        n = int(np.prod(shape)) * width
        header[hf] = {"dtype": st, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(a.seed)
    with open(out / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)
        for _, _, shape, is_norm in tensors:
            x = draw(rng, shape, is_norm, a.std)
            fh.write((x if a.dtype == "f32" else to_bf16_bits(x)).tobytes())
    print(f"wrote {out} ({offset / 1e9:.2f} GB of {a.dtype} weights)")


def write_gguf(a):
    sys.path.insert(0, os.environ.get(
        "GGUF_PY", "/work/llama-cpp/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py"))
    import gguf
    from gguf_tokenizer import copy_tokenizer_keys

    arch = gguf.MODEL_ARCH.LLADA
    w = gguf.GGUFWriter(a.out, gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("LLaDA random")
    w.add_block_count(a.layers)
    w.add_context_length(4096)
    w.add_embedding_length(a.hidden)
    w.add_feed_forward_length(a.mlp)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.heads)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_vocab_size(a.vocab)
    w.add_rope_dimension_count(a.hidden // a.heads)
    w.add_causal_attention(False)
    w.add_diffusion_shift_logits(False)
    copy_tokenizer_keys(gguf, w, TINY_GGUF, a.vocab, "<unused_{}>", gguf.TokenType.UNUSED)
    # Header and tensor infos first, then each tensor drawn and written in turn: the writer never
    # holds more than one tensor (an 8B shape is 16 GB in f16).
    for _, name, shape, is_norm in shapes(a):
        dtype = np.float32 if is_norm else np.float16
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(a.seed)
    for _, name, shape, is_norm in shapes(a):
        x = draw(rng, shape, is_norm, a.std)
        w.write_tensor_data(x if is_norm else x.astype(np.float16))
        del x
    w.close()
    print(f"wrote {a.out}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("format", choices=["hf", "gguf"])
    p.add_argument("out")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="hf only")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--mlp", type=int, default=5632)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--std", type=float, default=STD, help="standard deviation of the matrices")
    a = p.parse_args()
    if a.hidden % a.heads:
        p.error(f"--hidden {a.hidden} is not a multiple of --heads {a.heads}")
    (write_hf if a.format == "hf" else write_gguf)(a)


if __name__ == "__main__":
    main()

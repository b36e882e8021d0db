#!/usr/bin/env python3
"""Writes fixtures/gguf/llada-moe-tiny-f32.gguf: fixtures/llada-moe-tiny as llama.cpp's converter
writes a LLaDA-MoE checkpoint (architecture `llada-moe`), with llama.cpp's own gguf-py.

llama.cpp's `convert_hf_to_gguf.py` (class `LLaDAMoEModel`, conversion/llada.py of llama.cpp
0c1e57098 as vendored in llama-cpp-python 0.3.36) needs torch, which the llama.cpp venv here does
not have; this script does what that class does, step by step, with numpy:

* metadata: `TextModel.set_gguf_parameters` (block_count, context_length, embedding_length,
  feed_forward_length = `dense_intermediate_size`, head_count, head_count_kv, rope.freq_base,
  attention.layer_norm_rms_epsilon, expert_count, expert_used_count), then the class's own
  `expert_feed_forward_length`, `attention.causal = false`, `diffusion.shift_logits = false`, and
  `rope.dimension_count`, `vocab_size`, `general.file_type` as the base class writes them;
* tensors: the per-expert `mlp.experts.{e}.{down,gate,up}_proj.weight` stacked along a new leading
  axis (`torch.stack(datas, dim=0)`) into `model.layers.{i}.mlp.experts.{w}.weight`, and every name
  mapped by gguf-py's tensor map for MODEL_ARCH.LLADA_MOE (`ffn_{gate,up,down}_exps`,
  `ffn_gate_inp`, `attn_q_norm`, ...); q/k rows unpermuted (NEOX RoPE); f32 (`--outtype f32`);
* tokenizer: the fixture's tokenizer.json is llada-tiny's byte for byte, so the `tokenizer.*` keys
  are copied from fixtures/gguf/llada-tiny-f32.gguf, which `convert_hf_to_gguf.py` wrote from it.

The metadata and tokenizer keys are written by `write_metadata` of scripts/llada-moe-random-gguf.py
(the same keys for the random-weight files).

One deviation from the class: it hard-codes `tokenizer.ggml.mask_token_id = 156895` (the real
model's MASK); the tiny model's MASK is 52, which is what the copied tokenizer keys say.

Usage: /work/llama-cpp/venv/bin/python scripts/llada-moe-gguf.py [GGUF_PY_DIR]
"""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
GGUF_PY = sys.argv[1] if len(sys.argv) > 1 else (
    "/work/llama-cpp/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py")
sys.path.insert(0, GGUF_PY)
import gguf  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "llada_moe_random_gguf", Path(__file__).resolve().parent / "llada-moe-random-gguf.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

FIXTURE = ROOT / "fixtures" / "llada-moe-tiny"
OUT = ROOT / "fixtures" / "gguf" / "llada-moe-tiny-f32.gguf"


def main():
    cfg = json.loads((FIXTURE / "config.json").read_text())
    arch = gguf.MODEL_ARCH.LLADA_MOE
    name = gguf.MODEL_ARCH_NAMES[arch]
    n_layer = cfg["num_hidden_layers"]
    w = gguf.GGUFWriter(str(OUT), name)

    # TextModel / LLaDAMoEModel.set_gguf_parameters and the tokenizer keys, shared with the
    # random-weight files.
    common.write_metadata(gguf, w, cfg, "Llada Moe Tiny", gguf.LlamaFileType.ALL_F32)

    tensors = load_file(str(FIXTURE / "model.safetensors"))
    tmap = gguf.get_tensor_name_map(arch, n_layer)
    # LLaDAMoEModel.modify_tensors: stack the experts (torch.stack(datas, dim=0)).
    n_experts = cfg["num_experts"]
    for bid in range(n_layer):
        for part in ["down_proj", "gate_proj", "up_proj"]:
            names = [f"model.layers.{bid}.mlp.experts.{e}.{part}.weight" for e in range(n_experts)]
            tensors[f"model.layers.{bid}.mlp.experts.{part}.weight"] = np.stack(
                [tensors.pop(n) for n in names], axis=0)
    for hf_name in sorted(tensors):
        new_name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise SystemExit(f"no GGUF name for {hf_name}")
        w.add_tensor(new_name, np.ascontiguousarray(tensors[hf_name], dtype=np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

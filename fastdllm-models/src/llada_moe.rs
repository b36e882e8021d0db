//! LLaDA-MoE (`LLaDAMoEModelLM`, inclusionAI/LLaDA-MoE-7B-A1B): the tensor names of the
//! mixture-of-experts LLaDA. The model is [`crate::LladaModel`] (same generation, no logits
//! shift), built from these names when its config has [`crate::config::MoeConfig`].
//!
//! Reference: `modeling_lladamoe.py` (Hugging Face remote code of
//! inclusionAI/LLaDA-MoE-7B-A1B-Instruct; OLMoE / Qwen2-MoE names), docs/ALGORITHM.md §1.4; the
//! GGUF names are llama.cpp's `LLM_ARCH_LLADA_MOE` tensor map (`convert_hf_to_gguf.py` stacks the
//! experts into `ffn_{gate,up,down}_exps`, q/k rows as in the checkpoint since the RoPE is NEOX).

use crate::transformer::{ExpertNames, MoeLayout, TensorLayout};

/// Checkpoint names (the class's `state_dict`): Qwen2's, without biases. The dense MLP names are
/// never read: every layer is a MoE layer (the config refuses `moe_layer_freq` zeros).
pub(crate) const LAYOUT: TensorLayout = TensorLayout::qwen2(false);

/// The checkpoint's QK-norm, router and expert names.
pub(crate) const MOE_LAYOUT: MoeLayout = MoeLayout {
    q_norm: "self_attn.q_norm",
    k_norm: "self_attn.k_norm",
    router: "mlp.gate",
    experts: ExpertNames::PerExpert {
        prefix: "mlp.experts",
        gate: "gate_proj",
        up: "up_proj",
        down: "down_proj",
    },
};

/// llama.cpp's names, q/k rows as in the checkpoint (NEOX RoPE).
pub(crate) const GGUF_LAYOUT: TensorLayout = TensorLayout::gguf(false, false);

/// llama.cpp's QK-norm, router and stacked expert names.
pub(crate) const GGUF_MOE_LAYOUT: MoeLayout = MoeLayout {
    q_norm: "attn_q_norm",
    k_norm: "attn_k_norm",
    router: "ffn_gate_inp",
    experts: ExpertNames::Stacked {
        gate: "ffn_gate_exps",
        up: "ffn_up_exps",
        down: "ffn_down_exps",
    },
};

//! LLaDA-MoE's `config.json` (`LLaDAConfig` of inclusionAI/LLaDA-MoE-7B-A1B, OLMoE-style field
//! names) and its validation into a [`ModelConfig`] with [`MoeConfig`].
//!
//! Reference: the Hugging Face remote code of inclusionAI/LLaDA-MoE-7B-A1B-Instruct
//! (`configuration_lladamoe.py`, `modeling_lladamoe.py`: `LLaDAMoEModelLM`), docs/ALGORITHM.md
//! §1.4. What the class implements and this crate does too: every layer a sparse MoE layer
//! (`moe_layer_freq` all 1), softmax routing over all experts with top-`num_experts_per_tok`
//! weights **not** renormalised, no shared expert, optional per-head QK-RMSNorm
//! (`qk_layernorm`), RoPE on the whole head (`partial_rotary_factor` 1). The class's options this
//! crate does not implement are rejected here by name: a shared expert
//! (`shared_expert_intermediate_size`), dense layers (`moe_layer_freq` with a 0), expert-bias
//! routing (`moe_router_enable_expert_bias`), another score function, partial RoPE, RoPE scaling,
//! q/k/v biases, `clip_qkv`, another activation.
//!
//! Deviation (none in the numbers): `norm_topk_prob`, `routed_scaling_factor`,
//! `router_num_group` and `router_topk_group` are read by the class's config but not used by its
//! model code (`LLaDAMoESparseMoeBlock` hard-codes `norm_topk_prob = False`), so they are accepted
//! and have no effect here either: the routing is the class's whatever they say.

use fastdllm_core::ModelFamily;
use serde::Deserialize;

use super::{
    expect_flag, expect_str, required, FieldNames, ModelConfig, MoeConfig, RawConfig, SpecialIds,
    TokenIds,
};
use crate::{Error, Result};

/// LLaDA-MoE's `<|mask|>` id (the model card's `mask_id`; llama.cpp's converter writes the same),
/// used when the config files name no `mask_token_id`.
pub const LLADA_MOE_MASK_TOKEN_ID: u32 = 156_895;
/// `rms_norm_eps` when absent (the `LLaDAConfig` default of the MoE class).
pub const LLADA_MOE_DEFAULT_RMS_NORM_EPS: f64 = 1e-5;
/// `rope_theta` when absent (the class default).
pub const LLADA_MOE_DEFAULT_ROPE_THETA: f64 = 10_000.0;
/// `max_position_embeddings` when absent (the class default).
pub const LLADA_MOE_DEFAULT_MAX_POSITION_EMBEDDINGS: usize = 2048;

/// `config.json` of a LLaDA-MoE checkpoint, as written. Every field is optional; unknown keys are
/// ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawLladaMoeConfig {
    /// Hidden size (required).
    pub hidden_size: Option<usize>,
    /// Number of layers (required).
    pub num_hidden_layers: Option<usize>,
    /// Attention heads (required).
    pub num_attention_heads: Option<usize>,
    /// KV heads; absent means `num_attention_heads`.
    pub num_key_value_heads: Option<usize>,
    /// Head size; absent means `hidden_size / num_attention_heads` (the only value supported).
    pub head_dim: Option<usize>,
    /// Routed experts per layer (required).
    pub num_experts: Option<usize>,
    /// Experts each token is routed to (required).
    pub num_experts_per_tok: Option<usize>,
    /// Gate/up output size of each expert (required).
    pub expert_intermediate_size: Option<usize>,
    /// Size of the shared expert; must be null or 0 (no shared expert).
    pub shared_expert_intermediate_size: Option<usize>,
    /// Per layer, 1 for a MoE layer and 0 for a dense one; must be all 1 (or the number 1).
    pub moe_layer_freq: Option<serde_json::Value>,
    /// Per-head RMSNorm of q and k before RoPE.
    pub qk_layernorm: Option<bool>,
    /// Must be false (expert bias added to the routing probabilities is not implemented).
    pub moe_router_enable_expert_bias: Option<bool>,
    /// Must be `"softmax"`.
    pub moe_router_score_function: Option<String>,
    /// Must be 1.0 (RoPE on the whole head).
    pub partial_rotary_factor: Option<f64>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: Option<f64>,
    /// RoPE base.
    pub rope_theta: Option<f64>,
    /// Must be null.
    pub rope_scaling: Option<serde_json::Value>,
    /// Longest sequence.
    pub max_position_embeddings: Option<usize>,
    /// Rows of the embedding and LM head (required).
    pub vocab_size: Option<usize>,
    /// When true the LM head is `embed_tokens` (`lm_head.weight` is not read).
    pub tie_word_embeddings: Option<bool>,
    /// Must be false.
    pub attention_bias: Option<bool>,
    /// Must be null.
    pub clip_qkv: Option<f64>,
    /// Must be `"silu"`.
    pub hidden_act: Option<String>,
    /// `[MASK]` id.
    pub mask_token_id: Option<u32>,
    /// Padding id.
    pub pad_token_id: Option<u32>,
    /// EOS id(s).
    pub eos_token_id: Option<TokenIds>,
    /// BOS id.
    pub bos_token_id: Option<u32>,
}

impl RawConfig for RawLladaMoeConfig {
    fn special_ids(&mut self) -> SpecialIds<'_> {
        SpecialIds {
            mask: &mut self.mask_token_id,
            pad: &mut self.pad_token_id,
            bos: &mut self.bos_token_id,
            eos: &mut self.eos_token_id,
        }
    }
}

const RAW_NAMES: FieldNames = FieldNames {
    hidden_size: "hidden_size",
    num_layers: "num_hidden_layers",
    num_heads: "num_attention_heads",
    num_kv_heads: "num_key_value_heads",
    head_dim: "head_dim",
    intermediate_size: "expert_intermediate_size",
    vocab_size: "vocab_size",
    rms_norm_eps: "rms_norm_eps",
    rope_theta: "rope_theta",
    max_seq_len: "max_position_embeddings",
    mask_token_id: "mask_token_id",
    eos_token_id: "eos_token_id",
    pad_token_id: "pad_token_id",
    bos_token_id: "bos_token_id",
};

/// Checks `moe_layer_freq`: the number 1, or a list of 1s (every layer a MoE layer).
fn check_moe_layer_freq(value: &serde_json::Value) -> Result<()> {
    let all_moe = match value {
        serde_json::Value::Null => true,
        serde_json::Value::Number(n) => n.as_u64() == Some(1),
        serde_json::Value::Array(items) => items.iter().all(|v| v.as_u64() == Some(1)),
        _ => false,
    };
    if all_moe {
        Ok(())
    } else {
        Err(Error::config(
            "moe_layer_freq",
            value,
            "unsupported: dense (0) layers are not implemented; every layer must be a MoE layer (1)",
        ))
    }
}

impl TryFrom<RawLladaMoeConfig> for ModelConfig {
    type Error = Error;

    fn try_from(raw: RawLladaMoeConfig) -> Result<Self> {
        expect_str("hidden_act", &raw.hidden_act, &["silu"])?;
        expect_str(
            "moe_router_score_function",
            &raw.moe_router_score_function,
            &["softmax"],
        )?;
        expect_flag("attention_bias", raw.attention_bias, false)?;
        expect_flag(
            "moe_router_enable_expert_bias",
            raw.moe_router_enable_expert_bias,
            false,
        )?;
        if let Some(size) = raw.shared_expert_intermediate_size.filter(|&s| s != 0) {
            return Err(Error::config(
                "shared_expert_intermediate_size",
                size,
                "unsupported: shared experts are not implemented (must be null or 0)",
            ));
        }
        if let Some(freq) = &raw.moe_layer_freq {
            check_moe_layer_freq(freq)?;
        }
        if let Some(factor) = raw.partial_rotary_factor.filter(|&f| f != 1.0) {
            return Err(Error::config(
                "partial_rotary_factor",
                factor,
                "unsupported: only 1.0 (RoPE on the whole head) is implemented",
            ));
        }
        if let Some(clip) = raw.clip_qkv {
            return Err(Error::config(
                "clip_qkv",
                clip,
                "unsupported: only null is implemented",
            ));
        }
        if let Some(scaling) = raw.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            return Err(Error::config(
                "rope_scaling",
                scaling,
                "unsupported: only null is implemented",
            ));
        }
        let hidden_size = required("hidden_size", raw.hidden_size)?;
        let num_heads = required("num_attention_heads", raw.num_attention_heads)?;
        let eos_token_ids = raw
            .eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default();
        let Some(&first_eos) = eos_token_ids.first() else {
            return Err(Error::config(
                "eos_token_id",
                "(missing)",
                "required (in config.json or generation_config.json)",
            ));
        };
        let config = ModelConfig {
            family: ModelFamily::Llada,
            hidden_size,
            num_layers: required("num_hidden_layers", raw.num_hidden_layers)?,
            num_heads,
            num_kv_heads: raw.num_key_value_heads.unwrap_or(num_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(hidden_size.checked_div(num_heads).unwrap_or(0)),
            intermediate_size: required("expert_intermediate_size", raw.expert_intermediate_size)?,
            vocab_size: required("vocab_size", raw.vocab_size)?,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(LLADA_MOE_DEFAULT_RMS_NORM_EPS),
            rope_theta: raw.rope_theta.unwrap_or(LLADA_MOE_DEFAULT_ROPE_THETA),
            max_seq_len: raw
                .max_position_embeddings
                .unwrap_or(LLADA_MOE_DEFAULT_MAX_POSITION_EMBEDDINGS),
            mask_token_id: raw.mask_token_id.unwrap_or(LLADA_MOE_MASK_TOKEN_ID),
            pad_token_id: raw.pad_token_id.unwrap_or(first_eos),
            eos_token_ids,
            bos_token_id: raw.bos_token_id,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qk_norm: raw.qk_layernorm.unwrap_or(false),
            moe: Some(MoeConfig {
                num_experts: required("num_experts", raw.num_experts)?,
                num_experts_per_tok: required("num_experts_per_tok", raw.num_experts_per_tok)?,
            }),
        };
        config.validate_named(&RAW_NAMES)?;
        Ok(config)
    }
}

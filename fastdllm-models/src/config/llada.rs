//! LLaDA's `config.json` (`LLaDAConfig`, OLMo field names) and its validation into a
//! [`ModelConfig`].
//!
//! Reference: GSAI-ML/LLaDA-8B `configuration_llada.py`, docs/ALGORITHM.md §1.1.1. Only the
//! `llama` block with RMSNorm, RoPE, SiLU and an untied head is supported (what every released
//! LLaDA checkpoint uses); other values of those architecture flags are rejected here instead of
//! being run.

use fastdllm_core::ModelFamily;
use serde::Deserialize;

use super::{
    expect_flag, expect_str, required, FieldNames, ModelConfig, RawConfig, SpecialIds, TokenIds,
};
use crate::{Error, Result};

/// LLaDA's `<|mdm_mask|>` id, used when the config has no `mask_token_id`.
pub const LLADA_MASK_TOKEN_ID: u32 = 126_336;
/// LLaDA's `<|endoftext|>` id (EOS and pad of the released checkpoints).
pub const LLADA_EOS_TOKEN_ID: u32 = 126_081;
/// `rms_norm_eps` when absent (the `LLaDAConfig` default).
pub const LLADA_DEFAULT_RMS_NORM_EPS: f64 = 1e-5;
/// `rope_theta` when absent (the `LLaDAConfig` default; LLaDA-8B sets 500000).
pub const LLADA_DEFAULT_ROPE_THETA: f64 = 10_000.0;
/// `max_sequence_length` when absent (the `LLaDAConfig` default; LLaDA-8B sets 4096).
pub const LLADA_DEFAULT_MAX_SEQUENCE_LENGTH: usize = 1024;
/// `mlp_ratio` when absent (the `LLaDAConfig` default).
pub const LLADA_DEFAULT_MLP_RATIO: usize = 4;

/// `config.json` of a LLaDA checkpoint, as written (OLMo field names). Every field is optional;
/// unknown keys are ignored. Architecture flags that are absent are taken to have the value the
/// released checkpoints use (`block_type = "llama"`, `rope = true`, no bias, untied head, ...).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawLladaConfig {
    /// Hidden size (required).
    pub d_model: Option<usize>,
    /// Number of blocks (required).
    pub n_layers: Option<usize>,
    /// Attention heads (required).
    pub n_heads: Option<usize>,
    /// KV heads; null means `n_heads` (or 1 with `multi_query_attention`).
    pub n_kv_heads: Option<usize>,
    /// Legacy MQA switch, used only when `n_kv_heads` is null.
    pub multi_query_attention: Option<bool>,
    /// MLP hidden size (gate/up output); falls back to `mlp_ratio * d_model`.
    pub mlp_hidden_size: Option<usize>,
    /// MLP expansion ratio, used when `mlp_hidden_size` is absent.
    pub mlp_ratio: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: Option<f64>,
    /// RoPE base.
    pub rope_theta: Option<f64>,
    /// Longest sequence.
    pub max_sequence_length: Option<usize>,
    /// Rows of the embedding and LM head (may exceed `vocab_size`, padded).
    pub embedding_size: Option<usize>,
    /// Tokenizer vocabulary size (used when `embedding_size` is absent).
    pub vocab_size: Option<usize>,
    /// `[MASK]` id.
    pub mask_token_id: Option<u32>,
    /// EOS id(s).
    pub eos_token_id: Option<TokenIds>,
    /// Padding id.
    pub pad_token_id: Option<u32>,
    /// BOS id.
    pub bos_token_id: Option<u32>,
    /// Must be `"llama"`.
    pub block_type: Option<String>,
    /// Must be false.
    pub include_bias: Option<bool>,
    /// Must be false (or null).
    pub include_qkv_bias: Option<bool>,
    /// Must be false.
    pub weight_tying: Option<bool>,
    /// Must be `"rms"`.
    pub layer_norm_type: Option<String>,
    /// Must be true.
    pub rope: Option<bool>,
    /// Must be false.
    pub alibi: Option<bool>,
    /// Must be `"silu"` (or `"swiglu"`, the same gate for the llama block).
    pub activation_type: Option<String>,
    /// Must be false (no q/k norm).
    pub attention_layer_norm: Option<bool>,
    /// Must be false (no sqrt(d) embedding scaling).
    pub input_emb_norm: Option<bool>,
    /// Must be false or absent (no logit scaling).
    pub scale_logits: Option<bool>,
    /// Must be false or absent (RMSNorm has no bias).
    pub bias_for_layer_norm: Option<bool>,
}

impl RawConfig for RawLladaConfig {
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
    hidden_size: "d_model",
    num_layers: "n_layers",
    num_heads: "n_heads",
    num_kv_heads: "n_kv_heads",
    head_dim: "d_model / n_heads",
    intermediate_size: "mlp_hidden_size",
    vocab_size: "embedding_size",
    rms_norm_eps: "rms_norm_eps",
    rope_theta: "rope_theta",
    max_seq_len: "max_sequence_length",
    mask_token_id: "mask_token_id",
    eos_token_id: "eos_token_id",
    pad_token_id: "pad_token_id",
    bos_token_id: "bos_token_id",
};

impl TryFrom<RawLladaConfig> for ModelConfig {
    type Error = Error;

    fn try_from(raw: RawLladaConfig) -> Result<Self> {
        expect_str("block_type", &raw.block_type, &["llama"])?;
        expect_str("layer_norm_type", &raw.layer_norm_type, &["rms"])?;
        expect_str("activation_type", &raw.activation_type, &["silu", "swiglu"])?;
        expect_flag("include_bias", raw.include_bias, false)?;
        expect_flag("include_qkv_bias", raw.include_qkv_bias, false)?;
        expect_flag("weight_tying", raw.weight_tying, false)?;
        expect_flag("rope", raw.rope, true)?;
        expect_flag("alibi", raw.alibi, false)?;
        expect_flag("attention_layer_norm", raw.attention_layer_norm, false)?;
        expect_flag("input_emb_norm", raw.input_emb_norm, false)?;
        expect_flag("scale_logits", raw.scale_logits, false)?;
        expect_flag("bias_for_layer_norm", raw.bias_for_layer_norm, false)?;

        let hidden_size = required("d_model", raw.d_model)?;
        let num_layers = required("n_layers", raw.n_layers)?;
        let num_heads = required("n_heads", raw.n_heads)?;
        let num_kv_heads = match (raw.n_kv_heads, raw.multi_query_attention) {
            (Some(n), _) => n,
            (None, Some(true)) => 1,
            (None, _) => num_heads,
        };
        let intermediate_size = match raw.mlp_hidden_size {
            Some(size) => size,
            None => raw.mlp_ratio.unwrap_or(LLADA_DEFAULT_MLP_RATIO) * hidden_size,
        };
        let vocab_size = match raw.embedding_size.or(raw.vocab_size) {
            Some(size) => size,
            None => {
                return Err(Error::config(
                    "embedding_size",
                    "(missing)",
                    "required (or vocab_size)",
                ))
            }
        };
        if let (Some(embedding), Some(vocab)) = (raw.embedding_size, raw.vocab_size) {
            if embedding < vocab {
                return Err(Error::config(
                    "embedding_size",
                    embedding,
                    format!(
                        "must be >= vocab_size = {vocab} (embedding rows cover the vocabulary)"
                    ),
                ));
            }
        }
        let eos_token_ids = raw
            .eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default();
        let pad_token_id = raw
            .pad_token_id
            .or(eos_token_ids.first().copied())
            .unwrap_or(LLADA_EOS_TOKEN_ID);
        let config = ModelConfig {
            family: ModelFamily::Llada,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim: hidden_size.checked_div(num_heads).unwrap_or(0),
            intermediate_size,
            vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(LLADA_DEFAULT_RMS_NORM_EPS),
            rope_theta: raw.rope_theta.unwrap_or(LLADA_DEFAULT_ROPE_THETA),
            max_seq_len: raw
                .max_sequence_length
                .unwrap_or(LLADA_DEFAULT_MAX_SEQUENCE_LENGTH),
            mask_token_id: raw.mask_token_id.unwrap_or(LLADA_MASK_TOKEN_ID),
            eos_token_ids,
            pad_token_id,
            bos_token_id: raw.bos_token_id,
            tie_word_embeddings: false,
            qk_norm: false,
            moe: None,
        };
        config.validate_named(&RAW_NAMES)?;
        Ok(config)
    }
}

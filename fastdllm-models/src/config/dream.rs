//! Dream's `config.json` (`DreamConfig`, Qwen2 field names) and its validation into a
//! [`ModelConfig`].
//!
//! Reference: Dream-org/Dream-v0-7B `configuration_dream.py`, docs/ALGORITHM.md §1.2.1.
//! `sliding_window` and `rope_scaling` are not implemented (the released checkpoints use neither)
//! and are rejected.

use fastdllm_core::ModelFamily;
use serde::Deserialize;

use super::{required, FieldNames, ModelConfig, RawConfig, SpecialIds, TokenIds};
use crate::{Error, Result};

/// Dream's `<|mask|>` id, used when the config has no `mask_token_id`.
pub const DREAM_MASK_TOKEN_ID: u32 = 151_666;
/// Dream's `<|endoftext|>` id (EOS and pad).
pub const DREAM_EOS_TOKEN_ID: u32 = 151_643;
/// `rms_norm_eps` when absent (the `DreamConfig` default).
pub const DREAM_DEFAULT_RMS_NORM_EPS: f64 = 1e-6;
/// `rope_theta` when absent (the `DreamConfig` default; Dream-7B sets 1e6).
pub const DREAM_DEFAULT_ROPE_THETA: f64 = 10_000.0;
/// `max_position_embeddings` when absent (the `DreamConfig` default).
pub const DREAM_DEFAULT_MAX_POSITION_EMBEDDINGS: usize = 32_768;

/// `config.json` of a Dream checkpoint, as written (Qwen2 field names). Every field is optional;
/// unknown keys are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawDreamConfig {
    /// Hidden size (required).
    pub hidden_size: Option<usize>,
    /// Number of layers (required).
    pub num_hidden_layers: Option<usize>,
    /// Attention heads (required).
    pub num_attention_heads: Option<usize>,
    /// KV heads; absent means `num_attention_heads`.
    pub num_key_value_heads: Option<usize>,
    /// MLP gate/up output size (required).
    pub intermediate_size: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: Option<f64>,
    /// RoPE base.
    pub rope_theta: Option<f64>,
    /// Longest sequence.
    pub max_position_embeddings: Option<usize>,
    /// Rows of the embedding and LM head (required).
    pub vocab_size: Option<usize>,
    /// When true the LM head is `embed_tokens` (`lm_head.weight` is not read).
    pub tie_word_embeddings: Option<bool>,
    /// `[MASK]` id.
    pub mask_token_id: Option<u32>,
    /// Padding id.
    pub pad_token_id: Option<u32>,
    /// EOS id(s).
    pub eos_token_id: Option<TokenIds>,
    /// BOS id.
    pub bos_token_id: Option<u32>,
    /// Must be `"silu"`.
    pub hidden_act: Option<String>,
    /// Must be false.
    pub use_sliding_window: Option<bool>,
    /// Must be null.
    pub rope_scaling: Option<serde_json::Value>,
}

impl RawConfig for RawDreamConfig {
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
    head_dim: "hidden_size / num_attention_heads",
    intermediate_size: "intermediate_size",
    vocab_size: "vocab_size",
    rms_norm_eps: "rms_norm_eps",
    rope_theta: "rope_theta",
    max_seq_len: "max_position_embeddings",
    mask_token_id: "mask_token_id",
    eos_token_id: "eos_token_id",
    pad_token_id: "pad_token_id",
    bos_token_id: "bos_token_id",
};

impl TryFrom<RawDreamConfig> for ModelConfig {
    type Error = Error;

    fn try_from(raw: RawDreamConfig) -> Result<Self> {
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(Error::config(
                    "hidden_act",
                    format!("{act:?}"),
                    "unsupported: only \"silu\" is implemented",
                ));
            }
        }
        if raw.use_sliding_window == Some(true) {
            return Err(Error::config(
                "use_sliding_window",
                true,
                "unsupported: only false is implemented",
            ));
        }
        if let Some(scaling) = &raw.rope_scaling {
            if !scaling.is_null() {
                return Err(Error::config(
                    "rope_scaling",
                    scaling,
                    "unsupported: only null is implemented",
                ));
            }
        }
        let hidden_size = required("hidden_size", raw.hidden_size)?;
        let num_heads = required("num_attention_heads", raw.num_attention_heads)?;
        let eos_token_ids = raw
            .eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default();
        let pad_token_id = raw
            .pad_token_id
            .or(eos_token_ids.first().copied())
            .unwrap_or(DREAM_EOS_TOKEN_ID);
        let config = ModelConfig {
            family: ModelFamily::Dream,
            hidden_size,
            num_layers: required("num_hidden_layers", raw.num_hidden_layers)?,
            num_heads,
            num_kv_heads: raw.num_key_value_heads.unwrap_or(num_heads),
            head_dim: hidden_size.checked_div(num_heads).unwrap_or(0),
            intermediate_size: required("intermediate_size", raw.intermediate_size)?,
            vocab_size: required("vocab_size", raw.vocab_size)?,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(DREAM_DEFAULT_RMS_NORM_EPS),
            rope_theta: raw.rope_theta.unwrap_or(DREAM_DEFAULT_ROPE_THETA),
            max_seq_len: raw
                .max_position_embeddings
                .unwrap_or(DREAM_DEFAULT_MAX_POSITION_EMBEDDINGS),
            mask_token_id: raw.mask_token_id.unwrap_or(DREAM_MASK_TOKEN_ID),
            eos_token_ids,
            pad_token_id,
            bos_token_id: raw.bos_token_id,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qk_norm: false,
            moe: None,
        };
        config.validate_named(&RAW_NAMES)?;
        Ok(config)
    }
}

//! Dream (`DreamModel`): config and model, including Dream's logits shift.
//!
//! Reference: Dream-org/Dream-v0-7B `modeling_dream.py` / `configuration_dream.py` (Qwen2 layers
//! without the causal mask), as vendored by NVlabs/Fast-dLLM `dream/model/`; SPEC 1.2. The forward
//! pass is the shared decoder (`layers::decoder`) with Qwen2 tensor names, biases on q/k/v,
//! RoPE tables cast to the activation dtype and eps 1e-6.
//!
//! The shift (SPEC 1.2.4): Dream predicts token `j` from the network output at `j - 1`. The
//! reference applies `cat([logits[:, :1], logits[:, :-1]])` after every forward call
//! (`generation_utils_block.py`); here the model applies it itself, inside the window, so that
//! [`DiffusionLm::forward`] returns aligned rows like every other model: aligned row `j` is raw row
//! `j - 1` for `j >= 1` and raw row 0 for `j = 0`. Only the raw rows that the requested aligned
//! rows need go through the final norm and LM head. Deviation: `sliding_window` and
//! `rope_scaling` are not implemented (the released checkpoints use neither) and are rejected.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fastdllm_core::{DiffusionLm, ForwardInput, KvView, ModelFamily, ModelSpec};
use serde::Deserialize;

use crate::config::{
    CommonFields, FieldNames, RawGenerationConfig, SpecialIds, TokenIds, CANONICAL_NAMES,
};
use crate::layers::decoder::{check_rows, gather_rows, Decoder, DecoderDims, TensorLayout};
use crate::layers::rope::RopePrecision;
use crate::llada::check_dtype;
use crate::loading::Weights;
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

impl RawDreamConfig {
    /// Fills ids that `config.json` lacks from `generation_config.json`; EOS ids are merged.
    pub fn fill_from_generation(&mut self, generation: &RawGenerationConfig) {
        SpecialIds {
            mask: &mut self.mask_token_id,
            pad: &mut self.pad_token_id,
            bos: &mut self.bos_token_id,
            eos: &mut self.eos_token_id,
        }
        .fill_from(generation);
    }
}

/// A validated Dream config with canonical names. Build it from a file with
/// [`crate::load_config`] (or `TryFrom<RawDreamConfig>`), or in code (then call
/// [`DreamConfig::validate`], which [`DreamModel::new`] also runs).
#[derive(Debug, Clone, PartialEq)]
pub struct DreamConfig {
    /// Hidden size.
    pub hidden_size: usize,
    /// Number of layers (`num_hidden_layers`).
    pub num_layers: usize,
    /// Attention heads (`num_attention_heads`).
    pub num_heads: usize,
    /// KV heads (`num_key_value_heads`).
    pub num_kv_heads: usize,
    /// `hidden_size / num_heads`.
    pub head_dim: usize,
    /// MLP gate/up output size.
    pub intermediate_size: usize,
    /// Rows of the embedding and LM head.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest canvas (`max_position_embeddings`).
    pub max_seq_len: usize,
    /// `[MASK]` id.
    pub mask_token_id: u32,
    /// Ids that end an answer.
    pub eos_token_ids: Vec<u32>,
    /// Padding id.
    pub pad_token_id: u32,
    /// BOS id, when the config files name one.
    pub bos_token_id: Option<u32>,
    /// LM head tied to the embedding.
    pub tie_word_embeddings: bool,
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

impl DreamConfig {
    /// The shape of Dream-org/Dream-v0-Instruct-7B (SPEC 1.2.1), for random-weight benches.
    /// `max_seq_len` is 4096 here (the checkpoint allows 131072; the RoPE tables are sized by it).
    pub fn dream_7b() -> Self {
        Self {
            hidden_size: 3584,
            num_layers: 28,
            num_heads: 28,
            num_kv_heads: 4,
            head_dim: 128,
            intermediate_size: 18944,
            vocab_size: 152_064,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            max_seq_len: 4096,
            mask_token_id: DREAM_MASK_TOKEN_ID,
            eos_token_ids: vec![DREAM_EOS_TOKEN_ID, 151_645],
            pad_token_id: DREAM_EOS_TOKEN_ID,
            bos_token_id: Some(151_665),
            tie_word_embeddings: false,
        }
    }

    /// Checks the invariants (positive sizes, head divisibility, ids inside the vocabulary).
    pub fn validate(&self) -> Result<()> {
        self.common().validate(&CANONICAL_NAMES)
    }

    fn common(&self) -> CommonFields<'_> {
        CommonFields {
            hidden_size: self.hidden_size,
            num_layers: self.num_layers,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            intermediate_size: self.intermediate_size,
            vocab_size: self.vocab_size,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            max_seq_len: self.max_seq_len,
            mask_token_id: self.mask_token_id,
            eos_token_ids: &self.eos_token_ids,
            pad_token_id: self.pad_token_id,
            bos_token_id: self.bos_token_id,
        }
    }

    fn dims(&self) -> DecoderDims {
        DecoderDims {
            hidden_size: self.hidden_size,
            num_layers: self.num_layers,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            intermediate_size: self.intermediate_size,
            vocab_size: self.vocab_size,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            max_seq_len: self.max_seq_len,
            rope_precision: RopePrecision::Activation,
        }
    }
}

fn required(field: &'static str, value: Option<usize>) -> Result<usize> {
    value.ok_or_else(|| Error::config(field, "(missing)", "required"))
}

impl TryFrom<RawDreamConfig> for DreamConfig {
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
        let config = DreamConfig {
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
        };
        config.common().validate(&RAW_NAMES)?;
        Ok(config)
    }
}

/// Checkpoint names of Dream (SPEC 1.2.2).
const LAYOUT: TensorLayout = TensorLayout {
    embed: "model.embed_tokens.weight",
    block_prefix: "model.layers",
    attn_norm: "input_layernorm",
    q_proj: "self_attn.q_proj",
    k_proj: "self_attn.k_proj",
    v_proj: "self_attn.v_proj",
    o_proj: "self_attn.o_proj",
    ff_norm: "post_attention_layernorm",
    gate_proj: "mlp.gate_proj",
    up_proj: "mlp.up_proj",
    down_proj: "mlp.down_proj",
    final_norm: "model.norm.weight",
    lm_head: "lm_head.weight",
    qkv_bias: true,
    rope_permuted_qk: false,
};

/// llama.cpp's names (`convert_hf_to_gguf.py` DreamModel), q/k rows as in the checkpoint (NEOX RoPE).
const GGUF_LAYOUT: TensorLayout = TensorLayout::gguf(true, false);

/// A Dream model: immutable, K/V only through the [`KvView`] it is given; returns aligned
/// (shifted) logits.
#[derive(Debug, Clone)]
pub struct DreamModel {
    decoder: Decoder,
    spec: ModelSpec,
    config: DreamConfig,
}

/// The raw output rows that aligned rows `rows` need: aligned `j >= 1` is raw `j - 1`, aligned 0
/// is raw 0. Returns the contiguous raw range to compute and, per aligned row, its raw row
/// relative to that range (aligned 0 and 1 both use raw 0).
fn raw_rows(rows: &[usize]) -> (Range<usize>, Vec<usize>) {
    let raw = |j: usize| j.saturating_sub(1);
    let (Some(&first), Some(&last)) = (rows.first(), rows.last()) else {
        return (0..0, Vec::new());
    };
    let span = raw(first)..raw(last) + 1;
    let source = rows.iter().map(|&j| raw(j) - span.start).collect();
    (span, source)
}

impl DreamModel {
    /// Builds the model from the tensors of `vb` (checkpoint names from the root, e.g.
    /// `model.embed_tokens.weight`), converted to `vb`'s dtype and placed on its device.
    pub fn new(cfg: &DreamConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, &Weights::new(vb, "the VarBuilder"))
    }

    pub(crate) fn load(cfg: &DreamConfig, weights: &Weights) -> Result<Self> {
        cfg.validate()?;
        check_dtype(weights.dtype())?;
        let layout = if weights.is_gguf() {
            &GGUF_LAYOUT
        } else {
            &LAYOUT
        };
        let decoder = Decoder::load(&cfg.dims(), layout, weights, cfg.tie_word_embeddings)?;
        let spec = ModelSpec {
            family: ModelFamily::Dream,
            vocab_size: cfg.vocab_size,
            mask_token_id: cfg.mask_token_id,
            eos_token_ids: cfg.eos_token_ids.clone(),
            pad_token_id: cfg.pad_token_id,
            num_layers: cfg.num_layers,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            max_seq_len: cfg.max_seq_len,
        };
        Ok(Self {
            decoder,
            spec,
            config: cfg.clone(),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &DreamConfig {
        &self.config
    }

    fn forward_impl(&self, input: &ForwardInput, kv: &mut dyn KvView) -> Result<Tensor> {
        let (batch, window_len) = input.tokens.dims2()?;
        let rows = &input.logits_rows;
        check_rows(&rows.span(), window_len)?;
        if rows.is_empty() {
            // Still run the layers: a cache may be recording this call's K/V.
            let _ = self.decoder.hidden_states(input, kv, 0..0)?;
            return self.decoder.no_logits(batch);
        }
        let (raw, source) = raw_rows(rows.as_slice());
        let Some(hidden) = self.decoder.hidden_states(input, kv, raw)? else {
            return self.decoder.no_logits(batch);
        };
        self.decoder.logits(&gather_rows(&hidden, &source)?)
    }
}

impl DiffusionLm for DreamModel {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> &Device {
        self.decoder.device()
    }

    fn dtype(&self) -> DType {
        self.decoder.dtype()
    }

    /// Returns aligned logits: output row `i` scores window token `logits_rows.as_slice()[i]`, taken
    /// from the network's raw output one position earlier (the window's first row keeps its own
    /// output, as in the reference).
    fn forward(&self, input: &ForwardInput, kv: &mut dyn KvView) -> fastdllm_core::Result<Tensor> {
        Ok(self.forward_impl(input, kv)?)
    }
}

#[cfg(test)]
mod tests {
    use super::raw_rows;

    #[test]
    fn raw_rows_follow_the_shift() {
        // aligned a..b with a >= 1 -> raw a-1..b-1
        assert_eq!(raw_rows(&[3, 4, 5, 6]), (2..6, vec![0, 1, 2, 3]));
        assert_eq!(raw_rows(&[1]), (0..1, vec![0]));
        // aligned 0 -> raw 0; aligned 0..n -> raw 0..n-1 (row 0 used twice)
        assert_eq!(raw_rows(&[0]), (0..1, vec![0]));
        assert_eq!(raw_rows(&[0, 1, 2, 3, 4]), (0..4, vec![0, 0, 1, 2, 3]));
        // a subset: raw rows of the span, picked
        assert_eq!(raw_rows(&[2, 5, 6]), (1..6, vec![0, 3, 4]));
    }
}

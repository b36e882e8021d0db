//! LLaDA (`LLaDAModelLM`): config and model.
//!
//! Reference: GSAI-ML/LLaDA-8B `modeling_llada.py` / `configuration_llada.py` (OLMo-derived,
//! `block_type = "llama"`), as vendored by NVlabs/Fast-dLLM `llada/model/`; SPEC 1.1. The forward
//! pass is the shared decoder (`layers::decoder`) with LLaDA's tensor names, no biases,
//! RoPE rotated in f32 (`rope_full_precision`), eps 1e-5 and no logits shift. Deviations: only the
//! `llama` block with RMSNorm, RoPE, SiLU and untied head is supported (what every released LLaDA
//! checkpoint uses); other values of those fields are rejected at load instead of being run.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fastdllm_core::{DiffusionLm, ForwardInput, KvView, ModelFamily, ModelSpec};
use serde::Deserialize;

use crate::config::{
    CommonFields, FieldNames, RawGenerationConfig, SpecialIds, TokenIds, CANONICAL_NAMES,
};
use crate::layers::decoder::{gather_rows, Decoder, DecoderDims, TensorLayout};
use crate::layers::rope::RopePrecision;
use crate::loading::Weights;
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

impl RawLladaConfig {
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

/// A validated LLaDA config with canonical names. Build it from a file with
/// [`crate::load_config`] (or `TryFrom<RawLladaConfig>`), or in code (then call
/// [`LladaConfig::validate`], which [`LladaModel::new`] also runs).
#[derive(Debug, Clone, PartialEq)]
pub struct LladaConfig {
    /// Hidden size (`d_model`).
    pub hidden_size: usize,
    /// Number of blocks (`n_layers`).
    pub num_layers: usize,
    /// Attention heads (`n_heads`).
    pub num_heads: usize,
    /// KV heads (`n_kv_heads`).
    pub num_kv_heads: usize,
    /// `hidden_size / num_heads`.
    pub head_dim: usize,
    /// Gate/up output size (`mlp_hidden_size`).
    pub intermediate_size: usize,
    /// Rows of the embedding and LM head (`embedding_size`).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest canvas (`max_sequence_length`).
    pub max_seq_len: usize,
    /// `[MASK]` id.
    pub mask_token_id: u32,
    /// Ids that end an answer.
    pub eos_token_ids: Vec<u32>,
    /// Padding id (LLaDA pads with EOS).
    pub pad_token_id: u32,
    /// BOS id, when the config files name one.
    pub bos_token_id: Option<u32>,
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

impl LladaConfig {
    /// The shape of GSAI-ML/LLaDA-8B-Instruct (SPEC 1.1.1), for random-weight benches.
    pub fn llada_8b() -> Self {
        Self {
            hidden_size: 4096,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 32,
            head_dim: 128,
            intermediate_size: 12288,
            vocab_size: 126_464,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            max_seq_len: 4096,
            mask_token_id: LLADA_MASK_TOKEN_ID,
            eos_token_ids: vec![LLADA_EOS_TOKEN_ID, 126_348],
            pad_token_id: LLADA_EOS_TOKEN_ID,
            bos_token_id: Some(126_080),
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
            rope_precision: RopePrecision::F32,
        }
    }
}

fn required(field: &'static str, value: Option<usize>) -> Result<usize> {
    value.ok_or_else(|| Error::config(field, "(missing)", "required"))
}

fn expect_flag(field: &'static str, value: Option<bool>, supported: bool) -> Result<()> {
    match value {
        Some(v) if v != supported => Err(Error::config(
            field,
            v,
            format!("unsupported: only {supported} is implemented"),
        )),
        _ => Ok(()),
    }
}

fn expect_str(field: &'static str, value: &Option<String>, supported: &[&str]) -> Result<()> {
    match value {
        Some(v) if !supported.contains(&v.as_str()) => Err(Error::config(
            field,
            format!("{v:?}"),
            format!("unsupported: only {supported:?} is implemented"),
        )),
        _ => Ok(()),
    }
}

impl TryFrom<RawLladaConfig> for LladaConfig {
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
        let config = LladaConfig {
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
        };
        config.common().validate(&RAW_NAMES)?;
        Ok(config)
    }
}

/// Checkpoint names of LLaDA (SPEC 1.1.2). Note the two `ff_out`: the block's down projection and
/// the top-level LM head.
const LAYOUT: TensorLayout = TensorLayout {
    embed: "model.transformer.wte.weight",
    block_prefix: "model.transformer.blocks",
    attn_norm: "attn_norm",
    q_proj: "q_proj",
    k_proj: "k_proj",
    v_proj: "v_proj",
    o_proj: "attn_out",
    ff_norm: "ff_norm",
    gate_proj: "ff_proj",
    up_proj: "up_proj",
    down_proj: "ff_out",
    final_norm: "model.transformer.ln_f.weight",
    lm_head: "model.transformer.ff_out.weight",
    qkv_bias: false,
    rope_permuted_qk: false,
};

/// llama.cpp's names (`convert_hf_to_gguf.py` LLaDAModel), q/k rows permuted for GGML's interleaved RoPE.
const GGUF_LAYOUT: TensorLayout = TensorLayout::gguf(false, true);

/// A LLaDA model: immutable, K/V only through the [`KvView`] it is given.
#[derive(Debug, Clone)]
pub struct LladaModel {
    decoder: Decoder,
    spec: ModelSpec,
    config: LladaConfig,
}

impl LladaModel {
    /// Builds the model from the tensors of `vb` (checkpoint names from the root, e.g.
    /// `model.transformer.wte.weight`), converted to `vb`'s dtype and placed on its device.
    pub fn new(cfg: &LladaConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, &Weights::new(vb, "the VarBuilder"))
    }

    pub(crate) fn load(cfg: &LladaConfig, weights: &Weights) -> Result<Self> {
        cfg.validate()?;
        check_dtype(weights.dtype())?;
        let layout = if weights.is_gguf() {
            &GGUF_LAYOUT
        } else {
            &LAYOUT
        };
        let decoder = Decoder::load(&cfg.dims(), layout, weights, false)?;
        let spec = ModelSpec {
            family: ModelFamily::Llada,
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
    pub fn config(&self) -> &LladaConfig {
        &self.config
    }

    fn forward_impl(&self, input: &ForwardInput, kv: &mut dyn KvView) -> Result<Tensor> {
        let batch = input.tokens.dim(0)?;
        let span = input.logits_rows.span();
        match self.decoder.hidden_states(input, kv, span.clone())? {
            Some(hidden) => {
                let source: Vec<usize> = input
                    .logits_rows
                    .as_slice()
                    .iter()
                    .map(|&i| i - span.start)
                    .collect();
                self.decoder.logits(&gather_rows(&hidden, &source)?)
            }
            None => self.decoder.no_logits(batch),
        }
    }
}

/// Rejects activation dtypes the layers are not written for.
pub(crate) fn check_dtype(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::BF16 | DType::F16 => Ok(()),
        other => Err(Error::UnsupportedDType { dtype: other }),
    }
}

impl DiffusionLm for LladaModel {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> &Device {
        self.decoder.device()
    }

    fn dtype(&self) -> DType {
        self.decoder.dtype()
    }

    /// LLaDA has no shift: window row `j` of the output scores window token `j`.
    fn forward(&self, input: &ForwardInput, kv: &mut dyn KvView) -> fastdllm_core::Result<Tensor> {
        Ok(self.forward_impl(input, kv)?)
    }
}

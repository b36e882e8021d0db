//! LLaDA (`LLaDAModelLM`): the model (its `config.json` is read by [`crate::config`]).
//!
//! Reference: GSAI-ML/LLaDA-8B `modeling_llada.py` / `configuration_llada.py` (OLMo-derived,
//! `block_type = "llama"`), as vendored by NVlabs/Fast-dLLM `llada/model/`; docs/ALGORITHM.md §1.1.
//! The forward pass is the shared transformer stack (`transformer.rs`) with LLaDA's tensor names, no biases, RoPE
//! rotated in f32 (`rope_full_precision`), eps 1e-5 and no logits shift.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fastdllm_core::{DiffusionLm, ForwardInput, KvView, ModelFamily, ModelSpec};

use crate::config::ModelConfig;
use crate::layers::rope::RopePrecision;
use crate::transformer::{check_dtype, gather_rows, TensorLayout, Transformer};
use crate::weights::Weights;
use crate::Result;

/// Checkpoint names of LLaDA (docs/ALGORITHM.md §1.1.2). Note the two `ff_out`: the block's down
/// projection and the top-level LM head.
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
    transformer: Transformer,
    spec: ModelSpec,
    config: ModelConfig,
}

impl LladaModel {
    /// Builds the model from the tensors of `vb` (checkpoint names from the root, e.g.
    /// `model.transformer.wte.weight`), converted to `vb`'s dtype and placed on its device.
    ///
    /// Errors: `cfg` is not a LLaDA config or fails [`ModelConfig::validate`]; a tensor is
    /// missing or has the wrong shape; the dtype is not f32, bf16 or f16.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, &Weights::new(vb, "the VarBuilder"))
    }

    pub(crate) fn load(cfg: &ModelConfig, weights: &Weights) -> Result<Self> {
        cfg.expect_family(ModelFamily::Llada)?;
        cfg.validate()?;
        check_dtype(weights.dtype())?;
        let layout = if weights.is_gguf() {
            &GGUF_LAYOUT
        } else {
            &LAYOUT
        };
        // LLaDA rotates in f32 whatever the activation dtype (`rope_full_precision`).
        let transformer = Transformer::load(cfg, RopePrecision::F32, layout, weights)?;
        let spec = cfg.spec();
        Ok(Self {
            transformer,
            spec,
            config: cfg.clone(),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward_impl(&self, input: &ForwardInput, kv: &mut dyn KvView) -> Result<Tensor> {
        let batch = input.tokens.dim(0)?;
        let span = input.logits_rows.span();
        match self.transformer.hidden_states(input, kv, span.clone())? {
            Some(hidden) => {
                let source: Vec<usize> = input
                    .logits_rows
                    .as_slice()
                    .iter()
                    .map(|&i| i - span.start)
                    .collect();
                self.transformer.logits(&gather_rows(&hidden, &source)?)
            }
            None => self.transformer.no_logits(batch),
        }
    }
}

impl DiffusionLm for LladaModel {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> &Device {
        self.transformer.device()
    }

    fn dtype(&self) -> DType {
        self.transformer.dtype()
    }

    fn weight_bytes(&self) -> Option<u64> {
        Some(self.transformer.weight_bytes())
    }

    /// LLaDA has no shift: window row `j` of the output scores window token `j`.
    fn forward(&self, input: &ForwardInput, kv: &mut dyn KvView) -> fastdllm_core::Result<Tensor> {
        Ok(self.forward_impl(input, kv)?)
    }
}

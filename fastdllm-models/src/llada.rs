//! LLaDA (`LLaDAModelLM`) and LLaDA-MoE (`LLaDAMoEModelLM`): the model (its `config.json` is
//! read by [`crate::config`]).
//!
//! Reference: GSAI-ML/LLaDA-8B `modeling_llada.py` / `configuration_llada.py` (OLMo-derived,
//! `block_type = "llama"`), as vendored by NVlabs/Fast-dLLM `llada/model/`; docs/ALGORITHM.md §1.1.
//! The forward pass is the shared transformer stack (`transformer.rs`) with LLaDA's tensor names, no biases, RoPE
//! rotated in f32 (`rope_full_precision`), eps 1e-5 and no logits shift. A config with
//! [`crate::config::MoeConfig`] is LLaDA-MoE (docs/ALGORITHM.md §1.4): the same stack with
//! QK-norm and routed experts, under its own tensor names (`llada_moe.rs`).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fastdllm_core::{DiffusionLm, ForwardInput, KvView, ModelFamily, ModelSpec};

use crate::config::ModelConfig;
use crate::layers::rope::RopePrecision;
use crate::llada_moe;
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
        let (layout, moe_layout) = match (cfg.moe.is_some(), weights.is_gguf()) {
            (false, false) => (&LAYOUT, None),
            (false, true) => (&GGUF_LAYOUT, None),
            (true, false) => (&llada_moe::LAYOUT, Some(&llada_moe::MOE_LAYOUT)),
            (true, true) => (&llada_moe::GGUF_LAYOUT, Some(&llada_moe::GGUF_MOE_LAYOUT)),
        };
        // LLaDA rotates in f32 whatever the activation dtype (`rope_full_precision`); LLaDA-MoE's
        // RoPE is computed in f32 and applied in the activation dtype, the same in f32.
        let transformer =
            Transformer::load_with(cfg, RopePrecision::F32, layout, moe_layout, weights)?;
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

    /// The forward of [`DiffusionLm::forward`] that also returns, for a LLaDA-MoE model, each
    /// layer's router logits (`mlp.gate`'s output before the softmax, f32,
    /// `(batch * rows, num_experts)`; every window row except in the last layer, which covers the
    /// span of `input.logits_rows` only); empty for a dense model. For checking the routing
    /// against the reference.
    pub fn forward_with_router_logits(
        &self,
        input: &ForwardInput,
        kv: &mut dyn KvView,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut router_logits = Vec::new();
        let logits = self.forward_impl(input, kv, Some(&mut router_logits))?;
        Ok((logits, router_logits))
    }

    fn forward_impl(
        &self,
        input: &ForwardInput,
        kv: &mut dyn KvView,
        router_logits: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let batch = input.tokens.dim(0)?;
        let span = input.logits_rows.span();
        match self
            .transformer
            .hidden_states_traced(input, kv, span.clone(), router_logits)?
        {
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
        Ok(self.forward_impl(input, kv, None)?)
    }
}

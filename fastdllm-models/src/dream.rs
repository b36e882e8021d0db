//! Dream (`DreamModel`): the model, including Dream's logits shift (its `config.json` is read
//! by [`crate::config`]).
//!
//! Reference: Dream-org/Dream-v0-7B `modeling_dream.py` / `configuration_dream.py` (Qwen2 layers
//! without the causal mask), as vendored by NVlabs/Fast-dLLM `dream/model/`; docs/ALGORITHM.md
//! §1.2. The forward pass is the shared transformer stack (`transformer.rs`) with Qwen2 tensor names, biases on
//! q/k/v, RoPE tables cast to the activation dtype and eps 1e-6.
//!
//! The shift (docs/ALGORITHM.md §1.2.4): Dream predicts token `j` from the network output at
//! `j - 1`. The reference applies `cat([logits[:, :1], logits[:, :-1]])` after every forward call
//! (`generation_utils_block.py`); here the model applies it itself, inside the window, so that
//! [`DiffusionLm::forward`] returns aligned rows like every other model: aligned row `j` is raw row
//! `j - 1` for `j >= 1` and raw row 0 for `j = 0`. Only the raw rows that the requested aligned
//! rows need go through the final norm and LM head.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use fastdllm_core::{DiffusionLm, ForwardInput, KvView, ModelFamily, ModelSpec};

use crate::config::ModelConfig;
use crate::layers::rope::RopePrecision;
use crate::transformer::{check_dtype, check_rows, gather_rows, TensorLayout, Transformer};
use crate::weights::Weights;
use crate::Result;

/// Checkpoint names of Dream (docs/ALGORITHM.md §1.2.2).
const LAYOUT: TensorLayout = TensorLayout::qwen2(true);

/// llama.cpp's names (`convert_hf_to_gguf.py` DreamModel), q/k rows as in the checkpoint (NEOX RoPE).
const GGUF_LAYOUT: TensorLayout = TensorLayout::gguf(true, false);

/// A Dream model: immutable, K/V only through the [`KvView`] it is given; returns aligned
/// (shifted) logits.
#[derive(Debug, Clone)]
pub struct DreamModel {
    transformer: Transformer,
    spec: ModelSpec,
    config: ModelConfig,
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
    ///
    /// Errors: `cfg` is not a Dream config or fails [`ModelConfig::validate`]; a tensor is
    /// missing or has the wrong shape; the dtype is not f32, bf16 or f16.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(cfg, &Weights::new(vb, "the VarBuilder"))
    }

    pub(crate) fn load(cfg: &ModelConfig, weights: &Weights) -> Result<Self> {
        cfg.expect_family(ModelFamily::Dream)?;
        cfg.validate()?;
        check_dtype(weights.dtype())?;
        let layout = if weights.is_gguf() {
            &GGUF_LAYOUT
        } else {
            &LAYOUT
        };
        // Dream casts the RoPE tables to the activation dtype.
        let transformer = Transformer::load(cfg, RopePrecision::Activation, layout, weights)?;
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
        let (batch, window_len) = input.tokens.dims2()?;
        let rows = &input.logits_rows;
        check_rows(&rows.span(), window_len)?;
        if rows.is_empty() {
            // Still run the layers: a cache may be recording this call's K/V.
            let _ = self.transformer.hidden_states(input, kv, 0..0)?;
            return self.transformer.no_logits(batch);
        }
        let (raw, source) = raw_rows(rows.as_slice());
        let Some(hidden) = self.transformer.hidden_states(input, kv, raw)? else {
            return self.transformer.no_logits(batch);
        };
        self.transformer.logits(&gather_rows(&hidden, &source)?)
    }
}

impl DiffusionLm for DreamModel {
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

//! A bias-optional linear layer `y = x W^T (+ b)` over the last dimension.
//!
//! Reference: `torch.nn.Linear` as used by LLaDA (`modeling_llada.py`, no bias anywhere) and Dream
//! (`modeling_dream.py`, bias on q/k/v only). Deviation from `candle_nn::Linear`: the input is
//! flattened to 2-D before the matmul, so a batched window is one GEMM against the (out, in)
//! weight instead of a broadcast batched GEMM.

use candle_core::{Tensor, D};

use crate::Result;

/// `y = x W^T + b`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    /// Shape: `(out_features, in_features)`.
    weight: Tensor,
    /// Shape: `(out_features,)`.
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Number of output features.
    pub(crate) fn out_features(&self) -> usize {
        self.weight.dims().first().copied().unwrap_or(0)
    }

    /// Shape: `(..., in_features)` -> `(..., out_features)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let in_features = x.dim(D::Minus1)?;
        let rows = x.elem_count() / in_features.max(1);
        let y = x.reshape((rows, in_features))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        };
        let mut out_dims = x.dims().to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_features();
        }
        Ok(y.reshape(out_dims)?)
    }
}

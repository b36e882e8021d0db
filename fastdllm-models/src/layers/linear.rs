//! A bias-optional linear layer `y = x W^T (+ b)` over the last dimension.
//!
//! Reference: `torch.nn.Linear` as used by LLaDA (`modeling_llada.py`, no bias anywhere) and Dream
//! (`modeling_dream.py`, bias on q/k/v only). Deviations from `candle_nn::Linear`: the input is
//! flattened to 2-D before the matmul, so a batched window is one GEMM against the (out, in)
//! weight instead of a broadcast batched GEMM; and a CPU f32 weight is packed once at
//! construction for [`super::cpu_gemm`], which gives candle's `x.matmul(&w.t())` bit for bit
//! without re-packing the weight on every call.

use std::sync::Arc;

use candle_core::{Tensor, D};

use super::cpu_gemm::PackedWeight;
use crate::Result;

/// The weight, as a tensor or packed for the CPU GEMM (then the tensor is not kept).
#[derive(Debug, Clone)]
enum Weight {
    /// Shape: `(out_features, in_features)`.
    Dense(Tensor),
    Packed(Arc<PackedWeight>),
}

/// `y = x W^T + b`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Weight,
    /// Shape: `(out_features,)`.
    bias: Option<Tensor>,
}

impl Linear {
    /// Shape: `weight` `(out_features, in_features)`, `bias` `(out_features,)`. A CPU f32 weight
    /// on an AVX2+FMA CPU is packed (and the tensor dropped); anything else stays as it is.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let weight = match PackedWeight::new(&weight)? {
            Some(packed) => Weight::Packed(Arc::new(packed)),
            None => Weight::Dense(weight),
        };
        Ok(Self { weight, bias })
    }

    /// Whether the weight is packed for [`super::cpu_gemm`].
    #[cfg(test)]
    pub(crate) fn is_packed(&self) -> bool {
        matches!(self.weight, Weight::Packed(_))
    }

    /// Number of output features.
    pub(crate) fn out_features(&self) -> usize {
        match &self.weight {
            Weight::Dense(weight) => weight.dims().first().copied().unwrap_or(0),
            Weight::Packed(packed) => packed.out_features(),
        }
    }

    /// Shape: `(..., in_features)` -> `(..., out_features)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let in_features = x.dim(D::Minus1)?;
        let rows = x.elem_count() / in_features.max(1);
        let flat = x.reshape((rows, in_features))?;
        let y = match &self.weight {
            Weight::Dense(weight) => flat.matmul(&weight.t()?)?,
            Weight::Packed(packed) => packed.matmul_t(&flat)?,
        };
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

//! A bias-optional linear layer `y = x W^T (+ b)` over the last dimension.
//!
//! Reference: `torch.nn.Linear` as used by LLaDA (`modeling_llada.py`, no bias anywhere) and Dream
//! (`modeling_dream.py`, bias on q/k/v only). Deviations from `candle_nn::Linear`: the input is
//! flattened to 2-D before the matmul, so a batched window is one GEMM against the (out, in)
//! weight instead of a broadcast batched GEMM; and a CPU f32 weight is packed once at
//! construction for [`super::cpu_gemm`], which gives candle's `x.matmul(&w.t())` bit for bit
//! without re-packing the weight on every call.
//!
//! Quantized weights (GGUF files, `--quantize`) are `candle_core::quantized::QMatMul`s: the input
//! is cast to f32 (what candle's quantized kernels take; on the CPU they quantize each input row to
//! the block's dot-product type, as llama.cpp does), and the output is cast back to the activation
//! dtype, so everything after the layer (K/V, attention) stays in that dtype. A fused projection
//! whose parts have different block types (llama.cpp's Q4_K_M keeps some `attn_v` in Q6_K) is one
//! `QMatMul` per part, outputs concatenated.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor, D};

use super::cpu_gemm::PackedWeight;
use crate::Result;

/// The weight, as a tensor or packed for the CPU GEMM (then the tensor is not kept).
#[derive(Debug, Clone)]
enum Weight {
    /// Shape: `(out_features, in_features)`.
    Dense(Tensor),
    Packed(Arc<PackedWeight>),
    /// Row blocks of the output, each `(out_i, in_features)` in a GGML block type; outputs are
    /// concatenated in order.
    Quantized(Arc<[QuantizedPart]>),
}

/// One quantized block of output rows.
#[derive(Debug)]
struct QuantizedPart {
    matmul: QMatMul,
    out_features: usize,
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

    /// A quantized weight made of `parts` stacked along the output axis, each `(out_i, in)`.
    pub(crate) fn quantized(parts: Vec<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let parts = parts
            .into_iter()
            .map(|qt| {
                let out_features = qt.shape().dims().first().copied().unwrap_or(0);
                Ok(QuantizedPart {
                    matmul: QMatMul::from_qtensor(qt)?,
                    out_features,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            weight: Weight::Quantized(parts.into()),
            bias,
        })
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
            Weight::Quantized(parts) => parts.iter().map(|p| p.out_features).sum(),
        }
    }

    /// Bytes of the stored weight and bias (quantized parts at their block size).
    pub(crate) fn weight_bytes(&self) -> u64 {
        let weight = match &self.weight {
            Weight::Dense(weight) => tensor_bytes(weight),
            Weight::Packed(packed) => packed.weight_bytes(),
            Weight::Quantized(parts) => parts
                .iter()
                .map(|p| match &p.matmul {
                    QMatMul::QTensor(qt) => qt.storage_size_in_bytes() as u64,
                    QMatMul::Tensor(t) | QMatMul::TensorF16(t) => tensor_bytes(t),
                })
                .sum(),
        };
        weight + self.bias.as_ref().map_or(0, tensor_bytes)
    }

    /// Shape: `(..., in_features)` -> `(..., out_features)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let in_features = x.dim(D::Minus1)?;
        let rows = x.elem_count() / in_features.max(1);
        let flat = x.reshape((rows, in_features))?;
        let y = match &self.weight {
            Weight::Dense(weight) => flat.matmul(&weight.t()?)?,
            Weight::Packed(packed) => packed.matmul_t(&flat)?,
            Weight::Quantized(parts) => {
                let x32 = flat.to_dtype(DType::F32)?.contiguous()?;
                let mut outs = parts
                    .iter()
                    .map(|p| p.matmul.forward(&x32))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let y = if outs.len() == 1 {
                    outs.remove(0)
                } else {
                    Tensor::cat(&outs, 1)?
                };
                y.to_dtype(x.dtype())?
            }
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

/// Bytes of a dense tensor's elements.
pub(crate) fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

//! RMSNorm with a learned weight, in the reference's order of operations.
//!
//! Reference: LLaDA `RMSLayerNorm` (`modeling_llada.py`) and `Qwen2RMSNorm` (Dream's
//! `modeling_dream.py`): upcast to f32, `x * rsqrt(mean(x^2) + eps)`, cast back to the activation
//! dtype, **then** multiply by the weight in the activation dtype (docs/ALGORITHM.md §1.1.3).
//! Deviation: the normalisation uses candle's fused `rms_norm` kernel, which divides by
//! `sqrt(mean + eps)` rather than multiplying by `rsqrt` (last-ulp differences). Where that
//! kernel's rounding would differ from the reference (it rounds the scale to bf16 on the CPU), the
//! unfused f32 path is used.

use candle_core::{DType, Device, Tensor, D};

use crate::Result;

/// `RMSNorm(x) = cast(x_f32 / sqrt(mean(x_f32^2) + eps)) * weight`.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    /// Shape: `(hidden,)`, activation dtype.
    weight: Tensor,
    /// All ones, shape `(hidden,)`: lets the fused kernel produce the normalised (unweighted)
    /// input in bf16/f16 on CUDA, so that the weight multiply happens after the rounding.
    ones: Option<Tensor>,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn new(weight: Tensor, eps: f64) -> Result<Self> {
        let ones = match (weight.dtype(), weight.device()) {
            (DType::F32, _) => None,
            (_, Device::Cuda(_)) => Some(weight.ones_like()?),
            _ => None,
        };
        Ok(Self {
            weight,
            ones,
            eps: eps as f32,
        })
    }

    /// Bytes of the stored weight.
    pub(crate) fn weight_bytes(&self) -> u64 {
        super::linear::tensor_bytes(&self.weight)
    }

    /// Shape: `(..., hidden)` -> same; x must be contiguous.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == DType::F32 {
            // In f32 the fused kernel computes `(x / m) * w` with one rounding per operation,
            // exactly the two-step reference.
            return Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?);
        }
        if let Some(ones) = &self.ones {
            // CUDA kernel: f32 statistics, `rsqrt`, one rounding to the activation dtype.
            let normed = candle_nn::ops::rms_norm(x, ones, self.eps)?;
            return Ok(normed.broadcast_mul(&self.weight)?);
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let mean_sq = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_rms = (mean_sq + f64::from(self.eps))?.sqrt()?.recip()?;
        let normed = xf.broadcast_mul(&inv_rms)?.to_dtype(dtype)?;
        Ok(normed.broadcast_mul(&self.weight)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &Tensor, w: &Tensor, eps: f64) -> Vec<f32> {
        // f32 statistics, rounded to the activation dtype, then the weight in that dtype.
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32).unwrap();
        let inv = (xf.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps)
            .unwrap()
            .sqrt()
            .unwrap()
            .recip()
            .unwrap();
        let y = xf
            .broadcast_mul(&inv)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
            .broadcast_mul(w)
            .unwrap();
        y.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn matches_the_reference_order_of_operations() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let x = Tensor::randn(0f32, 3.0, (2, 3, 16), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let w = Tensor::randn(1f32, 0.2, 16, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let norm = RmsNorm::new(w.clone(), 1e-6).unwrap();
            let got: Vec<f32> = norm
                .forward(&x)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want = reference(&x, &w, 1e-6);
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-2 };
            for (g, r) in got.iter().zip(&want) {
                assert!(
                    (g - r).abs() <= tol * r.abs().max(1.0),
                    "{dtype:?}: {g} vs {r}"
                );
            }
        }
    }
}

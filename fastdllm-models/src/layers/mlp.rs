//! The gated SiLU feed-forward block `down(silu(gate(x)) * up(x))`.
//!
//! Reference: LLaDA's `LLaDALlamaBlock` MLP (`ff_proj` = gate, `up_proj` = up, block `ff_out` =
//! down; docs/ALGORITHM.md §1.1.2) and `Qwen2MLP` (Dream: `gate_proj`, `up_proj`, `down_proj`).
//! Deviation: gate and up are one fused GEMM (weights concatenated at load time); the SiLU and the
//! product run on the two halves of its output.

use candle_core::{Tensor, D};

use super::linear::Linear;
use crate::Result;

/// SwiGLU MLP.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    /// Rows: gate (`intermediate`), then up (`intermediate`).
    gate_up: Linear,
    down: Linear,
    intermediate: usize,
}

impl Mlp {
    pub(crate) fn new(gate_up: Linear, down: Linear, intermediate: usize) -> Self {
        Self {
            gate_up,
            down,
            intermediate,
        }
    }

    /// Bytes of the stored weights.
    pub(crate) fn weight_bytes(&self) -> u64 {
        self.gate_up.weight_bytes() + self.down.weight_bytes()
    }

    /// Shape: `(batch, len, hidden)` -> same.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up.forward(x)?;
        let gate = gate_up.narrow(D::Minus1, 0, self.intermediate)?;
        let up = gate_up.narrow(D::Minus1, self.intermediate, self.intermediate)?;
        let hidden = super::cpu_ops::silu_mul(&gate, &up)?;
        self.down.forward(&hidden)
    }
}

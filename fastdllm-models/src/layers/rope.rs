//! Rotary position embeddings, rotate-half (GPT-NeoX) layout, at explicit absolute positions.
//!
//! Reference: LLaDA `RotaryEmbedding` (`modeling_llada.py`, `rope_full_precision`: rotate in f32,
//! cast back) and `Qwen2RotaryEmbedding` as used by Dream (`modeling_dream.py`: cos/sin computed in
//! f32, cast to the activation dtype, rotation in that dtype). `inv_freq[j] = 1 / theta^(2j/d)`,
//! angle `p * inv_freq[j]`, output `x * cos + rotate_half(x) * sin` (docs/ALGORITHM.md §1.1.3,
//! §1.2.3).
//! Deviations: the tables are built for the positions actually used, grown on demand (doubling,
//! capped at `max_seq_len`) and already in the rotation dtype, so a forward call only selects
//! rows; a config's `max_seq_len` alone allocates nothing (a config with `max_sequence_length:
//! 100000000` used to abort the load allocating tables for every position). Positions come from
//! the caller ([`Positions`]) instead of being derived from the key length, so cached windows get
//! their true positions (docs/ALGORITHM.md §6, item 3).

use std::sync::{Arc, RwLock};

use candle_core::{DType, Device, Tensor};
use fastdllm_core::Positions;

use crate::Result;

/// In which dtype q and k are rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RopePrecision {
    /// Upcast to f32, rotate, cast back (LLaDA's `rope_full_precision = true`).
    F32,
    /// Rotate in the activation dtype with tables cast to it (Dream / Qwen2).
    Activation,
}

/// cos/sin tables for positions `0..len`. Shape: `(len, head_dim / 2)` each.
#[derive(Debug)]
struct Tables {
    cos: Tensor,
    sin: Tensor,
    len: usize,
}

/// Positions the tables cover at load (grown on demand up to `max_seq_len`).
const INITIAL_POSITIONS: usize = 1024;

/// cos/sin tables for the positions used so far, shared by clones.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    inv_freq: Tensor,
    table_dtype: DType,
    tables: Arc<RwLock<Tables>>,
    max_seq_len: usize,
}

/// The cos/sin rows of one forward call. Shape: `(window_len, head_dim / 2)` for contiguous
/// positions, `(batch, window_len, head_dim / 2)` for per-row positions.
#[derive(Debug, Clone)]
pub(crate) struct RopeAt {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub(crate) fn new(
        head_dim: usize,
        theta: f64,
        max_seq_len: usize,
        precision: RopePrecision,
        act_dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        // Same f32 arithmetic as the references: exponent (2j as f32) / d, theta^exponent in f32.
        let theta = theta as f32;
        let inv_freq: Vec<f32> = (0..half)
            .map(|j| 1.0 / theta.powf((2 * j) as f32 / head_dim as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let table_dtype = match precision {
            RopePrecision::F32 => DType::F32,
            RopePrecision::Activation => act_dtype,
        };
        let tables = build(&inv_freq, table_dtype, max_seq_len.min(INITIAL_POSITIONS))?;
        Ok(Self {
            inv_freq,
            table_dtype,
            tables: Arc::new(RwLock::new(tables)),
            max_seq_len,
        })
    }

    /// The tables, grown to cover positions `0..end` (`end <= max_seq_len`).
    fn covering(&self, end: usize) -> Result<(Tensor, Tensor)> {
        {
            let t = self.tables.read().unwrap_or_else(|e| e.into_inner());
            if t.len >= end {
                return Ok((t.cos.clone(), t.sin.clone()));
            }
        }
        let mut t = self.tables.write().unwrap_or_else(|e| e.into_inner());
        if t.len < end {
            let len = end
                .max(t.len.saturating_mul(2))
                .min(self.max_seq_len)
                .max(end);
            *t = build(&self.inv_freq, self.table_dtype, len)?;
        }
        Ok((t.cos.clone(), t.sin.clone()))
    }

    /// Selects the table rows of `positions` for a `(batch, window_len)` window whose tokens
    /// lie before canvas index `window_end` (per-row positions never exceed the canvas index:
    /// a row's positions are its own token indices, pads excluded).
    pub(crate) fn at(
        &self,
        positions: &Positions,
        batch: usize,
        window_len: usize,
        window_end: usize,
    ) -> Result<RopeAt> {
        match positions {
            Positions::Contiguous { start } => {
                let end = start.saturating_add(window_len);
                if end > self.max_seq_len {
                    return Err(fastdllm_core::Error::setting(
                        "positions",
                        format!("{start}..{end}"),
                        format!("within 0..{} (the model's max_seq_len)", self.max_seq_len),
                    )
                    .into());
                }
                let (cos, sin) = self.covering(end)?;
                Ok(RopeAt {
                    cos: cos.narrow(0, *start, window_len)?,
                    sin: sin.narrow(0, *start, window_len)?,
                })
            }
            Positions::PerRow(pos) => {
                let dims = pos.dims();
                if dims != [batch, window_len] {
                    return Err(fastdllm_core::Error::setting(
                        "positions",
                        format!("a tensor of shape {dims:?}"),
                        format!("shape [{batch}, {window_len}] (batch, window_len)"),
                    )
                    .into());
                }
                // Values are not range-checked here (that would need a device-to-host copy);
                // index_select rejects out-of-range positions on the CPU.
                let (cos, sin) = self.covering(window_end.min(self.max_seq_len))?;
                let flat = pos.flatten_all()?;
                let half = cos.dim(1)?;
                Ok(RopeAt {
                    cos: cos
                        .index_select(&flat, 0)?
                        .reshape((batch, window_len, half))?,
                    sin: sin
                        .index_select(&flat, 0)?
                        .reshape((batch, window_len, half))?,
                })
            }
        }
    }
}

/// Tables for positions `0..len`: angle `p * inv_freq[j]` in f32, cos/sin cast to `dtype`.
fn build(inv_freq: &Tensor, dtype: DType, len: usize) -> Result<Tables> {
    let positions = Tensor::arange(0u32, len as u32, inv_freq.device())?
        .to_dtype(DType::F32)?
        .reshape((len, 1))?;
    let angles = positions.broadcast_mul(inv_freq)?;
    Ok(Tables {
        cos: angles.cos()?.to_dtype(dtype)?.contiguous()?,
        sin: angles.sin()?.to_dtype(dtype)?.contiguous()?,
        len,
    })
}

impl RopeAt {
    /// The rows `rows` of the window (used when only some queries are needed).
    pub(crate) fn rows(&self, rows: std::ops::Range<usize>) -> Result<RopeAt> {
        let axis = self.cos.rank() - 2;
        Ok(RopeAt {
            cos: self
                .cos
                .narrow(axis, rows.start, rows.len())?
                .contiguous()?,
            sin: self
                .sin
                .narrow(axis, rows.start, rows.len())?
                .contiguous()?,
        })
    }

    /// Rotates `x`. Shape: `(batch, heads, window_len, head_dim)`, contiguous; returns the same
    /// shape and dtype.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let rotate_dtype = self.cos.dtype();
        let xr = x.to_dtype(rotate_dtype)?;
        let out = candle_nn::rotary_emb::rope(&xr, &self.cos, &self.sin)?;
        Ok(out.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    /// docs/ALGORITHM.md §8: rotate-half RoPE equals the direct rotation of the pairs
    /// `(x[j], x[j + d/2])` by the angle `p / theta^(2j/d)`.
    #[test]
    fn matches_a_direct_rotation() {
        let (d, theta) = (8usize, 10_000f64);
        let rope = Rope::new(d, theta, 32, RopePrecision::F32, DType::F32, &Device::Cpu).unwrap();
        let x = randn(&[1, 2, 5, d]);
        let start = 3;
        let got = rope
            .at(&Positions::Contiguous { start }, 1, 5, start + 5)
            .unwrap()
            .apply(&x)
            .unwrap();
        let xv = x.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
        let gv = got.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
        for h in 0..2 {
            for t in 0..5 {
                let p = (start + t) as f64;
                for j in 0..d / 2 {
                    let angle = p / theta.powf((2 * j) as f64 / d as f64);
                    let (x1, x2) = (f64::from(xv[h][t][j]), f64::from(xv[h][t][j + d / 2]));
                    let want1 = x1 * angle.cos() - x2 * angle.sin();
                    let want2 = x1 * angle.sin() + x2 * angle.cos();
                    assert!(
                        (f64::from(gv[h][t][j]) - want1).abs() < 1e-5,
                        "h{h} t{t} j{j}"
                    );
                    assert!(
                        (f64::from(gv[h][t][j + d / 2]) - want2).abs() < 1e-5,
                        "h{h} t{t} j{j}"
                    );
                }
            }
        }
    }

    #[test]
    fn per_row_positions_select_the_same_rows() {
        let rope = Rope::new(
            8,
            500_000.0,
            16,
            RopePrecision::F32,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let x = randn(&[2, 3, 4, 8]);
        let pos = Tensor::new(&[[2u32, 3, 4, 5], [7, 8, 9, 10]], &Device::Cpu).unwrap();
        let got = rope
            .at(&Positions::PerRow(pos), 2, 4, 32)
            .unwrap()
            .apply(&x)
            .unwrap();
        for (row, start) in [(0usize, 2usize), (1, 7)] {
            let xr = x.narrow(0, row, 1).unwrap().contiguous().unwrap();
            let want = rope
                .at(&Positions::Contiguous { start }, 1, 4, start + 4)
                .unwrap()
                .apply(&xr)
                .unwrap();
            let diff = (got.narrow(0, row, 1).unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        }
    }

    /// Rotating a key once and caching it equals re-rotating the cached raw key
    /// (docs/ALGORITHM.md §1.3).
    #[test]
    fn rotated_rows_do_not_depend_on_the_window() {
        let rope = Rope::new(
            8,
            10_000.0,
            16,
            RopePrecision::F32,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let x = randn(&[1, 1, 6, 8]);
        let whole = rope
            .at(&Positions::Contiguous { start: 0 }, 1, 6, 6)
            .unwrap()
            .apply(&x)
            .unwrap();
        let tail = x.narrow(2, 2, 4).unwrap().contiguous().unwrap();
        let part = rope
            .at(&Positions::Contiguous { start: 2 }, 1, 4, 6)
            .unwrap()
            .apply(&tail)
            .unwrap();
        let diff = (whole.narrow(2, 2, 4).unwrap() - part)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn dtypes_follow_the_precision() {
        let x = randn(&[1, 1, 3, 8]).to_dtype(DType::F16).unwrap();
        let full = Rope::new(8, 1e4, 8, RopePrecision::F32, DType::F16, &Device::Cpu).unwrap();
        let act = Rope::new(
            8,
            1e4,
            8,
            RopePrecision::Activation,
            DType::F16,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(full.table_dtype, DType::F32);
        assert_eq!(act.table_dtype, DType::F16);
        for rope in [full, act] {
            let y = rope
                .at(&Positions::Contiguous { start: 1 }, 1, 3, 4)
                .unwrap()
                .apply(&x)
                .unwrap();
            assert_eq!(y.dtype(), DType::F16);
        }
    }
}

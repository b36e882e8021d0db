//! A bias-optional linear layer `y = x W^T (+ b)` over the last dimension.
//!
//! Reference: `torch.nn.Linear` as used by LLaDA (`modeling_llada.py`, no bias anywhere) and Dream
//! (`modeling_dream.py`, bias on q/k/v only). Deviations from `candle_nn::Linear`: the input is
//! flattened to 2-D before the matmul, so a batched window is one GEMM against the (out, in)
//! weight instead of a broadcast batched GEMM; and a CPU f32, bf16 or f16 weight is packed once
//! at construction for [`super::cpu_gemm`], which gives candle's `x.matmul(&w.t())` bit for bit
//! (a half-precision weight: the f32 product of the widened weight, rounded once to the input's
//! dtype) without re-packing the weight on every call.
//!
//! Quantized weights (GGUF files, `--quantize`) are `candle_core::quantized::QMatMul`s: the input
//! is cast to f32 (what candle's quantized kernels take; on the CPU they quantize each input row to
//! the block's dot-product type, as llama.cpp does), and the output is cast back to the activation
//! dtype, so everything after the layer (K/V, attention) stays in that dtype. A fused projection
//! whose parts have different block types (llama.cpp's Q4_K_M keeps some `attn_v` in Q6_K) is one
//! `QMatMul` per part, outputs concatenated.
//!
//! Threads: candle's quantized CPU kernels split their work over candle's own spinning worker
//! threads, a second pool beside rayon's. The binary turns that pool off
//! ([`crate::use_one_thread_pool`]); instead each quantized weight is cut at load time into
//! [`shard_count`] shards of whole 16-row tiles along the output axis (one per rayon thread), and
//! the shards run as rayon tasks, so a quantized layer runs on the same pool as every other op.
//! Each output row is computed by exactly the same kernel and arithmetic as without shards (the
//! rows of a GGML tensor are independent); only the input's quantization to the dot-product type
//! is repeated per shard.

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
    /// Shape: `weight` `(out_features, in_features)`, `bias` `(out_features,)`. A CPU f32, bf16
    /// or f16 weight on an AVX2+FMA CPU is packed in its precision (and the tensor dropped);
    /// anything else stays as it is. A packed half-precision weight multiplies in f32 (the input
    /// widened, f32 accumulation) and the output is rounded once to the input's dtype.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let weight = match PackedWeight::new(&weight)? {
            Some(packed) => Weight::Packed(Arc::new(packed)),
            None => Weight::Dense(weight),
        };
        Ok(Self { weight, bias })
    }

    /// A quantized weight made of `parts` stacked along the output axis, each `(out_i, in)`,
    /// each cut into up to [`shard_count`] shards of whole tiles (see the module docs).
    pub(crate) fn quantized(parts: Vec<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        Self::quantized_in_shards(parts, bias, shard_count())
    }

    /// [`Self::quantized`] with at most `shards` shards per part.
    fn quantized_in_shards(
        parts: Vec<QTensor>,
        bias: Option<Tensor>,
        shards: usize,
    ) -> Result<Self> {
        let mut cut = Vec::with_capacity(parts.len() * shards);
        for qt in parts {
            cut.extend(split_rows(qt, shards)?);
        }
        let parts = cut
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
            Weight::Packed(packed) => packed.matmul_t(&flat)?.to_dtype(x.dtype())?,
            Weight::Quantized(parts) => {
                let x32 = flat.to_dtype(DType::F32)?.contiguous()?;
                let mut outs = if parts.len() == 1 {
                    vec![parts[0].matmul.forward(&x32)?]
                } else {
                    use rayon::prelude::*;
                    parts
                        .par_iter()
                        .map(|p| p.matmul.forward(&x32))
                        .collect::<candle_core::Result<Vec<_>>>()?
                };
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

/// Output rows per shard unit: candle's x86 repacked kernels take weights whose row count is a
/// multiple of their 16-row tile (`repack_x86::TILE_N`), so shards are cut at multiples of it.
const SHARD_ROWS: usize = 16;

/// Shards per quantized weight: one per thread of rayon's pool (`RAYON_NUM_THREADS`) at load time.
pub(crate) fn shard_count() -> usize {
    rayon::current_num_threads().max(1)
}

/// `qt` (shape `(n, k)`, a GGML block type) cut along its rows into at most `shards` tensors of
/// whole [`SHARD_ROWS`]-row units, as even as possible, in order; `qt` itself when it cannot be cut
/// (one shard, fewer than two units, `n` not a multiple of [`SHARD_ROWS`], or not a 2-D block
/// tensor). The shards hold copies of the rows' blocks; `qt` is dropped.
fn split_rows(qt: QTensor, shards: usize) -> Result<Vec<QTensor>> {
    let dtype = qt.dtype();
    let Ok((n, k)) = qt.shape().dims2() else {
        return Ok(vec![qt]);
    };
    let units = n / SHARD_ROWS;
    let block = dtype.block_size();
    if shards < 2 || units < 2 || n % SHARD_ROWS != 0 || block == 0 || k % block != 0 {
        return Ok(vec![qt]);
    }
    let shards = shards.min(units);
    let row_bytes = k / block * dtype.type_size();
    let data = qt.data()?;
    if data.len() != n * row_bytes {
        return Ok(vec![qt]);
    }
    let device = qt.device();
    (0..shards)
        .map(|s| {
            let rows = s * units / shards * SHARD_ROWS..(s + 1) * units / shards * SHARD_ROWS;
            let bytes = &data[rows.start * row_bytes..rows.end * row_bytes];
            Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
                dtype,
                bytes,
                vec![rows.len(), k],
                &device,
            )?)
        })
        .collect()
}

/// Bytes of a dense tensor's elements.
pub(crate) fn tensor_bytes(t: &Tensor) -> u64 {
    (t.elem_count() * t.dtype().size_in_bytes()) as u64
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlDType;
    use candle_core::Device;

    use super::*;

    fn matrix(rows: usize, cols: usize, seed: u64) -> Tensor {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    }

    /// Shards compute every output row with candle's own kernel: the sharded layer equals one
    /// `QMatMul` over the whole weight bit for bit, for every block type the loaders produce, on
    /// odd row counts (1, 7, 32, 513) and shard counts that do and do not divide the tiles.
    #[test]
    fn sharded_quantized_layer_is_bitwise_one_qmatmul() {
        let (n, k) = (16 * 7, 512);
        for dtype in [
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
        ] {
            let w = matrix(n, k, 3);
            let whole = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
            for shards in [1, 2, 3, 7, 9] {
                let qt = QTensor::quantize(&w, dtype).unwrap();
                let layer = Linear::quantized_in_shards(vec![qt], None, shards).unwrap();
                let Weight::Quantized(parts) = &layer.weight else {
                    panic!("quantized layer");
                };
                assert_eq!(parts.len(), shards.min(7), "{dtype:?}: shards");
                assert_eq!(layer.out_features(), n);
                for rows in [1, 7, 32, 513] {
                    let x = matrix(rows, k, rows as u64);
                    let want = whole.forward(&x).unwrap();
                    let got = layer.forward(&x).unwrap();
                    assert_eq!(got.dims(), &[rows, n]);
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{dtype:?}, {shards} shards, {rows} rows"
                    );
                }
            }
        }
    }

    /// A weight whose rows are not whole 16-row tiles stays one part.
    #[test]
    fn untiled_rows_are_not_cut() {
        let qt = QTensor::quantize(&matrix(40, 256, 5), GgmlDType::Q8_0).unwrap();
        assert_eq!(split_rows(qt, 4).unwrap().len(), 1);
        let qt = QTensor::quantize(&matrix(48, 256, 5), GgmlDType::Q8_0).unwrap();
        let shards = split_rows(qt, 4).unwrap();
        let rows: Vec<usize> = shards.iter().map(|s| s.shape().dims()[0]).collect();
        assert_eq!(rows, [16, 16, 16]);
    }
}

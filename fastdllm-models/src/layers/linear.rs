//! A bias-optional linear layer `y = x W^T (+ b)` over the last dimension.
//!
//! Reference: `torch.nn.Linear` as used by LLaDA (`modeling_llada.py`, no bias anywhere) and Dream
//! (`modeling_dream.py`, bias on q/k/v only). Deviations from `candle_nn::Linear`: the input is
//! flattened to 2-D before the matmul, so a batched window is one GEMM against the (out, in)
//! weight instead of a broadcast batched GEMM; and a CPU f32, bf16 or f16 weight is packed once
//! at construction for [`super::cpu_gemm`], which gives candle's `x.matmul(&w.t())` bit for bit
//! (a half-precision weight: the f32 product of the widened weight, rounded once to the input's
//! dtype; a bf16 weight on a CPU with AVX-512 BF16: bf16 dot products with f32 accumulation, not
//! bit for bit, see `cpu_gemm`) without re-packing the weight on every call.
//!
//! Quantized weights (GGUF files, `--quantize`) are `candle_core::quantized::QMatMul`s: the input
//! is cast to f32 (what candle's quantized kernels take; on the CPU they quantize each input row to
//! the block's dot-product type, as llama.cpp does), and the output is cast back to the activation
//! dtype, so everything after the layer (K/V, attention) stays in that dtype. A fused projection
//! whose parts have different block types (llama.cpp's Q4_K_M keeps some `attn_v` in Q6_K) is one
//! `QMatMul` per part, outputs concatenated.
//!
//! CPU weights in the block types [`super::cpu_qgemm`] has (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) are repacked once at load
//! into that module's layout (the file's blocks dropped) and multiplied by its int8 kernels: the
//! input is quantized once per call (Q8_0 or Q8_K blocks, as llama.cpp's `vec_dot` takes it) and
//! the output tiles run as rayon tasks. `FASTDLLM_CPU_QGEMM=candle` keeps candle's kernels for
//! every block type (see [`super::cpu_qgemm::QKERNEL_VAR`]). What follows is about candle's.
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
use candle_core::{DType, Device, Module, Tensor, D};

use super::cpu_gemm::PackedWeight;
use super::cpu_qgemm::{QInput, QInputKind, QPackedWeight, QPath};
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
enum QuantizedPart {
    /// candle's kernels: block types, devices and shapes ours do not take, or all of them under
    /// `FASTDLLM_CPU_QGEMM=candle`.
    Candle {
        matmul: QMatMul,
        out_features: usize,
    },
    /// Our int8 kernels ([`super::cpu_qgemm`]) on the path chosen at load.
    Packed { weight: QPackedWeight, path: QPath },
}

impl QuantizedPart {
    fn out_features(&self) -> usize {
        match self {
            QuantizedPart::Candle { out_features, .. } => *out_features,
            QuantizedPart::Packed { weight, .. } => weight.out_features(),
        }
    }

    /// `x` (`(rows, in)` f32, contiguous) times the part: `(rows, out_i)` f32. `inputs` holds `x`
    /// quantized for every kind a packed part of the layer takes.
    fn forward(&self, x: &Tensor, inputs: &QuantizedInputs) -> candle_core::Result<Tensor> {
        match self {
            QuantizedPart::Candle { matmul, .. } => matmul.forward(x),
            QuantizedPart::Packed { weight, path } => {
                let input = inputs.get(weight.format().input_kind())?;
                let y = weight.matmul_t(input, *path);
                Tensor::from_vec(y, (input.rows(), weight.out_features()), &Device::Cpu)
            }
        }
    }
}

/// An input quantized once per layer call for its packed parts, per input kind.
#[derive(Default)]
struct QuantizedInputs {
    q8_0: Option<QInput>,
    q8k: Option<QInput>,
}

impl QuantizedInputs {
    /// `x` (`(rows, in)` f32, contiguous) quantized for every kind `parts` take.
    fn new(parts: &[QuantizedPart], x: &Tensor) -> candle_core::Result<Self> {
        let mut inputs = Self::default();
        for part in parts {
            let QuantizedPart::Packed { weight, path } = part else {
                continue;
            };
            let kind = weight.format().input_kind();
            let slot = match kind {
                QInputKind::Q8_0 => &mut inputs.q8_0,
                QInputKind::Q8K => &mut inputs.q8k,
            };
            if slot.is_some() {
                continue;
            }
            let (rows, k) = x.dims2()?;
            if k != weight.in_features() {
                return Err(candle_core::Error::Msg(format!(
                    "quantized linear layer: input has {k} features, the weight takes {}",
                    weight.in_features()
                )));
            }
            let (storage, layout) = x.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                return Err(candle_core::Error::Msg(
                    "quantized linear layer: a CPU weight got an input on another device".into(),
                ));
            };
            let values = &cpu.as_slice::<f32>()?[layout.start_offset()..][..rows * k];
            *slot = Some(QInput::quantize(kind, values, rows, k, *path));
        }
        Ok(inputs)
    }

    fn get(&self, kind: QInputKind) -> candle_core::Result<&QInput> {
        match kind {
            QInputKind::Q8_0 => self.q8_0.as_ref(),
            QInputKind::Q8K => self.q8k.as_ref(),
        }
        .ok_or_else(|| candle_core::Error::Msg(format!("{kind:?} input not quantized")))
    }
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
    /// widened, f32 accumulation; on the AVX-512 BF16 path a bf16 weight takes the input rounded to
    /// bf16 and bf16 dot products, f32 accumulation) and the output is rounded once to the
    /// input's dtype.
    ///
    /// Errors: a bf16 weight while `FASTDLLM_CPU_GEMM` names an unknown path or one the CPU lacks.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let weight = match PackedWeight::new(&weight)? {
            Some(packed) => Weight::Packed(Arc::new(packed)),
            None => Weight::Dense(weight),
        };
        Ok(Self { weight, bias })
    }

    /// A quantized weight made of `parts` stacked along the output axis, each `(out_i, in)`:
    /// each repacked for [`super::cpu_qgemm`] where it takes it (on the path
    /// [`QPath::detect`] chooses), else cut into up to [`shard_count`] shards of whole tiles for
    /// candle's kernels (see the module docs).
    ///
    /// Errors: `FASTDLLM_CPU_QGEMM` names an unknown path or one this CPU lacks.
    pub(crate) fn quantized(parts: Vec<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let path = QPath::detect().map_err(candle_core::Error::Msg)?;
        Self::quantized_in_shards(parts, bias, shard_count(), path)
    }

    /// [`Self::quantized`] with at most `shards` shards per candle part, our kernels on `path`
    /// (`None`: candle's for every part).
    fn quantized_in_shards(
        parts: Vec<QTensor>,
        bias: Option<Tensor>,
        shards: usize,
        path: Option<QPath>,
    ) -> Result<Self> {
        let mut cut = Vec::with_capacity(parts.len() * shards);
        for qt in parts {
            if let Some(path) = path {
                if let Some(weight) = QPackedWeight::new(&qt)? {
                    cut.push(QuantizedPart::Packed { weight, path });
                    continue;
                }
            }
            for qt in split_rows(qt, shards)? {
                let out_features = qt.shape().dims().first().copied().unwrap_or(0);
                cut.push(QuantizedPart::Candle {
                    matmul: QMatMul::from_qtensor(qt)?,
                    out_features,
                });
            }
        }
        let parts = cut;
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
            Weight::Quantized(parts) => parts.iter().map(QuantizedPart::out_features).sum(),
        }
    }

    /// Bytes of the stored weight and bias (quantized parts at their block size).
    pub(crate) fn weight_bytes(&self) -> u64 {
        let weight = match &self.weight {
            Weight::Dense(weight) => tensor_bytes(weight),
            Weight::Packed(packed) => packed.weight_bytes(),
            Weight::Quantized(parts) => parts
                .iter()
                .map(|p| match p {
                    QuantizedPart::Candle { matmul, .. } => match matmul {
                        QMatMul::QTensor(qt) => qt.storage_size_in_bytes() as u64,
                        QMatMul::Tensor(t) | QMatMul::TensorF16(t) => tensor_bytes(t),
                    },
                    QuantizedPart::Packed { weight, .. } => weight.weight_bytes(),
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
                let inputs = QuantizedInputs::new(parts, &x32)?;
                let mut outs = if parts.len() == 1 {
                    vec![parts[0].forward(&x32, &inputs)?]
                } else {
                    use rayon::prelude::*;
                    parts
                        .par_iter()
                        .map(|p| p.forward(&x32, &inputs))
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

    /// With candle's kernels (`FASTDLLM_CPU_QGEMM=candle`), shards compute every output row with
    /// candle's own kernel: the sharded layer equals one
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
                let layer = Linear::quantized_in_shards(vec![qt], None, shards, None).unwrap();
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

    /// A layer of parts in different block types (llama.cpp's Q4_K_M keeps some `attn_v` in
    /// Q6_K; here Q5_0 stands for a type our kernels lack): the parts our kernels take are packed (`weight_bytes` counts the packed bytes, not
    /// the file's blocks), the others stay candle's (sharded), and the output is each part's own
    /// product, concatenated, bit for bit.
    #[test]
    fn mixed_parts_take_our_kernels_where_they_can() {
        let path = QPath::ALL.into_iter().find(|p| p.available()).unwrap();
        let k = 512;
        let specs = [
            (GgmlDType::Q4K, 48),
            (GgmlDType::Q5_0, 32),
            (GgmlDType::Q8_0, 21),
        ];
        let quantize = |i: usize| {
            let (dtype, n) = specs[i];
            QTensor::quantize(&matrix(n, k, 10 + i as u64), dtype).unwrap()
        };
        let layer =
            Linear::quantized_in_shards((0..3).map(quantize).collect(), None, 2, Some(path))
                .unwrap();
        let Weight::Quantized(parts) = &layer.weight else {
            panic!("quantized layer");
        };
        let packed: Vec<bool> = parts
            .iter()
            .map(|p| matches!(p, QuantizedPart::Packed { .. }))
            .collect();
        assert_eq!(packed, [true, false, false, true]);
        assert_eq!(layer.out_features(), 48 + 32 + 21);
        let q4k = QPackedWeight::new(&quantize(0)).unwrap().unwrap();
        let q5_0 = QMatMul::from_qtensor(quantize(1)).unwrap();
        let q8_0 = QPackedWeight::new(&quantize(2)).unwrap().unwrap();
        let q5_0_bytes = quantize(1).storage_size_in_bytes() as u64;
        assert_eq!(
            layer.weight_bytes(),
            q4k.weight_bytes() + q5_0_bytes + q8_0.weight_bytes()
        );
        for rows in [1, 7] {
            let x = matrix(rows, k, 40 + rows as u64);
            let values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ours = |w: &QPackedWeight| {
                let kind = w.format().input_kind();
                let input = QInput::quantize(kind, &values, rows, k, path);
                Tensor::from_vec(
                    w.matmul_t(&input, path),
                    (rows, w.out_features()),
                    &Device::Cpu,
                )
                .unwrap()
            };
            let want =
                Tensor::cat(&[ours(&q4k), q5_0.forward(&x).unwrap(), ours(&q8_0)], 1).unwrap();
            assert_eq!(
                bits(&layer.forward(&x).unwrap()),
                bits(&want),
                "{rows} rows"
            );
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

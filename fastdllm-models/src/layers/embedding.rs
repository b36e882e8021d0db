//! The token embedding `h = embed[ids]`, dense or kept in its GGUF block type.
//!
//! Reference: `torch.nn.Embedding` (`model.embed_tokens`, `model.transformer.wte`); llama.cpp's
//! `ggml_get_rows`, which reads the looked-up rows of a quantized `token_embd` and dequantizes only
//! those. Deviation from a dense lookup: none in value. A quantized row is dequantized by candle's
//! block decoder, the same function that dequantizes the whole matrix, so the rows are bit for bit
//! those of the dense matrix that [`crate::gguf::dense_from_bytes`] would have built. What changes
//! is memory: a 157184 x 2048 vocabulary (LLaDA-MoE) is 181 MB in Q4_K instead of 1.29 GB in f32.

use candle_core::quantized::{ggml_file, GgmlDType};
use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// Shape `(vocab, hidden)`.
#[derive(Debug, Clone)]
pub(crate) enum Embedding {
    /// In the activation dtype, on the model's device.
    Dense(Tensor),
    /// A GGML block type's rows, on the host; looked-up rows are dequantized per call.
    Quantized {
        ggml: GgmlDType,
        /// `vocab` rows of `row_bytes` each, row-major.
        bytes: std::sync::Arc<[u8]>,
        vocab: usize,
        hidden: usize,
        /// Activation dtype and device of the looked-up rows.
        dtype: DType,
        device: Device,
    },
}

impl Embedding {
    /// A quantized embedding from the stored `bytes` of a `(vocab, hidden)` tensor of type `ggml`
    /// (rows whole blocks of `ggml`, checked by the GGUF loader).
    ///
    /// Errors: `bytes` not `vocab` rows of `hidden / block_size * type_size` bytes.
    pub(crate) fn quantized(
        name: &str,
        ggml: GgmlDType,
        bytes: Vec<u8>,
        (vocab, hidden): (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let row_bytes = hidden / ggml.block_size() * ggml.type_size();
        if hidden % ggml.block_size() != 0 || bytes.len() != vocab * row_bytes {
            return Err(Error::config(
                "embedding",
                format!("{} bytes of {ggml:?}", bytes.len()),
                format!(
                    "`{name}`: not {vocab} rows of {hidden} values ({row_bytes} bytes per row)"
                ),
            ));
        }
        Ok(Self::Quantized {
            ggml,
            bytes: bytes.into(),
            vocab,
            hidden,
            dtype,
            device: device.clone(),
        })
    }

    /// Bytes of the stored table (a quantized one at its block size).
    pub(crate) fn weight_bytes(&self) -> u64 {
        match self {
            Embedding::Dense(t) => super::linear::tensor_bytes(t),
            Embedding::Quantized { bytes, .. } => bytes.len() as u64,
        }
    }

    /// Shape: `ids` `(n,)` u32 -> `(n, hidden)` in the activation dtype.
    ///
    /// Errors: an id `>= vocab` (candle's `index_select` error for a dense table).
    pub(crate) fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Dense(t) => Ok(t.index_select(ids, 0)?),
            Embedding::Quantized {
                ggml,
                bytes,
                vocab,
                hidden,
                dtype,
                device,
            } => {
                let row_bytes = hidden / ggml.block_size() * ggml.type_size();
                let ids: Vec<u32> = ids.to_vec1()?;
                if ids.is_empty() {
                    return Ok(Tensor::zeros((0, *hidden), *dtype, device)?);
                }
                let mut rows = Vec::with_capacity(ids.len() * row_bytes);
                for &id in &ids {
                    let id = id as usize;
                    if id >= *vocab {
                        return Err(Error::config(
                            "token id",
                            id.to_string(),
                            format!("outside the embedding's {vocab} rows"),
                        ));
                    }
                    rows.extend_from_slice(&bytes[id * row_bytes..(id + 1) * row_bytes]);
                }
                let qt = ggml_file::qtensor_from_ggml(
                    *ggml,
                    &rows,
                    vec![ids.len(), *hidden],
                    &Device::Cpu,
                )?;
                Ok(qt
                    .dequantize(&Device::Cpu)?
                    .to_device(device)?
                    .to_dtype(*dtype)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::QTensor;

    use super::*;

    /// A quantized table's looked-up rows are bit for bit the rows of the whole table
    /// dequantized (what the dense path stores), for each block type a GGUF embedding comes in,
    /// repeated and unsorted ids included; an id past the table is an error, not a panic.
    #[test]
    fn quantized_rows_are_the_dequantized_table_rows() -> Result<()> {
        let (vocab, hidden) = (40, 512);
        let values: Vec<f32> = (0..vocab * hidden)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32))
            .collect();
        let table = Tensor::from_vec(values, (vocab, hidden), &Device::Cpu)?;
        let ids = Tensor::new(&[3u32, 0, 39, 3, 17], &Device::Cpu)?;
        for ggml in [
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::Q8_0,
            GgmlDType::Q5_0,
            GgmlDType::F16,
            GgmlDType::BF16,
        ] {
            let qt = QTensor::quantize(&table, ggml)?;
            let dense = Embedding::Dense(qt.dequantize(&Device::Cpu)?);
            let quantized = Embedding::quantized(
                "token_embd.weight",
                ggml,
                qt.data()?.to_vec(),
                (vocab, hidden),
                DType::F32,
                &Device::Cpu,
            )?;
            let bits = |e: &Embedding| -> Result<Vec<u32>> {
                let v: Vec<f32> = e.forward(&ids)?.flatten_all()?.to_vec1()?;
                Ok(v.into_iter().map(f32::to_bits).collect())
            };
            assert_eq!(bits(&quantized)?, bits(&dense)?, "{ggml:?}");
            assert_eq!(
                quantized.weight_bytes() as usize,
                vocab * hidden / ggml.block_size() * ggml.type_size()
            );
            let past = Tensor::new(&[40u32], &Device::Cpu)?;
            let err = quantized.forward(&past).unwrap_err().to_string();
            assert!(err.contains("40") && err.contains("40 rows"), "{err}");
        }
        Ok(())
    }
}

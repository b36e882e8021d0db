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

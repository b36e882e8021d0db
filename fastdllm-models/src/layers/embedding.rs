//! The token embedding `h = E[ids]`: a dense `(vocab, hidden)` table, or (GGUF files) the stored
//! rows, dequantized per looked-up token.
//!
//! Reference: `torch.nn.Embedding` (LLaDA's `wte`, Dream's `embed_tokens`); llama.cpp's
//! `ggml_get_rows` on the stored `token_embd.weight`, which gathers rows of any block type without
//! a dense copy. Deviation from a dense table: none in values. A GGML row is whole blocks (the
//! loader checks it), so dequantizing one row gives exactly that row of the dequantized table, and
//! the rows are converted to the activation dtype as the dense table would be; only the memory
//! differs (a Q4_K embedding of 32000 x 2048 is 37 MB instead of a 262 MB f32 table).

use std::sync::Arc;

use candle_core::quantized::{ggml_file, GgmlDType};
use candle_core::{DType, Device, Tensor};

use crate::Result;

/// The embedding table.
#[derive(Debug, Clone)]
pub(crate) enum Embedding {
    /// Shape `(vocab, hidden)`, in the activation dtype.
    Dense(Tensor),
    /// The GGUF tensor's bytes: `vocab` rows of `row_bytes` bytes, each `hidden` values of the
    /// block type `ggml`.
    Stored {
        ggml: GgmlDType,
        bytes: Arc<Vec<u8>>,
        hidden: usize,
        row_bytes: usize,
        dtype: DType,
        device: Device,
    },
}

impl Embedding {
    /// Rows `ids` (u32, any shape, flattened) of the table: shape `(ids.elem_count(), hidden)`,
    /// in the activation dtype, on the table's device. Errors: an id past the vocabulary.
    pub(crate) fn rows(&self, ids: &Tensor) -> Result<Tensor> {
        let ids = ids.flatten_all()?;
        match self {
            Embedding::Dense(table) => Ok(table.index_select(&ids, 0)?),
            Embedding::Stored {
                ggml,
                bytes,
                hidden,
                row_bytes,
                dtype,
                device,
            } => {
                let vocab = bytes.len() / row_bytes;
                let mut rows = Vec::new();
                for id in ids.to_vec1::<u32>()? {
                    let id = id as usize;
                    if id >= vocab {
                        return Err(candle_core::Error::Msg(format!(
                            "token id {id} is past the embedding's {vocab} rows"
                        ))
                        .into());
                    }
                    let row = &bytes[id * row_bytes..(id + 1) * row_bytes];
                    let qt =
                        ggml_file::qtensor_from_ggml(*ggml, row, vec![1, *hidden], &Device::Cpu)?;
                    rows.push(qt.dequantize(&Device::Cpu)?);
                }
                if rows.is_empty() {
                    return Ok(Tensor::zeros((0, *hidden), *dtype, device)?);
                }
                Ok(Tensor::cat(&rows, 0)?.to_device(device)?.to_dtype(*dtype)?)
            }
        }
    }

    /// Bytes of the stored table.
    pub(crate) fn weight_bytes(&self) -> u64 {
        match self {
            Embedding::Dense(t) => super::linear::tensor_bytes(t),
            Embedding::Stored { bytes, .. } => bytes.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::QTensor;

    use super::*;

    /// Stored rows of every block type a GGUF embedding comes in give the dense table's rows bit
    /// for bit (repeated ids, any order, in each activation dtype); an id past the table is an
    /// error, not a panic.
    #[test]
    fn stored_rows_equal_the_dense_table() -> Result<()> {
        let (vocab, hidden) = (7, 512);
        let values: Vec<f32> = (0..vocab * hidden)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 0.1)
            .collect();
        let table = Tensor::from_vec(values, (vocab, hidden), &Device::Cpu)?;
        let ids = Tensor::new(&[[3u32, 0, 6], [3, 1, 5]], &Device::Cpu)?;
        for ggml in [
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let qt = QTensor::quantize(&table, ggml)?;
            let bytes = qt.data()?.to_vec();
            let dense = qt.dequantize(&Device::Cpu)?;
            for dtype in [DType::F32, DType::BF16] {
                let stored = Embedding::Stored {
                    ggml,
                    row_bytes: bytes.len() / vocab,
                    bytes: Arc::new(bytes.clone()),
                    hidden,
                    dtype,
                    device: Device::Cpu,
                };
                let want = Embedding::Dense(dense.to_dtype(dtype)?).rows(&ids)?;
                let got = stored.rows(&ids)?;
                assert_eq!(got.dims(), &[6, hidden]);
                assert_eq!(got.dtype(), dtype);
                let (got, want) = (
                    got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                    want.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                );
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits()),
                    "{ggml:?} {dtype:?}"
                );
                assert_eq!(stored.weight_bytes(), bytes.len() as u64);
                let past = Tensor::new(&[vocab as u32], &Device::Cpu)?;
                assert!(stored.rows(&past).is_err());
            }
        }
        Ok(())
    }
}

//! Weight quantization: the GGML block types a model's linear layers can be kept in, and the load
//! options that ask for in-situ quantization.
//!
//! Reference: GGML's block formats (ggml-org/ggml `ggml-common.h`) as implemented by
//! `candle_core::quantized` (`QTensor::quantize`, `QMatMul`); the fallback for rows that are not a
//! whole number of 256-element super-blocks is llama.cpp's (`llama-quant.cpp`,
//! `convert_incompatible_tensor`: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16 when even that
//! block does not divide the row). Deviation: the fallback's target when no GGML block fits is the
//! activation dtype (the layer stays dense) rather than F16.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;
use candle_core::DType;

use crate::{Error, Result};

/// A type `--quantize` accepts (mistral.rs's ISQ names, lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 8-bit, blocks of 32 with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit k-quant, super-blocks of 256 (4.5 bits per weight).
    Q4K,
    /// 5-bit k-quant, super-blocks of 256 (5.5 bits per weight).
    Q5K,
    /// 6-bit k-quant, super-blocks of 256 (6.56 bits per weight).
    Q6K,
}

impl QuantType {
    /// Every supported type, in the order `--quantize` lists them.
    pub const ALL: [QuantType; 4] = [
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// The name on the command line (`q8_0`, `q4_k`, `q5_k`, `q6_k`).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4K => "q4_k",
            QuantType::Q5K => "q5_k",
            QuantType::Q6K => "q6_k",
        }
    }

    /// The candle block type.
    pub fn ggml(self) -> GgmlDType {
        match self {
            QuantType::Q8_0 => GgmlDType::Q8_0,
            QuantType::Q4K => GgmlDType::Q4K,
            QuantType::Q5K => GgmlDType::Q5K,
            QuantType::Q6K => GgmlDType::Q6K,
        }
    }

    /// The block type a weight with rows of `in_features` values gets: this type when its block
    /// divides the row, else llama.cpp's fallback, else `None` (keep the layer dense).
    pub fn for_row(self, in_features: usize) -> Option<GgmlDType> {
        let fits = |t: GgmlDType| in_features.is_multiple_of(t.block_size());
        let first = self.ggml();
        if fits(first) {
            return Some(first);
        }
        let fallback = match self {
            QuantType::Q8_0 => return None,
            QuantType::Q4K => GgmlDType::Q5_0,
            QuantType::Q5K => GgmlDType::Q5_1,
            QuantType::Q6K => GgmlDType::Q8_0,
        };
        fits(fallback).then_some(fallback)
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        QuantType::ALL
            .into_iter()
            .find(|t| t.name() == lower)
            .ok_or_else(|| Error::UnsupportedQuantization {
                value: s.to_string(),
            })
    }
}

/// How [`crate::load_model_with`] builds a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    /// Activation dtype (f32, bf16 or f16); dense weights are converted to it.
    pub dtype: DType,
    /// Quantize the linear layers of a safetensors checkpoint (or random weights) at load.
    /// Not allowed for GGUF files, whose weights are already in their stored types.
    pub quantize: Option<QuantType>,
}

impl LoadOptions {
    /// Dense weights in `dtype`, no quantization.
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            quantize: None,
        }
    }

    /// The same options with in-situ quantization to `quantize`.
    pub fn quantized(self, quantize: Option<QuantType>) -> Self {
        Self { quantize, ..self }
    }
}

/// GGML's name of a tensor type id (`ggml_type` in `ggml.h`), for error messages.
pub(crate) fn ggml_type_name(id: u32) -> &'static str {
    match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

/// The GGML type names candle can run, for error messages.
pub(crate) const CANDLE_GGML_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_others() {
        for t in QuantType::ALL {
            assert_eq!(t.name().parse::<QuantType>().unwrap(), t);
        }
        assert_eq!("Q4_K".parse::<QuantType>().unwrap(), QuantType::Q4K);
        let err = "q3_k".parse::<QuantType>().unwrap_err().to_string();
        assert!(err.contains("\"q3_k\"") && err.contains("q8_0"), "{err}");
    }

    #[test]
    fn fallback_follows_llama_cpp() {
        assert_eq!(QuantType::Q4K.for_row(512), Some(GgmlDType::Q4K));
        assert_eq!(QuantType::Q4K.for_row(128), Some(GgmlDType::Q5_0));
        assert_eq!(QuantType::Q5K.for_row(384), Some(GgmlDType::Q5_1));
        assert_eq!(QuantType::Q6K.for_row(128), Some(GgmlDType::Q8_0));
        assert_eq!(QuantType::Q8_0.for_row(128), Some(GgmlDType::Q8_0));
        assert_eq!(QuantType::Q8_0.for_row(100), None);
        assert_eq!(QuantType::Q4K.for_row(48), None);
    }
}

//! fastdllm-models: the LLaDA and Dream diffusion LLMs on candle, loaded from local Hugging Face
//! directories or llama.cpp GGUF files, with dense or quantized (GGML block) linear layers.
//!
//! Both are bidirectional transformers (no causal mask anywhere) that score every position of a
//! canvas; Fast-dLLM (arXiv 2505.22618, NVlabs/Fast-dLLM) accelerates them with an approximate
//! block-wise KV cache. This crate implements [`fastdllm_core::DiffusionLm`] for both:
//!
//! * [`LladaModel`] — GSAI-ML/LLaDA-8B (`LLaDAModelLM`, docs/ALGORITHM.md §1.1) and the
//!   mixture-of-experts inclusionAI/LLaDA-MoE-7B-A1B (`LLaDAMoEModelLM`, §1.4);
//! * [`DreamModel`] — Dream-org/Dream-v0-7B (`DreamModel`, docs/ALGORITHM.md §1.2), which applies
//!   Dream's logits shift itself so that every model returns aligned logits.
//!
//! The models are immutable (`&self` forward); K/V go through the [`fastdllm_core::KvView`] the
//! caller passes, once per layer, post-RoPE. Positions are explicit
//! ([`fastdllm_core::Positions`]), and the final norm and LM head run only for the rows the
//! caller asks for. Both architectures are one shared layer implementation (`layers/`) with
//! different tensor names and numerics.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use fastdllm_core::{ForwardInput, PassthroughKv, Positions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = fastdllm_models::load_model("fixtures/llada-tiny".as_ref(), &Device::Cpu, DType::F32)?;
//! let ids = loaded.tokenizer.encode("copy abc=", true)?;
//! let len = ids.len();
//! let input = ForwardInput {
//!     tokens: Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?,
//!     positions: Positions::Contiguous { start: 0 },
//!     window_start: 0,
//!     key_bias: None,
//!     logits_rows: (0..len).into(),
//! };
//! let logits = loaded.model.forward(&input, &mut PassthroughKv)?; // (1, len, vocab), f32
//! # let _ = logits;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod chat_template;
pub mod config;
pub mod dream;
pub mod error;
pub mod gguf;
pub mod gguf_check;
#[cfg(feature = "hub")]
pub mod hub;
pub(crate) mod layers;
pub mod llada;
mod llada_moe;
mod load;
pub mod quant;
pub mod tokenizer;
pub(crate) mod transformer;
pub mod weights;

pub use chat_template::{ChatTemplate, JinjaTemplate, Message, TemplateTokens};
pub use config::{
    load_config, read_generation_config, regular_file, DirDecodeDefaults, ModelConfig, MoeConfig,
    RawDreamConfig, RawGenerationConfig, RawLladaConfig, RawLladaMoeConfig, TokenIds,
};
pub use dream::DreamModel;
pub use error::{Error, Result};
pub use gguf::GgufFile;
pub use llada::LladaModel;
pub use load::{
    load_chat_template_file, load_model, load_model_with, random_model, random_model_with,
    LoadedModel, ModelInfo, DREAM_BOS_TOKEN,
};
pub use quant::{LoadOptions, QuantType};

/// Environment variable that sizes candle's own CPU worker pool (candle-core 0.11 `utils.rs`: its
/// spinning "barrier pool" for element-wise maps and quantized matmuls).
const CANDLE_THREADS_VAR: &str = "CANDLE_NUM_THREADS";

/// Runs every CPU op of a step on one thread pool, rayon's global one (sized by
/// `RAYON_NUM_THREADS`): sets `CANDLE_NUM_THREADS=1`, so that candle starts no worker threads of
/// its own and runs its element-wise maps and quantized kernels on the calling thread. The
/// parallel work is then rayon's: our GEMM (`layers/cpu_gemm.rs`), candle's dense matmul (gemm
/// with `Parallelism::Rayon`), its softmax, and the quantized layers' shards
/// (`layers/linear.rs`). Without it candle's workers spin at a barrier after every op while
/// rayon's threads hold the same cores, which under a CPU hog turns a short window forward into
/// a wait for a descheduled thread.
///
/// Call it at the start of `main`, before any thread is started and before the first tensor op
/// (candle reads the variable once, when its pool is first used); later calls change nothing.
pub fn use_one_thread_pool() {
    // `set_var` is not thread-safe: documented to be called before other threads exist.
    std::env::set_var(CANDLE_THREADS_VAR, "1");
}
pub use tokenizer::{IncrementalDecoder, Tokenizer};

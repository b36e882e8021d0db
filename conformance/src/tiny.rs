//! Tiny random-weight LLaDA / Dream models in the real tensor layout, built in memory with a
//! seed (no files), for property tests of the loop and the caches.

use std::sync::Arc;

use candle_core::{DType, Device};
use fastdllm_core::DiffusionLm;
use fastdllm_core::ModelFamily;
use fastdllm_models::ModelConfig;

/// Vocabulary of the tiny models (ids 0..VOCAB; the mask is [`MASK`]).
pub const VOCAB: usize = 48;
/// Mask id of the tiny models.
pub const MASK: u32 = 47;
/// EOS id of the tiny models.
pub const EOS: u32 = 46;
/// Pad id of the tiny models.
pub const PAD: u32 = 45;

/// A 2-layer LLaDA-shaped config (hidden 32, 4 heads of 8).
pub fn llada_config() -> ModelConfig {
    ModelConfig {
        family: ModelFamily::Llada,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 4,
        head_dim: 8,
        intermediate_size: 48,
        vocab_size: VOCAB,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        max_seq_len: 256,
        mask_token_id: MASK,
        eos_token_ids: vec![EOS],
        pad_token_id: PAD,
        bos_token_id: None,
        tie_word_embeddings: false,
    }
}

/// A 2-layer Dream-shaped config (hidden 32, 4 query heads over 2 KV heads).
pub fn dream_config() -> ModelConfig {
    ModelConfig {
        family: ModelFamily::Dream,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        intermediate_size: 48,
        vocab_size: VOCAB,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        max_seq_len: 256,
        mask_token_id: MASK,
        eos_token_ids: vec![EOS],
        pad_token_id: PAD,
        bos_token_id: None,
        tie_word_embeddings: false,
    }
}

/// A random-weight model (f32, CPU) for `config`, reproducible from `seed`.
pub fn model(config: &ModelConfig, seed: u64) -> Arc<dyn DiffusionLm> {
    fastdllm_models::random_model(config, &Device::Cpu, DType::F32, seed)
        .expect("random model builds")
}

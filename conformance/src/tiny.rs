//! Tiny random-weight LLaDA / LLaDA-MoE / Dream models in the real tensor layout, built in memory with a
//! seed (no files), for property tests of the loop and the caches; and a tiny byte-level BPE
//! tokenizer for tests of streaming text.

use std::sync::Arc;

use candle_core::{DType, Device};
use fastdllm_core::DiffusionLm;
use fastdllm_core::ModelFamily;
use fastdllm_models::{ModelConfig, Tokenizer};

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
        qk_norm: false,
        moe: None,
    }
}

/// A 2-layer LLaDA-MoE-shaped config: [`llada_config`] with QK-norm and 4 experts of 16, 2 per
/// token, in every layer.
pub fn llada_moe_config() -> ModelConfig {
    ModelConfig {
        intermediate_size: 16,
        qk_norm: true,
        moe: Some(fastdllm_models::MoeConfig {
            num_experts: 4,
            num_experts_per_tok: 2,
        }),
        ..llada_config()
    }
}

/// A 2-layer Dream-shaped config (hidden 32, 4 query heads over 2 KV heads).
pub fn dream_config() -> ModelConfig {
    ModelConfig {
        family: ModelFamily::Dream,
        num_kv_heads: 2,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        ..llada_config()
    }
}

/// A random-weight model (f32, CPU) for `config`, reproducible from `seed`.
pub fn model(config: &ModelConfig, seed: u64) -> Arc<dyn DiffusionLm> {
    fastdllm_models::random_model(config, &Device::Cpu, DType::F32, seed)
        .expect("random model builds")
}

/// The end-of-sequence token of [`byte_level_bpe`] (id 262).
pub const BPE_EOS_TOKEN: &str = "<|endoftext|>";
/// The mask token of [`byte_level_bpe`] (id 263).
pub const BPE_MASK_TOKEN: &str = "<|mask|>";

/// GPT-2's byte → character table of the ByteLevel pre-tokenizer / decoder.
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        table[b as usize] = char::from_u32(c).unwrap();
    }
    table
}

/// A byte-level BPE tokenizer (LLaDA's and Dream's kind) for streaming tests: the 256 byte tokens
/// (ids 0..256) plus merges that join some bytes *inside* multi-byte characters (the first two
/// bytes of `你` and of `😀`, the last two of `✓`), so that characters are spread over several
/// tokens (ids 256..262), plus two special tokens, [`BPE_EOS_TOKEN`] (id 262) and
/// [`BPE_MASK_TOKEN`] (id 263), which decoding skips.
pub fn byte_level_bpe() -> Tokenizer {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let table = byte_chars();
    let mut vocab = tokenizers::models::bpe::Vocab::new();
    for (id, c) in table.iter().enumerate() {
        vocab.insert(c.to_string(), id as u32);
    }
    let mut merges = Vec::new();
    let tok = |bytes: &[u8]| bytes.iter().map(|&b| table[b as usize]).collect::<String>();
    for (a, b) in [
        (&[0xE4][..], &[0xBD][..]), // 你 = E4 BD A0: "E4 BD" | "A0"
        (&[0xF0][..], &[0x9F][..]), // 😀 = F0 9F 98 80: "F0 9F" | "98" | "80"
        (&[0x9C][..], &[0x93][..]), // ✓ = E2 9C 93: "E2" | "9C 93"
        (&b"h"[..], &b"e"[..]),
        (&b"he"[..], &b"l"[..]),
        (&[0xC3][..], &[0xA9][..]), // é whole
    ] {
        let joined = [a, b].concat();
        vocab.insert(tok(&joined), vocab.len() as u32);
        merges.push((tok(a), tok(b)));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevelDecoder::default()));
    inner
        .add_special_tokens([
            tokenizers::AddedToken::from(BPE_EOS_TOKEN, true),
            tokenizers::AddedToken::from(BPE_MASK_TOKEN, true),
        ])
        .expect("adding two special tokens to an in-memory tokenizer");
    Tokenizer::from_inner(inner)
}

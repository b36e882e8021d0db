//! The tokenizer wrapper on the fixture tokenizer (FORMAT.md section 3) and the chat templates
//! (docs/ALGORITHM.md §1.1.4, §1.2.5).

mod common;

use common::TempDir;
use fastdllm_conformance::paths::bundled_model;
use fastdllm_models::{ChatTemplate, Tokenizer};

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&bundled_model("llada-tiny").join("tokenizer.json")).unwrap()
}

#[test]
fn encode_puts_bos_first() {
    let tok = tokenizer();
    assert_eq!(
        tok.encode("copy abc=", true).unwrap(),
        vec![51, 12, 24, 25, 34, 36, 10, 11, 12, 40]
    );
    assert_eq!(
        tok.encode("copy abc=", false).unwrap(),
        vec![12, 24, 25, 34, 36, 10, 11, 12, 40]
    );
}

#[test]
fn decode_skips_special_tokens() {
    let tok = tokenizer();
    assert_eq!(tok.decode(&[51, 1, 3, 50, 50, 52]).unwrap(), "13");
    assert_eq!(tok.decode(&[12, 24, 25, 34, 36, 10]).unwrap(), "copy a");
}

#[test]
fn vocabulary_lookups() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 64);
    assert_eq!(tok.token_id("<|mask|>"), Some(52));
    assert_eq!(tok.token_id("<|endoftext|>"), Some(50));
    assert_eq!(tok.token_id("<|im_end|>"), None);
    assert_eq!(tok.eos_token_ids(), vec![50]);
}

#[test]
fn missing_or_broken_tokenizer_file() {
    let dir = TempDir::new("tokenizer");
    let err = Tokenizer::from_file(&dir.file("tokenizer.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.json not found"), "{err}");
    std::fs::write(dir.file("tokenizer.json"), "{\"version\": ").unwrap();
    let err = Tokenizer::from_file(&dir.file("tokenizer.json"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("tokenizer ") && err.contains("tokenizer.json"),
        "{err}"
    );
}

#[test]
fn llada_template_is_llama3_with_bos() {
    assert_eq!(
        ChatTemplate::Llama3.apply("  What is 2+2?\n").unwrap(),
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert!(!ChatTemplate::Llama3.add_special_tokens());
}

#[test]
fn dream_template_is_chatml_with_default_system_prompt() {
    assert_eq!(
        ChatTemplate::ChatMl.apply("What is 2+2?").unwrap(),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert!(!ChatTemplate::ChatMl.add_special_tokens());
}

#[test]
fn no_template_encodes_raw_text_with_bos() {
    let tok = tokenizer();
    assert_eq!(ChatTemplate::None.apply("copy abc=").unwrap(), "copy abc=");
    assert_eq!(
        tok.encode_prompt("copy abc=", &ChatTemplate::None).unwrap(),
        tok.encode("copy abc=", true).unwrap()
    );
}

#[test]
fn templated_prompt_has_exactly_one_bos() {
    // The fixture tokenizer knows <|startoftext|> but none of the header tokens (those become
    // <|unk|> characters); what matters is that the template's BOS is not doubled.
    let tok = tokenizer();
    let ids = tok.encode_prompt("hi", &ChatTemplate::Llama3).unwrap();
    assert_eq!(ids[0], 51);
    assert_eq!(ids.iter().filter(|&&id| id == 51).count(), 1);
}

use fastdllm_conformance::tiny::byte_level_bpe;

#[test]
fn byte_level_tokenizer_splits_characters_across_tokens() {
    // The premise of the streaming test: decoding a prefix that ends inside a character gives
    // U+FFFD, which is what a block-by-block decode sent before the incremental decoder.
    let tok = byte_level_bpe();
    assert_eq!(
        tok.token_id(fastdllm_conformance::tiny::BPE_EOS_TOKEN),
        Some(262)
    );
    assert_eq!(
        tok.token_id(fastdllm_conformance::tiny::BPE_MASK_TOKEN),
        Some(263)
    );
    let ids = tok.encode("a你✓😀", false).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), "a你✓😀");
    assert!(ids.len() > 4, "{ids:?}");
    let broken = (1..ids.len()).filter(|&k| tok.decode(&ids[..k]).unwrap().contains('\u{FFFD}'));
    assert!(broken.count() >= 3);
}

fn streamed(tok: &Tokenizer, ids: &[u32], cuts: &[usize]) -> Vec<String> {
    let mut dec = tok.incremental_decoder();
    let mut chunks = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&ids.len())) {
        let end = end.clamp(start, ids.len());
        chunks.push(dec.push(tok, &ids[start..end]).unwrap());
        start = end;
    }
    chunks.push(dec.finish(tok).unwrap());
    chunks
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Any split of the ids into blocks: no chunk holds a broken character (U+FFFD), and the
    /// chunks joined equal the whole decoding byte for byte.
    #[test]
    fn incremental_decoding_never_splits_characters(
        text in "[a-z 你✓😀éß\n]{0,24}",
        mut cuts in proptest::collection::vec(0usize..40, 0..8),
    ) {
        let tok = byte_level_bpe();
        let ids = tok.encode(&text, false).unwrap();
        cuts.sort_unstable();
        let chunks = streamed(&tok, &ids, &cuts);
        for c in &chunks {
            proptest::prop_assert!(!c.contains('\u{FFFD}'), "chunk {:?} of {:?}", c, chunks);
        }
        let whole = tok.decode(&ids).unwrap();
        proptest::prop_assert_eq!(&whole, &text);
        proptest::prop_assert_eq!(chunks.concat(), whole);
    }
}

#[test]
fn incremental_decoding_block_by_block_example() {
    // Blocks of 2 tokens over "你✓": 你 is "E4 BD" + "A0", so the first block ends inside it.
    let tok = byte_level_bpe();
    let ids = tok.encode("你✓!", false).unwrap();
    let chunks = streamed(&tok, &ids, &[1, 2, 3]);
    assert_eq!(
        chunks[0], "",
        "the first token alone is an incomplete character"
    );
    assert_eq!(chunks.concat(), "你✓!");
    assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')));
}

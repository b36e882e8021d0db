//! The tokenizer wrapper on the fixture tokenizer (FORMAT.md section 3) and the chat templates
//! (SPEC 1.1.4, 1.2.5).

mod common;

use common::{fixture, TempDir};
use fastdllm_models::{ChatTemplate, Tokenizer};

fn tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixture("llada-tiny").join("tokenizer.json")).unwrap()
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
        ChatTemplate::Llama3.apply("  What is 2+2?\n"),
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert!(!ChatTemplate::Llama3.add_special_tokens());
}

#[test]
fn dream_template_is_chatml_with_default_system_prompt() {
    assert_eq!(
        ChatTemplate::ChatMl.apply("What is 2+2?"),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert!(!ChatTemplate::ChatMl.add_special_tokens());
}

#[test]
fn no_template_encodes_raw_text_with_bos() {
    let tok = tokenizer();
    assert_eq!(ChatTemplate::None.apply("copy abc="), "copy abc=");
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

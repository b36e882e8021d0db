//! The tokenizer wrapper and the chat templates of the Instruct checkpoints.
//!
//! Reference: Hugging Face `tokenizers` (0.23, `tokenizer.json`); the templates are LLaDA-8B-
//! Instruct's Llama-3 style template (SPEC 1.1.4) and Dream-v0-Instruct-7B's Qwen2.5 ChatML
//! template with the default system prompt (SPEC 1.2.5). Deviations: the templates are fixed
//! strings for one user message (the Jinja templates of `tokenizer_config.json` are not
//! interpreted); the LLaDA template writes the BOS itself, so a templated prompt is encoded
//! **without** the tokenizer's own special tokens (see [`Tokenizer::encode_prompt`]).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// LLaDA Instruct's BOS token, which its template writes itself.
pub const LLAMA3_BOS: &str = "<|startoftext|>";
/// Tokens the Llama-3 style template needs in the vocabulary.
pub const LLAMA3_TEMPLATE_TOKENS: [&str; 3] =
    ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];
/// Tokens the ChatML template needs in the vocabulary.
pub const CHATML_TEMPLATE_TOKENS: [&str; 2] = ["<|im_start|>", "<|im_end|>"];
/// Dream Instruct's default system prompt (Qwen2.5).
pub const CHATML_DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";
/// Special tokens that end an answer in the supported families (`<|endoftext|>` everywhere,
/// `<|eot_id|>` for LLaDA Instruct, `<|im_end|>` for Dream Instruct).
pub const EOS_TOKENS: [&str; 3] = ["<|endoftext|>", "<|eot_id|>", "<|im_end|>"];

/// How a user message becomes a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// LLaDA Instruct (Llama-3 style, BOS included):
    /// `<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n{message, trimmed}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n`.
    Llama3,
    /// Dream Instruct (Qwen2.5 ChatML with the default system prompt):
    /// `<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n`.
    ChatMl,
    /// Raw text (Base checkpoints, the tiny fixtures): the message is the prompt.
    None,
}

impl ChatTemplate {
    /// The templated prompt for one user message.
    pub fn apply(&self, user_message: &str) -> String {
        match self {
            ChatTemplate::Llama3 => format!(
                "{LLAMA3_BOS}<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n",
                user_message.trim()
            ),
            ChatTemplate::ChatMl => format!(
                "<|im_start|>system\n{CHATML_DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n\
                 {user_message}<|im_end|>\n<|im_start|>assistant\n"
            ),
            ChatTemplate::None => user_message.to_string(),
        }
    }

    /// Whether the templated text must be encoded with the tokenizer's own special tokens (BOS
    /// post-processor): only for raw text; a template writes its own.
    pub fn add_special_tokens(&self) -> bool {
        matches!(self, ChatTemplate::None)
    }
}

/// A `tokenizer.json` tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !crate::config::regular_file(path, "tokenizer (tokenizer.json)")? {
            return Err(Error::MissingFile {
                path: path.to_path_buf(),
                what: "the tokenizer (tokenizer.json) is required".to_string(),
            });
        }
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| Error::tokenizer(Some(path), e))?;
        Ok(Self {
            inner,
            path: Some(path.to_path_buf()),
        })
    }

    /// Wraps an already built tokenizer.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        Self { inner, path: None }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`; with `add_special_tokens` the post-processor runs (e.g. BOS first).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::tokenizer(None, e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The prompt ids of `user_message` under `template`: the template's text encoded without
    /// the tokenizer's special tokens, or the raw message with them for [`ChatTemplate::None`].
    pub fn encode_prompt(&self, user_message: &str, template: &ChatTemplate) -> Result<Vec<u32>> {
        self.encode(&template.apply(user_message), template.add_special_tokens())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::tokenizer(None, e))
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of `token` (a vocabulary entry or an added token).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether every token of `tokens` is in the vocabulary.
    pub fn has_tokens(&self, tokens: &[&str]) -> bool {
        tokens.iter().all(|t| self.token_id(t).is_some())
    }

    /// The ids of the end-of-answer tokens ([`EOS_TOKENS`]) this tokenizer has.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        EOS_TOKENS.iter().filter_map(|t| self.token_id(t)).collect()
    }
}

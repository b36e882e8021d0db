//! The tokenizer wrapper and its incremental (streaming) decoder.
//!
//! Reference: Hugging Face `tokenizers` (0.23, `tokenizer.json`; `DecodeStream` /
//! `step_decode_stream` for streaming). Chat templates live in [`crate::chat_template`]; a
//! templated prompt is encoded **without** the tokenizer's own special tokens (see
//! [`Tokenizer::encode_prompt`]).

use std::path::{Path, PathBuf};

use crate::chat_template::ChatTemplate;
use crate::{Error, Result};

/// Special tokens that end an answer in the supported families (`<|endoftext|>` everywhere,
/// `<|eot_id|>` for LLaDA Instruct, `<|im_end|>` for Dream Instruct).
pub const EOS_TOKENS: [&str; 3] = ["<|endoftext|>", "<|eot_id|>", "<|im_end|>"];

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

    /// The largest prompt text (bytes) that can fit in `max_seq_len` tokens: `max_seq_len` times
    /// the longest vocabulary entry in UTF-8 bytes (at least 4, one character). Every input byte
    /// of a byte-level BPE or character-level vocabulary is covered by a token of at most that
    /// many bytes, so a longer text has more than `max_seq_len` tokens and is refused before it
    /// is tokenized (the tokenizer's cost and memory grow with the text). Saturates instead of
    /// overflowing. Assumption: the normalizer does not delete input (none of the supported
    /// models' tokenizers does). Used by every front end (serve, generate, eval).
    pub fn prompt_byte_cap(&self, max_seq_len: usize) -> usize {
        let longest = self
            .inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max(4);
        max_seq_len.saturating_mul(longest)
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
        self.encode(
            &template.apply(user_message)?,
            template.add_special_tokens(),
        )
    }

    /// A streaming decoder over this tokenizer (special tokens skipped), see
    /// [`IncrementalDecoder`].
    pub fn incremental_decoder(&self) -> IncrementalDecoder {
        IncrementalDecoder::default()
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

/// Decodes ids as they arrive into text pieces that never split a character.
///
/// Byte-level BPE tokenizers (LLaDA's, Dream's) may spread one character's UTF-8 bytes over
/// several tokens; decoding a prefix that ends inside a character gives U+FFFD. This decoder
/// is tokenizers' `DecodeStream` (the same state, advanced by `tokenizers::step_decode_stream`),
/// owned so that it can live next to a request: [`IncrementalDecoder::push`] returns only text
/// that is final, holding back ids until their characters are complete, and the pieces joined
/// equal [`Tokenizer::decode`] of all ids (special tokens skipped), byte for byte; ids still
/// held come out with [`IncrementalDecoder::finish`].
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    /// The ids not yet drained: the "read" context, the last emitted piece, held ids.
    ids: Vec<u32>,
    /// The decoding of `ids[..prefix_index]`, trimmed off the next decoding.
    prefix: String,
    prefix_index: usize,
    /// Everything returned so far (what [`IncrementalDecoder::finish`] completes).
    emitted: String,
    /// Every id pushed (to decode the whole answer at the end).
    all: Vec<u32>,
    /// Set when a piece would not have extended the whole decoding: nothing more is emitted
    /// before `finish`.
    stalled: bool,
}

impl IncrementalDecoder {
    /// Adds `ids` and returns the text that became final (possibly empty).
    ///
    /// Errors: the tokenizer's decoding error.
    pub fn push(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        for &id in ids {
            self.all.push(id);
            let step = tokenizers::step_decode_stream(
                &**tokenizer.inner(),
                vec![id],
                true,
                &mut self.ids,
                &mut self.prefix,
                &mut self.prefix_index,
            );
            match step {
                Ok(Some(piece)) => out.push_str(&piece),
                Ok(None) => {}
                // The decoding of a longer window does not extend the previous one (not the case
                // for byte-level or Metaspace decoders): hold everything until `finish`, which
                // decodes the whole answer.
                Err(_) => self.stalled = true,
            }
        }
        let out = self.clamp(out, tokenizer)?;
        self.emitted.push_str(&out);
        Ok(out)
    }

    /// The rest of the text: the decoding of every pushed id minus what [`push`] returned.
    ///
    /// [`push`]: IncrementalDecoder::push
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let text = tokenizer.decode(&self.all)?;
        let rest = text
            .strip_prefix(self.emitted.as_str())
            .unwrap_or_default()
            .to_string();
        self.emitted.push_str(&rest);
        Ok(rest)
    }

    /// Everything returned so far.
    pub fn text(&self) -> &str {
        &self.emitted
    }

    /// Keeps `piece` only while the emitted text stays a prefix of the decoding of all ids, so
    /// that the pieces joined always equal the whole decoding (a decoder whose output for a
    /// longer sequence rewrites earlier text gets its pieces held until `finish`).
    fn clamp(&mut self, piece: String, tokenizer: &Tokenizer) -> Result<String> {
        if self.stalled || piece.is_empty() {
            return Ok(String::new());
        }
        let whole = tokenizer.decode(&self.all)?;
        let candidate_len = self.emitted.len() + piece.len();
        if whole.len() >= candidate_len
            && whole.starts_with(self.emitted.as_str())
            && whole[self.emitted.len()..].starts_with(piece.as_str())
        {
            Ok(piece)
        } else {
            self.stalled = true;
            Ok(String::new())
        }
    }
}

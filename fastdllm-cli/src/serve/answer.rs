//! Where an answer ends: the first end-of-sequence token, OpenAI's `max_tokens` and `stop`.
//!
//! A diffusion LLM decodes a canvas of whole blocks, so a request's `max_tokens` is rounded up to
//! whole blocks ([`super::api::Knobs::resolve_all`]) and the answer is cut here to the requested
//! count. `stop` strings cut the decoded text at the earliest match (the match itself is not
//! returned), as OpenAI does. While a row is still decoding, [`Cut::streamable`] holds back a
//! tail of the text that a later stop match could still cut, so a stream never sends text that
//! the final answer does not hold.
//!
//! Reference: OpenAI `POST /v1/completions` / `POST /v1/chat/completions` (`max_tokens`,
//! `max_completion_tokens`, `stop`, `finish_reason` `stop` | `length`).

use fastdllm_core::TokenId;
use fastdllm_models::Tokenizer;

use fastdllm_conformance::engine::trim_at_eos;

/// The limits of one choice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnswerLimits {
    /// Most answer tokens (`max_tokens` / `max_completion_tokens`, or the canvas length).
    pub max_tokens: usize,
    /// Stop strings (at most 4, none empty).
    pub stop: Vec<String>,
}

/// An answer cut at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The answer text (without the end-of-sequence token or the stop string).
    pub text: String,
    /// Answer tokens: up to the end-of-sequence token or `max_tokens`, or, cut by a stop string,
    /// up to the token that completed the match (OpenAI counts the stop sequence's tokens).
    pub completion_tokens: usize,
    /// `stop` (end-of-sequence token or stop string), `length` (`max_tokens` reached or the
    /// canvas complete), `None` while the answer may still grow.
    pub finish_reason: Option<&'static str>,
    /// The answer ended on `max_tokens` or a stop string (not on the model's own
    /// end-of-sequence token): the row needs no further blocks.
    pub by_limit: bool,
}

impl AnswerLimits {
    /// Cuts `ids` (the committed answer positions so far; all `gen_length` of them when
    /// `complete`) at the first id in `eos`, at `max_tokens`, then at the earliest stop string.
    pub fn cut(
        &self,
        tokenizer: &Tokenizer,
        eos: &[TokenId],
        ids: &[TokenId],
        complete: bool,
    ) -> Cut {
        let trimmed = trim_at_eos(ids, eos);
        let eos_found = trimmed.len() < ids.len();
        let (tokens, mut finish_reason, mut by_limit) = if trimmed.len() > self.max_tokens {
            (&trimmed[..self.max_tokens], Some("length"), true)
        } else if eos_found {
            (trimmed, Some("stop"), false)
        } else if trimmed.len() == self.max_tokens {
            (trimmed, Some("length"), true)
        } else if complete {
            (trimmed, Some("length"), false)
        } else {
            (trimmed, None, false)
        };
        let decode = |t: &[TokenId]| tokenizer.decode(t).unwrap_or_default();
        let mut text = decode(tokens);
        let mut completion_tokens = tokens.len();
        if let Some((at, len)) = first_stop(&text, &self.stop) {
            // The fewest tokens whose text holds the whole match (decoded prefixes grow with k).
            let end = at + len;
            let (mut lo, mut hi) = (1, tokens.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if decode(&tokens[..mid]).len() >= end {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            completion_tokens = hi;
            text.truncate(at);
            finish_reason = Some("stop");
            by_limit = true;
        }
        Cut {
            text,
            completion_tokens,
            finish_reason,
            by_limit,
        }
    }
}

impl Cut {
    /// The part of the answer a stream may send now: all of [`Cut::text`] once the answer is
    /// finished; before, `decoded` (the same tokens through the tokenizer's incremental decoder,
    /// [`fastdllm_models::IncrementalDecoder`], so whole characters only: with a byte-level BPE
    /// a character may continue in the next block) minus its longest tail that begins some stop
    /// string (a match that the next block could complete).
    pub fn streamable<'a>(&'a self, decoded: &'a str, stop: &[String]) -> &'a str {
        if self.finish_reason.is_some() {
            return &self.text;
        }
        &decoded[..decoded.len() - held_back(decoded, stop)]
    }
}

/// The earliest match of any stop string in `text`: (byte offset, match length).
pub fn first_stop(text: &str, stop: &[String]) -> Option<(usize, usize)> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s.len())))
        .min()
}

/// Bytes at the end of `text` that are a proper prefix of some stop string (0 if none).
pub fn held_back(text: &str, stop: &[String]) -> usize {
    let mut hold = 0;
    for s in stop {
        // Longest proper prefix of `s` that `text` ends with, on character boundaries.
        for (i, _) in s.char_indices().skip(1) {
            if i > hold && text.ends_with(&s[..i]) {
                hold = i;
            }
        }
    }
    hold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn earliest_stop_wins() {
        let st = stops(&["Question:", "\n\n", "4"]);
        assert_eq!(first_stop("12 4\n\nQuestion:", &st), Some((3, 1)));
        assert_eq!(first_stop("12\n\nQuestion:", &st), Some((2, 2)));
        assert_eq!(first_stop("12", &st), None);
        assert_eq!(first_stop("12", &[]), None);
    }

    #[test]
    fn holds_back_a_possible_partial_match() {
        let st = stops(&["Question:", "\n\n"]);
        assert_eq!(held_back("13\nQues", &st), 4);
        assert_eq!(held_back("13\n", &st), 1);
        assert_eq!(held_back("13", &st), 0);
        // A complete match is not "partial": first_stop cuts it instead.
        assert_eq!(held_back("13 Question:", &st), 0);
        // Multi-byte stop strings are held back on character boundaries.
        let st = stops(&["äb"]);
        assert_eq!(held_back("xä", &st), "ä".len());
        let cut = Cut {
            text: "13\nQues".into(),
            completion_tokens: 3,
            finish_reason: None,
            by_limit: false,
        };
        assert_eq!(cut.streamable("13\nQues", &stops(&["Question:"])), "13\n");
        let done = Cut {
            finish_reason: Some("length"),
            ..cut
        };
        assert_eq!(
            done.streamable("13\nQues", &stops(&["Question:"])),
            "13\nQues"
        );
    }
}

//! Where an answer ends: the first end-of-sequence token, `max_tokens` and stop strings, and
//! when it is final.
//!
//! A diffusion LLM decodes a canvas of whole blocks; the answer is the canvas cut at the first
//! end-of-sequence id, at `max_tokens` and at the earliest stop string (the match itself is not
//! returned, as in OpenAI's API). Committed positions never change, so once the answer's end is
//! committed *and every position before it is committed*, later blocks cannot change it: the
//! answer is **final** and, with [`Finish::Answer`] (the default), the row leaves the batch at
//! once. [`Finish::Canvas`] decodes the whole canvas as the reference does (NFE equal to the
//! reference's; the golden cases run so). See docs/ALGORITHM.md §2.7 (stopping and trimming).
//!
//! Reference: NVlabs/Fast-dLLM decodes every block of the canvas and trims the text at the
//! end-of-sequence token afterwards; OpenAI `max_tokens`, `stop`, `finish_reason`.

use fastdllm_core::{TokenId, TokenLogprobs};
use fastdllm_models::Tokenizer;

use crate::error::{Error, Result};
use crate::settings::Param;

/// When a row stops decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// As soon as the answer is final (its end committed and every position before it): the
    /// row leaves the batch and its remaining blocks are not decoded.
    #[default]
    Answer,
    /// After the whole canvas, as the reference (its NFE and every canvas position equal the
    /// reference's).
    Canvas,
}

/// The limits of one answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct AnswerLimits {
    /// Most answer tokens (`max_tokens`); `None` = the canvas (`gen_length`).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Stop strings, none empty: the answer ends before the earliest match.
    #[serde(default)]
    pub stop: Vec<String>,
    /// When the row stops decoding.
    #[serde(default)]
    pub finish: Finish,
}

/// Why an answer ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model's end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens`, or the canvas ended first.
    Length,
}

impl FinishReason {
    /// `"stop"` or `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// A row's answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Answer {
    /// The answer's ids (up to its end, without the end-of-sequence id).
    pub token_ids: Vec<TokenId>,
    /// The answer text (without the end-of-sequence token or the stop string); `None` when the
    /// batch has no tokenizer.
    pub text: Option<String>,
    /// Answer tokens: up to the end-of-sequence token or `max_tokens`, or, cut by a stop string,
    /// up to the token that completed the match (OpenAI counts the stop sequence's tokens).
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Forwards the row took part in.
    pub nfe: usize,
    /// With [`crate::RowEvents::logprobs`]: one entry per answer token (`completion_tokens` of
    /// them), its commit-time log-probability and alternatives (for a diffusion model, the
    /// distribution the position was unmasked from, not a left-to-right likelihood).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<AnswerLogprob>>,
}

/// A token with its text and natural-log probability (an entry of [`AnswerLogprob`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LogprobToken {
    /// The id.
    pub id: TokenId,
    /// The token decoded alone (special tokens skipped: empty); empty without a tokenizer.
    pub text: String,
    /// Its natural-log probability.
    pub logprob: f64,
}

/// One answer token's commit-time log-probability and the most likely tokens at its commit
/// ([`TokenLogprobs`] with text), as OpenAI's `logprobs` report them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AnswerLogprob {
    /// The committed token.
    pub token: LogprobToken,
    /// The most likely tokens at its commit, most likely first.
    pub top: Vec<LogprobToken>,
}

impl AnswerLogprob {
    /// `lp` with each token decoded alone by `tokenizer` (text left empty without one).
    pub fn new(lp: &TokenLogprobs, tokenizer: Option<&Tokenizer>) -> Self {
        let token = |id: TokenId, logprob: f64| LogprobToken {
            id,
            text: tokenizer
                .and_then(|t| t.decode(&[id]).ok())
                .unwrap_or_default(),
            logprob,
        };
        AnswerLogprob {
            token: token(lp.token, lp.logprob),
            top: lp.top.iter().map(|&(id, l)| token(id, l)).collect(),
        }
    }
}

impl AnswerLimits {
    /// Checks `max_tokens >= 1` and that no stop string is empty.
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == Some(0) {
            return Err(Error::setting(
                Param::MaxTokens,
                "max_tokens must be >= 1, got 0",
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(Error::setting(Param::Stop, "a stop string is empty"));
        }
        Ok(())
    }

    /// Where the answer in `ids` (the contiguous committed answer positions so far, all of
    /// them when `complete`) ends by tokens alone: the first id in `eos`, else `max_tokens`,
    /// else the end of a complete canvas. `None` while it may still grow.
    pub fn token_end(
        &self,
        ids: &[TokenId],
        eos: &[TokenId],
        complete: bool,
    ) -> Option<(usize, FinishReason)> {
        let trimmed = trim_at_eos(ids, eos).len();
        let max = self.max_tokens.unwrap_or(usize::MAX);
        if trimmed > max {
            Some((max, FinishReason::Length))
        } else if trimmed < ids.len() {
            Some((trimmed, FinishReason::Stop))
        } else if trimmed == max || complete {
            Some((trimmed, FinishReason::Length))
        } else {
            None
        }
    }

    /// Cuts `ids` (as in [`AnswerLimits::token_end`]) at the end-of-sequence id, at
    /// `max_tokens`, then at the earliest stop string in the decoded text.
    ///
    /// Errors: the tokenizer's decoding error.
    pub fn cut(
        &self,
        tokenizer: &Tokenizer,
        eos: &[TokenId],
        ids: &[TokenId],
        complete: bool,
    ) -> Result<Cut> {
        let (end, mut finish_reason) = match self.token_end(ids, eos, complete) {
            Some((end, why)) => (end, Some(why)),
            None => (trim_at_eos(ids, eos).len(), None),
        };
        let tokens = &ids[..end];
        let decode = |t: &[TokenId]| {
            tokenizer
                .decode(t)
                .map_err(|e| Error::Decode(e.to_string()))
        };
        let mut text = decode(tokens)?;
        let mut completion_tokens = tokens.len();
        if let Some((at, len)) = first_stop(&text, &self.stop) {
            // The fewest tokens whose text holds the whole match (decoded prefixes grow with k).
            let end = at + len;
            let (mut lo, mut hi) = (1, tokens.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if decode(&tokens[..mid])?.len() >= end {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            completion_tokens = hi;
            text.truncate(at);
            finish_reason = Some(FinishReason::Stop);
        }
        Ok(Cut {
            text,
            completion_tokens,
            finish_reason,
        })
    }
}

/// An answer cut at its end ([`AnswerLimits::cut`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The answer text (without the end-of-sequence token or the stop string).
    pub text: String,
    /// Answer tokens (see [`Answer::completion_tokens`]).
    pub completion_tokens: usize,
    /// Why it ended; `None` while the answer may still grow.
    pub finish_reason: Option<FinishReason>,
}

impl Cut {
    /// The part of the answer a stream may send now: all of [`Cut::text`] once the answer is
    /// final; before, `decoded` (the same tokens through the tokenizer's incremental decoder,
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

/// The answer up to (not including) the first end-of-sequence id.
pub fn trim_at_eos<'a>(generated: &'a [TokenId], eos: &[TokenId]) -> &'a [TokenId] {
    let end = generated
        .iter()
        .position(|t| eos.contains(t))
        .unwrap_or(generated.len());
    &generated[..end]
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
        };
        assert_eq!(cut.streamable("13\nQues", &stops(&["Question:"])), "13\n");
        let done = Cut {
            finish_reason: Some(FinishReason::Length),
            ..cut
        };
        assert_eq!(
            done.streamable("13\nQues", &stops(&["Question:"])),
            "13\nQues"
        );
    }

    #[test]
    fn token_end_is_final_only_when_the_end_is_committed() {
        let lim = AnswerLimits::default();
        // 9 = EOS. The committed prefix 1 2 has no end yet.
        assert_eq!(lim.token_end(&[1, 2], &[9], false), None);
        assert_eq!(
            lim.token_end(&[1, 2, 9], &[9], false),
            Some((2, FinishReason::Stop))
        );
        assert_eq!(
            lim.token_end(&[1, 2], &[9], true),
            Some((2, FinishReason::Length))
        );
        let lim = AnswerLimits {
            max_tokens: Some(2),
            ..Default::default()
        };
        assert_eq!(
            lim.token_end(&[1, 2], &[9], false),
            Some((2, FinishReason::Length))
        );
        assert_eq!(
            lim.token_end(&[1, 2, 3, 9], &[9], false),
            Some((2, FinishReason::Length))
        );
        assert_eq!(
            lim.token_end(&[1, 9], &[9], false),
            Some((1, FinishReason::Stop))
        );
    }

    #[test]
    fn limits_are_validated() {
        let zero = AnswerLimits {
            max_tokens: Some(0),
            ..Default::default()
        };
        assert_eq!(zero.validate().unwrap_err().param(), Some(Param::MaxTokens));
        let empty = AnswerLimits {
            stop: vec![String::new()],
            ..Default::default()
        };
        assert_eq!(empty.validate().unwrap_err().param(), Some(Param::Stop));
    }
}

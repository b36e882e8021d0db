//! Validated generation settings (docs/ALGORITHM.md §2.1) and the block layout.

use crate::model::ModelSpec;
use crate::{Error, Result, TokenId};

/// The paper's generation knobs. Build one, then call [`DecodeConfig::validate`]; every
/// precondition the reference asserts is an error here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecodeConfig {
    /// `G`: answer positions, all starting as the mask token.
    pub gen_length: usize,
    /// `B`: block size; the answer is decoded in `G / B` blocks, left to right.
    pub block_length: usize,
    /// Total denoising steps for count schedules; must be a multiple of `G / B`.
    pub steps: usize,
    /// Commit exactly the block start from each block's first (full) forward. `None` = what the
    /// family's reference does: yes for shifted-logit models (Dream's block path), no for LLaDA.
    /// Dream's original sampler sets `Some(false)`.
    #[serde(default)]
    pub force_block_start: Option<bool>,
    /// Safety cap on forwards per block; `None` = `block_length + steps_per_block + 1`, which no
    /// correct policy reaches. Independent of `steps` (docs/ALGORITHM.md §2.7, step cap variants).
    #[serde(default)]
    pub max_steps_per_block: Option<usize>,
}

impl Default for DecodeConfig {
    /// The reference's LLaDA defaults (`gen_length` 128, one block of 128, 128 steps).
    fn default() -> Self {
        DecodeConfig {
            gen_length: 128,
            block_length: 128,
            steps: 128,
            force_block_start: None,
            max_steps_per_block: None,
        }
    }
}

impl DecodeConfig {
    /// Checks the preconditions of docs/ALGORITHM.md §2.1.
    pub fn validate(&self) -> Result<()> {
        if self.gen_length == 0 {
            return Err(Error::setting("gen_length", 0, "must be >= 1"));
        }
        if self.block_length == 0 {
            return Err(Error::setting("block_length", 0, "must be >= 1"));
        }
        if !self.gen_length.is_multiple_of(self.block_length) {
            return Err(Error::setting(
                "gen_length",
                self.gen_length,
                format!("must be a multiple of block_length = {}", self.block_length),
            ));
        }
        let blocks = self.num_blocks();
        if self.steps == 0 || !self.steps.is_multiple_of(blocks) {
            return Err(Error::setting(
                "steps",
                self.steps,
                format!(
                    "must be a positive multiple of the number of blocks gen_length / block_length = {blocks}"
                ),
            ));
        }
        if self.max_steps_per_block == Some(0) {
            return Err(Error::setting("max_steps_per_block", 0, "must be >= 1"));
        }
        if self.max_steps_per_block.is_none() {
            let cap = Error::checked_add(
                "step cap block_length + steps / blocks",
                self.block_length,
                self.steps_per_block(),
            )?;
            Error::checked_add("step cap block_length + steps / blocks + 1", cap, 1)?;
        }
        Ok(())
    }

    /// `K = G / B`.
    pub fn num_blocks(&self) -> usize {
        self.gen_length / self.block_length.max(1)
    }

    /// `steps / K`.
    pub fn steps_per_block(&self) -> usize {
        self.steps / self.num_blocks().max(1)
    }

    /// The effective safety cap ([`DecodeConfig::validate`] checks that it fits in `usize`;
    /// unvalidated configs saturate).
    pub fn step_cap(&self) -> usize {
        self.max_steps_per_block.unwrap_or(
            self.block_length
                .saturating_add(self.steps_per_block())
                .saturating_add(1),
        )
    }

    /// Whether rows with `self` and `other` can decode side by side in one
    /// [`crate::BlockBatch`]: the same block length, steps per block, step cap and block-start
    /// rule (the answer lengths may differ).
    pub fn shares_blocks_with(&self, other: &DecodeConfig) -> bool {
        self.block_length == other.block_length
            && self.steps_per_block() == other.steps_per_block()
            && self.step_cap() == other.step_cap()
            && self.force_block_start == other.force_block_start
    }

    /// Whether block starts are force-committed for `spec`.
    pub fn forces_block_start(&self, spec: &ModelSpec) -> bool {
        self.force_block_start.unwrap_or(spec.shifted_logits())
    }

    /// Checks a prompt against the model: non-empty, ids in the vocabulary, and
    /// `prompt + gen_length` within the model's maximum length ([`Error::InvalidPrompt`]; an
    /// overflowing sum is [`Error::SizeOverflow`]).
    pub fn validate_prompt(&self, spec: &ModelSpec, prompt: &[TokenId]) -> Result<()> {
        if prompt.is_empty() {
            return Err(Error::InvalidPrompt(
                "the prompt is empty (at least 1 token)".into(),
            ));
        }
        if let Some((i, &id)) = prompt
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= spec.vocab_size)
        {
            return Err(Error::InvalidPrompt(format!(
                "token id {id} at prompt index {i} is out of the vocabulary (allowed 0..{})",
                spec.vocab_size
            )));
        }
        let total = Error::checked_add("prompt + gen_length", prompt.len(), self.gen_length)?;
        if total > spec.max_seq_len {
            return Err(Error::InvalidPrompt(format!(
                "prompt length {} + gen_length {} = {total} exceeds the model's maximum sequence length {}",
                prompt.len(),
                self.gen_length,
                spec.max_seq_len
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(g: usize, b: usize, s: usize) -> DecodeConfig {
        DecodeConfig {
            gen_length: g,
            block_length: b,
            steps: s,
            ..Default::default()
        }
    }

    #[test]
    fn preconditions_are_errors() {
        assert!(cfg(32, 8, 32).validate().is_ok());
        let e = cfg(30, 8, 32).validate().unwrap_err().to_string();
        assert!(
            e.contains("gen_length = 30") && e.contains("multiple of block_length = 8"),
            "{e}"
        );
        let e = cfg(32, 8, 6).validate().unwrap_err().to_string();
        assert!(e.contains("steps = 6") && e.contains("= 4"), "{e}");
        assert!(cfg(0, 8, 8).validate().is_err());
        assert!(cfg(8, 0, 8).validate().is_err());
    }
}

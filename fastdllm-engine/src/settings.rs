//! Generation settings: everything that decides a row's output, checked by the libraries' own
//! validators, and the rule for which rows can share a running batch.

use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_core::{DecodeConfig, ModelFamily, Rng};
use fastdllm_sampler::{ProposerConfig, Unmask};

use crate::answer::AnswerLimits;
use crate::error::{Error, Result};

/// A generation knob as users name it (OpenAI's and the paper's vocabulary). Front ends spell
/// it their way: the server as the JSON field ([`Param::name`]: `max_tokens`), the CLI as the
/// flag ([`Param::flag`]: `--max-tokens`), so an error names what the user actually sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Param {
    /// OpenAI's answer limit in tokens.
    MaxTokens,
    /// OpenAI's newer name of `max_tokens` (chat).
    MaxCompletionTokens,
    /// Answer positions G of the canvas.
    GenLength,
    /// Block size B.
    BlockLength,
    /// Denoising steps of fixed schedules.
    Steps,
    /// Cache approximation.
    Cache,
    /// Cache refresh interval inside a block.
    RefreshEvery,
    /// Threshold rule.
    Threshold,
    /// Factor rule.
    Factor,
    /// An unmasking rule by its label (`fixed`, `threshold=0.9`, `dream_timesteps`, ...).
    Unmask,
    /// Sampling temperature.
    Temperature,
    /// Nucleus filter.
    TopP,
    /// Top-k filter.
    TopK,
    /// LLaDA's confidence (`low_confidence`, `random`).
    Remasking,
    /// Dream's score of count schedules (Dream's `alg`).
    Alg,
    /// Dream's original no-cache sampler.
    DreamOriginal,
    /// Seed of the random streams.
    Seed,
    /// Stop strings.
    Stop,
    /// When a row stops decoding (`answer`, `canvas`).
    Finish,
}

impl Param {
    /// The name in requests and messages (`max_tokens`).
    pub fn name(self) -> &'static str {
        match self {
            Param::MaxTokens => "max_tokens",
            Param::MaxCompletionTokens => "max_completion_tokens",
            Param::GenLength => "gen_length",
            Param::BlockLength => "block_length",
            Param::Steps => "steps",
            Param::Cache => "cache",
            Param::RefreshEvery => "refresh_every",
            Param::Threshold => "threshold",
            Param::Factor => "factor",
            Param::Unmask => "unmask",
            Param::Temperature => "temperature",
            Param::TopP => "top_p",
            Param::TopK => "top_k",
            Param::Remasking => "remasking",
            Param::Alg => "alg",
            Param::DreamOriginal => "dream_original",
            Param::Seed => "seed",
            Param::Stop => "stop",
            Param::Finish => "finish",
        }
    }

    /// The command-line flag (`--max-tokens`).
    pub fn flag(self) -> String {
        format!("--{}", self.name().replace('_', "-"))
    }
}

impl std::fmt::Display for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that decides a generation's output.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerationSettings {
    /// gen_length, block_length, steps.
    pub decode: DecodeConfig,
    /// Cache approximation and refresh schedule.
    pub cache: CacheSettings,
    /// Unmasking rule.
    pub unmask: Unmask,
    /// Proposal and confidence.
    pub proposer: ProposerConfig,
    /// Seed of every row's random stream (Gumbel noise, random confidences).
    pub seed: u64,
    /// Where the answer ends (`max_tokens`, stop strings) and whether the row leaves the batch
    /// once its answer is final ([`crate::Finish`]).
    #[serde(default)]
    pub limits: AnswerLimits,
}

impl GenerationSettings {
    /// Checks every part with the libraries' own validators, and the combinations a model
    /// cannot use.
    ///
    /// Errors: the first invalid part ([`Error::Core`], [`Error::Cache`], [`Error::Sampler`],
    /// [`Error::Setting`] for the answer limits), or Dream's original sampler with a cache.
    pub fn validate(&self, family: ModelFamily) -> Result<()> {
        self.decode.validate()?;
        self.cache.validate()?;
        self.unmask.validate()?;
        self.proposer.validate()?;
        self.limits.validate()?;
        if self.decode.force_block_start == Some(false)
            && family == ModelFamily::Dream
            && self.cache.mode != CacheMode::Off
        {
            return Err(Error::setting(
                Param::Cache,
                format!(
                    "cache mode '{}' cannot be used with Dream's original sampler (it scores the block \
                     start from a cached window, whose first row has no valid logits); use cache none",
                    self.cache.mode
                ),
            ));
        }
        Ok(())
    }

    /// These settings with the canvas shrunk to at most `room` answer positions, as OpenAI
    /// servers answer a request without `max_tokens` "in the room left in the context": whole
    /// blocks of `block_length` (Dream's original sampler, one block of `gen_length`, shrinks
    /// that block to `room`), count-schedule steps at the same rate per block (`steps / blocks`
    /// steps in every remaining block). A canvas that already fits is returned unchanged.
    ///
    /// `None` when not even one block fits (`room < block_length`, or `room == 0`).
    pub fn fit_canvas(&self, room: usize) -> Option<GenerationSettings> {
        let d = &self.decode;
        if d.gen_length <= room {
            return Some(self.clone());
        }
        let mut out = self.clone();
        if d.force_block_start == Some(false) {
            // One block: the whole answer.
            if room == 0 {
                return None;
            }
            out.decode.gen_length = room;
            out.decode.block_length = room;
            out.decode.steps = d.steps.min(room);
            return Some(out);
        }
        let blocks = room / d.block_length.max(1);
        if blocks == 0 {
            return None;
        }
        let per_block = d.steps / d.num_blocks().max(1);
        out.decode.gen_length = blocks * d.block_length;
        out.decode.steps = per_block.max(1) * blocks;
        Some(out)
    }

    /// Label for reports: `cache/rule`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.cache.label(), self.unmask.label())
    }
}

/// The seeds of rows `first .. first + n` of a run seeded with `seed`: row `i` draws from
/// [`Rng::row_seed`]`(seed, i)`, so the rows of a batch of identical prompts get distinct noise
/// (the reference draws separate noise per row) and row 0 keeps `seed` itself (a batch of one
/// reproduces the single-prompt goldens).
pub fn row_seeds(seed: u64, first: usize, n: usize) -> Vec<u64> {
    (first..first + n).map(|i| Rng::row_seed(seed, i)).collect()
}

/// Whether two settings can share a running batch ([`crate::Batch`]): the same cache settings
/// and proposer, decode settings that [share blocks](DecodeConfig::shares_blocks_with) (the
/// answer length may differ), and for Dream the same score; the unmasking rule, the seed and
/// the answer limits may differ per row.
pub fn batch_compatible(
    a: &GenerationSettings,
    b: &GenerationSettings,
    family: ModelFamily,
) -> bool {
    a.decode.shares_blocks_with(&b.decode)
        && a.cache == b.cache
        && a.proposer == b.proposer
        && (family != ModelFamily::Dream || a.unmask.dream_score() == b.unmask.dream_score())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(gen_length: usize, block_length: usize, steps: usize) -> GenerationSettings {
        GenerationSettings {
            decode: DecodeConfig {
                gen_length,
                block_length,
                steps,
                force_block_start: None,
                max_steps_per_block: None,
            },
            cache: CacheSettings::new(CacheMode::Off),
            unmask: Unmask::Fixed,
            proposer: ProposerConfig::default(),
            seed: 0,
            limits: AnswerLimits::default(),
        }
    }

    #[test]
    fn fit_canvas_keeps_whole_blocks_and_the_step_rate() {
        let s = settings(256, 32, 128);
        assert_eq!(s.fit_canvas(256), Some(s.clone()));
        let fit = s.fit_canvas(100).unwrap();
        assert_eq!(
            (
                fit.decode.gen_length,
                fit.decode.block_length,
                fit.decode.steps
            ),
            (96, 32, 48)
        );
        fit.validate(ModelFamily::Llada).unwrap();
        assert_eq!(s.fit_canvas(31), None);
        assert_eq!(s.fit_canvas(0), None);
        // Dream's original sampler: one block, shrunk to the room.
        let mut one = settings(64, 64, 64);
        one.decode.force_block_start = Some(false);
        let fit = one.fit_canvas(10).unwrap();
        assert_eq!(
            (
                fit.decode.gen_length,
                fit.decode.block_length,
                fit.decode.steps
            ),
            (10, 10, 10)
        );
        assert_eq!(one.fit_canvas(0), None);
    }
}

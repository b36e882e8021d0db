//! One-shot generation: a batch of prompts admitted together and run to the end.

use fastdllm_core::{DiffusionLm, GenerateOptions, RowOutput, TokenId, Trace};
use fastdllm_models::Tokenizer;
use fastdllm_sampler::Unmask;

use crate::answer::Answer;
use crate::batch::{Batch, RowEvents, RowSink};
use crate::error::{Error, Result};
use crate::settings::{row_seeds, GenerationSettings};

/// The result of [`run()`] / [`run_rows`].
#[derive(Debug, Clone)]
pub struct Generated {
    /// Each prompt's canvas output, in order (with [`crate::Finish::Answer`], answer positions
    /// after the answer's end may still be the mask id).
    pub rows: Vec<RowOutput>,
    /// Each prompt's answer, in order.
    pub answers: Vec<Answer>,
    /// Forward calls made for the whole batch.
    pub nfe: usize,
    /// Per-step records, if requested.
    pub trace: Option<Trace>,
}

/// Runs one batch of `prompts` with `settings`; `seeds` has one seed per prompt (a row's
/// output depends on its own seed only). Answers carry ids only (no tokenizer); see
/// [`run_rows`] for text and stop strings.
///
/// Errors: invalid settings or prompts, mismatched argument lengths, the loop's errors.
pub fn run(
    model: &dyn DiffusionLm,
    prompts: &[Vec<TokenId>],
    seeds: &[u64],
    settings: &GenerationSettings,
    opts: &GenerateOptions,
) -> Result<Generated> {
    let unmasks = vec![settings.unmask; prompts.len()];
    run_rows(
        model,
        None,
        prompts,
        &unmasks,
        seeds,
        settings,
        opts,
        &mut |_, _| {},
    )
}

/// Runs one batch of `prompts` with one `settings` for every row, row `r` seeded
/// [`row_seeds`]`(settings.seed, 0, n)[r]` (row 0 keeps the seed itself): what `fastdllm
/// generate` and the Python package's `Model.generate` run. `tokenizer` decodes answers (and is
/// needed for stop strings); events go to `sink`.
///
/// Errors: as [`run_rows`].
pub fn run_batch(
    model: &dyn DiffusionLm,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Vec<TokenId>],
    settings: &GenerationSettings,
    opts: &GenerateOptions,
    sink: &mut dyn RowSink,
) -> Result<Generated> {
    let seeds = row_seeds(settings.seed, 0, prompts.len());
    let unmasks = vec![settings.unmask; prompts.len()];
    run_rows(
        model, tokenizer, prompts, &unmasks, &seeds, settings, opts, sink,
    )
}

/// Runs one batch whose rows have their own unmasking rule (`unmasks[r]`) and seed
/// (`seeds[r]`); the rest of `settings` is shared, and `settings.unmask` is ignored except for
/// Dream's score. Each row's output equals its solo output. `tokenizer` decodes answers (and
/// is needed for stop strings); events go to `sink`, rows in prompt order from id 0.
///
/// Errors: as [`run()`]; [`Error::Cancelled`] when `sink` cancelled a row.
#[allow(clippy::too_many_arguments)]
pub fn run_rows(
    model: &dyn DiffusionLm,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Vec<TokenId>],
    unmasks: &[Unmask],
    seeds: &[u64],
    settings: &GenerationSettings,
    opts: &GenerateOptions,
    sink: &mut dyn RowSink,
) -> Result<Generated> {
    if seeds.len() != prompts.len() || unmasks.len() != prompts.len() {
        return Err(Error::Arguments(format!(
            "{} seeds and {} unmasking rules for {} prompts",
            seeds.len(),
            unmasks.len(),
            prompts.len()
        )));
    }
    if prompts.is_empty() {
        return Err(Error::Arguments("the batch has no prompt".into()));
    }
    let mut batch = Batch::new(model, tokenizer, settings, *opts)?;
    for ((p, u), &seed) in prompts.iter().zip(unmasks).zip(seeds) {
        let row = GenerationSettings {
            unmask: *u,
            seed,
            ..settings.clone()
        };
        batch.admit(p, &row, RowEvents::default())?;
    }
    let mut rows: Vec<Option<(RowOutput, Answer)>> = vec![None; prompts.len()];
    while !batch.is_empty() {
        for done in batch.run_block(sink)? {
            rows[done.id] = Some((done.output, done.answer));
        }
    }
    let (rows, answers) = rows
        .into_iter()
        .enumerate()
        .map(|(id, r)| r.ok_or(Error::Cancelled(id)))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    Ok(Generated {
        rows,
        answers,
        nfe: batch.forwards(),
        trace: batch.take_trace(),
    })
}

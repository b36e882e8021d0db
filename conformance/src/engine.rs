//! Settings → policies → [`fastdllm_core::generate()`]: the one place the crates are wired.

use anyhow::{bail, Context, Result};
use fastdllm_cache::{BlockCache, CacheMode, CacheSettings};
use fastdllm_core::{
    BlockBatch, Control, DecodeConfig, Decoder, DiffusionLm, FinishedRow, GenerateOptions,
    Generation, ModelFamily, Proposer, Rng, RowId, RowOutput, StepEvent, TokenId,
};
use fastdllm_sampler::{PerRow, ProposerConfig, Unmask};

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
}

impl GenerationSettings {
    /// Checks every part and the combinations a model cannot use.
    pub fn validate(&self, family: ModelFamily) -> Result<()> {
        self.decode.validate()?;
        self.cache.validate()?;
        self.unmask.validate()?;
        self.proposer.validate()?;
        if self.decode.force_block_start == Some(false)
            && family == ModelFamily::Dream
            && self.cache.mode != CacheMode::Off
        {
            bail!(
                "cache mode '{}' cannot be used with Dream's original sampler (it scores the block start \
                 from a cached window, whose first row has no valid logits); use --cache none",
                self.cache.mode
            );
        }
        Ok(())
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

/// Runs one batch. `seeds` has one seed per prompt (a row's output depends on its own seed only).
pub fn run(
    model: &dyn DiffusionLm,
    prompts: &[Vec<TokenId>],
    seeds: &[u64],
    settings: &GenerationSettings,
    opts: &GenerateOptions,
) -> Result<Generation> {
    let unmasks = vec![settings.unmask; prompts.len()];
    run_rows(model, prompts, &unmasks, seeds, settings, opts, &mut |_| {
        Control::Continue
    })
}

/// Whether two settings can share a batch ([`run_rows`], [`Session`]): the same cache settings
/// and proposer, decode settings that [share blocks](DecodeConfig::shares_blocks_with) (the
/// answer length may differ), and for Dream the same score; the unmasking rule and the seed may
/// differ (see [`fastdllm_sampler::ProposerConfig::build`]).
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

/// Runs one batch whose rows have their own unmasking rule (`unmasks[r]`) and seed (`seeds[r]`);
/// the rest of `settings` (decode config, cache, proposer) is shared, and `settings.unmask` is
/// ignored except for Dream's score. Each row's output equals its solo output. `on_step` is
/// called after every step ([`fastdllm_core::generate_with`]).
pub fn run_rows(
    model: &dyn DiffusionLm,
    prompts: &[Vec<TokenId>],
    unmasks: &[Unmask],
    seeds: &[u64],
    settings: &GenerationSettings,
    opts: &GenerateOptions,
    on_step: &mut dyn FnMut(&StepEvent<'_>) -> Control,
) -> Result<Generation> {
    if seeds.len() != prompts.len() || unmasks.len() != prompts.len() {
        bail!(
            "{} seeds and {} unmasking rules for {} prompts",
            seeds.len(),
            unmasks.len(),
            prompts.len()
        );
    }
    if prompts.is_empty() {
        bail!("the batch has no prompt");
    }
    let mut session = Session::new(model, settings, *opts)?;
    for ((p, u), &seed) in prompts.iter().zip(unmasks).zip(seeds) {
        let row = GenerationSettings {
            unmask: *u,
            seed,
            ..settings.clone()
        };
        session.admit(p, &row)?;
    }
    let mut rows: Vec<Option<RowOutput>> = vec![None; prompts.len()];
    while !session.is_empty() {
        for done in session.run_block(model, on_step)? {
            rows[done.id] = Some(done.output);
        }
    }
    Ok(Generation {
        rows: rows
            .into_iter()
            .map(|r| r.context("a row never finished"))
            .collect::<Result<_>>()?,
        nfe: session.batch.forwards(),
        trace: session.batch.take_trace(),
    })
}

/// A running batch that rows join and leave between blocks ([`BlockBatch`]), with the cache,
/// proposer and per-row unmasking policies built from [`GenerationSettings`]. Rows may differ in
/// answer length, unmasking rule and seed ([`batch_compatible`]); row ids follow admission order
/// from 0.
pub struct Session {
    settings: GenerationSettings,
    family: ModelFamily,
    batch: BlockBatch,
    cache: BlockCache,
    proposer: Box<dyn Proposer + Send>,
    unmask: PerRow,
}

impl Session {
    /// An empty session for `settings` (validated; its unmasking rule and seed are only the
    /// defaults of [`Session::compatible`]).
    pub fn new(
        model: &dyn DiffusionLm,
        settings: &GenerationSettings,
        opts: GenerateOptions,
    ) -> Result<Self> {
        let spec = model.spec();
        settings.validate(spec.family)?;
        let proposer =
            settings
                .proposer
                .build_for_model(spec.into(), &settings.unmask, spec.mask_token_id)?;
        Ok(Session {
            settings: settings.clone(),
            family: spec.family,
            batch: BlockBatch::new(spec, &settings.decode, opts)?,
            cache: BlockCache::new(settings.cache)?,
            proposer,
            unmask: PerRow::default(),
        })
    }

    /// Whether a request with `settings` can join this session.
    pub fn compatible(&self, settings: &GenerationSettings) -> bool {
        batch_compatible(&self.settings, settings, self.family)
    }

    /// Adds a row (its own unmasking rule and seed from `settings`); it starts at the next
    /// [`Session::run_block`]. Errors on incompatible settings or an invalid prompt.
    pub fn admit(&mut self, prompt: &[TokenId], settings: &GenerationSettings) -> Result<RowId> {
        if !self.compatible(settings) {
            bail!(
                "settings {} cannot share a batch with {} (decode, cache and proposer settings, and \
                 Dream's score, must agree)",
                settings.label(),
                self.settings.label()
            );
        }
        settings.validate(self.family)?;
        let policy = settings.unmask.build(self.family.into(), settings.seed)?;
        let id = self
            .batch
            .admit_with(prompt, &settings.decode, Rng::new(settings.seed))?;
        self.unmask.insert(id, policy);
        Ok(id)
    }

    /// Drops row `id` (a cancelled request); `false` if it is not running.
    pub fn remove(&mut self, id: RowId) -> bool {
        self.unmask.remove(id);
        self.batch.remove(id)
    }

    /// The settings the session was started with (shared decode, cache and proposer settings).
    pub fn settings(&self) -> &GenerationSettings {
        &self.settings
    }

    /// Forwards made so far (batch-wide).
    pub fn forwards(&self) -> usize {
        self.batch.forwards()
    }

    /// Rows running.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// No row running.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// One round: every row decodes its next block; returns the rows that finished.
    pub fn run_block(
        &mut self,
        model: &dyn DiffusionLm,
        on_step: &mut dyn FnMut(&StepEvent<'_>) -> Control,
    ) -> Result<Vec<FinishedRow>> {
        let mut dec = Decoder {
            cache: &mut self.cache,
            proposer: self.proposer.as_mut(),
            unmask: &mut self.unmask,
        };
        let done = self
            .batch
            .run_block(model, &mut dec, on_step)
            .context("generation failed")?;
        for row in &done {
            self.unmask.remove(row.id);
        }
        Ok(done)
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

//! Settings → policies → [`fastdllm_core::generate()`]: the one place the crates are wired.

use anyhow::{bail, Context, Result};
use fastdllm_cache::{BlockCache, CacheMode, CacheSettings};
use fastdllm_core::{
    generate_with, Control, DecodeConfig, Decoder, DiffusionLm, GenerateOptions, Generation,
    ModelFamily, Rng, StepEvent, TokenId, UnmaskPolicy,
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

/// Whether two settings can share a batch in [`run_rows`]: everything but the unmasking rule and
/// the seed must agree (the rule only where it picks Dream's score, see
/// [`fastdllm_sampler::ProposerConfig::build`]).
pub fn batch_compatible(
    a: &GenerationSettings,
    b: &GenerationSettings,
    family: ModelFamily,
) -> bool {
    a.decode == b.decode
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
    let family = model.spec().family;
    settings.validate(family)?;
    if seeds.len() != prompts.len() || unmasks.len() != prompts.len() {
        bail!(
            "{} seeds and {} unmasking rules for {} prompts",
            seeds.len(),
            unmasks.len(),
            prompts.len()
        );
    }
    for u in unmasks {
        let row = GenerationSettings {
            unmask: *u,
            ..settings.clone()
        };
        if !batch_compatible(settings, &row, family) {
            bail!(
                "unmasking rule {u} cannot share a batch with {} (Dream scores differ)",
                settings.unmask
            );
        }
        row.validate(family)?;
    }
    let mut cache = BlockCache::new(settings.cache)?;
    let rows: Vec<Box<dyn UnmaskPolicy + Send>> = unmasks
        .iter()
        .zip(seeds)
        .map(|(u, &s)| u.build(family, s))
        .collect::<fastdllm_sampler::Result<_>>()?;
    let mut unmask = PerRow::new(rows);
    let mut proposer =
        settings
            .proposer
            .build_for_model(family, &settings.unmask, model.spec().mask_token_id)?;
    let mut rngs: Vec<Rng> = seeds.iter().map(|&s| Rng::new(s)).collect();
    let dec = Decoder {
        cache: &mut cache,
        proposer: proposer.as_mut(),
        unmask: &mut unmask,
    };
    generate_with(
        model,
        prompts,
        &settings.decode,
        dec,
        &mut rngs,
        opts,
        on_step,
    )
    .context("generation failed")
}

/// The answer up to (not including) the first end-of-sequence id.
pub fn trim_at_eos<'a>(generated: &'a [TokenId], eos: &[TokenId]) -> &'a [TokenId] {
    let end = generated
        .iter()
        .position(|t| eos.contains(t))
        .unwrap_or(generated.len());
    &generated[..end]
}

//! Settings → policies → [`fastdllm_core::generate()`]: the one place the crates are wired.

use anyhow::{bail, Context, Result};
use fastdllm_cache::{BlockCache, CacheMode, CacheSettings};
use fastdllm_core::{
    generate, DecodeConfig, Decoder, DiffusionLm, GenerateOptions, Generation, ModelFamily, Rng,
    TokenId, UnmaskPolicy,
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
    let family = model.spec().family;
    settings.validate(family)?;
    if seeds.len() != prompts.len() {
        bail!("{} seeds for {} prompts", seeds.len(), prompts.len());
    }
    let mut cache = BlockCache::new(settings.cache)?;
    let rows: Vec<Box<dyn UnmaskPolicy + Send>> = seeds
        .iter()
        .map(|&s| settings.unmask.build(family, s))
        .collect::<fastdllm_sampler::Result<_>>()?;
    let mut unmask = PerRow::new(rows);
    let mut proposer = settings.proposer.build(family, &settings.unmask)?;
    let mut rngs: Vec<Rng> = seeds.iter().map(|&s| Rng::new(s)).collect();
    let dec = Decoder { cache: &mut cache, proposer: proposer.as_mut(), unmask: &mut unmask };
    generate(model, prompts, &settings.decode, dec, &mut rngs, opts).context("generation failed")
}

/// The answer up to (not including) the first end-of-sequence id.
pub fn trim_at_eos<'a>(generated: &'a [TokenId], eos: &[TokenId]) -> &'a [TokenId] {
    let end = generated.iter().position(|t| eos.contains(t)).unwrap_or(generated.len());
    &generated[..end]
}

//! Your own unmasking rule, run on the bundled tiny LLaDA with the dual cache.
//!
//! Run: `cargo run -p fastdllm-conformance --example own_unmask_rule`
//!
//! The rule, `leftmost+threshold`: commit every masked candidate whose confidence is at least
//! `threshold` (Fast-dLLM's parallel decoding) and, in any case, the leftmost masked position of
//! the block, so decoding always advances left to right like a semi-autoregressive model. An
//! [`UnmaskPolicy`] sees plain data: the masked positions of the active block with their proposed
//! token and confidence, in position order, and returns the indices to commit (distinct, in
//! range). It is compared here with Fast-dLLM's threshold rule and LLaDA's fixed schedule on the
//! copy task the tiny model was trained on.

use fastdllm_cache::{BlockCache, CacheMode, CacheSettings};
use fastdllm_conformance::paths::bundled_model;
use fastdllm_core::{
    generate, Candidate, DecodeConfig, GenerateOptions, Policies, Rng, Selection, StepInfo,
    UnmaskPolicy,
};
use fastdllm_sampler::{ProposerConfig, SamplerProfile, Unmask};

/// Commit the leftmost masked position and every candidate at or above `threshold`.
struct LeftmostPlusThreshold {
    threshold: f64,
}

impl UnmaskPolicy for LeftmostPlusThreshold {
    fn name(&self) -> String {
        format!("leftmost+threshold={}", self.threshold)
    }

    fn select(&mut self, candidates: &[Candidate], _info: &StepInfo) -> Selection {
        // Candidates come in position order, so index 0 is the leftmost mask.
        Selection::Commit(
            (0..candidates.len())
                .filter(|&i| i == 0 || candidates[i].confidence >= self.threshold)
                .collect(),
        )
    }
}

fn main() -> anyhow::Result<()> {
    let loaded = fastdllm_models::load_model(
        &bundled_model("llada-tiny"),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )?;
    let model = loaded.model.as_ref();
    let template = &loaded.info.chat_template;
    let prompt = loaded.tokenizer.encode(
        &template.apply("copy 3dbk......=")?,
        template.add_special_tokens(),
    )?;
    let cfg = DecodeConfig {
        gen_length: 32,
        block_length: 8,
        steps: 32,
        ..Default::default()
    };
    // LLaDA's sampler: greedy proposals, float64 threshold comparisons.
    let profile = SamplerProfile::for_spec(model.spec());
    let mut rules: Vec<Box<dyn UnmaskPolicy>> = Vec::new();
    for stock in [Unmask::Fixed, Unmask::Threshold { threshold: 0.9 }] {
        rules.push(stock.build(profile, 0)?);
    }
    rules.push(Box::new(LeftmostPlusThreshold { threshold: 0.9 }));
    for mut rule in rules {
        let mut cache = BlockCache::new(CacheSettings::new(CacheMode::Dual))?;
        // The greedy proposer (argmax token, float64 softmax confidence) of LLaDA.
        let mut proposer = ProposerConfig::default().build(profile, &Unmask::Fixed)?;
        let out = generate(
            model,
            std::slice::from_ref(&prompt),
            &cfg,
            Policies {
                cache: &mut cache,
                proposer: proposer.as_mut(),
                unmask: rule.as_mut(),
            },
            &mut [Rng::new(0)],
            &GenerateOptions::default(),
        )?;
        let row = &out.rows[0];
        let answer = fastdllm_engine::trim_at_eos(&row.generated, &model.spec().eos_token_ids);
        println!(
            "{:<26} nfe {:>2}  answer {:?}",
            rule.name(),
            out.nfe,
            loaded.tokenizer.decode(answer)?
        );
        anyhow::ensure!(
            !row.generated.contains(&model.spec().mask_token_id),
            "{} left masks in the answer",
            rule.name()
        );
        anyhow::ensure!(
            out.nfe <= cfg.steps,
            "{} took {} forwards for {} positions",
            rule.name(),
            out.nfe,
            cfg.gen_length
        );
    }
    Ok(())
}

//! Check your own cache approximation against the exact path.
//!
//! Run: `cargo run -p fastdllm-conformance --example own_cache_policy`
//!
//! The policy: Fast-dLLM's dual cache (refresh at the block start, then forward only the block
//! over frozen prefix and suffix K/V) that refreshes once more halfway through the block, at
//! step `block_length / 2`: under any rule that commits at least one token per step, half the
//! block has changed by then, so the frozen K/V of the block's neighbourhood are refreshed
//! before they grow too stale. Its plan is a pure function of the step; the K/V storage is
//! fastdllm-cache's [`BlockCache`] (a canvas-length store the window is written into).
//!
//! The check: every no-cache golden case of the bundled tiny LLaDA (the reference's exact
//! output) is run with the exact policy, with the stock dual cache and with this policy, and
//! judged by FORMAT.md section 10. The exact policy must pass every case; the approximations
//! report how many answer tokens stay on the exact path ([`Verdict::agreement`]) and how far
//! their cached logits drift from the exact forward ([`Verdict::drift`]).

use fastdllm_cache::{BlockCache, CacheMode, CacheSettings};
use fastdllm_conformance::golden::{check_case, read_cases, Case, Status, Verdict};
use fastdllm_conformance::paths::{bundled_model, goldens_dir};
use fastdllm_core::{CachePolicy, DiffusionLm, ForwardPlan, KvAccess, KvShape, KvView, StepAt};
use fastdllm_sampler::SamplerProfile;

/// Dual cache plus one refresh at step `block_length / 2`.
struct HalfBlockRefresh {
    store: BlockCache,
}

impl HalfBlockRefresh {
    fn new() -> anyhow::Result<Self> {
        // A dual-mode BlockCache allocates the canvas-length K/V store and applies whatever
        // plan it is handed in `view`; the plan itself is ours.
        Ok(HalfBlockRefresh {
            store: BlockCache::new(CacheSettings::new(CacheMode::Dual))?,
        })
    }
}

impl CachePolicy for HalfBlockRefresh {
    fn name(&self) -> String {
        "dual+half-block-refresh".into()
    }

    fn plan(&self, at: &StepAt) -> ForwardPlan {
        let half = (at.block.len() / 2).max(1);
        if at.step == 0 || at.step == half {
            ForwardPlan {
                window: 0..at.seq_len,
                kv: KvAccess::Refresh,
            }
        } else {
            ForwardPlan {
                window: at.block.clone(),
                kv: KvAccess::Reuse,
            }
        }
    }

    fn prepare(&mut self, shape: &KvShape) -> fastdllm_core::Result<()> {
        self.store.prepare(shape)
    }

    fn view(&mut self, plan: &ForwardPlan) -> fastdllm_core::Result<&mut dyn KvView> {
        self.store.view(plan)
    }
}

fn check(model: &dyn DiffusionLm, case: &Case, cache: &mut dyn CachePolicy) -> Verdict {
    let unmask = case.settings().and_then(|s| {
        Ok(s.unmask
            .build(SamplerProfile::for_spec(model.spec()), s.seed)?)
    });
    match unmask {
        Ok(mut u) => check_case(model, case, cache, u.as_mut(), true),
        Err(e) => panic!("case {}: {e:#}", case.id),
    }
}

fn main() -> anyhow::Result<()> {
    let loaded = fastdllm_models::load_model(
        &bundled_model("llada-tiny"),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )?;
    let model = loaded.model.as_ref();
    let cases: Vec<Case> = read_cases(&[goldens_dir().join("llada-tiny.jsonl")])?
        .into_iter()
        .filter(|c| c.is_exact_path() && c.params.gen_length <= 16)
        .collect();
    anyhow::ensure!(!cases.is_empty(), "no exact-path case in the golden file");
    println!(
        "{:<40} {:>6} {:>14} {:>22}",
        "case (exact path)", "exact", "dual agree", "half-refresh agree"
    );
    let (mut dual_sum, mut ours_sum, mut ours_same) = (0.0, 0.0, 0);
    let mut worst_cos = f64::INFINITY;
    for case in &cases {
        let exact = check(
            model,
            case,
            &mut BlockCache::new(CacheSettings::new(CacheMode::Off))?,
        );
        anyhow::ensure!(
            exact.status == Status::Pass,
            "the exact policy must reproduce {}: {:?}",
            case.id,
            exact.problems
        );
        let dual = check(
            model,
            case,
            &mut BlockCache::new(CacheSettings::new(CacheMode::Dual))?,
        );
        let ours = check(model, case, &mut HalfBlockRefresh::new()?);
        // A case whose blocks all commit at their refresh steps has no cached step to measure.
        let cos = ours.drift.map(|d| d.cosine_min);
        if let Some(c) = cos {
            worst_cos = worst_cos.min(c);
        }
        let cos = cos.map_or_else(|| "no cached step".to_string(), |c| format!("cos {c:.4}"));
        println!(
            "{:<40} {:>6} {:>14.2} {:>14.2} ({cos})",
            case.id, "pass", dual.agreement, ours.agreement
        );
        dual_sum += dual.agreement;
        ours_sum += ours.agreement;
        ours_same += usize::from(ours.agreement == 1.0);
    }
    let n = cases.len() as f64;
    println!(
        "{} exact-path cases: mean token agreement dual {:.3}, dual+half-block-refresh {:.3} \
         ({ours_same} identical); worst cached-step cosine {worst_cos:.4}",
        cases.len(),
        dual_sum / n,
        ours_sum / n
    );
    Ok(())
}

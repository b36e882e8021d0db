//! Limiting cases of the adaptive cache policies (fastdllm-cache `Adaptive`, beyond the
//! reference: refreshes triggered by drift or commits, a suffix window) on the choice fixture,
//! whose dual cache visibly differs from the exact path: a refresh at every step is the exact path,
//! a trigger that never fires is the plain cache, a suffix window covering the whole suffix is the
//! plain cache. Runs threshold 0.9 and fixed 1 token/step, gen 32, block 8, on the first prompts of
//! tasks/tiny-choice.jsonl (every kind).

use std::sync::OnceLock;

use candle_core::{DType, Device};
use fastdllm_benches::eval::{base_settings, read_tasks};
use fastdllm_cache::CacheSettings;
use fastdllm_conformance::paths::{bundled_model, repo_root};
use fastdllm_core::{GenerateOptions, RowOutput, TokenId};
use fastdllm_engine::{self as engine, GenerationSettings};
use fastdllm_models::LoadedModel;
use fastdllm_sampler::Unmask;

fn model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        fastdllm_models::load_model(
            &bundled_model("llada-tiny-choice"),
            &Device::Cpu,
            DType::F32,
        )
        .expect("the choice fixture loads")
    })
}

/// The first prompts of the task file: every kind, including the cache-sensitive `hole`.
fn prompts() -> Vec<Vec<TokenId>> {
    let tasks = read_tasks(&repo_root().join("tasks").join("tiny-choice.jsonl")).unwrap();
    let mut picked = Vec::new();
    let mut per_kind = std::collections::BTreeMap::<String, usize>::new();
    for t in &tasks {
        let n = per_kind
            .entry(t.kind.clone().unwrap_or_default())
            .or_default();
        if *n < 2 {
            *n += 1;
            picked.push(model().tokenizer.encode(&t.prompt, true).unwrap());
        }
    }
    assert!(picked.len() >= 10, "{} prompts", picked.len());
    picked
}

fn settings(cache: &str, unmask: Unmask) -> GenerationSettings {
    let mut s = base_settings(32, 8);
    s.cache = cache.parse::<CacheSettings>().unwrap();
    s.unmask = unmask;
    s
}

fn run(prompts: &[Vec<TokenId>], cache: &str, unmask: Unmask) -> engine::Generated {
    let s = settings(cache, unmask);
    let seeds = vec![0; prompts.len()];
    engine::run(
        model().model.as_ref(),
        prompts,
        &seeds,
        &s,
        &GenerateOptions::default(),
    )
    .unwrap()
}

/// Solo runs of every prompt.
fn solo(prompts: &[Vec<TokenId>], cache: &str, unmask: Unmask) -> Vec<RowOutput> {
    prompts
        .iter()
        .map(|p| run(std::slice::from_ref(p), cache, unmask).rows.remove(0))
        .collect()
}

const RULES: [Unmask; 2] = [Unmask::Threshold { threshold: 0.9 }, Unmask::Fixed];

#[test]
fn refresh_at_every_step_is_the_exact_path() {
    let prompts = prompts();
    for rule in RULES {
        let exact = solo(&prompts, "none", rule);
        let dual = solo(&prompts, "dual", rule);
        // The fixture makes the approximation visible: otherwise this test could not fail.
        assert!(
            exact
                .iter()
                .zip(&dual)
                .any(|(e, d)| e.generated != d.generated),
            "{rule:?}: the dual cache equals the exact path on every prompt"
        );
        for cache in ["dual+commits=1", "prefix+commits=1", "dual+every=1"] {
            assert_eq!(solo(&prompts, cache, rule), exact, "{cache} {rule:?}");
        }
        // Drift bound 0: every cached forward is redone as a refresh, so the commits are the
        // exact path's; each discarded forward adds one NFE that committed nothing.
        let mut redone_total = 0;
        for (got, want) in solo(&prompts, "dual+drift=0", rule).iter().zip(&exact) {
            assert_eq!(got.generated, want.generated, "drift=0 {rule:?}");
            let kept: Vec<usize> = got
                .tokens_per_step
                .iter()
                .copied()
                .filter(|&n| n > 0)
                .collect();
            assert_eq!(kept, want.tokens_per_step, "drift=0 {rule:?}");
            let redone = got.tokens_per_step.len() - kept.len();
            assert_eq!(got.nfe, want.nfe + redone);
            redone_total += redone;
        }
        // Blocks decoded in one forward have no cached step; the others were all redone.
        assert!(redone_total > 0, "drift=0 {rule:?}: nothing redone");
    }
}

#[test]
fn triggers_that_never_fire_are_the_plain_cache() {
    let prompts = prompts();
    for rule in RULES {
        for mode in ["dual", "prefix"] {
            let plain = solo(&prompts, mode, rule);
            for adaptive in ["drift=inf", "commits=1000", "lowconf=0"] {
                let cache = format!("{mode}+{adaptive}");
                assert_eq!(solo(&prompts, &cache, rule), plain, "{cache} {rule:?}");
            }
        }
    }
}

#[test]
fn a_suffix_window_covering_the_suffix_is_the_plain_cache() {
    let prompts = prompts();
    let rule = RULES[0];
    for mode in ["dual", "prefix"] {
        let plain = solo(&prompts, mode, rule);
        let cache = format!("{mode}+window=24");
        assert_eq!(solo(&prompts, &cache, rule), plain, "{cache}");
        // A short window changes the computation (keys beyond it are dropped) ...
        let short = format!("{mode}+window=0");
        let narrow = solo(&prompts, &short, rule);
        assert!(narrow.iter().zip(&plain).any(|(a, b)| a != b), "{short}");
        // ... and, in a left-padded batch, each row still computes what it computes alone
        // (the pad bias is narrowed to the kept keys).
        let batched = run(&prompts, &short, rule).rows;
        assert_eq!(batched, narrow, "{short} batched");
    }
}

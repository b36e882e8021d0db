//! Every golden case of the reference implementation (conformance/goldens/*.jsonl), run through
//! the library and judged by FORMAT.md section 10: identical generated ids and NFE, identical
//! unmask order except where section 10 excuses it. Fragile cases (a confidence within float
//! rounding of the threshold) may mismatch and are counted apart. A case whose mode is not
//! implemented fails.

use fastdllm_conformance::golden::{read_cases, Case, Runner, Status, Tally};
use fastdllm_conformance::paths::goldens_dir;

fn run_group(name: &str, keep: impl Fn(&Case) -> bool) {
    run_files(
        name,
        &["llada-tiny.jsonl", "dream-tiny.jsonl"],
        &["dream-tiny", "llada-tiny"],
        keep,
    );
}

/// Runs the selected cases of `files` (in conformance/goldens/) and checks they cover exactly
/// the models `expect_models` (sorted).
fn run_files(name: &str, files: &[&str], expect_models: &[&str], keep: impl Fn(&Case) -> bool) {
    let files: Vec<_> = files.iter().map(|f| goldens_dir().join(f)).collect();
    for f in &files {
        assert!(
            f.exists(),
            "golden file {} is missing: a missing golden is a failing test",
            f.display()
        );
    }
    let cases: Vec<Case> = read_cases(&files)
        .expect("golden files parse")
        .into_iter()
        .filter(|c| keep(c))
        .collect();
    assert!(!cases.is_empty(), "group {name} selected no case");
    let mut runner = Runner::new(None, candle_core::Device::Cpu, candle_core::DType::F32);
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let mut models = std::collections::BTreeMap::<String, usize>::new();
    for case in &cases {
        let v = runner.run(case);
        tally.add(&v);
        *models.entry(case.model.clone()).or_default() += 1;
        match v.status {
            Status::Fail => failures.push(format!("{}: {}", v.id, v.problems.join("; "))),
            Status::Fragile => eprintln!(
                "fragile {}: {} [{}]",
                v.id,
                v.problems.join("; "),
                v.notes.join("; ")
            ),
            Status::Pass => {}
        }
    }
    eprintln!("{name}: {} ({models:?})", tally.line());
    assert!(
        models
            .keys()
            .map(String::as_str)
            .eq(expect_models.iter().copied()),
        "group {name} must cover the models {expect_models:?}, got {models:?}"
    );
    assert!(
        failures.is_empty(),
        "{name}: {}\nfirst failures:\n{}",
        tally.line(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The exact (no-cache) baselines: LLaDA `generate` with the fixed schedule and Dream's
/// original sampler.
#[test]
fn baseline_no_cache_cases() {
    run_group("baseline", |c| {
        c.cache == "none" && c.rule.starts_with("fixed")
    });
}

/// PrefixCache and DualCache with the fixed schedules of both models.
#[test]
fn prefix_and_dual_cache_cases() {
    run_group("cache", |c| {
        c.cache != "none" && c.rule.starts_with("fixed")
    });
}

/// Threshold and factor rules, every cache mode present.
#[test]
fn threshold_and_factor_cases() {
    run_group("parallel", |c| c.rule == "threshold" || c.rule == "factor");
}

/// LLaDA-MoE (llada-moe-tiny, trained with the official `LLaDAMoEModelLM` class), every case of its
/// golden file: the official Fast-dLLM `generate` without cache (the class refuses any KV cache),
/// fixed 1 and 2 tokens per step and one step per block, thresholds 0.9 / 0.7 / 0.9999 / 0.99999,
/// factors 1 / 2 / 0.001 / 0.0001, G 16 / 32, B 4 / 8 / 16 (1782 cases).
#[test]
fn llada_moe_cases() {
    run_files(
        "llada-moe",
        &["llada-moe-tiny.jsonl"],
        &["llada-moe-tiny"],
        |_| true,
    );
}

/// The choice fixture (llada-tiny-choice: answers with coupled tokens, FORMAT.md
/// section 11), every case of its golden file: fixed 1/2/4 tokens per step, thresholds
/// 0.5/0.7/0.9 and factors 1/2, each with none/prefix/dual, blocks 8 and 16.
#[test]
fn choice_fixture_cases() {
    run_files(
        "choice",
        &["llada-tiny-choice.jsonl"],
        &["llada-tiny-choice"],
        |_| true,
    );
}

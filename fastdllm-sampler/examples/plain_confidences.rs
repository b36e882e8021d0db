//! The sampler's unmasking policies on plain confidences, with no model and no tensor: the
//! fixed schedule (LLaDA's `get_num_transfer_tokens`), Fast-dLLM's threshold rule and its factor
//! rule, each deciding which masked positions of a block to commit at one step.
//!
//! Run: `cargo run -p fastdllm-sampler --example plain_confidences`
//!
//! A [`Candidate`] is one masked position of the active block with the token proposed for it and
//! the confidence that ranks it (for LLaDA the float64 softmax probability of the proposed
//! token). Another dLLM engine can feed its own confidences here and reuse the rules as they are.

use fastdllm_core::{Candidate, Selection, StepInfo, UnmaskPolicy};
use fastdllm_sampler::{Factor, FixedSchedule, Precision, SamplerProfile, Threshold, Unmask};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One block of 8 positions (canvas 16..24), 5 still masked, with their proposals.
    let confidences = [0.97, 0.42, 0.91, 0.88, 0.15];
    let positions = [16, 18, 19, 21, 23];
    let candidates: Vec<Candidate> = positions
        .iter()
        .zip(confidences)
        .enumerate()
        .map(|(i, (&position, confidence))| Candidate {
            position,
            token: 100 + i as u32,
            confidence,
        })
        .collect();
    // Step 2 of 4 in this block; the block had 8 masks before its first step.
    let info = StepInfo {
        row: 0,
        step: 2,
        steps_per_block: 4,
        block_length: 8,
        block_masks_at_start: 8,
    };

    let mut rules: Vec<Box<dyn UnmaskPolicy>> = vec![
        Box::new(FixedSchedule),
        Box::new(Threshold::new(0.9, Precision::F64)),
        Box::new(Factor::new(1.0)),
    ];
    // The same rules from their serde/CLI form, as a config file would give them.
    let from_config: Unmask = "threshold=0.5".parse()?;
    rules.push(from_config.build(SamplerProfile::llada(), 0)?);

    for rule in &mut rules {
        let chosen = match rule.select(&candidates, &info) {
            Selection::Commit(indices) => indices,
            Selection::EndBlock => Vec::new(),
        };
        let committed: Vec<String> = chosen
            .iter()
            .map(|&i| {
                let c = &candidates[i];
                format!("pos {} (p={:.2})", c.position, c.confidence)
            })
            .collect();
        println!("{:<14} commits {}", rule.name(), committed.join(", "));
        // The contract every policy keeps: distinct, in-range indices, and progress for the
        // threshold and factor rules.
        assert!(chosen.iter().all(|&i| i < candidates.len()));
        let mut sorted = chosen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), chosen.len(), "indices are distinct");
        if rule.name() != "fixed" {
            assert!(!chosen.is_empty(), "{} commits at least one", rule.name());
        }
    }

    // Threshold 0.9 commits exactly the candidates at or above 0.9 here.
    let mut threshold = Threshold::new(0.9, Precision::F64);
    assert_eq!(
        threshold.select(&candidates, &info),
        Selection::Commit(vec![0, 2])
    );
    Ok(())
}

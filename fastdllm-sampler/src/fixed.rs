//! LLaDA's fixed schedule (docs/ALGORITHM.md §2.3a, FORMAT.md §8 LLaDA item 2).
//!
//! Reference: `get_num_transfer_tokens` + `get_transfer_index` in NVlabs/Fast-dLLM
//! `llada/generate.py` (from ML-GSAI/LLaDA): a block with `m0` masks and `spb` steps commits
//! `m0 / spb` tokens per step, the remainder `m0 % spb` going one each to the **first** steps
//! (32 masks, 5 steps: 7, 7, 6, 6, 6), always the top-confidence candidates.
//! Deviations: ties broken by lower position ([`crate::rank`]); steps past the schedule commit 0
//! (the reference never gets there).

use fastdllm_core::{Candidate, Selection, StepInfo, UnmaskPolicy};

use crate::rank::top_candidates;

/// How many tokens step `step` (0-based) of a block with `masks` masks and `steps_per_block`
/// steps commits: `masks / spb + (1 if step < masks % spb else 0)`, 0 past the schedule.
/// The counts over `0..spb` sum to `masks`.
pub fn fixed_count(masks: usize, steps_per_block: usize, step: usize) -> usize {
    if steps_per_block == 0 || step >= steps_per_block {
        return 0;
    }
    masks / steps_per_block + usize::from(step < masks % steps_per_block)
}

/// LLaDA's fixed per-step count schedule. Stateless, so one value serves every batch row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FixedSchedule;

impl UnmaskPolicy for FixedSchedule {
    fn name(&self) -> String {
        "fixed".into()
    }

    fn select(&mut self, candidates: &[Candidate], info: &StepInfo) -> Selection {
        let count = fixed_count(info.block_masks_at_start, info.steps_per_block, info.step);
        Selection::Commit(top_candidates(candidates, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::cands;

    fn info(step: usize, spb: usize, m0: usize) -> StepInfo {
        StepInfo {
            row: 0,
            step,
            steps_per_block: spb,
            block_length: 32,
            block_masks_at_start: m0,
        }
    }

    #[test]
    fn spec_example_32_masks_5_steps() {
        let counts: Vec<usize> = (0..5).map(|i| fixed_count(32, 5, i)).collect();
        assert_eq!(counts, vec![7, 7, 6, 6, 6]);
        assert_eq!(fixed_count(32, 5, 5), 0);
        assert_eq!(fixed_count(3, 8, 2), 1);
        assert_eq!(fixed_count(3, 8, 3), 0);
        assert_eq!(fixed_count(3, 0, 0), 0);
    }

    #[test]
    fn commits_the_top_count() {
        let c = cands(&[0.1, 0.9, 0.5, 0.7, 0.2]);
        let mut p = FixedSchedule;
        assert_eq!(
            p.select(&c, &info(0, 2, 5)),
            Selection::Commit(vec![1, 3, 2])
        );
        assert_eq!(p.select(&c, &info(1, 2, 5)), Selection::Commit(vec![1, 3]));
        assert_eq!(p.select(&c, &info(2, 2, 5)), Selection::Commit(vec![]));
        assert_eq!(
            p.select(&c[..1], &info(0, 1, 5)),
            Selection::Commit(vec![0])
        );
        assert_eq!(p.name(), "fixed");
    }
}

//! The factor rule (docs/ALGORITHM.md §2.3c, FORMAT.md §8 LLaDA item 4), added to Fast-dLLM in
//! July 2025.
//!
//! Reference: `get_transfer_index_dynamic` in NVlabs/Fast-dLLM `llada/generate.py` (commit
//! f6b35ec). With sorted confidences `c_1 >= c_2 >= ... >= c_M`, thresholds `thr_1 = -1` and
//! `thr_n = 1 - factor / (n + 1)` (float64), it scans for the first rank with `c_n < thr_n` and
//! commits the ranks before it (Theorem 1 of the paper: `(n + 1) * eps <= 1`).
//!
//! **Reference quirk, reproduced on purpose** (for token-exact parity with the goldens): the scan
//! loop's index is bumped by one when it stops at the first or the last rank, so
//! * if no rank fails, all `M` are committed;
//! * if the first failure is the **last** rank `M` (and `M >= 2`), all `M` are committed anyway,
//!   although rank `M` failed its test;
//! * if the first failure is rank `n*` with `2 <= n* <= M - 1`, `n* - 1` are committed;
//! * `M = 1` commits 1.
//!
//! Deviations: ties broken by lower position; NaN ranks last (and never fails, as in the
//! reference, since `NaN < thr` is false).

use fastdllm_core::{Candidate, Selection, StepInfo, UnmaskPolicy};

use crate::rank::rank_candidates;

/// The reference threshold of 1-based rank `n`: `-1` for rank 1, else `1 - factor / (n + 1)`.
pub fn factor_threshold(factor: f64, rank: usize) -> f64 {
    if rank <= 1 {
        -1.0
    } else {
        1.0 - factor / (rank as f64 + 1.0)
    }
}

/// How many of the `sorted` (descending) confidences the factor rule commits, quirk included.
/// 0 only for an empty slice.
pub fn factor_count(sorted: &[f64], factor: f64) -> usize {
    let m = sorted.len();
    if m == 0 {
        return 0;
    }
    // Python: `for top_i in range(M): if c[top_i] < thr[top_i]: break`; without a break the loop
    // variable ends at M - 1.
    let mut top_i = m - 1;
    for (i, &c) in sorted.iter().enumerate() {
        if c < factor_threshold(factor, i + 1) {
            top_i = i;
            break;
        }
    }
    // Python: `if top_i == 0 or top_i == len(threshs) - 1: top_i += 1` (the quirk).
    if top_i == 0 || top_i == m - 1 {
        top_i += 1;
    }
    top_i
}

/// The factor rule: commit the longest prefix of the sorted candidates whose rank-`n` confidence
/// reaches `1 - factor / (n + 1)`, with the reference's last-rank quirk (module docs). Stateless;
/// commits at least one candidate whenever one exists.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Factor {
    /// `f > 0` (the scripts use 1.0).
    pub factor: f64,
}

impl Factor {
    /// A factor rule.
    pub fn new(factor: f64) -> Self {
        Factor { factor }
    }
}

impl UnmaskPolicy for Factor {
    fn name(&self) -> String {
        format!("factor={}", self.factor)
    }

    fn select(&mut self, candidates: &[Candidate], _info: &StepInfo) -> Selection {
        let mut ranked = rank_candidates(candidates);
        let sorted: Vec<f64> = ranked.iter().map(|&i| candidates[i].confidence).collect();
        ranked.truncate(factor_count(&sorted, self.factor));
        Selection::Commit(ranked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::cands;

    fn count(c: &[f64], f: f64) -> usize {
        let info = StepInfo {
            row: 0,
            step: 0,
            steps_per_block: 1,
            block_length: 8,
            block_masks_at_start: 8,
        };
        match Factor::new(f).select(&cands(c), &info) {
            Selection::Commit(v) => v.len(),
            Selection::EndBlock => panic!("factor never ends a block"),
        }
    }

    #[test]
    fn spec_section_8_examples() {
        assert_eq!(count(&[0.99, 0.5, 0.4], 1.0), 1); // rank 2 fails 2/3
        assert_eq!(count(&[0.99, 0.7, 0.5, 0.4], 1.0), 2); // rank 3 fails 3/4
        assert_eq!(count(&[0.99, 0.95, 0.5], 1.0), 3); // only the last rank fails: the quirk
        assert_eq!(count(&[0.3], 1.0), 1);
        assert_eq!(count(&[], 1.0), 0);
    }

    #[test]
    fn more_cases() {
        // Unsorted input is ranked first.
        assert_eq!(count(&[0.4, 0.99, 0.5, 0.7], 1.0), 2);
        // Everything passes.
        assert_eq!(count(&[0.999, 0.999, 0.999], 1.0), 3);
        // M = 2: rank 2 failing is the last rank, so both are committed (quirk).
        assert_eq!(count(&[0.9, 0.1], 1.0), 2);
        // Boundary: c_2 = 2/3 exactly is not < thr_2, so it passes.
        assert_eq!(factor_threshold(1.0, 2), 1.0 - 1.0 / 3.0);
        assert_eq!(count(&[0.99, 1.0 - 1.0 / 3.0, 0.0, 0.0], 1.0), 2);
        // A tiny factor asks for near-certainty.
        assert_eq!(count(&[0.9999, 0.9999, 0.99, 0.99], 0.001), 2);
        // Rank 1 is free even at a negative score below -1 (reference: break at 0, then + 1).
        assert_eq!(count(&[-5.0, -6.0], 1.0), 1);
        assert_eq!(Factor::new(1.0).name(), "factor=1");
    }
}

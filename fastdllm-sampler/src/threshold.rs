//! The threshold rule, Fast-dLLM's confidence-aware parallel decoding (docs/ALGORITHM.md §2.3b;
//! FORMAT.md §8 LLaDA item 3 and Dream block path item 4).
//!
//! Reference: `get_transfer_index(threshold=...)` in NVlabs/Fast-dLLM `llada/generate.py` and the
//! `confidence_threshold` branch of `dream/model/generation_utils_block.py`: sort the candidates
//! by confidence, always commit the first, and drop each other one with `confidence < threshold`
//! (so equality passes). LLaDA compares float64 confidences with a Python float (float64); Dream
//! compares a float32 tensor with a Python float, which torch does in float32, so its threshold is
//! effectively `f32(threshold)` ([`Precision`]).
//! Deviations: ties broken by lower position; a NaN confidence never passes (the reference's
//! `not (c < tau)` would commit it).

use fastdllm_core::{Candidate, Selection, StepInfo, UnmaskPolicy};

use crate::rank::rank_candidates;

/// The precision a confidence is compared with a threshold in.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// float64 (LLaDA: float64 confidences against a Python float).
    #[default]
    F64,
    /// float32: both sides rounded to f32 first (Dream: a float32 tensor against a Python float).
    F32,
}

impl Precision {
    /// `confidence >= threshold` in this precision (false if either is NaN).
    pub fn at_least(self, confidence: f64, threshold: f64) -> bool {
        match self {
            Precision::F64 => confidence >= threshold,
            Precision::F32 => (confidence as f32) >= (threshold as f32),
        }
    }
}

/// Commit the top-1 candidate always, plus every other candidate whose confidence is
/// `>= threshold`. Stateless; commits at least one candidate whenever one exists.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// `tau`, in (0, 1] (paper default 0.9).
    pub threshold: f64,
    /// Comparison precision: [`Precision::F64`] for LLaDA, [`Precision::F32`] for Dream.
    pub compare: Precision,
}

impl Threshold {
    /// A threshold rule comparing in `compare` precision.
    pub fn new(threshold: f64, compare: Precision) -> Self {
        Threshold { threshold, compare }
    }
}

impl UnmaskPolicy for Threshold {
    fn name(&self) -> String {
        format!("threshold={}", self.threshold)
    }

    fn select(&mut self, candidates: &[Candidate], _info: &StepInfo) -> Selection {
        let ranked = rank_candidates(candidates);
        let mut chosen = Vec::with_capacity(ranked.len());
        for (rank, &i) in ranked.iter().enumerate() {
            if rank == 0
                || self
                    .compare
                    .at_least(candidates[i].confidence, self.threshold)
            {
                chosen.push(i);
            }
        }
        Selection::Commit(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::cands;

    fn info() -> StepInfo {
        StepInfo {
            row: 0,
            step: 3,
            steps_per_block: 4,
            block_length: 8,
            block_masks_at_start: 8,
        }
    }

    fn sel(t: &mut Threshold, c: &[f64]) -> Vec<usize> {
        match t.select(&cands(c), &info()) {
            Selection::Commit(v) => v,
            Selection::EndBlock => panic!("threshold never ends a block"),
        }
    }

    #[test]
    fn top1_below_tau_is_still_taken() {
        let mut t = Threshold::new(0.9, Precision::F64);
        assert_eq!(sel(&mut t, &[0.2, 0.5, 0.3]), vec![1]);
        assert_eq!(sel(&mut t, &[]), Vec::<usize>::new());
    }

    #[test]
    fn equality_passes() {
        let mut t = Threshold::new(0.9, Precision::F64);
        assert_eq!(sel(&mut t, &[0.9, 0.95, 0.8999999, 0.9]), vec![1, 0, 3]);
        let mut t = Threshold::new(0.9, Precision::F32);
        assert_eq!(sel(&mut t, &[0.9, 0.95, 0.8999, 0.9]), vec![1, 0, 3]);
    }

    #[test]
    fn f32_compare_rounds_the_threshold() {
        // f32(0.99999) = 0.99998998641967...: a float32 confidence exactly there passes in F32,
        // while the float64 comparison against 0.99999 rejects it.
        let c = f64::from(0.99999_f32);
        assert!(c < 0.99999);
        let mut f32t = Threshold::new(0.99999, Precision::F32);
        let mut f64t = Threshold::new(0.99999, Precision::F64);
        assert_eq!(sel(&mut f32t, &[1.0, c]), vec![0, 1]);
        assert_eq!(sel(&mut f64t, &[1.0, c]), vec![0]);
        // One f32 ulp below fails in both.
        let below = f64::from(f32::from_bits(0.99999_f32.to_bits() - 1));
        assert_eq!(sel(&mut f32t, &[1.0, below]), vec![0]);
    }

    #[test]
    fn nan_never_passes_but_can_be_forced_top1() {
        let mut t = Threshold::new(0.5, Precision::F64);
        assert_eq!(sel(&mut t, &[f64::NAN, 0.9, 0.6]), vec![1, 2]);
        assert_eq!(sel(&mut t, &[f64::NAN]), vec![0]);
        assert_eq!(t.name(), "threshold=0.5");
    }
}

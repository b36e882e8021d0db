//! Deterministic ranking of candidates, shared by every unmasking policy.
//!
//! Reference: `torch.topk` / `torch.sort(descending=True)` in NVlabs/Fast-dLLM, whose order among
//! equal values is unspecified. Deviation (docs/ALGORITHM.md §2.3 "Tie-breaking", FORMAT.md §9):
//! we break ties by the lower canvas position, so a run is reproducible; the goldens'
//! `tie_break_lowest_index` fields were produced with exactly this rule. NaN confidences rank last
//! (torch would rank them first), and `-0.0` equals `+0.0`.

use std::cmp::Ordering;

use fastdllm_core::Candidate;

/// Orders two confidences for ranking: the higher one first, NaN after every number.
pub fn confidence_order(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        // `x + 0.0` turns -0.0 into +0.0, so the two zeros tie (and fall back to position).
        (false, false) => (b + 0.0).total_cmp(&(a + 0.0)),
    }
}

/// Indices into `candidates`, best first: confidence descending, equal confidences by lower
/// position, then by lower index; NaN last.
pub fn rank_candidates(candidates: &[Candidate]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..candidates.len()).collect();
    idx.sort_by(|&i, &j| {
        let (a, b) = (&candidates[i], &candidates[j]);
        confidence_order(a.confidence, b.confidence)
            .then(a.position.cmp(&b.position))
            .then(i.cmp(&j))
    });
    idx
}

/// The `count` best candidates (all of them if there are fewer), best first.
pub fn top_candidates(candidates: &[Candidate], count: usize) -> Vec<usize> {
    let mut idx = rank_candidates(candidates);
    idx.truncate(count);
    idx
}

#[cfg(test)]
pub(crate) fn cands(confidences: &[f64]) -> Vec<Candidate> {
    confidences
        .iter()
        .enumerate()
        .map(|(i, &c)| Candidate {
            position: 10 + i,
            token: i as u32,
            confidence: c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descending_with_ties_by_lower_position() {
        let c = cands(&[0.5, 0.9, 0.5, 0.9, 0.1]);
        assert_eq!(rank_candidates(&c), vec![1, 3, 0, 2, 4]);
    }

    #[test]
    fn ties_use_position_not_slice_order() {
        let mut c = cands(&[0.5, 0.5, 0.5]);
        c[0].position = 30;
        assert_eq!(rank_candidates(&c), vec![1, 2, 0]);
    }

    #[test]
    fn nan_ranks_last_and_zeros_tie() {
        let c = cands(&[f64::NAN, -1.0, f64::INFINITY, 0.0, -0.0, f64::NEG_INFINITY]);
        assert_eq!(rank_candidates(&c), vec![2, 3, 4, 1, 5, 0]);
        let c = cands(&[-0.0, 0.0]);
        assert_eq!(rank_candidates(&c), vec![0, 1]);
    }

    #[test]
    fn top_truncates() {
        let c = cands(&[0.1, 0.3, 0.2]);
        assert_eq!(top_candidates(&c, 2), vec![1, 2]);
        assert_eq!(top_candidates(&c, 9), vec![1, 2, 0]);
        assert!(top_candidates(&[], 3).is_empty());
    }
}

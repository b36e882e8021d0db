//! One unmasking policy per batch row (beyond the reference, whose batches share one rule).
//!
//! A server batches requests with different settings (threshold 0.9 next to factor 1): the loop
//! calls [`UnmaskPolicy::select`] once per row with [`StepInfo::row`] (the row's id), and
//! [`PerRow`] forwards to that row's own policy, so each row keeps its own rule and state while
//! other rows join and leave. Reference: none. Deviation:
//! none (a row without a policy commits nothing, which the loop reports as no progress).

use std::collections::BTreeMap;

use fastdllm_core::{Candidate, RowId, Selection, StepInfo, UnmaskPolicy};

/// Dispatches each row to its own policy, keyed by the row's id ([`StepInfo::row`]).
#[derive(Default)]
pub struct PerRow(BTreeMap<RowId, Box<dyn UnmaskPolicy + Send>>);

impl PerRow {
    /// Row `r` uses `policies[r]` (ids `0..n`, as [`fastdllm_core::generate()`] gives them).
    pub fn new(policies: Vec<Box<dyn UnmaskPolicy + Send>>) -> Self {
        PerRow(policies.into_iter().enumerate().collect())
    }

    /// Sets the policy of row `id` (a row joining a running [`fastdllm_core::BlockBatch`]).
    pub fn insert(&mut self, id: RowId, policy: Box<dyn UnmaskPolicy + Send>) {
        self.0.insert(id, policy);
    }

    /// Drops the policy of row `id` (a row that left the batch).
    pub fn remove(&mut self, id: RowId) {
        self.0.remove(&id);
    }
}

impl std::fmt::Debug for PerRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PerRow").field(&self.name()).finish()
    }
}

impl UnmaskPolicy for PerRow {
    fn name(&self) -> String {
        let names: Vec<String> = self.0.values().map(|p| p.name()).collect();
        format!("per_row[{}]", names.join(","))
    }

    /// Forwards to the row's policy; a row without one commits nothing.
    fn select(&mut self, candidates: &[Candidate], info: &StepInfo) -> Selection {
        match self.0.get_mut(&info.row) {
            Some(p) => p.select(candidates, info),
            None => Selection::Commit(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::cands;
    use crate::{Factor, FixedSchedule, Precision, Threshold};

    #[test]
    fn dispatches_on_row() {
        let mut p = PerRow::new(vec![
            Box::new(Threshold::new(0.5, Precision::F64)),
            Box::new(FixedSchedule),
            Box::new(Factor::new(1.0)),
        ]);
        let c = cands(&[0.6, 0.7, 0.1]);
        let mut info = StepInfo {
            row: 0,
            step: 0,
            steps_per_block: 3,
            block_length: 3,
            block_masks_at_start: 3,
        };
        assert_eq!(p.select(&c, &info), Selection::Commit(vec![1, 0]));
        info.row = 1;
        assert_eq!(p.select(&c, &info), Selection::Commit(vec![1]));
        info.row = 2;
        // Sorted [0.7, 0.6, 0.1]: rank 2 fails 2/3 and is not the last rank.
        assert_eq!(p.select(&c, &info), Selection::Commit(vec![1]));
        info.row = 3;
        assert_eq!(p.select(&c, &info), Selection::Commit(vec![]));
        assert_eq!(p.name(), "per_row[threshold=0.5,fixed,factor=1]");
        // Rows keep their policy by id as others leave and join.
        p.remove(0);
        p.insert(7, Box::new(Threshold::new(0.5, Precision::F64)));
        info.row = 1;
        assert_eq!(p.select(&c, &info), Selection::Commit(vec![1]));
        info.row = 7;
        assert_eq!(p.select(&c, &info), Selection::Commit(vec![1, 0]));
        info.row = 0;
        assert_eq!(p.select(&c, &info), Selection::Commit(vec![]));
    }
}

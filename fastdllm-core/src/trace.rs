//! Per-step records of a generation: what was forwarded, what was committed, and (on request)
//! how far a cached forward drifted from the exact one.

use std::ops::Range;

use crate::policy::KvAccess;
use crate::TokenId;

/// One committed token.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Commit {
    /// Index in the answer region (0 = first generated position).
    pub answer_idx: usize,
    /// The token written.
    pub token: TokenId,
    /// Its ranking score when it was chosen.
    pub confidence: f64,
}

/// Drift of a cached forward from the exact (no-cache) forward of the same canvas, over the
/// logits of the rows that were candidates at that step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DriftStats {
    /// Smallest cosine similarity between cached and exact logit rows.
    pub cosine_min: f64,
    /// Mean cosine similarity.
    pub cosine_mean: f64,
    /// Largest absolute logit difference.
    pub max_abs_diff: f64,
    /// Fraction of rows whose argmax agrees.
    pub argmax_agreement: f64,
    /// Mean KL(exact || cached) of the softmax distributions, in nats.
    pub kl_mean: f64,
    /// Rows compared.
    pub rows: usize,
}

impl DriftStats {
    /// The identity of aggregation: no row compared yet (`cosine_min` is +inf until a row is).
    pub(crate) fn empty() -> Self {
        DriftStats {
            cosine_min: f64::INFINITY,
            cosine_mean: 0.0,
            max_abs_diff: 0.0,
            argmax_agreement: 0.0,
            kl_mean: 0.0,
            rows: 0,
        }
    }
}

/// One forward and its outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepRecord {
    /// 0-based index of the forward in the generation (the NFE counter before it).
    pub forward_idx: usize,
    /// Block index.
    pub block_idx: usize,
    /// Step inside the block.
    pub step: usize,
    /// Canvas range forwarded.
    pub window: Range<usize>,
    /// K/V treatment.
    pub kv: KvAccess,
    /// Commits per batch row.
    pub commits: Vec<Vec<Commit>>,
    /// Drift against the exact forward (cached steps only, when requested).
    pub drift: Option<DriftStats>,
    /// The cache policy's own measurement during the forward ([`crate::CachePolicy::signal`],
    /// e.g. the probe-layer K drift of fastdllm-cache's policies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_signal: Option<f64>,
    /// The step's cached forward was discarded and redone with this record's plan
    /// ([`crate::CachePolicy::redo`]); the discarded forward has its own record before this one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redone: bool,
}

/// The whole generation, step by step.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Trace {
    /// One record per forward.
    pub steps: Vec<StepRecord>,
}

impl Trace {
    /// Drift records of the cached steps.
    pub fn drift(&self) -> impl Iterator<Item = &DriftStats> {
        self.steps.iter().filter_map(|s| s.drift.as_ref())
    }

    /// Aggregate of all drift records (worst cosine and max diff, mean agreement and KL), or
    /// `None` if no cached step was measured.
    pub fn drift_summary(&self) -> Option<DriftStats> {
        let mut n = 0usize;
        let mut acc = DriftStats::empty();
        for d in self.drift() {
            n += 1;
            acc.cosine_min = acc.cosine_min.min(d.cosine_min);
            acc.max_abs_diff = acc.max_abs_diff.max(d.max_abs_diff);
            acc.cosine_mean += d.cosine_mean * d.rows as f64;
            acc.argmax_agreement += d.argmax_agreement * d.rows as f64;
            acc.kl_mean += d.kl_mean * d.rows as f64;
            acc.rows += d.rows;
        }
        if n == 0 || acc.rows == 0 {
            return None;
        }
        let rows = acc.rows as f64;
        acc.cosine_mean /= rows;
        acc.argmax_agreement /= rows;
        acc.kl_mean /= rows;
        Some(acc)
    }
}

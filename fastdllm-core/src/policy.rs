//! The policy seams the loop runs through: which window to forward and how to treat K/V
//! ([`CachePolicy`], implemented in fastdllm-cache), how logits become proposals
//! ([`Proposer`]) and which candidates to unmask ([`UnmaskPolicy`]), both implemented in
//! fastdllm-sampler. Selection works on plain data, so samplers are testable without tensors.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};

use crate::model::KvView;
use crate::rng::Rng;
use crate::{Result, TokenId};

/// Where the loop stands when it asks a cache policy for a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepAt {
    /// Index of the current block.
    pub block_idx: usize,
    /// Canvas positions of the current block `[s_k, e_k)`.
    pub block: Range<usize>,
    /// Step inside the block, 0 at the block's first forward.
    pub step: usize,
    /// Canvas length `L` (padded prompt + gen_length).
    pub seq_len: usize,
}

/// How a forward treats K/V.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvAccess {
    /// Exact: attend over the window's own fresh K/V, store nothing.
    Fresh,
    /// Full forward that also stores every position's K/V (a cache refresh).
    Refresh,
    /// Write the window's fresh K/V into the stored cache in place, attend over all stored K/V.
    Reuse,
}

/// What to run at one step: a pure function of [`StepAt`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForwardPlan {
    /// Canvas range fed to the network.
    pub window: Range<usize>,
    /// How K/V are treated.
    pub kv: KvAccess,
}

impl ForwardPlan {
    /// True when the forward sees exact K/V for every key (no stale cache entry).
    pub fn is_exact(&self) -> bool {
        self.kv != KvAccess::Reuse
    }
}

/// Shape of the K/V storage of one generation.
#[derive(Debug, Clone)]
pub struct KvShape {
    /// Layers.
    pub num_layers: usize,
    /// Batch rows.
    pub batch: usize,
    /// K/V heads.
    pub num_kv_heads: usize,
    /// Canvas length.
    pub seq_len: usize,
    /// Head size.
    pub head_dim: usize,
    /// Storage dtype (the model's activation dtype).
    pub dtype: DType,
    /// Storage device.
    pub device: Device,
}

/// What one step committed, reported to the cache policy after the step
/// ([`CachePolicy::observe`]): adaptive policies decide their next plans from it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepObservation {
    /// Where the step was.
    pub at: StepAt,
    /// The plan its (last) forward ran with.
    pub plan: ForwardPlan,
    /// Tokens committed by the step, summed over the active rows.
    pub committed: usize,
    /// The lowest ranking score among them (`None` when nothing was committed).
    pub min_confidence: Option<f64>,
}

/// A cache policy: the plan plus the K/V storage it manages.
///
/// The reference policies (none / prefix / dual and fixed refresh schedules) plan from the
/// [`StepAt`] alone. Adaptive policies also use what earlier steps of the block showed: they see
/// each step through [`CachePolicy::observe`] and may redo a cached step as a refresh
/// ([`CachePolicy::redo`]). Their decisions are batch-wide (one plan per forward), so in a
/// batch a row may get refreshes its solo run would not have had.
pub trait CachePolicy {
    /// Short name for reports (`none`, `prefix`, `dual`, ...).
    fn name(&self) -> String;
    /// What to forward at `at`. A function of `at` and of what [`CachePolicy::observe`] reported
    /// so far (the reference policies: of `at` alone; proptested without tensors).
    fn plan(&self, at: &StepAt) -> ForwardPlan;
    /// Called once per generation before the first forward: (re)allocate storage for `shape`.
    fn prepare(&mut self, shape: &KvShape) -> Result<()>;
    /// The K/V hook for the forward `plan` describes.
    fn view(&mut self, plan: &ForwardPlan) -> Result<&mut dyn KvView>;
    /// The canvas range of keys the forward of `plan` attends over (the loop narrows the pad
    /// bias to it). Default: the window's own keys for exact forwards, the whole canvas
    /// `0..seq_len` for [`KvAccess::Reuse`].
    fn attended_keys(&self, plan: &ForwardPlan, seq_len: usize) -> Range<usize> {
        match plan.kv {
            KvAccess::Reuse => 0..seq_len,
            KvAccess::Fresh | KvAccess::Refresh => plan.window.clone(),
        }
    }
    /// Called after each [`KvAccess::Reuse`] forward, before its logits are used: a plan to redo
    /// the step with (its logits are then discarded; the discarded forward still counts in the
    /// NFE) when the policy judges the cached forward too stale. Default: never.
    fn redo(&mut self, at: &StepAt) -> Option<ForwardPlan> {
        let _ = at;
        None
    }
    /// A scalar the policy measured during the last forward (e.g. the drift of a probe layer's
    /// K/V), recorded in the trace. Default: none.
    fn signal(&self) -> Option<f64> {
        None
    }
    /// Called after every step with what it committed. Default: ignored.
    fn observe(&mut self, step: &StepObservation) {
        let _ = step;
    }
}

/// A proposed token for one position and the score used to rank it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proposal {
    /// Proposed token.
    pub token: TokenId,
    /// Ranking score (probability, margin, negative entropy or random).
    pub confidence: f64,
}

/// Turns logits rows into proposals.
pub trait Proposer {
    /// `logits`: shape `(batch, rows, vocab)`, f32. Returns `batch` vectors of `rows` proposals.
    /// `rngs` has one generator per batch row.
    fn propose(&mut self, logits: &Tensor, rngs: &mut [Rng]) -> Result<Vec<Vec<Proposal>>>;

    /// Whether [`Proposer::propose`] must see every row of the block (its random stream or its
    /// results depend on them). `false` lets the loop ask the model for the logits of the masked
    /// positions only (the LM head then skips the committed rows).
    fn reads_all_rows(&self) -> bool {
        true
    }

    /// [`Proposer::propose`] where only the rows with `needed[b][i]` are read by the caller (the
    /// masked positions); the others may hold any proposal. A proposer whose random stream or
    /// results depend on every row must propose them all (the default); a deterministic,
    /// row-independent one may skip the rest.
    fn propose_needed(
        &mut self,
        logits: &Tensor,
        rngs: &mut [Rng],
        needed: &[Vec<bool>],
    ) -> Result<Vec<Vec<Proposal>>> {
        let _ = needed;
        self.propose(logits, rngs)
    }

    /// The natural-log probabilities (f64, one per vocabulary entry) of the distribution this
    /// proposer draws a proposal from, given one logits row: what a commit-time log-probability
    /// reports ([`TokenLogprobs`]). The default is `log_softmax(logits)` in f64; a sampler that
    /// divides by a temperature or filters says so by overriding it.
    fn log_probs(&self, logits: &[f32]) -> Vec<f64> {
        log_softmax(logits, 1.0)
    }
}

/// `log_softmax(logits / temperature)` in f64 (max-subtracted, `ln Σ exp`): the log-probabilities
/// of a softmax distribution, `-inf` for `-inf` logits. `temperature` must be > 0.
pub fn log_softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let scaled: Vec<f64> = logits.iter().map(|&x| f64::from(x) / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return vec![f64::NEG_INFINITY; scaled.len()];
    }
    let lse = max + scaled.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
    scaled.into_iter().map(|x| x - lse).collect()
}

/// A committed token's log-probability under the distribution it was committed from, and the
/// most likely tokens there (OpenAI's `logprobs`; for a diffusion model these are commit-time
/// probabilities: the proposal's distribution at the step the position was unmasked).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprobs {
    /// The committed token.
    pub token: TokenId,
    /// Its natural-log probability.
    pub logprob: f64,
    /// The most likely tokens and their log-probabilities, most likely first (ties: lower id
    /// first); the mask token, which is never proposed, is left out.
    pub top: Vec<(TokenId, f64)>,
}

impl TokenLogprobs {
    /// `token`'s entry in `log_probs` (a [`Proposer::log_probs`] row) and the `top` most likely
    /// tokens but `exclude`.
    pub fn of(token: TokenId, log_probs: &[f64], top: usize, exclude: Option<TokenId>) -> Self {
        let mut ids: Vec<usize> = (0..log_probs.len())
            .filter(|&i| Some(i as TokenId) != exclude)
            .collect();
        let k = top.min(ids.len());
        if k > 0 {
            let by = |a: &usize, b: &usize| log_probs[*b].total_cmp(&log_probs[*a]).then(a.cmp(b));
            ids.select_nth_unstable_by(k - 1, by);
            ids.truncate(k);
            ids.sort_unstable_by(by);
        } else {
            ids.clear();
        }
        TokenLogprobs {
            token,
            logprob: log_probs
                .get(token as usize)
                .copied()
                .unwrap_or(f64::NEG_INFINITY),
            top: ids
                .into_iter()
                .map(|i| (i as TokenId, log_probs[i]))
                .collect(),
        }
    }
}

/// A masked position of the active block with its proposal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Canvas position.
    pub position: usize,
    /// Proposed token.
    pub token: TokenId,
    /// Ranking score.
    pub confidence: f64,
}

/// Context of one selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInfo {
    /// The row's id ([`crate::RowId`]: its prompt index in [`crate::generate()`], its admission
    /// number in a [`crate::BlockBatch`]), stable while other rows join and leave.
    pub row: usize,
    /// Step inside the block (0 = the block's first forward).
    pub step: usize,
    /// `steps / num_blocks`.
    pub steps_per_block: usize,
    /// `block_length`.
    pub block_length: usize,
    /// Masks in this row's block before its first step.
    pub block_masks_at_start: usize,
}

/// What an unmasking policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Commit these candidates (indices into the candidate slice).
    Commit(Vec<usize>),
    /// End this row's block now, leaving its masks (Dream's step cap; docs/ALGORITHM.md §2.8.3).
    EndBlock,
}

/// Chooses which candidates to unmask.
///
/// Contract: indices are distinct and in range. Rules that promise progress (threshold, factor)
/// commit at least one candidate whenever one exists; count schedules may commit 0.
pub trait UnmaskPolicy {
    /// Short name for reports (`fixed`, `threshold=0.9`, ...).
    fn name(&self) -> String;
    /// Select among `candidates` (masked positions of the active block, in position order).
    fn select(&mut self, candidates: &[Candidate], info: &StepInfo) -> Selection;
}

impl<P: UnmaskPolicy + ?Sized> UnmaskPolicy for Box<P> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn select(&mut self, candidates: &[Candidate], info: &StepInfo) -> Selection {
        (**self).select(candidates, info)
    }
}

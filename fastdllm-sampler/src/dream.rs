//! Dream's unmasking rules: the timestep count schedule, `origin`, and Fast-dLLM's no-cache
//! `confidence_threshold` with a quota (docs/ALGORITHM.md §2.8.2, §2.8.3; FORMAT.md §8 Dream
//! block path item 5 and original sampler item 6).
//!
//! References: `dream/model/generation_utils.py` (Dream's original `_sample`, the whole answer as
//! one block, steps counted from 0) and `dream/model/generation_utils_block.py` (Fast-dLLM's block
//! path, where the loop itself commits the block start at step 0, so the policy first runs at
//! step 1 and the schedule's first entry is never used: exactly the reference's `i` starting at 1).
//!
//! The schedule is `timesteps = torch.linspace(1, eps, steps + 1)` in **float32**, reproduced bit
//! for bit by [`dream_timesteps`]; step `i` commits `int(n * (1 - s / t))` with `t = ts[i]`,
//! `s = ts[i + 1]`, `n` the row's current mask count, all in float32 and truncated; the last step
//! commits everything; at `i == steps` the block ends with its masks left (the reference's
//! `break`, which wastes one forward when `steps_per_block == 1`).
//!
//! Deviations: ties broken by lower position; `n` is the row's own mask count (the reference
//! averages it over the batch); `alg_temp` (sampling positions instead of top-k) is not
//! implemented; `origin` and the quota rule draw from our own [`Rng`] / need no randomness, so
//! they cannot reproduce torch's random stream.

use fastdllm_core::{Candidate, Rng, Selection, StepInfo, UnmaskPolicy};

use crate::fixed::fixed_count;
use crate::rank::{rank_candidates, top_candidates};
use crate::threshold::Precision;

/// Dream's default `eps`, the last timestep.
pub const DEFAULT_EPS: f32 = 1e-3;

/// `torch.linspace(1, eps, n + 1)` in float32, bit-exact with torch's CPU kernel
/// (`linspace_kernel`, RangeFactoriesKernel.cpp): the step is `(eps - 1) / n` in f32, the first
/// half is `1 + step * i` and the second half `eps - step * (n - i)`, each evaluated as **one
/// fused multiply-add**: torch's CPU kernels are built with FMA enabled and the compiler contracts
/// `start + step * idx`. (Plain multiply-then-add misses the golden values, e.g. n = 8, i = 3.)
pub fn dream_timesteps(eps: f32, n: usize) -> Vec<f32> {
    (0..=n).map(|i| timestep(eps, n, i)).collect()
}

/// Entry `i` of [`dream_timesteps`]`(eps, n)` without building the vector.
fn timestep(eps: f32, n: usize, i: usize) -> f32 {
    let (start, end) = (1.0_f32, eps);
    let steps = n + 1;
    if steps == 1 {
        return start;
    }
    let step = (end - start) / (steps - 1) as f32;
    if i < steps / 2 {
        step.mul_add(i as f32, start)
    } else {
        (-step).mul_add((steps - i - 1) as f32, end)
    }
}

/// `int(n * (1 - s / t))` in float32 for step `step` of `steps` (the count before the
/// last-step override).
pub fn dream_transfer_count(eps: f32, steps: usize, step: usize, masks: usize) -> usize {
    let t = timestep(eps, steps, step);
    let s = timestep(eps, steps, step + 1);
    let n = masks as f32;
    // `as usize` truncates toward zero like Python's `int()` (and saturates; n >= 0 here).
    (n * (1.0 - s / t)) as usize
}

/// The probability `1 - s / t` (float32) with which `origin` reveals a mask at step `step`.
fn reveal_probability(eps: f32, steps: usize, step: usize) -> f32 {
    1.0 - timestep(eps, steps, step + 1) / timestep(eps, steps, step)
}

/// Dream's count schedule over `timesteps = linspace(1, eps, steps_per_block + 1)`: at step
/// `i < spb - 1` commit the top `int(n * (1 - ts[i+1] / ts[i]))` candidates (f32, truncated), at
/// `i == spb - 1` all of them, at `i >= spb` end the block. Used by Dream's block path (with the
/// negative-entropy score) and by the original sampler (`maskgit_plus`, `topk_margin`, `entropy`).
/// Stateless. May commit 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DreamTimesteps {
    /// The last timestep, in (0, 1) (default [`DEFAULT_EPS`]).
    pub eps: f32,
}

impl Default for DreamTimesteps {
    fn default() -> Self {
        DreamTimesteps { eps: DEFAULT_EPS }
    }
}

impl UnmaskPolicy for DreamTimesteps {
    fn name(&self) -> String {
        if self.eps == DEFAULT_EPS {
            "dream_timesteps".into()
        } else {
            format!("dream_timesteps={}", self.eps)
        }
    }

    fn select(&mut self, candidates: &[Candidate], info: &StepInfo) -> Selection {
        let (spb, step) = (info.steps_per_block, info.step);
        if step >= spb {
            return Selection::EndBlock;
        }
        let n = candidates.len();
        let count = if step == spb - 1 {
            n
        } else {
            dream_transfer_count(self.eps, spb, step, n)
        };
        Selection::Commit(top_candidates(candidates, count))
    }
}

/// Dream's `origin` algorithm: at step `i < spb - 1` each candidate is revealed independently
/// with probability `1 - ts[i+1] / ts[i]` (float32), at `i == spb - 1` all of them, at `i >= spb`
/// the block ends. Confidences are ignored. Each batch row draws from its own generator, seeded
/// with [`Rng::row_seed`]`(seed, row)`, one draw per candidate in position order. May commit 0.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The last timestep, in (0, 1).
    pub eps: f32,
    seed: u64,
    rngs: Vec<Rng>,
}

impl Origin {
    /// An `origin` rule whose row generators derive from `seed`.
    pub fn new(eps: f32, seed: u64) -> Self {
        Origin {
            eps,
            seed,
            rngs: Vec::new(),
        }
    }

    fn rng(&mut self, row: usize) -> &mut Rng {
        while self.rngs.len() <= row {
            let r = self.rngs.len();
            self.rngs.push(Rng::new(Rng::row_seed(self.seed, r)));
        }
        &mut self.rngs[row]
    }
}

impl UnmaskPolicy for Origin {
    fn name(&self) -> String {
        if self.eps == DEFAULT_EPS {
            "origin".into()
        } else {
            format!("origin={}", self.eps)
        }
    }

    fn select(&mut self, candidates: &[Candidate], info: &StepInfo) -> Selection {
        let (spb, step) = (info.steps_per_block, info.step);
        if step >= spb {
            return Selection::EndBlock;
        }
        if step == spb - 1 {
            return Selection::Commit((0..candidates.len()).collect());
        }
        let p = reveal_probability(self.eps, spb, step);
        let rng = self.rng(info.row);
        // Reference: `torch.rand(n) < p_transfer`, float32 on both sides.
        let chosen = (0..candidates.len())
            .filter(|_| (rng.open01() as f32) < p)
            .collect();
        Selection::Commit(chosen)
    }
}

/// Per-row state of [`QuotaThreshold`].
#[derive(Debug, Clone, Copy, Default)]
struct QuotaState {
    carry: usize,
    quota_on: bool,
    budget: usize,
}

/// Fast-dLLM's `confidence_threshold` for Dream **without cache** (docs/ALGORITHM.md §2.8.2,
/// last paragraph; `generation_utils.py` of the Fast-dLLM repository): step `i` looks at the top
/// `q_i + carry` candidates, commits the first always and the others if `confidence >= threshold`,
/// and carries the rejected ones over to the next step. A rejection at the last step of the budget
/// extends the budget by one step (once per step: the reference bumps `steps` at the first
/// rejection, so later ones in the same step are plain carries) and switches the quota off, so the
/// block always completes, exactly when the budget ends. Per-row state, reset at step 0.
///
/// Deviations: the reference requires `masks % steps == 0` and uses `q = masks / steps`; here
/// `q_i` is the fixed schedule ([`fixed_count`]), which equals that when it divides and still
/// sums to the mask count when it does not. Meant for one block covering the whole answer with step 0 on a policy call (the generator's
/// `force_block_start = Some(false)`).
#[derive(Debug, Clone)]
pub struct QuotaThreshold {
    /// `tau`, in (0, 1].
    pub threshold: f64,
    /// Comparison precision ([`Precision::F32`] for Dream).
    pub compare: Precision,
    rows: Vec<QuotaState>,
}

impl QuotaThreshold {
    /// A quota threshold rule.
    pub fn new(threshold: f64, compare: Precision) -> Self {
        QuotaThreshold {
            threshold,
            compare,
            rows: Vec::new(),
        }
    }
}

impl UnmaskPolicy for QuotaThreshold {
    fn name(&self) -> String {
        format!("quota_threshold={}", self.threshold)
    }

    fn select(&mut self, candidates: &[Candidate], info: &StepInfo) -> Selection {
        if self.rows.len() <= info.row {
            self.rows.resize(info.row + 1, QuotaState::default());
        }
        let st = &mut self.rows[info.row];
        if info.step == 0 {
            *st = QuotaState {
                carry: 0,
                quota_on: true,
                budget: info.steps_per_block,
            };
        }
        let quota = if st.quota_on {
            fixed_count(info.block_masks_at_start, info.steps_per_block, info.step)
        } else {
            0
        };
        let take = (quota + st.carry).min(candidates.len());
        st.carry = 0;
        let mut chosen = Vec::with_capacity(take);
        for (rank, &i) in rank_candidates(candidates).iter().take(take).enumerate() {
            if rank == 0
                || self
                    .compare
                    .at_least(candidates[i].confidence, self.threshold)
            {
                chosen.push(i);
            } else {
                st.carry += 1;
                if info.step + 1 >= st.budget {
                    st.quota_on = false;
                    st.budget += 1;
                }
            }
        }
        Selection::Commit(chosen)
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

    fn commit(s: Selection) -> Vec<usize> {
        match s {
            Selection::Commit(v) => v,
            Selection::EndBlock => panic!("unexpected EndBlock"),
        }
    }

    #[test]
    fn counts_and_last_step() {
        // n = 8 masks over 4 steps: ts = [1, .75025, .5005, .25075, .001].
        assert_eq!(dream_transfer_count(1e-3, 4, 0, 8), 1); // 8 * 0.24975 = 1.998
        assert_eq!(dream_transfer_count(1e-3, 4, 1, 8), 2); // 8 * (1 - .5005/.75025) = 2.663
        let mut p = DreamTimesteps::default();
        let c = cands(&[0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.4, 0.6]);
        assert_eq!(commit(p.select(&c, &info(0, 4, 8))), vec![1]);
        assert_eq!(commit(p.select(&c, &info(1, 4, 8))), vec![1, 3]);
        assert_eq!(commit(p.select(&c[..3], &info(3, 4, 8))).len(), 3);
        assert_eq!(p.select(&c, &info(4, 4, 8)), Selection::EndBlock);
        // spb = 1: step 0 is the last step; step 1 (Dream's block path) ends the block.
        assert_eq!(commit(p.select(&c, &info(0, 1, 8))).len(), 8);
        assert_eq!(p.select(&c, &info(1, 1, 8)), Selection::EndBlock);
        // Counts can be 0.
        assert_eq!(
            commit(p.select(&c[..2], &info(0, 8, 2))),
            Vec::<usize>::new()
        );
        assert_eq!(p.name(), "dream_timesteps");
    }

    #[test]
    fn origin_reveals_some_then_all() {
        let c = cands(&[0.5; 200]);
        let mut o = Origin::new(1e-3, 7);
        let first = commit(o.select(&c, &info(0, 2, 200)));
        // p = 1 - 0.5005 = 0.4995: about half.
        assert!((60..140).contains(&first.len()), "{}", first.len());
        assert!(first.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(commit(o.select(&c, &info(1, 2, 200))).len(), 200);
        assert_eq!(o.select(&c, &info(2, 2, 200)), Selection::EndBlock);
        // Same seed, same draws; rows are independent streams.
        let mut o2 = Origin::new(1e-3, 7);
        assert_eq!(commit(o2.select(&c, &info(0, 2, 200))), first);
        let mut row1 = info(0, 2, 200);
        row1.row = 1;
        assert_ne!(commit(o2.select(&c, &row1)), first);
    }

    #[test]
    fn quota_threshold_carries_rejections() {
        let mut q = QuotaThreshold::new(0.9, Precision::F32);
        // 8 masks, 4 steps: quota 2 per step.
        let c = cands(&[0.95, 0.5, 0.99, 0.2, 0.3, 0.1, 0.4, 0.6]);
        // Step 0: top 2 = [2 (0.99), 0 (0.95)]: both pass.
        assert_eq!(commit(q.select(&c, &info(0, 4, 8))), vec![2, 0]);
        // Step 1: 6 left, top 2 = [0.6, 0.5]: first forced, second rejected -> carry 1.
        let c1 = cands(&[0.5, 0.2, 0.3, 0.1, 0.4, 0.6]);
        assert_eq!(commit(q.select(&c1, &info(1, 4, 8))), vec![5]);
        // Step 2: take 2 + 1 = 3: [0.5, 0.4, 0.3] -> 1 committed, carry 2.
        let c2 = cands(&[0.5, 0.2, 0.3, 0.1, 0.4]);
        assert_eq!(commit(q.select(&c2, &info(2, 4, 8))), vec![0]);
        // Step 3 (last): take 2 + 2 = 4 = all: 1 committed, 3 carried, budget extended to 5.
        let c3 = cands(&[0.2, 0.3, 0.1, 0.4]);
        assert_eq!(commit(q.select(&c3, &info(3, 4, 8))), vec![3]);
        // Step 4: quota off, carry 3 = all remaining; high confidences all pass.
        let c4 = cands(&[0.95, 0.97, 0.91]);
        assert_eq!(commit(q.select(&c4, &info(4, 4, 8))), vec![1, 0, 2]);
        assert_eq!(q.rows[0].budget, 5);
        // A fresh block (step 0) resets the state.
        assert_eq!(commit(q.select(&c, &info(0, 4, 8))), vec![2, 0]);
        assert_eq!(
            (q.rows[0].budget, q.rows[0].carry, q.rows[0].quota_on),
            (4, 0, true)
        );
        assert_eq!(q.name(), "quota_threshold=0.9");
    }
}

//! Proposers: logits `(batch, rows, vocab)` → one `(token, confidence)` per row
//! (docs/ALGORITHM.md §2.2, §2.8.1; FORMAT.md §8 LLaDA item 1 and the Dream items).
//!
//! * [`LladaProposer`] follows `llada/generate.py` (NVlabs/Fast-dLLM, from ML-GSAI/LLaDA):
//!   greedy argmax of the raw logits (first index on ties) or Gumbel-max in float64, and the
//!   confidence `softmax(logits as f64)[x0]`, the **untempered** probability of the proposal
//!   (`low_confidence`), or a uniform draw (`random`). Everything but the Gumbel noise runs on the
//!   logits' device with candle ops; only `(token, confidence)` comes back to the host.
//! * [`DreamProposer`] follows `sample_tokens` of `dream/model/generation_utils*.py`: logits / T,
//!   top-p, top-k (applied even at T = 0), a float32 softmax, argmax or a sample, and a score:
//!   the probability (`maskgit_plus`, `confidence_threshold`, `origin`), top1 − top2
//!   (`topk_margin`) or the negative entropy `Σ p ln(p + 1e-10)` (`entropy`, and Dream's block path
//!   for every count schedule). On the CPU it reproduces torch's float32 operation order
//!   ([`crate::torch_f32`]) so threshold decisions match bit for bit; on an accelerator, at T = 0
//!   without filters, it computes the same quantities with candle ops and transfers only the
//!   scores (last-bit differences are possible there).
//!
//! Deviations: the reference's random streams (`torch.rand`, `Categorical.sample`) cannot be
//! reproduced; T > 0 uses our [`Rng`]: per batch row, first one Gumbel draw per `(row, vocab)`
//! entry in row-major order (LLaDA) or one uniform per row for the inverse-CDF sample (Dream), then
//! one uniform per row for `random` confidences. The Gumbel-max uses the log form
//! `argmax l + T g` (the reference's `exp(l) / (-ln u)^T` overflows above l ≈ 709). For bf16
//! logits, Dream's probabilities (and margins) are rounded to bf16 like torch's bf16 softmax
//! output; the bf16 entropy is computed in f32 from those. A row whose logits are all NaN
//! proposes token 0.

use candle_core::{DType, Tensor, D};
use fastdllm_core::{Proposal, Proposer, Rng};

use crate::torch_f32::{reduce_sum, round_bf16, softmax};
use crate::{Error, Result};

type CoreResult<T> = fastdllm_core::Result<T>;

/// How LLaDA scores its proposals.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Remasking {
    /// `softmax(logits as f64)[x0]`, the paper's setting.
    #[default]
    LowConfidence,
    /// A uniform draw in (0, 1) per position, independent of the model.
    Random,
}

impl Remasking {
    /// The snake_case name (`low_confidence`, `random`).
    pub fn as_str(self) -> &'static str {
        match self {
            Remasking::LowConfidence => "low_confidence",
            Remasking::Random => "random",
        }
    }
}

impl std::fmt::Display for Remasking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Remasking {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "low_confidence" => Ok(Remasking::LowConfidence),
            "random" => Ok(Remasking::Random),
            _ => Err(Error::setting(
                "remasking",
                s,
                "one of low_confidence, random",
            )),
        }
    }
}

/// How Dream scores its proposals (the `alg` of Dream's sampler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DreamScore {
    /// The (filtered, tempered) probability of the proposal: `maskgit_plus`,
    /// `confidence_threshold`, `origin`.
    #[serde(alias = "maskgit_plus")]
    Probability,
    /// Top-1 minus top-2 probability: `topk_margin`.
    #[serde(alias = "topk_margin")]
    Margin,
    /// `Σ p ln(p + 1e-10)`, higher = more certain: `entropy`.
    #[serde(alias = "entropy")]
    NegEntropy,
}

impl DreamScore {
    /// The snake_case name (`probability`, `margin`, `neg_entropy`).
    pub fn as_str(self) -> &'static str {
        match self {
            DreamScore::Probability => "probability",
            DreamScore::Margin => "margin",
            DreamScore::NegEntropy => "neg_entropy",
        }
    }
}

impl std::fmt::Display for DreamScore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DreamScore {
    type Err = Error;
    /// Accepts our names and the reference's `alg` names (`maskgit_plus`, `topk_margin`,
    /// `entropy`).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "probability" | "maskgit_plus" => Ok(DreamScore::Probability),
            "margin" | "topk_margin" => Ok(DreamScore::Margin),
            "neg_entropy" | "entropy" => Ok(DreamScore::NegEntropy),
            _ => Err(Error::setting(
                "dream_score",
                s,
                "one of probability (maskgit_plus), margin (topk_margin), neg_entropy (entropy)",
            )),
        }
    }
}

fn check_rngs(rngs: &[Rng], batch: usize) -> CoreResult<()> {
    if rngs.len() != batch {
        return Err(fastdllm_core::Error::setting(
            "rngs",
            rngs.len(),
            format!("one generator per batch row ({batch})"),
        ));
    }
    Ok(())
}

/// First index of the maximum over the last dimension, on the tensor's device: `(b, r, v)` →
/// `(b, r)` u32. (candle's CUDA argmax does not promise the first index on ties; torch's does.)
/// A row without a maximum (all NaN) gives `v`, which callers clamp.
fn first_argmax(t: &Tensor) -> candle_core::Result<Tensor> {
    let v = t.dim(D::Minus1)?;
    let max = t.max_keepdim(D::Minus1)?;
    let hit = t.broadcast_eq(&max)?;
    let idx = Tensor::arange(0u32, v as u32, t.device())?.broadcast_as(t.shape())?;
    let none = Tensor::full(v as u32, t.shape(), t.device())?;
    hit.where_cond(&idx, &none)?.min(D::Minus1)
}

fn assemble(tokens: Vec<Vec<u32>>, conf: Vec<Vec<f64>>, vocab: usize) -> Vec<Vec<Proposal>> {
    let last = vocab.saturating_sub(1) as u32;
    tokens
        .into_iter()
        .zip(conf)
        .map(|(ts, cs)| {
            ts.into_iter()
                .zip(cs)
                .map(|(t, c)| Proposal {
                    token: t.min(last),
                    confidence: c,
                })
                .collect()
        })
        .collect()
}

/// LLaDA's proposer (docs/ALGORITHM.md §2.2): greedy or Gumbel-max proposal, float64 softmax
/// confidence.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LladaProposer {
    /// `T >= 0`; 0 = greedy.
    pub temperature: f64,
    /// The confidence.
    pub remasking: Remasking,
    /// A token never proposed (the mask id; see [`exclude_from_argmax`]). `None` = the literal
    /// reference, which can propose the mask token and then never finish a block.
    pub never_propose: Option<u32>,
}

impl LladaProposer {
    /// A LLaDA proposer (the literal reference: no token excluded).
    pub fn new(temperature: f64, remasking: Remasking) -> Self {
        LladaProposer {
            temperature,
            remasking,
            never_propose: None,
        }
    }
}

/// Sets column `token` of `t` (shape `(.., v)`) to -inf, for the argmax only: the confidence is
/// still the probability under the full distribution, so whenever the model's argmax is not
/// `token` (always, for a trained model and its mask token) the result is the reference's.
/// Without this a model that proposes the mask id rewrites a mask with a mask and a block
/// never completes (random-weight models do this).
pub fn exclude_from_argmax(t: &Tensor, token: Option<u32>) -> candle_core::Result<Tensor> {
    let Some(token) = token else {
        return Ok(t.clone());
    };
    let v = t.dim(D::Minus1)?;
    if token as usize >= v {
        return Ok(t.clone());
    }
    let idx = Tensor::arange(0u32, v as u32, t.device())?.broadcast_as(t.shape())?;
    let hit = idx.broadcast_eq(&Tensor::new(&[token], t.device())?)?;
    let neg = Tensor::full(f64::NEG_INFINITY, t.shape(), t.device())?.to_dtype(t.dtype())?;
    hit.where_cond(&neg, t)
}

impl LladaProposer {
    /// Greedy proposals with their f64 softmax probability in one pass per row on the host:
    /// the same quantities as the tensor path (`exp(l - max) * (1 / sum)`, first index on
    /// ties; the sum vectorised, [`crate::exp_f64`]) without its dozen full-size f64
    /// temporaries. CPU only, where the logits are host
    /// memory already. Rows run in parallel (rayon; each row's arithmetic is sequential, so the
    /// result does not depend on the thread count), and rows whose `needed` flag is false are
    /// skipped (token 0, confidence 0). Host work per step at 32 x 32000 logits: docs/BENCHMARKS.md.
    fn propose_greedy_host(
        &self,
        logits: &Tensor,
        needed: Option<&[Vec<bool>]>,
    ) -> CoreResult<Vec<Vec<Proposal>>> {
        use rayon::prelude::*;
        let (b, r, v) = logits.dims3()?;
        let flat = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let excluded = self.never_propose.map(|t| t as usize);
        let r1 = r.max(1);
        let skip = |i: usize| -> bool {
            needed.is_some_and(|n| {
                !n.get(i / r1)
                    .and_then(|row| row.get(i % r1))
                    .copied()
                    .unwrap_or(true)
            })
        };
        let rows: Vec<Proposal> = flat
            .par_chunks_exact(v)
            .enumerate()
            .map(|(i, row)| {
                if skip(i) {
                    return Proposal {
                        token: 0,
                        confidence: 0.0,
                    };
                }
                let mut best: Option<usize> = None;
                let mut max = f32::NEG_INFINITY;
                for (i, &x) in row.iter().enumerate() {
                    max = max.max(x);
                    if Some(i) != excluded && best.is_none_or(|j| x > row[j]) {
                        best = Some(i);
                    }
                }
                let token = best.unwrap_or(0);
                let m = f64::from(max);
                let sum = crate::exp_f64::sum_exp_shifted(row, m);
                Proposal {
                    token: token as u32,
                    confidence: (f64::from(row[token]) - m).exp() * sum.recip(),
                }
            })
            .collect();
        Ok(rows.chunks(r1).take(b).map(<[Proposal]>::to_vec).collect())
    }

    fn host_greedy(&self, logits: &Tensor) -> bool {
        logits.device().is_cpu()
            && self.temperature == 0.0
            && self.remasking == Remasking::LowConfidence
    }
}

impl Proposer for LladaProposer {
    fn propose(&mut self, logits: &Tensor, rngs: &mut [Rng]) -> CoreResult<Vec<Vec<Proposal>>> {
        let (b, r, v) = logits.dims3()?;
        check_rngs(rngs, b)?;
        if r == 0 || v == 0 {
            return Ok(vec![Vec::new(); b]);
        }
        if self.host_greedy(logits) {
            return self.propose_greedy_host(logits, None);
        }
        let l64 = logits.to_dtype(DType::F64)?;
        let tokens = if self.temperature > 0.0 {
            // Gumbel-max in f64: argmax_v l_v + T g_v (the log of the reference's
            // exp(l) / (-ln u)^T). The noise is drawn on the host, row by row, and uploaded.
            let t = self.temperature;
            let mut noise = Vec::with_capacity(b * r * v);
            for rng in rngs.iter_mut() {
                noise.extend((0..r * v).map(|_| t * rng.gumbel()));
            }
            let noise = Tensor::from_vec(noise, (b, r, v), logits.device())?;
            first_argmax(&exclude_from_argmax(&(&l64 + noise)?, self.never_propose)?)?
        } else {
            first_argmax(&exclude_from_argmax(&l64, self.never_propose)?)?
        };
        let conf = match self.remasking {
            Remasking::LowConfidence => {
                // torch: p = exp(l - max) * (1 / Σ exp(l - max)), gathered at x0.
                let max = l64.max_keepdim(D::Minus1)?;
                let e = l64.broadcast_sub(&max)?.exp()?;
                let inv = e.sum_keepdim(D::Minus1)?.recip()?;
                let idx = tokens
                    .minimum((v - 1) as u32)?
                    .unsqueeze(D::Minus1)?
                    .contiguous()?;
                let e_x0 = e.gather(&idx, D::Minus1)?;
                (e_x0 * inv)?.squeeze(D::Minus1)?.to_vec2::<f64>()?
            }
            Remasking::Random => rngs
                .iter_mut()
                .map(|rng| (0..r).map(|_| rng.open01()).collect())
                .collect(),
        };
        Ok(assemble(tokens.to_vec2::<u32>()?, conf, v))
    }

    /// The distribution a proposal is drawn from: `softmax(logits / T)` (the Gumbel-max sample
    /// of `argmax l + T g`), or at T = 0 the model's `softmax(logits)` whose argmax is taken
    /// (the `low_confidence` score), in f64 as the confidence is computed.
    fn log_probs(&self, logits: &[f32]) -> Vec<f64> {
        let t = if self.temperature > 0.0 {
            self.temperature
        } else {
            1.0
        };
        fastdllm_core::log_softmax(logits, t)
    }

    /// Greedy low-confidence proposals are row-independent and draw no random numbers; Gumbel
    /// noise and random confidences are drawn for every row.
    fn reads_all_rows(&self) -> bool {
        !(self.temperature == 0.0 && self.remasking == Remasking::LowConfidence)
    }

    /// Greedy low-confidence proposals on the CPU skip the rows nobody reads (they draw no
    /// random numbers); every other configuration proposes every row.
    fn propose_needed(
        &mut self,
        logits: &Tensor,
        rngs: &mut [Rng],
        needed: &[Vec<bool>],
    ) -> CoreResult<Vec<Vec<Proposal>>> {
        let (b, r, v) = logits.dims3()?;
        check_rngs(rngs, b)?;
        if r > 0 && v > 0 && self.host_greedy(logits) {
            return self.propose_greedy_host(logits, Some(needed));
        }
        self.propose(logits, rngs)
    }
}

/// Dream's proposer (`sample_tokens`, docs/ALGORITHM.md §2.8.1), in float32 like the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DreamProposer {
    /// `T >= 0`; 0 = greedy. T > 0 divides the logits and samples the proposal.
    pub temperature: f64,
    /// Nucleus filter, in (0, 1]; 1 or `None` = off. Applied even at T = 0.
    pub top_p: Option<f64>,
    /// Keep the `k` largest logits (and ties with the k-th); `None` = off.
    pub top_k: Option<usize>,
    /// The confidence.
    pub score: DreamScore,
    /// A token never proposed (the mask id), as [`LladaProposer::never_propose`].
    pub never_propose: Option<u32>,
}

impl DreamProposer {
    /// A greedy, unfiltered Dream proposer with the given score.
    pub fn greedy(score: DreamScore) -> Self {
        DreamProposer {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            score,
            never_propose: None,
        }
    }

    fn filters(&self) -> bool {
        self.top_p.is_some_and(|p| p < 1.0) || self.top_k.is_some()
    }

    /// One row on the host, in torch's float32 order.
    fn propose_row(&self, logits: &[f32], rng: &mut Rng, bf16: bool) -> Proposal {
        let mut l = logits.to_vec();
        if self.temperature > 0.0 {
            let t = self.temperature as f32;
            for x in &mut l {
                *x /= t;
            }
        }
        if let Some(p) = self.top_p {
            if p < 1.0 {
                top_p_filter(&mut l, p as f32);
            }
        }
        if let Some(k) = self.top_k {
            top_k_filter(&mut l, k);
        }
        let mut probs = softmax(&l);
        if bf16 {
            for p in &mut probs {
                *p = round_bf16(*p);
            }
        }
        let (token, prob) = match self
            .never_propose
            .map(|t| t as usize)
            .filter(|&t| t < probs.len())
        {
            None if self.temperature > 0.0 => sample(&probs, rng),
            None => first_max(&probs),
            Some(excluded) => {
                let mut allowed = probs.clone();
                allowed[excluded] = if self.temperature > 0.0 {
                    0.0
                } else {
                    f32::NEG_INFINITY
                };
                let (i, _) = if self.temperature > 0.0 {
                    sample(&allowed, rng)
                } else {
                    first_max(&allowed)
                };
                (i, probs[i])
            }
        };
        let conf = match self.score {
            DreamScore::Probability => prob,
            DreamScore::Margin => {
                let m = margin(&probs);
                if bf16 {
                    round_bf16(m)
                } else {
                    m
                }
            }
            DreamScore::NegEntropy => neg_entropy(&probs),
        };
        Proposal {
            token: token as u32,
            confidence: f64::from(conf),
        }
    }

    fn propose_host(&self, logits: &Tensor, rngs: &mut [Rng]) -> CoreResult<Vec<Vec<Proposal>>> {
        let (_, r, v) = logits.dims3()?;
        let bf16 = logits.dtype() == DType::BF16;
        let flat = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(rngs
            .iter_mut()
            .enumerate()
            .map(|(bi, rng)| {
                (0..r)
                    .map(|ri| {
                        let start = (bi * r + ri) * v;
                        self.propose_row(&flat[start..start + v], rng, bf16)
                    })
                    .collect()
            })
            .collect())
    }

    /// T = 0 without filters, on the logits' device: the same float32 quantities with candle ops
    /// (reduction order and `exp` are the device's), transferring only tokens and scores.
    fn propose_device(&self, logits: &Tensor) -> CoreResult<Vec<Vec<Proposal>>> {
        let v = logits.dim(D::Minus1)?;
        let l = logits.to_dtype(DType::F32)?;
        let max = l.max_keepdim(D::Minus1)?;
        let e = l.broadcast_sub(&max)?.exp()?;
        let inv = e.sum_keepdim(D::Minus1)?.recip()?;
        let p = e.broadcast_mul(&inv)?;
        let tokens = first_argmax(&exclude_from_argmax(&p, self.never_propose)?)?;
        let top1 = p
            .gather(&tokens.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?
            .squeeze(D::Minus1)?;
        let conf = match self.score {
            DreamScore::Probability => top1,
            DreamScore::Margin => {
                let idx = Tensor::arange(0u32, v as u32, p.device())?.broadcast_as(p.shape())?;
                let is_top = idx.broadcast_eq(&tokens.unsqueeze(D::Minus1)?)?;
                let rest = is_top.where_cond(&p.zeros_like()?, &p)?;
                (top1 - rest.max(D::Minus1)?)?
            }
            DreamScore::NegEntropy => (&p * p.affine(1.0, 1e-10)?.log()?)?.sum(D::Minus1)?,
        };
        let conf: Vec<Vec<f64>> = conf
            .to_vec2::<f32>()?
            .into_iter()
            .map(|row| row.into_iter().map(f64::from).collect())
            .collect();
        Ok(assemble(tokens.to_vec2::<u32>()?, conf, v))
    }
}

impl Proposer for DreamProposer {
    /// The distribution a proposal is drawn from, as [`DreamProposer`] builds it: logits / T
    /// (T > 0), then top-p and top-k (filtered tokens get `-inf`), then the softmax, in f64.
    fn log_probs(&self, logits: &[f32]) -> Vec<f64> {
        let mut l = logits.to_vec();
        if self.temperature > 0.0 {
            let t = self.temperature as f32;
            for x in &mut l {
                *x /= t;
            }
        }
        if let Some(p) = self.top_p.filter(|&p| p < 1.0) {
            top_p_filter(&mut l, p as f32);
        }
        if let Some(k) = self.top_k {
            top_k_filter(&mut l, k);
        }
        fastdllm_core::log_softmax(&l, 1.0)
    }

    /// At T = 0 a row's proposal depends on its own logits only and no random number is drawn;
    /// sampling draws one uniform per row.
    fn reads_all_rows(&self) -> bool {
        self.temperature > 0.0
    }

    fn propose(&mut self, logits: &Tensor, rngs: &mut [Rng]) -> CoreResult<Vec<Vec<Proposal>>> {
        let (b, r, v) = logits.dims3()?;
        check_rngs(rngs, b)?;
        if r == 0 || v == 0 {
            return Ok(vec![Vec::new(); b]);
        }
        let on_device = !logits.device().is_cpu()
            && logits.dtype() != DType::BF16
            && self.temperature == 0.0
            && !self.filters();
        if on_device {
            self.propose_device(logits)
        } else {
            self.propose_host(logits, rngs)
        }
    }
}

/// First index of the maximum and the maximum (torch's `max(dim)`: ties → first; NaN skipped
/// here, so an all-NaN row gives index 0).
fn first_max(xs: &[f32]) -> (usize, f32) {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] || xs[best].is_nan() {
            best = i;
        }
    }
    (best, xs[best])
}

/// Inverse-CDF sample from `probs` with one uniform of `rng`; never picks a zero-probability
/// entry.
fn sample(probs: &[f32], rng: &mut Rng) -> (usize, f32) {
    let total: f64 = probs
        .iter()
        .filter(|p| **p > 0.0)
        .map(|&p| f64::from(p))
        .sum();
    let target = rng.open01() * total;
    let mut cum = 0.0_f64;
    let mut last = None;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cum += f64::from(p);
            last = Some(i);
            if cum > target {
                return (i, p);
            }
        }
    }
    match last {
        Some(i) => (i, probs[i]),
        None => first_max(probs),
    }
}

/// Top-1 minus top-2 probability in f32 (torch: `sort(probs, descending)[0] - [1]`); a
/// one-entry vocabulary gives top-1.
fn margin(probs: &[f32]) -> f32 {
    let (i1, top1) = first_max(probs);
    let top2 = probs
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != i1)
        .map(|(_, &p)| p)
        .fold(0.0_f32, f32::max);
    top1 - top2
}

/// `Σ p ln(p + 1e-10)` in f32 (≤ 0; higher = more certain).
fn neg_entropy(probs: &[f32]) -> f32 {
    let eps = 1e-10_f32;
    let terms: Vec<f32> = probs.iter().map(|&p| p * (p + eps).ln()).collect();
    reduce_sum(&terms)
}

/// Dream's `top_p_logits`: sort descending, float32 softmax of the sorted logits, cumulative sum
/// (float64 accumulator rounded to f32 per entry, like torch's CPU `cumsum`), and remove entry
/// k >= 1 when the cumulative probability **before** it exceeds `top_p` (so the crossing token
/// is kept). Removed logits become `f32::MIN` (`torch.finfo(float32).min`).
pub(crate) fn top_p_filter(l: &mut [f32], top_p: f32) {
    let mut order: Vec<usize> = (0..l.len()).collect();
    order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
    let sorted: Vec<f32> = order.iter().map(|&i| l[i]).collect();
    let p = softmax(&sorted);
    let mut cum = 0.0_f64;
    let mut over = false;
    for (k, &i) in order.iter().enumerate() {
        if k > 0 && over {
            l[i] = f32::MIN;
        }
        cum += f64::from(p[k]);
        over = (cum as f32) > top_p;
    }
}

/// Dream's `top_k_logits`: remove every logit strictly below the k-th largest (ties with it are
/// kept); `k` is capped at the vocabulary size, and 0 filters nothing.
pub(crate) fn top_k_filter(l: &mut [f32], k: usize) {
    let k = k.min(l.len());
    if k == 0 {
        return;
    }
    let mut sorted = l.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    for x in l.iter_mut() {
        if *x < kth {
            *x = f32::MIN;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensor(rows: &[&[f32]]) -> Tensor {
        let v = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (1, rows.len(), v), &Device::Cpu).unwrap()
    }

    fn f64_softmax(row: &[f32]) -> Vec<f64> {
        let m = row
            .iter()
            .map(|&x| f64::from(x))
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|&x| (f64::from(x) - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    #[test]
    fn llada_greedy_argmax_and_f64_probability() {
        let rows: [&[f32]; 3] = [
            &[0.1, 2.0, -1.0, 0.5],
            &[3.0, 3.0, 1.0, 0.0],
            &[-5.0, -4.0, -3.0, -4.5],
        ];
        let mut p = LladaProposer::new(0.0, Remasking::LowConfidence);
        let out = p.propose(&tensor(&rows), &mut [Rng::new(0)]).unwrap();
        assert_eq!(out.len(), 1);
        let toks: Vec<u32> = out[0].iter().map(|x| x.token).collect();
        assert_eq!(toks, vec![1, 0, 2]); // first index on the tie in row 1
        for (prop, row) in out[0].iter().zip(rows) {
            let want = f64_softmax(row)[prop.token as usize];
            assert!(
                (prop.confidence - want).abs() < 1e-15,
                "{} vs {want}",
                prop.confidence
            );
        }
        // Row 1: 1 / (2 + e^-2 + e^-3).
        assert!((out[0][1].confidence - 0.457_640_28).abs() < 1e-6);
    }

    #[test]
    fn llada_rejects_wrong_rng_count() {
        let mut p = LladaProposer::default();
        let e = p
            .propose(&tensor(&[&[0.0, 1.0]]), &mut [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rngs"), "{e}");
    }

    #[test]
    fn llada_gumbel_is_reproducible_and_spreads_with_temperature() {
        let row: Vec<f32> = (0..16).map(|i| if i == 3 { 2.0 } else { 0.0 }).collect();
        let rows: Vec<&[f32]> = vec![&row; 64];
        let logits = tensor(&rows);
        let run = |t: f64, seed: u64| {
            let mut p = LladaProposer::new(t, Remasking::LowConfidence);
            p.propose(&logits, &mut [Rng::new(seed)]).unwrap()
        };
        let (a, b) = (run(1.0, 5), run(1.0, 5));
        assert_eq!(a, b);
        assert_ne!(a, run(1.0, 6));
        // The confidence is the untempered probability of whatever was proposed.
        let probs = f64_softmax(&row);
        for prop in &a[0] {
            assert!((prop.confidence - probs[prop.token as usize]).abs() < 1e-15);
        }
        // A tiny temperature is greedy; a huge one spreads the choices over the vocabulary.
        assert!(run(1e-6, 1)[0].iter().all(|p| p.token == 3));
        let hot: std::collections::HashSet<u32> = run(1e6, 1)[0].iter().map(|p| p.token).collect();
        assert!(hot.len() >= 8, "{hot:?}");
    }

    #[test]
    fn llada_random_remasking_uses_the_rng() {
        let logits = tensor(&[&[0.0, 1.0], &[1.0, 0.0], &[0.5, 0.5]]);
        let mut p = LladaProposer::new(0.0, Remasking::Random);
        let a = p.propose(&logits, &mut [Rng::new(9)]).unwrap();
        let mut r = Rng::new(9);
        let want: Vec<f64> = (0..3).map(|_| r.open01()).collect();
        assert_eq!(a[0].iter().map(|x| x.confidence).collect::<Vec<_>>(), want);
        assert_eq!(
            a[0].iter().map(|x| x.token).collect::<Vec<_>>(),
            vec![1, 0, 0]
        );
    }

    #[test]
    fn llada_batches_rows_independently() {
        let flat: Vec<f32> = vec![0.0, 1.0, 2.0, 5.0, 1.0, 0.0];
        let logits = Tensor::from_vec(flat, (2, 1, 3), &Device::Cpu).unwrap();
        let mut p = LladaProposer::new(0.0, Remasking::LowConfidence);
        let out = p.propose(&logits, &mut [Rng::new(0), Rng::new(1)]).unwrap();
        assert_eq!((out[0][0].token, out[1][0].token), (2, 0));
    }

    /// Skipping the rows nobody reads leaves the read rows exactly as a full proposal, and the
    /// Gumbel path (which draws per row) ignores the hint.
    #[test]
    fn llada_needed_rows_equal_full_proposals() {
        let logits = Tensor::randn(0f32, 3.0, (2, 5, 40), &Device::Cpu).unwrap();
        let needed = vec![
            vec![true, false, true, false, false],
            vec![false, false, false, true, true],
        ];
        let mut p = LladaProposer::new(0.0, Remasking::LowConfidence);
        let full = p.propose(&logits, &mut [Rng::new(0), Rng::new(1)]).unwrap();
        let part = p
            .propose_needed(&logits, &mut [Rng::new(0), Rng::new(1)], &needed)
            .unwrap();
        for b in 0..2 {
            for i in 0..5 {
                if needed[b][i] {
                    assert_eq!(full[b][i], part[b][i]);
                } else {
                    assert_eq!(part[b][i].confidence, 0.0);
                }
            }
        }
        let mut g = LladaProposer::new(0.7, Remasking::LowConfidence);
        let full = g.propose(&logits, &mut [Rng::new(3), Rng::new(4)]).unwrap();
        let part = g
            .propose_needed(&logits, &mut [Rng::new(3), Rng::new(4)], &needed)
            .unwrap();
        assert_eq!(full, part);
    }

    fn dream(score: DreamScore, row: &[f32]) -> Proposal {
        let mut p = DreamProposer::greedy(score);
        p.propose(&tensor(&[row]), &mut [Rng::new(0)]).unwrap()[0][0]
    }

    #[test]
    fn dream_scores_are_f32_values() {
        let row = [1.0_f32, 3.0, 2.0, 3.0, -1.0];
        let probs = softmax(&row);
        let prob = dream(DreamScore::Probability, &row);
        assert_eq!(prob.token, 1);
        assert_eq!(prob.confidence, f64::from(probs[1]));
        assert_eq!(prob.confidence as f32 as f64, prob.confidence);
        // A tie at the top: margin 0.
        assert_eq!(dream(DreamScore::Margin, &row).confidence, 0.0);
        let row = [0.0_f32, 2.0, 1.0];
        let probs = softmax(&row);
        let m = dream(DreamScore::Margin, &row);
        assert_eq!(m.confidence, f64::from(probs[1] - probs[2]));
        assert!((m.confidence - (0.665_240_96 - 0.244_728_48)).abs() < 1e-6);
        let h = dream(DreamScore::NegEntropy, &row);
        let want: f64 = f64_softmax(&row).iter().map(|p| p * p.ln()).sum();
        assert!(
            (h.confidence - want).abs() < 1e-6,
            "{} vs {want}",
            h.confidence
        );
        assert_eq!(h.token, 1);
        // A certain row has (nearly) zero negative entropy, the maximum.
        assert!(dream(DreamScore::NegEntropy, &[0.0, 100.0, 0.0]).confidence > -1e-6);
    }

    #[test]
    fn dream_top_p_keeps_the_crossing_token() {
        // probs of [2, 1, 0, -1] ≈ [0.644, 0.237, 0.087, 0.032].
        let row = [2.0_f32, 1.0, 0.0, -1.0];
        let mut l = row;
        top_p_filter(&mut l, 0.7); // 0.644 < 0.7: the second token crosses and is kept
        assert_eq!(l, [2.0, 1.0, f32::MIN, f32::MIN]);
        let mut l = row;
        top_p_filter(&mut l, 0.5); // the first token already crosses
        assert_eq!(l, [2.0, f32::MIN, f32::MIN, f32::MIN]);
        let mut l = [0.0_f32, 3.0, 1.0];
        top_p_filter(&mut l, 0.99);
        assert_eq!(l, [0.0, 3.0, 1.0]);
        // The confidence is the renormalised nucleus probability, even at T = 0.
        let mut p = DreamProposer {
            top_p: Some(0.7),
            ..DreamProposer::greedy(DreamScore::Probability)
        };
        let out = p.propose(&tensor(&[&row]), &mut [Rng::new(0)]).unwrap()[0][0];
        assert_eq!(out.token, 0);
        assert_eq!(out.confidence, f64::from(softmax(&[2.0, 1.0])[0]));
    }

    #[test]
    fn dream_top_k_keeps_ties() {
        let mut l = [1.0_f32, 5.0, 3.0, 3.0, 0.0];
        top_k_filter(&mut l, 2);
        assert_eq!(l, [f32::MIN, 5.0, 3.0, 3.0, f32::MIN]);
        let mut l = [1.0_f32, 2.0];
        top_k_filter(&mut l, 10);
        assert_eq!(l, [1.0, 2.0]);
    }

    #[test]
    fn dream_sampling_is_reproducible_and_respects_filters() {
        let row: Vec<f32> = (0..8).map(|i| i as f32 * 0.1).collect();
        let rows: Vec<&[f32]> = vec![&row; 200];
        let logits = tensor(&rows);
        let mut p = DreamProposer {
            temperature: 1.0,
            top_p: None,
            top_k: Some(3),
            score: DreamScore::Probability,
            never_propose: None,
        };
        let a = p.propose(&logits, &mut [Rng::new(3)]).unwrap();
        assert_eq!(a, p.propose(&logits, &mut [Rng::new(3)]).unwrap());
        let seen: std::collections::HashSet<u32> = a[0].iter().map(|x| x.token).collect();
        assert_eq!(seen, [5, 6, 7].into_iter().collect());
        // The confidence is the tempered, filtered probability of the sample.
        let mut l = row.clone();
        top_k_filter(&mut l, 3);
        let probs = softmax(&l);
        for prop in &a[0] {
            assert_eq!(prop.confidence, f64::from(probs[prop.token as usize]));
        }
    }

    #[test]
    fn dream_device_path_agrees_with_host_path() {
        let rows: Vec<Vec<f32>> = (0..6)
            .map(|r| {
                (0..50)
                    .map(|i| ((i * 7 + r * 13) % 17) as f32 * 0.9 - 4.0)
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let logits = tensor(&refs);
        for score in [
            DreamScore::Probability,
            DreamScore::Margin,
            DreamScore::NegEntropy,
        ] {
            let p = DreamProposer::greedy(score);
            let host = p.propose_host(&logits, &mut [Rng::new(0)]).unwrap();
            let dev = p.propose_device(&logits).unwrap();
            for (h, d) in host[0].iter().zip(&dev[0]) {
                assert_eq!(h.token, d.token, "{score}");
                assert!(
                    (h.confidence - d.confidence).abs() < 1e-5,
                    "{score}: {h:?} vs {d:?}"
                );
            }
        }
    }

    #[test]
    fn dream_bf16_logits_round_the_probability() {
        let row = [0.0_f32, 2.0, 1.0];
        let logits = tensor(&[&row]).to_dtype(DType::BF16).unwrap();
        let mut p = DreamProposer::greedy(DreamScore::Probability);
        let out = p.propose(&logits, &mut [Rng::new(0)]).unwrap()[0][0];
        assert_eq!(out.confidence, f64::from(round_bf16(softmax(&row)[1])));
    }

    #[test]
    fn names_parse_and_print() {
        assert_eq!("random".parse::<Remasking>().unwrap(), Remasking::Random);
        assert_eq!(Remasking::LowConfidence.to_string(), "low_confidence");
        assert_eq!(
            "topk_margin".parse::<DreamScore>().unwrap(),
            DreamScore::Margin
        );
        assert_eq!(
            "entropy".parse::<DreamScore>().unwrap(),
            DreamScore::NegEntropy
        );
        let e = "bogus".parse::<Remasking>().unwrap_err().to_string();
        assert_eq!(
            e,
            "remasking must be one of low_confidence, random, got bogus"
        );
    }

    #[test]
    fn the_excluded_token_is_never_proposed_but_confidence_is_unchanged() {
        // Row 0's argmax is token 2; excluding it proposes token 1 with its full-softmax probability.
        let row: Vec<f32> = vec![0.0, 1.0, 3.0, -1.0];
        let logits = tensor(&[&row]);
        let mut llada = LladaProposer {
            never_propose: Some(2),
            ..LladaProposer::new(0.0, Remasking::LowConfidence)
        };
        let got = llada.propose(&logits, &mut [Rng::new(0)]).unwrap()[0][0];
        let z: f64 = row.iter().map(|&x| f64::from(x).exp()).sum();
        assert_eq!(got.token, 1);
        assert!((got.confidence - 1f64.exp() / z).abs() < 1e-12, "{got:?}");
        let mut dream = DreamProposer {
            never_propose: Some(2),
            ..DreamProposer::greedy(DreamScore::Probability)
        };
        let got = dream.propose(&logits, &mut [Rng::new(0)]).unwrap()[0][0];
        assert_eq!(got.token, 1);
        assert!((got.confidence - 1f64.exp() / z).abs() < 1e-6, "{got:?}");
        // Without exclusion the literal reference proposes the argmax.
        assert_eq!(
            LladaProposer::new(0.0, Remasking::LowConfidence)
                .propose(&logits, &mut [Rng::new(0)])
                .unwrap()[0][0]
                .token,
            2
        );
    }

    #[test]
    fn llada_host_greedy_path_equals_the_tensor_formula() {
        let mut rng = Rng::new(11);
        let v = 300;
        let data: Vec<f32> = (0..2 * 3 * v)
            .map(|_| (rng.open01() as f32 - 0.5) * 20.0)
            .collect();
        let logits = Tensor::from_vec(data, (2, 3, v), &Device::Cpu).unwrap();
        let got = LladaProposer::new(0.0, Remasking::LowConfidence)
            .propose(&logits, &mut [Rng::new(0), Rng::new(1)])
            .unwrap();
        let l64 = logits.to_dtype(DType::F64).unwrap();
        let max = l64.max_keepdim(D::Minus1).unwrap();
        let e = l64.broadcast_sub(&max).unwrap().exp().unwrap();
        let inv = e.sum_keepdim(D::Minus1).unwrap().recip().unwrap();
        let tokens = first_argmax(&l64).unwrap();
        let idx = tokens.unsqueeze(D::Minus1).unwrap().contiguous().unwrap();
        let conf = (e.gather(&idx, D::Minus1).unwrap() * inv)
            .unwrap()
            .squeeze(D::Minus1)
            .unwrap();
        let (tokens, conf) = (
            tokens.to_vec2::<u32>().unwrap(),
            conf.to_vec2::<f64>().unwrap(),
        );
        for bi in 0..2 {
            for ri in 0..3 {
                assert_eq!(got[bi][ri].token, tokens[bi][ri]);
                let (a, b) = (got[bi][ri].confidence, conf[bi][ri]);
                // Sum order differs (4 lanes vs one chain): within v rounding errors.
                assert!(
                    (a - b).abs() <= v as f64 * f64::EPSILON * b.abs(),
                    "{a} vs {b}"
                );
            }
        }
    }
}

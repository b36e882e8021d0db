//! The one block-wise generation loop (SPEC 2.4-2.8.3), for every cache mode and unmasking rule.
//!
//! Reference: NVlabs/Fast-dLLM `llada/generate.py` (`generate`, `generate_with_prefix_cache`,
//! `generate_with_dual_cache`, three near-copies there) and `dream/model/generation_utils_block.py`.
//! Here the differences between those functions are policies: the [`CachePolicy`] says what to
//! forward, the [`Proposer`] turns logits into proposals, the [`UnmaskPolicy`] picks commits.
//!
//! Per block: step 0 is the block's first forward (a full forward in every reference mode); the
//! loop continues while the block has masks, checking **before** each forward (the later
//! reference; the June-2025 snapshot wasted one NFE per block). With shifted-logit models (Dream)
//! step 0 commits exactly the block start ([`DecodeConfig::forces_block_start`]).
//!
//! Batching (beyond the reference, which gets it wrong: Fast-dLLM issues #7, #39, #40): prompts
//! of different lengths are **left-padded** with the model's pad id to a common length `P`, so all
//! rows share the block ranges. Pad keys get a large negative attention bias, and each row's RoPE
//! positions are its own token indices (pads excluded), so a row computes what it computes alone.
//! Each row has its own step counter, NFE, RNG and completion state: a row is *active* in a
//! forward exactly when it would have run that forward alone, so its outputs, its `unmask_step`
//! and its `nfe` are those of a solo run. (The reference instead uses absolute positions with the
//! pads included, and LLaDA attends to pads.)

use candle_core::{DType, Tensor};

use crate::config::{BlockSchedule, DecodeConfig};
use crate::model::{DiffusionLm, ForwardInput, PassthroughKv, Positions};
use crate::policy::{
    CachePolicy, Candidate, ForwardPlan, KvShape, Proposer, Selection, StepAt, StepInfo,
    UnmaskPolicy,
};
use crate::rng::Rng;
use crate::trace::{Commit, DriftStats, StepRecord, Trace};
use crate::{Error, Result, TokenId};

/// Attention bias of pad keys (finite, so no row can become NaN; candle#3236).
const PAD_KEY_BIAS: f32 = -1.0e30;

/// The three policies one generation runs with.
pub struct Decoder<'a> {
    /// What to forward and how K/V are treated.
    pub cache: &'a mut dyn CachePolicy,
    /// Logits to proposals.
    pub proposer: &'a mut dyn Proposer,
    /// Proposals to commits.
    pub unmask: &'a mut dyn UnmaskPolicy,
}

/// Optional outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Record a [`Trace`].
    pub trace: bool,
    /// At every cached (approximate) step, also run the exact forward and record [`DriftStats`]
    /// in the trace (implies `trace`). These extra forwards are not counted in the NFE.
    pub drift: bool,
}

/// Result of one row.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RowOutput {
    /// The row's prompt, without padding.
    pub prompt: Vec<TokenId>,
    /// The `gen_length` answer positions (the mask id where a policy ended a block early).
    pub generated: Vec<TokenId>,
    /// For each answer position, the row's forward index at which it was committed.
    pub unmask_step: Vec<Option<usize>>,
    /// Tokens committed by each of the row's forwards (length = `nfe`).
    pub tokens_per_step: Vec<usize>,
    /// Forwards this row took part in (= its NFE when generated alone).
    pub nfe: usize,
}

/// Result of a generation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generation {
    /// One output per prompt, in order.
    pub rows: Vec<RowOutput>,
    /// Forward calls made for the whole batch.
    pub nfe: usize,
    /// Per-step records, if requested.
    pub trace: Option<Trace>,
}

/// Left-padded canvas of a batch.
struct Canvas {
    rows: Vec<Vec<TokenId>>,
    pads: Vec<usize>,
    prompt_len: usize,
    mask: TokenId,
}

impl Canvas {
    fn new(prompts: &[Vec<TokenId>], gen_length: usize, pad: TokenId, mask: TokenId) -> Self {
        let prompt_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pads: Vec<usize> = prompts.iter().map(|p| prompt_len - p.len()).collect();
        let rows = prompts
            .iter()
            .zip(&pads)
            .map(|(p, &n)| {
                let mut row = vec![pad; n];
                row.extend_from_slice(p);
                row.resize(prompt_len + gen_length, mask);
                row
            })
            .collect();
        Canvas {
            rows,
            pads,
            prompt_len,
            mask,
        }
    }

    fn padded(&self) -> bool {
        self.pads.iter().any(|&p| p > 0)
    }

    fn masks_in(&self, row: usize, range: std::ops::Range<usize>) -> usize {
        self.rows[row][range]
            .iter()
            .filter(|&&t| t == self.mask)
            .count()
    }

    /// Window tokens, shape `(batch, window_len)`.
    fn tokens(
        &self,
        window: &std::ops::Range<usize>,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        let flat: Vec<u32> = self
            .rows
            .iter()
            .flat_map(|r| r[window.clone()].iter().copied())
            .collect();
        Ok(Tensor::from_vec(
            flat,
            (self.rows.len(), window.len()),
            device,
        )?)
    }

    fn positions(
        &self,
        window: &std::ops::Range<usize>,
        device: &candle_core::Device,
    ) -> Result<Positions> {
        if !self.padded() {
            return Ok(Positions::Contiguous {
                start: window.start,
            });
        }
        let flat: Vec<u32> = self
            .pads
            .iter()
            .flat_map(|&pad| window.clone().map(move |i| i.saturating_sub(pad) as u32))
            .collect();
        Ok(Positions::PerRow(Tensor::from_vec(
            flat,
            (self.rows.len(), window.len()),
            device,
        )?))
    }

    fn key_bias(&self, device: &candle_core::Device) -> Result<Option<Tensor>> {
        if !self.padded() {
            return Ok(None);
        }
        let len = self.rows[0].len();
        let flat: Vec<f32> = self
            .pads
            .iter()
            .flat_map(|&pad| (0..len).map(move |i| if i < pad { PAD_KEY_BIAS } else { 0.0 }))
            .collect();
        Ok(Some(Tensor::from_vec(
            flat,
            (self.rows.len(), 1, 1, len),
            device,
        )?))
    }

    fn input(
        &self,
        window: &std::ops::Range<usize>,
        rows: &std::ops::Range<usize>,
        key_bias: &Option<Tensor>,
        device: &candle_core::Device,
    ) -> Result<ForwardInput> {
        Ok(ForwardInput {
            tokens: self.tokens(window, device)?,
            positions: self.positions(window, device)?,
            window_start: window.start,
            key_bias: key_bias.clone(),
            logits_rows: rows.start - window.start..rows.end - window.start,
        })
    }
}

/// What the observer of [`generate_with`] decides after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop now: the loop returns [`Error::Cancelled`].
    Stop,
}

/// The state after one step (one forward and its commits), given to the observer of
/// [`generate_with`].
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// Index of the current block (0-based).
    pub block_idx: usize,
    /// `K = gen_length / block_length`.
    pub num_blocks: usize,
    /// The step inside the block (0-based).
    pub step: usize,
    /// Index of the forward that was just made (batch-wide).
    pub forward_idx: usize,
    /// Answer positions of the current block (`k*B .. (k+1)*B`).
    pub answer_block: std::ops::Range<usize>,
    /// Per row: the row's current block is final (no mask left, or its policy ended the block).
    pub row_block_done: &'a [bool],
    /// Every row's current block is final: the next step (if any) starts the next block.
    pub block_complete: bool,
    rows: &'a [Vec<TokenId>],
    prompt_len: usize,
}

impl StepEvent<'_> {
    /// Rows of the batch.
    pub fn batch(&self) -> usize {
        self.rows.len()
    }

    /// Row `r`'s `gen_length` answer positions as of now (the mask id where nothing is
    /// committed yet). Positions of completed blocks are final.
    pub fn answer(&self, r: usize) -> &[TokenId] {
        self.rows.get(r).map_or(&[], |row| &row[self.prompt_len..])
    }
}

/// Generates `gen_length` tokens after each prompt.
///
/// `rngs` holds one generator per prompt (see [`Rng::row_seed`]). Errors on invalid settings,
/// invalid prompts, a policy breaking its contract, or a block exceeding the step cap.
pub fn generate(
    model: &dyn DiffusionLm,
    prompts: &[Vec<TokenId>],
    cfg: &DecodeConfig,
    dec: Decoder<'_>,
    rngs: &mut [Rng],
    opts: &GenerateOptions,
) -> Result<Generation> {
    generate_with(model, prompts, cfg, dec, rngs, opts, &mut |_| {
        Control::Continue
    })
}

/// [`generate`] with an observer called after every step (streaming, cancellation). The
/// observer sees the canvas but cannot change it, so the outputs are those of [`generate`];
/// [`Control::Stop`] ends the generation with [`Error::Cancelled`].
pub fn generate_with(
    model: &dyn DiffusionLm,
    prompts: &[Vec<TokenId>],
    cfg: &DecodeConfig,
    dec: Decoder<'_>,
    rngs: &mut [Rng],
    opts: &GenerateOptions,
    on_step: &mut dyn FnMut(&StepEvent<'_>) -> Control,
) -> Result<Generation> {
    cfg.validate()?;
    let spec = model.spec();
    if prompts.is_empty() {
        return Err(Error::InvalidPrompt("the batch has no prompt".into()));
    }
    if rngs.len() != prompts.len() {
        return Err(Error::setting(
            "rngs",
            rngs.len(),
            format!("one per prompt ({})", prompts.len()),
        ));
    }
    for p in prompts {
        cfg.validate_prompt(spec, p)?;
    }
    let Decoder {
        cache,
        proposer,
        unmask,
    } = dec;
    let device = model.device();
    let batch = prompts.len();
    let gen_length = cfg.gen_length;
    let mut canvas = Canvas::new(prompts, gen_length, spec.pad_token_id, spec.mask_token_id);
    let sched = BlockSchedule::new(canvas.prompt_len, cfg);
    let seq_len = sched.seq_len();
    let p0 = canvas.prompt_len;
    let key_bias = canvas.key_bias(device)?;
    cache.prepare(&KvShape {
        num_layers: spec.num_layers,
        batch,
        num_kv_heads: spec.num_kv_heads,
        seq_len,
        head_dim: spec.head_dim,
        dtype: model.dtype(),
        device: device.clone(),
    })?;
    let force_start = cfg.forces_block_start(spec);
    let steps_per_block = cfg.steps_per_block();
    let cap = cfg.step_cap();
    let mut trace = (opts.trace || opts.drift).then(Trace::default);
    let mut nfe = 0usize;
    let mut outs: Vec<RowOutput> = prompts
        .iter()
        .map(|p| RowOutput {
            prompt: p.clone(),
            generated: Vec::new(),
            unmask_step: vec![None; gen_length],
            tokens_per_step: Vec::new(),
            nfe: 0,
        })
        .collect();

    for (block_idx, block) in sched.blocks().enumerate() {
        let masks_at_start: Vec<usize> = (0..batch)
            .map(|r| canvas.masks_in(r, block.clone()))
            .collect();
        let mut ended = vec![false; batch];
        let mut step = 0usize;
        loop {
            let active: Vec<bool> = (0..batch)
                .map(|r| !ended[r] && canvas.masks_in(r, block.clone()) > 0)
                .collect();
            if !active.iter().any(|&a| a) {
                break;
            }
            if step >= cap {
                return Err(Error::NoProgress {
                    block: block_idx,
                    steps: step,
                    cap,
                });
            }
            let plan = cache.plan(&StepAt {
                block_idx,
                block: block.clone(),
                step,
                seq_len,
            });
            check_plan(&plan, &block, seq_len)?;
            let forced = force_start && step == 0;
            let rows = if forced {
                block.start..block.start + 1
            } else {
                block.clone()
            };
            let input = canvas.input(&plan.window, &rows, &key_bias, device)?;
            let logits = model.forward(&input, cache.view(&plan)?)?;
            let forward_idx = nfe;
            nfe += 1;
            let drift = if opts.drift && !plan.is_exact() {
                let exact_in = canvas.input(&(0..seq_len), &rows, &key_bias, device)?;
                let exact = model.forward(&exact_in, &mut PassthroughKv)?;
                let cand_rows: Vec<Vec<usize>> = (0..batch)
                    .map(|r| {
                        if !active[r] {
                            return Vec::new();
                        }
                        rows.clone()
                            .filter(|&p| canvas.rows[r][p] == canvas.mask)
                            .map(|p| p - rows.start)
                            .collect()
                    })
                    .collect();
                Some(drift_stats(&logits, &exact, &cand_rows)?)
            } else {
                None
            };
            let proposals = propose_active(proposer, &logits, rngs, &active)?;
            let mut commits = vec![Vec::new(); batch];
            for r in 0..batch {
                if !active[r] {
                    continue;
                }
                let props = proposals
                    .get(r)
                    .ok_or_else(|| Error::Policy("proposer returned too few rows".into()))?;
                if props.len() != rows.len() {
                    return Err(Error::Policy(format!(
                        "proposer returned {} proposals for {} logits rows",
                        props.len(),
                        rows.len()
                    )));
                }
                let candidates: Vec<Candidate> = rows
                    .clone()
                    .filter(|&p| canvas.rows[r][p] == canvas.mask)
                    .map(|p| Candidate {
                        position: p,
                        token: props[p - rows.start].token,
                        confidence: props[p - rows.start].confidence,
                    })
                    .collect();
                let chosen: Vec<Candidate> = if forced {
                    candidates
                } else {
                    let info = StepInfo {
                        row: r,
                        step,
                        steps_per_block,
                        block_length: cfg.block_length,
                        block_masks_at_start: masks_at_start[r],
                    };
                    match unmask.select(&candidates, &info) {
                        Selection::EndBlock => {
                            ended[r] = true;
                            Vec::new()
                        }
                        Selection::Commit(idx) => pick(&candidates, &idx)?,
                    }
                };
                let out = &mut outs[r];
                for c in &chosen {
                    canvas.rows[r][c.position] = c.token;
                    out.unmask_step[c.position - p0] = Some(out.nfe);
                    commits[r].push(Commit {
                        answer_idx: c.position - p0,
                        token: c.token,
                        confidence: c.confidence,
                    });
                }
                out.tokens_per_step.push(chosen.len());
                out.nfe += 1;
            }
            if let Some(t) = trace.as_mut() {
                t.steps.push(StepRecord {
                    forward_idx,
                    block_idx,
                    step,
                    window: plan.window.clone(),
                    kv: plan.kv,
                    commits,
                    drift,
                });
            }
            step += 1;
            let row_block_done: Vec<bool> = (0..batch)
                .map(|r| ended[r] || canvas.masks_in(r, block.clone()) == 0)
                .collect();
            let event = StepEvent {
                block_idx,
                num_blocks: sched.num_blocks,
                step: step - 1,
                forward_idx,
                answer_block: block.start - p0..block.end - p0,
                block_complete: row_block_done.iter().all(|&d| d),
                row_block_done: &row_block_done,
                rows: &canvas.rows,
                prompt_len: p0,
            };
            if on_step(&event) == Control::Stop {
                return Err(Error::Cancelled);
            }
        }
    }
    for (r, out) in outs.iter_mut().enumerate() {
        out.generated = canvas.rows[r][p0..].to_vec();
    }
    Ok(Generation {
        rows: outs,
        nfe,
        trace,
    })
}

/// Proposals for the active rows only (inactive rows get none), so a row's random stream
/// advances exactly as in a solo run.
fn propose_active(
    proposer: &mut dyn Proposer,
    logits: &Tensor,
    rngs: &mut [Rng],
    active: &[bool],
) -> Result<Vec<Vec<crate::policy::Proposal>>> {
    if active.iter().all(|&a| a) {
        return proposer.propose(logits, rngs);
    }
    let idx: Vec<u32> = (0..active.len())
        .filter(|&r| active[r])
        .map(|r| r as u32)
        .collect();
    let sub = logits.index_select(&Tensor::new(idx.as_slice(), logits.device())?, 0)?;
    let mut sub_rngs: Vec<Rng> = idx.iter().map(|&r| rngs[r as usize].clone()).collect();
    let mut props = proposer.propose(&sub, &mut sub_rngs)?.into_iter();
    let mut out = vec![Vec::new(); active.len()];
    for (&r, rng) in idx.iter().zip(sub_rngs) {
        rngs[r as usize] = rng;
        out[r as usize] = props.next().unwrap_or_default();
    }
    Ok(out)
}

fn check_plan(plan: &ForwardPlan, block: &std::ops::Range<usize>, seq_len: usize) -> Result<()> {
    let w = &plan.window;
    if w.start > block.start || w.end < block.end || w.end > seq_len {
        return Err(Error::Policy(format!(
            "cache plan window {w:?} must contain the block {block:?} and lie inside 0..{seq_len}"
        )));
    }
    Ok(())
}

fn pick(candidates: &[Candidate], idx: &[usize]) -> Result<Vec<Candidate>> {
    let mut seen = vec![false; candidates.len()];
    idx.iter()
        .map(|&i| match seen.get_mut(i) {
            Some(s) if !*s => {
                *s = true;
                Ok(candidates[i])
            }
            _ => Err(Error::Policy(format!(
                "selection index {i} is repeated or out of range (0..{})",
                candidates.len()
            ))),
        })
        .collect()
}

/// Compares cached and exact logits on the given rows of each batch row.
fn drift_stats(cached: &Tensor, exact: &Tensor, rows: &[Vec<usize>]) -> Result<DriftStats> {
    let cached = cached.to_dtype(DType::F64)?.to_vec3::<f64>()?;
    let exact = exact.to_dtype(DType::F64)?.to_vec3::<f64>()?;
    let mut s = DriftStats {
        cosine_min: f64::INFINITY,
        cosine_mean: 0.0,
        max_abs_diff: 0.0,
        argmax_agreement: 0.0,
        kl_mean: 0.0,
        rows: 0,
    };
    for (b, rs) in rows.iter().enumerate() {
        for &i in rs {
            let (c, e) = (&cached[b][i], &exact[b][i]);
            let dot: f64 = c.iter().zip(e).map(|(a, b)| a * b).sum();
            let nc = c.iter().map(|a| a * a).sum::<f64>().sqrt();
            let ne = e.iter().map(|a| a * a).sum::<f64>().sqrt();
            let cos = if nc > 0.0 && ne > 0.0 {
                dot / (nc * ne)
            } else {
                1.0
            };
            s.cosine_min = s.cosine_min.min(cos);
            s.cosine_mean += cos;
            for (a, b) in c.iter().zip(e) {
                s.max_abs_diff = s.max_abs_diff.max((a - b).abs());
            }
            if argmax(c) == argmax(e) {
                s.argmax_agreement += 1.0;
            }
            let (lc, le) = (log_softmax(c), log_softmax(e));
            s.kl_mean += le
                .iter()
                .zip(&lc)
                .map(|(pe, pc)| pe.exp() * (pe - pc))
                .sum::<f64>();
            s.rows += 1;
        }
    }
    if s.rows > 0 {
        let n = s.rows as f64;
        s.cosine_mean /= n;
        s.argmax_agreement /= n;
        s.kl_mean /= n;
    } else {
        s.cosine_min = 1.0;
    }
    Ok(s)
}

fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

fn log_softmax(xs: &[f64]) -> Vec<f64> {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    xs.iter().map(|x| x - lse).collect()
}

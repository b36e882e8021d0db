//! The one block-wise generation loop (docs/ALGORITHM.md §2.4-§2.8.3), for every cache mode and unmasking rule.
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
//! Batching (beyond the reference, which gets it wrong: NVlabs/Fast-dLLM issues #7, #39, #40): rows are
//! padded so that their current blocks share canvas columns (`canvas.rs`: left padding when
//! all rows start together). Pad keys get a large negative attention bias, and each row's RoPE
//! positions are its own token indices (pads excluded), so a row computes what it computes alone.
//! Each row has its own step counter, NFE, RNG and completion state: a row is *active* in a
//! forward exactly when it would have run that forward alone, so its outputs, its `unmask_step`
//! and its `nfe` are those of a solo run. (The reference instead uses absolute positions with the
//! pads included, and LLaDA attends to pads.) Rows may join a running batch between blocks and
//! leave when done ([`BlockBatch`]); [`generate()`] admits every row before the first block.

use std::cell::Cell;

use candle_core::{DType, Tensor};

use crate::canvas::{Canvas, RowLayout};
use crate::config::DecodeConfig;
use crate::drift;
use crate::model::{DiffusionLm, ModelSpec};
use crate::policy::{
    CachePolicy, Candidate, ForwardPlan, KvAccess, KvShape, Proposal, Proposer, Selection, StepAt,
    StepInfo, StepObservation, TokenLogprobs, UnmaskPolicy,
};
use crate::rng::Rng;
use crate::trace::{Commit, DriftStats, StepRecord, Trace};
use crate::{Error, Result, TokenId};

/// The three policies one generation runs with.
pub struct Policies<'a> {
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
    /// Per answer position, the committed token's log-probability and the top alternatives at
    /// its commit ([`BlockBatch::record_logprobs`]); empty unless the row asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<Option<TokenLogprobs>>,
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

/// What the observer of [`generate_with`] decides after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop now: the loop returns [`Error::Cancelled`].
    Stop,
}

/// The state after one step (one forward and its commits), given to the observer of
/// [`generate_with`] and [`BlockBatch::run_block`]. Rows are indexed by their place in the
/// current round (`0..batch()`); [`StepEvent::row_id`] names them.
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// Index of the round (every row runs one block per round; equals the block index when all
    /// rows started together, as in [`generate`]).
    pub round: usize,
    /// The step inside the round's blocks (0-based).
    pub step: usize,
    /// Index of the forward that was just made (batch-wide).
    pub forward_idx: usize,
    /// Per row: the row's current block is final (no mask left, or its policy ended the block).
    pub row_block_done: &'a [bool],
    /// Every row's current block is final: the next step (if any) starts the next round.
    pub block_complete: bool,
    rows: &'a [LiveRow],
    canvas: &'a Canvas,
    block_length: usize,
    finish: &'a [Cell<bool>],
}

impl StepEvent<'_> {
    /// Rows of the round.
    pub fn batch(&self) -> usize {
        self.rows.len()
    }

    /// The id [`BlockBatch::admit`] gave row `r` (its prompt index in [`generate`]).
    pub fn row_id(&self, r: usize) -> Option<RowId> {
        self.rows.get(r).map(|row| row.id)
    }

    /// Index of row `r`'s current block.
    pub fn block_idx(&self, r: usize) -> Option<usize> {
        self.rows.get(r).map(|row| row.block_idx)
    }

    /// Row `r`'s number of blocks, `K = gen_length / block_length`.
    pub fn num_blocks(&self, r: usize) -> Option<usize> {
        self.rows.get(r).map(|row| row.num_blocks)
    }

    /// Answer positions of row `r`'s current block (`k*B .. (k+1)*B`).
    pub fn answer_block(&self, r: usize) -> std::ops::Range<usize> {
        let k = self.block_idx(r).unwrap_or(0);
        k * self.block_length..(k + 1) * self.block_length
    }

    /// Row `r`'s `gen_length` answer positions as of now (the mask id where nothing is
    /// committed yet). Positions of completed blocks are final.
    pub fn answer(&self, r: usize) -> &[TokenId] {
        if r >= self.rows.len() {
            return &[];
        }
        self.canvas.answer(r)
    }

    /// Row `r`'s commit-time log-probabilities per answer position so far (empty unless the
    /// row asked, [`BlockBatch::record_logprobs`]).
    pub fn logprobs(&self, r: usize) -> &[Option<TokenLogprobs>] {
        self.rows
            .get(r)
            .map_or(&[], |row| row.out.logprobs.as_slice())
    }

    /// Forwards row `r` has taken part in so far (its NFE).
    pub fn row_nfe(&self, r: usize) -> usize {
        self.rows.get(r).map_or(0, |row| row.out.nfe)
    }

    /// Ends row `r`'s generation now: it sits out the rest of the round and leaves the batch
    /// at its end as a [`FinishedRow`] with [`FinishedRow::early`] set, its uncommitted answer
    /// positions left as the mask id. Committed positions never change, so an answer that is
    /// already final (its end-of-sequence token and every position before it committed) is
    /// the same as after the full canvas; only the forwards spent on the rest are saved.
    /// The other rows are unaffected (each row computes what it computes alone).
    pub fn finish_row(&self, r: usize) {
        if let Some(f) = self.finish.get(r) {
            f.set(true);
        }
    }
}

/// Names a row of a [`BlockBatch`]: ids are given in admission order from 0 and never reused.
/// [`StepInfo::row`] carries it, so per-row policies (`fastdllm_sampler::PerRow`) can follow a
/// row through rounds in which its place in the batch changes.
pub type RowId = usize;

/// A row that finished its last block.
#[derive(Debug, Clone)]
pub struct FinishedRow {
    /// Its id.
    pub id: RowId,
    /// Its output (what it would have produced alone).
    pub output: RowOutput,
    /// Its random stream after the generation.
    pub rng: Rng,
    /// It left before its last block ([`StepEvent::finish_row`]).
    pub early: bool,
}

/// One row of a [`BlockBatch`].
#[derive(Debug)]
struct LiveRow {
    id: RowId,
    /// Prompt then answer (mask ids where nothing is committed).
    tokens: Vec<TokenId>,
    prompt_len: usize,
    /// Finished blocks.
    block_idx: usize,
    /// Its `gen_length / block_length`.
    num_blocks: usize,
    rng: Rng,
    out: RowOutput,
    /// Record each commit's log-probability and this many alternatives
    /// ([`BlockBatch::record_logprobs`]).
    top_logprobs: Option<usize>,
}

/// A batch that rows join and leave between blocks (step-level continuous batching).
///
/// Each [`BlockBatch::run_block`] is one *round*: every row decodes its own next block, all rows
/// in lock-step forwards (a row whose block is final sits out the remaining steps, as in a solo
/// run). Rows admitted between rounds start at their block 0 next to rows that are further on;
/// rows that finished their last block leave at the end of the round. The canvas is re-laid each
/// round so that all current blocks share canvas columns (`canvas.rs`); every block starts
/// with a full forward in every cache mode, which computes the K/V of the newcomers' prompts, so
/// a row's output equals its solo output whenever it joins. The K/V store is prepared once per
/// round and only reallocated when the round's shape changes (never inside a block).
///
/// [`generate`] is this with every row admitted before the first round.
#[derive(Debug)]
pub struct BlockBatch {
    cfg: DecodeConfig,
    opts: GenerateOptions,
    spec: ModelSpec,
    rows: Vec<LiveRow>,
    next_id: RowId,
    rounds: usize,
    forwards: usize,
    trace: Option<Trace>,
}

impl BlockBatch {
    /// An empty batch for `model` decoding with `cfg` (validated here).
    pub fn new(spec: &ModelSpec, cfg: &DecodeConfig, opts: GenerateOptions) -> Result<Self> {
        cfg.validate()?;
        Ok(BlockBatch {
            cfg: cfg.clone(),
            opts,
            spec: spec.clone(),
            rows: Vec::new(),
            next_id: 0,
            rounds: 0,
            forwards: 0,
            trace: (opts.trace || opts.drift).then(Trace::default),
        })
    }

    /// Adds a row that starts its block 0 at the next round, with the batch's settings. `rng`
    /// is the row's own random stream ([`Rng::row_seed`]). Errors on an invalid prompt.
    pub fn admit(&mut self, prompt: &[TokenId], rng: Rng) -> Result<RowId> {
        let cfg = self.cfg.clone();
        self.admit_with(prompt, &cfg, rng)
    }

    /// [`BlockBatch::admit`] with the row's own settings, which must
    /// [share blocks](DecodeConfig::shares_blocks_with) with the batch's (its `gen_length` may
    /// differ).
    pub fn admit_with(
        &mut self,
        prompt: &[TokenId],
        cfg: &DecodeConfig,
        rng: Rng,
    ) -> Result<RowId> {
        cfg.validate()?;
        if !cfg.shares_blocks_with(&self.cfg) {
            return Err(Error::setting(
                "decode config",
                format!(
                    "block_length {}, {} steps per block",
                    cfg.block_length,
                    cfg.steps_per_block()
                ),
                format!(
                    "the running batch's block_length {}, {} steps per block, step cap and block-start rule",
                    self.cfg.block_length,
                    self.cfg.steps_per_block()
                ),
            ));
        }
        cfg.validate_prompt(&self.spec, prompt)?;
        let id = self.next_id;
        self.next_id += 1;
        let mut tokens = prompt.to_vec();
        tokens.resize(prompt.len() + cfg.gen_length, self.spec.mask_token_id);
        self.rows.push(LiveRow {
            id,
            tokens,
            prompt_len: prompt.len(),
            block_idx: 0,
            num_blocks: cfg.num_blocks(),
            rng,
            out: RowOutput {
                prompt: prompt.to_vec(),
                generated: Vec::new(),
                unmask_step: vec![None; cfg.gen_length],
                tokens_per_step: Vec::new(),
                nfe: 0,
                logprobs: Vec::new(),
            },
            top_logprobs: None,
        });
        Ok(id)
    }

    /// Row `id` records, for every token it commits from now on, the token's log-probability
    /// under the proposer's distribution at that step ([`Proposer::log_probs`] of the logits
    /// row) and the `top` most likely tokens there ([`RowOutput::logprobs`]). Rows that do not
    /// ask cost nothing; a row that asks costs one logits-row copy to the host per commit.
    /// `false` if `id` is not in the batch.
    pub fn record_logprobs(&mut self, id: RowId, top: usize) -> bool {
        match self.rows.iter_mut().find(|r| r.id == id) {
            Some(row) => {
                row.top_logprobs = Some(top);
                let gen = row.out.unmask_step.len();
                row.out.logprobs.resize(gen, None);
                true
            }
            None => false,
        }
    }

    /// Removes row `id` (a cancelled request); `false` if it is not in the batch.
    pub fn remove(&mut self, id: RowId) -> bool {
        let before = self.rows.len();
        self.rows.retain(|r| r.id != id);
        self.rows.len() < before
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// No row left.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Forward calls made so far (batch-wide NFE).
    pub fn forwards(&self) -> usize {
        self.forwards
    }

    /// The per-step records so far, if requested.
    pub fn take_trace(&mut self) -> Option<Trace> {
        self.trace.take()
    }

    /// Runs one round: every row decodes its current block (docs/ALGORITHM.md §2.4-§2.8.3);
    /// returns the rows that finished their last block or were ended by the observer
    /// ([`StepEvent::finish_row`]), which leave the batch. `on_step` is called after every
    /// step; [`Control::Stop`] ends the round with [`Error::Cancelled`], after which the batch
    /// must be dropped.
    ///
    /// Each step, in order (one private method each): `plan_window` (the window the cache
    /// policy forwards and the logit rows), `forward` (redone when the policy discards a cached
    /// forward), `propose` (one token and confidence per masked position), `choose_and_commit`
    /// (each row's unmasking rule), `record` (trace, the cache policy's observation), `notify`
    /// (the observer).
    pub fn run_block(
        &mut self,
        model: &dyn DiffusionLm,
        dec: &mut Policies<'_>,
        on_step: &mut dyn FnMut(&StepEvent<'_>) -> Control,
    ) -> Result<Vec<FinishedRow>> {
        if self.rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut round = self.begin_round(model, &mut *dec.cache)?;
        let cap = self.cfg.step_cap();
        loop {
            let active = round.active();
            if !active.iter().any(|&a| a) {
                break;
            }
            if round.step >= cap {
                let first = active.iter().position(|&a| a).unwrap_or(0);
                return Err(Error::NoProgress {
                    block: self.rows[first].block_idx,
                    steps: round.step,
                    cap,
                });
            }
            let window = self.plan_window(&round, dec, &active)?;
            let fwd = self.forward(model, dec, &round, window, &active)?;
            let proposals = self.propose(dec, &mut round, &fwd, &active)?;
            let commits = self.choose_and_commit(dec, &mut round, &fwd, &proposals, &active)?;
            self.record(dec, &round, fwd, commits);
            round.step += 1;
            if self.notify(&round, on_step) == Control::Stop {
                return Err(Error::Cancelled);
            }
            for (ended, f) in round.ended.iter_mut().zip(&round.finish) {
                *ended |= f.get();
            }
        }
        Ok(self.end_round(round))
    }

    /// Lays out the round's canvas (every row's current block in the same columns) and
    /// prepares the cache's K/V store for its shape (reallocated only when the shape changes).
    fn begin_round(
        &mut self,
        model: &dyn DiffusionLm,
        cache: &mut dyn CachePolicy,
    ) -> Result<Round> {
        let spec = &self.spec;
        let device = model.device();
        let batch = self.rows.len();
        let layouts: Vec<RowLayout<'_>> = self
            .rows
            .iter()
            .map(|r| RowLayout {
                tokens: &r.tokens,
                prompt_len: r.prompt_len,
                block_idx: r.block_idx,
            })
            .collect();
        let canvas = Canvas::new(
            &layouts,
            self.cfg.block_length,
            spec.pad_token_id,
            spec.mask_token_id,
        );
        let block = canvas.block.clone();
        let seq_len = canvas.seq_len();
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
        let index = self.rounds;
        self.rounds += 1;
        let masks_at_start = (0..batch)
            .map(|r| canvas.masks_in(r, block.clone()))
            .collect();
        Ok(Round {
            index,
            block,
            seq_len,
            key_bias,
            rngs: self.rows.iter().map(|r| r.rng.clone()).collect(),
            masks_at_start,
            ended: vec![false; batch],
            finish: (0..batch).map(|_| Cell::new(false)).collect(),
            step: 0,
            canvas,
        })
    }

    /// The cache policy's plan for this step and the logit rows to compute: the block (only its
    /// start at a forced step 0), or only the columns masked in some active row when the
    /// proposer reads rows independently (the LM head skips the rest).
    fn plan_window(
        &self,
        round: &Round,
        dec: &mut Policies<'_>,
        active: &[bool],
    ) -> Result<StepWindow> {
        let (block, canvas) = (&round.block, &round.canvas);
        let at = StepAt {
            block_idx: round.index,
            block: block.clone(),
            step: round.step,
            seq_len: round.seq_len,
        };
        let plan = dec.cache.plan(&at);
        check_plan(&plan, block, round.seq_len)?;
        let forced = self.cfg.forces_block_start(&self.spec) && round.step == 0;
        let range = if forced {
            block.start..block.start + 1
        } else {
            block.clone()
        };
        let rows: Vec<usize> = if dec.proposer.reads_all_rows() {
            range.collect()
        } else {
            range
                .filter(|&p| {
                    (0..active.len()).any(|r| active[r] && canvas.rows[r][p] == canvas.mask)
                })
                .collect()
        };
        Ok(StepWindow {
            at,
            plan,
            forced,
            rows,
        })
    }

    /// The forward of the planned window. When the cache policy discards a cached forward
    /// ([`CachePolicy::redo`]), that forward still counts (one that committed nothing) and the
    /// step is redone with the policy's new plan. With [`GenerateOptions::drift`] the exact
    /// forward of the same canvas is compared (not counted in the NFE).
    fn forward(
        &mut self,
        model: &dyn DiffusionLm,
        dec: &mut Policies<'_>,
        round: &Round,
        mut window: StepWindow,
        active: &[bool],
    ) -> Result<StepForward> {
        let seq_len = round.seq_len;
        let cache = &mut *dec.cache;
        // The window's tokens, the pad bias of the keys it attends to, through the cache's view.
        let run = |cache: &mut dyn CachePolicy, w: &StepWindow| -> Result<Tensor> {
            let keys = cache.attended_keys(&w.plan, seq_len);
            let bias = narrow_bias(&round.key_bias, keys, seq_len)?;
            let input = round
                .canvas
                .input(&w.plan.window, &w.rows, &bias, model.device())?;
            model.forward(&input, cache.view(&w.plan)?)
        };
        let mut logits = run(cache, &window)?;
        let mut forward_idx = self.forwards;
        self.forwards += 1;
        let mut redone = false;
        if window.plan.kv == KvAccess::Reuse {
            if let Some(again) = cache.redo(&window.at) {
                check_plan(&again, &round.block, seq_len)?;
                for r in (0..active.len()).filter(|&r| active[r]) {
                    let out = &mut self.rows[r].out;
                    out.tokens_per_step.push(0);
                    out.nfe += 1;
                }
                if let Some(t) = self.trace.as_mut() {
                    t.steps.push(StepRecord {
                        forward_idx,
                        block_idx: round.index,
                        step: round.step,
                        window: window.plan.window.clone(),
                        kv: window.plan.kv,
                        commits: vec![Vec::new(); active.len()],
                        drift: None,
                        cache_signal: cache.signal(),
                        redone: false,
                    });
                }
                window.plan = again;
                logits = run(cache, &window)?;
                forward_idx = self.forwards;
                self.forwards += 1;
                redone = true;
            }
        }
        let cache_signal = cache.signal();
        let drift = if self.opts.drift && !window.plan.is_exact() {
            Some(drift::measure(
                model,
                &round.canvas,
                &window.rows,
                &round.key_bias,
                &logits,
                active,
            )?)
        } else {
            None
        };
        Ok(StepForward {
            window,
            logits,
            forward_idx,
            redone,
            cache_signal,
            drift,
        })
    }

    /// One proposal per logit row of each active row (inactive rows get none, so a row's
    /// random stream advances exactly as in a solo run), after checking that every logit the
    /// step reads is finite.
    fn propose(
        &self,
        dec: &mut Policies<'_>,
        round: &mut Round,
        fwd: &StepForward,
        active: &[bool],
    ) -> Result<Vec<Vec<Proposal>>> {
        let (canvas, rows) = (&round.canvas, &fwd.window.rows);
        let needed: Vec<Vec<bool>> = (0..active.len())
            .map(|r| {
                rows.iter()
                    .map(|&p| active[r] && canvas.rows[r][p] == canvas.mask)
                    .collect()
            })
            .collect();
        if !all_finite(&fwd.logits)? {
            // Locate the first non-finite logit the step reads (masked positions of active
            // rows); garbage in rows nobody reads (pads, committed positions) is ignored.
            let host = fwd.logits.to_dtype(DType::F32)?.to_vec3::<f32>()?;
            for (r, row) in host.iter().enumerate() {
                for (j, l) in row.iter().enumerate() {
                    if needed[r][j] && l.iter().any(|x| !x.is_finite()) {
                        return Err(Error::NonFiniteLogits {
                            row: self.rows[r].id,
                            position: rows[j].saturating_sub(canvas.answer_start(r)),
                            block: self.rows[r].block_idx,
                            step: round.step,
                        });
                    }
                }
            }
        }
        propose_active(
            &mut *dec.proposer,
            &fwd.logits,
            &mut round.rngs,
            active,
            &needed,
        )
    }

    /// Each active row's unmasking rule picks among its candidates (all of them at a forced
    /// block start), and the chosen tokens are written into the canvas.
    fn choose_and_commit(
        &mut self,
        dec: &mut Policies<'_>,
        round: &mut Round,
        fwd: &StepForward,
        proposals: &[Vec<Proposal>],
        active: &[bool],
    ) -> Result<Vec<Vec<Commit>>> {
        let rows = &fwd.window.rows;
        let steps_per_block = self.cfg.steps_per_block();
        let mut commits = vec![Vec::new(); active.len()];
        for r in (0..active.len()).filter(|&r| active[r]) {
            let canvas = &mut round.canvas;
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
                .iter()
                .zip(props)
                .filter(|(&p, _)| canvas.rows[r][p] == canvas.mask)
                .map(|(&p, prop)| Candidate {
                    position: p,
                    token: prop.token,
                    confidence: prop.confidence,
                })
                .collect();
            if let Some(bad) = candidates.iter().find(|c| !c.confidence.is_finite()) {
                return Err(Error::Policy(format!(
                    "the proposer returned a non-finite confidence {} for row {} at answer position {} (step {})",
                    bad.confidence,
                    self.rows[r].id,
                    bad.position.saturating_sub(canvas.answer_start(r)),
                    round.step,
                )));
            }
            let chosen: Vec<Candidate> = if fwd.window.forced {
                candidates
            } else {
                let info = StepInfo {
                    row: self.rows[r].id,
                    step: round.step,
                    steps_per_block,
                    block_length: self.cfg.block_length,
                    block_masks_at_start: round.masks_at_start[r],
                };
                match dec.unmask.select(&candidates, &info) {
                    Selection::EndBlock => {
                        round.ended[r] = true;
                        Vec::new()
                    }
                    Selection::Commit(idx) => pick(&candidates, &idx)?,
                }
            };
            let answer_start = canvas.answer_start(r);
            if let Some(top) = self.rows[r].top_logprobs {
                for c in &chosen {
                    let j = rows.iter().position(|&p| p == c.position).ok_or_else(|| {
                        Error::Policy("a committed position has no logits row".into())
                    })?;
                    let logits = fwd
                        .logits
                        .get(r)?
                        .get(j)?
                        .to_dtype(DType::F32)?
                        .to_vec1::<f32>()?;
                    let lp = TokenLogprobs::of(
                        c.token,
                        &dec.proposer.log_probs(&logits),
                        top,
                        Some(self.spec.mask_token_id),
                    );
                    if let Some(slot) = self.rows[r].out.logprobs.get_mut(c.position - answer_start)
                    {
                        *slot = Some(lp);
                    }
                }
            }
            let out = &mut self.rows[r].out;
            for c in &chosen {
                canvas.rows[r][c.position] = c.token;
                out.unmask_step[c.position - answer_start] = Some(out.nfe);
                commits[r].push(Commit {
                    answer_idx: c.position - answer_start,
                    token: c.token,
                    confidence: c.confidence,
                });
            }
            out.tokens_per_step.push(chosen.len());
            out.nfe += 1;
        }
        Ok(commits)
    }

    /// Records the step in the trace (when asked) and tells the cache policy what was
    /// committed (adaptive policies decide their next plan from it).
    fn record(
        &mut self,
        dec: &mut Policies<'_>,
        round: &Round,
        fwd: StepForward,
        commits: Vec<Vec<Commit>>,
    ) {
        let committed: Vec<&Commit> = commits.iter().flatten().collect();
        let observation = StepObservation {
            at: fwd.window.at,
            plan: fwd.window.plan.clone(),
            committed: committed.len(),
            min_confidence: committed
                .iter()
                .map(|c| c.confidence)
                .min_by(|a, b| a.total_cmp(b)),
        };
        if let Some(t) = self.trace.as_mut() {
            t.steps.push(StepRecord {
                forward_idx: fwd.forward_idx,
                block_idx: round.index,
                step: round.step,
                window: fwd.window.plan.window.clone(),
                kv: fwd.window.plan.kv,
                commits: commits.clone(),
                drift: fwd.drift,
                cache_signal: fwd.cache_signal,
                redone: fwd.redone,
            });
        }
        dec.cache.observe(&observation);
    }

    /// Calls the observer with the state after the step just made (`round.step - 1`).
    fn notify(&self, round: &Round, on_step: &mut dyn FnMut(&StepEvent<'_>) -> Control) -> Control {
        let row_block_done: Vec<bool> = (0..self.rows.len())
            .map(|r| round.ended[r] || round.canvas.masks_in(r, round.block.clone()) == 0)
            .collect();
        let event = StepEvent {
            round: round.index,
            step: round.step - 1,
            forward_idx: self.forwards - 1,
            block_complete: row_block_done.iter().all(|&d| d),
            row_block_done: &row_block_done,
            rows: &self.rows,
            canvas: &round.canvas,
            block_length: self.cfg.block_length,
            finish: &round.finish,
        };
        on_step(&event)
    }

    /// Writes the round's canvas back into the rows; rows past their last block, or ended by
    /// the observer, leave the batch.
    fn end_round(&mut self, round: Round) -> Vec<FinishedRow> {
        for (r, (row, rng)) in self.rows.iter_mut().zip(round.rngs).enumerate() {
            row.tokens.copy_from_slice(round.canvas.unpadded(r));
            row.block_idx += 1;
            row.rng = rng;
        }
        let mut done = Vec::new();
        for (row, early) in std::mem::take(&mut self.rows)
            .into_iter()
            .zip(&round.finish)
        {
            let early = early.get() && row.block_idx < row.num_blocks;
            if row.block_idx >= row.num_blocks || early {
                done.push((row, early));
            } else {
                self.rows.push(row);
            }
        }
        done.into_iter()
            .map(|(mut r, early)| {
                r.out.generated = r.tokens[r.prompt_len..].to_vec();
                FinishedRow {
                    id: r.id,
                    output: r.out,
                    rng: r.rng,
                    early,
                }
            })
            .collect()
    }
}

/// The state of one round of [`BlockBatch::run_block`].
struct Round {
    /// The round's index (every row runs one block per round).
    index: usize,
    canvas: Canvas,
    /// Canvas columns of every row's current block.
    block: std::ops::Range<usize>,
    seq_len: usize,
    /// The pad bias `(batch, 1, 1, seq_len)`, if any row is padded.
    key_bias: Option<Tensor>,
    /// Each row's random stream during the round.
    rngs: Vec<Rng>,
    /// Masks of each row's block when the round began.
    masks_at_start: Vec<usize>,
    /// Rows whose block is final (no mask left, its rule ended it, or the observer ended it).
    ended: Vec<bool>,
    /// Rows the observer ended ([`StepEvent::finish_row`]).
    finish: Vec<Cell<bool>>,
    /// Steps made so far.
    step: usize,
}

impl Round {
    /// Rows that take part in the next forward: not ended, with masks left in their block.
    fn active(&self) -> Vec<bool> {
        (0..self.ended.len())
            .map(|r| !self.ended[r] && self.canvas.masks_in(r, self.block.clone()) > 0)
            .collect()
    }
}

/// What one step forwards.
struct StepWindow {
    at: StepAt,
    plan: ForwardPlan,
    /// Step 0 of a shifted-logit model: only the block start, committed unconditionally.
    forced: bool,
    /// Canvas columns whose logits are computed.
    rows: Vec<usize>,
}

/// One step's forward and what was measured about it.
struct StepForward {
    window: StepWindow,
    /// `(batch, rows.len(), vocab)`.
    logits: Tensor,
    forward_idx: usize,
    redone: bool,
    cache_signal: Option<f64>,
    drift: Option<DriftStats>,
}

/// Generates `gen_length` tokens after each prompt.
///
/// `rngs` holds one generator per prompt (see [`Rng::row_seed`]). Errors on invalid settings,
/// invalid prompts, a policy breaking its contract, or a block exceeding the step cap.
pub fn generate(
    model: &dyn DiffusionLm,
    prompts: &[Vec<TokenId>],
    cfg: &DecodeConfig,
    dec: Policies<'_>,
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
    mut dec: Policies<'_>,
    rngs: &mut [Rng],
    opts: &GenerateOptions,
    on_step: &mut dyn FnMut(&StepEvent<'_>) -> Control,
) -> Result<Generation> {
    let mut batch = BlockBatch::new(model.spec(), cfg, *opts)?;
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
    for (p, rng) in prompts.iter().zip(rngs.iter()) {
        batch.admit(p, rng.clone())?;
    }
    let mut outs: Vec<Option<RowOutput>> = vec![None; prompts.len()];
    while !batch.is_empty() {
        for done in batch.run_block(model, &mut dec, on_step)? {
            rngs[done.id] = done.rng;
            outs[done.id] = Some(done.output);
        }
    }
    let rows = outs
        .into_iter()
        .map(|o| o.ok_or_else(|| Error::Policy("a row never finished".into())))
        .collect::<Result<Vec<_>>>()?;
    Ok(Generation {
        rows,
        nfe: batch.forwards(),
        trace: batch.take_trace(),
    })
}

/// A cheap probe on any device: `true` proves every logit finite (a NaN or an infinity makes
/// the sum non-finite); `false` may also be a finite sum that overflowed, so the caller
/// confirms element by element. One reduction and a scalar copy, no logits-sized temporary.
fn all_finite(logits: &Tensor) -> Result<bool> {
    let sum = logits.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    Ok(sum.is_finite())
}

/// Proposals for the active rows only (inactive rows get none), so a row's random stream
/// advances exactly as in a solo run. `needed` marks the rows the loop reads (masked positions).
fn propose_active(
    proposer: &mut dyn Proposer,
    logits: &Tensor,
    rngs: &mut [Rng],
    active: &[bool],
    needed: &[Vec<bool>],
) -> Result<Vec<Vec<Proposal>>> {
    if active.iter().all(|&a| a) {
        return proposer.propose_needed(logits, rngs, needed);
    }
    let idx: Vec<u32> = (0..active.len())
        .filter(|&r| active[r])
        .map(|r| r as u32)
        .collect();
    let sub = logits.index_select(&Tensor::new(idx.as_slice(), logits.device())?, 0)?;
    let mut sub_rngs: Vec<Rng> = idx.iter().map(|&r| rngs[r as usize].clone()).collect();
    let sub_needed: Vec<Vec<bool>> = idx.iter().map(|&r| needed[r as usize].clone()).collect();
    let mut props = proposer
        .propose_needed(&sub, &mut sub_rngs, &sub_needed)?
        .into_iter();
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

/// The pad bias `(batch, 1, 1, seq_len)` restricted to the attended key range.
fn narrow_bias(
    bias: &Option<Tensor>,
    keys: std::ops::Range<usize>,
    seq_len: usize,
) -> Result<Option<Tensor>> {
    match bias {
        Some(b) if keys != (0..seq_len) => Ok(Some(b.narrow(3, keys.start, keys.len())?)),
        other => Ok(other.clone()),
    }
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

//! The running batch: rows join and leave between blocks, each with its own unmasking rule,
//! seed and answer limits; the engine finishes every row's answer (end of sequence,
//! `max_tokens`, stop strings) and tells its consumer per row ([`RowEvent`]).
//!
//! This wires the policies ([`fastdllm_cache::BlockCache`], the sampler's proposer and per-row
//! unmasking rules) to the core loop ([`fastdllm_core::BlockBatch`], docs/ALGORITHM.md §2.4-2.9)
//! and adds what a served answer needs: after every step each row's contiguous committed
//! answer is checked for its end, streamed text is sent through the tokenizer's incremental
//! decoder, and a row whose answer is final leaves at once ([`crate::Finish::Answer`]).

use std::collections::HashMap;

use fastdllm_cache::BlockCache;
use fastdllm_core::{
    BlockBatch, Control, DiffusionLm, GenerateOptions, ModelFamily, Policies, Proposer, Rng, RowId,
    RowOutput, StepEvent, TokenId, TokenLogprobs, Trace,
};
use fastdllm_models::{IncrementalDecoder, Tokenizer};
use fastdllm_sampler::PerRow;

use crate::answer::{Answer, AnswerLogprob, Cut, Finish, FinishReason};
use crate::error::{Error, Result};
use crate::settings::{batch_compatible, GenerationSettings};

/// What a row's consumer wants told besides its [`RowEvent::Done`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowEvents {
    /// [`RowEvent::Text`]: the answer's final text as it commits (needs a tokenizer).
    pub text: bool,
    /// [`RowEvent::Provisional`]: the current block's tentative tokens after every step.
    pub provisional: bool,
    /// [`Answer::logprobs`] with this many alternatives per token: each answer token's
    /// commit-time log-probability ([`BlockBatch::record_logprobs`]); `None` = not recorded
    /// (no cost).
    pub logprobs: Option<usize>,
}

/// The current block's tentative state (a [`RowEvent::Provisional`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Provisional {
    /// The row's block index.
    pub block: usize,
    /// The step inside the block (0-based).
    pub step: usize,
    /// The block's positions: the committed id, or `None` while masked.
    pub token_ids: Vec<Option<TokenId>>,
    /// The committed ids of the block decoded (empty without a tokenizer).
    pub text: String,
}

/// What the engine tells a row's consumer.
#[derive(Debug, Clone, PartialEq)]
pub enum RowEvent {
    /// Final answer text committed since the previous `Text` event (whole characters; a tail
    /// that a stop string could still cut is held back).
    Text(String),
    /// Every position of the row's block `k` is committed.
    BlockCommitted(usize),
    /// The current block's tentative state.
    Provisional(Provisional),
    /// The answer is final: the row's last event.
    Done(Answer),
}

/// The consumer of a batch's rows: gets each row's events, says whether a row is still wanted.
/// Closures `FnMut(RowId, RowEvent)` are sinks that never cancel.
pub trait RowSink {
    /// `event` for row `row`.
    fn event(&mut self, row: RowId, event: RowEvent);
    /// Whether row `row`'s consumer has gone (checked after every step): a cancelled row ends
    /// at once, with no further event.
    fn cancelled(&mut self, _row: RowId) -> bool {
        false
    }
    /// Called after every step (one forward and its commits), before the rows' events.
    fn step(&mut self) {}
}

impl<F: FnMut(RowId, RowEvent)> RowSink for F {
    fn event(&mut self, row: RowId, event: RowEvent) {
        self(row, event)
    }
}

/// A row that left the batch with its answer.
#[derive(Debug, Clone)]
pub struct FinishedRow {
    /// Its id.
    pub id: RowId,
    /// What the loop produced (its canvas, per-position commit steps, NFE): equal to its solo
    /// output; with [`Finish::Answer`] positions after the answer may still be the mask id.
    pub output: RowOutput,
    /// Its answer (also sent as [`RowEvent::Done`]).
    pub answer: Answer,
}

/// The engine state of one row.
#[derive(Debug)]
struct Row {
    settings: GenerationSettings,
    events: RowEvents,
    /// Contiguous committed answer positions.
    prefix: usize,
    /// Of those, examined for the answer's end.
    checked: usize,
    blocks_seen: usize,
    decoder: IncrementalDecoder,
    pushed: usize,
    sent: String,
    answer: Option<Answer>,
    cancelled: bool,
}

/// The running batch (docs/ARCHITECTURE.md): rows with compatible settings
/// ([`batch_compatible`]) join between blocks and leave when their answer is final, their
/// canvas is complete, or their consumer is gone. Row ids follow admission order from 0.
///
/// A row's canvas positions equal its solo output whenever it joined (the core's batch
/// invariance), and its answer is the same whether it finished early or decoded its whole
/// canvas.
pub struct Batch<'m> {
    model: &'m dyn DiffusionLm,
    tokenizer: Option<&'m Tokenizer>,
    settings: GenerationSettings,
    family: ModelFamily,
    inner: BlockBatch,
    cache: BlockCache,
    proposer: Box<dyn Proposer + Send>,
    unmask: PerRow,
    rows: HashMap<RowId, Row>,
}

impl<'m> Batch<'m> {
    /// An empty batch on `model` for rows compatible with `settings` (validated; its
    /// unmasking rule, seed and limits are only defaults). `tokenizer` decodes answers: without
    /// one, answers carry ids only and rows cannot ask for text or stop strings.
    ///
    /// Errors: invalid settings.
    pub fn new(
        model: &'m dyn DiffusionLm,
        tokenizer: Option<&'m Tokenizer>,
        settings: &GenerationSettings,
        opts: GenerateOptions,
    ) -> Result<Self> {
        let spec = model.spec();
        settings.validate(spec.family)?;
        let proposer =
            settings
                .proposer
                .build_for_model(spec.into(), &settings.unmask, spec.mask_token_id)?;
        Ok(Batch {
            model,
            tokenizer,
            settings: settings.clone(),
            family: spec.family,
            inner: BlockBatch::new(spec, &settings.decode, opts)?,
            cache: BlockCache::new(settings.cache)?,
            proposer,
            unmask: PerRow::default(),
            rows: HashMap::new(),
        })
    }

    /// Whether a row with `settings` can join this batch.
    pub fn compatible(&self, settings: &GenerationSettings) -> bool {
        batch_compatible(&self.settings, settings, self.family)
    }

    /// Adds a row (its own unmasking rule, seed and limits from `settings`); it starts at the
    /// next [`Batch::run_block`].
    ///
    /// Errors: incompatible or invalid settings, an invalid prompt, text or stop strings
    /// without a tokenizer.
    pub fn admit(
        &mut self,
        prompt: &[TokenId],
        settings: &GenerationSettings,
        events: RowEvents,
    ) -> Result<RowId> {
        if !self.compatible(settings) {
            return Err(Error::Incompatible {
                row: settings.label(),
                batch: self.settings.label(),
            });
        }
        settings.validate(self.family)?;
        if self.tokenizer.is_none() {
            if !settings.limits.stop.is_empty() {
                return Err(Error::NeedsTokenizer("a stop string"));
            }
            if events.text {
                return Err(Error::NeedsTokenizer("streamed text"));
            }
        }
        let policy = settings.unmask.build(self.family.into(), settings.seed)?;
        let id = self
            .inner
            .admit_with(prompt, &settings.decode, Rng::new(settings.seed))?;
        if let Some(top) = events.logprobs {
            self.inner.record_logprobs(id, top);
        }
        self.unmask.insert(id, policy);
        self.rows.insert(
            id,
            Row {
                settings: settings.clone(),
                events,
                prefix: 0,
                checked: 0,
                blocks_seen: 0,
                decoder: IncrementalDecoder::default(),
                pushed: 0,
                sent: String::new(),
                answer: None,
                cancelled: false,
            },
        );
        Ok(id)
    }

    /// Drops row `id` (a cancelled request); `false` if it is not running.
    pub fn remove(&mut self, id: RowId) -> bool {
        self.unmask.remove(id);
        self.rows.remove(&id);
        self.inner.remove(id)
    }

    /// The settings the batch was started with (shared decode, cache and proposer settings).
    pub fn settings(&self) -> &GenerationSettings {
        &self.settings
    }

    /// Forwards made so far (batch-wide NFE).
    pub fn forwards(&self) -> usize {
        self.inner.forwards()
    }

    /// Rows running.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// No row running.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The per-step records so far, if requested in [`GenerateOptions`].
    pub fn take_trace(&mut self) -> Option<Trace> {
        self.inner.take_trace()
    }

    /// One round: every row decodes its next block; rows whose answer became final, whose
    /// canvas is complete or whose consumer is gone leave. Events go to `sink` as they happen;
    /// the rows that left with an answer are returned (cancelled rows are not).
    ///
    /// Errors: the loop's ([`fastdllm_core::Error`]) or a decoding error; the batch must then
    /// be dropped.
    pub fn run_block(&mut self, sink: &mut dyn RowSink) -> Result<Vec<FinishedRow>> {
        let spec = self.model.spec();
        let (mask, eos) = (spec.mask_token_id, spec.eos_token_ids.as_slice());
        let tokenizer = self.tokenizer;
        let rows = &mut self.rows;
        let mut failure: Option<Error> = None;
        let mut on_step = |ev: &StepEvent<'_>| -> Control {
            sink.step();
            for r in 0..ev.batch() {
                let Some(id) = ev.row_id(r) else { continue };
                let Some(row) = rows.get_mut(&id) else {
                    continue;
                };
                if row.cancelled || sink.cancelled(id) {
                    row.cancelled = true;
                    ev.finish_row(r);
                    continue;
                }
                if row.answer.is_some() {
                    // Done was its last event (with Finish::Canvas it decodes on, silently).
                    continue;
                }
                if let Err(e) = row.after_step(ev, r, id, tokenizer, mask, eos, sink) {
                    failure = Some(e);
                    return Control::Stop;
                }
            }
            Control::Continue
        };
        let mut dec = Policies {
            cache: &mut self.cache,
            proposer: self.proposer.as_mut(),
            unmask: &mut self.unmask,
        };
        let done = self.inner.run_block(self.model, &mut dec, &mut on_step);
        if let Some(e) = failure {
            return Err(e);
        }
        let done = done?;
        let mut finished = Vec::with_capacity(done.len());
        for row in done {
            self.unmask.remove(row.id);
            let Some(mut st) = self.rows.remove(&row.id) else {
                continue;
            };
            if st.cancelled {
                continue;
            }
            let answer = match st.answer.take() {
                Some(mut a) => {
                    a.nfe = row.output.nfe;
                    if st.settings.limits.finish == Finish::Canvas {
                        sink.event(row.id, RowEvent::Done(a.clone()));
                    }
                    a
                }
                None => {
                    let a = st.finish_answer(
                        &row.output.generated,
                        &row.output.logprobs,
                        true,
                        row.output.nfe,
                        tokenizer,
                        eos,
                        sink,
                        row.id,
                    )?;
                    sink.event(row.id, RowEvent::Done(a.clone()));
                    a
                }
            };
            finished.push(FinishedRow {
                id: row.id,
                output: row.output,
                answer,
            });
        }
        Ok(finished)
    }
}

impl Row {
    /// After a step: announces a committed block, checks whether the answer is final (and
    /// ends the row if so), streams new text and the provisional block.
    #[allow(clippy::too_many_arguments)]
    fn after_step(
        &mut self,
        ev: &StepEvent<'_>,
        r: usize,
        id: RowId,
        tokenizer: Option<&Tokenizer>,
        mask: TokenId,
        eos: &[TokenId],
        sink: &mut dyn RowSink,
    ) -> Result<()> {
        let answer = ev.answer(r);
        while self.prefix < answer.len() && answer[self.prefix] != mask {
            self.prefix += 1;
        }
        let block_idx = ev.block_idx(r).unwrap_or(0);
        let block_done = ev.row_block_done.get(r).copied().unwrap_or(false);
        if block_done && self.blocks_seen <= block_idx {
            self.blocks_seen = block_idx + 1;
            sink.event(id, RowEvent::BlockCommitted(block_idx));
        }
        if self.answer.is_none() && self.prefix > self.checked {
            self.checked = self.prefix;
            let ids = &answer[..self.prefix];
            let complete = self.prefix == self.settings.decode.gen_length;
            let limits = &self.settings.limits;
            let cut = match tokenizer {
                Some(t) if !limits.stop.is_empty() => {
                    Some(limits.cut(t, eos, ids, complete)?).filter(|c| c.finish_reason.is_some())
                }
                _ => None,
            };
            let leave = limits.finish == Finish::Answer;
            if cut.is_some() || limits.token_end(ids, eos, complete).is_some() {
                let a = self.finish_answer(
                    ids,
                    ev.logprobs(r),
                    complete,
                    ev.row_nfe(r),
                    tokenizer,
                    eos,
                    sink,
                    id,
                )?;
                if leave {
                    sink.event(id, RowEvent::Done(a.clone()));
                    ev.finish_row(r);
                }
                // With Finish::Canvas the row decodes on; its Done comes when it leaves.
                self.answer = Some(a);
                return Ok(());
            }
            if self.events.text {
                if let Some(t) = tokenizer {
                    self.stream(t, eos, ids, sink, id)?;
                }
            }
        }
        if self.events.provisional && !block_done && self.answer.is_none() {
            let block = answer.get(ev.answer_block(r)).unwrap_or_default();
            let token_ids: Vec<Option<TokenId>> =
                block.iter().map(|&t| (t != mask).then_some(t)).collect();
            let committed: Vec<TokenId> = token_ids.iter().flatten().copied().collect();
            let text = match tokenizer {
                Some(t) => t.decode(&committed).unwrap_or_default(),
                None => String::new(),
            };
            sink.event(
                id,
                RowEvent::Provisional(Provisional {
                    block: block_idx,
                    step: ev.step,
                    token_ids,
                    text,
                }),
            );
        }
        Ok(())
    }

    /// Sends the text of the committed prefix `ids` not yet sent, minus a tail a stop string
    /// could still cut.
    fn stream(
        &mut self,
        tokenizer: &Tokenizer,
        eos: &[TokenId],
        ids: &[TokenId],
        sink: &mut dyn RowSink,
        id: RowId,
    ) -> Result<()> {
        let limits = &self.settings.limits;
        let end = crate::answer::trim_at_eos(ids, eos)
            .len()
            .min(limits.max_tokens.unwrap_or(usize::MAX));
        if let Some(new) = ids[..end].get(self.pushed..) {
            // A decoding error only delays the text: the final answer is decoded whole.
            let _ = self.decoder.push(tokenizer, new);
            self.pushed = end;
        }
        let open = Cut {
            text: String::new(),
            completion_tokens: 0,
            finish_reason: None,
        };
        let d = delta(
            &self.sent,
            open.streamable(self.decoder.text(), &limits.stop),
        );
        if !d.is_empty() {
            self.sent.push_str(&d);
            sink.event(id, RowEvent::Text(d));
        }
        Ok(())
    }

    /// The final answer from `ids` (the committed prefix, or the whole canvas when
    /// `complete`) and the answer positions' `logprobs` (recorded when the row asked): sends
    /// the last text (the caller sends [`RowEvent::Done`]).
    #[allow(clippy::too_many_arguments)]
    fn finish_answer(
        &mut self,
        ids: &[TokenId],
        logprobs: &[Option<TokenLogprobs>],
        complete: bool,
        nfe: usize,
        tokenizer: Option<&Tokenizer>,
        eos: &[TokenId],
        sink: &mut dyn RowSink,
        id: RowId,
    ) -> Result<Answer> {
        let limits = &self.settings.limits;
        let answer = match tokenizer {
            Some(t) => {
                let cut = limits.cut(t, eos, ids, complete)?;
                let end = limits
                    .token_end(ids, eos, complete)
                    .map_or(cut.completion_tokens, |(e, _)| e);
                Answer {
                    token_ids: ids[..end.min(cut.completion_tokens)].to_vec(),
                    text: Some(cut.text),
                    completion_tokens: cut.completion_tokens,
                    finish_reason: cut.finish_reason.unwrap_or(FinishReason::Length),
                    nfe,
                    logprobs: None,
                }
            }
            None => {
                let (end, why) = limits.token_end(ids, eos, true).unwrap_or((
                    crate::answer::trim_at_eos(ids, eos).len(),
                    FinishReason::Length,
                ));
                Answer {
                    token_ids: ids[..end].to_vec(),
                    text: None,
                    completion_tokens: end,
                    finish_reason: why,
                    nfe,
                    logprobs: None,
                }
            }
        };
        let mut answer = answer;
        if self.events.logprobs.is_some() {
            // Every answer token was committed (the answer is a committed prefix).
            answer.logprobs = Some(
                logprobs
                    .iter()
                    .take(answer.completion_tokens)
                    .map(|lp| {
                        lp.as_ref()
                            .map(|lp| AnswerLogprob::new(lp, tokenizer))
                            .ok_or_else(|| {
                                Error::Core(fastdllm_core::Error::Policy(
                                    "an answer token has no recorded logprob".into(),
                                ))
                            })
                    })
                    .collect::<Result<_>>()?,
            );
        }
        if self.events.text {
            if let Some(text) = &answer.text {
                let d = delta(&self.sent, text);
                if !d.is_empty() {
                    self.sent.push_str(&d);
                    sink.event(id, RowEvent::Text(d));
                }
            }
        }
        Ok(answer)
    }
}

/// The part of `text` not yet in `sent` (empty if `text` does not extend it).
fn delta(sent: &str, text: &str) -> String {
    text.strip_prefix(sent).unwrap_or_default().to_string()
}

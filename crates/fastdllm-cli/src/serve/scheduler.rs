//! The engine worker: one thread that owns the model's compute, batches compatible queued
//! requests, and streams each row's committed blocks to its own client.
//!
//! Granularity: **batch-level continuous batching with per-step observation**. The worker takes
//! the oldest queued request and every other queued request that can share its batch
//! ([`engine::batch_compatible`]: same gen_length, block_length, steps, cache settings and
//! proposer; the unmasking rule — threshold, factor, fixed — and the seed may differ per row),
//! up to `max_batch` rows, and runs them as one core batch ([`engine::run_rows`], left padding,
//! per-row state). Requests that arrive while a batch runs wait in the bounded queue and form the
//! next batch; rows do not join a running batch (the canvas and the KV cache are sized when the
//! batch starts). Rows *leave* logically: after every step the observer checks each row's client,
//! a row whose client is gone is dropped from streaming, and when every row of a batch is gone the
//! batch stops at once ([`Control::Stop`]). Each row's output equals its solo output (the core's
//! batch invariance), which tests/serve.rs checks against [`engine::run`].
//!
//! Streaming: after every step, a row whose current block is final (no mask left) gets the text
//! of that block (the decoded committed prefix, cut at the first end-of-sequence token, minus
//! what was already sent), and with `provisional` the current block's tentative tokens.
//!
//! Reference: none (the reference has no server). Robustness: a panic inside a batch is caught and
//! answered as an error to that batch's rows; the worker keeps serving.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fastdllm_core::{Control, GenerateOptions, StepEvent, TokenId};
use fastdllm_models::LoadedModel;
use fastdllm_sampler::Unmask;
use serde::Serialize;
use tokio::sync::mpsc;

use super::api::Provisional;
use crate::engine::{self, trim_at_eos, GenerationSettings};

/// One request for the worker.
#[derive(Debug)]
pub struct Job {
    /// Prompt ids (templated, validated).
    pub prompt: Vec<TokenId>,
    /// The request's settings (validated).
    pub settings: GenerationSettings,
    /// Send [`RowEvent::Text`] per committed block.
    pub stream: bool,
    /// Send [`RowEvent::Provisional`] after every step.
    pub provisional: bool,
    /// The client's channel; closed = the client went away.
    pub events: mpsc::UnboundedSender<RowEvent>,
}

/// What the worker tells one client.
#[derive(Debug, Clone)]
pub enum RowEvent {
    /// Final text committed since the previous `Text` event.
    Text(String),
    /// The current block's tentative state.
    Provisional(Provisional),
    /// The answer is complete.
    Done {
        /// The whole answer (up to the first end-of-sequence token).
        text: String,
        /// Its token count.
        completion_tokens: usize,
        /// `stop` or `length`.
        finish_reason: &'static str,
    },
    /// The generation failed.
    Error(String),
}

/// Counters of the worker (reported by `GET /health`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Batches run.
    pub batches: AtomicUsize,
    /// Rows run (requests that reached the engine).
    pub rows: AtomicUsize,
    /// Largest batch so far.
    pub max_batch: AtomicUsize,
    /// Rows whose client went away before or during generation.
    pub cancelled_rows: AtomicUsize,
    /// Batches stopped early because every row's client had gone.
    pub stopped_batches: AtomicUsize,
    /// Requests answered with an engine error.
    pub failed_rows: AtomicUsize,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Batches run.
    pub batches: usize,
    /// Rows run.
    pub rows: usize,
    /// Largest batch so far.
    pub max_batch: usize,
    /// Rows whose client went away.
    pub cancelled_rows: usize,
    /// Batches stopped early.
    pub stopped_batches: usize,
    /// Engine errors.
    pub failed_rows: usize,
}

impl Stats {
    /// Current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            max_batch: self.max_batch.load(Ordering::Relaxed),
            cancelled_rows: self.cancelled_rows.load(Ordering::Relaxed),
            stopped_batches: self.stopped_batches.load(Ordering::Relaxed),
            failed_rows: self.failed_rows.load(Ordering::Relaxed),
        }
    }
}

/// Runs the worker loop until every sender of `rx` is dropped and the queue is drained.
pub fn run_worker(
    loaded: LoadedModel,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    stats: Arc<Stats>,
) {
    let max_batch = max_batch.max(1);
    let family = loaded.model.spec().family;
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.blocking_recv() {
                Some(job) => pending.push_back(job),
                None => break,
            }
        }
        while pending.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => pending.push_back(job),
                Err(_) => break,
            }
        }
        let before = pending.len();
        pending.retain(|j| !j.events.is_closed());
        stats
            .cancelled_rows
            .fetch_add(before - pending.len(), Ordering::Relaxed);
        let Some(first) = pending.front().map(|j| j.settings.clone()) else {
            continue;
        };
        let mut batch = Vec::new();
        let mut rest = VecDeque::new();
        for job in pending.drain(..) {
            if batch.len() < max_batch && engine::batch_compatible(&first, &job.settings, family) {
                batch.push(job);
            } else {
                rest.push_back(job);
            }
        }
        pending = rest;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.rows.fetch_add(batch.len(), Ordering::Relaxed);
        stats.max_batch.fetch_max(batch.len(), Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| run_batch(&loaded, &batch, &stats)));
        if outcome.is_err() {
            stats.failed_rows.fetch_add(batch.len(), Ordering::Relaxed);
            for job in &batch {
                let _ = job.events.send(RowEvent::Error(
                    "internal error: the engine panicked on this batch".into(),
                ));
            }
        }
    }
}

/// Streaming state of one row.
#[derive(Debug, Default)]
struct RowState {
    sent: String,
    blocks_sent: usize,
    finished: bool,
    cancelled: bool,
}

/// The text of `ids` cut at the first EOS, and whether an EOS was found.
fn answer_text(loaded: &LoadedModel, ids: &[TokenId]) -> (String, usize, bool) {
    let eos = &loaded.model.spec().eos_token_ids;
    let answer = trim_at_eos(ids, eos);
    let text = loaded.tokenizer.decode(answer).unwrap_or_default();
    (text, answer.len(), answer.len() < ids.len())
}

/// The part of `text` not yet in `sent` (empty if `text` does not extend it).
fn delta(sent: &str, text: &str) -> String {
    text.strip_prefix(sent).unwrap_or_default().to_string()
}

fn run_batch(loaded: &LoadedModel, batch: &[Job], stats: &Stats) {
    let Some(first) = batch.first() else { return };
    let settings = first.settings.clone();
    let prompts: Vec<Vec<TokenId>> = batch.iter().map(|j| j.prompt.clone()).collect();
    let unmasks: Vec<Unmask> = batch.iter().map(|j| j.settings.unmask).collect();
    let seeds: Vec<u64> = batch.iter().map(|j| j.settings.seed).collect();
    let mask = loaded.model.spec().mask_token_id;
    let mut rows: Vec<RowState> = batch.iter().map(|_| RowState::default()).collect();
    let mut on_step = |ev: &StepEvent<'_>| -> Control {
        let mut live = false;
        for (r, (job, st)) in batch.iter().zip(rows.iter_mut()).enumerate() {
            if st.cancelled {
                continue;
            }
            if job.events.is_closed() {
                st.cancelled = true;
                stats.cancelled_rows.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            live = true;
            if !job.stream || st.finished {
                continue;
            }
            let answer = ev.answer(r);
            let done = ev.row_block_done.get(r).copied().unwrap_or(false);
            if done && st.blocks_sent <= ev.block_idx {
                st.blocks_sent = ev.block_idx + 1;
                let end = ev.answer_block.end.min(answer.len());
                let (text, _, eos) = answer_text(loaded, &answer[..end]);
                st.finished = eos;
                let d = delta(&st.sent, &text);
                if !d.is_empty() {
                    st.sent.push_str(&d);
                    let _ = job.events.send(RowEvent::Text(d));
                }
            } else if !done && job.provisional {
                let block = answer.get(ev.answer_block.clone()).unwrap_or_default();
                let token_ids: Vec<Option<u32>> =
                    block.iter().map(|&t| (t != mask).then_some(t)).collect();
                let committed: Vec<u32> = token_ids.iter().flatten().copied().collect();
                let text = loaded.tokenizer.decode(&committed).unwrap_or_default();
                let _ = job.events.send(RowEvent::Provisional(Provisional {
                    block: ev.block_idx,
                    step: ev.step,
                    token_ids,
                    text,
                }));
            }
        }
        if live {
            Control::Continue
        } else {
            Control::Stop
        }
    };
    let result = engine::run_rows(
        loaded.model.as_ref(),
        &prompts,
        &unmasks,
        &seeds,
        &settings,
        &GenerateOptions::default(),
        &mut on_step,
    );
    match result {
        Ok(gen) => {
            for ((job, st), row) in batch.iter().zip(&rows).zip(&gen.rows) {
                if st.cancelled {
                    continue;
                }
                let (text, completion_tokens, eos) = answer_text(loaded, &row.generated);
                if job.stream {
                    let d = delta(&st.sent, &text);
                    if !d.is_empty() {
                        let _ = job.events.send(RowEvent::Text(d));
                    }
                }
                let finish_reason = if eos { "stop" } else { "length" };
                let _ = job.events.send(RowEvent::Done {
                    text,
                    completion_tokens,
                    finish_reason,
                });
            }
        }
        Err(e)
            if matches!(
                e.downcast_ref::<fastdllm_core::Error>(),
                Some(fastdllm_core::Error::Cancelled)
            ) =>
        {
            stats.stopped_batches.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.failed_rows.fetch_add(batch.len(), Ordering::Relaxed);
            for job in batch {
                let _ = job.events.send(RowEvent::Error(format!("{e:#}")));
            }
        }
    }
}

//! The engine worker: one thread that owns the model's compute and runs a continuous batch,
//! streaming each row's committed blocks to its own client.
//!
//! Granularity: **step-level continuous batching, rows join and leave between blocks**. The worker
//! keeps one running [`Session`] (the core's `BlockBatch`): each round every row decodes its own
//! next block in lock-step forwards. Between rounds, queued requests that can share the session
//! ([`fastdllm_conformance::engine::batch_compatible`]: same block_length, steps per block, cache settings and
//! proposer; the answer length, the unmasking rule — threshold, factor, fixed — and the seed may
//! differ per row) join
//! it, up to `max_batch` rows, and start at their block 0 next to rows further on; rows that
//! finished their last block leave and are answered at once. Admission into a running session
//! takes requests from the head of the queue only, up to the first incompatible one, so an
//! incompatible request waits at most until the session drains (then it starts the next session,
//! which takes every compatible queued request). Rows leave early too: after every step the
//! observer checks each row's client; a row whose client is gone stops streaming and is dropped
//! from the session at the end of the round, and when every row is gone the session stops at once
//! ([`Control::Stop`]). Each row's output equals its solo output whenever it joined (the core's
//! batch invariance), which tests/serve.rs checks against [`fastdllm_conformance::engine::run`].
//!
//! Streaming: after every step, a row whose current block is final (no mask left) gets the text
//! of that block (the decoded committed prefix, cut at the first end-of-sequence token, at
//! `max_tokens` and at the first `stop` string, minus what was already sent and minus a tail a
//! later stop match could cut or a character whose bytes continue in the next block,
//! [`super::answer`]), and with `provisional` the current block's tentative tokens. A row whose
//! answer ends on `max_tokens` or a stop string is answered at once and leaves the batch at the
//! end of the round (its remaining blocks are not decoded).
//!
//! Reference: none (the reference has no server). Supervision: admission and every round run
//! under `catch_unwind`; a panic fails only the rows involved (the request being admitted, or the
//! rows of the round's session, each answered with an error naming its request id) and the worker
//! keeps serving. Should the worker itself stop, [`EngineHealth`] records why: `GET /health`
//! answers 503 with the reason, new requests get 503, and `fastdllm serve` drains and exits
//! non-zero so a supervisor restarts it.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fastdllm_core::{Control, GenerateOptions, RowId, StepEvent, TokenId};
use fastdllm_models::{IncrementalDecoder, LoadedModel};
use serde::Serialize;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::answer::{AnswerLimits, Cut};
use super::api::Provisional;
use super::metrics::Metrics;
use fastdllm_conformance::engine::{GenerationSettings, Session};

/// One request for the worker.
#[derive(Debug)]
pub struct Job {
    /// The request id answered to the client (`cmpl-…`, `chatcmpl-…`); engine errors name it.
    pub id: String,
    /// Prompt ids (templated, validated).
    pub prompt: Vec<TokenId>,
    /// The request's settings (validated).
    pub settings: GenerationSettings,
    /// Send [`RowEvent::Text`] per committed block.
    pub stream: bool,
    /// Send [`RowEvent::Provisional`] after every step.
    pub provisional: bool,
    /// Where the answer ends (`max_tokens`, `stop`).
    pub limits: AnswerLimits,
    /// When the request was queued (metrics).
    pub queued_at: Instant,
    /// The client's channel; closed = the client went away.
    pub events: mpsc::UnboundedSender<RowEvent>,
    /// The request's place in the queue: released when the row is admitted into a session (or
    /// the job is dropped), or at once when the client goes away ([`QueueSlot`]).
    pub slot: QueueSlot,
}

/// A queue place shared by the handler and the worker: whichever side lets go first (the worker
/// admitting or dropping the job, the handler's future dropped when its client disconnects)
/// returns the permit, so a disconnected client frees its place at once instead of when the
/// worker reaches its job.
#[derive(Debug)]
pub struct QueueSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl QueueSlot {
    /// Two handles on `permit`: one for the job, one for the handler.
    pub fn pair(permit: OwnedSemaphorePermit) -> (QueueSlot, QueueSlot) {
        let shared = Arc::new(Mutex::new(Some(permit)));
        (QueueSlot(shared.clone()), QueueSlot(shared))
    }

    /// Returns the place to the queue (idempotent).
    pub fn release(&self) {
        let permit = match self.0.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(permit);
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.release();
    }
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
    /// Sessions (continuous batches) started.
    pub batches: AtomicUsize,
    /// Rows run (requests that reached the engine).
    pub rows: AtomicUsize,
    /// Rows that joined a session after its first round.
    pub joined_rows: AtomicUsize,
    /// Most rows in one round so far.
    pub max_batch: AtomicUsize,
    /// Rows whose client went away before or during generation.
    pub cancelled_rows: AtomicUsize,
    /// Sessions stopped early because every row's client had gone (or every row's answer had
    /// ended on `max_tokens` or a stop string).
    pub stopped_batches: AtomicUsize,
    /// Requests answered with an engine error.
    pub failed_rows: AtomicUsize,
    /// Requests taken off the queue but not yet admitted (part of the queue depth).
    pub pending: AtomicUsize,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Sessions started.
    pub batches: usize,
    /// Rows run.
    pub rows: usize,
    /// Rows that joined a running session.
    pub joined_rows: usize,
    /// Most rows in one round so far.
    pub max_batch: usize,
    /// Rows whose client went away.
    pub cancelled_rows: usize,
    /// Sessions stopped early.
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
            joined_rows: self.joined_rows.load(Ordering::Relaxed),
            max_batch: self.max_batch.load(Ordering::Relaxed),
            cancelled_rows: self.cancelled_rows.load(Ordering::Relaxed),
            stopped_batches: self.stopped_batches.load(Ordering::Relaxed),
            failed_rows: self.failed_rows.load(Ordering::Relaxed),
        }
    }
}

/// Whether the engine worker runs, and why it stopped (shared by the worker thread, the
/// handlers and `GET /health`).
#[derive(Debug)]
pub struct EngineHealth {
    stopped: watch::Sender<Option<String>>,
}

impl Default for EngineHealth {
    fn default() -> Self {
        EngineHealth {
            stopped: watch::channel(None).0,
        }
    }
}

impl EngineHealth {
    /// Records that the engine stopped, and why (the first reason wins).
    pub fn stop(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.stopped.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Why the engine stopped; `None` while it runs.
    pub fn stopped(&self) -> Option<String> {
        self.stopped.borrow().clone()
    }

    /// Resolves once the engine has stopped.
    pub async fn wait_stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs the worker loop until every sender of `rx` is dropped, the queue is drained and the
/// running session has finished. The queue's bound is the handlers' semaphore of
/// [`QueueSlot`]s, not the channel: jobs whose client went away are skipped here.
pub fn run_worker(
    loaded: LoadedModel,
    mut rx: mpsc::UnboundedReceiver<Job>,
    max_batch: usize,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
) {
    let max_batch = max_batch.max(1);
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut live: Option<Live> = None;
    loop {
        if live.is_none() && pending.is_empty() {
            match rx.blocking_recv() {
                Some(job) => pending.push_back(job),
                None => break,
            }
        }
        // Take only what can be admitted; jobs of clients that went away are dropped on the way
        // (their queue places are already free).
        while pending.len() < max_batch {
            match rx.try_recv() {
                Ok(job) if job.events.is_closed() => {
                    stats.cancelled_rows.fetch_add(1, Ordering::Relaxed);
                }
                Ok(job) => pending.push_back(job),
                Err(_) => break,
            }
        }
        let before = pending.len();
        pending.retain(|j| !j.events.is_closed());
        stats
            .cancelled_rows
            .fetch_add(before - pending.len(), Ordering::Relaxed);
        match live.as_mut() {
            Some(l) => l.admit_from_head(&mut pending, max_batch, &stats, &metrics),
            None => live = Live::start(&loaded, &mut pending, max_batch, &stats, &metrics),
        }
        stats.pending.store(pending.len(), Ordering::Relaxed);
        let Some(l) = live.as_mut() else {
            metrics.running_rows.set(0);
            continue;
        };
        metrics.running_rows.set(l.session.len() as i64);
        stats
            .max_batch
            .fetch_max(l.session.len(), Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| l.round(&loaded, &stats, &metrics)));
        let keep = match outcome {
            Ok(keep) => keep,
            Err(p) => {
                let why = panic_message(p.as_ref());
                l.fail(
                    &format!("internal error: the engine panicked decoding the batch of this request ({why}); the server keeps serving other requests"),
                    &stats,
                );
                false
            }
        };
        if !keep || l.session.is_empty() {
            live = None;
            metrics.running_rows.set(0);
        }
    }
}

/// The running session and the clients of its rows.
struct Live {
    session: Session,
    jobs: HashMap<RowId, (Job, RowState)>,
    rounds: usize,
}

impl Live {
    /// Starts a session with the oldest queued request and every compatible queued request (up
    /// to `max_batch`). `None` if the queue is empty or the session cannot start (its requests
    /// are answered with the error).
    fn start(
        loaded: &LoadedModel,
        pending: &mut VecDeque<Job>,
        max_batch: usize,
        stats: &Stats,
        metrics: &Metrics,
    ) -> Option<Live> {
        let first = pending.pop_front()?;
        let session = catch_unwind(AssertUnwindSafe(|| {
            Session::new(
                loaded.model.as_ref(),
                &first.settings,
                GenerateOptions::default(),
            )
        }));
        let session = match session {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                reject(&first, format!("{e:#}"), stats);
                return None;
            }
            Err(p) => {
                reject(&first, admission_panic(p.as_ref()), stats);
                return None;
            }
        };
        stats.batches.fetch_add(1, Ordering::Relaxed);
        let mut live = Live {
            session,
            jobs: HashMap::new(),
            rounds: 0,
        };
        live.admit(first, stats, metrics);
        let mut rest = VecDeque::new();
        for job in pending.drain(..) {
            if live.session.len() < max_batch && live.session.compatible(&job.settings) {
                live.admit(job, stats, metrics);
            } else {
                rest.push_back(job);
            }
        }
        *pending = rest;
        Some(live)
    }

    /// Admits queued requests from the head of the queue while they are compatible.
    fn admit_from_head(
        &mut self,
        pending: &mut VecDeque<Job>,
        max_batch: usize,
        stats: &Stats,
        metrics: &Metrics,
    ) {
        while self.session.len() < max_batch
            && pending
                .front()
                .is_some_and(|j| self.session.compatible(&j.settings))
        {
            if let Some(job) = pending.pop_front() {
                if self.admit(job, stats, metrics) {
                    stats.joined_rows.fetch_add(1, Ordering::Relaxed);
                    metrics.joined_rows.inc();
                }
            }
        }
    }

    /// Admits `job` (under a panic guard: a panic fails this request only).
    fn admit(&mut self, job: Job, stats: &Stats, metrics: &Metrics) -> bool {
        job.slot.release();
        let session = &mut self.session;
        let admitted = catch_unwind(AssertUnwindSafe(|| {
            session.admit(&job.prompt, &job.settings)
        }));
        match admitted {
            Ok(Ok(id)) => {
                stats.rows.fetch_add(1, Ordering::Relaxed);
                metrics.rows.inc();
                self.jobs.insert(id, (job, RowState::default()));
                self.rounds > 0
            }
            Ok(Err(e)) => {
                reject(&job, format!("{e:#}"), stats);
                false
            }
            Err(p) => {
                reject(&job, admission_panic(p.as_ref()), stats);
                false
            }
        }
    }

    /// Answers every row with `msg`, naming its request.
    fn fail(&mut self, msg: &str, stats: &Stats) {
        stats
            .failed_rows
            .fetch_add(self.jobs.len(), Ordering::Relaxed);
        for (job, _) in self.jobs.values() {
            let _ = job
                .events
                .send(RowEvent::Error(format!("request {}: {msg}", job.id)));
        }
        self.jobs.clear();
    }

    /// Runs one round. Returns whether the session goes on.
    fn round(&mut self, loaded: &LoadedModel, stats: &Stats, metrics: &Metrics) -> bool {
        self.rounds += 1;
        let spec = loaded.model.spec();
        let (mask, eos) = (spec.mask_token_id, &spec.eos_token_ids);
        let tokenizer = &loaded.tokenizer;
        let step_seconds = metrics.step_seconds.with_label_values(&[self
            .session
            .settings()
            .cache
            .mode
            .to_string()
            .as_str()]);
        let rows_in_round = self.session.len();
        let forwards_before = self.session.forwards();
        let mut last_step = Instant::now();
        let jobs = &mut self.jobs;
        let mut on_step = |ev: &StepEvent<'_>| -> Control {
            let now = Instant::now();
            step_seconds.observe(now.duration_since(last_step).as_secs_f64());
            last_step = now;
            let mut live = false;
            for r in 0..ev.batch() {
                let Some((job, st)) = ev.row_id(r).and_then(|id| jobs.get_mut(&id)) else {
                    continue;
                };
                if st.cancelled || st.done {
                    continue;
                }
                if job.events.is_closed() {
                    st.cancelled = true;
                    stats.cancelled_rows.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                live = true;
                let answer = ev.answer(r);
                let block_idx = ev.block_idx(r).unwrap_or(0);
                let answer_block = ev.answer_block(r);
                let done = ev.row_block_done.get(r).copied().unwrap_or(false);
                if done && st.blocks_seen <= block_idx {
                    st.blocks_seen = block_idx + 1;
                    if block_idx == 0 {
                        metrics
                            .first_block_seconds
                            .observe(job.queued_at.elapsed().as_secs_f64());
                    }
                    let end = answer_block.end.min(answer.len());
                    let last_block = end == answer.len();
                    if last_block || (!job.stream && job.limits.stop.is_empty()) {
                        // The finished row is answered after the round; a non-streaming row
                        // without stop strings can only end early on max_tokens, in its last
                        // block (the canvas is max_tokens rounded up to whole blocks).
                        continue;
                    }
                    let cut = job.limits.cut(tokenizer, eos, &answer[..end], false);
                    if cut.by_limit {
                        st.done = true;
                        answer_row(job, st, cut, metrics);
                        continue;
                    }
                    if job.stream && !st.finished {
                        st.finished = cut.finish_reason.is_some();
                        // The new answer tokens go through the row's incremental decoder
                        // (tokenizers' DecodeStream), which holds back a character whose bytes
                        // continue in the next block. A decoding error only delays the text:
                        // the final answer is decoded whole.
                        let tokens = &answer[..cut.completion_tokens.min(end)];
                        if let Some(new) = tokens.get(st.pushed..) {
                            let _ = st.decoder.push(tokenizer, new);
                            st.pushed = tokens.len();
                        }
                        let d = delta(
                            &st.sent,
                            cut.streamable(st.decoder.text(), &job.limits.stop),
                        );
                        if !d.is_empty() {
                            st.sent.push_str(&d);
                            let _ = job.events.send(RowEvent::Text(d));
                        }
                    }
                } else if !done && job.stream && job.provisional && !st.finished {
                    let block = answer.get(answer_block).unwrap_or_default();
                    let token_ids: Vec<Option<u32>> =
                        block.iter().map(|&t| (t != mask).then_some(t)).collect();
                    let committed: Vec<u32> = token_ids.iter().flatten().copied().collect();
                    let text = tokenizer.decode(&committed).unwrap_or_default();
                    let _ = job.events.send(RowEvent::Provisional(Provisional {
                        block: block_idx,
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
        let result = self.session.run_block(loaded.model.as_ref(), &mut on_step);
        let forwards = self.session.forwards().saturating_sub(forwards_before);
        metrics.forwards.inc_by(forwards as u64);
        if forwards > 0 {
            let positions = rows_in_round * self.session.settings().decode.block_length;
            metrics
                .tokens_per_forward
                .observe(positions as f64 / forwards as f64);
        }
        match result {
            Ok(finished) => {
                for row in finished {
                    let Some((job, mut st)) = self.jobs.remove(&row.id) else {
                        continue;
                    };
                    if st.cancelled || st.done {
                        continue;
                    }
                    let cut = job.limits.cut(tokenizer, eos, &row.output.generated, true);
                    answer_row(&job, &mut st, cut, metrics);
                }
                let gone: Vec<RowId> = self
                    .jobs
                    .iter()
                    .filter(|(_, (job, st))| st.cancelled || st.done || job.events.is_closed())
                    .map(|(&id, _)| id)
                    .collect();
                for id in gone {
                    if let Some((_, st)) = self.jobs.remove(&id) {
                        if !st.cancelled && !st.done {
                            stats.cancelled_rows.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    self.session.remove(id);
                }
                true
            }
            Err(e)
                if matches!(
                    e.downcast_ref::<fastdllm_core::Error>(),
                    Some(fastdllm_core::Error::Cancelled)
                ) =>
            {
                stats.stopped_batches.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(e) => {
                self.fail(&format!("{e:#}"), stats);
                false
            }
        }
    }
}

/// Answers `job` with an engine error naming it.
fn reject(job: &Job, msg: String, stats: &Stats) {
    stats.failed_rows.fetch_add(1, Ordering::Relaxed);
    let _ = job
        .events
        .send(RowEvent::Error(format!("request {}: {msg}", job.id)));
}

fn admission_panic(payload: &(dyn Any + Send)) -> String {
    format!(
        "internal error: the engine panicked admitting this request ({}); the server keeps serving other requests",
        panic_message(payload)
    )
}

/// Sends a finished row its last text (streams) and its `Done` event.
fn answer_row(job: &Job, st: &mut RowState, cut: Cut, metrics: &Metrics) {
    if job.stream {
        let d = delta(&st.sent, &cut.text);
        if !d.is_empty() {
            st.sent.push_str(&d);
            let _ = job.events.send(RowEvent::Text(d));
        }
    }
    metrics.output_tokens.inc_by(cut.completion_tokens as u64);
    metrics
        .generation_seconds
        .observe(job.queued_at.elapsed().as_secs_f64());
    let _ = job.events.send(RowEvent::Done {
        text: cut.text,
        completion_tokens: cut.completion_tokens,
        finish_reason: cut.finish_reason.unwrap_or("length"),
    });
}

/// Streaming state of one row.
#[derive(Debug, Default)]
struct RowState {
    /// Text streamed so far.
    sent: String,
    /// The answer's tokens decoded as they commit, whole characters only.
    decoder: IncrementalDecoder,
    /// Answer tokens pushed into `decoder`.
    pushed: usize,
    /// Blocks of the row seen complete.
    blocks_seen: usize,
    /// The answer ended on an end-of-sequence token: nothing more to stream.
    finished: bool,
    /// The answer ended on `max_tokens` or a stop string and was answered.
    done: bool,
    /// The client went away.
    cancelled: bool,
}

/// The part of `text` not yet in `sent` (empty if `text` does not extend it).
fn delta(sent: &str, text: &str) -> String {
    text.strip_prefix(sent).unwrap_or_default().to_string()
}

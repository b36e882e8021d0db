//! The engine worker: one thread that owns the model's compute and runs a continuous batch,
//! streaming each row's committed blocks to its own client.
//!
//! Granularity: **step-level continuous batching, rows join and leave between blocks**. The worker
//! keeps one running [`Session`] (the core's `BlockBatch`): each round every row decodes its own
//! next block in lock-step forwards. Between rounds, queued requests that can share the session
//! ([`crate::engine::batch_compatible`]: same block_length, steps per block, cache settings and
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
//! batch invariance), which tests/serve.rs checks against [`crate::engine::run`].
//!
//! Streaming: after every step, a row whose current block is final (no mask left) gets the text
//! of that block: its ids (up to the first end-of-sequence token) go through the row's
//! [`IncrementalDecoder`] (tokenizers' `DecodeStream`), which holds back the bytes of a character
//! that continues in the next block, so no chunk holds a broken character and the chunks joined
//! equal the non-streamed answer byte for byte; with `provisional`, the current block's
//! tentative tokens.
//!
//! Reference: none (the reference has no server). Robustness: a panic inside a round is caught
//! and answered as an error to that session's rows; the worker keeps serving.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fastdllm_core::{Control, GenerateOptions, RowId, StepEvent, TokenId};
use fastdllm_models::{IncrementalDecoder, LoadedModel};
use serde::Serialize;
use tokio::sync::mpsc;

use super::api::Provisional;
use crate::engine::{trim_at_eos, GenerationSettings, Session};

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
    /// Sessions stopped early because every row's client had gone.
    pub stopped_batches: AtomicUsize,
    /// Requests answered with an engine error.
    pub failed_rows: AtomicUsize,
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

/// Runs the worker loop until every sender of `rx` is dropped, the queue is drained and the
/// running session has finished.
pub fn run_worker(
    loaded: LoadedModel,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    stats: Arc<Stats>,
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
        // The channel stays the bounded queue (429 when full): take only what can be admitted.
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
        match live.as_mut() {
            Some(l) => l.admit_from_head(&mut pending, max_batch, &stats),
            None => live = Live::start(&loaded, &mut pending, max_batch, &stats),
        }
        let Some(l) = live.as_mut() else { continue };
        stats
            .max_batch
            .fetch_max(l.session.len(), Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| l.round(&loaded, &stats)));
        let keep = match outcome {
            Ok(keep) => keep,
            Err(_) => {
                l.fail("internal error: the engine panicked on this batch", &stats);
                false
            }
        };
        if !keep || l.session.is_empty() {
            live = None;
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
    ) -> Option<Live> {
        let first = pending.pop_front()?;
        let session = match Session::new(
            loaded.model.as_ref(),
            &first.settings,
            GenerateOptions::default(),
        ) {
            Ok(s) => s,
            Err(e) => {
                stats.failed_rows.fetch_add(1, Ordering::Relaxed);
                let _ = first.events.send(RowEvent::Error(format!("{e:#}")));
                return None;
            }
        };
        stats.batches.fetch_add(1, Ordering::Relaxed);
        let mut live = Live {
            session,
            jobs: HashMap::new(),
            rounds: 0,
        };
        live.admit(first, stats);
        let mut rest = VecDeque::new();
        for job in pending.drain(..) {
            if live.session.len() < max_batch && live.session.compatible(&job.settings) {
                live.admit(job, stats);
            } else {
                rest.push_back(job);
            }
        }
        *pending = rest;
        Some(live)
    }

    /// Admits queued requests from the head of the queue while they are compatible.
    fn admit_from_head(&mut self, pending: &mut VecDeque<Job>, max_batch: usize, stats: &Stats) {
        while self.session.len() < max_batch
            && pending
                .front()
                .is_some_and(|j| self.session.compatible(&j.settings))
        {
            if let Some(job) = pending.pop_front() {
                if self.admit(job, stats) {
                    stats.joined_rows.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn admit(&mut self, job: Job, stats: &Stats) -> bool {
        match self.session.admit(&job.prompt, &job.settings) {
            Ok(id) => {
                stats.rows.fetch_add(1, Ordering::Relaxed);
                self.jobs.insert(id, (job, RowState::default()));
                self.rounds > 0
            }
            Err(e) => {
                stats.failed_rows.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(RowEvent::Error(format!("{e:#}")));
                false
            }
        }
    }

    /// Answers every row with `msg`.
    fn fail(&mut self, msg: &str, stats: &Stats) {
        stats
            .failed_rows
            .fetch_add(self.jobs.len(), Ordering::Relaxed);
        for (job, _) in self.jobs.values() {
            let _ = job.events.send(RowEvent::Error(msg.to_string()));
        }
        self.jobs.clear();
    }

    /// Runs one round. Returns whether the session goes on.
    fn round(&mut self, loaded: &LoadedModel, stats: &Stats) -> bool {
        self.rounds += 1;
        let mask = loaded.model.spec().mask_token_id;
        let jobs = &mut self.jobs;
        let mut on_step = |ev: &StepEvent<'_>| -> Control {
            let mut live = false;
            for r in 0..ev.batch() {
                let Some((job, st)) = ev.row_id(r).and_then(|id| jobs.get_mut(&id)) else {
                    continue;
                };
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
                let block_idx = ev.block_idx(r).unwrap_or(0);
                let answer_block = ev.answer_block(r);
                let done = ev.row_block_done.get(r).copied().unwrap_or(false);
                if done && st.blocks_sent <= block_idx {
                    st.blocks_sent = block_idx + 1;
                    let end = answer_block.end.min(answer.len());
                    let committed = &answer[..end];
                    let kept = trim_at_eos(committed, &loaded.model.spec().eos_token_ids);
                    st.finished = kept.len() < committed.len();
                    let d = st.feed(loaded, kept);
                    if !d.is_empty() {
                        let _ = job.events.send(RowEvent::Text(d));
                    }
                } else if !done && job.provisional {
                    let block = answer.get(answer_block).unwrap_or_default();
                    let token_ids: Vec<Option<u32>> =
                        block.iter().map(|&t| (t != mask).then_some(t)).collect();
                    let committed: Vec<u32> = token_ids.iter().flatten().copied().collect();
                    let text = loaded.tokenizer.decode(&committed).unwrap_or_default();
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
        match self.session.run_block(loaded.model.as_ref(), &mut on_step) {
            Ok(finished) => {
                for row in finished {
                    let Some((job, st)) = self.jobs.remove(&row.id) else {
                        continue;
                    };
                    if st.cancelled {
                        continue;
                    }
                    let (text, completion_tokens, eos) = answer_text(loaded, &row.output.generated);
                    if job.stream {
                        let answer =
                            trim_at_eos(&row.output.generated, &loaded.model.spec().eos_token_ids);
                        let mut st = st;
                        let mut d = st.feed(loaded, answer);
                        d.push_str(&st.decoder.finish(&loaded.tokenizer).unwrap_or_default());
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
                let gone: Vec<RowId> = self
                    .jobs
                    .iter()
                    .filter(|(_, (job, st))| st.cancelled || job.events.is_closed())
                    .map(|(&id, _)| id)
                    .collect();
                for id in gone {
                    if let Some((_, st)) = self.jobs.remove(&id) {
                        if !st.cancelled {
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

/// Streaming state of one row.
#[derive(Debug, Default)]
struct RowState {
    /// The answer's ids fed to `decoder` so far.
    fed: usize,
    /// Turns committed ids into text that never splits a character (byte-level BPE).
    decoder: IncrementalDecoder,
    blocks_sent: usize,
    finished: bool,
    cancelled: bool,
}

impl RowState {
    /// Feeds the ids of `answer` (the committed answer so far, cut at EOS) not yet fed; returns
    /// the text that became final.
    fn feed(&mut self, loaded: &LoadedModel, answer: &[TokenId]) -> String {
        let new = answer.get(self.fed..).unwrap_or_default();
        self.fed = self.fed.max(answer.len());
        self.decoder
            .push(&loaded.tokenizer, new)
            .unwrap_or_default()
    }
}

/// The text of `ids` cut at the first EOS, and whether an EOS was found.
fn answer_text(loaded: &LoadedModel, ids: &[TokenId]) -> (String, usize, bool) {
    let eos = &loaded.model.spec().eos_token_ids;
    let answer = trim_at_eos(ids, eos);
    let text = loaded.tokenizer.decode(answer).unwrap_or_default();
    (text, answer.len(), answer.len() < ids.len())
}

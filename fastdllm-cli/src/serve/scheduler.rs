//! The server's engine loop ([`run_worker`], an [`super::worker::EngineLoop`]): on the worker
//! thread, it owns the model's compute and runs a continuous batch, streaming each row's events
//! to its own client.
//!
//! Granularity: **step-level continuous batching, rows join and leave between blocks**. The worker
//! keeps one running [`Batch`]: each round every row decodes its own
//! next block in lock-step forwards. Between rounds, queued requests that can share the session
//! ([`fastdllm_engine::batch_compatible`]: same block_length, steps per block, cache settings and
//! proposer; the answer length, the unmasking rule — threshold, factor, fixed — and the seed may
//! differ per row) join
//! it, up to `max_batch` rows, and start at their block 0 next to rows further on; rows that
//! finished their last block leave and are answered at once. Admission into a running session
//! takes requests from the head of the queue only, up to the first incompatible one, so an
//! incompatible request waits at most until the session drains (then it starts the next session,
//! which takes every compatible queued request). Rows leave early too: after every step the
//! observer checks each row's client; a row whose client is gone stops streaming and is dropped
//! from the session at the end of the round, and when every row is gone the session stops at once
//! ([`fastdllm_core::Control::Stop`]). Each row's output equals its solo output whenever it
//! joined (the core's batch invariance), which tests/serve.rs checks against
//! [`fastdllm_engine::run()`].
//!
//! Answers: the engine ([`fastdllm_engine::Batch`]) finishes each row: after every step it
//! checks the row's committed answer for its end (the end-of-sequence token, `max_tokens`, a
//! stop string), streams the text that became final, and a row whose answer is final leaves the
//! batch at once (its remaining blocks are not decoded). This worker only forwards each row's
//! events to its client's channel and counts them.
//!
//! Reference: none (the reference has no server). Supervision: admission and every round run
//! under `catch_unwind`; a panic fails only the rows involved (the request being admitted, or the
//! rows of the round's session, each answered with an error naming its request id) and the worker
//! keeps serving. Should the worker itself stop, [`super::worker::EngineHealth`] records why:
//! `GET /health` answers 503 with the reason, new requests get 503, and `fastdllm serve` drains
//! and exits non-zero so a supervisor restarts it.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use fastdllm_core::{GenerateOptions, RowId};
use fastdllm_engine::{Batch, RowEvents, RowSink};
use fastdllm_models::LoadedModel;

use super::metrics::Telemetry;
use super::worker::{EngineContext, Job, RowEvent};

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs the worker loop until every sender of `rx` is dropped, the queue is drained and the
/// running batch has finished. The queue's bound is the handlers' semaphore of
/// [`super::worker::QueueSlot`]s, not the channel: jobs whose client went away are skipped here.
/// When a batch ends with nothing queued, free heap memory goes back to the kernel
/// ([`crate::malloc::release_free_memory`]): a large batch's activations and caches would
/// otherwise stay resident.
pub fn run_worker(ctx: EngineContext) {
    let EngineContext {
        loaded,
        jobs: mut rx,
        max_batch,
        telemetry,
    } = ctx;
    let max_batch = max_batch.max(1);
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut served: Option<ServedBatch<'_>> = None;
    loop {
        if served.is_none() && pending.is_empty() {
            match rx.blocking_recv() {
                Some(job) => pending.push_back(job),
                None => break,
            }
        }
        // Take only what can be admitted; jobs of clients that went away are dropped on the way
        // (their queue places are already free).
        while pending.len() < max_batch {
            match rx.try_recv() {
                Ok(job) if job.events.is_closed() => telemetry.rows_cancelled(1),
                Ok(job) => pending.push_back(job),
                Err(_) => break,
            }
        }
        let before = pending.len();
        pending.retain(|j| !j.events.is_closed());
        telemetry.rows_cancelled(before - pending.len());
        match served.as_mut() {
            Some(l) => l.admit_from_head(&mut pending, max_batch, &telemetry),
            None => served = ServedBatch::start(&loaded, &mut pending, max_batch, &telemetry),
        }
        let Some(l) = served.as_mut() else {
            telemetry.running(0);
            continue;
        };
        telemetry.running(l.batch.len());
        let outcome = catch_unwind(AssertUnwindSafe(|| l.round(&telemetry)));
        let keep = match outcome {
            Ok(keep) => keep,
            Err(p) => {
                let why = panic_message(p.as_ref());
                l.fail(
                    &format!("internal error: the engine panicked decoding the batch of this request ({why}); the server keeps serving other requests"),
                    &telemetry,
                );
                false
            }
        };
        if !keep || l.batch.is_empty() {
            served = None;
            telemetry.running(0);
            if pending.is_empty() && rx.is_empty() {
                crate::malloc::release_free_memory();
            }
        }
    }
}

/// The engine's running [`Batch`] and the clients of its rows (the server adds only the clients).
struct ServedBatch<'m> {
    batch: Batch<'m>,
    clients: HashMap<RowId, Client>,
    rounds: usize,
}

/// One row's client.
#[derive(Debug)]
struct Client {
    job: Job,
    /// The client went away.
    cancelled: bool,
    /// Its answer was sent.
    done: bool,
}

impl<'m> ServedBatch<'m> {
    /// Starts a batch with the oldest queued request and every compatible queued request (up
    /// to `max_batch`). `None` if the queue is empty or the batch cannot start (its requests
    /// are answered with the error).
    fn start(
        loaded: &'m LoadedModel,
        pending: &mut VecDeque<Job>,
        max_batch: usize,
        telemetry: &Telemetry,
    ) -> Option<ServedBatch<'m>> {
        let first = pending.pop_front()?;
        let batch = catch_unwind(AssertUnwindSafe(|| {
            Batch::new(
                loaded.model.as_ref(),
                Some(&loaded.tokenizer),
                &first.settings,
                GenerateOptions::default(),
            )
        }));
        let batch = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                reject(&first, e.to_string(), telemetry);
                return None;
            }
            Err(p) => {
                reject(&first, admission_panic(p.as_ref()), telemetry);
                return None;
            }
        };
        telemetry.batch_started();
        let mut served = ServedBatch {
            batch,
            clients: HashMap::new(),
            rounds: 0,
        };
        served.admit(first, telemetry);
        let mut rest = VecDeque::new();
        for job in pending.drain(..) {
            if served.batch.len() < max_batch && served.batch.compatible(&job.settings) {
                served.admit(job, telemetry);
            } else {
                rest.push_back(job);
            }
        }
        *pending = rest;
        Some(served)
    }

    /// Admits queued requests from the head of the queue while they are compatible.
    fn admit_from_head(
        &mut self,
        pending: &mut VecDeque<Job>,
        max_batch: usize,
        telemetry: &Telemetry,
    ) {
        while self.batch.len() < max_batch
            && pending
                .front()
                .is_some_and(|j| self.batch.compatible(&j.settings))
        {
            if let Some(job) = pending.pop_front() {
                if self.admit(job, telemetry) {
                    telemetry.row_joined();
                }
            }
        }
    }

    /// Admits `job` (under a panic guard: a panic fails this request only). Returns whether it
    /// joined a batch that had already run a round.
    fn admit(&mut self, job: Job, telemetry: &Telemetry) -> bool {
        let batch = &mut self.batch;
        let events = RowEvents {
            text: job.stream,
            provisional: job.stream && job.provisional,
            logprobs: job.logprobs,
        };
        let admitted = catch_unwind(AssertUnwindSafe(|| {
            batch.admit(&job.prompt, &job.settings, events)
        }));
        match admitted {
            Ok(Ok(id)) => {
                telemetry.row_admitted();
                self.clients.insert(
                    id,
                    Client {
                        job,
                        cancelled: false,
                        done: false,
                    },
                );
                self.rounds > 0
            }
            Ok(Err(e)) => {
                reject(&job, e.to_string(), telemetry);
                false
            }
            Err(p) => {
                reject(&job, admission_panic(p.as_ref()), telemetry);
                false
            }
        }
    }

    /// Answers every row with `msg`, naming its request.
    fn fail(&mut self, msg: &str, telemetry: &Telemetry) {
        telemetry.rows_failed(self.clients.len());
        for c in self.clients.values() {
            let _ = c
                .job
                .events
                .try_send(RowEvent::Error(format!("request {}: {msg}", c.job.id)));
        }
        self.clients.clear();
    }

    /// Runs one round. Returns whether the batch goes on.
    fn round(&mut self, telemetry: &Telemetry) -> bool {
        self.rounds += 1;
        let cache_mode = self.batch.settings().cache.mode.to_string();
        let rows_in_round = self.batch.len();
        let forwards_before = self.batch.forwards();
        let mut sink = Clients {
            clients: &mut self.clients,
            telemetry,
            step_seconds: telemetry.step_seconds(&cache_mode),
            last_step: Instant::now(),
        };
        let result = self.batch.run_block(&mut sink);
        let forwards = self.batch.forwards().saturating_sub(forwards_before);
        let positions = rows_in_round * self.batch.settings().decode.block_length;
        telemetry.round(forwards, positions);
        match result {
            Ok(_) => {
                if rows_in_round > 0 && self.clients.values().all(|c| c.cancelled) {
                    telemetry.batch_stopped();
                }
                // Finished rows left the batch (their answers were sent); cancelled rows left
                // too. A client that went away after the round's last step leaves now.
                let gone: Vec<RowId> = self
                    .clients
                    .iter()
                    .filter(|(_, c)| c.cancelled || c.done || c.job.events.is_closed())
                    .map(|(&id, _)| id)
                    .collect();
                for id in gone {
                    if let Some(c) = self.clients.remove(&id) {
                        if !c.cancelled && !c.done {
                            telemetry.rows_cancelled(1);
                        }
                    }
                    self.batch.remove(id);
                }
                true
            }
            Err(e) => {
                self.fail(&e.to_string(), telemetry);
                false
            }
        }
    }
}

/// The clients of a round, as the engine's [`RowSink`]: events go to each row's channel.
struct Clients<'a> {
    clients: &'a mut HashMap<RowId, Client>,
    telemetry: &'a Telemetry,
    step_seconds: prometheus::Histogram,
    last_step: Instant,
}

impl RowSink for Clients<'_> {
    fn step(&mut self) {
        let now = Instant::now();
        self.step_seconds
            .observe(now.duration_since(self.last_step).as_secs_f64());
        self.last_step = now;
    }

    fn cancelled(&mut self, row: RowId) -> bool {
        let Some(c) = self.clients.get_mut(&row) else {
            return true;
        };
        if !c.cancelled && c.job.events.is_closed() {
            c.cancelled = true;
            self.telemetry.rows_cancelled(1);
        }
        c.cancelled
    }

    fn event(&mut self, row: RowId, event: fastdllm_engine::RowEvent) {
        use fastdllm_engine::RowEvent as E;
        let Some(c) = self.clients.get_mut(&row) else {
            return;
        };
        let job = &c.job;
        let out = match event {
            E::Text(t) => RowEvent::Text(t),
            E::Provisional(p) => RowEvent::Provisional(p),
            E::BlockCommitted(block) => {
                if block == 0 {
                    self.telemetry.first_block(job.queued_at);
                }
                return;
            }
            E::Done(answer) => {
                c.done = true;
                self.telemetry
                    .answered(answer.completion_tokens, job.queued_at);
                RowEvent::Done(answer)
            }
        };
        // The engine never waits for a client: a full channel means the client has stopped
        // reading (`ROW_EVENTS`), and its row is cancelled (the closed-without-an-answer channel
        // tells the handler).
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = job.events.try_send(out) {
            if !c.cancelled {
                c.cancelled = true;
                self.telemetry.rows_cancelled(1);
            }
        }
    }
}

/// Answers `job` with an engine error naming it.
fn reject(job: &Job, msg: String, telemetry: &Telemetry) {
    telemetry.rows_failed(1);
    let _ = job
        .events
        .try_send(RowEvent::Error(format!("request {}: {msg}", job.id)));
}

fn admission_panic(payload: &(dyn Any + Send)) -> String {
    format!(
        "internal error: the engine panicked admitting this request ({}); the server keeps serving other requests",
        panic_message(payload)
    )
}

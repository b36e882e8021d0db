//! The engine seam: the handlers queue a request's choices through an [`EngineHandle`], and one
//! worker thread that owns the model's compute runs them (the engine loop,
//! [`super::scheduler`]), sending each row's events (committed text, provisional blocks, the
//! final answer) to that row's own channel.
//!
//! The handlers' side ([`EngineHandle::submit`]): every choice (each prompt × `n`) is one row
//! ([`Job`]) with its own seed ([`choice_seed`]) and its own bounded event channel
//! ([`RowEvent`], [`ROW_EVENTS`] deep), and holds one place of the queue (a semaphore of
//! `queue_capacity` places, [`QueueSlot`]) from its submission until its client has the last
//! byte of the answer (the place is held by the response body); a request takes all its places
//! or none (429). A non-streaming handler waits for every choice's answer ([`wait_done`]); a
//! streaming one turns the channels into server-sent events (`super::sse`). A client that goes
//! away drops its channels and places: the places are free at once, and the engine loop notices
//! the closed channels after the next step. The engine never waits for a client: a row whose
//! client has fallen [`ROW_EVENTS`] events behind is cancelled (see `super::scheduler`).
//!
//! The engine loop ([`EngineLoop`]) runs on the worker thread; [`super::scheduler::run_worker`]
//! is the server's, and a test can give its own (a faulty one) to `serve::start_with` /
//! `serve::spawn_with`. A panic that escapes the loop stops the engine ([`EngineHealth`]):
//! `GET /health` answers 503 with the reason, new requests get 503, and `fastdllm serve` drains
//! and exits non-zero so a supervisor restarts it.
//!
//! Reference: none (the reference has no server).

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use fastdllm_core::{Rng, TokenId};
use fastdllm_engine::{Answer, GenerationSettings, Provisional};
use fastdllm_models::LoadedModel;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::errors::ApiError;
use super::metrics::Telemetry;
use super::scheduler::panic_message;

/// Events a row's channel holds before its client counts as not reading: the engine then
/// cancels the row rather than wait or buffer more (a row sends at most one text and one
/// provisional event per step; a client reading its stream keeps its channel near empty).
/// Reference: Redis' `client-output-buffer-limit` (a client whose output buffer passes a hard
/// limit is disconnected).
pub const ROW_EVENTS: usize = 256;

/// What an engine loop runs with.
pub struct EngineContext {
    /// The model and its tokenizer.
    pub loaded: LoadedModel,
    /// The queued rows; the loop ends once every sender is dropped and it has answered them.
    pub jobs: mpsc::UnboundedReceiver<Job>,
    /// Most rows in one batch.
    pub max_batch: usize,
    /// Where the loop counts rows, batches and steps (`/health`, `/metrics`).
    pub telemetry: Arc<Telemetry>,
}

/// The loop the engine thread runs: takes [`Job`]s until every sender is dropped, and answers
/// each on its channel. [`super::scheduler::run_worker`] is the server's; any
/// `FnOnce(EngineContext)` is one (a different scheduler, or a test's faulty loop). A panic
/// that escapes it stops the engine: `/health` and new requests answer 503 with the reason, and
/// [`Worker::join`] errors.
pub trait EngineLoop: Send + 'static {
    /// Runs the loop to its end.
    fn run(self, ctx: EngineContext);
}

impl<F: FnOnce(EngineContext) + Send + 'static> EngineLoop for F {
    fn run(self, ctx: EngineContext) {
        self(ctx)
    }
}

/// What one request asks the engine for: `n` choices of every prompt (choice
/// `index = prompt_i * n + j`).
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompts' token ids (templated, validated).
    pub prompts: Vec<Vec<TokenId>>,
    /// Choices per prompt.
    pub n: usize,
    /// The settings of every choice (answer limits included); each choice gets its own seed.
    pub settings: GenerationSettings,
    /// The request's `seed` ([`choice_seed`]); `None` draws a fresh seed per choice.
    pub seed: Option<u64>,
    /// Send the answer's text as it commits ([`RowEvent::Text`]).
    pub stream: bool,
    /// With `stream`: also the current block's provisional tokens after every step.
    pub provisional: bool,
    /// Record each answer token's commit-time log-probability and this many alternatives
    /// ([`fastdllm_engine::RowEvents::logprobs`]); `None`: not asked.
    pub logprobs: Option<usize>,
}

/// The handlers' side of the engine (cheap to clone): queues requests, reports the queue and
/// whether the engine runs.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::UnboundedSender<Job>,
    /// The queue's places (`capacity`).
    queue: Arc<Semaphore>,
    capacity: usize,
    health: Arc<EngineHealth>,
}

impl EngineHandle {
    /// Starts the engine thread running `engine_loop` on `loaded`, with a queue of
    /// `queue_capacity` places and batches of at most `max_batch` rows. The thread ends once
    /// every handle is dropped and the queue is drained; join it with [`Worker::join`].
    ///
    /// Errors: `queue_capacity` outside `1..=Semaphore::MAX_PERMITS` (refused, not clamped),
    /// the thread cannot start.
    pub fn start(
        loaded: LoadedModel,
        queue_capacity: usize,
        max_batch: usize,
        telemetry: Arc<Telemetry>,
        engine_loop: impl EngineLoop,
    ) -> anyhow::Result<(EngineHandle, Worker)> {
        let max_queue = Semaphore::MAX_PERMITS;
        if !(1..=max_queue).contains(&queue_capacity) {
            anyhow::bail!("queue_capacity = {queue_capacity} must be in 1..={max_queue}");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let health = Arc::new(EngineHealth::default());
        let guard = health.clone();
        let ctx = EngineContext {
            loaded,
            jobs: rx,
            max_batch,
            telemetry,
        };
        let thread = std::thread::Builder::new()
            .name("fastdllm-engine".into())
            .spawn(move || {
                // Per-request panics are caught inside; this guard records anything else, so
                // /health and new requests answer 503 with the reason instead of hanging.
                let run = AssertUnwindSafe(|| engine_loop.run(ctx));
                if let Err(p) = catch_unwind(run) {
                    guard.stop(format!(
                        "the engine thread panicked: {}",
                        panic_message(p.as_ref())
                    ));
                }
            })
            .context("cannot start the engine thread")?;
        let handle = EngineHandle {
            jobs: tx,
            queue: Arc::new(Semaphore::new(queue_capacity)),
            capacity: queue_capacity,
            health: health.clone(),
        };
        Ok((handle, Worker { thread, health }))
    }

    /// Queues the `g.prompts.len() * g.n` choices of request `id` (choice
    /// `index = prompt_i * n + j`, seed [`choice_seed`]), all or none, and returns them in
    /// `index` order.
    ///
    /// Errors: 503 when the engine stopped or shuts down; 400 when the request has more choices
    /// than the whole queue holds; 429 when the queue cannot take them all now.
    pub fn submit(&self, id: &str, g: &Generation) -> Result<Choices, ApiError> {
        let (prompts, n) = (&g.prompts, g.n);
        if let Some(reason) = self.health.stopped() {
            return Err(ApiError::engine_stopped(&reason));
        }
        let total = prompts.len().saturating_mul(n);
        let capacity = self.capacity;
        if total > capacity {
            let param = if n > 1 { "n" } else { "prompt" };
            return Err(ApiError::invalid(
                Some(param),
                format!("{} prompts x n = {n} is {total} choices, more than the server's queue holds ({capacity})", prompts.len()),
            ));
        }
        let wanted = u32::try_from(total).map_err(|_| ApiError::overloaded(capacity))?;
        let mut permits = match self.queue.clone().try_acquire_many_owned(wanted) {
            Ok(p) => Some(p),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                return Err(ApiError::overloaded(capacity))
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Err(ApiError::unavailable()),
        };
        let queued_at = Instant::now();
        let mut out = Vec::with_capacity(total);
        for index in 0..total {
            // One place per row: split off the held permits, the last row takes the rest.
            let one = if index + 1 < total {
                permits.as_mut().and_then(|p| p.split(1))
            } else {
                permits.take()
            };
            let Some(one) = one else {
                return Err(ApiError::internal("the queue places were miscounted"));
            };
            let slot = QueueSlot(one);
            let (tx, rx) = mpsc::channel(ROW_EVENTS);
            let mut row = g.settings.clone();
            row.seed = choice_seed(g.seed, index);
            let job = Job {
                id: id.to_string(),
                prompt: prompts[index / n].clone(),
                settings: row,
                stream: g.stream,
                provisional: g.provisional,
                logprobs: g.logprobs,
                queued_at,
                events: tx,
            };
            if self.jobs.send(job).is_err() {
                return Err(match self.health.stopped() {
                    Some(reason) => ApiError::engine_stopped(&reason),
                    None => ApiError::unavailable(),
                });
            }
            out.push(Queued { events: rx, slot });
        }
        Ok(out)
    }

    /// Why the engine stopped abnormally; `None` while it runs.
    pub fn stopped(&self) -> Option<String> {
        self.health.stopped()
    }

    /// Resolves once the engine has stopped abnormally.
    pub fn wait_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let health = self.health.clone();
        async move { health.wait_stopped().await }
    }

    /// Rows queued or held by their handlers (places of the queue in use).
    pub fn queue_depth(&self) -> usize {
        self.capacity.saturating_sub(self.queue.available_permits())
    }

    /// The queue's places.
    pub fn queue_capacity(&self) -> usize {
        self.capacity
    }
}

/// The engine worker thread; join it after the server has stopped (every [`EngineHandle`]
/// dropped).
pub struct Worker {
    thread: std::thread::JoinHandle<()>,
    health: Arc<EngineHealth>,
}

impl Worker {
    /// Waits until the worker has drained the queue and exited. Errors if the engine stopped
    /// abnormally (the reason [`EngineHandle::stopped`] reported), so `serve` exits non-zero.
    pub fn join(self) -> anyhow::Result<()> {
        if self.thread.join().is_err() {
            self.health.stop("the engine thread panicked");
        }
        match self.health.stopped() {
            Some(reason) => anyhow::bail!("the engine stopped: {reason}"),
            None => Ok(()),
        }
    }
}

/// One queued choice: its events and the handler's hold on its queue place (dropping it, as
/// when the client disconnects or has read the whole answer, frees the place).
#[derive(Debug)]
pub struct Queued {
    /// The row's events, in order; [`RowEvent::Done`] or [`RowEvent::Error`] is the last (a
    /// channel that closes without either: the engine cancelled the row).
    pub events: mpsc::Receiver<RowEvent>,
    /// The handler's hold on the row's queue place.
    pub slot: QueueSlot,
}

/// A request's queued choices, in `index` order.
pub type Choices = Vec<Queued>;

/// The end of one choice.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The answer's text.
    pub text: String,
    /// Its length in tokens.
    pub completion_tokens: usize,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
    /// Each answer token's commit-time log-probability, when the request asked.
    pub logprobs: Option<Vec<fastdllm_engine::AnswerLogprob>>,
}

/// Waits for the final event of every choice of a non-streaming request (the choices' queue
/// places are held until then, or until the client goes away and this future is dropped).
///
/// Errors: 500 when a choice failed in the engine or the engine dropped it.
pub async fn wait_done(choices: Choices) -> Result<Vec<Finished>, ApiError> {
    let mut out = Vec::with_capacity(choices.len());
    'choices: for Queued { mut events, slot } in choices {
        let _slot = slot;
        while let Some(ev) = events.recv().await {
            match ev {
                RowEvent::Done(a) => {
                    out.push(Finished {
                        text: a.text.unwrap_or_default(),
                        completion_tokens: a.completion_tokens,
                        finish_reason: a.finish_reason.as_str(),
                        logprobs: a.logprobs,
                    });
                    continue 'choices;
                }
                RowEvent::Error(m) => return Err(ApiError::internal(m)),
                RowEvent::Text(_) | RowEvent::Provisional(_) => {}
            }
        }
        return Err(ApiError::internal("the engine dropped the request"));
    }
    Ok(out)
}

/// The seed of choice `index`: `Rng::row_seed(seed, index)` (choice 0 keeps `seed`), or a fresh
/// seed when the request has none.
pub fn choice_seed(seed: Option<u64>, index: usize) -> u64 {
    match seed {
        Some(seed) => Rng::row_seed(seed, index),
        None => fresh_seed(),
    }
}

/// A fresh seed for a request without `seed`: std's per-process random hasher keys, a counter
/// and the clock, mixed.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// One request for the worker.
#[derive(Debug)]
pub struct Job {
    /// The request id answered to the client (`cmpl-…`, `chatcmpl-…`); engine errors name it.
    pub id: String,
    /// Prompt ids (templated, validated).
    pub prompt: Vec<TokenId>,
    /// The request's settings (validated; answer limits included).
    pub settings: GenerationSettings,
    /// Send [`RowEvent::Text`] as the answer commits.
    pub stream: bool,
    /// Send [`RowEvent::Provisional`] after every step.
    pub provisional: bool,
    /// [`Generation::logprobs`].
    pub logprobs: Option<usize>,
    /// When the request was queued (metrics).
    pub queued_at: Instant,
    /// The client's channel ([`ROW_EVENTS`] deep); closed = the client went away.
    pub events: mpsc::Sender<RowEvent>,
}

/// A request's place in the queue, held by its handler (the response body of a stream) until
/// the client has the answer's last byte or goes away; dropping it returns the place.
#[derive(Debug)]
pub struct QueueSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// What the worker tells one client.
#[derive(Debug, Clone)]
pub enum RowEvent {
    /// Final text committed since the previous `Text` event.
    Text(String),
    /// The current block's tentative state.
    Provisional(Provisional),
    /// The answer is complete.
    Done(Answer),
    /// The generation failed.
    Error(String),
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

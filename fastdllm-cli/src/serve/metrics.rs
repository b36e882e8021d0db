//! The server's telemetry: one [`Telemetry`] counts every event once, and both `GET /health`
//! (its `stats` object, [`StatsSnapshot`]) and `GET /metrics` (the Prometheus text exposition
//! format, the `prometheus` crate's registry and `TextEncoder`) read it. The engine worker
//! reports what happens to rows and batches, the router's `track` layer (`super::access::track`)
//! every answered request.
//!
//! `/health`'s `stats`: `batches` (batches started), `rows` (= `fastdllm_rows_total`),
//! `joined_rows` (= `fastdllm_joined_rows_total`), `max_batch` (most rows in one round so far),
//! `cancelled_rows` (rows whose client went away), `stopped_batches` (rounds cut short because
//! every row's client had gone), `failed_rows` (rows answered with an engine error).
//!
//! `/metrics`: names follow the Prometheus conventions (`fastdllm_` prefix, base units, `_total`
//! for counters, `_seconds` for durations):
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `fastdllm_http_requests_total` | counter | `route`, `status` | answered HTTP requests |
//! | `fastdllm_http_request_duration_seconds` | histogram | `route` | time to the response head (for a stream: to its start) |
//! | `fastdllm_queue_depth` | gauge | | requests waiting for the engine |
//! | `fastdllm_running_rows` | gauge | | rows in the running batch |
//! | `fastdllm_rows_total` | counter | | rows (choices) that reached the engine |
//! | `fastdllm_joined_rows_total` | counter | | rows that joined a running batch between blocks |
//! | `fastdllm_output_tokens_total` | counter | | answer tokens returned (`usage.completion_tokens`) |
//! | `fastdllm_forwards_total` | counter | | model forwards (one per step of a batch) |
//! | `fastdllm_tokens_per_forward` | histogram | | committed answer positions per forward, per round |
//! | `fastdllm_step_duration_seconds` | histogram | `cache` | one denoising step (forward + sampling) of the batch |
//! | `fastdllm_time_to_first_block_seconds` | histogram | | queueing to a row's first committed block |
//! | `fastdllm_generation_duration_seconds` | histogram | | queueing to a choice's last token |
//!
//! Reference: the Prometheus exposition format and naming guide
//! (<https://prometheus.io/docs/practices/naming/>).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use serde::{Deserialize, Serialize};

/// The counters and metrics of one server. The Prometheus metrics sit in their own registry
/// (tests run several servers in one process); the counters only `/health` reports are plain
/// atomics. Every event is counted once: `/health`'s `rows` and `joined_rows` read the
/// Prometheus counters.
pub struct Telemetry {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    queue_depth: IntGauge,
    running_rows: IntGauge,
    rows: IntCounter,
    joined_rows: IntCounter,
    output_tokens: IntCounter,
    forwards: IntCounter,
    tokens_per_forward: Histogram,
    step_seconds: HistogramVec,
    first_block_seconds: Histogram,
    generation_seconds: Histogram,
    batches: AtomicUsize,
    max_batch: AtomicUsize,
    cancelled_rows: AtomicUsize,
    stopped_batches: AtomicUsize,
    failed_rows: AtomicUsize,
}

/// The `stats` object of `GET /health`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Batches started.
    pub batches: usize,
    /// Rows run (choices that reached the engine).
    pub rows: usize,
    /// Rows that joined a running batch between blocks.
    pub joined_rows: usize,
    /// Most rows in one round so far.
    pub max_batch: usize,
    /// Rows whose client went away before or during generation.
    pub cancelled_rows: usize,
    /// Rounds cut short because every row's client had gone.
    pub stopped_batches: usize,
    /// Rows answered with an engine error.
    pub failed_rows: usize,
}

fn buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    exponential_buckets(start, factor, count).unwrap_or_default()
}

impl Telemetry {
    /// Every counter at zero, the metrics in a fresh registry.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let seconds = buckets(0.001, 2.0, 18); // 1 ms .. ~131 s
        let http_requests = IntCounterVec::new(
            Opts::new(
                "fastdllm_http_requests_total",
                "HTTP requests answered, by route and status.",
            ),
            &["route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "fastdllm_http_request_duration_seconds",
                "Time from a request to its response head (for a stream: to the stream's start).",
            )
            .buckets(seconds.clone()),
            &["route"],
        )?;
        let queue_depth = IntGauge::new(
            "fastdllm_queue_depth",
            "Requests (choices) waiting for the engine.",
        )?;
        let running_rows = IntGauge::new("fastdllm_running_rows", "Rows in the running batch.")?;
        let rows = IntCounter::new(
            "fastdllm_rows_total",
            "Rows (choices) that reached the engine.",
        )?;
        let joined_rows = IntCounter::new(
            "fastdllm_joined_rows_total",
            "Rows that joined a running batch between blocks.",
        )?;
        let output_tokens = IntCounter::new(
            "fastdllm_output_tokens_total",
            "Answer tokens returned (usage.completion_tokens).",
        )?;
        let forwards = IntCounter::new(
            "fastdllm_forwards_total",
            "Model forwards (one per denoising step of a batch).",
        )?;
        let tokens_per_forward = Histogram::with_opts(
            HistogramOpts::new(
                "fastdllm_tokens_per_forward",
                "Answer positions committed per forward, observed once per round of the batch.",
            )
            .buckets(buckets(0.5, 2.0, 12)),
        )?;
        let step_seconds = HistogramVec::new(
            HistogramOpts::new(
                "fastdllm_step_duration_seconds",
                "One denoising step of the batch (forward and sampling), by cache mode.",
            )
            .buckets(buckets(0.0005, 2.0, 16)),
            &["cache"],
        )?;
        let first_block_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "fastdllm_time_to_first_block_seconds",
                "Time from queueing to a row's first committed block.",
            )
            .buckets(seconds.clone()),
        )?;
        let generation_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "fastdllm_generation_duration_seconds",
                "Time from queueing to a choice's last token.",
            )
            .buckets(seconds),
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(running_rows.clone()))?;
        registry.register(Box::new(rows.clone()))?;
        registry.register(Box::new(joined_rows.clone()))?;
        registry.register(Box::new(output_tokens.clone()))?;
        registry.register(Box::new(forwards.clone()))?;
        registry.register(Box::new(tokens_per_forward.clone()))?;
        registry.register(Box::new(step_seconds.clone()))?;
        registry.register(Box::new(first_block_seconds.clone()))?;
        registry.register(Box::new(generation_seconds.clone()))?;
        Ok(Telemetry {
            registry,
            http_requests,
            http_duration,
            queue_depth,
            running_rows,
            rows,
            joined_rows,
            output_tokens,
            forwards,
            tokens_per_forward,
            step_seconds,
            first_block_seconds,
            generation_seconds,
            batches: AtomicUsize::new(0),
            max_batch: AtomicUsize::new(0),
            cancelled_rows: AtomicUsize::new(0),
            stopped_batches: AtomicUsize::new(0),
            failed_rows: AtomicUsize::new(0),
        })
    }

    /// A request answered on `route` (its matched path, or `unmatched`) with `status`, `elapsed`
    /// after it arrived.
    pub fn http_answered(&self, route: &str, status: &str, elapsed: Duration) {
        self.http_requests.with_label_values(&[route, status]).inc();
        self.http_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    /// The worker started a batch.
    pub fn batch_started(&self) {
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// A row was admitted into a batch.
    pub fn row_admitted(&self) {
        self.rows.inc();
    }

    /// An admitted row joined a batch that had already run a round.
    pub fn row_joined(&self) {
        self.joined_rows.inc();
    }

    /// `rows` rows are in the running batch (0: none runs).
    pub fn running(&self, rows: usize) {
        self.running_rows.set(rows as i64);
        self.max_batch.fetch_max(rows, Ordering::Relaxed);
    }

    /// `n` rows' clients went away (queued or running).
    pub fn rows_cancelled(&self, n: usize) {
        self.cancelled_rows.fetch_add(n, Ordering::Relaxed);
    }

    /// A round ended with every row's client gone.
    pub fn batch_stopped(&self) {
        self.stopped_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` rows were answered with an engine error.
    pub fn rows_failed(&self, n: usize) {
        self.failed_rows.fetch_add(n, Ordering::Relaxed);
    }

    /// A round made `forwards` forwards over `positions` answer positions (rows × block length).
    pub fn round(&self, forwards: usize, positions: usize) {
        self.forwards.inc_by(forwards as u64);
        if forwards > 0 {
            self.tokens_per_forward
                .observe(positions as f64 / forwards as f64);
        }
    }

    /// The histogram of step durations under cache mode `cache`.
    pub fn step_seconds(&self, cache: &str) -> Histogram {
        self.step_seconds.with_label_values(&[cache])
    }

    /// A row queued at `queued_at` committed its first block.
    pub fn first_block(&self, queued_at: Instant) {
        self.first_block_seconds
            .observe(queued_at.elapsed().as_secs_f64());
    }

    /// A choice queued at `queued_at` was answered with `completion_tokens` tokens.
    pub fn answered(&self, completion_tokens: usize, queued_at: Instant) {
        self.output_tokens.inc_by(completion_tokens as u64);
        self.generation_seconds
            .observe(queued_at.elapsed().as_secs_f64());
    }

    /// `/health`'s `stats`.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            rows: self.rows.get() as usize,
            joined_rows: self.joined_rows.get() as usize,
            max_batch: self.max_batch.load(Ordering::Relaxed),
            cancelled_rows: self.cancelled_rows.load(Ordering::Relaxed),
            stopped_batches: self.stopped_batches.load(Ordering::Relaxed),
            failed_rows: self.failed_rows.load(Ordering::Relaxed),
        }
    }

    /// `/metrics`: the registry in the text exposition format (version 0.0.4), with
    /// `fastdllm_queue_depth` set to `queue_depth`.
    pub fn render(&self, queue_depth: usize) -> String {
        self.queue_depth.set(queue_depth as i64);
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            out = format!("# error encoding the metrics: {e}\n");
        }
        out
    }

    /// The `Content-Type` of [`Telemetry::render`].
    pub fn content_type() -> String {
        TextEncoder::new().format_type().to_string()
    }
}

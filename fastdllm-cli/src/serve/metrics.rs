//! `GET /metrics`: the server's metrics in the Prometheus text exposition format (the
//! `prometheus` crate's registry and `TextEncoder`).
//!
//! Names follow the Prometheus conventions (`fastdllm_` prefix, base units, `_total` for
//! counters, `_seconds` for durations):
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

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric of one server, registered in its own registry (tests run several servers in one
/// process).
pub struct Metrics {
    registry: Registry,
    /// `fastdllm_http_requests_total{route, status}`.
    pub http_requests: IntCounterVec,
    /// `fastdllm_http_request_duration_seconds{route}`.
    pub http_duration: HistogramVec,
    /// `fastdllm_queue_depth` (set at scrape time from the queue).
    pub queue_depth: IntGauge,
    /// `fastdllm_running_rows`.
    pub running_rows: IntGauge,
    /// `fastdllm_rows_total`.
    pub rows: IntCounter,
    /// `fastdllm_joined_rows_total`.
    pub joined_rows: IntCounter,
    /// `fastdllm_output_tokens_total`.
    pub output_tokens: IntCounter,
    /// `fastdllm_forwards_total`.
    pub forwards: IntCounter,
    /// `fastdllm_tokens_per_forward`.
    pub tokens_per_forward: Histogram,
    /// `fastdllm_step_duration_seconds{cache}`.
    pub step_seconds: HistogramVec,
    /// `fastdllm_time_to_first_block_seconds`.
    pub first_block_seconds: Histogram,
    /// `fastdllm_generation_duration_seconds`.
    pub generation_seconds: Histogram,
}

fn buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    exponential_buckets(start, factor, count).unwrap_or_default()
}

impl Metrics {
    /// A fresh registry with every metric at zero.
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
        Ok(Metrics {
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
        })
    }

    /// The registry in the text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            out = format!("# error encoding the metrics: {e}\n");
        }
        out
    }

    /// The `Content-Type` of [`Metrics::render`].
    pub fn content_type() -> String {
        TextEncoder::new().format_type().to_string()
    }
}

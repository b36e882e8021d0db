//! `fastdllm serve`: an OpenAI-compatible HTTP server (axum + tokio + hyper) in front of one
//! engine worker.
//!
//! Routes ([`routes`]): `POST /v1/completions`, `POST /v1/chat/completions` (JSON or, with
//! `"stream": true`, server-sent events ending with `data: [DONE]`), `GET /v1/models`,
//! `GET /v1/models/{id}`, `GET /health` (liveness), `GET /ready` (readiness), `GET /metrics`.
//! Shutdown is graceful up to a deadline: `/ready` turns 503 at once, the server keeps accepting
//! for `shutdown_delay` (a load balancer's health check sees the 503 and stops sending), then
//! stops accepting while in-flight and queued requests finish (see [`serve`]).
//!
//! One chat request, file by file:
//!
//! 1. [`transport`]: the accept loop hands the connection to hyper (limits on connections,
//!    head size and time), which calls the [`router`] built here at start-up;
//! 2. [`access`], the router's layers: [`access::track`] counts and times the request
//!    ([`metrics::Telemetry`]), [`access::check`] refuses oversized heads, missing API keys and
//!    non-JSON bodies before anything is read, then reads the body whole (413, 408) for
//! 3. [`routes::chat`], the handler, which
//! 4. validates the body in one call ([`validate::Validator::chat`]: parse, field checks,
//!    knobs, chat template, byte cap, tokenization on a blocking thread), giving the engine's
//!    [`worker::Generation`]; errors are OpenAI error objects ([`errors`]);
//! 5. queues its choices through the engine seam ([`worker::EngineHandle::submit`]: one row
//!    and one queue place per choice, 429 when full);
//! 6. [`scheduler`]: the engine loop on the worker thread admits the rows into the running
//!    `fastdllm_engine::Batch` (fastdllm-engine/src/batch.rs), whose `run_block` drives the
//!    core's block-wise loop (fastdllm-core/src/generate.rs), and forwards each row's events to
//!    the row's channel;
//! 7. back in [`routes::chat`]: [`sse`] turns the channels into chunks as they come, or the
//!    handler waits for every choice ([`worker::wait_done`]) and assembles the
//!    `chat.completion` object ([`openai`] holds the wire types).
//!
//! A client that goes away frees its queue places at once and closes its channels, which the
//! engine loop notices after the next step. `/health` and `/metrics` read one
//! [`metrics::Telemetry`].
//!
//! Reference: the OpenAI completions / chat completions API. Deviations: see [`openai`]
//! (supported fields) and [`scheduler`] (batch granularity).

pub mod access;
pub mod errors;
pub mod metrics;
pub mod openai;
pub mod routes;
pub mod scheduler;
pub mod sse;
pub mod transport;
pub mod validate;
pub mod worker;

pub use validate::Defaults;
pub use worker::{EngineLoop, Worker};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::routing::{get, post};
use axum::Router;
use fastdllm_models::LoadedModel;
use tokio::sync::oneshot;

use metrics::Telemetry;
use validate::Validator;
use worker::EngineHandle;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The id clients name in `model` (and `GET /v1/models` lists).
    pub model_id: String,
    /// Knob defaults.
    pub defaults: Defaults,
    /// Choices (rows) the server holds at once: queued, decoding, or not yet read by their
    /// clients (a place counts until the client has the answer's last byte); more are 429.
    pub queue_capacity: usize,
    /// Most rows in one batch.
    pub max_batch: usize,
    /// Largest request body in bytes (413 above).
    pub body_limit: usize,
    /// Time allowed to send a request head; also how long an idle keep-alive connection stays
    /// open (hyper's `header_read_timeout` runs while a connection waits for a request head).
    pub header_read_timeout: Duration,
    /// Time allowed to send the whole request body, from the end of its head (408 after it).
    pub body_timeout: Duration,
    /// Most open connections; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Most open connections from one client address (IP); more are closed as soon as they are
    /// accepted, so that one address cannot take every place of [`Self::max_connections`].
    pub max_connections_per_ip: usize,
    /// Longest time a response may wait for its client to take any of its bytes (a client that
    /// does not read its stream): the connection is then closed and its rows cancelled.
    pub stream_timeout: Duration,
    /// After a shutdown signal, how long in-flight requests may take before their connections
    /// are closed.
    pub drain_timeout: Duration,
    /// Bearer key required on every route but `/health` and `/ready` (401 without it);
    /// `None` = open.
    pub api_key: Option<String>,
    /// Origins allowed cross-origin (CORS; `*` = any); empty = CORS off.
    pub cors_allow_origins: Vec<String>,
    /// Prompts tokenized (and chat templates rendered) at once, on blocking threads.
    pub tokenize_concurrency: usize,
    /// After a shutdown signal, how long the server keeps accepting and serving new requests
    /// while `/ready` answers 503, before it stops accepting and drains (zero: stop at once).
    /// Reference: kube-apiserver's `--shutdown-delay-duration`.
    pub shutdown_delay: Duration,
}

impl ServeConfig {
    /// Defaults: queue 64, batches of up to 32 rows, 1 MiB bodies, 10 s to send a head (and
    /// idle keep-alive), 30 s to send a body, 256 connections (128 per client address), 30 s for
    /// a client to read, 30 s drain, no API key, no CORS, tokenization on as many threads as
    /// there are CPUs.
    pub fn new(model_id: impl Into<String>, defaults: Defaults) -> Self {
        ServeConfig {
            model_id: model_id.into(),
            defaults,
            queue_capacity: 64,
            max_batch: 32,
            body_limit: 1 << 20,
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 256,
            max_connections_per_ip: 128,
            stream_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            api_key: None,
            cors_allow_origins: Vec::new(),
            tokenize_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            shutdown_delay: Duration::ZERO,
        }
    }
}

/// What the handlers share.
struct Inner {
    cfg: ServeConfig,
    /// Parses, validates and tokenizes requests.
    validator: Arc<Validator>,
    /// The engine seam: queues choices, reports the queue and the engine's health.
    engine: EngineHandle,
    /// Counters and metrics (`/health`, `/metrics`).
    telemetry: Arc<Telemetry>,
    /// Large bodies in flight ([`access::LargeBodies`]).
    large: Arc<access::LargeBodies>,
    /// Whether a shutdown has begun (`GET /ready`).
    readiness: Arc<routes::health::Readiness>,
    /// Unix seconds at start (`GET /v1/models`' `created`).
    started: u64,
}

/// Shared state of the handlers (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// The server's settings.
    pub fn config(&self) -> &ServeConfig {
        &self.0.cfg
    }

    /// Resolves once the engine worker has stopped abnormally (a panic outside the per-request
    /// guards): `serve` then drains and exits non-zero.
    pub fn engine_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        self.0.engine.wait_stopped()
    }
}

/// Starts the engine worker for `loaded` and returns the handlers' state.
pub fn start(loaded: LoadedModel, cfg: ServeConfig) -> Result<(AppState, Worker)> {
    start_with(loaded, cfg, scheduler::run_worker)
}

/// [`start`] with the engine loop `engine_loop` ([`EngineLoop`]). A panic that escapes it stops
/// the engine: `/health` and new requests answer 503 with the reason, and [`Worker::join`]
/// errors.
pub fn start_with(
    loaded: LoadedModel,
    cfg: ServeConfig,
    engine_loop: impl EngineLoop,
) -> Result<(AppState, Worker)> {
    let telemetry = Arc::new(Telemetry::new().context("cannot register the metrics")?);
    let validator = Arc::new(Validator::new(
        &loaded,
        &cfg.model_id,
        &cfg.defaults,
        cfg.tokenize_concurrency,
    ));
    let (engine, worker) = EngineHandle::start(
        loaded,
        cfg.queue_capacity,
        cfg.max_batch,
        telemetry.clone(),
        engine_loop,
    )?;
    let inner = Inner {
        cfg,
        validator,
        engine,
        telemetry,
        large: Arc::default(),
        readiness: Arc::default(),
        started: routes::now(),
    };
    Ok((AppState(Arc::new(inner)), worker))
}

/// The routes, behind (outermost first) CORS when configured, the request counter
/// ([`access::track`]) and the access checks with the body read under its deadline
/// ([`access::check`]).
pub fn router(state: AppState) -> Router {
    let cfg = state.0.cfg.clone();
    let r = Router::new()
        .route("/v1/completions", post(routes::completions::create))
        .route("/v1/chat/completions", post(routes::chat::create))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{*id}", get(routes::models::retrieve))
        .route("/health", get(routes::health::health))
        .route("/ready", get(routes::health::ready))
        .route("/metrics", get(routes::health::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // The access layer has read the body within `body_limit` already.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::check,
        ))
        // Outermost of the router's layers: refusals by the access checks are counted too.
        .layer(axum::middleware::from_fn_with_state(
            state.0.telemetry.clone(),
            access::track,
        ))
        .with_state(state);
    match access::cors_layer(&cfg.cors_allow_origins) {
        Some(cors) => r.layer(cors),
        None => r,
    }
}

/// Serves `state` on `listener` until `shutdown` resolves, then shuts down in three steps:
///
/// 1. at once, `GET /ready` answers 503 (`GET /health`, the liveness probe, stays 200);
/// 2. for `shutdown_delay` the server keeps accepting and serving everything, so that a load
///    balancer polling `/ready` sees the 503 (not a refused connection) and stops sending;
/// 3. it stops accepting and drains ([`transport::serve`]): idle keep-alive connections close,
///    in-flight and queued requests finish (responses carry `connection: close`) for up to
///    `drain_timeout`, then the remaining connections are closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let readiness = state.0.readiness.clone();
    let delay = state.0.cfg.shutdown_delay;
    let shutdown = async move {
        shutdown.await;
        readiness.shutdown_begins();
        if !delay.is_zero() {
            crate::logln!(
                "not ready: /ready answers 503; still serving for {} s (--shutdown-delay), then draining",
                delay.as_secs_f64()
            );
            tokio::time::sleep(delay).await;
        }
    };
    transport::serve(listener, state, shutdown).await
}

/// A server running on its own thread and tokio runtime (tests, load generation).
pub struct ServerHandle {
    /// The bound address.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl ServerHandle {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful shutdown: in-flight requests finish, then the worker exits.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => match t.join() {
                Ok(r) => r.context("server failed"),
                Err(_) => anyhow::bail!("the server thread panicked"),
            },
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Starts a server on `listener` (already bound) with its own runtime of `threads` threads.
pub fn spawn(
    listener: std::net::TcpListener,
    loaded: LoadedModel,
    cfg: ServeConfig,
    threads: usize,
) -> Result<ServerHandle> {
    spawn_with(listener, loaded, cfg, threads, scheduler::run_worker)
}

/// [`spawn`] with the engine loop `engine_loop` (see [`start_with`]).
pub fn spawn_with(
    listener: std::net::TcpListener,
    loaded: LoadedModel,
    cfg: ServeConfig,
    threads: usize,
    engine_loop: impl EngineLoop,
) -> Result<ServerHandle> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    let (state, worker) = start_with(loaded, cfg, engine_loop)?;
    let (tx, rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("fastdllm-http".into())
        .spawn(move || {
            let result = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                serve(listener, state, async move {
                    let _ = rx.await;
                })
                .await
            });
            drop(runtime);
            let engine = worker.join();
            result.and_then(|()| engine.map_err(std::io::Error::other))
        })?;
    Ok(ServerHandle {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

//! `fastdllm serve`: an OpenAI-compatible HTTP server (axum + tokio) in front of one engine
//! worker.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (JSON or, with `"stream": true`,
//! server-sent events ending with `data: [DONE]`), `GET /v1/models`, `GET /health`,
//! `GET /metrics` ([`metrics`]). The transport ([`transport`]) bounds connections and their
//! header, body and idle times; the access checks ([`access`]) refuse oversized heads, missing
//! API keys and non-JSON bodies before anything is read. Requests are then parsed and validated
//! on the async side (OpenAI-style 4xx errors, [`errors`]), their text capped in bytes by the
//! model's maximum length, tokenized on blocking threads (a bounded number at once), and every
//! choice (each prompt × `n`) is queued as one row (a semaphore of `queue_capacity` places;
//! full → 429). The worker thread ([`scheduler`]) batches compatible rows and streams each row's
//! committed blocks back through the row's own channel. A client that goes away frees its queue
//! places at once and closes its channels, which the worker notices after the next step.
//! Shutdown is graceful up to a deadline: in-flight and queued requests finish.
//!
//! Reference: the OpenAI completions / chat completions API. Deviations: see [`openai`] (supported
//! fields) and [`scheduler`] (batch granularity).

pub mod access;
pub mod errors;
pub mod metrics;
pub mod openai;
pub mod scheduler;
pub mod transport;
pub mod validate;
pub mod worker;

pub use validate::Defaults;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fastdllm_models::LoadedModel;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{StreamExt, StreamMap};

use openai::{ChatChoice, ChatMessage, Chunk, ChunkChoice, CompletionChoice, Usage};
use validate::{Validated, Validator};
use errors::ApiError;
use metrics::Telemetry;
use worker::{wait_done, Choices, EngineHandle, EngineLoop, Queued, RowEvent, Worker};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The id clients name in `model` (and `GET /v1/models` lists).
    pub model_id: String,
    /// Knob defaults.
    pub defaults: Defaults,
    /// Requests that may wait for the engine; more are answered 429.
    pub queue_capacity: usize,
    /// Most rows in one batch.
    pub max_batch: usize,
    /// Largest request body in bytes (413 above).
    pub body_limit: usize,
    /// Time allowed to send a request head; also how long an idle keep-alive connection stays
    /// open (hyper's `header_read_timeout` runs while a connection waits for a request head).
    pub header_read_timeout: Duration,
    /// Longest pause while sending a request body (tower-http's `RequestBodyTimeoutLayer`; 408).
    pub body_timeout: Duration,
    /// Most open connections; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// After a shutdown signal, how long in-flight requests may take before their connections
    /// are closed.
    pub drain_timeout: Duration,
    /// Bearer key required on every route but `/health` (401 without it); `None` = open.
    pub api_key: Option<String>,
    /// Origins allowed cross-origin (CORS; `*` = any); empty = CORS off.
    pub cors_allow_origins: Vec<String>,
    /// Prompts tokenized (and chat templates rendered) at once, on blocking threads.
    pub tokenize_concurrency: usize,
}

impl ServeConfig {
    /// Defaults: queue 64, batches of up to 32 rows, 1 MiB bodies, 10 s to send a head (and
    /// idle keep-alive), 30 s body pauses, 256 connections, 30 s drain, no API key, no CORS,
    /// tokenization on as many threads as there are CPUs.
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
            drain_timeout: Duration::from_secs(30),
            api_key: None,
            cors_allow_origins: Vec::new(),
            tokenize_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

struct Inner {
    engine: EngineHandle,
    validator: Arc<Validator>,
    large: Arc<access::LargeBodies>,
    cfg: ServeConfig,
    telemetry: Arc<Telemetry>,
    started: u64,
}

/// Shared state of the handlers (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
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
        validator,
        large: Arc::default(),
        telemetry: telemetry.clone(),
        started: now(),
        cfg: cfg.clone(),
        engine,
    };
    Ok((AppState(Arc::new(inner)), worker))
}

impl AppState {
    /// The server's settings.
    pub fn config(&self) -> &ServeConfig {
        &self.0.cfg
    }
}

/// The routes, behind (outermost first) CORS when configured, the body timeout and the access
/// checks ([`access::check`]).
pub fn router(state: AppState) -> Router {
    let cfg = state.0.cfg.clone();
    let r = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::check,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            cfg.body_timeout,
        ))
        // Outermost of the router's layers: refusals by the access checks are counted too.
        .layer(axum::middleware::from_fn_with_state(
            state.0.telemetry.clone(),
            metrics::track,
        ))
        .with_state(state);
    match access::cors_layer(&cfg.cors_allow_origins) {
        Some(cors) => r.layer(cors),
        None => r,
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, Telemetry::content_type())],
        s.0.telemetry.render(s.0.engine.queue_depth()),
    )
        .into_response()
}

/// Serves `state` on `listener` until `shutdown` resolves, then drains (see
/// [`transport::serve`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}{:08x}", n, nanos)
}

async fn not_found() -> ApiError {
    ApiError::invalid(None, "unknown route; see POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics")
        .with_status(StatusCode::NOT_FOUND)
        .with_code("not_found")
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::invalid(
        None,
        format!(
            "method {} is not allowed on {}: the completion routes take POST, /v1/models and /health GET",
            req.method(),
            req.uri().path()
        ),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
    .with_code("method_not_allowed")
}

async fn models(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{ "id": s.0.cfg.model_id, "object": "model", "created": s.0.started, "owned_by": "fastdllm" }],
    }))
}

async fn health(State(s): State<AppState>) -> Response {
    if let Some(reason) = s.0.engine.stopped() {
        let body = json!({
            "status": "error",
            "reason": reason,
            "model": s.0.cfg.model_id,
            "stats": s.0.telemetry.snapshot(),
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({
        "status": "ok",
        "model": s.0.cfg.model_id,
        "queue": { "depth": s.0.engine.queue_depth(), "capacity": s.0.engine.queue_capacity() },
        "stats": s.0.telemetry.snapshot(),
    }))
    .into_response()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

/// Builds the chunks of one streaming response.
struct Chunker {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Chunker {
    fn chunk(
        &self,
        index: usize,
        text: Option<String>,
        role: bool,
        finish: Option<&'static str>,
        prov: Option<openai::Provisional>,
    ) -> Chunk {
        let (text, delta) = match self.kind {
            Kind::Completion => (Some(text.unwrap_or_default()), None),
            Kind::Chat => {
                let mut d = serde_json::Map::new();
                if role {
                    d.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    d.insert("content".into(), json!(t));
                }
                (None, Some(serde_json::Value::Object(d)))
            }
        };
        self.with(
            vec![ChunkChoice {
                index,
                text,
                delta,
                logprobs: None,
                finish_reason: finish,
                provisional: prov,
            }],
            None,
        )
    }

    fn with(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Chunk {
        Chunk {
            id: self.id.clone(),
            object: if self.kind == Kind::Chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            },
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        }
    }
}

fn event(c: &Chunk) -> Event {
    Event::default()
        .json_data(c)
        .unwrap_or_else(|_| Event::default().data("{}"))
}

/// The SSE response of a streaming request: the choices' chunks as they come, then (with
/// `include_usage`) a chunk with empty `choices` and the usage, then `[DONE]`. A task drives the
/// choices and holds their queue places; when the client goes away it drops their channels and
/// places, which cancels their rows.
fn sse(
    s: &AppState,
    kind: Kind,
    id: String,
    choices: Choices,
    prompt_tokens: usize,
    include_usage: bool,
) -> Response {
    let c = Chunker {
        kind,
        id,
        created: now(),
        model: s.0.cfg.model_id.clone(),
        include_usage,
    };
    let (out, out_rx) = mpsc::unbounded_channel::<Event>();
    let n = choices.len();
    tokio::spawn(async move {
        let mut map = StreamMap::new();
        let mut _slots = Vec::with_capacity(n);
        for (i, Queued { events, slot }) in choices.into_iter().enumerate() {
            map.insert(i, UnboundedReceiverStream::new(events));
            _slots.push(slot);
        }
        if kind == Kind::Chat {
            for i in 0..n {
                if out
                    .send(event(&c.chunk(i, None, true, None, None)))
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut completion_tokens = 0;
        loop {
            let next = tokio::select! {
                next = map.next() => next,
                () = out.closed() => return,
            };
            let Some((i, ev)) = next else { break };
            let e = match ev {
                RowEvent::Text(t) => event(&c.chunk(i, Some(t), false, None, None)),
                RowEvent::Provisional(p) => event(&c.chunk(i, None, false, None, Some(p))),
                RowEvent::Done(a) => {
                    completion_tokens += a.completion_tokens;
                    event(&c.chunk(i, None, false, Some(a.finish_reason.as_str()), None))
                }
                RowEvent::Error(m) => Event::default()
                    .json_data(ApiError::internal(m).body())
                    .unwrap_or_else(|_| Event::default().data("{}")),
            };
            if out.send(e).is_err() {
                return;
            }
        }
        if include_usage {
            let usage = Usage::new(prompt_tokens, completion_tokens);
            let _ = out.send(event(&c.with(Vec::new(), Some(usage))));
        }
        let _ = out.send(Event::default().data("[DONE]"));
    });
    let stream = UnboundedReceiverStream::new(out_rx).map(Ok::<Event, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Reads the body and runs `handle` on it; a large body counts toward a burst
/// ([`access::LargeBodies`]) until the handler has returned (and freed its copies of it).
async fn with_body<F, Fut>(s: AppState, req: Request, handle: F) -> Response
where
    F: FnOnce(AppState, axum::body::Bytes) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let body = match access::read_body(&s, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let large = s.0.large.track(body.len());
    let r = handle(s, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    drop(large);
    r
}

async fn completions(State(s): State<AppState>, req: Request) -> Response {
    with_body(s, req, completion).await
}

async fn chat_completions(State(s): State<AppState>, req: Request) -> Response {
    with_body(s, req, chat_completion).await
}

async fn completion(s: AppState, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let request = s.0.validator.completion(body).await?;
    answer(&s, Kind::Completion, request).await
}

async fn chat_completion(s: AppState, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let request = s.0.validator.chat(body).await?;
    answer(&s, Kind::Chat, request).await
}

/// Queues `r`'s choices and answers them: server-sent events, or one JSON response once every
/// choice is done (the route's object: `text_completion` or `chat.completion`).
async fn answer(s: &AppState, kind: Kind, r: Validated) -> Result<Response, ApiError> {
    let prompt_tokens = r.prompt_tokens();
    let id = request_id(match kind {
        Kind::Completion => "cmpl",
        Kind::Chat => "chatcmpl",
    });
    let choices = s.0.engine.submit(&id, &r.generation)?;
    if r.generation.stream {
        return Ok(sse(s, kind, id, choices, prompt_tokens, r.include_usage));
    }
    let done = wait_done(choices).await?;
    let usage = Usage::new(
        prompt_tokens,
        done.iter().map(|d| d.completion_tokens).sum(),
    );
    let model = s.0.cfg.model_id.clone();
    Ok(match kind {
        Kind::Completion => Json(openai::Response {
            id,
            object: "text_completion",
            created: now(),
            model,
            choices: done
                .into_iter()
                .enumerate()
                .map(|(index, d)| CompletionChoice {
                    index,
                    text: d.text,
                    logprobs: None,
                    finish_reason: Some(d.finish_reason),
                })
                .collect(),
            usage,
        })
        .into_response(),
        Kind::Chat => Json(openai::Response {
            id,
            object: "chat.completion",
            created: now(),
            model,
            choices: done
                .into_iter()
                .enumerate()
                .map(|(index, d)| ChatChoice {
                    index,
                    message: ChatMessage {
                        role: "assistant".into(),
                        content: d.text,
                    },
                    logprobs: None,
                    finish_reason: Some(d.finish_reason),
                })
                .collect(),
            usage,
        })
        .into_response(),
    })
}

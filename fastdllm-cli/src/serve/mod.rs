//! `fastdllm serve`: an OpenAI-compatible HTTP server (axum + tokio) in front of one engine
//! worker.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (JSON or, with `"stream": true`,
//! server-sent events ending with `data: [DONE]`), `GET /v1/models`, `GET /health`. The
//! transport ([`transport`]) bounds connections and their header, body and idle times; the
//! access checks ([`access`]) refuse oversized heads, missing API keys and non-JSON bodies before
//! anything is read. Requests are then parsed and validated on the async side (OpenAI-style 4xx
//! errors, [`errors`]), their text capped in bytes by the model's maximum length, tokenized on
//! blocking threads (a bounded number at once), and queued (a semaphore of `queue_capacity`
//! places; full → 429). The worker thread ([`scheduler`]) batches compatible requests and streams
//! each row's committed blocks back through the row's own channel. A client that goes away frees
//! its queue place at once and closes its channel, which the worker notices after the next step.
//! Shutdown is graceful up to a deadline: in-flight and queued requests finish.
//!
//! Reference: the OpenAI completions / chat completions API. Deviations: see [`api`] (one choice,
//! single-turn chats, `max_tokens` = `gen_length`) and [`scheduler`] (batch granularity).

pub mod access;
pub mod api;
pub mod errors;
pub mod scheduler;
pub mod transport;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fastdllm_core::{ModelSpec, TokenId};
use fastdllm_models::{ChatTemplate, LoadedModel, Tokenizer};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use api::{
    ChatChoice, ChatMessage, ChatRequest, Chunk, ChunkChoice, CompletionChoice, CompletionRequest,
    Defaults, Knobs, PromptInput, Usage,
};
use errors::ApiError;
use scheduler::{EngineHealth, Job, QueueSlot, RowEvent, Stats};

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
    tx: mpsc::UnboundedSender<Job>,
    /// The queue's places (`queue_capacity`).
    queue: Arc<Semaphore>,
    /// Tokenizations at once.
    tokenize: Arc<Semaphore>,
    /// Largest prompt or message text in bytes ([`prompt_byte_cap`]).
    prompt_byte_cap: usize,
    large: Arc<access::LargeBodies>,
    cfg: ServeConfig,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    spec: ModelSpec,
    stats: Arc<Stats>,
    engine: Arc<EngineHealth>,
    started: u64,
}

/// Shared state of the handlers (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The engine worker thread; join it after the server has stopped (every [`AppState`] dropped).
pub struct Worker {
    thread: std::thread::JoinHandle<()>,
    engine: Arc<EngineHealth>,
}

impl Worker {
    /// Waits until the worker has drained the queue and exited. Errors if the engine stopped
    /// abnormally (the reason [`AppState::engine_stopped`] reported), so `serve` exits non-zero.
    pub fn join(self) -> Result<()> {
        if self.thread.join().is_err() {
            self.engine.stop("the engine thread panicked");
        }
        match self.engine.stopped() {
            Some(reason) => anyhow::bail!("the engine stopped: {reason}"),
            None => Ok(()),
        }
    }
}

impl AppState {
    /// Resolves once the engine worker has stopped abnormally (a panic outside the per-request
    /// guards): `serve` then drains and exits non-zero.
    pub fn engine_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let engine = self.0.engine.clone();
        async move { engine.wait_stopped().await }
    }
}

/// The largest prompt text (bytes) that can fit in `max_seq_len` tokens: `max_seq_len` times
/// the longest vocabulary entry in UTF-8 bytes (at least 4, one character). Every input byte
/// of a byte-level BPE or character-level vocabulary is covered by a token of at most that many
/// bytes, so a longer text has more than `max_seq_len` tokens and is refused before it is
/// tokenized (the tokenizer's cost grows with the text, the engine's cap does not). Saturates
/// instead of overflowing. Assumption: the normalizer does not delete input (none of the
/// supported models' tokenizers does).
pub fn prompt_byte_cap(tokenizer: &Tokenizer, max_seq_len: usize) -> usize {
    let longest = tokenizer
        .inner()
        .get_vocab(true)
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(4);
    max_seq_len.saturating_mul(longest)
}

/// Starts the engine worker for `loaded` and returns the handlers' state.
pub fn start(loaded: LoadedModel, cfg: ServeConfig) -> Result<(AppState, Worker)> {
    // Refused, not clamped: a queue bound past the semaphore's limit is a configuration error.
    let max_queue = Semaphore::MAX_PERMITS;
    if !(1..=max_queue).contains(&cfg.queue_capacity) {
        anyhow::bail!(
            "queue_capacity = {} must be in 1..={max_queue}",
            cfg.queue_capacity
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(Stats::default());
    let engine = Arc::new(EngineHealth::default());
    let spec = loaded.model.spec().clone();
    let inner = Inner {
        tx,
        engine: engine.clone(),
        queue: Arc::new(Semaphore::new(cfg.queue_capacity)),
        tokenize: Arc::new(Semaphore::new(
            cfg.tokenize_concurrency.clamp(1, Semaphore::MAX_PERMITS),
        )),
        prompt_byte_cap: prompt_byte_cap(&loaded.tokenizer, spec.max_seq_len),
        large: Arc::default(),
        tokenizer: loaded.tokenizer.clone(),
        template: loaded.info.chat_template,
        spec,
        stats: stats.clone(),
        started: now(),
        cfg: cfg.clone(),
    };
    let max_batch = cfg.max_batch;
    let health = engine.clone();
    let thread = std::thread::Builder::new()
        .name("fastdllm-engine".into())
        .spawn(move || {
            // Per-request panics are caught inside; this guard records anything else, so /health
            // and new requests answer 503 with the reason instead of hanging.
            let run = std::panic::AssertUnwindSafe(|| {
                scheduler::run_worker(loaded, rx, max_batch, stats)
            });
            if let Err(p) = std::panic::catch_unwind(run) {
                health.stop(format!(
                    "the engine thread panicked: {}",
                    scheduler::panic_message(p.as_ref())
                ));
            }
        })
        .context("cannot start the engine thread")?;
    Ok((AppState(Arc::new(inner)), Worker { thread, engine }))
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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::check,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            cfg.body_timeout,
        ))
        .with_state(state);
    match access::cors_layer(&cfg.cors_allow_origins) {
        Some(cors) => r.layer(cors),
        None => r,
    }
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
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    let (state, worker) = start(loaded, cfg)?;
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
    ApiError::invalid(None, "unknown route; see POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health")
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
            "stats": s.0.stats.snapshot(),
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let capacity = s.0.cfg.queue_capacity;
    Json(json!({
        "status": "ok",
        "model": s.0.cfg.model_id,
        "queue": { "depth": capacity.saturating_sub(s.0.queue.available_permits()), "capacity": capacity },
        "stats": s.0.stats.snapshot(),
    }))
    .into_response()
}

/// A validated request ready for the queue.
struct Prepared {
    prompt: Vec<TokenId>,
    job_settings: conformance::engine::GenerationSettings,
    stream: bool,
    provisional: bool,
}

/// Validates a request and tokenizes its text: the cheap checks (empty text, the byte cap, the
/// knobs) first, then the template and the tokenizer on a blocking thread, at most
/// `tokenize_concurrency` at once.
async fn prepare(
    s: &AppState,
    text: String,
    templated: bool,
    knobs: &Knobs,
    stream: bool,
    provisional: bool,
) -> Result<Prepared, ApiError> {
    let param = if templated { "messages" } else { "prompt" };
    if text.trim().is_empty() {
        return Err(ApiError::invalid(Some(param), "the prompt is empty"));
    }
    let max = s.0.spec.max_seq_len;
    let cap = s.0.prompt_byte_cap;
    if text.len() > cap {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "the prompt is {} bytes: more than the {cap} bytes that can fit in the model's maximum sequence length of {max} tokens",
                text.len()
            ),
        )
        .with_code("context_length_exceeded"));
    }
    let settings = knobs.resolve(&s.0.cfg.defaults, s.0.spec.family)?;
    let permit =
        s.0.tokenize
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable())?;
    let st = s.clone();
    let prompt = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let (text, special) = if templated {
            (
                st.0.template.apply(&text),
                st.0.template.add_special_tokens(),
            )
        } else {
            (text, true)
        };
        st.0.tokenizer.encode(&text, special)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the tokenizer failed: {e}")))?
    .map_err(|e| ApiError::invalid(Some(param), format!("cannot tokenize the prompt: {e}")))?;
    let gen = settings.decode.gen_length;
    // Saturating: a sum past usize::MAX exceeds any model's maximum just the same.
    let total = prompt.len().saturating_add(gen);
    if total > max {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "the prompt has {} tokens and the answer gen_length = {gen}: {total} tokens exceed the model's maximum sequence length {max}",
                prompt.len(),
            ),
        )
        .with_code("context_length_exceeded"));
    }
    settings
        .decode
        .validate_prompt(&s.0.spec, &prompt)
        .map_err(|e| ApiError::invalid(Some(param), e.to_string()))?;
    Ok(Prepared {
        prompt,
        job_settings: settings,
        stream,
        provisional,
    })
}

/// A queued request: its events and the handler's hold on its queue place (dropping it, as
/// when the client disconnects, frees the place at once).
struct Submitted {
    rx: mpsc::UnboundedReceiver<RowEvent>,
    slot: QueueSlot,
}

/// Queues `p` as request `id`.
fn submit(s: &AppState, id: &str, p: Prepared) -> Result<Submitted, ApiError> {
    if let Some(reason) = s.0.engine.stopped() {
        return Err(ApiError::engine_stopped(&reason));
    }
    let permit = match s.0.queue.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(tokio::sync::TryAcquireError::NoPermits) => {
            return Err(ApiError::overloaded(s.0.cfg.queue_capacity))
        }
        Err(tokio::sync::TryAcquireError::Closed) => return Err(ApiError::unavailable()),
    };
    let (job_slot, slot) = QueueSlot::pair(permit);
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        id: id.to_string(),
        prompt: p.prompt,
        settings: p.job_settings,
        stream: p.stream,
        provisional: p.provisional,
        events: tx,
        slot: job_slot,
    };
    match s.0.tx.send(job) {
        Ok(()) => Ok(Submitted { rx, slot }),
        Err(_) => Err(match s.0.engine.stopped() {
            Some(reason) => ApiError::engine_stopped(&reason),
            None => ApiError::unavailable(),
        }),
    }
}

/// Waits for the final event of a non-streaming request.
async fn wait_done(sub: Submitted) -> Result<(String, usize, &'static str), ApiError> {
    let Submitted { mut rx, slot } = sub;
    let _slot = slot;
    while let Some(ev) = rx.recv().await {
        match ev {
            RowEvent::Done {
                text,
                completion_tokens,
                finish_reason,
            } => return Ok((text, completion_tokens, finish_reason)),
            RowEvent::Error(m) => return Err(ApiError::internal(m)),
            RowEvent::Text(_) | RowEvent::Provisional(_) => {}
        }
    }
    Err(ApiError::internal("the engine dropped the request"))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

/// The SSE response of a streaming request.
fn sse(s: &AppState, kind: Kind, id: String, sub: Submitted, prompt_tokens: usize) -> Response {
    let Submitted { rx, slot } = sub;
    let created = now();
    let model = s.0.cfg.model_id.clone();
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |text: Option<String>,
                      role: bool,
                      finish: Option<&'static str>,
                      prov: Option<api::Provisional>,
                      usage: Option<Usage>| {
        let (text, delta) = match kind {
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
        Chunk {
            id: id.clone(),
            object,
            created,
            model: model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                text,
                delta,
                finish_reason: finish,
                provisional: prov,
            }],
            usage,
        }
    };
    let head: Vec<Chunk> = if kind == Kind::Chat {
        vec![chunk(None, true, None, None, None)]
    } else {
        Vec::new()
    };
    let to_event = |c: Chunk| -> Event {
        Event::default()
            .json_data(&c)
            .unwrap_or_else(|_| Event::default().data("{}"))
    };
    // The stream holds the queue place: a client that hangs up drops the stream and the place.
    let body = UnboundedReceiverStream::new(rx).map(move |ev| {
        let _held = &slot;
        match ev {
            RowEvent::Text(t) => to_event(chunk(Some(t), false, None, None, None)),
            RowEvent::Provisional(p) => to_event(chunk(None, false, None, Some(p), None)),
            RowEvent::Done {
                completion_tokens,
                finish_reason,
                ..
            } => to_event(chunk(
                None,
                false,
                Some(finish_reason),
                None,
                Some(Usage {
                    prompt_tokens,
                    completion_tokens,
                    total_tokens: prompt_tokens + completion_tokens,
                }),
            )),
            RowEvent::Error(m) => Event::default()
                .json_data(ApiError::internal(m).body())
                .unwrap_or_else(|_| Event::default().data("{}")),
        }
    });
    let stream = tokio_stream::iter(head.into_iter().map(to_event))
        .chain(body)
        .chain(tokio_stream::once(Event::default().data("[DONE]")))
        .map(Ok::<Event, Infallible>);
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
    let r: CompletionRequest = api::parse_body(&body)?;
    drop(body);
    api::check_model(r.model.as_deref(), &s.0.cfg.model_id)?;
    api::check_n(r.n)?;
    let text = match r.prompt {
        PromptInput::One(t) => t,
        PromptInput::Many(mut v) if v.len() == 1 => v.swap_remove(0),
        PromptInput::Many(v) => {
            return Err(ApiError::invalid(
                Some("prompt"),
                format!("prompt holds {} strings: send one prompt per request (the server batches concurrent requests)", v.len()),
            ))
        }
    };
    let p = prepare(&s, text, false, &r.knobs, r.stream, r.provisional).await?;
    let prompt_tokens = p.prompt.len();
    let id = request_id("cmpl");
    let sub = submit(&s, &id, p)?;
    if r.stream {
        return Ok(sse(&s, Kind::Completion, id, sub, prompt_tokens));
    }
    let (text, completion_tokens, finish_reason) = wait_done(sub).await?;
    let resp = api::Response {
        id,
        object: "text_completion",
        created: now(),
        model: s.0.cfg.model_id.clone(),
        choices: vec![CompletionChoice {
            index: 0,
            text,
            finish_reason: Some(finish_reason),
        }],
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
    };
    Ok(Json(resp).into_response())
}

async fn chat_completion(s: AppState, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let mut r: ChatRequest = api::parse_body(&body)?;
    drop(body);
    api::check_model(r.model.as_deref(), &s.0.cfg.model_id)?;
    api::check_n(r.n)?;
    let text =
        match r.messages.as_slice() {
            [m] if m.role == "user" => std::mem::take(&mut r.messages[0].content),
            _ => return Err(ApiError::invalid(
                Some("messages"),
                "only single-turn chats are supported: send exactly one message with role 'user'",
            )),
        };
    let p = prepare(&s, text, true, &r.knobs, r.stream, r.provisional).await?;
    let prompt_tokens = p.prompt.len();
    let id = request_id("chatcmpl");
    let sub = submit(&s, &id, p)?;
    if r.stream {
        return Ok(sse(&s, Kind::Chat, id, sub, prompt_tokens));
    }
    let (text, completion_tokens, finish_reason) = wait_done(sub).await?;
    let resp = api::Response {
        id,
        object: "chat.completion",
        created: now(),
        model: s.0.cfg.model_id.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: ChatMessage {
                role: "assistant".into(),
                content: text,
            },
            finish_reason: Some(finish_reason),
        }],
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
    };
    Ok(Json(resp).into_response())
}

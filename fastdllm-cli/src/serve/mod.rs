//! `fastdllm serve`: an OpenAI-compatible HTTP server (axum + tokio) in front of one engine
//! worker.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (JSON or, with `"stream": true`,
//! server-sent events ending with `data: [DONE]`), `GET /v1/models`, `GET /health`. Requests are
//! parsed and validated on the async side (OpenAI-style 4xx errors, [`errors`]), tokenized, and
//! queued on a bounded channel (full → 429); the worker thread ([`scheduler`]) batches
//! compatible requests and streams each row's committed blocks back through the row's own
//! channel. A client that goes away closes its channel, which the worker notices after the next
//! step. Shutdown is graceful: in-flight and queued requests finish.
//!
//! Reference: the OpenAI completions / chat completions API. Deviations: see [`api`] (one choice,
//! `max_tokens` = `gen_length`) and [`scheduler`] (batch granularity).

pub mod api;
pub mod errors;
pub mod scheduler;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fastdllm_core::{ModelSpec, TokenId};
use fastdllm_models::{ChatTemplate, LoadedModel, Tokenizer};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use api::{
    ChatChoice, ChatMessage, ChatRequest, Chunk, ChunkChoice, CompletionChoice, CompletionRequest,
    Defaults, Knobs, PromptInput, Usage,
};
use errors::ApiError;
use scheduler::{Job, RowEvent, Stats};

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
}

impl ServeConfig {
    /// Defaults: queue 64, batches of up to 32 rows, 1 MiB bodies.
    pub fn new(model_id: impl Into<String>, defaults: Defaults) -> Self {
        ServeConfig {
            model_id: model_id.into(),
            defaults,
            queue_capacity: 64,
            max_batch: 32,
            body_limit: 1 << 20,
        }
    }
}

struct Inner {
    tx: mpsc::Sender<Job>,
    cfg: ServeConfig,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    spec: ModelSpec,
    stats: Arc<Stats>,
    started: u64,
}

/// Shared state of the handlers (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The engine worker thread; join it after the server has stopped (every [`AppState`] dropped).
pub struct Worker(std::thread::JoinHandle<()>);

impl Worker {
    /// Waits until the worker has drained the queue and exited.
    pub fn join(self) {
        if self.0.join().is_err() {
            eprintln!("error: the engine worker panicked");
        }
    }
}

/// Starts the engine worker for `loaded` and returns the handlers' state.
pub fn start(loaded: LoadedModel, cfg: ServeConfig) -> Result<(AppState, Worker)> {
    let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
    let stats = Arc::new(Stats::default());
    let inner = Inner {
        tx,
        tokenizer: loaded.tokenizer.clone(),
        template: loaded.info.chat_template.clone(),
        spec: loaded.model.spec().clone(),
        stats: stats.clone(),
        started: now(),
        cfg: cfg.clone(),
    };
    let max_batch = cfg.max_batch;
    let handle = std::thread::Builder::new()
        .name("fastdllm-engine".into())
        .spawn(move || scheduler::run_worker(loaded, rx, max_batch, stats))
        .context("cannot start the engine thread")?;
    Ok((AppState(Arc::new(inner)), Worker(handle)))
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
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
            worker.join();
            result
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

async fn models(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{ "id": s.0.cfg.model_id, "object": "model", "created": s.0.started, "owned_by": "fastdllm" }],
    }))
}

async fn health(State(s): State<AppState>) -> Json<serde_json::Value> {
    let tx = &s.0.tx;
    Json(json!({
        "status": "ok",
        "model": s.0.cfg.model_id,
        "queue": { "depth": tx.max_capacity() - tx.capacity(), "capacity": tx.max_capacity() },
        "stats": s.0.stats.snapshot(),
    }))
}

/// Reads the body up to the limit (413 above it).
async fn read_body(s: &AppState, req: Request) -> Result<axum::body::Bytes, ApiError> {
    let limit = s.0.cfg.body_limit;
    let too_large = || {
        ApiError::invalid(
            None,
            format!("the request body is larger than the limit of {limit} bytes"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        .with_code("request_too_large")
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| too_large())
}

/// A validated request ready for the queue.
struct Prepared {
    prompt: Vec<TokenId>,
    job_settings: crate::engine::GenerationSettings,
    stream: bool,
    provisional: bool,
}

/// The prompt text of a request: raw (`prompt`, the tokenizer's special tokens added) or a
/// conversation rendered with the chat template.
enum PromptText<'a> {
    Raw(&'a str),
    Chat(&'a [fastdllm_models::Message]),
}

fn prepare(
    s: &AppState,
    input: PromptText<'_>,
    knobs: &Knobs,
    stream: bool,
    provisional: bool,
) -> Result<Prepared, ApiError> {
    let (param, text, special) = match input {
        PromptText::Raw(text) => {
            if text.trim().is_empty() {
                return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
            }
            ("prompt", text.to_string(), true)
        }
        PromptText::Chat(messages) => {
            let text =
                s.0.template
                    .render(messages)
                    .map_err(|e| ApiError::invalid(Some("messages"), format!("{e}")))?;
            ("messages", text, s.0.template.add_special_tokens())
        }
    };
    let settings = knobs.resolve(&s.0.cfg.defaults, s.0.spec.family)?;
    let prompt =
        s.0.tokenizer.encode(&text, special).map_err(|e| {
            ApiError::invalid(Some(param), format!("cannot tokenize the prompt: {e}"))
        })?;
    let max = s.0.spec.max_seq_len;
    let gen = settings.decode.gen_length;
    if prompt.len() + gen > max {
        return Err(ApiError::invalid(
            Some(param),
            format!(
                "the prompt has {} tokens and the answer gen_length = {gen}: {} tokens exceed the model's maximum sequence length {max}",
                prompt.len(),
                prompt.len() + gen
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

fn submit(s: &AppState, p: Prepared) -> Result<mpsc::UnboundedReceiver<RowEvent>, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        prompt: p.prompt,
        settings: p.job_settings,
        stream: p.stream,
        provisional: p.provisional,
        events: tx,
    };
    match s.0.tx.try_send(job) {
        Ok(()) => Ok(rx),
        Err(mpsc::error::TrySendError::Full(_)) => {
            Err(ApiError::overloaded(s.0.cfg.queue_capacity))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::unavailable()),
    }
}

/// Waits for the final event of a non-streaming request.
async fn wait_done(
    mut rx: mpsc::UnboundedReceiver<RowEvent>,
) -> Result<(String, usize, &'static str), ApiError> {
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
fn sse(
    s: &AppState,
    kind: Kind,
    rx: mpsc::UnboundedReceiver<RowEvent>,
    prompt_tokens: usize,
) -> Response {
    let id = request_id(if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
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
    let body = UnboundedReceiverStream::new(rx).map(move |ev| match ev {
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
    });
    let stream = tokio_stream::iter(head.into_iter().map(to_event))
        .chain(body)
        .chain(tokio_stream::once(Event::default().data("[DONE]")))
        .map(Ok::<Event, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn completions(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let body = read_body(&s, req).await?;
    let r: CompletionRequest = api::parse_body(&body)?;
    api::check_model(r.model.as_deref(), &s.0.cfg.model_id)?;
    api::check_n(r.n)?;
    let text = match &r.prompt {
        PromptInput::One(t) => t.clone(),
        PromptInput::Many(v) if v.len() == 1 => v[0].clone(),
        PromptInput::Many(v) => {
            return Err(ApiError::invalid(
                Some("prompt"),
                format!("prompt holds {} strings: send one prompt per request (the server batches concurrent requests)", v.len()),
            ))
        }
    };
    let p = prepare(
        &s,
        PromptText::Raw(&text),
        &r.knobs,
        r.stream,
        r.provisional,
    )?;
    let prompt_tokens = p.prompt.len();
    let rx = submit(&s, p)?;
    if r.stream {
        return Ok(sse(&s, Kind::Completion, rx, prompt_tokens));
    }
    let (text, completion_tokens, finish_reason) = wait_done(rx).await?;
    let resp = api::Response {
        id: request_id("cmpl"),
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

async fn chat_completions(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let body = read_body(&s, req).await?;
    let r: ChatRequest = api::parse_body(&body)?;
    api::check_model(r.model.as_deref(), &s.0.cfg.model_id)?;
    api::check_n(r.n)?;
    let messages = api::chat_messages(&r.messages)?;
    let p = prepare(
        &s,
        PromptText::Chat(&messages),
        &r.knobs,
        r.stream,
        r.provisional,
    )?;
    let prompt_tokens = p.prompt.len();
    let rx = submit(&s, p)?;
    if r.stream {
        return Ok(sse(&s, Kind::Chat, rx, prompt_tokens));
    }
    let (text, completion_tokens, finish_reason) = wait_done(rx).await?;
    let resp = api::Response {
        id: request_id("chatcmpl"),
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

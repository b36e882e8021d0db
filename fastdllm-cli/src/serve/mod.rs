//! `fastdllm serve`: an OpenAI-compatible HTTP server (axum + tokio) in front of one engine
//! worker.
//!
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (JSON or, with `"stream": true`,
//! server-sent events ending with `data: [DONE]`), `GET /v1/models`, `GET /health`,
//! `GET /metrics` ([`metrics`]). Requests are parsed and validated on the async side
//! (OpenAI-style 4xx errors, [`errors`]), tokenized, and every choice (each prompt × `n`) is
//! queued as one row on a bounded channel (full → 429); the worker thread ([`scheduler`])
//! batches compatible rows and streams each row's committed blocks back through the row's own
//! channel. A client that goes away closes its channels, which the worker notices after the next
//! step. Shutdown is graceful: in-flight and queued requests finish.
//!
//! Reference: the OpenAI completions / chat completions API. Deviations: see [`api`] (supported
//! fields, single-turn chats) and [`scheduler`] (batch granularity).

pub mod answer;
pub mod api;
pub mod errors;
pub mod metrics;
pub mod scheduler;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fastdllm_core::{ModelSpec, Rng, TokenId};
use fastdllm_models::{ChatTemplate, LoadedModel, Tokenizer};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{StreamExt, StreamMap};

use answer::AnswerLimits;
use api::{
    ChatChoice, ChatMessage, ChatRequest, Chunk, ChunkChoice, CompletionChoice, CompletionRequest,
    Defaults, PromptInput, Route, Usage,
};
use errors::ApiError;
use metrics::Metrics;
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
    metrics: Arc<Metrics>,
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
    let metrics = Arc::new(Metrics::new().context("cannot register the metrics")?);
    let inner = Inner {
        tx,
        tokenizer: loaded.tokenizer.clone(),
        template: loaded.info.chat_template,
        spec: loaded.model.spec().clone(),
        stats: stats.clone(),
        metrics: metrics.clone(),
        started: now(),
        cfg: cfg.clone(),
    };
    let max_batch = cfg.max_batch;
    let handle = std::thread::Builder::new()
        .name("fastdllm-engine".into())
        .spawn(move || scheduler::run_worker(loaded, rx, max_batch, stats, metrics))
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
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Counts every answered request by route and status, and times it to its response head.
async fn track(State(s): State<AppState>, req: Request, next: axum::middleware::Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    let m = &s.0.metrics;
    m.http_requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[route.as_str()])
        .observe(start.elapsed().as_secs_f64());
    resp
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    let tx = &s.0.tx;
    let queued = tx.max_capacity() - tx.capacity()
        + s.0.stats.pending.load(std::sync::atomic::Ordering::Relaxed);
    s.0.metrics.queue_depth.set(queued as i64);
    (
        [(header::CONTENT_TYPE, Metrics::content_type())],
        s.0.metrics.render(),
    )
        .into_response()
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
    ApiError::invalid(None, "unknown route; see POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics")
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

/// Tokenizes and checks one prompt (`param` names it in errors: `prompt`, `prompt[1]`,
/// `messages`) for a canvas of `gen_length` answer positions.
fn tokenize(
    s: &AppState,
    prompt: &PromptInput,
    templated: bool,
    param: &str,
    gen: usize,
) -> Result<Vec<TokenId>, ApiError> {
    let field = if templated { "messages" } else { "prompt" };
    let bad = |m: String| ApiError::invalid(Some(field), m);
    let ids = match prompt {
        PromptInput::Text(text) => {
            if text.trim().is_empty() {
                return Err(bad(format!("{param}: the prompt is empty")));
            }
            let (text, special) = if templated {
                (s.0.template.apply(text), s.0.template.add_special_tokens())
            } else {
                (text.to_string(), true)
            };
            s.0.tokenizer
                .encode(&text, special)
                .map_err(|e| bad(format!("{param}: cannot tokenize the prompt: {e}")))?
        }
        PromptInput::Ids(ids) => ids.clone(),
    };
    let max = s.0.spec.max_seq_len;
    if ids.len() + gen > max {
        return Err(bad(format!(
            "{param}: the prompt has {} tokens and the answer canvas gen_length = {gen}: {} tokens exceed the model's maximum sequence length {max}",
            ids.len(),
            ids.len() + gen
        ))
        .with_code("context_length_exceeded"));
    }
    let mut decode = s.0.cfg.defaults.settings.decode.clone();
    decode.gen_length = gen;
    decode
        .validate_prompt(&s.0.spec, &ids)
        .map_err(|e| bad(format!("{param}: {e}")))?;
    Ok(ids)
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

/// The seed of choice `index`: `Rng::row_seed(seed, index)` (choice 0 keeps `seed`), or a fresh
/// seed when the request has none.
pub fn choice_seed(seed: Option<u64>, index: usize) -> u64 {
    match seed {
        Some(seed) => Rng::row_seed(seed, index),
        None => fresh_seed(),
    }
}

/// One queued choice's receiver, in `index` order.
type Choices = Vec<mpsc::UnboundedReceiver<RowEvent>>;

/// Queues `prompts.len() * n` rows (choice `index = prompt_i * n + j`), all or none (429 when
/// the queue cannot take them all).
#[allow(clippy::too_many_arguments)]
fn submit(
    s: &AppState,
    prompts: &[Vec<TokenId>],
    n: usize,
    settings: &crate::engine::GenerationSettings,
    limits: &AnswerLimits,
    seed: Option<u64>,
    stream: bool,
    provisional: bool,
) -> Result<Choices, ApiError> {
    let total = prompts.len() * n;
    let capacity = s.0.cfg.queue_capacity;
    if total > capacity {
        let param = if n > 1 { "n" } else { "prompt" };
        return Err(ApiError::invalid(
            Some(param),
            format!("{} prompts x n = {n} is {total} choices, more than the server's queue holds ({capacity})", prompts.len()),
        ));
    }
    let permits = match s.0.tx.try_reserve_many(total) {
        Ok(p) => p,
        Err(mpsc::error::TrySendError::Full(_)) => return Err(ApiError::overloaded(capacity)),
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(ApiError::unavailable()),
    };
    let queued_at = Instant::now();
    let mut rxs = Vec::with_capacity(total);
    for (permit, index) in permits.zip(0..total) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut row = settings.clone();
        row.seed = choice_seed(seed, index);
        permit.send(Job {
            prompt: prompts[index / n].clone(),
            settings: row,
            stream,
            provisional,
            limits: limits.clone(),
            queued_at,
            events: tx,
        });
        rxs.push(rx);
    }
    Ok(rxs)
}

/// The end of one choice.
struct Finished {
    text: String,
    completion_tokens: usize,
    finish_reason: &'static str,
}

/// Waits for the final event of every choice of a non-streaming request.
async fn wait_done(rxs: Choices) -> Result<Vec<Finished>, ApiError> {
    let mut out = Vec::with_capacity(rxs.len());
    'choices: for mut rx in rxs {
        while let Some(ev) = rx.recv().await {
            match ev {
                RowEvent::Done {
                    text,
                    completion_tokens,
                    finish_reason,
                } => {
                    out.push(Finished {
                        text,
                        completion_tokens,
                        finish_reason,
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
        prov: Option<api::Provisional>,
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
/// choices; when the client goes away it drops their channels, which cancels their rows.
fn sse(
    s: &AppState,
    kind: Kind,
    rxs: Choices,
    prompt_tokens: usize,
    include_usage: bool,
) -> Response {
    let c = Chunker {
        kind,
        id: request_id(if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        }),
        created: now(),
        model: s.0.cfg.model_id.clone(),
        include_usage,
    };
    let (out, out_rx) = mpsc::unbounded_channel::<Event>();
    let n = rxs.len();
    tokio::spawn(async move {
        let mut map = StreamMap::new();
        for (i, rx) in rxs.into_iter().enumerate() {
            map.insert(i, UnboundedReceiverStream::new(rx));
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
                RowEvent::Done {
                    completion_tokens: k,
                    finish_reason,
                    ..
                } => {
                    completion_tokens += k;
                    event(&c.chunk(i, None, false, Some(finish_reason), None))
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

async fn completions(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let body = read_body(&s, req).await?;
    let r: CompletionRequest = api::parse_request(&body, Route::Completions)?;
    api::check_model(r.model.as_deref(), &s.0.cfg.model_id)?;
    let n = api::check_n(r.n)?;
    let include_usage = api::check_stream_options(r.stream, r.stream_options)?;
    let inputs = api::parse_prompts(&r.prompt)?;
    let (settings, limits) = r.knobs.resolve_all(&s.0.cfg.defaults, s.0.spec.family)?;
    let gen = settings.decode.gen_length;
    let prompts = inputs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let param = if inputs.len() == 1 {
                "prompt".to_string()
            } else {
                format!("prompt[{i}]")
            };
            tokenize(&s, p, false, &param, gen)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let prompt_tokens = prompts.iter().map(Vec::len).sum();
    let rxs = submit(
        &s,
        &prompts,
        n,
        &settings,
        &limits,
        r.knobs.seed,
        r.stream,
        r.provisional,
    )?;
    if r.stream {
        return Ok(sse(&s, Kind::Completion, rxs, prompt_tokens, include_usage));
    }
    let done = wait_done(rxs).await?;
    let completion_tokens = done.iter().map(|d| d.completion_tokens).sum();
    let resp = api::Response {
        id: request_id("cmpl"),
        object: "text_completion",
        created: now(),
        model: s.0.cfg.model_id.clone(),
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
        usage: Usage::new(prompt_tokens, completion_tokens),
    };
    Ok(Json(resp).into_response())
}

async fn chat_completions(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let body = read_body(&s, req).await?;
    let r: ChatRequest = api::parse_request(&body, Route::Chat)?;
    api::check_model(r.model.as_deref(), &s.0.cfg.model_id)?;
    let n = api::check_n(r.n)?;
    let include_usage = api::check_stream_options(r.stream, r.stream_options)?;
    let text =
        match r.messages.as_slice() {
            [m] if m.role == "user" => m.content.clone(),
            _ => return Err(ApiError::invalid(
                Some("messages"),
                "messages: only single-turn chats are supported: send exactly one message with role 'user'",
            )),
        };
    let (settings, limits) = r.knobs.resolve_all(&s.0.cfg.defaults, s.0.spec.family)?;
    let prompt = tokenize(
        &s,
        &PromptInput::Text(text),
        true,
        "messages",
        settings.decode.gen_length,
    )?;
    let prompt_tokens = prompt.len();
    let rxs = submit(
        &s,
        &[prompt],
        n,
        &settings,
        &limits,
        r.knobs.seed,
        r.stream,
        r.provisional,
    )?;
    if r.stream {
        return Ok(sse(&s, Kind::Chat, rxs, prompt_tokens, include_usage));
    }
    let done = wait_done(rxs).await?;
    let completion_tokens = done.iter().map(|d| d.completion_tokens).sum();
    let resp = api::Response {
        id: request_id("chatcmpl"),
        object: "chat.completion",
        created: now(),
        model: s.0.cfg.model_id.clone(),
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
        usage: Usage::new(prompt_tokens, completion_tokens),
    };
    Ok(Json(resp).into_response())
}

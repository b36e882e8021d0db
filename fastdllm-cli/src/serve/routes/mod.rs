//! The handlers, one file per route, and the answers to unknown routes and methods:
//!
//! | route | file | OpenAI reference |
//! |---|---|---|
//! | `POST /v1/completions` | [`completions`] | Completions (`text_completion`) |
//! | `POST /v1/chat/completions` | [`chat`] | Chat Completions (`chat.completion`, `chat.completion.chunk`) |
//! | `GET /v1/models`, `GET /v1/models/{id}` | [`models`] | Models (`list` of `model`; `model`) |
//! | `GET /health`, `GET /ready`, `GET /metrics` | [`health`] | none (llama.cpp's and vLLM's `/health`; Kubernetes' readiness probe; Prometheus) |
//! | anything else | [`not_found`] (404), [`method_not_allowed`] (405) | OpenAI's error object |
//!
//! Both generation handlers read the same way: validate the body in one call
//! ([`super::validate::Validator`]), queue the choices through the engine seam
//! ([`super::worker::EngineHandle::submit`]), answer JSON (assembled in the handler's file)
//! or server-sent events ([`super::sse`]).

pub mod chat;
pub mod completions;
pub mod health;
pub mod models;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::errors::ApiError;
use super::openai::Route;
use super::sse::{sse, Chunker};
use super::validate::Validated;
use super::worker::{wait_done, Finished};
use super::AppState;

/// Queues the choices of a validated request of `route` and answers them: server-sent chunks
/// as they come ([`sse`]) or, once every choice is done, the JSON object `object` builds from
/// (id, model, prompt tokens, the finished choices), the route's own response.
pub async fn answer<T: Serialize>(
    s: &AppState,
    route: Route,
    r: Validated,
    object: fn(String, String, usize, Vec<Finished>) -> T,
) -> Result<Response, ApiError> {
    let id = request_id(route);
    let choices = s.0.engine.submit(&id, &r.generation)?;
    let prompt_tokens = r.prompt_tokens();
    let model = s.0.cfg.model_id.clone();
    if r.generation.stream {
        let c = Chunker {
            route,
            id,
            created: now(),
            model,
            include_usage: r.include_usage,
        };
        return Ok(sse(c, choices, prompt_tokens));
    }
    let done = wait_done(choices).await?;
    Ok(Json(object(id, model, prompt_tokens, done)).into_response())
}

/// Any other path: 404 `not_found`, listing the routes.
pub async fn not_found() -> ApiError {
    ApiError::invalid(None, "unknown route; see POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}, GET /health, GET /ready, GET /metrics")
        .with_status(StatusCode::NOT_FOUND)
        .with_code("not_found")
}

/// A known path with another method: 405 `method_not_allowed`.
pub async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::invalid(
        None,
        format!(
            "method {} is not allowed on {}: the completion routes take POST, /v1/models, /health, /ready and /metrics GET",
            req.method(),
            req.uri().path()
        ),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
    .with_code("method_not_allowed")
}

/// Unix seconds now (the `created` of responses and chunks).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh response id of `route`: `cmpl-…` or `chatcmpl-…` (a process-wide counter and the
/// clock's nanoseconds).
pub fn request_id(route: Route) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = match route {
        Route::Completions => "cmpl",
        Route::Chat => "chatcmpl",
    };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}{:08x}", n, nanos)
}

//! `GET /health` and `GET /metrics`: whether the engine runs, the queue and the counters
//! (JSON), and the Prometheus metrics; both read the one [`Telemetry`].
//!
//! `/health` answers `{"status": "ok", "model", "queue": {"depth", "capacity"}, "stats"}`, or,
//! once the engine stopped, 503 `{"status": "error", "reason", "model", "stats"}`; it is open
//! without the API key. Reference: none in OpenAI; llama.cpp's and vLLM's `/health` (open, 503
//! when unusable), the Prometheus text exposition format for `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::serve::metrics::Telemetry;
use crate::serve::AppState;

/// `GET /health`.
pub async fn health(State(s): State<AppState>) -> Response {
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

/// `GET /metrics`: the Prometheus text, the queue depth read at scrape time.
pub async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, Telemetry::content_type())],
        s.0.telemetry.render(s.0.engine.queue_depth()),
    )
        .into_response()
}

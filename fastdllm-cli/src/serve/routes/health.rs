//! `GET /health`, `GET /ready` and `GET /metrics`: whether the engine runs (liveness), whether
//! the server takes new requests (readiness), the queue and the counters (JSON), and the
//! Prometheus metrics; `/health` and `/metrics` read the one [`Telemetry`].
//!
//! `/health` answers `{"status": "ok", "model", "queue": {"depth", "capacity"}, "stats"}`, or,
//! once the engine stopped, 503 `{"status": "error", "reason", "model", "stats"}`. It stays 200
//! while the server drains: a liveness probe must not restart a replica that is finishing its
//! requests. `/ready` answers 200 `{"status": "ready"}`; 503 `{"status": "draining"}` from the
//! shutdown signal on (see [`crate::serve::serve`] for the sequence), and 503
//! `{"status": "error", "reason"}` once the engine stopped. Both are open without the API key
//! (probes send none). Reference: none in OpenAI; llama.cpp's and vLLM's `/health` (open, 503
//! when unusable), Kubernetes' liveness and readiness probes and kube-apiserver's `/livez` /
//! `/readyz` (readiness fails first during a shutdown), the Prometheus text exposition format
//! for `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};

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

/// Whether the server still takes new requests: set once, when a shutdown begins.
#[derive(Debug, Default)]
pub struct Readiness {
    shutting_down: AtomicBool,
}

impl Readiness {
    /// From now on `GET /ready` answers 503 `draining`.
    pub fn shutdown_begins(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Whether [`Readiness::shutdown_begins`] was called.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// `GET /ready`: 200 `ready`, or 503 `draining` / `error` (module docs).
pub async fn ready(State(s): State<AppState>) -> Response {
    let (status, body) = if let Some(reason) = s.0.engine.stopped() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "error", "reason": reason }),
        )
    } else if s.0.readiness.shutting_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "draining" }),
        )
    } else {
        (StatusCode::OK, json!({ "status": "ready" }))
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: the Prometheus text, the queue depth read at scrape time.
pub async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, Telemetry::content_type())],
        s.0.telemetry.render(s.0.engine.queue_depth()),
    )
        .into_response()
}

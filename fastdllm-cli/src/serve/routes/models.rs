//! `GET /v1/models`: the one served model.
//!
//! Reference: OpenAI's Models API (`{"object": "list", "data": [{"id", "object": "model",
//! "created", "owned_by"}]}`).

use axum::extract::State;
use axum::Json;
use serde_json::json;

use crate::serve::AppState;

/// The handler: a `list` holding the served model (`created`: when the server started).
pub async fn list(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{ "id": s.0.cfg.model_id, "object": "model", "created": s.0.started, "owned_by": "fastdllm" }],
    }))
}

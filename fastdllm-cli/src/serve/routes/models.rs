//! `GET /v1/models` (the one served model) and `GET /v1/models/{id}` (that model's object).
//!
//! Reference: OpenAI's Models API (list: `{"object": "list", "data": [model]}`; retrieve: the
//! `model` object `{"id", "object": "model", "created", "owned_by"}`, an unknown id a 404
//! `model_not_found`).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::serve::errors::ApiError;
use crate::serve::validate::check_model;
use crate::serve::AppState;

/// The served model's object (`created`: when the server started).
fn model_object(s: &AppState) -> Value {
    json!({ "id": s.0.cfg.model_id, "object": "model", "created": s.0.started, "owned_by": "fastdllm" })
}

/// The list handler: a `list` holding the served model.
pub async fn list(State(s): State<AppState>) -> Json<Value> {
    Json(json!({ "object": "list", "data": [model_object(&s)] }))
}

/// The retrieve handler: the served model's object when `id` is its id (which may hold `/`, as
/// Hugging Face ids do), else a 404 `model_not_found` naming `id`.
pub async fn retrieve(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_model(Some(&id), &s.0.cfg.model_id)?;
    Ok(Json(model_object(&s)))
}

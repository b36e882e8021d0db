//! OpenAI-style error responses: `{"error": {"message", "type", "param", "code"}}` with the HTTP
//! status that goes with them.
//!
//! Reference: the OpenAI API error object (`invalid_request_error`, `model_not_found`, ...).
//! Deviation: overload is a `429` with type `server_overloaded` (the queue is full) and a
//! `Retry-After` of [`RETRY_AFTER_SECS`], shutdown a `503`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The `Retry-After` of a 429, in seconds: a queue place frees as soon as any queued or running
/// choice finishes or its client hangs up, so a short wait is the honest hint (the OpenAI SDKs
/// wait this long before their retry, then back off on their own).
pub const RETRY_AFTER_SECS: u64 = 1;

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable explanation (names the parameter and its allowed range).
    pub message: String,
    /// `invalid_request_error`, `server_overloaded`, `server_error`.
    pub kind: &'static str,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// Machine-readable code (`model_not_found`, `context_length_exceeded`, ...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error` about `param`.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    /// Sets the status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Sets the code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// A 429: the request queue is full.
    pub fn overloaded(capacity: usize) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "the server is overloaded: {capacity} requests are already queued; retry later"
            ),
            kind: "server_overloaded",
            param: None,
            code: Some("queue_full"),
        }
    }

    /// A 503: the engine is gone (shutting down).
    pub fn unavailable() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the engine is shutting down".into(),
            kind: "server_error",
            param: None,
            code: Some("unavailable"),
        }
    }

    /// A 503: the engine stopped abnormally (`reason`); the process is exiting.
    pub fn engine_stopped(reason: &str) -> Self {
        ApiError {
            message: format!("the engine stopped ({reason}); the server is shutting down"),
            ..Self::unavailable()
        }
    }

    /// A 500 for an engine failure.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The JSON error object.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.kind, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        r
    }
}

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

/// Longest piece of a request an error message quotes (a field name, a value), in characters;
/// longer ones are cut with [`clip`]. An unknown field name of 500 KB is quoted by its first
/// 100 characters and its length.
pub const MAX_QUOTE_CHARS: usize = 100;

/// Longest error message sent, in bytes: the last guard, after [`clip`] at each quote, so that no
/// error body grows with the request (serde's own messages quote whole strings).
pub const MAX_MESSAGE_BYTES: usize = 1 << 10;

/// `s` when at most [`MAX_QUOTE_CHARS`] characters, else its first ones followed by
/// `… (N bytes)`.
pub fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(MAX_QUOTE_CHARS) {
        None => s.into(),
        Some((end, _)) => format!("{}… ({} bytes)", &s[..end], s.len()).into(),
    }
}

/// `msg` (a parser's message) with the text between its first and last double quote (the
/// value it quotes) cut by [`clip`]: serde's `invalid type: string "…", expected u64`.
pub fn clip_quoted(msg: &str) -> std::borrow::Cow<'_, str> {
    match (msg.find('"'), msg.rfind('"')) {
        (Some(a), Some(b)) if b > a + 1 + MAX_QUOTE_CHARS => {
            format!("{}{}{}", &msg[..=a], clip(&msg[a + 1..b]), &msg[b..]).into()
        }
        _ => msg.into(),
    }
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` when cut.
fn cut(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end]).into()
}

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

    /// The JSON error object; the message is cut at [`MAX_MESSAGE_BYTES`] and the param at
    /// [`MAX_QUOTE_CHARS`] ([`clip`]), whatever the request sent.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": cut(&self.message, MAX_MESSAGE_BYTES),
                "type": self.kind,
                "param": self.param.as_deref().map(clip),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_clipped_and_messages_capped() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(300);
        let c = clip(&long);
        assert!(c.starts_with(&"é".repeat(MAX_QUOTE_CHARS)), "{c}");
        assert!(c.ends_with("… (600 bytes)"), "{c}");
        let serde = format!(
            "invalid type: string \"{}\", expected u64",
            "k".repeat(5000)
        );
        let q = clip_quoted(&serde);
        assert!(q.ends_with("… (5000 bytes)\", expected u64"), "{q}");
        assert!(q.len() < 200, "{q}");
        let e = ApiError::invalid(Some(&"p".repeat(500)), "m".repeat(5000));
        let b = e.body();
        assert!(b["error"]["message"].as_str().unwrap().len() <= MAX_MESSAGE_BYTES + 3);
        assert!(b["error"]["param"].as_str().unwrap().len() < 130);
    }
}

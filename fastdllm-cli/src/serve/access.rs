//! The router's layers, in the order a request meets them: [`track`] counts and times every
//! request; [`check`] refuses, cheapest first, request-line and header limits (414, 431), the API
//! key (401), the content type of POST bodies (415), then reads a POST body whole with its size
//! limit (413) and its deadline (408), so that the handlers receive bytes; CORS when configured
//! ([`cors_layer`]).
//!
//! Every refusal is an OpenAI error object ([`ApiError`]) and closes the connection where the
//! client may still be sending (`connection: close`). References: OpenAI's `invalid_api_key`
//! (401, `Authorization: Bearer`), llama.cpp server's and vLLM's `--api-key` (which leave
//! `/health` open, as here), FastAPI's refusal to parse non-JSON content types as JSON (a web
//! page may POST `text/plain` cross-origin without a CORS preflight; `application/json` needs
//! one, which [`cors_layer`] only grants to the configured origins).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use super::errors::ApiError;
use super::metrics::Telemetry;
use super::AppState;

/// Longest request target (path and query) answered; longer ones are 414. hyper's own hard limit
/// (64 KiB, answered without a body) sits above it.
pub const MAX_URI_BYTES: usize = 8 << 10;
/// Most header fields answered; more are 431. hyper's own hard limit ([`HYPER_MAX_HEADERS`],
/// answered without a body) sits above it.
pub const MAX_HEADERS: usize = 64;
/// Largest header section (names, values and their separators) answered; larger is 431.
pub const MAX_HEADER_BYTES: usize = 32 << 10;
/// hyper's parser limit on header fields (above [`MAX_HEADERS`] so that [`check`] answers
/// with an error object first).
pub const HYPER_MAX_HEADERS: usize = 256;
/// hyper's read buffer: the largest request head it parses at all (above [`MAX_HEADER_BYTES`]).
pub const HYPER_MAX_BUF: usize = 256 << 10;
/// Bodies at least this large count toward a "burst" after which free heap memory is returned
/// to the kernel ([`LargeBodies`]).
pub const LARGE_BODY_BYTES: usize = 64 << 10;

/// The outermost layer of every route: counts each answered request by route and status in
/// [`Telemetry`] (refusals by [`check`] included), and times it to its response head.
pub async fn track(State(t): State<Arc<Telemetry>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    t.http_answered(&route, resp.status().as_str(), start.elapsed());
    resp
}

/// The access layer of every route: limits, API key, content type; then a POST body is read
/// whole (`read_body`) and handed on as bytes, a large one counting toward a burst
/// ([`LargeBodies`]) until the handler has answered (and freed its copies of it).
pub async fn check(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(e) = refuse(&s, &req) {
        let unauthorized = e.status == StatusCode::UNAUTHORIZED;
        let mut r = close(e.into_response());
        if unauthorized {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        return r;
    }
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(&s, &parts.headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let large = s.0.large.track(body.len());
    let r = next.run(Request::from_parts(parts, Body::from(body))).await;
    drop(large);
    r
}

/// Why `req` is refused, if it is.
fn refuse(s: &AppState, req: &Request) -> Option<ApiError> {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(
            ApiError::invalid(
                None,
                format!("the request target is {target} bytes; the limit is {MAX_URI_BYTES}"),
            )
            .with_status(StatusCode::URI_TOO_LONG)
            .with_code("uri_too_long"),
        );
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Some(
            ApiError::invalid(
                None,
                format!(
                    "the request has {} header fields in {bytes} bytes; the limits are {MAX_HEADERS} fields and {MAX_HEADER_BYTES} bytes",
                    headers.len()
                ),
            )
            .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            .with_code("headers_too_large"),
        );
    }
    if let Some(key) = &s.0.cfg.api_key {
        if !matches!(req.uri().path(), "/health" | "/ready") && !bearer_matches(headers, key) {
            return Some(ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or invalid API key: send 'Authorization: Bearer <key>'".into(),
                kind: "invalid_request_error",
                param: None,
                code: Some("invalid_api_key"),
            });
        }
    }
    if req.method() == Method::POST {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if !ct.as_deref().is_some_and(is_json) {
            let got = ct.map_or_else(|| "none".to_string(), |c| format!("'{c}'"));
            return Some(
                ApiError::invalid(
                    None,
                    format!("the request body must be JSON with 'content-type: application/json'; got content-type {got}"),
                )
                .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
                .with_code("unsupported_media_type"),
            );
        }
    }
    None
}

/// Whether a content type is `application/json` (any parameters, e.g. `charset=utf-8`).
pub fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether `Authorization: Bearer <key>` carries `key` (constant-time comparison of the bytes;
/// only the length can leak).
fn bearer_matches(headers: &axum::http::HeaderMap, key: &str) -> bool {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let v = v.as_bytes();
    let Some(token) = v
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
        .and_then(|_| v.get(7..))
    else {
        return false;
    };
    token.trim_ascii().ct_eq(key.as_bytes()).into()
}

/// Adds `connection: close` (the client may still be sending a body nobody reads).
pub fn close(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Reads the body up to the server's limit: 413 above it, 408 when the whole body has not
/// arrived within the body timeout (a deadline from the end of the head to the body's last
/// byte, so a client trickling one byte at a time cannot hold the request open).
async fn read_body(
    s: &AppState,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<Bytes, Response> {
    let limit = s.0.cfg.body_limit;
    let too_large = || {
        close(
            ApiError::invalid(
                None,
                format!("the request body is larger than the limit of {limit} bytes"),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            .with_code("request_too_large")
            .into_response(),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let deadline = s.0.cfg.body_timeout;
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) if source_is::<http_body_util::LengthLimitError>(&e) => Err(too_large()),
        Err(_) => Err(close(
            ApiError::invalid(
                None,
                format!(
                    "the request body did not arrive within {} ms (the body timeout)",
                    deadline.as_millis()
                ),
            )
            .with_status(StatusCode::REQUEST_TIMEOUT)
            .with_code("request_timeout")
            .into_response(),
        )),
        Ok(Err(e)) => Err(close(
            ApiError::invalid(None, format!("cannot read the request body: {e}")).into_response(),
        )),
    }
}

/// Whether `T` is somewhere in the source chain of `e`.
fn source_is<T: std::error::Error + 'static>(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The CORS layer for `origins` (`*` = any origin); `None` (CORS off: browsers refuse
/// cross-origin reads and JSON posts) when empty. An allowed origin's preflight is granted the
/// request headers it names (`Access-Control-Request-Headers`, mirrored): the official SDKs
/// send their own (`x-stainless-os`, `x-stainless-retry-count`, ...) besides `authorization`
/// and `content-type`, and the origin check is what guards the server (with `--api-key`).
pub fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(AllowHeaders::mirror_request()),
    )
}

/// Counts requests with large bodies in flight; when the last one of a burst finishes, free
/// heap memory goes back to the kernel ([`crate::malloc::release_free_memory`], on a blocking
/// thread). Without it RSS would keep the burst's peak: the binary disables glibc's automatic
/// trimming for the engine's sake ([`crate::malloc::keep_freed_memory`]).
#[derive(Debug, Default)]
pub struct LargeBodies(AtomicUsize);

impl LargeBodies {
    /// A guard for a body of `len` bytes (counts only large bodies).
    pub fn track(self: &Arc<Self>, len: usize) -> Option<LargeBodyGuard> {
        (len >= LARGE_BODY_BYTES).then(|| {
            self.0.fetch_add(1, Ordering::AcqRel);
            LargeBodyGuard(self.clone())
        })
    }
}

/// See [`LargeBodies`].
#[derive(Debug)]
pub struct LargeBodyGuard(Arc<LargeBodies>);

impl Drop for LargeBodyGuard {
    fn drop(&mut self) {
        if self.0 .0.fetch_sub(1, Ordering::AcqRel) == 1 {
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn_blocking(crate::malloc::release_free_memory);
                }
                Err(_) => {
                    crate::malloc::release_free_memory();
                }
            }
        }
    }
}

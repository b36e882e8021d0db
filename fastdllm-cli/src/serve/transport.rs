//! The HTTP/1.1 transport: the accept loop, per-connection limits and the graceful drain.
//!
//! Every time limit is a library option, not a timer of ours: hyper's `header_read_timeout`
//! (a request head must arrive within it; it also runs while a keep-alive connection waits for
//! its next request, so it is the idle timeout too), tower-http's `RequestBodyTimeoutLayer`
//! (see [`super::router`]: the longest pause inside a body), hyper's parser limits (header
//! count, head size). The connection cap is a semaphore in front of `accept`: above it, new
//! connections wait in the kernel's listen backlog. The drain is hyper-util's
//! `GracefulShutdown` (idle connections close, in-flight requests finish) bounded by
//! `drain_timeout`, after which the remaining connections are closed.
//!
//! Reference: axum's `serve` (the accept loop it replaces; it exposes none of these options),
//! hyper-util's graceful-shutdown example.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::access::{HYPER_MAX_BUF, HYPER_MAX_HEADERS};
use super::AppState;

/// Serves `state` on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish for up to the configured `drain_timeout`, and closes what is left.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cfg = state.config().clone();
    let app = super::router(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_headers(HYPER_MAX_HEADERS)
        .max_buf_size(HYPER_MAX_BUF);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(
        cfg.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning
                    // (axum's `serve` does the same).
                    crate::logln!("warning: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        conns.spawn(async move {
            // Errors here are the client's (resets, timeouts, malformed heads hyper answered).
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    drop(app);
    if tokio::time::timeout(cfg.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        // Finished connections stay in the set until joined: count only the open ones.
        while conns.try_join_next().is_some() {}
        crate::logln!(
            "drain deadline of {} s passed: closing {} connections",
            cfg.drain_timeout.as_secs_f64(),
            conns.len()
        );
    }
    conns.shutdown().await;
    Ok(())
}

/// Errors of one incoming connection (not of the listener).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

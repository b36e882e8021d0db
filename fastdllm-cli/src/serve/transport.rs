//! The HTTP/1.1 transport: the accept loop, per-connection limits and the graceful drain.
//!
//! Time limits: hyper's `header_read_timeout` is a deadline for the whole request head (its
//! timer starts when hyper begins reading a head and is not reset by bytes arriving, so a head
//! trickled one byte at a time is cut too; it also runs while a keep-alive connection waits for
//! its next request, so it is the idle timeout as well); the body has its own deadline, from
//! the end of the head to its last byte (`access::check`); a response whose client takes none of
//! its bytes for `stream_timeout` closes its connection ([`WriteDeadline`]), which drops the
//! response and so cancels its rows. Size limits are hyper's parser limits (header count, head
//! size). Connection caps: a semaphore in front of `accept` (above it, new connections wait in
//! the kernel's listen backlog), and a count per client address (above it, a new connection is
//! closed at once, so one address cannot take every place: [`PerAddress`]). The drain is
//! hyper-util's `GracefulShutdown` (idle connections close, in-flight requests finish) bounded
//! by `drain_timeout`, after which the remaining connections are closed.
//!
//! Reference: axum's `serve` (the accept loop it replaces; it exposes none of these options),
//! hyper-util's graceful-shutdown example, nginx's `limit_conn` (connections per address) and
//! `send_timeout` (a client that takes no bytes of its response for that long is closed).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
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
    let per_address = Arc::new(PerAddress::default());
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
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
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
        // Above the per-address cap the connection is closed at once (and its place freed).
        let Some(address) = per_address.enter(peer.ip(), cfg.max_connections_per_ip) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(WriteDeadline::new(stream, cfg.stream_timeout));
        let conn = http.serve_connection(io, TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        conns.spawn(async move {
            // Errors here are the client's (resets, timeouts, malformed heads hyper answered).
            let _ = conn.await;
            drop(address);
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

/// Open connections per client address (IPv4-mapped IPv6 addresses count as their IPv4
/// address).
#[derive(Debug, Default)]
pub struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

impl PerAddress {
    /// A place for one more connection from `ip`, or `None` when it already has `max` open.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressPlace> {
        let ip = ip.to_canonical();
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressPlace(self.clone(), ip))
    }
}

/// One connection's place in [`PerAddress`], given back when dropped.
#[derive(Debug)]
pub struct AddressPlace(Arc<PerAddress>, IpAddr);

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut open = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// A TCP connection whose writes must make progress: once a write (or flush) has waited for the
/// client for `timeout` without taking a byte, it fails with `TimedOut`, and hyper closes the
/// connection (dropping the response, which cancels its rows). Reads are untouched (the head
/// and body deadlines cover them).
#[derive(Debug)]
pub struct WriteDeadline {
    io: TcpStream,
    timeout: Duration,
    /// Armed at the first write that had to wait; disarmed by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteDeadline {
    /// `io` with writes bounded by `timeout` of no progress.
    pub fn new(io: TcpStream, timeout: Duration) -> Self {
        WriteDeadline {
            io,
            timeout,
            stalled: None,
        }
    }

    /// The outcome of a write that returned `r`: progress disarms the deadline; waiting arms it,
    /// and past it the write fails.
    fn progress<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took no bytes of its response for {} ms (the stream timeout)",
                    timeout.as_millis()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.progress(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.progress(cx, r)
    }
}

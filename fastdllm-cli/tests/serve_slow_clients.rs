//! Clients that do not read their answers (docs/RELIABILITY.md, "Streams"): a stream's queue
//! place is held until the client has the answer's last byte, and a client that takes no bytes
//! for the stream timeout is disconnected, which frees its place.
//!
//! The engine loop is the test's own: it sends each row 256 events of 128 KiB (32 MiB, far past
//! what the socket buffers hold: the client's receive buffer is set to 4 KiB) and then drops the
//! row, so the order of events is fixed by the test, not by the tiny model's speed. The test
//! waits on the server's answers; its only timed loop is a retry under a guard of minutes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use fastdllm_cli::serve::worker::{EngineContext, RowEvent, ROW_EVENTS};
use fastdllm_cli::serve::{self, ServeConfig};

/// Guards against a hang only.
const GUARD: Duration = Duration::from_secs(180);

/// Sends every row `ROW_EVENTS` large text events, then drops it.
fn flooding_engine(ctx: EngineContext) {
    let mut jobs = ctx.jobs;
    let big = "x".repeat(128 << 10);
    while let Some(job) = jobs.blocking_recv() {
        for _ in 0..ROW_EVENTS {
            if job.events.try_send(RowEvent::Text(big.clone())).is_err() {
                break;
            }
        }
    }
}

/// Connects with a 4 KiB receive buffer and sends a streaming completion request.
fn stream_request(addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let s = sock.connect(addr).await.unwrap().into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    });
    let body = r#"{"prompt": "4+9=", "stream": true}"#;
    let req = format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// The status of the response on `s` (reads its first bytes only).
fn status(s: &mut TcpStream) -> u16 {
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).expect("a response head");
    String::from_utf8_lossy(&buf[9..12]).parse().unwrap()
}

#[test]
fn a_stream_holds_its_place_until_read_and_a_client_that_does_not_read_is_dropped() {
    let mut cfg = ServeConfig::new("llada-tiny", common::tiny_defaults(32));
    cfg.queue_capacity = 1;
    cfg.stream_timeout = Duration::from_secs(2);
    let srv = serve::spawn_with(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        common::load_tiny(),
        cfg,
        2,
        flooding_engine,
    )
    .unwrap();
    // A: its engine row is over at once (the events are all queued), but its 32 MiB answer is
    // not read: its place stays taken, so B is refused.
    let mut a = stream_request(srv.addr);
    assert_eq!(status(&mut a), 200);
    let mut b = stream_request(srv.addr);
    assert_eq!(
        status(&mut b),
        429,
        "the queue place of a stream whose client has not read its answer must still count"
    );
    // A never reads: after the stream timeout the server closes it, which frees the place.
    let start = Instant::now();
    loop {
        let mut b = stream_request(srv.addr);
        match status(&mut b) {
            200 => break,
            429 => {
                assert!(
                    start.elapsed() < GUARD,
                    "the client that does not read was never dropped"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            other => panic!("status {other}"),
        }
    }
    drop(a);
}

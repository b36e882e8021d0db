//! The HTTP half of the fault corpus (docs/RELIABILITY.md): every bad request in
//! `faults/http/requests.jsonl` and a set of slow sockets, against a real server on loopback (the
//! bundled tiny LLaDA, an API key, short server timeouts so that slow sockets are closed quickly).
//!
//! Each case must end in a clear error: the expected 4xx status with an OpenAI error object
//! (`{"error": {"message", "type", "param", "code"}}`), or, for slow sockets, the server closing
//! the connection by its own timeouts. Counted apart: panics (a panic hook counts them), hangs
//! (no answer within a generous guard of minutes: the test waits on the server's answer or close,
//! never on a sleep), silent wrongs (any other answer). Prints
//! `tried N / clear error N / panic N / hang N / silent wrong N`; afterwards `/health` must answer
//! and a normal request must succeed.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fastdllm_cli::serve::{self, ServeConfig, ServerHandle};
use serde_json::Value;

const KEY: &str = "fault-corpus-key";
/// Guards against a hang only: far above any answer time, even on a loaded machine.
const GUARD: Duration = Duration::from_secs(120);
/// The server's header-read and body timeouts in this test (see [`start`]).
const SERVER_TIMEOUT: Duration = Duration::from_secs(2);

fn start() -> ServerHandle {
    let defaults = common::tiny_defaults(32);
    let mut cfg = ServeConfig::new("llada-tiny", defaults);
    cfg.api_key = Some(KEY.into());
    cfg.body_limit = 64 << 10;
    // Short server-side limits: they only make the server close the slow sockets sooner; the
    // test waits for the close itself. Every other case writes its whole request in one call
    // right after connecting, so it must reach the server within these limits: 2 s is two orders
    // of magnitude above a scheduling delay on a loaded 2-core machine, and costs the
    // three slow-socket cases 2 s each.
    cfg.header_read_timeout = SERVER_TIMEOUT;
    cfg.body_timeout = SERVER_TIMEOUT;
    cfg.max_connections = 16;
    let loaded = common::load_tiny();
    serve::spawn(TcpListener::bind("127.0.0.1:0").unwrap(), loaded, cfg, 2).unwrap()
}

/// What a connection gave back.
#[derive(Debug)]
enum Answer {
    /// A response: status and body.
    Response(u16, String),
    /// The server closed the connection without answering.
    Closed,
    /// Nothing within [`GUARD`].
    Hang,
}

/// Reads until the server closes the connection (or the guard passes).
fn read_all(s: &mut TcpStream) -> Answer {
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Answer::Hang
            }
            // A reset after (or instead of) the answer: the server closed while we were sending.
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    if text.is_empty() {
        return Answer::Closed;
    }
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Answer::Response(status, body)
}

/// Sends `bytes` (ignoring a reset: the server may answer and close before reading it all).
fn send(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(bytes);
    s
}

/// The request of a corpus line.
fn request(c: &Value) -> Vec<u8> {
    if let Some(raw) = c["raw"].as_str() {
        return raw.as_bytes().to_vec();
    }
    let body = c["body"].as_str().unwrap_or("");
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        c["method"].as_str().unwrap(),
        c["path"].as_str().unwrap(),
        body.len()
    );
    if let Some(ct) = c["content_type"].as_str() {
        head += &format!("content-type: {ct}\r\n");
    }
    match c.get("auth") {
        None => head += &format!("authorization: Bearer {KEY}\r\n"),
        Some(Value::String(a)) => head += &format!("authorization: {a}\r\n"),
        Some(_) => {}
    }
    for h in c["headers"].as_array().into_iter().flatten() {
        head += &format!("{}: {}\r\n", h[0].as_str().unwrap(), h[1].as_str().unwrap());
    }
    head += "\r\n";
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Whether `body` is an OpenAI error object, with `code` / `param` when given.
fn error_object(body: &str, code: Option<&str>, param: Option<&str>) -> Result<(), String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body:.200}"))?;
    let e = &v["error"];
    let ok = e["message"].as_str().is_some_and(|m| !m.is_empty())
        && e["type"].is_string()
        && e.get("param").is_some()
        && e.get("code").is_some();
    if !ok {
        return Err(format!("not an OpenAI error object: {body:.200}"));
    }
    if code.is_some_and(|c| e["code"] != c) || param.is_some_and(|p| e["param"] != p) {
        return Err(format!("wrong code or param: {body:.300}"));
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    tried: usize,
    clear: usize,
    panic: usize,
    hang: usize,
    wrong: Vec<String>,
}

impl Tally {
    fn record(&mut self, name: &str, panics: usize, outcome: Result<(), String>, hang: bool) {
        self.tried += 1;
        if panics > 0 {
            self.panic += 1;
            self.wrong.push(format!("{name}: the server panicked"));
        } else if hang {
            self.hang += 1;
            self.wrong
                .push(format!("{name}: no answer within {GUARD:?}"));
        } else {
            match outcome {
                Ok(()) => self.clear += 1,
                Err(e) => self.wrong.push(format!("{name}: {e}")),
            }
        }
    }
}

fn check_response(c: &Value, answer: &Answer) -> Result<(), String> {
    let want = c["expect"].as_u64().unwrap() as u16;
    match answer {
        Answer::Response(status, body) if *status == want => {
            if c.get("raw").is_some() && body.is_empty() {
                // Malformed HTTP framing: hyper answers the status itself, without a body.
                return Ok(());
            }
            error_object(body, c["code"].as_str(), c["param"].as_str())
        }
        Answer::Response(status, body) => Err(format!("status {status}, want {want}: {body:.300}")),
        Answer::Closed => Err(format!("closed without an answer, want {want}")),
        Answer::Hang => Err("hang".into()),
    }
}

#[test]
fn every_http_fault_gets_a_clear_error() {
    let panics = Arc::new(AtomicUsize::new(0));
    let hook = std::panic::take_hook();
    let counter = panics.clone();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        hook(info);
    }));
    let srv = start();
    let addr = srv.addr;
    let corpus = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../faults/http/requests.jsonl"),
    )
    .unwrap();
    let mut tally = Tally::default();
    for line in corpus.lines().filter(|l| !l.trim().is_empty()) {
        let c: Value = serde_json::from_str(line).unwrap();
        let name = c["name"].as_str().unwrap().to_string();
        let before = panics.load(Ordering::SeqCst);
        let mut s = send(addr, &request(&c));
        let answer = read_all(&mut s);
        let hang = matches!(answer, Answer::Hang);
        let outcome = check_response(&c, &answer);
        tally.record(&name, panics.load(Ordering::SeqCst) - before, outcome, hang);
    }

    // Generated: long names and values, which the error must not echo whole (a 60 KB field
    // name came back as a 120 KB error body before): at most a 100-character prefix of each.
    let long = "k".repeat(60_000);
    for (name, body, param) in [
        (
            "unknown 60 KB field name",
            format!(r#"{{"prompt": "x", "{long}": 1}}"#),
            None,
        ),
        (
            "60 KB string for an integer field",
            format!(r#"{{"prompt": "x", "max_tokens": "{long}"}}"#),
            Some("max_tokens"),
        ),
        (
            "unsupported field with a 60 KB value",
            format!(r#"{{"prompt": "x", "tools": ["{long}"]}}"#),
            Some("tools"),
        ),
    ] {
        let c = serde_json::json!({"name": name, "expect": 400, "method": "POST",
            "path": "/v1/completions", "content_type": "application/json", "body": body});
        let before = panics.load(Ordering::SeqCst);
        let mut s = send(addr, &request(&c));
        let answer = read_all(&mut s);
        let outcome = check_response(&c, &answer).and_then(|()| match &answer {
            Answer::Response(_, b) if b.len() > 2_000 => {
                Err(format!("a {} byte error body", b.len()))
            }
            Answer::Response(_, b) if b.contains(&"k".repeat(101)) => {
                Err(format!("quotes more than 100 characters: {b:.300}"))
            }
            Answer::Response(_, b) => {
                let v: Value = serde_json::from_str(b).unwrap();
                match param {
                    Some(p) if v["error"]["param"] != p => Err(format!("param: {b:.300}")),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        });
        tally.record(
            name,
            panics.load(Ordering::SeqCst) - before,
            outcome,
            matches!(answer, Answer::Hang),
        );
    }

    // Slow sockets: the server must close them by its own timeouts.
    let before = panics.load(Ordering::SeqCst);
    let mut s = send(addr, b"");
    let a = read_all(&mut s);
    tally.record(
        "silent socket (nothing sent)",
        panics.load(Ordering::SeqCst) - before,
        closed(&a),
        matches!(a, Answer::Hang),
    );

    let before = panics.load(Ordering::SeqCst);
    let mut s = send(
        addr,
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: applic",
    );
    let a = read_all(&mut s);
    tally.record(
        "half-sent head",
        panics.load(Ordering::SeqCst) - before,
        closed(&a),
        matches!(a, Answer::Hang),
    );

    let before = panics.load(Ordering::SeqCst);
    let head = format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"prompt\": ");
    let mut s = send(addr, head.as_bytes());
    let a = read_all(&mut s);
    let outcome = match &a {
        Answer::Response(408, body) => error_object(body, Some("request_timeout"), None),
        other => Err(format!("want a 408 and a close, got {other:?}")),
    };
    tally.record(
        "half-sent body",
        panics.load(Ordering::SeqCst) - before,
        outcome,
        matches!(a, Answer::Hang),
    );

    // Trickled: one byte every 200 ms never pauses as long as the timeouts, so only a deadline
    // for the whole head (hyper's) and for the whole body (the access layer's) cuts them; the
    // trickle would last 200 s, past the guard.
    let before = panics.load(Ordering::SeqCst);
    let head = format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n");
    let a = trickle(addr, head.as_bytes(), &[b' '; 1000]);
    let outcome = match &a {
        Answer::Response(408, body) => error_object(body, Some("request_timeout"), None),
        other => Err(format!("want a 408 and a close, got {other:?}")),
    };
    tally.record(
        "body trickled one byte every 200 ms",
        panics.load(Ordering::SeqCst) - before,
        outcome,
        matches!(a, Answer::Hang),
    );

    let before = panics.load(Ordering::SeqCst);
    let a = trickle(addr, b"", &[b'x'; 1000]);
    tally.record(
        "head trickled one byte every 200 ms",
        panics.load(Ordering::SeqCst) - before,
        closed(&a),
        matches!(a, Answer::Hang),
    );

    let before = panics.load(Ordering::SeqCst);
    let mut s = send(addr, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n");
    let a = read_all(&mut s);
    let outcome = match &a {
        Answer::Response(200, body) if body.contains("\"ok\"") => Ok(()),
        other => Err(format!(
            "want /health then a close of the idle connection, got {other:?}"
        )),
    };
    tally.record(
        "idle keep-alive connection",
        panics.load(Ordering::SeqCst) - before,
        outcome,
        matches!(a, Answer::Hang),
    );

    // A crowd of half-sent heads, more than the connection cap (16): /health is answered once
    // the server has closed them.
    let before = panics.load(Ordering::SeqCst);
    let crowd: Vec<TcpStream> = (0..48)
        .map(|_| send(addr, b"GET /health HTTP/1.1\r\nhost"))
        .collect();
    let mut s = send(
        addr,
        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    let a = read_all(&mut s);
    let outcome = match &a {
        Answer::Response(200, body) if body.contains("\"ok\"") => Ok(()),
        other => Err(format!("/health behind 48 slow sockets: {other:?}")),
    };
    let mut crowd_open = 0;
    for mut c in crowd {
        if !matches!(read_all(&mut c), Answer::Closed) {
            crowd_open += 1;
        }
    }
    let outcome = outcome.and_then(|()| {
        (crowd_open == 0)
            .then_some(())
            .ok_or(format!("{crowd_open} slow sockets were not closed"))
    });
    tally.record(
        "48 half-sent heads above a cap of 16 connections",
        panics.load(Ordering::SeqCst) - before,
        outcome,
        matches!(a, Answer::Hang),
    );

    println!(
        "tried {} / clear error {} / panic {} / hang {} / silent wrong {}",
        tally.tried,
        tally.clear,
        tally.panic,
        tally.hang,
        tally.wrong.len() - tally.panic - tally.hang
    );
    for w in &tally.wrong {
        println!("  {w}");
    }
    // The server still works.
    let mut s = send(
        addr,
        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(
        matches!(read_all(&mut s), Answer::Response(200, ref b) if b.contains("\"ok\"")),
        "/health after the corpus"
    );
    let body = r#"{"prompt": "4+9="}"#;
    let req = format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    let mut s = send(addr, req.as_bytes());
    match read_all(&mut s) {
        Answer::Response(200, b) => {
            let v: Value = serde_json::from_str(&b).unwrap();
            assert_eq!(v["choices"][0]["text"], "13", "{v}");
        }
        other => panic!("a normal request after the corpus: {other:?}"),
    }
    assert!(tally.wrong.is_empty(), "{:#?}", tally.wrong);
    assert!(tally.tried > 100);
}

/// Sends `head` at once, then `rest` one byte every 200 ms until the server answers or closes
/// (or the bytes run out), and returns what the server said.
fn trickle(addr: SocketAddr, head: &[u8], rest: &[u8]) -> Answer {
    let mut s = send(addr, head);
    let mut w = s.try_clone().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let rest = rest.to_vec();
    let writer = std::thread::spawn(move || {
        for b in rest {
            if stopped.load(Ordering::SeqCst) || w.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let a = read_all(&mut s);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    a
}

/// Connects to `addr` from the local address `from` (a loopback address of its own, e.g.
/// `127.0.0.2`, stands for another client).
fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let s = sock.connect(addr).await.unwrap().into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// 256 connections trickling bodies from one address (127.0.0.1) against a cap of 4 per
/// address: the four first are held (they would be until the body deadline, set far beyond the
/// guard here), every further one from that address is closed at once without an answer, and
/// `/health` from another address (127.0.0.2) is answered before, during and after.
#[test]
fn one_address_cannot_take_every_connection() {
    let mut cfg = ServeConfig::new("llada-tiny", common::tiny_defaults(32));
    cfg.max_connections = 16;
    cfg.max_connections_per_ip = 4;
    cfg.header_read_timeout = Duration::from_secs(600);
    cfg.body_timeout = Duration::from_secs(600);
    let srv = serve::spawn(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        common::load_tiny(),
        cfg,
        2,
    )
    .unwrap();
    let addr = srv.addr;
    let head = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{";
    let health = |from: &str| {
        let mut s = connect_from(from, addr);
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        read_all(&mut s)
    };
    let held: Vec<TcpStream> = (0..4).map(|_| send(addr, head)).collect();
    // Answered only once the server has accepted (and counted) the four before it: the listen
    // backlog is first in, first out.
    let a = health("127.0.0.2");
    assert!(
        matches!(a, Answer::Response(200, ref b) if b.contains("\"ok\"")),
        "/health from another address beside 4 held connections: {a:?}"
    );
    let mut refused = 0;
    for i in 4..256 {
        let mut s = send(addr, head);
        match read_all(&mut s) {
            Answer::Closed => refused += 1,
            other => {
                panic!("connection {i} from the same address: want a close at once, got {other:?}")
            }
        }
    }
    assert_eq!(refused, 252);
    let a = health("127.0.0.2");
    assert!(
        matches!(a, Answer::Response(200, ref b) if b.contains("\"ok\"")),
        "/health from another address after 256 trickling connections from one: {a:?}"
    );
    // The same address is still at its cap.
    assert!(matches!(health("127.0.0.1"), Answer::Closed));
    drop(held);
    println!(
        "one address: 4 connections held, 252 closed at once, /health answered to another address"
    );
}

/// A slow socket's outcome: the server closed it (with or without a 408) within the guard.
fn closed(a: &Answer) -> Result<(), String> {
    match a {
        Answer::Closed => Ok(()),
        Answer::Response(408, body) => error_object(body, None, None),
        other => Err(format!(
            "want the server to close the connection, got {other:?}"
        )),
    }
}

//! `fastdllm serve` access and connection behaviour (docs/RELIABILITY.md): queue places freed by
//! hung-up clients, the API key, CORS, `--host` names, readiness during a shutdown, the drain
//! deadline and the second signal.
//! Every wait is on an event (an answer, a close, a log line, a process exit) under a generous
//! guard; no test depends on a short wall-clock limit.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fastdllm_cli::serve::{self, ServeConfig, ServerHandle};
use serde_json::Value;

const GUARD: Duration = Duration::from_secs(120);

fn start_with(f: impl FnOnce(&mut ServeConfig)) -> ServerHandle {
    let defaults = common::tiny_defaults(32);
    let mut cfg = ServeConfig::new("llada-tiny", defaults);
    f(&mut cfg);
    let loaded = common::load_tiny();
    serve::spawn(TcpListener::bind("127.0.0.1:0").unwrap(), loaded, cfg, 2).unwrap()
}

/// A raw HTTP/1.1 exchange with `connection: close`: (status, head, body).
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    req += body;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn health(addr: SocketAddr) -> Value {
    let (s, _, b) = exchange(addr, "GET", "/health", &[], "");
    assert_eq!(s, 200, "{b}");
    serde_json::from_str(&b).unwrap()
}

/// Opens a request without reading its answer.
fn open(addr: SocketAddr, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let req = format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// Polls `/health` (each poll is an answered request, not a sleep) until `f` holds.
fn until_health(addr: SocketAddr, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let h = health(addr);
        if f(&h) {
            return h;
        }
        assert!(t0.elapsed() < GUARD, "{what}: {h}");
        std::thread::yield_now();
    }
}

#[test]
fn a_hung_up_client_frees_its_queue_place_at_once() {
    let srv = start_with(|c| {
        c.queue_capacity = 2;
        c.max_batch = 1;
    });
    let addr = srv.addr;
    // A long request occupies the engine (one row at a time) ...
    let long =
        r#"{"prompt": "copy 3dbk......=", "gen_length": 480, "block_length": 8, "stream": true}"#;
    let running = open(addr, long);
    let mut reader = BufReader::new(running.try_clone().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 && !line.starts_with("data:") {
        line.clear();
    }
    // ... and holds one of the two places (a place counts until its client has the last byte);
    // one more waits in the queue, which is now full.
    let queued: Vec<TcpStream> = (0..1)
        .map(|_| open(addr, r#"{"prompt": "4+9="}"#))
        .collect();
    until_health(addr, "one queued", |h| h["queue"]["depth"] == 2);
    let (s, _, b) = exchange(
        addr,
        "POST",
        "/v1/completions",
        &[("content-type", "application/json")],
        r#"{"prompt": "4+9="}"#,
    );
    assert_eq!(s, 429, "{b}");
    // The queued client hangs up: its place comes back while the long request still runs
    // (only one row has reached the engine), not when the engine gets to it.
    for q in queued {
        q.shutdown(std::net::Shutdown::Both).unwrap();
    }
    let h = until_health(addr, "place freed", |h| h["queue"]["depth"] == 1);
    assert_eq!(h["stats"]["rows"], 1, "{h}");
    // A new request is queued, not refused.
    let waiting = open(addr, r#"{"prompt": "4+9="}"#);
    let h = until_health(addr, "queued again", |h| h["queue"]["depth"] == 2);
    assert_eq!(h["stats"]["rows"], 1, "{h}");
    drop(waiting);
    drop(reader);
    drop(running);
}

#[test]
fn api_key_guards_everything_but_health() {
    let srv = start_with(|c| c.api_key = Some("s3cret".into()));
    let addr = srv.addr;
    let json = ("content-type", "application/json");
    let body = r#"{"prompt": "4+9="}"#;
    let (s, head, b) = exchange(addr, "POST", "/v1/completions", &[json], body);
    assert_eq!(s, 401, "{b}");
    assert!(
        head.contains("www-authenticate: bearer") || b.contains("invalid_api_key"),
        "{head}"
    );
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let (s, _, _) = exchange(
        addr,
        "GET",
        "/v1/models",
        &[("authorization", "Bearer nope")],
        "",
    );
    assert_eq!(s, 401);
    let (s, _, b) = exchange(
        addr,
        "GET",
        "/v1/models",
        &[("authorization", "Bearer s3cret")],
        "",
    );
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = exchange(
        addr,
        "POST",
        "/v1/completions",
        &[json, ("authorization", "bearer s3cret")],
        body,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(health(addr)["status"], "ok");
}

#[test]
fn cors_is_off_unless_an_origin_is_allowed() {
    let preflight = [
        ("origin", "http://evil.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type"),
    ];
    let srv = start_with(|_| {});
    let (s, head, _) = exchange(srv.addr, "OPTIONS", "/v1/completions", &preflight, "");
    assert!(!head.contains("access-control-allow-origin"), "{s} {head}");
    let (_, head, _) = exchange(
        srv.addr,
        "GET",
        "/v1/models",
        &[("origin", "http://evil.example")],
        "",
    );
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    drop(srv);

    let srv = start_with(|c| c.cors_allow_origins = vec!["http://app.example".into()]);
    let ok = [
        ("origin", "http://app.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type"),
    ];
    let (s, head, _) = exchange(srv.addr, "OPTIONS", "/v1/completions", &ok, "");
    assert!(
        s < 300 && head.contains("access-control-allow-origin: http://app.example"),
        "{s} {head}"
    );
    let (_, head, _) = exchange(srv.addr, "OPTIONS", "/v1/completions", &preflight, "");
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    // The official SDKs' own headers (openai-node sends x-stainless-*): the preflight grants
    // the headers the browser asks for.
    let asked = "authorization, content-type, x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout";
    let sdk = [
        ("origin", "http://app.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", asked),
    ];
    let (s, head, _) = exchange(srv.addr, "OPTIONS", "/v1/chat/completions", &sdk, "");
    let allowed = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("access-control-allow-headers:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    assert!(s < 300, "{s} {head}");
    for h in asked.split(", ") {
        assert!(
            allowed.split(',').any(|a| a.trim() == h),
            "{h} not in {allowed:?}: {head}"
        );
    }
    assert!(
        head.contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
}

/// `fastdllm serve` on the bundled model with `args`; returns the child, its address and the
/// rest of its stderr (line by line).
fn serve_bin(
    args: &[&str],
) -> (
    Child,
    SocketAddr,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args(["serve", "--port", "0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            return (child, addr, lines);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server did not start");
}

fn signal(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits for the process to exit (guard: minutes).
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(t0.elapsed() < GUARD, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn host_names_and_loopback_v6_are_accepted() {
    for host in ["localhost", "::1"] {
        let (mut child, addr, _lines) = serve_bin(&["--host", host]);
        assert!(addr.ip().is_loopback(), "{host}: {addr}");
        assert_eq!(health(addr)["status"], "ok");
        signal(&child);
        assert!(wait_exit(&mut child).success());
    }
}

/// Opens a request whose body never comes: 10 of its 100 bytes. Returns once the server has read
/// its head and is waiting for the body, which the `100 Continue` it sends for
/// `expect: 100-continue` shows (an event: a connection whose bytes the server has not read yet
/// is idle, and a graceful shutdown may close it at once).
fn half_sent_body(addr: SocketAddr) -> TcpStream {
    let head = "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\nexpect: 100-continue\r\n\r\n";
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("HTTP/1.1 100"),
        "want 100 Continue, got {line:?}"
    );
    s.write_all(b"{\"prompt\":").unwrap();
    s
}

#[test]
fn drain_has_a_deadline_and_a_second_signal_exits_at_once() {
    // A half-sent body under a long body timeout: only the drain deadline can end it.
    let (mut child, addr, lines) = serve_bin(&["--body-timeout", "3600", "--drain-timeout", "1"]);
    let _s = half_sent_body(addr);
    assert_eq!(health(addr)["status"], "ok");
    signal(&child);
    assert!(wait_exit(&mut child).success());
    let log: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        log.iter()
            .any(|l| l.contains("drain deadline of 1 s passed: closing")),
        "{log:?}"
    );

    // The same under a long drain deadline: the second signal ends it.
    let (mut child, addr, mut lines) =
        serve_bin(&["--body-timeout", "3600", "--drain-timeout", "3600"]);
    let _s = half_sent_body(addr);
    assert_eq!(health(addr)["status"], "ok");
    signal(&child);
    for line in lines.by_ref() {
        if line.unwrap().contains("shutdown signal") {
            break;
        }
    }
    signal(&child);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(130), "{status}");
}

/// Opens a streamed completion (with `headers`, each ending in CRLF; `connection: close`, so the
/// server ends the connection with the stream) and returns once its first event has come.
fn open_stream(addr: SocketAddr, headers: &str) -> BufReader<TcpStream> {
    let body = r#"{"prompt":"copy 3dbk......=","max_tokens":256,"stream":true}"#;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    let req = format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "the stream ended before its first event"
        );
    }
    r
}

/// The rest of a stream opened by [`open_stream`] ends with `data: [DONE]` (before the
/// chunked encoding's last chunk) and carries no error.
fn assert_ends_with_done(mut r: BufReader<TcpStream>) {
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    let events: Vec<&str> = rest.lines().filter(|l| l.starts_with("data: ")).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{rest}");
    assert!(!rest.contains("\"error\""), "{rest}");
}

/// Waits for a stderr line containing `what`.
fn until_log(lines: &mut impl Iterator<Item = std::io::Result<String>>, what: &str) {
    for line in lines.by_ref() {
        if line.unwrap().contains(what) {
            return;
        }
    }
    panic!("the server exited before logging {what:?}");
}

#[test]
fn ready_turns_503_at_the_signal_while_in_flight_streams_end_with_done() {
    // Under a shutdown delay: `/ready` is 503 from the signal on, `/health` (liveness) stays
    // 200, new requests are still served, the stream in flight ends with [DONE]. Both probes
    // are open without the API key.
    let (mut child, addr, mut lines) = serve_bin(&["--shutdown-delay", "3600", "--api-key", "k"]);
    let (status, _, body) = exchange(addr, "GET", "/ready", &[], "");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    let stream = open_stream(addr, "authorization: Bearer k\r\n");
    signal(&child);
    // The flag is set before this line is written.
    until_log(&mut lines, "not ready: /ready answers 503");
    let (status, _, body) = exchange(addr, "GET", "/ready", &[], "");
    assert_eq!((status, body.as_str()), (503, r#"{"status":"draining"}"#));
    assert_eq!(health(addr)["status"], "ok");
    let (status, _, answer) = exchange(
        addr,
        "POST",
        "/v1/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer k"),
        ],
        r#"{"prompt":"copy ab","max_tokens":8}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_ends_with_done(stream);
    signal(&child);
    assert_eq!(wait_exit(&mut child).code(), Some(130));

    // Without a delay (the default) the server stops accepting at the signal; the stream in
    // flight still ends with [DONE] and the process exits 0.
    let (mut child, addr, mut lines) = serve_bin(&[]);
    let stream = open_stream(addr, "");
    signal(&child);
    until_log(&mut lines, "shutdown signal");
    assert_ends_with_done(stream);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

/// `fastdllm serve 2>&1 | grep -m1 serving`: the reader of stderr goes away after the first
/// line. The server keeps answering, and the log lines it writes afterwards (the shutdown
/// messages) neither kill it (SIGPIPE, which it ignores) nor panic it: it drains and exits 0.
#[test]
fn a_closed_stderr_pipe_never_kills_the_server() {
    let (mut child, addr, lines) = serve_bin(&[]);
    drop(lines);
    let body = r#"{"prompt":"copy ab","max_tokens":8}"#;
    let (status, _, answer) = exchange(
        addr,
        "POST",
        "/v1/completions",
        &[("content-type", "application/json")],
        body,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(health(addr)["status"], "ok");
    signal(&child);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// The official JS SDK (`openai` 6.49, bundled in fixtures/browser/) in a real headless
/// browser: a page served from one origin calls `fastdllm serve` on another (with an API key
/// and `--cors-allow-origin` that origin); the SDK's `x-stainless-*` headers pass the
/// preflight and the page reads the answer. The page posts what it got back to its own origin.
/// Needs Debian's chromium (`apt-get install chromium`): run with `-- --ignored browser`
/// (`.ci/run` does where chromium is installed).
#[test]
#[ignore = "needs /usr/bin/chromium: cargo test -p fastdllm-cli --test serve_access -- --ignored browser"]
fn browser_sdk_calls_the_server_cross_origin() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let sdk = std::fs::read(
        fastdllm_conformance::paths::fixtures_dir().join("browser/openai-6.49.0.browser.min.mjs"),
    )
    .unwrap();
    // The page's origin: a static server on another port.
    let pages = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", pages.local_addr().unwrap());
    let srv = start_with(|c| {
        c.cors_allow_origins = vec![origin.clone()];
        c.api_key = Some("sk-browser".into());
    });
    let page = format!(
        r#"<!doctype html><script type="module">
import {{ OpenAI }} from "/openai.mjs";
const report = (r) => fetch("/result", {{ method: "POST", body: JSON.stringify(r) }});
try {{
  const client = new OpenAI({{ baseURL: "{}/v1", apiKey: "sk-browser", dangerouslyAllowBrowser: true, maxRetries: 0 }});
  const r = await client.chat.completions.create({{ model: "llada-tiny", messages: [{{ role: "user", content: "copy 3dbk......=" }}] }});
  const m = await client.models.retrieve("llada-tiny");
  await report({{ ok: true, content: r.choices[0].message.content, model: m.id }});
}} catch (e) {{
  await report({{ ok: false, error: String(e) }});
}}
</script>"#,
        srv.url()
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for s in pages.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut len = 0;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let (kind, body): (&str, Vec<u8>) = if line.starts_with("GET / ") {
                ("text/html", page.clone().into_bytes())
            } else if line.starts_with("GET /openai.mjs ") {
                ("text/javascript", sdk.clone())
            } else if line.starts_with("POST /result ") {
                let mut b = vec![0; len];
                let _ = r.read_exact(&mut b);
                let _ = tx.send(String::from_utf8_lossy(&b).into_owned());
                ("text/plain", b"ok".to_vec())
            } else {
                ("text/plain", Vec::new())
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    let profile = std::env::temp_dir().join(format!("fastdllm-chromium-{}", std::process::id()));
    let mut browser = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
            &format!("{origin}/"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{chromium}: {e}"));
    let got = rx.recv_timeout(GUARD * 5);
    let _ = browser.kill();
    let _ = browser.wait();
    let _ = std::fs::remove_dir_all(&profile);
    let got: Value = serde_json::from_str(&got.expect("the page reported nothing")).unwrap();
    assert_eq!(got["ok"], true, "{got}");
    assert_eq!(got["content"], "3dbk", "{got}");
    assert_eq!(got["model"], "llada-tiny", "{got}");
}

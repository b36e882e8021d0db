//! `fastdllm serve` end to end: a real server on loopback (port 0) driven by a real
//! HTTP client (ureq, plus raw TCP where the client must misbehave), with the bundled tiny LLaDA.
//! Outputs served under concurrency are compared with solo [`engine::run`] calls.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_cli::serve::openai::Knobs;
use fastdllm_cli::serve::{self, Defaults, ServeConfig, ServerHandle};
use fastdllm_core::{DecodeConfig, GenerateOptions};
use fastdllm_engine::{self as engine, trim_at_eos, Finish, GenerationSettings};
use fastdllm_models::LoadedModel;
use fastdllm_sampler::Unmask;
use serde_json::{json, Value};

fn load() -> LoadedModel {
    common::load_tiny()
}

/// The CLI's defaults: gen_length 32, block_length 8, steps = gen_length, no cache, fixed rule.
fn defaults() -> Defaults {
    common::tiny_defaults(32)
}

fn start_with(f: impl FnOnce(&mut ServeConfig)) -> ServerHandle {
    let mut cfg = ServeConfig::new("llada-tiny", defaults());
    f(&mut cfg);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    serve::spawn(listener, load(), cfg, 2).unwrap()
}

fn start() -> ServerHandle {
    start_with(|_| {})
}

/// Guards against a hang only: generous, so a loaded machine never reaches it (no test may
/// depend on a wall-clock limit, README.md).
const HANG_GUARD: Duration = Duration::from_secs(600);

fn agent() -> ureq::Agent {
    let cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(HANG_GUARD))
        .build();
    ureq::Agent::new_with_config(cfg)
}

/// POST JSON; returns (status, body text).
fn post(url: &str, body: &str) -> (u16, String) {
    let mut r = agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap())
}

fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let (s, t) = post(url, &body.to_string());
    (
        s,
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
    )
}

fn get(url: &str) -> (u16, Value) {
    let mut r = agent().get(url).call().unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap(),
    )
}

/// The `data:` payloads of an SSE body.
fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|s| s.trim().to_string())
        .collect()
}

/// What the engine answers alone for a raw (completions) prompt and a request's knobs.
fn solo(loaded: &LoadedModel, prompt: &str, knobs: &Value) -> String {
    let k: Knobs = serde_json::from_value(knobs.clone()).unwrap();
    let s = serve::validate::resolve_knobs(&k, &defaults(), loaded.model.spec().family).unwrap();
    let ids = loaded.tokenizer.encode(prompt, true).unwrap();
    let gen = engine::run(
        loaded.model.as_ref(),
        &[ids],
        &[s.seed],
        &s,
        &GenerateOptions::default(),
    )
    .unwrap();
    let answer = trim_at_eos(&gen.rows[0].generated, &loaded.model.spec().eos_token_ids);
    loaded.tokenizer.decode(answer).unwrap()
}

fn assert_error(status: u16, body: &Value, want_status: u16, param: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{body}");
    }
}

#[test]
fn completion_and_chat_round_trips() {
    let srv = start();
    let url = srv.url();
    let (s, v) = post_json(
        &format!("{url}/v1/completions"),
        &json!({"model": "llada-tiny", "prompt": "copy 3dbk......="}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "llada-tiny");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(v["created"].as_u64().unwrap() > 0);
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["text"], "3dbk");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 4);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 4
    );

    let (s, v) = post_json(
        &format!("{url}/v1/completions"),
        &json!({"prompt": ["4+9="], "cache": "dual", "threshold": 0.9}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], "13");

    let (s, v) = post_json(
        &format!("{url}/v1/chat/completions"),
        &json!({"model": "llada-tiny", "messages": [{"role": "user", "content": "inc 370230....="}], "max_tokens": 16, "block_length": 8}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "481341");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let (s, v) = get(&format!("{url}/v1/models"));
    assert_eq!(s, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "llada-tiny");
    assert_eq!(v["data"][0]["object"], "model");
    // Retrieve (OpenAI's `client.models.retrieve`): the same object; another id is a 404
    // naming it.
    let (s, m) = get(&format!("{url}/v1/models/llada-tiny"));
    assert_eq!((s, &m), (200, &v["data"][0]), "{m}");
    let (s, e) = get(&format!("{url}/v1/models/org/other-model"));
    assert_eq!(s, 404, "{e}");
    assert_eq!(e["error"]["code"], "model_not_found", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("'org/other-model'")),
        "{e}"
    );
    let (s, v) = get(&format!("{url}/health"));
    assert_eq!(s, 200);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["stats"]["rows"], 3);
    srv.shutdown().unwrap();
}

#[test]
fn streaming_equals_non_streaming() {
    let srv = start();
    let url = srv.url();
    for (path, body, field) in [
        (
            "/v1/completions",
            json!({"prompt": "inc 370230....=", "gen_length": 32, "block_length": 4}),
            "text",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "copy 3dbk......="}], "cache": "prefix", "block_length": 2}),
            "content",
        ),
    ] {
        let (s, plain) = post_json(&format!("{url}{path}"), &body);
        assert_eq!(s, 200, "{plain}");
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        sb["stream_options"] = json!({"include_usage": true});
        let (s, text) = post(&format!("{url}{path}"), &sb.to_string());
        assert_eq!(s, 200, "{text}");
        let data = sse_data(&text);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
        let mut chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        // OpenAI's usage chunk: last, with no choice.
        let usage = chunks.pop().unwrap();
        assert_eq!(usage["choices"], json!([]), "{text}");
        assert_eq!(usage["usage"], plain["usage"]);
        let mut joined = String::new();
        for c in &chunks {
            let ch = &c["choices"][0];
            if field == "text" {
                assert_eq!(c["object"], "text_completion");
                joined.push_str(ch["text"].as_str().unwrap());
            } else {
                assert_eq!(c["object"], "chat.completion.chunk");
                joined.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            }
            assert_eq!(c["id"], chunks[0]["id"]);
        }
        let want = if field == "text" {
            &plain["choices"][0]["text"]
        } else {
            &plain["choices"][0]["message"]["content"]
        };
        assert_eq!(joined, want.as_str().unwrap());
        let last = chunks.last().unwrap();
        assert_eq!(
            last["choices"][0]["finish_reason"],
            plain["choices"][0]["finish_reason"]
        );
        assert!(last["usage"].is_null(), "{text}");
        // Text arrived block by block: more than one content chunk for a multi-block answer.
        let content_chunks = chunks.iter().filter(|c| {
            let ch = &c["choices"][0];
            ch["text"]
                .as_str()
                .or(ch["delta"]["content"].as_str())
                .is_some_and(|t| !t.is_empty())
        });
        assert!(content_chunks.count() >= 2, "{text}");
    }
    // Provisional chunks: marked, with an empty committed text.
    let (s, text) = post(
        &format!("{url}/v1/completions"),
        &json!({"prompt": "inc 370230....=", "stream": true, "provisional": true}).to_string(),
    );
    assert_eq!(s, 200);
    let data = sse_data(&text);
    let prov: Vec<Value> = data
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter(|c| c["choices"][0].get("provisional").is_some())
        .collect();
    assert!(!prov.is_empty(), "{text}");
    for c in &prov {
        assert_eq!(c["choices"][0]["text"], "");
        assert_eq!(
            c["choices"][0]["provisional"]["token_ids"]
                .as_array()
                .unwrap()
                .len(),
            8
        );
    }
}

#[test]
fn concurrent_clients_match_solo_runs() {
    let loaded = load();
    let srv = start();
    let url = srv.url();
    let prompts = [
        "copy 3dbk......=",
        "4+9=",
        "inc 370230....=",
        "copy xq7......=",
        "7+5=",
        "inc 19....=",
        "copy a......=",
        "12+30=",
    ];
    let knob_sets = [
        json!({}),
        json!({"threshold": 0.9}),
        json!({"factor": 1.0}),
        json!({"cache": "dual", "threshold": 0.7}),
        json!({"cache": "prefix"}),
        json!({"gen_length": 16, "block_length": 4}),
        json!({"temperature": 0.7, "seed": 11}),
        json!({"temperature": 0.7, "seed": 12, "threshold": 0.8}),
    ];
    let cases: Vec<(String, Value)> = (0..32)
        .map(|i| {
            let mut k = knob_sets[i % knob_sets.len()].clone();
            k["prompt"] = json!(prompts[(i * 3 + i / 8) % prompts.len()]);
            (prompts[(i * 3 + i / 8) % prompts.len()].to_string(), k)
        })
        .collect();
    let handles: Vec<_> = cases
        .iter()
        .cloned()
        .map(|(_, body)| {
            let u = format!("{url}/v1/completions");
            std::thread::spawn(move || post_json(&u, &body))
        })
        .collect();
    let results: Vec<(u16, Value)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for ((prompt, body), (s, v)) in cases.iter().zip(&results) {
        assert_eq!(*s, 200, "{v}");
        let mut knobs = body.clone();
        knobs.as_object_mut().unwrap().remove("prompt");
        assert_eq!(
            v["choices"][0]["text"],
            solo(&loaded, prompt, &knobs),
            "{body}"
        );
    }
    let (_, h) = get(&format!("{url}/health"));
    assert_eq!(h["stats"]["rows"], 32);
    assert!(
        h["stats"]["max_batch"].as_u64().unwrap() >= 2,
        "no batching happened: {h}"
    );
    assert!(h["stats"]["batches"].as_u64().unwrap() < 32, "{h}");
}

/// A request over raw TCP: returns (status, body).
fn raw(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn bad_requests_are_openai_errors() {
    let srv = start();
    let url = srv.url();
    let c = format!("{url}/v1/completions");
    let (s, t) = post(&c, "{\"prompt\": \"4+9=\"");
    assert_error(s, &serde_json::from_str(&t).unwrap(), 400, None);
    let (s, t) = post(&c, "[1, 2]");
    assert_error(s, &serde_json::from_str(&t).unwrap(), 400, None);
    let (s, v) = post_json(&c, &json!({"prompt": 5}));
    assert_error(s, &v, 400, None);
    let (s, v) = post_json(&c, &json!({"model": "gpt-4", "prompt": "4+9="}));
    assert_error(s, &v, 404, Some("model"));
    assert_eq!(v["error"]["code"], "model_not_found");
    let long = "copy abcd......=".repeat(40);
    let (s, v) = post_json(&c, &json!({"prompt": long}));
    assert_error(s, &v, 400, Some("prompt"));
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "threshold": 1.5}));
    assert_error(s, &v, 400, Some("threshold"));
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "factor": -1}));
    assert_error(s, &v, 400, Some("factor"));
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "temperature": -0.5}));
    assert_error(s, &v, 400, Some("temperature"));
    let (s, v) = post_json(
        &c,
        &json!({"prompt": "4+9=", "gen_length": 20, "block_length": 8}),
    );
    assert_error(s, &v, 400, Some("gen_length"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("multiple of block_length"),
        "{v}"
    );
    // max_tokens takes any count (the canvas rounds up to whole blocks; tests/openai_semantics.rs).
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "max_tokens": 30}));
    assert_eq!((s, v["choices"][0]["text"].as_str()), (200, Some("13")));
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "steps": 3}));
    assert_error(s, &v, 400, Some("steps"));
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "cache": "huge"}));
    assert_error(s, &v, 400, Some("cache"));
    let (s, v) = post_json(&c, &json!({"prompt": [[]]}));
    assert_error(s, &v, 400, Some("prompt"));
    let (s, v) = post_json(&c, &json!({"prompt": []}));
    assert_error(s, &v, 400, Some("prompt"));
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "n": 0}));
    assert_error(s, &v, 400, Some("n"));
    let (s, v) = post_json(
        &format!("{url}/v1/chat/completions"),
        &json!({"messages": []}),
    );
    assert_error(s, &v, 400, Some("messages"));
    // Oversized body: announced (Content-Length) and actually sent.
    let head = format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", 2 << 20);
    let (s, b) = raw(srv.addr, &head, b"");
    assert_error(s, &serde_json::from_str(&b).unwrap(), 413, None);
    // Actually sent: the server answers 413 without reading the rest; the client may see the
    // answer or, when the server closes first, a reset while still writing.
    let big = format!("{{\"prompt\": \"{}\"}}", "x".repeat(1_100_000));
    if let Ok(mut r) = agent()
        .post(&c)
        .header("content-type", "application/json")
        .send(&big)
    {
        assert_eq!(r.status().as_u16(), 413);
        let b: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_error(413, &b, 413, None);
    }
    let (s, v) = get(&format!("{url}/v2/nothing"));
    assert_error(s, &v, 404, None);
    // The server still works.
    let (s, v) = post_json(&c, &json!({"prompt": "4+9="}));
    assert_eq!((s, v["choices"][0]["text"].as_str()), (200, Some("13")));
}

/// Starts a streaming completion over raw TCP (so the test can hang up): the socket and a reader
/// of the response.
fn open_stream(addr: std::net::SocketAddr, body: &Value) -> (TcpStream, BufReader<TcpStream>) {
    let body = body.to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut s = TcpStream::connect(addr).unwrap();
    // Guards against a hang only (a loaded machine never needs minutes to answer a status line).
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let reader = BufReader::new(s.try_clone().unwrap());
    (s, reader)
}

/// Reads lines until the first SSE `data:` line (returned); panics if the stream ends first.
fn first_event(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
        if line.starts_with("data:") {
            return line;
        }
    }
}

/// The HTTP status of a response being read by `reader` (its status line).
fn status_of(reader: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Polls `/health` until `done` holds for its JSON. No time limit of its own: every caller waits
/// for something the server is already doing, and the requests themselves carry the hang guard.
fn wait_health(url: &str, done: impl Fn(&Value) -> bool) -> Value {
    loop {
        let (_, h) = get(&format!("{url}/health"));
        if done(&h) {
            return h;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Synchronised on events, not on time: a long streaming request is running (its first event
/// arrived, and it still has hundreds of steps to go), then short requests are queued one at a
/// time until the queue is full and the next is answered 429 at once. The long request keeps
/// the engine busy however slow the machine is, since every queued request waits behind it; it
/// holds one of the two places itself (a place counts until its client has the last byte).
#[test]
fn overload_is_429() {
    let srv = start_with(|c| {
        c.queue_capacity = 2;
        c.max_batch = 1;
    });
    let url = srv.url();
    let (long, mut long_reader) = open_stream(
        srv.addr,
        &json!({"prompt": "copy 3dbk......=", "gen_length": 480, "block_length": 8, "stream": true, "provisional": true}),
    );
    first_event(&mut long_reader);
    let short =
        json!({"prompt": "copy 3dbk......=", "gen_length": 8, "block_length": 8, "stream": true});
    let mut accepted = Vec::new();
    let rejected = loop {
        // The long request holds one place: one more request fits.
        assert!(
            accepted.len() <= 1,
            "no 429 after {} queued requests",
            accepted.len()
        );
        let (s, mut reader) = open_stream(srv.addr, &short);
        match status_of(&mut reader) {
            200 => accepted.push((s, reader)),
            429 => break reader,
            other => panic!("status {other}"),
        }
    };
    let mut body = String::new();
    let mut rejected = rejected;
    let _ = rejected.read_to_string(&mut body);
    let (head, json_body) = body.split_once("\r\n\r\n").unwrap_or(("", ""));
    let v: Value = serde_json::from_str(json_body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["error"]["type"], "server_overloaded", "{v}");
    // The client is told when to retry (seconds).
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("retry-after: 1")),
        "{head}"
    );
    // Hang up the long one; the queued ones are then answered.
    long.shutdown(std::net::Shutdown::Both).unwrap();
    drop((long, long_reader));
    for (_, mut reader) in accepted {
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        assert!(rest.contains("data: [DONE]"), "{rest}");
        assert!(rest.contains("3dbk"), "{rest}");
    }
    // The long request was still running when the 429 came: it was cancelled, not finished.
    let h = srv_stats(&url);
    assert_eq!(h["stopped_batches"], 1, "{h}");
    let (st, v) = post_json(&format!("{url}/v1/completions"), &json!({"prompt": "4+9="}));
    assert_eq!(
        (st, v["choices"][0]["text"].as_str()),
        (200, Some("13")),
        "{v}"
    );
}

fn srv_stats(url: &str) -> Value {
    get(&format!("{url}/health")).1["stats"].clone()
}

#[test]
fn disconnect_cancels_and_does_not_block_others() {
    let srv = start_with(|c| c.max_batch = 1);
    let url = srv.url();
    // A long streaming request; read its first event, then hang up.
    let (s, mut reader) = open_stream(
        srv.addr,
        &json!({"prompt": "copy 3dbk......=", "gen_length": 480, "block_length": 8, "stream": true, "provisional": true}),
    );
    let line = first_event(&mut reader);
    assert!(line.contains("provisional"), "{line}");
    drop(reader);
    s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(s);
    // Another client is answered (the cancelled batch stops after its next step) and the
    // counters show the long request was cancelled, not run to its end.
    let (st, v) = post_json(&format!("{url}/v1/completions"), &json!({"prompt": "4+9="}));
    assert_eq!((st, v["choices"][0]["text"].as_str()), (200, Some("13")));
    let h = srv_stats(&url);
    assert!(h["cancelled_rows"].as_u64().unwrap() >= 1, "{h}");
    assert_eq!(h["stopped_batches"], 1, "{h}");
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let srv = start();
    let url = srv.url();
    let completions = format!("{url}/v1/completions");
    let client = std::thread::spawn(move || {
        post_json(
            &completions,
            &json!({"prompt": "copy 3dbk......=", "gen_length": 64}),
        )
    });
    // Shut down only once the request is in the engine's hands (an event, not a sleep).
    wait_health(&url, |h| h["stats"]["rows"].as_u64() >= Some(1));
    srv.shutdown().unwrap();
    let (s, v) = client.join().unwrap();
    assert_eq!(s, 200, "{v}");
    assert!(v["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("3dbk"));
}

#[test]
fn sink_sees_committed_blocks_and_text_and_can_cancel() {
    use fastdllm_engine::{Finish, RowEvent, RowSink};
    let loaded = load();
    let mut s = defaults().settings;
    s.limits.finish = Finish::Canvas;
    let ids = loaded.tokenizer.encode("inc 370230....=", true).unwrap();
    let prompts = vec![ids.clone(), loaded.tokenizer.encode("4+9=", true).unwrap()];
    let unmasks = [Unmask::Fixed, Unmask::Threshold { threshold: 0.9 }];
    let mut blocks = Vec::new();
    let mut text = [String::new(), String::new()];
    let mut done = Vec::new();
    let gen = engine::run_rows(
        loaded.model.as_ref(),
        Some(&loaded.tokenizer),
        &prompts,
        &unmasks,
        &[0, 0],
        &s,
        &GenerateOptions::default(),
        &mut |row: usize, ev: RowEvent| match ev {
            RowEvent::BlockCommitted(k) if row == 0 => blocks.push(k),
            RowEvent::Text(t) => text[row].push_str(&t),
            RowEvent::Done(a) => done.push((row, a)),
            _ => {}
        },
    )
    .unwrap();
    // Without RowEvents::text nothing is streamed; the Done events carry the answers.
    assert_eq!(text, [String::new(), String::new()]);
    assert!(
        !blocks.is_empty() && blocks.windows(2).all(|w| w[1] == w[0] + 1),
        "{blocks:?}"
    );
    assert_eq!(done.len(), 2);
    for (row, a) in &done {
        assert_eq!(a.token_ids, gen.answers[*row].token_ids);
        assert_eq!(a.text, gen.answers[*row].text);
    }
    assert_eq!(gen.answers[1].text.as_deref(), Some("13"));
    let solo = engine::run(
        loaded.model.as_ref(),
        &prompts[..1],
        &[0],
        &s,
        &GenerateOptions::default(),
    )
    .unwrap();
    assert_eq!(solo.rows[0], gen.rows[0]);

    /// Cancels every row after its third step.
    struct Impatient(usize);
    impl RowSink for Impatient {
        fn event(&mut self, _: usize, _: RowEvent) {}
        fn step(&mut self) {
            self.0 += 1;
        }
        fn cancelled(&mut self, _: usize) -> bool {
            self.0 >= 3
        }
    }
    let mut sink = Impatient(0);
    let err = engine::run_rows(
        loaded.model.as_ref(),
        None,
        &prompts,
        &unmasks,
        &[0, 0],
        &s,
        &GenerateOptions::default(),
        &mut sink,
    )
    .unwrap_err();
    assert!(matches!(err, engine::Error::Cancelled(0)), "{err:#}");
    // The cancelled rows ended at the step that saw them cancelled.
    assert_eq!(sink.0, 3);
}

#[test]
fn requests_join_a_running_batch_between_blocks() {
    let loaded = load();
    // The long request decodes its whole canvas (it would otherwise leave once "3dbk" ended).
    let srv = start_with(|c| c.defaults.settings.limits.finish = Finish::Canvas);
    let url = srv.url();
    // A long streaming request; once its first block has streamed, the batch is running.
    let (s, mut reader) = open_stream(
        srv.addr,
        &json!({"prompt": "copy 3dbk......=", "gen_length": 480, "block_length": 8, "stream": true, "threshold": 0.9}),
    );
    let mut next_data = || {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
            if line.starts_with("data:") {
                return line.clone();
            }
        }
    };
    // The answer streams as it commits; read until all of it has come.
    let mut text = String::new();
    while !text.contains("3dbk") {
        let data = next_data();
        let v: Value = serde_json::from_str(data["data:".len()..].trim()).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or_default());
    }
    // Two requests with other prompts, answer lengths and rules (same block schedule) join the
    // running batch, finish and leave while the long one goes on; each equals its solo run.
    let joiners = [
        (
            "inc 370230....=",
            json!({"gen_length": 32, "block_length": 8}),
        ),
        (
            "4+9=",
            json!({"gen_length": 16, "block_length": 8, "factor": 1.0}),
        ),
    ];
    let handles: Vec<_> = joiners
        .iter()
        .map(|(prompt, knobs)| {
            let u = format!("{url}/v1/completions");
            let mut b = knobs.clone();
            b["prompt"] = json!(prompt);
            std::thread::spawn(move || post_json(&u, &b))
        })
        .collect();
    for ((prompt, knobs), h) in joiners.iter().zip(handles) {
        let (st, v) = h.join().unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v["choices"][0]["text"],
            solo(&loaded, prompt, knobs),
            "{prompt}"
        );
    }
    let (_, h) = get(&format!("{url}/health"));
    assert_eq!(h["stats"]["batches"], 1, "{h}");
    assert_eq!(h["stats"]["joined_rows"], 2, "{h}");
    assert!(h["stats"]["max_batch"].as_u64().unwrap() >= 2, "{h}");
    // The long request is still streaming after the others left; then its client hangs up.
    let _ = next_data();
    drop(reader);
    s.shutdown(std::net::Shutdown::Both).unwrap();
}

/// A batch (or a running session) of settings that cannot share forwards is a clear error, never a
/// silent mix: another block schedule or cache, or (Dream) rules that pick different scores.
#[test]
fn mismatched_batch_settings_are_errors() {
    let loaded = load();
    let base = defaults().settings;
    let mut session = engine::Batch::new(
        loaded.model.as_ref(),
        None,
        &base,
        GenerateOptions::default(),
    )
    .unwrap();
    let ids = loaded.tokenizer.encode("4+9=", true).unwrap();
    let other_block = GenerationSettings {
        decode: DecodeConfig {
            block_length: 16,
            ..base.decode.clone()
        },
        ..base.clone()
    };
    let other_cache = GenerationSettings {
        cache: CacheSettings::new(CacheMode::Dual),
        ..base.clone()
    };
    for s in [&other_block, &other_cache] {
        let err = format!(
            "{:#}",
            session
                .admit(&ids, s, engine::RowEvents::default())
                .unwrap_err()
        );
        assert!(err.contains("cannot share a batch"), "{err}");
    }
    assert!(session.is_empty());

    let dream = common::load_bundled("dream-tiny");
    let ids = dream.tokenizer.encode("4+9=", true).unwrap();
    let err = engine::run_rows(
        dream.model.as_ref(),
        None,
        &[ids.clone(), ids],
        &[Unmask::Fixed, Unmask::Threshold { threshold: 0.9 }],
        &[0, 0],
        &base,
        &GenerateOptions::default(),
        &mut |_, _| {},
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("cannot share a batch") && err.contains("threshold=0.9"),
        "{err}"
    );
}

/// The tiny LLaDA with a Jinja chat template (multi-turn, `raise_exception` on a `tool` role).
fn load_with_template() -> LoadedModel {
    let mut loaded = load();
    loaded.info.chat_template = fastdllm_models::ChatTemplate::Jinja(
        fastdllm_models::JinjaTemplate::new(
            "{{ bos_token }}{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}{{ m.content.strip() }}{% if not loop.last %} {% endif %}{% endfor %}",
            "test template",
            loaded.info.template_tokens.clone(),
        )
        .unwrap(),
    );
    loaded
}

#[test]
fn multi_turn_chat_with_the_model_template_and_content_parts() {
    let loaded = load_with_template();
    let template = loaded.info.chat_template.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let srv = serve::spawn(
        listener,
        loaded.clone(),
        ServeConfig::new("llada-tiny", defaults()),
        2,
    )
    .unwrap();
    let url = format!("{}/v1/chat/completions", srv.url());
    let messages = json!([
        {"role": "system", "content": " copy"},
        {"role": "user", "content": "ab="},
        {"role": "assistant", "content": "ab"},
        {"role": "user", "content": [{"type": "text", "text": "copy 3dbk"}, {"type": "text", "text": "......="}]}
    ]);
    let (s, v) = post_json(&url, &json!({"messages": messages}));
    assert_eq!(s, 200, "{v}");
    // The same prompt through the template and the engine alone.
    let conv = [
        fastdllm_models::Message::new("system", " copy"),
        fastdllm_models::Message::user("ab="),
        fastdllm_models::Message::new("assistant", "ab"),
        fastdllm_models::Message::user("copy 3dbk......="),
    ];
    let text = template.render(&conv).unwrap();
    assert!(
        text.starts_with("<|startoftext|>copy ab= ab copy 3dbk"),
        "{text}"
    );
    let ids = loaded.tokenizer.encode(&text, false).unwrap();
    let s0 = defaults().settings;
    let gen = engine::run(
        loaded.model.as_ref(),
        std::slice::from_ref(&ids),
        &[0],
        &s0,
        &GenerateOptions::default(),
    )
    .unwrap();
    let answer = trim_at_eos(&gen.rows[0].generated, &loaded.model.spec().eos_token_ids);
    assert_eq!(
        v["choices"][0]["message"]["content"],
        loaded.tokenizer.decode(answer).unwrap()
    );
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    // A string content equals the same text as parts.
    let (_, v2) = post_json(
        &url,
        &json!({"messages": [{"role": "system", "content": [{"type": "text", "text": " copy"}]}, {"role": "user", "content": "ab="}, {"role": "assistant", "content": "ab"}, {"role": "user", "content": "copy 3dbk......="}]}),
    );
    assert_eq!(v2["choices"][0]["message"], v["choices"][0]["message"]);

    // Bad messages: 400 naming the field.
    let (s, v) = post_json(
        &url,
        &json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
    );
    assert_error(s, &v, 400, Some("messages[0].content[1].type"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image_url"),
        "{v}"
    );
    let (s, v) = post_json(
        &url,
        &json!({"messages": [{"role": "tool", "content": "x"}]}),
    );
    assert_error(s, &v, 400, Some("messages[0].role"));
    let (s, v) = post_json(&url, &json!({"messages": [{"role": "user", "content": 7}]}));
    assert_error(s, &v, 400, Some("messages[0].content"));
    let (s, v) = post_json(&url, &json!({"messages": [{"role": "user"}]}));
    assert_error(s, &v, 400, Some("messages[0].content"));
    let (s, v) = post_json(
        &url,
        &json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
    );
    assert_error(s, &v, 400, Some("messages[0].content[0].text"));
    srv.shutdown().unwrap();
}

#[test]
fn template_exception_is_a_400_with_its_message() {
    let mut loaded = load();
    loaded.info.chat_template = fastdllm_models::ChatTemplate::Jinja(
        fastdllm_models::JinjaTemplate::new(
            "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ m.content }}{% endfor %}",
            "alternating template",
            Default::default(),
        )
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let srv = serve::spawn(
        listener,
        loaded,
        ServeConfig::new("llada-tiny", defaults()),
        2,
    )
    .unwrap();
    let (s, v) = post_json(
        &format!("{}/v1/chat/completions", srv.url()),
        &json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
    );
    assert_error(s, &v, 400, Some("messages"));
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("Conversation roles must alternate") && m.contains("alternating template"),
        "{m}"
    );
    srv.shutdown().unwrap();
}

/// A message's `name` reaches the chat template as transformers passes it (present only when
/// given); an assistant turn with tool calls is one 400 naming `tool_calls`, never a turn whose
/// call is silently dropped.
#[test]
fn message_names_reach_the_template_and_tool_calls_are_refused() {
    let mut loaded = load();
    let template = fastdllm_models::ChatTemplate::Jinja(
        fastdllm_models::JinjaTemplate::new(
            "{{ bos_token }}{% for m in messages %}{% if m.name is defined %}{{ m.name }}:{% endif %}{{ m.content }} {% endfor %}",
            "test template",
            loaded.info.template_tokens.clone(),
        )
        .unwrap(),
    );
    loaded.info.chat_template = template.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let srv = serve::spawn(
        listener,
        loaded.clone(),
        ServeConfig::new("llada-tiny", defaults()),
        2,
    )
    .unwrap();
    let url = format!("{}/v1/chat/completions", srv.url());
    let prompt_tokens = |messages: &[fastdllm_models::Message]| {
        let text = template.render(messages).unwrap();
        loaded.tokenizer.encode(&text, false).unwrap().len()
    };
    let named = [fastdllm_models::Message::user("copy ab=").with_name("bob")];
    let plain = [fastdllm_models::Message::user("copy ab=")];
    assert!(prompt_tokens(&named) > prompt_tokens(&plain));
    let (s, v) = post_json(
        &url,
        &json!({"messages": [{"role": "user", "content": "copy ab=", "name": "bob"}], "max_tokens": 8}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens(&named), "{v}");
    let (s, v) = post_json(
        &url,
        &json!({"messages": [{"role": "user", "content": "copy ab=", "name": null}], "max_tokens": 8}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens(&plain), "{v}");

    let call =
        json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]);
    for content in [json!(""), json!(null), json!("calling f")] {
        let (s, v) = post_json(
            &url,
            &json!({"messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": content, "tool_calls": call},
                {"role": "user", "content": "and?"}
            ]}),
        );
        assert_error(s, &v, 400, Some("messages[1].tool_calls"));
    }
    // An empty list of calls is no call.
    let (s, v) = post_json(
        &url,
        &json!({"messages": [{"role": "assistant", "content": "ab", "tool_calls": []}, {"role": "user", "content": "copy ab="}], "max_tokens": 8}),
    );
    assert_eq!(s, 200, "{v}");
}

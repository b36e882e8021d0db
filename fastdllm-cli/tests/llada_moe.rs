//! LLaDA-MoE through every front end of the binary, loaded by the same any-model loader as the
//! dense models: `generate` (every cache mode gives the trained answer), `eval`, `trace`,
//! `bench`, `conform` on its golden cases, and `serve` (an OpenAI completion).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::fastdllm_ok as fastdllm;

/// Hang guard of the server request (minutes; never a timing limit).
const GUARD: Duration = Duration::from_secs(300);

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(rel)
}

fn model() -> String {
    repo_file("fixtures/llada-moe-tiny").display().to_string()
}

fn tmp_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("llada-moe-cli");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn generate_answers_with_every_cache_mode() {
    let m = model();
    for cache in ["none", "prefix", "dual"] {
        let out = fastdllm(&[
            "generate",
            "--model",
            &m,
            "--prompt",
            "copy 3dbk......=",
            "--gen-length",
            "32",
            "--block-length",
            "8",
            "--steps",
            "32",
            "--cache",
            cache,
            "--json",
        ]);
        let v: Value = serde_json::from_str(&out.stdout).expect("one JSON object");
        assert_eq!(v["text"], "3dbk", "{cache}: {v}");
        assert_eq!(v["finish_reason"], "stop", "{cache}: {v}");
    }
}

#[test]
fn eval_trace_bench_and_conform_run_on_it() {
    let m = model();
    let dir = tmp_dir();
    let tasks = repo_file("tasks/tiny-arith.jsonl").display().to_string();
    let out = fastdllm(&[
        "eval",
        "--model",
        &m,
        "--tasks",
        &tasks,
        "--raw",
        "--limit",
        "8",
        "--settings",
        "none/fixed,dual/threshold=0.9",
        "--json",
    ]);
    let text = out.stdout.as_str();
    assert!(text.contains("\"accuracy\""), "{text}");

    let trace = dir.join("trace.html");
    fastdllm(&[
        "trace",
        "--model",
        &m,
        "--raw",
        "--gen-length",
        "16",
        "--block-length",
        "8",
        "--cache",
        "dual",
        "--threshold",
        "0.9",
        "--out",
        trace.to_str().unwrap(),
    ]);
    assert!(std::fs::metadata(&trace).unwrap().len() > 0);

    let (json, html) = (dir.join("bench.jsonl"), dir.join("bench.html"));
    fastdllm(&[
        "bench",
        "--model",
        &m,
        "--cache",
        "none,dual",
        "--gen-length",
        "16",
        "--block-length",
        "8",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--out-json",
        json.to_str().unwrap(),
        "--out-html",
        html.to_str().unwrap(),
    ]);
    let records = std::fs::read_to_string(&json).unwrap();
    assert!(records.lines().count() >= 2, "{records}");

    let cases = repo_file("conformance/goldens/llada-moe-tiny.jsonl")
        .display()
        .to_string();
    let out = fastdllm(&["conform", "--cases", &cases, "--filter", "/g32-b8/s0"]);
    // s01..s09 at G 32, B 8: 9 prompts x 11 rules.
    let text = out.stdout.as_str();
    assert!(text.contains("99 passed, 0 failed"), "{text}");
}

#[test]
fn serve_answers_a_completion() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args(["serve", "--port", "0", "--model", &model()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: Option<SocketAddr> = lines.by_ref().map_while(|l| l.ok()).find_map(|line| {
        line.split("http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
    });
    let Some(addr) = addr else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not start");
    };
    let body = r#"{"prompt": "copy 3dbk......=", "max_tokens": 16, "temperature": 0}"#;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let _ = child.kill();
    let _ = child.wait();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{out}");
    let v: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(v["choices"][0]["text"], "3dbk", "{v}");
}

/// llama.cpp's `llama-diffusion-cli` answers on the LLaDA-MoE GGUF fixtures (f32 and Q8_0,
/// recorded by `scripts/llada-moe-llama-cpp.sh`: greedy, block length 1, 16 tokens) are what
/// `fastdllm generate` answers on the same files with the same schedule (one token per step, left
/// to right in blocks of one: Fast-dLLM's `generate(block_length=1)`).
#[test]
fn llama_cpp_recorded_answers_on_the_gguf_files() {
    let text = std::fs::read_to_string(repo_file("fixtures/gguf/llada-moe-results.jsonl")).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let file = repo_file(&format!("fixtures/gguf/{}", v["gguf"].as_str().unwrap()));
        let out = fastdllm(&[
            "generate",
            "--model",
            file.to_str().unwrap(),
            "--prompt",
            v["prompt"].as_str().unwrap(),
            "--raw",
            "--gen-length",
            "16",
            "--block-length",
            "1",
            "--steps",
            "16",
            "--json",
        ]);
        let ours: Value = serde_json::from_str(&out.stdout).expect("one JSON object");
        assert_eq!(ours["text"], v["llama_cpp_text"], "{line}");
        checked += 1;
    }
    assert_eq!(checked, 10);
}

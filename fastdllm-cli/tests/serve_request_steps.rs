//! A request's `steps` selects the count schedule exactly as the CLI's `--steps` does, whatever
//! the server's default rule (docs/RELIABILITY.md): the reproducer `{"steps": N, "cache":
//! "none"}` against a server whose default is the threshold rule was answered with 2 forwards.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use fastdllm_cli::serve::{self, ServeConfig};
use fastdllm_sampler::Unmask;

/// One request on a fresh connection; the body of the answer.
fn exchange(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// `fastdllm_forwards_total` from `/metrics`.
fn forwards(addr: std::net::SocketAddr) -> u64 {
    let m = exchange(addr, "GET", "/metrics", "");
    m.lines()
        .find_map(|l| l.strip_prefix("fastdllm_forwards_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no forwards counter in {m}"))
}

#[test]
fn a_request_steps_selects_the_count_schedule_over_a_threshold_default() {
    let mut defaults = common::tiny_defaults(32);
    defaults.settings.unmask = Unmask::Threshold { threshold: 0.5 };
    let cfg = ServeConfig::new("llada-tiny", defaults);
    let srv = serve::spawn(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        common::load_tiny(),
        cfg,
        2,
    )
    .unwrap();
    let run = |body: &str| {
        let before = forwards(srv.addr);
        exchange(srv.addr, "POST", "/v1/completions", body);
        forwards(srv.addr) - before
    };
    let threshold = run(
        r#"{"prompt": "copy 3dbk......=", "gen_length": 32, "block_length": 8, "cache": "none"}"#,
    );
    let counted = run(
        r#"{"prompt": "copy 3dbk......=", "gen_length": 32, "block_length": 8, "steps": 32, "cache": "none"}"#,
    );
    // 32 steps over 4 blocks: 8 forwards per decoded block, one token each (the answer may end
    // before the last block); the threshold rule commits several tokens in some steps.
    assert!(
        counted >= 8 && counted % 8 == 0 && counted > threshold,
        "steps 32: {counted} forwards; threshold default: {threshold}"
    );
    srv.shutdown().unwrap();
}

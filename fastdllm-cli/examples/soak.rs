//! A bounded soak of `fastdllm serve` on loopback (docs/RELIABILITY.md, soak): starts the server
//! binary on the bundled tiny LLaDA, then
//! 1. a burst of `--burst` (64) concurrent ~1 MiB prompts (refused by the prompt byte cap), RSS
//!    before and after;
//! 2. `--clients` (64) concurrent clients sending `--requests` (2,000) requests in total, mixing
//!    completions, chats, streamed completions and chats, clients that hang up mid-request or
//!    mid-stream, and bad bodies;
//!
//! and checks: no 5xx, every stream ends with `data: [DONE]` (after the last chunk or an error
//! event), every bad body gets a 4xx, no 429 (64 clients can never fill a queue of 64 when
//! hung-up clients free their places at once), RSS 2 s after the burst at most twice idle,
//! `/health` ok at the end. Prints the figures and
//! exits non-zero if a check fails. Stops by itself; a request guard of 60 s turns a hang into a
//! failure.
//!
//! ```sh
//! cargo build --release -p fastdllm-cli --bin fastdllm --example soak
//! target/release/examples/soak --bin target/release/fastdllm
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Resident set size of `pid` in MiB (Linux `/proc`).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Starts `bin serve --port 0` and returns the child and its address (from its banner).
fn start_server(bin: &str, extra: &[String]) -> Result<(Child, String), String> {
    let mut child = Command::new(bin)
        .args(["serve", "--port", "0"])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {bin}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(rest) = line.split("http://").nth(1) {
            let addr = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            std::thread::spawn(move || for _ in lines {});
            return Ok((child, addr));
        }
    }
    Err("the server exited before listening".into())
}

#[derive(Default)]
struct Counts {
    by_status: std::collections::BTreeMap<u16, usize>,
    server_errors: Vec<String>,
    streams: usize,
    streams_done: usize,
    stream_failures: Vec<String>,
    disconnects: usize,
    bad_bodies: usize,
    bad_body_failures: Vec<String>,
    transport_errors: Vec<String>,
}

fn new_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build(),
    )
}

const PROMPTS: [&str; 6] = [
    "copy 3dbk......=",
    "4+9=",
    "inc 370230....=",
    "copy xq7......=",
    "7+5=",
    "inc 19....=",
];

const BAD: [(&str, &str); 6] = [
    ("text/plain", r#"{"prompt": "4+9="}"#),
    ("application/json", r#"{"prompt": "4+9=""#),
    (
        "application/json",
        r#"{"prompt": "x", "max_tokens": 18446744073709551608}"#,
    ),
    ("application/json", r#"{"prompt": "x", "threshold": 7}"#),
    ("application/json", r#"{"messages": "x"}"#),
    ("application/json", r#"[]"#),
];

/// One request of the mix; updates `c`.
fn one(i: usize, url: &str, addr: &str, agent: &ureq::Agent, c: &Mutex<Counts>) {
    let prompt = PROMPTS[i % PROMPTS.len()];
    let kind = i % 10;
    let (path, body, stream) = match kind {
        0..=2 => (
            "/v1/completions",
            serde_json::json!({"prompt": prompt}),
            false,
        ),
        3 | 4 => (
            "/v1/chat/completions",
            serde_json::json!({"messages": [{"role": "user", "content": prompt}], "threshold": 0.9}),
            false,
        ),
        5 | 6 => (
            "/v1/completions",
            serde_json::json!({"prompt": prompt, "stream": true, "cache": "dual", "threshold": 0.9}),
            true,
        ),
        7 => (
            "/v1/chat/completions",
            serde_json::json!({"messages": [{"role": "user", "content": prompt}], "stream": true}),
            true,
        ),
        8 => return disconnect(i, addr, prompt, c),
        _ => {
            let (ct, b) = BAD[(i / 10) % BAD.len()];
            let r = agent
                .post(format!(
                    "{url}{}",
                    if b.contains("messages") {
                        "/v1/chat/completions"
                    } else {
                        "/v1/completions"
                    }
                ))
                .header("content-type", ct)
                .send(b);
            let mut g = c.lock().unwrap();
            g.bad_bodies += 1;
            match r {
                Ok(mut resp) => {
                    let s = resp.status().as_u16();
                    *g.by_status.entry(s).or_default() += 1;
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    let ok = (400..500).contains(&s)
                        && serde_json::from_str::<serde_json::Value>(&text)
                            .is_ok_and(|v| v["error"]["message"].is_string());
                    if !ok {
                        g.bad_body_failures.push(format!("{b}: {s} {text:.200}"));
                    }
                }
                Err(e) => g.transport_errors.push(e.to_string()),
            }
            return;
        }
    };
    let r = agent
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .send(body.to_string());
    let mut resp = match r {
        Ok(r) => r,
        Err(e) => {
            c.lock().unwrap().transport_errors.push(e.to_string());
            return;
        }
    };
    let s = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let mut g = c.lock().unwrap();
    *g.by_status.entry(s).or_default() += 1;
    if s >= 500 {
        g.server_errors.push(format!("{s} {text:.200}"));
    }
    if stream && s == 200 {
        g.streams += 1;
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:").map(str::trim))
            .collect();
        if data.last() == Some(&"[DONE]") {
            g.streams_done += 1;
        } else {
            g.stream_failures.push(format!("{:.300}", text));
        }
    }
}

/// A client that hangs up: streaming requests after their first event, others right after
/// sending.
fn disconnect(i: usize, addr: &str, prompt: &str, c: &Mutex<Counts>) {
    let stream = i % 20 == 8;
    let body =
        serde_json::json!({"prompt": prompt, "stream": stream, "gen_length": 64}).to_string();
    let req = format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    let Ok(mut s) = TcpStream::connect(addr) else {
        c.lock().unwrap().transport_errors.push("connect".into());
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.write_all(req.as_bytes());
    if stream {
        let mut r = BufReader::new(&s);
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.starts_with("data:") {
                break;
            }
            line.clear();
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    c.lock().unwrap().disconnects += 1;
}

fn get(agent: &ureq::Agent, url: &str) -> Result<serde_json::Value, String> {
    let mut r = agent.get(url).call().map_err(|e| e.to_string())?;
    serde_json::from_str(&r.body_mut().read_to_string().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let bin = arg(&args, "--bin").unwrap_or_else(|| "target/release/fastdllm".into());
    let clients: usize = arg(&args, "--clients").map_or(Ok(64), |v| v.parse())?;
    let requests: usize = arg(&args, "--requests").map_or(Ok(2000), |v| v.parse())?;
    let burst: usize = arg(&args, "--burst").map_or(Ok(64), |v| v.parse())?;
    let (mut child, addr) = start_server(&bin, &[])?;
    let pid = child.id();
    let url = format!("http://{addr}");
    let agent = new_agent();
    let rss_start = rss_mib(pid);
    get(&agent, &format!("{url}/health"))?;

    // 1. A burst of large prompts.
    let big = serde_json::json!({"prompt": "x".repeat(1_000_000)}).to_string();
    let t0 = Instant::now();
    let handles: Vec<_> = (0..burst)
        .map(|_| {
            let (u, b) = (url.clone(), big.clone());
            std::thread::spawn(move || {
                new_agent()
                    .post(format!("{u}/v1/completions"))
                    .header("content-type", "application/json")
                    .send(b)
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let burst_status: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap_or(0)).collect();
    let burst_s = t0.elapsed().as_secs_f64();
    eprintln!("burst done in {burst_s:.1} s");
    // The trim runs on a blocking thread after the last large request: wait for /health, which
    // is answered after it has been scheduled.
    get(&agent, &format!("{url}/health"))?;
    std::thread::sleep(Duration::from_millis(200));
    let rss_burst_now = rss_mib(pid);
    // And once more later: memory the burst's connections freed after the trim (when they
    // closed) would show here.
    std::thread::sleep(Duration::from_millis(1800));
    let rss_burst = rss_mib(pid);

    // 2. The mixed soak.
    let counts = Arc::new(Mutex::new(Counts::default()));
    let peak = Arc::new(Mutex::new(rss_burst));
    let done = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while done.load(Ordering::Relaxed) == 0 {
                let r = rss_mib(pid);
                let mut p = peak.lock().unwrap();
                *p = p.max(r);
                drop(p);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (url, addr, next, counts) =
                (url.clone(), addr.clone(), next.clone(), counts.clone());
            std::thread::spawn(move || {
                let agent = new_agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return;
                    }
                    if i % 100 == 0 {
                        eprintln!("request {i} at {:.1} s", t0.elapsed().as_secs_f64());
                    }
                    one(i, &url, &addr, &agent, &counts);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "a client thread panicked")?;
    }
    let wall = t0.elapsed().as_secs_f64();
    done.store(1, Ordering::Relaxed);
    let _ = sampler.join();
    let health = get(&agent, &format!("{url}/health"))?;
    std::thread::sleep(Duration::from_millis(200));
    let rss_end = rss_mib(pid);
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let exit = child.wait()?;

    let c = counts.lock().unwrap();
    let statuses: Vec<String> = c
        .by_status
        .iter()
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    println!("burst: {burst} x 1 MB prompts in {burst_s:.2} s, statuses {burst_status:?}");
    println!(
        "soak: {clients} clients, {requests} requests in {wall:.1} s ({:.0} req/s); statuses {{{}}}",
        requests as f64 / wall,
        statuses.join(", ")
    );
    println!(
        "streams {} (ended with [DONE]: {}), disconnects {}, bad bodies {} (4xx with an error object: {}), transport errors {}",
        c.streams,
        c.streams_done,
        c.disconnects,
        c.bad_bodies,
        c.bad_bodies - c.bad_body_failures.len(),
        c.transport_errors.len()
    );
    println!(
        "RSS MiB: idle {rss_start:.1}, after the burst {rss_burst_now:.1} (0.2 s) / {rss_burst:.1} (2 s), peak during the soak {:.1}, after the soak {rss_end:.1}",
        *peak.lock().unwrap()
    );
    println!("health after: {}", health["stats"]);
    println!("server exit after SIGTERM: {exit}");
    let too_many = c.by_status.get(&429).copied().unwrap_or(0);
    let mut failed = Vec::new();
    if !c.server_errors.is_empty() {
        failed.push(format!("5xx: {:?}", c.server_errors));
    }
    if !c.stream_failures.is_empty() {
        failed.push(format!("streams without [DONE]: {:?}", c.stream_failures));
    }
    if !c.bad_body_failures.is_empty() {
        failed.push(format!("bad bodies: {:?}", c.bad_body_failures));
    }
    if !c.transport_errors.is_empty() {
        failed.push(format!("transport errors: {:?}", c.transport_errors));
    }
    if too_many > 0 {
        failed.push(format!(
            "{too_many} 429s although {clients} clients cannot fill the queue"
        ));
    }
    if burst_status.iter().any(|&s| !(400..500).contains(&s)) {
        failed.push(format!("burst statuses {burst_status:?}"));
    }
    if rss_start > 0.0 && rss_burst > 2.0 * rss_start {
        failed.push(format!(
            "RSS 2 s after the burst {rss_burst:.1} MiB, over twice idle ({rss_start:.1} MiB)"
        ));
    }
    if health["status"] != "ok" {
        failed.push(format!("health {health}"));
    }
    if !exit.success() {
        failed.push(format!("exit {exit}"));
    }
    if failed.is_empty() {
        println!("soak: all checks passed");
        Ok(())
    } else {
        for f in &failed {
            eprintln!("FAILED: {f:.2000}");
        }
        std::process::exit(1);
    }
}

//! Load generator for `fastdllm serve` (docs/BENCHMARKS.md, "Serving"): `clients` threads send
//! `requests` completions in total (closed loop: each client sends its next request when the
//! previous one is answered) and report requests/s and p50/p99 latency.
//!
//! ```sh
//! cargo run --release -p fastdllm-cli --example loadgen -- --url http://127.0.0.1:8000 --clients 8 --requests 64
//! ```
//! Prompts rotate over the tiny model's tasks; extra JSON knobs can be given with `--body`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--url").unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let clients: usize = arg(&args, "--clients").map_or(Ok(1), |v| v.parse())?;
    let requests: usize = arg(&args, "--requests").map_or(Ok(32), |v| v.parse())?;
    let extra: serde_json::Value =
        serde_json::from_str(&arg(&args, "--body").unwrap_or_else(|| "{}".into()))?;
    let prompts = [
        "copy 3dbk......=",
        "4+9=",
        "inc 370230....=",
        "copy xq7......=",
        "7+5=",
        "inc 19....=",
    ];
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (url, next, extra) = (url.clone(), next.clone(), extra.clone());
            std::thread::spawn(move || -> Vec<Result<Duration, String>> {
                let agent = ureq::Agent::new_with_config(
                    ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build(),
                );
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return out;
                    }
                    let mut body = extra.clone();
                    body["prompt"] = serde_json::json!(prompts[i % prompts.len()]);
                    let t0 = Instant::now();
                    let r = agent
                        .post(format!("{url}/v1/completions"))
                        .header("content-type", "application/json")
                        .send(body.to_string());
                    out.push(match r {
                        Ok(mut resp) if resp.status().as_u16() == 200 => {
                            let _ = resp.body_mut().read_to_string();
                            Ok(t0.elapsed())
                        }
                        Ok(resp) => Err(format!("status {}", resp.status())),
                        Err(e) => Err(e.to_string()),
                    });
                }
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0usize;
    for h in handles {
        for r in h.join().map_err(|_| "a client thread panicked")? {
            match r {
                Ok(d) => lat.push(d.as_secs_f64() * 1e3),
                Err(e) => {
                    errors += 1;
                    eprintln!("error: {e}");
                }
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "clients {clients:>3}  requests {:>4}  errors {errors}  wall {wall:.2} s  {:.1} req/s  p50 {:.1} ms  p99 {:.1} ms",
        lat.len(),
        lat.len() as f64 / wall,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

//! `fastdllm bench serve`: a serving benchmark of any OpenAI-compatible server (ours or not)
//! with vLLM `bench serve`'s flag names and result keys ([`fastdllm_benches::serve`],
//! docs/BENCH_SCHEMA.md): prompts from a task file or random token ids, Poisson arrivals or all
//! at once, an optional cap on requests in flight, every request streamed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use fastdllm_benches::serve::{result_json, summary_table, RequestOutput, RunInfo};
use fastdllm_core::Rng;
use fastdllm_models::Tokenizer;
use serde_json::{json, Map, Value};

use super::args::bounds;

/// Arguments of `fastdllm bench serve` (the names of vLLM's `bench serve` where they apply).
#[derive(Debug, Args)]
pub struct ServeBenchArgs {
    /// Base URL of the server (`http://HOST:PORT`; plain HTTP).
    #[arg(long, visible_alias = "base-url")]
    url: String,
    /// The `model` field of each request (the id the server serves).
    #[arg(long)]
    model: String,
    /// Path of the API: /v1/completions (`prompt`) or /v1/chat/completions (one user message).
    #[arg(long, default_value = "/v1/completions")]
    endpoint: String,
    /// Requests to send.
    #[arg(long, default_value_t = 1000, value_parser = bounds::repeats())]
    num_prompts: usize,
    /// Requests per second, Poisson arrivals (exponential gaps drawn with --seed); `inf` sends
    /// every request at once.
    #[arg(long, default_value = "inf", value_parser = parse_rate)]
    request_rate: f64,
    /// Most requests in flight (default: no cap).
    #[arg(long, value_parser = bounds::batch())]
    max_concurrency: Option<usize>,
    /// Task file (JSON Lines with `prompt` or `question`, as `fastdllm eval` reads); its prompts
    /// are sent in order, cycling. Without it prompts are random token ids (--random-input-len).
    #[arg(long, value_name = "FILE")]
    dataset_path: Option<PathBuf>,
    /// Random prompts: token ids per prompt, drawn uniformly from the tokenizer's vocabulary
    /// (without added tokens) and decoded.
    #[arg(long, default_value_t = 1024, value_parser = bounds::tokens())]
    random_input_len: usize,
    /// Random prompts: `max_tokens` of each request.
    #[arg(long, default_value_t = 128, value_parser = bounds::tokens())]
    random_output_len: usize,
    /// Tokenizer (tokenizer.json or a directory holding one) for random prompts and for counting
    /// tokens the server does not report. Default: --model when it is a local directory.
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// JSON object merged into every request body, e.g. the Fast-dLLM knobs
    /// '{"cache": "dual", "threshold": 0.9}' (recorded in the result's `dllm` block).
    #[arg(long, value_name = "JSON", value_parser = parse_extra_body)]
    extra_body: Option<Map<String, Value>>,
    /// Seed of the arrivals and of random prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the result JSON (vLLM's keys plus `dllm`, docs/BENCH_SCHEMA.md) to this file.
    #[arg(long, value_name = "PATH")]
    result_file: Option<PathBuf>,
    /// Seconds one request may take (a hang guard, not a measurement).
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

fn parse_rate(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r > 0.0 && !r.is_nan() => Ok(r),
        _ => Err("must be a positive number of requests per second or `inf`".into()),
    }
}

fn parse_extra_body(text: &str) -> std::result::Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("must be a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// One request to send.
struct Request {
    prompt: String,
    /// The benchmark's own prompt length (tokenizer), when it has a tokenizer.
    prompt_len: Option<usize>,
    max_tokens: Option<usize>,
}

fn tokenizer_path(a: &ServeBenchArgs) -> Option<PathBuf> {
    let p = a.tokenizer.clone().or_else(|| {
        let m = Path::new(&a.model);
        m.is_dir().then(|| m.to_path_buf())
    })?;
    Some(if p.is_dir() {
        p.join("tokenizer.json")
    } else {
        p
    })
}

fn requests(a: &ServeBenchArgs, tok: Option<&Tokenizer>) -> Result<Vec<Request>> {
    let count = |text: &str| {
        tok.and_then(|t| t.encode(text, false).ok())
            .map(|v| v.len())
    };
    if let Some(path) = &a.dataset_path {
        let tasks = fastdllm_benches::eval::read_tasks(path)?;
        if tasks.is_empty() {
            bail!("--dataset-path {}: no tasks", path.display());
        }
        return Ok((0..a.num_prompts)
            .map(|i| {
                let prompt = tasks[i % tasks.len()].prompt.clone();
                Request {
                    prompt_len: count(&prompt),
                    prompt,
                    max_tokens: None,
                }
            })
            .collect());
    }
    let Some(tok) = tok else {
        bail!("random prompts need a tokenizer: give --tokenizer PATH (or --dataset-path FILE)");
    };
    let vocab = tok.inner().get_vocab_size(false) as u64;
    if vocab == 0 {
        bail!("--tokenizer: the vocabulary is empty");
    }
    let mut rng = Rng::new(a.seed);
    (0..a.num_prompts)
        .map(|_| {
            let ids: Vec<u32> = (0..a.random_input_len)
                .map(|_| (rng.next_u64() % vocab) as u32)
                .collect();
            let prompt = tok.decode(&ids)?;
            Ok(Request {
                prompt_len: count(&prompt),
                prompt,
                max_tokens: Some(a.random_output_len),
            })
        })
        .collect()
}

/// Start offsets (s) of the requests: 0 for `inf`, else cumulative exponential gaps of mean
/// `1 / rate` (a Poisson process, vLLM's `burstiness` 1).
fn arrivals(n: usize, rate: f64, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed ^ 0x05EE_DA11);
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            let at = t;
            if rate.is_finite() {
                t += -rng.open01().ln() / rate;
            }
            at
        })
        .collect()
}

/// A counting semaphore for --max-concurrency.
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn acquire(&self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
    }

    fn release(&self) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_one();
    }
}

pub fn run(a: ServeBenchArgs) -> Result<ExitCode> {
    let tok = match tokenizer_path(&a) {
        Some(p) => {
            // Shared by the request threads (a real model's tokenizer is megabytes).
            Some(Arc::new(
                Tokenizer::from_file(&p).with_context(|| format!("--tokenizer {}", p.display()))?,
            ))
        }
        None => None,
    };
    let reqs = requests(&a, tok.as_deref())?;
    let chat = a
        .endpoint
        .trim_end_matches('/')
        .ends_with("chat/completions");
    let url = format!("{}{}", a.url.trim_end_matches('/'), a.endpoint);
    let extra = a.extra_body.clone().unwrap_or_default();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(a.timeout)))
        .build()
        .into();
    let api_key = std::env::var("OPENAI_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let slots = Arc::new(Slots {
        free: Mutex::new(a.max_concurrency.unwrap_or(usize::MAX)),
        cv: Condvar::new(),
    });
    let at = arrivals(reqs.len(), a.request_rate, a.seed);
    let (tx, rx) = mpsc::channel::<(usize, RequestOutput)>();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.into_iter().enumerate() {
        let wait = Duration::from_secs_f64(at[i]).saturating_sub(start.elapsed());
        std::thread::sleep(wait);
        slots.acquire();
        let mut body =
            json!({"model": a.model, "stream": true, "stream_options": {"include_usage": true}});
        if chat {
            body["messages"] = json!([{"role": "user", "content": r.prompt}]);
        } else {
            body["prompt"] = json!(r.prompt);
        }
        if let Some(m) = r.max_tokens {
            body["max_tokens"] = json!(m);
        }
        for (k, v) in &extra {
            body[k] = v.clone();
        }
        let (agent, url, tx, slots, key) = (
            agent.clone(),
            url.clone(),
            tx.clone(),
            slots.clone(),
            api_key.clone(),
        );
        let tok = tok.clone();
        let started = start.elapsed().as_secs_f64();
        handles.push(std::thread::spawn(move || {
            let mut out = send(&agent, &url, key.as_deref(), &body, chat, tok.as_deref());
            out.start_time = started;
            if out.prompt_len == 0 {
                out.prompt_len = r.prompt_len.unwrap_or(0);
            }
            slots.release();
            let _ = tx.send((i, out));
        }));
    }
    drop(tx);
    let mut outputs = vec![RequestOutput::default(); handles.len()];
    for (i, o) in rx {
        outputs[i] = o;
    }
    let duration = start.elapsed().as_secs_f64();
    for h in handles {
        let _ = h.join();
    }
    let info = RunInfo {
        date: vllm_date(&fastdllm_benches::system::timestamp_utc()),
        backend: if chat { "openai-chat" } else { "openai" }.into(),
        model_id: a.model.clone(),
        tokenizer_id: tokenizer_path(&a).map(|p| p.display().to_string()),
        num_prompts: a.num_prompts,
        request_rate: a.request_rate,
        max_concurrency: a.max_concurrency,
        extra_body: extra,
    };
    let result = result_json(&info, &outputs, duration);
    fastdllm_cli::output::out(&summary_table(&result))?;
    if let Some(path) = &a.result_file {
        std::fs::write(path, serde_json::to_string_pretty(&result)? + "\n")
            .with_context(|| format!("cannot write --result-file {}", path.display()))?;
    }
    let completed = result["completed"].as_u64().unwrap_or(0);
    if completed == 0 && a.num_prompts > 0 {
        let first = outputs
            .iter()
            .map(|o| o.error.as_str())
            .find(|e| !e.is_empty());
        bail!(
            "no request completed (first error: {})",
            first.unwrap_or("none")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `2026-01-31T12:00:00Z` → vLLM's `20260131-120000`.
fn vllm_date(rfc3339: &str) -> String {
    let digits: String = rfc3339.chars().filter(char::is_ascii_digit).collect();
    format!("{}-{}", &digits[..8], &digits[8..14.min(digits.len())])
}

/// Sends one streamed request and measures it (vLLM's `async_request_openai_completions` /
/// `..._chat_completions`): TTFT at the first non-empty text, ITL between texts, latency at
/// the end of the stream; usage (`prompt_tokens`, `completion_tokens`, and `nfe` where the
/// server adds it) from the final usage chunk.
fn send(
    agent: &ureq::Agent,
    url: &str,
    api_key: Option<&str>,
    body: &Value,
    chat: bool,
    tok: Option<&Tokenizer>,
) -> RequestOutput {
    let mut out = RequestOutput::default();
    let t0 = Instant::now();
    let mut req = agent.post(url).header("content-type", "application/json");
    if let Some(k) = api_key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = match req.send(body.to_string()) {
        Ok(r) => r,
        Err(e) => {
            out.error = format!("{url}: {e}");
            return out;
        }
    };
    let status = resp.status().as_u16();
    if status != 200 {
        let mut resp = resp;
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        out.error = format!("HTTP {status}: {}", text.trim());
        return out;
    }
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut last = None::<Instant>;
    let mut chunks = 0usize;
    let mut done = false;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                out.error = format!("reading the stream: {e}");
                return out;
            }
        }
        let Some(data) = line.trim_end().strip_prefix("data:") else {
            continue;
        };
        let data = data.trim_start();
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                out.error = format!("a streamed chunk is not JSON ({e}): {data}");
                return out;
            }
        };
        if let Some(err) = v.get("error") {
            out.error = format!("error in the stream: {err}");
            return out;
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            let n = |k: &str| u.get(k).and_then(Value::as_u64).map(|x| x as usize);
            out.prompt_len = n("prompt_tokens").unwrap_or(0);
            out.output_tokens = n("completion_tokens").unwrap_or(0);
            out.nfe = n("nfe");
        }
        let Some(choice) = v["choices"].get(0) else {
            continue;
        };
        if let Some(r) = choice["finish_reason"].as_str() {
            out.finish_reason = Some(r.to_string());
        }
        let text = if chat {
            choice["delta"]["content"].as_str()
        } else {
            choice["text"].as_str()
        };
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            let now = Instant::now();
            match last {
                None => out.ttft = (now - t0).as_secs_f64(),
                Some(prev) => out.itl.push((now - prev).as_secs_f64()),
            }
            last = Some(now);
            chunks += 1;
            out.generated_text.push_str(text);
        }
    }
    out.latency = t0.elapsed().as_secs_f64();
    if !done {
        out.error = "the stream ended without `data: [DONE]`".into();
    } else if last.is_none() {
        out.error = "never received a streamed text to time the first token".into();
    } else {
        out.success = true;
        if out.output_tokens == 0 {
            // No usage chunk: count the text (vLLM counts with its tokenizer), else its chunks.
            out.output_tokens = tok
                .and_then(|t| t.encode(&out.generated_text, false).ok())
                .map_or(chunks, |ids| ids.len());
        }
    }
    out
}

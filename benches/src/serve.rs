//! The result of `fastdllm bench serve` (docs/BENCH_SCHEMA.md, "Serving"): per-request
//! measurements of a streamed OpenAI-compatible endpoint summarised under the keys vLLM's
//! `bench serve` writes (`vllm/benchmarks/serve.py`, `calculate_metrics` and the result dict of
//! `benchmark`), so dashboards that read vLLM's result files read ours, plus a `dllm` block of
//! the diffusion-specific figures (NFE, tokens per forward) where the server reports them.
//!
//! The definitions are vLLM's: TTFT is the time from sending a request to its first streamed
//! text; E2EL the time to its last byte; ITL the gaps between successive streamed texts (for a
//! diffusion server a streamed text is a committed block, so one ITL spans several tokens);
//! TPOT = (E2EL - TTFT) / (output tokens - 1) for requests with more than one output token.
//! Means, medians, population standard deviations and linearly interpolated percentiles (numpy's
//! defaults) are in milliseconds; throughputs divide by the benchmark's wall duration.

use serde::Serialize;
use serde_json::{json, Map, Value};

/// What one request measured (vLLM's `RequestFuncOutput`). Times in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestOutput {
    /// Whether the request completed (HTTP 200 and a full stream).
    pub success: bool,
    /// Why it did not (empty when it did).
    pub error: String,
    /// Prompt tokens (the server's `usage.prompt_tokens`, else the benchmark's own count).
    pub prompt_len: usize,
    /// Output tokens (the server's `usage.completion_tokens`, else the streamed texts counted).
    pub output_tokens: usize,
    /// Time to the first streamed text (s).
    pub ttft: f64,
    /// Gaps between successive streamed texts (s).
    pub itl: Vec<f64>,
    /// Time to the end of the stream (s).
    pub latency: f64,
    /// Start time, relative to the benchmark's start (s).
    pub start_time: f64,
    /// The streamed text.
    pub generated_text: String,
    /// The server's `finish_reason` of the choice.
    pub finish_reason: Option<String>,
    /// Forward calls the server reports for the request (`usage.nfe`), when it reports them.
    pub nfe: Option<usize>,
}

/// The run's fields of the result (vLLM writes them in `main` before the metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// `%Y%m%d-%H%M%S` (UTC here; vLLM: local time).
    pub date: String,
    /// `openai` (completions) or `openai-chat`.
    pub backend: String,
    /// The `model` field sent.
    pub model_id: String,
    /// Tokenizer used for random prompts and counts, if any.
    pub tokenizer_id: Option<String>,
    /// Requests sent.
    pub num_prompts: usize,
    /// Requests per second of the Poisson arrivals (`f64::INFINITY`: all at once).
    pub request_rate: f64,
    /// Most requests in flight (`None`: no cap).
    pub max_concurrency: Option<usize>,
    /// The `dllm` block's request settings (the extension fields sent, e.g. `cache`,
    /// `threshold`), copied as given.
    pub extra_body: Map<String, Value>,
}

/// Percentiles written for each latency metric (vLLM's default `--metric-percentiles 99`).
pub const PERCENTILES: [f64; 1] = [99.0];

/// Mean, median, population standard deviation and [`PERCENTILES`] of `xs` in seconds, as
/// milliseconds under `{mean,median,std,pNN}_{name}_ms`; 0 for an empty list (numpy on `[0]`,
/// as vLLM computes `np.mean(ttfts or 0)`).
fn stats_ms(out: &mut Map<String, Value>, name: &str, xs: &[f64]) {
    let mut v: Vec<f64> = if xs.is_empty() {
        vec![0.0]
    } else {
        xs.to_vec()
    };
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    out.insert(format!("mean_{name}_ms"), json!(mean * 1e3));
    out.insert(
        format!("median_{name}_ms"),
        json!(percentile(&v, 50.0) * 1e3),
    );
    out.insert(format!("std_{name}_ms"), json!(var.sqrt() * 1e3));
    for p in PERCENTILES {
        let word = if p.fract() == 0.0 {
            format!("{}", p as u64)
        } else {
            p.to_string()
        };
        out.insert(format!("p{word}_{name}_ms"), json!(percentile(&v, p) * 1e3));
    }
}

/// numpy's default (linear) percentile of sorted, non-empty `v`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// The result JSON: vLLM's keys (run fields, `duration`, `completed`, `failed`, totals,
/// throughputs, the per-request arrays and the latency statistics) and the `dllm` block
/// (docs/BENCH_SCHEMA.md). `duration` is the benchmark's wall time in seconds.
pub fn result_json(info: &RunInfo, outputs: &[RequestOutput], duration: f64) -> Value {
    let mut total_input = 0usize;
    let mut output_lens = Vec::with_capacity(outputs.len());
    let (mut ttfts, mut tpots, mut itls, mut e2els) = (vec![], vec![], vec![], vec![]);
    let mut completed = 0usize;
    for o in outputs {
        if !o.success {
            output_lens.push(0);
            continue;
        }
        output_lens.push(o.output_tokens);
        total_input += o.prompt_len;
        if o.output_tokens > 1 {
            tpots.push((o.latency - o.ttft) / (o.output_tokens - 1) as f64);
        }
        itls.extend_from_slice(&o.itl);
        ttfts.push(o.ttft);
        e2els.push(o.latency);
        completed += 1;
    }
    let total_output: usize = output_lens.iter().sum();
    let per_s = |x: f64| if duration > 0.0 { x / duration } else { 0.0 };
    let mut r = Map::new();
    r.insert("date".into(), json!(info.date));
    r.insert("backend".into(), json!(info.backend));
    r.insert("model_id".into(), json!(info.model_id));
    r.insert("tokenizer_id".into(), json!(info.tokenizer_id));
    r.insert("num_prompts".into(), json!(info.num_prompts));
    r.insert(
        "request_rate".into(),
        if info.request_rate.is_finite() {
            json!(info.request_rate)
        } else {
            json!("inf")
        },
    );
    r.insert("burstiness".into(), json!(1.0));
    r.insert("max_concurrency".into(), json!(info.max_concurrency));
    r.insert("duration".into(), json!(duration));
    r.insert("completed".into(), json!(completed));
    r.insert("failed".into(), json!(outputs.len() - completed));
    r.insert("total_input_tokens".into(), json!(total_input));
    r.insert("total_output_tokens".into(), json!(total_output));
    r.insert("request_throughput".into(), json!(per_s(completed as f64)));
    r.insert(
        "output_throughput".into(),
        json!(per_s(total_output as f64)),
    );
    r.insert(
        "total_token_throughput".into(),
        json!(per_s((total_input + total_output) as f64)),
    );
    r.insert(
        "input_lens".into(),
        json!(outputs.iter().map(|o| o.prompt_len).collect::<Vec<_>>()),
    );
    r.insert("output_lens".into(), json!(output_lens));
    r.insert(
        "ttfts".into(),
        json!(outputs.iter().map(|o| o.ttft).collect::<Vec<_>>()),
    );
    r.insert(
        "itls".into(),
        json!(outputs.iter().map(|o| &o.itl).collect::<Vec<_>>()),
    );
    r.insert(
        "start_times".into(),
        json!(outputs.iter().map(|o| o.start_time).collect::<Vec<_>>()),
    );
    r.insert(
        "generated_texts".into(),
        json!(outputs
            .iter()
            .map(|o| &o.generated_text)
            .collect::<Vec<_>>()),
    );
    r.insert(
        "errors".into(),
        json!(outputs.iter().map(|o| &o.error).collect::<Vec<_>>()),
    );
    r.insert(
        "finish_reasons".into(),
        json!(outputs.iter().map(|o| &o.finish_reason).collect::<Vec<_>>()),
    );
    stats_ms(&mut r, "ttft", &ttfts);
    stats_ms(&mut r, "tpot", &tpots);
    stats_ms(&mut r, "itl", &itls);
    stats_ms(&mut r, "e2el", &e2els);
    r.insert("dllm".into(), dllm_block(info, outputs));
    Value::Object(r)
}

/// The `dllm` block: the extension fields sent (`cache`, `threshold`, ...), the rule they name,
/// NFE per request (`null` where the server did not report it) and, when every completed request
/// reported one, the total NFE and output tokens per forward.
fn dllm_block(info: &RunInfo, outputs: &[RequestOutput]) -> Value {
    let body = &info.extra_body;
    let rule = if let Some(t) = body.get("threshold").filter(|v| !v.is_null()) {
        Some(format!("threshold={t}"))
    } else if let Some(f) = body.get("factor").filter(|v| !v.is_null()) {
        Some(format!("factor={f}"))
    } else {
        body.get("steps")
            .filter(|v| !v.is_null())
            .map(|s| format!("fixed steps={s}"))
    };
    let done: Vec<&RequestOutput> = outputs.iter().filter(|o| o.success).collect();
    let reported = !done.is_empty() && done.iter().all(|o| o.nfe.is_some());
    let total_nfe: Option<usize> = reported.then(|| done.iter().filter_map(|o| o.nfe).sum());
    let tokens: usize = done.iter().map(|o| o.output_tokens).sum();
    json!({
        "cache": body.get("cache"),
        "rule": rule,
        "request_body": body,
        "nfes": outputs.iter().map(|o| o.nfe).collect::<Vec<_>>(),
        "total_nfe": total_nfe,
        "tokens_per_forward": total_nfe.filter(|&n| n > 0).map(|n| tokens as f64 / n as f64),
    })
}

/// vLLM's console summary (`============ Serving Benchmark Result ============`) of a result.
pub fn summary_table(r: &Value) -> String {
    let mut s = String::new();
    let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("{k:<40} {v:<10}\n"));
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    s.push_str(&format!("{:=^50}\n", " Serving Benchmark Result "));
    line(&mut s, "Successful requests:", r["completed"].to_string());
    line(&mut s, "Failed requests:", r["failed"].to_string());
    line(
        &mut s,
        "Benchmark duration (s):",
        format!("{:.2}", f("duration")),
    );
    line(
        &mut s,
        "Total input tokens:",
        r["total_input_tokens"].to_string(),
    );
    line(
        &mut s,
        "Total generated tokens:",
        r["total_output_tokens"].to_string(),
    );
    line(
        &mut s,
        "Request throughput (req/s):",
        format!("{:.2}", f("request_throughput")),
    );
    line(
        &mut s,
        "Output token throughput (tok/s):",
        format!("{:.2}", f("output_throughput")),
    );
    line(
        &mut s,
        "Total Token throughput (tok/s):",
        format!("{:.2}", f("total_token_throughput")),
    );
    for (name, header) in [
        ("ttft", "Time to First Token"),
        ("tpot", "Time per Output Token (excl. 1st token)"),
        ("itl", "Inter-token Latency"),
        ("e2el", "End-to-end Latency"),
    ] {
        s.push_str(&format!("{header:-^50}\n"));
        let up = name.to_uppercase();
        line(
            &mut s,
            &format!("Mean {up} (ms):"),
            format!("{:.2}", f(&format!("mean_{name}_ms"))),
        );
        line(
            &mut s,
            &format!("Median {up} (ms):"),
            format!("{:.2}", f(&format!("median_{name}_ms"))),
        );
        line(
            &mut s,
            &format!("P99 {up} (ms):"),
            format!("{:.2}", f(&format!("p99_{name}_ms"))),
        );
    }
    let d = &r["dllm"];
    s.push_str(&format!("{:-^50}\n", "Diffusion (dllm)"));
    line(&mut s, "Total NFE:", d["total_nfe"].to_string());
    line(
        &mut s,
        "Tokens per forward:",
        match d["tokens_per_forward"].as_f64() {
            Some(t) => format!("{t:.2}"),
            None => "null".into(),
        },
    );
    s.push_str(&"=".repeat(50));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            date: "20260101-000000".into(),
            backend: "openai".into(),
            model_id: "m".into(),
            tokenizer_id: None,
            num_prompts: 3,
            request_rate: f64::INFINITY,
            max_concurrency: Some(2),
            extra_body: serde_json::from_str(r#"{"cache": "dual", "threshold": 0.9}"#).unwrap(),
        }
    }

    fn ok(
        prompt: usize,
        out: usize,
        ttft: f64,
        itl: Vec<f64>,
        latency: f64,
        nfe: usize,
    ) -> RequestOutput {
        RequestOutput {
            success: true,
            prompt_len: prompt,
            output_tokens: out,
            ttft,
            itl,
            latency,
            nfe: Some(nfe),
            ..RequestOutput::default()
        }
    }

    #[test]
    fn keys_and_figures_follow_vllm_definitions() {
        let outs = vec![
            ok(10, 5, 0.1, vec![0.1, 0.2], 0.5, 4),
            ok(20, 1, 0.2, vec![], 0.2, 2),
            RequestOutput {
                error: "HTTP 400".into(),
                prompt_len: 7,
                ..RequestOutput::default()
            },
        ];
        let r = result_json(&info(), &outs, 2.0);
        assert_eq!(r["completed"], 2);
        assert_eq!(r["failed"], 1);
        assert_eq!(r["request_rate"], "inf");
        assert_eq!(r["total_input_tokens"], 30);
        assert_eq!(r["total_output_tokens"], 6);
        assert_eq!(r["output_lens"], json!([5, 1, 0]));
        assert_eq!(r["request_throughput"], 1.0);
        assert_eq!(r["output_throughput"], 3.0);
        assert_eq!(r["total_token_throughput"], 18.0);
        let close = |k: &str, want: f64| {
            let got = r[k].as_f64().unwrap();
            assert!((got - want).abs() < 1e-9, "{k}: {got} vs {want}");
        };
        close("mean_ttft_ms", 150.0);
        close("median_ttft_ms", 150.0);
        close("std_ttft_ms", 50.0);
        close("p99_ttft_ms", 199.0);
        // Only the 5-token request has a TPOT: (0.5 - 0.1) / 4.
        close("mean_tpot_ms", 100.0);
        close("mean_itl_ms", 150.0);
        close("p99_e2el_ms", 497.0);
        assert_eq!(r["dllm"]["cache"], "dual");
        assert_eq!(r["dllm"]["rule"], "threshold=0.9");
        assert_eq!(r["dllm"]["nfes"], json!([4, 2, null]));
        assert_eq!(r["dllm"]["total_nfe"], 6);
        assert_eq!(r["dllm"]["tokens_per_forward"], 1.0);
        assert!(summary_table(&r).contains("Successful requests:                     2"));
    }

    #[test]
    fn without_reported_nfe_the_dllm_figures_are_null() {
        let mut o = ok(1, 2, 0.1, vec![], 0.2, 0);
        o.nfe = None;
        let r = result_json(&info(), &[o], 1.0);
        assert!(r["dllm"]["total_nfe"].is_null());
        assert!(r["dllm"]["tokens_per_forward"].is_null());
        // numpy on an empty list of ITLs: vLLM computes np.mean([] or 0) = 0.
        assert_eq!(r["mean_itl_ms"], 0.0);
    }
}

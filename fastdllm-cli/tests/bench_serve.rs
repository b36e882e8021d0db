//! `fastdllm bench serve` against our own server on loopback (the bundled tiny LLaDA): the
//! result file has vLLM `bench serve`'s keys with figures consistent with what was sent, the
//! streamed texts are the server's answers, and a server that refuses every request is an
//! error naming the HTTP status. Nothing here depends on how fast the machine is.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;

use fastdllm_cli::serve::{self, Defaults, ServeConfig, ServerHandle};
use serde_json::Value;

const MODEL: &str = "llada-tiny";

fn start() -> ServerHandle {
    let cfg = ServeConfig::new(
        MODEL,
        Defaults {
            settings: common::tiny_defaults(16).settings,
            explicit_steps: false,
        },
    );
    serve::spawn(
        TcpListener::bind("127.0.0.1:0").unwrap(),
        common::load_tiny(),
        cfg,
        4,
    )
    .unwrap()
}

fn result_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "fastdllm-bench-serve-{tag}-{}.json",
        std::process::id()
    ))
}

fn bench(server: &ServerHandle, extra: &[&str]) -> (i32, String, String) {
    let url = server.url();
    let args = ["bench", "serve", "--url", &url, "--model", MODEL];
    let common::Run {
        code,
        stdout,
        stderr,
    } = common::fastdllm(args.iter().chain(extra));
    (code, stdout, stderr)
}

#[test]
fn task_prompts_with_a_concurrency_cap_give_vllm_keys_and_the_servers_answers() {
    let server = start();
    let tasks = fastdllm_conformance::paths::repo_root().join("tasks/tiny-arith.jsonl");
    let file = result_path("tasks");
    let (code, stdout, stderr) = bench(
        &server,
        &[
            "--dataset-path",
            tasks.to_str().unwrap(),
            "--num-prompts",
            "6",
            "--max-concurrency",
            "2",
            "--extra-body",
            r#"{"cache": "dual", "threshold": 0.9}"#,
            "--result-file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("Successful requests:                     6"),
        "{stdout}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    for key in [
        "date",
        "backend",
        "model_id",
        "num_prompts",
        "request_rate",
        "burstiness",
        "max_concurrency",
        "duration",
        "completed",
        "failed",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "input_lens",
        "output_lens",
        "ttfts",
        "itls",
        "generated_texts",
        "errors",
    ] {
        assert!(r.get(key).is_some(), "missing {key}: {r}");
    }
    for m in ["ttft", "tpot", "itl", "e2el"] {
        for s in ["mean", "median", "std", "p99"] {
            assert!(r[format!("{s}_{m}_ms")].is_number(), "{s}_{m}_ms: {r}");
        }
    }
    assert_eq!(
        (r["completed"].as_u64(), r["failed"].as_u64()),
        (Some(6), Some(0))
    );
    assert_eq!(r["request_rate"], "inf");
    assert_eq!(r["max_concurrency"], 2);
    assert_eq!(r["backend"], "openai");
    // Totals are the sums of the per-request arrays (the server's usage counts).
    let sum = |k: &str| {
        r[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(r["total_input_tokens"].as_u64(), Some(sum("input_lens")));
    assert_eq!(r["total_output_tokens"].as_u64(), Some(sum("output_lens")));
    assert!(sum("output_lens") > 0 && sum("input_lens") > 0, "{r}");
    assert!(r["ttfts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.as_f64().unwrap() > 0.0));
    assert!(r["mean_e2el_ms"].as_f64().unwrap() >= r["mean_ttft_ms"].as_f64().unwrap());
    assert_eq!(r["dllm"]["cache"], "dual");
    assert_eq!(r["dllm"]["rule"], "threshold=0.9");

    // The streamed texts are the answers the server gives the same request unstreamed.
    let text = |prompt: &str| -> String {
        let body = serde_json::json!({"model": MODEL, "prompt": prompt, "cache": "dual", "threshold": 0.9});
        let mut resp = ureq::post(format!("{}/v1/completions", server.url()))
            .header("content-type", "application/json")
            .send(body.to_string())
            .unwrap();
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        v["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let prompts: Vec<String> = std::fs::read_to_string(&tasks)
        .unwrap()
        .lines()
        .take(6)
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["prompt"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(
            r["generated_texts"][i].as_str().unwrap(),
            text(p),
            "request {i}"
        );
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
fn random_prompts_with_poisson_arrivals_and_a_refused_request() {
    let server = start();
    let tokenizer = fastdllm_conformance::paths::bundled_model(MODEL);
    let file = result_path("random");
    let (code, stdout, stderr) = bench(
        &server,
        &[
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--random-input-len",
            "6",
            "--random-output-len",
            "8",
            "--num-prompts",
            "4",
            "--request-rate",
            "50",
            "--result-file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(r["request_rate"], 50.0);
    // The tiny model often answers a random prompt with the end token at once: a stream without
    // text, which vLLM counts as failed ("never received a valid chunk"); so do we.
    let completed = r["completed"].as_u64().unwrap();
    assert!(
        completed >= 1 && completed + r["failed"].as_u64().unwrap() == 4,
        "{r}"
    );
    for (e, n) in r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["output_lens"].as_array().unwrap())
    {
        let (e, n) = (e.as_str().unwrap(), n.as_u64().unwrap());
        assert!(
            e.is_empty() && (1..=8).contains(&n) || e.starts_with("never received") && n == 0,
            "{r}"
        );
    }
    // Prompt lengths are the server's usage counts of the decoded random ids.
    assert!(
        r["input_lens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_u64().unwrap() > 0),
        "{r}"
    );
    let starts: Vec<f64> = r["start_times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");

    // Every request refused (an unknown knob is a 400): no request completed, exit non-zero,
    // the first error named.
    let tasks = fastdllm_conformance::paths::repo_root().join("tasks/tiny-arith.jsonl");
    let (code, _, stderr) = bench(
        &server,
        &[
            "--dataset-path",
            tasks.to_str().unwrap(),
            "--num-prompts",
            "2",
            "--extra-body",
            r#"{"no_such_knob": 1}"#,
        ],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("no request completed") && stderr.contains("HTTP 400"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&file);
}

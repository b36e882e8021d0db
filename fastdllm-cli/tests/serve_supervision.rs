//! Engine supervision and request-size validation (docs/RELIABILITY.md): a row whose forward
//! panics is answered with a 500 OpenAI error naming its request while the server keeps serving;
//! the reproducer `max_tokens = 18446744073709551608` is a 400; request resolution answers `Ok`
//! or a 400 for any integer or float, never a panic.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use fastdllm_cli::serve::openai::Knobs;
use fastdllm_cli::serve::{self, Defaults, ServeConfig, ServerHandle};
use fastdllm_core::{ForwardCall, ForwardObserver, ModelFamily, Observed};
use fastdllm_models::LoadedModel;
use proptest::prelude::*;
use serde_json::{json, Value};

fn defaults() -> Defaults {
    common::tiny_defaults(8)
}

/// Turns the bundled tiny LLaDA into a test-only model: a forward whose window holds the marker
/// token panics (a stand-in for any bug inside the engine).
struct PanicsOnMarker(u32);

impl ForwardObserver for PanicsOnMarker {
    fn forward(&self, call: ForwardCall<'_>) -> fastdllm_core::Result<Tensor> {
        let ids = call.input().tokens.flatten_all()?.to_vec1::<u32>()?;
        if ids.contains(&self.0) {
            panic!("test model: marker token {} in the window", self.0);
        }
        call.run()
    }
}

fn start() -> ServerHandle {
    let mut loaded: LoadedModel = fastdllm_models::load_model(
        &fastdllm_conformance::paths::default_model(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let marker = loaded.tokenizer.encode("!", false).unwrap()[0];
    loaded.model = Arc::new(Observed::new(loaded.model.clone(), PanicsOnMarker(marker)));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    serve::spawn(
        listener,
        loaded,
        ServeConfig::new("llada-tiny", defaults()),
        2,
    )
    .unwrap()
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    let cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Guards against a hang only (minutes); the requests take well under a second.
        .timeout_global(Some(Duration::from_secs(300)))
        .build();
    let mut r = ureq::Agent::new_with_config(cfg)
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

#[test]
fn a_panicking_row_fails_alone_and_the_next_request_succeeds() {
    let server = start();
    let url = format!("{}/v1/completions", server.url());
    let (status, body) = post(&url, &json!({"prompt": "boom!"}));
    assert_eq!(status, 500, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    assert!(msg.contains("request cmpl-"), "names the request: {msg}");
    assert!(msg.contains("panicked"), "{msg}");
    for _ in 0..2 {
        let (status, body) = post(&url, &json!({"prompt": "copy ab"}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "text_completion");
    }
    let cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build();
    let mut r = ureq::Agent::new_with_config(cfg)
        .get(format!("{}/health", server.url()))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let health: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["stats"]["failed_rows"], 1, "{health}");
    server.shutdown().unwrap();
}

/// An engine loop with a bug outside every per-request guard: it takes the first job, then
/// panics (the job's event channel is dropped with it).
fn engine_with_a_bug(mut ctx: fastdllm_cli::serve::worker::EngineContext) {
    let _job = ctx.jobs.blocking_recv();
    panic!("deliberate engine fault (test)");
}

fn get(url: &str) -> (u16, Value) {
    let cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build();
    let mut r = ureq::Agent::new_with_config(cfg).get(url).call().unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

#[test]
fn a_stopped_engine_is_a_503_with_the_reason_and_an_error_at_exit() {
    let loaded = fastdllm_models::load_model(
        &fastdllm_conformance::paths::default_model(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = serve::spawn_with(
        listener,
        loaded,
        ServeConfig::new("llada-tiny", defaults()),
        2,
        engine_with_a_bug,
    )
    .unwrap();
    let url = format!("{}/v1/completions", server.url());
    // The request the engine took when it died gets a 5xx OpenAI error, not a hang.
    let (status, body) = post(&url, &json!({"prompt": "copy ab"}));
    assert!((500..600).contains(&status), "{status}: {body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    // The panic unwinds (dropping the job's channel) before the worker's guard records the
    // stop, so wait for /health to report it: polled on the server's own state, the bound only
    // guards against a hang.
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let health = loop {
        let (status, health) = get(&format!("{}/health", server.url()));
        if status == 503 {
            break health;
        }
        assert_eq!(status, 200, "{health}");
        assert!(
            std::time::Instant::now() < deadline,
            "the engine stop was never reported"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(health["status"], "error", "{health}");
    let reason = health["reason"].as_str().unwrap();
    assert!(reason.contains("deliberate engine fault"), "{health}");
    let (status, body) = post(&url, &json!({"prompt": "copy ab"}));
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deliberate engine fault"),
        "{body}"
    );
    // The process's exit path: draining ends with an error naming the reason (`fastdllm serve`
    // turns it into a non-zero exit status).
    let err = server
        .shutdown()
        .expect_err("a stopped engine must fail the exit");
    assert!(
        format!("{err:#}").contains("deliberate engine fault"),
        "{err:#}"
    );
}

#[test]
fn huge_max_tokens_is_a_400_and_the_server_keeps_serving() {
    let server = start();
    let url = format!("{}/v1/completions", server.url());
    for max in [18446744073709551608u64, u64::MAX, 1 << 40] {
        let (status, body) = post(&url, &json!({"prompt": "x", "max_tokens": max}));
        assert_eq!(status, 400, "max_tokens {max}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    let (status, body) = post(&url, &json!({"prompt": "copy ab"}));
    assert_eq!(status, 200, "{body}");
    server.shutdown().unwrap();
}

fn edge_int() -> impl Strategy<Value = Option<usize>> {
    proptest::option::of(prop_oneof![
        Just(0usize),
        Just(1usize),
        0usize..256,
        (0usize..64).prop_map(|k| usize::MAX - k),
        (0u32..64).prop_map(|s| 1usize << s),
        any::<usize>(),
    ])
}

fn edge_float() -> impl Strategy<Value = Option<f64>> {
    proptest::option::of(prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE),
        Just(f64::MIN_POSITIVE / 4.0),
        Just(1e-38),
        Just(f64::MAX),
        Just(f64::MIN),
        any::<f64>(),
        -2.0f64..2.0,
    ])
}

proptest! {
    #[test]
    fn request_resolution_never_panics(
        max_tokens in edge_int(), gen_length in edge_int(), block_length in edge_int(),
        steps in edge_int(), threshold in edge_float(), factor in edge_float(),
        temperature in edge_float(), seed in proptest::option::of(any::<u64>()),
        cache in proptest::option::of(prop_oneof![
            Just("none".to_string()), Just("prefix".to_string()), Just("dual".to_string()),
            Just("bogus".to_string()),
        ]),
        dream in any::<bool>(),
        max_completion_tokens in edge_int(), top_p in edge_float(), top_k in edge_int(),
    ) {
        let knobs = Knobs {
            max_tokens, max_completion_tokens, gen_length, block_length, steps, cache, threshold,
            factor, temperature, top_p, top_k, seed, ..Knobs::default()
        };
        let family = if dream { ModelFamily::Dream } else { ModelFamily::Llada };
        match fastdllm_cli::serve::validate::resolve_knobs(&knobs, &defaults(), family) {
            Ok(s) => {
                prop_assert!(s.validate(family).is_ok());
                prop_assert!(s.decode.validate().is_ok());
            }
            Err(e) => prop_assert_eq!(e.status.as_u16(), 400, "{}", e),
        }
    }
}

#[test]
fn an_impossible_queue_capacity_is_an_error_not_a_panic() {
    let loaded = fastdllm_models::load_model(
        &fastdllm_conformance::paths::default_model(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    for cap in [0, usize::MAX, usize::MAX >> 2] {
        let mut cfg = ServeConfig::new("llada-tiny", defaults());
        cfg.queue_capacity = cap;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = match serve::spawn(listener, loaded.clone(), cfg, 1) {
            Ok(_) => panic!("queue_capacity {cap} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("queue_capacity") && e.contains(&cap.to_string()),
            "{e}"
        );
    }
}

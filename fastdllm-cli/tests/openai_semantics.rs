//! OpenAI semantics of `fastdllm serve` and its `GET /metrics` (README.md, "Serving"): answer
//! limits, stop strings (also streamed), prompt lists and `n`, seeds, sampler filters,
//! unsupported and unknown fields, `stream_options`. Driven over loopback with a plain HTTP
//! client (ureq) and the bundled tiny models; answers are compared with solo engine runs.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use candle_core::{DType, Device};
use fastdllm_cli::serve::{self, Defaults, ServeConfig, ServerHandle};
use fastdllm_core::{DecodeConfig, GenerateOptions, Rng};
use fastdllm_engine::{self as engine, trim_at_eos, GenerationSettings};
use fastdllm_models::LoadedModel;
use fastdllm_sampler::ProposerConfig;
use serde_json::{json, Value};

/// The CLI's defaults: gen_length 32, block_length 8, steps = gen_length, no cache, fixed rule.
fn defaults() -> GenerationSettings {
    common::tiny_defaults(32).settings
}

fn start(model: &str) -> ServerHandle {
    let cfg = ServeConfig::new(
        model,
        Defaults {
            settings: defaults(),
            explicit_steps: false,
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    serve::spawn(listener, common::load_bundled(model), cfg, 2).unwrap()
}

fn agent() -> ureq::Agent {
    let cfg = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build();
    ureq::Agent::new_with_config(cfg)
}

fn post(url: &str, body: &Value) -> (u16, String) {
    let mut r = agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let (s, t) = post(url, body);
    (
        s,
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
    )
}

fn get_text(url: &str) -> (u16, String) {
    let mut r = agent().get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// The JSON chunks of an SSE body, and whether it ended with `[DONE]`.
fn sse_chunks(text: &str) -> (Vec<Value>, bool) {
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .collect();
    let done = data.last() == Some(&"[DONE]");
    let chunks = data
        .iter()
        .filter(|d| **d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    (chunks, done)
}

#[track_caller]
fn assert_400(status: u16, body: &Value, param: &str) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["param"], param, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(param)),
        "the message does not name '{param}': {body}"
    );
}

/// The engine's answer ids for `prompt` alone (trimmed at EOS) under `s`.
fn solo_ids(loaded: &LoadedModel, prompt: &[u32], s: &GenerationSettings) -> Vec<u32> {
    let gen = engine::run(
        loaded.model.as_ref(),
        &[prompt.to_vec()],
        &[s.seed],
        s,
        &GenerateOptions::default(),
    )
    .unwrap();
    trim_at_eos(&gen.rows[0].generated, &loaded.model.spec().eos_token_ids).to_vec()
}

fn texts(v: &Value) -> Vec<String> {
    v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["text"]
                .as_str()
                .or(c["message"]["content"].as_str())
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn max_tokens_takes_any_count_and_cuts_the_answer() {
    let loaded = common::load_bundled("llada-tiny");
    let srv = start("llada-tiny");
    let c = format!("{}/v1/completions", srv.url());
    let prompt = "copy 3dbk......=";
    let ids = loaded.tokenizer.encode(prompt, true).unwrap();
    // The 8-token canvas (max_tokens rounded up to a block) answers "3dbk" + EOS.
    let full = solo_ids(
        &loaded,
        &ids,
        &GenerationSettings {
            decode: DecodeConfig {
                gen_length: 8,
                steps: 8,
                ..defaults().decode
            },
            ..defaults()
        },
    );
    assert_eq!(loaded.tokenizer.decode(&full).unwrap(), "3dbk");
    for (field, limit) in [
        ("max_tokens", 3),
        ("max_completion_tokens", 2),
        ("max_tokens", 7),
    ] {
        let (s, v) = post_json(&c, &json!({"prompt": prompt, field: limit}));
        assert_eq!(s, 200, "{v}");
        let want_len = full.len().min(limit);
        let want = loaded.tokenizer.decode(&full[..want_len]).unwrap();
        let ch = &v["choices"][0];
        assert_eq!(ch["text"], want, "{field} = {limit}: {v}");
        let reason = if limit < full.len() { "length" } else { "stop" };
        assert_eq!(ch["finish_reason"], reason, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], want_len, "{v}");
    }
    // `max_tokens` 30, not a multiple of the block: a canvas of 32, answered.
    let (s, v) = post_json(&c, &json!({"prompt": prompt, "max_tokens": 30}));
    assert_eq!((s, texts(&v)), (200, vec!["3dbk".to_string()]), "{v}");
    // Disagreeing names, zero, and a limit beyond an explicit canvas are 400s naming the field.
    let (s, v) = post_json(
        &c,
        &json!({"prompt": prompt, "max_tokens": 3, "max_completion_tokens": 4}),
    );
    assert_400(s, &v, "max_completion_tokens");
    let (s, v) = post_json(&c, &json!({"prompt": prompt, "max_tokens": 0}));
    assert_400(s, &v, "max_tokens");
    let (s, v) = post_json(
        &c,
        &json!({"prompt": prompt, "max_tokens": 20, "gen_length": 16}),
    );
    assert_400(s, &v, "max_tokens");
    let (s, v) = post_json(&c, &json!({"prompt": prompt, "max_tokens": -1}));
    assert_400(s, &v, "max_tokens");
}

#[test]
fn without_max_tokens_the_canvas_is_the_room_left_and_errors_name_what_was_sent() {
    let loaded = common::load_bundled("llada-tiny");
    let srv = start("llada-tiny");
    let c = format!("{}/v1/completions", srv.url());
    let max = loaded.model.spec().max_seq_len;
    // A prompt that fits the context (512) but not with the default canvas of 32: 12 tokens are
    // left, one block of 8 fits.
    let prompt = format!("copy 3dbk{}=", ".".repeat(max - 12 - 11));
    let ids = loaded.tokenizer.encode(&prompt, true).unwrap();
    assert_eq!(ids.len(), max - 12);
    let fit = GenerationSettings {
        decode: DecodeConfig {
            gen_length: 8,
            steps: 8,
            ..defaults().decode
        },
        ..defaults()
    };
    let want = loaded
        .tokenizer
        .decode(&solo_ids(&loaded, &ids, &fit))
        .unwrap();
    let (s, v) = post_json(&c, &json!({"prompt": prompt}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(texts(&v), vec![want.clone()], "{v}");
    // Chat: the same rule (the rendered conversation is the prompt).
    let (s, v) = post_json(
        &format!("{}/v1/chat/completions", srv.url()),
        &json!({"messages": [{"role": "user", "content": prompt}]}),
    );
    assert_eq!(s, 200, "{v}");
    // No room for one block: a 400 naming the prompt, never gen_length the client did not send.
    let tight = format!("copy 3dbk{}=", ".".repeat(max - 4 - 11));
    let (s, v) = post_json(&c, &json!({"prompt": tight}));
    assert_400(s, &v, "prompt");
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(!m.contains("gen_length"), "{m}");
    // A canvas the client sent is kept, and its error names the field as sent.
    let (s, v) = post_json(&c, &json!({"prompt": prompt, "max_tokens": 30}));
    assert_400(s, &v, "prompt");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("max_tokens = 30") && !m.contains("gen_length"),
        "{m}"
    );
    let (s, v) = post_json(&c, &json!({"prompt": prompt, "gen_length": 16}));
    assert_400(s, &v, "prompt");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gen_length = 16"),
        "{v}"
    );
    // max_tokens within the room: answered as before.
    let (s, v) = post_json(&c, &json!({"prompt": prompt, "max_tokens": 8}));
    assert_eq!((s, texts(&v)), (200, vec![want]), "{v}");
}

#[test]
fn stop_cuts_at_the_first_match_and_streams_never_overshoot() {
    let srv = start("llada-tiny");
    let url = srv.url();
    let c = format!("{url}/v1/completions");
    let prompt = "copy 3dbk......=";
    for (stop, want) in [
        (json!("b"), "3d"),
        (json!(["k", "d"]), "3"),
        (json!(["zz"]), "3dbk"),
        (json!([]), "3dbk"),
    ] {
        let (s, v) = post_json(&c, &json!({"prompt": prompt, "stop": stop}));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["choices"][0]["text"], want, "stop {stop}: {v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    }
    // A stop string spanning two blocks: block 0 ends in "d", a prefix of "dbk"; the stream
    // holds it back and never sends it.
    for path in ["/v1/completions", "/v1/chat/completions"] {
        let mut body = json!({"stop": "dbk", "block_length": 2, "stream": true});
        if path == "/v1/completions" {
            body["prompt"] = json!(prompt);
        } else {
            body["messages"] = json!([{"role": "user", "content": prompt}]);
        }
        let mut plain = body.clone();
        plain["stream"] = json!(false);
        let (s, v) = post_json(&format!("{url}{path}"), &plain);
        assert_eq!(s, 200, "{v}");
        let want = texts(&v)[0].clone();
        let (s, t) = post(&format!("{url}{path}"), &body);
        assert_eq!(s, 200, "{t}");
        let (chunks, done) = sse_chunks(&t);
        assert!(done, "{t}");
        let mut joined = String::new();
        for ch in &chunks {
            let piece = ch["choices"][0]["text"]
                .as_str()
                .or(ch["choices"][0]["delta"]["content"].as_str())
                .unwrap_or("");
            joined.push_str(piece);
            assert!(
                want.starts_with(joined.as_str()),
                "streamed '{joined}' beyond the answer '{want}': {t}"
            );
        }
        assert_eq!(joined, want, "{t}");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop", "{t}");
    }
    // The plain answer of the completion is "3" (cut before "dbk").
    let (_, v) = post_json(
        &c,
        &json!({"prompt": prompt, "stop": "dbk", "block_length": 2}),
    );
    assert_eq!(texts(&v), vec!["3".to_string()]);
    // lm-eval's local-completions sends 5 (its `until` plus the tokenizer's EOS): honoured, as
    // every count up to MAX_STOP = 16; 17 is a 400 naming `stop` and the cap.
    let five = json!(["\n\n", "Question:", "<|endoftext|>", "b", "zz"]);
    let (s, v) = post_json(&c, &json!({"prompt": prompt, "stop": five}));
    assert_eq!((s, texts(&v)), (200, vec!["3d".to_string()]), "{v}");
    let mut many: Vec<String> = (0..15).map(|i| format!("zz{i}")).collect();
    many.push("k".into());
    let (s, v) = post_json(&c, &json!({"prompt": prompt, "stop": many}));
    assert_eq!((s, texts(&v)), (200, vec!["3db".to_string()]), "{v}");
    many.push("zz".into());
    let (s, v) = post_json(&c, &json!({"prompt": prompt, "stop": many}));
    assert_400(s, &v, "stop");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 16"),
        "{v}"
    );
    let (s, v) = post_json(&c, &json!({"prompt": prompt, "stop": [""]}));
    assert_400(s, &v, "stop");
    let (s, v) = post_json(&c, &json!({"prompt": prompt, "stop": 5}));
    assert_400(s, &v, "stop");
}

#[test]
fn prompt_lists_token_ids_and_n_are_choices() {
    let loaded = common::load_bundled("llada-tiny");
    let srv = start("llada-tiny");
    let c = format!("{}/v1/completions", srv.url());
    let ids = |p: &str| loaded.tokenizer.encode(p, true).unwrap();
    let (s, v) = post_json(&c, &json!({"prompt": ["copy 3dbk......=", "4+9="], "n": 2}));
    assert_eq!(s, 200, "{v}");
    let idx: Vec<u64> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2, 3]);
    assert_eq!(texts(&v), vec!["3dbk", "3dbk", "13", "13"]);
    let p_tokens = ids("copy 3dbk......=").len() + ids("4+9=").len();
    assert_eq!(v["usage"]["prompt_tokens"], p_tokens, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4 + 4 + 2 + 2, "{v}");
    // Token ids: one list, and a list of lists.
    let (s, v) = post_json(&c, &json!({"prompt": ids("4+9=")}));
    assert_eq!((s, texts(&v)), (200, vec!["13".to_string()]), "{v}");
    let (s, v) = post_json(
        &c,
        &json!({"prompt": [ids("4+9="), ids("copy xq7......=")]}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(texts(&v)[0], "13");
    assert_eq!(v["choices"][1]["index"], 1);
    // Chat: n choices of one conversation.
    let (s, v) = post_json(
        &format!("{}/v1/chat/completions", srv.url()),
        &json!({"messages": [{"role": "user", "content": "4+9="}], "n": 3}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    assert_eq!(v["choices"][2]["index"], 2);
    // Bad shapes name `prompt` / `n`.
    for bad in [
        json!([]),
        json!([[]]),
        json!([1, -2]),
        json!(["a", 1]),
        json!({"a": 1}),
    ] {
        let (s, v) = post_json(&c, &json!({"prompt": bad}));
        assert_400(s, &v, "prompt");
    }
    let (s, v) = post_json(&c, &json!({"prompt": [ids("4+9=")[0], 999_999]}));
    assert_400(s, &v, "prompt");
    for n in [0, 129] {
        let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "n": n}));
        assert_400(s, &v, "n");
    }
}

#[test]
fn seeds_reproduce_and_default_to_fresh_draws() {
    let loaded = common::load_bundled("llada-tiny");
    let srv = start("llada-tiny");
    let c = format!("{}/v1/completions", srv.url());
    let prompt = "copy 3dbk......=";
    let body = json!({"prompt": prompt, "temperature": 5.0, "seed": 42, "n": 2});
    let (_, a) = post_json(&c, &body);
    let (_, b) = post_json(&c, &body);
    assert_eq!(texts(&a), texts(&b), "same seed, same answers");
    // Choice j draws from Rng::row_seed(seed, j): choice 0 is the seed's own solo run.
    let ids = loaded.tokenizer.encode(prompt, true).unwrap();
    for j in 0..2 {
        let s = GenerationSettings {
            seed: Rng::row_seed(42, j),
            proposer: ProposerConfig {
                temperature: 5.0,
                ..ProposerConfig::default()
            },
            ..defaults()
        };
        let want = loaded
            .tokenizer
            .decode(&solo_ids(&loaded, &ids, &s))
            .unwrap();
        assert_eq!(texts(&a)[j], want, "choice {j}");
    }
    assert_ne!(texts(&a)[0], texts(&a)[1], "choices share a stream: {a}");
    // Without a seed: fresh draws per request and per choice.
    let body = json!({"prompt": prompt, "temperature": 5.0, "n": 4});
    let (_, x) = post_json(&c, &body);
    let (_, y) = post_json(&c, &body);
    let mut all = texts(&x);
    all.extend(texts(&y));
    all.sort();
    all.dedup();
    assert!(all.len() > 1, "every unseeded draw is the same: {x} {y}");
}

#[test]
fn cli_batch_rows_draw_distinct_streams() {
    // `fastdllm generate` seeds row i with row_seeds(seed, 0, n)[i]: identical prompts at a high
    // temperature differ, and row 0 equals the single-prompt run with the seed itself.
    let loaded = common::load_bundled("llada-tiny");
    let ids = loaded.tokenizer.encode("copy 3dbk......=", true).unwrap();
    let s = GenerationSettings {
        seed: 7,
        proposer: ProposerConfig {
            temperature: 5.0,
            ..ProposerConfig::default()
        },
        ..defaults()
    };
    let seeds = engine::row_seeds(s.seed, 0, 3);
    assert_eq!(seeds[0], 7);
    let gen = engine::run(
        loaded.model.as_ref(),
        &[ids.clone(), ids.clone(), ids.clone()],
        &seeds,
        &s,
        &GenerateOptions::default(),
    )
    .unwrap();
    assert_ne!(gen.rows[0].generated, gen.rows[1].generated);
    assert_ne!(gen.rows[1].generated, gen.rows[2].generated);
    let solo = engine::run(
        loaded.model.as_ref(),
        &[ids],
        &[7],
        &s,
        &GenerateOptions::default(),
    )
    .unwrap();
    assert_eq!(solo.rows[0].generated, gen.rows[0].generated);
}

#[test]
fn top_p_top_k_follow_the_family_sampler() {
    let llada = start("llada-tiny");
    let c = format!("{}/v1/completions", llada.url());
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "top_p": 0.9}));
    assert_400(s, &v, "top_p");
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "top_k": 3}));
    assert_400(s, &v, "top_k");
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "top_p": 1.0}));
    assert_eq!((s, texts(&v)), (200, vec!["13".to_string()]), "{v}");
    drop(llada);
    // Dream's sampler has both: with top_k = 1 a draw has one candidate, so every choice (each
    // its own seed) is the same even at a high temperature; without it they differ.
    let dream = start("dream-tiny");
    let c = format!("{}/v1/completions", dream.url());
    let (s, v) = post_json(
        &c,
        &json!({"prompt": "copy 3dbk......=", "temperature": 50.0, "top_k": 1, "n": 3}),
    );
    assert_eq!(s, 200, "{v}");
    let t = texts(&v);
    assert!(
        t.iter().all(|x| *x == t[0]),
        "top_k = 1 was not applied: {v}"
    );
    let (s, v) = post_json(
        &c,
        &json!({"prompt": "copy 3dbk......=", "temperature": 50.0, "n": 3}),
    );
    assert_eq!(s, 200, "{v}");
    let t = texts(&v);
    assert!(
        t.iter().any(|x| *x != t[0]),
        "temperature 50 without top_k drew the same: {v}"
    );
    let (s, v) = post_json(
        &c,
        &json!({"prompt": "4+9=", "temperature": 1.0, "top_p": 0.5, "seed": 1}),
    );
    assert_eq!(s, 200, "{v}");
    for bad in [json!(0.0), json!(1.5)] {
        let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "top_p": bad}));
        assert_400(s, &v, "top_p");
    }
}

#[test]
fn unsupported_fields_are_400s_unless_neutral_and_unknown_fields_are_rejected() {
    let srv = start("llada-tiny");
    let c = format!("{}/v1/completions", srv.url());
    let chat = format!("{}/v1/chat/completions", srv.url());
    let msg = json!([{"role": "user", "content": "4+9="}]);
    for (url, field, value) in [
        (&c, "logprobs", json!(6)),
        (&c, "echo", json!(true)),
        (&c, "best_of", json!(3)),
        (&c, "suffix", json!("x")),
        (&c, "frequency_penalty", json!(0.5)),
        (&c, "presence_penalty", json!(-1)),
        (&c, "logit_bias", json!({"5": 10})),
        (&chat, "top_logprobs", json!(21)),
        (&chat, "top_logprobs", json!(3)),
        (
            &chat,
            "tools",
            json!([{"type": "function", "function": {"name": "f"}}]),
        ),
        (&chat, "tool_choice", json!("auto")),
        (&chat, "response_format", json!({"type": "json_object"})),
        (&c, "foo", json!(1)),
        (&c, "stream_options", json!({"include_usage": true})),
    ] {
        let mut body = if url == &c {
            json!({"prompt": "4+9="})
        } else {
            json!({"messages": msg})
        };
        body[field] = value.clone();
        let (s, v) = post_json(url, &body);
        assert_400(s, &v, field);
    }
    // Neutral values are accepted.
    let (s, v) = post_json(
        &c,
        &json!({"prompt": "4+9=", "logprobs": null, "echo": false, "best_of": 1, "suffix": null,
                "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "user": "u1"}),
    );
    assert_eq!((s, texts(&v)), (200, vec!["13".to_string()]), "{v}");
    let (s, v) = post_json(
        &chat,
        &json!({"messages": msg, "logprobs": false, "tools": [], "tool_choice": "none",
                "response_format": {"type": "text"}}),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["choices"][0]["logprobs"].is_null(), "{v}");
}

/// Every optional field typed `T | null` by OpenAI (SDK wrappers send the nulls) reads `null`
/// as "not given": the same answer as without the field.
#[test]
fn optional_fields_accept_null_as_not_given() {
    let srv = start("llada-tiny");
    let c = format!("{}/v1/completions", srv.url());
    let chat = format!("{}/v1/chat/completions", srv.url());
    let nulls = json!({"model": null, "stream": null, "stream_options": null, "provisional": null,
        "n": null, "stop": null, "max_tokens": null, "max_completion_tokens": null, "seed": null,
        "temperature": null, "top_p": null, "user": null, "gen_length": null,
        "block_length": null, "steps": null, "cache": null, "threshold": null, "factor": null,
        "top_k": null, "logprobs": null, "echo": null});
    let with_nulls = |mut body: Value| {
        for (k, v) in nulls.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let (s, v) = post_json(&c, &with_nulls(json!({"prompt": "4+9="})));
    assert_eq!((s, texts(&v)), (200, vec!["13".to_string()]), "{v}");
    let msg = json!([{"role": "user", "content": "4+9="}]);
    let (s, plain) = post_json(&chat, &json!({"messages": msg}));
    assert_eq!(s, 200, "{plain}");
    let (s, v) = post_json(&chat, &with_nulls(json!({"messages": msg})));
    assert_eq!((s, texts(&v)), (200, texts(&plain)), "{v}");
    // Streamed, with the options' own fields null: no usage chunk.
    for body in [
        json!({"prompt": "4+9=", "stream": true, "provisional": null,
               "stream_options": {"include_usage": null}}),
        json!({"prompt": "4+9=", "stream": true, "stream_options": null}),
    ] {
        let (s, t) = post(&c, &body);
        assert_eq!(s, 200, "{t}");
        let (chunks, done) = sse_chunks(&t);
        assert!(done, "{t}");
        assert!(chunks.iter().all(|c| c.get("usage").is_none()), "{t}");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, "13", "{t}");
    }
}

/// Several refused fields: one error naming every one of them (the unsupported OpenAI fields
/// first, then the unknown ones, each by name). `stream_options.include_obfuscation`: its
/// neutral `false` is accepted, `true` refused.
#[test]
fn refusals_name_every_field_and_include_obfuscation_false_is_neutral() {
    let srv = start("llada-tiny");
    let c = format!("{}/v1/completions", srv.url());
    let (s, v) = post_json(
        &c,
        &json!({"prompt": "4+9=", "zeta": 1, "suffix": "x", "echo": true, "alpha": 0}),
    );
    assert_400(s, &v, "echo");
    assert_eq!(v["error"]["code"], "unsupported_parameter", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    let at = |f: &str| m.find(f).unwrap_or_else(|| panic!("{f} not named: {m}"));
    assert!(
        at("echo") < at("suffix") && at("suffix") < at("alpha") && at("alpha") < at("zeta"),
        "{m}"
    );
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "zeta": 1, "alpha": 0}));
    assert_400(s, &v, "alpha");
    assert_eq!(v["error"]["code"], "unknown_parameter", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("zeta"),
        "{v}"
    );
    for opts in [
        json!({"include_obfuscation": false}),
        json!({"include_obfuscation": null, "include_usage": false}),
    ] {
        let (s, t) = post(
            &c,
            &json!({"prompt": "4+9=", "stream": true, "stream_options": opts}),
        );
        assert_eq!(s, 200, "{t}");
        assert!(sse_chunks(&t).1, "{t}");
    }
    let (s, v) = post_json(
        &c,
        &json!({"prompt": "4+9=", "stream": true, "stream_options": {"include_obfuscation": true}}),
    );
    assert_400(s, &v, "stream_options.include_obfuscation");
    assert_eq!(v["error"]["code"], "unsupported_parameter", "{v}");
}

/// An empty completion prompt is accepted, as OpenAI and vLLM take it: the tokenizer's BOS
/// starts it (the answer is the engine's for the prompt of BOS alone). A tokenizer that adds
/// no special token gives no id at all: a 400 naming `prompt`.
#[test]
fn empty_completion_prompt_starts_from_bos() {
    let loaded = common::load_bundled("llada-tiny");
    let bos = loaded.tokenizer.encode("", true).unwrap();
    assert_eq!(bos.len(), 1, "{bos:?}");
    let want = loaded
        .tokenizer
        .decode(&solo_ids(&loaded, &bos, &defaults()))
        .unwrap();
    let srv = start("llada-tiny");
    let c = format!("{}/v1/completions", srv.url());
    let (s, v) = post_json(&c, &json!({"prompt": "", "seed": 0}));
    assert_eq!((s, texts(&v)), (200, vec![want]), "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 1, "{v}");
    let (s, v) = post_json(&c, &json!({"prompt": ["", "4+9="], "seed": 0}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(texts(&v)[1], "13", "{v}");
    // The same model with its tokenizer's post-processor (the BOS) removed.
    let mut loaded = common::load_bundled("llada-tiny");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/llada-tiny/tokenizer.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["post_processor"] = Value::Null;
    let dir = std::env::temp_dir().join(format!("fastdllm-no-bos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokenizer.json");
    std::fs::write(&file, json.to_string()).unwrap();
    loaded.tokenizer = fastdllm_models::Tokenizer::from_file(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(loaded.tokenizer.encode("", true).unwrap().is_empty());
    let cfg = ServeConfig::new(
        "llada-tiny",
        Defaults {
            settings: defaults(),
            explicit_steps: false,
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let srv = serve::spawn(listener, loaded, cfg, 2).unwrap();
    let (s, v) = post_json(
        &format!("{}/v1/completions", srv.url()),
        &json!({"prompt": ""}),
    );
    assert_400(s, &v, "prompt");
}

#[test]
fn stream_options_include_usage_ends_with_a_usage_chunk() {
    let srv = start("llada-tiny");
    let url = srv.url();
    for (path, mut body) in [
        (
            "/v1/completions",
            json!({"prompt": ["4+9=", "copy 3dbk......="]}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "4+9="}], "n": 2}),
        ),
    ] {
        let (s, plain) = post_json(&format!("{url}{path}"), &body);
        assert_eq!(s, 200, "{plain}");
        body["stream"] = json!(true);
        // Without include_usage: no usage field at all.
        let (_, t) = post(&format!("{url}{path}"), &body);
        let (chunks, done) = sse_chunks(&t);
        assert!(
            done && chunks.iter().all(|c| c.get("usage").is_none()),
            "{t}"
        );
        body["stream_options"] = json!({"include_usage": true});
        let (s, t) = post(&format!("{url}{path}"), &body);
        assert_eq!(s, 200, "{t}");
        let (chunks, done) = sse_chunks(&t);
        assert!(done, "{t}");
        let (last, rest) = chunks.split_last().unwrap();
        assert_eq!(last["choices"], json!([]), "{t}");
        assert_eq!(last["usage"], plain["usage"], "{t}");
        for ch in rest {
            assert!(ch["usage"].is_null() && ch.get("usage").is_some(), "{ch}");
        }
        // Every choice finishes once, with its own index.
        let mut finished: Vec<u64> = rest
            .iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .map(|c| c["choices"][0]["index"].as_u64().unwrap())
            .collect();
        finished.sort();
        assert_eq!(finished, vec![0, 1], "{t}");
    }
}

/// The requests that OpenAI-style clients (lm-evaluation-harness, chat front ends) send answer as
/// OpenAI would, or are a 400 naming the field: system and multi-turn chats, content parts,
/// `stop`, `max_completion_tokens`, and unsupported fields such as `logprobs`.
#[test]
fn client_requests_answer_as_openai_would() {
    let srv = start("llada-tiny");
    let url = srv.url();
    let c = format!("{url}/v1/completions");
    let chat = format!("{url}/v1/chat/completions");
    // Chat with a system message, a multi-turn history, content as parts: answered, or (where
    // the chat template support is not in this build) a 400 naming `messages`.
    for messages in [
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "4+9="}]),
        json!([{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"},
               {"role": "user", "content": "4+9="}]),
        json!([{"role": "user", "content": [{"type": "text", "text": "4+9="}]}]),
    ] {
        let (s, v) = post_json(&chat, &json!({"messages": messages}));
        if s != 200 {
            assert_400(s, &v, "messages");
        }
    }
    // stop honoured (lm-eval's `until`), max_completion_tokens honoured.
    let (s, v) = post_json(&c, &json!({"prompt": "copy 3dbk......=", "stop": ["b"]}));
    assert_eq!((s, texts(&v)), (200, vec!["3d".to_string()]), "{v}");
    let (s, v) = post_json(
        &chat,
        &json!({"messages": [{"role": "user", "content": "copy 3dbk......="}], "max_completion_tokens": 2}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 2, "{v}");
    // logprobs out of range, top_logprobs without logprobs, echo, top_p (LLaDA): never
    // silently dropped.
    for (url, field, value) in [
        (&c, "logprobs", json!(9)),
        (&chat, "top_logprobs", json!(2)),
        (&c, "echo", json!(true)),
        (&c, "top_p", json!(0.95)),
    ] {
        let mut body = if url == &c {
            json!({"prompt": "4+9="})
        } else {
            json!({"messages": [{"role": "user", "content": "4+9="}]})
        };
        body[field] = value;
        let (s, v) = post_json(url, &body);
        assert_400(s, &v, field);
    }
    // max_tokens 100 and 7; lm-eval's max_gen_toks 30.
    for m in [100, 7, 30] {
        let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "max_tokens": m}));
        assert_eq!((s, texts(&v)), (200, vec!["13".to_string()]), "{v}");
    }
    // A list of 4 strings (lm-eval batch 4), token ids, n = 2.
    let (s, v) = post_json(
        &c,
        &json!({"prompt": ["4+9=", "7+5=", "12+30=", "copy a......="], "max_tokens": 30, "stop": ["\n"]}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 4);
    let (s, v) = post_json(&c, &json!({"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 8}));
    assert_eq!(s, 200, "{v}");
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "n": 2}));
    assert_eq!(
        (s, texts(&v)),
        (200, vec!["13".to_string(), "13".to_string()])
    );
    // temperature > 0 without seed: not the same text every call (checked in
    // seeds_reproduce_and_default_to_fresh_draws).
}

#[test]
fn metrics_count_requests_and_engine_work() {
    let srv = start("llada-tiny");
    let url = srv.url();
    let (s, before) = get_text(&format!("{url}/metrics"));
    assert_eq!(s, 200);
    assert!(
        before.contains("# TYPE fastdllm_output_tokens_total counter"),
        "{before}"
    );
    let (s, v) = post_json(
        &format!("{url}/v1/completions"),
        &json!({"prompt": "copy 3dbk......=", "cache": "dual", "threshold": 0.9}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, _) = post_json(
        &format!("{url}/v1/completions"),
        &json!({"prompt": "4+9=", "bogus": 1}),
    );
    assert_eq!(s, 400);
    // The value of an unlabelled sample `name value`.
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    // A row leaves (and is answered) as soon as its answer is final, mid-round; the worker
    // adds the round's forwards when the round ends. Read once the engine is idle.
    let after = loop {
        let (_, m) = get_text(&format!("{url}/metrics"));
        if value(&m, "fastdllm_running_rows") == 0.0 && value(&m, "fastdllm_forwards_total") > 0.0 {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        value(&after, "fastdllm_output_tokens_total"),
        4.0,
        "{after}"
    );
    assert_eq!(value(&after, "fastdllm_rows_total"), 1.0, "{after}");
    assert!(value(&after, "fastdllm_forwards_total") >= 1.0, "{after}");
    assert!(
        value(&after, "fastdllm_tokens_per_forward_count") >= 1.0,
        "{after}"
    );
    assert!(
        value(&after, "fastdllm_time_to_first_block_seconds_count") >= 1.0,
        "{after}"
    );
    assert!(
        value(&after, "fastdllm_generation_duration_seconds_count") >= 1.0,
        "{after}"
    );
    for line in [
        "fastdllm_http_requests_total{route=\"/v1/completions\",status=\"200\"} 1",
        "fastdllm_http_requests_total{route=\"/v1/completions\",status=\"400\"} 1",
        "fastdllm_http_requests_total{route=\"/metrics\",status=\"200\"} 1",
        "fastdllm_step_duration_seconds_count{cache=\"dual\"}",
        "fastdllm_http_request_duration_seconds_count{route=\"/v1/completions\"} 2",
        "fastdllm_queue_depth 0",
        "fastdllm_running_rows",
        "fastdllm_joined_rows_total 0",
    ] {
        assert!(after.contains(line), "missing '{line}':\n{after}");
    }
}

/// A test-only model that "knows" one answer: at answer position `i` its logits pick
/// `answer[i]` (EOS past the end), whatever the canvas holds. Needs the whole canvas in each
/// forward (no cache) and a single row, so that the window is `prompt + gen_length` long.
struct ScriptedAnswer {
    spec: fastdllm_core::ModelSpec,
    answer: Vec<u32>,
    gen_length: usize,
}

impl fastdllm_core::DiffusionLm for ScriptedAnswer {
    fn spec(&self) -> &fastdllm_core::ModelSpec {
        &self.spec
    }
    fn device(&self) -> &Device {
        &Device::Cpu
    }
    fn dtype(&self) -> DType {
        DType::F32
    }
    fn forward(
        &self,
        input: &fastdllm_core::ForwardInput,
        _kv: &mut dyn fastdllm_core::KvView,
    ) -> fastdllm_core::Result<candle_core::Tensor> {
        let (batch, window) = input.tokens.dims2()?;
        let prompt_len = (input.window_start + window).saturating_sub(self.gen_length);
        let vocab = self.spec.vocab_size;
        let rows = input.logits_rows.as_slice();
        let mut logits = vec![0f32; batch * rows.len() * vocab];
        for b in 0..batch {
            for (k, &r) in rows.iter().enumerate() {
                let pos = input.window_start + r;
                let target = pos
                    .checked_sub(prompt_len)
                    .and_then(|i| self.answer.get(i).copied())
                    .unwrap_or(self.spec.eos_token_ids[0]);
                logits[(b * rows.len() + k) * vocab + target as usize] = 20.0;
            }
        }
        Ok(candle_core::Tensor::from_vec(
            logits,
            (batch, rows.len(), vocab),
            &Device::Cpu,
        )?)
    }
}

#[test]
fn streamed_text_never_splits_a_character() {
    use fastdllm_conformance::tiny::{byte_level_bpe, BPE_EOS_TOKEN, BPE_MASK_TOKEN};
    // With a byte-level BPE, a character's bytes can span two blocks.
    let text = "a你✓😀é 你好✓ ok";
    let tok = byte_level_bpe();
    let answer = tok.encode(text, false).unwrap();
    let (block, gen_length) = (2, answer.len().div_ceil(2) * 2 + 2);
    assert!(
        (1..answer.len() / block).any(|b| tok
            .decode(&answer[..b * block])
            .unwrap()
            .contains('\u{FFFD}')),
        "the premise: some block boundary falls inside a character"
    );
    let (eos, mask) = (
        tok.token_id(BPE_EOS_TOKEN).unwrap(),
        tok.token_id(BPE_MASK_TOKEN).unwrap(),
    );
    let mut loaded = common::load_bundled("llada-tiny");
    loaded.model = std::sync::Arc::new(ScriptedAnswer {
        spec: fastdllm_core::ModelSpec {
            family: fastdllm_core::ModelFamily::Llada,
            vocab_size: tok.vocab_size(),
            mask_token_id: mask,
            eos_token_ids: vec![eos],
            pad_token_id: eos,
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 2,
            max_seq_len: 512,
        },
        answer,
        gen_length,
    });
    loaded.tokenizer = tok;
    loaded.info.bos_token_id = None;
    loaded.info.chat_template = fastdllm_models::ChatTemplate::None;
    let cfg = ServeConfig::new(
        "scripted",
        Defaults {
            settings: defaults(),
            explicit_steps: false,
        },
    );
    let server = serve::spawn(TcpListener::bind("127.0.0.1:0").unwrap(), loaded, cfg, 2).unwrap();
    let url = format!("{}/v1/completions", server.url());
    let body = json!({
        "prompt": "hi", "max_tokens": gen_length, "gen_length": gen_length,
        "block_length": block, "steps": gen_length, "cache": "none",
    });
    let (status, whole) = post_json(&url, &body);
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["choices"][0]["text"], text, "{whole}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, sse) = post(&url, &streamed);
    assert_eq!(status, 200, "{sse}");
    let (chunks, done) = sse_chunks(&sse);
    assert!(done, "{sse}");
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert!(pieces.len() > 2, "streamed in several chunks: {pieces:?}");
    for p in &pieces {
        assert!(
            !p.contains('\u{FFFD}'),
            "a broken character in {p:?} of {pieces:?}"
        );
    }
    assert_eq!(pieces.concat(), text, "{pieces:?}");
    server.shutdown().unwrap();
}

/// `logprobs` in OpenAI's wire shapes, streamed and not: chat `logprobs.content[]` (token,
/// logprob, bytes, top_logprobs sorted, the committed token first at temperature 0, mass <= 1,
/// tokens joining to the answer); completions `tokens`, `token_logprobs`, `top_logprobs`
/// (dicts), `text_offset`; the streamed last chunk carries the same entries; `echo` stays a 400.
#[test]
fn logprobs_come_in_openai_shapes_streamed_and_not() {
    let srv = start("llada-tiny");
    let c = format!("{}/v1/completions", srv.url());
    let chat = format!("{}/v1/chat/completions", srv.url());
    let msg = json!([{"role": "user", "content": "copy 3dbk......="}]);
    let (s, v) = post_json(
        &chat,
        &json!({"messages": msg, "logprobs": true, "top_logprobs": 5}),
    );
    assert_eq!(s, 200, "{v}");
    let ch = &v["choices"][0];
    let content = ch["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), v["usage"]["completion_tokens"], "{v}");
    assert!(ch["logprobs"]["refusal"].is_null(), "{v}");
    let mut joined = String::new();
    for e in content {
        let token = e["token"].as_str().unwrap();
        joined.push_str(token);
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0, "{e}");
        let bytes: Vec<u8> = serde_json::from_value(e["bytes"].clone()).unwrap();
        assert_eq!(bytes, token.as_bytes());
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5, "{e}");
        let tl: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(tl.windows(2).all(|w| w[0] >= w[1]), "{e}");
        assert!(
            tl.iter().map(|l| l.exp()).sum::<f64>() <= 1.0 + 1e-12,
            "{e}"
        );
        assert_eq!(
            top[0]["token"], token,
            "greedy: the committed token is the likeliest: {e}"
        );
        assert_eq!(top[0]["logprob"].as_f64(), Some(lp), "{e}");
    }
    assert_eq!(ch["message"]["content"], joined.as_str(), "{v}");
    // Without top_logprobs: the entries with empty alternatives; without logprobs: null.
    let (_, v0) = post_json(&chat, &json!({"messages": msg, "logprobs": true}));
    let c0 = v0["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(c0.len(), content.len());
    assert!(c0.iter().all(|e| e["top_logprobs"] == json!([])), "{v0}");
    let (_, off) = post_json(&chat, &json!({"messages": msg, "top_logprobs": 0}));
    assert!(off["choices"][0]["logprobs"].is_null(), "{off}");
    // Streamed: the choice's last chunk carries the same entries.
    let (s, text) = post(
        &chat,
        &json!({"messages": msg, "logprobs": true, "top_logprobs": 5, "stream": true}),
    );
    assert_eq!(s, 200, "{text}");
    let (chunks, done) = sse_chunks(&text);
    assert!(done);
    let last = chunks
        .iter()
        .find(|k| !k["choices"][0]["finish_reason"].is_null())
        .unwrap();
    assert_eq!(
        last["choices"][0]["logprobs"]["content"],
        json!(content),
        "{last}"
    );

    // Completions: logprobs = 3.
    let (s, v) = post_json(&c, &json!({"prompt": "copy 3dbk......=", "logprobs": 3}));
    assert_eq!(s, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let tokens: Vec<String> = serde_json::from_value(lp["tokens"].clone()).unwrap();
    assert_eq!(
        tokens.concat(),
        v["choices"][0]["text"].as_str().unwrap(),
        "{v}"
    );
    assert_eq!(tokens.len(), v["usage"]["completion_tokens"], "{v}");
    let token_lps: Vec<f64> = serde_json::from_value(lp["token_logprobs"].clone()).unwrap();
    let offsets: Vec<usize> = serde_json::from_value(lp["text_offset"].clone()).unwrap();
    let tops = lp["top_logprobs"].as_array().unwrap();
    assert_eq!(
        (token_lps.len(), offsets.len(), tops.len()),
        (tokens.len(), tokens.len(), tokens.len())
    );
    let mut at = 0;
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(offsets[i], at);
        at += t.len();
        let top = tops[i].as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3, "{v}");
        assert_eq!(
            top.get(t).and_then(Value::as_f64),
            Some(token_lps[i]),
            "{v}"
        );
    }
    // The chat's values are the same distribution's (same prompt text, same settings).
    let chat_lps: Vec<f64> = content
        .iter()
        .map(|e| e["logprob"].as_f64().unwrap())
        .collect();
    assert_eq!(token_lps, chat_lps);
    // Streamed completions: the last chunk's logprobs.
    let (_, text) = post(
        &c,
        &json!({"prompt": "copy 3dbk......=", "logprobs": 3, "stream": true}),
    );
    let (chunks, _) = sse_chunks(&text);
    let last = chunks
        .iter()
        .find(|k| !k["choices"][0]["finish_reason"].is_null())
        .unwrap();
    assert_eq!(last["choices"][0]["logprobs"], *lp, "{last}");
    // echo stays refused (no likelihood scoring of the prompt).
    let (s, v) = post_json(&c, &json!({"prompt": "4+9=", "logprobs": 1, "echo": true}));
    assert_400(s, &v, "echo");
}

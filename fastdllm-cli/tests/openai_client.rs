//! A third-party client against `fastdllm serve` (docs/CLIENTS.md): the `async-openai` crate
//! (0.43, plain HTTP) on loopback, through its own request builders, response types, SSE stream
//! and error type: completions (task answers, `finish_reason`, `usage`, `n`, prompt lists,
//! `stop`, `max_tokens`), streamed completions, a multi-turn chat (system, user, assistant,
//! user) rendered by a Jinja chat template, streamed chat, and 400 / 404 error objects parsed
//! into `OpenAIError::ApiError`.
//!
//! Every client call runs under a generous timeout (a hang fails the test, a slow machine does
//! not).

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::{ApiErrorResponse, OpenAIError};
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
    ChatCompletionStreamOptions, CompletionFinishReason, CreateChatCompletionRequestArgs,
    FinishReason, Prompt, Role, StopConfiguration,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::Client;
use fastdllm_cli::serve::{self, Defaults, ServeConfig, ServerHandle};
use fastdllm_models::{ChatTemplate, JinjaTemplate, LoadedModel, Message, TemplateTokens};
use tokio_stream::StreamExt;

/// The id the test servers serve (async-openai always sends `model`).
const MODEL: &str = "llada-tiny";

/// Longest any one client call may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(600);

fn start(loaded: LoadedModel) -> ServerHandle {
    let cfg = ServeConfig::new(
        MODEL,
        Defaults {
            settings: common::tiny_defaults(32).settings,
            explicit_steps: false,
        },
    );
    serve::spawn(TcpListener::bind("127.0.0.1:0").unwrap(), loaded, cfg, 2).unwrap()
}

fn client(server: &ServerHandle) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", server.url()))
            .with_api_key("unused"),
    )
}

/// Runs `f` on a runtime of its own (the server has another), failing on a hang.
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { tokio::time::timeout(HANG, f).await })
        .expect("a client call hung")
}

/// The first `k` tasks of tasks/tiny-arith.jsonl: (prompt, answer).
fn tasks(k: usize) -> Vec<(String, String)> {
    let path = fastdllm_conformance::paths::repo_root().join("tasks/tiny-arith.jsonl");
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .take(k)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["prompt"].as_str().unwrap().to_string(),
                v["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The error of a failed call, which must be the client's `OpenAIError::ApiError` with
/// `status` and `param` (named in the message).
#[track_caller]
fn api_error<T>(r: Result<T, OpenAIError>, status: u16, param: Option<&str>) -> ApiErrorResponse {
    match r {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), status, "{e}");
            assert_eq!(e.api_error.param.as_deref(), param, "{e}");
            if let Some(p) = param {
                assert!(e.api_error.message.contains(p), "message without {p}: {e}");
            }
            e
        }
        Err(other) => panic!("expected OpenAIError::ApiError, got {other:?}"),
        Ok(_) => panic!("expected OpenAIError::ApiError, the request succeeded"),
    }
}

#[test]
fn completions_through_async_openai() {
    let loaded = common::load_tiny();
    let count = |text: &str| loaded.tokenizer.encode(text, false).unwrap().len() as u32;
    let prompt_len = |p: &str| loaded.tokenizer.encode(p, true).unwrap().len() as u32;
    let four = tasks(4);
    let server = start(common::load_tiny());
    let client = client(&server);
    block_on(async {
        // One prompt at a time: the task's answer, finish_reason stop (the model's end of
        // sequence), usage.
        for (prompt, answer) in &four {
            let req = CreateCompletionRequestArgs::default()
                .model(MODEL)
                .prompt(Prompt::String(prompt.clone()))
                .build()
                .unwrap();
            let r = client.completions().create(req).await.unwrap();
            assert_eq!(r.object, "text_completion");
            assert_eq!(r.model, MODEL);
            assert_eq!(r.choices.len(), 1, "{r:?}");
            let c = &r.choices[0];
            assert_eq!((c.index, c.text.as_str()), (0, answer.as_str()), "{prompt}");
            assert_eq!(c.finish_reason, Some(CompletionFinishReason::Stop), "{r:?}");
            assert!(c.logprobs.is_none());
            let u = r.usage.clone().expect("usage");
            assert_eq!(u.prompt_tokens, prompt_len(prompt), "{r:?}");
            assert_eq!(u.completion_tokens, count(answer), "{r:?}");
            assert_eq!(u.total_tokens, u.prompt_tokens + u.completion_tokens);
        }

        // `n: 2` over a list of two prompts: index = prompt * n + j.
        let req = CreateCompletionRequestArgs::default()
            .model(MODEL)
            .prompt(Prompt::StringArray(vec![
                four[0].0.clone(),
                four[2].0.clone(),
            ]))
            .n(2)
            .build()
            .unwrap();
        let r = client.completions().create(req).await.unwrap();
        let got: Vec<(u32, &str)> = r
            .choices
            .iter()
            .map(|c| (c.index, c.text.as_str()))
            .collect();
        let (a, b) = (four[0].1.as_str(), four[2].1.as_str());
        assert_eq!(got, vec![(0, a), (1, a), (2, b), (3, b)], "{r:?}");
        let u = r.usage.clone().unwrap();
        assert_eq!(
            u.prompt_tokens,
            prompt_len(&four[0].0) + prompt_len(&four[2].0)
        );
        assert_eq!(u.completion_tokens, 2 * (count(a) + count(b)));

        // `n: 2` of one prompt.
        let req = CreateCompletionRequestArgs::default()
            .model(MODEL)
            .prompt(four[1].0.as_str())
            .n(2)
            .build()
            .unwrap();
        let r = client.completions().create(req).await.unwrap();
        let got: Vec<(u32, &str)> = r
            .choices
            .iter()
            .map(|c| (c.index, c.text.as_str()))
            .collect();
        assert_eq!(got, vec![(0, four[1].1.as_str()), (1, four[1].1.as_str())]);

        // Token ids (the prompt encoded as the server would).
        let ids = loaded.tokenizer.encode(&four[0].0, true).unwrap();
        let req = CreateCompletionRequestArgs::default()
            .model(MODEL)
            .prompt(Prompt::IntegerArray(ids))
            .build()
            .unwrap();
        let r = client.completions().create(req).await.unwrap();
        assert_eq!(r.choices[0].text, four[0].1);

        // `stop`: cut before the first match, finish_reason stop; a list of strings too.
        let (prompt, answer) = &four[0];
        let cut = answer.len() / 2;
        let stop_at = &answer[cut..=cut];
        let want = &answer[..answer.find(stop_at).unwrap()];
        for stop in [
            StopConfiguration::String(stop_at.to_string()),
            StopConfiguration::StringArray(vec!["zz".into(), stop_at.to_string()]),
        ] {
            let req = CreateCompletionRequestArgs::default()
                .model(MODEL)
                .prompt(prompt.as_str())
                .stop(stop.clone())
                .build()
                .unwrap();
            let r = client.completions().create(req).await.unwrap();
            let c = &r.choices[0];
            assert_eq!(c.text, want, "stop {stop:?}: {r:?}");
            assert_eq!(c.finish_reason, Some(CompletionFinishReason::Stop));
            // The stop string's tokens count (as OpenAI counts them; serve/answer.rs).
            let through_stop = &answer[..want.len() + stop_at.len()];
            assert_eq!(r.usage.unwrap().completion_tokens, count(through_stop));
        }

        // `max_tokens` below the answer: cut, finish_reason length.
        let req = CreateCompletionRequestArgs::default()
            .model(MODEL)
            .prompt(prompt.as_str())
            .max_tokens(2u32)
            .build()
            .unwrap();
        let r = client.completions().create(req).await.unwrap();
        assert_eq!(r.choices[0].text, answer[..2], "{r:?}");
        assert_eq!(
            r.choices[0].finish_reason,
            Some(CompletionFinishReason::Length)
        );
    });
}

#[test]
fn streamed_completions_join_to_the_plain_answer() {
    let server = start(common::load_tiny());
    let client = client(&server);
    let four = tasks(4);
    block_on(async {
        let prompts = Prompt::StringArray(vec![four[0].0.clone(), four[3].0.clone()]);
        let plain = CreateCompletionRequestArgs::default()
            .model(MODEL)
            .prompt(prompts.clone())
            .n(2)
            .build()
            .unwrap();
        let whole = client.completions().create(plain).await.unwrap();
        assert_eq!(whole.choices.len(), 4);
        assert_eq!(whole.choices[0].text, four[0].1);
        assert_eq!(whole.choices[2].text, four[3].1);
        // With and without include_usage. The second prompt's answer is longer than a block
        // (8): it comes in two text chunks.
        for include_usage in [false, true] {
            let mut req = CreateCompletionRequestArgs::default();
            req.model(MODEL).prompt(prompts.clone()).n(2);
            if include_usage {
                req.stream_options(ChatCompletionStreamOptions {
                    include_usage: Some(true),
                    include_obfuscation: None,
                });
            }
            let mut stream = client
                .completions()
                .create_stream(req.build().unwrap())
                .await
                .unwrap();
            let mut texts: BTreeMap<u32, String> = BTreeMap::new();
            let mut finish: BTreeMap<u32, CompletionFinishReason> = BTreeMap::new();
            let mut pieces: BTreeMap<u32, usize> = BTreeMap::new();
            let mut usage = None;
            // The stream ends (the client stops at `[DONE]` or at the end of the body); one that
            // never ends hits the timeout.
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.unwrap();
                assert_eq!(chunk.object, "text_completion");
                if chunk.choices.is_empty() {
                    assert!(include_usage, "a chunk without choices: {chunk:?}");
                    assert!(usage.is_none(), "two usage chunks");
                    usage = chunk.usage.clone();
                    continue;
                }
                assert!(usage.is_none(), "a chunk after the usage chunk: {chunk:?}");
                for c in &chunk.choices {
                    assert!(
                        !finish.contains_key(&c.index),
                        "text after finish: {chunk:?}"
                    );
                    texts.entry(c.index).or_default().push_str(&c.text);
                    *pieces.entry(c.index).or_default() += usize::from(!c.text.is_empty());
                    if let Some(f) = c.finish_reason {
                        finish.insert(c.index, f);
                    }
                }
            }
            let want: BTreeMap<u32, String> = whole
                .choices
                .iter()
                .map(|c| (c.index, c.text.clone()))
                .collect();
            assert_eq!(texts, want, "include_usage {include_usage}");
            let reasons: Vec<_> = finish.values().copied().collect();
            assert_eq!(reasons, vec![CompletionFinishReason::Stop; 4]);
            assert!(four[3].1.len() > 8, "the premise: an answer of two blocks");
            // Text streams as it commits (several pieces), never all at the end.
            assert!(pieces[&2] >= 2, "{pieces:?}");
            assert!(pieces[&3] >= 2, "{pieces:?}");
            assert_eq!(usage, include_usage.then(|| whole.usage.clone().unwrap()));
        }
    });
}

/// A chat template for the tiny tokenizer (whose vocabulary has no chat tokens): each turn opens
/// with a reserved token of its role; an unknown role is refused by the template.
const TINY_CHAT_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}\
{% if m.role == 'system' %}<|reserved_0|>{% elif m.role == 'user' %}<|reserved_1|>\
{% elif m.role == 'assistant' %}<|reserved_2|>{% else %}{{ raise_exception('role ' ~ m.role) }}{% endif %}\
{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|reserved_2|>{% endif %}";

#[test]
fn multi_turn_chat_through_async_openai() {
    let mut loaded = common::load_tiny();
    assert_eq!(
        loaded.info.chat_template,
        ChatTemplate::None,
        "the premise: llada-tiny has no chat template of its own"
    );
    let template = JinjaTemplate::new(
        TINY_CHAT_TEMPLATE,
        "openai_client.rs",
        TemplateTokens {
            bos_token: Some("<|startoftext|>".into()),
            eos_token: Some("<|endoftext|>".into()),
            prepend_bos: false,
        },
    )
    .unwrap();
    loaded.info.chat_template = ChatTemplate::Jinja(template);
    let four = tasks(4);
    let turns = [
        ("system", "be brief."),
        ("user", four[0].0.as_str()),
        ("assistant", four[0].1.as_str()),
        ("user", four[1].0.as_str()),
    ];
    // What the server must do with the history: render it (every turn, in order), encode the
    // text without the tokenizer's own BOS (the template writes it).
    let history: Vec<Message> = turns.iter().map(|(r, c)| Message::new(*r, *c)).collect();
    let rendered = loaded.info.chat_template.render(&history).unwrap();
    assert_eq!(
        rendered,
        format!(
            "<|startoftext|><|reserved_0|>be brief.<|reserved_1|>{}<|reserved_2|>{}<|reserved_1|>{}<|reserved_2|>",
            four[0].0, four[0].1, four[1].0
        )
    );
    let ids = loaded.tokenizer.encode(&rendered, false).unwrap();
    assert!(
        !ids.contains(&loaded.tokenizer.token_id("<|unk|>").unwrap()),
        "{rendered}"
    );
    let (template, tokenizer) = (loaded.info.chat_template.clone(), loaded.tokenizer.clone());
    let server = start(loaded);
    let client = client(&server);
    let messages: Vec<ChatCompletionRequestMessage> = vec![
        ChatCompletionRequestSystemMessageArgs::default()
            .content(turns[0].1)
            .build()
            .unwrap()
            .into(),
        ChatCompletionRequestUserMessageArgs::default()
            .content(turns[1].1)
            .build()
            .unwrap()
            .into(),
        ChatCompletionRequestAssistantMessageArgs::default()
            .content(turns[2].1)
            .build()
            .unwrap()
            .into(),
        ChatCompletionRequestUserMessageArgs::default()
            .content(turns[3].1)
            .build()
            .unwrap()
            .into(),
    ];
    block_on(async {
        // The same prompt as a completion of the rendered ids: the answer the chat must give.
        let req = CreateCompletionRequestArgs::default()
            .model(MODEL)
            .prompt(Prompt::IntegerArray(ids.clone()))
            .build()
            .unwrap();
        let want = client.completions().create(req).await.unwrap();
        let want_text = want.choices[0].text.clone();
        // (The tiny model was never trained on chats: its answer is some text, but a fixed one.)
        assert!(!want_text.is_empty(), "{want:?}");

        let req = CreateChatCompletionRequestArgs::default()
            .model(MODEL)
            .messages(messages.clone())
            .n(2)
            .build()
            .unwrap();
        let r = client.chat().create(req).await.unwrap();
        assert_eq!(r.object, "chat.completion");
        assert_eq!(r.model, MODEL);
        assert_eq!(r.choices.len(), 2, "{r:?}");
        for (j, c) in r.choices.iter().enumerate() {
            assert_eq!(c.index, j as u32);
            assert_eq!(c.message.role, Role::Assistant);
            assert_eq!(
                c.message.content.as_deref(),
                Some(want_text.as_str()),
                "{r:?}"
            );
            assert_eq!(c.finish_reason, Some(FinishReason::Stop), "{r:?}");
        }
        let u = r.usage.clone().unwrap();
        assert_eq!(
            u.prompt_tokens as usize,
            ids.len(),
            "the rendered history: {r:?}"
        );
        assert_eq!(
            u.completion_tokens,
            2 * want.usage.unwrap().completion_tokens,
            "{r:?}"
        );

        // Streamed: a role delta first, content deltas joining to the same answer, one finish.
        let req = CreateChatCompletionRequestArgs::default()
            .model(MODEL)
            .messages(messages.clone())
            .stream_options(ChatCompletionStreamOptions {
                include_usage: Some(true),
                include_obfuscation: None,
            })
            .build()
            .unwrap();
        let mut stream = client.chat().create_stream(req).await.unwrap();
        let (mut text, mut roles, mut finishes, mut usage) = (String::new(), 0, Vec::new(), None);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            assert_eq!(chunk.object, "chat.completion.chunk");
            if chunk.choices.is_empty() {
                usage = chunk.usage.clone();
                continue;
            }
            for c in &chunk.choices {
                assert_eq!(c.index, 0);
                if let Some(role) = c.delta.role {
                    assert_eq!((role, text.as_str()), (Role::Assistant, ""));
                    roles += 1;
                }
                text.push_str(c.delta.content.as_deref().unwrap_or(""));
                finishes.extend(c.finish_reason);
            }
        }
        assert_eq!(roles, 1);
        assert_eq!(text, want_text);
        assert_eq!(finishes, vec![FinishReason::Stop]);
        let usage = usage.expect("the usage chunk");
        assert_eq!(usage.prompt_tokens as usize, ids.len());
        assert_eq!(
            usage.completion_tokens,
            r.usage.unwrap().completion_tokens / 2
        );

        // A `developer` message (OpenAI's newer name of `system`) is read as `system`.
        let req = CreateChatCompletionRequestArgs::default()
            .model(MODEL)
            .messages(vec![
                async_openai::types::chat::ChatCompletionRequestDeveloperMessageArgs::default()
                    .content("x")
                    .build()
                    .unwrap()
                    .into(),
            ])
            .build()
            .unwrap();
        let r = client.chat().create(req).await.unwrap();
        let system = template.render(&[Message::new("system", "x")]).unwrap();
        let system_ids = tokenizer.encode(&system, false).unwrap();
        assert_eq!(
            r.usage.clone().unwrap().prompt_tokens as usize,
            system_ids.len(),
            "{system}"
        );
        let req = CreateCompletionRequestArgs::default()
            .model(MODEL)
            .prompt(Prompt::IntegerArray(system_ids))
            .build()
            .unwrap();
        let as_system = client.completions().create(req).await.unwrap();
        assert_eq!(r.choices.len(), 1, "{r:?}");
        assert_eq!(
            r.choices[0].message.content.as_deref(),
            Some(as_system.choices[0].text.as_str()),
            "{r:?}"
        );
    });
}

#[test]
fn errors_come_back_as_openai_api_errors() {
    let server = start(common::load_tiny());
    let client = client(&server);
    block_on(async {
        // A field this server cannot honour: 400 unsupported_parameter naming it.
        let req = CreateCompletionRequestArgs::default()
            .model(MODEL)
            .prompt("4+9=")
            .echo(true)
            .build()
            .unwrap();
        let e = api_error(client.completions().create(req).await, 400, Some("echo")).api_error;
        assert_eq!(e.r#type.as_deref(), Some("invalid_request_error"));
        assert_eq!(e.code.as_deref(), Some("unsupported_parameter"));
        // A value out of range.
        let req = CreateCompletionRequestArgs::default()
            .model(MODEL)
            .prompt("4+9=")
            .temperature(-1.0)
            .build()
            .unwrap();
        let e = api_error(
            client.completions().create(req).await,
            400,
            Some("temperature"),
        )
        .api_error;
        assert_eq!(e.r#type.as_deref(), Some("invalid_request_error"));
        assert_eq!(e.code, None);
        // A streamed request fails before its stream starts.
        let req = CreateChatCompletionRequestArgs::default()
            .model(MODEL)
            .messages(vec![ChatCompletionRequestUserMessageArgs::default()
                .content("4+9=")
                .build()
                .unwrap()
                .into()])
            .temperature(-1.0)
            .build()
            .unwrap();
        let e = api_error(
            client.chat().create_stream(req).await,
            400,
            Some("temperature"),
        )
        .api_error;
        assert_eq!(e.r#type.as_deref(), Some("invalid_request_error"));
        // Another model: 404 model_not_found.
        let req = CreateCompletionRequestArgs::default()
            .model("gpt-4o")
            .prompt("4+9=")
            .build()
            .unwrap();
        let e = api_error(client.completions().create(req).await, 404, Some("model"));
        assert_eq!(e.api_error.code.as_deref(), Some("model_not_found"));
        assert!(e.api_error.message.contains("gpt-4o"), "{e}");
        // The client's display of the error carries the server's fields.
        let shown = OpenAIError::ApiError(e).to_string();
        assert!(
            shown.contains("(param: model)") && shown.contains("(code: model_not_found)"),
            "{shown}"
        );
    });
}

/// What guidance and eval harnesses read through a typed client: chat `logprobs` /
/// `top_logprobs` parsed into async-openai's `ChatChoiceLogprobs`, completions `logprobs: N`
/// into its `Logprobs`, and 5 stop strings (lm-eval's `until` plus EOS) accepted.
#[test]
fn logprobs_and_many_stops_through_async_openai() {
    let server = start(common::load_tiny());
    let client = client(&server);
    let four = tasks(4);
    block_on(async {
        let (prompt, answer) = &four[0];
        let req = CreateChatCompletionRequestArgs::default()
            .model(MODEL)
            .messages(vec![ChatCompletionRequestUserMessageArgs::default()
                .content(prompt.as_str())
                .build()
                .unwrap()
                .into()])
            .logprobs(true)
            .top_logprobs(3u8)
            .build()
            .unwrap();
        let r = client.chat().create(req).await.unwrap();
        let c = &r.choices[0];
        assert_eq!(c.message.content.as_deref(), Some(answer.as_str()), "{r:?}");
        let content = c
            .logprobs
            .clone()
            .and_then(|l| l.content)
            .expect("logprobs.content");
        assert_eq!(content.len() as u32, r.usage.unwrap().completion_tokens);
        let joined: String = content.iter().map(|t| t.token.as_str()).collect();
        assert_eq!(&joined, answer);
        for t in &content {
            assert_eq!(t.bytes.as_deref(), Some(t.token.as_bytes()));
            assert_eq!(t.top_logprobs.len(), 3, "{t:?}");
            assert_eq!(t.top_logprobs[0].token, t.token, "greedy: {t:?}");
            assert!(t.logprob <= 0.0);
        }
        let req = CreateCompletionRequestArgs::default()
            .model(MODEL)
            .prompt(prompt.as_str())
            .logprobs(2u8)
            .stop(StopConfiguration::StringArray(
                ["\n\n", "Question:", "</s>", "<|im_end|>", "<|endoftext|>"]
                    .map(String::from)
                    .to_vec(),
            ))
            .build()
            .unwrap();
        let r = client.completions().create(req).await.unwrap();
        let c = &r.choices[0];
        assert_eq!(&c.text, answer, "{r:?}");
        let lp = c.logprobs.clone().expect("logprobs");
        assert_eq!(lp.tokens.concat(), *answer);
        assert_eq!(lp.token_logprobs.len(), lp.tokens.len());
        assert_eq!(lp.text_offset.len(), lp.tokens.len());
        assert!(lp
            .top_logprobs
            .iter()
            .all(|t| t.as_object().is_some_and(|o| o.len() <= 2)));
    });
}

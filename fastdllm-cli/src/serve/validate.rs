//! The one validation step of a generation request: from the body's bytes to what the engine
//! runs ([`Validated`]), or an OpenAI-style 4xx error naming the field ([`ApiError`]).
//!
//! In order ([`Validator::completion`], [`Validator::chat`]): the body is parsed as a JSON
//! object and its field names are checked ([`parse_request`]: unknown fields and OpenAI fields
//! this server cannot honour are refused, [`check_fields`]); then `model` ([`check_model`]),
//! `n` ([`check_n`]), `stream_options` ([`check_stream_options`]), the prompts
//! ([`parse_prompts`]) or the chat messages ([`chat_messages`]), the knobs
//! ([`resolve_knobs`]); each prompt text is capped in bytes by the model's maximum length
//! ([`prompt_byte_cap`]) before it is tokenized, and tokenization (and the chat template) runs
//! on blocking threads, a bounded number at once ([`Validator::tokenize_all`]).
//!
//! Reference: the OpenAI completions / chat completions request bodies (the fields this server
//! supports: [`super::openai`]) and OpenAI's error answers ("Unrecognized request argument
//! supplied", `context_length_exceeded`, `model_not_found`).

use std::sync::Arc;

use fastdllm_core::{ModelFamily, ModelSpec, TokenId};
use fastdllm_models::{ChatTemplate, LoadedModel, Message, Tokenizer};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::errors::{clip, clip_quoted, ApiError};
use super::openai::{
    ChatRequest, CompletionRequest, Knobs, RequestMessage, Route, StopInput, StreamOptions,
    MAX_COMPLETION_LOGPROBS, MAX_TOP_LOGPROBS,
};
use super::worker::Generation;
use fastdllm_engine::GenerationSettings;

/// Most choices (`n`) per prompt, as OpenAI allows.
pub const MAX_N: usize = 128;
/// Most stop strings. OpenAI allows 4, but lm-evaluation-harness's `local-completions` sends 5
/// (its `until` plus the tokenizer's end-of-sequence text) and other clients more; the bound
/// keeps the matching after every step cheap (each string is searched in the committed text).
pub const MAX_STOP: usize = 16;

/// The server-side defaults of every knob (the `serve` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// Settings of a request that sets no knob (its `seed` is not used: a request without
    /// `seed` draws a fresh one per choice).
    pub settings: GenerationSettings,
    /// Whether `--steps` was given; if not, `steps` follows the request's `gen_length`.
    pub explicit_steps: bool,
}

/// One prompt of `POST /v1/completions`: text (the tokenizer's special tokens added) or ids.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    /// Raw text.
    Text(String),
    /// Token ids, used as they are.
    Ids(Vec<TokenId>),
}

/// A validated, tokenized request of either route.
#[derive(Debug, Clone)]
pub struct Validated {
    /// What the engine runs: the prompts' ids, `n`, the settings.
    pub generation: Generation,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

/// What both routes check alike ([`Validator::shared`]), before their prompts are tokenized.
struct Shared {
    n: usize,
    include_usage: bool,
    settings: GenerationSettings,
    /// The field the client sized the canvas with (`gen_length = 64`, `max_tokens = 30`);
    /// `None`: the canvas is the default, shrunk to the room a prompt leaves ([`Canvas`]).
    canvas_sent: Option<String>,
}

impl Shared {
    /// The canvas rule of this request's prompts.
    fn canvas(&self) -> Canvas {
        Canvas {
            settings: self.settings.clone(),
            sent: self.canvas_sent.clone(),
        }
    }

    /// The validated request of the tokenized `prompts`, each with the settings its room
    /// allows: the request runs with the smallest canvas of them (one request, one setting).
    fn validated(
        self,
        prompts: Vec<(Vec<TokenId>, GenerationSettings)>,
        knobs: &Knobs,
        stream: bool,
        provisional: bool,
        logprobs: Option<usize>,
    ) -> Validated {
        let settings = prompts
            .iter()
            .map(|(_, s)| s)
            .min_by_key(|s| s.decode.gen_length)
            .cloned()
            .unwrap_or(self.settings);
        Validated {
            generation: Generation {
                prompts: prompts.into_iter().map(|(ids, _)| ids).collect(),
                n: self.n,
                settings,
                seed: knobs.seed,
                stream,
                provisional,
                logprobs,
            },
            include_usage: self.include_usage,
        }
    }
}

/// How a prompt's answer canvas is sized: as the client sent it (`sent`: a prompt that leaves
/// less room is a 400 naming that field), or, when the client sent neither `gen_length` nor an
/// answer limit, the default canvas or the room the prompt leaves in the model's maximum
/// length, whichever is smaller, in whole blocks ([`GenerationSettings::fit_canvas`]), as OpenAI
/// servers answer in the room left.
#[derive(Debug, Clone)]
pub struct Canvas {
    /// The resolved settings (their `decode` is the canvas when it fits).
    pub settings: GenerationSettings,
    /// `gen_length = 64`, `max_tokens = 30`, ...: what the client sent; `None`: fit the room.
    pub sent: Option<String>,
}

impl Validated {
    /// The prompts' tokens (after templating; each prompt counted once, whatever `n`).
    pub fn prompt_tokens(&self) -> usize {
        self.generation.prompts.iter().map(Vec::len).sum()
    }
}

/// What validation needs of the server and its model: the served id, the knob defaults, the
/// tokenizer and chat template, and the bound on tokenizations at once.
pub struct Validator {
    model_id: String,
    defaults: Defaults,
    spec: ModelSpec,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    /// Tokenizations at once.
    tokenize: Arc<Semaphore>,
    /// Largest prompt or message text in bytes ([`prompt_byte_cap`]).
    prompt_byte_cap: usize,
}

impl Validator {
    /// The validator of `loaded` served as `model_id` with knob defaults `defaults`, tokenizing
    /// at most `tokenize_concurrency` prompts at once.
    pub fn new(
        loaded: &LoadedModel,
        model_id: &str,
        defaults: &Defaults,
        tokenize_concurrency: usize,
    ) -> Self {
        let spec = loaded.model.spec().clone();
        Validator {
            model_id: model_id.to_string(),
            defaults: defaults.clone(),
            prompt_byte_cap: prompt_byte_cap(&loaded.tokenizer, spec.max_seq_len),
            spec,
            tokenizer: loaded.tokenizer.clone(),
            template: loaded.info.chat_template.clone(),
            tokenize: Arc::new(Semaphore::new(
                tokenize_concurrency.clamp(1, Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Parses and validates a `POST /v1/completions` body, and tokenizes its prompts (every
    /// prompt gives `n` choices).
    pub async fn completion(
        self: &Arc<Self>,
        body: axum::body::Bytes,
    ) -> Result<Validated, ApiError> {
        let r: CompletionRequest = parse_request(&body, Route::Completions)?;
        drop(body);
        let shared = self.shared(
            r.model.as_deref(),
            r.n,
            r.stream,
            r.stream_options,
            &r.knobs,
        )?;
        let logprobs = match r.logprobs {
            Some(n) if n > MAX_COMPLETION_LOGPROBS => {
                return Err(bad(
                    "logprobs",
                    format!("logprobs = {n} must be in 0..={MAX_COMPLETION_LOGPROBS}"),
                ))
            }
            n => n,
        };
        let inputs = parse_prompts(&r.prompt)?;
        let canvas = shared.canvas();
        let many = inputs.len() > 1;
        let named = inputs
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let param = if many {
                    format!("prompt[{i}]")
                } else {
                    "prompt".to_string()
                };
                (p, param)
            })
            .collect();
        let prompts = self.tokenize_all(named, false, canvas).await?;
        Ok(shared.validated(prompts, &r.knobs, r.stream, r.provisional, logprobs))
    }

    /// The checks both routes share: `model`, `n`, `stream_options`, and the knobs resolved
    /// into the request's settings ([`resolve_knobs`]).
    fn shared(
        &self,
        model: Option<&str>,
        n: Option<usize>,
        stream: bool,
        stream_options: Option<StreamOptions>,
        knobs: &Knobs,
    ) -> Result<Shared, ApiError> {
        check_model(model, &self.model_id)?;
        let canvas_sent = match (
            knobs.gen_length,
            knobs.max_tokens,
            knobs.max_completion_tokens,
        ) {
            (Some(g), _, _) => Some(format!("gen_length = {g}")),
            (None, Some(m), _) => Some(format!("max_tokens = {m}")),
            (None, None, Some(m)) => Some(format!("max_completion_tokens = {m}")),
            (None, None, None) => None,
        };
        Ok(Shared {
            n: check_n(n)?,
            include_usage: check_stream_options(stream, stream_options)?,
            settings: resolve_knobs(knobs, &self.defaults, self.spec.family)?,
            canvas_sent,
        })
    }

    /// Parses and validates a `POST /v1/chat/completions` body, renders its messages with the
    /// model's chat template and tokenizes the conversation.
    pub async fn chat(self: &Arc<Self>, body: axum::body::Bytes) -> Result<Validated, ApiError> {
        let r: ChatRequest = parse_request(&body, Route::Chat)?;
        drop(body);
        let shared = self.shared(
            r.model.as_deref(),
            r.n,
            r.stream,
            r.stream_options,
            &r.knobs,
        )?;
        let logprobs = chat_logprobs(r.logprobs, r.top_logprobs)?;
        let messages = chat_messages(&r.messages)?;
        // The byte cap before rendering: the contents alone must fit.
        let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
        if bytes > self.prompt_byte_cap {
            return Err(ApiError::invalid(
                Some("messages"),
                format!(
                    "messages: the contents are {bytes} bytes: more than the {} bytes that can fit in the model's maximum sequence length of {} tokens",
                    self.prompt_byte_cap, self.spec.max_seq_len
                ),
            )
            .with_code("context_length_exceeded"));
        }
        // Rendered on a blocking thread (a template is a program; its cost grows with the
        // history).
        let v = self.clone();
        let text = tokio::task::spawn_blocking(move || v.template.render(&messages))
            .await
            .map_err(|e| ApiError::internal(format!("the chat template failed: {e}")))?
            .map_err(|e| ApiError::invalid(Some("messages"), format!("messages: {e}")))?;
        let prompts = self
            .tokenize_all(
                vec![(PromptInput::Text(text), "messages".to_string())],
                true,
                shared.canvas(),
            )
            .await?;
        Ok(shared.validated(prompts, &r.knobs, r.stream, r.provisional, logprobs))
    }

    /// The cheap checks of one prompt text, before any tokenization: a rendered chat not blank,
    /// and no text longer in bytes than the model's maximum length allows
    /// ([`prompt_byte_cap`]). A completion prompt may be empty or blank, as OpenAI and vLLM
    /// take it: the tokenizer's special tokens (BOS) still start it, and a text that tokenizes
    /// to no id at all is refused after tokenization ([`Validator::tokenize`]).
    fn check_text(&self, text: &str, field: &str, param: &str) -> Result<(), ApiError> {
        if field == "messages" && text.trim().is_empty() {
            return Err(ApiError::invalid(
                Some(field),
                format!("{param}: the prompt is empty"),
            ));
        }
        let cap = self.prompt_byte_cap;
        if text.len() > cap {
            return Err(ApiError::invalid(
                Some(field),
                format!(
                    "{param}: the prompt is {} bytes: more than the {cap} bytes that can fit in the model's maximum sequence length of {} tokens",
                    text.len(),
                    self.spec.max_seq_len
                ),
            )
            .with_code("context_length_exceeded"));
        }
        Ok(())
    }

    /// Tokenizes and checks one prompt (`param` names it in errors: `prompt`, `prompt[1]`,
    /// `messages`) and sizes its answer canvas ([`Canvas`]); returns the ids and the settings
    /// with that canvas. Blocking: called through [`Validator::tokenize_all`].
    ///
    /// Errors (400 `context_length_exceeded`, naming the prompt): a prompt and the canvas the
    /// client sent (named as sent) longer than the model's maximum length; without one, a
    /// prompt that leaves no room for one block.
    pub fn tokenize(
        &self,
        prompt: &PromptInput,
        templated: bool,
        param: &str,
        canvas: &Canvas,
    ) -> Result<(Vec<TokenId>, GenerationSettings), ApiError> {
        let field = if templated { "messages" } else { "prompt" };
        let bad = |m: String| ApiError::invalid(Some(field), m);
        let ids = match prompt {
            PromptInput::Text(text) => {
                self.check_text(text, field, param)?;
                // A chat's text is already rendered with the template (which adds its own BOS).
                let special = !templated || self.template.add_special_tokens();
                self.tokenizer
                    .encode(text, special)
                    .map_err(|e| bad(format!("{param}: cannot tokenize the prompt: {e}")))?
            }
            PromptInput::Ids(ids) => ids.clone(),
        };
        if ids.is_empty() {
            return Err(bad(format!(
                "{param}: the prompt is empty: it has no token (this tokenizer adds no BOS to an empty text)"
            )));
        }
        let max = self.spec.max_seq_len;
        let gen = canvas.settings.decode.gen_length;
        // Saturating: a sum past usize::MAX exceeds any model's maximum just the same.
        let total = ids.len().saturating_add(gen);
        let room = max.saturating_sub(ids.len());
        let settings = match &canvas.sent {
            Some(sent) if total > max => {
                return Err(bad(format!(
                    "{param}: the prompt has {} tokens and {sent} asks for an answer canvas of {gen}: {total} tokens exceed the model's maximum sequence length {max} (at most {room} answer tokens fit)",
                    ids.len(),
                ))
                .with_code("context_length_exceeded"));
            }
            Some(_) => canvas.settings.clone(),
            None => canvas.settings.fit_canvas(room).ok_or_else(|| {
                bad(format!(
                    "{param}: the prompt has {} tokens: the model's maximum sequence length {max} leaves {room}, less than one answer block of {} tokens",
                    ids.len(),
                    canvas.settings.decode.block_length,
                ))
                .with_code("context_length_exceeded")
            })?,
        };
        settings
            .decode
            .validate_prompt(&self.spec, &ids)
            .map_err(|e| bad(format!("{param}: {e}")))?;
        Ok((ids, settings))
    }

    /// Tokenizes a request's prompts (each with the name errors give it) on a blocking thread,
    /// at most `tokenize_concurrency` requests at once, after the cheap checks of every text: a
    /// large or slow prompt never stalls the async runtime.
    pub async fn tokenize_all(
        self: &Arc<Self>,
        inputs: Vec<(PromptInput, String)>,
        templated: bool,
        canvas: Canvas,
    ) -> Result<Vec<(Vec<TokenId>, GenerationSettings)>, ApiError> {
        let field = if templated { "messages" } else { "prompt" };
        for (p, param) in &inputs {
            if let PromptInput::Text(text) = p {
                self.check_text(text, field, param)?;
            }
        }
        let permit = self
            .tokenize
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::unavailable())?;
        let v = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            inputs
                .iter()
                .map(|(p, param)| v.tokenize(p, templated, param, &canvas))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ApiError::internal(format!("the tokenizer failed: {e}")))?
    }
}

/// The largest prompt text (bytes) that can fit in `max_seq_len` tokens
/// ([`Tokenizer::prompt_byte_cap`]).
pub fn prompt_byte_cap(tokenizer: &Tokenizer, max_seq_len: usize) -> usize {
    tokenizer.prompt_byte_cap(max_seq_len)
}

/// The conversation of `messages` for the chat template: roles checked (`developer` read as
/// `system`), content parts joined (text parts concatenated, as OpenAI reads them).
///
/// Errors (400, naming the field, e.g. `messages[1].content[0].type`): no messages, a role other
/// than system / developer / user / assistant, a content that is not a string or a list of text
/// parts, a non-text part (image, audio, file), a conversation whose contents are all blank.
pub fn chat_messages(messages: &[RequestMessage]) -> Result<Vec<Message>, ApiError> {
    if messages.is_empty() {
        return Err(bad(
            "messages",
            "messages is empty: send at least one message".into(),
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        // Tool calls before content: an assistant turn that calls a tool may have no content.
        for (key, value) in [
            ("tool_calls", &m.tool_calls),
            ("function_call", &m.function_call),
        ] {
            let given = match value {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Array(calls)) => !calls.is_empty(),
                Some(_) => true,
            };
            if given {
                return Err(bad(
                    &format!("messages[{i}].{key}"),
                    format!("messages[{i}].{key}: tool and function calls are not supported by this server (it has no tools); send the turn's text as content"),
                ));
            }
        }
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(bad(
                    &format!("messages[{i}].role"),
                    format!("role {other:?} is not supported: one of system, developer, user, assistant (tools and function calls are not supported)"),
                ))
            }
        };
        let field = format!("messages[{i}].content");
        let content = match &m.content {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(parts) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    let kind = part.get("type").and_then(|t| t.as_str());
                    match (kind, part.get("text")) {
                        (Some("text"), Some(serde_json::Value::String(t))) => text.push_str(t),
                        (Some("text"), _) => {
                            return Err(bad(
                                &format!("{field}[{j}].text"),
                                "a text part needs a string `text`".into(),
                            ))
                        }
                        (Some(other), _) => {
                            return Err(bad(
                                &format!("{field}[{j}].type"),
                                format!("content part type {other:?} is not supported: this model reads text parts only ({{\"type\": \"text\", \"text\": ...}})"),
                            ))
                        }
                        (None, _) => {
                            return Err(bad(
                                &format!("{field}[{j}].type"),
                                "a content part needs a `type` (only \"text\" is supported)".into(),
                            ))
                        }
                    }
                }
                text
            }
            serde_json::Value::Null => {
                return Err(bad(
                    &field,
                    "content is missing or null: give a string or a list of text parts".into(),
                ))
            }
            other => {
                return Err(bad(
                    &field,
                    format!("content must be a string or a list of text parts, got {other}"),
                ))
            }
        };
        let message = Message::new(role, content);
        out.push(match &m.name {
            Some(name) => message.with_name(name.clone()),
            None => message,
        });
    }
    if out.iter().all(|m| m.content.trim().is_empty()) {
        return Err(bad(
            "messages",
            "the prompt is empty: every message's content is blank".into(),
        ));
    }
    Ok(out)
}

/// A chat request's `logprobs` / `top_logprobs` as the engine's option: `None` unless
/// `logprobs` is true, else the number of alternatives (`top_logprobs`, default 0).
///
/// Errors (400 naming the field): `top_logprobs` above [`MAX_TOP_LOGPROBS`], or above 0
/// without `logprobs: true` (as OpenAI refuses it).
pub fn chat_logprobs(logprobs: bool, top: Option<usize>) -> Result<Option<usize>, ApiError> {
    match top {
        Some(n) if n > MAX_TOP_LOGPROBS => Err(bad(
            "top_logprobs",
            format!("top_logprobs = {n} must be in 0..={MAX_TOP_LOGPROBS}"),
        )),
        Some(n) if n > 0 && !logprobs => Err(bad(
            "top_logprobs",
            format!("top_logprobs = {n} needs logprobs = true"),
        )),
        _ => Ok(logprobs.then(|| top.unwrap_or(0))),
    }
}

/// Fields every generation route reads (OpenAI's and the extensions).
const COMMON_FIELDS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "temperature",
    "top_p",
    // OpenAI's end-user id: only the operator's logs would use it; it changes nothing.
    "user",
    // Extensions.
    "provisional",
    "gen_length",
    "block_length",
    "steps",
    "cache",
    "threshold",
    "factor",
    "top_k",
];

/// Whether a field's value is its neutral one (accepted and ignored).
type IsNeutral = fn(&Value) -> bool;

/// OpenAI fields this server cannot honour, with the test of their neutral value (accepted).
const UNSUPPORTED: &[(&str, IsNeutral)] = &[
    ("top_logprobs", |v| v.is_null() || v.as_u64() == Some(0)),
    ("echo", |v| v.is_null() || *v == Value::Bool(false)),
    ("best_of", |v| v.is_null() || v.as_u64() == Some(1)),
    ("suffix", |v| v.is_null() || v.as_str() == Some("")),
    ("tools", is_empty),
    ("tool_choice", |v| v.is_null() || v.as_str() == Some("none")),
    ("functions", is_empty),
    ("function_call", |v| {
        v.is_null() || v.as_str() == Some("none")
    }),
    ("parallel_tool_calls", Value::is_null),
    ("response_format", |v| {
        v.is_null() || v.get("type").and_then(Value::as_str) == Some("text")
    }),
    ("frequency_penalty", is_zero),
    ("presence_penalty", is_zero),
    ("logit_bias", is_empty),
];

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn is_zero(v: &Value) -> bool {
    v.is_null() || v.as_f64() == Some(0.0)
}

/// Parses `body` as JSON object: malformed JSON is a 400.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(o) => Ok(o),
        _ => Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        )),
    }
}

/// Checks every field name of a `route` request: an OpenAI field this server cannot honour is a
/// 400 `unsupported_parameter` unless it holds its neutral value; an unknown field is a 400
/// `unknown_parameter` (OpenAI: "Unrecognized request argument supplied"). When several fields
/// are refused, the one error names them all, the unsupported OpenAI fields first, then the
/// unknown ones, each sorted by name; `param` is the first of them.
pub fn check_fields(obj: &Map<String, Value>, route: Route) -> Result<(), ApiError> {
    let own: &[&str] = match route {
        Route::Completions => &["prompt", "logprobs"],
        Route::Chat => &["messages", "logprobs", "top_logprobs"],
    };
    let mut unsupported: Vec<(&str, &Value)> = Vec::new();
    let mut unknown: Vec<&str> = Vec::new();
    for (key, value) in obj {
        if COMMON_FIELDS.contains(&key.as_str()) || own.contains(&key.as_str()) {
            continue;
        }
        match UNSUPPORTED.iter().find(|(name, _)| name == key) {
            Some((_, neutral)) if neutral(value) => {}
            Some(_) => unsupported.push((key, value)),
            None => unknown.push(key),
        }
    }
    unsupported.sort_by_key(|(k, _)| *k);
    unknown.sort_unstable();
    let mut parts = Vec::new();
    if !unsupported.is_empty() {
        let list: Vec<String> = unsupported
            .iter()
            .map(|(k, v)| format!("{} = {}", clip(k), clip(&v.to_string())))
            .collect();
        parts.push(if list.len() == 1 {
            format!(
                "{} is not supported by this server (omit it or send its neutral value)",
                list[0]
            )
        } else {
            format!(
                "{} are not supported by this server (omit them or send their neutral values)",
                list.join(", ")
            )
        });
    }
    if !unknown.is_empty() {
        let s = if unknown.len() == 1 { "" } else { "s" };
        parts.push(format!(
            "Unrecognized request argument{s} supplied: {}",
            unknown
                .iter()
                .map(|k| clip(k))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let (param, code) = match (unsupported.first(), unknown.first()) {
        (Some((k, _)), _) => (*k, "unsupported_parameter"),
        (None, Some(k)) => (*k, "unknown_parameter"),
        (None, None) => return Ok(()),
    };
    Err(ApiError::invalid(Some(param), parts.join("; ")).with_code(code))
}

/// Deserialises a field set of `obj` into `T`; a wrong type is a 400 naming the field.
fn typed<T: serde::de::DeserializeOwned>(obj: &Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(obj.clone())).map_err(|e| {
        let path = e.path().to_string();
        let field = path.split(['.', '[']).next().unwrap_or("").to_string();
        let inner = e.into_inner().to_string();
        let inner = clip_quoted(&inner);
        if field.is_empty() || field == "?" {
            ApiError::invalid(None, format!("invalid request: {inner}"))
        } else {
            ApiError::invalid(
                Some(field.as_str()),
                format!("invalid {}: {inner}", clip(&path)),
            )
        }
    })
}

/// A parsed request (`CompletionRequest` or `ChatRequest`) with its knobs.
pub trait WithKnobs: serde::de::DeserializeOwned {
    /// The knobs' slot.
    fn knobs_mut(&mut self) -> &mut Knobs;
}

impl WithKnobs for CompletionRequest {
    fn knobs_mut(&mut self) -> &mut Knobs {
        &mut self.knobs
    }
}

impl WithKnobs for ChatRequest {
    fn knobs_mut(&mut self) -> &mut Knobs {
        &mut self.knobs
    }
}

/// Parses the body of a `route` request: [`parse_object`], [`check_fields`], then the typed
/// request and its [`Knobs`] (a field of the wrong type is a 400 naming it).
pub fn parse_request<T: WithKnobs>(body: &[u8], route: Route) -> Result<T, ApiError> {
    let obj = parse_object(body)?;
    check_fields(&obj, route)?;
    let mut req: T = typed(&obj)?;
    *req.knobs_mut() = typed(&obj)?;
    Ok(req)
}

/// Parses `body` as JSON into `T`: malformed JSON and wrong field types are 400s.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    typed(&parse_object(body)?)
}

/// OpenAI's `prompt`: a string, a list of strings, a list of token ids or a list of id lists;
/// every element is one prompt. Errors name `prompt`.
pub fn parse_prompts(prompt: &Value) -> Result<Vec<PromptInput>, ApiError> {
    let bad = |m: String| ApiError::invalid(Some("prompt"), m);
    let ids = |a: &[Value], at: &str| -> Result<Vec<TokenId>, ApiError> {
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_u64()
                    .and_then(|x| TokenId::try_from(x).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "prompt{at}[{i}] = {v}: a token id is an integer in 0..2^32"
                        ))
                    })
            })
            .collect()
    };
    let prompts: Vec<PromptInput> = match prompt {
        Value::String(s) => vec![PromptInput::Text(s.clone())],
        Value::Array(a) if a.is_empty() => return Err(bad("prompt is an empty list".into())),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .map(|v| PromptInput::Text(v.as_str().unwrap_or_default().to_string()))
            .collect(),
        Value::Array(a) if a.iter().all(Value::is_number) => vec![PromptInput::Ids(ids(a, "")?)],
        Value::Array(a) if a.iter().all(Value::is_array) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v.as_array() {
                Some(inner) if inner.is_empty() => Err(bad(format!("prompt[{i}] is an empty list of token ids"))),
                Some(inner) => Ok(PromptInput::Ids(ids(inner, &format!("[{i}]"))?)),
                None => Err(bad(format!("prompt[{i}] is not a list"))),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(bad(format!(
                "prompt must be a string, a list of strings, a list of token ids or a list of token-id lists; got {other}"
            )))
        }
    };
    Ok(prompts)
}

/// Checks `model` against the served id: unknown models are 404 `model_not_found`.
pub fn check_model(requested: Option<&str>, served: &str) -> Result<(), ApiError> {
    match requested {
        Some(m) if m != served => Err(ApiError::invalid(
            Some("model"),
            format!(
                "the model '{m}' does not exist; this server serves '{served}' (GET /v1/models)"
            ),
        )
        .with_status(axum::http::StatusCode::NOT_FOUND)
        .with_code("model_not_found")),
        _ => Ok(()),
    }
}

/// Checks `n` (1..=[`MAX_N`]) and returns it.
pub fn check_n(n: Option<usize>) -> Result<usize, ApiError> {
    match n.unwrap_or(1) {
        n @ 1..=MAX_N => Ok(n),
        n => Err(ApiError::invalid(
            Some("n"),
            format!("n = {n} must be in 1..={MAX_N}"),
        )),
    }
}

/// Checks `stream_options` (only with `stream`, as OpenAI) and returns `include_usage`.
/// `include_obfuscation` (OpenAI's random padding of chunks) is not done: `false` or `null` is
/// accepted, `true` is a 400 `unsupported_parameter`.
pub fn check_stream_options(stream: bool, o: Option<StreamOptions>) -> Result<bool, ApiError> {
    match o {
        Some(_) if !stream => Err(ApiError::invalid(
            Some("stream_options"),
            "stream_options is only allowed when stream is true",
        )),
        Some(o) if o.include_obfuscation == Some(true) => Err(ApiError::invalid(
            Some("stream_options.include_obfuscation"),
            "stream_options.include_obfuscation = true is not supported by this server (omit it or send false)",
        )
        .with_code("unsupported_parameter")),
        Some(o) => Ok(o.include_usage),
        None => Ok(false),
    }
}

fn bad(param: &str, message: String) -> ApiError {
    ApiError::invalid(Some(param), message)
}

/// The request's settings from its knobs, answer limits included: the request over the
/// server's flags ([`Defaults`], already resolved over `generation_config.json` and the paper's
/// setting) through the engine's one resolver ([`fastdllm_engine::resolve()`]). The canvas
/// `gen_length` is `gen_length` when given (a multiple of `block_length`), else `max_tokens`
/// rounded up to whole blocks, else the default (shrunk later to the room a prompt leaves,
/// [`Canvas`]); the answer is cut to `max_tokens` (default: the canvas) and at `stop`. Errors
/// name the request field at fault (`param`).
pub fn resolve_knobs(
    knobs: &Knobs,
    defaults: &Defaults,
    family: ModelFamily,
) -> Result<GenerationSettings, ApiError> {
    use fastdllm_engine::Source;
    // The cap on stop strings is the API's, not the engine's.
    if let Some(n) = knobs
        .stop
        .as_ref()
        .map(StopInput::len)
        .filter(|&n| n > MAX_STOP)
    {
        return Err(bad(
            "stop",
            format!("stop holds {n} strings: at most {MAX_STOP} are accepted"),
        ));
    }
    // Without --steps, steps follow the canvas.
    let mut flags = Knobs::from_settings(&defaults.settings);
    if !defaults.explicit_steps {
        flags.steps = None;
    }
    fastdllm_engine::resolve(
        &[(Source::Request, knobs), (Source::Flags, &flags)],
        None,
        family,
    )
    .map(|r| r.settings)
    .map_err(|e| ApiError::invalid(e.param().map(|p| p.name()), e.to_string()))
}

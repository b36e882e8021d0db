//! Request and response types of the OpenAI-compatible API, and the request → settings
//! resolution with its validation.
//!
//! Reference: OpenAI `POST /v1/completions`, `POST /v1/chat/completions` (objects `text_completion`,
//! `chat.completion`, `chat.completion.chunk`) and `GET /v1/models`. Supported OpenAI fields:
//! `model`, `prompt` (a string, a list of strings, a list of token ids or a list of id lists;
//! each prompt gives `n` choices with `index = prompt_i * n + j`), `messages` (multi-turn
//! system / user / assistant, `content` a string or text parts, rendered with the model's chat
//! template, [`chat_messages`]), `n`, `max_tokens`
//! / `max_completion_tokens` (any positive count: the canvas is rounded up to whole blocks and
//! the answer cut), `stop` (a string or up to 4), `seed` (without one every choice draws a fresh
//! seed), `temperature`, `top_p` (Dream; LLaDA only with the neutral 1), `stream`,
//! `stream_options.include_usage`, `user`. Fields OpenAI has that change the answer's form or
//! distribution and that this server cannot honour (`logprobs`, `top_logprobs`, `echo`,
//! `best_of`, `suffix`, `tools`, `response_format`, penalties, `logit_bias`, ...) are a 400
//! naming the field unless they hold their neutral value; unknown fields are a 400 naming the
//! field, as OpenAI answers them ("Unrecognized request argument supplied"). Extension fields
//! carry the Fast-dLLM knobs (`gen_length`, `block_length`, `steps`, `cache`, `threshold`,
//! `factor`, `top_k`) and `provisional` (stream the current block's provisional tokens).

use fastdllm_cache::{CacheSettings, CACHE_NAMES};
use fastdllm_core::{ModelFamily, TokenId};
use fastdllm_models::Message;
use fastdllm_sampler::{Unmask, MIN_TEMPERATURE};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::errors::ApiError;
use fastdllm_engine::{AnswerLimits, GenerationSettings};

/// Most choices (`n`) per prompt, as OpenAI allows.
pub const MAX_N: usize = 128;
/// Most stop strings, as OpenAI allows.
pub const MAX_STOP: usize = 4;

/// The server-side defaults of every knob (the `serve` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// Settings of a request that sets no knob (its `seed` is not used: a request without
    /// `seed` draws a fresh one per choice).
    pub settings: GenerationSettings,
    /// Whether `--steps` was given; if not, `steps` follows the request's `gen_length`.
    pub explicit_steps: bool,
}

/// `stop`: one string or a list of up to [`MAX_STOP`].
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// The knobs a request may set (all optional; server defaults otherwise): OpenAI's sampling and
/// length fields and the Fast-dLLM extensions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Knobs {
    /// OpenAI's answer limit in tokens (any count >= 1; the canvas rounds up to whole blocks).
    pub max_tokens: Option<usize>,
    /// OpenAI's newer name of `max_tokens` (chat); must agree with `max_tokens` when both are sent.
    pub max_completion_tokens: Option<usize>,
    /// Answer positions G of the canvas (a multiple of `block_length`).
    pub gen_length: Option<usize>,
    /// Block size B.
    pub block_length: Option<usize>,
    /// Denoising steps of fixed schedules.
    pub steps: Option<usize>,
    /// A cache name ([`CacheSettings`]): `none`, `prefix`, `dual`, or an adaptive policy such
    /// as `dual+commits=2`.
    pub cache: Option<String>,
    /// Threshold rule.
    pub threshold: Option<f64>,
    /// Factor rule.
    pub factor: Option<f64>,
    /// Sampling temperature (0 = greedy).
    pub temperature: Option<f64>,
    /// Nucleus filter (Dream's sampler; 1 = off, accepted for every family).
    pub top_p: Option<f64>,
    /// Top-k filter (extension; Dream's sampler).
    pub top_k: Option<usize>,
    /// Seed of the first choice's random stream (choice `i` uses `Rng::row_seed(seed, i)`).
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Option<StopInput>,
}

/// One prompt of `POST /v1/completions`: text (the tokenizer's special tokens added) or ids.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    /// Raw text.
    Text(String),
    /// Token ids, used as they are.
    Ids(Vec<TokenId>),
}

/// Stream options (OpenAI `stream_options`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with empty `choices` and the request's `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/completions` (the knobs are read from the same object, [`parse_request`]).
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Model id (optional; must be the served model when given).
    pub model: Option<String>,
    /// `prompt` as sent; see [`parse_prompts`].
    #[serde(default)]
    pub prompt: Value,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Stream options (only with `stream`).
    pub stream_options: Option<StreamOptions>,
    /// With `stream`: also send the current block's provisional tokens after every step.
    #[serde(default)]
    pub provisional: bool,
    /// Choices per prompt (1..=128).
    pub n: Option<usize>,
    /// Fast-dLLM knobs and OpenAI sampling fields.
    #[serde(skip)]
    pub knobs: Knobs,
}

/// The assistant's message of a response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// One message of a chat request: `role` and `content`, a string or a list of text parts
/// (`[{"type": "text", "text": ...}]`, OpenAI's content-part form). Other keys (`name`) are
/// ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestMessage {
    /// `system` (or `developer`, its newer OpenAI name), `user` or `assistant`.
    pub role: String,
    /// A string or a list of content parts (`null` / absent is refused).
    #[serde(default)]
    pub content: serde_json::Value,
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
        out.push(Message::new(role, content));
    }
    if out.iter().all(|m| m.content.trim().is_empty()) {
        return Err(bad(
            "messages",
            "the prompt is empty: every message's content is blank".into(),
        ));
    }
    Ok(out)
}

/// `POST /v1/chat/completions` (the knobs are read from the same object, [`parse_request`]).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Model id (optional; must be the served model when given).
    pub model: Option<String>,
    /// The conversation (system / user / assistant turns), rendered with the model's chat
    /// template.
    pub messages: Vec<RequestMessage>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Stream options (only with `stream`).
    pub stream_options: Option<StreamOptions>,
    /// With `stream`: also send the current block's provisional tokens after every step.
    #[serde(default)]
    pub provisional: bool,
    /// Choices (1..=128).
    pub n: Option<usize>,
    /// Fast-dLLM knobs and OpenAI sampling fields.
    #[serde(skip)]
    pub knobs: Knobs,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens (after templating; each prompt counted once, whatever `n`).
    pub prompt_tokens: usize,
    /// Answer tokens of every choice.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Usage of `prompt_tokens` and `completion_tokens`.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// A choice of a `text_completion`.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    /// `prompt_index * n + j`.
    pub index: usize,
    /// The answer.
    pub text: String,
    /// Always `null` (`logprobs` is not supported).
    pub logprobs: Option<()>,
    /// `stop` (an end-of-sequence token or a stop string) or `length`.
    pub finish_reason: Option<&'static str>,
}

/// A choice of a `chat.completion`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    /// `j` of `n`.
    pub index: usize,
    /// The assistant's message.
    pub message: ChatMessage,
    /// Always `null` (`logprobs` is not supported).
    pub logprobs: Option<()>,
    /// `stop` or `length`.
    pub finish_reason: Option<&'static str>,
}

/// A non-streaming response (`text_completion` or `chat.completion`).
#[derive(Debug, Clone, Serialize)]
pub struct Response<C> {
    /// `cmpl-…` or `chatcmpl-…`.
    pub id: String,
    /// `text_completion` or `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model id.
    pub model: String,
    /// The choices, in `index` order.
    pub choices: Vec<C>,
    /// Token counts.
    pub usage: Usage,
}

/// Provisional state of the current block (extension, `"provisional": true`): the block's
/// token ids (`null` where still masked; nothing here is final) and its committed tokens
/// decoded.
pub use fastdllm_engine::Provisional;

/// One streamed choice; `text` (completions) or `delta` (chat).
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    /// The choice's index.
    pub index: usize,
    /// Completions: committed text since the previous chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Chat: `{"role"?, "content"?}` since the previous chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<serde_json::Value>,
    /// Always `null`.
    pub logprobs: Option<()>,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<&'static str>,
    /// Present only on provisional chunks (their `text` / `delta` is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisional: Option<Provisional>,
}

/// A streamed chunk (`text_completion` or `chat.completion.chunk`).
#[derive(Debug, Clone, Serialize)]
pub struct Chunk {
    /// Same id on every chunk of a response.
    pub id: String,
    /// `text_completion` or `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model id.
    pub model: String,
    /// One choice; empty on the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// With `stream_options.include_usage`: `null` on every chunk but the last, which carries
    /// the request's usage and no choice (as OpenAI sends it). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// The routes whose body [`parse_request`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/chat/completions`.
    Chat,
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
    ("logprobs", |v| v.is_null() || *v == Value::Bool(false)),
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
/// naming it (OpenAI: "Unrecognized request argument supplied").
pub fn check_fields(obj: &Map<String, Value>, route: Route) -> Result<(), ApiError> {
    let own: &[&str] = match route {
        Route::Completions => &["prompt"],
        Route::Chat => &["messages"],
    };
    for (key, value) in obj {
        if COMMON_FIELDS.contains(&key.as_str()) || own.contains(&key.as_str()) {
            continue;
        }
        match UNSUPPORTED.iter().find(|(name, _)| name == key) {
            Some((_, neutral)) if neutral(value) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    Some(key.as_str()),
                    format!("{key} = {value} is not supported by this server (omit it or send its neutral value)"),
                )
                .with_code("unsupported_parameter"))
            }
            None => {
                return Err(ApiError::invalid(
                    Some(key.as_str()),
                    format!("Unrecognized request argument supplied: {key}"),
                )
                .with_code("unknown_parameter"))
            }
        }
    }
    Ok(())
}

/// Deserialises a field set of `obj` into `T`; a wrong type is a 400 naming the field.
fn typed<T: serde::de::DeserializeOwned>(obj: &Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(obj.clone())).map_err(|e| {
        let path = e.path().to_string();
        let field = path.split(['.', '[']).next().unwrap_or("").to_string();
        let inner = e.into_inner();
        if field.is_empty() || field == "?" {
            ApiError::invalid(None, format!("invalid request: {inner}"))
        } else {
            ApiError::invalid(Some(field.as_str()), format!("invalid {path}: {inner}"))
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
pub fn check_stream_options(stream: bool, o: Option<StreamOptions>) -> Result<bool, ApiError> {
    match o {
        Some(_) if !stream => Err(ApiError::invalid(
            Some("stream_options"),
            "stream_options is only allowed when stream is true",
        )),
        Some(o) => Ok(o.include_usage),
        None => Ok(false),
    }
}

fn bad(param: &str, message: String) -> ApiError {
    ApiError::invalid(Some(param), message)
}

impl Knobs {
    /// The request's settings, answer limits included. The canvas `gen_length` is `gen_length` when
    /// given (a multiple of `block_length`), else `max_tokens` rounded up to whole blocks, else
    /// the default; the answer is cut to `max_tokens` (default: the canvas) and at `stop`.
    /// `settings.seed` is the request's `seed` (default: the server's; see [`Defaults`]).
    pub fn resolve(
        &self,
        defaults: &Defaults,
        family: ModelFamily,
    ) -> Result<GenerationSettings, ApiError> {
        let mut s = defaults.settings.clone();
        let (limit_param, limit) = match (self.max_tokens, self.max_completion_tokens) {
            (Some(m), Some(c)) if m != c => {
                return Err(bad(
                    "max_completion_tokens",
                    format!("max_tokens = {m} and max_completion_tokens = {c} disagree (two names of the answer limit; give one)"),
                ))
            }
            (Some(m), _) => ("max_tokens", Some(m)),
            (None, Some(c)) => ("max_completion_tokens", Some(c)),
            (None, None) => ("max_tokens", None),
        };
        if limit == Some(0) {
            return Err(bad(
                limit_param,
                format!("{limit_param} must be >= 1, got 0"),
            ));
        }
        if let Some(b) = self.block_length {
            s.decode.block_length = b;
        }
        let b = s.decode.block_length;
        if b == 0 {
            return Err(bad(
                "block_length",
                "block_length must be >= 1, got 0".into(),
            ));
        }
        let gen_param = "gen_length";
        match (self.gen_length, limit) {
            (Some(g), Some(l)) if l > g => {
                return Err(bad(
                    limit_param,
                    format!("{limit_param} = {l} exceeds gen_length = {g} (the canvas the answer is decoded in); drop gen_length or raise it"),
                ))
            }
            (Some(g), _) => s.decode.gen_length = g,
            (None, Some(l)) => {
                s.decode.gen_length = l.checked_next_multiple_of(b).ok_or_else(|| {
                    bad(limit_param, format!("{limit_param} = {l} is too large"))
                })?
            }
            (None, None) => {}
        }
        let g = s.decode.gen_length;
        if g == 0 {
            return Err(bad(gen_param, format!("{gen_param} must be >= 1, got 0")));
        }
        if g % b != 0 {
            let lo = g / b * b;
            // The next multiple may not exist (g near usize::MAX: fault corpus).
            let hint = match (lo > 0, lo.checked_add(b)) {
                (true, Some(hi)) => format!("{lo} or {hi}"),
                (true, None) => format!("{lo}"),
                (false, _) => format!("{b}"),
            };
            return Err(bad(
                gen_param,
                format!(
                    "gen_length = {g} must be a multiple of block_length = {b}: the answer is decoded in blocks of {b} tokens; use {hint}, set block_length, or send max_tokens (any count) instead"
                ),
            ));
        }
        s.decode.steps = match self.steps {
            Some(steps) => steps,
            None if defaults.explicit_steps
                && g == defaults.settings.decode.gen_length
                && b == defaults.settings.decode.block_length =>
            {
                defaults.settings.decode.steps
            }
            None => g,
        };
        let blocks = g / b;
        if s.decode.steps == 0 || s.decode.steps % blocks != 0 {
            return Err(bad(
                "steps",
                format!("steps = {} must be a positive multiple of the number of blocks gen_length / block_length = {blocks}", s.decode.steps),
            ));
        }
        if let Some(c) = &self.cache {
            s.cache = c.parse::<CacheSettings>().map_err(|e| {
                bad(
                    "cache",
                    format!("cache = '{c}': {e} (names: {CACHE_NAMES})"),
                )
            })?;
        }
        match (self.threshold, self.factor) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "threshold",
                    "threshold and factor are two unmasking rules: give at most one".into(),
                ))
            }
            (Some(t), None) => {
                if !(t > 0.0 && t <= 1.0) {
                    return Err(bad(
                        "threshold",
                        format!("threshold = {t} must be in (0, 1]"),
                    ));
                }
                s.unmask = Unmask::Threshold { threshold: t };
            }
            (None, Some(f)) => {
                if !(f.is_finite() && f > 0.0) {
                    return Err(bad(
                        "factor",
                        format!("factor = {f} must be finite and > 0"),
                    ));
                }
                s.unmask = Unmask::Factor { factor: f };
            }
            (None, None) => {}
        }
        if let Some(t) = self.temperature {
            if !(t.is_finite() && (t == 0.0 || t >= MIN_TEMPERATURE)) {
                return Err(bad(
                    "temperature",
                    format!("temperature = {t} must be 0 (greedy) or finite and >= {MIN_TEMPERATURE:e} (smaller values overflow float32 logits / temperature)"),
                ));
            }
            s.proposer.temperature = t;
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(bad("top_p", format!("top_p = {p} must be in (0, 1]")));
            }
            // 1 keeps every token: the neutral value, accepted for every family.
            s.proposer.top_p = (p < 1.0).then_some(p);
            if p < 1.0 && family != ModelFamily::Dream {
                return Err(bad(
                    "top_p",
                    format!("top_p = {p}: this model's sampler ({family:?}) has no nucleus filter (Dream's has); omit top_p or send 1"),
                ));
            }
        }
        if let Some(k) = self.top_k {
            if k == 0 {
                return Err(bad("top_k", "top_k must be >= 1, got 0".into()));
            }
            if family != ModelFamily::Dream {
                return Err(bad(
                    "top_k",
                    format!("top_k = {k}: this model's sampler ({family:?}) has no top-k filter (Dream's has); omit top_k"),
                ));
            }
            s.proposer.top_k = Some(k);
        }
        if let Some(seed) = self.seed {
            s.seed = seed;
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopInput::One(x)) => vec![x.clone()],
            Some(StopInput::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP {
            return Err(bad(
                "stop",
                format!("stop holds {} strings: at most {MAX_STOP}", stop.len()),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(bad("stop", "a stop string is empty".into()));
        }
        s.limits = AnswerLimits {
            max_tokens: limit,
            stop,
            ..defaults.settings.limits.clone()
        };
        s.validate(family)
            .map_err(|e| ApiError::invalid(e.param().map(|p| p.name()), e.to_string()))?;
        Ok(s)
    }
}

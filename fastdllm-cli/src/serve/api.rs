//! Request and response types of the OpenAI-compatible API, and the request → settings
//! resolution with its validation.
//!
//! Reference: OpenAI `POST /v1/completions`, `POST /v1/chat/completions` (objects `text_completion`,
//! `chat.completion`, `chat.completion.chunk`) and `GET /v1/models`. Deviations: one choice per
//! request (`n` must be 1); `prompt` is one string (or an array holding one string); chats are
//! rendered with the model's chat template (multi-turn system / user / assistant; `content` a
//! string or text parts, [`chat_messages`]); `stop`, `logprobs`,
//! `top_p` and other OpenAI sampling fields are ignored. Extra fields carry the Fast-dLLM knobs
//! (`gen_length`, `block_length`, `steps`, `cache`, `threshold`, `factor`, `temperature`, `seed`)
//! and `provisional` (stream the current block's provisional tokens). `max_tokens` is the answer
//! length `gen_length` (a diffusion LLM decodes a fixed canvas; the answer is cut at the first
//! end-of-sequence token).

use fastdllm_cache::CacheMode;
use fastdllm_core::ModelFamily;
use fastdllm_models::Message;
use fastdllm_sampler::Unmask;
use serde::{Deserialize, Serialize};

use super::errors::ApiError;
use crate::engine::GenerationSettings;

/// The server-side defaults of every knob (the `serve` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// Settings of a request that sets no knob.
    pub settings: GenerationSettings,
    /// Whether `--steps` was given; if not, `steps` follows the request's `gen_length`.
    pub explicit_steps: bool,
}

/// The Fast-dLLM knobs a request may set (all optional; server defaults otherwise).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Knobs {
    /// OpenAI's answer length: mapped to `gen_length`.
    pub max_tokens: Option<usize>,
    /// Answer positions G.
    pub gen_length: Option<usize>,
    /// Block size B.
    pub block_length: Option<usize>,
    /// Denoising steps of fixed schedules.
    pub steps: Option<usize>,
    /// `none`, `prefix` or `dual`.
    pub cache: Option<String>,
    /// Threshold rule.
    pub threshold: Option<f64>,
    /// Factor rule.
    pub factor: Option<f64>,
    /// Sampling temperature (0 = greedy).
    pub temperature: Option<f64>,
    /// Seed of the row's random stream.
    pub seed: Option<u64>,
}

/// `prompt`: a string or an array of one string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One prompt.
    One(String),
    /// OpenAI's batch form; only one element is accepted.
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Model id (optional; must be the served model when given).
    pub model: Option<String>,
    /// Raw prompt text (no chat template; the tokenizer's special tokens added).
    pub prompt: PromptInput,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// With `stream`: also send the current block's provisional tokens after every step.
    #[serde(default)]
    pub provisional: bool,
    /// Number of choices (only 1).
    pub n: Option<usize>,
    /// Fast-dLLM knobs.
    #[serde(flatten)]
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

/// `POST /v1/chat/completions`.
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
    /// With `stream`: also send the current block's provisional tokens after every step.
    #[serde(default)]
    pub provisional: bool,
    /// Number of choices (only 1).
    pub n: Option<usize>,
    /// Fast-dLLM knobs.
    #[serde(flatten)]
    pub knobs: Knobs,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens (after templating).
    pub prompt_tokens: usize,
    /// Answer tokens (up to the first end-of-sequence token).
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

/// A choice of a `text_completion`.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    /// Always 0.
    pub index: usize,
    /// The answer.
    pub text: String,
    /// `stop` (an end-of-sequence token was generated) or `length`.
    pub finish_reason: Option<&'static str>,
}

/// A choice of a `chat.completion`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    /// Always 0.
    pub index: usize,
    /// The assistant's message.
    pub message: ChatMessage,
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
    /// One choice.
    pub choices: Vec<C>,
    /// Token counts.
    pub usage: Usage,
}

/// Provisional state of the current block (extension, `"provisional": true`).
#[derive(Debug, Clone, Serialize)]
pub struct Provisional {
    /// Block index.
    pub block: usize,
    /// Step inside the block.
    pub step: usize,
    /// The block's token ids, `null` where still masked. Nothing here is final.
    pub token_ids: Vec<Option<u32>>,
    /// The committed tokens of the block decoded (masked positions skipped).
    pub text: String,
}

/// One streamed choice; `text` (completions) or `delta` (chat).
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    /// Always 0.
    pub index: usize,
    /// Completions: committed text since the previous chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Chat: `{"role"?, "content"?}` since the previous chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<serde_json::Value>,
    /// Set on the last chunk.
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
    /// One choice.
    pub choices: Vec<ChunkChoice>,
    /// On the last chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Parses `body` as JSON into `T`: malformed JSON and wrong field types are 400s.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(None, format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::invalid(None, format!("invalid request: {e}")))
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

/// Checks `n`.
pub fn check_n(n: Option<usize>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => Err(ApiError::invalid(
            Some("n"),
            format!("n = {n}: only one choice per request is supported (n = 1)"),
        )),
    }
}

fn bad(param: &str, message: String) -> ApiError {
    ApiError::invalid(Some(param), message)
}

impl Knobs {
    /// The request's settings: its knobs over the server defaults, every range checked.
    pub fn resolve(
        &self,
        defaults: &Defaults,
        family: ModelFamily,
    ) -> Result<GenerationSettings, ApiError> {
        let mut s = defaults.settings.clone();
        let gen_param = match (self.max_tokens, self.gen_length) {
            (Some(m), Some(g)) if m != g => {
                return Err(bad(
                    "max_tokens",
                    format!("max_tokens = {m} and gen_length = {g} disagree (max_tokens is the answer length gen_length; give one)"),
                ))
            }
            (Some(m), _) => {
                s.decode.gen_length = m;
                "max_tokens"
            }
            (None, Some(g)) => {
                s.decode.gen_length = g;
                "gen_length"
            }
            (None, None) => "gen_length",
        };
        if let Some(b) = self.block_length {
            s.decode.block_length = b;
        }
        let (g, b) = (s.decode.gen_length, s.decode.block_length);
        if g == 0 {
            return Err(bad(gen_param, format!("{gen_param} must be >= 1, got 0")));
        }
        if b == 0 {
            return Err(bad(
                "block_length",
                "block_length must be >= 1, got 0".into(),
            ));
        }
        if g % b != 0 {
            let lo = g / b * b;
            let hint = if lo > 0 {
                format!("{lo} or {}", lo + b)
            } else {
                format!("{b}")
            };
            let what = if gen_param == "max_tokens" {
                "max_tokens (the answer length gen_length)"
            } else {
                "gen_length"
            };
            return Err(bad(
                gen_param,
                format!(
                    "{what} = {g} must be a multiple of block_length = {b}: the answer is decoded in blocks of {b} tokens; use {hint}, or set block_length"
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
            s.cache.mode = match c.as_str() {
                "none" | "off" => CacheMode::Off,
                "prefix" => CacheMode::Prefix,
                "dual" => CacheMode::Dual,
                other => {
                    return Err(bad(
                        "cache",
                        format!("cache = '{other}': one of none, prefix, dual"),
                    ))
                }
            };
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
            if !(t.is_finite() && t >= 0.0) {
                return Err(bad(
                    "temperature",
                    format!("temperature = {t} must be finite and >= 0"),
                ));
            }
            s.proposer.temperature = t;
        }
        if let Some(seed) = self.seed {
            s.seed = seed;
        }
        s.validate(family)
            .map_err(|e| ApiError::invalid(None, format!("{e:#}")))?;
        Ok(s)
    }
}

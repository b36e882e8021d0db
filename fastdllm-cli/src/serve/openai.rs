//! The wire types of the OpenAI-compatible API: request bodies, responses and streamed chunks
//! (serde only; parsing and validation are in [`super::validate`]).
//!
//! Reference: OpenAI `POST /v1/completions`, `POST /v1/chat/completions` (objects `text_completion`,
//! `chat.completion`, `chat.completion.chunk`) and `GET /v1/models`. Supported OpenAI fields:
//! `model`, `prompt` (a string, a list of strings, a list of token ids or a list of id lists;
//! each prompt gives `n` choices with `index = prompt_i * n + j`), `messages` (multi-turn
//! system / user / assistant, `content` a string or text parts, rendered with the model's chat
//! template), `n`, `max_tokens`
//! / `max_completion_tokens` (any positive count: the canvas is rounded up to whole blocks and
//! the answer cut), `stop` (a string or up to 16), `seed` (without one every choice draws a fresh
//! seed), `temperature`, `top_p` (Dream; LLaDA only with the neutral 1), `stream`,
//! `stream_options.include_usage`, `user`, `logprobs` (chat: `logprobs` / `top_logprobs` up to
//! 20; completions: `logprobs` up to 5; commit-time log-probabilities, [`logprobs_json`]);
//! every optional field may be `null`, read as not given
//! (OpenAI types them `T | null`). Fields OpenAI has that change the answer's form or
//! distribution and that this server cannot honour (`echo`, `best_of`, `suffix`, `tools`,
//! `response_format`, penalties, `logit_bias`, ...) are a 400
//! naming the field unless they hold their neutral value; unknown fields are a 400 naming the
//! field, as OpenAI answers them ("Unrecognized request argument supplied"). Extension fields
//! carry the Fast-dLLM knobs (`gen_length`, `block_length`, `steps`, `cache`, `threshold`,
//! `factor`, `top_k`) and `provisional` (stream the current block's provisional tokens).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The two generation routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/chat/completions`.
    Chat,
}

/// Deserializes an optional field whose `null` means "not given", as OpenAI types its optional
/// fields (`T | null`, which SDK wrappers send): `null` and absence both give `T::default()`.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Stream options (OpenAI `stream_options`; every field may be `null`, "not given").
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with empty `choices` and the request's `usage`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub include_usage: bool,
    /// OpenAI's random padding of streamed chunks: not done here, so only `false` / `null` /
    /// absent is accepted ([`super::validate::check_stream_options`]).
    #[serde(default)]
    pub include_obfuscation: Option<bool>,
}

/// `POST /v1/completions` (the knobs are read from the same object,
/// [`super::validate::parse_request`]).
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Model id (optional; must be the served model when given).
    pub model: Option<String>,
    /// `prompt` as sent; see [`super::validate::parse_prompts`].
    #[serde(default)]
    pub prompt: Value,
    /// Stream server-sent events (`null` = not given).
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    /// Stream options (only with `stream`).
    pub stream_options: Option<StreamOptions>,
    /// With `stream`: also send the current block's provisional tokens after every step
    /// (`null` = not given).
    #[serde(default, deserialize_with = "null_as_default")]
    pub provisional: bool,
    /// Choices per prompt (1..=128).
    pub n: Option<usize>,
    /// Report each answer token's log-probability and this many alternatives
    /// (0..=[`MAX_COMPLETION_LOGPROBS`]; `null` = not asked).
    pub logprobs: Option<usize>,
    /// Fast-dLLM knobs and OpenAI sampling fields.
    #[serde(skip)]
    pub knobs: Knobs,
}

/// Most `top_logprobs` of a chat request (OpenAI's bound).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most `logprobs` of a completions request (OpenAI's bound).
pub const MAX_COMPLETION_LOGPROBS: usize = 5;

/// The `logprobs` object of one choice of `route`, in OpenAI's shapes:
///
/// * chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
///   "bytes"}]}], "refusal": null}`;
/// * completions: `{"tokens": [..], "token_logprobs": [..], "top_logprobs": [{token: logprob}],
///   "text_offset": [..]}` (offsets into the answer text, from 0 as vLLM counts them without
///   `echo`; a token text shared by two alternatives keeps the likelier).
///
/// Each token is one answer token (the text it decodes to alone, `bytes` its UTF-8 bytes); the
/// values are commit-time log-probabilities (docs/CLIENTS.md, "Logprobs").
pub fn logprobs_json(route: Route, lps: &[fastdllm_engine::AnswerLogprob]) -> Value {
    use serde_json::json;
    match route {
        Route::Chat => {
            let entry = |t: &fastdllm_engine::LogprobToken| json!({"token": t.text, "logprob": t.logprob, "bytes": t.text.as_bytes()});
            let content: Vec<Value> = lps
                .iter()
                .map(|lp| {
                    let mut e = entry(&lp.token);
                    e["top_logprobs"] = Value::Array(lp.top.iter().map(entry).collect());
                    e
                })
                .collect();
            json!({"content": content, "refusal": null})
        }
        Route::Completions => {
            let mut offset = 0;
            let mut text_offset = Vec::with_capacity(lps.len());
            for lp in lps {
                text_offset.push(offset);
                offset += lp.token.text.len();
            }
            let top: Vec<Value> = lps
                .iter()
                .map(|lp| {
                    let mut m = serde_json::Map::new();
                    for t in &lp.top {
                        m.entry(t.text.clone()).or_insert(json!(t.logprob));
                    }
                    Value::Object(m)
                })
                .collect();
            json!({
                "tokens": lps.iter().map(|lp| lp.token.text.clone()).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|lp| lp.token.logprob).collect::<Vec<_>>(),
                "top_logprobs": top,
                "text_offset": text_offset,
            })
        }
    }
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
    /// The participant's name, passed to the chat template (`null` = none).
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant turn's tool calls: refused (this server has no tools), never dropped.
    #[serde(default)]
    pub tool_calls: Option<serde_json::Value>,
    /// The deprecated single function call: refused as `tool_calls` is.
    #[serde(default)]
    pub function_call: Option<serde_json::Value>,
}

/// `POST /v1/chat/completions` (the knobs are read from the same object,
/// [`super::validate::parse_request`]).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Model id (optional; must be the served model when given).
    pub model: Option<String>,
    /// The conversation (system / user / assistant turns), rendered with the model's chat
    /// template.
    pub messages: Vec<RequestMessage>,
    /// Stream server-sent events (`null` = not given).
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    /// Stream options (only with `stream`).
    pub stream_options: Option<StreamOptions>,
    /// With `stream`: also send the current block's provisional tokens after every step
    /// (`null` = not given).
    #[serde(default, deserialize_with = "null_as_default")]
    pub provisional: bool,
    /// Choices (1..=128).
    pub n: Option<usize>,
    /// Report each answer token's log-probability (`null` = `false`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub logprobs: bool,
    /// With `logprobs`: this many alternatives per token (0..=[`MAX_TOP_LOGPROBS`]).
    pub top_logprobs: Option<usize>,
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
    /// With `logprobs: N`: `tokens`, `token_logprobs`, `top_logprobs`, `text_offset`
    /// ([`logprobs_json`]); else `null`.
    pub logprobs: Option<Value>,
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
    /// With `logprobs: true`: `{"content": [...], "refusal": null}` ([`logprobs_json`]); else
    /// `null`.
    pub logprobs: Option<Value>,
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
    /// `null` but on a choice's last chunk when logprobs were asked: then every answer
    /// token's ([`logprobs_json`]; a diffusion model's answer is final only at its end).
    pub logprobs: Option<Value>,
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

/// The knobs a request may set (all optional; server defaults otherwise): OpenAI's sampling and
/// length fields (`max_tokens`, `max_completion_tokens`, `temperature`, `top_p`, `seed`,
/// `stop`) and the Fast-dLLM extensions (`gen_length`, `block_length`, `steps`, `cache`,
/// `threshold`, `factor`, `top_k`). The engine's own type: the request deserializes straight
/// into it (the fields a route accepts are checked before, [`super::validate::check_fields`]),
/// and [`super::validate::resolve_knobs`] resolves it over the server's flags.
pub use fastdllm_engine::Knobs;
/// `stop`: one string or a list of up to [`super::validate::MAX_STOP`].
pub use fastdllm_engine::Stop as StopInput;

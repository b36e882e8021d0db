//! The streaming answer of both generation routes: server-sent events, one chunk per event of
//! a choice (its committed text, its provisional block, its end), then, with
//! `stream_options.include_usage`, a chunk with empty `choices` and the request's usage, then
//! `data: [DONE]`.
//!
//! Reference: OpenAI's streamed `text_completion` and `chat.completion.chunk` objects (chat: a
//! first chunk per choice with `delta.role = "assistant"`, then `delta.content`); axum's
//! [`Sse`] with its default keep-alive comments. Extension: `provisional` chunks (empty text,
//! the current block's tentative tokens in `choices[0].provisional`).

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{StreamExt, StreamMap};

use super::errors::ApiError;
use super::openai::{logprobs_json, Chunk, ChunkChoice, Provisional, Route, Usage};
use super::worker::{Choices, Queued, RowEvent};

/// Builds the chunks of one streaming response.
#[derive(Debug, Clone)]
pub struct Chunker {
    /// The route answered: completions chunks carry `text`, chat chunks a `delta`.
    pub route: Route,
    /// The response's id (the same on every chunk).
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model id.
    pub model: String,
    /// `stream_options.include_usage`: every chunk has `usage` (`null` but on the last).
    pub include_usage: bool,
}

impl Chunker {
    /// The chunk of choice `index`: `text` (completions: `""` when `None`; chat: the delta's
    /// `content`, absent when `None`), the chat delta's `role` when `role`, the finish reason
    /// on the choice's last chunk, the provisional block on a provisional chunk.
    pub fn chunk(
        &self,
        index: usize,
        text: Option<String>,
        role: bool,
        finish: Option<&'static str>,
        prov: Option<Provisional>,
    ) -> Chunk {
        let (text, delta) = match self.route {
            Route::Completions => (Some(text.unwrap_or_default()), None),
            Route::Chat => {
                let mut d = serde_json::Map::new();
                if role {
                    d.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    d.insert("content".into(), json!(t));
                }
                (None, Some(serde_json::Value::Object(d)))
            }
        };
        self.with(
            vec![ChunkChoice {
                index,
                text,
                delta,
                logprobs: None,
                finish_reason: finish,
                provisional: prov,
            }],
            None,
        )
    }

    /// A chunk with `choices` and `usage` (sent only with `include_usage`).
    pub fn with(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Chunk {
        Chunk {
            id: self.id.clone(),
            object: match self.route {
                Route::Chat => "chat.completion.chunk",
                Route::Completions => "text_completion",
            },
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        }
    }
}

/// One chunk as an event (`data: {json}`).
pub fn event(c: &Chunk) -> Event {
    Event::default()
        .json_data(c)
        .unwrap_or_else(|_| Event::default().data("{}"))
}

/// The SSE response of a streaming request: the choices' chunks as they come (built by `c`),
/// then (with `include_usage`) a chunk with empty `choices` and the usage of `prompt_tokens`
/// and the choices' answers, then `[DONE]`. An engine error of a choice is sent as an OpenAI
/// error object. A task drives the choices and holds their queue places; when the client goes
/// away it drops their channels and places, which cancels their rows.
pub fn sse(c: Chunker, choices: Choices, prompt_tokens: usize) -> Response {
    let (out, out_rx) = mpsc::unbounded_channel::<Event>();
    let n = choices.len();
    tokio::spawn(async move {
        let mut map = StreamMap::new();
        let mut _slots = Vec::with_capacity(n);
        for (i, Queued { events, slot }) in choices.into_iter().enumerate() {
            map.insert(i, UnboundedReceiverStream::new(events));
            _slots.push(slot);
        }
        if c.route == Route::Chat {
            for i in 0..n {
                if out
                    .send(event(&c.chunk(i, None, true, None, None)))
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut completion_tokens = 0;
        loop {
            let next = tokio::select! {
                next = map.next() => next,
                () = out.closed() => return,
            };
            let Some((i, ev)) = next else { break };
            let e = match ev {
                RowEvent::Text(t) => event(&c.chunk(i, Some(t), false, None, None)),
                RowEvent::Provisional(p) => event(&c.chunk(i, None, false, None, Some(p))),
                RowEvent::Done(a) => {
                    completion_tokens += a.completion_tokens;
                    let mut last = c.chunk(i, None, false, Some(a.finish_reason.as_str()), None);
                    last.choices[0].logprobs =
                        a.logprobs.as_deref().map(|lp| logprobs_json(c.route, lp));
                    event(&last)
                }
                RowEvent::Error(m) => Event::default()
                    .json_data(ApiError::internal(m).body())
                    .unwrap_or_else(|_| Event::default().data("{}")),
            };
            if out.send(e).is_err() {
                return;
            }
        }
        if c.include_usage {
            let usage = Usage::new(prompt_tokens, completion_tokens);
            let _ = out.send(event(&c.with(Vec::new(), Some(usage))));
        }
        let _ = out.send(Event::default().data("[DONE]"));
    });
    let stream = UnboundedReceiverStream::new(out_rx).map(Ok::<Event, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

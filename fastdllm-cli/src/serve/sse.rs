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
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{StreamExt, StreamMap};

use super::errors::ApiError;
use super::openai::{logprobs_json, Chunk, ChunkChoice, Provisional, Route, Usage};
use super::worker::{Choices, Queued, RowEvent, ROW_EVENTS};

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

/// Events built ahead of what hyper has written: the stream's own bound (with [`ROW_EVENTS`] per
/// row before it and the socket's buffers after it); a client that does not read stops the
/// task here, and the transport's stream timeout then closes its connection.
pub const STREAM_EVENTS: usize = 16;

/// The SSE response of a streaming request: the choices' chunks as they come (built by `c`),
/// then (with `include_usage`) a chunk with empty `choices` and the usage of `prompt_tokens`
/// and the choices' answers, then `[DONE]`. An engine error of a choice is sent as an OpenAI
/// error object, and so is a choice the engine cancelled because its client fell
/// [`ROW_EVENTS`] events behind. A task turns the choices' events into chunks; the response
/// body holds the queue places until its last byte is written or the client goes away, and
/// when the body is dropped the task drops the channels, which cancels the rows.
pub fn sse(c: Chunker, choices: Choices, prompt_tokens: usize) -> Response {
    let (out, out_rx) = mpsc::channel::<Event>(STREAM_EVENTS);
    let n = choices.len();
    let mut slots = Vec::with_capacity(n);
    let mut map = StreamMap::new();
    for (i, Queued { events, slot }) in choices.into_iter().enumerate() {
        map.insert(i, ReceiverStream::new(events));
        slots.push(slot);
    }
    tokio::spawn(async move {
        if c.route == Route::Chat {
            for i in 0..n {
                if out
                    .send(event(&c.chunk(i, None, true, None, None)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let mut completion_tokens = 0;
        let mut ended = vec![false; n];
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
                    ended[i] = true;
                    completion_tokens += a.completion_tokens;
                    let mut last = c.chunk(i, None, false, Some(a.finish_reason.as_str()), None);
                    last.choices[0].logprobs =
                        a.logprobs.as_deref().map(|lp| logprobs_json(c.route, lp));
                    event(&last)
                }
                RowEvent::Error(m) => {
                    ended[i] = true;
                    error_event(&ApiError::internal(m))
                }
            };
            if out.send(e).await.is_err() {
                return;
            }
        }
        for i in (0..n).filter(|&i| !ended[i]) {
            let e = ApiError::internal(format!(
                "request {}: choice {i} ended without an answer: the engine cancelled it (its client fell {ROW_EVENTS} events behind) or dropped it",
                c.id
            ));
            if out.send(error_event(&e)).await.is_err() {
                return;
            }
        }
        if c.include_usage {
            let usage = Usage::new(prompt_tokens, completion_tokens);
            let _ = out.send(event(&c.with(Vec::new(), Some(usage)))).await;
        }
        let _ = out.send(Event::default().data("[DONE]")).await;
    });
    // The places go back when hyper drops the body: after its last byte, or with the connection.
    let stream = ReceiverStream::new(out_rx).map(move |e| {
        let _held = &slots;
        Ok::<Event, Infallible>(e)
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// An error object as an event.
fn error_event(e: &ApiError) -> Event {
    Event::default()
        .json_data(e.body())
        .unwrap_or_else(|_| Event::default().data("{}"))
}

//! `POST /v1/chat/completions`: a conversation rendered with the model's chat template, `n`
//! choices of the assistant's next message, answered as one `chat.completion` object or, with
//! `"stream": true`, as server-sent `chat.completion.chunk`s.
//!
//! Reference: OpenAI's Chat Completions API; the supported fields are listed in
//! [`crate::serve::openai`].

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;

use super::{answer, now};
use crate::serve::errors::ApiError;
use crate::serve::openai::{ChatChoice, ChatMessage, Route, Usage};
use crate::serve::worker::Finished;
use crate::serve::{openai, AppState};

/// The handler: validates the body (read whole by the access layer,
/// [`crate::serve::access::check`]), queues its choices, answers them ([`super::answer`]).
pub async fn create(State(s): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let r = s.0.validator.chat(body).await?;
    answer(&s, Route::Chat, r, response).await
}

/// The `chat.completion` object of the finished choices (each an assistant message).
fn response(
    id: String,
    model: String,
    prompt_tokens: usize,
    done: Vec<Finished>,
) -> openai::Response<ChatChoice> {
    let usage = Usage::new(
        prompt_tokens,
        done.iter().map(|d| d.completion_tokens).sum(),
    );
    openai::Response {
        id,
        object: "chat.completion",
        created: now(),
        model,
        choices: done
            .into_iter()
            .enumerate()
            .map(|(index, d)| ChatChoice {
                index,
                message: ChatMessage {
                    role: "assistant".into(),
                    content: d.text,
                },
                logprobs: d
                    .logprobs
                    .as_deref()
                    .map(|lp| openai::logprobs_json(Route::Chat, lp)),
                finish_reason: Some(d.finish_reason),
            })
            .collect(),
        usage,
    }
}

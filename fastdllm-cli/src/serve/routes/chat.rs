//! `POST /v1/chat/completions`: a conversation rendered with the model's chat template, `n`
//! choices of the assistant's next message, answered as one `chat.completion` object or, with
//! `"stream": true`, as server-sent `chat.completion.chunk`s.
//!
//! Reference: OpenAI's Chat Completions API; the supported fields are listed in
//! [`crate::serve::openai`].

use axum::extract::{Request, State};
use axum::response::Response;

use super::{answer, now};
use crate::serve::access::with_body;
use crate::serve::errors::ApiError;
use crate::serve::openai::{ChatChoice, ChatMessage, Route, Usage};
use crate::serve::worker::Finished;
use crate::serve::{openai, AppState};

/// The handler: reads the body ([`with_body`]), validates it, queues its choices and answers
/// them.
pub async fn create(State(s): State<AppState>, req: Request) -> Response {
    with_body(s, req, complete).await
}

/// Validates the request, queues its choices, answers them ([`super::answer`]).
async fn complete(s: AppState, body: axum::body::Bytes) -> Result<Response, ApiError> {
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
                logprobs: None,
                finish_reason: Some(d.finish_reason),
            })
            .collect(),
        usage,
    }
}

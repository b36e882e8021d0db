//! `POST /v1/completions`: one or several prompts, `n` choices each (choice
//! `index = prompt_i * n + j`), answered as one `text_completion` object or, with
//! `"stream": true`, as server-sent `text_completion` chunks.
//!
//! Reference: OpenAI's Completions API (legacy `POST /v1/completions`); the supported fields
//! are listed in [`crate::serve::openai`].

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;

use super::{answer, now};
use crate::serve::errors::ApiError;
use crate::serve::openai::{CompletionChoice, Route, Usage};
use crate::serve::worker::Finished;
use crate::serve::{openai, AppState};

/// The handler: validates the body (read whole by the access layer,
/// [`crate::serve::access::check`]), queues its choices, answers them ([`super::answer`]).
pub async fn create(State(s): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let r = s.0.validator.completion(body).await?;
    answer(&s, Route::Completions, r, response).await
}

/// The `text_completion` object of the finished choices.
fn response(
    id: String,
    model: String,
    prompt_tokens: usize,
    done: Vec<Finished>,
) -> openai::Response<CompletionChoice> {
    let usage = Usage::new(
        prompt_tokens,
        done.iter().map(|d| d.completion_tokens).sum(),
    );
    openai::Response {
        id,
        object: "text_completion",
        created: now(),
        model,
        choices: done
            .into_iter()
            .enumerate()
            .map(|(index, d)| CompletionChoice {
                index,
                text: d.text,
                logprobs: d
                    .logprobs
                    .as_deref()
                    .map(|lp| openai::logprobs_json(Route::Completions, lp)),
                finish_reason: Some(d.finish_reason),
            })
            .collect(),
        usage,
    }
}

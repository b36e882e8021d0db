//! `POST /v1/completions`: one or several prompts, `n` choices each (choice
//! `index = prompt_i * n + j`), answered as one `text_completion` object or, with
//! `"stream": true`, as server-sent `text_completion` chunks.
//!
//! Reference: OpenAI's Completions API (legacy `POST /v1/completions`); the supported fields
//! are listed in [`crate::serve::openai`].

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{now, request_id};
use crate::serve::access::with_body;
use crate::serve::errors::ApiError;
use crate::serve::openai::{CompletionChoice, Route, Usage};
use crate::serve::sse::{sse, Chunker};
use crate::serve::worker::{wait_done, Finished};
use crate::serve::{openai, AppState};

/// The handler: reads the body ([`with_body`]), validates it, queues its choices and answers
/// them.
pub async fn create(State(s): State<AppState>, req: Request) -> Response {
    with_body(s, req, complete).await
}

/// Validates the request, queues its choices, answers them.
async fn complete(s: AppState, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let r = s.0.validator.completion(body).await?;
    let id = request_id(Route::Completions);
    let choices = s.0.engine.submit(&id, &r.generation)?;
    let prompt_tokens = r.prompt_tokens();
    let model = s.0.cfg.model_id.clone();
    if r.generation.stream {
        let c = Chunker {
            route: Route::Completions,
            id,
            created: now(),
            model,
            include_usage: r.include_usage,
        };
        return Ok(sse(c, choices, prompt_tokens));
    }
    let done = wait_done(choices).await?;
    Ok(Json(response(id, model, prompt_tokens, done)).into_response())
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
                logprobs: None,
                finish_reason: Some(d.finish_reason),
            })
            .collect(),
        usage,
    }
}

//! fastdllm-engine: the one place the crates are wired into a running engine.
//!
//! The lower crates are the parts: `fastdllm-core` (seams and the block-wise loop),
//! `fastdllm-cache` (cache policies), `fastdllm-sampler` (proposals and unmasking rules),
//! `fastdllm-models` (LLaDA, Dream, tokenizers). This crate turns a request's settings into
//! those policies and runs them, and finishes each answer the way a user expects:
//!
//! * [`GenerationSettings`]: everything that decides a row's output (decode lengths, cache,
//!   unmasking rule, proposer, seed, answer limits), validated by the libraries' own checks;
//! * [`resolve()`]: the one rule from the knobs users set ([`Knobs`]: a request's fields, a
//!   command's flags, the server's flags, the model's `generation_config.json`, the paper's
//!   defaults, first wins) to [`GenerationSettings`], each value with its [`Source`];
//! * [`Batch`]: the running batch (continuous batching at block granularity): rows join between
//!   blocks, each with its own rule, seed, `max_tokens` and stop strings, and leave as soon as
//!   their answer is final ([`Finish::Answer`]: its end-of-sequence token and everything before
//!   it committed), their consumer is gone, or, with [`Finish::Canvas`], their whole canvas is
//!   decoded as the reference does. Per-row [`RowEvent`]s (committed text, provisional blocks,
//!   the final [`Answer`]) go to a [`RowSink`];
//! * [`run()`] / [`run_batch`] / [`run_rows`]: one batch of prompts to the end.
//!
//! The CLI, the server, the benches and the golden runner all run generations through it;
//! errors are typed ([`Error`]) and name the parameter the user sent ([`Param`]).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use fastdllm_engine::{run_rows, AnswerLimits, GenerationSettings, RowEvent};
//! # let loaded: fastdllm_models::LoadedModel = unimplemented!();
//! # let settings: GenerationSettings = unimplemented!();
//! let settings = GenerationSettings {
//!     limits: AnswerLimits { stop: vec!["\n".into()], ..Default::default() },
//!     ..settings
//! };
//! let prompt = loaded.tokenizer.encode("copy abc=", true)?;
//! let out = run_rows(
//!     loaded.model.as_ref(),
//!     Some(&loaded.tokenizer),
//!     &[prompt],
//!     &[settings.unmask],
//!     &[settings.seed],
//!     &settings,
//!     &Default::default(),
//!     &mut |_row, ev| if let RowEvent::Text(t) = ev { print!("{t}") },
//! )?;
//! println!("\n{:?} after {} forwards", out.answers[0].finish_reason, out.nfe);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod answer;
pub mod batch;
pub mod error;
pub mod resolve;
pub mod run;
pub mod settings;

pub use answer::{
    trim_at_eos, Answer, AnswerLimits, AnswerLogprob, Cut, Finish, FinishReason, LogprobToken,
};
pub use batch::{Batch, FinishedRow, Provisional, RowEvent, RowEvents, RowSink};
pub use error::{Error, Result};
pub use fastdllm_core::TokenLogprobs;
pub use resolve::{resolve, Knobs, Resolved, Source, Stop};
pub use run::{run, run_batch, run_rows, Generated};
pub use settings::{batch_compatible, row_seeds, GenerationSettings, Param};

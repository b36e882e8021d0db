//! The error type of fastdllm-engine: every failure of resolving settings, admitting a row or
//! running a block, typed, with the parameter the user sent named where one is at fault.

use crate::settings::Param;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting the user sent (or a default it combines with) is invalid. `param` is the
    /// parameter as the user named it (see [`Param`]); the message says what was wrong and
    /// what is accepted.
    #[error("{message}")]
    Setting {
        /// The parameter at fault.
        param: Param,
        /// One line: `max_tokens = 0 must be >= 1`.
        message: String,
    },
    /// A row's settings cannot share the running batch ([`crate::batch_compatible`]).
    #[error(
        "settings {row} cannot share a batch with {batch} (decode, cache and proposer settings, \
         and Dream's score, must agree)"
    )]
    Incompatible {
        /// The row's settings label.
        row: String,
        /// The batch's settings label.
        batch: String,
    },
    /// The row asks for text (stop strings, streamed text) but the batch has no tokenizer.
    #[error("{0} needs a tokenizer: give one to Batch::new")]
    NeedsTokenizer(&'static str),
    /// The tokenizer failed to decode an answer.
    #[error("cannot decode the answer: {0}")]
    Decode(String),
    /// A one-shot run ([`crate::run_rows`]) whose sink cancelled a row.
    #[error("generation cancelled: the consumer of row {0} went away")]
    Cancelled(fastdllm_core::RowId),
    /// Arguments of a call disagree (`seeds` and `prompts` of different lengths, no prompt).
    #[error("{0}")]
    Arguments(String),
    /// The generation loop failed (invalid prompt, a policy breaking its contract, non-finite
    /// logits, a tensor error).
    #[error(transparent)]
    Core(#[from] fastdllm_core::Error),
    /// A cache setting is invalid.
    #[error(transparent)]
    Cache(#[from] fastdllm_cache::Error),
    /// A sampler setting is invalid, or not supported by the model's sampler.
    #[error(transparent)]
    Sampler(#[from] fastdllm_sampler::Error),
}

/// Result alias of fastdllm-engine.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::Setting`].
    pub fn setting(param: Param, message: impl Into<String>) -> Self {
        Error::Setting {
            param,
            message: message.into(),
        }
    }

    /// The parameter at fault, where one is.
    pub fn param(&self) -> Option<Param> {
        match self {
            Error::Setting { param, .. } => Some(*param),
            _ => None,
        }
    }
}

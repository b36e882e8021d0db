//! The error type of fastdllm-core. Messages name the parameter and its allowed range.

/// Errors of the generation engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A generation setting is out of its allowed range.
    #[error("invalid setting {name} = {value}: {allowed}")]
    InvalidSetting {
        /// The parameter's name (paper vocabulary: `gen_length`, `block_length`, `steps`, ...).
        name: &'static str,
        /// The rejected value, as text.
        value: String,
        /// What would have been accepted.
        allowed: String,
    },
    /// The prompt cannot be generated from (empty, out-of-vocabulary id, too long).
    #[error("invalid prompt: {0}")]
    InvalidPrompt(String),
    /// A policy broke its contract (for example it selected a position that is not a candidate).
    #[error("policy error: {0}")]
    Policy(String),
    /// A block did not complete within the safety cap on steps.
    #[error(
        "block {block} made no progress after {steps} steps (cap max_steps_per_block = {cap})"
    )]
    NoProgress {
        /// Block index.
        block: usize,
        /// Steps taken.
        steps: usize,
        /// The cap.
        cap: usize,
    },
    /// The observer of [`crate::generate::generate_with`] asked to stop.
    #[error("generation cancelled")]
    Cancelled,
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of fastdllm-core.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::InvalidSetting`].
    pub fn setting(name: &'static str, value: impl ToString, allowed: impl Into<String>) -> Self {
        Error::InvalidSetting {
            name,
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

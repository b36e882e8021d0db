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
    /// A length or count derived from the input does not fit in `usize` (for example
    /// `prompt + gen_length` with `gen_length` near `usize::MAX`).
    #[error("{what} = {expr} overflows (the largest size is {max})", max = usize::MAX)]
    SizeOverflow {
        /// What was being computed (paper vocabulary: `prompt + gen_length`, `step cap`, ...).
        what: &'static str,
        /// The arithmetic with its operands, as text (`5 + 18446744073709551608`).
        expr: String,
    },
    /// The model returned NaN or an infinity among the logits the step reads.
    #[error(
        "non-finite logits (NaN or inf) for row {row} at answer position {position} (step {step} of block {block}): \
         the forward overflowed in its dtype or the weights are corrupt"
    )]
    NonFiniteLogits {
        /// The row id ([`crate::RowId`]).
        row: usize,
        /// Index in the row's answer (0 = first generated position).
        position: usize,
        /// Block index.
        block: usize,
        /// Step inside the block.
        step: usize,
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
    /// `a + b` for a length derived from input, or [`Error::SizeOverflow`] naming `what`.
    pub fn checked_add(what: &'static str, a: usize, b: usize) -> Result<usize> {
        a.checked_add(b).ok_or_else(|| Error::SizeOverflow {
            what,
            expr: format!("{a} + {b}"),
        })
    }

    /// `a * b` for a length derived from input, or [`Error::SizeOverflow`] naming `what`.
    pub fn checked_mul(what: &'static str, a: usize, b: usize) -> Result<usize> {
        a.checked_mul(b).ok_or_else(|| Error::SizeOverflow {
            what,
            expr: format!("{a} * {b}"),
        })
    }

    /// Shorthand for [`Error::InvalidSetting`].
    pub fn setting(name: &'static str, value: impl ToString, allowed: impl Into<String>) -> Self {
        Error::InvalidSetting {
            name,
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

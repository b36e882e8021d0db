//! The error type of fastdllm-sampler.
//!
//! Every message names the parameter and the range it must lie in ("threshold must be in
//! (0, 1], got 1.3"), following TGI's `ValidationError`, so the message alone says how to fix the
//! setting. Reference: none (the Python reference asserts or silently misbehaves on bad settings).
//! Deviation: none.

use crate::profile::ProposalKind;

/// Errors of the sampler configuration and of the proposers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of its allowed range.
    #[error("{name} must be {allowed}, got {value}")]
    InvalidSetting {
        /// The parameter's name (paper vocabulary: `threshold`, `factor`, `temperature`, ...).
        name: &'static str,
        /// The rejected value, as text.
        value: String,
        /// What would have been accepted, phrased to follow "must be" (e.g. "in (0, 1]").
        allowed: String,
    },
    /// A setting that the model's proposer (its [`SamplerProfile`](crate::SamplerProfile)'s
    /// [`ProposalKind`]) does not have, as in the reference sampler it follows.
    #[error("{name} is not supported by {proposal} proposals: {reason}")]
    Unsupported {
        /// The parameter's name.
        name: &'static str,
        /// The proposal kind that lacks it (`llada_gumbel`, `dream_sample`).
        proposal: ProposalKind,
        /// Why, and what to use instead.
        reason: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `x` as an error message prints it: Rust's shortest decimal unless that is long (`5e-324`
/// prints 324 digits in decimal), then scientific notation (`5e-324`).
pub fn compact(x: f64) -> String {
    let plain = x.to_string();
    if plain.len() <= 24 {
        plain
    } else {
        format!("{x:e}")
    }
}

/// Result alias of fastdllm-sampler.
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

impl From<Error> for fastdllm_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidSetting {
                name,
                value,
                allowed,
            } => fastdllm_core::Error::setting(name, value, format!("must be {allowed}")),
            Error::Unsupported {
                name,
                proposal,
                reason,
            } => {
                fastdllm_core::Error::setting(name, format!("(set, {proposal} proposals)"), reason)
            }
            Error::Candle(e) => fastdllm_core::Error::Candle(e),
        }
    }
}

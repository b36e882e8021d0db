//! Errors of fastdllm-cache.

/// Cache configuration and storage errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A cache setting is out of range.
    #[error("invalid cache setting {name} = {value}: {allowed}")]
    InvalidSetting {
        /// Parameter name.
        name: &'static str,
        /// Rejected value.
        value: String,
        /// Allowed range.
        allowed: String,
    },
    /// A cache mode name that does not exist.
    #[error("unknown cache mode '{0}' (allowed: none, prefix, dual)")]
    UnknownMode(String),
}

/// Result alias of fastdllm-cache.
pub type Result<T> = std::result::Result<T, Error>;

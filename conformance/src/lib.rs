//! Test support for fastdllm's spec tests: tolerance comparison ([`tol`]), tiny random-weight
//! models ([`tiny`]) and a model wrapper that records every forward call ([`recorder`]).

pub mod recorder;
pub mod tiny;
pub mod tol;

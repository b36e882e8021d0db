//! conformance: fastdllm's spec as a library. Golden cases of the reference implementation
//! (goldens/FORMAT.md) are loaded, run against any [`DiffusionLm`](fastdllm_core::DiffusionLm)
//! with any cache policy and unmasking policy, and judged by FORMAT.md section 10, with the drift
//! of cached steps from the exact forward reported alongside.
//!
//! * [`golden`]: the golden case format ([`golden::Case`]), [`golden::read_cases`], the
//!   section-10 judge ([`golden::judge`]) and a [`golden::Runner`] over bundled or given models;
//! * [`engine`]: generation settings ([`engine::GenerationSettings`]: decode config + cache +
//!   unmasking rule + proposer + seed) turned into policies and run through
//!   [`fastdllm_core::generate_with`]; the golden cases are expressed in these settings, and the
//!   CLI, the server and the benches run through the same wiring;
//! * [`paths`]: where the bundled tiny models and golden files live in the repository;
//! * test support: tolerance comparison ([`tol`]), tiny random-weight models ([`tiny`]) and a
//!   model wrapper that records every forward call ([`recorder`]).
#![deny(missing_docs)]

pub mod engine;
pub mod golden;
pub mod paths;
pub mod recorder;
pub mod tiny;
pub mod tol;

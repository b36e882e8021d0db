//! conformance: fastdllm's spec as a library. Golden cases of the reference implementation
//! (goldens/FORMAT.md) are loaded, run against any [`DiffusionLm`](fastdllm_core::DiffusionLm)
//! with any cache policy and unmasking policy, and judged by FORMAT.md section 10, with the drift
//! of cached steps from the exact forward reported alongside.
//!
//! * [`golden`]: the golden case format ([`golden::Case`]), [`golden::read_cases`], the
//!   section-10 judge ([`golden::judge`]) and a [`golden::Runner`] over bundled or given models;
//!   The golden cases are expressed in the engine's settings
//!   ([`fastdllm_engine::GenerationSettings`], with the reference's full canvas,
//!   [`fastdllm_engine::Finish::Canvas`]);
//! * [`judge`]: another implementation's outputs (id, generated ids, NFE per case; docs/JUDGE.md)
//!   judged by the same section-10 function as our own runs;
//! * [`paths`]: where the bundled tiny models and golden files live in the repository;
//! * test support: tolerance comparison ([`tol`]), tiny random-weight models ([`tiny`]), a
//!   forward observer that records every forward call ([`recorder`]) and one-row inputs and
//!   K/V views for forward tests ([`forward`]).
#![deny(missing_docs)]

pub mod forward;
pub mod golden;
pub mod judge;
pub mod paths;
pub mod recorder;
pub mod tiny;
pub mod tol;

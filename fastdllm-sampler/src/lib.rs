//! fastdllm-sampler: how a diffusion LLM's logits become committed tokens.
//!
//! Two seams of fastdllm-core are implemented here (docs/ALGORITHM.md §2.2, §2.3, §2.8); the
//! serde settings of [`config`] are validated once and build the trait objects the loop runs:
//!
//! * [`Proposer`](fastdllm_core::Proposer): logits `(batch, rows, vocab)` → one proposal
//!   `(token, confidence)` per row. [`LladaProposer`] (greedy / Gumbel-max, float64 softmax
//!   confidence, or random) and [`DreamProposer`] (Dream's `sample_tokens`: temperature, top-p,
//!   top-k, float32 softmax, probability / margin / negative-entropy scores).
//! * [`UnmaskPolicy`](fastdllm_core::UnmaskPolicy): which masked candidates of the active block
//!   to commit this step. [`FixedSchedule`] (LLaDA's count schedule), [`Threshold`] (Fast-dLLM's
//!   parallel decoding), [`Factor`] (the July-2025 factor rule, with the reference's last-rank
//!   quirk), [`DreamTimesteps`] (Dream's `linspace` schedule, bit-exact), [`Origin`] (Dream's
//!   random reveals), [`QuotaThreshold`] (Fast-dLLM's Dream `confidence_threshold` without
//!   cache) and [`PerRow`] (one policy per batch row).
//!
//! The config side ([`Unmask`], [`ProposerConfig`]) is a pair of closed serde enums/structs with
//! `validate()` and `build(profile, ..)` into `Box<dyn .. + Send>`. A [`SamplerProfile`] is what
//! the sampler knows about a model: which reference proposer it follows ([`ProposalKind`]) and
//! the threshold comparison precision. [`SamplerProfile::for_spec`] gives the built-in families'
//! profiles; a model implemented elsewhere picks its own, without claiming a family.
//!
//! Reference: NVlabs/Fast-dLLM `llada/generate.py` and `dream/model/generation_utils*.py`, as
//! pinned in `conformance/goldens/FORMAT.md`. Exactness targets the goldens token for token:
//! LLaDA confidences in float64, Dream's in float32 in torch's CPU operation order, Dream's
//! timesteps bit-exact, threshold comparisons in the profile's precision. Deviations, each
//! documented where it lives: ties are broken by lower position (the reference's `topk` order is
//! unspecified), random streams are our own [`Rng`](fastdllm_core::Rng), and settings the
//! reference silently mishandles are errors.
//!
//! Policies work on plain [`Candidate`](fastdllm_core::Candidate) data, so every rule is
//! testable without tensors; indices returned are distinct and in range, and the threshold and
//! factor rules commit at least one candidate whenever one exists.
#![deny(missing_docs)]

pub mod confidence;
pub mod config;
pub mod dream;
pub mod error;
mod exp_f64;
pub mod factor;
pub mod fixed;
pub mod per_row;
pub mod profile;
pub mod rank;
pub mod threshold;
pub mod torch_f32;

pub use confidence::{DreamProposer, DreamScore, LladaProposer, Remasking};
pub use config::{check_threshold, ProposerConfig, Unmask, MIN_TEMPERATURE};
pub use dream::{
    dream_timesteps, dream_transfer_count, DreamTimesteps, Origin, QuotaThreshold, DEFAULT_EPS,
};
pub use error::{Error, Result};
pub use factor::{factor_count, factor_threshold, Factor};
pub use fixed::{fixed_count, FixedSchedule};
pub use per_row::PerRow;
pub use profile::{ProposalKind, SamplerProfile};
pub use rank::{confidence_order, rank_candidates, top_candidates};
pub use threshold::{Precision, Threshold};

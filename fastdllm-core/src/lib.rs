//! fastdllm-core: the shared vocabulary of fastdllm and its one block-wise generation loop.
//!
//! Diffusion LLMs (LLaDA, Dream) start from a canvas `prompt ++ [MASK] * gen_length` and unmask
//! it block by block (Fast-dLLM, arXiv 2505.22618; NVlabs/Fast-dLLM `llada/generate.py`). This
//! crate owns:
//!
//! * the seams the other crates plug into: [`DiffusionLm`] (models), [`CachePolicy`] +
//!   [`KvView`] (approximate KV caches), [`Proposer`] + [`UnmaskPolicy`] (samplers);
//! * the validated decode settings ([`DecodeConfig`]: gen_length, block_length, steps);
//! * [`generate()`], the single loop every cache mode and unmasking rule runs through, with NFE
//!   counting, an optional per-step [`Trace`] and optional drift measurement against the exact
//!   (no-cache) forward;
//! * [`Observed`], a model wrapper that hands each forward to a [`ForwardObserver`] (recording,
//!   timing, fault injection).
//!
//! It has no model, cache or sampler of its own, so another dLLM project can take `core + cache +
//! sampler` and bring its own model.
#![deny(missing_docs)]

mod canvas;
pub mod config;
mod drift;
pub mod error;
pub mod generate;
pub mod model;
pub mod observe;
pub mod policy;
pub mod rng;
pub mod trace;

pub use config::DecodeConfig;
pub use error::{Error, Result};
pub use generate::{
    generate, generate_with, BlockBatch, Control, FinishedRow, GenerateOptions, Generation,
    Policies, RowId, RowOutput, StepEvent,
};
pub use model::{
    DiffusionLm, ForwardInput, KvView, LogitRows, ModelFamily, ModelSpec, PassthroughKv, Positions,
};
pub use observe::{ForwardCall, ForwardObserver, Observed};
pub use policy::{
    log_softmax, CachePolicy, Candidate, ForwardPlan, KvAccess, KvShape, Proposal, Proposer,
    Selection, StepAt, StepInfo, StepObservation, TokenLogprobs, UnmaskPolicy,
};
pub use rng::Rng;
pub use trace::{Commit, DriftStats, StepRecord, Trace};

/// A vocabulary index.
pub type TokenId = u32;

//! The one implementation of every layer both architectures use: a fix or an optimisation of
//! RoPE, attention or a norm then reaches both models, and the two cannot drift apart.
//!
//! Reference: the shared structure of LLaDA's `LLaDALlamaBlock` and Qwen2's decoder layer
//! (docs/ALGORITHM.md §1.1.3, §1.2.3). `llada.rs` and `dream.rs` only name tensors and choose
//! numerics; the forward pass that assembles them is `transformer.rs`, one level up (it also needs
//! `loading`, which builds these layers from weights).

pub(crate) mod attention;
pub(crate) mod cpu_gemm;
pub(crate) mod cpu_ops;
pub(crate) mod cpu_qgemm;
pub(crate) mod embedding;
pub(crate) mod linear;
pub(crate) mod mlp;
pub(crate) mod moe;
pub(crate) mod rms_norm;
pub(crate) mod rope;

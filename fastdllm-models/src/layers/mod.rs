//! The one implementation of every layer both architectures use (STYLE 3.1: "no 39 RoPEs").
//!
//! Reference: the shared structure of LLaDA's `LLaDALlamaBlock` and Qwen2's decoder layer (SPEC
//! 1.1.3, 1.2.3). `llada.rs` and `dream.rs` only name tensors and choose numerics; the forward
//! pass that assembles them is `decoder.rs`, one level up (it also needs `loading`, which builds
//! these layers from weights).

pub(crate) mod attention;
pub(crate) mod cpu_gemm;
pub(crate) mod linear;
pub(crate) mod mlp;
pub(crate) mod rms_norm;
pub(crate) mod rope;

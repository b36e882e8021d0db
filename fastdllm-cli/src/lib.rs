//! fastdllm-cli: the `fastdllm` binary and the glue it shares with the conformance tests, the
//! benches and the server.
//!
//! * [`engine`]: one [`engine::GenerationSettings`] (decode config + cache + sampler settings)
//!   turned into policies and run through [`fastdllm_core::generate()`];
//! * [`conform`]: golden cases of the reference implementation (conformance/goldens/FORMAT.md)
//!   run and judged by FORMAT.md section 10;
//! * [`bench`]: the benchmark matrix, its records and HTML report (`fastdllm bench`);
//! * [`eval`]: task files (plain and GSM8K JSON Lines) run under several settings and scored
//!   by exact match, with NFE, tokens per forward and output tokens/s;
//! * [`malloc`]: glibc allocator tuning of the binary (large buffers stay in the heap);
//! * [`hub`]: `--model` as a Hugging Face Hub model id, through the standard cache;
//! * [`paths`]: the models bundled with the repository;
//! * [`serve`]: the OpenAI-compatible HTTP server of `fastdllm serve` (issue 6);
//! * [`trace_view`]: one generation drawn as an HTML/SVG picture (`fastdllm trace`).
//!
//! The only crate of the workspace with `anyhow` and `clap`.

pub mod bench;
pub mod conform;
pub mod engine;
pub mod eval;
#[cfg(feature = "hub")]
pub mod hub;
pub mod malloc;
pub mod paths;
pub mod serve;
pub mod trace_view;

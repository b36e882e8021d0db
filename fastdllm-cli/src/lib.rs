//! fastdllm-cli: the `fastdllm` binary (argument parsing and wiring) and the OpenAI-compatible
//! server it runs.
//!
//! * [`serve`]: the OpenAI-compatible HTTP server of `fastdllm serve`;
//! * [`malloc`]: glibc allocator tuning of the binary (large buffers stay in the heap);
//! * [`output`]: fallible writes to stdout / stderr (`outln!`, `errln!`) and the server's
//!   best-effort log lines (`logln!`).
//!
//! The work of the other commands lives in libraries: `--model` as a Hugging Face Hub id in
//! `fastdllm_models::hub` (feature `hub`, on by default); golden cases, their judge and the
//! settings → policies wiring in `conformance`; the benchmark matrix, its records and report,
//! eval and the trace picture in `fastdllm-benches`. The only crate of the workspace with `clap`.

pub mod malloc;
pub mod output;
pub mod serve;

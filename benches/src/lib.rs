//! fastdllm-benches: how fast fastdllm generates, as a library other projects can call and
//! whose records dashboards can read.
//!
//! * [`matrix`]: a matrix of generation settings ([`Matrix`]) run on one model ([`BenchModel`]),
//!   timed end to end and per forward, one [`BenchRecord`] per setting (JSON, versioned by
//!   [`SCHEMA_VERSION`]; field meanings in docs/BENCH_SCHEMA.md);
//! * [`timed`]: the forward timer (device-synchronised), a forward observer of fastdllm-core's
//!   `Observed` wrapper;
//! * [`system`]: device name, peak memory, memory bandwidth, parameter count, git commit;
//! * [`peak`]: the register-only FMA peak of one core (GFLOP per CPU-second);
//! * [`report`]: the HTML report of a set of records, with inline SVG charts;
//! * [`svg`]: the SVG and HTML pieces the reports and the trace picture draw with;
//! * [`serve`]: the result of `fastdllm bench serve` (a streamed OpenAI-compatible server under
//!   load) under vLLM `bench serve`'s keys, plus a `dllm` block;
//! * [`eval`]: task files (plain and GSM8K JSON Lines) run under several settings and scored by
//!   exact match, with NFE, tokens per forward and output tokens/s;
//! * [`trace_view`]: one generation drawn as an HTML/SVG picture (`fastdllm trace`);
//! * the helpers at the crate root are shared by the criterion benches (benches/benches/*.rs,
//!   so that every bench times the same way): the device a bench runs on ([`BenchDevice`]:
//!   synchronisation before reading the clock, since GPU kernels run asynchronously, and the
//!   `{device}_{dtype}` prefix of bench names), tiny model configs, and a timing helper for
//!   `iter_custom`.
//!
//! CPU sizes are tiny so `cargo bench` stays quick on a 2-core CI machine; CUDA sizes apply only
//! with `--features cuda` on the GPU machine. CI runs `cargo bench --no-run` only.
//!
//! The `fastdllm bench`, `eval` and `trace` commands are thin callers of this crate; generation
//! settings are [`fastdllm_engine::GenerationSettings`].
#![deny(missing_docs)]

pub mod eval;
pub mod matrix;
pub mod peak;
pub mod report;
pub mod serve;
pub mod svg;
pub mod system;
pub mod timed;
pub mod trace_view;

pub use matrix::{
    cache_cpu_config, run_setting, speedups, BenchModel, BenchRecord, Machine, Matrix, RunOptions,
    Setting, StepStats, SCHEMA_VERSION, TINY_TASK_PROMPT,
};

use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use fastdllm_core::ModelFamily;
use fastdllm_models::ModelConfig;

/// A device benches can run on.
pub trait BenchDevice {
    /// Waits for all queued work (a no-op on CPU).
    fn sync(&self) -> candle_core::Result<()>;
    /// `cpu` or `cuda`: the first part of a bench name.
    fn bench_name(&self) -> &'static str;
}

impl BenchDevice for Device {
    fn sync(&self) -> candle_core::Result<()> {
        match self {
            Device::Cpu => Ok(()),
            _ => self.synchronize(),
        }
    }
    fn bench_name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda",
            Device::Metal(_) => "metal",
        }
    }
}

/// The devices the benches run on: the CPU, plus CUDA device 0 in `cuda` builds where present.
pub fn devices() -> Vec<Device> {
    #[allow(unused_mut)]
    let mut out = vec![Device::Cpu];
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(d) => out.push(d),
        Err(e) => eprintln!("cuda benches skipped: {e}"),
    }
    out
}

/// `{device}_{dtype}`, e.g. `cpu_f32`.
pub fn prefix(device: &Device, dtype: DType) -> String {
    format!(
        "{}_{}",
        device.bench_name(),
        format!("{dtype:?}").to_lowercase()
    )
}

/// Runs `f` `iters` times and returns the total time, synchronising `device` before starting
/// and before reading the clock (for `Bencher::iter_custom`).
pub fn time_iters<F: FnMut()>(device: &Device, iters: u64, mut f: F) -> Duration {
    // A failed sync means a broken device; the bench cannot continue meaningfully.
    let sync = |d: &Device| {
        if let Err(e) = d.sync() {
            panic!("device sync failed: {e}");
        }
    };
    sync(device);
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync(device);
    start.elapsed()
}

/// A small LLaDA-shaped config: `hidden` wide, `layers` deep, 4 heads, vocab 512 (CPU-sized).
/// On CUDA, the benches use [`medium_config`].
pub fn small_config(hidden: usize, layers: usize) -> ModelConfig {
    ModelConfig {
        family: ModelFamily::Llada,
        hidden_size: hidden,
        num_layers: layers,
        num_heads: 4,
        num_kv_heads: 4,
        head_dim: hidden / 4,
        intermediate_size: hidden * 3,
        vocab_size: 512,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        max_seq_len: 4096,
        mask_token_id: 511,
        eos_token_ids: vec![510],
        pad_token_id: 510,
        bos_token_id: None,
        tie_word_embeddings: false,
        qk_norm: false,
        moe: None,
    }
}

/// The CPU cache benchmark's model shape ([`crate::matrix::cache_cpu_config`]: hidden 512, 8
/// layers, 8 heads, MLP 1536, vocab 32000) for GPU runs.
pub fn medium_config() -> ModelConfig {
    crate::matrix::cache_cpu_config()
}

/// The config for `device`: tiny on CPU, the cache benchmark's shape on a GPU.
pub fn config_for(device: &Device) -> ModelConfig {
    if device.is_cpu() {
        small_config(64, 2)
    } else {
        medium_config()
    }
}

/// The bench model of `device`: random weights of [`config_for`], f32 on CPU and bf16 on a GPU.
/// Returns the model, its dtype and its config.
pub fn bench_model(
    device: &Device,
) -> (
    std::sync::Arc<dyn fastdllm_core::DiffusionLm>,
    DType,
    ModelConfig,
) {
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    let cfg = config_for(device);
    match fastdllm_models::random_model(&cfg, device, dtype, 0) {
        Ok(m) => (m, dtype, cfg),
        Err(e) => panic!("random model: {e}"),
    }
}

/// Deterministic prompt ids in `1..vocab-2` (never mask, EOS or pad).
pub fn prompt_ids(len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| 1 + ((i * 7919) % (vocab - 3)) as u32)
        .collect()
}

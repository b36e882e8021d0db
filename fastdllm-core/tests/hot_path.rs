//! Hot-path allocation measurement (docs/BENCHMARKS.md, "Hot path"): bytes and allocations per
//! forward of each step kind, counted by a global allocator, for two canvas lengths. The slope in
//! the canvas length shows what a cached step allocates per key position; it must stay below the
//! size of one layer's full K/V (which would mean the store is copied every step) and near what the
//! attention scores need (`num_heads * window * 4` bytes per key per layer, scores + probs).
//!
//! One test in this file: the counters are process-wide. Run with `--nocapture` to see the table
//! recorded in docs/BENCHMARKS.md (`cargo test --release -p fastdllm-core --test hot_path --
//! --nocapture`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_conformance::tiny;
use fastdllm_core::{
    DecodeConfig, DiffusionLm, ForwardCall, ForwardObserver, GenerateOptions, Observed,
};
use fastdllm_engine::{self as engine, GenerationSettings};
use fastdllm_models::ModelConfig;
use fastdllm_sampler::{ProposerConfig, Unmask};

struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        COUNT.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(new_size.saturating_sub(layout.size()), Ordering::Relaxed);
        COUNT.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Records the allocations made inside each forward: (full canvas?, bytes, count).
struct Probe {
    seq_len: usize,
    log: Mutex<Vec<(bool, usize, usize)>>,
}

impl ForwardObserver for Probe {
    fn forward(&self, call: ForwardCall<'_>) -> fastdllm_core::Result<Tensor> {
        let input = call.input();
        let (b0, c0) = (BYTES.load(Ordering::Relaxed), COUNT.load(Ordering::Relaxed));
        let out = call.run()?;
        let (b1, c1) = (BYTES.load(Ordering::Relaxed), COUNT.load(Ordering::Relaxed));
        let full = input.window_start == 0 && input.tokens.dim(1)? == self.seq_len;
        if let Ok(mut l) = self.log.lock() {
            l.push((full, b1 - b0, c1 - c0));
        }
        Ok(out)
    }
}

const HIDDEN: usize = 128;
const HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const LAYERS: usize = 2;
const BLOCK: usize = 8;

/// A 2-layer LLaDA shape with wider heads than the tiny models' (2 heads of 64, vocabulary 256)
/// and room for the long canvas.
fn config() -> ModelConfig {
    ModelConfig {
        hidden_size: HIDDEN,
        num_layers: LAYERS,
        num_heads: HEADS,
        num_kv_heads: HEADS,
        head_dim: HEAD_DIM,
        intermediate_size: 256,
        vocab_size: 256,
        rope_theta: 10_000.0,
        max_seq_len: 2048,
        mask_token_id: 255,
        eos_token_ids: vec![254],
        pad_token_id: 254,
        ..tiny::llada_config()
    }
}

/// Mean (bytes, allocations) per cached-window forward for a prompt of `prompt_len`.
fn window_allocs(
    model: &dyn DiffusionLm,
    mode: CacheMode,
    prompt_len: usize,
) -> anyhow::Result<(f64, f64)> {
    let gen = 32;
    let probe = Observed::new(
        model,
        Probe {
            seq_len: prompt_len + gen,
            log: Mutex::new(Vec::new()),
        },
    );
    let prompt: Vec<u32> = (0..prompt_len).map(|i| (i % 200) as u32 + 1).collect();
    let settings = GenerationSettings {
        decode: DecodeConfig {
            gen_length: gen,
            block_length: BLOCK,
            steps: gen,
            force_block_start: None,
            max_steps_per_block: None,
        },
        cache: CacheSettings::new(mode),
        unmask: Unmask::Fixed,
        proposer: ProposerConfig::default(),
        seed: 0,
        limits: Default::default(),
    };
    engine::run(
        &probe,
        &[prompt],
        &[0],
        &settings,
        &GenerateOptions::default(),
    )?;
    let log = probe
        .into_observer()
        .log
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    if std::env::var("HOT_PATH_DEBUG").is_ok() {
        eprintln!("{mode} P={prompt_len}: {:?}", &log[..12.min(log.len())]);
    }
    let windows: Vec<_> = log
        .iter()
        .filter(|(full, _, _)| *full == (mode == CacheMode::Off))
        .collect();
    anyhow::ensure!(!windows.is_empty(), "no forward of the expected kind");
    let n = windows.len() as f64;
    Ok((
        windows.iter().map(|w| w.1 as f64).sum::<f64>() / n,
        windows.iter().map(|w| w.2 as f64).sum::<f64>() / n,
    ))
}

#[test]
fn cached_steps_allocate_no_full_kv_copy() -> anyhow::Result<()> {
    let model = fastdllm_models::random_model(&config(), &Device::Cpu, DType::F32, 0)?;
    let (short, long) = (64usize, 448usize);
    // Per extra key position, per layer: the full K/V of one layer is 2 * heads * head_dim * 4
    // bytes; the attention scores and probabilities of a dual window are 2 * heads * block * 4.
    let kv_copy = (2 * HEADS * HEAD_DIM * 4 * LAYERS) as f64;
    let scores = (2 * HEADS * BLOCK * 4 * LAYERS) as f64;
    println!("mode   | bytes/fwd (P={short}) | bytes/fwd (P={long}) | allocs/fwd | bytes per extra key | K/V copy would be | scores need");
    for mode in CacheMode::ALL {
        let (b_short, c_short) = window_allocs(model.as_ref(), mode, short)?;
        let (b_long, _) = window_allocs(model.as_ref(), mode, long)?;
        let slope = (b_long - b_short) / (long - short) as f64;
        println!("{mode:<6} | {b_short:>10.0} | {b_long:>10.0} | {c_short:>6.0} | {slope:>8.0} | {kv_copy:>6.0} | {scores:>6.0}");
        if mode == CacheMode::Dual {
            // The dual window's size does not depend on the canvas: only attention over the
            // keys may grow with it, and no per-step copy of the stored K/V.
            assert!(
                slope < kv_copy,
                "dual step allocates {slope} bytes per key: the K/V store is copied"
            );
            assert!(
                slope <= 2.0 * scores + 64.0,
                "dual step allocates {slope} bytes per key, scores need {scores}"
            );
        }
    }
    Ok(())
}

#[test]
#[ignore = "diagnostic: allocations of single candle ops"]
fn op_allocations() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (8, 128), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (384, 128), &dev)?;
    let q = Tensor::randn(0f32, 1.0, (1, 2, 8, 64), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (1, 2, 480, 64), &dev)?;
    let measure =
        |name: &str, f: &dyn Fn() -> candle_core::Result<Tensor>| -> candle_core::Result<()> {
            let (b0, c0) = (BYTES.load(Ordering::Relaxed), COUNT.load(Ordering::Relaxed));
            let t = f()?;
            let (b1, c1) = (BYTES.load(Ordering::Relaxed), COUNT.load(Ordering::Relaxed));
            println!(
                "{name}: {} bytes in {} allocations (output {} bytes)",
                b1 - b0,
                c1 - c0,
                t.elem_count() * 4
            );
            Ok(())
        };
    measure("x @ w^T (8x128 * 128x384), first call", &|| {
        x.matmul(&w.t()?)
    })?;
    measure("x @ w^T (8x128 * 128x384)", &|| x.matmul(&w.t()?))?;
    let x2 = Tensor::randn(0f32, 1.0, (8, 512), &dev)?;
    let w2 = Tensor::randn(0f32, 1.0, (1536, 512), &dev)?;
    measure("x @ w^T (8x512 * 512x1536)", &|| x2.matmul(&w2.t()?))?;
    let x3 = Tensor::randn(0f32, 1.0, (512, 512), &dev)?;
    measure("x @ w^T (512x512 * 512x1536)", &|| x3.matmul(&w2.t()?))?;
    measure("q @ k^T (2 heads, 8 x 480)", &|| q.matmul(&k.t()?))?;
    measure("softmax (2x8x480)", &|| {
        candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)
    })?;
    Ok(())
}

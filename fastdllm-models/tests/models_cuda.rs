//! CUDA checks (feature `cuda`, skipped when no device is present): the CUDA kernels (fused
//! RMSNorm, RoPE with per-row tables, softmax, strided GEMMs) give the CPU results, and an
//! LLaDA-8B / Dream-7B-shaped random model builds on the device and runs (timings printed).
#![cfg(feature = "cuda")]

mod common;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use common::sample_ids;
use fastdllm_conformance::forward::{DualKv, RecordKv};
use fastdllm_conformance::paths::bundled_model;
use fastdllm_conformance::tol::{assert_close, max_abs_err, Tol};
use fastdllm_core::{DiffusionLm, ForwardInput, PassthroughKv, Positions};
use fastdllm_models::{load_model, random_model, ModelConfig};

fn cuda() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(err) => {
            eprintln!("skipped: no CUDA device ({err})");
            None
        }
    }
}

/// A batch of two rows with per-row positions, a key bias and a row subset.
fn batch_input(device: &Device) -> ForwardInput {
    let a = sample_ids();
    let mut b = vec![53u32, 53];
    b.extend(&a[..a.len() - 2]);
    let len = a.len() as u32;
    let positions: Vec<Vec<u32>> = vec![
        (0..len).collect(),
        [0, 0].into_iter().chain(0..len - 2).collect(),
    ];
    let mut bias = vec![0f32; 2 * a.len()];
    bias[a.len()] = -1e9;
    bias[a.len() + 1] = -1e9;
    ForwardInput {
        tokens: Tensor::new(vec![a, b], device).unwrap(),
        positions: Positions::PerRow(Tensor::new(positions, device).unwrap()),
        window_start: 0,
        key_bias: Some(Tensor::from_vec(bias, (2, 1, 1, len as usize), device).unwrap()),
        logits_rows: (3..len as usize).into(),
    }
}

fn to_cpu(input: &ForwardInput) -> ForwardInput {
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    ForwardInput {
        tokens: cpu(&input.tokens),
        positions: match &input.positions {
            Positions::PerRow(p) => Positions::PerRow(cpu(p)),
            other => other.clone(),
        },
        window_start: input.window_start,
        key_bias: input.key_bias.as_ref().map(cpu),
        logits_rows: input.logits_rows.clone(),
    }
}

#[test]
fn cuda_matches_cpu_on_the_fixtures() {
    let Some(device) = cuda() else { return };
    for name in ["llada-tiny", "dream-tiny"] {
        let cpu = load_model(&bundled_model(name), &Device::Cpu, DType::F32).unwrap();
        let input = batch_input(&device);
        let want = cpu
            .model
            .forward(&to_cpu(&input), &mut PassthroughKv)
            .unwrap();
        for (dtype, allowed) in [(DType::F32, 1e-4), (DType::F16, 1e-2), (DType::BF16, 0.1)] {
            let gpu = load_model(&bundled_model(name), &device, dtype).unwrap();
            let got = gpu
                .model
                .forward(&input, &mut PassthroughKv)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap();
            let diff = max_abs_err(&got, &want).unwrap();
            eprintln!("{name} cuda {dtype:?} vs cpu f32: max abs diff {diff:.3e}");
            // Relative to the logits' range.
            assert_close(&got, &want, Tol::of_range(allowed, &want));
        }
    }
}

fn time_model(label: &str, model: &dyn DiffusionLm, device: &Device) {
    let (seq_len, block) = (1024usize, 32usize);
    let ids: Vec<u32> = (0..seq_len as u32).map(|i| (i * 7919) % 100_000).collect();
    let tokens = Tensor::new(ids.as_slice(), device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let full = ForwardInput {
        tokens: tokens.clone(),
        positions: Positions::Contiguous { start: 0 },
        window_start: 0,
        key_bias: None,
        logits_rows: (512..512 + block).into(),
    };
    let mut record = RecordKv::default();
    model.forward(&full, &mut record).unwrap();
    device.synchronize().unwrap();
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        model.forward(&full, &mut PassthroughKv).unwrap();
    }
    device.synchronize().unwrap();
    let full_ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;

    // The dual-cache block over the full-length K/V, written in place as a real dual cache does.
    let mut kv = DualKv::new(&record.layers, 512).unwrap();
    let dual = ForwardInput {
        tokens: tokens.narrow(1, 512, block).unwrap(),
        positions: Positions::Contiguous { start: 512 },
        window_start: 512,
        key_bias: None,
        logits_rows: (0..block).into(),
    };
    let out = model.forward(&dual, &mut kv).unwrap();
    assert_eq!(out.dims(), &[1, block, model.spec().vocab_size]);
    device.synchronize().unwrap();
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        model.forward(&dual, &mut kv).unwrap();
    }
    device.synchronize().unwrap();
    let dual_ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    eprintln!(
        "{label}: full forward L={seq_len} (32 logit rows) {full_ms:.1} ms; \
         dual block of {block} over {seq_len} keys {dual_ms:.2} ms"
    );

    // Launch-overhead probe: windows of 1, 32 and 128 tokens attending only to themselves.
    for w in [1usize, 32, 128] {
        let small = ForwardInput {
            tokens: tokens.narrow(1, 0, w).unwrap(),
            positions: Positions::Contiguous { start: 0 },
            window_start: 0,
            key_bias: None,
            logits_rows: (0..w.min(block)).into(),
        };
        model.forward(&small, &mut PassthroughKv).unwrap();
        device.synchronize().unwrap();
        let t = Instant::now();
        for _ in 0..reps {
            model.forward(&small, &mut PassthroughKv).unwrap();
        }
        device.synchronize().unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        eprintln!("{label}: window of {w} (no cache) {ms:.2} ms");
    }
}

/// Run with `--ignored`: builds 8B / 7B-shaped bf16 models with random weights on the GPU.
#[test]
#[ignore]
fn cuda_full_size_random_models() {
    let Some(device) = cuda() else { return };
    for (label, cfg) in [
        ("llada-8b bf16", ModelConfig::llada_8b()),
        ("dream-7b bf16", ModelConfig::dream_7b()),
    ] {
        let t = Instant::now();
        let model = random_model(&cfg, &device, DType::BF16, 42).unwrap();
        device.synchronize().unwrap();
        eprintln!("{label}: built in {:.1} s", t.elapsed().as_secs_f64());
        time_model(label, model.as_ref(), &device);
    }
}

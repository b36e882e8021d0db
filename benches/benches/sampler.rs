//! Sampler benches: logits to proposals (softmax + argmax, f64 as the reference) and the
//! unmasking rules' selection, per step of one block.
//!
//! Names: `{device}_{dtype}/sampler/{what}_v{vocab}_r{rows}`; throughput = rows scored.

use candle_core::{DType, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastdllm_benches::{devices, prefix, time_iters};
use fastdllm_core::{Candidate, Rng, StepInfo};
use fastdllm_sampler::{ProposerConfig, SamplerProfile, Unmask};

fn bench_sampler(c: &mut Criterion) {
    for device in devices() {
        let (vocab, rows) = if device.is_cpu() {
            (4096, 32)
        } else {
            (126_464, 32)
        };
        let name = prefix(&device, DType::F32);
        let mut g = c.benchmark_group(format!("{name}/sampler"));
        g.throughput(Throughput::Elements(rows as u64));
        let logits = match Tensor::randn(0f32, 3.0, (1, rows, vocab), &device) {
            Ok(t) => t,
            Err(e) => panic!("random logits: {e}"),
        };
        for unmask in [Unmask::Fixed, Unmask::Threshold { threshold: 0.9 }] {
            let mut proposer =
                match ProposerConfig::default().build(SamplerProfile::llada(), &unmask) {
                    Ok(p) => p,
                    Err(e) => panic!("proposer: {e}"),
                };
            let mut rngs = vec![Rng::new(0)];
            g.bench_function(
                format!("propose_{}_v{vocab}_r{rows}", unmask.label()),
                |b| {
                    b.iter_custom(|iters| {
                        time_iters(&device, iters, || {
                            let p = proposer.propose(&logits, &mut rngs);
                            std::hint::black_box(p.is_ok());
                        })
                    })
                },
            );
            let mut policy = match unmask.build(SamplerProfile::llada(), 0) {
                Ok(p) => p,
                Err(e) => panic!("policy: {e}"),
            };
            let candidates: Vec<Candidate> = (0..rows)
                .map(|i| Candidate {
                    position: i,
                    token: i as u32,
                    confidence: (i as f64 * 0.37).fract(),
                })
                .collect();
            let info = StepInfo {
                row: 0,
                step: 0,
                steps_per_block: rows,
                block_length: rows,
                block_masks_at_start: rows,
            };
            g.bench_function(format!("select_{}_r{rows}", unmask.label()), |b| {
                b.iter_custom(|iters| {
                    time_iters(&device, iters, || {
                        std::hint::black_box(policy.select(&candidates, &info));
                    })
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_sampler);
criterion_main!(benches);

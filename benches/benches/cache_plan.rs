//! Cache plan benches: the pure `CacheSettings::plan` over every step of a generation (no
//! tensors), for each cache mode and refresh schedule.
//!
//! Names: `cpu_none/cache_plan/{mode}_g{gen}_b{block}`; throughput = steps planned.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastdllm_benches::time_iters;
use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_core::StepAt;

fn bench_plan(c: &mut Criterion) {
    let (prompt, gen, block) = (256usize, 1024usize, 32usize);
    let seq_len = prompt + gen;
    let device = candle_core::Device::Cpu;
    // Plans are host-only: no dtype, hence `cpu_none`.
    let mut g = c.benchmark_group("cpu_none/cache_plan");
    g.throughput(Throughput::Elements(gen as u64));
    for (settings, label) in [
        (CacheSettings::new(CacheMode::Off), "none".to_string()),
        (CacheSettings::new(CacheMode::Prefix), "prefix".to_string()),
        (CacheSettings::new(CacheMode::Dual), "dual".to_string()),
        (
            CacheSettings {
                refresh_every: Some(4),
                ..CacheSettings::new(CacheMode::Dual)
            },
            "dual_r4".to_string(),
        ),
    ] {
        g.bench_function(format!("{label}_g{gen}_b{block}"), |b| {
            b.iter_custom(|iters| {
                time_iters(&device, iters, || {
                    for k in 0..gen / block {
                        let start = prompt + k * block;
                        for step in 0..block {
                            let at = StepAt {
                                block_idx: k,
                                block: start..start + block,
                                step,
                                seq_len,
                            };
                            std::hint::black_box(settings.plan(&at));
                        }
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_plan);
criterion_main!(benches);

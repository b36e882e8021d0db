//! Forward benches: one forward of a random-weight LLaDA-shaped model for each step kind, full
//! canvas (no cache / refresh), PrefixCache window `[s_k, L)` and DualCache window `[s_k, e_k)`,
//! the cache filled by a refresh beforehand.
//!
//! Names: `{device}_{dtype}/forward/{kind}_p{prompt}_g{gen}_b{block}`; throughput = positions
//! forwarded.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastdllm_benches::{bench_model, devices, prefix, prompt_ids, time_iters};
use fastdllm_cache::{BlockCache, CacheMode, CacheSettings};
use fastdllm_core::{CachePolicy, ForwardInput, ForwardPlan, KvAccess, KvShape, Positions};

fn input(
    ids: &[u32],
    window: std::ops::Range<usize>,
    block: std::ops::Range<usize>,
    device: &Device,
) -> ForwardInput {
    let tokens = match Tensor::new(&ids[window.clone()], device).and_then(|t| t.unsqueeze(0)) {
        Ok(t) => t,
        Err(e) => panic!("tokens: {e}"),
    };
    ForwardInput {
        tokens,
        positions: Positions::Contiguous {
            start: window.start,
        },
        window_start: window.start,
        key_bias: None,
        logits_rows: (block.start - window.start..block.end - window.start).into(),
    }
}

fn bench_forward(c: &mut Criterion) {
    for device in devices() {
        let (model, dtype, _) = bench_model(&device);
        let (prompt, gen, block) = if device.is_cpu() {
            (64usize, 64usize, 16usize)
        } else {
            (256, 256, 32)
        };
        let spec = model.spec().clone();
        let seq_len = prompt + gen;
        let mut ids = prompt_ids(prompt, spec.vocab_size);
        ids.resize(seq_len, spec.mask_token_id);
        let blk = prompt..prompt + block;
        let mut g = c.benchmark_group(format!("{}/forward", prefix(&device, dtype)));
        g.sample_size(10);
        for mode in CacheMode::ALL {
            let mut cache = match BlockCache::new(CacheSettings::new(mode)) {
                Ok(c) => c,
                Err(e) => panic!("cache: {e}"),
            };
            let shape = KvShape {
                num_layers: spec.num_layers,
                batch: 1,
                num_kv_heads: spec.num_kv_heads,
                seq_len,
                head_dim: spec.head_dim,
                dtype,
                device: device.clone(),
            };
            let prepared = cache.prepare(&shape).and_then(|_| {
                // No-cache mode has no storage: its "refresh" is a plain full forward.
                let kv = if mode == CacheMode::Off {
                    KvAccess::Fresh
                } else {
                    KvAccess::Refresh
                };
                let plan = ForwardPlan {
                    window: 0..seq_len,
                    kv,
                };
                let full = input(&ids, 0..seq_len, blk.clone(), &device);
                model.forward(&full, cache.view(&plan)?)
            });
            if let Err(e) = prepared {
                panic!("refresh: {e}");
            }
            let (kind, plan) = match mode {
                CacheMode::Prefix => (
                    "prefix_window",
                    ForwardPlan {
                        window: prompt..seq_len,
                        kv: KvAccess::Reuse,
                    },
                ),
                CacheMode::Dual => (
                    "dual_window",
                    ForwardPlan {
                        window: blk.clone(),
                        kv: KvAccess::Reuse,
                    },
                ),
                _ => (
                    "full",
                    ForwardPlan {
                        window: 0..seq_len,
                        kv: KvAccess::Fresh,
                    },
                ),
            };
            let inp = input(&ids, plan.window.clone(), blk.clone(), &device);
            g.throughput(Throughput::Elements(plan.window.len() as u64));
            g.bench_function(format!("{kind}_p{prompt}_g{gen}_b{block}"), |b| {
                b.iter_custom(|iters| {
                    time_iters(&device, iters, || {
                        let out = cache.view(&plan).and_then(|kv| model.forward(&inp, kv));
                        std::hint::black_box(out.is_ok());
                    })
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_forward);
criterion_main!(benches);

//! Generation benches: whole generations through `engine::run` for each cache mode and rule, a
//! random-weight LLaDA-shaped model (tiny on CPU). NFE is printed next to the criterion output.
//!
//! Names: `{device}_{dtype}/generate/{cache}_b{block}_{rule}` (`fixed`, `t0.9`), e.g.
//! `cpu_f32/generate/dual_b32_t0.9`; throughput = generated tokens.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastdllm_benches::{bench_model, devices, prefix, prompt_ids, time_iters};
use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_core::{DecodeConfig, GenerateOptions};
use fastdllm_engine::{self as engine, GenerationSettings};
use fastdllm_sampler::{ProposerConfig, Unmask};

fn bench_generate(c: &mut Criterion) {
    for device in devices() {
        let (model, dtype, cfg) = bench_model(&device);
        let (prompt_len, gen, block) = if device.is_cpu() {
            (32usize, 64usize, 32usize)
        } else {
            (256, 256, 32)
        };
        let prompts = vec![prompt_ids(prompt_len, cfg.vocab_size)];
        let mut g = c.benchmark_group(format!("{}/generate", prefix(&device, dtype)));
        g.sample_size(10);
        g.throughput(Throughput::Elements(gen as u64));
        for (unmask, rule) in [
            (Unmask::Fixed, "fixed".to_string()),
            (Unmask::Threshold { threshold: 0.9 }, "t0.9".to_string()),
        ] {
            for mode in CacheMode::ALL {
                let settings = GenerationSettings {
                    decode: DecodeConfig {
                        gen_length: gen,
                        block_length: block,
                        steps: gen,
                        force_block_start: None,
                        max_steps_per_block: None,
                    },
                    cache: CacheSettings::new(mode),
                    unmask,
                    proposer: ProposerConfig::default(),
                    seed: 0,
                    limits: Default::default(),
                };
                let run = || {
                    engine::run(
                        model.as_ref(),
                        &prompts,
                        &[0],
                        &settings,
                        &GenerateOptions::default(),
                    )
                };
                match run() {
                    Ok(out) => eprintln!(
                        "{}/generate/{mode}_b{block}_{rule}: nfe {}",
                        prefix(&device, dtype),
                        out.nfe
                    ),
                    Err(e) => panic!("generation failed: {e:#}"),
                }
                g.bench_function(format!("{mode}_b{block}_{rule}"), |b| {
                    b.iter_custom(|iters| {
                        time_iters(&device, iters, || {
                            std::hint::black_box(run().is_ok());
                        })
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench_generate);
criterion_main!(benches);

//! Start-up helpers shared by the server tests: the bundled tiny LLaDA and the CLI's decode
//! defaults for it.
#![allow(dead_code)] // each test binary uses its own subset

use candle_core::{DType, Device};
use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_cli::serve::Defaults;
use fastdllm_core::DecodeConfig;
use fastdllm_engine::GenerationSettings;
use fastdllm_models::LoadedModel;
use fastdllm_sampler::{ProposerConfig, Unmask};

/// The bundled model `name` (`llada-tiny`, `dream-tiny`, ...) on the CPU in f32.
pub fn load_bundled(name: &str) -> LoadedModel {
    fastdllm_models::load_model(
        &fastdllm_conformance::paths::bundled_model(name),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
}

/// The bundled tiny LLaDA on the CPU in f32.
pub fn load_tiny() -> LoadedModel {
    load_bundled("llada-tiny")
}

/// The CLI's defaults for the tiny model with answers of `gen_length`: blocks of 8, one token per
/// step, no cache, the fixed rule, seed 0.
pub fn tiny_defaults(gen_length: usize) -> Defaults {
    Defaults {
        settings: GenerationSettings {
            decode: DecodeConfig {
                gen_length,
                block_length: 8,
                steps: gen_length,
                force_block_start: None,
                max_steps_per_block: None,
            },
            cache: CacheSettings::new(CacheMode::Off),
            unmask: Unmask::Fixed,
            proposer: ProposerConfig::default(),
            seed: 0,
            limits: Default::default(),
        },
        explicit_steps: false,
    }
}

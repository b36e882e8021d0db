//! Helpers shared by the integration tests: the bundled tiny LLaDA and the CLI's decode defaults
//! for it (server tests), and runs of the `fastdllm` binary with its one-line errors checked.
#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::OsStr;
use std::process::Command;

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

/// One finished run of the `fastdllm` binary.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

/// Runs the `fastdllm` binary of this build with `args` and waits for it.
pub fn fastdllm<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args(args)
        .output()
        .expect("the fastdllm binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `fastdllm args` and asserts success; returns the run.
#[track_caller]
pub fn fastdllm_ok<S: AsRef<OsStr> + std::fmt::Debug>(args: &[S]) -> Run {
    let run = fastdllm(args);
    assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    run
}

/// Asserts that `fastdllm args` fails (with exit code `code` when given, else any non-zero one),
/// without a panic, and that its first `error` line names every needle.
#[track_caller]
pub fn expect_error(args: &[&str], code: Option<i32>, needles: &[&str]) {
    let run = fastdllm(args);
    let stderr = &run.stderr;
    match code {
        Some(code) => assert_eq!(run.code, code, "{args:?}: {stderr}"),
        None => assert_ne!(run.code, 0, "{args:?} should fail; stderr: {stderr}"),
    }
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or_else(|| panic!("{args:?}: no error line in {stderr}"));
    for n in needles {
        assert!(
            line.contains(n),
            "{args:?}: error line does not name '{n}': {line}"
        );
    }
}

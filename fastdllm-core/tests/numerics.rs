//! Sampling numerics (docs/RELIABILITY.md): non-finite logits fail the step with a typed error
//! naming the row and the answer position; a temperature too small for float32 is rejected with the
//! allowed range.

use candle_core::{DType, Device, Tensor};
use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_core::{DecodeConfig, ForwardCall, GenerateOptions, ModelFamily, Observed};
use fastdllm_engine::{self as engine, GenerationSettings};
use fastdllm_sampler::{ProposerConfig, Unmask};

/// Replaces the last logits row of every forward by NaN.
fn last_row_nan(call: ForwardCall<'_>) -> fastdllm_core::Result<Tensor> {
    let logits = call.run()?;
    let r = logits.dim(1)?;
    let nan = logits.narrow(1, r - 1, 1)?.affine(0.0, f64::NAN)?;
    Ok(Tensor::cat(&[&logits.narrow(1, 0, r - 1)?, &nan], 1)?)
}

fn settings(temperature: f64) -> GenerationSettings {
    GenerationSettings {
        decode: DecodeConfig {
            gen_length: 8,
            block_length: 8,
            steps: 8,
            force_block_start: None,
            max_steps_per_block: None,
        },
        cache: CacheSettings::new(CacheMode::Off),
        unmask: Unmask::Fixed,
        proposer: ProposerConfig {
            temperature,
            ..Default::default()
        },
        seed: 0,
        limits: Default::default(),
    }
}

#[test]
fn non_finite_logits_name_the_row_and_position() {
    let loaded = fastdllm_models::load_model(
        &fastdllm_conformance::paths::default_model(),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    // The tiny LLaDA with the last logits row of every forward replaced by NaN.
    let model = Observed::new(loaded.model.clone(), last_row_nan);
    let prompt = loaded.tokenizer.encode("copy ab", true).unwrap();
    // Two rows: the error names the first one whose read logits are NaN (row 0, the block's
    // last answer position 7, the first step).
    let err = engine::run(
        &model,
        &[prompt.clone(), prompt],
        &[0, 1],
        &settings(0.0),
        &GenerateOptions::default(),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("non-finite logits"), "{msg}");
    assert!(
        msg.contains("row 0 at answer position 7 (step 0 of block 0)"),
        "{msg}"
    );
    assert!(matches!(
        err,
        engine::Error::Core(fastdllm_core::Error::NonFiniteLogits {
            row: 0,
            position: 7,
            ..
        })
    ));
}

#[test]
fn a_temperature_below_float32_range_is_rejected_for_both_families() {
    for family in [ModelFamily::Llada, ModelFamily::Dream] {
        let mut s = settings(1e-38);
        if family == ModelFamily::Dream {
            s.unmask = Unmask::DreamTimesteps { eps: 1e-3 };
        }
        let e = format!("{:#}", s.validate(family).unwrap_err());
        assert!(e.contains("temperature") && e.contains(">= 1e-6"), "{e}");
        s.proposer.temperature = 1e-6;
        s.validate(family).unwrap();
    }
}

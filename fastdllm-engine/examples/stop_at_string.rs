//! Stopping at a string from the library: the engine ends a row's answer at the first stop
//! string, streams its text as it commits, and stops decoding the row at once (the rest of the
//! canvas is never decoded). Runs on the tiny LLaDA bundled in the repository:
//!
//! ```text
//! cargo run -p fastdllm-engine --example stop_at_string
//! ```

use std::path::Path;

use candle_core::{DType, Device};
use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_core::{DecodeConfig, GenerateOptions};
use fastdllm_engine::{run_rows, AnswerLimits, Finish, FinishReason, GenerationSettings, RowEvent};
use fastdllm_sampler::{ProposerConfig, Unmask};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/llada-tiny");
    let loaded = fastdllm_models::load_model(&dir, &Device::Cpu, DType::F32)?;
    let prompt = loaded.tokenizer.encode("copy 3dbk......=", true)?;
    let settings = |finish: Finish, stop: &[&str]| GenerationSettings {
        decode: DecodeConfig {
            gen_length: 64,
            block_length: 8,
            steps: 64,
            force_block_start: None,
            max_steps_per_block: None,
        },
        cache: CacheSettings::new(CacheMode::Dual),
        unmask: Unmask::Threshold { threshold: 0.9 },
        proposer: ProposerConfig::default(),
        seed: 0,
        limits: AnswerLimits {
            max_tokens: None,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            finish,
        },
    };
    let run = |s: &GenerationSettings, print: bool| {
        run_rows(
            loaded.model.as_ref(),
            Some(&loaded.tokenizer),
            std::slice::from_ref(&prompt),
            &[s.unmask],
            &[s.seed],
            s,
            &GenerateOptions::default(),
            &mut |_row, ev| {
                if let (true, RowEvent::Done(a)) = (print, ev) {
                    println!(
                        "answer {:?} ({:?})",
                        a.text.unwrap_or_default(),
                        a.finish_reason
                    );
                }
            },
        )
    };

    // The reference decodes the whole 64-position canvas whatever the answer.
    let canvas = run(&settings(Finish::Canvas, &[]), false)?;
    // The engine's default: the row leaves once its answer is final.
    let answer = run(&settings(Finish::Answer, &[]), true)?;
    // And at a stop string: the answer ends before "k", as soon as "k" is committed.
    let stop = run(&settings(Finish::Answer, &["k"]), true)?;

    println!(
        "forwards: whole canvas {}, answer final {}, stop at \"k\" {}",
        canvas.nfe, answer.nfe, stop.nfe
    );
    assert_eq!(answer.answers[0].text, canvas.answers[0].text);
    assert_eq!(stop.answers[0].finish_reason, FinishReason::Stop);
    assert!(!stop.answers[0].text.as_deref().unwrap_or("k").contains('k'));
    assert!(answer.nfe < canvas.nfe && stop.nfe <= answer.nfe);
    Ok(())
}

//! `fastdllm trace`: one generation rendered as a self-contained HTML picture (inline SVG), each
//! answer token a cell coloured by the forward that committed it; see
//! [`fastdllm_benches::trace_view`]. Same model and decoding flags as `generate`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use fastdllm_benches::trace_view::{render, TraceCell, TracePicture};
use fastdllm_core::GenerateOptions;
use fastdllm_engine as engine;

use super::args::{DecodeArgs, DecodeDefaults, ModelArgs};

/// Arguments of `fastdllm trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Prompt text (the chat template is applied unless --raw).
    #[arg(long, default_value = fastdllm_benches::TINY_TASK_PROMPT)]
    prompt: String,
    /// Do not apply the chat template.
    #[arg(long)]
    raw: bool,
    /// Output HTML file.
    #[arg(long, default_value = "trace.html")]
    out: std::path::PathBuf,
}

pub fn run(a: TraceArgs) -> Result<ExitCode> {
    let (dir, loaded) = a.model.load()?;
    let spec = loaded.model.spec().clone();
    let settings = a
        .decode
        .settings(spec.family, &DecodeDefaults::from_dir(&dir)?)?;
    if a.prompt.trim().is_empty() {
        bail!("the prompt is empty (give some text with --prompt)");
    }
    let text = if a.raw {
        a.prompt.clone()
    } else {
        loaded.info.chat_template.apply(&a.prompt)?
    };
    let add_special = a.raw || loaded.info.chat_template.add_special_tokens();
    let prompt = loaded.tokenizer.encode(&text, add_special)?;
    let start = std::time::Instant::now();
    let gen = engine::run(
        loaded.model.as_ref(),
        &[prompt],
        &[settings.seed],
        &settings,
        &GenerateOptions::default(),
    )?;
    let wall = start.elapsed().as_secs_f64();
    let row = gen.rows.first().context("no output row")?;
    let cells = row
        .generated
        .iter()
        .zip(&row.unmask_step)
        .map(|(&tok, &step)| {
            let text = match step {
                // Special tokens decode to nothing; name the end of the answer instead.
                Some(_) if spec.eos_token_ids.contains(&tok) => Some("<eos>".to_string()),
                Some(_) => Some(loaded.tokenizer.decode(&[tok])?),
                None => None,
            };
            Ok(TraceCell { text, step })
        })
        .collect::<Result<Vec<_>>>()?;
    let answer = engine::trim_at_eos(&row.generated, &spec.eos_token_ids);
    let tps = if row.nfe > 0 {
        row.tokens_per_step.iter().sum::<usize>() as f64 / row.nfe as f64
    } else {
        0.0
    };
    let d = &settings.decode;
    let title = format!(
        "{} | gen {} block {} steps {} | cache {} | {} | T={}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        d.gen_length,
        d.block_length,
        d.steps,
        settings.cache.label(),
        settings.unmask.label(),
        settings.proposer.temperature
    );
    let caption = vec![
        format!(
            "NFE {} | {:.2} tokens/step (max {}) | {} answer tokens before EOS | {:.1} ms",
            row.nfe,
            tps,
            row.tokens_per_step.iter().max().copied().unwrap_or(0),
            answer.len(),
            wall * 1e3
        ),
        format!("answer: {:?}", loaded.tokenizer.decode(answer)?),
    ];
    let picture = TracePicture {
        title,
        caption,
        prompt: text,
        cells,
        block_length: d.block_length,
        nfe: row.nfe,
    };
    std::fs::write(&a.out, render(&picture))
        .with_context(|| format!("writing {}", a.out.display()))?;
    fastdllm_cli::errln!(
        "wrote {} (nfe {}, {:.2} tokens/step)",
        a.out.display(),
        row.nfe,
        tps
    )?;
    Ok(ExitCode::SUCCESS)
}

//! `fastdllm generate`: one prompt (or several, batched) through the engine.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use fastdllm_core::GenerateOptions;
use fastdllm_engine as engine;
use serde_json::json;

use super::args::{print_settings, resolve_flags, DecodeArgs, DecodeDefaults, ModelArgs};

/// Arguments of `fastdllm generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Prompt text (repeat for a batch); `-` reads it from stdin. The model's chat template is
    /// applied unless --raw.
    #[arg(long, required_unless_present_any = ["prompt_ids", "prompt_file"])]
    prompt: Vec<String>,
    /// Read a prompt from a file (repeatable; after the --prompt ones in the batch). At most
    /// the model's max_seq_len * 16 bytes; one trailing newline is dropped.
    #[arg(long, value_name = "PATH", conflicts_with = "prompt_ids")]
    prompt_file: Vec<PathBuf>,
    /// Prompt as comma-separated token ids, used as is (repeat for a batch).
    #[arg(long, conflicts_with = "prompt")]
    prompt_ids: Vec<String>,
    /// Do not apply the chat template (plain tokenizer encoding, special tokens included).
    #[arg(long)]
    raw: bool,
    /// Print one JSON object (ids, text, nfe, wall time, output tokens/s).
    #[arg(long)]
    json: bool,
    /// Include the per-step trace in the JSON output.
    #[arg(long)]
    trace: bool,
    /// Measure drift of every cached step against the exact forward (reported in --json).
    #[arg(long)]
    drift: bool,
    /// Stop string (repeatable): the answer ends before the earliest match, and the row stops
    /// decoding as soon as it is committed.
    #[arg(long, value_name = "STR")]
    stop: Vec<String>,
    /// Most answer tokens; the canvas (--gen-length) is rounded up to whole blocks when not given.
    #[arg(long, value_parser = super::args::bounds::tokens())]
    max_tokens: Option<usize>,
}

/// Parses `--prompt-ids` text.
/// Every comma-separated entry must be a token id: an empty entry (`1,,2`, a trailing comma) is
/// an error, not skipped.
pub fn parse_ids(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, s)| {
            if s.is_empty() {
                bail!("invalid --prompt-ids '{text}': entry {} is empty (give comma-separated token ids, e.g. 1,2,3)", i + 1);
            }
            s.parse::<u32>().with_context(|| format!("invalid --prompt-ids '{text}': '{s}' is not a token id (a non-negative integer)"))
        })
        .collect()
}

/// Reads one prompt of at most `cap` bytes from `r` (`what` names the source in errors: the
/// path, or stdin): UTF-8, one trailing newline (`\n` or `\r\n`) dropped.
fn read_prompt(r: impl Read, what: &str, cap: usize) -> Result<String> {
    let mut bytes = Vec::new();
    r.take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the prompt from {what}"))?;
    if bytes.len() > cap {
        bail!("the prompt in {what} is larger than {cap} bytes (the most that fit the model's maximum sequence length)");
    }
    let mut text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("the prompt in {what} is not UTF-8 text: {e}"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// The prompt texts of `--prompt` (`-` = stdin, read once) then `--prompt-file`, each at most
/// `cap` bytes.
fn prompt_texts(prompt: &[String], files: &[PathBuf], cap: usize) -> Result<Vec<String>> {
    if prompt.iter().filter(|p| p.as_str() == "-").count() > 1 {
        bail!("--prompt - is given more than once: stdin holds one prompt");
    }
    let mut out = Vec::with_capacity(prompt.len() + files.len());
    for p in prompt {
        out.push(if p == "-" {
            read_prompt(std::io::stdin().lock(), "stdin (--prompt -)", cap)?
        } else {
            if p.len() > cap {
                bail!("the prompt in --prompt is larger than {cap} bytes (the most that fit the model's maximum sequence length)");
            }
            p.clone()
        });
    }
    for path in files {
        let what = format!("--prompt-file {}", path.display());
        // A FIFO or device is refused before it is opened (opening a FIFO blocks).
        fastdllm_models::regular_file(path, &what)?;
        let f = std::fs::File::open(Path::new(path))
            .with_context(|| format!("cannot read the prompt from {what}"))?;
        out.push(read_prompt(f, &what, cap)?);
    }
    Ok(out)
}

pub fn run(a: GenerateArgs) -> Result<ExitCode> {
    let (dir, loaded) = a.model.load()?;
    let spec = loaded.model.spec().clone();
    let defaults = DecodeDefaults::from_dir(&dir)?;
    // The canvas: --gen-length, else --max-tokens rounded up to whole blocks (the answer is cut
    // to --max-tokens), else the directory's.
    let knobs = engine::Knobs {
        max_tokens: a.max_tokens,
        stop: (!a.stop.is_empty()).then(|| engine::Stop::Many(a.stop.clone())),
        ..a.decode.knobs()
    };
    let settings = resolve_flags(&knobs, spec.family, &defaults)?;
    print_settings(&dir, &loaded, &settings, &defaults)?;
    let prompts: Vec<Vec<u32>> = if a.prompt_ids.is_empty() {
        let cap = loaded.tokenizer.prompt_byte_cap(spec.max_seq_len);
        prompt_texts(&a.prompt, &a.prompt_file, cap)?
            .iter()
            .map(|p| {
                if p.trim().is_empty() {
                    bail!("the prompt is empty (give some text with --prompt)");
                }
                let text = if a.raw {
                    p.clone()
                } else {
                    loaded.info.chat_template.apply(p)?
                };
                let add_special = a.raw || loaded.info.chat_template.add_special_tokens();
                Ok(loaded.tokenizer.encode(&text, add_special)?)
            })
            .collect::<Result<_>>()?
    } else {
        a.prompt_ids
            .iter()
            .map(|t| parse_ids(t))
            .collect::<Result<_>>()?
    };
    let opts = GenerateOptions {
        trace: a.trace,
        drift: a.drift,
    };
    let start = Instant::now();
    let gen = engine::run_batch(
        loaded.model.as_ref(),
        Some(&loaded.tokenizer),
        &prompts,
        &settings,
        &opts,
        &mut |_, _| {},
    )?;
    let wall = start.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    let mut out_tokens = 0usize;
    for (row, answer) in gen.rows.iter().zip(&gen.answers) {
        out_tokens += answer.completion_tokens;
        rows.push(json!({
            "prompt_ids": row.prompt,
            "generated_ids": row.generated,
            "answer_ids": answer.token_ids,
            "answer_len": answer.completion_tokens,
            "text": answer.text,
            "finish_reason": answer.finish_reason,
            "nfe": row.nfe,
            "tokens_per_step": row.tokens_per_step,
        }));
    }
    let tokens_per_s = if wall > 0.0 {
        out_tokens as f64 / wall
    } else {
        0.0
    };
    if a.json {
        let mut obj = rows[0].clone();
        obj["model"] = json!(dir.display().to_string());
        obj["settings"] = serde_json::to_value(&settings)?;
        obj["nfe"] = json!(gen.nfe);
        obj["wall_ms"] = json!(wall * 1e3);
        obj["output_tokens"] = json!(out_tokens);
        obj["tokens_per_s"] = json!(tokens_per_s);
        if rows.len() > 1 {
            obj["batch"] = json!(rows);
        }
        if let Some(t) = &gen.trace {
            if a.drift {
                obj["drift"] = json!({ "summary": t.drift_summary(), "steps": t.steps.iter().filter_map(|s| s.drift.map(|d| json!({"forward_idx": s.forward_idx, "block_idx": s.block_idx, "step": s.step, "stats": d}))).collect::<Vec<_>>() });
            }
            if a.trace {
                obj["trace"] = serde_json::to_value(t)?;
            }
        }
        fastdllm_cli::outln!("{}", serde_json::to_string_pretty(&obj)?)?;
    } else {
        for r in &rows {
            fastdllm_cli::outln!("{}", r["text"].as_str().unwrap_or_default())?;
        }
        fastdllm_cli::errln!(
            "[{}] nfe {}, {} output tokens in {:.1} ms ({:.1} tokens/s)",
            settings.label(),
            gen.nfe,
            out_tokens,
            wall * 1e3,
            tokens_per_s
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

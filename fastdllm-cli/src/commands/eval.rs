//! `fastdllm eval`: exact-match accuracy and speed of a task file under several settings.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use fastdllm_benches::eval::{
    encode_prompts, evaluate, format_table, html, parse_settings, read_tasks, report_json,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::args::{bounds, DecodeArgs, DecodeDefaults, ModelArgs};

/// Arguments of `fastdllm eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Task file, JSON Lines: {"prompt", "answer"} (exact match of the trimmed text) or GSM8K's
    /// {"question", "answer": "... #### 42"} (final number).
    #[arg(long)]
    tasks: PathBuf,
    /// Comma-separated settings cache/rule[/steps=N], e.g. "none/fixed,dual/threshold=0.9,prefix/factor=1"
    /// (cache: none, prefix, dual, or an adaptive policy such as dual+commits=2, dual+drift=0.3,
    /// dual+lowconf=0.9, dual+window=8; rule: fixed, threshold=T, factor=F, dream_timesteps, origin;
    /// Dream's `fixed` is its timestep schedule). Default: the one setting of --cache /
    /// --threshold / --factor.
    #[arg(long, conflicts_with_all = ["threshold", "factor", "cache"])]
    settings: Option<String>,
    /// Only the first N tasks.
    #[arg(long, value_parser = bounds::repeats())]
    limit: Option<usize>,
    /// Prompts per engine call (outputs do not depend on it).
    #[arg(long, default_value_t = 1, value_parser = bounds::batch())]
    batch: usize,
    /// Do not apply the chat template (plain tokenizer encoding, special tokens included).
    #[arg(long)]
    raw: bool,
    /// Print one JSON object per setting instead of the table.
    #[arg(long)]
    json: bool,
    /// With --json: include every task's output and verdict.
    #[arg(long, requires = "json")]
    outcomes: bool,
    /// Also write an HTML report: accuracy against tokens per forward (one point per rule, one
    /// line per cache policy: the paper's Figure 5), the table and the per-kind accuracies.
    #[arg(long)]
    html: Option<PathBuf>,
}

pub fn run(a: EvalArgs) -> Result<ExitCode> {
    if a.batch == 0 {
        anyhow::bail!("--batch must be at least 1");
    }
    let mut tasks = read_tasks(&a.tasks)?;
    if let Some(n) = a.limit {
        tasks.truncate(n);
    }
    let specs = match &a.settings {
        Some(list) => Some(parse_settings(list)?),
        None => None,
    };
    let (dir, loaded) = a.model.load().context("cannot load the model")?;
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let family = loaded.model.spec().family;
    let base = a
        .decode
        .settings(family, &DecodeDefaults::from_dir(&dir)?)?;
    let resolved = match &specs {
        Some(specs) => specs
            .iter()
            .map(|s| Ok((s.text.clone(), s.resolve(&base, family)?)))
            .collect::<Result<Vec<_>>>()?,
        None => vec![(base.label(), base.clone())],
    };
    let prompts = encode_prompts(&loaded, &tasks, a.raw)
        .with_context(|| format!("task file {}", a.tasks.display()))?;
    let show_progress = std::io::stderr().is_terminal();
    let mut reports = Vec::new();
    for (text, settings) in &resolved {
        let bar = if show_progress {
            let bar = ProgressBar::new(tasks.len() as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} {elapsed_precise}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(text.clone());
            Some(bar)
        } else {
            None
        };
        let mut tick = |done: usize| {
            if let Some(b) = &bar {
                b.set_position(done as u64);
            }
        };
        let mut report = evaluate(&loaded, &tasks, &prompts, settings, a.batch, &mut tick)
            .with_context(|| format!("setting '{text}'"))?;
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        report.setting = text.clone();
        if a.json {
            fastdllm_cli::outln!(
                "{}",
                serde_json::to_string(&report_json(&report, &dir, a.outcomes))?
            )?;
        }
        reports.push(report);
    }
    let d = &base.decode;
    if let Some(path) = &a.html {
        let caption = format!(
            "{} tasks from {}, model {}, gen {} block {}, batch {}, {} on {:?}",
            tasks.len(),
            a.tasks.display(),
            dir.display(),
            d.gen_length,
            d.block_length,
            a.batch,
            a.model.dtype.dtype().as_str(),
            a.model.device
        );
        std::fs::write(path, html(&reports, &caption))
            .with_context(|| format!("cannot write {}", path.display()))?;
        fastdllm_cli::errln!("wrote {}", path.display())?;
    }
    if !a.json {
        fastdllm_cli::outln!(
            "{} tasks from {}, model {}, gen {} block {}, batch {}\n",
            tasks.len(),
            a.tasks.display(),
            dir.display(),
            d.gen_length,
            d.block_length,
            a.batch
        )?;
        fastdllm_cli::output::out(&format_table(&reports))?;
    }
    Ok(ExitCode::SUCCESS)
}

//! `fastdllm bench`: the arguments of the benchmark matrix and the presets; the work is in
//! [`fastdllm_benches`].
//!
//! Presets: `smoke` (default; bundled tiny LLaDA, none/prefix/dual x fixed/threshold=0.9, gen 32,
//! block 8) and `cache-cpu` (the CPU cache benchmark: random-weight LLaDA-shaped model, hidden 512, 8 layers,
//! prompt 256, gen 256, block 32, one token per step). Explicit list flags override the preset.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use fastdllm_benches::{self as benches, BenchModel, Machine, Matrix, RunOptions};
use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_models::ModelConfig;
use fastdllm_sampler::Unmask;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::args::{bounds, ModelArgs};

/// `--preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Bundled tiny LLaDA; none/prefix/dual x fixed/threshold=0.9; gen 32, block 8.
    Smoke,
    /// The CPU cache benchmark: random LLaDA-shaped model (hidden 512, 8 layers, vocab 32000),
    /// prompt 256, gen 256, block 32, fixed schedule (one token per step), none/prefix/dual.
    CacheCpu,
}

/// Arguments of `fastdllm bench`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// `bench serve`: a serving benchmark of an OpenAI-compatible server instead of the matrix.
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    model: ModelArgs,
    /// Starting matrix; the list flags below override its entries.
    #[arg(long, value_enum, default_value_t = Preset::Smoke)]
    preset: Preset,
    /// Random weights of a Hugging Face config.json (file or directory), built on the device.
    #[arg(long, conflicts_with = "model")]
    random_weights: Option<PathBuf>,
    /// Override the layer count of the random-weight model (quick runs of big configs).
    #[arg(long, value_parser = bounds::layers())]
    layers: Option<usize>,
    /// Cache policies, comma-separated (none, prefix, dual, or adaptive ones such as dual+commits=2).
    #[arg(long, value_delimiter = ',')]
    cache: Option<Vec<String>>,
    /// Unmasking rules, comma-separated (fixed, threshold=0.9, factor=1, ...).
    #[arg(long, value_delimiter = ',')]
    rule: Option<Vec<String>>,
    /// Answer lengths, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = bounds::tokens())]
    gen_length: Option<Vec<usize>>,
    /// Block lengths, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = bounds::tokens())]
    block_length: Option<Vec<usize>>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = bounds::batch())]
    batch: Option<Vec<usize>>,
    /// Prompt lengths, comma-separated (random ids for random weights; the task prompt repeated
    /// and cut for a loaded model). Default: 256 for random weights, the task prompt's length.
    #[arg(long, value_delimiter = ',', value_parser = bounds::tokens())]
    prompt_len: Option<Vec<usize>>,
    /// Task prompt of a loaded model (chat template applied when the model has one).
    #[arg(long, default_value = benches::TINY_TASK_PROMPT)]
    prompt: String,
    /// Untimed runs per setting. Default: 1 (smoke), 0 (cache-cpu).
    #[arg(long, value_parser = bounds::repeats())]
    warmup: Option<usize>,
    /// Timed runs per setting (median reported). Default: 3 (smoke), 1 (cache-cpu).
    #[arg(long, value_parser = bounds::repeats())]
    repeats: Option<usize>,
    /// Generate only the first N blocks of each answer (per-step figures cover whole blocks).
    #[arg(long, value_parser = bounds::tokens())]
    max_blocks: Option<usize>,
    /// Seed of the rules and of random prompts and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// JSON Lines output, one record per setting.
    #[arg(long, default_value = "bench.jsonl")]
    out_json: PathBuf,
    /// HTML report.
    #[arg(long, default_value = "bench.html")]
    out_html: PathBuf,
}

/// Subcommands of `fastdllm bench` (without one, the matrix runs).
#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Load an OpenAI-compatible server (ours or any other) with streamed requests and write
    /// vLLM `bench serve`'s result JSON plus a `dllm` block (docs/BENCH_SCHEMA.md).
    Serve(super::bench_serve::ServeBenchArgs),
}

fn parse_list<T: FromStr>(items: &[String], what: &str) -> Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    items
        .iter()
        .map(|s| T::from_str(s.trim()).map_err(|e| anyhow::anyhow!("--{what} '{s}': {e}")))
        .collect()
}

fn random_config(path: &Path, layers: Option<usize>) -> Result<ModelConfig> {
    // A config file under another name is read from a copy named config.json in a private
    // temporary directory (random name, removed when `private_copy` drops, on every path).
    let mut private_copy = None;
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else if path.file_name().is_some_and(|n| n == "config.json") {
        path.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    } else {
        let tmp = tempfile::Builder::new()
            .prefix("fastdllm-bench-config-")
            .tempdir()
            .context("cannot create a temporary directory for --random-weights")?;
        std::fs::copy(path, tmp.path().join("config.json"))
            .with_context(|| format!("reading {}", path.display()))?;
        private_copy.insert(tmp).path().to_path_buf()
    };
    let mut cfg = fastdllm_models::load_config(&dir)?;
    if let Some(n) = layers {
        if n == 0 {
            bail!("--layers must be at least 1");
        }
        cfg.num_layers = n;
    }
    Ok(cfg)
}

/// Refuses random weights larger than the memory available now (`MemAvailable`), before any
/// allocation: [`benches::system::param_count`] parameters of the dtype's size (f32 when quantizing, as
/// they are drawn in f32 first). The error names the config's shape fields, as the file names
/// them (e.g. LLaDA's `d_model`).
fn check_random_weights_fit(
    path: &Path,
    cfg: &ModelConfig,
    options: &fastdllm_models::LoadOptions,
) -> Result<()> {
    let Some(available) = benches::system::available_memory() else {
        return Ok(());
    };
    let bytes_per = if options.quantize.is_some() {
        4
    } else {
        options.dtype.size_in_bytes() as u64
    };
    let params = benches::system::param_count(cfg);
    let need = params.saturating_mul(bytes_per);
    if need <= available {
        return Ok(());
    }
    let [hidden, inter, vocab, layers] = match cfg.family {
        fastdllm_core::ModelFamily::Llada => {
            ["d_model", "mlp_hidden_size", "embedding_size", "n_layers"]
        }
        fastdllm_core::ModelFamily::Dream => [
            "hidden_size",
            "intermediate_size",
            "vocab_size",
            "num_hidden_layers",
        ],
    };
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    bail!(
        "--random-weights {}: {hidden} = {}, {inter} = {}, {vocab} = {}, {layers} = {} make {params} parameters ({:.1} GiB), more than the {:.1} GiB of memory available (MemAvailable); lower them or --layers",
        path.display(),
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.vocab_size,
        cfg.num_layers,
        gib(need),
        gib(available)
    )
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    if let Some(BenchCommand::Serve(s)) = a.command {
        return super::bench_serve::run(s);
    }
    let device = a.model.device.device()?;
    let options = a.model.load_options();
    let (mut matrix, warmup, repeats) = match a.preset {
        Preset::Smoke => (
            Matrix {
                caches: CacheMode::ALL.map(CacheSettings::new).to_vec(),
                rules: vec![Unmask::Fixed, Unmask::Threshold { threshold: 0.9 }],
                gen_lengths: vec![32],
                block_lengths: vec![8],
                batches: vec![1],
                prompt_lens: vec![None],
            },
            1,
            3,
        ),
        Preset::CacheCpu => (
            Matrix {
                caches: CacheMode::ALL.map(CacheSettings::new).to_vec(),
                rules: vec![Unmask::Fixed],
                gen_lengths: vec![256],
                block_lengths: vec![32],
                batches: vec![1],
                prompt_lens: vec![Some(256)],
            },
            0,
            1,
        ),
    };
    let bm = match (&a.random_weights, &a.model.model, a.preset) {
        (Some(path), _, _) => {
            let cfg = random_config(path, a.layers)?;
            check_random_weights_fit(path, &cfg, &options)?;
            let name = format!(
                "random:{}{}",
                path.display(),
                a.layers
                    .map(|n| format!(" ({n} layers)"))
                    .unwrap_or_default()
            );
            if a.prompt_len.is_none() {
                matrix.prompt_lens = vec![Some(256)];
            }
            BenchModel::random(name, cfg, &device, &options, a.seed)?
        }
        (None, None, Preset::CacheCpu) => {
            let mut cfg = benches::cache_cpu_config();
            if let Some(n) = a.layers {
                cfg.num_layers = n;
            }
            BenchModel::random(
                "random:cache-cpu (h512 l8 v32000)".into(),
                cfg,
                &device,
                &options,
                a.seed,
            )?
        }
        (None, _, _) => BenchModel::load(&a.model.dir()?, &device, &options, &a.prompt)?,
    };
    if let Some(c) = &a.cache {
        matrix.caches = parse_list(c, "cache")?;
    }
    if let Some(r) = &a.rule {
        matrix.rules = parse_list(r, "rule")?;
    }
    if let Some(g) = &a.gen_length {
        matrix.gen_lengths = g.clone();
    }
    if let Some(b) = &a.block_length {
        matrix.block_lengths = b.clone();
    }
    if let Some(b) = &a.batch {
        matrix.batches = b.clone();
    }
    if let Some(p) = &a.prompt_len {
        matrix.prompt_lens = p.iter().map(|&n| Some(n)).collect();
    }
    let opts = RunOptions {
        warmup: a.warmup.unwrap_or(warmup),
        repeats: a.repeats.unwrap_or(repeats).max(1),
        max_blocks: a.max_blocks,
        seed: a.seed,
    };
    let settings = matrix.settings();
    if settings.is_empty() {
        bail!("the matrix is empty (every block length must divide a gen length)");
    }
    fastdllm_cli::errln!("measuring memory bandwidth and the FMA peak ...")?;
    let machine = Machine::measure(&device)?;
    fastdllm_cli::errln!(
        "{} on {}: {:.1} GB/s{}; {} settings",
        bm.name,
        machine.device_name,
        machine.bandwidth / 1e9,
        machine
            .fma_peak_gflop_s
            .iter()
            .map(|(w, g)| format!(", {w} FMA peak {g:.1} GFLOP/s per core"))
            .collect::<String>(),
        settings.len()
    )?;
    let bar = ProgressBar::with_draw_target(
        Some(settings.len() as u64),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
    {
        bar.set_style(style);
    }
    let mut out = std::fs::File::create(&a.out_json)
        .with_context(|| format!("creating {}", a.out_json.display()))?;
    let mut records = Vec::new();
    for s in &settings {
        let label = format!(
            "g{} b{} {} {} x{}",
            s.gen_length,
            s.block_length,
            s.cache,
            s.rule.label(),
            s.batch
        );
        bar.set_message(label.clone());
        let r = benches::run_setting(&bm, &machine, s, &opts)
            .with_context(|| format!("setting {label}"))?;
        let mut line = serde_json::to_string(&r)?;
        line.push('\n');
        out.write_all(line.as_bytes())?;
        out.flush()?;
        bar.suspend(|| {
            fastdllm_cli::errln!(
                "{:<40} nfe {:>5}  {:>9.1} ms  {:>8.2} ms/step  {:>8.1} out tok/s{}",
                r.label(),
                r.nfe,
                r.wall_ms,
                r.ms_per_step,
                r.output_tokens_per_s,
                r.step_latency
                    .iter()
                    .map(|(k, st)| format!("  {k} p50 {:.2} ms", st.p50_ms))
                    .collect::<String>()
                    + &r.full_step_gflop_per_cpu_s
                        .map(|g| format!("  {g:.1} GFLOP per CPU-s"))
                        .unwrap_or_default()
            )
        })?;
        records.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    std::fs::write(&a.out_html, benches::report::html(&records))
        .with_context(|| format!("writing {}", a.out_html.display()))?;
    fastdllm_cli::errln!(
        "wrote {} and {}",
        a.out_json.display(),
        a.out_html.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

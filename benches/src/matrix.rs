//! The benchmark matrix (`fastdllm bench` calls it): a matrix of generation settings timed end to
//! end and per forward, one [`BenchRecord`] per setting (JSON Lines, docs/BENCH_SCHEMA.md).
//!
//! Throughput follows the paper's definition (docs/ALGORITHM.md §3.3): output tokens up to the
//! first EOS per row, divided by the wall time of the generation; the raw rate over all
//! `gen_length` positions is reported too. Deviations: wall time is one `engine::run` call (prompt
//! encoding and model loading excluded), the median over `--repeats`; with `--max-blocks` only the
//! first blocks are generated and every count (NFE, tokens) covers those blocks only
//! (`capped: true`).
//!
//! Forwards are timed by [`crate::timed`], the machine is described by [`crate::system`], and
//! [`crate::report`] renders the records as HTML.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_core::ModelFamily;
use fastdllm_core::{DecodeConfig, DiffusionLm, GenerateOptions, TokenId};
use fastdllm_models::{LoadOptions, ModelConfig};
use fastdllm_sampler::{ProposerConfig, Unmask};

use crate::system;
use crate::timed::{ForwardTimer, ForwardTiming};
use fastdllm_engine::{self as engine, trim_at_eos, GenerationSettings};

/// Version of the record layout, written in every record's `schema_version` (docs/BENCH_SCHEMA.md
/// says when it changes). 2: the version field itself is named `schema_version` (1 called it
/// `schema`; such records still parse).
pub const SCHEMA_VERSION: u32 = 2;

/// The prompt of the bundled tiny LLaDA (a copy task it was trained on).
pub const TINY_TASK_PROMPT: &str = "copy 3dbk......=";

/// What to measure: every combination of the lists.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Cache policies (reference modes or adaptive policies, [`CacheSettings`] names).
    pub caches: Vec<CacheSettings>,
    /// Unmasking rules.
    pub rules: Vec<Unmask>,
    /// Answer lengths.
    pub gen_lengths: Vec<usize>,
    /// Block lengths (combinations where it does not divide the answer are skipped).
    pub block_lengths: Vec<usize>,
    /// Batch sizes (the same prompt repeated).
    pub batches: Vec<usize>,
    /// Prompt lengths; `None` is the task prompt's own length (bundled model).
    pub prompt_lens: Vec<Option<usize>>,
}

/// How each setting is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Untimed runs before the timed ones.
    pub warmup: usize,
    /// Timed runs (the median is reported).
    pub repeats: usize,
    /// Generate only the first blocks of the answer.
    pub max_blocks: Option<usize>,
    /// Seed of the unmasking rule and of random prompts.
    pub seed: u64,
}

/// The model a bench runs: a directory or random weights of a config.
pub struct BenchModel {
    /// Name used in reports (directory name, or `random:<config>`).
    pub name: String,
    /// The network.
    pub model: Arc<dyn DiffusionLm>,
    /// Its config (parameter count for the roofline).
    pub config: ModelConfig,
    /// Encoded task prompt for loaded models; `None` for random weights (random ids).
    pub task_prompt: Option<Vec<TokenId>>,
}

fn quantized_name(name: String, options: &LoadOptions) -> String {
    match options.quantize {
        Some(q) => format!("{name} {q}"),
        None => name,
    }
}

impl BenchModel {
    /// Loads a model directory (or GGUF file); the task prompt is encoded with the chat template.
    /// A model quantized at load is named `{dir} {type}`.
    pub fn load(
        dir: &std::path::Path,
        device: &Device,
        options: &LoadOptions,
        prompt: &str,
    ) -> Result<Self> {
        let loaded = fastdllm_models::load_model_with(dir, device, options)
            .with_context(|| format!("loading {}", dir.display()))?;
        let text = loaded.info.chat_template.apply(prompt)?;
        let ids = loaded
            .tokenizer
            .encode(&text, loaded.info.chat_template.add_special_tokens())?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        Ok(BenchModel {
            name: quantized_name(name, options),
            model: loaded.model,
            config: loaded.info.config,
            task_prompt: Some(ids),
        })
    }

    /// A random-weight model of `config` built on the device (linear layers quantized one by
    /// one when `options.quantize` is set). Named `{name} {type}` when quantized.
    pub fn random(
        name: String,
        config: ModelConfig,
        device: &Device,
        options: &LoadOptions,
        seed: u64,
    ) -> Result<Self> {
        let model = fastdllm_models::random_model_with(&config, device, options, seed)?;
        Ok(BenchModel {
            name: quantized_name(name, options),
            model,
            config,
            task_prompt: None,
        })
    }

    /// One prompt of `len` tokens (task prompt repeated then cut; random ids for random weights).
    pub fn prompt(&self, len: Option<usize>, seed: u64) -> Result<Vec<TokenId>> {
        let spec = self.model.spec();
        match (&self.task_prompt, len) {
            (Some(p), None) => Ok(p.clone()),
            (Some(p), Some(n)) if !p.is_empty() => Ok(p.iter().copied().cycle().take(n).collect()),
            (Some(_), Some(_)) => bail!("the task prompt encodes to no token"),
            (None, len) => {
                let n = len.unwrap_or(256);
                let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
                let forbidden = |t: u32| {
                    t == spec.mask_token_id
                        || spec.eos_token_ids.contains(&t)
                        || t == spec.pad_token_id
                };
                let mut out = Vec::with_capacity(n);
                while out.len() < n {
                    state = splitmix64(state);
                    let t = (state % spec.vocab_size as u64) as u32;
                    if !forbidden(t) {
                        out.push(t);
                    }
                }
                Ok(out)
            }
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One point of the matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// Prompt length request.
    pub prompt_len: Option<usize>,
    /// Answer length.
    pub gen_length: usize,
    /// Block length.
    pub block_length: usize,
    /// Cache policy.
    pub cache: CacheSettings,
    /// Unmasking rule.
    pub rule: Unmask,
    /// Batch size.
    pub batch: usize,
}

impl Matrix {
    /// Every valid combination (block dividing the answer), baseline cache first per group.
    pub fn settings(&self) -> Vec<Setting> {
        let mut out = Vec::new();
        for &prompt_len in &self.prompt_lens {
            for &gen_length in &self.gen_lengths {
                for &block_length in &self.block_lengths {
                    if block_length == 0
                        || block_length > gen_length
                        || gen_length % block_length != 0
                    {
                        continue;
                    }
                    for &batch in &self.batches {
                        for rule in &self.rules {
                            for &cache in &self.caches {
                                out.push(Setting {
                                    prompt_len,
                                    gen_length,
                                    block_length,
                                    cache,
                                    rule: *rule,
                                    batch,
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// Latency statistics of one step kind, milliseconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepStats {
    /// Forwards of this kind (over all timed repeats).
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Mean number of positions fed.
    pub mean_window: f64,
}

/// One benchmark record (one JSON line). Field meanings: docs/BENCH_SCHEMA.md.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BenchRecord {
    /// Layout version ([`SCHEMA_VERSION`]).
    #[serde(alias = "schema")]
    pub schema_version: u32,
    /// Model directory name, or `random:<config>` for random weights.
    pub model: String,
    /// CPU model name or CUDA device name.
    pub device: String,
    /// `cpu` or `cuda`.
    pub device_kind: String,
    /// CPU threads used; `None` on a GPU.
    pub threads: Option<usize>,
    /// Activation dtype: `f32`, `bf16`, `f16`.
    pub dtype: String,
    /// Prompt tokens per row.
    pub prompt_len: usize,
    /// Answer positions per row.
    pub gen_length: usize,
    /// Block length.
    pub block_length: usize,
    /// Steps (= `gen_length`: one token per step under the fixed schedule).
    pub steps: usize,
    /// Cache mode: `none`, `prefix`, `dual`.
    pub cache: String,
    /// Unmasking rule label (`fixed`, `threshold=0.9`, `factor=1`), parsable by `Unmask::from_str`.
    pub rule: String,
    /// The rule without its parameter.
    pub rule_kind: String,
    /// The rule's parameter, if any.
    pub rule_param: Option<f64>,
    /// Rows (the same prompt repeated).
    pub batch: usize,
    /// Untimed runs before the timed ones.
    pub warmup: usize,
    /// Timed runs.
    pub repeats: usize,
    /// Only the first N blocks were generated, if set.
    pub max_blocks: Option<usize>,
    /// Blocks generated per run.
    pub measured_blocks: usize,
    /// `measured_blocks < gen_length / block_length`: counts cover the measured blocks only.
    pub capped: bool,
    /// Forwards of one run (the batch's NFE).
    pub nfe: usize,
    /// Committed answer positions, all rows, one run.
    pub generated_tokens: usize,
    /// Answer tokens up to the first EOS, summed over rows (docs/ALGORITHM.md §3.3).
    pub output_tokens: usize,
    /// `generated_tokens / batch / nfe`.
    pub tokens_per_forward: f64,
    /// `output_tokens / wall_ms`, per second (the paper's throughput).
    pub output_tokens_per_s: f64,
    /// `generated_tokens / wall_ms`, per second.
    pub gen_tokens_per_s: f64,
    /// Median wall time of the timed runs, milliseconds.
    pub wall_ms: f64,
    /// Wall time of each timed run, milliseconds.
    pub wall_ms_runs: Vec<f64>,
    /// `wall_ms / nfe`.
    pub ms_per_step: f64,
    /// Median over runs of the summed forward times, milliseconds.
    pub forward_ms_total: f64,
    /// Median process CPU time of a timed run, milliseconds; CPU only.
    pub cpu_ms: Option<f64>,
    /// `cpu_ms / (wall_ms * threads)`; CPU only.
    pub cpu_utilization: Option<f64>,
    /// Per step kind (`full`, `prefix_window`, `dual_window`): latency statistics.
    pub step_latency: BTreeMap<String, StepStats>,
    /// Parameters computed from the config.
    pub param_count: u64,
    /// Bytes the weights take as stored (quantized blocks at their size; the model's
    /// `DiffusionLm::weight_bytes`, else `param_count * dtype size`).
    pub weight_bytes: u64,
    /// Measured memory bandwidth, GB/s.
    pub bandwidth_gb_s: f64,
    /// `weight_bytes / bandwidth`: time to read every weight once, milliseconds.
    pub roofline_floor_ms: f64,
    /// Peak RSS (CPU) or peak device memory in use (CUDA), bytes.
    pub peak_memory_bytes: Option<u64>,
    /// CPU: the register-only FMA peak of one core per vector width (`avx2`, `avx512`), GFLOP
    /// per CPU-second, measured once per bench run ([`crate::peak`]); empty on GPU.
    #[serde(default)]
    pub fma_peak_gflop_s: BTreeMap<String, f64>,
    /// `cache = none` on CPU: FLOP of all the run's full forwards ([`system::full_forward_flops`]
    /// with `block_length` logits rows) per CPU-second of the process (`cpu_ms`), GFLOP/s; set
    /// beside `fma_peak_gflop_s` x `threads` it is the share of the cores' peak the step reaches.
    #[serde(default)]
    pub full_step_gflop_per_cpu_s: Option<f64>,
    /// Git commit of the build, if known.
    pub git_commit: Option<String>,
    /// UTC RFC 3339 time the record was made.
    pub timestamp: String,
}

impl BenchRecord {
    /// The settings group a no-cache baseline is shared within.
    pub fn group_key(&self) -> String {
        format!(
            "{}|{}|p{}|g{}|b{}|{}|x{}",
            self.model,
            self.dtype,
            self.prompt_len,
            self.gen_length,
            self.block_length,
            self.rule,
            self.batch
        )
    }

    /// Short label: `p256 g32 b8 dual threshold=0.9 x1`.
    pub fn label(&self) -> String {
        format!(
            "p{} g{} b{} {} {} x{}",
            self.prompt_len, self.gen_length, self.block_length, self.cache, self.rule, self.batch
        )
    }
}

/// Step kinds: `full` (whole canvas: every no-cache step and every cache refresh),
/// `prefix_window` (PrefixCache `[s_k, L)` over the stored prefix), `dual_window` (DualCache
/// block only).
pub fn step_kind(t: &ForwardTiming, seq_len: usize, cache: CacheMode) -> &'static str {
    if t.window_start == 0 && t.window_len == seq_len {
        return "full";
    }
    match cache {
        CacheMode::Prefix => "prefix_window",
        CacheMode::Dual => "dual_window",
        _ => "window",
    }
}

/// Everything measured once per bench run (the roofline's inputs).
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// Device name.
    pub device_name: String,
    /// Measured bandwidth, bytes/s.
    pub bandwidth: f64,
    /// Git commit of the build.
    pub git_commit: Option<String>,
    /// CPU: register-only FMA peak of one core per vector width, GFLOP per CPU-second.
    pub fma_peak_gflop_s: BTreeMap<String, f64>,
}

/// CPU time each width of the FMA probe runs for.
const FMA_PROBE_TIME: std::time::Duration = std::time::Duration::from_millis(300);

impl Machine {
    /// Measures the device.
    pub fn measure(device: &Device) -> Result<Self> {
        let fma_peak_gflop_s = if device.is_cpu() {
            crate::peak::FmaWidth::ALL
                .into_iter()
                .filter_map(|w| {
                    crate::peak::fma_peak_gflops(w, FMA_PROBE_TIME).map(|g| (w.name().into(), g))
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Ok(Machine {
            device_name: system::device_name(device),
            bandwidth: system::measure_bandwidth(device)?,
            git_commit: system::git_commit(),
            fma_peak_gflop_s,
        })
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct RunResult {
    wall: f64,
    cpu: Option<f64>,
    timings: Vec<ForwardTiming>,
    nfe: usize,
    generated: usize,
    output: usize,
    measured_blocks: usize,
}

fn run_once(
    bm: &BenchModel,
    prompts: &[Vec<TokenId>],
    settings: &GenerationSettings,
    s: &Setting,
    opts: &RunOptions,
) -> Result<RunResult> {
    let spec = bm.model.spec();
    let prompt_len = prompts.first().map(Vec::len).unwrap_or(0);
    let timed =
        ForwardTimer::new(prompt_len, s.block_length, opts.max_blocks).wrap(bm.model.as_ref());
    let num_blocks = s.gen_length / s.block_length;
    let cpu0 = system::process_cpu_secs();
    let start = Instant::now();
    let res = engine::run_batch(
        &timed,
        None,
        prompts,
        settings,
        &GenerateOptions::default(),
        &mut |_, _| {},
    );
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu0.zip(system::process_cpu_secs()).map(|(a, b)| b - a);
    let timings = timed.observer().timings();
    match res {
        Ok(gen) => {
            let mut generated = 0;
            let mut output = 0;
            for row in &gen.rows {
                generated += row
                    .generated
                    .iter()
                    .filter(|&&t| t != spec.mask_token_id)
                    .count();
                output += trim_at_eos(&row.generated, &spec.eos_token_ids).len();
            }
            Ok(RunResult {
                wall,
                cpu,
                timings,
                nfe: gen.nfe,
                generated,
                output,
                measured_blocks: num_blocks,
            })
        }
        Err(_) if timed.observer().stopped() => {
            let measured = opts.max_blocks.unwrap_or(num_blocks).min(num_blocks);
            let tokens = measured * s.block_length * prompts.len();
            Ok(RunResult {
                wall,
                cpu,
                nfe: timings.len(),
                timings,
                generated: tokens,
                output: tokens,
                measured_blocks: measured,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs one setting: warmups, timed repeats, one record.
pub fn run_setting(
    bm: &BenchModel,
    machine: &Machine,
    s: &Setting,
    opts: &RunOptions,
) -> Result<BenchRecord> {
    let spec = bm.model.spec();
    let prompt = bm.prompt(s.prompt_len, opts.seed)?;
    let prompt_len = prompt.len();
    let seq_len =
        fastdllm_core::Error::checked_add("prompt + gen_length", prompt_len, s.gen_length)?;
    if seq_len > spec.max_seq_len {
        bail!(
            "prompt {prompt_len} + gen {} exceeds the model's {} positions",
            s.gen_length,
            spec.max_seq_len
        );
    }
    let prompts = vec![prompt; s.batch.max(1)];
    let settings = GenerationSettings {
        decode: DecodeConfig {
            gen_length: s.gen_length,
            block_length: s.block_length,
            steps: s.gen_length,
            force_block_start: None,
            max_steps_per_block: None,
        },
        cache: s.cache,
        unmask: s.rule,
        proposer: ProposerConfig::default(),
        seed: opts.seed,
        limits: Default::default(),
    };
    settings.validate(spec.family)?;
    for _ in 0..opts.warmup {
        run_once(bm, &prompts, &settings, s, opts)?;
    }
    let reset = system::reset_peak_rss();
    let mut runs = Vec::new();
    for _ in 0..opts.repeats.max(1) {
        runs.push(run_once(bm, &prompts, &settings, s, opts)?);
    }
    let device = bm.model.device();
    let peak = if device.is_cpu() && reset {
        system::peak_rss_bytes()
    } else {
        // GPU: the largest device-wide usage sampled after every timed forward.
        runs.iter()
            .flat_map(|r| r.timings.iter().filter_map(|t| t.device_used_bytes))
            .max()
    };
    let mut by_kind: BTreeMap<&'static str, (Vec<f64>, Vec<usize>)> = BTreeMap::new();
    for r in &runs {
        for t in &r.timings {
            let e = by_kind
                .entry(step_kind(t, seq_len, s.cache.mode))
                .or_default();
            e.0.push(t.secs * 1e3);
            e.1.push(t.window_len);
        }
    }
    let step_latency = by_kind
        .into_iter()
        .map(|(k, (mut ms, win))| {
            ms.sort_by(f64::total_cmp);
            let n = ms.len();
            let stats = StepStats {
                count: n,
                p50_ms: percentile(&ms, 0.5),
                p90_ms: percentile(&ms, 0.9),
                mean_ms: ms.iter().sum::<f64>() / n.max(1) as f64,
                mean_window: win.iter().sum::<usize>() as f64 / n.max(1) as f64,
            };
            (k.to_string(), stats)
        })
        .collect();
    let first = runs.first().context("no timed run")?;
    let walls: Vec<f64> = runs.iter().map(|r| r.wall * 1e3).collect();
    let wall_ms = median(&walls);
    let forward_ms_total = median(
        &runs
            .iter()
            .map(|r| r.timings.iter().map(|t| t.secs).sum::<f64>() * 1e3)
            .collect::<Vec<_>>(),
    );
    let cpus: Vec<f64> = runs.iter().filter_map(|r| r.cpu).map(|c| c * 1e3).collect();
    let cpu_ms = (device.is_cpu() && cpus.len() == runs.len()).then(|| median(&cpus));
    let threads = device.is_cpu().then(system::cpu_threads);
    let cpu_utilization = cpu_ms
        .zip(threads)
        .and_then(|(c, t)| (wall_ms > 0.0).then(|| c / (wall_ms * t as f64)));
    let per_s = |n: usize| {
        if wall_ms > 0.0 {
            n as f64 / (wall_ms / 1e3)
        } else {
            0.0
        }
    };
    let params = system::param_count(&bm.config);
    // Stored bytes (quantized weights at their block size); dense parameters x dtype size for a
    // model that does not report them.
    let weight_bytes = bm
        .model
        .weight_bytes()
        .unwrap_or(params * bm.model.dtype().size_in_bytes() as u64);
    let (rule_kind, rule_param) = match s.rule {
        Unmask::Fixed => ("fixed", None),
        Unmask::Threshold { threshold } => ("threshold", Some(threshold)),
        Unmask::Factor { factor } => ("factor", Some(factor)),
        Unmask::DreamTimesteps { eps } => ("dream_timesteps", Some(f64::from(eps))),
        Unmask::Origin { eps } => ("origin", Some(f64::from(eps))),
    };
    let rows = prompts.len();
    Ok(BenchRecord {
        schema_version: SCHEMA_VERSION,
        model: bm.name.clone(),
        device: machine.device_name.clone(),
        device_kind: if device.is_cpu() {
            "cpu".into()
        } else {
            "cuda".into()
        },
        threads,
        dtype: format!("{:?}", bm.model.dtype()).to_lowercase(),
        prompt_len,
        gen_length: s.gen_length,
        block_length: s.block_length,
        steps: s.gen_length,
        cache: s.cache.label(),
        rule: s.rule.label(),
        rule_kind: rule_kind.into(),
        rule_param,
        batch: rows,
        warmup: opts.warmup,
        repeats: runs.len(),
        max_blocks: opts.max_blocks,
        measured_blocks: first.measured_blocks,
        capped: first.measured_blocks < s.gen_length / s.block_length,
        nfe: first.nfe,
        generated_tokens: first.generated,
        output_tokens: first.output,
        tokens_per_forward: if first.nfe > 0 {
            first.generated as f64 / rows as f64 / first.nfe as f64
        } else {
            0.0
        },
        output_tokens_per_s: per_s(first.output),
        gen_tokens_per_s: per_s(first.generated),
        wall_ms,
        wall_ms_runs: walls,
        ms_per_step: if first.nfe > 0 {
            wall_ms / first.nfe as f64
        } else {
            0.0
        },
        forward_ms_total,
        cpu_ms,
        cpu_utilization,
        step_latency,
        param_count: params,
        weight_bytes,
        bandwidth_gb_s: machine.bandwidth / 1e9,
        roofline_floor_ms: if machine.bandwidth > 0.0 {
            weight_bytes as f64 / machine.bandwidth * 1e3
        } else {
            0.0
        },
        peak_memory_bytes: peak,
        fma_peak_gflop_s: machine.fma_peak_gflop_s.clone(),
        full_step_gflop_per_cpu_s: match (s.cache.mode, cpu_ms) {
            (CacheMode::Off, Some(cpu_ms)) if cpu_ms > 0.0 => {
                let flops = system::full_forward_flops(
                    &bm.config,
                    prompt_len + s.gen_length,
                    s.block_length,
                );
                Some(flops * first.nfe as f64 * rows as f64 / (cpu_ms / 1e3) / 1e9)
            }
            _ => None,
        },
        git_commit: machine.git_commit.clone(),
        timestamp: system::timestamp_utc(),
    })
}

/// Speed-up of every record over the no-cache record of its group (same model, dtype, prompt,
/// gen, block, rule, batch): the ratio of raw generated tokens/s (the same positions are decoded
/// in both, while output tokens up to EOS may differ between cache modes); `None` without a
/// baseline.
pub fn speedups(records: &[BenchRecord]) -> Vec<Option<f64>> {
    let base: BTreeMap<String, f64> = records
        .iter()
        .filter(|r| r.cache == CacheMode::Off.to_string())
        .map(|r| (r.group_key(), r.gen_tokens_per_s))
        .collect();
    records
        .iter()
        .map(|r| {
            let b = *base.get(&r.group_key())?;
            (b > 0.0).then(|| r.gen_tokens_per_s / b)
        })
        .collect()
}

/// The config of the CPU cache benchmark (`cache-cpu`, docs/BENCHMARKS.md "Cache speed-up on
/// CPU"): a LLaDA-shaped model with hidden 512, 8 layers, 8 heads of 64, MLP 1536, vocabulary
/// 32000 (LLaDA's special ids kept inside the vocabulary).
pub fn cache_cpu_config() -> ModelConfig {
    ModelConfig {
        family: ModelFamily::Llada,
        hidden_size: 512,
        num_layers: 8,
        num_heads: 8,
        num_kv_heads: 8,
        head_dim: 64,
        intermediate_size: 1536,
        vocab_size: 32_000,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        max_seq_len: 4096,
        mask_token_id: 31_999,
        eos_token_ids: vec![31_998],
        pad_token_id: 31_998,
        bos_token_id: None,
        tie_word_embeddings: false,
        qk_norm: false,
        moe: None,
    }
}

//! Argument groups shared by several subcommands, and their conversion into settings.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use clap::builder::RangedU64ValueParser;
use clap::{Args, ValueEnum};
use fastdllm_core::ModelFamily;
use fastdllm_engine::resolve::GENERATION_CONFIG;
use fastdllm_engine::{Finish, GenerationSettings, Knobs, Source};
use fastdllm_models::{ChatTemplate, LoadOptions, LoadedModel, QuantType, RawGenerationConfig};
use fastdllm_sampler::{DreamScore, Remasking};

/// Bounds of the numeric flags: every integer flag parses through one of these, so an
/// out-of-range value is clap's one-line `error: invalid value '…' for '--flag'` with the allowed
/// range (exit 2), before any arithmetic sees it.
pub mod bounds {
    use super::RangedU64ValueParser;

    /// Largest token count a flag may name (lengths, steps, top-k): canvas positions are `u32`
    /// (a model's `max_seq_len` is at most `u32::MAX`), so larger values can never run.
    pub const MAX_TOKENS: u64 = u32::MAX as u64;
    /// Largest batch (rows decoded together): each row holds a canvas and its activations.
    pub const MAX_BATCH: u64 = 1 << 16;
    /// Largest request queue of `serve` (tokio's bounded channel allows `usize::MAX >> 3`).
    pub const MAX_QUEUE: u64 = 1 << 20;
    /// Largest repetition count (warmups, repeats, evaluated examples).
    pub const MAX_REPEATS: u64 = 1 << 20;
    /// Largest number of transformer layers of a random-weight model.
    pub const MAX_LAYERS: u64 = 1 << 12;

    /// A token count in `1..=MAX_TOKENS`.
    pub fn tokens() -> RangedU64ValueParser<usize> {
        RangedU64ValueParser::new().range(1..=MAX_TOKENS)
    }

    /// A batch size in `1..=MAX_BATCH`.
    pub fn batch() -> RangedU64ValueParser<usize> {
        RangedU64ValueParser::new().range(1..=MAX_BATCH)
    }

    /// A queue capacity in `1..=MAX_QUEUE`.
    pub fn queue() -> RangedU64ValueParser<usize> {
        RangedU64ValueParser::new().range(1..=MAX_QUEUE)
    }

    /// A repetition count in `0..=MAX_REPEATS`.
    pub fn repeats() -> RangedU64ValueParser<usize> {
        RangedU64ValueParser::new().range(0..=MAX_REPEATS)
    }

    /// A layer count in `1..=MAX_LAYERS`.
    pub fn layers() -> RangedU64ValueParser<usize> {
        RangedU64ValueParser::new().range(1..=MAX_LAYERS)
    }

    /// A byte count in `1..=u32::MAX`.
    pub fn bytes() -> RangedU64ValueParser<usize> {
        RangedU64ValueParser::new().range(1..=u64::from(u32::MAX))
    }
}

/// Where the model comes from and where it runs.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json), a llama.cpp GGUF
    /// file of LLaDA / Dream (FILE.gguf, or a directory holding one), or (builds with the `hub`
    /// feature) a Hub model id such as GSAI-ML/LLaDA-8B-Instruct, resolved through the Hugging
    /// Face cache (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN); an existing
    /// path wins. Default: the tiny LLaDA bundled in the repository (fixtures/llada-tiny).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Quantize the linear layers of a safetensors model at load: q8_0 | q4_k | q5_k | q6_k
    /// (rows that are not whole k-quant blocks get llama.cpp's fallback type; K/V and
    /// activations stay in --dtype).
    #[arg(long, value_name = "TYPE", value_parser = parse_quantize)]
    pub quantize: Option<QuantType>,
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Activation and weight dtype.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// Jinja chat template file, used instead of the model's own (chat_template.jinja or
    /// tokenizer_config.json's chat_template).
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
}

impl ModelArgs {
    /// The model to load: `--model` (a directory or GGUF file, or a hub id resolved to its cache
    /// snapshot, downloading what is missing), else the bundled tiny LLaDA.
    pub fn dir(&self) -> Result<PathBuf> {
        match &self.model {
            #[cfg(feature = "hub")]
            Some(spec) => Ok(fastdllm_models::hub::resolve_model(spec)?),
            #[cfg(not(feature = "hub"))]
            Some(spec) => Ok(spec.clone()),
            None => Ok(fastdllm_conformance::paths::default_model()),
        }
    }

    /// `--dtype` and `--quantize`.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions::new(self.dtype.dtype()).quantized(self.quantize)
    }

    /// Resolves and loads the model on `--device`, with `--chat-template` applied. Notes on
    /// stderr: which chat template is used when it is a built-in fallback, and how the linear
    /// layers are stored when `--quantize` could not use the requested type everywhere.
    pub fn load(&self) -> Result<(PathBuf, LoadedModel)> {
        let dir = self.dir()?;
        let device = self.device.device()?;
        let mut loaded = fastdllm_models::load_model_with(&dir, &device, &self.load_options())?;
        if let Some(q) = self.quantize {
            let uniform = format!("{q} x ");
            let w = &loaded.info.linear_weights;
            if !w.starts_with(&uniform) || w.contains(',') {
                fastdllm_cli::errln!(
                    "note: --quantize {q}: linear layers stored as {w} (rows that are not whole \
                     {q} blocks use llama.cpp's fallback type)"
                )?;
            }
        }
        if let Some(file) = &self.chat_template {
            loaded.info.chat_template =
                fastdllm_models::load_chat_template_file(file, &loaded.info)
                    .with_context(|| format!("--chat-template {}", file.display()))?;
        }
        if matches!(
            loaded.info.chat_template,
            ChatTemplate::Llama3 | ChatTemplate::ChatMl
        ) {
            fastdllm_cli::errln!(
                "note: {} has no chat template (no chat_template.jinja, no tokenizer_config.json); using the {} (give one with --chat-template FILE)",
                dir.display(),
                loaded.info.chat_template.describe()
            )?;
        }
        Ok((dir, loaded))
    }
}

/// Parses `--quantize`.
pub fn parse_quantize(text: &str) -> std::result::Result<QuantType, String> {
    text.parse::<QuantType>().map_err(|e| e.to_string())
}

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// CPU (threads follow RAYON_NUM_THREADS).
    Cpu,
    /// CUDA device 0 (needs a build with `--features cuda`).
    Cuda,
}

impl DeviceArg {
    /// The candle device.
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda if cfg!(feature = "cuda") => Ok(Device::new_cuda(0)?),
            DeviceArg::Cuda => bail!("--device cuda: this binary was built without the `cuda` feature (rebuild with --features cuda)"),
        }
    }
}

/// `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// float32 (the golden cases' precision).
    F32,
    /// bfloat16 (the reference's GPU precision).
    Bf16,
    /// float16.
    F16,
}

impl DTypeArg {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
            DTypeArg::F16 => DType::F16,
        }
    }
}

/// `--remasking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RemaskingArg {
    /// Confidence = probability of the proposal (the paper's setting).
    LowConfidence,
    /// Confidence drawn uniformly at random.
    Random,
}

/// `--alg` (Dream's scoring of count schedules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlgArg {
    /// Negative entropy (the paper's Dream baseline).
    Entropy,
    /// Probability of the proposal.
    MaskgitPlus,
    /// Top-1 minus top-2 probability.
    TopkMargin,
}

/// Every knob that decides the generated tokens.
///
/// Defaults (a knob without its flag), see [`DecodeDefaults`]: the model directory's
/// `generation_config.json` (its `fastdllm` object, then `max_new_tokens`, `temperature`,
/// `top_p`, `top_k`), then the paper's accelerated setting: gen_length 256, block_length 32,
/// dual cache, threshold 0.9.
#[derive(Debug, Clone, Args)]
pub struct DecodeArgs {
    /// Answer positions G (all start as [MASK]). Default: from the model directory, else 256.
    #[arg(long, value_parser = bounds::tokens())]
    pub gen_length: Option<usize>,
    /// Block size B (G must be a multiple of B). Default: from the model directory, else 32.
    #[arg(long, value_parser = bounds::tokens())]
    pub block_length: Option<usize>,
    /// Denoising steps for fixed schedules (a multiple of G/B); giving it selects the fixed
    /// schedule unless --threshold / --factor is given. Default: the model directory's, while
    /// the canvas (gen_length, block_length) is the directory's; else gen_length (one token per
    /// step).
    #[arg(long, value_parser = bounds::tokens())]
    pub steps: Option<usize>,
    /// Sampling temperature (0 = greedy; > 0 = Gumbel-max sampling in f64). Default: the
    /// model's generation_config.json, else 0.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Confidence used to rank candidates (LLaDA).
    #[arg(long, value_enum, default_value_t = RemaskingArg::LowConfidence)]
    pub remasking: RemaskingArg,
    /// Parallel decoding: unmask every candidate with confidence >= THRESHOLD (top-1 always).
    /// Default: from the model directory, else 0.9 (unless --factor, --steps or
    /// --dream-original is given).
    #[arg(long, conflicts_with = "factor")]
    pub threshold: Option<f64>,
    /// Parallel decoding: the factor rule, largest n with (n+1)(1-c_n) <= FACTOR.
    #[arg(long)]
    pub factor: Option<f64>,
    /// KV cache approximation. Default: from the model directory, else dual (none with
    /// --dream-original).
    #[arg(long, value_enum)]
    pub cache: Option<CacheArg>,
    /// Refresh the cache every k steps inside a block (1 = exact). Default: only at block starts.
    #[arg(long, value_parser = bounds::tokens())]
    pub refresh_every: Option<usize>,
    /// Dream: top-p filtering (1 = off, accepted for LLaDA too).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Dream: top-k filtering.
    #[arg(long, value_parser = bounds::tokens())]
    pub top_k: Option<usize>,
    /// Dream: score of fixed schedules (entropy, maskgit_plus, topk_margin).
    #[arg(long, value_enum)]
    pub alg: Option<AlgArg>,
    /// Dream: the original no-cache sampler (whole answer one block: the block length follows
    /// --gen-length unless --block-length is given; timestep schedule unless --threshold /
    /// --factor; no cache).
    #[arg(long)]
    pub dream_original: bool,
    /// Random seed (Gumbel noise, random confidences). Row i of a batch draws from a stream
    /// derived from it (row 0: the seed itself). `serve`: unused (a request without `seed` draws
    /// a fresh seed per choice).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// When a row stops decoding: `answer` (as soon as its answer is final: the end-of-sequence
    /// token and every position before it committed; the rest of the canvas is not decoded) or
    /// `canvas` (the whole canvas, as the reference: NFE and every position equal its).
    #[arg(long, value_enum, default_value_t = FinishArg::Answer)]
    pub finish: FinishArg,
}

/// `--finish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FinishArg {
    /// Stop once the answer is final.
    Answer,
    /// Decode the whole canvas (the reference's NFE).
    Canvas,
}

impl From<FinishArg> for Finish {
    fn from(f: FinishArg) -> Self {
        match f {
            FinishArg::Answer => Finish::Answer,
            FinishArg::Canvas => Finish::Canvas,
        }
    }
}

/// The defaults a model directory gives the decoding knobs.
///
/// Rule (per knob, first that applies; [`fastdllm_engine::resolve()`] has the whole rule): the
/// flag; the `fastdllm` object of the directory's `generation_config.json` (`gen_length`,
/// `block_length`, `steps`, `cache`, `threshold` — `null` = no threshold —, `factor`), which the
/// bundled tiny fixtures use to keep their exact small defaults (gen 32, block 8, no cache,
/// fixed schedule); the transformers fields of that file (`max_new_tokens` → gen_length,
/// `temperature`, and for Dream `top_p`, `top_k`); then the paper's accelerated setting (gen
/// 256, block 32, dual cache, threshold 0.9). A real checkpoint's generation_config.json has no
/// `fastdllm` object, so it gets the paper's setting.
#[derive(Debug, Clone, Default)]
pub struct DecodeDefaults {
    /// The parsed `generation_config.json`, when the directory has one.
    pub generation: Option<RawGenerationConfig>,
    /// Its path (for messages).
    pub path: Option<PathBuf>,
}

impl DecodeDefaults {
    /// Reads `generation_config.json` of `dir`. Errors: malformed file (naming it).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let generation = fastdllm_models::read_generation_config(dir)?;
        Ok(DecodeDefaults {
            path: generation
                .as_ref()
                .map(|_| dir.join("generation_config.json")),
            generation,
        })
    }

    /// Where the defaults come from, for the settings line printed at start.
    pub fn describe(&self) -> String {
        let path = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match &self.generation {
            Some(g) if g.fastdllm.is_some() => format!("the `fastdllm` object of {path}"),
            Some(_) => format!("{path} where it sets them, else the paper's accelerated setting"),
            None => "the paper's accelerated setting (no generation_config.json)".into(),
        }
    }
}

/// `--cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheArg {
    /// Exact: a full forward at every step.
    None,
    /// PrefixCache.
    Prefix,
    /// DualCache.
    Dual,
}

impl CacheArg {
    /// The cache name ([`fastdllm_cache::CacheSettings`]).
    pub fn name(self) -> &'static str {
        match self {
            CacheArg::None => "none",
            CacheArg::Prefix => "prefix",
            CacheArg::Dual => "dual",
        }
    }
}

impl DecodeArgs {
    /// The knobs these flags set (flags not given are `None`; `--remasking`, `--seed` and
    /// `--finish` always carry their value).
    pub fn knobs(&self) -> Knobs {
        Knobs {
            gen_length: self.gen_length,
            block_length: self.block_length,
            steps: self.steps,
            cache: self.cache.map(|c| c.name().to_string()),
            refresh_every: self.refresh_every,
            threshold: self.threshold,
            factor: self.factor,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            remasking: Some(match self.remasking {
                RemaskingArg::LowConfidence => Remasking::LowConfidence,
                RemaskingArg::Random => Remasking::Random,
            }),
            alg: self.alg.map(|a| match a {
                AlgArg::Entropy => DreamScore::NegEntropy,
                AlgArg::MaskgitPlus => DreamScore::Probability,
                AlgArg::TopkMargin => DreamScore::Margin,
            }),
            dream_original: self.dream_original.then_some(true),
            seed: Some(self.seed),
            finish: Some(self.finish.into()),
            ..Knobs::default()
        }
    }

    /// The validated settings for a model family, knobs without flags from `defaults` (see
    /// [`DecodeDefaults`] for the rule).
    ///
    /// Errors: one line naming the flag (`--gen-length: invalid setting gen_length = 30: must be
    /// a multiple of block_length = 8 ...`), or the generation_config.json at fault.
    pub fn settings(
        &self,
        family: ModelFamily,
        defaults: &DecodeDefaults,
    ) -> Result<GenerationSettings> {
        resolve_flags(&self.knobs(), family, defaults)
    }
}

/// Resolves a command's flags (`knobs`) over the model directory's defaults and the paper's
/// ([`fastdllm_engine::resolve()`]). Errors name the flag, or the generation_config.json's path
/// when the bad value came from that file.
pub fn resolve_flags(
    knobs: &Knobs,
    family: ModelFamily,
    defaults: &DecodeDefaults,
) -> Result<GenerationSettings> {
    fastdllm_engine::resolve(
        &[(Source::Flags, knobs)],
        defaults.generation.as_ref(),
        family,
    )
    .map(|r| r.settings)
    .map_err(|e| flag_error(e, defaults))
}

/// A resolution error as the CLI prints it: `--flag: message`, or `PATH: message (override with
/// --flag)` for a value of the generation_config.json.
fn flag_error(e: fastdllm_engine::Error, defaults: &DecodeDefaults) -> anyhow::Error {
    match e {
        fastdllm_engine::Error::Setting { param, message } => {
            let file = format!("{GENERATION_CONFIG}: ");
            match message.strip_prefix(&file) {
                Some(rest) => {
                    let path = defaults
                        .path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| GENERATION_CONFIG.into());
                    anyhow!("{path}: {rest} (override with {})", param.flag())
                }
                None => anyhow!("{}: {message}", param.flag()),
            }
        }
        other => other.into(),
    }
}

/// Prints the effective model, chat template and decoding settings on stderr (generate, serve).
pub fn print_settings(
    dir: &Path,
    loaded: &LoadedModel,
    settings: &GenerationSettings,
    defaults: &DecodeDefaults,
) -> Result<()> {
    let d = &settings.decode;
    let p = &settings.proposer;
    let mut knobs = format!(
        "gen_length {}, block_length {}, steps {}, cache {}, unmasking {}, temperature {}",
        d.gen_length,
        d.block_length,
        d.steps,
        settings.cache.label(),
        settings.unmask.label(),
        p.temperature
    );
    if let Some(top_p) = p.top_p {
        knobs.push_str(&format!(", top_p {top_p}"));
    }
    if let Some(top_k) = p.top_k {
        knobs.push_str(&format!(", top_k {top_k}"));
    }
    knobs.push_str(&format!(", seed {}", settings.seed));
    let dtype = format!("{:?}", loaded.info.dtype).to_lowercase();
    fastdllm_cli::errln!(
        "model {} ({}, {dtype}); chat template: {}\nsettings: {knobs} (flags, else {})",
        dir.display(),
        loaded.info.architecture,
        loaded.info.chat_template.describe(),
        defaults.describe()
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        // `DecodeArgs::settings` is `DecodeArgs::knobs` through `fastdllm_engine::resolve`,
        // whose never-panic property over any numbers is `fastdllm-engine/tests/resolve.rs`.

        /// `--prompt-ids` parsing: any text is ids or an error, never a panic; empty entries
        /// are errors.
        #[test]
        fn prompt_ids_never_panic(text in ".{0,40}") {
            if let Ok(ids) = super::super::generate::parse_ids(&text) {
                prop_assert_eq!(ids.len(), text.split(',').count());
            }
        }
    }
}

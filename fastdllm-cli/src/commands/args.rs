//! Argument groups shared by several subcommands, and their conversion into settings.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::builder::RangedU64ValueParser;
use clap::{Args, ValueEnum};
use conformance::engine::GenerationSettings;
use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_core::{DecodeConfig, ModelFamily};
use fastdllm_models::{LoadOptions, LoadedModel, QuantType};
use fastdllm_sampler::{DreamScore, ProposerConfig, Remasking, Unmask};

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
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json), or a llama.cpp
    /// GGUF file of LLaDA / Dream (FILE.gguf, or a directory holding one). Default: the tiny LLaDA
    /// bundled in the repository (fixtures/llada-tiny).
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
}

impl ModelArgs {
    /// The model directory (or GGUF file) to load.
    pub fn dir(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(conformance::paths::default_model)
    }

    /// `--dtype` and `--quantize`.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions::new(self.dtype.dtype()).quantized(self.quantize)
    }

    /// Loads the model on `device`; says on stderr how the linear layers are stored when
    /// `--quantize` could not use the requested type everywhere.
    pub fn load(&self, device: &Device) -> Result<LoadedModel> {
        let dir = self.dir();
        let loaded = fastdllm_models::load_model_with(&dir, device, &self.load_options())?;
        if let Some(q) = self.quantize {
            let uniform = format!("{q} x ");
            let w = &loaded.info.linear_weights;
            if !(w.starts_with(&uniform) && !w.contains(',')) {
                eprintln!(
                    "note: --quantize {q}: linear layers stored as {w} (rows that are not whole \
                     {q} blocks use llama.cpp's fallback type)"
                );
            }
        }
        Ok(loaded)
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
#[derive(Debug, Clone, Args)]
pub struct DecodeArgs {
    /// Answer positions G (all start as [MASK]).
    #[arg(long, default_value_t = 32, value_parser = bounds::tokens())]
    pub gen_length: usize,
    /// Block size B (G must be a multiple of B).
    #[arg(long, default_value_t = 8, value_parser = bounds::tokens())]
    pub block_length: usize,
    /// Denoising steps for fixed schedules (a multiple of G/B). Default: gen_length (one token per step).
    #[arg(long, value_parser = bounds::tokens())]
    pub steps: Option<usize>,
    /// Sampling temperature (0 = greedy; > 0 = Gumbel-max sampling in f64).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Confidence used to rank candidates (LLaDA).
    #[arg(long, value_enum, default_value_t = RemaskingArg::LowConfidence)]
    pub remasking: RemaskingArg,
    /// Parallel decoding: unmask every candidate with confidence >= THRESHOLD (top-1 always).
    #[arg(long, conflicts_with = "factor")]
    pub threshold: Option<f64>,
    /// Parallel decoding: the factor rule, largest n with (n+1)(1-c_n) <= FACTOR.
    #[arg(long)]
    pub factor: Option<f64>,
    /// KV cache approximation.
    #[arg(long, value_enum, default_value_t = CacheArg::None)]
    pub cache: CacheArg,
    /// Refresh the cache every k steps inside a block (1 = exact). Default: only at block starts.
    #[arg(long, value_parser = bounds::tokens())]
    pub refresh_every: Option<usize>,
    /// Dream: top-p filtering.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Dream: top-k filtering.
    #[arg(long, value_parser = bounds::tokens())]
    pub top_k: Option<usize>,
    /// Dream: score of fixed schedules (entropy, maskgit_plus, topk_margin).
    #[arg(long, value_enum)]
    pub alg: Option<AlgArg>,
    /// Dream: the original no-cache sampler (whole answer one block, timestep schedule).
    #[arg(long)]
    pub dream_original: bool,
    /// Random seed (Gumbel noise, random confidences). Row i of a batch draws from a stream
    /// derived from it (row 0: the seed itself). `serve`: unused (a request without `seed` draws
    /// a fresh seed per choice).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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

impl DecodeArgs {
    /// The validated settings for a model family.
    pub fn settings(&self, family: ModelFamily) -> Result<GenerationSettings> {
        let mode = match self.cache {
            CacheArg::None => CacheMode::Off,
            CacheArg::Prefix => CacheMode::Prefix,
            CacheArg::Dual => CacheMode::Dual,
        };
        let dream = family == ModelFamily::Dream;
        if !dream
            && (self.top_p.is_some()
                || self.top_k.is_some()
                || self.alg.is_some()
                || self.dream_original)
        {
            bail!("--top-p, --top-k, --alg and --dream-original apply to Dream models only");
        }
        let unmask = match (self.threshold, self.factor) {
            (Some(threshold), _) => Unmask::Threshold { threshold },
            (None, Some(factor)) => Unmask::Factor { factor },
            (None, None) if dream => Unmask::DreamTimesteps { eps: 1e-3 },
            (None, None) => Unmask::Fixed,
        };
        let mut decode = DecodeConfig {
            gen_length: self.gen_length,
            block_length: self.block_length,
            steps: self.steps.unwrap_or(self.gen_length),
            force_block_start: None,
            max_steps_per_block: None,
        };
        if self.dream_original {
            if self.block_length != self.gen_length {
                bail!(
                    "--dream-original decodes the whole answer as one block: set --block-length {}",
                    self.gen_length
                );
            }
            decode.force_block_start = Some(false);
        }
        let settings = GenerationSettings {
            decode,
            cache: CacheSettings {
                refresh_every: self.refresh_every,
                ..CacheSettings::new(mode)
            },
            unmask,
            proposer: ProposerConfig {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                remasking: match self.remasking {
                    RemaskingArg::LowConfidence => Remasking::LowConfidence,
                    RemaskingArg::Random => Remasking::Random,
                },
                dream_score: self.alg.map(|a| match a {
                    AlgArg::Entropy => DreamScore::NegEntropy,
                    AlgArg::MaskgitPlus => DreamScore::Probability,
                    AlgArg::TopkMargin => DreamScore::Margin,
                }),
            },
            seed: self.seed,
        };
        settings.validate(family)?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn edge_int() -> impl Strategy<Value = usize> {
        prop_oneof![
            Just(0usize),
            Just(1usize),
            0usize..256,
            (0usize..64).prop_map(|k| usize::MAX - k),
            (0u32..64).prop_map(|s| 1usize << s),
            any::<usize>(),
        ]
    }

    fn edge_float() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(1.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MIN_POSITIVE / 4.0),
            Just(1e-38),
            Just(f64::MAX),
            any::<f64>(),
            -2.0f64..2.0,
        ]
    }

    proptest! {
        /// `DecodeArgs::settings` (every CLI command's settings) answers Ok or an error for any
        /// integers and floats the flags could carry, never a panic.
        #[test]
        fn cli_settings_never_panic(
            gen_length in edge_int(), block_length in edge_int(),
            steps in proptest::option::of(edge_int()), temperature in edge_float(),
            threshold in proptest::option::of(edge_float()),
            factor in proptest::option::of(edge_float()),
            refresh_every in proptest::option::of(edge_int()),
            top_p in proptest::option::of(edge_float()),
            top_k in proptest::option::of(edge_int()),
            dream in any::<bool>(), dream_original in any::<bool>(), seed in any::<u64>(),
        ) {
            let a = DecodeArgs {
                gen_length, block_length, steps, temperature,
                remasking: RemaskingArg::LowConfidence,
                threshold: threshold.filter(|_| factor.is_none()), factor,
                cache: CacheArg::Dual, refresh_every, top_p, top_k, alg: None,
                dream_original, seed,
            };
            let family = if dream { ModelFamily::Dream } else { ModelFamily::Llada };
            if let Ok(s) = a.settings(family) {
                prop_assert!(s.validate(family).is_ok());
                prop_assert!(s.decode.step_cap() >= 1);
            }
        }

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

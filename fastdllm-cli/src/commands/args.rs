//! Argument groups shared by several subcommands, and their conversion into settings.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_cli::engine::GenerationSettings;
use fastdllm_core::{DecodeConfig, ModelFamily};
use fastdllm_sampler::{DreamScore, ProposerConfig, Remasking, Unmask};

/// Where the model comes from and where it runs.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json). Default: the tiny
    /// LLaDA bundled in the repository (fixtures/llada-tiny).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Device to run on.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    pub device: DeviceArg,
    /// Activation and weight dtype.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
}

impl ModelArgs {
    /// The model directory to load.
    pub fn dir(&self) -> PathBuf {
        self.model
            .clone()
            .unwrap_or_else(fastdllm_cli::paths::default_model)
    }
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
    #[arg(long, default_value_t = 32)]
    pub gen_length: usize,
    /// Block size B (G must be a multiple of B).
    #[arg(long, default_value_t = 8)]
    pub block_length: usize,
    /// Denoising steps for fixed schedules (a multiple of G/B). Default: gen_length (one token per step).
    #[arg(long)]
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
    #[arg(long)]
    pub refresh_every: Option<usize>,
    /// Dream: top-p filtering.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Dream: top-k filtering.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Dream: score of fixed schedules (entropy, maskgit_plus, topk_margin).
    #[arg(long, value_enum)]
    pub alg: Option<AlgArg>,
    /// Dream: the original no-cache sampler (whole answer one block, timestep schedule).
    #[arg(long)]
    pub dream_original: bool,
    /// Random seed (Gumbel noise, random confidences).
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

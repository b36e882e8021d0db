//! Reading `config.json` (+ `generation_config.json`) and picking the architecture.
//!
//! Reference: the Hugging Face config files of GSAI-ML/LLaDA-8B-Instruct (`LLaDAConfig`) and
//! Dream-org/Dream-v0-Instruct-7B (`DreamConfig`, Qwen2 names), docs/ALGORITHM.md §1.1.1 and
//! §1.2.1. Each architecture has a raw serde layer (`Raw*Config` in `config/llada.rs`,
//! `config/dream.rs`: every field optional, unknown keys ignored) and both validate into the one
//! [`ModelConfig`] with canonical names, so the rest of the crate never sees either file's
//! spelling. The model types import this module; it imports none of them. Deviations: ids
//! missing from `config.json` are taken from `generation_config.json` when it has them (Dream's
//! shipped generation config has a null mask id, so `config.json` wins); `eos_token_id` may be a
//! number or a list in either file.

use std::path::Path;

use fastdllm_core::{ModelFamily, ModelSpec};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::{Error, Result};

mod dream;
mod llada;
mod llada_moe;

pub use dream::{
    RawDreamConfig, DREAM_DEFAULT_MAX_POSITION_EMBEDDINGS, DREAM_DEFAULT_RMS_NORM_EPS,
    DREAM_DEFAULT_ROPE_THETA, DREAM_EOS_TOKEN_ID, DREAM_MASK_TOKEN_ID,
};
pub use llada::{
    RawLladaConfig, LLADA_DEFAULT_MAX_SEQUENCE_LENGTH, LLADA_DEFAULT_MLP_RATIO,
    LLADA_DEFAULT_RMS_NORM_EPS, LLADA_DEFAULT_ROPE_THETA, LLADA_EOS_TOKEN_ID, LLADA_MASK_TOKEN_ID,
};
pub use llada_moe::{
    RawLladaMoeConfig, LLADA_MOE_DEFAULT_MAX_POSITION_EMBEDDINGS, LLADA_MOE_DEFAULT_RMS_NORM_EPS,
    LLADA_MOE_DEFAULT_ROPE_THETA, LLADA_MOE_MASK_TOKEN_ID,
};

/// `architectures[0]` of LLaDA checkpoints.
pub const LLADA_ARCHITECTURE: &str = "LLaDAModelLM";
/// `architectures[0]` of LLaDA-MoE checkpoints (inclusionAI/LLaDA-MoE-7B-A1B).
pub const LLADA_MOE_ARCHITECTURE: &str = "LLaDAMoEModelLM";
/// `architectures[0]` of Dream checkpoints.
pub const DREAM_ARCHITECTURE: &str = "DreamModel";
/// `model_type` of LLaDA checkpoints (used when `architectures` is absent).
pub const LLADA_MODEL_TYPE: &str = "llada";
/// `model_type` of LLaDA-MoE configs renamed by third-party trainers (the released checkpoints
/// say `llada` and are told apart by `architectures`).
pub const LLADA_MOE_MODEL_TYPE: &str = "lladamoe";
/// `model_type` of Dream checkpoints (used when `architectures` is absent).
pub const DREAM_MODEL_TYPE: &str = "Dream";

/// The validated config of a LLaDA or Dream checkpoint: one struct for both families, with
/// canonical (Hugging Face / Qwen2) names. The families differ only in how their `config.json`
/// spells these fields ([`RawLladaConfig`], [`RawDreamConfig`]) and in what the model does with
/// them (tensor names, RoPE precision, Dream's logits shift), which the model types hold.
///
/// Build it from a file with [`load_config`] (or `TryFrom<RawLladaConfig>` /
/// `TryFrom<RawDreamConfig>`), from a preset ([`ModelConfig::llada_8b`],
/// [`ModelConfig::dream_7b`]), or in code; then call [`ModelConfig::validate`] (the model
/// constructors run it too).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// LLaDA or Dream (decides tensor names, RoPE precision and the logits alignment, see
    /// [`fastdllm_core::ModelSpec::shifted_logits`]).
    pub family: ModelFamily,
    /// Hidden size (LLaDA `d_model`).
    pub hidden_size: usize,
    /// Number of blocks (LLaDA `n_layers`, Dream `num_hidden_layers`).
    pub num_layers: usize,
    /// Attention heads (LLaDA `n_heads`, Dream `num_attention_heads`).
    pub num_heads: usize,
    /// KV heads (LLaDA `n_kv_heads`, Dream `num_key_value_heads`); divides `num_heads`.
    pub num_kv_heads: usize,
    /// `hidden_size / num_heads`, even (RoPE rotates halves).
    pub head_dim: usize,
    /// Gate/up output size of the MLP (LLaDA `mlp_hidden_size`); with [`ModelConfig::moe`], of
    /// each expert's MLP (LLaDA-MoE `expert_intermediate_size`).
    pub intermediate_size: usize,
    /// Rows of the embedding and LM head (LLaDA `embedding_size`, which may exceed the
    /// tokenizer's vocabulary).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Longest canvas, in tokens (LLaDA `max_sequence_length`, Dream `max_position_embeddings`).
    pub max_seq_len: usize,
    /// `[MASK]` id.
    pub mask_token_id: u32,
    /// Ids that end an answer (the config files' `eos_token_id`, plus the tokenizer's end tokens
    /// when loaded by [`crate::load_model`]).
    pub eos_token_ids: Vec<u32>,
    /// Padding id (LLaDA and Dream pad with EOS).
    pub pad_token_id: u32,
    /// BOS id, when the config files name one.
    pub bos_token_id: Option<u32>,
    /// The LM head is the embedding matrix (Dream `tie_word_embeddings`; LLaDA's `weight_tying`
    /// must be false).
    pub tie_word_embeddings: bool,
    /// q and k are RMS-normalised per head over `head_dim` before RoPE, one weight of size
    /// `head_dim` shared by the heads (LLaDA-MoE `qk_layernorm`; false for LLaDA and Dream).
    pub qk_norm: bool,
    /// The sparse mixture-of-experts MLP that replaces the dense one in every layer (LLaDA-MoE,
    /// docs/ALGORITHM.md §1.4); `None` for a dense model.
    pub moe: Option<MoeConfig>,
}

/// The routed experts of a LLaDA-MoE layer (`LLaDAMoESparseMoeBlock`): a router picks, per
/// token, the `num_experts_per_tok` experts of highest softmax probability (over all
/// `num_experts`), whose SwiGLU outputs (each of size [`ModelConfig::intermediate_size`]) are
/// summed weighted by those probabilities, not renormalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeConfig {
    /// Experts per layer (`num_experts`).
    pub num_experts: usize,
    /// Experts each token is routed to (`num_experts_per_tok`), `1..=num_experts`.
    pub num_experts_per_tok: usize,
}

impl ModelConfig {
    /// The shape of GSAI-ML/LLaDA-8B-Instruct (docs/ALGORITHM.md §1.1.1), for random-weight
    /// benches.
    pub fn llada_8b() -> Self {
        Self {
            family: ModelFamily::Llada,
            hidden_size: 4096,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 32,
            head_dim: 128,
            intermediate_size: 12288,
            vocab_size: 126_464,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            max_seq_len: 4096,
            mask_token_id: LLADA_MASK_TOKEN_ID,
            eos_token_ids: vec![LLADA_EOS_TOKEN_ID, 126_348],
            pad_token_id: LLADA_EOS_TOKEN_ID,
            bos_token_id: Some(126_080),
            tie_word_embeddings: false,
            qk_norm: false,
            moe: None,
        }
    }

    /// The shape of Dream-org/Dream-v0-Instruct-7B (docs/ALGORITHM.md §1.2.1), for random-weight
    /// benches.
    /// `max_seq_len` is 4096 here (the checkpoint allows 131072; the RoPE tables are sized by it).
    pub fn dream_7b() -> Self {
        Self {
            family: ModelFamily::Dream,
            hidden_size: 3584,
            num_layers: 28,
            num_heads: 28,
            num_kv_heads: 4,
            head_dim: 128,
            intermediate_size: 18944,
            vocab_size: 152_064,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            max_seq_len: 4096,
            mask_token_id: DREAM_MASK_TOKEN_ID,
            eos_token_ids: vec![DREAM_EOS_TOKEN_ID, 151_645],
            pad_token_id: DREAM_EOS_TOKEN_ID,
            bos_token_id: Some(151_665),
            tie_word_embeddings: false,
            qk_norm: false,
            moe: None,
        }
    }

    /// The `architectures[0]` name: `"LLaDAModelLM"`, `"LLaDAMoEModelLM"` or `"DreamModel"`.
    pub fn architecture(&self) -> &'static str {
        match (self.family, self.moe.is_some()) {
            (ModelFamily::Llada, false) => LLADA_ARCHITECTURE,
            (ModelFamily::Llada, true) => LLADA_MOE_ARCHITECTURE,
            (ModelFamily::Dream, _) => DREAM_ARCHITECTURE,
        }
    }

    /// What the generation loop needs to know of the model (sizes, special ids, family).
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            family: self.family,
            vocab_size: self.vocab_size,
            mask_token_id: self.mask_token_id,
            eos_token_ids: self.eos_token_ids.clone(),
            pad_token_id: self.pad_token_id,
            num_layers: self.num_layers,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
            max_seq_len: self.max_seq_len,
        }
    }

    /// Checks the invariants: positive sizes, heads divisible by KV heads, hidden divisible by
    /// heads, an even head size (RoPE rotates halves), positive finite epsilon and theta, ids
    /// inside the vocabulary, a mask id distinct from EOS and pad; with `moe`, a LLaDA family,
    /// at least one expert and `1 <= num_experts_per_tok <= num_experts`.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the field (canonical name) and its value.
    pub fn validate(&self) -> Result<()> {
        self.validate_named(&CANONICAL_NAMES)
    }

    /// Fails unless the config is of `family` (a model type given the other family's config).
    pub(crate) fn expect_family(&self, family: ModelFamily) -> Result<()> {
        if self.family == family {
            Ok(())
        } else {
            Err(Error::config(
                "family",
                format!("{:?}", self.family),
                format!("this model type needs a {family:?} config"),
            ))
        }
    }

    /// Adds `ids` to the EOS list (keeping the order, without duplicates).
    pub(crate) fn add_eos_token_ids(&mut self, ids: impl IntoIterator<Item = u32>) {
        push_unique(&mut self.eos_token_ids, ids);
    }
}

/// Reads, validates and returns the config of the model in `dir` (`config.json`, plus
/// `generation_config.json` when present). Nothing else is read.
pub fn load_config(dir: &Path) -> Result<ModelConfig> {
    check_dir(dir)?;
    let path = dir.join("config.json");
    let text = read_text(&path, "model config (config.json)")?;
    let probe: ArchitectureProbe = parse_json(&path, &text)?;
    let architecture = probe.architecture().map_err(|e| e.in_config_file(&path))?;
    let generation = read_generation_config(dir)?;
    let gen_path = dir.join("generation_config.json");
    let generation = generation.as_ref();
    match architecture {
        Architecture::Llada => load_raw::<RawLladaConfig>(&path, &text, &gen_path, generation),
        Architecture::Dream => load_raw::<RawDreamConfig>(&path, &text, &gen_path, generation),
        Architecture::LladaMoe => {
            load_raw::<RawLladaMoeConfig>(&path, &text, &gen_path, generation)
        }
    }
}

/// A family's `config.json` as parsed (its own Hugging Face field names), validated into a
/// [`ModelConfig`] by `TryFrom`.
pub(crate) trait RawConfig:
    serde::de::DeserializeOwned + TryInto<ModelConfig, Error = Error>
{
    /// The special ids of the file (mask, pad, BOS, EOS), to fill from `generation_config.json`.
    fn special_ids(&mut self) -> SpecialIds<'_>;
}

/// Parses `text` (the contents of `path`, a `config.json`) as family `R`, fills the special ids
/// it lacks from `generation` (`gen_path`), and validates it; an error names the file the
/// rejected value came from.
fn load_raw<R: RawConfig>(
    path: &Path,
    text: &str,
    gen_path: &Path,
    generation: Option<&RawGenerationConfig>,
) -> Result<ModelConfig> {
    let mut raw: R = parse_json(path, text)?;
    let ids = raw.special_ids();
    let own = OwnIds::of(&ids);
    if let Some(generation) = generation {
        ids.fill_from(generation);
    }
    raw.try_into()
        .map_err(|e| own.blame(e, path, gen_path, generation))
}

/// The special ids `config.json` itself sets (before `generation_config.json` fills the rest).
#[derive(Debug)]
struct OwnIds {
    mask: Option<u32>,
    pad: Option<u32>,
    bos: Option<u32>,
    eos: Vec<u32>,
}

impl OwnIds {
    /// What `config.json` sets of the special ids.
    fn of(ids: &SpecialIds<'_>) -> OwnIds {
        OwnIds {
            mask: *ids.mask,
            pad: *ids.pad,
            bos: *ids.bos,
            eos: ids.eos.as_ref().map(TokenIds::to_vec).unwrap_or_default(),
        }
    }
}

impl OwnIds {
    /// Attaches the file a config error belongs to: `generation_config.json` (`gen_path`) when
    /// the rejected special id came from it, else `config.json` (`path`). A mask id neither file
    /// sets is reported as missing (the family's default was tried), not as the file's value.
    fn blame(
        &self,
        e: Error,
        path: &Path,
        gen_path: &Path,
        generation: Option<&RawGenerationConfig>,
    ) -> Error {
        let Error::InvalidConfig {
            file: None,
            field,
            value,
            allowed,
        } = e
        else {
            return e.in_config_file(path);
        };
        let id: Option<u32> = value.parse().ok();
        let g = generation;
        let from_generation = match field {
            "mask_token_id" => self.mask.is_none() && g.is_some_and(|g| g.mask_token_id.is_some()),
            "pad_token_id" => self.pad.is_none() && g.is_some_and(|g| g.pad_token_id.is_some()),
            "bos_token_id" => self.bos.is_none() && g.is_some_and(|g| g.bos_token_id.is_some()),
            "eos_token_id" => id.is_some_and(|id| {
                !self.eos.contains(&id)
                    && g.and_then(|g| g.eos_token_id.as_ref())
                        .is_some_and(|ids| ids.to_vec().contains(&id))
            }),
            _ => false,
        };
        if field == "mask_token_id" && self.mask.is_none() && !from_generation {
            return Error::InvalidConfig {
                file: Some(path.to_path_buf()),
                field,
                value: "(missing)".into(),
                allowed: format!(
                    "neither config.json nor generation_config.json sets it, and the family's default {value} does not fit: it {allowed}; set `mask_token_id`"
                ),
            };
        }
        Error::InvalidConfig {
            file: Some(if from_generation { gen_path } else { path }.to_path_buf()),
            field,
            value,
            allowed,
        }
    }
}

/// The fields of `config.json` that decide the architecture.
#[derive(Debug, Default, Deserialize)]
struct ArchitectureProbe {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
}

/// The architectures whose `config.json` this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Architecture {
    Llada,
    LladaMoe,
    Dream,
}

impl ArchitectureProbe {
    fn architecture(&self) -> Result<Architecture> {
        if let Some(first) = self.architectures.as_ref().and_then(|a| a.first()) {
            return match first.as_str() {
                LLADA_ARCHITECTURE => Ok(Architecture::Llada),
                LLADA_MOE_ARCHITECTURE => Ok(Architecture::LladaMoe),
                DREAM_ARCHITECTURE => Ok(Architecture::Dream),
                other => Err(Error::UnknownArchitecture {
                    file: None,
                    field: "architectures",
                    value: other.to_string(),
                }),
            };
        }
        match self.model_type.as_deref() {
            Some(LLADA_MODEL_TYPE) => Ok(Architecture::Llada),
            Some(LLADA_MOE_MODEL_TYPE) => Ok(Architecture::LladaMoe),
            Some(DREAM_MODEL_TYPE) => Ok(Architecture::Dream),
            Some(other) => Err(Error::UnknownArchitecture {
                file: None,
                field: "model_type",
                value: other.to_string(),
            }),
            None => Err(Error::UnknownArchitecture {
                file: None,
                field: "architectures",
                value: "(neither `architectures` nor `model_type` is set)".to_string(),
            }),
        }
    }
}

/// One token id or a list of them (`eos_token_id` is either in HF files).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids, in order.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// The fields of `generation_config.json` fastdllm reads (other keys are ignored): the special
/// ids, the sampling fields that map onto the decoding knobs, and an optional `fastdllm` object
/// with a directory's own decoding defaults.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawGenerationConfig {
    /// BOS id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// EOS id(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Padding id.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// `[MASK]` id (null in Dream's shipped file).
    #[serde(default)]
    pub mask_token_id: Option<u32>,
    /// Answer length (transformers' `max_new_tokens`; null in Dream's shipped file).
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature (Dream's file: 0.0).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Top-p filtering (Dream).
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Top-k filtering (Dream).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// fastdllm's decoding defaults for this directory (not a transformers key; the bundled tiny
    /// fixtures declare theirs here).
    #[serde(default)]
    pub fastdllm: Option<DirDecodeDefaults>,
}

/// The `fastdllm` object of `generation_config.json`: a model directory's decoding defaults
/// (every field optional; unknown keys are an error). Names are the Fast-dLLM reference's
/// `generate()` arguments.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirDecodeDefaults {
    /// Answer positions G.
    #[serde(default)]
    pub gen_length: Option<usize>,
    /// Block size B.
    #[serde(default)]
    pub block_length: Option<usize>,
    /// Denoising steps of fixed schedules.
    #[serde(default)]
    pub steps: Option<usize>,
    /// KV cache: `none`, `prefix` or `dual`.
    #[serde(default)]
    pub cache: Option<String>,
    /// Parallel decoding threshold: absent = not declared; `null` = no threshold (the fixed
    /// schedule, Dream's timesteps) = `Some(None)`.
    #[serde(default, deserialize_with = "present")]
    pub threshold: Option<Option<f64>>,
    /// Parallel decoding factor (absent / `null` as for `threshold`).
    #[serde(default, deserialize_with = "present")]
    pub factor: Option<Option<f64>>,
}

/// A present field, `null` included (absent fields take the `default`, `None`).
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Reads `generation_config.json` of `dir` (`None` when the file is absent).
///
/// Errors: unreadable or malformed file (naming the file and the line).
pub fn read_generation_config(dir: &Path) -> Result<Option<RawGenerationConfig>> {
    let path = dir.join("generation_config.json");
    if !regular_file(&path, "generation config")? {
        return Ok(None);
    }
    let text = read_text(&path, "generation config")?;
    Ok(Some(parse_json(&path, &text)?))
}

/// Fails unless `dir` is an existing directory.
pub(crate) fn check_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(Error::MissingDir {
            path: dir.to_path_buf(),
        })
    }
}

/// Reads a required text file; `what` says what it is for in the "not found" message.
/// Whether `path` exists as a regular file (symlinks followed): `Ok(false)` when nothing is
/// there, [`Error::NotRegularFile`] for a FIFO, device, socket or directory (opening a FIFO
/// would block; a device could be endless).
pub fn regular_file(path: &Path, what: &str) -> Result<bool> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(false);
    };
    if meta.is_file() {
        return Ok(true);
    }
    let kind = {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            let t = meta.file_type();
            if t.is_fifo() {
                "FIFO"
            } else if t.is_char_device() {
                "character device"
            } else if t.is_block_device() {
                "block device"
            } else if t.is_socket() {
                "socket"
            } else if t.is_dir() {
                "directory"
            } else {
                "special file"
            }
        }
        #[cfg(not(unix))]
        {
            if meta.is_dir() {
                "directory"
            } else {
                "special file"
            }
        }
    };
    Err(Error::NotRegularFile {
        path: path.to_path_buf(),
        kind,
        what: what.to_string(),
    })
}

pub(crate) fn read_text(path: &Path, what: &str) -> Result<String> {
    if !regular_file(path, what)? {
        return Err(Error::MissingFile {
            path: path.to_path_buf(),
            what: format!("the {what} is required"),
        });
    }
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses `text` (the contents of `path`), reporting errors with file, line and the line's text.
pub(crate) fn parse_json<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::json(path, text, &e))
}

/// The special ids a raw config may leave to `generation_config.json`.
pub(crate) struct SpecialIds<'a> {
    pub(crate) mask: &'a mut Option<u32>,
    pub(crate) pad: &'a mut Option<u32>,
    pub(crate) bos: &'a mut Option<u32>,
    pub(crate) eos: &'a mut Option<TokenIds>,
}

impl SpecialIds<'_> {
    /// Fills the ids `config.json` lacks from `generation_config.json`; EOS ids are merged.
    pub(crate) fn fill_from(self, generation: &RawGenerationConfig) {
        *self.mask = self.mask.or(generation.mask_token_id);
        *self.pad = self.pad.or(generation.pad_token_id);
        *self.bos = self.bos.or(generation.bos_token_id);
        if let Some(extra) = &generation.eos_token_id {
            let mut ids = self.eos.as_ref().map(TokenIds::to_vec).unwrap_or_default();
            push_unique(&mut ids, extra.to_vec());
            *self.eos = Some(TokenIds::Many(ids));
        }
    }
}

/// Appends the ids of `extra` that `list` does not have yet.
pub(crate) fn push_unique(list: &mut Vec<u32>, extra: impl IntoIterator<Item = u32>) {
    for id in extra {
        if !list.contains(&id) {
            list.push(id);
        }
    }
}

/// Field names used in validation messages: the raw HF names when validating a parsed file, the
/// canonical names when validating a config built in code.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldNames {
    pub(crate) hidden_size: &'static str,
    pub(crate) num_layers: &'static str,
    pub(crate) num_heads: &'static str,
    pub(crate) num_kv_heads: &'static str,
    pub(crate) head_dim: &'static str,
    pub(crate) intermediate_size: &'static str,
    pub(crate) vocab_size: &'static str,
    pub(crate) rms_norm_eps: &'static str,
    pub(crate) rope_theta: &'static str,
    pub(crate) max_seq_len: &'static str,
    pub(crate) mask_token_id: &'static str,
    pub(crate) eos_token_id: &'static str,
    pub(crate) pad_token_id: &'static str,
    pub(crate) bos_token_id: &'static str,
}

/// Canonical names (validated configs built in code).
pub(crate) const CANONICAL_NAMES: FieldNames = FieldNames {
    hidden_size: "hidden_size",
    num_layers: "num_layers",
    num_heads: "num_heads",
    num_kv_heads: "num_kv_heads",
    head_dim: "head_dim",
    intermediate_size: "intermediate_size",
    vocab_size: "vocab_size",
    rms_norm_eps: "rms_norm_eps",
    rope_theta: "rope_theta",
    max_seq_len: "max_seq_len",
    mask_token_id: "mask_token_id",
    eos_token_id: "eos_token_ids",
    pad_token_id: "pad_token_id",
    bos_token_id: "bos_token_id",
};

impl ModelConfig {
    /// [`ModelConfig::validate`], naming fields with `n` (the file's names when validating a
    /// parsed `config.json`).
    pub(crate) fn validate_named(&self, n: &FieldNames) -> Result<()> {
        let positive = |field: &'static str, value: usize| {
            if value == 0 {
                Err(Error::config(field, value, "must be > 0"))
            } else {
                Ok(())
            }
        };
        positive(n.hidden_size, self.hidden_size)?;
        positive(n.num_layers, self.num_layers)?;
        positive(n.num_heads, self.num_heads)?;
        positive(n.num_kv_heads, self.num_kv_heads)?;
        positive(n.intermediate_size, self.intermediate_size)?;
        positive(n.vocab_size, self.vocab_size)?;
        positive(n.max_seq_len, self.max_seq_len)?;
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::config(
                n.num_kv_heads,
                self.num_kv_heads,
                format!("must divide {} = {}", n.num_heads, self.num_heads),
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(Error::config(
                n.num_heads,
                self.num_heads,
                format!("must divide {} = {}", n.hidden_size, self.hidden_size),
            ));
        }
        let head_dim = self.hidden_size / self.num_heads;
        if self.head_dim != head_dim {
            return Err(Error::config(
                n.head_dim,
                self.head_dim,
                format!(
                    "must equal {} / {} = {head_dim}",
                    n.hidden_size, n.num_heads
                ),
            ));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(Error::config(
                n.num_heads,
                self.num_heads,
                format!("gives an odd head size {head_dim}; RoPE needs an even one"),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(Error::config(
                n.rms_norm_eps,
                self.rms_norm_eps,
                "must be finite and > 0",
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(Error::config(
                n.rope_theta,
                self.rope_theta,
                "must be finite and > 0",
            ));
        }
        if self.max_seq_len > u32::MAX as usize {
            return Err(Error::config(
                n.max_seq_len,
                self.max_seq_len,
                format!("must be <= {}", u32::MAX),
            ));
        }
        let in_vocab = |field: &'static str, id: u32| {
            if (id as usize) < self.vocab_size {
                Ok(())
            } else {
                Err(Error::config(
                    field,
                    id,
                    format!(
                        "must be a token id < {} = {}",
                        n.vocab_size, self.vocab_size
                    ),
                ))
            }
        };
        in_vocab(n.mask_token_id, self.mask_token_id)?;
        // A mask id that is also EOS or pad would end answers at every masked position (or
        // mask the padding): the canvas could not tell them apart.
        if self.eos_token_ids.contains(&self.mask_token_id) {
            return Err(Error::config(
                n.mask_token_id,
                self.mask_token_id,
                format!(
                    "must differ from the end-of-sequence ids {:?} ({} and the tokenizer's end tokens)",
                    self.eos_token_ids, n.eos_token_id
                ),
            ));
        }
        if self.pad_token_id == self.mask_token_id {
            return Err(Error::config(
                n.mask_token_id,
                self.mask_token_id,
                format!(
                    "must differ from {} = {}",
                    n.pad_token_id, self.pad_token_id
                ),
            ));
        }
        in_vocab(n.pad_token_id, self.pad_token_id)?;
        for &id in &self.eos_token_ids {
            in_vocab(n.eos_token_id, id)?;
        }
        if let Some(id) = self.bos_token_id {
            in_vocab(n.bos_token_id, id)?;
        }
        if let Some(moe) = &self.moe {
            if self.family != ModelFamily::Llada {
                return Err(Error::config(
                    "family",
                    format!("{:?}", self.family),
                    "mixture-of-experts layers are implemented for LLaDA-MoE (family Llada) only",
                ));
            }
            positive("num_experts", moe.num_experts)?;
            if !(1..=moe.num_experts).contains(&moe.num_experts_per_tok) {
                return Err(Error::config(
                    "num_experts_per_tok",
                    moe.num_experts_per_tok,
                    format!("must be in 1..={} (num_experts)", moe.num_experts),
                ));
            }
        }
        Ok(())
    }
}

fn required(field: &'static str, value: Option<usize>) -> Result<usize> {
    value.ok_or_else(|| Error::config(field, "(missing)", "required"))
}

fn expect_flag(field: &'static str, value: Option<bool>, supported: bool) -> Result<()> {
    match value {
        Some(v) if v != supported => Err(Error::config(
            field,
            v,
            format!("unsupported: only {supported} is implemented"),
        )),
        _ => Ok(()),
    }
}

fn expect_str(field: &'static str, value: &Option<String>, supported: &[&str]) -> Result<()> {
    match value {
        Some(v) if !supported.contains(&v.as_str()) => Err(Error::config(
            field,
            format!("{v:?}"),
            format!("unsupported: only {supported:?} is implemented"),
        )),
        _ => Ok(()),
    }
}

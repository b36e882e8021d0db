//! Reading `config.json` (+ `generation_config.json`) and picking the architecture.
//!
//! Reference: the Hugging Face config files of GSAI-ML/LLaDA-8B-Instruct (`LLaDAConfig`) and
//! Dream-org/Dream-v0-Instruct-7B (`DreamConfig`, Qwen2 names), SPEC 1.1.1 and 1.2.1. Each
//! architecture has a raw serde layer (`Raw*Config`, every field optional, unknown keys ignored)
//! and a validated layer with canonical names (STYLE 3.5). Deviations: ids missing from
//! `config.json` are taken from `generation_config.json` when it has them (Dream's shipped
//! generation config has a null mask id, so `config.json` wins); `eos_token_id` may be a number or
//! a list in either file.

use std::path::Path;

use fastdllm_core::ModelFamily;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::dream::{DreamConfig, RawDreamConfig};
use crate::llada::{LladaConfig, RawLladaConfig};
use crate::{Error, Result};

/// `architectures[0]` of LLaDA checkpoints.
pub const LLADA_ARCHITECTURE: &str = "LLaDAModelLM";
/// `architectures[0]` of Dream checkpoints.
pub const DREAM_ARCHITECTURE: &str = "DreamModel";
/// `model_type` of LLaDA checkpoints (used when `architectures` is absent).
pub const LLADA_MODEL_TYPE: &str = "llada";
/// `model_type` of Dream checkpoints (used when `architectures` is absent).
pub const DREAM_MODEL_TYPE: &str = "Dream";

/// A validated config of one of the supported architectures.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// LLaDA (`LLaDAModelLM`).
    Llada(LladaConfig),
    /// Dream (`DreamModel`).
    Dream(DreamConfig),
}

impl ModelConfig {
    /// The `architectures[0]` name: `"LLaDAModelLM"` or `"DreamModel"`.
    pub fn architecture(&self) -> &'static str {
        match self {
            ModelConfig::Llada(_) => LLADA_ARCHITECTURE,
            ModelConfig::Dream(_) => DREAM_ARCHITECTURE,
        }
    }

    /// The family (decides the logits alignment, see [`fastdllm_core::ModelSpec::shifted_logits`]).
    pub fn family(&self) -> ModelFamily {
        match self {
            ModelConfig::Llada(_) => ModelFamily::Llada,
            ModelConfig::Dream(_) => ModelFamily::Dream,
        }
    }

    /// Rows of the embedding / LM head.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Llada(c) => c.vocab_size,
            ModelConfig::Dream(c) => c.vocab_size,
        }
    }

    /// The `[MASK]` id.
    pub fn mask_token_id(&self) -> u32 {
        match self {
            ModelConfig::Llada(c) => c.mask_token_id,
            ModelConfig::Dream(c) => c.mask_token_id,
        }
    }

    /// BOS id from the config files, when they name one.
    pub fn bos_token_id(&self) -> Option<u32> {
        match self {
            ModelConfig::Llada(c) => c.bos_token_id,
            ModelConfig::Dream(c) => c.bos_token_id,
        }
    }

    /// The ids that end an answer.
    pub fn eos_token_ids(&self) -> &[u32] {
        match self {
            ModelConfig::Llada(c) => &c.eos_token_ids,
            ModelConfig::Dream(c) => &c.eos_token_ids,
        }
    }

    /// Longest canvas the model accepts.
    pub fn max_seq_len(&self) -> usize {
        match self {
            ModelConfig::Llada(c) => c.max_seq_len,
            ModelConfig::Dream(c) => c.max_seq_len,
        }
    }

    /// Checks the invariants of the config (also run by the model constructors).
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Llada(c) => c.validate(),
            ModelConfig::Dream(c) => c.validate(),
        }
    }

    /// Adds `ids` to the EOS list (keeping the order, without duplicates).
    pub(crate) fn add_eos_token_ids(&mut self, ids: impl IntoIterator<Item = u32>) {
        let list = match self {
            ModelConfig::Llada(c) => &mut c.eos_token_ids,
            ModelConfig::Dream(c) => &mut c.eos_token_ids,
        };
        push_unique(list, ids);
    }
}

/// Reads, validates and returns the config of the model in `dir` (`config.json`, plus
/// `generation_config.json` when present). Nothing else is read.
pub fn load_config(dir: &Path) -> Result<ModelConfig> {
    check_dir(dir)?;
    let path = dir.join("config.json");
    let text = read_text(&path, "model config (config.json)")?;
    let probe: ArchitectureProbe = parse_json(&path, &text)?;
    let family = probe.family().map_err(|e| e.in_config_file(&path))?;
    let generation = read_generation_config(dir)?;
    let config = match family {
        ModelFamily::Llada => {
            let mut raw: RawLladaConfig = parse_json(&path, &text)?;
            if let Some(generation) = &generation {
                raw.fill_from_generation(generation);
            }
            ModelConfig::Llada(LladaConfig::try_from(raw).map_err(|e| e.in_config_file(&path))?)
        }
        ModelFamily::Dream => {
            let mut raw: RawDreamConfig = parse_json(&path, &text)?;
            if let Some(generation) = &generation {
                raw.fill_from_generation(generation);
            }
            ModelConfig::Dream(DreamConfig::try_from(raw).map_err(|e| e.in_config_file(&path))?)
        }
    };
    Ok(config)
}

/// The fields of `config.json` that decide the architecture.
#[derive(Debug, Default, Deserialize)]
struct ArchitectureProbe {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
}

impl ArchitectureProbe {
    fn family(&self) -> Result<ModelFamily> {
        if let Some(first) = self.architectures.as_ref().and_then(|a| a.first()) {
            return match first.as_str() {
                LLADA_ARCHITECTURE => Ok(ModelFamily::Llada),
                DREAM_ARCHITECTURE => Ok(ModelFamily::Dream),
                other => Err(Error::UnknownArchitecture {
                    file: None,
                    field: "architectures",
                    value: other.to_string(),
                }),
            };
        }
        match self.model_type.as_deref() {
            Some(LLADA_MODEL_TYPE) => Ok(ModelFamily::Llada),
            Some(DREAM_MODEL_TYPE) => Ok(ModelFamily::Dream),
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
pub(crate) fn regular_file(path: &Path, what: &str) -> Result<bool> {
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

/// The shape and numerics every architecture shares, borrowed from a config for validation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommonFields<'a> {
    pub(crate) hidden_size: usize,
    pub(crate) num_layers: usize,
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) vocab_size: usize,
    pub(crate) rms_norm_eps: f64,
    pub(crate) rope_theta: f64,
    pub(crate) max_seq_len: usize,
    pub(crate) mask_token_id: u32,
    pub(crate) eos_token_ids: &'a [u32],
    pub(crate) pad_token_id: u32,
    pub(crate) bos_token_id: Option<u32>,
}

impl CommonFields<'_> {
    /// Positive sizes, heads divisible by KV heads, hidden divisible by heads, an even head size
    /// (RoPE rotates halves), positive finite epsilon and theta, ids inside the vocabulary.
    pub(crate) fn validate(&self, n: &FieldNames) -> Result<()> {
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
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(Error::config(
                n.num_kv_heads,
                self.num_kv_heads,
                format!("must divide {} = {}", n.num_heads, self.num_heads),
            ));
        }
        if self.hidden_size % self.num_heads != 0 {
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
        if head_dim % 2 != 0 {
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
        for &id in self.eos_token_ids {
            in_vocab(n.eos_token_id, id)?;
        }
        if let Some(id) = self.bos_token_id {
            in_vocab(n.bos_token_id, id)?;
        }
        Ok(())
    }
}

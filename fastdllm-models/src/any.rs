//! Loading a model directory as whichever architecture its config names, and random-weight models.
//!
//! Reference: the Hugging Face directory layout of GSAI-ML/LLaDA-8B-* and Dream-org/Dream-v0-*-7B
//! (`config.json`, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`,
//! safetensors). The architecture comes from `architectures[0]`, falling back to `model_type`.
//! Deviations: EOS ids are the union of the config files' ids and the end-of-answer special
//! tokens the tokenizer has (`<|endoftext|>`, `<|eot_id|>`, `<|im_end|>`), because the released
//! configs name only `<|endoftext|>` while Instruct answers end with the end-of-turn token; the
//! chat template is a fixed per-family template (not the Jinja one).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use fastdllm_core::DiffusionLm;

use crate::config::{check_dir, load_config, ModelConfig};
use crate::dream::DreamModel;
use crate::llada::LladaModel;
use crate::loading::{
    check_weights, mmap_var_builder, random_var_builder, unused_tensors, weight_files, Weights,
};
use crate::tokenizer::{
    ChatTemplate, Tokenizer, CHATML_TEMPLATE_TOKENS, LLAMA3_BOS, LLAMA3_TEMPLATE_TOKENS,
};
use crate::Result;

/// Dream Base's BOS, which base prompting prepends (SPEC 1.2.5); its generation config names
/// `<|endoftext|>` as BOS instead.
pub const DREAM_BOS_TOKEN: &str = "<|beginoftext|>";

/// A model ready to generate with: the network, its tokenizer and what was read from the
/// directory.
#[derive(Clone)]
pub struct LoadedModel {
    /// The network.
    pub model: Arc<dyn DiffusionLm>,
    /// The tokenizer of `tokenizer.json`.
    pub tokenizer: Tokenizer,
    /// Facts about the checkpoint.
    pub info: ModelInfo,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("spec", self.model.spec())
            .field("tokenizer", &self.tokenizer)
            .field("info", &self.info)
            .finish()
    }
}

/// What [`load_model`] read from a model directory.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The model directory.
    pub dir: PathBuf,
    /// `"LLaDAModelLM"` or `"DreamModel"`.
    pub architecture: String,
    /// The BOS id raw prompts start with (LLaDA: `bos_token_id` of the config files, else
    /// `<|startoftext|>`; Dream: `<|beginoftext|>` when the tokenizer has it, else the config's).
    pub bos_token_id: Option<u32>,
    /// The template for one user message ([`ChatTemplate::None`] for Base checkpoints and
    /// tokenizers without the template's special tokens).
    pub chat_template: ChatTemplate,
    /// The validated config, EOS ids completed from the tokenizer.
    pub config: ModelConfig,
    /// The safetensors files the weights came from.
    pub weight_files: Vec<PathBuf>,
    /// Activation dtype.
    pub dtype: DType,
}

/// Loads the model in `dir` (local path only) onto `device` in `dtype` (f32, bf16 or f16).
///
/// Reads `config.json` (+ `generation_config.json`), `tokenizer.json`, `tokenizer_config.json`
/// when present (only whether it has a `chat_template`), and `model.safetensors` or the shards of
/// `model.safetensors.index.json`.
pub fn load_model(dir: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    check_dir(dir)?;
    let mut config = load_config(dir)?;
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    config.add_eos_token_ids(tokenizer.eos_token_ids());
    config.validate()?;
    let files = weight_files(dir)?;
    let location = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let names = check_weights(&files)?;
    let weights = Weights::new(mmap_var_builder(&files, dtype, device)?, location);
    let model: Arc<dyn DiffusionLm> = match &config {
        ModelConfig::Llada(cfg) => Arc::new(LladaModel::load(cfg, &weights)?),
        ModelConfig::Dream(cfg) => Arc::new(DreamModel::load(cfg, &weights)?),
    };
    let unused = unused_tensors(&names, &weights.used());
    if !unused.is_empty() {
        const SHOWN: usize = 8;
        let mut list = unused
            .iter()
            .take(SHOWN)
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if unused.len() > SHOWN {
            list.push_str(&format!(", ... ({} more)", unused.len() - SHOWN));
        }
        return Err(crate::Error::UnusedTensors {
            location: weights.location().to_string(),
            count: unused.len(),
            names: list,
            hint: match &config {
                ModelConfig::Llada(_) => "n_layers / weight_tying",
                ModelConfig::Dream(_) => "num_hidden_layers / tie_word_embeddings",
            },
        });
    }
    let info = ModelInfo {
        dir: dir.to_path_buf(),
        architecture: config.architecture().to_string(),
        bos_token_id: bos_token_id(&config, &tokenizer),
        chat_template: chat_template(dir, &config, &tokenizer),
        config,
        weight_files: files,
        dtype,
    };
    Ok(LoadedModel {
        model,
        tokenizer,
        info,
    })
}

/// A model of shape `cfg` with random weights drawn directly on `device` in `dtype`: matrices and
/// biases `N(0, 0.02^2)`, norm weights one. Nothing is read and, on CUDA, nothing is created on
/// the host. `seed` seeds the device generator (CUDA) or a host generator (CPU).
pub fn random_model(
    cfg: &ModelConfig,
    device: &Device,
    dtype: DType,
    seed: u64,
) -> Result<Arc<dyn DiffusionLm>> {
    let weights = Weights::new(random_var_builder(dtype, device, seed)?, "random weights");
    Ok(match cfg {
        ModelConfig::Llada(cfg) => Arc::new(LladaModel::load(cfg, &weights)?),
        ModelConfig::Dream(cfg) => Arc::new(DreamModel::load(cfg, &weights)?),
    })
}

fn bos_token_id(config: &ModelConfig, tokenizer: &Tokenizer) -> Option<u32> {
    match config {
        ModelConfig::Llada(_) => config
            .bos_token_id()
            .or_else(|| tokenizer.token_id(LLAMA3_BOS)),
        ModelConfig::Dream(_) => tokenizer
            .token_id(DREAM_BOS_TOKEN)
            .or(config.bos_token_id()),
    }
}

/// The family's template when the tokenizer has its special tokens and, if
/// `tokenizer_config.json` exists, it declares a `chat_template` (Instruct checkpoints do).
fn chat_template(dir: &Path, config: &ModelConfig, tokenizer: &Tokenizer) -> ChatTemplate {
    let (template, tokens): (ChatTemplate, &[&str]) = match config {
        ModelConfig::Llada(_) => (ChatTemplate::Llama3, &LLAMA3_TEMPLATE_TOKENS),
        ModelConfig::Dream(_) => (ChatTemplate::ChatMl, &CHATML_TEMPLATE_TOKENS),
    };
    let has_tokens = tokenizer.has_tokens(tokens)
        && (template != ChatTemplate::Llama3 || tokenizer.token_id(LLAMA3_BOS).is_some());
    if has_tokens && declares_chat_template(dir) {
        template
    } else {
        ChatTemplate::None
    }
}

/// False only when `tokenizer_config.json` exists, parses, and has no `chat_template`.
fn declares_chat_template(dir: &Path) -> bool {
    let path = dir.join("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return true;
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => json.get("chat_template").is_some_and(|t| !t.is_null()),
        Err(_) => true,
    }
}

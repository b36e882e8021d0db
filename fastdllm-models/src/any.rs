//! Loading a model directory as whichever architecture its config names, and random-weight models.
//!
//! Reference: the Hugging Face directory layout of GSAI-ML/LLaDA-8B-* and Dream-org/Dream-v0-*-7B
//! (`config.json`, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`,
//! safetensors). The architecture comes from `architectures[0]`, falling back to `model_type`.
//! Deviations: EOS ids are the union of the config files' ids and the end-of-answer special
//! tokens the tokenizer has (`<|endoftext|>`, `<|eot_id|>`, `<|im_end|>`), because the released
//! configs name only `<|endoftext|>` while Instruct answers end with the end-of-turn token. The
//! chat template is the directory's own (see [`crate::chat_template`]); a directory without
//! one (no `chat_template.jinja`, no `tokenizer_config.json`) gets the family's built-in
//! template when the tokenizer has its special tokens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use fastdllm_core::DiffusionLm;

use crate::chat_template::{
    read_dir_template, ChatTemplate, JinjaTemplate, TemplateSource, TemplateTokens,
    CHATML_TEMPLATE_TOKENS, LLAMA3_BOS, LLAMA3_TEMPLATE_TOKENS,
};
use crate::config::{check_dir, load_config, ModelConfig};
use crate::dream::DreamModel;
use crate::llada::LladaModel;
use crate::loading::{mmap_var_builder, random_var_builder, weight_files, Weights};
use crate::tokenizer::Tokenizer;
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
    /// The chat template: the directory's own Jinja template; else (no `tokenizer_config.json`
    /// nor `chat_template.jinja`) the family's built-in one when the tokenizer has its special
    /// tokens; [`ChatTemplate::None`] for Base checkpoints (a `tokenizer_config.json` without
    /// `chat_template`) and tokenizers without the built-in template's tokens.
    pub chat_template: ChatTemplate,
    /// The special-token strings templates see (`bos_token`, `eos_token` of
    /// `tokenizer_config.json`, else the tokens of the config's BOS / first EOS id).
    pub template_tokens: TemplateTokens,
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
/// and `chat_template.jinja` when present (the chat template and its special tokens), and
/// `model.safetensors` or the shards of `model.safetensors.index.json`. Errors: a template that
/// does not compile ([`crate::Error::ChatTemplate`], naming the file) among the others.
pub fn load_model(dir: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    check_dir(dir)?;
    let mut config = load_config(dir)?;
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    config.add_eos_token_ids(tokenizer.eos_token_ids());
    config.validate()?;
    let (template_source, mut template_tokens) = read_dir_template(dir)?;
    let bos = bos_token_id(&config, &tokenizer);
    if template_tokens.bos_token.is_none() {
        template_tokens.bos_token = bos.and_then(|id| tokenizer.inner().id_to_token(id));
    }
    if template_tokens.eos_token.is_none() {
        template_tokens.eos_token = config
            .eos_token_ids()
            .first()
            .and_then(|&id| tokenizer.inner().id_to_token(id));
    }
    let chat_template = match template_source {
        TemplateSource::Found { source, origin } => ChatTemplate::Jinja(JinjaTemplate::new(
            &source,
            origin,
            template_tokens.clone(),
        )?),
        TemplateSource::Declined => ChatTemplate::None,
        TemplateSource::Unknown => builtin_chat_template(&config, &tokenizer),
    };
    let files = weight_files(dir)?;
    let location = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let weights = Weights::new(mmap_var_builder(&files, dtype, device)?, location);
    let model: Arc<dyn DiffusionLm> = match &config {
        ModelConfig::Llada(cfg) => Arc::new(LladaModel::load(cfg, &weights)?),
        ModelConfig::Dream(cfg) => Arc::new(DreamModel::load(cfg, &weights)?),
    };
    let info = ModelInfo {
        dir: dir.to_path_buf(),
        architecture: config.architecture().to_string(),
        bos_token_id: bos,
        chat_template,
        template_tokens,
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

/// The family's built-in template when the tokenizer has its special tokens (a directory with
/// no template of its own).
fn builtin_chat_template(config: &ModelConfig, tokenizer: &Tokenizer) -> ChatTemplate {
    let (template, tokens): (ChatTemplate, &[&str]) = match config {
        ModelConfig::Llada(_) => (ChatTemplate::Llama3, &LLAMA3_TEMPLATE_TOKENS),
        ModelConfig::Dream(_) => (ChatTemplate::ChatMl, &CHATML_TEMPLATE_TOKENS),
    };
    let has_tokens = tokenizer.has_tokens(tokens)
        && (template != ChatTemplate::Llama3 || tokenizer.token_id(LLAMA3_BOS).is_some());
    if has_tokens {
        template
    } else {
        ChatTemplate::None
    }
}

/// Compiles the template file `path` (`--chat-template FILE`) with the special tokens of
/// `info`. Errors: unreadable file, syntax error ([`crate::Error::ChatTemplate`] naming it).
pub fn load_chat_template_file(path: &Path, info: &ModelInfo) -> Result<ChatTemplate> {
    Ok(ChatTemplate::Jinja(JinjaTemplate::from_file(
        path,
        info.template_tokens.clone(),
    )?))
}

//! Loading a model directory (or a llama.cpp GGUF file) as whichever architecture it names, and
//! random-weight models.
//!
//! Reference: the Hugging Face directory layout of GSAI-ML/LLaDA-8B-* and Dream-org/Dream-v0-*-7B
//! (`config.json`, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`,
//! safetensors). The architecture comes from `architectures[0]`, falling back to `model_type`.
//! Deviations: EOS ids are the union of the config files' ids and the end-of-answer special
//! tokens the tokenizer has (`<|endoftext|>`, `<|eot_id|>`, `<|im_end|>`), because the released
//! configs name only `<|endoftext|>` while Instruct answers end with the end-of-turn token. The
//! chat template is the checkpoint's own (see [`crate::chat_template`]; a GGUF file's
//! `tokenizer.chat_template`); a directory without one (no `chat_template.jinja`, no
//! `tokenizer_config.json`) gets the family's built-in template when the tokenizer has its
//! special tokens. GGUF files: see `gguf.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use fastdllm_core::{DiffusionLm, ModelFamily};

use crate::chat_template::{
    read_dir_template, ChatTemplate, JinjaTemplate, TemplateSource, TemplateTokens,
    CHATML_TEMPLATE_TOKENS, LLAMA3_BOS, LLAMA3_TEMPLATE_TOKENS,
};
use crate::config::{check_dir, load_config, ModelConfig};
use crate::dream::DreamModel;
use crate::gguf::GgufFile;
use crate::llada::LladaModel;
use crate::quant::LoadOptions;
use crate::tokenizer::Tokenizer;
use crate::transformer::check_dtype;
use crate::weights::{
    check_weights, mmap_var_builder, random_var_builder, unused_tensors, weight_files, Weights,
};
use crate::{Error, Result};

/// Dream Base's BOS, which base prompting prepends (docs/ALGORITHM.md §1.2.5); its generation
/// config names `<|endoftext|>` as BOS instead.
pub const DREAM_BOS_TOKEN: &str = "<|beginoftext|>";

/// A model ready to generate with: the network, its tokenizer and what was read from the
/// directory.
#[derive(Clone)]
pub struct LoadedModel {
    /// The network.
    pub model: Arc<dyn DiffusionLm>,
    /// The tokenizer (`tokenizer.json`, or rebuilt from a GGUF file's vocabulary).
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
    /// The model directory (for a GGUF file: the folder that holds it).
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
    /// The safetensors files (or the GGUF file) the weights came from.
    pub weight_files: Vec<PathBuf>,
    /// Activation dtype.
    pub dtype: DType,
    /// How the linear layers are stored, e.g. `"f32 x 29"`, `"q8_0 x 29"`, `"q4_k x 24, q6_k x 5"`
    /// (a fused q/k/v or gate/up counts once).
    pub linear_weights: String,
    /// Where the tokenizer came from: a `tokenizer.json` path, or `"GGUF metadata of FILE"`.
    pub tokenizer_source: String,
}

/// Loads the model at `path` (local only) onto `device` in `dtype` (f32, bf16 or f16), weights
/// dense. See [`load_model_with`].
pub fn load_model(path: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    load_model_with(path, device, &LoadOptions::new(dtype))
}

/// Loads the model at `path` (local only) onto `device` with `options`.
///
/// `path` is a Hugging Face directory (`config.json` (+ `generation_config.json`),
/// `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` when present (the chat
/// template and its special tokens), and `model.safetensors` or the shards of
/// `model.safetensors.index.json`), a llama.cpp `.gguf` file, or a directory without
/// `config.json` that holds exactly one `.gguf`. With `options.quantize`, the linear layers of a
/// safetensors model are quantized at load (`QTensor::quantize`); a GGUF file keeps its stored
/// types and rejects `quantize`. Errors: a template that does not compile
/// ([`crate::Error::ChatTemplate`], naming the file) among the others.
pub fn load_model_with(path: &Path, device: &Device, options: &LoadOptions) -> Result<LoadedModel> {
    if let Some(file) = gguf_path(path)? {
        return load_gguf(&file, device, options);
    }
    let dir = path;
    check_dir(dir)?;
    check_dtype(options.dtype)?;
    let mut config = load_config(dir)?;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
    config.add_eos_token_ids(tokenizer.eos_token_ids());
    config.validate()?;
    let (template_source, template_tokens) = read_dir_template(dir)?;
    let bos = bos_token_id(&config, &tokenizer);
    let template_tokens = complete_tokens(template_tokens, &config, &tokenizer, bos);
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
    let names = check_weights(&files)?;
    // Quantized at load: read f32 (not the activation dtype) so the blocks see the stored values.
    let read_dtype = if options.quantize.is_some() {
        DType::F32
    } else {
        options.dtype
    };
    let weights = Weights::quantizing(
        mmap_var_builder(&files, read_dtype, device)?,
        location,
        options.quantize,
    )
    .with_dtype(options.dtype);
    let model = build(&config, &weights)?;
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
            hint: match (config.family, config.moe.is_some()) {
                (ModelFamily::Llada, false) => "n_layers / weight_tying",
                (ModelFamily::Llada, true) => {
                    "num_hidden_layers / num_experts / qk_layernorm / tie_word_embeddings"
                }
                (ModelFamily::Dream, _) => "num_hidden_layers / tie_word_embeddings",
            },
        });
    }
    let info = ModelInfo {
        dir: dir.to_path_buf(),
        architecture: config.architecture().to_string(),
        bos_token_id: bos,
        chat_template,
        template_tokens,
        config,
        weight_files: files,
        dtype: options.dtype,
        linear_weights: weights.linear_summary(),
        tokenizer_source: tokenizer_path.display().to_string(),
    };
    Ok(LoadedModel {
        model,
        tokenizer,
        info,
    })
}

fn build(config: &ModelConfig, weights: &Weights) -> Result<Arc<dyn DiffusionLm>> {
    Ok(match config.family {
        ModelFamily::Llada => Arc::new(LladaModel::load(config, weights)?),
        ModelFamily::Dream => Arc::new(DreamModel::load(config, weights)?),
    })
}

/// The GGUF file `path` names: the path itself when it is a file, the only `.gguf` of a
/// directory without `config.json`; `None` for a Hugging Face directory (or a missing path,
/// which the directory loader reports). A FIFO, device or socket in either place is an
/// [`Error::NotRegularFile`] naming it.
fn gguf_path(path: &Path) -> Result<Option<PathBuf>> {
    // A FIFO or device named as the model is refused as such (opening a FIFO would block).
    if path.exists() && !path.is_dir() {
        crate::config::regular_file(path, "GGUF model file")?;
        return Ok(Some(path.to_path_buf()));
    }
    if !path.is_dir() || path.join("config.json").exists() {
        return Ok(None);
    }
    let entries = std::fs::read_dir(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut ggufs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    for p in &ggufs {
        crate::config::regular_file(p, "GGUF model file")?;
    }
    ggufs.sort();
    match ggufs.len() {
        0 => Ok(None),
        1 => Ok(ggufs.pop()),
        _ => Err(Error::gguf(
            path,
            format!(
                "the directory holds {} GGUF files ({}); pass one with --model FILE.gguf",
                ggufs.len(),
                ggufs
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// Loads a llama.cpp GGUF file (see `gguf.rs`). The tokenizer is the `tokenizer.json` beside the
/// file when there is one, else the one rebuilt from the file's vocabulary.
fn load_gguf(path: &Path, device: &Device, options: &LoadOptions) -> Result<LoadedModel> {
    check_dtype(options.dtype)?;
    let file = GgufFile::open(path)?;
    if let Some(q) = options.quantize {
        let types = file
            .type_counts()
            .into_iter()
            .map(|(t, n)| format!("{t} x {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::gguf(
            path,
            format!(
                "--quantize {q} applies to safetensors checkpoints; a GGUF file is loaded in its                  stored types ({types}); requantize it with llama-quantize instead"
            ),
        ));
    }
    let mut config = file.config()?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let beside = dir.join("tokenizer.json");
    let (tokenizer, tokenizer_source) = if beside.is_file() {
        (Tokenizer::from_file(&beside)?, beside.display().to_string())
    } else {
        let tokenizer = file.tokenizer().map_err(|e| {
            Error::gguf(
                path,
                format!(
                    "no usable tokenizer: {e}; and there is no {} beside the file",
                    beside.display()
                ),
            )
        })?;
        (tokenizer, format!("GGUF metadata of {}", path.display()))
    };
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::gguf(
            path,
            format!(
                "the tokenizer has {} tokens but token_embd.weight only {} rows",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        ));
    }
    config.add_eos_token_ids(tokenizer.eos_token_ids());
    config.validate().map_err(|e| e.in_config_file(path))?;
    let weights = Weights::gguf(&file, options.dtype, device);
    let model = build(&config, &weights)?;
    let bos = bos_token_id(&config, &tokenizer);
    // A file that asks for BOS gets it in front of a templated prompt, as llama.cpp adds it.
    let file_bos = file.add_bos_token_id()?;
    let template_tokens = TemplateTokens {
        bos_token: file_bos.and_then(|id| tokenizer.inner().id_to_token(id)),
        prepend_bos: file_bos.is_some(),
        ..TemplateTokens::default()
    };
    let template_tokens = complete_tokens(template_tokens, &config, &tokenizer, bos);
    // The file's own template (convert_hf_to_gguf.py copies the checkpoint's), else none.
    let chat_template = match file.chat_template_source() {
        Some(source) => ChatTemplate::Jinja(JinjaTemplate::new(
            &source,
            format!("{} (tokenizer.chat_template)", path.display()),
            template_tokens.clone(),
        )?),
        None => ChatTemplate::None,
    };
    let info = ModelInfo {
        dir,
        architecture: config.architecture().to_string(),
        bos_token_id: bos,
        chat_template,
        template_tokens,
        config,
        weight_files: vec![path.to_path_buf()],
        dtype: options.dtype,
        linear_weights: weights.linear_summary(),
        tokenizer_source,
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
    random_model_with(cfg, device, &LoadOptions::new(dtype), seed)
}

/// [`random_model`] with `options`: with `options.quantize`, each linear layer is drawn in f32,
/// quantized and dropped before the next is drawn, so an 8B-shaped model never exists in f32.
pub fn random_model_with(
    cfg: &ModelConfig,
    device: &Device,
    options: &LoadOptions,
    seed: u64,
) -> Result<Arc<dyn DiffusionLm>> {
    let read_dtype = if options.quantize.is_some() {
        DType::F32
    } else {
        options.dtype
    };
    let weights = Weights::quantizing(
        random_var_builder(read_dtype, device, seed)?,
        "random weights",
        options.quantize,
    )
    .with_dtype(options.dtype);
    build(cfg, &weights)
}

fn bos_token_id(config: &ModelConfig, tokenizer: &Tokenizer) -> Option<u32> {
    match config.family {
        ModelFamily::Llada => config
            .bos_token_id
            .or_else(|| tokenizer.token_id(LLAMA3_BOS)),
        ModelFamily::Dream => tokenizer.token_id(DREAM_BOS_TOKEN).or(config.bos_token_id),
    }
}

/// `tokens` with the missing `bos_token` / `eos_token` taken from the BOS id and the first EOS id.
fn complete_tokens(
    mut tokens: TemplateTokens,
    config: &ModelConfig,
    tokenizer: &Tokenizer,
    bos: Option<u32>,
) -> TemplateTokens {
    if tokens.bos_token.is_none() {
        tokens.bos_token = bos.and_then(|id| tokenizer.inner().id_to_token(id));
    }
    if tokens.eos_token.is_none() {
        tokens.eos_token = config
            .eos_token_ids
            .first()
            .and_then(|&id| tokenizer.inner().id_to_token(id));
    }
    tokens
}

/// The family's built-in template when the tokenizer has its special tokens (a directory with
/// no template of its own).
fn builtin_chat_template(config: &ModelConfig, tokenizer: &Tokenizer) -> ChatTemplate {
    let (template, tokens): (ChatTemplate, &[&str]) = match config.family {
        ModelFamily::Llada => (ChatTemplate::Llama3, &LLAMA3_TEMPLATE_TOKENS),
        ModelFamily::Dream => (ChatTemplate::ChatMl, &CHATML_TEMPLATE_TOKENS),
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

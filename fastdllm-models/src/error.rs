//! The error type of fastdllm-models.
//!
//! Every loading failure is one line that names the file, field or tensor, the rejected value and
//! what would have been accepted (after TGI's `ValidationError`), so a user can fix the input
//! without reading the code. Foreign errors (tokenizers' boxed error, serde_json) are converted
//! once, where they arise, into a variant that carries the path; candle and fastdllm-core errors
//! pass through `#[from]`.

use std::path::{Path, PathBuf};

/// Errors of model loading and of the model forward passes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model directory does not exist or is not a directory.
    #[error("model directory {} does not exist or is not a directory", .path.display())]
    MissingDir {
        /// The directory that was asked for.
        path: PathBuf,
    },
    /// A required file of the model directory is missing.
    #[error("{} not found: {what}", .path.display())]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// What the file is for and what was expected instead.
        what: String,
    },
    /// A file exists but could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file is malformed or a field has the wrong type.
    #[error("{}:{line}:{column}: {message}{}", .path.display(), near_text(.near))]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's description (without its own "at line .. column .." suffix).
        message: String,
        /// The offending source line, trimmed (names the field in pretty-printed HF configs).
        near: Option<String>,
    },
    /// A config field has a value the model cannot use.
    #[error("{}invalid config field `{field}` = {value}: {allowed}", in_file(.file))]
    InvalidConfig {
        /// The config file, when the config came from one.
        file: Option<PathBuf>,
        /// The field's name as written in the file (raw HF name).
        field: &'static str,
        /// The rejected value, as text.
        value: String,
        /// What would have been accepted.
        allowed: String,
    },
    /// `architectures[0]` / `model_type` names no supported architecture.
    #[error(
        "{}unsupported architecture {value:?} (from `{field}`); supported: architectures \
         \"LLaDAModelLM\" | \"LLaDAMoEModelLM\" | \"DreamModel\", model_type \"llada\" | \"lladamoe\" | \"Dream\"",
        in_file(.file)
    )]
    UnknownArchitecture {
        /// The config file.
        file: Option<PathBuf>,
        /// `architectures` or `model_type`.
        field: &'static str,
        /// The value found (empty when neither field is present).
        value: String,
    },
    /// The requested activation dtype is not one the models run in.
    #[error("unsupported dtype {dtype:?}: the models run in f32, bf16 or f16")]
    UnsupportedDType {
        /// The rejected dtype.
        dtype: candle_core::DType,
    },
    /// A weight tensor is missing from the checkpoint.
    #[error("tensor `{name}` not found in {location}")]
    MissingTensor {
        /// Full checkpoint name of the tensor.
        name: String,
        /// Where it was looked for (the safetensors files).
        location: String,
    },
    /// A weight tensor has the wrong shape for the config.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?} (from the model config)")]
    TensorShape {
        /// Full checkpoint name of the tensor.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        actual: Vec<usize>,
    },
    /// `model.safetensors.index.json` is unusable (no `weight_map`, or a shard is missing).
    #[error("{}: {message}", .path.display())]
    ShardIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A Hugging Face Hub model id could not be resolved to a complete local snapshot (offline
    /// and not cached, a repository or file the hub does not have or refuses, a network failure).
    #[error("model {repo_id}: {message}")]
    Hub {
        /// The model id as given (`owner/name`).
        repo_id: String,
        /// What failed, naming the URL or the cache folder and the variables that change it.
        message: String,
    },
    /// The tokenizer failed to load, encode or decode.
    #[error("tokenizer{}: {message}", tokenizer_path(.path))]
    Tokenizer {
        /// `tokenizer.json`, when the failure is about the file.
        path: Option<PathBuf>,
        /// The tokenizers crate's message.
        message: String,
    },
    /// A path of the model directory exists but is not a regular file (a FIFO, a device, a
    /// directory, a socket): refused before anything opens it (reading a FIFO would block).
    #[error("{} is not a regular file ({kind}); the {what} must be a regular file", .path.display())]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is (`FIFO`, `directory`, `character device`, ...).
        kind: &'static str,
        /// What the file is for.
        what: String,
    },
    /// A checkpoint tensor has a dtype the models cannot load (integers, bool, fp8, ...).
    #[error("tensor `{name}` in {} has dtype {dtype}; weights must be F32, F16, BF16 or F64", .path.display())]
    TensorDType {
        /// Full checkpoint name of the tensor.
        name: String,
        /// The safetensors file.
        path: PathBuf,
        /// The dtype found (safetensors' name).
        dtype: String,
    },
    /// A checkpoint tensor holds NaN or an infinity.
    #[error("tensor `{name}` in {} holds {count} non-finite value(s) (NaN or +-inf), the first at flat index {first}", .path.display())]
    NonFiniteTensor {
        /// Full checkpoint name of the tensor.
        name: String,
        /// The safetensors file.
        path: PathBuf,
        /// How many elements are NaN or infinite.
        count: usize,
        /// Flat index of the first one.
        first: usize,
    },
    /// Checkpoint tensors that the config does not use (for example `n_layers` smaller than the
    /// checkpoint's layers): running would silently drop them.
    #[error("{count} tensor(s) in {location} are not used by config.json (does `{hint}` match the checkpoint?): {names}")]
    UnusedTensors {
        /// The safetensors files.
        location: String,
        /// How many.
        count: usize,
        /// The first few names, comma-separated.
        names: String,
        /// The config fields most likely to be wrong.
        hint: &'static str,
    },
    /// A GGUF file that cannot be loaded: not GGUF, truncated, another architecture, a missing or
    /// mistyped metadata key, a tensor type candle cannot run.
    #[error("{}: {message}", .path.display())]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key, tensor or value.
        message: String,
    },
    /// A `--quantize` value that is not supported.
    #[error("unsupported quantization {value:?}; supported: q8_0 | q4_k | q5_k | q6_k")]
    UnsupportedQuantization {
        /// The rejected value.
        value: String,
    },
    /// A chat template does not compile, or its rendering failed (a template's
    /// `raise_exception`, an unsupported construct, a message the template refuses).
    #[error("chat template {origin}: {message}")]
    ChatTemplate {
        /// Where the template came from (`<dir>/tokenizer_config.json`, a `.jinja` file, ...).
        origin: String,
        /// minijinja's description, or the template's own exception message.
        message: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An error from the engine's seam (for example a `KvView`).
    #[error(transparent)]
    Core(#[from] fastdllm_core::Error),
}

/// Result alias of fastdllm-models.
pub type Result<T> = std::result::Result<T, Error>;

fn in_file(file: &Option<PathBuf>) -> String {
    match file {
        Some(path) => format!("{}: ", path.display()),
        None => String::new(),
    }
}

fn near_text(near: &Option<String>) -> String {
    match near {
        Some(text) => format!(" (near `{text}`)"),
        None => String::new(),
    }
}

fn tokenizer_path(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!(" {}", path.display()),
        None => String::new(),
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidConfig`] without a file (the loader adds it).
    pub(crate) fn config(
        field: &'static str,
        value: impl ToString,
        allowed: impl Into<String>,
    ) -> Self {
        Error::InvalidConfig {
            file: None,
            field,
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    /// Attaches the config file to config errors that do not name one yet.
    pub(crate) fn in_config_file(self, path: &Path) -> Self {
        match self {
            Error::InvalidConfig {
                file: None,
                field,
                value,
                allowed,
            } => Error::InvalidConfig {
                file: Some(path.to_path_buf()),
                field,
                value,
                allowed,
            },
            Error::UnknownArchitecture {
                file: None,
                field,
                value,
            } => Error::UnknownArchitecture {
                file: Some(path.to_path_buf()),
                field,
                value,
            },
            other => other,
        }
    }

    /// Converts a serde_json error on `text` (the contents of `path`) into [`Error::Json`],
    /// quoting the offending line so that a type error names its field.
    pub(crate) fn json(path: &Path, text: &str, err: &serde_json::Error) -> Self {
        let line = err.line();
        let column = err.column();
        // serde_json appends " at line L column C" to its message; the variant prints both itself.
        let full = err.to_string();
        let message = match full.rfind(" at line ") {
            Some(idx) => full[..idx].to_string(),
            None => full,
        };
        let near = line
            .checked_sub(1)
            .and_then(|idx| text.lines().nth(idx))
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && l.len() <= 200)
            .map(str::to_string);
        Error::Json {
            path: path.to_path_buf(),
            line,
            column,
            message,
            near,
        }
    }

    pub(crate) fn gguf(path: &Path, message: impl Into<String>) -> Self {
        Error::Gguf {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// Converts the tokenizers crate's boxed error (the one place it happens, so the file path
    /// is attached once).
    pub(crate) fn tokenizer(path: Option<&Path>, err: impl std::fmt::Display) -> Self {
        Error::Tokenizer {
            path: path.map(Path::to_path_buf),
            message: err.to_string(),
        }
    }
}

/// The models implement `fastdllm_core::DiffusionLm`, whose error type is the core one: a model
/// error becomes `fastdllm_core::Error::Candle` with the message kept.
impl From<Error> for fastdllm_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Core(inner) => inner,
            Error::Candle(inner) => fastdllm_core::Error::Candle(inner),
            other => fastdllm_core::Error::Candle(candle_core::Error::Msg(other.to_string())),
        }
    }
}

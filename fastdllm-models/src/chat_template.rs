//! Chat templates: the checkpoint's own Jinja template, and the built-in fallbacks.
//!
//! Reference: Hugging Face transformers' `apply_chat_template` (`render_jinja_template`,
//! transformers 4.5x): the template is `chat_template.jinja` of the model directory, else
//! `chat_template` of `tokenizer_config.json` (a string, or a list of `{name, template}` where
//! `"default"` is used); it is rendered in a Jinja environment with `trim_blocks` and
//! `lstrip_blocks`, the `loopcontrols` extension, and the globals `raise_exception` and
//! `strftime_now`; the context holds `messages`, `add_generation_prompt`, `tools` (none here) and
//! the special tokens (`bos_token`, `eos_token`). The rendered text is encoded **without** the
//! tokenizer's special tokens (the template writes its own BOS). Rendering is done with minijinja
//! and minijinja-contrib's Python-compatible methods (`str.strip`, `dict.items`, ...), the setup
//! of TGI and mistral.rs. `fastdllm-models/tests/chat_template.rs` checks the rendering against
//! transformers' output (`scripts/chat_template_expected.py`).
//!
//! Deviations: `tojson` is minijinja's (compact, HTML-safe) rather than Python's `json.dumps`,
//! which only matters for tool schemas and tool calls, which are not supported. The built-in
//! templates ([`ChatTemplate::Llama3`], [`ChatTemplate::ChatMl`]) are used only when a directory
//! has no template of its own: LLaDA-8B-Instruct's (docs/ALGORITHM.md §1.1.4) and
//! Dream-v0-Instruct-7B's Qwen2.5 ChatML with the default system prompt (§1.2.5).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// LLaDA Instruct's BOS token, which its template writes itself.
pub const LLAMA3_BOS: &str = "<|startoftext|>";
/// Tokens the Llama-3 style template needs in the vocabulary.
pub const LLAMA3_TEMPLATE_TOKENS: [&str; 3] =
    ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];
/// Tokens the ChatML template needs in the vocabulary.
pub const CHATML_TEMPLATE_TOKENS: [&str; 2] = ["<|im_start|>", "<|im_end|>"];
/// Dream Instruct's default system prompt (Qwen2.5).
pub const CHATML_DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// One message of a conversation, as chat templates read it (`message.role`,
/// `message.content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (templates decide which they accept).
    pub role: String,
    /// The text.
    pub content: String,
    /// The participant's name (OpenAI's `name`), passed to the template as transformers passes
    /// the message dict: present only when given (`message.name` is undefined otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A message of `role` with `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            name: None,
        }
    }

    /// The message with the participant's `name`.
    pub fn with_name(self, name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            ..self
        }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
}

/// The special-token strings a template may use (`bos_token`, `eos_token`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateTokens {
    /// `bos_token` (empty string when the checkpoint names none).
    pub bos_token: Option<String>,
    /// `eos_token`.
    pub eos_token: Option<String>,
    /// Start the rendered text with `bos_token` unless it already does: a GGUF file that says
    /// `tokenizer.ggml.add_bos_token = true` (llama.cpp tokenizes a templated prompt with its
    /// special tokens, so BOS starts it once). `false` for model directories: transformers
    /// encodes the rendered text without special tokens (the template writes its own BOS).
    pub prepend_bos: bool,
}

/// A compiled Jinja chat template.
#[derive(Clone)]
pub struct JinjaTemplate {
    env: Arc<minijinja::Environment<'static>>,
    source: Arc<str>,
    origin: String,
    tokens: TemplateTokens,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate")
            .field("origin", &self.origin)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl PartialEq for JinjaTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.origin == other.origin
            && self.tokens == other.tokens
            && self.source() == other.source()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// Instructions one rendering may execute (minijinja's fuel). A chat template is a program: a
/// nested `range(100000)` would otherwise pin a thread for hours. Real templates over long
/// conversations take far less (tens of instructions per message).
pub const RENDER_FUEL: u64 = 20_000_000;

/// Largest rendered prompt, in bytes: rendering stops with an error past it (no model's
/// context holds more text).
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// Largest template file, in bytes (the largest checkpoint templates are tens of KiB).
pub const MAX_TEMPLATE_FILE_BYTES: u64 = 1 << 20;

impl JinjaTemplate {
    /// Compiles `source`; `origin` names where it came from in errors (a file path, or
    /// `<dir>/tokenizer_config.json`). Errors: [`Error::ChatTemplate`] with minijinja's syntax
    /// error (line included).
    pub fn new(source: &str, origin: impl Into<String>, tokens: TemplateTokens) -> Result<Self> {
        let origin = origin.into();
        let mut env = minijinja::Environment::new();
        // transformers: jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True,
        // lstrip_blocks=True, extensions=[loopcontrols]).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| Error::ChatTemplate {
                origin: origin.clone(),
                message: describe(&e),
            })?;
        Ok(Self {
            env: Arc::new(env),
            source: source.into(),
            origin,
            tokens,
        })
    }

    /// Reads and compiles the template file `path` (e.g. a `chat_template.jinja`). Errors: a
    /// path that is not a regular file (a FIFO would block forever), a file over
    /// [`MAX_TEMPLATE_FILE_BYTES`], a read error, or the template's syntax error.
    pub fn from_file(path: &Path, tokens: TemplateTokens) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        // A FIFO, device or directory is refused before it is opened (a FIFO would block).
        if crate::config::regular_file(path, "chat template")? {
            let len = std::fs::metadata(path).map_err(io)?.len();
            if len > MAX_TEMPLATE_FILE_BYTES {
                return Err(Error::ChatTemplate {
                    origin: path.display().to_string(),
                    message: format!(
                        "the file is {len} bytes: more than the {MAX_TEMPLATE_FILE_BYTES} bytes a chat template may have"
                    ),
                });
            }
        }
        let source = std::fs::read_to_string(path).map_err(io)?;
        Self::new(&source, path.display().to_string(), tokens)
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `text` started with `bos_token` when [`TemplateTokens::prepend_bos`] asks and it does not
    /// already start with it.
    fn with_bos(&self, text: String) -> String {
        match self.tokens.bos_token.as_deref() {
            Some(bos) if self.tokens.prepend_bos && !bos.is_empty() && !text.starts_with(bos) => {
                format!("{bos}{text}")
            }
            _ => text,
        }
    }

    /// Renders `messages` as transformers' `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)` does. Errors: [`Error::ChatTemplate`] with the template's
    /// `raise_exception` message or minijinja's error, or when the rendering runs more than
    /// [`RENDER_FUEL`] instructions or writes more than [`MAX_RENDERED_BYTES`].
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| self.error(&e))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            tools => minijinja::Value::from(()),
            documents => minijinja::Value::from(()),
            bos_token => self.tokens.bos_token.as_deref().unwrap_or_default(),
            eos_token => self.tokens.eos_token.as_deref().unwrap_or_default(),
        };
        let mut out = CappedWriter::default();
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.buf)
                .map_err(|e| Error::ChatTemplate {
                    origin: self.origin.clone(),
                    message: format!("the rendered prompt is not UTF-8: {e}"),
                })
                .map(|text| self.with_bos(text)),
            Err(_) if out.exceeded => Err(Error::ChatTemplate {
                origin: self.origin.clone(),
                message: format!(
                    "the rendered prompt exceeds {MAX_RENDERED_BYTES} bytes (a template that writes without end?)"
                ),
            }),
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(Error::ChatTemplate {
                origin: self.origin.clone(),
                message: format!(
                    "rendering ran more than {RENDER_FUEL} instructions (a template that loops without end?)"
                ),
            }),
            Err(e) => Err(self.error(&e)),
        }
    }

    fn error(&self, e: &minijinja::Error) -> Error {
        Error::ChatTemplate {
            origin: self.origin.clone(),
            message: describe(e),
        }
    }
}

/// The rendering's output, refused past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct CappedWriter {
    buf: Vec<u8>,
    exceeded: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + bytes.len() > MAX_RENDERED_BYTES {
            self.exceeded = true;
            return Err(std::io::Error::other("the rendered prompt is too large"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Prefix of the errors [`raise_exception`] raises, so that [`describe`] reports the template's
/// own message.
const RAISED: &str = "the template raised an exception: ";

/// `raise_exception(message)`: the template refuses the conversation.
fn raise_exception(message: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

/// `strftime_now(format)`: the local time formatted with `strftime` directives (transformers:
/// `datetime.now().strftime(format)`).
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    let now = jiff::Zoned::now();
    jiff::fmt::strtime::format(format.as_bytes(), &now).map_err(|e| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("strftime_now({format:?}): {e}"),
        )
    })
}

/// One line: the template's own exception message, or minijinja's error with its location.
fn describe(e: &minijinja::Error) -> String {
    let mut message = match e.detail() {
        Some(d) if d.starts_with(RAISED) => d.to_string(),
        _ => e.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let text = inner.to_string();
        if let Some(raised) = text.strip_prefix("invalid operation: ") {
            if raised.starts_with(RAISED) {
                message = raised.split(" (in ").next().unwrap_or(raised).to_string();
            }
        }
        source = inner.source();
    }
    message
}

/// How a conversation becomes a prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatTemplate {
    /// The checkpoint's own Jinja template (or `--chat-template FILE`).
    Jinja(JinjaTemplate),
    /// Built-in fallback, LLaDA Instruct (Llama-3 style, BOS before the first message, contents
    /// trimmed): `<|startoftext|>` then per message
    /// `<|start_header_id|>{role}<|end_header_id|>\n\n{content, trimmed}<|eot_id|>`, then
    /// `<|start_header_id|>assistant<|end_header_id|>\n\n`.
    Llama3,
    /// Built-in fallback, Dream Instruct (Qwen2.5 ChatML; the default system prompt unless the
    /// first message is a system message): per message `<|im_start|>{role}\n{content}<|im_end|>\n`,
    /// then `<|im_start|>assistant\n`.
    ChatMl,
    /// Raw text (Base checkpoints, the tiny fixtures): the messages' contents joined by `\n` are
    /// the prompt.
    None,
}

impl ChatTemplate {
    /// The templated prompt of `messages`, with the assistant's turn opened (the generation
    /// prompt). Errors: a Jinja template's rendering error ([`Error::ChatTemplate`]).
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        Ok(match self {
            ChatTemplate::Jinja(t) => t.render(messages, true)?,
            ChatTemplate::Llama3 => {
                let mut out = String::from(LLAMA3_BOS);
                for m in messages {
                    out.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role,
                        m.content.trim()
                    ));
                }
                out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                out
            }
            ChatTemplate::ChatMl => {
                let mut out = String::new();
                if messages.first().is_none_or(|m| m.role != "system") {
                    out.push_str(&format!(
                        "<|im_start|>system\n{CHATML_DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
                    ));
                }
                for m in messages {
                    out.push_str(&format!(
                        "<|im_start|>{}\n{}<|im_end|>\n",
                        m.role, m.content
                    ));
                }
                out.push_str("<|im_start|>assistant\n");
                out
            }
            ChatTemplate::None => messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        })
    }

    /// The templated prompt for one user message.
    pub fn apply(&self, user_message: &str) -> Result<String> {
        self.render(&[Message::user(user_message)])
    }

    /// Whether the templated text must be encoded with the tokenizer's own special tokens (BOS
    /// post-processor): only for raw text; a template writes its own.
    pub fn add_special_tokens(&self) -> bool {
        matches!(self, ChatTemplate::None)
    }

    /// A one-line description for logs: where the template came from.
    pub fn describe(&self) -> String {
        match self {
            ChatTemplate::Jinja(t) => format!("Jinja template from {}", t.origin()),
            ChatTemplate::Llama3 => "built-in LLaDA-Instruct (Llama-3 style) template".into(),
            ChatTemplate::ChatMl => "built-in Dream-Instruct (Qwen2.5 ChatML) template".into(),
            ChatTemplate::None => "no chat template (raw text)".into(),
        }
    }
}

/// Where a model directory's own template is: `chat_template.jinja`, else `chat_template` of
/// `tokenizer_config.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// The template text and where it came from.
    Found {
        /// The Jinja source.
        source: String,
        /// The file (and key) it was read from.
        origin: String,
    },
    /// `tokenizer_config.json` exists and has no `chat_template` (a Base checkpoint).
    Declined,
    /// Neither file says anything (no `tokenizer_config.json`, no `chat_template.jinja`).
    Unknown,
}

/// Reads the chat template of the model directory `dir` and its special-token strings.
///
/// `chat_template` may be a string or a list of `{"name", "template"}` (the `"default"` one is
/// used). Errors: unreadable or malformed files, a named list without `"default"`, a
/// `chat_template` of another type (each naming the file).
pub fn read_dir_template(dir: &Path) -> Result<(TemplateSource, TemplateTokens)> {
    let config_path = dir.join("tokenizer_config.json");
    let config: Option<serde_json::Value> =
        if crate::config::regular_file(&config_path, "tokenizer config (tokenizer_config.json)")? {
            let text = std::fs::read_to_string(&config_path).map_err(|source| Error::Io {
                path: config_path.clone(),
                source,
            })?;
            Some(serde_json::from_str(&text).map_err(|e| Error::json(&config_path, &text, &e))?)
        } else {
            None
        };
    let tokens = TemplateTokens {
        bos_token: config
            .as_ref()
            .and_then(|c| token_string(c.get("bos_token"))),
        eos_token: config
            .as_ref()
            .and_then(|c| token_string(c.get("eos_token"))),
        prepend_bos: false,
    };
    let jinja_path = dir.join("chat_template.jinja");
    if crate::config::regular_file(&jinja_path, "chat template (chat_template.jinja)")? {
        let source = std::fs::read_to_string(&jinja_path).map_err(|source| Error::Io {
            path: jinja_path.clone(),
            source,
        })?;
        let origin = jinja_path.display().to_string();
        return Ok((TemplateSource::Found { source, origin }, tokens));
    }
    let Some(config) = config else {
        return Ok((TemplateSource::Unknown, tokens));
    };
    let origin = format!("{} (chat_template)", config_path.display());
    let bad = |message: String| Error::ChatTemplate {
        origin: origin.clone(),
        message,
    };
    let source = match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => return Ok((TemplateSource::Declined, tokens)),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(list)) => {
            let mut names = Vec::new();
            let mut found = None;
            for entry in list {
                let name = entry.get("name").and_then(|n| n.as_str());
                let template = entry.get("template").and_then(|t| t.as_str());
                match (name, template) {
                    (Some(name), Some(template)) => {
                        names.push(name.to_string());
                        if name == "default" {
                            found = Some(template.to_string());
                        }
                    }
                    _ => return Err(bad(
                        "a named list must hold objects {\"name\": string, \"template\": string}"
                            .into(),
                    )),
                }
            }
            found.ok_or_else(|| {
                bad(format!(
                    "the named list has no \"default\" template (names: {}); pass one with --chat-template FILE",
                    names.join(", ")
                ))
            })?
        }
        Some(other) => {
            return Err(bad(format!(
                "must be a string or a list of {{\"name\", \"template\"}}, got {other}"
            )))
        }
    };
    let origin = if matches!(
        config.get("chat_template"),
        Some(serde_json::Value::Array(_))
    ) {
        format!("{} (chat_template \"default\")", config_path.display())
    } else {
        origin.clone()
    };
    Ok((TemplateSource::Found { source, origin }, tokens))
}

/// A special token as `tokenizer_config.json` writes it: a string or an `AddedToken` object
/// (`{"content": ...}`).
fn token_string(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

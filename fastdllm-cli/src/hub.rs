//! `--model` as a Hugging Face Hub model id (`GSAI-ML/LLaDA-8B-Instruct`), resolved through the
//! standard Hugging Face cache.
//!
//! Reference: huggingface_hub's environment variables and cache layout
//! (`{HF_HUB_CACHE}/models--{owner}--{name}/{blobs,refs,snapshots}`), read and written by the
//! hf-hub crate (sync API over ureq with rustls). Variables: `HF_HOME` (default
//! `~/.cache/huggingface`), `HF_HUB_CACHE` (default `$HF_HOME/hub`), `HF_HUB_OFFLINE` (1/true:
//! the cache only), `HF_ENDPOINT` (default `https://huggingface.co`), and the token from
//! `HF_TOKEN`, else the file `HF_TOKEN_PATH`, else `$HF_HOME/token`. Online, files already in the
//! cache are used as they are and the others are downloaded with a progress bar (when stderr is a
//! terminal). Deviations: the revision is always `main`; a cached file is not re-validated
//! against the hub (as `huggingface_hub` does with an ETag request).
//!
//! A local path wins: `--model X` is a directory when `X` exists; only a name of the form
//! `owner/name` (letters, digits, `-`, `_`, `.`) that is not an existing path is a hub id.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};

/// Files a model directory needs (config, tokenizer).
pub const REQUIRED_FILES: [&str; 2] = ["config.json", "tokenizer.json"];
/// Files fetched when the repository has them (a 404 skips them).
pub const OPTIONAL_FILES: [&str; 3] = [
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];
/// The sharded weights' index; without it, `model.safetensors`.
pub const WEIGHT_INDEX: &str = "model.safetensors.index.json";
/// Unsharded weights.
pub const SINGLE_WEIGHTS: &str = "model.safetensors";

/// Whether `spec` has the shape of a hub model id (`owner/name`).
pub fn is_repo_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.starts_with('-')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(owner) && ok(name)
}

/// The settings read from the environment.
#[derive(Debug, Clone)]
pub struct HubEnv {
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`.
    pub cache_dir: PathBuf,
    /// `HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_HUB_OFFLINE` is 1 / true / yes / on.
    pub offline: bool,
    /// `HF_TOKEN`, else the token file.
    pub token: Option<String>,
}

impl HubEnv {
    /// Reads the variables (see the module docs).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let home = var("HOME").map(PathBuf::from).unwrap_or_default();
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache"))
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        let token = var("HF_TOKEN").or_else(|| {
            let path = var("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        HubEnv {
            cache_dir,
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            offline,
            token,
        }
    }
}

/// The model directory for `--model SPEC`: `SPEC` itself when it exists (or is not a hub id),
/// else the cache snapshot of the hub model `SPEC` (downloaded unless offline).
pub fn resolve_model(spec: &Path) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    match spec.to_str() {
        Some(id) if is_repo_id(id) => resolve_repo(id, &HubEnv::from_env()),
        _ => Ok(spec.to_path_buf()),
    }
}

/// The snapshot directory of hub model `repo_id` in the cache of `env`, with config, tokenizer,
/// tokenizer config, generation config, chat template and weights (index + shards, or one file).
///
/// Errors: offline and not (fully) cached, naming the cache folder; a download failure naming the
/// URL.
pub fn resolve_repo(repo_id: &str, env: &HubEnv) -> Result<PathBuf> {
    let repo = Repo::model(repo_id.to_string());
    let cache = Cache::new(env.cache_dir.clone());
    let folder = env.cache_dir.join(repo.folder_name());
    if env.offline {
        let cached = cache.repo(repo.clone());
        let missing = |file: &str| {
            anyhow::anyhow!(
                "--model {repo_id}: not a local directory, and HF_HUB_OFFLINE is set but the Hugging Face cache has no {file} for it (looked in {}, revision main; HF_HUB_CACHE / HF_HOME choose the cache)",
                folder.display()
            )
        };
        let config = cached
            .get(REQUIRED_FILES[0])
            .ok_or_else(|| missing(REQUIRED_FILES[0]))?;
        let dir = config
            .parent()
            .context("cached config.json has no parent folder")?
            .to_path_buf();
        for file in REQUIRED_FILES {
            cached.get(file).ok_or_else(|| missing(file))?;
        }
        if cached.get(WEIGHT_INDEX).is_none() && cached.get(SINGLE_WEIGHTS).is_none() {
            return Err(missing("model.safetensors(.index.json)"));
        }
        return Ok(dir);
    }
    let api = ApiBuilder::from_cache(cache)
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .with_progress(std::io::stderr().is_terminal())
        .build()
        .context("cannot set up the Hugging Face Hub client")?;
    let api = api.repo(repo);
    let fetch = |file: &str| -> Result<PathBuf> {
        api.get(file).with_context(|| {
            format!(
                "--model {repo_id}: cannot download {} into {}",
                api.url(file),
                folder.display()
            )
        })
    };
    let fetch_optional = |file: &str| -> Result<Option<PathBuf>> {
        match api.get(file) {
            Ok(p) => Ok(Some(p)),
            Err(hf_hub::api::sync::ApiError::RequestError(e))
                if matches!(*e, hf_hub_ureq::Error::Status(404, _)) =>
            {
                Ok(None)
            }
            Err(e) => Err(e)
                .with_context(|| format!("--model {repo_id}: cannot download {}", api.url(file))),
        }
    };
    let config = fetch(REQUIRED_FILES[0])?;
    let dir = config
        .parent()
        .context("downloaded config.json has no parent folder")?
        .to_path_buf();
    fetch(REQUIRED_FILES[1])?;
    for file in OPTIONAL_FILES {
        fetch_optional(file)?;
    }
    match fetch_optional(WEIGHT_INDEX)? {
        Some(index) => {
            for shard in shard_names(&index)? {
                fetch(&shard)?;
            }
        }
        None => {
            fetch(SINGLE_WEIGHTS)?;
        }
    }
    if !dir.join(REQUIRED_FILES[1]).exists() {
        bail!(
            "--model {repo_id}: the files landed in different snapshots of {} (the repository changed during the download?); run again",
            folder.display()
        );
    }
    Ok(dir)
}

/// The shard file names of a `model.safetensors.index.json` (`weight_map` values, deduplicated,
/// in order).
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{} has no `weight_map` object", index.display()))?;
    let mut names: Vec<String> = Vec::new();
    for v in map.values() {
        let name = v.as_str().with_context(|| {
            format!(
                "{}: a `weight_map` value is not a file name",
                index.display()
            )
        })?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

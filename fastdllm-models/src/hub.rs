//! A Hugging Face Hub model id (`GSAI-ML/LLaDA-8B-Instruct`) as the model to load, resolved
//! through the standard Hugging Face cache (feature `hub`): the CLI's `--model` and the Python
//! package's `Model(...)`.
//!
//! Reference: huggingface_hub's environment variables and cache layout
//! (`{HF_HUB_CACHE}/models--{owner}--{name}/{blobs,refs,snapshots}`), read and written by the
//! hf-hub crate (sync API over ureq with rustls). Variables: `HF_HOME` (default
//! `~/.cache/huggingface`), `HF_HUB_CACHE` (default `$HF_HOME/hub`), `HF_HUB_OFFLINE` (1/true:
//! the cache only), `HF_ENDPOINT` (default `https://huggingface.co`), and the token from
//! `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else the file `HF_TOKEN_PATH`, else
//! `$HF_HOME/token`. Online, a snapshot that already has everything is used as it is, and missing
//! files are downloaded with a progress bar (when stderr is a terminal). Deviations: the revision
//! is always `main`; cached files are not re-validated against the hub (as `huggingface_hub`
//! does with an ETag request), so a newer commit on the hub is not picked up once a snapshot is
//! complete.
//!
//! A local path wins: `X` is a directory (or GGUF file) when `X` exists; only a name of the form
//! `owner/name` (letters, digits, `-`, `_`, `.`) that is not an existing path is a hub id.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, CacheRepo, Repo};

use crate::weights::{shard_names, SHARD_INDEX as WEIGHT_INDEX, SINGLE_FILE as SINGLE_WEIGHTS};
use crate::{Error, Result};

/// Files a model directory needs (config, tokenizer).
pub const REQUIRED_FILES: [&str; 2] = ["config.json", "tokenizer.json"];
/// Files fetched when the repository has them (a 404 skips them).
pub const OPTIONAL_FILES: [&str; 3] = [
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];

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
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
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

/// The model path for `spec`: `spec` itself when it exists (or is not a hub id), else the cache
/// snapshot of the hub model `spec` (downloaded unless offline). Errors: [`Error::Hub`], as
/// [`resolve_repo`].
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
/// A snapshot that already has the config, the tokenizer and all the weights is used without
/// asking the hub (online or not); otherwise, online, the missing files are downloaded.
///
/// Errors ([`Error::Hub`], one line each, naming the repo id): offline and not (fully) cached, naming the cache
/// folder it looked in; a repository or file the hub does not have, or refuses (naming the URL,
/// and the token variables when access is denied); a network failure (naming the URL).
pub fn resolve_repo(repo_id: &str, env: &HubEnv) -> Result<PathBuf> {
    let repo = Repo::model(repo_id.to_string());
    let cache = Cache::new(env.cache_dir.clone());
    let folder = env.cache_dir.join(repo.folder_name());
    match cached_snapshot(&cache.repo(repo.clone())) {
        Ok(dir) => return Ok(dir),
        Err(missing) if env.offline => {
            return Err(hub_error(
                repo_id,
                format!(
                    "not a local directory, and HF_HUB_OFFLINE is set but the Hugging Face cache has no {missing} for it (looked in {}, revision main; HF_HUB_CACHE / HF_HOME choose the cache)",
                    folder.display()
                ),
            ))
        }
        Err(_) => {}
    }
    let api = ApiBuilder::from_cache(cache)
        .with_endpoint(env.endpoint.clone())
        .with_token(env.token.clone())
        .with_progress(std::io::stderr().is_terminal())
        .build()
        .map_err(|e| {
            hub_error(
                repo_id,
                format!("cannot set up the Hugging Face Hub client: {e}"),
            )
        })?;
    let api = api.repo(repo);
    let failed = |file: &str, e: ApiError| download_error(repo_id, env, &api.url(file), &folder, e);
    let fetch = |file: &str| api.get(file).map_err(|e| failed(file, e));
    let fetch_optional = |file: &str| match api.get(file) {
        Ok(p) => Ok(Some(p)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(failed(file, e)),
    };
    let mut paths = vec![fetch(REQUIRED_FILES[0])?, fetch(REQUIRED_FILES[1])?];
    for file in OPTIONAL_FILES {
        paths.extend(fetch_optional(file)?);
    }
    match fetch_optional(WEIGHT_INDEX)? {
        Some(index) => {
            for shard in shard_names(&index)? {
                paths.push(fetch(&shard)?);
            }
            paths.push(index);
        }
        None => paths.push(fetch(SINGLE_WEIGHTS)?),
    }
    let dir = paths[0]
        .parent()
        .ok_or_else(|| {
            hub_error(
                repo_id,
                "downloaded config.json has no parent folder".into(),
            )
        })?
        .to_path_buf();
    if paths.iter().any(|p| !p.starts_with(&dir)) {
        return Err(hub_error(
            repo_id,
            format!(
                "the files landed in different snapshots of {} (the repository changed during the download?); run again",
                folder.display()
            ),
        ));
    }
    Ok(dir)
}

/// The snapshot directory of `main` when it holds the config, the tokenizer and all the weights;
/// else what is missing.
fn cached_snapshot(cached: &CacheRepo) -> std::result::Result<PathBuf, String> {
    let get = |file: &str| cached.get(file).ok_or_else(|| file.to_string());
    let config = get(REQUIRED_FILES[0])?;
    get(REQUIRED_FILES[1])?;
    match cached.get(WEIGHT_INDEX) {
        Some(index) => {
            for shard in
                shard_names(&index).map_err(|e| format!("readable {WEIGHT_INDEX} ({e})"))?
            {
                get(&shard)?;
            }
        }
        None => {
            cached
                .get(SINGLE_WEIGHTS)
                .ok_or_else(|| format!("{SINGLE_WEIGHTS} (or {WEIGHT_INDEX})"))?;
        }
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "snapshot folder".to_string())
}

/// Whether the hub answered 404 (the repository has no such file).
fn not_found(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(e) if matches!(e.as_ref(), hf_hub_ureq::Error::Status(404, _)))
}

/// One line for a failed download of `url`.
fn download_error(repo_id: &str, env: &HubEnv, url: &str, folder: &Path, e: ApiError) -> Error {
    let token = if env.token.is_some() {
        "the token sent (HF_TOKEN, else HF_TOKEN_PATH or $HF_HOME/token) has no access to it"
    } else {
        "no token was sent: set HF_TOKEN, or log in ($HF_HOME/token)"
    };
    let inner = match &e {
        ApiError::RequestError(inner) => inner.as_ref(),
        _ => {
            return hub_error(
                repo_id,
                format!("cannot download {url} into {}: {e}", folder.display()),
            )
        }
    };
    match inner {
        hf_hub_ureq::Error::Status(code, response) => {
            let code = *code;
            let what = match response.header("x-error-code") {
                Some("RepositoryNotFound") => format!(
                    "{} has no repository {repo_id}, or it is private or gated and {token}",
                    env.endpoint
                ),
                Some("GatedRepo") => format!(
                    "{repo_id} is gated: accept its terms on its page at {} and make sure {token}",
                    env.endpoint
                ),
                Some("EntryNotFound") => format!("the repository {repo_id} has no such file"),
                Some("RevisionNotFound") => {
                    format!("the repository {repo_id} has no revision main")
                }
                _ if code == 401 || code == 403 => format!(
                    "access denied: no repository {repo_id}, or it is private or gated and {token}"
                ),
                _ if code == 404 => format!("no repository {repo_id}, or no such file in it"),
                _ => "the hub answered with an error".to_string(),
            };
            hub_error(repo_id, format!("{url}: HTTP {code}: {what}"))
        }
        hf_hub_ureq::Error::Transport(t) => {
            // Its Display repeats the URL; the kind, message and cause say what failed.
            let mut why = t.kind().to_string();
            if let Some(m) = t.message() {
                why = format!("{why}: {m}");
            }
            if let Some(source) = std::error::Error::source(t) {
                why = format!("{why}: {source}");
            }
            hub_error(
                repo_id,
                format!(
                    "cannot download {url}: {why} (HF_ENDPOINT chooses the hub; HF_HUB_OFFLINE=1 uses only the cache in {})",
                    folder.display()
                ),
            )
        }
    }
}

/// [`Error::Hub`] for `repo_id`.
fn hub_error(repo_id: &str, message: String) -> Error {
    Error::Hub {
        repo_id: repo_id.to_string(),
        message,
    }
}

//! `--model owner/name` through the Hugging Face cache, against a local HTTP server on loopback
//! that serves hub-shaped URLs (`{endpoint}/{repo}/resolve/main/{file}` with the `etag`,
//! `x-repo-commit` and `Content-Range` headers the hub sends). No network. Needs the `hub`
//! feature (`cargo test -p fastdllm-cli --features hub --test hub`).
#![cfg(feature = "hub")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fastdllm_cli::hub::{is_repo_id, resolve_model, resolve_repo, HubEnv};

const REPO: &str = "test-org/llada-tiny";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A fake hub serving the files of one repository; counts the requests per file.
struct FakeHub {
    url: String,
    requests: Arc<Mutex<HashMap<String, usize>>>,
}

impl FakeHub {
    fn start(files: HashMap<String, Vec<u8>>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(HashMap::new()));
        let files = Arc::new(files);
        let counts = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let files = files.clone();
                let counts = counts.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &files, &counts);
                });
            }
        });
        FakeHub { url, requests }
    }

    fn requests(&self, file: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(file)
            .copied()
            .unwrap_or(0)
    }
}

/// One HTTP/1.1 exchange per connection (`Connection: close`).
fn serve(
    mut stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    counts: &Mutex<HashMap<String, usize>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            let v = v.trim();
            let (a, b) = v.split_once('-').unwrap_or((v, ""));
            range = Some((a.parse::<usize>().unwrap_or(0), b.parse::<usize>().ok()));
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let prefix = format!("/{REPO}/resolve/main/");
    let file = path.strip_prefix(&prefix).unwrap_or("");
    *counts.lock().unwrap().entry(file.to_string()).or_default() += 1;
    let Some(body) = files.get(file) else {
        let msg = b"Entry not found";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            msg.len()
        )?;
        return stream.write_all(msg);
    };
    let size = body.len();
    let (start, end) = match range {
        Some((a, Some(b))) => (a, b.min(size.saturating_sub(1))),
        Some((a, None)) => (a, size.saturating_sub(1)),
        None => (0, size.saturating_sub(1)),
    };
    let slice = if size == 0 || start >= size {
        &body[0..0]
    } else {
        &body[start..=end]
    };
    let etag = format!("{:016x}{:08x}", fnv(file.as_bytes()), size);
    write!(
        stream,
        "HTTP/1.1 206 Partial Content\r\netag: \"{etag}\"\r\nx-repo-commit: {COMMIT}\r\nContent-Range: bytes {start}-{end}/{size}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        slice.len()
    )?;
    stream.write_all(slice)?;
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    Ok(())
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The tiny LLaDA fixture as a hub repository, weights sharded in one shard behind an index.
fn repo_files() -> HashMap<String, Vec<u8>> {
    let dir = fastdllm_cli::paths::bundled_model("llada-tiny");
    let mut files = HashMap::new();
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        files.insert(f.to_string(), std::fs::read(dir.join(f)).unwrap());
    }
    files.insert(
        "model-00001-of-00001.safetensors".into(),
        std::fs::read(dir.join("model.safetensors")).unwrap(),
    );
    let tensors = safetensors_names(&dir.join("model.safetensors"));
    let map: serde_json::Map<String, serde_json::Value> = tensors
        .into_iter()
        .map(|n| (n, serde_json::json!("model-00001-of-00001.safetensors")))
        .collect();
    files.insert(
        "model.safetensors.index.json".into(),
        serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": map})).unwrap(),
    );
    files
}

/// Tensor names of a safetensors file (its JSON header).
fn safetensors_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect()
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fastdllm-hub-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn env(cache: &Path, endpoint: &str, offline: bool) -> HubEnv {
    HubEnv {
        cache_dir: cache.to_path_buf(),
        endpoint: endpoint.to_string(),
        offline,
        token: None,
    }
}

#[test]
fn repo_id_shape() {
    assert!(is_repo_id("GSAI-ML/LLaDA-8B-Instruct"));
    assert!(is_repo_id("Dream-org/Dream-v0-Instruct-7B"));
    for not in [
        "llada",
        "/abs/dir",
        "./rel/dir",
        "a/b/c",
        "../x",
        "a/",
        "owner/na me",
    ] {
        assert!(!is_repo_id(not), "{not}");
    }
}

#[test]
fn downloads_into_the_cache_then_reuses_it_and_works_offline() {
    let hub = FakeHub::start(repo_files());
    let cache = temp_dir("cache");
    let dir = resolve_repo(REPO, &env(&cache, &hub.url, false)).unwrap();
    assert!(
        dir.starts_with(
            cache
                .join("models--test-org--llada-tiny")
                .join("snapshots")
                .join(COMMIT)
        ),
        "{}",
        dir.display()
    );
    for f in [
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00001.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
        assert_eq!(hub.requests(f), 2, "{f}: metadata + download");
    }
    // Optional files the repository lacks: asked once each (404), skipped.
    assert_eq!(hub.requests("tokenizer_config.json"), 1);
    assert_eq!(hub.requests("chat_template.jinja"), 1);
    assert_eq!(hub.requests("model.safetensors"), 0, "the index was used");
    let loaded =
        fastdllm_models::load_model(&dir, &candle_core::Device::Cpu, candle_core::DType::F32)
            .unwrap();
    assert_eq!(loaded.info.architecture, "LLaDAModelLM");

    // Cached files are not fetched again online; offline resolves from the cache alone.
    assert_eq!(
        resolve_repo(REPO, &env(&cache, &hub.url, false)).unwrap(),
        dir
    );
    assert_eq!(hub.requests("config.json"), 2);
    let offline = resolve_repo(REPO, &env(&cache, "http://127.0.0.1:9", true)).unwrap();
    assert_eq!(offline, dir);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn offline_and_not_cached_names_where_it_looked() {
    let cache = temp_dir("empty");
    let err = resolve_repo(REPO, &env(&cache, "http://127.0.0.1:9", true))
        .unwrap_err()
        .to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(
        err.contains(
            &cache
                .join("models--test-org--llada-tiny")
                .display()
                .to_string()
        ),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn unknown_repo_names_the_url() {
    let hub = FakeHub::start(HashMap::new());
    let cache = temp_dir("unknown");
    let err = format!(
        "{:#}",
        resolve_repo(REPO, &env(&cache, &hub.url, false)).unwrap_err()
    );
    assert!(
        err.contains(&format!("{}/{REPO}/resolve/main/config.json", hub.url)),
        "{err}"
    );
}

#[test]
fn a_local_directory_wins() {
    let dir = fastdllm_cli::paths::bundled_model("llada-tiny");
    assert_eq!(resolve_model(&dir).unwrap(), dir);
    // Not a hub id and not a directory: returned as is (loading reports the missing directory).
    let missing = Path::new("/nonexistent/llada");
    assert_eq!(resolve_model(missing).unwrap(), missing);
}

#[test]
fn cli_generate_with_a_hub_id_then_offline() {
    let hub = FakeHub::start(repo_files());
    let home = temp_dir("hf-home");
    let run = |offline: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fastdllm"));
        cmd.args([
            "generate",
            "--model",
            REPO,
            "--prompt",
            "copy abc=",
            "--json",
        ])
        .env("HF_HOME", &home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env("HF_ENDPOINT", &hub.url);
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        } else {
            cmd.env_remove("HF_HUB_OFFLINE");
        }
        cmd.output().unwrap()
    };
    let out = run(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Same answer as the bundled directory (same files).
    let local = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args(["generate", "--prompt", "copy abc=", "--json"])
        .output()
        .unwrap();
    let local: serde_json::Value = serde_json::from_slice(&local.stdout).unwrap();
    assert_eq!(json["generated_ids"], local["generated_ids"]);
    assert!(home
        .join("hub")
        .join("models--test-org--llada-tiny")
        .is_dir());
    let offline = run(true);
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );

    let empty = temp_dir("hf-home-empty");
    let out = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args(["generate", "--model", REPO, "--prompt", "x"])
        .env("HF_HOME", &empty)
        .env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("HF_HUB_OFFLINE") && stderr.contains("models--test-org--llada-tiny"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&empty);
}

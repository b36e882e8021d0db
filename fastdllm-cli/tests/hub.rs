//! `--model owner/name` through the Hugging Face cache, against a fake hub: a local HTTP server
//! on loopback that serves hub-shaped URLs the way huggingface.co does. No network.
//!
//! * `GET {endpoint}/{repo}/resolve/main/{file}` (hf-hub first asks with `Range: bytes=0-0` for
//!   the metadata, then downloads): small files answer directly with `etag`, `x-repo-commit` and
//!   `Content-Range`; LFS files (`*.safetensors`) answer `302 Found` to a CDN URL with
//!   `x-linked-etag`, `x-linked-size` and `x-repo-commit`, and the CDN serves the bytes (ranges
//!   included);
//! * a missing file: `404` with `x-error-code: EntryNotFound`; an unknown repository, or a private
//!   one asked without its token: `401` with `x-error-code: RepositoryNotFound` (what the hub
//!   answers anonymous clients).
//!
//! The fake hub logs every request; the tests wait on nothing but process exits and replies.
//! Needs the `hub` feature (on by default).
#![cfg(feature = "hub")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use fastdllm_models::hub::{is_repo_id, resolve_model, resolve_repo, HubEnv};

const REPO: &str = "some-org/llada-tiny";
const CACHE_FOLDER: &str = "models--some-org--llada-tiny";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const SHARD: &str = "model-00001-of-00001.safetensors";

/// One request the fake hub received.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

/// A fake hub serving one repository (private when `token` is set).
struct FakeHub {
    url: String,
    log: Arc<Mutex<Vec<Request>>>,
}

struct Repository {
    files: HashMap<String, Vec<u8>>,
    token: Option<String>,
}

impl FakeHub {
    fn start(files: HashMap<String, Vec<u8>>, token: Option<&str>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let repo = Arc::new(Repository {
            files,
            token: token.map(str::to_string),
        });
        let (base, requests) = (url.clone(), log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (repo, requests, base) = (repo.clone(), requests.clone(), base.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &base, &repo, &requests);
                });
            }
        });
        FakeHub { url, log }
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// Requests for `{repo}/resolve/main/{file}`.
    fn resolves(&self, file: &str) -> usize {
        let path = format!("/{REPO}/resolve/main/{file}");
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

/// One HTTP/1.1 exchange per connection (`Connection: close`).
fn serve(
    mut stream: TcpStream,
    base: &str,
    repo: &Repository,
    log: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let request = Request {
        path: path.to_string(),
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
    };
    log.lock().unwrap().push(request.clone());
    let reply = |stream: &mut TcpStream, status: &str, headers: &[String], body: &[u8]| {
        let mut head = format!("HTTP/1.1 {status}\r\n");
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()
    };
    let error = |stream: &mut TcpStream, status: &str, code: &str| {
        reply(
            stream,
            status,
            &[format!("x-error-code: {code}")],
            code.as_bytes(),
        )
    };
    if method != "GET" {
        return error(&mut stream, "405 Method Not Allowed", "MethodNotAllowed");
    }
    if let Some(file) = path.strip_prefix("/cdn/") {
        // The CDN: no hub headers, just the bytes.
        return match repo.files.get(file) {
            Some(body) => send_bytes(&mut stream, body, request.range.as_deref(), &[], reply),
            None => error(&mut stream, "404 Not Found", "NoSuchKey"),
        };
    }
    let Some(rest) = path.strip_prefix('/') else {
        return error(&mut stream, "404 Not Found", "NotFound");
    };
    let prefix = format!("{REPO}/resolve/main/");
    let authorized = match &repo.token {
        Some(t) => request.authorization.as_deref() == Some(&format!("Bearer {t}")),
        None => true,
    };
    let Some(file) = rest.strip_prefix(&prefix).filter(|_| authorized) else {
        return error(&mut stream, "401 Unauthorized", "RepositoryNotFound");
    };
    let Some(body) = repo.files.get(file) else {
        return error(&mut stream, "404 Not Found", "EntryNotFound");
    };
    let etag = format!("{:016x}{:08x}", fnv(body), body.len());
    if file.ends_with(".safetensors") {
        let headers = [
            format!("Location: {base}/cdn/{file}"),
            format!("x-linked-etag: \"{etag}\""),
            format!("x-linked-size: {}", body.len()),
            format!("x-repo-commit: {COMMIT}"),
        ];
        return reply(&mut stream, "302 Found", &headers, b"");
    }
    let headers = [
        format!("etag: \"{etag}\""),
        format!("x-repo-commit: {COMMIT}"),
    ];
    send_bytes(&mut stream, body, request.range.as_deref(), &headers, reply)
}

/// `200` with the whole body, or `206` with the requested `bytes=a-b` / `bytes=a-` range.
fn send_bytes(
    stream: &mut TcpStream,
    body: &[u8],
    range: Option<&str>,
    headers: &[String],
    reply: impl Fn(&mut TcpStream, &str, &[String], &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let size = body.len();
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return reply(stream, "200 OK", headers, body);
    };
    let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
    let start: usize = a.trim().parse().unwrap_or(0);
    let end = b
        .trim()
        .parse::<usize>()
        .map_or(size - 1, |b| b.min(size - 1));
    if start >= size || start > end {
        let headers = [format!("Content-Range: bytes */{size}")];
        return reply(stream, "416 Range Not Satisfiable", &headers, b"");
    }
    let mut headers = headers.to_vec();
    headers.push(format!("Content-Range: bytes {start}-{end}/{size}"));
    reply(stream, "206 Partial Content", &headers, &body[start..=end])
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

fn bundled() -> PathBuf {
    fastdllm_conformance::paths::bundled_model("llada-tiny")
}

/// The tiny LLaDA fixture as a hub repository, its weights as one shard behind an index (how
/// the 8B checkpoints are laid out).
fn repo_files() -> HashMap<String, Vec<u8>> {
    let dir = bundled();
    let mut files = HashMap::new();
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        files.insert(f.to_string(), std::fs::read(dir.join(f)).unwrap());
    }
    files.insert(
        SHARD.into(),
        std::fs::read(dir.join("model.safetensors")).unwrap(),
    );
    let map: serde_json::Map<String, serde_json::Value> =
        safetensors_names(&dir.join("model.safetensors"))
            .into_iter()
            .map(|n| (n, serde_json::json!(SHARD)))
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

/// Proxy variables would send loopback requests to a proxy (ureq 2 does not read NO_PROXY).
const PROXY_VARS: [&str; 6] = [
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

/// Removes the proxy variables from this process before any test talks to the fake hub.
fn hermetic() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for v in PROXY_VARS {
            std::env::remove_var(v);
        }
    });
}

/// An address nothing listens on.
fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn env(cache: &Path, endpoint: &str, offline: bool) -> HubEnv {
    HubEnv {
        cache_dir: cache.to_path_buf(),
        endpoint: endpoint.to_string(),
        offline,
        token: None,
    }
}

/// `fastdllm ARGS` with only the Hugging Face variables given (the others removed).
fn fastdllm(args: &[&str], vars: &[(&str, &str)]) -> Output {
    hermetic();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fastdllm"));
    cmd.args(args);
    for v in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HUGGING_FACE_HUB_TOKEN",
        "XDG_CACHE_HOME",
    ]
    .into_iter()
    .chain(PROXY_VARS)
    {
        cmd.env_remove(v);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("the fastdllm binary runs")
}

/// The one `error:` line of a failed run with exit code 2 (the CLI's code for bad input).
#[track_caller]
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    eprintln!("{}", errors[0]);
    errors[0].to_string()
}

/// `generate --json` with the volatile fields (model path, timings) removed.
#[track_caller]
fn generated(out: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let mut json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let obj = json.as_object_mut().unwrap();
    for k in ["model", "wall_ms", "tokens_per_s"] {
        obj.remove(k);
    }
    json
}

const PROMPT: &str = "copy abc=";

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
    hermetic();
    let hub = FakeHub::start(repo_files(), None);
    let cache = temp_dir("cache");
    let dir = resolve_repo(REPO, &env(&cache, &hub.url, false)).unwrap();
    assert_eq!(
        dir,
        cache.join(CACHE_FOLDER).join("snapshots").join(COMMIT),
        "the huggingface_hub cache layout"
    );
    assert_eq!(
        std::fs::read_to_string(cache.join(CACHE_FOLDER).join("refs").join("main")).unwrap(),
        COMMIT
    );
    let files = repo_files();
    for (f, body) in &files {
        assert_eq!(&std::fs::read(dir.join(f)).unwrap(), body, "{f}");
        assert_eq!(hub.resolves(f), 2, "{f}: metadata, then download");
    }
    let log = hub.requests();
    assert!(
        log.iter()
            .filter(|r| r.path.ends_with("/config.json"))
            .any(|r| r.range.as_deref() == Some("bytes=0-0")),
        "metadata is asked with a one-byte range: {log:?}"
    );
    assert_eq!(
        log.iter()
            .filter(|r| r.path == format!("/cdn/{SHARD}"))
            .count(),
        2,
        "the weights come from the CDN the hub redirects to"
    );
    assert!(log.iter().all(|r| r.authorization.is_none()), "no token");
    // Optional files the repository lacks: asked once each (404), skipped.
    assert_eq!(hub.resolves("tokenizer_config.json"), 1);
    assert_eq!(hub.resolves("chat_template.jinja"), 1);
    assert_eq!(hub.resolves("model.safetensors"), 0, "the index was used");
    let loaded =
        fastdllm_models::load_model(&dir, &candle_core::Device::Cpu, candle_core::DType::F32)
            .unwrap();
    assert_eq!(loaded.info.architecture, "LLaDAModelLM");

    // A complete snapshot is used without asking the hub; offline resolves from the cache.
    let before = hub.requests().len();
    assert_eq!(
        resolve_repo(REPO, &env(&cache, &hub.url, false)).unwrap(),
        dir
    );
    assert_eq!(
        hub.requests().len(),
        before,
        "no request for a cached model"
    );
    let offline = resolve_repo(REPO, &env(&cache, &dead_endpoint(), true)).unwrap();
    assert_eq!(offline, dir);

    // A snapshot missing its weights is completed online, and refused offline.
    std::fs::remove_file(dir.join(SHARD)).unwrap();
    let err = resolve_repo(REPO, &env(&cache, &dead_endpoint(), true))
        .unwrap_err()
        .to_string();
    assert!(err.contains(SHARD), "{err}");
    assert_eq!(
        resolve_repo(REPO, &env(&cache, &hub.url, false)).unwrap(),
        dir
    );
    assert!(dir.join(SHARD).is_file());
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn offline_and_not_cached_names_where_it_looked() {
    let cache = temp_dir("empty");
    let err = format!(
        "{:#}",
        resolve_repo(REPO, &env(&cache, &dead_endpoint(), true)).unwrap_err()
    );
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(err.contains(REPO), "{err}");
    assert!(
        err.contains(&cache.join(CACHE_FOLDER).display().to_string()),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn unreachable_hub_names_the_url() {
    hermetic();
    let cache = temp_dir("unreachable");
    let endpoint = dead_endpoint();
    let err = format!(
        "{:#}",
        resolve_repo(REPO, &env(&cache, &endpoint, false)).unwrap_err()
    );
    assert!(
        err.contains(&format!("{endpoint}/{REPO}/resolve/main/config.json")),
        "{err}"
    );
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn a_local_directory_wins() {
    let dir = bundled();
    assert_eq!(resolve_model(&dir).unwrap(), dir);
    // Not a hub id and not a directory: returned as is (loading reports the missing directory).
    let missing = Path::new("/nonexistent/llada");
    assert_eq!(resolve_model(missing).unwrap(), missing);
}

#[test]
fn cli_generate_with_a_hub_id_then_offline() {
    let hub = FakeHub::start(repo_files(), None);
    let home = temp_dir("hf-home");
    let home_s = home.display().to_string();
    let args = ["generate", "--model", REPO, "--prompt", PROMPT, "--json"];
    let online = fastdllm(&args, &[("HF_HOME", &home_s), ("HF_ENDPOINT", &hub.url)]);
    let bundled = bundled().display().to_string();
    let local = fastdllm(
        &[
            "generate", "--model", &bundled, "--prompt", PROMPT, "--json",
        ],
        &[],
    );
    assert_eq!(
        generated(&online),
        generated(&local),
        "same answer as the local directory"
    );
    let snapshot = home
        .join("hub")
        .join(CACHE_FOLDER)
        .join("snapshots")
        .join(COMMIT);
    assert!(snapshot.join(SHARD).is_file());
    let json: serde_json::Value = serde_json::from_slice(&online.stdout).unwrap();
    assert_eq!(json["model"], snapshot.display().to_string());

    // Offline (and the endpoint dead): from the cache, same answer.
    let requests = hub.requests().len();
    let dead = dead_endpoint();
    let offline = fastdllm(
        &args,
        &[
            ("HF_HOME", &home_s),
            ("HF_ENDPOINT", &dead),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert_eq!(generated(&offline), generated(&local));
    // HF_HUB_CACHE wins over HF_HOME.
    let elsewhere = temp_dir("hf-home-unused");
    let cache_s = home.join("hub").display().to_string();
    let offline = fastdllm(
        &args,
        &[
            ("HF_HOME", &elsewhere.display().to_string()),
            ("HF_HUB_CACHE", &cache_s),
            ("HF_HUB_OFFLINE", "true"),
        ],
    );
    assert_eq!(generated(&offline), generated(&local));
    assert_eq!(hub.requests().len(), requests, "offline runs ask nothing");
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&elsewhere);
}

#[test]
fn cli_offline_with_an_empty_cache_names_the_repo_and_the_cache() {
    let home = temp_dir("hf-home-empty");
    let out = fastdllm(
        &["generate", "--model", REPO, "--prompt", PROMPT],
        &[
            ("HF_HOME", &home.display().to_string()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    let line = error_line(&out);
    let folder = home.join("hub").join(CACHE_FOLDER).display().to_string();
    for needle in [REPO, folder.as_str(), "HF_HUB_OFFLINE"] {
        assert!(line.contains(needle), "no '{needle}' in: {line}");
    }
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn cli_unknown_repo_is_a_clear_error() {
    let hub = FakeHub::start(repo_files(), None);
    let home = temp_dir("hf-home-unknown");
    let out = fastdllm(
        &[
            "generate",
            "--model",
            "some-org/no-such-model",
            "--prompt",
            PROMPT,
        ],
        &[
            ("HF_HOME", &home.display().to_string()),
            ("HF_ENDPOINT", &hub.url),
        ],
    );
    let line = error_line(&out);
    let url = format!(
        "{}/some-org/no-such-model/resolve/main/config.json",
        hub.url
    );
    for needle in [
        url.as_str(),
        "HTTP 401",
        "no repository some-org/no-such-model",
        "HF_TOKEN",
    ] {
        assert!(line.contains(needle), "no '{needle}' in: {line}");
    }
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn cli_private_repo_needs_the_token_from_the_usual_places() {
    let token = "hf_test_token";
    let hub = FakeHub::start(repo_files(), Some(token));
    let args = ["generate", "--model", REPO, "--prompt", PROMPT, "--json"];

    // No token: the hub says the repository does not exist; the error says why it may.
    let home = temp_dir("hf-home-private");
    let home_s = home.display().to_string();
    let out = fastdllm(&args, &[("HF_HOME", &home_s), ("HF_ENDPOINT", &hub.url)]);
    let line = error_line(&out);
    for needle in [REPO, "HTTP 401", "no token was sent", "HF_TOKEN"] {
        assert!(line.contains(needle), "no '{needle}' in: {line}");
    }

    // The token file of `huggingface-cli login` ($HF_HOME/token).
    std::fs::write(home.join("token"), format!("{token}\n")).unwrap();
    let out = fastdllm(&args, &[("HF_HOME", &home_s), ("HF_ENDPOINT", &hub.url)]);
    generated(&out);
    let bearer = format!("Bearer {token}");
    assert!(hub
        .requests()
        .iter()
        .filter(|r| r.path.starts_with(&format!("/{REPO}/")))
        .skip(1)
        .all(|r| r.authorization.as_deref() == Some(bearer.as_str())));

    // HF_TOKEN, with a fresh cache.
    let fresh = temp_dir("hf-home-private-env");
    let out = fastdllm(
        &args,
        &[
            ("HF_HOME", &fresh.display().to_string()),
            ("HF_ENDPOINT", &hub.url),
            ("HF_TOKEN", token),
        ],
    );
    generated(&out);
    // A wrong token is named as such.
    let other = temp_dir("hf-home-private-wrong");
    let out = fastdllm(
        &args,
        &[
            ("HF_HOME", &other.display().to_string()),
            ("HF_ENDPOINT", &hub.url),
            ("HF_TOKEN", "hf_wrong"),
        ],
    );
    let line = error_line(&out);
    assert!(line.contains("the token sent"), "{line}");
    for d in [home, fresh, other] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn an_index_naming_a_file_outside_the_repository_is_refused() {
    hermetic();
    let mut files = repo_files();
    files.insert(
        "model.safetensors.index.json".into(),
        br#"{"weight_map": {"a": "../../escape.safetensors"}}"#.to_vec(),
    );
    let hub = FakeHub::start(files, None);
    let cache = temp_dir("escape");
    let err = format!(
        "{:#}",
        resolve_repo(REPO, &env(&cache, &hub.url, false)).unwrap_err()
    );
    assert!(err.contains("../../escape.safetensors"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    assert!(hub.requests().iter().all(|r| !r.path.contains("escape")));
    let _ = std::fs::remove_dir_all(&cache);
}

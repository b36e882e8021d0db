//! `fastdllm serve`: the OpenAI-compatible HTTP server; the server itself lives in the
//! library ([`fastdllm_cli::serve`]). The decode flags are the server's defaults for requests
//! that do not set a knob.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use fastdllm_cli::serve::{self, Defaults, ServeConfig};

use super::args::{bounds, print_settings, DecodeArgs, DecodeDefaults, ModelArgs};

/// Arguments of `fastdllm serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Address or host name to listen on (`127.0.0.1`, `::1`, `localhost`, `0.0.0.0` to accept
    /// other machines: then set an API key).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 = any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Choices the server holds at once: queued, decoding, or not yet read by their clients;
    /// more are answered 429.
    #[arg(long, default_value_t = 64, value_parser = bounds::queue())]
    queue_capacity: usize,
    /// Most requests decoded together in one batch.
    #[arg(long, default_value_t = 32, value_parser = bounds::batch())]
    max_batch: usize,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 1 << 20, value_parser = bounds::bytes())]
    body_limit: usize,
    /// Model id clients name in `model`. Default: the model directory's name.
    #[arg(long)]
    model_id: Option<String>,
    /// Seconds a client has to send a request head; also how long an idle keep-alive
    /// connection stays open.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    header_read_timeout: f64,
    /// Seconds a client has to send a whole request body, from the end of its head (408 after
    /// it).
    #[arg(long, default_value_t = 30.0, value_parser = seconds)]
    body_timeout: f64,
    /// Most open connections; more wait until one closes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Most open connections from one client address; more are closed at once. Behind a
    /// reverse proxy every client shares its address: raise it to --max-connections there.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections_per_ip: u32,
    /// Seconds a response may wait for its client to take any of its bytes; after it the
    /// connection is closed and its generation cancelled.
    #[arg(long, default_value_t = 30.0, value_parser = seconds)]
    stream_timeout: f64,
    /// Seconds in-flight requests may take after a shutdown signal (SIGTERM, ctrl-c); a second
    /// signal exits at once.
    #[arg(long, default_value_t = 30.0, value_parser = seconds)]
    drain_timeout: f64,
    /// Seconds the server keeps accepting and serving new requests after a shutdown signal,
    /// with GET /ready answering 503, before it stops accepting and drains: set it above a load
    /// balancer's health-check interval times its fall count (0 = stop accepting at once).
    #[arg(long, default_value_t = 0.0, value_parser = seconds_or_zero)]
    shutdown_delay: f64,
    /// Require `Authorization: Bearer <KEY>` on every route but /health and /ready (401
    /// otherwise).
    /// Also read from FASTDLLM_API_KEY. Prefer --api-key-file: arguments are visible to other
    /// local users.
    #[arg(
        long,
        env = "FASTDLLM_API_KEY",
        hide_env_values = true,
        conflicts_with = "api_key_file"
    )]
    api_key: Option<String>,
    /// Read the API key from this file (its first line).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Allow cross-origin browser requests from this origin (repeatable; `*` = any). Default:
    /// CORS off.
    #[arg(long = "cors-allow-origin")]
    cors_allow_origin: Vec<String>,
}

/// A duration flag in seconds: finite, in (0, 86400].
fn seconds(v: &str) -> Result<f64, String> {
    let s: f64 = v
        .parse()
        .map_err(|_| format!("'{v}' is not a number of seconds"))?;
    if s.is_finite() && s > 0.0 && s <= 86_400.0 {
        Ok(s)
    } else {
        Err(format!("{v} seconds: must be > 0 and at most 86400"))
    }
}

/// A delay flag in seconds: 0, or a [`seconds`] value.
fn seconds_or_zero(v: &str) -> Result<f64, String> {
    if v.trim().parse::<f64>() == Ok(0.0) {
        return Ok(0.0);
    }
    seconds(v).map_err(|e| e.replace("must be > 0", "must be >= 0"))
}

/// The API key from `--api-key` / `FASTDLLM_API_KEY` or `--api-key-file`.
fn api_key(a: &ServeArgs) -> Result<Option<String>> {
    let key = match (&a.api_key, &a.api_key_file) {
        (Some(k), _) => k.clone(),
        (None, Some(path)) => {
            fastdllm_models::regular_file(path, "--api-key-file")?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --api-key-file {}", path.display()))?;
            text.lines().next().unwrap_or_default().to_string()
        }
        (None, None) => return Ok(None),
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        bail!("the API key (--api-key, FASTDLLM_API_KEY or --api-key-file) is empty");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the API key must be printable ASCII without spaces (it is sent in an HTTP header)");
    }
    Ok(Some(key))
}

/// The addresses `host:port` names (`::1`, `127.0.0.1`, `localhost`, ...).
fn listen_addrs(host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| {
            format!("invalid --host '{host}': not an IP address or a resolvable name")
        })?
        .collect();
    if addrs.is_empty() {
        bail!("--host '{host}' resolves to no address");
    }
    Ok(addrs)
}

pub fn run(a: ServeArgs) -> Result<ExitCode> {
    let (dir, loaded) = a.model.load()?;
    let defaults = DecodeDefaults::from_dir(&dir)?;
    let settings = a.decode.settings(loaded.model.spec().family, &defaults)?;
    print_settings(&dir, &loaded, &settings, &defaults)?;
    let model_id = a.model_id.clone().unwrap_or_else(|| {
        dir.canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into())
    });
    let mut cfg = ServeConfig::new(
        model_id,
        Defaults {
            settings,
            explicit_steps: a.decode.steps.is_some()
                || defaults
                    .generation
                    .as_ref()
                    .and_then(|g| g.fastdllm.as_ref())
                    .is_some_and(|f| f.steps.is_some()),
        },
    );
    cfg.queue_capacity = a.queue_capacity;
    cfg.max_batch = a.max_batch;
    cfg.body_limit = a.body_limit;
    cfg.header_read_timeout = Duration::from_secs_f64(a.header_read_timeout);
    cfg.body_timeout = Duration::from_secs_f64(a.body_timeout);
    cfg.max_connections = a.max_connections as usize;
    cfg.max_connections_per_ip = a.max_connections_per_ip as usize;
    cfg.stream_timeout = Duration::from_secs_f64(a.stream_timeout);
    cfg.drain_timeout = Duration::from_secs_f64(a.drain_timeout);
    cfg.shutdown_delay = Duration::from_secs_f64(a.shutdown_delay);
    cfg.api_key = api_key(&a)?;
    cfg.cors_allow_origins = a.cors_allow_origin.clone();
    let addrs = listen_addrs(&a.host, a.port)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (state, worker) = serve::start(loaded, cfg.clone())?;
    runtime.block_on(async move {
        let mut bound = Err(anyhow::anyhow!("no address"));
        for addr in &addrs {
            bound = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"));
            if bound.is_ok() {
                break;
            }
        }
        let listener = bound?;
        let local = listener.local_addr()?;
        // Listening starts before the address is printed, so that no signal sent after the
        // server is reachable can be missed or kill the process with the default action.
        let mut signals = ShutdownSignals::listen().context("cannot listen for shutdown signals")?;
        fastdllm_cli::logln!(
            "serving '{}' on http://{local} (POST /v1/completions, /v1/chat/completions; GET /v1/models, /health, /ready, /metrics){}",
            cfg.model_id,
            if cfg.api_key.is_some() { "; API key required" } else { "" }
        );
        let stopped = state.engine_stopped();
        let shutdown = async move {
            let signalled = tokio::select! {
                () = signals.recv() => true,
                () = stopped => false,
            };
            if signalled {
                fastdllm_cli::logln!("shutdown signal: finishing in-flight requests (a second signal exits at once)");
            } else {
                fastdllm_cli::logln!("the engine stopped: draining, then exiting with an error (a signal exits at once)");
            }
            // The same listeners: a signal that arrives before this task first runs is kept by
            // them, not lost.
            tokio::spawn(async move {
                signals.recv().await;
                fastdllm_cli::logln!("shutdown signal while draining: exiting now");
                std::process::exit(130);
            });
        };
        serve::serve(listener, state, shutdown).await.context("server failed")?;
        fastdllm_cli::logln!("shutting down: finishing queued requests");
        // Joined inside the runtime so that a second signal still exits at once.
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .context("the engine worker")?
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The process's shutdown signals: ctrl-c (SIGINT) and, on Unix, SIGTERM. They are listened to
/// from [`ShutdownSignals::listen`] on, and a signal that arrives while nobody awaits
/// [`ShutdownSignals::recv`] is kept for the next call (a listener made after it would miss it).
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
}

impl ShutdownSignals {
    /// Installs the listeners. Must run inside the tokio runtime. Errors: the OS refused a
    /// signal handler.
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(windows)]
        {
            Ok(Self {
                ctrl_c: tokio::signal::windows::ctrl_c()?,
            })
        }
        #[cfg(not(any(unix, windows)))]
        {
            Ok(Self {})
        }
    }

    /// Resolves on the next signal (or one that arrived since the last call).
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
        #[cfg(windows)]
        {
            self.ctrl_c.recv().await;
        }
        #[cfg(not(any(unix, windows)))]
        std::future::pending::<()>().await
    }
}

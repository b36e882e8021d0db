//! `fastdllm serve`: the OpenAI-compatible HTTP server (issue 6); the server itself lives in the
//! library ([`fastdllm_cli::serve`]). The decode flags are the server's defaults for requests
//! that do not set a knob.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use fastdllm_cli::serve::{self, api::Defaults, ServeConfig};

use super::args::{print_settings, DecodeArgs, DecodeDefaults, ModelArgs};

/// Arguments of `fastdllm serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 = any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Requests that may wait for the engine; more are answered 429.
    #[arg(long, default_value_t = 64)]
    queue_capacity: usize,
    /// Most requests decoded together in one batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Largest request body in bytes (413 above).
    #[arg(long, default_value_t = 1 << 20)]
    body_limit: usize,
    /// Model id clients name in `model`. Default: the model directory's name.
    #[arg(long)]
    model_id: Option<String>,
}

pub fn run(a: ServeArgs) -> Result<ExitCode> {
    let (dir, loaded) = a.model.load()?;
    let defaults = DecodeDefaults::from_dir(&dir)?;
    let settings = a.decode.settings(loaded.model.spec().family, &defaults)?;
    print_settings(&dir, &loaded, &settings, &defaults);
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
    let addr: SocketAddr = format!("{}:{}", a.host, a.port)
        .parse()
        .with_context(|| format!("invalid --host/--port '{}:{}'", a.host, a.port))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (state, worker) = serve::start(loaded, cfg.clone())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "serving '{}' on http://{local} (POST /v1/completions, /v1/chat/completions; GET /v1/models, /health)",
            cfg.model_id
        );
        serve::serve(listener, state, shutdown_signal()).await.context("server failed")
    })?;
    drop(runtime);
    eprintln!("shutting down: finishing queued requests");
    worker.join();
    Ok(ExitCode::SUCCESS)
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    eprintln!("shutdown signal: finishing in-flight requests");
}

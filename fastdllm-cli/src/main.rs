//! `fastdllm`: generate with LLaDA / Dream diffusion LLMs (Fast-dLLM caches and parallel
//! decoding), check the engine against the reference's golden cases, evaluate, benchmark, trace
//! and serve.
// The flag docs are clap's help text, written for the terminal (`[MASK]`, not an intra-doc link).
#![allow(rustdoc::broken_intra_doc_links)]

mod commands;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // SIGPIPE ignored: a write to a pipe whose reader has gone (`fastdllm serve 2>&1 | grep -m1
    // serving`, a client that hung up on a socket written with writev) is an error of that
    // write, never the death of the process. The commands write through `fastdllm_cli::output`,
    // which turns a failed write into exit 2 with one line; the server's log lines drop it.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    fastdllm_cli::malloc::keep_freed_memory();
    let cli = commands::Cli::parse();
    match compute_threads().and_then(|()| commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // When stderr cannot be written either, the exit status is all that is left.
            let _ = fastdllm_cli::errln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Most compute threads `RAYON_NUM_THREADS` may ask for (rayon spawns them all at its first use;
/// past this an absurd value is a mistake, not a machine).
const MAX_THREADS: usize = 1024;

/// Checks `RAYON_NUM_THREADS` and starts rayon's global pool (candle's kernels, the GEMMs, the
/// weight scan use it) before anything runs on it: rayon panics when the pool cannot start and
/// silently uses one thread per CPU when the value is not a number. Errors: the value is not 0
/// (rayon: one per CPU) or 1 to [`MAX_THREADS`]; the threads could not be started.
fn compute_threads() -> anyhow::Result<()> {
    const VAR: &str = "RAYON_NUM_THREADS";
    let allowed = format!("0 (one per CPU) or 1 to {MAX_THREADS}");
    // Empty is unset, as for rayon.
    if let Some(raw) = std::env::var_os(VAR).filter(|v| !v.is_empty()) {
        let value = raw.to_string_lossy();
        match value.trim().parse::<usize>() {
            Ok(n) if n <= MAX_THREADS => {}
            _ => anyhow::bail!("{VAR}={value}: must be {allowed}"),
        }
    }
    fastdllm_models::use_one_thread_pool();
    rayon::ThreadPoolBuilder::new()
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot start the compute threads ({VAR}): {e}"))
}

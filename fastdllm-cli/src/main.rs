//! `fastdllm`: generate with LLaDA / Dream diffusion LLMs (Fast-dLLM caches and parallel
//! decoding), check the engine against the reference's golden cases, evaluate, benchmark, trace
//! and serve.
// The flag docs are clap's help text, written for the terminal (`[MASK]`, not an intra-doc link).
#![allow(rustdoc::broken_intra_doc_links)]

mod commands;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Like any Unix filter: end quietly when the reader of our output goes away
    // (`fastdllm conform ... | head`) instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    fastdllm_cli::malloc::keep_freed_memory();
    let cli = commands::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

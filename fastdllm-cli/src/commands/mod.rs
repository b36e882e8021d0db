//! Command-line interface: clap derive, one module per subcommand, shared argument groups.

mod args;
mod bench;
mod bench_serve;
mod conform;
mod eval;
mod generate;
mod serve;
mod trace;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Fast-dLLM inference for diffusion LLMs (LLaDA, Dream) on candle.
#[derive(Debug, Parser)]
#[command(name = "fastdllm", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant (bench's matrix and serve flags)
// costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an answer for a prompt (the bundled tiny LLaDA when no --model is given).
    Generate(generate::GenerateArgs),
    /// Run golden cases of the reference implementation and judge them (FORMAT.md section 10),
    /// or judge another implementation's outputs of them (--judge).
    Conform(conform::ConformArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (completions, chat, SSE streaming).
    Serve(serve::ServeArgs),
    /// Exact-match accuracy, NFE and tokens/s of a task file (JSON Lines) under several settings.
    Eval(eval::EvalArgs),
    /// Benchmark a matrix of settings (JSON Lines + HTML report with SVG plots), or a server
    /// under load (`bench serve`, vLLM's result keys).
    Bench(bench::BenchArgs),
    /// Draw one generation as a picture (HTML + SVG): tokens coloured by the step that committed them.
    Trace(trace::TraceArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Conform(a) => conform::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Trace(a) => trace::run(a),
    }
}

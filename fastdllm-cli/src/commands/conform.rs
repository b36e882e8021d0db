//! `fastdllm conform`: run golden cases and judge them (FORMAT.md section 10), or with
//! `--judge` judge another implementation's outputs of them (docs/JUDGE.md) by the same rules.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use fastdllm_conformance::golden::{read_cases, Runner, Status, Tally, Verdict};
use fastdllm_conformance::judge::{judge_outputs, read_outputs};

use super::args::{DTypeArg, DeviceArg};

/// Arguments of `fastdllm conform`.
#[derive(Debug, Args)]
pub struct ConformArgs {
    /// Golden case files (JSON Lines, FORMAT.md section 6).
    #[arg(long, required = true, num_args = 1..)]
    cases: Vec<PathBuf>,
    /// Judge another implementation's outputs of the cases instead of running them: JSON Lines,
    /// one `{"id", "generated_ids", "nfe"}` object per case, optionally with `unmask_step` and
    /// `tokens_per_step` (docs/JUDGE.md). Every case (after --filter) needs exactly one output.
    #[arg(long, value_name = "OUTPUTS.jsonl", conflicts_with_all = ["model", "quantize", "drift"])]
    judge: Option<PathBuf>,
    /// Model directory or GGUF file for every case (default: the case's model among the bundled
    /// fixtures).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Quantize the linear layers at load: q8_0 | q4_k | q5_k | q6_k (agreement with the f32
    /// goldens is then measured, not expected).
    #[arg(long, value_name = "TYPE", value_parser = super::args::parse_quantize)]
    quantize: Option<fastdllm_models::QuantType>,
    /// Device.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Dtype (the goldens were made at f32).
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    dtype: DTypeArg,
    /// Print one JSON object per case before the closing line.
    #[arg(long)]
    json: bool,
    /// Also measure each cached step's drift from the exact forward.
    #[arg(long)]
    drift: bool,
    /// Only cases whose id contains this text (with --judge, outputs of other cases are left
    /// out).
    #[arg(long)]
    filter: Option<String>,
}

pub fn run(a: ConformArgs) -> Result<ExitCode> {
    let mut cases = read_cases(&a.cases)?;
    let mut tally = Tally::default();
    if let Some(path) = &a.judge {
        let outputs = read_outputs(path)?;
        for v in judge_outputs(&cases, &outputs, a.filter.as_deref())? {
            tally.add(&v);
            report(&v, &a)?;
        }
    } else {
        if let Some(f) = &a.filter {
            cases.retain(|c| c.id.contains(f.as_str()));
        }
        let mut runner = Runner::new(a.model.clone(), a.device.device()?, a.dtype.dtype());
        runner.drift = a.drift;
        runner.quantize = a.quantize;
        for case in &cases {
            let v = runner.run(case);
            tally.add(&v);
            report(&v, &a)?;
        }
    }
    fastdllm_cli::outln!("{}", tally.line())?;
    Ok(if tally.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints one verdict: a JSON object per case with --json; else a line per failed or fragile
/// case (`FAIL ID: problems [notes]`), and with --drift one per passed case.
fn report(v: &Verdict, a: &ConformArgs) -> Result<()> {
    if a.json {
        fastdllm_cli::outln!(
            "{}",
            serde_json::json!({
                "id": v.id, "status": v.status, "first_difference": v.first_difference,
                "generated_ids": v.generated_ids, "nfe": v.nfe, "unmask_step": v.unmask_step,
                "agreement": v.agreement, "problems": v.problems, "notes": v.notes, "drift": v.drift,
            })
        )?;
    } else if v.status != Status::Pass {
        let tag = if v.status == Status::Fragile {
            "FRAGILE"
        } else {
            "FAIL"
        };
        let notes = if v.notes.is_empty() {
            String::new()
        } else {
            format!(" [{}]", v.notes.join("; "))
        };
        fastdllm_cli::outln!("{tag} {}: {}{notes}", v.id, v.problems.join("; "))?;
    } else if a.drift {
        if let Some(d) = v.drift {
            fastdllm_cli::outln!(
                "pass {}: drift cos_min {:.6} max_abs {:.3e} argmax_agree {:.3} kl {:.3e}",
                v.id,
                d.cosine_min,
                d.max_abs_diff,
                d.argmax_agreement,
                d.kl_mean
            )?;
        }
    }
    Ok(())
}

//! Judging another implementation's outputs (docs/JUDGE.md): a PyTorch port, a new cache
//! approximation written elsewhere, writes one JSON line per golden case it ran; each is judged
//! against its case by the same function as our own runs ([`crate::golden::judge_observed`],
//! FORMAT.md section 10), so a verdict means the same thing whoever produced the tokens.
//!
//! The outputs file is JSON Lines, one object per case:
//!
//! ```json
//! {"id": "llada-tiny/none/fixed-s16/g16-b4/s01", "generated_ids": [32, 50, 50], "nfe": 16}
//! ```
//!
//! with optional `unmask_step` (per answer position, the 0-based forward that committed it, or
//! `null`) and `tokens_per_step` (per forward, the tokens it committed); without them the
//! unmasking order is not judged and each verdict says so. Unknown fields are errors (a
//! misspelt `unmask_steps` must not silently turn the order check off).
//!
//! ```no_run
//! use fastdllm_conformance::golden::read_cases;
//! use fastdllm_conformance::judge::{judge_outputs, read_outputs};
//! use fastdllm_conformance::paths::goldens_dir;
//!
//! # fn main() -> anyhow::Result<()> {
//! let cases = read_cases(&[goldens_dir().join("llada-tiny.jsonl")])?;
//! let outputs = read_outputs(std::path::Path::new("outputs.jsonl"))?;
//! for v in judge_outputs(&cases, &outputs, None)? {
//!     println!("{}: {:?} first difference {:?}", v.id, v.status, v.first_difference);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use fastdllm_core::TokenId;
use serde::{Deserialize, Serialize};

use crate::golden::{judge_observed, Case, Observed, Verdict};

/// One line of an outputs file: what an implementation produced for one golden case.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// The case's `id` (FORMAT.md section 6).
    pub id: String,
    /// The `gen_length` answer positions after the prompt (the reference's
    /// `output_ids[len(prompt_ids):]`, masks and end-of-sequence padding included).
    pub generated_ids: Vec<TokenId>,
    /// Forward calls of the model (NFE) for this case.
    pub nfe: usize,
    /// Optional: the 0-based forward that committed each answer position (`null` if never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmask_step: Option<Vec<Option<usize>>>,
    /// Optional: the tokens committed by each forward (length `nfe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_step: Option<Vec<usize>>,
}

/// Most bytes of an outputs file (about 2 KB a line for 5 000 cases would be 10 MB).
pub const MAX_OUTPUTS_BYTES: u64 = 1 << 30;

/// Reads an outputs file (JSON Lines of [`Output`]; blank lines skipped).
///
/// Errors: the file is missing, not a regular file or not UTF-8; a line is not an output
/// object (`PATH:LINE: ...` with serde's reason, e.g. an unknown field or a missing `nfe`).
pub fn read_outputs(path: &Path) -> Result<Vec<Output>> {
    fastdllm_models::regular_file(path, "outputs file")?;
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read outputs file {}", path.display()))?
        .len();
    if len > MAX_OUTPUTS_BYTES {
        bail!(
            "outputs file {} is {len} bytes, more than {MAX_OUTPUTS_BYTES}",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read outputs file {}", path.display()))?;
    parse_outputs(&text, &path.display().to_string())
}

/// Parses outputs from JSON Lines `text`; `source` names it in errors (`SOURCE:LINE: ...`).
pub fn parse_outputs(text: &str, source: &str) -> Result<Vec<Output>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let o: Output = serde_json::from_str(line).with_context(|| {
            format!(
                "{source}:{}: not an output line (an object with id, generated_ids, nfe and \
                 optionally unmask_step, tokens_per_step; docs/JUDGE.md)",
                i + 1
            )
        })?;
        out.push(o);
    }
    Ok(out)
}

/// Judges every output against its case, in the order of `cases`. With `filter`, only the
/// cases whose id contains it are judged, and outputs of other ids are left out.
///
/// Errors (nothing is judged then): an output whose id is not among `cases`, an id given twice,
/// or cases without an output (the count and the first ids are named).
pub fn judge_outputs(
    cases: &[Case],
    outputs: &[Output],
    filter: Option<&str>,
) -> Result<Vec<Verdict>> {
    let wanted = |id: &str| filter.is_none_or(|f| id.contains(f));
    let cases: Vec<&Case> = cases.iter().filter(|c| wanted(&c.id)).collect();
    let outputs: Vec<&Output> = outputs.iter().filter(|o| wanted(&o.id)).collect();
    let known: HashSet<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    let mut by_id: HashMap<&str, &Output> = HashMap::with_capacity(outputs.len());
    for o in outputs {
        if !known.contains(o.id.as_str()) {
            bail!(
                "an output has id '{}', which is not a case of the cases files",
                o.id
            );
        }
        if by_id.insert(o.id.as_str(), o).is_some() {
            bail!("two outputs have id '{}'", o.id);
        }
    }
    let missing: Vec<&str> = cases
        .iter()
        .map(|c| c.id.as_str())
        .filter(|id| !by_id.contains_key(id))
        .collect();
    if !missing.is_empty() {
        const SHOWN: usize = 3;
        let more = if missing.len() > SHOWN { ", ..." } else { "" };
        bail!(
            "{} of {} cases have no output (first: {}{more}); judge a subset with a filter",
            missing.len(),
            cases.len(),
            missing[..missing.len().min(SHOWN)].join(", ")
        );
    }
    Ok(cases
        .iter()
        .map(|c| {
            let o = by_id[c.id.as_str()];
            judge_observed(
                c,
                &Observed {
                    generated: &o.generated_ids,
                    nfe: o.nfe,
                    unmask_step: o.unmask_step.as_deref(),
                    tokens_per_step: o.tokens_per_step.as_deref(),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{read_cases, Status};

    fn cases() -> Vec<Case> {
        let all = read_cases(&[crate::paths::goldens_dir().join("llada-tiny.jsonl")]).unwrap();
        all.into_iter().take(4).collect()
    }

    fn as_output(c: &Case, order: bool) -> Output {
        Output {
            id: c.id.clone(),
            generated_ids: c.generated_ids.clone(),
            nfe: c.nfe,
            unmask_step: order.then(|| c.unmask_step.clone()),
            tokens_per_step: order.then(|| c.tokens_per_step.clone()),
        }
    }

    #[test]
    fn the_goldens_themselves_pass_and_a_changed_token_fails_at_its_position() {
        let cases = cases();
        let mut outs: Vec<Output> = cases.iter().map(|c| as_output(c, true)).collect();
        let v = judge_outputs(&cases, &outs, None).unwrap();
        assert!(v.iter().all(|v| v.status == Status::Pass), "{v:?}");
        outs[1].generated_ids[5] += 1;
        let v = judge_outputs(&cases, &outs, None).unwrap();
        assert_eq!(v[1].status, Status::Fail);
        assert_eq!(v[1].first_difference, Some(5));
        assert!(v[1].problems[0].contains("answer position 5"), "{v:?}");
        assert_eq!(v[0].status, Status::Pass);
    }

    #[test]
    fn without_the_order_ids_and_nfe_are_judged_and_a_note_says_so() {
        let cases = cases();
        let outs: Vec<Output> = cases.iter().map(|c| as_output(c, false)).collect();
        let v = judge_outputs(&cases, &outs, None).unwrap();
        assert!(v.iter().all(|v| v.status == Status::Pass));
        assert!(v[0].notes[0].contains("not reported"), "{:?}", v[0].notes);
        let mut wrong = outs.clone();
        wrong[2].nfe += 1;
        assert_eq!(
            judge_outputs(&cases, &wrong, None).unwrap()[2].status,
            Status::Fail
        );
    }

    #[test]
    fn unknown_repeated_and_missing_ids_and_bad_lines_are_errors() {
        let cases = cases();
        let outs: Vec<Output> = cases.iter().map(|c| as_output(c, false)).collect();
        let mut unknown = outs.clone();
        unknown[0].id = "no/such/case".into();
        let e = judge_outputs(&cases, &unknown, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'no/such/case'"), "{e}");
        let mut twice = outs.clone();
        twice.push(outs[0].clone());
        let e = judge_outputs(&cases, &twice, None).unwrap_err().to_string();
        assert!(e.contains("two outputs have id"), "{e}");
        let e = judge_outputs(&cases, &outs[..3], None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("1 of 4 cases have no output"), "{e}");
        // A filter judges the cases it names, whatever other outputs the file holds.
        let v = judge_outputs(&cases, &outs[..3], Some(&cases[1].id)).unwrap();
        assert_eq!((v.len(), v[0].id.as_str()), (1, cases[1].id.as_str()));
        let e =
            parse_outputs("\n{\"id\": \"x\", \"generated_ids\": [1]}\n", "o.jsonl").unwrap_err();
        assert!(
            format!("{e:#}").starts_with("o.jsonl:2: not an output line"),
            "{e:#}"
        );
        let e = parse_outputs(
            "{\"id\": \"x\", \"generated_ids\": [1], \"nfe\": 1, \"unmask_steps\": []}",
            "o.jsonl",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("unmask_steps"), "{e:#}");
    }
}

//! `fastdllm conform --judge`: another implementation's outputs judged against the goldens
//! (docs/JUDGE.md). The outputs are written from the golden files themselves, so the expected
//! verdict of each case is known without running a model.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

mod common;
use common::Run;

fn goldens(name: &str) -> PathBuf {
    fastdllm_conformance::paths::goldens_dir().join(name)
}

fn cases(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The output line a faithful implementation writes for `case` (the order only with `order`).
fn output(case: &Value, order: bool) -> Value {
    let mut o =
        json!({"id": case["id"], "generated_ids": case["generated_ids"], "nfe": case["nfe"]});
    if order {
        let src = if case["tie"] == json!(true) {
            &case["tie_break_lowest_index"]
        } else {
            case
        };
        o["unmask_step"] = src["unmask_step"].clone();
        o["tokens_per_step"] = src["tokens_per_step"].clone();
    }
    o
}

fn write_outputs(tag: &str, outs: &[Value]) -> PathBuf {
    let f = std::env::temp_dir().join(format!("fastdllm-judge-{tag}-{}.jsonl", std::process::id()));
    let text: String = outs.iter().map(|o| format!("{o}\n")).collect();
    std::fs::write(&f, text).unwrap();
    f
}

fn judge(cases: &Path, outputs: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["conform".as_ref(), "--cases".as_ref(), cases.as_os_str()];
    args.extend(["--judge".as_ref(), outputs.as_os_str()]);
    args.extend(extra.iter().map(OsStr::new));
    let Run {
        code,
        stdout,
        stderr,
    } = common::fastdllm(args);
    (code, stdout, stderr)
}

#[test]
fn the_goldens_own_outputs_pass_and_one_changed_token_fails_at_its_position() {
    let file = goldens("llada-tiny.jsonl");
    let all = cases(&file);
    let mut outs: Vec<Value> = all.iter().map(|c| output(c, true)).collect();
    let f = write_outputs("same", &outs);
    let (code, stdout, stderr) = judge(&file, &f, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.trim_end(), format!("{} passed, 0 failed", all.len()));

    // A robust case (not within rounding of a threshold) with a token changed at position 3.
    let k = all
        .iter()
        .position(|c| !c["min_threshold_gap"].as_f64().is_some_and(|g| g < 1e-8))
        .unwrap();
    let id = all[k]["id"].as_str().unwrap().to_string();
    let old = outs[k]["generated_ids"][3].as_u64().unwrap();
    outs[k]["generated_ids"][3] = json!(old ^ 1);
    let f = write_outputs("one-token", &outs);
    let (code, stdout, _) = judge(&file, &f, &[]);
    assert_eq!(code, 1, "{stdout}");
    let fail = stdout.lines().find(|l| l.starts_with("FAIL ")).unwrap();
    assert!(
        fail.starts_with(&format!("FAIL {id}: generated ids differ at answer position 3: expected Some({old}), got Some({})", old ^ 1)),
        "{fail}"
    );
    assert!(stdout
        .trim_end()
        .ends_with(&format!("{} passed, 1 failed", all.len() - 1)));

    // --json: one object per case with the first differing position.
    let (code, stdout, _) = judge(&file, &f, &["--json", "--filter", &id]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["first_difference"].as_u64()),
        (Some("fail"), Some(3))
    );
}

#[test]
fn a_mismatch_in_a_fragile_case_is_fragile_not_failed() {
    let file = goldens("dream-tiny.jsonl");
    let all = cases(&file);
    let k = all
        .iter()
        .position(|c| c["min_threshold_gap"].as_f64().is_some_and(|g| g < 1e-8))
        .expect("dream-tiny has cases on float32(threshold)");
    let mut outs: Vec<Value> = all.iter().map(|c| output(c, false)).collect();
    outs[k]["nfe"] = json!(outs[k]["nfe"].as_u64().unwrap() + 1);
    let f = write_outputs("fragile", &outs);
    let (code, stdout, stderr) = judge(&file, &f, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("FRAGILE {}: nfe", all[k]["id"].as_str().unwrap()))),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with(", 0 failed, 1 fragile"),
        "{stdout}"
    );
}

#[test]
fn missing_unknown_and_malformed_outputs_are_one_line_errors() {
    let file = goldens("llada-tiny-choice.jsonl");
    let all = cases(&file);
    let outs: Vec<Value> = all.iter().map(|c| output(c, false)).collect();
    let expect = |outs: &[Value], tag: &str, want: &str| {
        let f = write_outputs(tag, outs);
        let (code, stdout, stderr) = judge(&file, &f, &[]);
        assert_eq!(code, 2, "{stdout}{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
    };
    expect(
        &outs[1..],
        "missing",
        &format!(
            "1 of {} cases have no output (first: {})",
            all.len(),
            all[0]["id"].as_str().unwrap()
        ),
    );
    let mut unknown = outs.clone();
    unknown.push(json!({"id": "no/such/case", "generated_ids": [], "nfe": 0}));
    expect(&unknown, "unknown", "'no/such/case', which is not a case");
    let mut bad = outs.clone();
    bad[2] = json!({"id": all[2]["id"], "generated_ids": "1 2 3", "nfe": 1});
    expect(&bad, "malformed", ":3: not an output line");
    let (code, _, stderr) = judge(&file, Path::new("/nonexistent/outputs.jsonl"), &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/outputs.jsonl"), "{stderr}");
}

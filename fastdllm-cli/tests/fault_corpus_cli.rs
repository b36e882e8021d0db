//! The fault corpus (docs/RELIABILITY.md), CLI and model-file half: every bad model directory that
//! `faults/models/make.rs` builds from the bundled fixtures, every bad GGUF file
//! `faults/models/gguf.rs` makes from the bundled GGUF fixture, and every bad flag set of
//! `faults/cli/*.txt` runs through the built binary. Each must end with exit 2 and an `error:`
//! line naming the file, field or value (or, for faults that used to crash on a usable model,
//! exit 0 with the pristine fixture's output); a panic (exit 101, "panicked"), a hang (no exit
//! within minutes: a guard only, the runs take well under a second) or a silent success is
//! counted and fails the test. Prints `tried N / clear error N / panic N / hang N / silent wrong N`.

#[path = "../../faults/models/make.rs"]
mod make;

#[path = "../../faults/models/gguf.rs"]
mod gguf_faults;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use make::Expect;

/// Generous: only a hang gets near it.
const HANG: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    fastdllm_conformance::paths::repo_root()
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with a hang guard; `code` is `None` when it had to be killed. Leading
/// `NAME=VALUE` arguments are environment variables (as in a shell), set after the default
/// `RAYON_NUM_THREADS=1`.
fn run(args: &[String]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fastdllm"));
    cmd.env("RAYON_NUM_THREADS", "1");
    let mut args = args;
    while let Some((name, value)) = args.first().and_then(|a| env_assignment(a)) {
        cmd.env(name, value);
        args = &args[1..];
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let code = loop {
        match child.try_wait().expect("wait") {
            Some(status) => break Some(status.code().unwrap_or(-1)),
            None if start.elapsed() > HANG => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Outcome {
        code,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// `NAME=VALUE` with an upper-case name: (name, value).
fn env_assignment(arg: &str) -> Option<(&str, &str)> {
    let (name, value) = arg.split_once('=')?;
    let is_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    is_name.then_some((name, value))
}

#[derive(Default)]
struct Tally {
    tried: usize,
    clear: usize,
    ok: usize,
    panic: usize,
    hang: usize,
    silent_wrong: usize,
    unclear: Vec<String>,
}

impl Tally {
    fn check(&mut self, label: &str, out: &Outcome, expect: &Expect, pristine: Option<&str>) {
        self.tried += 1;
        let Some(code) = out.code else {
            self.hang += 1;
            self.unclear
                .push(format!("{label}: HANG (killed after {HANG:?})"));
            return;
        };
        if code == 101 || out.stderr.contains("panicked") {
            self.panic += 1;
            self.unclear
                .push(format!("{label}: PANIC {}", out.stderr.trim()));
            return;
        }
        match expect {
            Expect::Error(needles) => {
                if code == 0 {
                    self.silent_wrong += 1;
                    self.unclear.push(format!(
                        "{label}: SILENT exit 0; stdout {}",
                        out.stdout.trim()
                    ));
                    return;
                }
                let line = out.stderr.lines().find(|l| l.starts_with("error"));
                let named = line.is_some_and(|l| needles.iter().all(|n| l.contains(n)));
                if code == 2 && named {
                    self.clear += 1;
                } else {
                    self.unclear.push(format!(
                        "{label}: exit {code}, error line {line:?} should name {needles:?}; stderr {}",
                        out.stderr.trim()
                    ));
                }
            }
            Expect::SameAs(_) => {
                if code == 0 && Some(out.stdout.as_str()) == pristine {
                    self.ok += 1;
                } else if code == 0 {
                    self.silent_wrong += 1;
                    self.unclear.push(format!(
                        "{label}: SILENT WRONG stdout {:?}, pristine {pristine:?}",
                        out.stdout
                    ));
                } else {
                    self.unclear
                        .push(format!("{label}: exit {code}: {}", out.stderr.trim()));
                }
            }
        }
    }
}

/// `generate` on `model` with a short answer (the model faults are about loading).
fn generate_args(model: &Path) -> Vec<String> {
    [
        "generate",
        "--model",
        &model.display().to_string(),
        "--prompt",
        "copy ab",
        "--raw",
        "--gen-length",
        "8",
        "--block-length",
        "8",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The flag sets of `faults/cli/*.txt`: (needles, args). `{scratch}` is a directory of large
/// inputs the test writes ([`write_scratch`]).
fn flag_sets(scratch: &Path) -> Vec<(Vec<String>, Vec<String>)> {
    let dir = repo().join("faults").join("cli");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let fixtures = fastdllm_conformance::paths::fixtures_dir();
    let templates = fastdllm_conformance::paths::repo_root().join("faults/cli/templates");
    let mut sets = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (needles, args) = line
                .split_once(" :: ")
                .unwrap_or_else(|| panic!("{}: no ' :: ' in {line:?}", f.display()));
            let args = args
                .split_whitespace()
                .map(|a| {
                    a.replace(
                        "{llada}",
                        &fixtures.join("llada-tiny").display().to_string(),
                    )
                    .replace(
                        "{dream}",
                        &fixtures.join("dream-tiny").display().to_string(),
                    )
                    .replace("{templates}", &templates.display().to_string())
                    .replace("{scratch}", &scratch.display().to_string())
                })
                .collect();
            let needles = needles.split(',').map(|n| n.trim().to_string()).collect();
            sets.push((needles, args));
        }
    }
    sets
}

/// Large inputs for the flag sets (too big to commit): an eval task file whose second prompt is
/// 12 MB, a 12 MB prompt file, a model config of terabytes.
fn write_scratch(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let huge = "x".repeat(12 << 20);
    let tasks = format!(
        "{{\"prompt\": \"copy ab\", \"answer\": \"ab\"}}\n{}\n",
        serde_json::json!({"prompt": huge, "answer": "x"})
    );
    std::fs::write(dir.join("huge-prompt-tasks.jsonl"), tasks).unwrap();
    std::fs::write(dir.join("huge-prompt.txt"), &huge).unwrap();
    // The tiny LLaDA's config with d_model 2^20: terabytes of random weights.
    let tiny = fastdllm_conformance::paths::fixtures_dir().join("llada-tiny/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny).unwrap()).unwrap();
    cfg["d_model"] = serde_json::json!(1 << 20);
    std::fs::write(dir.join("huge-d-model.json"), cfg.to_string()).unwrap();
}

#[test]
fn every_fault_gets_a_clear_error() {
    let out_dir = std::env::temp_dir().join(format!("fastdllm-faults-{}", std::process::id()));
    let fixtures = fastdllm_conformance::paths::fixtures_dir();
    let mut models = make::make_all(&fixtures, &out_dir);
    models.extend(gguf_faults::make_all(&fixtures, &out_dir));
    let mut tally = Tally::default();

    let mut pristine = std::collections::HashMap::new();
    for name in ["llada-tiny", "dream-tiny"] {
        let out = run(&generate_args(&fixtures.join(name)));
        assert_eq!(out.code, Some(0), "pristine {name}: {}", out.stderr);
        pristine.insert(name, out.stdout);
    }
    for f in &models {
        let out = run(&generate_args(&f.dir));
        let base = match &f.expect {
            Expect::SameAs(name) => pristine.get(name).map(String::as_str),
            Expect::Error(_) => None,
        };
        tally.check(&format!("models/{}", f.name), &out, &f.expect, base);
    }
    let scratch = out_dir.join("scratch");
    write_scratch(&scratch);
    for (needles, args) in flag_sets(&scratch) {
        let out = run(&args);
        tally.check(
            &format!("cli: {}", args.join(" ")),
            &out,
            &Expect::Error(needles),
            None,
        );
    }
    let _ = std::fs::remove_dir_all(&out_dir);

    println!(
        "fault corpus (CLI + model files): tried {} / clear error {} / panic {} / hang {} / silent wrong {} (and {} faults that must run: {} ran with the pristine output)",
        tally.tried,
        tally.clear,
        tally.panic,
        tally.hang,
        tally.silent_wrong,
        models
            .iter()
            .filter(|f| matches!(f.expect, Expect::SameAs(_)))
            .count(),
        tally.ok,
    );
    for u in &tally.unclear {
        println!("  {u}");
    }
    assert!(
        tally.unclear.is_empty(),
        "{} of {} faults not handled:\n{}",
        tally.unclear.len(),
        tally.tried,
        tally.unclear.join("\n")
    );
}

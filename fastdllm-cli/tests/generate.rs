//! `fastdllm generate` finishes answers as the engine does: the row stops decoding once its
//! answer is final (fewer forwards than the reference's whole canvas, same answer), `--stop`
//! ends it before a string, `--max-tokens` caps it.

use std::process::Command;

use serde_json::Value;

/// Runs `generate --json` on the bundled tiny LLaDA with `args`; the printed object.
fn generate(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args(["generate", "--prompt", "copy 3dbk......=", "--json"])
        .args(args)
        .output()
        .expect("binary runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn generate_finishes_the_answer_early_and_stops_at_strings() {
    let answer = generate(&[]);
    let canvas = generate(&["--finish", "canvas"]);
    assert_eq!(answer["text"], "3dbk", "{answer}");
    assert_eq!(canvas["text"], answer["text"], "{canvas}");
    assert_eq!(answer["finish_reason"], "stop");
    // The bundled model's defaults: gen 32, fixed schedule, one token per forward.
    assert_eq!(canvas["nfe"], 32, "{canvas}");
    assert!(answer["nfe"].as_u64().unwrap() < 32, "{answer}");

    let stopped = generate(&["--stop", "b"]);
    assert_eq!(stopped["text"], "3d", "{stopped}");
    assert_eq!(stopped["finish_reason"], "stop");
    assert!(stopped["nfe"].as_u64() <= answer["nfe"].as_u64());
    // Several stop strings: the earliest match wins.
    let earliest = generate(&["--stop", "k", "--stop", "d"]);
    assert_eq!(earliest["text"], "3", "{earliest}");

    let capped = generate(&["--max-tokens", "2"]);
    assert_eq!(capped["text"], "3d", "{capped}");
    assert_eq!(capped["finish_reason"], "length");
}

#[test]
fn an_empty_stop_string_is_an_error_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args(["generate", "--prompt", "copy 3dbk......=", "--stop", ""])
        .output()
        .expect("binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or("");
    assert!(
        line.contains("--stop") && line.contains("empty"),
        "{stderr}"
    );
}

/// `--prompt -` reads the prompt from stdin, `--prompt-file` from a file (one trailing newline
/// dropped): the same answer as the text given with `--prompt`.
#[test]
fn prompt_from_stdin_and_from_a_file() {
    use std::io::Write;
    let run = |args: &[&str], stdin: &str| -> Value {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
            .args(["generate", "--json"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("binary runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("one JSON object")
    };
    let given = generate(&[]);
    let piped = run(&["--prompt", "-"], "copy 3dbk......=\n");
    assert_eq!(piped["prompt_ids"], given["prompt_ids"], "{piped}");
    assert_eq!(piped["text"], "3dbk", "{piped}");
    let file = std::env::temp_dir().join(format!("fastdllm-prompt-{}.txt", std::process::id()));
    std::fs::write(&file, "copy 3dbk......=\n").unwrap();
    let path = file.display().to_string();
    let read = run(&["--prompt-file", &path], "");
    std::fs::remove_file(&file).unwrap();
    assert_eq!(read["prompt_ids"], given["prompt_ids"], "{read}");
    assert_eq!(read["text"], "3dbk", "{read}");
}

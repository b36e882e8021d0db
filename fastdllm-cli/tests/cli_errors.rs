//! Bad input to the `fastdllm` binary: every case exits non-zero with a one-line `error:` that
//! names the file / field / value and what is allowed, and never panics.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{safetensors, Device, Tensor};

mod common;
use common::{fastdllm, Run};

fn fixture(name: &str) -> PathBuf {
    fastdllm_conformance::paths::bundled_model(name)
}

#[track_caller]
fn expect_error(args: &[&str], needles: &[&str]) {
    common::expect_error(args, None, needles)
}

/// A copy of the tiny LLaDA fixture in a fresh temp folder, for breaking.
fn broken_copy(tag: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("fastdllm-cli-errors-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "generation_config.json",
    ] {
        std::fs::copy(fixture("llada-tiny").join(f), dir.join(f)).expect("copy fixture");
    }
    dir
}

fn gen(model: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "generate".to_string(),
        "--model".into(),
        model.display().to_string(),
        "--prompt".into(),
        "copy ab........=".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn missing_model_directory() {
    expect_error(
        &[
            "generate",
            "--model",
            "/nonexistent/llada",
            "--prompt",
            "hi",
        ],
        &["/nonexistent/llada"],
    );
}

#[test]
fn missing_config_json() {
    let d = broken_copy("noconfig");
    std::fs::remove_file(d.join("config.json")).unwrap();
    expect_error(&strs(&gen(&d, &[])), &["config.json"]);
}

#[test]
fn malformed_config_json() {
    let d = broken_copy("badjson");
    std::fs::write(
        d.join("config.json"),
        "{\"architectures\": [\"LLaDAModelLM\"],\n \"d_model\": 128,,\n}",
    )
    .unwrap();
    expect_error(&strs(&gen(&d, &[])), &["config.json:2"]);
}

#[test]
fn unknown_architecture() {
    let d = broken_copy("arch");
    let cfg = std::fs::read_to_string(d.join("config.json"))
        .unwrap()
        .replace("LLaDAModelLM", "GPTNeoXForCausalLM")
        .replace("\"llada\"", "\"gpt_neox\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    expect_error(
        &strs(&gen(&d, &[])),
        &["GPTNeoXForCausalLM", "LLaDAModelLM"],
    );
}

#[test]
fn missing_tensor_and_wrong_shape() {
    let d = broken_copy("tensor");
    let path = d.join("model.safetensors");
    let mut tensors = safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("model.transformer.blocks.2.up_proj.weight");
    safetensors::save(&tensors, &path).unwrap();
    expect_error(
        &strs(&gen(&d, &[])),
        &["model.transformer.blocks.2.up_proj.weight"],
    );

    let d = broken_copy("shape");
    let path = d.join("model.safetensors");
    let mut tensors = safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.insert(
        "model.transformer.ln_f.weight".into(),
        Tensor::ones(100, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    safetensors::save(&tensors, &path).unwrap();
    expect_error(
        &strs(&gen(&d, &[])),
        &["model.transformer.ln_f.weight", "128", "100"],
    );
}

#[test]
fn missing_tokenizer() {
    let d = broken_copy("notok");
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    expect_error(&strs(&gen(&d, &[])), &["tokenizer.json"]);
}

#[test]
fn impossible_lengths() {
    let m = fixture("llada-tiny");
    expect_error(
        &strs(&gen(&m, &["--gen-length", "30", "--block-length", "8"])),
        &["gen_length = 30", "block_length = 8"],
    );
    expect_error(
        &strs(&gen(
            &m,
            &["--gen-length", "32", "--block-length", "8", "--steps", "6"],
        )),
        &["steps = 6", "4"],
    );
    expect_error(
        &strs(&gen(&m, &["--gen-length", "512", "--block-length", "8"])),
        &["512", "maximum sequence length"],
    );
    expect_error(
        &strs(&gen(&m, &["--gen-length", "0"])),
        &["--gen-length", "'0'", "1..="],
    );
}

#[test]
fn bad_prompts() {
    expect_error(&["generate", "--prompt", "  "], &["empty"]);
    expect_error(
        &["generate", "--prompt-ids", "51,9999"],
        &["9999", "vocabulary", "0..64"],
    );
    expect_error(&["generate", "--prompt-ids", "51,x"], &["'x'", "token id"]);
}

/// `--prompt-file`: an unreadable file and one over the size cap (the tiny model's max_seq_len
/// 512 x its longest token's 15 bytes = 7680, as the server's cap) are errors naming the path.
#[test]
fn bad_prompt_files() {
    let missing =
        std::env::temp_dir().join(format!("fastdllm-no-such-dir-{}/p.txt", std::process::id()));
    let missing = missing.display().to_string();
    expect_error(
        &["generate", "--prompt-file", &missing],
        &[&missing, "cannot read"],
    );
    let dir = broken_copy("prompt-file");
    let big = dir.join("big.txt");
    std::fs::write(&big, "a".repeat(512 * 16 + 1)).unwrap();
    let big = big.display().to_string();
    expect_error(
        &["generate", "--prompt-file", &big],
        &[&big, "larger than 7680 bytes"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_knobs() {
    expect_error(
        &["generate", "--prompt", "4+9=", "--threshold", "1.5"],
        &["threshold", "1.5", "(0, 1]"],
    );
    expect_error(
        &["generate", "--prompt", "4+9=", "--factor", "0"],
        &["factor"],
    );
    expect_error(
        &[
            "generate",
            "--prompt",
            "4+9=",
            "--cache",
            "dual",
            "--refresh-every",
            "0",
        ],
        // Bounded at the flag: clap names the flag, the value and the range.
        &["--refresh-every", "'0'", "1..="],
    );
    expect_error(
        &["generate", "--prompt", "4+9=", "--top-p", "0.9"],
        &["Dream"],
    );
    expect_error(
        &["generate", "--prompt", "4+9=", "--temperature=-1"],
        &["temperature"],
    );
    let dream = fixture("dream-tiny");
    let d = dream.display().to_string();
    expect_error(
        &[
            "generate",
            "--model",
            &d,
            "--prompt",
            "4+9=",
            "--dream-original",
            "--gen-length",
            "16",
            "--block-length",
            "16",
            "--cache",
            "dual",
        ],
        &["dual", "original sampler"],
    );
}

#[test]
fn unknown_flags_and_values() {
    let Run { code, stderr, .. } = fastdllm(["generate", "--prompt", "4+9=", "--cache", "fancy"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("invalid value 'fancy'") && stderr.contains("none, prefix, dual"),
        "{stderr}"
    );
    let Run { code, stderr, .. } = fastdllm(["generate", "--prompt", "4+9=", "--bogus"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--bogus"), "{stderr}");
    let Run { code, stderr, .. } = fastdllm(["generate", "--prompt", "4+9=", "--device", "tpu"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("'tpu'"), "{stderr}");
}

#[test]
fn bad_case_files() {
    expect_error(
        &["conform", "--cases", "/nonexistent/cases.jsonl"],
        &["/nonexistent/cases.jsonl"],
    );
    let f = std::env::temp_dir().join(format!("fastdllm-bad-cases-{}.jsonl", std::process::id()));
    std::fs::write(&f, "{\"id\": \"x\"}\n").unwrap();
    expect_error(
        &["conform", "--cases", &f.display().to_string()],
        &[":1", "golden case"],
    );
}

#[test]
fn conform_fails_on_a_wrong_golden() {
    // A golden whose expected ids we corrupt must fail with exit 1 and name the first difference.
    let src = fastdllm_conformance::paths::goldens_dir().join("llada-tiny.jsonl");
    let line = std::fs::read_to_string(src)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let mut case: serde_json::Value = serde_json::from_str(&line).unwrap();
    case["generated_ids"][0] = serde_json::json!(7);
    let f = std::env::temp_dir().join(format!(
        "fastdllm-wrong-golden-{}.jsonl",
        std::process::id()
    ));
    std::fs::write(&f, format!("{case}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args(["conform", "--cases", &f.display().to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("answer position 0") && stdout.trim_end().ends_with("0 passed, 1 failed"),
        "{stdout}"
    );
}

/// `generate > /dev/full` and `generate 2> /dev/full`: the failed write is exit 2 with one
/// `error:` line naming the stream (on stderr when only stdout is full), never a panic.
#[test]
fn a_full_stdout_or_stderr_is_exit_2_not_a_panic() {
    let args = [
        "generate",
        "--prompt",
        "hi",
        "--gen-length",
        "8",
        "--block-length",
        "8",
    ];
    let full = || std::fs::File::create("/dev/full").expect("/dev/full");
    let out = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args(args)
        .stdout(full())
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or("");
    assert!(line.contains("cannot write to standard output"), "{stderr}");
    for json in [false, true] {
        let out = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
            .args(args)
            .args(json.then_some("--json"))
            .stderr(full())
            .output()
            .expect("binary runs");
        assert_eq!(
            out.status.code(),
            Some(2),
            "--json {json}: {:?}",
            out.status
        );
    }
}

/// Every file a user names by path is refused before it is opened when it is a FIFO (opening
/// one blocks until a writer comes) or another non-regular file: the prompt, task, chat
/// template and API-key files. One line naming the path, exit 2, no hang.
#[cfg(unix)]
#[test]
fn fifos_are_refused_wherever_a_file_is_read() {
    let dir = broken_copy("fifos");
    let fifo = dir.join("input.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let fifo = fifo.display().to_string();
    for args in [
        vec!["generate", "--prompt-file", &fifo],
        vec!["generate", "--prompt", "hi", "--chat-template", &fifo],
        vec!["eval", "--tasks", &fifo],
        vec!["serve", "--port", "0", "--api-key-file", &fifo],
    ] {
        expect_error(&args, &[&fifo, "not a regular file", "FIFO"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! `fastdllm generate` finishes answers as the engine does: the row stops decoding once its
//! answer is final (fewer forwards than the reference's whole canvas, same answer), `--stop`
//! ends it before a string, `--max-tokens` caps it.

use std::process::Command;

use serde_json::Value;

/// Runs `generate --json` on the bundled tiny LLaDA with `args`; the printed object.
fn generate(args: &[&str]) -> Value {
    generate_with_env(&[], args)
}

/// [`generate`] with the environment variables `env` set.
fn generate_with_env(env: &[(&str, &str)], args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args(["generate", "--prompt", "copy 3dbk......=", "--json"])
        .args(args)
        .envs(env.iter().copied())
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

/// `--dtype bf16` on every CPU GEMM path this CPU has (`FASTDLLM_CPU_GEMM`): the widening paths
/// (`avx2`, `avx512`: candle's bits) and the AVX-512 BF16 dot products (`avx512bf16`, where the
/// activations are bf16 already, so only the summation order differs) give the same answer ids
/// and NFE without and with the dual cache; an unknown path is a one-line error naming the
/// variable, at load (a bf16 weight's layout depends on the path).
#[test]
#[cfg(target_arch = "x86_64")]
fn bf16_weights_give_the_same_answer_on_every_cpu_gemm_path() {
    use std::arch::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma") && has!("f16c")) {
        eprintln!("no AVX2 + FMA + F16C: nothing is packed, skipped");
        return;
    }
    let avx512 = has!("avx512f");
    let bf16_dot = avx512 && has!("avx512bw") && has!("avx512vl") && has!("avx512bf16");
    let paths: Vec<&str> = [("avx2", true), ("avx512", avx512), ("avx512bf16", bf16_dot)]
        .into_iter()
        .filter_map(|(path, present)| present.then_some(path))
        .collect();
    eprintln!("paths on this CPU: {paths:?}");
    for cache in ["none", "dual"] {
        let args = ["--dtype", "bf16", "--finish", "canvas", "--cache", cache];
        let want = generate_with_env(&[("FASTDLLM_CPU_GEMM", "avx2")], &args);
        for path in &paths[1..] {
            let got = generate_with_env(&[("FASTDLLM_CPU_GEMM", path)], &args);
            for key in ["answer_ids", "nfe", "text"] {
                assert_eq!(got[key], want[key], "{path}, cache {cache}: {key}");
            }
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args([
            "generate",
            "--prompt",
            "copy 3dbk......=",
            "--dtype",
            "bf16",
        ])
        .env("FASTDLLM_CPU_GEMM", "avx9")
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error"))
        .expect("an error line");
    assert!(
        line.contains("FASTDLLM_CPU_GEMM=avx9") && line.contains("avx512bf16"),
        "{line}"
    );
}

//! `fastdllm eval`: task-file parsing (plain and GSM8K), answer extraction, settings parsing, a
//! small end-to-end evaluation on the bundled tiny LLaDA, and the errors of bad inputs (through
//! the library and through the binary).

use std::path::PathBuf;
use std::process::Command;

use fastdllm_benches::eval::{
    base_settings, extract_gsm8k_prediction, gsm8k_final_answer, last_number, parse_settings,
    parse_task_line, parse_tasks, read_tasks, run_eval, SettingSpec, TaskFormat,
};
use fastdllm_cache::CacheMode;
use fastdllm_conformance::paths::bundled_model;
use fastdllm_core::ModelFamily;
use fastdllm_engine::{AnswerLimits, Finish, GenerationSettings};
use fastdllm_sampler::Unmask;

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(rel)
}

fn tmp_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("eval-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn parses_plain_tasks() {
    let t = parse_task_line(
        r#"{"prompt": "copy 3dbk......=", "answer": "3dbk", "kind": "copy"}"#,
        3,
    )
    .unwrap();
    assert_eq!(t.prompt, "copy 3dbk......=");
    assert_eq!(t.answer, "3dbk");
    assert_eq!(t.format, TaskFormat::Plain);
    assert_eq!(t.line, 3);
    assert!(t.is_correct("3dbk"));
    assert!(t.is_correct(" 3dbk\n"));
    assert!(!t.is_correct("3dbkk"));
    assert!(!t.is_correct("3DBK"));
    // A numeric answer is accepted as its text.
    let n = parse_task_line(r#"{"prompt": "4+9=", "answer": 13}"#, 1).unwrap();
    assert_eq!(n.answer, "13");
    assert!(n.is_correct("13"));
}

#[test]
fn parses_gsm8k_tasks() {
    let t = parse_task_line(
        r#"{"question": "How many?", "answer": "1,000 + 234 = <<1000+234=1234>>1,234\n#### 1,234"}"#,
        7,
    )
    .unwrap();
    assert_eq!(t.format, TaskFormat::Gsm8k);
    assert_eq!(t.prompt, "How many?");
    assert_eq!(t.answer, "1234");
    assert!(t.is_correct("The total is 1,234."));
    assert!(t.is_correct("so 1234 apples\n#### 1,234"));
    assert!(t.is_correct("#### 1234.0"));
    assert!(!t.is_correct("1,234 then 12"));
    assert!(!t.is_correct("no number here"));
    let err = parse_task_line(r#"{"question": "q", "answer": "42"}"#, 1).unwrap_err();
    assert!(format!("{err:#}").contains("####"), "{err:#}");
}

#[test]
fn extracts_answers() {
    assert_eq!(gsm8k_final_answer("a\n#### 1,234").as_deref(), Some("1234"));
    assert_eq!(
        gsm8k_final_answer("#### 42\n\nQuestion: next").as_deref(),
        Some("42")
    );
    assert_eq!(gsm8k_final_answer("####   -7 ").as_deref(), Some("-7"));
    assert_eq!(gsm8k_final_answer("no marker"), None);
    assert_eq!(gsm8k_final_answer("#### "), None);
    assert_eq!(
        last_number("3 + 4 = 7, then 12,500 and 0.5.").as_deref(),
        Some("0.5")
    );
    assert_eq!(last_number("it is 12,500.").as_deref(), Some("12500"));
    assert_eq!(last_number("temp -3 degrees").as_deref(), Some("-3"));
    assert_eq!(last_number("a1b22c333").as_deref(), Some("333"));
    assert_eq!(last_number("none"), None);
    assert_eq!(
        extract_gsm8k_prediction("x = 5\n#### 1,234 apples").as_deref(),
        Some("1234")
    );
    assert_eq!(
        extract_gsm8k_prediction("x = 5, so 6").as_deref(),
        Some("6")
    );
}

#[test]
fn parses_settings() {
    let s = parse_settings("none/fixed, dual/threshold=0.9,prefix/factor=1,none/fixed/steps=16")
        .unwrap();
    assert_eq!(s.len(), 4);
    assert_eq!(
        (s[0].cache.mode, s[0].unmask, s[0].steps),
        (CacheMode::Off, Unmask::Fixed, None)
    );
    assert_eq!(s[1].cache.mode, CacheMode::Dual);
    assert_eq!(s[1].unmask, Unmask::Threshold { threshold: 0.9 });
    assert_eq!(s[2].unmask, Unmask::Factor { factor: 1.0 });
    assert_eq!(s[3].steps, Some(16));
    for bad in [
        "bogus/fixed",
        "none/sometimes",
        "none",
        "none/threshold=2",
        "none/fixed/steps=x",
        "none/fixed/steps=4/x",
    ] {
        let err = bad.parse::<SettingSpec>().unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown setting"),
            "{bad}: {err:#}"
        );
    }
    assert!(parse_settings(" , ").is_err());
    // Dream's fixed schedule is its timestep schedule; steps override the base.
    let base = base_settings(32, 8);
    let d = s[3].resolve(&base, ModelFamily::Dream).unwrap();
    assert_eq!(d.unmask, Unmask::DreamTimesteps { eps: 1e-3 });
    assert_eq!(d.decode.steps, 16);
    assert_eq!(
        s[0].resolve(&base, ModelFamily::Llada).unwrap().unmask,
        Unmask::Fixed
    );
    // steps must fit the blocks (32 / 8 = 4 blocks).
    let odd: SettingSpec = "none/fixed/steps=6".parse().unwrap();
    assert!(odd.resolve(&base, ModelFamily::Llada).is_err());
}

#[test]
fn reports_file_and_line_of_bad_input() {
    let err = read_tasks(&repo_file("tasks/does-not-exist.jsonl")).unwrap_err();
    assert!(
        format!("{err:#}").contains("does-not-exist.jsonl"),
        "{err:#}"
    );
    let text =
        "{\"prompt\": \"4+9=\", \"answer\": \"13\"}\n\n{\"prompt\": \"1+1=\", \"answer\": \n";
    let err = parse_tasks(text, "t.jsonl").unwrap_err();
    assert!(format!("{err:#}").contains("t.jsonl:3"), "{err:#}");
    let err = parse_tasks("{\"answer\": \"1\"}\n", "t.jsonl").unwrap_err();
    assert!(
        format!("{err:#}").contains("t.jsonl:1") && format!("{err:#}").contains("prompt"),
        "{err:#}"
    );
    let err = parse_tasks("[1, 2]\n", "t.jsonl").unwrap_err();
    assert!(format!("{err:#}").contains("JSON object"), "{err:#}");
    assert!(parse_tasks("\n\n", "t.jsonl").is_err());
}

#[test]
fn shipped_task_files_parse() {
    let tiny = read_tasks(&repo_file("tasks/tiny-arith.jsonl")).unwrap();
    assert!((100..=200).contains(&tiny.len()), "{}", tiny.len());
    assert!(tiny.iter().all(|t| t.format == TaskFormat::Plain));
    let gsm = read_tasks(&repo_file("tasks/gsm8k-sample.jsonl")).unwrap();
    assert!(gsm.iter().all(|t| t.format == TaskFormat::Gsm8k));
    assert_eq!(gsm[1].answer, "2384");
}

/// Eight tasks of tasks/tiny-arith.jsonl (two of each kind) that llada-tiny answers correctly
/// under every setting of the README table.
const EIGHT: &str = r#"{"prompt": "copy ysp8......=", "answer": "ysp8"}
{"prompt": "rot cmdbqxuwa.=", "answer": "dnecryvxb"}
{"prompt": "inc 32772.....=", "answer": "43883"}
{"prompt": "rot iucatdszhu=", "answer": "jvdbuetaiv"}
{"prompt": "copy fe........=", "answer": "fe"}
{"prompt": "inc 30........=", "answer": "41"}
{"prompt": "3+8=", "answer": "11"}
{"prompt": "9+9=", "answer": "18"}
"#;

#[test]
fn tiny_end_to_end() {
    let tasks = parse_tasks(EIGHT, "eight").unwrap();
    // The reference's accounting: every canvas position decoded.
    let mut base = base_settings(32, 8);
    base.limits.finish = Finish::Canvas;
    let reports = run_eval(
        &bundled_model("llada-tiny"),
        &tasks,
        "none/fixed,dual/threshold=0.9",
        &base,
        true,
        3,
    )
    .unwrap();
    assert_eq!(reports.len(), 2);
    for r in &reports {
        let wrong: Vec<_> = r.outcomes.iter().filter(|o| !o.correct).collect();
        assert_eq!(r.accuracy, 1.0, "{}: {wrong:?}", r.label);
        assert_eq!(r.tasks, 8);
        assert!(r.tokens_per_s > 0.0);
    }
    // Fixed schedule, steps = gen_length: one token per forward, 32 forwards per prompt.
    assert_eq!(reports[0].label, "none/fixed steps=32");
    assert_eq!(reports[0].mean_nfe, 32.0);
    assert_eq!(reports[0].tokens_per_forward, 1.0);
    // Threshold decoding commits several tokens per forward.
    assert!(
        reports[1].tokens_per_forward > 1.5,
        "{}",
        reports[1].tokens_per_forward
    );
    assert!(reports[1].mean_nfe < 32.0);
    // Batching does not change outputs or NFE.
    let solo = run_eval(
        &bundled_model("llada-tiny"),
        &tasks,
        "dual/threshold=0.9",
        &base,
        true,
        1,
    )
    .unwrap();
    assert_eq!(solo[0].outcomes, reports[1].outcomes);
    // The engine's default: each row stops once its answer is final. Same answers, fewer
    // forwards (the answers here are a few tokens of a 32-token canvas).
    let early = run_eval(
        &bundled_model("llada-tiny"),
        &tasks,
        "none/fixed,dual/threshold=0.9",
        &base_settings(32, 8),
        true,
        3,
    )
    .unwrap();
    for (e, full) in early.iter().zip(&reports) {
        assert_eq!(e.accuracy, 1.0, "{}", e.label);
        let answers = |r: &fastdllm_benches::eval::SettingReport| {
            r.outcomes
                .iter()
                .map(|o| o.output.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(answers(e), answers(full), "{}", e.label);
        assert!(
            e.mean_nfe < full.mean_nfe,
            "{}: {} vs {}",
            e.label,
            e.mean_nfe,
            full.mean_nfe
        );
    }
}

fn fastdllm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fastdllm"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn binary_errors_are_clear() {
    let out = fastdllm(&["eval", "--tasks", "/nonexistent/tasks.jsonl"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read task file /nonexistent/tasks.jsonl"),
        "{err}"
    );

    let bad = tmp_file(
        "bad.jsonl",
        "{\"prompt\": \"4+9=\", \"answer\": \"13\"}\nnot json\n",
    );
    let out = fastdllm(&["eval", "--tasks", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl:2") && err.contains("malformed JSON"),
        "{err}"
    );

    let good = tmp_file("good.jsonl", "{\"prompt\": \"4+9=\", \"answer\": \"13\"}\n");
    let out = fastdllm(&[
        "eval",
        "--tasks",
        good.to_str().unwrap(),
        "--settings",
        "none/fixed,dual/sometimes",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown setting 'dual/sometimes'"), "{err}");
}

#[test]
fn binary_prints_table_and_json() {
    let good = tmp_file("two.jsonl", "{\"prompt\": \"9+9=\", \"answer\": \"18\"}\n{\"prompt\": \"copy ysp8......=\", \"answer\": \"ysp8\"}\n");
    let out = fastdllm(&[
        "eval",
        "--tasks",
        good.to_str().unwrap(),
        "--settings",
        "none/fixed,prefix/factor=1",
        "--raw",
        "--finish",
        "canvas",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| none/fixed steps=32 | 1.000 (2/2) | 32.00 | 1.00 |"),
        "{table}"
    );
    assert!(table.contains("prefix/factor=1"), "{table}");
    let out = fastdllm(&[
        "eval",
        "--tasks",
        good.to_str().unwrap(),
        "--settings",
        "dual/threshold=0.9",
        "--json",
        "--limit",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["setting"], "dual/threshold=0.9");
    assert_eq!(lines[0]["tasks"], 1);
    assert_eq!(lines[0]["accuracy"], 1.0);
}

#[test]
fn answers_lists_and_kinds() {
    let t = parse_task_line(
        r#"{"prompt": "pair 24=", "answers": ["oj", "qn", "bn"], "kind": "pair"}"#,
        1,
    )
    .unwrap();
    assert_eq!(t.answers, vec!["oj", "qn", "bn"]);
    assert_eq!(t.answer, "oj");
    assert_eq!(t.kind.as_deref(), Some("pair"));
    assert!(t.is_correct("qn") && t.is_correct(" bn ") && !t.is_correct("on"));
    // `answer` still works, alone or next to `answers`.
    let t = parse_task_line(r#"{"prompt": "p", "answer": "a", "answers": ["b"]}"#, 1).unwrap();
    assert_eq!(t.answers, vec!["a", "b"]);
    assert!(t.is_correct("a") && t.is_correct("b"));
    for (bad, why) in [
        (
            r#"{"prompt": "p", "answers": []}"#,
            "\"answers\" is an empty list",
        ),
        (
            r#"{"prompt": "p", "answers": "a"}"#,
            "\"answers\" must be a list of strings",
        ),
        (
            r#"{"prompt": "p", "answers": ["a", 3]}"#,
            "\"answers\"[1] must be a string",
        ),
        (r#"{"prompt": "p"}"#, "missing field \"answer\""),
        (
            r#"{"question": "q", "answers": ["1"]}"#,
            "applies to plain tasks",
        ),
    ] {
        let err = format!("{:#}", parse_task_line(bad, 1).unwrap_err());
        assert!(err.contains(why), "{bad}: {err}");
    }
    // Policy names are cache names.
    let s = parse_settings("dual+commits=2/threshold=0.9").unwrap();
    assert_eq!(s[0].cache.label(), "dual+commits=2");
    let err = format!(
        "{:#}",
        "dual+often=2/fixed".parse::<SettingSpec>().unwrap_err()
    );
    assert!(
        err.contains("unknown key") && err.contains("often"),
        "{err}"
    );
}

/// The choice fixture: a subset of the Figure-5 analog reproduces the official code's numbers of
/// fixtures/llada-tiny-choice/RESULTS.md (gen 32, block 8, 120 prompts): accuracy, mean NFE and
/// the per-kind counts.
#[test]
fn choice_figure5_subset_matches_results_md() {
    let tasks = read_tasks(&repo_file("tasks/tiny-choice.jsonl")).unwrap();
    assert_eq!(tasks.len(), 120);
    let reports = run_eval(
        &bundled_model("llada-tiny-choice"),
        &tasks,
        "none/threshold=0.9,dual/threshold=0.9,prefix/factor=1",
        // RESULTS.md counts the reference's forwards: the whole canvas.
        &GenerationSettings {
            limits: AnswerLimits {
                finish: Finish::Canvas,
                ..AnswerLimits::default()
            },
            ..base_settings(32, 8)
        },
        true,
        8,
    )
    .unwrap();
    // (setting, valid of 120, mean NFE to 2 decimals, per kind (kind, valid) as RESULTS.md).
    type Row<'a> = (&'a str, usize, &'a str, &'a [(&'a str, usize)]);
    let want: [Row; 3] = [
        (
            "none/threshold=0.9",
            117,
            "6.37",
            &[
                ("pair", 20),
                ("word", 20),
                ("hole", 22),
                ("tag", 25),
                ("copy", 8),
            ],
        ),
        (
            "dual/threshold=0.9",
            110,
            "6.49",
            &[
                ("pair", 20),
                ("word", 19),
                ("hole", 16),
                ("tag", 25),
                ("add", 6),
            ],
        ),
        (
            "prefix/factor=1",
            57,
            "5.05",
            &[
                ("pair", 8),
                ("word", 16),
                ("hole", 0),
                ("tag", 3),
                ("rot", 8),
            ],
        ),
    ];
    for (r, (label, valid, nfe, kinds)) in reports.iter().zip(want) {
        assert_eq!(r.label, label);
        assert_eq!(r.correct, valid, "{label}");
        assert_eq!(format!("{:.2}", r.mean_nfe), nfe, "{label}");
        for (kind, n) in kinds {
            let k = r.per_kind.iter().find(|k| k.kind == *kind).unwrap();
            assert_eq!(k.correct, *n, "{label} {kind}");
        }
    }
}

/// `fastdllm eval --seed S` seeds every task with S, as a server seeds a request's first choice
/// with the request's seed: at a temperature > 0 each task's answer equals a solo run of its
/// prompt with seed S (what a client harness sending `seed: S` per task gets), whatever the
/// batch.
#[test]
fn eval_seeds_every_task_as_a_request() {
    let tasks = parse_tasks(EIGHT, "eight").unwrap();
    let mut base = base_settings(32, 8);
    base.proposer.temperature = 3.0;
    base.seed = 7;
    let model = bundled_model("llada-tiny");
    let loaded =
        fastdllm_models::load_model(&model, &candle_core::Device::Cpu, candle_core::DType::F32)
            .unwrap();
    let prompts = fastdllm_benches::eval::encode_prompts(&loaded, &tasks, true).unwrap();
    for batch in [1, 3] {
        let report = run_eval(&model, &tasks, "none/fixed", &base, true, batch).unwrap();
        let s = SettingSpec::resolve(
            &parse_settings("none/fixed").unwrap()[0],
            &base,
            ModelFamily::Llada,
        )
        .unwrap();
        for (i, (o, p)) in report[0].outcomes.iter().zip(&prompts).enumerate() {
            let solo = fastdllm_engine::run_rows(
                loaded.model.as_ref(),
                Some(&loaded.tokenizer),
                std::slice::from_ref(p),
                &[s.unmask],
                &[7],
                &s,
                &Default::default(),
                &mut |_, _| {},
            )
            .unwrap();
            let text = solo.answers[0].text.clone().unwrap_or_default();
            assert_eq!(o.output.trim(), text.trim(), "task {i}, batch {batch}");
        }
    }
}

//! Chat templates rendered with minijinja equal transformers' `apply_chat_template`
//! (conformance/tests/data/chat_templates/expected.json, written by
//! scripts/chat_template_expected.py), and a model directory's template is found where
//! transformers finds it.

mod common;

use common::TempDir;
use fastdllm_models::chat_template::{read_dir_template, TemplateSource};
use fastdllm_models::{load_model, ChatTemplate, Error, JinjaTemplate, Message, TemplateTokens};
use serde::Deserialize;
use std::path::{Path, PathBuf};

fn data_dir() -> PathBuf {
    fastdllm_conformance::paths::test_data_dir().join("chat_templates")
}

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    template: String,
    bos_token: String,
    eos_token: String,
    conversation: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    expected: Option<String>,
    error: Option<String>,
}

fn template(name: &str, bos: &str, eos: &str) -> JinjaTemplate {
    JinjaTemplate::from_file(
        &data_dir().join(name),
        TemplateTokens {
            bos_token: Some(bos.to_string()),
            eos_token: Some(eos.to_string()),
            prepend_bos: false,
        },
    )
    .unwrap()
}

#[test]
fn renders_equal_transformers() {
    let text = std::fs::read_to_string(data_dir().join("expected.json")).unwrap();
    let expected: Expected = serde_json::from_str(&text).unwrap();
    assert!(expected.cases.len() >= 40, "{} cases", expected.cases.len());
    let (mut rendered, mut raised) = (0, 0);
    for case in &expected.cases {
        let t = template(&case.template, &case.bos_token, &case.eos_token);
        let got = t.render(&case.messages, case.add_generation_prompt);
        let what = format!(
            "{} / {} / add_generation_prompt={}",
            case.template, case.conversation, case.add_generation_prompt
        );
        match (&case.expected, &case.error) {
            (Some(want), None) => {
                assert_eq!(
                    got.as_deref().map_err(|e| e.to_string()),
                    Ok(want.as_str()),
                    "{what}"
                );
                rendered += 1;
            }
            (None, Some(message)) => {
                let err = got.expect_err(&what).to_string();
                assert!(
                    err.contains(message.as_str()) && err.contains(&case.template),
                    "{what}: {err}"
                );
                raised += 1;
            }
            _ => panic!("{what}: a case has either `expected` or `error`"),
        }
    }
    assert!(
        rendered >= 30 && raised >= 4,
        "{rendered} rendered, {raised} raised"
    );
}

#[test]
fn llada_style_template_puts_bos_before_the_first_message_only() {
    let t = template("llada-8b-instruct.jinja", "<|startoftext|>", "<|eot_id|>");
    let text = t
        .render(
            &[
                Message::new("system", " Be brief. "),
                Message::user("hi"),
                Message::new("assistant", "hello"),
                Message::user("again\n"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(text.matches("<|startoftext|>").count(), 1);
    assert!(text.starts_with(
        "<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    ));
    assert!(text.ends_with("again<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"));
}

#[test]
fn strftime_now_formats_the_current_date() {
    let t = JinjaTemplate::new(
        "{{ strftime_now('%Y-%m-%d') }}",
        "inline",
        TemplateTokens::default(),
    )
    .unwrap();
    let text = t.render(&[], false).unwrap();
    let parts: Vec<&str> = text.split('-').collect();
    assert_eq!(parts.len(), 3, "{text}");
    assert!(
        parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())),
        "{text}"
    );
    assert_eq!(parts[0].len(), 4, "{text}");
}

#[test]
fn bad_template_is_an_error_naming_the_file() {
    let dir = TempDir::new("bad-template");
    let path = dir.path().join("broken.jinja");
    std::fs::write(&path, "{% for m in messages %}{{ m.content }").unwrap();
    let err = JinjaTemplate::from_file(&path, TemplateTokens::default()).unwrap_err();
    assert!(matches!(err, Error::ChatTemplate { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("broken.jinja") && text.contains("syntax"),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
}

/// A chat template is a program: a loop without end stops at the instruction budget, a text
/// without end at the output cap, each with one line naming the template; a template path
/// that is not a regular file (a FIFO would block the reader forever) is refused before it is
/// opened.
#[test]
fn templates_are_bounded_and_must_be_files() {
    use fastdllm_models::chat_template::{MAX_RENDERED_BYTES, RENDER_FUEL};
    let render = |source: &str| {
        JinjaTemplate::new(source, "t.jinja", TemplateTokens::default())
            .unwrap()
            .render(&[Message::user("hi")], true)
    };
    let loops =
        render("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}")
            .unwrap_err()
            .to_string();
    assert!(
        loops.contains("t.jinja") && loops.contains(&RENDER_FUEL.to_string()),
        "{loops}"
    );
    let huge = render(r#"{% for i in range(100) %}{{ "x" * 1000000 }}{% endfor %}"#)
        .unwrap_err()
        .to_string();
    assert!(huge.contains(&MAX_RENDERED_BYTES.to_string()), "{huge}");
    // A long but legitimate conversation renders.
    let history: Vec<Message> = (0..2000)
        .map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "some words"))
        .collect();
    let t = JinjaTemplate::new(
        "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</s>{% endfor %}",
        "t.jinja",
        TemplateTokens::default(),
    )
    .unwrap();
    assert!(t.render(&history, true).unwrap().len() > 2000 * 10);

    let dir = TempDir::new("template-kinds");
    let err = JinjaTemplate::from_file(dir.path(), TemplateTokens::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    #[cfg(unix)]
    {
        let fifo = dir.file("fifo.jinja");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let err = JinjaTemplate::from_file(&fifo, TemplateTokens::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("fifo.jinja") && err.contains("not a regular file"),
                "{err}"
            );
        }
    }
}

/// A copy of the tiny LLaDA fixture with `files` written into it.
fn model_dir(tag: &str, files: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::copy_of("llada-tiny", tag);
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn loaded_template(dir: &Path) -> ChatTemplate {
    load_model(dir, &candle_core::Device::Cpu, candle_core::DType::F32)
        .unwrap()
        .info
        .chat_template
}

#[test]
fn directory_template_from_tokenizer_config_string_list_or_jinja_file() {
    let source = std::fs::read_to_string(data_dir().join("llada-8b-instruct.jinja")).unwrap();
    let config = serde_json::json!({
        "bos_token": "<|startoftext|>",
        "eos_token": {"content": "<|eot_id|>", "special": true},
        "chat_template": source,
    });
    let dir = model_dir(
        "tc-string",
        &[("tokenizer_config.json", &config.to_string())],
    );
    let t = loaded_template(dir.path());
    let ChatTemplate::Jinja(j) = &t else {
        panic!("{t:?}")
    };
    assert!(
        j.origin()
            .ends_with("tokenizer_config.json (chat_template)"),
        "{}",
        j.origin()
    );
    assert_eq!(
        t.apply(" hi ").unwrap(),
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert!(!t.add_special_tokens());

    let named = serde_json::json!({
        "bos_token": "<s>",
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"},
        ],
    });
    let dir = model_dir("tc-named", &[("tokenizer_config.json", &named.to_string())]);
    assert_eq!(
        loaded_template(dir.path()).apply("x").unwrap(),
        "<s>[user]x"
    );

    let no_default = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "T"}]});
    let dir = model_dir(
        "tc-no-default",
        &[("tokenizer_config.json", &no_default.to_string())],
    );
    let err = load_model(
        dir.path(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("\"default\""),
        "{err}"
    );

    // chat_template.jinja wins over tokenizer_config.json (transformers >= 4.43 saves it there).
    let dir = model_dir(
        "tc-jinja-file",
        &[
            ("tokenizer_config.json", &named.to_string()),
            ("chat_template.jinja", "J:{{ messages[0].content }}"),
        ],
    );
    assert_eq!(loaded_template(dir.path()).apply("x").unwrap(), "J:x");

    // A Base checkpoint: tokenizer_config.json without chat_template.
    let dir = model_dir(
        "tc-base",
        &[("tokenizer_config.json", "{\"bos_token\": \"<s>\"}")],
    );
    assert_eq!(loaded_template(dir.path()), ChatTemplate::None);
    assert!(matches!(
        read_dir_template(dir.path()).unwrap().0,
        TemplateSource::Declined
    ));

    // A template that does not compile names the file.
    let dir = model_dir("tc-broken", &[("chat_template.jinja", "{% if %}")]);
    let err = load_model(
        dir.path(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("chat_template.jinja"), "{err}");
}

#[test]
fn builtin_fallbacks_render_multi_turn() {
    let conv = [
        Message::new("system", "S"),
        Message::user(" u1 "),
        Message::new("assistant", "a1"),
        Message::user("u2"),
    ];
    assert_eq!(
        ChatTemplate::ChatMl.render(&conv).unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n u1 <|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\n"
    );
    // Equal to the checkpoints' own templates (rendered by minijinja, checked against
    // transformers above) on the same conversation.
    let qwen = template("qwen2.5-chatml.jinja", "<|endoftext|>", "<|im_end|>");
    assert_eq!(
        ChatTemplate::ChatMl.render(&conv[1..]).unwrap(),
        qwen.render(&conv[1..], true).unwrap()
    );
    let llada = template("llada-8b-instruct.jinja", "<|startoftext|>", "<|eot_id|>");
    assert_eq!(
        ChatTemplate::Llama3.render(&conv).unwrap(),
        llada.render(&conv, true).unwrap()
    );
}

//! The engine finishes answers: a row that leaves once its answer is final (`Finish::Answer`)
//! has the same answer as the reference's whole canvas (`Finish::Canvas`) in fewer forwards,
//! for every cache mode and unmasking rule, alone and batched; stop strings and `max_tokens`
//! end the answer where OpenAI's API says; streamed text joins to the final answer.

use std::path::Path;

use candle_core::{DType, Device};
use fastdllm_cache::{CacheMode, CacheSettings};
use fastdllm_core::{DecodeConfig, GenerateOptions};
use fastdllm_engine::{
    run_rows, AnswerLimits, Batch, Finish, FinishReason, GenerationSettings, RowEvent, RowEvents,
};
use fastdllm_models::LoadedModel;
use fastdllm_sampler::{ProposerConfig, Unmask};

fn load(name: &str) -> LoadedModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name);
    fastdllm_models::load_model(&dir, &Device::Cpu, DType::F32).unwrap()
}

fn settings(
    cache: CacheMode,
    unmask: Unmask,
    gen_length: usize,
    limits: AnswerLimits,
) -> GenerationSettings {
    GenerationSettings {
        decode: DecodeConfig {
            gen_length,
            block_length: 8,
            steps: gen_length,
            force_block_start: None,
            max_steps_per_block: None,
        },
        cache: CacheSettings::new(cache),
        unmask,
        proposer: ProposerConfig::default(),
        seed: 0,
        limits,
    }
}

fn finish(f: Finish) -> AnswerLimits {
    AnswerLimits {
        finish: f,
        ..AnswerLimits::default()
    }
}

const PROMPTS: [&str; 4] = [
    "copy 3dbk......=",
    "inc 370230....=",
    "4+9=",
    "rot bwpshrwb..=",
];

#[test]
fn early_finish_gives_the_canvas_answer_in_fewer_forwards() {
    for (model, rules) in [
        (
            "llada-tiny",
            vec![
                Unmask::Fixed,
                Unmask::Threshold { threshold: 0.9 },
                Unmask::Factor { factor: 1.0 },
            ],
        ),
        ("dream-tiny", vec![Unmask::Threshold { threshold: 0.9 }]),
    ] {
        let m = load(model);
        let prompts: Vec<Vec<u32>> = PROMPTS
            .iter()
            .map(|p| m.tokenizer.encode(p, true).unwrap())
            .collect();
        for cache in CacheMode::ALL {
            for &rule in &rules {
                let run = |f: Finish, prompts: &[Vec<u32>]| {
                    let s = settings(cache, rule, 64, finish(f));
                    let seeds: Vec<u64> = (0..prompts.len() as u64).collect();
                    run_rows(
                        m.model.as_ref(),
                        Some(&m.tokenizer),
                        prompts,
                        &vec![rule; prompts.len()],
                        &seeds,
                        &s,
                        &GenerateOptions::default(),
                        &mut |_, _| {},
                    )
                    .unwrap()
                };
                let label = format!("{model} {cache}/{}", rule.label());
                let canvas = run(Finish::Canvas, &prompts);
                let early = run(Finish::Answer, &prompts);
                assert_eq!(early.answers.len(), prompts.len());
                for (r, (e, c)) in early.answers.iter().zip(&canvas.answers).enumerate() {
                    assert_eq!(e.text, c.text, "{label} row {r}");
                    assert_eq!(e.token_ids, c.token_ids, "{label} row {r}");
                    assert_eq!(e.finish_reason, c.finish_reason, "{label} row {r}");
                    assert!(e.nfe <= c.nfe, "{label} row {r}: {} > {}", e.nfe, c.nfe);
                    // Committed positions are the canvas's.
                    let (eg, cg) = (&early.rows[r].generated, &canvas.rows[r].generated);
                    let mask = m.model.spec().mask_token_id;
                    assert!(
                        eg.iter().zip(cg).all(|(a, b)| a == b || *a == mask),
                        "{label} row {r}"
                    );
                }
                assert!(
                    early.nfe < canvas.nfe,
                    "{label}: {} vs {}",
                    early.nfe,
                    canvas.nfe
                );
                // A row alone finishes as it does in the batch.
                let solo = run(Finish::Answer, &prompts[1..2]);
                assert_eq!(solo.answers[0].text, early.answers[1].text, "{label}");
                assert_eq!(solo.rows[0], early.rows[1], "{label}");
            }
        }
    }
}

#[test]
fn stop_strings_and_max_tokens_end_the_answer_and_the_row() {
    let m = load("llada-tiny");
    let prompt = m.tokenizer.encode("copy 3dbk......=", true).unwrap();
    let run = |limits: AnswerLimits, events: bool| {
        let s = settings(
            CacheMode::Dual,
            Unmask::Threshold { threshold: 0.9 },
            64,
            limits,
        );
        let mut text = String::new();
        let mut done = 0;
        let mut batch = Batch::new(
            m.model.as_ref(),
            Some(&m.tokenizer),
            &s,
            GenerateOptions::default(),
        )
        .unwrap();
        batch
            .admit(
                &prompt,
                &s,
                RowEvents {
                    text: events,
                    provisional: false,
                    logprobs: None,
                },
            )
            .unwrap();
        let mut out = Vec::new();
        while !batch.is_empty() {
            out.extend(
                batch
                    .run_block(&mut |_, ev| match ev {
                        RowEvent::Text(t) => text.push_str(&t),
                        RowEvent::Done(_) => done += 1,
                        _ => {}
                    })
                    .unwrap(),
            );
        }
        assert_eq!(done, 1, "exactly one Done");
        assert_eq!(out.len(), 1);
        let a = out.pop().unwrap().answer;
        if events {
            assert_eq!(
                Some(text),
                a.text.clone(),
                "streamed text joins to the answer"
            );
        }
        (a, batch.forwards())
    };
    let (whole, whole_nfe) = run(finish(Finish::Answer), true);
    assert_eq!(whole.text.as_deref(), Some("3dbk"));
    assert_eq!(whole.finish_reason, FinishReason::Stop);
    let (stopped, stopped_nfe) = run(
        AnswerLimits {
            stop: vec!["b".into()],
            ..AnswerLimits::default()
        },
        true,
    );
    assert_eq!(stopped.text.as_deref(), Some("3d"));
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    // OpenAI counts the stop sequence's tokens.
    assert_eq!(stopped.completion_tokens, 3);
    assert!(stopped_nfe <= whole_nfe);
    let (capped, _) = run(
        AnswerLimits {
            max_tokens: Some(2),
            ..AnswerLimits::default()
        },
        false,
    );
    assert_eq!(capped.text.as_deref(), Some("3d"));
    assert_eq!(capped.finish_reason, FinishReason::Length);
    assert_eq!(capped.completion_tokens, 2);
    // Without a tokenizer a stop string is refused at admission.
    let s = settings(
        CacheMode::Dual,
        Unmask::Fixed,
        64,
        AnswerLimits {
            stop: vec!["b".into()],
            ..AnswerLimits::default()
        },
    );
    let mut b = Batch::new(m.model.as_ref(), None, &s, GenerateOptions::default()).unwrap();
    let e = b.admit(&prompt, &s, RowEvents::default()).unwrap_err();
    assert!(e.to_string().contains("needs a tokenizer"), "{e}");
}

/// A row that asks for logprobs gets, per answer token, the log of the probability it was
/// committed with: for greedy LLaDA the `low_confidence` score is that probability, so each
/// logprob is `ln(confidence)` of the trace's commit; the alternatives are sorted, hold the
/// committed token first (greedy) and sum to at most 1. Every cache mode and a batch of two
/// (one row asking, one not); the answer equals the run without logprobs.
#[test]
fn logprobs_are_the_log_of_the_commit_confidence() {
    let m = load("llada-tiny");
    for (cache, unmask) in [
        (CacheMode::Off, Unmask::Fixed),
        (CacheMode::Dual, Unmask::Threshold { threshold: 0.9 }),
    ] {
        let s = settings(cache, unmask, 16, finish(Finish::Answer));
        let opts = GenerateOptions {
            trace: true,
            ..GenerateOptions::default()
        };
        let mut batch = Batch::new(m.model.as_ref(), Some(&m.tokenizer), &s, opts).unwrap();
        let prompts: Vec<Vec<u32>> = PROMPTS[..2]
            .iter()
            .map(|p| m.tokenizer.encode(p, true).unwrap())
            .collect();
        for (i, p) in prompts.iter().enumerate() {
            let events = RowEvents {
                logprobs: (i == 0).then_some(4),
                ..RowEvents::default()
            };
            batch.admit(p, &s, events).unwrap();
        }
        let mut out = Vec::new();
        while !batch.is_empty() {
            out.extend(batch.run_block(&mut |_, _| {}).unwrap());
        }
        out.sort_by_key(|r| r.id);
        let trace = batch.take_trace().unwrap();
        assert!(out[1].answer.logprobs.is_none());
        let a = &out[0].answer;
        let lps = a.logprobs.as_ref().expect("asked");
        assert_eq!(lps.len(), a.completion_tokens, "{a:?}");
        assert!(!lps.is_empty());
        // Row 0's commits: the trace's commits of batch row 0 (both rows start together).
        let mut conf = vec![None; 16];
        for step in &trace.steps {
            if let Some(c) = step.commits.first() {
                for c in c {
                    conf[c.answer_idx] = Some((c.token, c.confidence));
                }
            }
        }
        for (i, lp) in lps.iter().enumerate() {
            let (token, c) = conf[i].unwrap();
            assert_eq!(lp.token.id, token);
            assert_eq!(lp.token.id, a.token_ids[i]);
            assert!(
                (lp.token.logprob - c.ln()).abs() < 1e-12,
                "{i}: {} vs ln {c}",
                lp.token.logprob
            );
            assert_eq!(lp.top.len(), 4);
            assert_eq!(
                lp.top[0].id, lp.token.id,
                "greedy: the committed token is the likeliest"
            );
            assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
            let mass: f64 = lp.top.iter().map(|t| t.logprob.exp()).sum();
            assert!(mass <= 1.0 + 1e-12, "{mass}");
            assert_eq!(lp.token.text, m.tokenizer.decode(&[token]).unwrap());
        }
        let joined: String = lps.iter().map(|lp| lp.token.text.as_str()).collect();
        assert_eq!(Some(joined), a.text, "{cache:?}");
        // The same answer as a row that does not ask.
        let plain = fastdllm_engine::run(
            m.model.as_ref(),
            &prompts[..1],
            &[0],
            &s,
            &GenerateOptions::default(),
        )
        .unwrap();
        let eos = &m.model.spec().eos_token_ids;
        let ids = fastdllm_engine::trim_at_eos(&plain.rows[0].generated, eos);
        assert_eq!(a.token_ids, ids, "{cache:?}");
    }
}

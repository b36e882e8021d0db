//! `resolve`: the precedence of the sources, the rules that tie knobs together (canvas, steps,
//! unmasking rule, Dream's original sampler), errors that name the knob the user sent, and
//! that any numbers resolve to settings or an error, never a panic.

use fastdllm_cache::CacheMode;
use fastdllm_core::ModelFamily::{self, Dream, Llada};
use fastdllm_engine::resolve::{PAPER_BLOCK_LENGTH, PAPER_GEN_LENGTH, PAPER_THRESHOLD};
use fastdllm_engine::{resolve, Error, Finish, Knobs, Param, Resolved, Source, Stop};
use fastdllm_models::{DirDecodeDefaults, RawGenerationConfig};
use fastdllm_sampler::{DreamScore, Remasking, Unmask};
use proptest::option::of;
use proptest::prelude::*;

/// The bundled tiny fixtures' generation_config.json: gen 32, block 8, no cache, no threshold.
fn tiny() -> RawGenerationConfig {
    RawGenerationConfig {
        fastdllm: Some(DirDecodeDefaults {
            gen_length: Some(32),
            block_length: Some(8),
            cache: Some("none".into()),
            threshold: Some(None),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ok(sources: &[(Source, &Knobs)], g: Option<&RawGenerationConfig>, f: ModelFamily) -> Resolved {
    resolve(sources, g, f).unwrap_or_else(|e| panic!("{e}"))
}

/// The error of a resolution that must fail: `Error::Setting` naming `param`, whose message
/// names it too and contains every needle.
#[track_caller]
fn fails(
    sources: &[(Source, &Knobs)],
    g: Option<&RawGenerationConfig>,
    f: ModelFamily,
    param: Param,
    needles: &[&str],
) -> String {
    match resolve(sources, g, f) {
        Err(Error::Setting { param: p, message }) => {
            assert_eq!(p, param, "{message}");
            assert!(message.contains(param.name()), "{message}");
            for n in needles {
                assert!(message.contains(n), "'{n}' not in: {message}");
            }
            message
        }
        Err(e) => panic!("not a setting error: {e:?}"),
        Ok(r) => panic!("resolved: {:?}", r.settings),
    }
}

fn request(json: serde_json::Value) -> Knobs {
    serde_json::from_value(json).unwrap()
}

#[test]
fn without_sources_the_paper_setting() {
    let r = ok(&[], None, Llada);
    let s = &r.settings;
    assert_eq!(
        (s.decode.gen_length, s.decode.block_length, s.decode.steps),
        (PAPER_GEN_LENGTH, PAPER_BLOCK_LENGTH, PAPER_GEN_LENGTH)
    );
    assert_eq!(s.cache.mode, CacheMode::Dual);
    assert_eq!(
        s.unmask,
        Unmask::Threshold {
            threshold: PAPER_THRESHOLD
        }
    );
    assert_eq!(s.proposer.temperature, 0.0);
    assert_eq!((s.seed, s.limits.finish), (0, Finish::Answer));
    for p in [
        Param::GenLength,
        Param::BlockLength,
        Param::Cache,
        Param::Threshold,
        Param::Unmask,
    ] {
        assert_eq!(r.source(p), Some(Source::Paper), "{p}");
    }
    assert_eq!(r.source(Param::Steps), Some(Source::Derived));
    assert_eq!(r.source(Param::MaxTokens), None);
}

#[test]
fn sources_take_precedence_in_order() {
    // The directory's object beats the paper; its threshold = null is the count schedule.
    let r = ok(&[], Some(&tiny()), Llada);
    assert_eq!(
        (r.settings.decode.gen_length, r.settings.decode.block_length),
        (32, 8)
    );
    assert_eq!(r.settings.cache.mode, CacheMode::Off);
    assert_eq!(r.settings.unmask, Unmask::Fixed);
    assert_eq!(r.source(Param::Unmask), Some(Source::GenerationConfig));
    // Flags beat the directory, the request beats the flags, knob by knob.
    let flags = Knobs {
        threshold: Some(0.8),
        cache: Some("dual".into()),
        temperature: Some(0.5),
        seed: Some(7),
        ..Knobs::default()
    };
    let req = request(serde_json::json!({"cache": "prefix", "seed": 9, "max_tokens": 3}));
    let r = ok(
        &[(Source::Request, &req), (Source::Flags, &flags)],
        Some(&tiny()),
        Llada,
    );
    let s = &r.settings;
    assert_eq!(s.unmask, Unmask::Threshold { threshold: 0.8 });
    assert_eq!(s.cache.mode, CacheMode::Prefix);
    assert_eq!((s.proposer.temperature, s.seed), (0.5, 9));
    assert_eq!(s.decode.block_length, 8);
    assert_eq!(r.source(Param::Threshold), Some(Source::Flags));
    assert_eq!(r.source(Param::Cache), Some(Source::Request));
    assert_eq!(r.source(Param::Seed), Some(Source::Request));
    assert_eq!(r.source(Param::Temperature), Some(Source::Flags));
    assert_eq!(r.source(Param::BlockLength), Some(Source::GenerationConfig));
    assert_eq!(r.source(Param::GenLength), Some(Source::Derived));
    assert_eq!(r.source(Param::MaxTokens), Some(Source::Request));

    // The transformers fields: max_new_tokens is the answer length; top_p / top_k for Dream only.
    let hf = RawGenerationConfig {
        max_new_tokens: Some(64),
        temperature: Some(0.25),
        top_p: Some(0.95),
        top_k: Some(20),
        ..Default::default()
    };
    let r = ok(&[], Some(&hf), Llada);
    assert_eq!(r.settings.decode.gen_length, 64);
    assert_eq!(r.settings.proposer.temperature, 0.25);
    assert_eq!(
        (r.settings.proposer.top_p, r.settings.proposer.top_k),
        (None, None)
    );
    let r = ok(&[], Some(&hf), Dream);
    assert_eq!(
        (r.settings.proposer.top_p, r.settings.proposer.top_k),
        (Some(0.95), Some(20))
    );
    assert_eq!(r.source(Param::TopK), Some(Source::GenerationConfig));
}

#[test]
fn steps_follow_the_canvas_they_were_given_for() {
    // The server's flags: gen 32, block 8, 16 steps, fixed rule.
    let mut flags = Knobs::from_settings(&ok(&[], Some(&tiny()), Llada).settings);
    flags.steps = Some(16);
    let steps = |req: serde_json::Value| {
        let r = ok(
            &[(Source::Request, &request(req)), (Source::Flags, &flags)],
            None,
            Llada,
        );
        (
            r.settings.decode.gen_length,
            r.settings.decode.steps,
            r.source(Param::Steps).unwrap(),
        )
    };
    assert_eq!(steps(serde_json::json!({})), (32, 16, Source::Flags));
    assert_eq!(
        steps(serde_json::json!({"gen_length": 32})),
        (32, 16, Source::Flags)
    );
    assert_eq!(
        steps(serde_json::json!({"max_tokens": 30})),
        (32, 16, Source::Flags)
    );
    assert_eq!(
        steps(serde_json::json!({"gen_length": 64})),
        (64, 64, Source::Derived)
    );
    assert_eq!(
        steps(serde_json::json!({"max_tokens": 3})),
        (8, 8, Source::Derived)
    );
    assert_eq!(
        steps(serde_json::json!({"block_length": 4})),
        (32, 32, Source::Derived)
    );
    assert_eq!(
        steps(serde_json::json!({"steps": 8})),
        (32, 8, Source::Request)
    );
    // The directory's steps likewise, under the CLI's flags.
    let mut dir = tiny();
    dir.fastdllm.as_mut().unwrap().steps = Some(16);
    let r = ok(&[], Some(&dir), Llada);
    assert_eq!(r.settings.decode.steps, 16);
    let cli = Knobs {
        gen_length: Some(64),
        ..Knobs::default()
    };
    let r = ok(&[(Source::Flags, &cli)], Some(&dir), Llada);
    assert_eq!(
        (r.settings.decode.steps, r.source(Param::Steps)),
        (64, Some(Source::Derived))
    );
}

#[test]
fn answer_limits_size_the_canvas() {
    let flags = Knobs::from_settings(&ok(&[], Some(&tiny()), Llada).settings);
    let with = |req: serde_json::Value| {
        resolve(
            &[(Source::Request, &request(req)), (Source::Flags, &flags)],
            None,
            Llada,
        )
    };
    // Any count: the canvas rounds up to whole blocks, the answer is cut at the count.
    let s = with(serde_json::json!({"max_tokens": 3})).unwrap().settings;
    assert_eq!((s.decode.gen_length, s.limits.max_tokens), (8, Some(3)));
    let s = with(serde_json::json!({"max_completion_tokens": 9}))
        .unwrap()
        .settings;
    assert_eq!((s.decode.gen_length, s.limits.max_tokens), (16, Some(9)));
    let s = with(serde_json::json!({"max_tokens": 5, "max_completion_tokens": 5})).unwrap();
    assert_eq!(s.settings.limits.max_tokens, Some(5));
    // Errors name the limit as it was sent.
    let req = |j| request(j);
    let f = |k: &Knobs, p, n: &[&str]| {
        fails(
            &[(Source::Request, k), (Source::Flags, &flags)],
            None,
            Llada,
            p,
            n,
        )
    };
    f(
        &req(serde_json::json!({"max_tokens": 3, "max_completion_tokens": 4})),
        Param::MaxCompletionTokens,
        &["disagree"],
    );
    f(
        &req(serde_json::json!({"max_tokens": 0})),
        Param::MaxTokens,
        &[">= 1"],
    );
    f(
        &req(serde_json::json!({"max_completion_tokens": 0})),
        Param::MaxCompletionTokens,
        &[">= 1"],
    );
    f(
        &req(serde_json::json!({"max_tokens": 20, "gen_length": 16})),
        Param::MaxTokens,
        &["exceeds gen_length = 16"],
    );
    f(
        &req(serde_json::json!({"max_tokens": usize::MAX - 3})),
        Param::MaxTokens,
        &["too large"],
    );
    // Stop strings: one or a list, none empty.
    let s = with(serde_json::json!({"stop": "\n"})).unwrap().settings;
    assert_eq!(s.limits.stop, vec!["\n".to_string()]);
    let s = with(serde_json::json!({"stop": ["a", "b"]}))
        .unwrap()
        .settings;
    assert_eq!(s.limits.stop.len(), 2);
    f(
        &req(serde_json::json!({"stop": ["a", ""]})),
        Param::Stop,
        &["empty"],
    );
}

#[test]
fn errors_name_the_knob_the_user_sent() {
    let flag = |k: Knobs, p, n: &[&str]| fails(&[(Source::Flags, &k)], Some(&tiny()), Llada, p, n);
    let k = Knobs::default;
    flag(
        Knobs {
            gen_length: Some(30),
            ..k()
        },
        Param::GenLength,
        &["gen_length = 30", "block_length = 8", "24 or 32"],
    );
    // A block_length the user sent that does not divide the directory's gen_length.
    flag(
        Knobs {
            block_length: Some(7),
            ..k()
        },
        Param::BlockLength,
        &["block_length = 7"],
    );
    flag(
        Knobs {
            block_length: Some(0),
            ..k()
        },
        Param::BlockLength,
        &[">= 1"],
    );
    flag(
        Knobs {
            steps: Some(6),
            ..k()
        },
        Param::Steps,
        &["steps = 6", "4"],
    );
    flag(
        Knobs {
            threshold: Some(1.5),
            ..k()
        },
        Param::Threshold,
        &["1.5", "(0, 1]"],
    );
    flag(
        Knobs {
            threshold: Some(f64::NAN),
            ..k()
        },
        Param::Threshold,
        &[],
    );
    flag(
        Knobs {
            factor: Some(0.0),
            ..k()
        },
        Param::Factor,
        &["> 0"],
    );
    flag(
        Knobs {
            threshold: Some(0.9),
            factor: Some(1.0),
            ..k()
        },
        Param::Threshold,
        &["at most one"],
    );
    flag(
        Knobs {
            temperature: Some(-1.0),
            ..k()
        },
        Param::Temperature,
        &[],
    );
    flag(
        Knobs {
            temperature: Some(1e-38),
            ..k()
        },
        Param::Temperature,
        &["1e-6"],
    );
    flag(
        Knobs {
            cache: Some("huge".into()),
            ..k()
        },
        Param::Cache,
        &["huge", "names:"],
    );
    flag(
        Knobs {
            refresh_every: Some(0),
            ..k()
        },
        Param::RefreshEvery,
        &[">= 1"],
    );
    flag(
        Knobs {
            top_p: Some(0.9),
            ..k()
        },
        Param::TopP,
        &["Dream models only"],
    );
    flag(
        Knobs {
            top_k: Some(3),
            ..k()
        },
        Param::TopK,
        &["Dream models only"],
    );
    flag(
        Knobs {
            alg: Some(DreamScore::Margin),
            ..k()
        },
        Param::Alg,
        &["Dream models only"],
    );
    let dream = |k: Knobs, p, n: &[&str]| fails(&[(Source::Flags, &k)], Some(&tiny()), Dream, p, n);
    dream(
        Knobs {
            top_p: Some(1.5),
            ..k()
        },
        Param::TopP,
        &["(0, 1]"],
    );
    dream(
        Knobs {
            top_k: Some(0),
            ..k()
        },
        Param::TopK,
        &[">= 1"],
    );
    dream(
        Knobs {
            remasking: Some(Remasking::Random),
            ..k()
        },
        Param::Remasking,
        &["LLaDA models only"],
    );
    // A bad value in the directory's file says so.
    let mut bad = tiny();
    bad.fastdllm.as_mut().unwrap().block_length = Some(0);
    let m = fails(&[], Some(&bad), Llada, Param::BlockLength, &[]);
    assert!(m.starts_with("generation_config.json: "), "{m}");
}

#[test]
fn top_p_one_is_no_filter_for_every_family() {
    for family in [Llada, Dream] {
        let k = Knobs {
            top_p: Some(1.0),
            ..Knobs::default()
        };
        let r = ok(&[(Source::Request, &k)], Some(&tiny()), family);
        assert_eq!(r.settings.proposer.top_p, None, "{family:?}");
    }
    let k = Knobs {
        top_p: Some(0.5),
        ..Knobs::default()
    };
    assert_eq!(
        ok(&[(Source::Request, &k)], None, Dream)
            .settings
            .proposer
            .top_p,
        Some(0.5)
    );
}

#[test]
fn dream_and_llada_count_schedules() {
    // No threshold anywhere: the family's count schedule, Dream's once (eps 1e-3).
    assert_eq!(
        ok(&[], Some(&tiny()), Dream).settings.unmask,
        Unmask::DREAM_DEFAULT
    );
    assert_eq!(Unmask::DREAM_DEFAULT, Unmask::DreamTimesteps { eps: 1e-3 });
    assert_eq!(ok(&[], Some(&tiny()), Llada).settings.unmask, Unmask::Fixed);
    // steps selects the count schedule over a lower threshold; `fixed` is Dream's timesteps.
    let steps = Knobs {
        steps: Some(64),
        ..Knobs::default()
    };
    let r = ok(&[(Source::Flags, &steps)], None, Dream);
    assert_eq!(r.settings.unmask, Unmask::DREAM_DEFAULT);
    assert_eq!(r.source(Param::Unmask), Some(Source::Flags));
    assert_eq!(
        ok(&[(Source::Flags, &steps)], None, Llada).settings.unmask,
        Unmask::Fixed
    );
    let fixed = request(serde_json::json!({"unmask": "fixed"}));
    assert_eq!(
        ok(&[(Source::Request, &fixed)], None, Dream)
            .settings
            .unmask,
        Unmask::DREAM_DEFAULT
    );
    // A threshold in the same source wins over steps.
    let both = Knobs {
        steps: Some(64),
        threshold: Some(0.7),
        ..Knobs::default()
    };
    assert_eq!(
        ok(&[(Source::Flags, &both)], None, Dream).settings.unmask,
        Unmask::Threshold { threshold: 0.7 }
    );
}

#[test]
fn dream_original_runs_one_block_without_cache() {
    let k = Knobs {
        dream_original: Some(true),
        gen_length: Some(16),
        ..Knobs::default()
    };
    // The paper's dual cache and block 32 are below the flag: not used.
    let r = ok(&[(Source::Flags, &k)], None, Dream);
    let s = &r.settings;
    assert_eq!((s.decode.gen_length, s.decode.block_length), (16, 16));
    assert_eq!(s.decode.force_block_start, Some(false));
    assert_eq!(s.cache.mode, CacheMode::Off);
    assert_eq!(s.unmask, Unmask::DREAM_DEFAULT);
    assert_eq!(r.source(Param::BlockLength), Some(Source::Derived));
    // A request on top keeps it one block.
    let flags = Knobs::from_settings(s);
    let req = request(serde_json::json!({"max_tokens": 20}));
    let s = ok(
        &[(Source::Request, &req), (Source::Flags, &flags)],
        None,
        Dream,
    )
    .settings;
    assert_eq!((s.decode.gen_length, s.decode.block_length), (20, 20));
    // What cannot be.
    let f = |k: Knobs, fam, p, n: &[&str]| fails(&[(Source::Flags, &k)], None, fam, p, n);
    f(
        k.clone(),
        Llada,
        Param::DreamOriginal,
        &["Dream models only"],
    );
    f(
        Knobs {
            cache: Some("dual".into()),
            ..k.clone()
        },
        Dream,
        Param::Cache,
        &["dual", "original sampler"],
    );
    f(
        Knobs {
            block_length: Some(8),
            ..k.clone()
        },
        Dream,
        Param::DreamOriginal,
        &["one block", "block_length = 8"],
    );
}

#[test]
fn settings_resolve_back_to_themselves() {
    let cases = [
        (ok(&[], None, Llada).settings, Llada),
        (ok(&[], Some(&tiny()), Dream).settings, Dream),
        (
            ok(
                &[(
                    Source::Flags,
                    &Knobs {
                        dream_original: Some(true),
                        gen_length: Some(16),
                        seed: Some(3),
                        temperature: Some(0.5),
                        top_k: Some(4),
                        ..Knobs::default()
                    },
                )],
                None,
                Dream,
            )
            .settings,
            Dream,
        ),
        (
            ok(
                &[(
                    Source::Flags,
                    &request(serde_json::json!({
                        "cache": "dual+commits=2+every=3", "factor": 1.5, "stop": ["x"],
                        "max_tokens": 40, "remasking": "random", "finish": "canvas"
                    })),
                )],
                None,
                Llada,
            )
            .settings,
            Llada,
        ),
    ];
    for (s, family) in cases {
        let back = ok(&[(Source::Flags, &Knobs::from_settings(&s))], None, family).settings;
        assert_eq!(back, s);
    }
}

#[test]
fn knobs_deserialize_from_a_request_object() {
    let k = request(serde_json::json!({
        "prompt": "ignored here", "n": 2, "max_tokens": 5, "stop": "x", "temperature": null,
        "top_k": 3, "cache": "dual+commits=2", "unmask": "threshold=0.5", "alg": "entropy",
    }));
    assert_eq!(k.max_tokens, Some(5));
    assert_eq!(k.stop, Some(Stop::One("x".into())));
    assert_eq!(k.temperature, None);
    assert_eq!(k.unmask, Some(Unmask::Threshold { threshold: 0.5 }));
    assert_eq!(k.alg, Some(DreamScore::NegEntropy));
    let many: Knobs = serde_json::from_value(serde_json::json!({"stop": ["a", "b"]})).unwrap();
    assert_eq!(
        many.stop.map(|s| s.strings()),
        Some(vec!["a".into(), "b".into()])
    );
    for bad in [
        serde_json::json!({"stop": 5}),
        serde_json::json!({"max_tokens": -1}),
        serde_json::json!({"unmask": "sometimes"}),
    ] {
        assert!(
            serde_json::from_value::<Knobs>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

fn edge_int() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1usize),
        0usize..256,
        (0usize..64).prop_map(|k| usize::MAX - k),
        (0u32..64).prop_map(|s| 1usize << s),
        any::<usize>(),
    ]
}

fn edge_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE / 4.0),
        Just(1e-38),
        Just(f64::MAX),
        any::<f64>(),
        -2.0f64..2.0,
    ]
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        (
            of(edge_int()),
            of(edge_int()),
            of(edge_int()),
            of(edge_int()),
            of(edge_int()),
        ),
        (
            of(edge_float()),
            of(edge_float()),
            of(edge_float()),
            of(edge_float()),
        ),
        (
            of(edge_int()),
            of(edge_int()),
            of(any::<bool>()),
            of(any::<u64>()),
        ),
        of(prop_oneof![
            Just("none"),
            Just("prefix"),
            Just("dual"),
            Just("dual+commits=0")
        ]),
    )
        .prop_map(
            |((mt, mct, g, b, st), (t, f, temp, p), (k, re, d, seed), cache)| Knobs {
                max_tokens: mt,
                max_completion_tokens: mct,
                gen_length: g,
                block_length: b,
                steps: st,
                threshold: t,
                factor: f,
                temperature: temp,
                top_p: p,
                top_k: k,
                refresh_every: re,
                dream_original: d,
                seed,
                cache: cache.map(str::to_string),
                ..Knobs::default()
            },
        )
}

proptest! {
    /// Any numbers in a request over any flags resolve to valid settings or a setting error
    /// naming a knob, never a panic.
    #[test]
    fn resolve_never_panics(
        req in knobs(), flags in knobs(), dream in any::<bool>(), dir in any::<bool>(),
    ) {
        let family = if dream { Dream } else { Llada };
        let g = tiny();
        let sources = [(Source::Request, &req), (Source::Flags, &flags)];
        match resolve(&sources, dir.then_some(&g), family) {
            Ok(r) => {
                prop_assert!(r.settings.validate(family).is_ok());
                prop_assert!(r.settings.decode.step_cap() >= 1);
            }
            Err(Error::Setting { param, message }) => {
                prop_assert!(message.contains(param.name()), "{}: {}", param, message);
            }
            Err(e) => prop_assert!(false, "not a setting error: {:?}", e),
        }
    }
}

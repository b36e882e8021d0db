//! Property tests of the generation loop and the caches against the exact (no-cache) path, on
//! random tiny models (structure; LLaDA, LLaDA-MoE and Dream) and on the bundled trained tiny
//! models (batch invariance, continuous batching; llada-tiny, dream-tiny, llada-moe-tiny). Case counts follow PROPTEST_CASES (CI sets 32).

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device};
use fastdllm_cache::{BlockCache, CacheMode, CacheSettings};
use fastdllm_conformance::forward::{row_input, RecordKv};
use fastdllm_conformance::recorder::Recorder;
use fastdllm_conformance::tiny;
use fastdllm_conformance::tol::{assert_close, Tol};
use fastdllm_core::{
    CachePolicy, DecodeConfig, DiffusionLm, ForwardInput, ForwardPlan, GenerateOptions, KvAccess,
    PassthroughKv,
};
use fastdllm_engine::{self as engine, GenerationSettings};
use fastdllm_sampler::{ProposerConfig, Remasking, Unmask};
use proptest::prelude::*;

fn settings(
    g: usize,
    b: usize,
    steps: usize,
    mode: CacheMode,
    unmask: Unmask,
) -> GenerationSettings {
    GenerationSettings {
        decode: DecodeConfig {
            gen_length: g,
            block_length: b,
            steps,
            force_block_start: None,
            max_steps_per_block: None,
        },
        cache: CacheSettings::new(mode),
        unmask,
        proposer: ProposerConfig {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            remasking: Remasking::LowConfidence,
            dream_score: None,
        },
        seed: 0,
        limits: Default::default(),
    }
}

fn run(
    model: &dyn DiffusionLm,
    prompts: &[Vec<u32>],
    s: &GenerationSettings,
    trace: bool,
) -> engine::Generated {
    let seeds = vec![s.seed; prompts.len()];
    engine::run(
        model,
        prompts,
        &seeds,
        s,
        &GenerateOptions {
            trace,
            drift: false,
        },
    )
    .expect("generation runs")
}

/// (LLaDA, Dream) pairs of random tiny models; the LLaDA of the last pair is a LLaDA-MoE (QK-norm,
/// routed experts), so every property below also holds for the mixture of experts.
type ModelPair = (Arc<dyn DiffusionLm>, Arc<dyn DiffusionLm>);

fn random_models() -> &'static [ModelPair] {
    static M: OnceLock<Vec<ModelPair>> = OnceLock::new();
    M.get_or_init(|| {
        (0..3)
            .map(|s| {
                let llada = if s == 2 {
                    tiny::llada_moe_config()
                } else {
                    tiny::llada_config()
                };
                (
                    tiny::model(&llada, s),
                    tiny::model(&tiny::dream_config(), 100 + s),
                )
            })
            .collect()
    })
}

fn pick_model(seed: usize, dream: bool) -> Arc<dyn DiffusionLm> {
    let (l, d) = &random_models()[seed % random_models().len()];
    if dream {
        d.clone()
    } else {
        l.clone()
    }
}

fn unmask_rule(kind: usize, tau: f64, dream: bool) -> Unmask {
    match kind {
        0 if dream => Unmask::DreamTimesteps { eps: 1e-3 },
        0 => Unmask::Fixed,
        1 => Unmask::Threshold { threshold: tau },
        _ => Unmask::Factor { factor: 0.5 + tau },
    }
}

proptest! {
    /// Committed tokens never change, only the active block changes (mask -> token), the prompt
    /// never changes, NFE equals the forward calls, and LLaDA's fixed schedule commits exactly its
    /// counts, which sum to the block's masks.
    #[test]
    fn loop_invariants(model_seed in 0usize..3, dream in any::<bool>(),
                       prompt in proptest::collection::vec(0u32..40, 1..10),
                       blocks in 1usize..4, b in 1usize..6, spb_frac in 1usize..=5,
                       kind in 0usize..3, tau in 0.05f64..1.0) {
        let model = pick_model(model_seed, dream);
        let spb = spb_frac.min(b);
        let mut s = settings(blocks * b, b, blocks * spb, CacheMode::Off, unmask_rule(kind, tau, dream));
        // The whole canvas, as the reference decodes it: a row whose answer ends early (an EOS
        // committed first) still runs its fixed schedule in every block.
        s.limits.finish = engine::Finish::Canvas;
        let rec = Recorder::wrap(model.as_ref());
        let out = run(&rec, std::slice::from_ref(&prompt), &s, true);
        let calls = rec.observer().calls();
        let trace = out.trace.as_ref().expect("trace");
        prop_assert_eq!(out.nfe, calls.len());
        prop_assert_eq!(out.rows[0].nfe, calls.len());
        prop_assert_eq!(trace.steps.len(), calls.len());
        let p = prompt.len();
        let mut canvases: Vec<Vec<u32>> = calls.iter().map(|c| c.tokens[0].clone()).collect();
        let mut last = prompt.clone();
        last.extend_from_slice(&out.rows[0].generated);
        canvases.push(last);
        for (i, w) in canvases.windows(2).enumerate() {
            let blk = p + trace.steps[i].block_idx * b..p + (trace.steps[i].block_idx + 1) * b;
            prop_assert_eq!(&w[0][..p], &prompt[..]);
            for (pos, (a, z)) in w[0].iter().zip(&w[1]).enumerate() {
                if a != z {
                    prop_assert!(blk.contains(&pos), "position {} changed outside block {:?}", pos, blk);
                    prop_assert_eq!(*a, tiny::MASK, "committed token at {} changed", pos);
                }
            }
        }
        if !dream && kind == 0 {
            for k in 0..blocks {
                let counts: Vec<usize> = trace.steps.iter().filter(|r| r.block_idx == k).map(|r| r.commits[0].len()).collect();
                let want: Vec<usize> = (0..spb).map(|i| b / spb + usize::from(i < b % spb)).collect();
                prop_assert_eq!(counts.iter().sum::<usize>(), b);
                prop_assert_eq!(counts, want);
            }
        }
    }

    /// Refreshing the cache at every step is the exact path, token for token.
    #[test]
    fn refresh_every_step_equals_no_cache(model_seed in 0usize..3, dream in any::<bool>(),
                                          prompt in proptest::collection::vec(0u32..40, 1..10),
                                          blocks in 1usize..4, b in 1usize..6, kind in 0usize..3,
                                          tau in 0.05f64..1.0, dual in any::<bool>()) {
        let model = pick_model(model_seed, dream);
        let exact = settings(blocks * b, b, blocks * b, CacheMode::Off, unmask_rule(kind, tau, dream));
        let mut cached = exact.clone();
        cached.cache = CacheSettings { refresh_every: Some(1), ..CacheSettings::new(if dual { CacheMode::Dual } else { CacheMode::Prefix }) };
        let a = run(model.as_ref(), std::slice::from_ref(&prompt), &exact, false);
        let c = run(model.as_ref(), std::slice::from_ref(&prompt), &cached, false);
        prop_assert_eq!(&a.rows, &c.rows);
    }

    /// The first step of every block (the refresh) equals the exact forward, and right after a
    /// refresh a cached window over unchanged tokens reproduces the refresh's block logits.
    #[test]
    fn block_first_step_is_exact(model_seed in 0usize..3, dream in any::<bool>(),
                                 prompt in proptest::collection::vec(0u32..40, 1..10),
                                 blocks in 1usize..4, b in 2usize..6, dual in any::<bool>()) {
        let model = pick_model(model_seed, dream);
        let mut s = settings(blocks * b, b, blocks * b, if dual { CacheMode::Dual } else { CacheMode::Prefix }, Unmask::Threshold { threshold: 0.5 });
        s.seed = 1;
        let rec = Recorder::wrap(model.as_ref());
        let out = run(&rec, std::slice::from_ref(&prompt), &s, true);
        let trace = out.trace.expect("trace");
        for (call, step) in rec.observer().calls().iter().zip(&trace.steps) {
            if step.step != 0 { continue; }
            prop_assert_eq!(step.kv, KvAccess::Refresh);
            let len = call.tokens[0].len();
            let blk = prompt.len() + step.block_idx * b;
            let rows = if dream { blk..blk + 1 } else { blk..blk + b };
            prop_assert_eq!(len, prompt.len() + blocks * b);
            let exact = model.forward(&window(&call.tokens[0], rows, 0), &mut PassthroughKv).unwrap();
            assert_close(&call.logits, &exact, Tol::EXACT);
        }
    }
}

/// A one-row forward of `tokens[start..]` scoring the window rows `rows`.
fn window(tokens: &[u32], rows: std::ops::Range<usize>, start: usize) -> ForwardInput {
    let mut input = row_input(&tokens[start..], start);
    input.logits_rows = rows.into();
    input
}

/// The cache's stored K/V after a refresh equal the K/V of a plain full pass, and prefix/dual
/// forwards over unchanged tokens reproduce the refresh logits (docs/ALGORITHM.md §8, cache
/// consistency).
#[test]
fn refresh_kv_equals_full_pass_and_cached_windows_agree() {
    // Model seed 2's LLaDA is the mixture of experts.
    for (seed, dream) in [(1, false), (1, true), (2, false)] {
        let model = pick_model(seed, dream);
        let tokens: Vec<u32> = (0..24)
            .map(|i| {
                if i < 10 {
                    (i * 7 % 40) as u32
                } else {
                    tiny::MASK
                }
            })
            .collect();
        let (s, e) = (14, 18);
        let mut record = RecordKv::default();
        let full = model
            .forward(&window(&tokens, s..e, 0), &mut record)
            .unwrap();
        for mode in [CacheMode::Prefix, CacheMode::Dual] {
            let mut cache = BlockCache::new(CacheSettings::new(mode)).unwrap();
            let spec = model.spec();
            cache
                .prepare(&fastdllm_core::KvShape {
                    num_layers: spec.num_layers,
                    batch: 1,
                    num_kv_heads: spec.num_kv_heads,
                    seq_len: tokens.len(),
                    head_dim: spec.head_dim,
                    dtype: DType::F32,
                    device: Device::Cpu,
                })
                .unwrap();
            let refresh = ForwardPlan {
                window: 0..tokens.len(),
                kv: KvAccess::Refresh,
            };
            let r = model
                .forward(&window(&tokens, s..e, 0), cache.view(&refresh).unwrap())
                .unwrap();
            assert_close(&r, &full, Tol::EXACT);
            for (layer, (k, v)) in record.layers.iter().enumerate() {
                let (sk, sv) = cache.store().layer(layer).unwrap();
                assert_close(sk, k, Tol::EXACT);
                assert_close(sv, v, Tol::EXACT);
            }
            let end = if mode == CacheMode::Dual {
                e
            } else {
                tokens.len()
            };
            let plan = ForwardPlan {
                window: s..end,
                kv: KvAccess::Reuse,
            };
            let input = window(&tokens[..end], 0..e - s, s);
            let cached = model.forward(&input, cache.view(&plan).unwrap()).unwrap();
            if dream {
                // Window row 0 has no left neighbour in the window (Dream's shift): compare rows 1.. .
                assert_close(
                    &cached.narrow(1, 1, e - s - 1).unwrap(),
                    &full.narrow(1, 1, e - s - 1).unwrap(),
                    Tol::F32,
                );
            } else {
                assert_close(&cached, &full, Tol::F32);
            }
        }
    }
}

/// The bundled trained tiny models, by `arch`: 0 LLaDA, 1 Dream, 2 LLaDA-MoE.
const FIXTURES: [&str; 3] = ["llada-tiny", "dream-tiny", "llada-moe-tiny"];

fn fixture(name: &str) -> &'static fastdllm_models::LoadedModel {
    static CELLS: [OnceLock<fastdllm_models::LoadedModel>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let idx = FIXTURES
        .iter()
        .position(|f| *f == name)
        .expect("a bundled fixture");
    let cell = &CELLS[idx];
    cell.get_or_init(|| {
        fastdllm_models::load_model(
            &fastdllm_conformance::paths::bundled_model(name),
            &Device::Cpu,
            DType::F32,
        )
        .expect("fixture loads")
    })
}

fn task_prompt(kind: usize, salt: u64, model: &fastdllm_models::LoadedModel) -> Vec<u32> {
    let letters = "abcdefghijklmnopqrstuvwxyz";
    let pick = |i: u64| {
        letters.as_bytes()[((salt.wrapping_mul(2654435761).wrapping_add(i * 97)) % 26) as usize]
            as char
    };
    let digits = |i: u64| char::from(b'0' + ((salt / 3 + i * 7) % 10) as u8);
    let text = match kind % 4 {
        0 => format!("copy {}{}{}.......=", pick(1), digits(2), pick(3)),
        1 => format!(
            "inc {}{}{}{}......=",
            digits(1),
            digits(2),
            digits(3),
            digits(4)
        ),
        2 => format!("rot {}{}........=", pick(5), pick(6)),
        _ => format!("{}+{}=", digits(1), digits(5)),
    };
    model.tokenizer.encode(&text, true).expect("encodes")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24), ..ProptestConfig::default() })]

    /// A row's output in a batch of prompts of different lengths equals the same prompt generated
    /// alone: ids, NFE, unmask order and tokens per step, for every cache mode and rule.
    #[test]
    fn batch_invariance(arch in 0usize..3, kinds in proptest::collection::vec((0usize..4, 0u64..1000), 2..5),
                        mode in 0usize..3, rule in 0usize..3, g32 in any::<bool>(), b8 in any::<bool>()) {
        let dream = arch == 1;
        let m = fixture(FIXTURES[arch]);
        let prompts: Vec<Vec<u32>> = kinds.iter().map(|&(k, salt)| task_prompt(k, salt, m)).collect();
        let g = if g32 { 32 } else { 16 };
        let b = if b8 { 8 } else { 4 };
        let unmask = match rule {
            0 if dream => Unmask::DreamTimesteps { eps: 1e-3 },
            0 => Unmask::Fixed,
            1 => Unmask::Threshold { threshold: 0.9 },
            _ if dream => Unmask::Threshold { threshold: 0.7 },
            _ => Unmask::Factor { factor: 1.0 },
        };
        let s = settings(g, b, g, CacheMode::ALL[mode], unmask);
        let batch = run(m.model.as_ref(), &prompts, &s, false);
        for (i, p) in prompts.iter().enumerate() {
            let solo = run(m.model.as_ref(), std::slice::from_ref(p), &s, false);
            prop_assert_eq!(&batch.rows[i], &solo.rows[0], "row {} of {:?}", i, prompts.iter().map(Vec::len).collect::<Vec<_>>());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(16), ..ProptestConfig::default() })]

    /// Continuous batching: rows that join a running batch between blocks (at random rounds, with
    /// their own answer length, rule and seed) and leave when done produce exactly their solo
    /// outputs: ids, NFE, unmask order and tokens per step, for every cache mode.
    #[test]
    fn rows_joining_between_blocks_equal_solo(arch in 0usize..3,
                        rows in proptest::collection::vec((0usize..4, 0u64..1000, 0usize..4, 0usize..3, any::<bool>()), 2..5),
                        mode in 0usize..3, b8 in any::<bool>()) {
        let dream = arch == 1;
        let m = fixture(FIXTURES[arch]);
        let b = if b8 { 8 } else { 4 };
        // Dream rows share a batch only with rules of the same score (probability here).
        let rule = |k: usize| match k {
            0 if dream => Unmask::Factor { factor: 1.0 },
            0 => Unmask::Fixed,
            1 => Unmask::Threshold { threshold: 0.9 },
            _ if dream => Unmask::Threshold { threshold: 0.7 },
            _ => Unmask::Factor { factor: 1.0 },
        };
        let base = settings(16, b, 16, CacheMode::ALL[mode], rule(1));
        let row_settings = |r: usize, seed: u64, long: bool| {
            let g = if long { 32 } else { 16 };
            GenerationSettings { seed, ..settings(g, b, g, CacheMode::ALL[mode], rule(r)) }
        };
        let model = m.model.as_ref();
        let mut session = engine::Batch::new(model, None, &base, GenerateOptions::default()).unwrap();
        let mut outs = vec![None; rows.len()];
        let mut ids = Vec::new();
        let mut round = 0usize;
        loop {
            for (i, &(kind, salt, at, r, long)) in rows.iter().enumerate() {
                if at == round {
                    let s = row_settings(r, salt, long);
                    let id = session.admit(&task_prompt(kind, salt, m), &s, engine::RowEvents::default()).unwrap();
                    ids.push((id, i));
                }
            }
            if session.is_empty() && round > 3 {
                break;
            }
            for done in session.run_block(&mut |_, _| {}).unwrap() {
                let i = ids.iter().find(|(id, _)| *id == done.id).unwrap().1;
                outs[i] = Some(done.output);
            }
            round += 1;
        }
        for (i, &(kind, salt, _, r, long)) in rows.iter().enumerate() {
            let s = row_settings(r, salt, long);
            let solo = run(model, &[task_prompt(kind, salt, m)], &s, false);
            prop_assert_eq!(outs[i].as_ref().unwrap(), &solo.rows[0], "row {} of {:?}", i, rows);
        }
    }
}

//! Forward-pass properties on small random-weight models (no files): determinism, batching,
//! per-row positions, key bias, row selection, cache consistency and argument checks.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use fastdllm_conformance::forward::{row_input, PrefixKv, RecordKv};
use fastdllm_conformance::tiny::{self, VOCAB};
use fastdllm_conformance::tol::{assert_close, compare, max_abs_err, Tol};
use fastdllm_core::{DiffusionLm, ForwardInput, PassthroughKv, Positions};
use fastdllm_models::random_model;

fn models(seed: u64) -> Vec<(&'static str, Arc<dyn DiffusionLm>)> {
    vec![
        ("llada", tiny::model(&tiny::llada_config(), seed)),
        ("dream", tiny::model(&tiny::dream_config(), seed)),
    ]
}

fn ids(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 7 + seed * 13 + 3) % VOCAB as u32)
        .collect()
}

/// The same rows computed another way (a batch against its rows alone, per-row against contiguous
/// positions, a cached window against the full forward): other matmul shapes, other sum order.
const SAME_ROWS: Tol = Tol {
    atol: 1e-5,
    rtol: 0.0,
};

fn forward(model: &dyn DiffusionLm, input: &ForwardInput) -> Tensor {
    model.forward(input, &mut PassthroughKv).unwrap()
}

#[test]
fn random_models_are_reproducible_on_cpu() {
    let x = ids(1, 12);
    for ((_, a), (_, b)) in models(7).into_iter().zip(models(7)) {
        assert_close(
            &forward(a.as_ref(), &row_input(&x, 0)),
            &forward(b.as_ref(), &row_input(&x, 0)),
            Tol::EXACT,
        );
    }
    for ((name, a), (_, b)) in models(7).into_iter().zip(models(8)) {
        let diff = max_abs_err(
            &forward(a.as_ref(), &row_input(&x, 0)),
            &forward(b.as_ref(), &row_input(&x, 0)),
        );
        assert!(diff.unwrap() > 0.0, "{name}");
    }
}

#[test]
fn tied_head_uses_the_embedding() {
    let mut cfg = tiny::dream_config();
    cfg.tie_word_embeddings = true;
    let model = random_model(&cfg, &Device::Cpu, DType::F32, 1).unwrap();
    let logits = forward(model.as_ref(), &row_input(&ids(0, 6), 0));
    assert_eq!(logits.dims(), &[1, 6, VOCAB]);
}

#[test]
fn a_batch_equals_its_rows() {
    let (a, b) = (ids(1, 10), ids(2, 10));
    for (name, model) in models(3) {
        let batch = ForwardInput {
            tokens: Tensor::new(vec![a.clone(), b.clone()], &Device::Cpu).unwrap(),
            positions: Positions::Contiguous { start: 5 },
            window_start: 5,
            key_bias: None,
            logits_rows: (2..9).into(),
        };
        let both = forward(model.as_ref(), &batch);
        assert_eq!(both.dims(), &[2, 7, VOCAB]);
        for (row, x) in [(0, &a), (1, &b)] {
            let mut single = row_input(x, 5);
            single.logits_rows = (2..9).into();
            let alone = forward(model.as_ref(), &single);
            compare(&both.narrow(0, row, 1).unwrap(), &alone, SAME_ROWS)
                .unwrap_or_else(|e| panic!("{name} row {row}: {e}"));
        }
    }
}

#[test]
fn per_row_positions_equal_contiguous_positions() {
    let (a, b) = (ids(1, 8), ids(2, 8));
    for (name, model) in models(4) {
        let positions: Vec<Vec<u32>> = vec![(0..8).collect(), (3..11).collect()];
        let batch = ForwardInput {
            tokens: Tensor::new(vec![a.clone(), b.clone()], &Device::Cpu).unwrap(),
            positions: Positions::PerRow(Tensor::new(positions, &Device::Cpu).unwrap()),
            window_start: 0,
            key_bias: None,
            logits_rows: (0..8).into(),
        };
        let both = forward(model.as_ref(), &batch);
        for (row, x, start) in [(0, &a, 0), (1, &b, 3)] {
            let alone = forward(model.as_ref(), &row_input(x, start));
            compare(&both.narrow(0, row, 1).unwrap(), &alone, SAME_ROWS)
                .unwrap_or_else(|e| panic!("{name} row {row}: {e}"));
        }
    }
}

#[test]
fn key_bias_masks_left_padding() {
    // Row: two pad tokens, then the prompt; pads get position 0 and a large negative key bias,
    // so the prompt rows must equal the unpadded forward.
    let x = ids(5, 9);
    let pad = tiny::PAD;
    let mut padded = vec![pad, pad];
    padded.extend(&x);
    let positions: Vec<u32> = [0, 0].into_iter().chain(0..9).collect();
    let mut bias = vec![0f32; 11];
    bias[0] = -1e9;
    bias[1] = -1e9;
    for (name, model) in models(5) {
        let inp = ForwardInput {
            tokens: Tensor::new(padded.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            positions: Positions::PerRow(
                Tensor::new(positions.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            ),
            window_start: 0,
            key_bias: Some(Tensor::from_vec(bias.clone(), (1, 1, 1, 11), &Device::Cpu).unwrap()),
            logits_rows: (3..11).into(),
        };
        let got = forward(model.as_ref(), &inp);
        let mut plain = row_input(&x, 0);
        plain.logits_rows = (1..9).into();
        let want = forward(model.as_ref(), &plain);
        compare(&got, &want, SAME_ROWS).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// docs/ALGORITHM.md §8: right after a refresh (tokens unchanged), a prefix-cache window forward
/// reproduces the full forward's rows; for Dream every row but the window's first (which keeps its
/// own raw output instead of the previous position's).
#[test]
fn prefix_window_after_refresh_matches_the_full_forward() {
    let x = ids(9, 20);
    let start = 8;
    for (name, model) in models(6) {
        let mut record = RecordKv::default();
        let full = model.forward(&row_input(&x, 0), &mut record).unwrap();
        assert_eq!(record.layers.len(), 2);
        assert_eq!(
            record.layers[0].0.dims(),
            &[1, model.spec().num_kv_heads, 20, 8]
        );
        let mut prefix = PrefixKv {
            stored: &record.layers,
            start,
        };
        let window = model
            .forward(&row_input(&x[start..], start), &mut prefix)
            .unwrap();
        let skip = usize::from(name == "dream");
        let got = window.narrow(1, skip, 12 - skip).unwrap();
        let want = full.narrow(1, start + skip, 12 - skip).unwrap();
        compare(&got, &want, SAME_ROWS).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "dream" {
            // The window's first aligned row is its own raw output, not the full forward's.
            let diff = max_abs_err(
                &window.narrow(1, 0, 1).unwrap(),
                &full.narrow(1, start, 1).unwrap(),
            );
            assert!(diff.unwrap() > 1e-4);
        }
    }
}

#[test]
fn no_rows_still_runs_every_layer() {
    for (name, model) in models(2) {
        let mut inp = row_input(&ids(0, 6), 0);
        inp.logits_rows = (3..3).into();
        let mut record = RecordKv::default();
        let logits = model.forward(&inp, &mut record).unwrap();
        assert_eq!(logits.dims(), &[1, 0, VOCAB], "{name}");
        assert_eq!(record.layers.len(), 2, "{name}");
    }
}

#[test]
fn bad_arguments_are_errors() {
    for (name, model) in models(2) {
        let mut inp = row_input(&ids(0, 6), 0);
        inp.logits_rows = (2..7).into();
        let err = model
            .forward(&inp, &mut PassthroughKv)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("logits_rows = 2..7: a range within the window 0..6"),
            "{name}: {err}"
        );

        let inp = row_input(&ids(0, 6), 252);
        let err = model
            .forward(&inp, &mut PassthroughKv)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("positions = 252..258: within 0..256"),
            "{name}: {err}"
        );

        let mut inp = row_input(&ids(0, 6), 0);
        inp.positions = Positions::PerRow(Tensor::zeros((1, 5), DType::U32, &Device::Cpu).unwrap());
        let err = model
            .forward(&inp, &mut PassthroughKv)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shape [1, 6]"), "{name}: {err}");

        let mut inp = row_input(&ids(0, 6), 0);
        inp.key_bias = Some(Tensor::zeros((1, 6), DType::F32, &Device::Cpu).unwrap());
        let err = model
            .forward(&inp, &mut PassthroughKv)
            .unwrap_err()
            .to_string();
        assert!(err.contains("key_bias"), "{name}: {err}");
    }
}

#[test]
fn invalid_programmatic_config_is_rejected() {
    let mut cfg = tiny::llada_config();
    cfg.head_dim = 16;
    let err = random_model(&cfg, &Device::Cpu, DType::F32, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("`head_dim` = 16: must equal hidden_size / num_heads = 8"),
        "{err}"
    );
}

#[test]
fn a_model_type_rejects_the_other_family_config() {
    use candle_nn::VarBuilder;
    use fastdllm_models::{DreamModel, LladaModel};
    let vb = || VarBuilder::zeros(DType::F32, &Device::Cpu);
    let err = LladaModel::new(&tiny::dream_config(), vb())
        .expect_err("Dream config accepted")
        .to_string();
    assert!(err.contains("family") && err.contains("Llada"), "{err}");
    let err = DreamModel::new(&tiny::llada_config(), vb())
        .expect_err("LLaDA config accepted")
        .to_string();
    assert!(err.contains("family") && err.contains("Dream"), "{err}");
    // The matching family builds.
    assert!(LladaModel::new(&tiny::llada_config(), vb()).is_ok());
}

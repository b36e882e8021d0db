//! Forward-pass properties on small random-weight models (no files): determinism, batching,
//! per-row positions, key bias, row selection, cache consistency and argument checks.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use fastdllm_core::ModelFamily;
use fastdllm_core::{DiffusionLm, ForwardInput, KvView, PassthroughKv, Positions};
use fastdllm_models::{random_model, ModelConfig};

const VOCAB: usize = 40;

/// A forward over `ids` (one row) at positions `start..`, every row's logits.
fn input(ids: &[u32], start: usize) -> ForwardInput {
    ForwardInput {
        tokens: Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap(),
        positions: Positions::Contiguous { start },
        window_start: start,
        key_bias: None,
        logits_rows: (0..ids.len()).into(),
    }
}

/// Largest absolute difference.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let values = |t: &Tensor| -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn llada() -> ModelConfig {
    ModelConfig {
        family: ModelFamily::Llada,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 4,
        head_dim: 8,
        intermediate_size: 48,
        vocab_size: VOCAB,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        max_seq_len: 64,
        mask_token_id: 39,
        eos_token_ids: vec![38],
        pad_token_id: 38,
        bos_token_id: None,
        tie_word_embeddings: false,
    }
}

fn dream() -> ModelConfig {
    ModelConfig {
        family: ModelFamily::Dream,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        intermediate_size: 48,
        vocab_size: VOCAB,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        max_seq_len: 64,
        mask_token_id: 39,
        eos_token_ids: vec![38],
        pad_token_id: 37,
        bos_token_id: None,
        tie_word_embeddings: false,
    }
}

fn models(seed: u64) -> Vec<(&'static str, Arc<dyn DiffusionLm>)> {
    vec![
        (
            "llada",
            random_model(&llada(), &Device::Cpu, DType::F32, seed).unwrap(),
        ),
        (
            "dream",
            random_model(&dream(), &Device::Cpu, DType::F32, seed).unwrap(),
        ),
    ]
}

fn ids(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 7 + seed * 13 + 3) % VOCAB as u32)
        .collect()
}

fn forward(model: &dyn DiffusionLm, input: &ForwardInput) -> Tensor {
    model.forward(input, &mut PassthroughKv).unwrap()
}

#[test]
fn random_models_are_reproducible_on_cpu() {
    let x = ids(1, 12);
    for ((name, a), (_, b)) in models(7).into_iter().zip(models(7)) {
        assert_eq!(
            max_abs_diff(
                &forward(a.as_ref(), &input(&x, 0)),
                &forward(b.as_ref(), &input(&x, 0))
            ),
            0.0,
            "{name}"
        );
    }
    for ((name, a), (_, b)) in models(7).into_iter().zip(models(8)) {
        assert!(
            max_abs_diff(
                &forward(a.as_ref(), &input(&x, 0)),
                &forward(b.as_ref(), &input(&x, 0))
            ) > 0.0,
            "{name}"
        );
    }
}

#[test]
fn tied_head_uses_the_embedding() {
    let mut cfg = dream();
    cfg.tie_word_embeddings = true;
    let model = random_model(&cfg, &Device::Cpu, DType::F32, 1).unwrap();
    let logits = forward(model.as_ref(), &input(&ids(0, 6), 0));
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
            let mut single = input(x, 5);
            single.logits_rows = (2..9).into();
            let alone = forward(model.as_ref(), &single);
            let diff = max_abs_diff(&both.narrow(0, row, 1).unwrap(), &alone);
            assert!(diff < 1e-5, "{name} row {row}: {diff}");
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
            let alone = forward(model.as_ref(), &input(x, start));
            let diff = max_abs_diff(&both.narrow(0, row, 1).unwrap(), &alone);
            assert!(diff < 1e-5, "{name} row {row}: {diff}");
        }
    }
}

#[test]
fn key_bias_masks_left_padding() {
    // Row: two pad tokens, then the prompt; pads get position 0 and a large negative key bias,
    // so the prompt rows must equal the unpadded forward.
    let x = ids(5, 9);
    let pad = 37u32;
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
        let mut plain = input(&x, 0);
        plain.logits_rows = (1..9).into();
        let want = forward(model.as_ref(), &plain);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "{name}: {diff}");
    }
}

#[derive(Default)]
struct Record(Vec<(Tensor, Tensor)>);

impl KvView for Record {
    fn attend_kv(
        &mut self,
        _layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> fastdllm_core::Result<(Tensor, Tensor)> {
        self.0.push((k.clone(), v.clone()));
        Ok((k.clone(), v.clone()))
    }
}

struct Prefix<'a>(&'a [(Tensor, Tensor)], usize, usize);

impl KvView for Prefix<'_> {
    fn attend_kv(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> fastdllm_core::Result<(Tensor, Tensor)> {
        assert_eq!(layer, self.2);
        self.2 += 1;
        let (sk, sv) = &self.0[layer];
        Ok((
            Tensor::cat(&[&sk.narrow(2, 0, self.1)?, k], 2)?,
            Tensor::cat(&[&sv.narrow(2, 0, self.1)?, v], 2)?,
        ))
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
        let mut record = Record::default();
        let full = model.forward(&input(&x, 0), &mut record).unwrap();
        assert_eq!(record.0.len(), 2);
        assert_eq!(record.0[0].0.dims(), &[1, model.spec().num_kv_heads, 20, 8]);
        let window = model
            .forward(&input(&x[start..], start), &mut Prefix(&record.0, start, 0))
            .unwrap();
        let skip = usize::from(name == "dream");
        let got = window.narrow(1, skip, 12 - skip).unwrap();
        let want = full.narrow(1, start + skip, 12 - skip).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "{name}: {diff}");
        if name == "dream" {
            // The window's first aligned row is its own raw output, not the full forward's.
            assert!(
                max_abs_diff(
                    &window.narrow(1, 0, 1).unwrap(),
                    &full.narrow(1, start, 1).unwrap()
                ) > 1e-4
            );
        }
    }
}

#[test]
fn no_rows_still_runs_every_layer() {
    for (name, model) in models(2) {
        let mut inp = input(&ids(0, 6), 0);
        inp.logits_rows = (3..3).into();
        let mut record = Record::default();
        let logits = model.forward(&inp, &mut record).unwrap();
        assert_eq!(logits.dims(), &[1, 0, VOCAB], "{name}");
        assert_eq!(record.0.len(), 2, "{name}");
    }
}

#[test]
fn bad_arguments_are_errors() {
    for (name, model) in models(2) {
        let mut inp = input(&ids(0, 6), 0);
        inp.logits_rows = (2..7).into();
        let err = model
            .forward(&inp, &mut PassthroughKv)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("logits_rows = 2..7: a range within the window 0..6"),
            "{name}: {err}"
        );

        let inp = input(&ids(0, 6), 60);
        let err = model
            .forward(&inp, &mut PassthroughKv)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("positions = 60..66: within 0..64"),
            "{name}: {err}"
        );

        let mut inp = input(&ids(0, 6), 0);
        inp.positions = Positions::PerRow(Tensor::zeros((1, 5), DType::U32, &Device::Cpu).unwrap());
        let err = model
            .forward(&inp, &mut PassthroughKv)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shape [1, 6]"), "{name}: {err}");

        let mut inp = input(&ids(0, 6), 0);
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
    let mut cfg = llada();
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
    let err = LladaModel::new(&dream(), vb())
        .expect_err("Dream config accepted")
        .to_string();
    assert!(err.contains("family") && err.contains("Llada"), "{err}");
    let err = DreamModel::new(&llada(), vb())
        .expect_err("LLaDA config accepted")
        .to_string();
    assert!(err.contains("family") && err.contains("Dream"), "{err}");
    // The matching family builds.
    assert!(LladaModel::new(&llada(), vb()).is_ok());
}

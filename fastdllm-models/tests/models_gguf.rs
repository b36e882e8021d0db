//! llama.cpp GGUF files (fixtures/gguf, made by llama.cpp's convert_hf_to_gguf.py and
//! llama-quantize from the tiny fixtures): the config, weights and tokenizer they give, against
//! the safetensors checkpoints they were converted from; and the errors of bad files.

mod common;

use candle_core::{DType, Device, IndexOp};
use common::{patch, sample_ids, TempDir};
use fastdllm_conformance::forward::row_input;
use fastdllm_conformance::paths::bundled_model;
use fastdllm_conformance::tol::{assert_close, max_abs_err, Tol};
use fastdllm_core::{ModelFamily, PassthroughKv};
use fastdllm_models::{load_model, load_model_with, LoadOptions, QuantType};

fn gguf(name: &str) -> std::path::PathBuf {
    bundled_model("gguf").join(name)
}

/// Logits of every row of the sample prompt.
fn logits(model: &fastdllm_models::LoadedModel) -> candle_core::Tensor {
    model
        .model
        .forward(&row_input(&sample_ids(), 0), &mut PassthroughKv)
        .unwrap()
}

fn argmax_rows(t: &candle_core::Tensor) -> Vec<u32> {
    t.i(0).unwrap().argmax(1).unwrap().to_vec1().unwrap()
}

/// The f32 GGUF is the safetensors model bit for bit: same config, same logits (LLaDA's q/k rows
/// un-permuted, eps and theta recovered from their f32 copies).
#[test]
fn f32_gguf_equals_safetensors() {
    for name in ["llada-tiny", "dream-tiny"] {
        let hf = load_model(&bundled_model(name), &Device::Cpu, DType::F32).unwrap();
        let gg = load_model(&gguf(&format!("{name}-f32.gguf")), &Device::Cpu, DType::F32).unwrap();
        let (a, mut b) = (&hf.info.config, gg.info.config.clone());
        if a.family == ModelFamily::Llada {
            // LLaDA's config.json names no BOS (the tokenizer's <|startoftext|> is used); the
            // converter wrote it from tokenizer_config.json.
            assert_eq!(b.bos_token_id, Some(51));
            b.bos_token_id = a.bos_token_id;
        }
        assert_eq!(a, &b, "{name}");
        assert_eq!(gg.info.bos_token_id, hf.info.bos_token_id, "{name}");
        // The GGUF carries the converter's pass-through `tokenizer.chat_template`, which is
        // used as the checkpoint's own template; the safetensors fixture has none.
        assert!(
            matches!(
                gg.info.chat_template,
                fastdllm_models::ChatTemplate::Jinja(_)
            ),
            "{name}"
        );
        // The file says `tokenizer.ggml.add_bos_token = true`: its BOS (id 51, where llama.cpp's
        // recorded prompt ids start, fixtures/gguf/results.jsonl) goes before the rendered text.
        let turn = [fastdllm_models::Message::user("copy 3dbk")];
        let bos = gg.tokenizer.inner().id_to_token(51).unwrap();
        assert_eq!(
            gg.info.chat_template.render(&turn).unwrap(),
            format!("{bos}copy 3dbk"),
            "{name}"
        );
        assert_eq!(gg.info.linear_weights, "f32 x 17", "{name}");
        assert!(gg.info.tokenizer_source.starts_with("GGUF metadata"));
        let (a, b) = (logits(&hf), logits(&gg));
        assert_close(&b, &a, Tol::EXACT);
    }
}

/// Q8_0 (llama-quantize): linear layers stay quantized; the logits stay close to f32 and every
/// row's argmax is the same on the sample prompt.
#[test]
fn q8_0_gguf_is_close_to_f32() {
    for name in ["llada-tiny", "dream-tiny"] {
        let f32m =
            load_model(&gguf(&format!("{name}-f32.gguf")), &Device::Cpu, DType::F32).unwrap();
        let q8 = load_model(
            &gguf(&format!("{name}-q8_0.gguf")),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        assert_eq!(q8.info.linear_weights, "q8_0 x 17", "{name}");
        let (a, b) = (logits(&f32m), logits(&q8));
        let diff = max_abs_err(&b, &a).unwrap();
        assert!(diff > 0.0, "{name}: quantized logits equal f32");
        assert_close(
            &b,
            &a,
            Tol {
                atol: 0.5,
                rtol: 0.0,
            },
        );
        assert_eq!(argmax_rows(&a), argmax_rows(&b), "{name}");
    }
}

/// `--quantize q8_0` of the safetensors model is what llama-quantize wrote, up to the embedding
/// (llama-quantize also quantizes `token_embd`; in-situ quantization keeps it dense).
#[test]
fn in_situ_q8_0_matches_llama_quantize_weights() {
    let opts = LoadOptions::new(DType::F32).quantized(Some(QuantType::Q8_0));
    let isq = load_model_with(&bundled_model("llada-tiny"), &Device::Cpu, &opts).unwrap();
    assert_eq!(isq.info.linear_weights, "q8_0 x 17");
    let q8 = load_model(&gguf("llada-tiny-q8_0.gguf"), &Device::Cpu, DType::F32).unwrap();
    let f32m = load_model(&bundled_model("llada-tiny"), &Device::Cpu, DType::F32).unwrap();
    let (a, b, c) = (logits(&isq), logits(&q8), logits(&f32m));
    assert_close(
        &a,
        &c,
        Tol {
            atol: 0.5,
            rtol: 0.0,
        },
    );
    assert_close(
        &a,
        &b,
        Tol {
            atol: 0.5,
            rtol: 0.0,
        },
    );
    assert_eq!(argmax_rows(&a), argmax_rows(&c));
}

/// `DiffusionLm::weight_bytes` counts what is stored: every tensor of the f32 checkpoint at 4
/// bytes, and after `--quantize q8_0` every linear layer at Q8_0's 34 bytes per 32 weights (the
/// embedding and the norms stay f32). The tiny LLaDA's sizes come from its config.
#[test]
fn weight_bytes_count_stored_blocks() {
    let f32m = load_model(&bundled_model("llada-tiny"), &Device::Cpu, DType::F32).unwrap();
    let c = &f32m.info.config;
    assert!(!c.tie_word_embeddings && c.num_heads == c.num_kv_heads);
    let (h, i, v, l) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
        c.num_layers as u64,
    );
    let linear = l * (4 * h * h + 3 * h * i) + v * h;
    let dense = v * h + (2 * l + 1) * h;
    assert_eq!(f32m.model.weight_bytes(), Some(4 * (linear + dense)));
    let opts = LoadOptions::new(DType::F32).quantized(Some(QuantType::Q8_0));
    let q8 = load_model_with(&bundled_model("llada-tiny"), &Device::Cpu, &opts).unwrap();
    assert_eq!(q8.model.weight_bytes(), Some(linear / 32 * 34 + 4 * dense));
}

/// Rows of 128 are not whole Q4_K super-blocks (256): llama.cpp's fallback (Q5_0) is used, and
/// reported; the down projection (rows of 384) likewise.
#[test]
fn in_situ_k_quants_fall_back_like_llama_cpp() {
    let opts = LoadOptions::new(DType::F32).quantized(Some(QuantType::Q4K));
    let m = load_model_with(&bundled_model("dream-tiny"), &Device::Cpu, &opts).unwrap();
    assert_eq!(m.info.linear_weights, "q5_0 x 17");
    let opts = LoadOptions::new(DType::F32).quantized(Some(QuantType::Q6K));
    let m = load_model_with(&bundled_model("dream-tiny"), &Device::Cpu, &opts).unwrap();
    assert_eq!(m.info.linear_weights, "q8_0 x 17");
}

/// bf16 activations over quantized weights: the model runs and returns f32 logits.
#[test]
fn quantized_weights_with_bf16_activations() {
    let m = load_model(&gguf("dream-tiny-q8_0.gguf"), &Device::Cpu, DType::BF16).unwrap();
    let l = logits(&m);
    assert_eq!(l.dtype(), DType::F32);
    assert_eq!(l.dims(), &[1, sample_ids().len(), 64]);
}

/// A directory holding one GGUF (and no config.json) loads it; two is an error naming both.
#[test]
fn directory_with_one_gguf() {
    let dir = TempDir::new("gguf-dir");
    std::fs::copy(gguf("llada-tiny-q8_0.gguf"), dir.file("m.gguf")).unwrap();
    let m = load_model(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(m.info.weight_files, vec![dir.file("m.gguf")]);
    std::fs::copy(gguf("dream-tiny-q8_0.gguf"), dir.file("n.gguf")).unwrap();
    let err = load_model(dir.path(), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("m.gguf, n.gguf"), "{err}");
}

/// The tokenizer rebuilt from the GGUF vocabulary (byte-level BPE, placeholder merge dropped)
/// encodes and decodes like the checkpoint's tokenizer.json on every task prompt and answer, and
/// gives the prompt ids llama.cpp's llama-tokenize printed (results.jsonl).
#[test]
fn tokenizer_from_metadata_matches_tokenizer_json() {
    let root = bundled_model("..");
    let mut texts: Vec<String> = Vec::new();
    for task in ["tasks/tiny-arith.jsonl"] {
        for line in std::fs::read_to_string(root.join(task)).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            texts.push(v["prompt"].as_str().unwrap().to_string());
            texts.push(v["answer"].as_str().unwrap().to_string());
        }
    }
    assert!(texts.len() >= 300);
    texts.push("a  b Z\n<|mask|><|mask|>".into());
    for name in ["llada-tiny", "dream-tiny"] {
        let hf = fastdllm_models::Tokenizer::from_file(&bundled_model(name).join("tokenizer.json"))
            .unwrap();
        let file = fastdllm_models::GgufFile::open(&gguf(&format!("{name}-q8_0.gguf"))).unwrap();
        let gg = file.tokenizer().unwrap();
        assert_eq!(gg.vocab_size(), hf.vocab_size());
        for t in &texts {
            let (a, b) = (hf.encode(t, true).unwrap(), gg.encode(t, true).unwrap());
            assert_eq!(a, b, "{name}: encode {t:?}");
            assert_eq!(
                hf.decode(&a).unwrap(),
                gg.decode(&a).unwrap(),
                "{name}: decode {t:?}"
            );
        }
    }
    let results = std::fs::read_to_string(gguf("results.jsonl")).unwrap();
    let mut checked = 0;
    for line in results.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = fastdllm_models::GgufFile::open(&gguf(v["gguf"].as_str().unwrap())).unwrap();
        let ids = file
            .tokenizer()
            .unwrap()
            .encode(v["prompt"].as_str().unwrap(), true)
            .unwrap();
        let want: Vec<u32> = serde_json::from_value(v["prompt_ids"].clone()).unwrap();
        assert_eq!(ids, want, "{line}");
        checked += 1;
    }
    assert_eq!(checked, 20);
}

// ---- bad files -------------------------------------------------------------------------------

fn load_err(path: &std::path::Path, opts: &LoadOptions) -> String {
    load_model_with(path, &Device::Cpu, opts)
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn another_architecture_is_named() {
    let dir = TempDir::new("gguf-arch");
    let bytes = std::fs::read(gguf("llada-tiny-q8_0.gguf")).unwrap();
    let path = dir.file("llama.gguf");
    std::fs::write(
        &path,
        patch(&bytes, b"general.architecture", b"llada", b"llama"),
    )
    .unwrap();
    let err = load_err(&path, &LoadOptions::new(DType::F32));
    assert!(
        err.contains("llama.gguf")
            && err.contains("general.architecture = \"llama\"")
            && err.contains("\"llada\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn truncated_file_is_named() {
    let dir = TempDir::new("gguf-trunc");
    let bytes = std::fs::read(gguf("llada-tiny-q8_0.gguf")).unwrap();
    // Cut in the tensor data.
    let path = dir.file("cut.gguf");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&path, &LoadOptions::new(DType::F32));
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
    assert!(
        err.contains(&format!("has {} bytes", bytes.len() / 2)),
        "{err}"
    );
    // Cut in the header.
    std::fs::write(&path, &bytes[..1000]).unwrap();
    let err = load_err(&path, &LoadOptions::new(DType::F32));
    assert!(
        err.contains("cut.gguf") && err.contains("truncated or corrupt header"),
        "{err}"
    );
    // Not GGUF at all.
    std::fs::write(&path, b"{\"not\": \"gguf\"}").unwrap();
    let err = load_err(&path, &LoadOptions::new(DType::F32));
    assert!(err.contains("not a GGUF file"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `general.alignment` of 0 (candle divided by it: a panic) or not a power of two is refused
/// before candle reads the header, naming the file and the key. The fixture has no alignment
/// key: its `llada.block_count` (u32 = 4, a key of the same length) is renamed to it.
#[test]
fn bad_alignment_is_named() {
    let dir = TempDir::new("gguf-align");
    let bytes = std::fs::read(gguf("llada-tiny-q8_0.gguf")).unwrap();
    let renamed = patch(&bytes, b"GGUF", b"llada.block_count", b"general.alignment");
    for value in [0u32, 3, 48] {
        let path = dir.file(&format!("align{value}.gguf"));
        let mut from = 4u32.to_le_bytes().to_vec();
        from.extend(4u32.to_le_bytes());
        let mut to = 4u32.to_le_bytes().to_vec();
        to.extend(value.to_le_bytes());
        std::fs::write(&path, patch(&renamed, b"general.alignment", &from, &to)).unwrap();
        let err = load_err(&path, &LoadOptions::new(DType::F32));
        assert!(
            err.contains(&format!("align{value}.gguf"))
                && err.contains(&format!("`general.alignment` = {value}"))
                && err.contains("power of two"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// `head_count` 0 or not dividing `embedding_length` (128) is named as such (it was blamed on
/// the RoPE dimension).
#[test]
fn bad_head_count_is_named() {
    let dir = TempDir::new("gguf-heads");
    let bytes = std::fs::read(gguf("llada-tiny-q8_0.gguf")).unwrap();
    for heads in [0u32, 3] {
        let path = dir.file(&format!("heads{heads}.gguf"));
        let mut from = 4u32.to_le_bytes().to_vec();
        from.extend(4u32.to_le_bytes());
        let mut to = 4u32.to_le_bytes().to_vec();
        to.extend(heads.to_le_bytes());
        std::fs::write(
            &path,
            patch(&bytes, b"llada.attention.head_count", &from, &to),
        )
        .unwrap();
        let err = load_err(&path, &LoadOptions::new(DType::F32));
        assert!(
            err.contains(&format!("heads{heads}.gguf"))
                && err.contains(&format!("`llada.attention.head_count` = {heads}"))
                && err.contains("`llada.embedding_length` = 128")
                && !err.contains("rope"),
            "{err}"
        );
    }
}

#[test]
fn unknown_tensor_type_is_named() {
    let dir = TempDir::new("gguf-type");
    let bytes = std::fs::read(gguf("llada-tiny-q8_0.gguf")).unwrap();
    // The first tensor info is `output.weight`: 2 dims (128, 64) then type 8 (Q8_0); make it 23.
    let mut info = Vec::new();
    info.extend(2u32.to_le_bytes());
    info.extend(128u64.to_le_bytes());
    info.extend(64u64.to_le_bytes());
    let mut from = info.clone();
    from.extend(8u32.to_le_bytes());
    let mut to = info;
    to.extend(23u32.to_le_bytes());
    let path = dir.file("iq.gguf");
    std::fs::write(&path, patch(&bytes, b"output.weight", &from, &to)).unwrap();
    let err = load_err(&path, &LoadOptions::new(DType::F32));
    assert!(
        err.contains("iq.gguf") && err.contains("tensor type 23 (IQ4_XS)") && err.contains("Q4_K"),
        "{err}"
    );
}

#[test]
fn quantize_of_a_gguf_is_refused() {
    let opts = LoadOptions::new(DType::F32).quantized(Some(QuantType::Q4K));
    let err = load_err(&gguf("llada-tiny-q8_0.gguf"), &opts);
    assert!(
        err.contains("llada-tiny-q8_0.gguf")
            && err.contains("--quantize q4_k")
            && err.contains("Q8_0 x 30"),
        "{err}"
    );
}

#[test]
fn no_tokenizer_is_named() {
    let dir = TempDir::new("gguf-tok");
    let bytes = std::fs::read(gguf("dream-tiny-q8_0.gguf")).unwrap();
    // tokenizer.ggml.model "gpt2" -> "gpt3": not rebuildable, and no tokenizer.json beside.
    let path = dir.file("d.gguf");
    std::fs::write(
        &path,
        patch(&bytes, b"tokenizer.ggml.model", b"gpt2", b"gpt3"),
    )
    .unwrap();
    let err = load_err(&path, &LoadOptions::new(DType::F32));
    assert!(
        err.contains("d.gguf")
            && err.contains("no usable tokenizer")
            && err.contains("\"gpt3\"")
            && err.contains("tokenizer.json"),
        "{err}"
    );
    // A tokenizer.json beside the file is used instead.
    std::fs::copy(
        bundled_model("dream-tiny").join("tokenizer.json"),
        dir.file("tokenizer.json"),
    )
    .unwrap();
    let m = load_model(&path, &Device::Cpu, DType::F32).unwrap();
    assert!(m.info.tokenizer_source.ends_with("tokenizer.json"));
}

/// Measurement (ignored; docs/BENCHMARKS.md "Quantized weights"): for every tiny-arith prompt
/// followed by 16 masks, the share of canvas rows whose argmax equals the f32 model's, and the
/// largest logit difference, for llama-quantize's Q8_0 file and in-situ q8_0 / q4_k. Run with
/// `cargo test -p fastdllm-models --test gguf measure_ -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_forward_agreement() {
    let root = bundled_model("..");
    let prompts: Vec<String> = std::fs::read_to_string(root.join("tasks/tiny-arith.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for name in ["llada-tiny", "dream-tiny"] {
        let f32m = load_model(&bundled_model(name), &Device::Cpu, DType::F32).unwrap();
        let variants = [
            (
                "llama-quantize Q8_0 GGUF",
                load_model(
                    &gguf(&format!("{name}-q8_0.gguf")),
                    &Device::Cpu,
                    DType::F32,
                )
                .unwrap(),
            ),
            (
                "--quantize q8_0",
                load_model_with(
                    &bundled_model(name),
                    &Device::Cpu,
                    &LoadOptions::new(DType::F32).quantized(Some(QuantType::Q8_0)),
                )
                .unwrap(),
            ),
            (
                "--quantize q4_k (q5_0 fallback)",
                load_model_with(
                    &bundled_model(name),
                    &Device::Cpu,
                    &LoadOptions::new(DType::F32).quantized(Some(QuantType::Q4K)),
                )
                .unwrap(),
            ),
        ];
        for (label, m) in &variants {
            let (mut same, mut rows, mut worst) = (0usize, 0usize, 0f64);
            for p in &prompts {
                let mut ids = f32m.tokenizer.encode(p, true).unwrap();
                ids.extend([f32m.model.spec().mask_token_id; 16]);
                let inp = row_input(&ids, 0);
                let a = f32m.model.forward(&inp, &mut PassthroughKv).unwrap();
                let b = m.model.forward(&inp, &mut PassthroughKv).unwrap();
                let (x, y) = (argmax_rows(&a), argmax_rows(&b));
                same += x.iter().zip(&y).filter(|(p, q)| p == q).count();
                rows += x.len();
                worst = worst.max(max_abs_err(&b, &a).unwrap());
            }
            println!("{name} {label} [{}]: argmax rows equal {same}/{rows} = {:.2}%, max |dlogit| {worst:.4}", m.info.linear_weights, 100.0 * same as f64 / rows as f64);
        }
    }
}

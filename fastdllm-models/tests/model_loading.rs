//! Loading the fixture directories, and every way a model directory can be broken: each must
//! fail with a one-line message naming the file, field or tensor.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{sample_ids, TempDir};
use fastdllm_conformance::forward::row_input;
use fastdllm_conformance::paths::bundled_model;
use fastdllm_conformance::tol::{assert_close, max_abs_err, Tol};
use fastdllm_core::{ModelFamily, PassthroughKv};
use fastdllm_models::{load_config, load_model, ChatTemplate, Error};

fn load_err(dir: &std::path::Path) -> String {
    match load_model(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{}: {msg}", dir.display());
            assert!(!msg.contains('\n'), "error must be one line: {msg}");
            msg
        }
    }
}

/// Both fixtures' configs, each from its own `config.json` schema (LLaDA's OLMo-style names,
/// Dream's Qwen2 names), give the same shared fields.
#[test]
fn fixture_configs_parse() {
    for (name, family, kv_heads, eps, theta, pad) in [
        ("llada-tiny", ModelFamily::Llada, 4, 1e-5, 500_000.0, 50),
        ("dream-tiny", ModelFamily::Dream, 2, 1e-6, 1_000_000.0, 53),
    ] {
        let cfg = load_config(&bundled_model(name)).unwrap();
        assert_eq!(cfg.family, family, "{name}");
        assert_eq!(
            (
                cfg.hidden_size,
                cfg.num_layers,
                cfg.num_heads,
                cfg.num_kv_heads,
                cfg.head_dim
            ),
            (128, 4, 4, kv_heads, 32),
            "{name}"
        );
        assert_eq!(
            (cfg.intermediate_size, cfg.vocab_size, cfg.max_seq_len),
            (384, 64, 512),
            "{name}"
        );
        assert_eq!((cfg.rms_norm_eps, cfg.rope_theta), (eps, theta), "{name}");
        assert_eq!(
            (cfg.mask_token_id, cfg.pad_token_id, cfg.bos_token_id),
            (52, pad, Some(51)),
            "{name}"
        );
        assert_eq!(cfg.eos_token_ids, vec![50], "{name}");
        assert!(!cfg.tie_word_embeddings, "{name}");
    }
}

#[test]
fn fixtures_load_with_their_specs() {
    for (name, family, arch, pad) in [
        ("llada-tiny", ModelFamily::Llada, "LLaDAModelLM", 50),
        ("dream-tiny", ModelFamily::Dream, "DreamModel", 53),
    ] {
        let loaded = load_model(&bundled_model(name), &Device::Cpu, DType::F32).unwrap();
        let spec = loaded.model.spec();
        assert_eq!(spec.family, family);
        assert_eq!(
            (spec.vocab_size, spec.mask_token_id, spec.pad_token_id),
            (64, 52, pad)
        );
        assert_eq!(
            spec.eos_token_ids,
            vec![50],
            "config eos + <|endoftext|> of the tokenizer"
        );
        assert_eq!(
            (spec.num_layers, spec.head_dim, spec.max_seq_len),
            (4, 32, 512)
        );
        assert_eq!(loaded.info.architecture, arch);
        assert_eq!(loaded.info.bos_token_id, Some(51));
        assert_eq!(
            loaded.info.chat_template,
            ChatTemplate::None,
            "the fixture tokenizer has no template tokens"
        );
        assert_eq!(loaded.model.dtype(), DType::F32);
    }
}

#[test]
fn missing_directory() {
    let dir = std::env::temp_dir().join("fastdllm-models-test-no-such-dir");
    let msg = load_err(&dir);
    assert!(
        msg.contains("fastdllm-models-test-no-such-dir") && msg.contains("does not exist"),
        "{msg}"
    );
    assert!(matches!(load_config(&dir), Err(Error::MissingDir { .. })));
}

#[test]
fn missing_config() {
    let dir = TempDir::copy_of("llada-tiny", "no-config");
    std::fs::remove_file(dir.file("config.json")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("config.json not found"), "{msg}");
}

#[test]
fn malformed_config_names_file_and_line() {
    let dir = TempDir::copy_of("llada-tiny", "bad-json");
    let text = std::fs::read_to_string(dir.file("config.json")).unwrap();
    // Drop the comma after `"d_model": 128` (line 19 of the fixture; serde_json stops at the next key, line 20).
    std::fs::write(
        dir.file("config.json"),
        text.replacen("\"d_model\": 128,", "\"d_model\": 128", 1),
    )
    .unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("config.json:20:"), "{msg}");
    assert!(msg.contains("expected `,` or `}`"), "{msg}");
}

#[test]
fn wrong_field_type_names_the_field() {
    let dir = TempDir::copy_of("llada-tiny", "bad-type");
    dir.edit_config(|c| c["n_heads"] = "four".into());
    let msg = load_err(dir.path());
    assert!(
        msg.contains("config.json:") && msg.contains("invalid type: string \"four\""),
        "{msg}"
    );
    assert!(msg.contains("\"n_heads\": \"four\""), "{msg}");
}

#[test]
fn invalid_head_counts() {
    let dir = TempDir::copy_of("llada-tiny", "bad-heads");
    dir.edit_config(|c| c["n_kv_heads"] = 3.into());
    let msg = load_err(dir.path());
    assert!(
        msg.contains("config.json: invalid config field `n_kv_heads` = 3: must divide n_heads = 4"),
        "{msg}"
    );

    let dir = TempDir::copy_of("dream-tiny", "bad-heads-dream");
    dir.edit_config(|c| c["num_attention_heads"] = 3.into());
    let msg = load_err(dir.path());
    assert!(
        msg.contains("`num_key_value_heads` = 2: must divide num_attention_heads = 3"),
        "{msg}"
    );

    let dir = TempDir::copy_of("dream-tiny", "zero-layers");
    dir.edit_config(|c| c["num_hidden_layers"] = 0.into());
    let msg = load_err(dir.path());
    assert!(
        msg.contains("`num_hidden_layers` = 0: must be > 0"),
        "{msg}"
    );

    let dir = TempDir::copy_of("dream-tiny", "mask-out-of-vocab");
    dir.edit_config(|c| c["mask_token_id"] = 64.into());
    let msg = load_err(dir.path());
    assert!(
        msg.contains("`mask_token_id` = 64: must be a token id < vocab_size = 64"),
        "{msg}"
    );
}

#[test]
fn unsupported_llada_variants() {
    for (field, value, expect) in [
        (
            "weight_tying",
            serde_json::json!(true),
            "`weight_tying` = true: unsupported: only false is implemented",
        ),
        (
            "block_type",
            serde_json::json!("sequential"),
            "`block_type` = \"sequential\": unsupported",
        ),
        (
            "include_bias",
            serde_json::json!(true),
            "`include_bias` = true: unsupported",
        ),
        (
            "alibi",
            serde_json::json!(true),
            "`alibi` = true: unsupported",
        ),
        (
            "rope",
            serde_json::json!(false),
            "`rope` = false: unsupported",
        ),
        (
            "layer_norm_type",
            serde_json::json!("default"),
            "`layer_norm_type` = \"default\": unsupported",
        ),
    ] {
        let dir = TempDir::copy_of("llada-tiny", field);
        dir.edit_config(|c| c[field] = value);
        let msg = load_err(dir.path());
        assert!(msg.contains(expect), "{field}: {msg}");
    }
}

#[test]
fn unknown_architecture() {
    let dir = TempDir::copy_of("llada-tiny", "unknown-arch");
    dir.edit_config(|c| c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]));
    let msg = load_err(dir.path());
    assert!(
        msg.contains("unsupported architecture \"GPT2LMHeadModel\" (from `architectures`)"),
        "{msg}"
    );
    assert!(
        msg.contains("\"LLaDAModelLM\" | \"LLaDAMoEModelLM\" | \"DreamModel\""),
        "{msg}"
    );

    dir.edit_config(|c| {
        c.as_object_mut().unwrap().remove("architectures");
        c["model_type"] = "gpt2".into();
    });
    let msg = load_err(dir.path());
    assert!(msg.contains("\"gpt2\" (from `model_type`)"), "{msg}");
}

#[test]
fn model_type_is_the_fallback() {
    let dir = TempDir::copy_of("dream-tiny", "model-type");
    dir.edit_config(|c| {
        c.as_object_mut().unwrap().remove("architectures");
    });
    assert_eq!(load_config(dir.path()).unwrap().family, ModelFamily::Dream);
}

#[test]
fn missing_tokenizer() {
    let dir = TempDir::copy_of("dream-tiny", "no-tokenizer");
    std::fs::remove_file(dir.file("tokenizer.json")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("tokenizer.json not found"), "{msg}");
}

#[test]
fn missing_weights() {
    let dir = TempDir::copy_of("dream-tiny", "no-weights");
    std::fs::remove_file(dir.file("model.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors not found"), "{msg}");
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
}

fn fixture_tensors(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(bundled_model(name).join("model.safetensors"), &Device::Cpu)
        .unwrap()
}

#[test]
fn missing_tensor_is_named() {
    let dir = TempDir::copy_of("llada-tiny", "no-tensor");
    let mut tensors = fixture_tensors("llada-tiny");
    tensors
        .remove("model.transformer.blocks.2.q_proj.weight")
        .unwrap();
    candle_core::safetensors::save(&tensors, dir.file("model.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.starts_with("tensor `model.transformer.blocks.2.q_proj.weight` not found in "),
        "{msg}"
    );
    assert!(msg.ends_with("model.safetensors"), "{msg}");

    let dir = TempDir::copy_of("dream-tiny", "no-bias");
    let mut tensors = fixture_tensors("dream-tiny");
    tensors
        .remove("model.layers.1.self_attn.k_proj.bias")
        .unwrap();
    candle_core::safetensors::save(&tensors, dir.file("model.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.starts_with("tensor `model.layers.1.self_attn.k_proj.bias` not found"),
        "{msg}"
    );
}

#[test]
fn wrong_tensor_shape_is_named() {
    let dir = TempDir::copy_of("llada-tiny", "bad-shape");
    let mut tensors = fixture_tensors("llada-tiny");
    let head = tensors["model.transformer.ff_out.weight"]
        .narrow(0, 0, 63)
        .unwrap();
    tensors.insert("model.transformer.ff_out.weight".into(), head);
    candle_core::safetensors::save(&tensors, dir.file("model.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert_eq!(
        msg,
        "tensor `model.transformer.ff_out.weight` has shape [63, 128], expected [64, 128] (from the model config)"
    );
}

/// Splits the fixture's tensors over two shard files plus an index.
fn write_shards(dir: &TempDir, name: &str) {
    std::fs::remove_file(dir.file("model.safetensors")).unwrap();
    let tensors = fixture_tensors(name);
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let subset: HashMap<String, Tensor> = part
            .iter()
            .map(|n| (n.clone(), tensors[n].clone()))
            .collect();
        candle_core::safetensors::save(&subset, dir.file(shard)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), shard.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.file("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let dir = TempDir::copy_of("llada-tiny", "sharded");
    write_shards(&dir, "llada-tiny");
    let sharded = load_model(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(sharded.info.weight_files.len(), 2);
    let single = load_model(&bundled_model("llada-tiny"), &Device::Cpu, DType::F32).unwrap();
    let ids = sample_ids();
    let a = sharded
        .model
        .forward(&row_input(&ids, 0), &mut PassthroughKv)
        .unwrap();
    let b = single
        .model
        .forward(&row_input(&ids, 0), &mut PassthroughKv)
        .unwrap();
    assert_close(&a, &b, Tol::EXACT);
}

#[test]
fn sharded_index_with_a_missing_shard() {
    let dir = TempDir::copy_of("llada-tiny", "missing-shard");
    write_shards(&dir, "llada-tiny");
    std::fs::remove_file(dir.file("model-00002-of-00002.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.safetensors.index.json: shard \"model-00002-of-00002.safetensors\""),
        "{msg}"
    );
    assert!(msg.contains("is missing"), "{msg}");
}

#[test]
fn sharded_index_must_stay_in_the_directory() {
    let dir = TempDir::copy_of("llada-tiny", "escaping-shard");
    std::fs::remove_file(dir.file("model.safetensors")).unwrap();
    let index = serde_json::json!({"weight_map": {"model.transformer.wte.weight": "../elsewhere.safetensors"}});
    std::fs::write(dir.file("model.safetensors.index.json"), index.to_string()).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("shard paths must be relative to the model directory"),
        "{msg}"
    );
}

#[test]
fn unsupported_dtype() {
    let err = load_model(&bundled_model("llada-tiny"), &Device::Cpu, DType::U8).unwrap_err();
    assert!(err.to_string().contains("unsupported dtype U8"), "{err}");
}

#[test]
fn half_precision_loads_are_close_to_f32() {
    let ids = sample_ids();
    for name in ["llada-tiny", "dream-tiny"] {
        let f32_model = load_model(&bundled_model(name), &Device::Cpu, DType::F32).unwrap();
        let want = f32_model
            .model
            .forward(&row_input(&ids, 0), &mut PassthroughKv)
            .unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let half = load_model(&bundled_model(name), &Device::Cpu, dtype).unwrap();
            assert_eq!(half.model.dtype(), dtype);
            let got = half
                .model
                .forward(&row_input(&ids, 0), &mut PassthroughKv)
                .unwrap();
            assert_eq!(
                got.dtype(),
                DType::F32,
                "logits are f32 whatever the activation dtype"
            );
            // Relative to the logits' range: bf16 keeps ~3 significant digits.
            let diff = max_abs_err(&got, &want).unwrap();
            let same_argmax = argmax_rows(&got) == argmax_rows(&want);
            eprintln!("{name} {dtype:?} vs f32: max abs diff {diff}, same argmax {same_argmax}");
            // Dream-tiny is the more sensitive (q/k biases, RoPE in the activation dtype as in the
            // reference): about 4% of the range in bf16, 0.2% in f16.
            let allowed = if dtype == DType::BF16 { 0.1 } else { 0.01 };
            assert_close(&got, &want, Tol::of_range(allowed, &want));
        }
    }
}

fn argmax_rows(logits: &Tensor) -> Vec<u32> {
    logits
        .argmax(candle_core::D::Minus1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

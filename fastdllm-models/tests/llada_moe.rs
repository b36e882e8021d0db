//! LLaDA-MoE (`fixtures/llada-moe-tiny`, trained with the official `LLaDAMoEModelLM` class):
//! the forward goldens (`conformance/goldens/forward/llada-moe-tiny.safetensors`: the reference's
//! logits and every layer's router logits for three inputs), the router's choices, the config
//! fields the loader reads or refuses, and quantized experts.

mod common;

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::{patch, TempDir};
use fastdllm_conformance::forward::{row_input, DualKv, PrefixKv, RecordKv};
use fastdllm_conformance::paths::{bundled_model, goldens_dir};
use fastdllm_conformance::tol::{assert_close, max_abs_err, max_rel_err, Tol};
use fastdllm_core::{DiffusionLm, ModelFamily, PassthroughKv};
use fastdllm_models::{
    load_config, load_model, load_model_with, LladaModel, LoadOptions, MoeConfig, QuantType,
};

const MODEL: &str = "llada-moe-tiny";

fn golden() -> Result<HashMap<String, Tensor>> {
    let path = goldens_dir()
        .join("forward")
        .join(format!("{MODEL}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu).with_context(|| path.display().to_string())
}

fn ids(golden: &HashMap<String, Tensor>, i: usize) -> Result<Vec<u32>> {
    Ok(golden
        .get(&format!("input_ids.{i}"))
        .ok_or_else(|| anyhow!("input_ids.{i} missing"))?
        .to_dtype(DType::U32)?
        .squeeze(0)?
        .to_vec1()?)
}

fn tiny_model() -> Result<LladaModel> {
    let dir = bundled_model(MODEL);
    let cfg = load_config(&dir)?;
    // SAFETY: the fixture is only read.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )?
    };
    Ok(LladaModel::new(&cfg, vb)?)
}

/// The top-k expert indices of each row of `logits` `(tokens, E)` as a sorted set per row.
fn choices(logits: &Tensor, k: usize) -> Result<Vec<Vec<usize>>> {
    let probs: Vec<Vec<f32>> = candle_nn::ops::softmax_last_dim(logits)?.to_vec2()?;
    Ok(probs
        .iter()
        .map(|p| {
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let mut top = order[..k].to_vec();
            top.sort();
            top
        })
        .collect())
}

#[test]
fn config_reads_the_checkpoint_fields() -> Result<()> {
    let cfg = load_config(&bundled_model(MODEL))?;
    assert_eq!(cfg.family, ModelFamily::Llada);
    assert_eq!(cfg.architecture(), "LLaDAMoEModelLM");
    assert_eq!(
        cfg.moe,
        Some(MoeConfig {
            num_experts: 8,
            num_experts_per_tok: 2
        })
    );
    assert!(cfg.qk_norm);
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_layers,
            cfg.num_heads,
            cfg.head_dim,
            cfg.intermediate_size
        ),
        (128, 4, 4, 32, 96)
    );
    assert_eq!((cfg.rope_theta, cfg.rms_norm_eps), (50_000.0, 1e-5));
    assert_eq!((cfg.mask_token_id, cfg.vocab_size), (52, 64));
    Ok(())
}

/// The logits of the three golden inputs equal the official class's within the forward-golden
/// tolerance, every layer's router logits too, and the top-2 experts the router picks are the
/// reference's for every token of every layer.
#[test]
fn forward_and_routing_match_the_reference() -> Result<()> {
    let model = tiny_model()?;
    let golden = golden()?;
    let k = model.config().moe.expect("moe").num_experts_per_tok;
    for i in 0..3 {
        let ids = ids(&golden, i)?;
        let (logits, router) =
            model.forward_with_router_logits(&row_input(&ids, 0), &mut PassthroughKv)?;
        let want = &golden[&format!("logits.{i}")];
        let rel = max_rel_err(&logits, want).map_err(|e| anyhow!(e))?;
        eprintln!("{MODEL} logits.{i}: max |diff| / max(1, |golden|) = {rel:.3e}");
        assert_close(&logits, want, Tol::F32);
        assert_eq!(router.len(), 4);
        for (layer, got) in router.iter().enumerate() {
            let want = &golden[&format!("router_logits.{i}.{layer}")];
            assert_close(got, want, Tol::F32);
            assert_eq!(
                choices(got, k)?,
                choices(want, k)?,
                "input {i} layer {layer}: expert choices differ"
            );
        }
    }
    Ok(())
}

/// The same model through the any-model loader (what every front end uses) gives the same
/// logits, and the prefix / dual cached forwards of a block reproduce the full forward's block
/// rows when the tokens did not change (the router sees the same rows, so it chooses the same
/// experts).
#[test]
fn loader_and_cached_windows_agree_with_the_full_forward() -> Result<()> {
    let loaded = load_model(&bundled_model(MODEL), &Device::Cpu, DType::F32)?;
    assert_eq!(loaded.info.architecture, "LLaDAMoEModelLM");
    let model = loaded.model.as_ref();
    let golden = golden()?;
    let ids = ids(&golden, 2)?;
    let mut record = RecordKv::default();
    let full = model.forward(&row_input(&ids, 0), &mut record)?;
    assert_close(&full, &golden["logits.2"], Tol::F32);
    let (start, end) = (16, 24);
    let mut prefix = PrefixKv {
        stored: &record.layers,
        start,
    };
    let logits = model.forward(&row_input(&ids[start..], start), &mut prefix)?;
    assert_close(
        &logits,
        &full.narrow(1, start, ids.len() - start)?,
        Tol::F32,
    );
    let mut dual = DualKv::new(&record.layers, start)?;
    let logits = model.forward(&row_input(&ids[start..end], start), &mut dual)?;
    assert_close(&logits, &full.narrow(1, start, end - start)?, Tol::F32);
    Ok(())
}

fn load_err(dir: &std::path::Path) -> String {
    match load_model(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "error must be one line: {msg}");
            msg
        }
    }
}

/// The class's options this crate does not implement are refused by field name and value.
#[test]
fn unsupported_moe_variants_are_refused() {
    for (field, value, expect) in [
        (
            "shared_expert_intermediate_size",
            serde_json::json!(256),
            "`shared_expert_intermediate_size` = 256: unsupported: shared experts",
        ),
        (
            "moe_layer_freq",
            serde_json::json!([1, 0, 1, 1]),
            "`moe_layer_freq` = [1,0,1,1]: unsupported: dense (0) layers",
        ),
        (
            "moe_router_enable_expert_bias",
            serde_json::json!(true),
            "`moe_router_enable_expert_bias` = true: unsupported",
        ),
        (
            "moe_router_score_function",
            serde_json::json!("sigmoid"),
            "`moe_router_score_function` = \"sigmoid\": unsupported",
        ),
        (
            "partial_rotary_factor",
            serde_json::json!(0.5),
            "`partial_rotary_factor` = 0.5: unsupported",
        ),
        (
            "num_experts_per_tok",
            serde_json::json!(9),
            "`num_experts_per_tok` = 9: must be in 1..=8",
        ),
        (
            "num_experts",
            serde_json::Value::Null,
            "`num_experts` = (missing): required",
        ),
    ] {
        let dir = TempDir::copy_of(MODEL, field);
        dir.edit_config(|c| c[field] = value);
        let msg = load_err(dir.path());
        assert!(msg.contains(expect), "{field}: {msg}");
        assert!(msg.contains("config.json"), "{field}: {msg}");
    }
}

/// `norm_topk_prob` is read by the class's config but ignored by its MoE block (hard-coded
/// `False`), so `true` changes nothing here either.
#[test]
fn norm_topk_prob_is_ignored_as_the_reference_ignores_it() -> Result<()> {
    let dir = TempDir::copy_of(MODEL, "norm-topk");
    dir.edit_config(|c| c["norm_topk_prob"] = serde_json::json!(true));
    let golden = golden()?;
    let ids = ids(&golden, 0)?;
    let loaded = load_model(dir.path(), &Device::Cpu, DType::F32)?;
    let logits = loaded
        .model
        .forward(&row_input(&ids, 0), &mut PassthroughKv)?;
    assert_close(&logits, &golden["logits.0"], Tol::F32);
    Ok(())
}

/// A layer's missing expert tensor is named.
#[test]
fn missing_expert_tensor_is_named() -> Result<()> {
    let dir = TempDir::copy_of(MODEL, "missing-expert");
    let path = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    tensors.remove("model.layers.2.mlp.experts.5.up_proj.weight");
    candle_core::safetensors::save(&tensors, &path)?;
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.layers.2.mlp.experts.5.up_proj.weight"),
        "{msg}"
    );
    Ok(())
}

/// Experts quantized at load (`--quantize q8_0`): every expert and the attention are Q8_0, the
/// routers stay f32 as `llama-quantize` keeps `ffn_gate_inp` (so this model routes like the
/// llama.cpp Q8_0 file below), and the logits stay close to the f32 reference's
/// ([`assert_quantized_close`]). Q4_K experts on rows of whole super-blocks:
/// `fastdllm-models/src/llada_moe.rs` tests.
#[test]
fn quantized_experts_stay_close() -> Result<()> {
    let options = LoadOptions {
        quantize: Some(QuantType::Q8_0),
        ..LoadOptions::new(DType::F32)
    };
    let loaded = load_model_with(&bundled_model(MODEL), &Device::Cpu, &options)?;
    // 4 layers x (qkv, o, 8 experts x (gate_up, down)) + head; 4 dense routers.
    assert_eq!(loaded.info.linear_weights, "f32 x 4, q8_0 x 73");
    assert_quantized_close(loaded.model.as_ref())
}

fn gguf(name: &str) -> std::path::PathBuf {
    fastdllm_conformance::paths::fixtures_dir()
        .join("gguf")
        .join(name)
}

/// The GGUF file written with llama.cpp's gguf-py as its converter writes `llada-moe`
/// (`scripts/llada-moe-gguf.py`: stacked `ffn_*_exps`, `ffn_gate_inp`, `attn_{q,k}_norm`) gives the
/// safetensors model's logits bit for bit (f32), and its config is the directory's.
#[test]
fn f32_gguf_equals_the_safetensors_model() -> Result<()> {
    let hf = load_model(&bundled_model(MODEL), &Device::Cpu, DType::F32)?;
    let gg = load_model(&gguf("llada-moe-tiny-f32.gguf"), &Device::Cpu, DType::F32)?;
    assert_eq!(gg.info.architecture, "LLaDAMoEModelLM");
    assert_eq!(gg.info.config.moe, hf.info.config.moe);
    assert!(gg.info.config.qk_norm);
    assert_eq!(
        (gg.info.config.intermediate_size, gg.info.config.rope_theta),
        (96, 50_000.0)
    );
    let golden = golden()?;
    for i in 0..3 {
        let ids = ids(&golden, i)?;
        let a = hf.model.forward(&row_input(&ids, 0), &mut PassthroughKv)?;
        let b = gg.model.forward(&row_input(&ids, 0), &mut PassthroughKv)?;
        assert_close(&b, &a, Tol::EXACT);
    }
    Ok(())
}

/// `llama-quantize ... Q8_0` of that file: the stacked expert tensors stay Q8_0 (each expert its
/// own block tensor, split from the stack), the router stays F32 as llama-quantize left it, the
/// logits stay close to f32 ([`assert_quantized_close`]).
#[test]
fn q8_0_gguf_experts_stay_quantized_and_close() -> Result<()> {
    let gg = load_model(&gguf("llada-moe-tiny-q8_0.gguf"), &Device::Cpu, DType::F32)?;
    // 4 layers x (qkv, o, 8 experts x (gate_up, down)) + head in Q8_0; llama-quantize keeps the
    // 4 routers (`ffn_gate_inp`) in F32.
    assert_eq!(gg.info.linear_weights, "f32 x 4, q8_0 x 73");
    assert_quantized_close(gg.model.as_ref())
}

/// A stacked expert tensor whose rows are not whole blocks of its type (here Q4_K's 256 over the
/// tiny experts' rows of 128) is refused when the file is opened, in one line naming the file and
/// the tensor, not a panic in the block decoder.
#[test]
fn expert_rows_not_whole_q4_k_blocks_are_named() {
    let dir = TempDir::new("moe-q4k-rows");
    let bytes = std::fs::read(gguf("llada-moe-tiny-q8_0.gguf")).unwrap();
    // The tensor info of blk.0.ffn_gate_exps.weight: 3 dims (128, 96, 8), type 8 (Q8_0) -> 12
    // (Q4_K).
    let mut dims = Vec::new();
    dims.extend(3u32.to_le_bytes());
    for d in [128u64, 96, 8] {
        dims.extend(d.to_le_bytes());
    }
    let (mut from, mut to) = (dims.clone(), dims);
    from.extend(8u32.to_le_bytes());
    to.extend(12u32.to_le_bytes());
    let path = dir.file("rows.gguf");
    std::fs::write(
        &path,
        patch(&bytes, b"blk.0.ffn_gate_exps.weight", &from, &to),
    )
    .unwrap();
    let err = match load_model(&path, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("a Q4_K tensor with rows of 128 must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(!err.contains('\n'), "{err}");
    assert!(
        err.contains("rows.gguf")
            && err.contains("`blk.0.ffn_gate_exps.weight`")
            && err.contains("Q4_K")
            && err.contains("rows of 128 values"),
        "{err}"
    );
}

/// A quantized model's logits on the three golden inputs: not equal to the f32 reference's, the
/// same argmax on every mask row (the rows whose logits generation reads; a prompt row's top two
/// may be a near tie of the reference itself: input 0's row 4, 0.016 apart), and within twice the
/// dense models' Q8_0 bound (models_gguf.rs): a token whose two best experts are nearly tied may
/// swap one for the next under quantized weights.
fn assert_quantized_close(model: &dyn DiffusionLm) -> Result<()> {
    let golden = golden()?;
    let mask = 52;
    for i in 0..3 {
        let ids = ids(&golden, i)?;
        let logits = model.forward(&row_input(&ids, 0), &mut PassthroughKv)?;
        let want = &golden[&format!("logits.{i}")];
        let argmax = |t: &Tensor| -> Result<Vec<u32>> {
            let all: Vec<u32> = t.squeeze(0)?.argmax(1)?.to_vec1()?;
            Ok(all
                .into_iter()
                .zip(&ids)
                .filter(|(_, &id)| id == mask)
                .map(|(a, _)| a)
                .collect())
        };
        assert_eq!(argmax(&logits)?, argmax(want)?, "input {i}");
        let diff = max_abs_err(&logits, want).map_err(|e| anyhow!(e))?;
        assert!(diff > 0.0, "input {i}: quantized logits equal f32");
        assert_close(
            &logits,
            want,
            Tol {
                atol: 1.0,
                rtol: 0.0,
            },
        );
    }
    Ok(())
}

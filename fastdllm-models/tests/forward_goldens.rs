//! Forward-pass goldens (conformance/goldens/forward/*.safetensors, FORMAT.md section 7): the
//! logits of the reference PyTorch models (f32, CPU) for three plain forwards per fixture and for
//! the prefix- and dual-cache forwards of one block step, compared with `fastdllm-models` loaded
//! from the fixture directories in f32 on the CPU.
//!
//! The goldens are the models' **raw** output. LLaDA's forward returns the same thing; Dream's
//! returns aligned (shifted) rows, so the golden is shifted the same way before the comparison
//! (aligned row j = raw row j-1, row 0 keeps its own): that checks the network and the shift.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use fastdllm_conformance::forward::{row_input, DualKv, PrefixKv, RecordKv};
use fastdllm_conformance::paths::{bundled_model, goldens_dir};
use fastdllm_conformance::tol::{assert_close, max_rel_err, Tol};
use fastdllm_core::{LogitRows, ModelFamily, PassthroughKv};

struct Golden {
    tensors: HashMap<String, Tensor>,
    block_start: usize,
    block_end: usize,
}

fn read_golden(model: &str) -> Result<Golden> {
    let path = goldens_dir()
        .join("forward")
        .join(format!("{model}.safetensors"));
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| path.display().to_string())?;
    // The cache block is described in forward/README.json (and in the file's metadata).
    let readme: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        goldens_dir().join("forward").join("README.json"),
    )?)?;
    let cache = &readme["files"][format!("{model}.safetensors")]["cache"];
    let block_start = cache["block_start"]
        .as_u64()
        .ok_or_else(|| anyhow!("no block_start for {model}"))? as usize;
    let block_end = cache["block_end"]
        .as_u64()
        .ok_or_else(|| anyhow!("no block_end for {model}"))? as usize;
    Ok(Golden {
        tensors,
        block_start,
        block_end,
    })
}

impl Golden {
    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| anyhow!("golden tensor {name} missing"))
    }

    /// The `(1, L)` i64 ids as u32.
    fn ids(&self, name: &str) -> Result<Vec<u32>> {
        Ok(self
            .get(name)?
            .to_dtype(DType::U32)?
            .squeeze(0)?
            .to_vec1()?)
    }
}

/// Raw rows -> aligned rows as Dream's generation code does: `cat([R[:, :1], R[:, :-1]])`.
fn shift(raw: &Tensor) -> Result<Tensor> {
    let len = raw.dim(1)?;
    Ok(Tensor::cat(
        &[&raw.narrow(1, 0, 1)?, &raw.narrow(1, 0, len - 1)?],
        1,
    )?)
}

fn expected(family: ModelFamily, raw: &Tensor) -> Result<Tensor> {
    match family {
        ModelFamily::Llada => Ok(raw.clone()),
        ModelFamily::Dream => shift(raw),
    }
}

fn check(label: &str, actual: &Tensor, expected: &Tensor) -> Result<()> {
    let rel = max_rel_err(actual, expected).map_err(|e| anyhow!("{label}: {e}"))?;
    eprintln!("{label}: max |diff| / max(1, |golden|) = {rel:.3e}");
    assert_close(actual, expected, Tol::F32);
    Ok(())
}

fn run_fixture(model_name: &str) -> Result<()> {
    let loaded = fastdllm_models::load_model(&bundled_model(model_name), &Device::Cpu, DType::F32)?;
    let model = loaded.model.as_ref();
    let family = model.spec().family;
    let golden = read_golden(model_name)?;

    for i in 0..3 {
        let ids = golden.ids(&format!("input_ids.{i}"))?;
        let logits = model.forward(&row_input(&ids, 0), &mut PassthroughKv)?;
        let want = expected(family, golden.get(&format!("logits.{i}"))?)?;
        check(&format!("{model_name} logits.{i}"), &logits, &want)?;
    }

    // Full forward of the sequence at the block start, recording every layer's K/V.
    let (start, end) = (golden.block_start, golden.block_end);
    let x_blockstart = golden.ids("cache.x_blockstart")?;
    let x_step = golden.ids("cache.x_step")?;
    let mut record = RecordKv::default();
    let full = model.forward(&row_input(&x_blockstart, 0), &mut record)?;
    check(
        &format!("{model_name} cache.full_logits_blockstart"),
        &full,
        &expected(family, golden.get("cache.full_logits_blockstart")?)?,
    )?;
    assert_eq!(record.layers.len(), model.spec().num_layers);

    // Prefix: window x_step[start:], K/V of [0, start) from the block start.
    let mut prefix = PrefixKv {
        stored: &record.layers,
        start,
    };
    let logits = model.forward(&row_input(&x_step[start..], start), &mut prefix)?;
    check(
        &format!("{model_name} cache.prefix_logits"),
        &logits,
        &expected(family, golden.get("cache.prefix_logits")?)?,
    )?;

    // Dual: block x_step[start:end] over the full-length K/V with the block rows replaced.
    let mut dual = DualKv::new(&record.layers, start)?;
    let logits = model.forward(&row_input(&x_step[start..end], start), &mut dual)?;
    check(
        &format!("{model_name} cache.dual_logits"),
        &logits,
        &expected(family, golden.get("cache.dual_logits")?)?,
    )?;
    Ok(())
}

#[test]
fn llada_tiny_matches_the_reference_forward() -> Result<()> {
    run_fixture("llada-tiny")
}

#[test]
fn dream_tiny_matches_the_reference_forward() -> Result<()> {
    run_fixture("dream-tiny")
}

/// The row subset of a forward equals the same rows of the full forward (the LM head and the
/// last layer run only for the requested rows), for both families and a window that is not at
/// position 0 of the row range.
#[test]
fn logits_rows_select_the_same_rows() -> Result<()> {
    for model_name in ["llada-tiny", "dream-tiny"] {
        let loaded =
            fastdllm_models::load_model(&bundled_model(model_name), &Device::Cpu, DType::F32)?;
        let golden = read_golden(model_name)?;
        let ids = golden.ids("input_ids.1")?;
        let len = ids.len();
        let all = loaded
            .model
            .forward(&row_input(&ids, 0), &mut PassthroughKv)?;
        for rows in [0..1, 0..5, 1..2, 3..9, len - 1..len] {
            let mut inp = row_input(&ids, 0);
            inp.logits_rows = rows.clone().into();
            let part = loaded.model.forward(&inp, &mut PassthroughKv)?;
            let want = all.narrow(1, rows.start, rows.len())?;
            assert_close(&part, &want, Tol::F32);
        }
        // Any increasing subset (the masked positions of a block), including Dream's rows 0
        // and 1, which share a raw row.
        for rows in [vec![0, 1, 4], vec![1, 3, 8], vec![2], vec![0, len - 1]] {
            let mut inp = row_input(&ids, 0);
            inp.logits_rows = LogitRows::new(rows.clone())?;
            let part = loaded.model.forward(&inp, &mut PassthroughKv)?;
            let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            let want = all.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu)?, 1)?;
            assert_close(&part, &want, Tol::F32);
        }
    }
    Ok(())
}

//! LLaDA-MoE (`LLaDAMoEModelLM`, inclusionAI/LLaDA-MoE-7B-A1B): the tensor names of the
//! mixture-of-experts LLaDA. The model is [`crate::LladaModel`] (same generation, no logits
//! shift), built from these names when its config has [`crate::config::MoeConfig`].
//!
//! Reference: `modeling_lladamoe.py` (Hugging Face remote code of
//! inclusionAI/LLaDA-MoE-7B-A1B-Instruct; OLMoE / Qwen2-MoE names), docs/ALGORITHM.md §1.4; the
//! GGUF names are llama.cpp's `LLM_ARCH_LLADA_MOE` tensor map (`convert_hf_to_gguf.py` stacks the
//! experts into `ffn_{gate,up,down}_exps`, q/k rows as in the checkpoint since the RoPE is NEOX).

use crate::transformer::{ExpertNames, MoeLayout, TensorLayout};

/// Checkpoint names (the class's `state_dict`): Qwen2's, without biases. The dense MLP names are
/// never read: every layer is a MoE layer (the config refuses `moe_layer_freq` zeros).
pub(crate) const LAYOUT: TensorLayout = TensorLayout::qwen2(false);

/// The checkpoint's QK-norm, router and expert names.
pub(crate) const MOE_LAYOUT: MoeLayout = MoeLayout {
    q_norm: "self_attn.q_norm",
    k_norm: "self_attn.k_norm",
    router: "mlp.gate",
    experts: ExpertNames::PerExpert {
        prefix: "mlp.experts",
        gate: "gate_proj",
        up: "up_proj",
        down: "down_proj",
    },
};

/// llama.cpp's names, q/k rows as in the checkpoint (NEOX RoPE).
pub(crate) const GGUF_LAYOUT: TensorLayout = TensorLayout::gguf(false, false);

/// llama.cpp's QK-norm, router and stacked expert names.
pub(crate) const GGUF_MOE_LAYOUT: MoeLayout = MoeLayout {
    q_norm: "attn_q_norm",
    k_norm: "attn_k_norm",
    router: "ffn_gate_inp",
    experts: ExpertNames::Stacked {
        gate: "ffn_gate_exps",
        up: "ffn_up_exps",
        down: "ffn_down_exps",
    },
};

/// Q4_K / Q6_K experts (`--quantize q4_k`, llama.cpp's Q4_K_M files) against the same model with
/// the dequantized weights in f32, on a shape whose rows are whole 256-value super-blocks (the
/// tiny fixture's 128 / 96 are not, so `--quantize q4_k` falls back to Q5_0 there).
///
/// What may differ: candle's Q4_K / Q6_K matmul (llama.cpp's `vec_dot_q4_K_q8_K`) quantizes each
/// input row to Q8_K (8 bits, one f32 scale per 256 values) before the dot products, where the
/// f32 model multiplies the f32 rows; the weights' values are identical. That rounding, at most
/// half a step of 1/127 of a block's largest |x|, is what the tolerance covers (measured values in
/// the tests).
#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_core::{DType, Device, Shape, Tensor};
    use candle_nn::var_builder::SimpleBackend;
    use candle_nn::{Init, VarBuilder};
    use fastdllm_core::{ForwardInput, PassthroughKv, Positions};

    use crate::config::ModelConfig;
    use crate::gguf::GgufFile;
    use crate::quant::QuantType;
    use crate::weights::{random_var_builder, Weights};
    use crate::{LladaModel, Result};

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn w256() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/gguf/llada-moe-w256-q4_k_m.gguf")
    }

    /// Three canvases of the tiny vocabulary: BOS, 20 characters, 11 masks (id 52).
    fn inputs() -> Vec<Vec<u32>> {
        (0..3u32)
            .map(|s| {
                let mut ids = vec![51];
                ids.extend((0..20u32).map(|i| (i * 7 + s * 13 + i * i * s) % 50));
                ids.extend([52; 11]);
                ids
            })
            .collect()
    }

    fn forward(model: &LladaModel, ids: &[u32]) -> Result<(Tensor, Vec<Tensor>)> {
        let input = ForwardInput {
            tokens: Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?,
            positions: Positions::Contiguous { start: 0 },
            window_start: 0,
            key_bias: None,
            logits_rows: (0..ids.len()).into(),
        };
        model.forward_with_router_logits(&input, &mut PassthroughKv)
    }

    /// Per row of router logits `(tokens, E)`: the top-`k` experts (sorted) and the logit gap
    /// between the `k`-th and the `k+1`-th expert (the softmax keeps the logits' order).
    fn top_k(logits: &Tensor, k: usize) -> Result<Vec<(Vec<usize>, f32)>> {
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        Ok(rows
            .iter()
            .map(|l| {
                let mut order: Vec<usize> = (0..l.len()).collect();
                order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
                let gap = l[order[k - 1]] - l.get(order[k]).map_or(f32::NEG_INFINITY, |&q| q);
                let mut top = order[..k].to_vec();
                top.sort();
                (top, gap)
            })
            .collect())
    }

    /// Bound on max |logit diff| / max |logit| between a Q4_K / Q6_K model and its dequantized
    /// f32 twin. Q8_K rounds each activation to half a step of 1/127 of its 256-value block's
    /// largest |x|: for Gaussian-like rows (largest about 3 sigma) a relative RMS error of about
    /// 3 / 127 / sqrt(12) = 0.7% per quantized matmul, independent between matmuls. The longest
    /// chain here is 2 layers x (qkv, o, gate/up, down) + head = 9 quantized matmuls, about
    /// 0.7% x sqrt(9) = 2% RMS; measured 2.2% (GGUF) and 3.3% (`--quantize`) at the worst logit.
    /// 6% leaves room for the worst-logit tail; a wrong weight (a shifted block, another type's
    /// decoder, an expert's rows mixed up) moves logits by their own size, 100%, and the weights
    /// before quantization are 18% away (measured).
    const TOL: f32 = 0.06;

    /// How far `quantized` is from `dense` on [`inputs`].
    struct Distance {
        /// max |logit diff| / max |logit|.
        rel: f32,
        /// The same for every layer's router logits (the worst layer).
        router_rel: f32,
        /// Tokens routed, summed over layers.
        routed: usize,
        /// Tokens whose top-`k` experts differ.
        differ: usize,
        /// Near ties: tokens whose `k`-th and `k+1`-th router logits are at most twice the
        /// token's largest router logit change apart (only these can swap experts).
        near: usize,
    }

    fn compare(quantized: &LladaModel, dense: &LladaModel) -> Result<Distance> {
        let k = dense.config().moe.expect("moe").num_experts_per_tok;
        let mut d = Distance {
            rel: 0.0,
            router_rel: 0.0,
            routed: 0,
            differ: 0,
            near: 0,
        };
        let max = |t: &Tensor| -> Result<f32> { Ok(t.abs()?.max_all()?.to_scalar::<f32>()?) };
        for ids in inputs() {
            let (qa, ra) = forward(quantized, &ids)?;
            let (qb, rb) = forward(dense, &ids)?;
            d.rel = d.rel.max(max(&(&qa - &qb)?)? / max(&qb)?);
            assert_eq!(ra.len(), rb.len());
            for (la, lb) in ra.iter().zip(&rb) {
                d.router_rel = d.router_rel.max(max(&(la - lb)?)? / max(lb)?);
                let moved: Vec<f32> = (la - lb)?.abs()?.max(1)?.to_vec1()?;
                let (ca, cb) = (top_k(la, k)?, top_k(lb, k)?);
                for (t, ((a, _), (b, gap))) in ca.iter().zip(&cb).enumerate() {
                    d.routed += 1;
                    d.differ += usize::from(a != b);
                    d.near += usize::from(*gap <= 2.0 * moved[t]);
                }
            }
        }
        Ok(d)
    }

    /// [`compare`], checked: logits and router logits within [`TOL`] (and not equal: the twin is
    /// not the same model), the experts of at most 1 token in 20 different (only near ties can
    /// swap, and the activation rounding makes few of them swap).
    fn assert_twin(what: &str, quantized: &LladaModel, dense: &LladaModel) -> Result<f32> {
        let d = compare(quantized, dense)?;
        eprintln!(
            "{what}: max |logit diff| / max |logit| = {:.3e}, router logits {:.3e}; experts \
             differ on {} of {} routings ({} near ties)",
            d.rel, d.router_rel, d.differ, d.routed, d.near
        );
        assert!(d.rel > 0.0 && d.rel < TOL, "{what}: {}", d.rel);
        assert!(d.router_rel < TOL, "{what}: router {}", d.router_rel);
        assert!(
            d.differ * 20 <= d.routed,
            "{what}: {} of {}",
            d.differ,
            d.routed
        );
        Ok(d.rel)
    }

    /// `llama-quantize ... Q4_K_M` of a random LLaDA-MoE (fixtures/gguf/llada-moe-w256-q4_k_m.gguf)
    /// loads with every expert in its stored block type, Q4_K and Q6_K (layer 1's
    /// `ffn_down_exps`), the routers F32 and the embedding still Q4_K; its forward equals the
    /// forward of the same file dequantized to f32 within [`TOL`] (measured 2.2% of the largest
    /// logit, router logits 1.8%), the experts of every token of every layer the same (0 of 192
    /// differ).
    #[test]
    fn q4_k_m_gguf_experts_match_their_dequantized_weights() -> TestResult {
        let path = w256();
        let file = GgufFile::open(&path)?;
        let cfg = file.config()?;
        let weights = Weights::gguf(&file, DType::F32, &Device::Cpu);
        let quantized = LladaModel::load(&cfg, &weights)?;
        assert_eq!(
            weights.linear_summary(),
            "f32 x 2, q4_k x 15, q4_k+q4_k+q6_k x 1, q6_k x 5"
        );

        // The same file with every tensor dequantized to F32.
        let dir = std::env::temp_dir().join(format!("fastdllm-w256-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let dense_path = dir.join("llada-moe-w256-dequantized.gguf");
        {
            let mut reader = std::fs::File::open(&path)?;
            let content = gguf_file::Content::read(&mut reader)?;
            let mut tensors = Vec::new();
            for name in content.tensor_infos.keys() {
                let qt = content.tensor(&mut reader, name, &Device::Cpu)?;
                let dense = qt.dequantize(&Device::Cpu)?;
                tensors.push((name.clone(), QTensor::quantize(&dense, GgmlDType::F32)?));
            }
            let metadata: Vec<(&str, &gguf_file::Value)> = content
                .metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v))
                .collect();
            let tensors: Vec<(&str, &QTensor)> =
                tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let mut out = std::fs::File::create(&dense_path)?;
            gguf_file::write(&mut out, &metadata, &tensors)?;
        }
        let dense_file = GgufFile::open(&dense_path)?;
        let dense_weights = Weights::gguf(&dense_file, DType::F32, &Device::Cpu);
        let dense = LladaModel::load(&dense_file.config()?, &dense_weights)?;
        assert_eq!(dense_weights.linear_summary(), "f32 x 23");
        let _ = std::fs::remove_dir_all(&dir);
        assert_twin("Q4_K_M GGUF vs its dequantized f32", &quantized, &dense)?;
        Ok(())
    }

    /// Random weights whose linear weights are `dequantize(quantize(w, Q4_K))` of the random
    /// backend's: the dense twin of the `--quantize q4_k` model drawn from the same seed.
    struct DequantizedQ4K(VarBuilder<'static>);

    impl SimpleBackend for DequantizedQ4K {
        fn get(
            &self,
            shape: Shape,
            name: &str,
            init: Init,
            dtype: DType,
            dev: &Device,
        ) -> candle_core::Result<Tensor> {
            let w = self.0.get_with_hints_dtype(shape, name, init, dtype)?;
            if name.ends_with("_proj.weight") || name == "lm_head.weight" {
                QTensor::quantize(&w, GgmlDType::Q4K)?.dequantize(dev)
            } else {
                Ok(w)
            }
        }

        fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
            candle_core::bail!("random weights need a shape for {name}")
        }

        fn contains_tensor(&self, _name: &str) -> bool {
            true
        }
    }

    /// `--quantize q4_k` of a LLaDA-MoE checkpoint (random weights of the w256 shape): every
    /// expert, attention and head weight in true Q4_K (rows of 256), the routers kept dense as
    /// llama-quantize keeps them; the forward equals the forward of the dequantized weights in
    /// f32 within [`TOL`] (measured 3.3% of the largest logit, router logits 3.0%; 1 token of
    /// 192 routings takes another expert, at a near tie), against 18% from the weights before
    /// quantization.
    #[test]
    fn q4_k_experts_at_load_match_their_dequantized_weights() -> TestResult {
        let cfg: ModelConfig = GgufFile::open(&w256())?.config()?;
        let seed = 7;
        let weights = Weights::quantizing(
            random_var_builder(DType::F32, &Device::Cpu, seed)?,
            "random weights",
            Some(QuantType::Q4K),
        );
        let quantized = LladaModel::load(&cfg, &weights)?;
        // 2 layers x (qkv, o, 4 experts x (gate_up, down)) + head in Q4_K; 2 routers dense.
        assert_eq!(weights.linear_summary(), "f32 x 2, q4_k x 21");
        let twin = VarBuilder::from_backend(
            Box::new(DequantizedQ4K(random_var_builder(
                DType::F32,
                &Device::Cpu,
                seed,
            )?)),
            DType::F32,
            Device::Cpu,
        );
        let dense = LladaModel::load(&cfg, &Weights::new(twin, "dequantized random weights"))?;
        let rel = assert_twin("--quantize q4_k vs its dequantized f32", &quantized, &dense)?;
        // The f32 weights before quantization are further away: the twin holds the quantized
        // values, not merely similar ones.
        let original = LladaModel::load(
            &cfg,
            &Weights::new(
                random_var_builder(DType::F32, &Device::Cpu, seed)?,
                "random weights",
            ),
        )?;
        let rel_original = compare(&quantized, &original)?.rel;
        eprintln!("--quantize q4_k vs the unquantized weights: {rel_original:.3e}");
        assert!(rel_original > 2.0 * rel, "{rel_original} vs {rel}");
        Ok(())
    }
}

//! Bring your own model: a toy diffusion LM implemented outside fastdllm-models, run through
//! fastdllm-core's [`generate`] with Fast-dLLM's dual cache ([`BlockCache`], `dual`) and the
//! threshold rule (fastdllm-sampler [`Threshold`]).
//!
//! Run: `cargo run -p fastdllm-cache --example own_model`
//!
//! All a model has to do is implement [`DiffusionLm`]: take a window of the canvas, call
//! `kv.attend_kv(layer, k, v)` once per layer with the window's fresh keys and values, attend
//! over what it returns (the cache policy decides whether that is the fresh K/V, or a stored
//! canvas-length K/V with the window written into it), and return logits for the rows asked for.
//!
//! The toy: a vocabulary of 16 ids (15 = `[MASK]`, 14 = EOS/pad), keys = values = one-hot token
//! embeddings, two single-head attention layers with residuals, and logits that favour token
//! `position mod 13` with a sharpness that grows as fewer of the attended keys are masks, so
//! confidences rise as the block fills in and the threshold rule commits more per step.
//!
//! The sampler does not ask which model this is: the toy picks a [`SamplerProfile`] of its own
//! (greedy proposals with float64 softmax confidences, float64 threshold comparisons). Its
//! [`ModelSpec::family`] only tells fastdllm-core's loop that the output at position j scores
//! token j (aligned logits, [`ModelSpec::shifted_logits`] false).

use candle_core::{DType, Device, Tensor, D};
use fastdllm_cache::{BlockCache, CacheMode, CacheSettings};
use fastdllm_core::{
    generate, DecodeConfig, DiffusionLm, ForwardInput, GenerateOptions, KvView, ModelFamily,
    ModelSpec, Policies, Positions, Rng,
};
use fastdllm_sampler::{
    Precision, ProposalKind, ProposerConfig, SamplerProfile, Threshold, Unmask,
};

const VOCAB: usize = 16;
const MASK: u32 = 15;
const EOS: u32 = 14;

/// The toy's sampler: argmax proposals scored by their float64 softmax probability (the
/// Gumbel-max proposer at temperature 0), thresholds compared in float64.
const PROFILE: SamplerProfile = SamplerProfile {
    proposal: ProposalKind::LladaGumbel,
    threshold_precision: Precision::F64,
};

struct ToyLm {
    spec: ModelSpec,
    embed: Tensor,
    device: Device,
}

impl ToyLm {
    fn new() -> candle_core::Result<Self> {
        let device = Device::Cpu;
        Ok(ToyLm {
            spec: ModelSpec {
                // Aligned logits: the output at position j scores token j.
                family: ModelFamily::Llada,
                vocab_size: VOCAB,
                mask_token_id: MASK,
                eos_token_ids: vec![EOS],
                pad_token_id: EOS,
                num_layers: 2,
                num_kv_heads: 1,
                head_dim: VOCAB,
                max_seq_len: 256,
            },
            embed: Tensor::eye(VOCAB, DType::F32, &device)?,
            device,
        })
    }
}

impl DiffusionLm for ToyLm {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        DType::F32
    }

    fn forward(&self, input: &ForwardInput, kv: &mut dyn KvView) -> fastdllm_core::Result<Tensor> {
        let (batch, window) = input.tokens.dims2()?;
        // (batch, heads = 1, window, head_dim = VOCAB)
        let mut x = self
            .embed
            .index_select(&input.tokens.flatten_all()?, 0)?
            .reshape((batch, 1, window, VOCAB))?;
        for layer in 0..self.spec.num_layers {
            // The one hook: the cache policy returns the keys/values to attend over.
            let (k, v) = kv.attend_kv(layer, &x, &x)?;
            let scores = x.matmul(&k.t()?)?; // (batch, 1, window, keys)
            let max = scores.max_keepdim(D::Minus1)?;
            let e = scores.broadcast_sub(&max)?.exp()?;
            let attn = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            x = (x + attn.matmul(&v.contiguous()?)?)?;
        }
        let x = x.squeeze(1)?; // (batch, window, VOCAB)
        let positions: Tensor = match &input.positions {
            Positions::Contiguous { start } => {
                let p = Tensor::arange(*start as u32, (*start + window) as u32, &self.device)?;
                p.unsqueeze(0)?
                    .broadcast_as((batch, window))?
                    .contiguous()?
            }
            Positions::PerRow(p) => p.clone(),
        };
        let target = (positions.to_dtype(DType::F32)? / 13.0)?
            .floor()?
            .affine(-13.0, 0.0)?
            .add(&positions.to_dtype(DType::F32)?)?
            .to_dtype(DType::U32)?;
        let one_hot = self
            .embed
            .index_select(&target.flatten_all()?, 0)?
            .reshape((batch, window, VOCAB))?;
        // Share of the residual stream that is still mask: high early in a block, low later.
        let mask_share = (x.narrow(D::Minus1, MASK as usize, 1)? / x.sum_keepdim(D::Minus1)?)?;
        let sharpness = mask_share.affine(-8.0, 9.0)?; // 1 (all masks) .. 9 (no mask)
        let mut bias = vec![0f32; VOCAB];
        bias[MASK as usize] = -1e4; // never propose the mask itself
        let bias = Tensor::new(bias, &self.device)?;
        let logits = one_hot.broadcast_mul(&sharpness)?.broadcast_add(&bias)?;
        let rows = Tensor::new(
            input
                .logits_rows
                .as_slice()
                .iter()
                .map(|&r| r as u32)
                .collect::<Vec<_>>(),
            &self.device,
        )?;
        Ok(logits.index_select(&rows, 1)?)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = ToyLm::new()?;
    let prompt: Vec<u32> = vec![1, 2, 3, 4, 5];
    let cfg = DecodeConfig {
        gen_length: 32,
        block_length: 8,
        steps: 32,
        ..Default::default()
    };
    cfg.validate()?;
    let unmask = Unmask::Threshold { threshold: 0.9 };
    let mut answers = Vec::new();
    for mode in [CacheMode::Off, CacheMode::Dual] {
        let mut cache = BlockCache::new(CacheSettings::new(mode))?;
        let mut proposer = ProposerConfig::default().build(PROFILE, &unmask)?;
        let mut threshold = Threshold::new(0.9, PROFILE.threshold_precision);
        let out = generate(
            &model,
            std::slice::from_ref(&prompt),
            &cfg,
            Policies {
                cache: &mut cache,
                proposer: proposer.as_mut(),
                unmask: &mut threshold,
            },
            &mut [Rng::new(0)],
            &GenerateOptions::default(),
        )?;
        let row = &out.rows[0];
        println!(
            "cache {:<5} threshold=0.9: nfe {:>2}, tokens per step {:?}",
            mode.as_str(),
            out.nfe,
            row.tokens_per_step
        );
        println!("  answer {:?}", row.generated);
        // The toy's argmax at position p is always p mod 13, whatever the cache.
        for (i, &t) in row.generated.iter().enumerate() {
            assert_eq!(t as usize, (prompt.len() + i) % 13, "answer position {i}");
        }
        assert!(
            out.nfe < cfg.gen_length,
            "the threshold rule commits several tokens per step"
        );
        answers.push(row.generated.clone());
    }
    assert_eq!(answers[0], answers[1]);
    Ok(())
}

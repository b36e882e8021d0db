//! The shared bidirectional pre-norm transformer stack both models are made of.
//!
//! Reference: LLaDA (`modeling_llada.py`, `block_type = "llama"`) and Dream (`modeling_dream.py`,
//! Qwen2 layers without the causal mask) compute the same thing (docs/ALGORITHM.md §1.1.3,
//! §1.2.3):
//! `h = embed[ids]`; per layer `h += attn(norm(h))`, `h += mlp(norm(h))`; `norm(h) W_head^T`.
//! The architectures differ only in tensor names, q/k/v biases, RoPE precision, epsilon and theta,
//! which [`TensorLayout`], [`RopePrecision`] and the [`ModelConfig`] carry, and in Dream's logits
//! shift, which `DreamModel` does on top of [`Transformer::hidden_states`]. Deviations: the final norm and the LM
//! head run only for the rows whose logits are asked for, and the last layer computes its queries,
//! output projection and MLP only for those rows (keys and values still cover the whole window),
//! which is exact because nothing after the last layer mixes positions (docs/ALGORITHM.md §1.3).
//!
//! LLaDA-MoE (docs/ALGORITHM.md §1.4) is the same stack with QK-norm in the attention and a
//! sparse mixture of experts ([`SparseMoe`]) in place of the dense MLP; [`MoeLayout`] names its
//! extra tensors.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use fastdllm_core::{ForwardInput, KvView};

use crate::config::ModelConfig;
use crate::layers::attention::{check_key_bias, Attention};
use crate::layers::embedding::Embedding;
use crate::layers::linear::Linear;
use crate::layers::mlp::Mlp;
use crate::layers::moe::SparseMoe;
use crate::layers::rms_norm::RmsNorm;
use crate::layers::rope::{Rope, RopeAt, RopePrecision};
use crate::weights::{InitKind, LinearPart, Weights};
use crate::{Error, Result};

/// Checkpoint tensor names of one architecture. Block names are relative to
/// `{block_prefix}.{i}.`; the others are full names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TensorLayout {
    pub(crate) embed: &'static str,
    pub(crate) block_prefix: &'static str,
    pub(crate) attn_norm: &'static str,
    /// Projection names without the `.weight` / `.bias` suffix.
    pub(crate) q_proj: &'static str,
    pub(crate) k_proj: &'static str,
    pub(crate) v_proj: &'static str,
    pub(crate) o_proj: &'static str,
    pub(crate) ff_norm: &'static str,
    pub(crate) gate_proj: &'static str,
    pub(crate) up_proj: &'static str,
    pub(crate) down_proj: &'static str,
    pub(crate) final_norm: &'static str,
    pub(crate) lm_head: &'static str,
    /// Whether q, k and v have a bias (Dream) or not (LLaDA).
    pub(crate) qkv_bias: bool,
    /// Whether the stored q and k rows are permuted for GGML's interleaved RoPE (LLaDA in GGUF).
    pub(crate) rope_permuted_qk: bool,
}

impl TensorLayout {
    /// Qwen2's Hugging Face names (`model.layers.{i}.self_attn.q_proj`, ...), which Dream and
    /// LLaDA-MoE checkpoints use.
    pub(crate) const fn qwen2(qkv_bias: bool) -> Self {
        Self {
            embed: "model.embed_tokens.weight",
            block_prefix: "model.layers",
            attn_norm: "input_layernorm",
            q_proj: "self_attn.q_proj",
            k_proj: "self_attn.k_proj",
            v_proj: "self_attn.v_proj",
            o_proj: "self_attn.o_proj",
            ff_norm: "post_attention_layernorm",
            gate_proj: "mlp.gate_proj",
            up_proj: "mlp.up_proj",
            down_proj: "mlp.down_proj",
            final_norm: "model.norm.weight",
            lm_head: "lm_head.weight",
            qkv_bias,
            rope_permuted_qk: false,
        }
    }

    /// llama.cpp's tensor names (gguf-py `MODEL_TENSORS`), the same for LLaDA and Dream.
    pub(crate) const fn gguf(qkv_bias: bool, rope_permuted_qk: bool) -> Self {
        Self {
            embed: "token_embd.weight",
            block_prefix: "blk",
            attn_norm: "attn_norm",
            q_proj: "attn_q",
            k_proj: "attn_k",
            v_proj: "attn_v",
            o_proj: "attn_output",
            ff_norm: "ffn_norm",
            gate_proj: "ffn_gate",
            up_proj: "ffn_up",
            down_proj: "ffn_down",
            final_norm: "output_norm.weight",
            lm_head: "output.weight",
            qkv_bias,
            rope_permuted_qk,
        }
    }
}

/// Where an expert's projections are stored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ExpertNames {
    /// One tensor per expert, `{block}{prefix}.{e}.{gate,up,down}` (Hugging Face).
    PerExpert {
        prefix: &'static str,
        gate: &'static str,
        up: &'static str,
        down: &'static str,
    },
    /// The experts stacked along a leading axis, `{block}{gate,up,down}.weight` of shape
    /// `(num_experts, out, in)` (llama.cpp's `ffn_{gate,up,down}_exps`).
    Stacked {
        gate: &'static str,
        up: &'static str,
        down: &'static str,
    },
}

/// The tensors a mixture-of-experts model adds to a [`TensorLayout`] (relative to the block
/// prefix, without `.weight`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MoeLayout {
    /// Per-head q / k RMSNorm weights, `(head_dim,)` (read when the config has `qk_norm`).
    pub(crate) q_norm: &'static str,
    pub(crate) k_norm: &'static str,
    /// The router, `(num_experts, hidden)`.
    pub(crate) router: &'static str,
    pub(crate) experts: ExpertNames,
}

/// `name` without its `.weight` suffix.
fn base(name: &str) -> &str {
    name.strip_suffix(".weight").unwrap_or(name)
}

/// A block's feed-forward part.
#[derive(Debug, Clone)]
enum FeedForward {
    Dense(Mlp),
    Moe(SparseMoe),
}

impl FeedForward {
    fn weight_bytes(&self) -> u64 {
        match self {
            FeedForward::Dense(mlp) => mlp.weight_bytes(),
            FeedForward::Moe(moe) => moe.weight_bytes(),
        }
    }

    fn forward(&self, x: &Tensor, router_logits: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        match self {
            FeedForward::Dense(mlp) => mlp.forward(x),
            FeedForward::Moe(moe) => moe.forward(x, router_logits),
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    ff_norm: RmsNorm,
    ffn: FeedForward,
}

/// Embedding, layers, final norm and LM head.
#[derive(Debug, Clone)]
pub(crate) struct Transformer {
    /// Shape: `(vocab, hidden)`.
    embed: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    hidden_size: usize,
    vocab_size: usize,
    device: Device,
    dtype: DType,
}

impl Transformer {
    /// Reads every tensor of `layout` from `weights`, checking shapes against `dims` (a validated
    /// config). With `dims.tie_word_embeddings`, the LM head is the embedding matrix and
    /// `layout.lm_head` is not read.
    pub(crate) fn load(
        dims: &ModelConfig,
        rope_precision: RopePrecision,
        layout: &TensorLayout,
        weights: &Weights,
    ) -> Result<Self> {
        Self::load_with(dims, rope_precision, layout, None, weights)
    }

    /// [`Transformer::load`] of a model that may have QK-norm and mixture-of-experts layers
    /// (`dims.qk_norm`, `dims.moe`), whose extra tensors `moe_layout` names.
    ///
    /// Errors: the config asks for QK-norm or experts and `moe_layout` is `None`.
    pub(crate) fn load_with(
        dims: &ModelConfig,
        rope_precision: RopePrecision,
        layout: &TensorLayout,
        moe_layout: Option<&MoeLayout>,
        weights: &Weights,
    ) -> Result<Self> {
        if (dims.qk_norm || dims.moe.is_some()) && moe_layout.is_none() {
            return Err(Error::config(
                "moe",
                format!("{:?} (qk_norm {})", dims.moe, dims.qk_norm),
                format!(
                    "this architecture ({}) has no expert or QK-norm tensors",
                    dims.architecture()
                ),
            ));
        }
        let (hidden, vocab) = (dims.hidden_size, dims.vocab_size);
        // The LM head first: it is the largest matrix (vocab x hidden), and while it is being
        // packed its file copy and its packed copy are both resident. Built first, that pair
        // sits on top of nothing else; built last it sat on top of every other weight and set
        // the load's peak RSS.
        let head_name = if dims.tie_word_embeddings {
            layout.embed
        } else {
            layout.lm_head
        };
        let lm_head = weights.linear(
            &[LinearPart {
                name: base(head_name),
                out_features: vocab,
                rope_permuted_heads: None,
            }],
            hidden,
            false,
        )?;
        let embed = weights.embedding((vocab, hidden), layout.embed)?;
        let blocks = (0..dims.num_layers)
            .map(|i| {
                load_block(
                    dims,
                    layout,
                    moe_layout,
                    weights,
                    &format!("{}.{i}.", layout.block_prefix),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = RmsNorm::new(
            weights.get(&[hidden], layout.final_norm, InitKind::Norm)?,
            dims.rms_norm_eps,
        )?;
        let rope = Rope::new(
            dims.head_dim,
            dims.rope_theta,
            dims.max_seq_len,
            rope_precision,
            weights.dtype(),
            weights.device(),
        )?;
        Ok(Self {
            embed,
            blocks,
            final_norm,
            lm_head,
            rope,
            hidden_size: hidden,
            vocab_size: vocab,
            device: weights.device().clone(),
            dtype: weights.dtype(),
        })
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes of every stored weight: the embedding, each block's norms and projections, the
    /// final norm and the LM head (a tied head is its own packed or quantized copy).
    pub(crate) fn weight_bytes(&self) -> u64 {
        let blocks: u64 = self
            .blocks
            .iter()
            .map(|b| {
                b.attn_norm.weight_bytes()
                    + b.attn.weight_bytes()
                    + b.ff_norm.weight_bytes()
                    + b.ffn.weight_bytes()
            })
            .sum();
        self.embed.weight_bytes()
            + blocks
            + self.final_norm.weight_bytes()
            + self.lm_head.weight_bytes()
    }

    /// Runs the window through every layer, calling `kv.attend_kv` once per layer, and returns
    /// the final hidden states (before the final norm) of the window rows `rows` only.
    ///
    /// Shape: returns `(batch, rows.len(), hidden)`; `None` when `rows` is empty (the layers
    /// still run, so a cache still sees every layer's K/V).
    pub(crate) fn hidden_states(
        &self,
        input: &ForwardInput,
        kv: &mut dyn KvView,
        rows: Range<usize>,
    ) -> Result<Option<Tensor>> {
        self.hidden_states_traced(input, kv, rows, None)
    }

    /// [`Transformer::hidden_states`], pushing each MoE layer's router logits
    /// (`(batch * rows, num_experts)`, f32; the last layer's cover `rows` only) to
    /// `router_logits` when given.
    pub(crate) fn hidden_states_traced(
        &self,
        input: &ForwardInput,
        kv: &mut dyn KvView,
        rows: Range<usize>,
        mut router_logits: Option<&mut Vec<Tensor>>,
    ) -> Result<Option<Tensor>> {
        let (b, w) = input.tokens.dims2()?;
        check_rows(&rows, w)?;
        // Converted once per call rather than once per layer.
        let key_bias = match &input.key_bias {
            Some(bias) => {
                check_key_bias(bias, b)?;
                Some(bias.to_dtype(self.dtype)?)
            }
            None => None,
        };
        let rope = self
            .rope
            .at(&input.positions, b, w, input.window_start.saturating_add(w))?;
        let mut h =
            self.embed
                .forward(&input.tokens.flatten_all()?)?
                .reshape((b, w, self.hidden_size))?;
        let last = self.blocks.len().saturating_sub(1);
        for (idx, block) in self.blocks.iter().enumerate() {
            let query_rows = if idx == last { rows.clone() } else { 0..w };
            match block.attention(&h, &rope, idx, kv, key_bias.as_ref(), query_rows)? {
                Some(next) => h = block.feed_forward(&next, router_logits.as_deref_mut())?,
                None => return Ok(None),
            }
        }
        Ok(Some(h))
    }

    /// Final norm and LM head. Shape: `(batch, rows, hidden)` -> `(batch, rows, vocab)`, f32.
    pub(crate) fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let normed = self.final_norm.forward(&hidden.contiguous()?)?;
        Ok(self.lm_head.forward(&normed)?.to_dtype(DType::F32)?)
    }

    /// The empty logits of a call that asked for no rows. Shape: `(batch, 0, vocab)`, f32.
    pub(crate) fn no_logits(&self, batch: usize) -> Result<Tensor> {
        Ok(Tensor::zeros(
            (batch, 0, self.vocab_size),
            DType::F32,
            &self.device,
        )?)
    }
}

/// Output row `i` = row `source[i]` of `hidden` (`(batch, rows, hidden)`): the requested logit
/// rows picked from the contiguous rows the last layer computed. A copy, so values are exact;
/// no copy when `source` is `0..rows`.
pub(crate) fn gather_rows(hidden: &Tensor, source: &[usize]) -> Result<Tensor> {
    let identity =
        source.len() == hidden.dim(1)? && source.iter().enumerate().all(|(i, &s)| i == s);
    if identity {
        return Ok(hidden.clone());
    }
    let idx: Vec<u32> = source.iter().map(|&s| s as u32).collect();
    Ok(hidden.index_select(&Tensor::new(idx.as_slice(), hidden.device())?, 1)?)
}

/// Fails unless `rows` is a range inside a window of `window_len` tokens.
pub(crate) fn check_rows(rows: &Range<usize>, window_len: usize) -> Result<()> {
    if rows.end > window_len || rows.start > rows.end {
        return Err(fastdllm_core::Error::setting(
            "logits_rows",
            format!("{}..{}", rows.start, rows.end),
            format!("a range within the window 0..{window_len}"),
        )
        .into());
    }
    Ok(())
}

impl Block {
    /// The attention half with its residual; `None` when `query_rows` is empty (K/V still
    /// handed to `kv`).
    ///
    /// Shape: `x` `(batch, window_len, hidden)` -> `(batch, query_rows.len(), hidden)`.
    fn attention(
        &self,
        x: &Tensor,
        rope: &RopeAt,
        layer_idx: usize,
        kv: &mut dyn KvView,
        key_bias: Option<&Tensor>,
        query_rows: Range<usize>,
    ) -> Result<Option<Tensor>> {
        let w = x.dim(1)?;
        let projected = self
            .attn
            .project(&self.attn_norm.forward(x)?, rope, layer_idx, kv)?;
        if query_rows.is_empty() {
            return Ok(None);
        }
        let attn = self
            .attn
            .attend(&projected, rope, key_bias, query_rows.clone())?;
        let residual = if query_rows == (0..w) {
            x.clone()
        } else {
            x.narrow(1, query_rows.start, query_rows.len())?
        };
        Ok(Some((residual + attn)?))
    }

    /// The feed-forward half with its residual (pushing a MoE layer's router logits to
    /// `router_logits` when given). Shape: `(batch, rows, hidden)` -> same.
    fn feed_forward(&self, h: &Tensor, router_logits: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        let mlp = self.ffn.forward(&self.ff_norm.forward(h)?, router_logits)?;
        Ok((h + mlp)?)
    }
}

pub(crate) fn plain(name: &str, out_features: usize) -> LinearPart<'_> {
    LinearPart {
        name,
        out_features,
        rope_permuted_heads: None,
    }
}

fn load_block(
    dims: &ModelConfig,
    layout: &TensorLayout,
    moe_layout: Option<&MoeLayout>,
    weights: &Weights,
    prefix: &str,
) -> Result<Block> {
    let hidden = dims.hidden_size;
    let q_out = dims.num_heads * dims.head_dim;
    let kv_out = dims.num_kv_heads * dims.head_dim;
    let name = |part: &str, suffix: &str| format!("{prefix}{part}{suffix}");
    let (q_name, k_name, v_name) = (
        name(layout.q_proj, ""),
        name(layout.k_proj, ""),
        name(layout.v_proj, ""),
    );
    let permuted = |heads: usize| layout.rope_permuted_qk.then_some(heads);
    let qkv = weights.linear(
        &[
            LinearPart {
                name: &q_name,
                out_features: q_out,
                rope_permuted_heads: permuted(dims.num_heads),
            },
            LinearPart {
                name: &k_name,
                out_features: kv_out,
                rope_permuted_heads: permuted(dims.num_kv_heads),
            },
            LinearPart {
                name: &v_name,
                out_features: kv_out,
                rope_permuted_heads: None,
            },
        ],
        hidden,
        layout.qkv_bias,
    )?;
    let o_name = name(layout.o_proj, "");
    let out = weights.linear(&[plain(&o_name, hidden)], q_out, false)?;
    let mut attn = Attention::new(qkv, out, dims.num_heads, dims.num_kv_heads, dims.head_dim);
    let head_norm = |part: &str| -> Result<RmsNorm> {
        RmsNorm::new(
            weights.get(&[dims.head_dim], &name(part, ".weight"), InitKind::Norm)?,
            dims.rms_norm_eps,
        )
    };
    if let (true, Some(moe)) = (dims.qk_norm, moe_layout) {
        attn = attn.with_qk_norm(head_norm(moe.q_norm)?, head_norm(moe.k_norm)?);
    }
    let norm = |part: &str| -> Result<RmsNorm> {
        RmsNorm::new(
            weights.get(&[hidden], &name(part, ".weight"), InitKind::Norm)?,
            dims.rms_norm_eps,
        )
    };
    let ffn = match (dims.moe, moe_layout) {
        (Some(moe), Some(moe_layout)) => {
            let router_name = name(moe_layout.router, "");
            let router = weights.router(&router_name, moe.num_experts, hidden)?;
            let experts = weights.experts(
                prefix,
                &moe_layout.experts,
                moe.num_experts,
                hidden,
                dims.intermediate_size,
            )?;
            FeedForward::Moe(SparseMoe::new(router, experts, moe.num_experts_per_tok))
        }
        _ => FeedForward::Dense(load_mlp(dims, layout, weights, prefix)?),
    };
    Ok(Block {
        attn_norm: norm(layout.attn_norm)?,
        attn,
        ff_norm: norm(layout.ff_norm)?,
        ffn,
    })
}

/// The dense SwiGLU MLP of a block.
fn load_mlp(
    dims: &ModelConfig,
    layout: &TensorLayout,
    weights: &Weights,
    prefix: &str,
) -> Result<Mlp> {
    let (hidden, inter) = (dims.hidden_size, dims.intermediate_size);
    let name = |part: &str| format!("{prefix}{part}");
    let (gate_name, up_name, down_name) = (
        name(layout.gate_proj),
        name(layout.up_proj),
        name(layout.down_proj),
    );
    let gate_up = weights.linear(
        &[plain(&gate_name, inter), plain(&up_name, inter)],
        hidden,
        false,
    )?;
    let down = weights.linear(&[plain(&down_name, hidden)], inter, false)?;
    Ok(Mlp::new(gate_up, down, inter))
}

/// Rejects activation dtypes the layers are not written for.
pub(crate) fn check_dtype(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::BF16 | DType::F16 => Ok(()),
        other => Err(Error::UnsupportedDType { dtype: other }),
    }
}

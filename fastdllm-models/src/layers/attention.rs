//! Bidirectional multi-head / grouped-query self-attention through the [`KvView`] hook.
//!
//! Reference: LLaDA's `LLaDALlamaBlock.attention` (`modeling_llada.py`) and Dream's
//! `DreamSdpaAttention` (`modeling_dream.py`): q/k/v projections, RoPE on q and k, then
//! `softmax(q k^T / sqrt(head_dim)) v` over every key with **no mask** (docs/ALGORITHM.md
//! §1.1.3, §1.2.3, §6 item 1), merge heads, output projection. Deviations:
//! * q, k and v come from one fused GEMM (the three weights are concatenated at load time);
//! * the cache is not in the layer: the fresh post-RoPE K/V go through `kv.attend_kv`, which
//!   returns what to attend over (post-RoPE keys are cached, docs/ALGORITHM.md §1.3; the
//!   reference caches pre-RoPE keys and re-rotates them, equal up to rounding);
//! * GQA without copying K/V: the query heads that share a KV head are stacked along the query
//!   axis, `(b, n_heads, w, d) -> (b, n_kv, groups * w, d)`, so one batched GEMM serves them all
//!   (query head `h` uses KV head `h / groups`, as `repeat_kv` would);
//! * only the query rows the caller needs may be computed (the last layer of a forward whose
//!   logits are requested for some rows only); K/V always cover the whole window.
//! * long canvases attend in chunks of query rows whose score buffer stays within 8 MiB, so the
//!   whole `(heads, rows, keys)` score matrix is never materialised (equal up to the GEMM's
//!   rounding; test `chunked_query_rows_equal_one_pass`).
//!
//! LLaDA-MoE (`LLaDAMoEAttention`, docs/ALGORITHM.md §1.4) adds QK-norm: q and k are
//! RMS-normalised per head over `head_dim` (one weight shared by the heads) before RoPE.

use std::ops::Range;

use candle_core::Tensor;
use fastdllm_core::KvView;

use super::linear::Linear;
use super::rms_norm::RmsNorm;
use super::rope::RopeAt;
use crate::Result;

/// Self-attention with fused q/k/v projection.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    /// Rows: `num_heads * head_dim` (q), then `num_kv_heads * head_dim` (k), then the same (v).
    qkv: Linear,
    /// `(hidden, num_heads * head_dim)`, no bias.
    out: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f64,
    /// Per-head RMSNorm of q and of k (weights `(head_dim,)`), before RoPE.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
}

impl Attention {
    /// `qkv` must hold the q, k, v projections stacked along the output axis.
    pub(crate) fn new(
        qkv: Linear,
        out: Linear,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        Self {
            qkv,
            out,
            num_heads,
            num_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
            qk_norm: None,
        }
    }

    /// The same attention with q and k RMS-normalised per head by `q_norm` and `k_norm`
    /// (weights of shape `(head_dim,)`) before RoPE.
    pub(crate) fn with_qk_norm(mut self, q_norm: RmsNorm, k_norm: RmsNorm) -> Self {
        self.qk_norm = Some((q_norm, k_norm));
        self
    }

    /// Bytes of the stored projection weights.
    pub(crate) fn weight_bytes(&self) -> u64 {
        let norms = self
            .qk_norm
            .as_ref()
            .map_or(0, |(q, k)| q.weight_bytes() + k.weight_bytes());
        self.qkv.weight_bytes() + self.out.weight_bytes() + norms
    }

    /// Projects the window, rotates q and k, and hands the fresh K/V of `layer_idx` to `kv`.
    ///
    /// Shape: `x` `(batch, window_len, hidden)` (already normalised).
    pub(crate) fn project(
        &self,
        x: &Tensor,
        rope: &RopeAt,
        layer_idx: usize,
        kv: &mut dyn KvView,
    ) -> Result<Projected> {
        let (b, w, _) = x.dims3()?;
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let qkv = self.qkv.forward(x)?.reshape((b, w, nh + 2 * nkv, d))?;
        let qkv = match &self.qk_norm {
            // Over the last axis (head_dim) of every head: the reference's `[L * heads, d]` view.
            Some((q_norm, k_norm)) => Tensor::cat(
                &[
                    q_norm.forward(&qkv.narrow(2, 0, nh)?.contiguous()?)?,
                    k_norm.forward(&qkv.narrow(2, nh, nkv)?.contiguous()?)?,
                    qkv.narrow(2, nh + nkv, nkv)?,
                ],
                2,
            )?,
            None => qkv,
        };
        let k = qkv.narrow(2, nh, nkv)?.transpose(1, 2)?.contiguous()?;
        let v = qkv
            .narrow(2, nh + nkv, nkv)?
            .transpose(1, 2)?
            .contiguous()?;
        let k = rope.apply(&k)?;
        let (keys, values) = kv.attend_kv(layer_idx, &k, &v)?;
        Ok(Projected { qkv, keys, values })
    }

    /// Attention of the window rows `query_rows` over every key `kv` returned, then the output
    /// projection.
    ///
    /// Shape: `key_bias` `(batch, 1, 1, keys_len)` in the activation dtype; returns
    /// `(batch, query_rows.len(), hidden)`.
    pub(crate) fn attend(
        &self,
        projected: &Projected,
        rope: &RopeAt,
        key_bias: Option<&Tensor>,
        query_rows: Range<usize>,
    ) -> Result<Tensor> {
        self.attend_in_chunks(projected, rope, key_bias, query_rows, SCORE_CHUNK_BYTES)
    }

    /// [`Self::attend`] with score buffers of at most `chunk_bytes` (at least one query row).
    fn attend_in_chunks(
        &self,
        projected: &Projected,
        rope: &RopeAt,
        key_bias: Option<&Tensor>,
        query_rows: Range<usize>,
        chunk_bytes: usize,
    ) -> Result<Tensor> {
        let (b, w, _, _) = projected.qkv.dims4()?;
        let (nh, d) = (self.num_heads, self.head_dim);
        let q_len = query_rows.len();
        let (q, rope_q) = if query_rows == (0..w) {
            (projected.qkv.narrow(2, 0, nh)?, rope.clone())
        } else {
            let q = projected
                .qkv
                .narrow(1, query_rows.start, q_len)?
                .narrow(2, 0, nh)?;
            (q, rope.rows(query_rows)?)
        };
        let q = q.transpose(1, 2)?.contiguous()?;
        let q = (rope_q.apply(&q)? * self.scale)?;
        // Query rows in chunks whose scores stay within `chunk_bytes`: each row's scores,
        // softmax and context depend on that row only (up to the GEMM's rounding, which follows
        // the matrix shape), so a long canvas never materialises its whole (heads, rows, keys)
        // score matrix, and the buffers stay below glibc's mmap threshold instead of being
        // mapped and unmapped per layer.
        let keys_len = projected.keys.dim(2)?;
        let row_bytes = b * nh * keys_len * q.dtype().size_in_bytes();
        let chunk = (chunk_bytes / row_bytes.max(1)).clamp(1, q_len.max(1));
        let ctx = if chunk >= q_len {
            self.attend_rows(&q, projected, key_bias)?
        } else {
            let parts = (0..q_len)
                .step_by(chunk)
                .map(|start| {
                    let rows = chunk.min(q_len - start);
                    self.attend_rows(
                        &q.narrow(2, start, rows)?.contiguous()?,
                        projected,
                        key_bias,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&parts, 2)?
        };
        let ctx = ctx.transpose(1, 2)?.reshape((b, q_len, nh * d))?;
        self.out.forward(&ctx)
    }

    /// `softmax(q k^T + bias) v` for the (rotated, scaled, contiguous) query rows `q`.
    ///
    /// Shape: `q` `(batch, num_heads, rows, head_dim)` -> `(batch, num_heads, rows, head_dim)`.
    fn attend_rows(
        &self,
        q: &Tensor,
        projected: &Projected,
        key_bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, nh, rows, d) = q.dims4()?;
        // (b, nh, rows, d) -> (b, nkv, groups * rows, d) is a free view in which query head h
        // lands in the group of KV head h / groups: GQA without repeating K/V.
        let groups = nh / self.num_kv_heads;
        let q = q.reshape((b, self.num_kv_heads, groups * rows, d))?;
        let scores = q.matmul(&projected.keys.t()?)?;
        let scores = match key_bias {
            Some(bias) => scores.broadcast_add(bias)?,
            None => scores,
        };
        let probs = super::cpu_ops::softmax_last_dim(&scores)?;
        Ok(probs.matmul(&projected.values)?.reshape((b, nh, rows, d))?)
    }
}

/// Largest score buffer `(batch, heads, rows, keys)` one attention pass holds: 8 MiB, below
/// glibc's largest mmap threshold (32 MiB) so each chunk's buffers come from the heap.
const SCORE_CHUNK_BYTES: usize = 8 << 20;

/// The window's fused q/k/v projection and the K/V to attend over.
#[derive(Debug)]
pub(crate) struct Projected {
    /// Shape: `(batch, window_len, num_heads + 2 * num_kv_heads, head_dim)`, q not yet rotated.
    qkv: Tensor,
    /// Shape: `(batch, num_kv_heads, keys_len, head_dim)`, post-RoPE.
    keys: Tensor,
    /// Shape: `(batch, num_kv_heads, keys_len, head_dim)`.
    values: Tensor,
}

/// Checks that `key_bias` can broadcast over the scores of a window of `batch` rows.
pub(crate) fn check_key_bias(bias: &Tensor, batch: usize) -> Result<()> {
    let dims = bias.dims();
    let ok = dims.len() == 4 && dims[0] == batch && dims[1] == 1 && dims[2] == 1;
    if !ok {
        return Err(fastdllm_core::Error::setting(
            "key_bias",
            format!("a tensor of shape {dims:?}"),
            format!("shape [{batch}, 1, 1, keys_len]"),
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::rope::{Rope, RopePrecision};
    use candle_core::{DType, Device};
    use fastdllm_core::{PassthroughKv, Positions};

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 0.5, shape, &Device::Cpu).unwrap()
    }

    /// The GQA reshape trick equals the textbook computation with `repeat_kv` (query head h uses
    /// KV head h / groups) and per-head softmax attention.
    #[test]
    fn gqa_equals_repeat_kv() {
        let (b, w, hidden, nh, nkv, d) = (2usize, 5usize, 32usize, 4usize, 2usize, 8usize);
        let (wq, wk, wv, wo) = (
            randn(&[nh * d, hidden]),
            randn(&[nkv * d, hidden]),
            randn(&[nkv * d, hidden]),
            randn(&[hidden, nh * d]),
        );
        let bias = randn(&[(nh + 2 * nkv) * d]);
        let qkv = Linear::new(
            Tensor::cat(&[&wq, &wk, &wv], 0).unwrap(),
            Some(bias.clone()),
        )
        .unwrap();
        let attn = Attention::new(qkv, Linear::new(wo.clone(), None).unwrap(), nh, nkv, d);
        let rope = Rope::new(d, 1e4, 16, RopePrecision::F32, DType::F32, &Device::Cpu).unwrap();
        let at = rope
            .at(&Positions::Contiguous { start: 2 }, b, w, 2 + w)
            .unwrap();
        let x = randn(&[b, w, hidden]);
        let projected = attn.project(&x, &at, 0, &mut PassthroughKv).unwrap();
        let got = attn.attend(&projected, &at, None, 0..w).unwrap();
        let rows = attn.attend(&projected, &at, None, 1..4).unwrap();

        // Textbook version.
        let lin = |w: &Tensor, bias: Option<Tensor>| {
            let y = x.broadcast_matmul(&w.t().unwrap()).unwrap();
            match bias {
                Some(bias) => y.broadcast_add(&bias).unwrap(),
                None => y,
            }
        };
        let heads = |t: Tensor, n: usize| {
            t.reshape((b, w, n, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let q = heads(lin(&wq, Some(bias.narrow(0, 0, nh * d).unwrap())), nh);
        let k = heads(
            lin(&wk, Some(bias.narrow(0, nh * d, nkv * d).unwrap())),
            nkv,
        );
        let v = heads(
            lin(&wv, Some(bias.narrow(0, (nh + nkv) * d, nkv * d).unwrap())),
            nkv,
        );
        let (q, k) = (at.apply(&q).unwrap(), at.apply(&k).unwrap());
        let groups = nh / nkv;
        let mut outs = Vec::new();
        for h in 0..nh {
            let qh = q.narrow(1, h, 1).unwrap();
            let kh = k.narrow(1, h / groups, 1).unwrap();
            let vh = v.narrow(1, h / groups, 1).unwrap();
            let scores = (qh.matmul(&kh.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let probs = candle_nn::ops::softmax(&scores, candle_core::D::Minus1).unwrap();
            outs.push(probs.matmul(&vh).unwrap());
        }
        let ctx = Tensor::cat(&outs, 1)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, w, nh * d))
            .unwrap();
        let want = ctx.broadcast_matmul(&wo.t().unwrap()).unwrap();
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
        let diff = (rows - want.narrow(1, 1, 3).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    /// Query rows attended in chunks (the long-canvas path) give the one-pass result up to the
    /// GEMM's rounding (candle's gemm chooses its kernels by shape, so a row's products may round
    /// differently in a smaller matrix): every row's scores, softmax and context are its own.
    /// Chunks of 1, 3 (a partial last chunk) and 7 rows of a 13-row window, GQA, a key bias, and
    /// a subset of query rows.
    #[test]
    fn chunked_query_rows_equal_one_pass() {
        let (b, w, hidden, nh, nkv, d) = (2usize, 13usize, 32usize, 4usize, 2usize, 8usize);
        let qkv = Linear::new(randn(&[(nh + 2 * nkv) * d, hidden]), None).unwrap();
        let out = Linear::new(randn(&[hidden, nh * d]), None).unwrap();
        let attn = Attention::new(qkv, out, nh, nkv, d);
        let rope = Rope::new(d, 1e4, 32, RopePrecision::F32, DType::F32, &Device::Cpu).unwrap();
        let at = rope
            .at(&Positions::Contiguous { start: 0 }, b, w, w)
            .unwrap();
        let x = randn(&[b, w, hidden]);
        let projected = attn.project(&x, &at, 0, &mut PassthroughKv).unwrap();
        let bias = randn(&[b, 1, 1, w]);
        let row_bytes = b * nh * w * 4;
        for rows in [0..w, 2..11] {
            let whole = attn
                .attend_in_chunks(&projected, &at, Some(&bias), rows.clone(), usize::MAX)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for chunk_rows in [1, 3, 7] {
                let chunked = attn
                    .attend_in_chunks(
                        &projected,
                        &at,
                        Some(&bias),
                        rows.clone(),
                        chunk_rows * row_bytes,
                    )
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for (a, b) in chunked.iter().zip(&whole) {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "rows {rows:?}, chunks of {chunk_rows}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

//! The sparse mixture-of-experts MLP of LLaDA-MoE: a softmax router picks `top_k` SwiGLU experts
//! per token, whose outputs are summed weighted by the router's probabilities.
//!
//! Reference: `LLaDAMoESparseMoeBlock.forward` (`modeling_lladamoe.py` of
//! inclusionAI/LLaDA-MoE-7B-A1B, copied from OLMoE; docs/ALGORITHM.md §1.4):
//! `logits = x W_gate^T`; `p = softmax(logits)` in f32 over **all** experts;
//! `(w, e) = topk(p, top_k)`, the weights **not** renormalised (the class hard-codes
//! `norm_topk_prob = False`); then, for expert `0..E-1` in turn, the tokens routed to it go through
//! it as one batch and `out.index_add_(tokens, expert(x[tokens]) * w)`.
//!
//! This follows the reference's schedule, not only its values: per expert, its tokens' rows are
//! gathered and run as one GEMM per projection (the fused gate/up, then down), experts no token
//! chose are never run, and the weighted outputs are scattered into a zero output in expert index
//! order, so each token's sum is `(0 + w_a y_a) + w_b y_b` with `a < b`, the reference's
//! rounding. Deviations: ties between equal probabilities pick the lower expert index
//! (`torch.topk` leaves the order of ties unspecified); the top-k selection runs on the host
//! (one `(tokens, E)` f32 copy per layer).

use candle_core::{DType, Tensor};

use super::linear::Linear;
use super::mlp::Mlp;
use crate::Result;

/// Router and experts of one MoE layer.
#[derive(Debug, Clone)]
pub(crate) struct SparseMoe {
    /// `(num_experts, hidden)`, no bias (`mlp.gate`).
    router: Linear,
    /// Expert `e` is row `e` of the router.
    experts: Vec<Mlp>,
    top_k: usize,
}

/// Per expert, the token rows routed to it (increasing) and their routing weights.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Routes {
    pub(crate) rows: Vec<u32>,
    pub(crate) weights: Vec<f32>,
}

/// The top-`k` experts of each row of `probs` (`(tokens, E)`, row-major), grouped by expert:
/// `routes[e]` lists the rows that chose `e` and their probabilities. Highest probability first,
/// ties to the lower index (a stable sort), as `torch.topk` orders distinct values.
pub(crate) fn route(probs: &[f32], num_experts: usize, k: usize) -> Vec<Routes> {
    let mut routes = vec![Routes::default(); num_experts];
    let mut order: Vec<usize> = Vec::with_capacity(num_experts);
    for (row, p) in probs.chunks_exact(num_experts).enumerate() {
        order.clear();
        order.extend(0..num_experts);
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        for &e in &order[..k] {
            routes[e].rows.push(row as u32);
            routes[e].weights.push(p[e]);
        }
    }
    routes
}

impl SparseMoe {
    /// `router` `(num_experts, hidden)`; `experts[e]` the SwiGLU MLP of expert `e`;
    /// `1 <= top_k <= experts.len()` (checked by the config).
    pub(crate) fn new(router: Linear, experts: Vec<Mlp>, top_k: usize) -> Self {
        Self {
            router,
            experts,
            top_k,
        }
    }

    /// Bytes of the router and of every expert.
    pub(crate) fn weight_bytes(&self) -> u64 {
        self.router.weight_bytes() + self.experts.iter().map(Mlp::weight_bytes).sum::<u64>()
    }

    /// Shape: `(batch, len, hidden)` -> same, in `x`'s dtype. When `router_logits` is given, the
    /// router's logits `(batch * len, num_experts)` (f32, before the softmax) are pushed to it.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        router_logits: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let (b, w, hidden) = x.dims3()?;
        let n = b * w;
        let flat = x.reshape((n, hidden))?;
        let logits = self.router.forward(&flat)?.to_dtype(DType::F32)?;
        let num_experts = self.experts.len();
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        if let Some(out) = router_logits {
            out.push(logits);
        }
        let probs: Vec<f32> = probs.flatten_all()?.to_vec1()?;
        let routes = route(&probs, num_experts, self.top_k);

        let device = x.device();
        let mut outputs = Vec::with_capacity(num_experts);
        let mut targets: Vec<u32> = Vec::with_capacity(n * self.top_k);
        for (expert, routed) in self.experts.iter().zip(&routes) {
            if routed.rows.is_empty() {
                continue;
            }
            let m = routed.rows.len();
            let rows = Tensor::new(routed.rows.as_slice(), device)?;
            let y = expert.forward(&flat.index_select(&rows, 0)?)?;
            let weights =
                Tensor::from_slice(&routed.weights, (m, 1), device)?.to_dtype(x.dtype())?;
            outputs.push(y.broadcast_mul(&weights)?);
            targets.extend_from_slice(&routed.rows);
        }
        // One scatter-add of every expert's rows, in expert order: each token's contributions
        // are added to the zero output in increasing expert index, as the reference's loop of
        // `index_add_` does.
        let stacked = Tensor::cat(&outputs, 0)?;
        let targets = Tensor::new(targets.as_slice(), device)?;
        let out =
            Tensor::zeros((n, hidden), x.dtype(), device)?.index_add(&targets, &stacked, 0)?;
        Ok(out.reshape((b, w, hidden))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn route_takes_the_top_k_by_probability_grouped_by_expert() {
        // Row 0 prefers 2 then 0; row 1 prefers 1 then 2 (a tie between 0 and 3 below them);
        // row 2 ties 0 and 3 at the top: the lower index wins.
        let probs = [
            0.3, 0.1, 0.5, 0.1, //
            0.1, 0.5, 0.2, 0.1, //
            0.4, 0.1, 0.1, 0.4,
        ];
        let routes = route(&probs, 4, 2);
        assert_eq!(routes[0].rows, vec![0, 2]);
        assert_eq!(routes[0].weights, vec![0.3, 0.4]);
        assert_eq!(routes[1].rows, vec![1]);
        assert_eq!(routes[2].rows, vec![0, 1]);
        assert_eq!(routes[2].weights, vec![0.5, 0.2]);
        assert_eq!(routes[3].rows, vec![2]);
    }

    /// The grouped computation equals the per-token definition
    /// `sum_j p_j * expert_{e_j}(x)` over the top-k experts, experts summed in index order.
    #[test]
    fn sparse_moe_equals_the_per_token_sum() -> Result<()> {
        let dev = Device::Cpu;
        let (hidden, inter, experts, k) = (16usize, 8usize, 5usize, 2usize);
        let randn = |shape: &[usize]| Tensor::randn(0f32, 0.5, shape, &dev);
        let router_w = randn(&[experts, hidden])?;
        let mut mlps = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..experts {
            let (g, u, d) = (
                randn(&[inter, hidden])?,
                randn(&[inter, hidden])?,
                randn(&[hidden, inter])?,
            );
            mlps.push(Mlp::new(
                Linear::new(Tensor::cat(&[&g, &u], 0)?, None)?,
                Linear::new(d.clone(), None)?,
                inter,
            ));
            raw.push((g, u, d));
        }
        let moe = SparseMoe::new(Linear::new(router_w.clone(), None)?, mlps, k);
        let x = randn(&[2, 7, hidden])?;
        let mut logits = Vec::new();
        let got = moe.forward(&x, Some(&mut logits))?;
        assert_eq!(logits.len(), 1);
        assert_eq!(logits[0].dims(), &[14, experts]);

        let flat = x.reshape((14, hidden))?;
        let probs: Vec<Vec<f32>> =
            candle_nn::ops::softmax_last_dim(&flat.matmul(&router_w.t()?)?)?.to_vec2()?;
        let mut rows = Vec::new();
        for (t, p) in probs.iter().enumerate() {
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let mut chosen = order[..k].to_vec();
            chosen.sort();
            let xt = flat.narrow(0, t, 1)?;
            let mut acc = Tensor::zeros((1, hidden), DType::F32, &dev)?;
            for e in chosen {
                let (g, u, d) = &raw[e];
                let h = (candle_nn::ops::silu(&xt.matmul(&g.t()?)?)? * xt.matmul(&u.t()?)?)?;
                acc = (acc + (h.matmul(&d.t()?)? * f64::from(p[e]))?)?;
            }
            rows.push(acc);
        }
        let want = Tensor::cat(&rows, 0)?.reshape((2, 7, hidden))?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}

//! Drift of a cached (approximate) forward from the exact one: at every cached step, with
//! [`crate::GenerateOptions::drift`], the exact (no-cache) forward of the same canvas is run
//! and the logits of the rows that were candidates are compared ([`DriftStats`]). This is how a
//! cache approximation is judged against the exact path (docs/ALGORITHM.md §2.5-§2.7); the
//! extra forwards are not counted in the NFE.

use candle_core::{DType, Tensor};

use crate::canvas::Canvas;
use crate::model::{DiffusionLm, PassthroughKv};
use crate::trace::DriftStats;
use crate::Result;

/// Runs the exact forward of `canvas` on the logit columns `rows` and compares it with the
/// cached step's `logits` `(batch, rows.len(), vocab)` on the masked positions of the `active`
/// rows.
pub(crate) fn measure(
    model: &dyn DiffusionLm,
    canvas: &Canvas,
    rows: &[usize],
    key_bias: &Option<Tensor>,
    logits: &Tensor,
    active: &[bool],
) -> Result<DriftStats> {
    let seq_len = canvas.seq_len();
    let exact_in = canvas.input(&(0..seq_len), rows, key_bias, model.device())?;
    let exact = model.forward(&exact_in, &mut PassthroughKv)?;
    let cand_rows: Vec<Vec<usize>> = (0..active.len())
        .map(|r| {
            if !active[r] {
                return Vec::new();
            }
            (0..rows.len())
                .filter(|&j| canvas.rows[r][rows[j]] == canvas.mask)
                .collect()
        })
        .collect();
    drift_stats(logits, &exact, &cand_rows)
}

/// Compares cached and exact logits on the given rows of each batch row.
fn drift_stats(cached: &Tensor, exact: &Tensor, rows: &[Vec<usize>]) -> Result<DriftStats> {
    let cached = cached.to_dtype(DType::F64)?.to_vec3::<f64>()?;
    let exact = exact.to_dtype(DType::F64)?.to_vec3::<f64>()?;
    let mut s = DriftStats::empty();
    for (b, rs) in rows.iter().enumerate() {
        for &i in rs {
            let (c, e) = (&cached[b][i], &exact[b][i]);
            let dot: f64 = c.iter().zip(e).map(|(a, b)| a * b).sum();
            let nc = c.iter().map(|a| a * a).sum::<f64>().sqrt();
            let ne = e.iter().map(|a| a * a).sum::<f64>().sqrt();
            let cos = if nc > 0.0 && ne > 0.0 {
                dot / (nc * ne)
            } else {
                1.0
            };
            s.cosine_min = s.cosine_min.min(cos);
            s.cosine_mean += cos;
            for (a, b) in c.iter().zip(e) {
                s.max_abs_diff = s.max_abs_diff.max((a - b).abs());
            }
            if argmax(c) == argmax(e) {
                s.argmax_agreement += 1.0;
            }
            let (lc, le) = (log_softmax(c), log_softmax(e));
            s.kl_mean += le
                .iter()
                .zip(&lc)
                .map(|(pe, pc)| pe.exp() * (pe - pc))
                .sum::<f64>();
            s.rows += 1;
        }
    }
    if s.rows > 0 {
        let n = s.rows as f64;
        s.cosine_mean /= n;
        s.argmax_agreement /= n;
        s.kl_mean /= n;
    } else {
        s.cosine_min = 1.0;
    }
    Ok(s)
}

fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

fn log_softmax(xs: &[f64]) -> Vec<f64> {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    xs.iter().map(|x| x - lse).collect()
}

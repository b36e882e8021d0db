//! GPU parity of the proposers (feature `cuda`; skipped when no CUDA device is present).
//!
//! What: the device code paths (first-index argmax through `where_cond` + `min`, float64
//! softmax + `gather` for LLaDA, Dream's float32 device path) give the same tokens as the CPU and
//! confidences within rounding. Reference: the CPU paths, which the unit tests pin to the
//! reference semantics. Deviation: none.
#![cfg(feature = "cuda")]

use candle_core::{Device, Tensor};
use fastdllm_core::{Proposal, Proposer, Rng};
use fastdllm_sampler::{DreamProposer, DreamScore, LladaProposer, Remasking};

/// (2, 6, vocab) logits with exact ties at the maximum in some rows, including ties far apart
/// (so a GPU reduction's thread order would show).
fn logits(vocab: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(2 * 6 * vocab);
    for row in 0..12usize {
        for i in 0..vocab {
            let x = ((i * 7919 + row * 104_729) % 1000) as f32 * 0.01 - 5.0;
            v.push(x);
        }
        let base = row * vocab;
        if row % 3 == 0 {
            // A tie at the top: a late index and an early index.
            v[base + vocab - 3] = 9.0;
            v[base + 17 + row] = 9.0;
        }
        if row == 4 {
            v[base + 5] = 30.0; // a near-certain row
        }
    }
    v
}

fn run(p: &mut dyn Proposer, t: &Tensor, seed: u64) -> Vec<Vec<Proposal>> {
    p.propose(t, &mut [Rng::new(seed), Rng::new(seed + 1)])
        .expect("propose")
}

fn check(name: &str, cpu: &[Vec<Proposal>], gpu: &[Vec<Proposal>], tol: f64) {
    for (b, (c, g)) in cpu.iter().zip(gpu).enumerate() {
        for (r, (c, g)) in c.iter().zip(g).enumerate() {
            assert_eq!(c.token, g.token, "{name}: token at ({b}, {r})");
            let d = (c.confidence - g.confidence).abs();
            assert!(
                d <= tol * c.confidence.abs().max(1e-30) || d <= tol,
                "{name} ({b}, {r}): {c:?} vs {g:?}"
            );
        }
    }
}

#[test]
fn proposers_agree_on_cuda() {
    let gpu = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping: no CUDA device ({e})");
            return;
        }
    };
    for vocab in [64usize, 4099, 151_936] {
        let data = logits(vocab);
        let cpu_t = Tensor::from_vec(data.clone(), (2, 6, vocab), &Device::Cpu).unwrap();
        let gpu_t = Tensor::from_vec(data, (2, 6, vocab), &gpu).unwrap();

        for t in [0.0, 0.7] {
            let mut p = LladaProposer::new(t, Remasking::LowConfidence);
            let (c, g) = (run(&mut p, &cpu_t, 3), run(&mut p, &gpu_t, 3));
            check(&format!("llada T={t} V={vocab}"), &c, &g, 1e-12);
            if t == 0.0 {
                for (b, row) in c.iter().enumerate() {
                    for (r, prop) in row.iter().enumerate() {
                        if (b * 6 + r) % 3 == 0 {
                            assert_eq!(prop.token as usize, 17 + b * 6 + r, "first index on ties");
                        }
                    }
                }
            }
        }
        let mut p = LladaProposer::new(0.0, Remasking::Random);
        check(
            "llada random",
            &run(&mut p, &cpu_t, 5),
            &run(&mut p, &gpu_t, 5),
            0.0,
        );

        for score in [
            DreamScore::Probability,
            DreamScore::Margin,
            DreamScore::NegEntropy,
        ] {
            let mut p = DreamProposer::greedy(score);
            let (c, g) = (run(&mut p, &cpu_t, 0), run(&mut p, &gpu_t, 0));
            check(&format!("dream {score} V={vocab}"), &c, &g, 2e-5);
            // Filters and sampling go through the host path: identical.
            let mut p = DreamProposer {
                temperature: 0.8,
                top_p: Some(0.9),
                top_k: Some(50),
                score,
            };
            check(
                &format!("dream filtered {score}"),
                &run(&mut p, &cpu_t, 9),
                &run(&mut p, &gpu_t, 9),
                0.0,
            );
        }
    }
}

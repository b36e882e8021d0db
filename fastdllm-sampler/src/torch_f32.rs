//! float32 arithmetic in the order torch's CPU kernels use, for Dream's confidences.
//!
//! Dream's reference computes `softmax` in float32 (FORMAT.md §8), and a threshold decision can
//! hinge on the last bit (12 golden cases sit exactly on `f32(0.99999)`). torch 2.6's CPU softmax
//! over the last dimension (`_vec_softmax_lastdim`, aten/src/ATen/native/cpu/SoftMaxKernel.cpp)
//! does: `max` (vectorised reduce), `e = exp(x - max)` with SLEEF's `expf_u10` (FMA variant), `sum`
//! with `vec::reduce_all` (lane-wise accumulation over vectors of [`LANES`] floats, then a
//! butterfly across the lanes), and `p = e * (1 / sum)`. We reproduce that order exactly.
//!
//! Deviations: [`LANES`] is 8, torch's AVX2 kernels (what torch picks on AVX2-only x86 machines
//! such as the AMD EPYC hosts this project runs on); on an AVX-512 machine torch sums 16 lanes,
//! which rounds the sum differently in the last bit for about a fifth of the rows of the Dream
//! forward goldens. The entropy's `log` is Rust's `ln` (torch uses SLEEF's
//! `logf_u10`) and its sum uses the same lane order (torch's `sum` kernel differs), so negative
//! entropies may differ from torch's in the last bits; their ranking margins are far larger
//! (FORMAT.md §9).

/// float32 lanes of one torch CPU vector (`Vectorized<float>` of the AVX2 build).
pub const LANES: usize = 8;

// SLEEF's constants (sleefsimdsp.c), written as the shortest decimals of the same f32 values.
const R_LN2F: f32 = std::f32::consts::LOG2_E;
const L2UF: f32 = 0.693_145_75_f32;
const L2LF: f32 = 1.428_606_8e-6_f32;

/// SLEEF's `expf_u10` (FMA build), the `exp` of torch's vectorised float32 kernels.
/// Within 1 ulp of the true value; `exp(0) == 1` exactly.
pub fn sleef_expf(d: f32) -> f32 {
    if d.is_nan() {
        return d;
    }
    if d < -104.0 {
        return 0.0;
    }
    if d > 100.0 {
        return f32::INFINITY;
    }
    let q = (d * R_LN2F).round_ties_even() as i32;
    let qf = q as f32;
    let s = qf.mul_add(-L2UF, d);
    let s = qf.mul_add(-L2LF, s);
    let mut u = 0.000_198_527_62_f32;
    u = u.mul_add(s, 0.001_393_043_6);
    u = u.mul_add(s, 0.008_333_361);
    u = u.mul_add(s, 0.041_666_485);
    u = u.mul_add(s, 0.166_666_67);
    u = u.mul_add(s, 0.5);
    let u = 1.0 + (s * s).mul_add(u, s);
    // vldexp2: u * 2^(q >> 1) * 2^(q - (q >> 1)); q is in [-150, 145] here.
    let half = q >> 1;
    u * pow2i(half) * pow2i(q - half)
}

fn pow2i(q: i32) -> f32 {
    f32::from_bits(((q + 0x7f) as u32) << 23)
}

/// `vec::reduce_all` with `+`: lane-wise accumulation, then the AVX2 butterfly (lane i with
/// i ^ 4, then i ^ 2, then i ^ 1). Fewer than [`LANES`] values are summed left to right.
pub fn reduce_sum(xs: &[f32]) -> f32 {
    let n = xs.len();
    if n < LANES {
        let mut acc = 0.0_f32;
        for (i, &x) in xs.iter().enumerate() {
            acc = if i == 0 { x } else { acc + x };
        }
        return acc;
    }
    let mut acc = [0.0_f32; LANES];
    acc.copy_from_slice(&xs[..LANES]);
    let full = n - n % LANES;
    let mut d = LANES;
    while d < full {
        for (a, &x) in acc.iter_mut().zip(&xs[d..d + LANES]) {
            *a += x;
        }
        d += LANES;
    }
    for (a, &x) in acc.iter_mut().zip(&xs[d..]) {
        *a += x;
    }
    let mut stride = LANES / 2;
    while stride > 0 {
        let prev = acc;
        for (i, a) in acc.iter_mut().enumerate() {
            *a = prev[i] + prev[i ^ stride];
        }
        stride /= 2;
    }
    acc[0]
}

/// The maximum, NaN if any value is NaN (torch's `vec::maximum` propagates NaN); -inf if empty.
pub fn reduce_max(xs: &[f32]) -> f32 {
    let mut m = f32::NEG_INFINITY;
    for &x in xs {
        if x.is_nan() {
            return x;
        }
        if x > m {
            m = x;
        }
    }
    m
}

/// torch's float32 `softmax(x, dim=-1)` on one row, in torch's CPU operation order.
pub fn softmax(xs: &[f32]) -> Vec<f32> {
    let m = reduce_max(xs);
    let mut e: Vec<f32> = xs.iter().map(|&x| sleef_expf(x - m)).collect();
    let inv = 1.0 / reduce_sum(&e);
    for v in &mut e {
        *v *= inv;
    }
    e
}

/// Rounds to bfloat16 (nearest, ties to even) and back, as torch stores a bf16 softmax output.
pub fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let bits = x.to_bits();
    let lsb = (bits >> 16) & 1;
    f32::from_bits(bits.wrapping_add(0x7fff + lsb) & 0xffff_0000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn sleef_expf_is_within_one_ulp() {
        assert_eq!(sleef_expf(0.0), 1.0);
        assert_eq!(sleef_expf(-200.0), 0.0);
        assert_eq!(sleef_expf(f32::NEG_INFINITY), 0.0);
        assert!(sleef_expf(f32::NAN).is_nan());
        let mut x = -103.0_f32;
        while x < 80.0 {
            let want = f64::from(x).exp() as f32;
            let got = sleef_expf(x);
            assert!(ulps(got, want) <= 1, "exp({x}) = {got}, want {want}");
            x += 0.0137;
        }
    }

    #[test]
    fn sleef_constants_have_the_reference_bits() {
        let bits = [R_LN2F, L2UF, L2LF].map(f32::to_bits);
        assert_eq!(bits, [0x3fb8_aa3b, 0x3f31_7200, 0x35bf_be8e]);
    }

    #[test]
    fn reduce_sum_order() {
        assert_eq!(reduce_sum(&[]), 0.0);
        assert_eq!(reduce_sum(&[1.0, 2.0, 3.0]), 6.0);
        let xs: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(reduce_sum(&xs), (0..37).sum::<i32>() as f32);
        // Lane-wise order differs from left-to-right: 1 + 8 * 2^-24 loses everything sequentially
        // but keeps the small terms together in lanes 1..8 here.
        let mut v = vec![1.0_f32];
        v.extend(std::iter::repeat_n(2f32.powi(-24), 15));
        let seq = v.iter().fold(0.0_f32, |a, &b| a + b);
        assert_eq!(seq, 1.0);
        assert!(reduce_sum(&v) > 1.0);
    }

    #[test]
    fn softmax_sums_to_one_and_max_is_reciprocal() {
        let xs: Vec<f32> = (0..64)
            .map(|i| ((i * 37) % 11) as f32 * 0.7 - 3.0)
            .collect();
        let p = softmax(&xs);
        let s: f64 = p.iter().map(|&v| f64::from(v)).sum();
        assert!((s - 1.0).abs() < 1e-6);
        let m = reduce_max(&xs);
        let e: Vec<f32> = xs.iter().map(|&x| sleef_expf(x - m)).collect();
        assert_eq!(reduce_max(&p), 1.0 / reduce_sum(&e));
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(round_bf16(1.0), 1.0);
        assert_eq!(round_bf16(0.9), 0.898_437_5);
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0); // tie to even
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
    }
}

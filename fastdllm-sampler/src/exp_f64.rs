//! The f64 softmax denominator of one row of logits, `sum_j exp(l_j - m)`, vectorised.
//!
//! Reference: the LLaDA proposer's `F.softmax(logits.to(torch.float64), dim=-1)` (Fast-dLLM's
//! `generate.py`, docs/ALGORITHM.md §2.1), which PyTorch runs on the CPU with a vectorised f64
//! `exp` (SLEEF, 1 ULP) and lane-wise sums. The scalar loop (libm's `exp`, one sequential sum)
//! took 3.4 % of a dual-cache step of the cache-cpu bench model (`perf`, docs/BENCHMARKS.md): a
//! vocabulary of 32000 per masked row.
//!
//! Deviations from the scalar loop: `exp` within 1 ULP of libm's (a degree-13 Taylor polynomial
//! after Cody-Waite reduction by `ln 2`; test `exp4_is_within_one_ulp_of_libm`), terms below
//! `exp(-708)` are taken as 0 (they cannot change a sum whose largest term is `exp(0) = 1`), and
//! the sum runs in 4 lanes, then the lanes in order. Used on x86-64 CPUs with AVX2 + FMA; anything
//! else runs the scalar loop.

/// `sum_j exp(f64(row[j]) - m)` for `m >= max_j row[j]` (every term in `(0, 1]`), in f64.
pub(crate) fn sum_exp_shifted(row: &[f32], m: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { x86::sum_exp_shifted(row, m) };
    }
    row.iter().map(|&x| (f64::from(x) - m).exp()).sum()
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Below this, `exp(x)` is subnormal or 0: the term is taken as 0.
    const MIN_X: f64 = -708.0;
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    /// `ln 2` split so that `n * LN2_HI` is exact for `|n| <= 1024` (fdlibm's constants).
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

    /// `exp` of 4 lanes with every `x <= 0`: `x = n ln2 + r`, `|r| <= ln2 / 2`, `exp(r)` by
    /// Horner's rule over the Taylor coefficients `1/k!` up to `k = 13` (truncation below
    /// 5e-18), the scale `2^n` built in the exponent bits; lanes below [`MIN_X`] give 0.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp4(x: __m256d) -> __m256d {
        let live = _mm256_cmp_pd::<_CMP_GE_OQ>(x, _mm256_set1_pd(MIN_X));
        let x = _mm256_max_pd(x, _mm256_set1_pd(MIN_X));
        let n = _mm256_round_pd::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_pd(x, _mm256_set1_pd(LOG2E)),
        );
        let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_HI), x);
        let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_LO), r);
        // 1/k! for k = 13 down to 0.
        const C: [f64; 14] = [
            1.0 / 6_227_020_800.0,
            1.0 / 479_001_600.0,
            1.0 / 39_916_800.0,
            1.0 / 3_628_800.0,
            1.0 / 362_880.0,
            1.0 / 40_320.0,
            1.0 / 5_040.0,
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ];
        let mut p = _mm256_set1_pd(C[0]);
        for &c in &C[1..] {
            p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(c));
        }
        // 2^n for n in [-1022, 0]: (n + 1023) << 52. n is an integer in f64; convert via i32.
        let n32 = _mm256_cvtpd_epi32(n);
        let biased = _mm256_add_epi64(_mm256_cvtepi32_epi64(n32), _mm256_set1_epi64x(1023));
        let scale = _mm256_castsi256_pd(_mm256_slli_epi64::<52>(biased));
        _mm256_and_pd(_mm256_mul_pd(p, scale), live)
    }

    /// See [`super::sum_exp_shifted`]: 4 lane sums over the row (the tail's missing lanes add
    /// nothing), then the lanes added in order.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sum_exp_shifted(row: &[f32], m: f64) -> f64 {
        let shift = _mm256_set1_pd(m);
        let mut acc = _mm256_setzero_pd();
        let mut chunks = row.chunks_exact(4);
        for c in &mut chunks {
            let x = _mm256_cvtps_pd(_mm_loadu_ps(c.as_ptr()));
            acc = _mm256_add_pd(acc, exp4(_mm256_sub_pd(x, shift)));
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            // Missing lanes are -inf: exp4 gives them 0.
            let mut buf = [f32::NEG_INFINITY; 4];
            buf[..tail.len()].copy_from_slice(tail);
            let x = _mm256_cvtps_pd(_mm_loadu_ps(buf.as_ptr()));
            acc = _mm256_add_pd(acc, exp4(_mm256_sub_pd(x, shift)));
        }
        let mut lanes = [0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), acc);
        lanes.iter().sum()
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn ulp_distance(a: f64, b: f64) -> u64 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    #[test]
    fn exp4_is_within_one_ulp_of_libm() {
        if !avx2_fma() {
            return;
        }
        use std::arch::x86_64::*;
        let mut worst = (0u64, 0f64);
        let mut check = |xs: [f64; 4]| {
            let mut out = [0f64; 4];
            // SAFETY: AVX2 + FMA checked above.
            unsafe { _mm256_storeu_pd(out.as_mut_ptr(), x86::exp4(_mm256_loadu_pd(xs.as_ptr()))) };
            for (x, got) in xs.into_iter().zip(out) {
                let want = if x < -708.0 { 0.0 } else { x.exp() };
                let d = ulp_distance(got, want);
                if d > worst.0 {
                    worst = (d, x);
                }
            }
        };
        // A dense sweep of [-708, 0] plus the edges.
        let n = 1_000_000;
        for i in (0..n).step_by(4) {
            let xs = std::array::from_fn(|k| -708.0 * ((i + k) as f64) / n as f64);
            check(xs);
        }
        check([0.0, -0.0, -708.0, -708.5]);
        check([-1e-300, -1e-17, f64::NEG_INFINITY, -745.2]);
        check([
            -0.5 * std::f64::consts::LN_2,
            -std::f64::consts::LN_2,
            -1.5,
            -700.7,
        ]);
        assert!(worst.0 <= 1, "{} ULP at x = {}", worst.0, worst.1);
    }

    #[test]
    fn the_sum_matches_the_scalar_loop_on_every_tail_length() {
        for len in [1usize, 2, 3, 4, 5, 7, 8, 9, 31, 32000, 32003] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.05)
                .collect();
            let m = row
                .iter()
                .map(|&x| f64::from(x))
                .fold(f64::NEG_INFINITY, f64::max);
            let scalar: f64 = row.iter().map(|&x| (f64::from(x) - m).exp()).sum();
            let got = sum_exp_shifted(&row, m);
            // The two sum orders each carry at most `len` roundings.
            assert!(
                (got - scalar).abs() <= len as f64 * f64::EPSILON * scalar,
                "len {len}: {got} vs {scalar}"
            );
        }
        // Terms far below the max (exp < 1e-307) add nothing; -inf logits add nothing.
        let row = [0.0f32, -800.0, f32::NEG_INFINITY, -1.0, -709.0];
        let got = sum_exp_shifted(&row, 0.0);
        assert_eq!(got, 1.0 + (-1f64).exp());
    }
}

//! The element-wise work of a step on the CPU, vectorised: the attention softmax over the last
//! dimension and the MLP's SiLU-gated product, both built on an 8-wide `exp`.
//!
//! Reference: `torch.softmax(scores, dim=-1)` and `F.silu(gate) * up` of the reference models
//! (docs/ALGORITHM.md §1.1.3), which PyTorch runs on the CPU with vectorised SLEEF `exp` (1 ULP)
//! and lane-wise sums; candle runs them with the scalar libm `expf` and a sequential sum, which
//! took about 8% of a full step of the cache-cpu bench model (`perf`, docs/BENCHMARKS.md).
//! Deviations from candle's results: `exp` within 2 ULP of libm's (the algorithm of ARM's
//! optimized-routines `expf`, as llama.cpp's `ggml_v_expf`; test
//! `exp8_is_within_two_ulp_of_libm`), the softmax sum in 8 lanes, then the lanes in order; the
//! division and the SiLU formula `g / (1 + exp(-g))` are candle's. Used for f32 tensors whose last
//! dimension is contiguous (row views such as the MLP's gate / up halves are read in place, not
//! copied) on x86-64 CPUs with AVX2 + FMA; anything else goes to candle's ops unchanged.
//! [`OPS_VAR`] forces either path.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_gemm;
use crate::Result;

/// Environment variable that forces the element-wise path: `avx2` (ours; an error on a CPU
/// without AVX2 + FMA) or `candle` (candle's ops). Unset or empty: ours where the CPU has it.
/// Another value is an error at the first op. Read once per process.
pub const OPS_VAR: &str = "FASTDLLM_CPU_OPS";

/// Whether the vectorised path runs on this CPU ([`OPS_VAR`], else AVX2 + FMA present).
fn ops_vectorised() -> Result<bool> {
    static CHOICE: std::sync::OnceLock<std::result::Result<bool, String>> =
        std::sync::OnceLock::new();
    CHOICE
        .get_or_init(|| {
            let value = std::env::var_os(OPS_VAR);
            ops_choice(value.as_ref().map(|v| v.to_string_lossy()).as_deref())
        })
        .clone()
        .map_err(|msg| candle_core::Error::Msg(msg).into())
}

/// The path [`OPS_VAR`]'s `value` chooses: `Ok(true)` for ours, `Ok(false)` for candle's, or the
/// one-line error for a value that is not `avx2` / `candle` / empty, or `avx2` on a CPU without it.
fn ops_choice(value: Option<&str>) -> std::result::Result<bool, String> {
    match value.unwrap_or("") {
        "" => Ok(cpu_gemm::cpu_supported()),
        "avx2" if cpu_gemm::cpu_supported() => Ok(true),
        "avx2" => Err(format!("{OPS_VAR}=avx2: this CPU lacks AVX2 + FMA")),
        "candle" => Ok(false),
        other => Err(format!("{OPS_VAR}={other}: must be avx2 or candle")),
    }
}

/// Whether the vectorised ops run for `t`: f32 on the CPU, the last dimension contiguous, and
/// the vectorised path chosen ([`ops_vectorised`]).
fn vectorised(t: &Tensor) -> Result<bool> {
    let rows_in_place =
        t.rank() >= 1 && (t.stride()[t.rank() - 1] == 1 || t.dims()[t.rank() - 1] == 1);
    Ok(t.device().is_cpu() && t.dtype() == DType::F32 && rows_in_place && ops_vectorised()?)
}

/// Softmax over the last dimension. Shape: any, unchanged; dtype: unchanged. Errors: an invalid
/// [`OPS_VAR`].
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if vectorised(x)? {
        Ok(x.apply_op1_no_bwd(&SoftmaxLastDim)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?)
    }
}

/// `silu(gate) * up`, element-wise. Shapes: equal, unchanged (the output is contiguous); dtype:
/// unchanged. Errors: an invalid [`OPS_VAR`].
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if vectorised(gate)? && vectorised(up)? && gate.dims() == up.dims() {
        Ok(gate.apply_op2_no_bwd(up, &SiluMul)?)
    } else {
        Ok((candle_nn::ops::silu(gate)? * up)?)
    }
}

/// Rows of at least this many elements per rayon task.
const MIN_TASK_ELEMS: usize = 1 << 14;

/// The rows (last dimension) of an f32 tensor whose last dimension is contiguous, in
/// row-major order, read in place: one `&[f32]` of the last dimension's length per row.
fn f32_rows<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<Vec<&'a [f32]>> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("fastdllm cpu_ops: expected f32 storage")
    };
    let (dims, stride) = (layout.dims(), layout.stride());
    let Some((&dim, lead)) = dims.split_last() else {
        candle_core::bail!("fastdllm cpu_ops: a scalar has no rows")
    };
    if dim > 1 && stride[dims.len() - 1] != 1 {
        candle_core::bail!("fastdllm cpu_ops: the last dimension has to be contiguous")
    }
    let count: usize = lead.iter().product();
    let mut rows = Vec::with_capacity(count);
    let mut index = vec![0usize; lead.len()];
    for _ in 0..count {
        let start =
            layout.start_offset() + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        rows.push(&data[start..start + dim]);
        // The next multi-index of the leading dimensions, last one fastest.
        for (i, &n) in index.iter_mut().zip(lead).rev() {
            *i += 1;
            if *i < n {
                break;
            }
            *i = 0;
        }
    }
    Ok(rows)
}

/// Rows per rayon task: at least [`MIN_TASK_ELEMS`] elements each.
fn rows_per_task(dim: usize) -> usize {
    MIN_TASK_ELEMS.checked_div(dim).unwrap_or(1).max(1)
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "fastdllm-softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let rows = f32_rows(storage, layout)?;
        let dim = layout.dims()[layout.dims().len() - 1];
        let len = rows.len() * dim;
        let mut dst: Vec<f32> = Vec::with_capacity(len);
        if dim > 0 {
            let per_task = rows_per_task(dim);
            rows.par_chunks(per_task)
                .zip(dst.spare_capacity_mut()[..len].par_chunks_mut(dim * per_task))
                .for_each(|(s, d)| {
                    for (s, d) in s.iter().zip(d.chunks_mut(dim)) {
                        // SAFETY: `vectorised` checked AVX2 + FMA before this op was applied.
                        unsafe { x86::softmax_row(s, d) }
                    }
                });
        }
        // SAFETY: every row of `dim` values was written above (none when `dim` is 0).
        unsafe { dst.set_len(len) };
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fastdllm-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("fastdllm silu_mul: {:?} vs {:?}", l1.dims(), l2.dims())
        }
        let (gate, up) = (f32_rows(s1, l1)?, f32_rows(s2, l2)?);
        let dim = l1.dims()[l1.dims().len() - 1];
        let len = gate.len() * dim;
        let mut dst: Vec<f32> = Vec::with_capacity(len);
        if dim > 0 {
            let per_task = rows_per_task(dim);
            dst.spare_capacity_mut()[..len]
                .par_chunks_mut(dim * per_task)
                .zip(gate.par_chunks(per_task))
                .zip(up.par_chunks(per_task))
                .for_each(|((d, g), u)| {
                    for ((d, g), u) in d.chunks_mut(dim).zip(g).zip(u) {
                        // SAFETY: `vectorised` checked AVX2 + FMA before this op was applied.
                        unsafe { x86::silu_mul(g, u, d) }
                    }
                });
        }
        // SAFETY: every row of `dim` values was written above (none when `dim` is 0).
        unsafe { dst.set_len(len) };
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

/// `f32` from a hexadecimal float literal `0x1.MMMMMMp{exp}` given as its 24 mantissa bits
/// (`0xMMMMMM`, last bit 0) and exponent.
const fn hexf(mantissa24: u32, exp: i32) -> f32 {
    f32::from_bits((((exp + 127) as u32) << 23) | (mantissa24 >> 1))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::hexf;

    /// `exp` of 8 lanes: ARM optimized-routines' `expf` algorithm (as llama.cpp's
    /// `ggml_v_expf`): `x = n ln2 + b`, a degree-5 polynomial in `b`, the scale `2^n` built in
    /// the exponent bits, with the special scaling for `|n| > 126` (overflow to +inf above
    /// 88.72, gradual underflow to 0 below -87.3).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp8(x: __m256) -> __m256 {
        let r = _mm256_set1_ps(hexf(0x800000, 23));
        let z = _mm256_fmadd_ps(x, _mm256_set1_ps(hexf(0x715476, 0)), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(
            n,
            _mm256_set1_ps(hexf(0x7f7d1c, -20)),
            _mm256_fnmadd_ps(n, _mm256_set1_ps(hexf(0x62e400, -1)), x),
        );
        let e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
        let k = _mm256_castsi256_ps(_mm256_add_epi32(
            e,
            _mm256_castps_si256(_mm256_set1_ps(1.0)),
        ));
        let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let c = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(126.0));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(
                    _mm256_set1_ps(hexf(0x0e4020, -7)),
                    b,
                    _mm256_set1_ps(hexf(0x573e2e, -5)),
                ),
                u,
                _mm256_fmadd_ps(
                    _mm256_set1_ps(hexf(0x555e66, -3)),
                    b,
                    _mm256_set1_ps(hexf(0xfffdb6, -2)),
                ),
            ),
            u,
            _mm256_mul_ps(_mm256_set1_ps(hexf(0xffffec, -1)), b),
        );
        if _mm256_movemask_ps(c) == 0 {
            return _mm256_fmadd_ps(j, k, k);
        }
        let g = _mm256_and_si256(
            _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps())),
            _mm256_set1_epi32(0x8200_0000u32 as i32),
        );
        let s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f00_0000)));
        let s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
        let d = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
        _mm256_or_ps(
            _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
            _mm256_andnot_ps(
                d,
                _mm256_or_ps(
                    _mm256_and_ps(c, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                    _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)),
                ),
            ),
        )
    }

    /// 8 lanes of `src` from `i` (zero past the end) and how many of them are live.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load_tail(src: &[f32], i: usize) -> (__m256, usize) {
        let live = (src.len() - i).min(8);
        if live == 8 {
            (_mm256_loadu_ps(src.as_ptr().add(i)), 8)
        } else {
            let mut buf = [0f32; 8];
            buf[..live].copy_from_slice(&src[i..]);
            (_mm256_loadu_ps(buf.as_ptr()), live)
        }
    }

    /// Stores the first `live` lanes of `v` at `dst[i..]` (`i + live <= dst.len()`).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store_tail(dst: &mut [MaybeUninit<f32>], i: usize, v: __m256, live: usize) {
        debug_assert!(i + live <= dst.len());
        let p = dst.as_mut_ptr().add(i) as *mut f32;
        if live == 8 {
            _mm256_storeu_ps(p, v);
        } else {
            let mut buf = [0f32; 8];
            _mm256_storeu_ps(buf.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(buf.as_ptr(), p, live);
        }
    }

    /// Softmax of one row: `exp(s - max) / sum`, the sum in 8 lanes (lanes past the end kept
    /// out), then the lanes added in order. Writes every value of `dst` (as long as `src`);
    /// it may be uninitialised.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_row(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        assert_eq!(src.len(), dst.len());
        let max = src.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let m = _mm256_set1_ps(max);
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < src.len() {
            let (v, live) = load_tail(src, i);
            let mut e = exp8(_mm256_sub_ps(v, m));
            if live < 8 {
                let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(live as i32), idx);
                e = _mm256_and_ps(e, _mm256_castsi256_ps(keep));
            }
            acc = _mm256_add_ps(acc, e);
            store_tail(dst, i, e, live);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let sum: f32 = lanes.iter().sum();
        // Every value was written above: the row reads as f32 from here on.
        let dst = std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut f32, dst.len());
        let s = _mm256_set1_ps(sum);
        let mut i = 0;
        while i + 8 <= dst.len() {
            let p = dst.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_div_ps(_mm256_loadu_ps(p), s));
            i += 8;
        }
        for d in &mut dst[i..] {
            *d /= sum;
        }
    }

    /// `dst = gate / (1 + exp(-gate)) * up`, element-wise (equal lengths); `dst` may be
    /// uninitialised, every value is written.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul(gate: &[f32], up: &[f32], dst: &mut [MaybeUninit<f32>]) {
        assert!(gate.len() == up.len() && gate.len() == dst.len());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i < gate.len() {
            let (g, live) = load_tail(gate, i);
            let (u, _) = load_tail(up, i);
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let v = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
            store_tail(dst, i, v, live);
            i += 8;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub(super) unsafe fn softmax_row(_: &[f32], _: &mut [std::mem::MaybeUninit<f32>]) {
        unreachable!("cpu_supported() is false off x86-64")
    }
    pub(super) unsafe fn silu_mul(_: &[f32], _: &[f32], _: &mut [std::mem::MaybeUninit<f32>]) {
        unreachable!("cpu_supported() is false off x86-64")
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ulp_distance(a: f32, b: f32) -> u32 {
        if a == b {
            return 0;
        }
        let key = |x: f32| {
            let i = x.to_bits() as i32;
            if i < 0 {
                i32::MIN - i
            } else {
                i
            }
        };
        (key(a) as i64 - key(b) as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp8_is_within_two_ulp_of_libm() {
        if !cpu_gemm::cpu_supported() {
            return;
        }
        // Every 97th f32 between -104 and 89 (both signs' specials: underflow, overflow).
        let mut xs = Vec::new();
        let (lo, hi) = (-104.0f32, 89.0f32);
        let mut bits = lo.to_bits();
        while f32::from_bits(bits) < 0.0 {
            xs.push(f32::from_bits(bits));
            bits = bits.saturating_sub(97);
        }
        let mut bits = 0u32;
        while f32::from_bits(bits) <= hi {
            xs.push(f32::from_bits(bits));
            bits += 97;
        }
        xs.extend([0.0, -0.0, 88.72, 88.73, -87.33, -103.9, 1e-30, -1e-30]);
        let mut out = vec![0f32; xs.len()];
        let mut worst = (0u32, 0f32);
        for (x, o) in xs.chunks(8).zip(out.chunks_mut(8)) {
            let mut buf = [0f32; 8];
            buf[..x.len()].copy_from_slice(x);
            // SAFETY: AVX2 + FMA checked above.
            let v = unsafe {
                use std::arch::x86_64::*;
                let mut r = [0f32; 8];
                _mm256_storeu_ps(r.as_mut_ptr(), x86::exp8(_mm256_loadu_ps(buf.as_ptr())));
                r
            };
            o.copy_from_slice(&v[..x.len()]);
        }
        for (&x, &got) in xs.iter().zip(&out) {
            let want = x.exp();
            let d = ulp_distance(got, want);
            if d > worst.0 {
                worst = (d, x);
            }
            // Subnormal results: the absolute error counts, not the ULPs.
            if want < f32::MIN_POSITIVE {
                assert!(
                    (got - want).abs() <= f32::MIN_POSITIVE * 1e-6,
                    "exp({x}) = {got}, libm {want}"
                );
            } else {
                assert!(d <= 2, "exp({x}) = {got}, libm {want}: {d} ULP");
            }
        }
        assert!(xs.len() > 1_000_000, "{} points", xs.len());
        eprintln!("worst: {} ULP at {}", worst.0, worst.1);
    }

    #[test]
    fn softmax_and_silu_mul_match_candles_ops_on_odd_shapes() {
        if !cpu_gemm::cpu_supported() {
            return;
        }
        for (rows, dim) in [(1, 1), (3, 7), (5, 8), (2, 9), (7, 513), (64, 512)] {
            let x = (Tensor::randn(0f32, 4.0, (rows, dim), &Device::Cpu).unwrap() * 3.0).unwrap();
            let ours = softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
            let theirs = candle_nn::ops::softmax_last_dim(&x)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (a, b) in ours.iter().flatten().zip(theirs.iter().flatten()) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1e-30) + 1e-12,
                    "{a} vs {b}"
                );
            }
            for row in &ours {
                let s: f32 = row.iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "row sums to {s}");
            }
            let up = Tensor::randn(0f32, 1.0, (rows, dim), &Device::Cpu).unwrap();
            let ours = silu_mul(&x, &up).unwrap().to_vec2::<f32>().unwrap();
            let theirs = (candle_nn::ops::silu(&x).unwrap() * &up)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (a, b) in ours.iter().flatten().zip(theirs.iter().flatten()) {
                assert!((a - b).abs() <= 1e-6 * b.abs() + 1e-30, "{a} vs {b}");
            }
        }
        // Row views read in place (the MLP's gate / up halves of a batched window, a narrowed
        // offset view), and a transposed view that takes candle's path.
        let gate_up = Tensor::randn(0f32, 2.0, (2, 3, 2 * 19), &Device::Cpu).unwrap();
        let views = [
            (
                gate_up.narrow(2, 0, 19).unwrap(),
                gate_up.narrow(2, 19, 19).unwrap(),
            ),
            (
                gate_up.narrow(1, 1, 2).unwrap().narrow(2, 3, 16).unwrap(),
                gate_up.narrow(1, 0, 2).unwrap().narrow(2, 20, 16).unwrap(),
            ),
            (
                gate_up.narrow(2, 0, 3).unwrap().transpose(1, 2).unwrap(),
                gate_up.narrow(2, 5, 3).unwrap().transpose(1, 2).unwrap(),
            ),
        ];
        for (g, u) in views {
            let ours = silu_mul(&g, &u).unwrap();
            assert!(ours.is_contiguous());
            let theirs = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
            let (ours, theirs) = (
                ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for (a, b) in ours.iter().zip(&theirs) {
                assert!((a - b).abs() <= 1e-6 * b.abs() + 1e-30, "{a} vs {b}");
            }
            let (ours, theirs) = (
                softmax_last_dim(&g).unwrap(),
                candle_nn::ops::softmax_last_dim(&g.contiguous().unwrap()).unwrap(),
            );
            let (ours, theirs) = (
                ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            for (a, b) in ours.iter().zip(&theirs) {
                assert!((a - b).abs() <= 1e-6 * b.abs() + 1e-12, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn the_ops_switch_takes_avx2_candle_or_nothing() {
        assert_eq!(ops_choice(None), Ok(cpu_gemm::cpu_supported()));
        assert_eq!(ops_choice(Some("")), Ok(cpu_gemm::cpu_supported()));
        assert_eq!(ops_choice(Some("candle")), Ok(false));
        assert_eq!(ops_choice(Some("avx2")).is_ok(), cpu_gemm::cpu_supported());
        let err = ops_choice(Some("avx512")).unwrap_err();
        assert_eq!(err, "FASTDLLM_CPU_OPS=avx512: must be avx2 or candle");
    }
}

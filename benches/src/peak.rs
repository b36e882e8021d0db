//! The register-only FMA peak of one core: independent chains of fused multiply-adds on values
//! that stay in vector registers (no loads, no stores), timed by the calling thread's own CPU
//! clock, so the figure is GFLOP per CPU-second (a busy machine that takes the core away for a
//! while does not lower it). It is the ceiling that a compute-bound f32 GEMM on the same core is
//! held against (`fastdllm bench` records it beside the full step's achieved rate).
//!
//! Widths: 256-bit (AVX2 + FMA, 8 lanes) and 512-bit (AVX-512F, 16 lanes), each where the CPU has
//! it. Twelve accumulators hide the FMA latency of every x86-64 core so far (at most 4 cycles x
//! 2 pipes x 512 bits).

use std::time::Duration;

/// A vector width of the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FmaWidth {
    /// 256-bit AVX2 + FMA (`vfmadd231ps ymm`).
    Avx2,
    /// 512-bit AVX-512F (`vfmadd231ps zmm`).
    Avx512,
}

impl FmaWidth {
    /// Both widths, narrowest first.
    pub const ALL: [FmaWidth; 2] = [FmaWidth::Avx2, FmaWidth::Avx512];

    /// `avx2` / `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            FmaWidth::Avx2 => "avx2",
            FmaWidth::Avx512 => "avx512",
        }
    }

    /// f32 lanes of one vector.
    fn lanes(self) -> u64 {
        match self {
            FmaWidth::Avx2 => 8,
            FmaWidth::Avx512 => 16,
        }
    }

    /// Whether this CPU has the width.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                FmaWidth::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
                FmaWidth::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }
}

/// Independent FMA chains per probe loop.
const CHAINS: usize = 12;
/// Loop iterations between two reads of the clock.
const ROUND: u64 = 2_000_000;

/// The peak of one core at `width` in GFLOP per CPU-second of the calling thread (an FMA counts
/// 2 FLOP per lane), measured for at least `cpu_time` of this thread's CPU time; `None` when the
/// CPU lacks the width or the thread CPU clock is unavailable.
pub fn fma_peak_gflops(width: FmaWidth, cpu_time: Duration) -> Option<f64> {
    if !width.available() {
        return None;
    }
    let start = thread_cpu_secs()?;
    let mut iterations = 0u64;
    let mut sink = 0.0f32;
    loop {
        // `black_box`: each round's count is opaque, so the (pure) call cannot be computed once
        // and reused. SAFETY: `available` checked the CPU features of `width`.
        sink += unsafe { fma_chains(width, std::hint::black_box(ROUND)) };
        sink = std::hint::black_box(sink);
        iterations += ROUND;
        let spent = thread_cpu_secs()? - start;
        if spent >= cpu_time.as_secs_f64() {
            std::hint::black_box(sink);
            let flops = iterations * CHAINS as u64 * width.lanes() * 2;
            return Some(flops as f64 / spent / 1e9);
        }
    }
}

/// CPU time of the calling thread, seconds.
fn thread_cpu_secs() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// Runs `iterations` x [`CHAINS`] dependent-per-chain FMAs and returns a value that depends on
/// all of them.
///
/// # Safety
/// The CPU has `width`'s features.
#[cfg(target_arch = "x86_64")]
unsafe fn fma_chains(width: FmaWidth, iterations: u64) -> f32 {
    match width {
        FmaWidth::Avx2 => chains256(iterations),
        FmaWidth::Avx512 => chains512(iterations),
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn fma_chains(_width: FmaWidth, _iterations: u64) -> f32 {
    unreachable!("no FMA width is available off x86-64")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains256(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc: [__m256; CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(i as f32 * 1e-3));
    let (b, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iterations {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    let mut sum = _mm256_setzero_ps();
    for a in acc {
        sum = _mm256_add_ps(sum, a);
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn chains512(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32 * 1e-3));
    let (b, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iterations {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, b, c);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for a in acc {
        sum = _mm512_add_ps(sum, a);
    }
    _mm512_reduce_add_ps(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe runs for every width the CPU has (none otherwise) and reports a rate a core can
    /// reach: above zero, and below 1000 GFLOP/s (16 lanes x 2 FLOP x 4 FMA pipes x 7 GHz = 896),
    /// which a loop the compiler folded away would exceed by orders of magnitude.
    #[test]
    fn probe_reports_a_physical_rate_for_available_widths_only() {
        for width in FmaWidth::ALL {
            let peak = fma_peak_gflops(width, Duration::from_millis(20));
            assert_eq!(peak.is_some(), width.available(), "{width:?}");
            if let Some(p) = peak {
                assert!(p.is_finite() && p > 0.0 && p < 1000.0, "{width:?}: {p}");
            }
        }
    }
}

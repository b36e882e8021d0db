//! bf16 weights multiplied with AVX-512 BF16 dot products (`vdpbf16ps`): the [`Isa::Avx512Bf16`]
//! path of [`super::PackedWeight`] for bf16 weights.
//!
//! Why: the widening path ([`super::kernel512`]) turns every bf16 weight into an f32 lane and runs
//! one f32 FMA per product, the f32 rate. `vdpbf16ps` takes 16 lanes of bf16 *pairs* and adds both
//! products of each lane to an f32 accumulator: two products per lane per instruction, up to twice
//! the FMA rate on the products that are compute-bound (a full forward, the block-start refresh).
//! Its input must be bf16 too, so `x` is rounded to bf16 once per call: this path does **not**
//! give candle's bits (the widening paths do); its error bound is below.
//!
//! Layout ([`PairStep`], written once at load in place of the widening path's panels, no second
//! copy): per panel of [`MR`] = 16 output features and per pair `j` of input indices, 16 lanes of
//! `(w[f][2j], w[f][2j + 1])` (low half, high half of a 32-bit lane), 64 bytes, one cache line;
//! an odd `in_features` is padded with a zero weight. [`unpack`] gives the weight back exactly.
//!
//! Arithmetic, per output `y[r][f]` (Intel SDM, `VDPBF16PS`, "Operation"; the same on AMD Zen 4,
//! checked bit for bit by the tests against [`tests::reference`]):
//! - `x` is rounded to bf16 as `vcvtneps2bf16` does: round to nearest even, denormals to a zero
//!   of their sign (`_mm512_cvtne2ps_pbh`); an odd `in_features` is padded with zero;
//! - within a depth block of [`depth_block`] pairs, one f32 accumulator starts at zero and takes the
//!   pairs in increasing `j`, each as two fused multiply-adds rounded to nearest even, the odd
//!   index first (`acc += w[2j+1] x[2j+1]`, then `acc += w[2j] x[2j]`), denormal inputs read as
//!   zero and denormal results flushed to zero (the products of two bf16 are exact in f32);
//! - the first depth block is stored, each later one added to the stored value (`dst + acc`,
//!   f32, as the widening paths do).
//!
//! Error against the f32 product of the widened weight (`x W^T` in f32, what the widening paths
//! give): rounding `x` to bf16 changes each product by at most `2^-8 |w x|` (8 significant bits),
//! and each side's f32 summation adds at most `k 2^-24 sum |w x|` (about), so
//! `|y_dot - y_f32| <= (2^-8 + k 2^-23) sum_d |w[f][d] x[r][d]|` plus the flushed denormals
//! (below `2^-126` each). Measured (tests, uniform values): RMS relative error about `1.5e-3`.
//!
//! Loop order and threads as [`super::PackedWeight::compute`]: rayon tasks own contiguous shares of
//! the panels; per depth block, blocks of panels, row tiles of up to [`NR_512`] rows (balanced),
//! then one or two panels a call; the last tiles of a panel block prefetch the next one. One row of
//! `x` (gemm's `gemv` route) takes the same kernel with one-row tiles; the shapes that take candle's
//! matmul ([`super::Route::Candle`], all small) multiply the unpacked weight widened to f32.

#[cfg(doc)]
use super::Isa;
use super::{OutPtr, MR, NR_512, PANEL_BLOCK_BYTES, PREFETCH_EVERY, ROWS_IN_L2_BYTES};

/// One pair step of a panel: lane `l` holds the bf16 bits of `w[f][2j]` (low 16 bits) and
/// `w[f][2j + 1]` (high 16 bits) of feature `f = panel * MR + l`. 64 bytes, one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct PairStep([u32; MR]);

/// Bytes of one row tile of `x` per depth block (bf16 pairs): it stays in L1 while the tile's
/// panels pass. 12 rows take 256 pairs (512 values; two panels then take 32 KB, from L2), one
/// row 3072 pairs.
const X_TILE_BYTES: usize = 12 * 1024;

/// Whether this CPU has the instructions of this path (AVX-512 F/BW/VL and BF16; every CPU with
/// AVX-512 BF16 has the others).
pub(super) fn cpu_has() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Pairs per depth block for `rows` rows of depth `k` values: a row tile of [`X_TILE_BYTES`]
/// (at most all pairs).
pub(super) fn depth_block(rows: usize, k: usize) -> usize {
    let tile_rows = rows.clamp(1, NR_512);
    (X_TILE_BYTES / (tile_rows * std::mem::size_of::<u32>()))
        .min(k.div_ceil(2))
        .max(1)
}

/// `values` (`rows * in_features` bf16, row-major `(out_features, in_features)`) packed into
/// `out_features / MR` (rounded up) panels of `in_features / 2` (rounded up) pair steps; features
/// past the last row and the pad of an odd `in_features` are zero. One panel per rayon task.
pub(super) fn pack(values: &[half::bf16], in_features: usize) -> Vec<PairStep> {
    let pairs = in_features.div_ceil(2);
    let n_panels = (values.len() / in_features.max(1)).div_ceil(MR);
    let mut steps = vec![PairStep([0; MR]); n_panels * pairs];
    if in_features > 0 {
        use rayon::prelude::*;
        steps
            .par_chunks_mut(pairs)
            .zip(values.par_chunks(MR * in_features))
            .for_each(|(steps, rows)| {
                for (lane, row) in rows.chunks_exact(in_features).enumerate() {
                    for (step, pair) in steps.iter_mut().zip(row.chunks(2)) {
                        let low = pair[0].to_bits() as u32;
                        let high = pair.get(1).map_or(0, |v| v.to_bits() as u32);
                        step.0[lane] = low | high << 16;
                    }
                }
            });
    }
    steps
}

/// The weight back from [`pack`]'s panels: `out_features * in_features` values, row-major,
/// exactly as packed.
pub(super) fn unpack(
    steps: &[PairStep],
    out_features: usize,
    in_features: usize,
) -> Vec<half::bf16> {
    let pairs = in_features.div_ceil(2);
    let mut data = Vec::with_capacity(out_features * in_features);
    for feature in 0..out_features {
        let (panel, lane) = (feature / MR, feature % MR);
        let panel = &steps[panel * pairs..(panel + 1) * pairs];
        data.extend((0..in_features).map(|d| {
            let bits = panel[d / 2].0[lane] >> (16 * (d % 2));
            half::bf16::from_bits(bits as u16)
        }));
    }
    data
}

/// `x W^T` for `x` of `rows x in_features` f32 (contiguous) and the panels `steps` of an
/// `(out_features, in_features)` weight: `rows x out_features` f32, with the arithmetic of the
/// module docs, split into `tasks` contiguous shares of the panels (1 runs on the calling thread).
///
/// Panics (in debug builds) unless `x` holds `rows * in_features` values and `steps` the panels of
/// [`pack`]; the caller ([`super::PackedWeight`]) made the panels only on a CPU with [`cpu_has`].
pub(super) fn product(
    steps: &[PairStep],
    out_features: usize,
    in_features: usize,
    x: &[f32],
    rows: usize,
    tasks: usize,
) -> Vec<f32> {
    let (n, k) = (out_features, in_features);
    let pairs = k.div_ceil(2);
    debug_assert_eq!(x.len(), rows * k);
    debug_assert_eq!(steps.len(), n.div_ceil(MR) * pairs);
    debug_assert!(cpu_has());
    // `x` rounded to bf16 once, `pairs` pairs a row.
    let mut xb = vec![0u32; rows * pairs];
    {
        // Rows per conversion task: whole rows, about 64 K values each.
        let rows_per_task = (65536 / k.max(1)).max(1);
        let convert = |(xb, x): (&mut [u32], &[f32])| {
            // SAFETY: `cpu_has` (checked when the panels were made); whole rows on both sides.
            unsafe { kernel::round_rows(x, k, xb) }
        };
        if tasks > 1 && rows > rows_per_task {
            use rayon::prelude::*;
            xb.par_chunks_mut(rows_per_task * pairs)
                .zip(x.par_chunks(rows_per_task * k))
                .for_each(convert);
        } else {
            xb.chunks_mut(rows_per_task * pairs)
                .zip(x.chunks(rows_per_task * k))
                .for_each(convert);
        }
    }
    let len = rows * n;
    let mut dst: Vec<f32> = Vec::with_capacity(len);
    let out = OutPtr(dst.as_mut_ptr());
    let n_panels = n.div_ceil(MR);
    let tasks = tasks.clamp(1, n_panels.max(1));
    let shape = Shape { rows, n, pairs };
    let (w, xb) = (Steps(steps.as_ptr()), &xb[..]);
    let job = |task: usize| {
        let panels = task * n_panels / tasks..(task + 1) * n_panels / tasks;
        // SAFETY: tasks own disjoint column ranges of `dst`, which has room for `len`; the
        // panels and `xb` have the sizes of `shape`; the CPU has this path (above).
        unsafe { compute(shape, w, xb, panels, out) };
    };
    if tasks == 1 {
        job(0);
    } else {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each(job);
    }
    // SAFETY: the first depth block stored every element of the `rows x n` output.
    unsafe { dst.set_len(len) };
    dst
}

/// The product's dimensions: `rows` of `x`, `n` output features, `pairs` input pairs.
#[derive(Clone, Copy)]
struct Shape {
    rows: usize,
    n: usize,
    pairs: usize,
}

/// The panels' start, shared by tasks that read them.
#[derive(Clone, Copy)]
struct Steps(*const PairStep);
// SAFETY: the panels are only read while the product runs.
unsafe impl Send for Steps {}
// SAFETY: as above.
unsafe impl Sync for Steps {}

/// Columns `panels` of the output, all rows, all depth blocks; the loop order of
/// [`super::PackedWeight::compute`], in pairs.
///
/// # Safety
/// `w` points to the panels of an `(n, 2 * pairs)` weight, `xb` holds `rows * pairs` pairs, `out`
/// to `rows * n` writable values that no one else touches in the columns of `panels`; the CPU has
/// [`cpu_has`]'s features.
unsafe fn compute(shape: Shape, w: Steps, xb: &[u32], panels: std::ops::Range<usize>, out: OutPtr) {
    let Shape { rows, n, pairs } = shape;
    let kc = depth_block(rows, 2 * pairs);
    let pair_bytes = std::mem::size_of::<u32>();
    let rows_in_l2 = rows * kc * pair_bytes <= ROWS_IN_L2_BYTES;
    // As the widening path: when the rows stay in L2 every row tile re-reads the call's panel,
    // which then stays in L1; else two panels a call, blocks of panels in L2.
    let per_call = if rows_in_l2 { 1 } else { 2 };
    let tiles = rows.div_ceil(NR_512);
    let tile_rows = |tile: usize| tile * rows / tiles..(tile + 1) * rows / tiles;
    let panels_per_block = if rows_in_l2 {
        per_call
    } else {
        (PANEL_BLOCK_BYTES / (kc * std::mem::size_of::<PairStep>()))
            .max(1)
            .next_multiple_of(per_call)
    };
    let panel_ptr = |panel: usize, depth: usize| w.0.add(panel * pairs + depth);
    // The last `prefetching_tiles` row tiles each prefetch a share of the next panels: one line
    // (one step) every `prefetching_tiles` steps.
    let prefetching_tiles = PREFETCH_EVERY.min(tiles);
    let mut depth = 0;
    while depth < pairs {
        let depth_len = kc.min(pairs - depth);
        let accumulate = depth > 0;
        let next_depth = depth + depth_len;
        // Each of the last `prefetching_tiles` tiles prefetches this many steps of a panel.
        let share = depth_len / prefetching_tiles;
        let mut block_start = panels.start;
        while block_start < panels.end {
            let block_end = (block_start + panels_per_block).min(panels.end);
            for tile in 0..tiles {
                let r = tile_rows(tile);
                let prefetcher = (tile + prefetching_tiles).checked_sub(tiles);
                for panel in (block_start..block_end).step_by(per_call) {
                    let in_call = per_call.min(block_end - panel);
                    let next = super::next_block_panel(
                        panel,
                        block_start..block_end,
                        &panels,
                        (depth, next_depth),
                        pairs,
                    );
                    let prefetch = match (prefetcher, next) {
                        (Some(share_idx), Some((panel, depth))) => {
                            panel_ptr(panel, depth).wrapping_add(share_idx * share)
                        }
                        _ => std::ptr::null(),
                    };
                    let tile = DotTile {
                        rows: r.len(),
                        panels: in_call,
                        depth: depth_len,
                        w: panel_ptr(panel, depth),
                        panel_stride: pairs,
                        x: xb.as_ptr().add(r.start * pairs + depth),
                        ldx: pairs,
                        dst: out.0.add(r.start * n + panel * MR),
                        ldd: n,
                        cols: MR.min(n - (panel + in_call - 1) * MR),
                        accumulate,
                        prefetch,
                        prefetch_every: prefetching_tiles,
                    };
                    tile.run();
                }
            }
            block_start = block_end;
        }
        depth = next_depth;
    }
}

/// One micro-kernel call: `rows x (panels - 1) * MR + cols` outputs over `depth` pair steps.
struct DotTile {
    /// 1 to [`NR_512`].
    rows: usize,
    /// 1 or 2; the panels are `panel_stride` steps apart.
    panels: usize,
    depth: usize,
    /// The first panel at the block's depth.
    w: *const PairStep,
    panel_stride: usize,
    /// The tile's first row of bf16 pairs at the block's depth; rows `ldx` pairs apart.
    x: *const u32,
    ldx: usize,
    /// The tile's first output; rows `ldd` apart.
    dst: *mut f32,
    ldd: usize,
    /// Features of the last panel (1 to [`MR`]); the others are whole.
    cols: usize,
    /// Add to `dst` (a later depth block) instead of storing.
    accumulate: bool,
    /// Steps to prefetch (one line every `prefetch_every` steps per panel), or null.
    prefetch: *const PairStep,
    /// 1 to [`PREFETCH_EVERY`].
    prefetch_every: usize,
}

impl DotTile {
    /// Runs the tile with the kernel for its row and panel counts.
    ///
    /// # Safety
    /// The pointers as the fields say, the outputs writable and touched by no one else, and the
    /// CPU has [`cpu_has`]'s features.
    unsafe fn run(&self) {
        macro_rules! by_rows {
            ($kernel:ident, $($r:literal)+) => {
                match self.rows {
                    $($r => kernel::$kernel::<$r>(self),)+
                    rows => unreachable!("{rows} rows in one tile"),
                }
            };
        }
        match self.panels {
            1 => by_rows!(tile1, 1 2 3 4 5 6 7 8 9 10 11 12),
            _ => by_rows!(tile2, 1 2 3 4 5 6 7 8 9 10 11 12),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::{DotTile, PairStep};

    /// Rows of `k` f32 values (`x`, whole rows) rounded to bf16 pairs (`xb`, `k / 2` rounded up
    /// per row; an odd `k`'s last pair padded with zero): `vcvtneps2bf16`, round to nearest even,
    /// denormals to zero.
    ///
    /// # Safety
    /// `xb.len() / k.div_ceil(2) == x.len() / k`; the CPU has AVX-512 F/BW/VL/BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn round_rows(x: &[f32], k: usize, xb: &mut [u32]) {
        let pairs = k.div_ceil(2);
        for (src, dst) in x.chunks_exact(k).zip(xb.chunks_exact_mut(pairs)) {
            let (src, dst) = (src.as_ptr(), dst.as_mut_ptr() as *mut u16);
            let mut i = 0;
            while i + 32 <= k {
                let lo = _mm512_loadu_ps(src.add(i));
                let hi = _mm512_loadu_ps(src.add(i + 16));
                let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.add(i) as *mut __m512i, v);
                i += 32;
            }
            while i < k {
                let mask: __mmask16 = if k - i >= 16 { !0 } else { (1 << (k - i)) - 1 };
                let v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src.add(i)));
                _mm256_mask_storeu_epi16(
                    dst.add(i) as *mut i16,
                    mask,
                    std::mem::transmute::<__m256bh, __m256i>(v),
                );
                i += 16;
            }
            // The pad of an odd `k` stays zero (`xb` starts zeroed).
        }
    }

    /// [`tile`] over one panel.
    ///
    /// # Safety
    /// As [`tile`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn tile1<const R: usize>(t: &DotTile) {
        tile::<R, 1>(t)
    }

    /// [`tile`] over two panels.
    ///
    /// # Safety
    /// As [`tile`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn tile2<const R: usize>(t: &DotTile) {
        tile::<R, 2>(t)
    }

    /// One `R x ((P - 1) * MR + cols)` tile (`R <= NR_512`, `P` panels, one 16-lane register
    /// each) over `depth` pair steps: `acc[r][c] = vdpbf16ps(acc[r][c], w[j][c], x[r][j])` for `j`
    /// in order, from zero (`x[r][j]`, one pair, broadcast to the 16 lanes); then `dst = acc` or
    /// `dst + acc` (`accumulate`), the last panel's stores masked to `cols` lanes. When `prefetch`
    /// is not null, one line of each panel from it is prefetched every `prefetch_every` steps.
    ///
    /// # Safety
    /// `t.w` points to `P` panels of `depth` steps, `panel_stride` steps apart; `t.x` to `R` rows
    /// of `depth` pairs, `ldx` apart; `t.dst` to a tile with row stride `ldd` whose
    /// `R x ((P - 1) * MR + cols)` corner is writable; the CPU has AVX-512 F/BW/VL/BF16.
    // The features on this function reach the `step` closure (see `kernel512::tile`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn tile<const R: usize, const P: usize>(t: &DotTile) {
        let DotTile {
            depth,
            w,
            panel_stride,
            x,
            ldx,
            dst,
            ldd,
            cols,
            accumulate,
            prefetch,
            prefetch_every: every,
            ..
        } = *t;
        let x_rows: [*const u32; R] = std::array::from_fn(|r| x.add(r * ldx));
        let w_panels: [*const PairStep; P] = std::array::from_fn(|p| w.add(p * panel_stride));
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let step = |acc: &mut [[__m512; P]; R], j: usize| {
            let wv: [__m512bh; P] = std::array::from_fn(|p| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(
                    w_panels[p].add(j) as *const __m512i
                ))
            });
            for (acc, x_row) in acc.iter_mut().zip(x_rows) {
                let b = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                    *x_row.add(j) as i32
                ));
                for (acc, wv) in acc.iter_mut().zip(wv) {
                    *acc = _mm512_dpbf16_ps(*acc, wv, b);
                }
            }
        };
        // One pair step is one line.
        super::super::prefetched_steps(depth, every, 1, prefetch, P, panel_stride, |j| {
            step(&mut acc, j)
        });
        super::super::kernel512::store(&acc, dst, ldd, cols, accumulate);
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    use super::DotTile;

    /// Never called: the panels exist only on x86-64 CPUs with AVX-512 BF16.
    pub(super) unsafe fn round_rows(_x: &[f32], _k: usize, _xb: &mut [u32]) {
        unreachable!("bf16 pair panels exist only on x86-64")
    }

    /// Never called: as above.
    pub(super) unsafe fn tile1<const R: usize>(_t: &DotTile) {
        unreachable!("bf16 pair panels exist only on x86-64")
    }

    /// Never called: as above.
    pub(super) unsafe fn tile2<const R: usize>(_t: &DotTile) {
        unreachable!("bf16 pair panels exist only on x86-64")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `x` rounded to bf16 bits as `vcvtneps2bf16` does (Intel SDM, `convert_fp32_to_bfloat16`):
    /// zero and denormals to a zero of their sign, NaN quieted, else round to nearest even.
    pub(crate) fn round_to_bf16(x: f32) -> u16 {
        let bits = x.to_bits();
        if x.is_nan() {
            return (bits >> 16) as u16 | 0x40;
        }
        if x == 0.0 || x.is_subnormal() {
            return (bits >> 16) as u16 & 0x8000;
        }
        // Infinities pass unchanged (the low half is zero).
        (bits.wrapping_add(0x7fff + (bits >> 16 & 1)) >> 16) as u16
    }

    /// A denormal read as a zero of its sign (`vdpbf16ps`'s DAZ on inputs, FTZ on results).
    fn flush(x: f32) -> f32 {
        if x.is_subnormal() {
            0.0f32.copysign(x)
        } else {
            x
        }
    }

    /// One lane of `vdpbf16ps`: `acc += w1 x1`, then `acc += w0 x0`, each one fused
    /// multiply-add rounded to nearest even, denormal inputs and results flushed.
    pub(crate) fn dot_pair(acc: f32, w: [u16; 2], x: [u16; 2]) -> f32 {
        let f = |b: u16| flush(f32::from_bits((b as u32) << 16));
        let acc = flush(f(w[1]).mul_add(f(x[1]), flush(acc)));
        flush(f(w[0]).mul_add(f(x[0]), acc))
    }

    /// The scalar reference of this path's arithmetic (module docs): `w` row-major
    /// `(n, k)` bf16, `x` row-major `(rows, k)` f32, depth blocks of [`depth_block`] pairs;
    /// `(rows, n)` f32 row-major.
    pub(crate) fn reference(
        w: &[half::bf16],
        x: &[f32],
        rows: usize,
        n: usize,
        k: usize,
    ) -> Vec<f32> {
        let pairs = k.div_ceil(2);
        let kc = depth_block(rows, k);
        let at = |v: &dyn Fn(usize) -> u16, d: usize| if d < k { v(d) } else { 0 };
        let mut y = vec![0.0f32; rows * n];
        for r in 0..rows {
            let xr = |d: usize| round_to_bf16(x[r * k + d]);
            for f in 0..n {
                let wf = |d: usize| w[f * k + d].to_bits();
                let mut sum = 0.0f32;
                for block in (0..pairs).step_by(kc) {
                    let mut acc = 0.0f32;
                    for j in block..(block + kc).min(pairs) {
                        let wp = [at(&wf, 2 * j), at(&wf, 2 * j + 1)];
                        let xp = [at(&xr, 2 * j), at(&xr, 2 * j + 1)];
                        acc = dot_pair(acc, wp, xp);
                    }
                    sum = if block == 0 { acc } else { sum + acc };
                }
                y[r * n + f] = sum;
            }
        }
        y
    }

    /// The instruction and the conversions against their scalar models on values of every
    /// magnitude (denormals, rounding ties, both orders of the pair), one lane at a time.
    #[test]
    fn instructions_match_their_scalar_models() {
        if !cpu_has() {
            eprintln!("no AVX-512 BF16 on this CPU: skipped");
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // x: f32 bit patterns of every exponent (incl. denormals and ties); w: bf16 of every exponent.
        let k: usize = 2 * 4096 + 1;
        let x: Vec<f32> = (0..k)
            .map(|i| {
                let bits = next() as u32;
                let bits = if i % 7 == 0 {
                    bits & 0xffff_8000 | 0x8000
                } else {
                    bits
                };
                let v = f32::from_bits(bits);
                if v.is_finite() {
                    v
                } else {
                    1.0
                }
            })
            .collect();
        let mut xb = vec![0u32; k.div_ceil(2)];
        // SAFETY: `cpu_has`; one row of `k` values into `k / 2` rounded up pairs.
        unsafe { kernel::round_rows(&x, k, &mut xb) };
        for (d, &v) in x.iter().enumerate() {
            let got = (xb[d / 2] >> (16 * (d % 2))) as u16;
            assert_eq!(
                got,
                round_to_bf16(v),
                "x[{d}] = {v:e} ({:#010x})",
                v.to_bits()
            );
            // Off denormals, the same as `half`'s round to nearest even.
            if v.is_normal() && round_to_bf16(v) & 0x7f80 != 0x7f80 {
                assert_eq!(got, half::bf16::from_f32(v).to_bits(), "x[{d}] = {v:e}");
            }
        }
        assert_eq!(xb[k / 2] >> 16, 0, "odd k: the pad is zero");
    }

    /// The kernel against [`reference`] on two pair steps, lane by lane: the first sets an
    /// accumulator of any size (`a * 1`), the second adds the pair under test, with products of
    /// every size (cancellation, denormal results, overflow to infinity).
    #[test]
    fn dot_product_matches_its_scalar_model() {
        if !cpu_has() {
            eprintln!("no AVX-512 BF16 on this CPU: skipped");
            return;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut bf16 = |wide: bool| -> half::bf16 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let r = state;
            // Exponents around 1, or over the whole finite range; random sign and mantissa.
            let exp = if wide { r % 0xff } else { 0x70 + r % 0x20 };
            half::bf16::from_bits(
                ((r >> 20) as u16 & 0x8000) | (exp as u16) << 7 | (r >> 32) as u16 & 0x7f,
            )
        };
        let (n, k) = (MR, 4);
        for round in 0..4000 {
            let wide = round % 2 == 1;
            let w: Vec<half::bf16> = (0..n)
                .flat_map(|_| [bf16(wide), half::bf16::ZERO, bf16(wide), bf16(wide)])
                .collect();
            let x = [1.0, 0.0, bf16(wide).to_f32(), bf16(wide).to_f32()];
            let got = product(&pack(&w, k), n, k, &x, 1, 1);
            let want = reference(&w, &x, 1, n, k);
            for f in 0..n {
                assert!(
                    got[f].to_bits() == want[f].to_bits() || (got[f].is_nan() && want[f].is_nan()),
                    "lane {f}: {:e} vs {:e} (w {:?}, x {x:?})",
                    got[f],
                    want[f],
                    &w[f * k..(f + 1) * k]
                );
            }
        }
    }

    /// Rows, depths and features of the odd shapes: rows 1, 7, 32, 513 (partial row tiles of
    /// every size; 513 rows leave L2, so two panels a call and blocks of panels), odd depths off
    /// every tile, prefetch step and depth block (1031 values: three depth blocks), feature counts
    /// with a partial last panel and an odd number of panels; and shapes of [`Route::Candle`].
    const ODD_SHAPES: [(usize, usize, usize); 10] = [
        (1, 601, 328),
        (1, 1031, 1544),
        (7, 37, 40),
        (7, 1031, 1544),
        (32, 601, 1544),
        (32, 1031, 328),
        (513, 1031, 328),
        (513, 37, 40),
        (2, 64, 24),
        (5, 2, 600),
    ];

    /// The dot-product path on the odd shapes, through [`PackedWeight::matmul_t`] and with 1, 2
    /// and 3 tasks: (a) bit for bit [`reference`] (and, on [`Route::Candle`]'s shapes, the widened
    /// f32 product), (b) within `(2^-8 + k 2^-23) sum |w x|` of the f32 product of the widened
    /// weight (module docs), with the RMS relative error printed (1.48e-3 on this CPU); `unpack` gives
    /// the weight back.
    #[test]
    fn dot_path_is_its_reference_and_near_f32_on_odd_shapes() {
        use candle_core::{DType, Device, Tensor};

        use super::super::tests::values;
        use super::super::{route, PackedWeight, Route};

        if !cpu_has() {
            eprintln!("no AVX-512 BF16 on this CPU: skipped");
            return;
        }
        let (mut err2, mut ref2) = (0.0f64, 0.0f64);
        for (rows, k, n) in ODD_SHAPES {
            let what = format!("rows {rows}, k {k}, n {n}");
            let seed = (rows * 1_000_003 + k * 1_009 + n) as u64;
            let w = Tensor::from_vec(values(n * k, seed), (n, k), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let xs = values(rows * k, seed + 1);
            let x = Tensor::from_vec(xs.clone(), (rows, k), &Device::Cpu).unwrap();
            let packed = PackedWeight::with_layout(&w, true)
                .unwrap()
                .expect("AVX2 CPU");
            assert!(matches!(packed.panels, super::super::Panels::Bf16Pairs(_)));
            assert_eq!(packed.weight_bytes(), (n * k * 2) as u64);
            let unpacked = packed.unpack().unwrap();
            assert_eq!(unpacked.dtype(), DType::BF16);
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap();
            let wv = bits(&w);
            assert!(bits(&unpacked)
                .iter()
                .zip(&wv)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            let wide = w.to_dtype(DType::F32).unwrap();
            let f32_product = x.matmul(&wide.t().unwrap()).unwrap();
            let f32_product = f32_product.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = packed.matmul_t(&x).unwrap();
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let same = |a: &[f32], b: &[f32], what: &str| {
                if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
                    panic!("{what}: first difference at {i}: {:e} vs {:e}", a[i], b[i]);
                }
            };
            if route(rows, n, k) == Route::Candle {
                same(&got, &f32_product, &format!("{what}: candle's route"));
                continue;
            }
            let want = reference(&wv, &xs, rows, n, k);
            same(&got, &want, &format!("{what}: matmul_t"));
            for tasks in [1, 2, 3] {
                let y = product(
                    match &packed.panels {
                        super::super::Panels::Bf16Pairs(steps) => steps,
                        _ => unreachable!(),
                    },
                    n,
                    k,
                    &xs,
                    rows,
                    tasks,
                );
                same(&y, &want, &format!("{what}: {tasks} tasks"));
            }
            let unit = 2f64.powi(-8) + k.next_multiple_of(2) as f64 * 2f64.powi(-23);
            for r in 0..rows {
                for f in 0..n {
                    let abs: f64 = (0..k)
                        .map(|d| (wv[f * k + d].to_f32() as f64 * xs[r * k + d] as f64).abs())
                        .sum();
                    let (a, b) = (got[r * n + f] as f64, f32_product[r * n + f] as f64);
                    assert!(
                        (a - b).abs() <= unit * abs,
                        "{what}: y[{r}][{f}] = {a:e}, f32 {b:e}: error {:e} over {:e}",
                        (a - b).abs(),
                        unit * abs
                    );
                    err2 += (a - b) * (a - b);
                    ref2 += b * b;
                }
            }
        }
        let rms = (err2 / ref2).sqrt();
        eprintln!(
            "bf16 dot path vs the f32 product of the widened weight: RMS relative error {rms:.3e}"
        );
        // Rounding `x` to bf16: a relative error of about 2^-9 / sqrt(3) per product.
        assert!(rms > 1e-4 && rms < 4e-3, "RMS relative error {rms:e}");
    }

    /// GFLOP/s of a bf16 weight on the widening AVX-512 kernel and on this path, and of the same
    /// weight in f32, on the decoder's shapes (median of `GEMM_SPEED_REPS`, default 20, wall
    /// clock, the sides alternating). Run with `cargo test --release -p fastdllm-models
    /// bf16_gemm_speed -- --ignored --nocapture` (threads follow `RAYON_NUM_THREADS`).
    #[test]
    #[ignore = "timing, not a check"]
    fn bf16_gemm_speed() {
        use candle_core::{DType, Device, Tensor};

        use super::super::tests::values;
        use super::super::PackedWeight;

        if !cpu_has() {
            return;
        }
        let reps: usize = std::env::var("GEMM_SPEED_REPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20);
        let names = ["f32", "bf16 widened", "bf16 dot"];
        println!("rows      k      n   median GFLOP/s: {names:?}");
        for rows in [1, 32, 512] {
            for (k, n) in [
                (512, 1536),
                (1536, 512),
                (2048, 5632),
                (5632, 2048),
                (512, 32000),
            ] {
                let w = Tensor::from_vec(values(n * k, 11), (n, k), &Device::Cpu).unwrap();
                let wb = w.to_dtype(DType::BF16).unwrap();
                let sides = [
                    PackedWeight::with_layout(&w, false).unwrap().unwrap(),
                    PackedWeight::with_layout(&wb, false).unwrap().unwrap(),
                    PackedWeight::with_layout(&wb, true).unwrap().unwrap(),
                ];
                let x = Tensor::from_vec(values(rows * k, 12), (rows, k), &Device::Cpu).unwrap();
                let flops = 2.0 * (rows * k * n) as f64;
                let mut rates = vec![Vec::new(); sides.len()];
                for rep in 0..reps + 2 {
                    for (side, rate) in sides.iter().zip(&mut rates) {
                        let start = std::time::Instant::now();
                        let y = side.matmul_t(&x).unwrap();
                        let t = start.elapsed().as_secs_f64();
                        drop(y);
                        if rep >= 2 {
                            rate.push(flops / t / 1e9);
                        }
                    }
                }
                super::super::tests::print_median_rates(rows, k, n, &mut rates);
            }
        }
    }
}

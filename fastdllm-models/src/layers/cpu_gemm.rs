//! CPU f32 GEMM `y = x W^T` with the weight packed once, at load time.
//!
//! Why: candle's CPU matmul calls `gemm` 0.19, which turns `x W^T` around so that `W` is its
//! left operand and copies `W` into its microkernel's panel layout on every call. On the
//! cache-cpu benchmark (random LLaDA-shaped model, hidden 512) that packing was 25% of a
//! dual-cache step (32-row windows) and 7.5% of a 512-row forward. [`PackedWeight`] stores `W`
//! in that layout once (panels of [`MR`] = 16 output features by K, k-major, 64-byte aligned),
//! reads `x` in place, and runs an AVX2+FMA microkernel of up to 6 rows x 16 features on
//! rayon's pool (as many tasks as threads, each streaming its own contiguous share of the
//! panels; `RAYON_NUM_THREADS` applies). Row tiles are balanced (32 rows: 5, 5, 6, 5, 5, 6)
//! so that no tile computes padding, and the last tiles of a panel block prefetch the next
//! block, which in a forward pass comes from DRAM.
//!
//! Bitwise contract: the result equals candle's `x.matmul(&w.t())` bit for bit, because it does
//! the same arithmetic as gemm's f32 FMA path (`gemm_common::gemm::gemm_basic_generic`, called
//! through candle-core 0.11.1 `cpu_backend::MatMul` with `alpha = 0`, `beta = 1`,
//! `read_dst = false`): every output element has one accumulator that starts at zero and takes
//! the products in increasing k with one fused multiply-add each, within depth blocks of `kc`
//! elements; the first block is stored, each later block is added to the stored value
//! (`dst + acc`, gemm's `mul_add(1, acc, dst)`). `kc` is gemm's own choice (see
//! [`depth_block`]), from `gemm_common::cache::kernel_params` and the cache sizes it detects.
//! How the work is tiled or split across threads does not enter the arithmetic, in gemm or
//! here. A single row of `x` goes through gemm's `gemv` instead, which sums in another order
//! (eight 8-lane accumulators); [`kernel::gemv_panel`] reproduces that one too. The shapes
//! for which gemm takes yet another path ([`route`]: its horizontal kernel for products of at
//! most 256 values, `gevv` for `k <= 2`) go through candle's matmul on an unpacked copy of `W`,
//! as does every input that is not a CPU f32 tensor; all of them are small. The contract holds
//! while candle's CPU matmul is gemm's AVX2 FMA path: candle built with `mkl` or `accelerate`,
//! or gemm built with `x86-v4` on an AVX-512 CPU, would break it; the tests in this file compare
//! bits and would catch that.
//!
//! Half-precision weights (bf16, f16) are packed in the same layout at 2 bytes a value and
//! widened to f32 as they are used (bf16: a 16-bit shift; f16: `vcvtph2ps`): in the AVX-512
//! micro-kernel at each load, and on the AVX2 path once per block of panels, into a per-thread
//! f32 copy of the block that every row tile then reads (the 6 x 16 AVX2 tile cannot hide a
//! conversion per step behind its 12 FMAs). Then they are multiplied with the same f32
//! arithmetic: the product of a half weight with an f32 `x` equals, bit for
//! bit, the f32 path on the widened weight (`w.to_dtype(F32)`), i.e. candle's f32 matmul of the
//! widened weight. The weight stays in half precision in memory (half the bytes of f32; a
//! memory-bound window reads half as much) and accumulation is f32.
//!
//! Except on CPUs with AVX-512 BF16 ([`Isa::Avx512Bf16`], the default there): bf16 weights are
//! packed at load in pairs of input indices instead and multiplied by `vdpbf16ps`, two products
//! per lane per instruction, with `x` rounded to bf16 once per call ([`bf16_dot`]: layout,
//! arithmetic, error bound). That path leaves the bit-for-bit contract: its result is within
//! `(2^-8 + k 2^-23) sum |w x|` of the widened product (RMS relative error about 1.5e-3 on
//! uniform values), and where `x` is already bf16 (a `--dtype bf16` model's activations) the
//! rounding is exact and only the summation differs. One-row products (gemm's `gemv` route) take
//! its one-row tiles; the [`Route::Candle`] shapes keep the widened product.
//!
//! Kernels ([`Isa`], chosen once at run time; `FASTDLLM_CPU_GEMM=avx2|avx512|avx512bf16` forces
//! one): the AVX2 tile above, and on AVX-512F CPUs a tile of up to [`NR_512`] = 12 rows by two
//! panels (24 16-lane accumulators) when the rows exceed L2's share, one panel otherwise (two
//! panels would not stay in L1 while every row tile re-reads them). The f32 kernels differ in
//! tiling only, never in arithmetic, so all give candle's bits; the tests run every path the CPU
//! has. `avx512` and `avx512bf16` differ only for bf16 weights (widened vs dot products).
//!
//! Reference: `gemm-common` 0.19.0 (`gemm.rs`, `cache.rs`, `microkernel.rs`, `gemv.rs`) and
//! `gemm-f32` 0.19.0 (`microkernel.rs`: the `fma` module, `MR = 16`, `NR = 6`). Only x86-64
//! CPUs with AVX2 and FMA use the packed form; [`PackedWeight::new`] declines everything else
//! and the caller keeps candle's matmul.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor};

use crate::Result;

mod bf16_dot;

/// Output features per panel: gemm's f32 `MR` on AVX2 (two 8-lane registers).
pub(crate) const MR: usize = 16;
/// Rows of `x` per microkernel tile: gemm's f32 `NR` on AVX2.
pub(crate) const NR: usize = 6;
/// Below this many multiply-adds one thread does the whole product (gemm's threading threshold).
const PARALLEL_MIN_WORK: usize = 48 * 48 * 256;
/// When one depth block of all rows of `x` takes at most this many bytes (it then stays in L2),
/// the panels go by one at a time, each used by every row tile while it is in L1.
const ROWS_IN_L2_BYTES: usize = 192 * 1024;
/// Otherwise panels go by in blocks of this many bytes (which stay in L2 while the row tiles
/// pass).
const PANEL_BLOCK_BYTES: usize = 128 * 1024;

/// One k step of a panel: the weights of [`MR`] consecutive output features at one input index.
/// The 64-byte alignment keeps each step within one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct PanelStep([f32; MR]);

/// [`PanelStep`] of a half-precision weight (bf16 or f16 bits), 32 bytes, two to a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct HalfStep([u16; MR]);

/// The panels in the weight's stored precision.
enum Panels {
    F32(Vec<PanelStep>),
    /// bf16 for the widening kernels.
    Bf16(Vec<HalfStep>),
    F16(Vec<HalfStep>),
    /// bf16 in pairs of input indices for the dot-product kernel ([`bf16_dot`],
    /// [`Isa::Avx512Bf16`]), in place of [`Panels::Bf16`].
    Bf16Pairs(Vec<bf16_dot::PairStep>),
}

impl Panels {
    /// The stored dtype.
    fn dtype(&self) -> DType {
        match self {
            Panels::F32(_) => DType::F32,
            Panels::Bf16(_) | Panels::Bf16Pairs(_) => DType::BF16,
            Panels::F16(_) => DType::F16,
        }
    }
}

/// `W` of shape `(out_features, in_features)`, stored as `out_features / MR` (rounded up)
/// panels of `in_features` steps ([`PanelStep`], or [`HalfStep`] for bf16 / f16); features past
/// `out_features` are zero.
pub(crate) struct PackedWeight {
    out_features: usize,
    in_features: usize,
    panels: Panels,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeight")
            .field("out_features", &self.out_features)
            .field("in_features", &self.in_features)
            .field("dtype", &self.panels.dtype())
            .field("bf16_pairs", &matches!(self.panels, Panels::Bf16Pairs(_)))
            .finish_non_exhaustive()
    }
}

/// Whether this CPU runs the packed path (x86-64 with AVX2, FMA and F16C, which every AVX2 CPU
/// has: the f16 weights' widening).
pub(crate) fn cpu_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How gemm computes candle's `x W^T` for `rows` rows, `n` output features and depth `k`, and
/// so how this module does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// gemm's packed microkernels (`gemm_basic_generic`'s main loop): [`kernel::tile`].
    Tiles,
    /// gemm's `gemv::mixed_gemv_rowmajor` (one row of `x`): [`kernel::gemv_panel`].
    Gemv,
    /// Another summation order, not reproduced (candle's matmul on an unpacked copy of `W`):
    /// the horizontal dot-product kernel (`rows * n <= 256`), `gevv` (`k <= 2`), the
    /// untransposed problem (`n == 1`), or an empty product.
    Candle,
}

/// gemm's choice, in the order `gemm_basic_generic` makes it for the transposed problem
/// (`m = n`, `n = rows`, `lhs = W` row-major, `rhs = x^T`, column-major destination).
pub(crate) fn route(rows: usize, n: usize, k: usize) -> Route {
    if rows == 0 || k == 0 || n <= 1 || rows * n <= 16 * 16 || k <= 2 {
        Route::Candle
    } else if rows == 1 {
        Route::Gemv
    } else {
        Route::Tiles
    }
}

/// gemm's depth block `kc` for candle's `x W^T`: gemm transposes the problem (the destination is
/// row-major), so its `m` is the number of output features and its `n` the number of rows.
pub(crate) fn depth_block(rows: usize, n: usize, k: usize) -> usize {
    if n <= 64 && rows <= 64 {
        // gemm skips `kernel_params` for small products.
        k.min(512)
    } else {
        gemm_common::cache::kernel_params(n, rows, k, MR, NR, std::mem::size_of::<f32>()).kc
    }
}

impl PackedWeight {
    /// Packs `weight` (shape `(out_features, in_features)`) when it is a CPU f32, bf16 or f16
    /// matrix and the CPU has AVX2, FMA and F16C; `None` otherwise (the caller keeps candle's
    /// matmul). The panels keep the weight's precision; a bf16 weight is laid out for the path
    /// [`Isa::detect`] chooses (in pairs for [`Isa::Avx512Bf16`], else for the widening kernels).
    ///
    /// Errors: a bf16 weight while [`KERNEL_VAR`] names an unknown path or one the CPU lacks.
    pub(crate) fn new(weight: &Tensor) -> Result<Option<Self>> {
        let bf16_pairs = weight.dtype() == DType::BF16
            && matches!(weight.device(), Device::Cpu)
            && cpu_supported()
            && Isa::detect().map_err(candle_core::Error::Msg)? == Isa::Avx512Bf16;
        Self::with_layout(weight, bf16_pairs)
    }

    /// [`Self::new`] with the bf16 layout given: `bf16_pairs` lays a bf16 weight out for
    /// [`bf16_dot`] (the CPU must have [`Isa::Avx512Bf16`]), else for the widening kernels.
    fn with_layout(weight: &Tensor, bf16_pairs: bool) -> Result<Option<Self>> {
        if !matches!(weight.device(), Device::Cpu) || !cpu_supported() {
            return Ok(None);
        }
        let (out_features, in_features) = weight.dims2()?;
        let weight = weight.contiguous()?;
        let (storage, layout) = weight.storage_and_layout();
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Ok(None);
        };
        // Read in place: a copy of a multi-GB weight would double the peak memory of a load.
        let Storage::Cpu(storage) = &*storage else {
            return Ok(None);
        };
        let panels = match storage {
            CpuStorage::F32(values) => Panels::F32(pack(
                &values[start..end],
                in_features,
                PanelStep([0.0; MR]),
                |step, lane, &value| step.0[lane] = value,
            )),
            CpuStorage::BF16(values) if bf16_pairs => {
                Panels::Bf16Pairs(bf16_dot::pack(&values[start..end], in_features))
            }
            CpuStorage::BF16(values) => Panels::Bf16(pack(
                &values[start..end],
                in_features,
                HalfStep([0; MR]),
                |step, lane, value| step.0[lane] = value.to_bits(),
            )),
            CpuStorage::F16(values) => Panels::F16(pack(
                &values[start..end],
                in_features,
                HalfStep([0; MR]),
                |step, lane, value| step.0[lane] = value.to_bits(),
            )),
            _ => return Ok(None),
        };
        Ok(Some(Self {
            out_features,
            in_features,
            panels,
        }))
    }

    /// Number of output features.
    pub(crate) fn out_features(&self) -> usize {
        self.out_features
    }

    /// The stored dtype of the weight (f32, bf16 or f16).
    pub(crate) fn dtype(&self) -> DType {
        self.panels.dtype()
    }

    /// Bytes of the packed weight at its stored precision (`out_features * in_features * 4`, or
    /// `* 2` for bf16 / f16).
    pub(crate) fn weight_bytes(&self) -> u64 {
        (self.out_features * self.in_features * self.dtype().size_in_bytes()) as u64
    }

    /// `W` back in its `(out_features, in_features)` layout and stored dtype (an exact copy).
    pub(crate) fn unpack(&self) -> Result<Tensor> {
        fn gather<S, T>(steps: &[S], n: usize, k: usize, lane: impl Fn(&S, usize) -> T) -> Vec<T> {
            let mut data = Vec::with_capacity(n * k);
            for feature in 0..n {
                let (panel, l) = (feature / MR, feature % MR);
                data.extend(steps[panel * k..(panel + 1) * k].iter().map(|s| lane(s, l)));
            }
            data
        }
        let (n, k) = (self.out_features, self.in_features);
        let cpu = &Device::Cpu;
        Ok(match &self.panels {
            Panels::F32(steps) => {
                Tensor::from_vec(gather(steps, n, k, |s, l| s.0[l]), (n, k), cpu)?
            }
            Panels::Bf16(steps) => Tensor::from_vec(
                gather(steps, n, k, |s, l| half::bf16::from_bits(s.0[l])),
                (n, k),
                cpu,
            )?,
            Panels::F16(steps) => Tensor::from_vec(
                gather(steps, n, k, |s, l| half::f16::from_bits(s.0[l])),
                (n, k),
                cpu,
            )?,
            Panels::Bf16Pairs(steps) => {
                Tensor::from_vec(bf16_dot::unpack(steps, n, k), (n, k), cpu)?
            }
        })
    }

    /// `x W^T`. Shape: `(rows, in_features)` -> `(rows, out_features)`. An f32 weight gives
    /// `x.matmul(&w.t())` bit for bit, in `x`'s dtype; a bf16 / f16 weight gives, in f32, the f32
    /// product of `x` and the widened weight (`x.to_dtype(F32).matmul(&w.to_dtype(F32).t())`,
    /// bit for bit), except a bf16 weight in pairs ([`Isa::Avx512Bf16`]): there `x` is rounded to
    /// bf16 and the products summed by `vdpbf16ps` (see [`bf16_dot`] for the arithmetic and its
    /// error bound), for every shape but [`Route::Candle`]'s, which keep the widened product.
    pub(crate) fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, k) = x.dims2()?;
        let half = self.dtype() != DType::F32;
        let x = if half {
            x.to_dtype(DType::F32)?
        } else {
            x.clone()
        };
        let handled = matches!(x.device(), Device::Cpu)
            && x.dtype() == DType::F32
            && k == self.in_features
            && route(rows, self.out_features, k) != Route::Candle;
        if !handled {
            let w = self.unpack()?;
            let w = if half { w.to_dtype(DType::F32)? } else { w };
            return Ok(x.matmul(&w.t()?)?);
        }
        Ok(x.contiguous()?.apply_op1_no_bwd(self)?)
    }

    /// The product on a contiguous `x` (`rows * in_features` values), split into `tasks`
    /// contiguous shares of the panels (1 runs on the calling thread), with the micro-kernels of
    /// `isa` (which the CPU must have: see [`Isa::available`]); bf16 panels in pairs take
    /// [`bf16_dot`]'s kernel whatever `isa` is (their layout was chosen at load).
    fn product(&self, x: &[f32], rows: usize, tasks: usize, isa: Isa) -> Vec<f32> {
        match &self.panels {
            Panels::Bf16Pairs(steps) => {
                bf16_dot::product(steps, self.out_features, self.in_features, x, rows, tasks)
            }
            Panels::F32(steps) => {
                self.product_of(steps.as_ptr() as *const f32, x, rows, tasks, isa)
            }
            Panels::Bf16(steps) => {
                self.product_of(steps.as_ptr() as *const Bf16, x, rows, tasks, isa)
            }
            Panels::F16(steps) => {
                self.product_of(steps.as_ptr() as *const F16, x, rows, tasks, isa)
            }
        }
    }

    /// [`Self::product`] on the panels at `w` (the start of [`Self::panels`], read as `E`).
    fn product_of<E: Element>(
        &self,
        w: *const E,
        x: &[f32],
        rows: usize,
        tasks: usize,
        isa: Isa,
    ) -> Vec<f32> {
        let w = WeightPtr(w);
        let n = self.out_features;
        let kc = depth_block(rows, n, self.in_features);
        let len = rows * n;
        let mut dst: Vec<f32> = Vec::with_capacity(len);
        let out = OutPtr(dst.as_mut_ptr());
        let n_panels = n.div_ceil(MR);
        let tasks = tasks.clamp(1, n_panels);
        let job = |task: usize| {
            let panels = task * n_panels / tasks..(task + 1) * n_panels / tasks;
            // SAFETY: tasks own disjoint column ranges of `dst`, which has room for `len`;
            // `PackedWeight::new` checked the CPU for AVX2, the caller for `isa`.
            unsafe {
                if rows == 1 {
                    self.gemv(w, x, panels, out);
                } else {
                    self.compute(isa, w, x, rows, kc, panels, out);
                }
            }
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

    /// Columns `panels` of the output for one row `x` ([`Route::Gemv`]).
    ///
    /// # Safety
    /// As [`Self::compute`] with one row.
    unsafe fn gemv<E: Element>(
        &self,
        w: WeightPtr<E>,
        x: &[f32],
        panels: std::ops::Range<usize>,
        out: OutPtr,
    ) {
        let (n, k) = (self.out_features, self.in_features);
        for panel in panels {
            let w = w.0.add(panel * k * MR);
            let cols = MR.min(n - panel * MR);
            kernel::gemv_panel(k, w, x.as_ptr(), out.0.add(panel * MR), cols);
        }
    }

    /// Columns `panels` of the output, all rows, all depth blocks ([`Route::Tiles`]).
    ///
    /// Loop order, per depth block: blocks of panels (one call's panels when the rows fit in L2,
    /// else as many as fit in L2), then row tiles (`x` stays in L1), then the panels of the block,
    /// [`Isa::panels_per_call`] at a time. The last row tiles of a block prefetch the next block's
    /// weights, which in a forward pass come from DRAM. On the AVX2 path half-precision blocks
    /// are first widened into [`WIDENED`] (the widening streams the weights in).
    ///
    /// # Safety
    /// `out` must point to `rows * out_features` writable values that no one else touches in
    /// the columns of `panels`, and the CPU must have the features of `isa`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn compute<E: Element>(
        &self,
        isa: Isa,
        w: WeightPtr<E>,
        x: &[f32],
        rows: usize,
        kc: usize,
        panels: std::ops::Range<usize>,
        out: OutPtr,
    ) {
        let (n, k) = (self.out_features, self.in_features);
        let value_bytes = std::mem::size_of::<f32>();
        let rows_in_l2 = rows * kc * value_bytes <= ROWS_IN_L2_BYTES;
        // When the rows stay in L2 every row tile re-reads the call's panels, which must then
        // stay in L1: one panel a call (AVX-512's two would not fit at gemm's `kc`).
        let per_call = if rows_in_l2 { 1 } else { isa.panels_per_call() };
        // Row tiles of at most `isa.tile_rows()` rows, as even as possible (32 rows on AVX2: 5,
        // 5, 6, 5, 5, 6), so that no tile computes padding.
        let tiles = rows.div_ceil(isa.tile_rows());
        let tile_rows = |tile: usize| tile * rows / tiles..(tile + 1) * rows / tiles;
        let panels_per_block = if rows_in_l2 {
            per_call
        } else {
            (PANEL_BLOCK_BYTES / (MR * kc * value_bytes))
                .max(1)
                .next_multiple_of(per_call)
        };
        let panel_ptr = |panel: usize, depth: usize| w.0.add((panel * k + depth) * MR);
        let prefetching_tiles = PREFETCH_EVERY.min(tiles);
        // The AVX2 tile cannot hide the widening of half-precision weights behind its 12 FMAs a
        // step (it ran at 47 % of the FMA peak on f16 panels against 72 % on f32 ones): on that
        // path each block of panels is widened once, into f32 panels of the block's depth, which
        // every row tile then reads. Widening is exact, so the arithmetic is unchanged.
        let widen = isa == Isa::Avx2 && std::mem::size_of::<E>() != std::mem::size_of::<f32>();
        WIDENED.with_borrow_mut(|scratch| {
            if widen {
                scratch.clear();
                scratch.reserve(panels_per_block.min(panels.len()) * kc.min(k));
            }
            let mut depth = 0;
            while depth < k {
                let depth_len = kc.min(k - depth);
                let accumulate = depth > 0;
                let next_depth = depth + depth_len;
                // Each of the last `prefetching_tiles` tiles prefetches this share of a panel.
                let share = depth_len * MR / PREFETCH_EVERY;
                let mut block_start = panels.start;
                while block_start < panels.end {
                    let block_end = (block_start + panels_per_block).min(panels.end);
                    let wide = scratch.as_mut_ptr() as *mut f32;
                    if widen {
                        for panel in block_start..block_end {
                            let at = (panel - block_start) * depth_len * MR;
                            kernel::widen(panel_ptr(panel, depth), wide.add(at), depth_len * MR);
                        }
                    }
                    for tile in 0..tiles {
                        let r = tile_rows(tile);
                        let xt = x.as_ptr().add(r.start * k + depth);
                        let prefetcher = (tile + prefetching_tiles).checked_sub(tiles);
                        for panel in (block_start..block_end).step_by(per_call) {
                            let in_call = per_call.min(block_end - panel);
                            // Features of the call's last panel.
                            let cols = MR.min(n - (panel + in_call - 1) * MR);
                            let dst = out.0.add(r.start * n + panel * MR);
                            macro_rules! run {
                                ($w:expr, $panel_stride:expr, $prefetch:expr) => {
                                    Tile {
                                        rows: r.len(),
                                        panels: in_call,
                                        depth: depth_len,
                                        w: $w,
                                        panel_stride: $panel_stride,
                                        x: xt,
                                        ldx: k,
                                        dst,
                                        ldd: n,
                                        cols,
                                        accumulate,
                                        prefetch: $prefetch,
                                    }
                                    .run(isa)
                                };
                            }
                            if widen {
                                // The next block's half weights stream in through the widening.
                                let at = (panel - block_start) * depth_len * MR;
                                run!(wide.add(at).cast_const(), depth_len * MR, std::ptr::null());
                                continue;
                            }
                            let next = next_block_panel(
                                panel,
                                block_start..block_end,
                                &panels,
                                (depth, next_depth),
                                k,
                            );
                            let prefetch = match (prefetcher, next) {
                                (Some(share_idx), Some((panel, depth))) => {
                                    panel_ptr(panel, depth).wrapping_add(share_idx * share)
                                }
                                _ => std::ptr::null(),
                            };
                            run!(panel_ptr(panel, depth), k * MR, prefetch);
                        }
                    }
                    block_start = block_end;
                }
                depth = next_depth;
            }
        });
    }
}

/// Where the last row tiles of a block prefetch while they compute `panel` of `block` at depth
/// block `depths.0` (ending at `depths.1`, of `depth_end`): the same panel of the next block, or
/// of the first block at the next depth block; `None` after the last. Returns `(panel, depth)`.
fn next_block_panel(
    panel: usize,
    block: std::ops::Range<usize>,
    panels: &std::ops::Range<usize>,
    (depth, next_depth): (usize, usize),
    depth_end: usize,
) -> Option<(usize, usize)> {
    let next_panel = panel + block.len();
    if next_panel < panels.end {
        Some((next_panel, depth))
    } else if block.end == panels.end && next_depth < depth_end {
        Some((panels.start + (panel - block.start), next_depth))
    } else {
        None
    }
}

thread_local! {
    /// The AVX2 path's widened block of half-precision panels (see [`PackedWeight::compute`]):
    /// at most [`PANEL_BLOCK_BYTES`], or one panel of gemm's depth block, per thread, kept
    /// between products.
    static WIDENED: std::cell::RefCell<Vec<PanelStep>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Depth steps per software prefetch of one cache line (`MR` floats) of upcoming weights.
const PREFETCH_EVERY: usize = 4;

/// The micro-kernels a CPU can run, chosen once at run time ([`Isa::detect`]). Every f32 kernel
/// does the same arithmetic (one accumulator per output, products in increasing k, one FMA each,
/// the same depth blocks), so for f32 and f16 weights the choice changes speed, never bits; for
/// bf16 weights [`Isa::Avx512Bf16`] changes the arithmetic (see [`bf16_dot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// 256-bit AVX2 + FMA: tiles of up to [`NR`] rows by one panel (two 8-lane registers).
    Avx2,
    /// 512-bit AVX-512F: tiles of up to [`NR_512`] rows by two panels (two 16-lane registers);
    /// bf16 weights widened to f32 in the kernel.
    Avx512,
    /// [`Isa::Avx512`] for f32 and f16 weights; bf16 weights laid out in pairs at load and
    /// multiplied by AVX-512 BF16 dot products (`vdpbf16ps`, [`bf16_dot`]), `x` rounded to bf16.
    Avx512Bf16,
}

/// Rows of `x` per AVX-512 tile: 12 rows x 2 panels = 24 of the 32 vector registers hold
/// accumulators, 2 the weights and 1 the broadcast input.
pub(crate) const NR_512: usize = 12;

/// Environment variable that forces the micro-kernels (`avx2`, `avx512` or `avx512bf16`), for
/// measuring and testing one path on a CPU that has several: `avx512` multiplies bf16 weights
/// by widening them (candle's bits), `avx512bf16` by bf16 dot products. A path the CPU lacks, or
/// another value, is an error at the first product (at load for a bf16 weight).
pub const KERNEL_VAR: &str = "FASTDLLM_CPU_GEMM";

impl Isa {
    /// Every path, widest first.
    pub(crate) const ALL: [Isa; 3] = [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2];

    /// The name [`KERNEL_VAR`] takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512bf16",
        }
    }

    /// Whether this CPU runs the path.
    pub(crate) fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx2 => cpu_supported(),
                Isa::Avx512 => cpu_supported() && std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx512Bf16 => Isa::Avx512.available() && bf16_dot::cpu_has(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }

    /// The path every product takes: [`KERNEL_VAR`] when set, else the widest this CPU has
    /// (AVX2 when it has none: then nothing is packed). Read once per process.
    pub(crate) fn detect() -> std::result::Result<Isa, String> {
        static CHOICE: std::sync::OnceLock<std::result::Result<Isa, String>> =
            std::sync::OnceLock::new();
        CHOICE
            .get_or_init(|| match std::env::var(KERNEL_VAR) {
                Ok(value) if !value.is_empty() => {
                    let isa = Isa::ALL
                        .into_iter()
                        .find(|isa| isa.name() == value)
                        .ok_or_else(|| {
                            format!("{KERNEL_VAR}={value}: must be avx2, avx512 or avx512bf16")
                        })?;
                    if isa.available() {
                        Ok(isa)
                    } else {
                        Err(format!("{KERNEL_VAR}={value}: this CPU lacks {value}"))
                    }
                }
                _ => Ok(Isa::ALL
                    .into_iter()
                    .find(|isa| isa.available())
                    .unwrap_or(Isa::Avx2)),
            })
            .clone()
    }

    /// Most rows of one tile.
    fn tile_rows(self) -> usize {
        match self {
            Isa::Avx2 => NR,
            Isa::Avx512 | Isa::Avx512Bf16 => NR_512,
        }
    }

    /// Panels one tile covers.
    fn panels_per_call(self) -> usize {
        match self {
            Isa::Avx2 => 1,
            Isa::Avx512 | Isa::Avx512Bf16 => 2,
        }
    }
}

/// One micro-kernel call: `rows x (panels - 1) * MR + cols` outputs over `depth` steps, the
/// weights stored as `E`.
struct Tile<E> {
    /// 1 to [`Isa::tile_rows`].
    rows: usize,
    /// 1 to [`Isa::panels_per_call`]; the panels are `panel_stride` floats apart.
    panels: usize,
    depth: usize,
    /// The first panel at the block's depth (aligned to its step).
    w: *const E,
    panel_stride: usize,
    /// The tile's first row at the block's depth; rows `ldx` apart.
    x: *const f32,
    ldx: usize,
    /// The tile's first output; rows `ldd` apart.
    dst: *mut f32,
    ldd: usize,
    /// Features of the last panel (1 to [`MR`]); the others are whole.
    cols: usize,
    /// Add to `dst` (a later depth block) instead of storing.
    accumulate: bool,
    /// Weights to prefetch (one line every [`Element::PREFETCH_EVERY`] steps per panel), or null.
    prefetch: *const E,
}

impl<E: Element> Tile<E> {
    /// Runs the tile with `isa`'s kernel for its row and panel counts.
    ///
    /// # Safety
    /// The pointers as the fields say, the outputs writable and touched by no one else, and the
    /// CPU has `isa`'s features.
    unsafe fn run(&self, isa: Isa) {
        macro_rules! by_rows {
            ($module:ident::$kernel:ident, $($r:literal)+) => {
                match self.rows {
                    $($r => $module::$kernel::<E, $r>(self),)+
                    rows => unreachable!("{rows} rows in one tile"),
                }
            };
        }
        match (isa, self.panels) {
            (Isa::Avx2, _) => by_rows!(kernel::tile, 1 2 3 4 5 6),
            (Isa::Avx512 | Isa::Avx512Bf16, 1) => {
                by_rows!(kernel512::tile1, 1 2 3 4 5 6 7 8 9 10 11 12)
            }
            (Isa::Avx512 | Isa::Avx512Bf16, _) => {
                by_rows!(kernel512::tile2, 1 2 3 4 5 6 7 8 9 10 11 12)
            }
        }
    }
}

impl CustomOp1 for PackedWeight {
    fn name(&self) -> &'static str {
        "packed-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            candle_core::bail!("packed-linear: x must be f32");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("packed-linear: x must be contiguous");
        };
        let (rows, k) = layout.shape().dims2()?;
        if k != self.in_features || route(rows, self.out_features, k) == Route::Candle {
            candle_core::bail!("packed-linear: unsupported shape ({rows}, {k})");
        }
        let isa = Isa::detect().map_err(candle_core::Error::Msg)?;
        let tasks = if rows * self.out_features * k < PARALLEL_MIN_WORK {
            1
        } else {
            rayon::current_num_threads()
        };
        let y = self.product(&x[start..end], rows, tasks, isa);
        Ok((CpuStorage::F32(y), Shape::from((rows, self.out_features))))
    }
}

/// The panels' start, shared by tasks that read them.
#[derive(Clone, Copy)]
struct WeightPtr<E>(*const E);
// SAFETY: the panels are only read while the product runs.
unsafe impl<E> Send for WeightPtr<E> {}
// SAFETY: as above.
unsafe impl<E> Sync for WeightPtr<E> {}

/// Packs rows of `in_features` values into panels of [`MR`] features (`put` writes one value
/// into a step's lane), one panel per rayon task; lanes past the last row keep `zero`.
fn pack<T: Sync, S: Copy + Send>(
    data: &[T],
    in_features: usize,
    zero: S,
    put: impl Fn(&mut S, usize, &T) + Sync,
) -> Vec<S> {
    let n_panels = (data.len() / in_features.max(1)).div_ceil(MR);
    let mut steps = vec![zero; n_panels * in_features];
    if in_features > 0 {
        use rayon::prelude::*;
        steps
            .par_chunks_mut(in_features)
            .zip(data.par_chunks(MR * in_features))
            .for_each(|(steps, rows)| {
                for (lane, row) in rows.chunks_exact(in_features).enumerate() {
                    for (step, value) in steps.iter_mut().zip(row) {
                        put(step, lane, value);
                    }
                }
            });
    }
    steps
}

/// bf16 weight bits as a kernel element.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Bf16(#[allow(dead_code)] u16);

/// f16 weight bits as a kernel element.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct F16(#[allow(dead_code)] u16);

/// A stored weight value the micro-kernels widen to f32 lanes (exactly: bf16 and f16 are
/// subsets of f32).
pub(crate) trait Element: Copy + 'static {
    /// Depth steps per prefetched cache line of one panel (a line holds `64 / (MR * size)`
    /// steps), so that [`PREFETCH_EVERY`] prefetching tiles cover a whole panel.
    const PREFETCH_EVERY: usize;

    /// 8 consecutive values at `p` as f32 lanes.
    ///
    /// # Safety
    /// `p` points to 8 readable values; the CPU has AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;

    /// 16 consecutive values at `p` (aligned to its step) as f32 lanes.
    ///
    /// # Safety
    /// `p` points to 16 readable values, aligned to [`MR`] values; the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

#[cfg(target_arch = "x86_64")]
mod widen {
    use std::arch::x86_64::*;

    use super::{Bf16, Element, F16, PREFETCH_EVERY};

    impl Element for f32 {
        const PREFETCH_EVERY: usize = PREFETCH_EVERY;

        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }

        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            _mm512_load_ps(p)
        }
    }

    impl Element for Bf16 {
        const PREFETCH_EVERY: usize = 2 * PREFETCH_EVERY;

        /// bf16 is the top half of an f32: zero-extend to 32 bits, shift left 16.
        #[inline(always)]
        unsafe fn load8(p: *const Bf16) -> __m256 {
            let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
        }

        #[inline(always)]
        unsafe fn load16(p: *const Bf16) -> __m512 {
            let bits = _mm512_cvtepu16_epi32(_mm256_load_si256(p as *const __m256i));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
        }
    }

    impl Element for F16 {
        const PREFETCH_EVERY: usize = 2 * PREFETCH_EVERY;

        #[inline(always)]
        unsafe fn load8(p: *const F16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }

        #[inline(always)]
        unsafe fn load16(p: *const F16) -> __m512 {
            _mm512_cvtph_ps(_mm256_load_si256(p as *const __m256i))
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Element for f32 {
    const PREFETCH_EVERY: usize = PREFETCH_EVERY;
}
#[cfg(not(target_arch = "x86_64"))]
impl Element for Bf16 {
    const PREFETCH_EVERY: usize = 2 * PREFETCH_EVERY;
}
#[cfg(not(target_arch = "x86_64"))]
impl Element for F16 {
    const PREFETCH_EVERY: usize = 2 * PREFETCH_EVERY;
}

/// The depth loop of every micro-kernel: `step(d)` for `d` in `0..depth`, in order. When
/// `prefetch` is not null, every `every` steps it first prefetches one line (`line_elems` values)
/// of each of `panels` panels, `panel_stride` values apart: line `d / every` from `prefetch`.
/// Inlined into each kernel, so `step` keeps the kernel's target features.
///
/// # Safety
/// None beyond `step`'s own: prefetching any address is harmless (`wrapping_add`; the last
/// shares may point past the weights).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetched_steps<T>(
    depth: usize,
    every: usize,
    line_elems: usize,
    prefetch: *const T,
    panels: usize,
    panel_stride: usize,
    mut step: impl FnMut(usize),
) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let mut d = 0;
    if !prefetch.is_null() {
        while d + every <= depth {
            let line = prefetch.wrapping_add(d / every * line_elems);
            for p in 0..panels {
                _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(p * panel_stride) as *const i8);
            }
            for i in 0..every {
                step(d + i);
            }
            d += every;
        }
    }
    while d < depth {
        step(d);
        d += 1;
    }
}

/// The output pointer, shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes only its own columns (see `PackedWeight::product`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use std::arch::x86_64::*;

    use super::{Element, Tile, MR};

    /// One `R x cols` tile (`R <= NR`, `cols <= MR`, one panel) of the output over `depth` steps:
    /// `acc[r][c] = fma(w[d][c], x[r][d], acc[r][c])` for `d` in order, from zero; then
    /// `dst[r][c] = acc` (first depth block) or `dst[r][c] + acc` (`accumulate`). When
    /// `prefetch` is not null, one line from it is prefetched every [`Element::PREFETCH_EVERY`]
    /// steps. The weights are widened from `E` as they are loaded.
    ///
    /// # Safety
    /// `t.w` points to `depth * MR` values; `t.x` to `R` rows of `depth`
    /// values, `ldx` apart; `t.dst` to a tile with row stride `ldd` whose `R x cols` corner is
    /// writable; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile<E: Element, const R: usize>(t: &Tile<E>) {
        let Tile {
            depth,
            w,
            x,
            ldx,
            dst,
            ldd,
            cols,
            accumulate,
            prefetch,
            ..
        } = *t;
        let x_rows: [*const f32; R] = std::array::from_fn(|r| x.add(r * ldx));
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let step = |acc: &mut [[__m256; 2]; R], d: usize| {
            let w0 = E::load8(w.add(d * MR));
            let w1 = E::load8(w.add(d * MR + 8));
            for (acc, x_row) in acc.iter_mut().zip(x_rows) {
                let b = _mm256_broadcast_ss(&*x_row.add(d));
                acc[0] = _mm256_fmadd_ps(w0, b, acc[0]);
                acc[1] = _mm256_fmadd_ps(w1, b, acc[1]);
            }
        };
        let line_values = 64 / std::mem::size_of::<E>();
        super::prefetched_steps(depth, E::PREFETCH_EVERY, line_values, prefetch, 1, 0, |d| {
            step(&mut acc, d)
        });
        if cols == MR {
            for (r, acc) in acc.iter().enumerate() {
                let d = dst.add(r * ldd);
                if accumulate {
                    _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), acc[0]));
                    _mm256_storeu_ps(d.add(8), _mm256_add_ps(_mm256_loadu_ps(d.add(8)), acc[1]));
                } else {
                    _mm256_storeu_ps(d, acc[0]);
                    _mm256_storeu_ps(d.add(8), acc[1]);
                }
            }
            return;
        }
        for (r, acc) in acc.iter().enumerate() {
            let mut spill = [0.0f32; MR];
            _mm256_storeu_ps(spill.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(spill.as_mut_ptr().add(8), acc[1]);
            let d = dst.add(r * ldd);
            for (c, &value) in spill.iter().enumerate().take(cols) {
                let d = d.add(c);
                *d = if accumulate { *d + value } else { value };
            }
        }
    }

    /// `dst[i] = f32(src[i])` for `values` values (a multiple of 8), exactly.
    ///
    /// # Safety
    /// `src` points to `values` readable values, `dst` to `values` writable f32; the CPU has
    /// AVX2 and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn widen<E: Element>(src: *const E, dst: *mut f32, values: usize) {
        for i in (0..values).step_by(8) {
            _mm256_storeu_ps(dst.add(i), E::load8(src.add(i)));
        }
    }

    /// Lanes of gemm's AVX2 f32 vectors, and its `gemv` accumulators per row.
    const LANES: usize = 8;
    const GEMV_ACCUMULATORS: usize = 8;
    const GEMV_CHUNK: usize = LANES * GEMV_ACCUMULATORS;

    /// `y[c] = W[c, :] . x` for the `cols` features of one panel, in the order of gemm's
    /// `gemv::mixed_gemv_rowmajor` (candle's `x W^T` for one row of `x`), vectorized across the
    /// panel's features instead of along k: per feature, eight 8-lane accumulators take
    /// `k / 64 * 64` steps (step `d` goes to accumulator `d % 64 / 8`, lane `d % 8`), are summed
    /// as `((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))`, take the steps up to `k / 8 * 8`
    /// in lane `d % 8`, are reduced lane by lane from lane 0, and take the last `k % 8` steps;
    /// every step is one fused multiply-add.
    ///
    /// # Safety
    /// `w` points to `depth * MR` values, 32-byte aligned; `x` to `depth` values; `dst` to
    /// `cols` writable values; the CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn gemv_panel<E: Element>(
        depth: usize,
        w: *const E,
        x: *const f32,
        dst: *mut f32,
        cols: usize,
    ) {
        let fma_step = |acc: &mut [__m256; 2], d: usize| {
            let b = _mm256_broadcast_ss(&*x.add(d));
            acc[0] = _mm256_fmadd_ps(E::load8(w.add(d * MR)), b, acc[0]);
            acc[1] = _mm256_fmadd_ps(E::load8(w.add(d * MR + 8)), b, acc[1]);
        };
        let add =
            |a: [__m256; 2], b: [__m256; 2]| [_mm256_add_ps(a[0], b[0]), _mm256_add_ps(a[1], b[1])];
        let chunked = depth / GEMV_CHUNK * GEMV_CHUNK;
        let laned = depth / LANES * LANES;
        // partial[j * LANES + l]: accumulator j, lane l, for the panel's 16 features.
        let mut partial = [[_mm256_setzero_ps(); 2]; GEMV_CHUNK];
        let mut d = 0;
        while d < chunked {
            for (i, acc) in partial.iter_mut().enumerate() {
                fma_step(acc, d + i);
            }
            d += GEMV_CHUNK;
        }
        let mut lanes: [[__m256; 2]; LANES] = std::array::from_fn(|l| {
            let a = |j: usize| partial[j * LANES + l];
            add(
                add(add(a(0), a(1)), add(a(2), a(3))),
                add(add(a(4), a(5)), add(a(6), a(7))),
            )
        });
        while d < laned {
            for (i, acc) in lanes.iter_mut().enumerate() {
                fma_step(acc, d + i);
            }
            d += LANES;
        }
        let mut sum = lanes[0];
        for lane in &lanes[1..] {
            sum = add(sum, *lane);
        }
        while d < depth {
            fma_step(&mut sum, d);
            d += 1;
        }
        let mut out = [0.0f32; MR];
        _mm256_storeu_ps(out.as_mut_ptr(), sum[0]);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), sum[1]);
        std::ptr::copy_nonoverlapping(out.as_ptr(), dst, cols);
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    /// Never called: [`super::PackedWeight::new`] packs only on x86-64.
    pub(super) unsafe fn tile<E, const R: usize>(_t: &super::Tile<E>) {
        unreachable!("packed weights exist only on x86-64")
    }

    /// Never called: [`super::PackedWeight::new`] packs only on x86-64.
    pub(super) unsafe fn widen<E>(_src: *const E, _dst: *mut f32, _values: usize) {
        unreachable!("packed weights exist only on x86-64")
    }

    /// Never called: [`super::PackedWeight::new`] packs only on x86-64.
    pub(super) unsafe fn gemv_panel<E>(
        _depth: usize,
        _w: *const E,
        _x: *const f32,
        _dst: *mut f32,
        _cols: usize,
    ) {
        unreachable!("packed weights exist only on x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
mod kernel512 {
    use std::arch::x86_64::*;

    use super::{Element, Tile, MR};

    /// [`tile`] over one panel.
    ///
    /// # Safety
    /// As [`tile`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile1<E: Element, const R: usize>(t: &Tile<E>) {
        tile::<E, R, 1>(t)
    }

    /// [`tile`] over two panels.
    ///
    /// # Safety
    /// As [`tile`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile2<E: Element, const R: usize>(t: &Tile<E>) {
        tile::<E, R, 2>(t)
    }

    /// One `R x ((P - 1) * MR + cols)` tile (`R <= NR_512`, `P` panels of [`MR`] features, one
    /// 16-lane register each) over `depth` steps, with exactly the arithmetic of the AVX2
    /// [`super::kernel::tile`]: `acc[r][c] = fma(w[d][c], x[r][d], acc[r][c])` for `d` in
    /// order, from zero; then `dst = acc` or `dst + acc` (`accumulate`), the last panel's
    /// stores masked to `cols` lanes. When `prefetch` is not null, one line of each panel from
    /// it is prefetched every [`Element::PREFETCH_EVERY`] steps. The weights are widened from
    /// `E` as they are loaded.
    ///
    /// # Safety
    /// `t.w` points to `P` panels of `depth * MR` values, aligned to a step, `panel_stride` apart;
    /// `t.x` to `R` rows of `depth` values, `ldx` apart; `t.dst` to a tile with row stride `ldd`
    /// whose `R x ((P - 1) * MR + cols)` corner is writable; the CPU has AVX-512F.
    // The feature on this function (not only on its callers) reaches the `step` closure: a
    // closure outside an `avx512f` function would call each intrinsic instead of inlining it.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<E: Element, const R: usize, const P: usize>(t: &Tile<E>) {
        let Tile {
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
            ..
        } = *t;
        let x_rows: [*const f32; R] = std::array::from_fn(|r| x.add(r * ldx));
        let w_panels: [*const E; P] = std::array::from_fn(|p| w.add(p * panel_stride));
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let step = |acc: &mut [[__m512; P]; R], d: usize| {
            let wv: [__m512; P] = std::array::from_fn(|p| E::load16(w_panels[p].add(d * MR)));
            for (acc, x_row) in acc.iter_mut().zip(x_rows) {
                let b = _mm512_set1_ps(*x_row.add(d));
                for (acc, wv) in acc.iter_mut().zip(wv) {
                    *acc = _mm512_fmadd_ps(wv, b, *acc);
                }
            }
        };
        let line_values = 64 / std::mem::size_of::<E>();
        let (every, panels) = (E::PREFETCH_EVERY, P);
        super::prefetched_steps(
            depth,
            every,
            line_values,
            prefetch,
            panels,
            panel_stride,
            |d| step(&mut acc, d),
        );
        store(&acc, dst, ldd, cols, accumulate);
    }

    /// Writes a tile's accumulators `acc[r][p]` (16 lanes each) to `dst + r * ldd + p * MR`:
    /// `dst = acc`, or `dst + acc` when `accumulate`, the last panel masked to `cols` lanes.
    ///
    /// # Safety
    /// The `R x ((P - 1) * MR + cols)` corner of `dst` (row stride `ldd`) is writable; the caller
    /// has AVX-512F enabled (this function is inlined into it).
    #[inline(always)]
    pub(super) unsafe fn store<const R: usize, const P: usize>(
        acc: &[[__m512; P]; R],
        dst: *mut f32,
        ldd: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let last: __mmask16 = if cols >= MR { !0 } else { (1 << cols) - 1 };
        for (r, acc) in acc.iter().enumerate() {
            for (p, acc) in acc.iter().enumerate() {
                let mask = if p + 1 == P { last } else { !0 };
                let d = dst.add(r * ldd + p * MR);
                let value = if accumulate {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, d), *acc)
                } else {
                    *acc
                };
                _mm512_mask_storeu_ps(d, mask, value);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel512 {
    /// Never called: [`super::PackedWeight::new`] packs only on x86-64.
    pub(super) unsafe fn tile1<E, const R: usize>(_t: &super::Tile<E>) {
        unreachable!("packed weights exist only on x86-64")
    }

    /// Never called: [`super::PackedWeight::new`] packs only on x86-64.
    pub(super) unsafe fn tile2<E, const R: usize>(_t: &super::Tile<E>) {
        unreachable!("packed weights exist only on x86-64")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layers::linear::Linear;

    /// Deterministic values in about [-2, 2), with some exact zeros of both signs, so that
    /// failures reproduce and signed-zero handling is exercised.
    pub(crate) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                match state % 61 {
                    0 => 0.0,
                    1 => -0.0,
                    _ => ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0,
                }
            })
            .collect()
    }

    fn matrix(rows: usize, cols: usize, seed: u64) -> Tensor {
        Tensor::from_vec(values(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    }

    #[track_caller]
    fn assert_bitwise(got: &Tensor, want: &Tensor, what: &str) {
        assert_eq!(got.dims(), want.dims(), "{what}: shape");
        let (got, want) = (bits(got), bits(want));
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        if let Some(first) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{what}: {differ}/{} values differ; first at flat index {first}: {} vs {}",
                got.len(),
                f32::from_bits(got[first]),
                f32::from_bits(want[first])
            );
        }
    }

    /// Checks the packed product against candle for one shape, with the default task split
    /// and, when `splits` is set, with 1, 2, 3 and 5 tasks.
    fn check(rows: usize, k: usize, n: usize, splits: bool) {
        let seed = (rows * 1_000_003 + k * 1_009 + n) as u64;
        let w = matrix(n, k, seed);
        let x = matrix(rows, k, seed + 1);
        let want = x.matmul(&w.t().unwrap()).unwrap();
        let packed = PackedWeight::new(&w).unwrap().expect("AVX2+FMA CPU");
        let what = format!("rows {rows}, k {k}, n {n}");
        assert_bitwise(&packed.matmul_t(&x).unwrap(), &want, &what);
        if route(rows, n, k) == Route::Candle {
            return;
        }
        let data = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let splits: &[usize] = if splits { &[1, 2, 3, 5] } else { &[2] };
        for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
            for &tasks in splits {
                let y = packed.product(&data, rows, tasks, isa);
                let y = Tensor::from_vec(y, (rows, n), &Device::Cpu).unwrap();
                assert_bitwise(&y, &want, &format!("{what}, {isa:?}, {tasks} tasks"));
            }
        }
    }

    const ROWS: [usize; 13] = [1, 2, 5, 6, 7, 16, 31, 32, 33, 64, 100, 320, 512];
    const DEPTHS: [usize; 11] = [3, 8, 24, 37, 64, 96, 512, 600, 1000, 1536, 2048];
    const FEATURES: [usize; 8] = [2, 8, 24, 40, 96, 512, 1536, 3072];

    #[test]
    fn packed_product_is_bitwise_candle_matmul() {
        if !cpu_supported() {
            return;
        }
        for rows in ROWS {
            for k in DEPTHS {
                for n in FEATURES {
                    // Keep the cross product affordable; the largest shapes run below.
                    if rows * k * n <= 1 << 27 {
                        check(rows, k, n, rows * k * n <= 1 << 22);
                    }
                }
            }
        }
    }

    #[test]
    fn packed_product_is_bitwise_candle_matmul_large() {
        if !cpu_supported() {
            return;
        }
        for (rows, k, n) in [
            (512, 512, 1536),
            (512, 512, 3072),
            (512, 1536, 512),
            (320, 2048, 3072),
            (512, 2048, 1536),
            (33, 1536, 3072),
        ] {
            check(rows, k, n, true);
        }
    }

    /// Every kernel path this CPU has, on the odd shapes of the issue: rows 1, 7, 32 and 513
    /// (partial row tiles of every size), depths that are not a multiple of any tile or
    /// prefetch step nor of gemm's depth block, and feature counts with an odd number of panels
    /// and a partial last panel (the AVX-512 kernel's one-panel and masked tails).
    #[test]
    fn every_kernel_path_is_bitwise_candle_matmul_on_odd_shapes() {
        if !cpu_supported() {
            return;
        }
        let paths: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.available()).collect();
        eprintln!("kernel paths on this CPU: {paths:?}");
        for rows in [1, 7, 32, 513] {
            for k in [37, 601, 1031] {
                for n in [40, 328, 1544] {
                    check(rows, k, n, rows <= 32);
                }
            }
        }
    }

    /// The selector's names round-trip, and the default is the widest path the CPU has.
    #[test]
    fn kernel_selector_names_and_default() {
        for isa in Isa::ALL {
            assert_eq!(
                Isa::ALL.into_iter().find(|i| i.name() == isa.name()),
                Some(isa)
            );
        }
        if std::env::var(KERNEL_VAR).is_err() && cpu_supported() {
            let widest = Isa::ALL.into_iter().find(|i| i.available());
            assert_eq!(Isa::detect().ok(), widest);
        }
    }

    #[test]
    fn packed_lm_head_is_bitwise_candle_matmul() {
        if !cpu_supported() {
            return;
        }
        for rows in [1, 2, 7, 32, 100, 512] {
            check(rows, 512, 32000, rows <= 32);
        }
        check(32, 64, 32000, true);
    }

    /// A 3-D (batched) input, contiguous or not, with and without bias, through `Linear`: the
    /// same bits as the dense layer's `matmul` + `broadcast_add`.
    #[test]
    fn linear_batched_input_is_bitwise_dense() {
        if !cpu_supported() {
            return;
        }
        for (batch, len, k, n) in [(3, 11, 64, 96), (2, 32, 512, 1536), (3, 1, 40, 24)] {
            let w = matrix(n, k, 7);
            let bias = Tensor::from_vec(values(n, 8), n, &Device::Cpu).unwrap();
            let x = Tensor::from_vec(values(batch * len * k, 9), (batch, len, k), &Device::Cpu)
                .unwrap();
            let x_t = x
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
                .transpose(0, 1)
                .unwrap();
            assert!(len == 1 || !x_t.is_contiguous());
            for bias in [None, Some(bias)] {
                let linear = Linear::new(w.clone(), bias.clone()).unwrap();
                assert!(linear.is_packed());
                for x in [&x, &x_t] {
                    let flat = x.reshape((batch * len, k)).unwrap();
                    let mut want = flat.matmul(&w.t().unwrap()).unwrap();
                    if let Some(bias) = &bias {
                        want = want.broadcast_add(bias).unwrap();
                    }
                    let want = want.reshape((batch, len, n)).unwrap();
                    let got = linear.forward(x).unwrap();
                    assert_bitwise(&got, &want, &format!("({batch}, {len}, {k}) x {n}"));
                }
            }
        }
    }

    /// bf16 / f16 weights stay packed in half precision, and every widening kernel path gives,
    /// bit for bit, the f32 product of the widened weight (which is candle's f32 matmul, tested
    /// above), on the odd shapes: rows 1, 7, 32, 513; depths off every tile; partial last panels.
    /// bf16 weights are packed for the widening kernels here whatever the default; the
    /// dot-product path has its own tests (`bf16_dot`).
    #[test]
    fn half_precision_weights_are_bitwise_the_widened_f32_product() {
        if !cpu_supported() {
            return;
        }
        for dtype in [DType::BF16, DType::F16] {
            for (rows, k, n) in [
                (1, 601, 328),
                (7, 37, 40),
                (32, 601, 1544),
                (513, 1031, 328),
                (2, 64, 24),
            ] {
                let w = matrix(n, k, 21).to_dtype(dtype).unwrap();
                let x = matrix(rows, k, 22);
                let wide = w.to_dtype(DType::F32).unwrap();
                let want = x.matmul(&wide.t().unwrap()).unwrap();
                let packed = PackedWeight::with_layout(&w, false)
                    .unwrap()
                    .expect("AVX2+FMA+F16C CPU");
                assert!(!matches!(packed.panels, Panels::Bf16Pairs(_)));
                assert_eq!(packed.dtype(), dtype);
                assert_eq!(packed.weight_bytes(), (n * k * 2) as u64);
                assert_bitwise(
                    &packed.unpack().unwrap().to_dtype(DType::F32).unwrap(),
                    &wide,
                    "unpack",
                );
                let what = format!("{dtype:?} rows {rows}, k {k}, n {n}");
                assert_bitwise(&packed.matmul_t(&x).unwrap(), &want, &what);
                if route(rows, n, k) == Route::Candle {
                    continue;
                }
                let data = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
                    for tasks in [1, 3] {
                        let y = packed.product(&data, rows, tasks, isa);
                        let y = Tensor::from_vec(y, (rows, n), &Device::Cpu).unwrap();
                        assert_bitwise(&y, &want, &format!("{what}, {isa:?}, {tasks} tasks"));
                    }
                }
            }
        }
    }

    /// A half-precision layer in a half-precision model: the f32 product of the widened operands
    /// (for bf16 weights on the default [`Isa::Avx512Bf16`] path: the dot products of
    /// `bf16_dot`'s reference), rounded once to the activation dtype.
    #[test]
    fn half_precision_linear_rounds_the_f32_product_once() {
        if !cpu_supported() {
            return;
        }
        let w = matrix(96, 64, 3);
        let x = matrix(40, 64, 4);
        for dtype in [DType::BF16, DType::F16] {
            let (w, x) = (w.to_dtype(dtype).unwrap(), x.to_dtype(dtype).unwrap());
            let linear = Linear::new(w.clone(), None).unwrap();
            assert!(linear.is_packed());
            let x32 = x.to_dtype(DType::F32).unwrap();
            let pairs = matches!(
                PackedWeight::new(&w).unwrap().unwrap().panels,
                Panels::Bf16Pairs(_)
            );
            assert_eq!(
                pairs,
                dtype == DType::BF16 && Isa::detect() == Ok(Isa::Avx512Bf16)
            );
            let want = if pairs {
                let y = bf16_dot::tests::reference(
                    &w.flatten_all().unwrap().to_vec1().unwrap(),
                    &x32.flatten_all().unwrap().to_vec1().unwrap(),
                    40,
                    96,
                    64,
                );
                Tensor::from_vec(y, (40, 96), &Device::Cpu).unwrap()
            } else {
                x32.matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap())
                    .unwrap()
            };
            let want = want.to_dtype(dtype).unwrap();
            let got = linear.forward(&x).unwrap();
            assert_eq!(got.dtype(), dtype);
            assert_bitwise(
                &got.to_dtype(DType::F32).unwrap(),
                &want.to_dtype(DType::F32).unwrap(),
                &format!("{dtype:?}"),
            );
        }
    }

    #[test]
    fn routes_follow_gemm() {
        assert_eq!(route(1, 256, 64), Route::Candle, "horizontal kernel");
        assert_eq!(route(16, 16, 64), Route::Candle, "horizontal kernel");
        assert_eq!(route(1, 257, 64), Route::Gemv);
        assert_eq!(route(1, 257, 2), Route::Candle, "gevv");
        assert_eq!(route(300, 1, 64), Route::Candle, "not transposed");
        assert_eq!(route(2, 129, 3), Route::Tiles);
        assert_eq!(route(32, 32000, 512), Route::Tiles);
    }

    /// Prints one line of a timing table: the shape and each side's median rate (GFLOP/s).
    pub(crate) fn print_median_rates(rows: usize, k: usize, n: usize, rates: &mut [Vec<f64>]) {
        let medians: Vec<String> = rates
            .iter_mut()
            .map(|v| {
                v.sort_by(|a, b| a.total_cmp(b));
                format!("{:6.1}", v[v.len() / 2])
            })
            .collect();
        println!("{rows:4} {k:6} {n:6}   {}", medians.join(" "));
    }

    #[test]
    fn unpack_restores_the_weight() {
        if !cpu_supported() {
            return;
        }
        let w = matrix(37, 29, 5);
        let packed = PackedWeight::new(&w).unwrap().expect("AVX2+FMA CPU");
        assert_bitwise(&packed.unpack().unwrap(), &w, "unpack");
    }
    /// Old (candle) vs packed GFLOP/s on the decoder's shapes. Run with
    /// `cargo test --release -p fastdllm-models gemm_speed -- --ignored --nocapture`
    /// (threads follow `RAYON_NUM_THREADS`; with one thread the rate is per CPU-second of the
    /// calling thread, which a busy machine disturbs less). `GEMM_SPEED_COLD=1` cycles through
    /// enough copies of each weight (about 96 MB) that it comes from DRAM, as in a forward.
    #[test]
    #[ignore = "timing, not a check"]
    fn gemm_speed() {
        if !cpu_supported() {
            return;
        }
        // As the `fastdllm` binary does (fastdllm-cli malloc.rs): reuse freed heap blocks instead of
        // mapping fresh pages for every output.
        // SAFETY: only changes allocator parameters, to values in glibc's documented ranges.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
        let one_thread = rayon::current_num_threads() == 1;
        let clock = || -> f64 {
            let id = if one_thread {
                libc::CLOCK_THREAD_CPUTIME_ID
            } else {
                libc::CLOCK_MONOTONIC
            };
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid timespec to write to.
            unsafe { libc::clock_gettime(id, &mut ts) };
            ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
        };
        let env = |name: &str, default: usize| -> usize {
            std::env::var(name)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default)
        };
        let reps = env("GEMM_SPEED_REPS", 20);
        let cold = env("GEMM_SPEED_COLD", 0) == 1;
        let variants = ["candle", "packed"];
        println!("rows      k      n   median GFLOP/s: {variants:?}");
        for rows in [32, 512] {
            for (k, n) in [(512, 1536), (512, 3072), (1536, 512), (512, 32000)] {
                let copies = if cold {
                    (96 << 20) / (4 * k * n) + 1
                } else {
                    1
                };
                let ws: Vec<Tensor> = (0..copies).map(|i| matrix(n, k, 11 + i as u64)).collect();
                let wts: Vec<Tensor> = ws.iter().map(|w| w.t().unwrap()).collect();
                let packed: Vec<PackedWeight> = ws
                    .iter()
                    .map(|w| PackedWeight::new(w).unwrap().expect("AVX2+FMA CPU"))
                    .collect();
                drop(ws);
                let x = matrix(rows, k, 12);
                let flops = 2.0 * (rows * k * n) as f64;
                let mut rates = vec![Vec::new(); variants.len()];
                for rep in 0..reps + 2 {
                    let c = rep % copies;
                    for (v, rate) in rates.iter_mut().enumerate() {
                        let start = clock();
                        let y = if v == 0 {
                            x.matmul(&wts[c]).unwrap()
                        } else {
                            packed[c].matmul_t(&x).unwrap()
                        };
                        let t = clock() - start;
                        drop(y);
                        if rep >= 2 {
                            rate.push(flops / t / 1e9);
                        }
                    }
                }
                print_median_rates(rows, k, n, &mut rates);
            }
        }
    }
}

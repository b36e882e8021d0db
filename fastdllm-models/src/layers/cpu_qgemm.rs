//! Our int8 CPU kernels for GGUF block-quantized weights: `y = x W^T` with `W` in GGML's Q8_0,
//! Q4_0, Q4_K, Q5_K or Q6_K blocks (Q8_0 and Q4_0 files, and the types of llama.cpp's Q4_K_M and
//! Q5_K_M), the arithmetic of llama.cpp's `ggml_vec_dot_q8_0_q8_0`, `ggml_vec_dot_q4_0_q8_0`,
//! `ggml_vec_dot_q4_K_q8_K`, `ggml_vec_dot_q5_K_q8_K` and `ggml_vec_dot_q6_K_q8_K` (ggml-cpu
//! `quants.c`), many weight rows and several input rows per pass.
//!
//! Why our own: candle's quantized CPU kernels keep a repacked copy of every weight beside the
//! original blocks (twice the memory), unpack the sub-block scales to f32, and on a CPU without
//! AVX-512 VNNI / AVX-VNNI run Q8_0 through a slow generic dot product. [`QPackedWeight`] repacks
//! each weight once, at load, and the original blocks are dropped; [`super::linear::Linear`] takes
//! it for every CPU weight whose format this module has, candle's `QMatMul` for everything else.
//!
//! Layout ([`QPackedWeight`]): the output rows are cut into tiles of [`TILE`] (16) rows (the last
//! tile padded with zero rows); within a tile, one *group* per block of the depth axis holds the 16
//! rows' block scales side by side (f16, as in the file; Q4_K's six-bit sub-block scales and mins
//! unpacked to one `u8` each, never to f32) and then the quants interleaved four bytes per row:
//! bytes `4c..4c+4` of the 16 rows are one 64-byte vector, so one load feeds 16 outputs and a
//! dot product of four byte pairs per 32-bit lane (`vpdpbusd`, or `pmaddubsw` + `pmaddwd`) gives
//! each row's partial sum in its own lane, with no horizontal reduction.
//! - Q8_0 (34 file bytes per 32 values): 16 f16 `d`, then 8 vectors of `w + 128` (unsigned, for
//!   `vpdpbusd`; the AVX2 path flips the top bit back and uses llama.cpp's sign trick). 544 bytes
//!   per group = exactly the file's 16 x 34.
//! - Q4_0 (18 file bytes per 32 values): 16 f16 `d`, then 4 vectors of the file's nibble bytes (low
//!   nibbles values `4c..+4`, high nibbles `16 + 4c..+4`; `q - 8` through `8 * sum(x)` subtracted).
//!   288 bytes per group = exactly the file's 16 x 18.
//! - Q4_K (144 file bytes per 256 values): 16 f16 `d`, 16 f16 `dmin`, 8 x 16 `u8` scales, 8 x 16
//!   `u8` mins (in pairs of sub-blocks `2q, 2q + 1` per row, `pmaddwd`'s operand), then 32 vectors
//!   of nibbles (vector `8t + c`: low nibbles are values `64t + 4c..+4`, high nibbles values
//!   `64t + 32 + 4c..+4` of each row: GGML's own byte order, copied as is).
//!   2368 bytes per group = 1.03x the file's 16 x 144.
//! - Q5_K (176 file bytes per 256 values): the Q4_K group of the low four bits, then 8 vectors of
//!   the file's fifth-bit bytes `qh` (vector `c`: bytes `4c..+4` of each row; bit `2t` / `2t + 1`
//!   of byte `l` is the fifth bit of value `64t + l` / `64t + 32 + l`). 2880 bytes per group =
//!   1.02x the file's 16 x 176.
//! - Q6_K (210 file bytes per 256 values): 16 f16 `d`, 16 x 16 `i8` scales, 32 vectors of the low
//!   nibbles and 16 of the high bit pairs, both in GGML's byte order (see `pack_q6k`). 3360 bytes
//!   per group = exactly the file's 16 x 210.
//!
//! Inputs ([`QInput`]) are quantized once per layer call, before the output tiles are split over
//! rayon tasks, the way llama.cpp's `vec_dot` wants them: Q8_0 weights take Q8_0 inputs (32-value
//! blocks), K-quants take Q8_K inputs (256-value blocks); both with `d = amax / 127`, values
//! rounded to nearest (ties to even) and the sums of every 16 quantized values kept (llama.cpp's
//! `bsums`). Per block the products are summed as integers, the sub-block scales multiplied in
//! as integers, and one f32 FMA per block adds `d_w * d_x * sum` to the output.
//!
//! Paths ([`QPath`], chosen once at run time; `FASTDLLM_CPU_QGEMM` forces one): AVX-512 VNNI,
//! AVX2, and a scalar reference of the same arithmetic. All three give the same bits: the integer
//! sums are exact and the float steps are the same FMAs in the same order (tested).

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

/// Output rows per tile: 16 lanes of one 512-bit vector, two 256-bit halves for AVX2.
pub(crate) const TILE: usize = 16;
/// Values per Q8_0 block.
const QK8_0: usize = 32;
/// Values per K-quant superblock (and per Q8_K input block).
const QK_K: usize = 256;
/// Input rows per pass over a weight tile: each loaded weight vector is used this many times.
const ROWS_PER_PASS: usize = 4;

/// Environment variable that forces the quantized kernels: `avx512` (AVX-512 F/BW/VNNI), `avx2`,
/// `scalar` (the reference, slow) or `candle` (candle's `QMatMul` for every quantized weight, as
/// before this module). A path the CPU lacks, or another value, is an error when the first
/// quantized weight loads.
pub const QKERNEL_VAR: &str = "FASTDLLM_CPU_QGEMM";

/// The GGML block formats this module multiplies (Q5_0, Q2_K, Q3_K and the rest are left to candle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QFormat {
    Q8_0,
    Q4_0,
    Q4K,
    Q5K,
    Q6K,
}

/// What the input is quantized to for a [`QFormat`] (llama.cpp's `vec_dot_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QInputKind {
    /// 32-value blocks (`block_q8_0`).
    Q8_0,
    /// 256-value blocks (`block_q8_K`).
    Q8K,
}

impl QInputKind {
    /// Values per block.
    fn block(self) -> usize {
        match self {
            QInputKind::Q8_0 => QK8_0,
            QInputKind::Q8K => QK_K,
        }
    }
}

impl QFormat {
    /// The format of a GGML block type, if this module has it.
    pub(crate) fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q8_0 => Some(QFormat::Q8_0),
            GgmlDType::Q4_0 => Some(QFormat::Q4_0),
            GgmlDType::Q4K => Some(QFormat::Q4K),
            GgmlDType::Q5K => Some(QFormat::Q5K),
            GgmlDType::Q6K => Some(QFormat::Q6K),
            _ => None,
        }
    }

    /// The input quantization its dot products take.
    pub(crate) fn input_kind(self) -> QInputKind {
        match self {
            QFormat::Q8_0 | QFormat::Q4_0 => QInputKind::Q8_0,
            QFormat::Q4K | QFormat::Q5K | QFormat::Q6K => QInputKind::Q8K,
        }
    }

    /// Values per block.
    fn block(self) -> usize {
        self.input_kind().block()
    }

    /// Bytes of one block in the file (GGML's `type_size`).
    fn file_block_bytes(self) -> usize {
        match self {
            QFormat::Q8_0 => 34,
            QFormat::Q4_0 => 18,
            QFormat::Q4K => 144,
            QFormat::Q5K => 176,
            QFormat::Q6K => 210,
        }
    }

    /// Packed bytes of one group: one block of [`TILE`] rows.
    fn group_bytes(self) -> usize {
        match self {
            QFormat::Q8_0 => Q8_0_QS + 8 * 64,
            QFormat::Q4_0 => Q8_0_QS + 4 * 64,
            QFormat::Q4K => Q4K_QS + 32 * 64,
            QFormat::Q5K => Q5K_QH + 8 * 64,
            QFormat::Q6K => Q6K_QH + 16 * 64,
        }
    }
}

/// Offsets inside a Q8_0 group: 16 f16 `d`, then the quants.
const Q8_0_QS: usize = 2 * TILE;
/// Offsets inside a Q4_K group: `d`, `dmin`, scales, mins, quants.
const Q4K_DMIN: usize = 2 * TILE;
const Q4K_SC: usize = 4 * TILE;
const Q4K_M: usize = Q4K_SC + 8 * TILE;
const Q4K_QS: usize = Q4K_M + 8 * TILE;
/// A Q5_K group is a Q4_K group (the low four bits) and then the fifth bits.
const Q5K_QH: usize = Q4K_QS + 32 * 64;
/// Offsets inside a Q6_K group: `d`, the 16 signed scales, the low nibbles, the high bit pairs.
const Q6K_SC: usize = 2 * TILE;
const Q6K_QL: usize = Q6K_SC + 16 * TILE;
const Q6K_QH: usize = Q6K_QL + 32 * 64;

/// The quantized kernels a CPU can run, chosen once per process ([`QPath::detect`]). Every path
/// gives the same bits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QPath {
    /// The reference: plain Rust, the same integer sums and FMAs.
    Scalar,
    /// AVX2 (+ FMA, F16C): two 8-row halves per tile, `pmaddubsw` + `pmaddwd`.
    Avx2,
    /// AVX-512 F/BW + VNNI: 16-row tiles, `vpdpbusd`.
    Avx512,
}

impl QPath {
    /// Every path, widest first.
    pub(crate) const ALL: [QPath; 3] = [QPath::Avx512, QPath::Avx2, QPath::Scalar];

    /// The name [`QKERNEL_VAR`] takes.
    pub(crate) fn name(self) -> &'static str {
        match self {
            QPath::Scalar => "scalar",
            QPath::Avx2 => "avx2",
            QPath::Avx512 => "avx512",
        }
    }

    /// Whether this CPU runs the path.
    pub(crate) fn available(self) -> bool {
        match self {
            QPath::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            QPath::Avx2 => super::cpu_gemm::cpu_supported(),
            #[cfg(target_arch = "x86_64")]
            QPath::Avx512 => {
                super::cpu_gemm::cpu_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The path quantized weights take: [`QKERNEL_VAR`] when set (`None` for `candle`), else the
    /// widest SIMD path this CPU has, or `None` (candle's kernels) when it has neither. Read once
    /// per process.
    pub(crate) fn detect() -> std::result::Result<Option<QPath>, String> {
        static CHOICE: std::sync::OnceLock<std::result::Result<Option<QPath>, String>> =
            std::sync::OnceLock::new();
        CHOICE
            .get_or_init(|| match std::env::var(QKERNEL_VAR) {
                Ok(value) if value == "candle" => Ok(None),
                Ok(value) if !value.is_empty() => {
                    let path = QPath::ALL
                        .into_iter()
                        .find(|path| path.name() == value)
                        .ok_or_else(|| {
                            format!("{QKERNEL_VAR}={value}: must be avx512, avx2, scalar or candle")
                        })?;
                    if path.available() {
                        Ok(Some(path))
                    } else {
                        Err(format!("{QKERNEL_VAR}={value}: this CPU lacks {value}"))
                    }
                }
                _ => Ok(QPath::ALL
                    .into_iter()
                    .find(|path| *path != QPath::Scalar && path.available())),
            })
            .clone()
    }
}

/// A GGML block-quantized weight `(out_features, in_features)` repacked in [`TILE`]-row tiles
/// (layout in the module docs). The original blocks are not kept.
#[derive(Debug)]
pub(crate) struct QPackedWeight {
    format: QFormat,
    /// Output features (rows of the weight).
    n: usize,
    /// Input features, a multiple of the format's block.
    k: usize,
    /// `n.div_ceil(TILE)` tiles, each `k / block` groups of [`QFormat::group_bytes`].
    data: Vec<u8>,
}

impl QPackedWeight {
    /// `qt` (shape `(n, k)`, on the CPU) repacked, or `None` when this module does not take it:
    /// another block type, another device, not 2-D, or `k` not a multiple of the block.
    pub(crate) fn new(qt: &QTensor) -> candle_core::Result<Option<Self>> {
        let Some(format) = QFormat::from_ggml(qt.dtype()) else {
            return Ok(None);
        };
        let Ok((n, k)) = qt.shape().dims2() else {
            return Ok(None);
        };
        if !qt.device().is_cpu() || n == 0 || k == 0 || !k.is_multiple_of(format.block()) {
            return Ok(None);
        }
        let blocks = qt.data()?;
        if blocks.len() != n * (k / format.block()) * format.file_block_bytes() {
            return Ok(None);
        }
        Ok(Some(Self::from_blocks(format, n, k, &blocks)))
    }

    /// Packs `n` rows of `k / block` file blocks each.
    fn from_blocks(format: QFormat, n: usize, k: usize, blocks: &[u8]) -> Self {
        let nb = k / format.block();
        let (gb, fb) = (format.group_bytes(), format.file_block_bytes());
        let mut data = vec![0u8; n.div_ceil(TILE) * nb * gb];
        // A zero block: scale 0, quants 0 (Q8_0's quants then pack to 0x80, the unsigned zero).
        let zero = vec![0u8; fb];
        data.par_chunks_mut(nb * gb)
            .enumerate()
            .for_each(|(t, tile)| {
                for r in 0..TILE {
                    let row = t * TILE + r;
                    for (b, group) in tile.chunks_exact_mut(gb).enumerate() {
                        let src = if row < n {
                            &blocks[(row * nb + b) * fb..][..fb]
                        } else {
                            &zero[..]
                        };
                        match format {
                            QFormat::Q8_0 => pack_q8_0(group, r, src),
                            QFormat::Q4_0 => pack_q4_0(group, r, src),
                            QFormat::Q4K => pack_q4k(group, r, src),
                            QFormat::Q5K => pack_q5k(group, r, src),
                            QFormat::Q6K => pack_q6k(group, r, src),
                        }
                    }
                }
            });
        Self { format, n, k, data }
    }

    /// The block format.
    pub(crate) fn format(&self) -> QFormat {
        self.format
    }

    /// Output features.
    pub(crate) fn out_features(&self) -> usize {
        self.n
    }

    /// Input features.
    pub(crate) fn in_features(&self) -> usize {
        self.k
    }

    /// Bytes held (the packed weight, padding rows included).
    pub(crate) fn weight_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// `x W^T` for `x` quantized to [`QFormat::input_kind`] (with `in_features` columns): row-major
    /// `(x.rows, out_features)` f32. The output tiles are split over rayon tasks; `path` must be
    /// available on this CPU ([`QPath::available`]).
    ///
    /// Panics if `x` is of another kind or width (a bug of the caller, not of the input).
    pub(crate) fn matmul_t(&self, x: &QInput, path: QPath) -> Vec<f32> {
        assert_eq!(x.kind, self.format.input_kind(), "quantized input kind");
        assert_eq!(x.k, self.k, "quantized input width");
        assert!(path.available(), "{} kernels on this CPU", path.name());
        let (rows, n) = (x.rows, self.n);
        let mut y = vec![0f32; rows * n];
        if rows == 0 {
            return y;
        }
        let tiles = n.div_ceil(TILE);
        let tile_bytes = self.k / self.format.block() * self.format.group_bytes();
        // A few tasks per thread, so a thread slowed by another process does not hold the rest.
        let tasks = (rayon::current_num_threads() * 4).clamp(1, tiles);
        let out = OutPtr(y.as_mut_ptr());
        (0..tasks).into_par_iter().for_each(|task| {
            let out = &out;
            for t in task * tiles / tasks..(task + 1) * tiles / tasks {
                let tile = &self.data[t * tile_bytes..][..tile_bytes];
                let cols = (n - t * TILE).min(TILE);
                let mut r0 = 0;
                while r0 < rows {
                    let pass = (rows - r0).min(ROWS_PER_PASS);
                    let mut acc = [[0f32; TILE]; ROWS_PER_PASS];
                    self.tile(path, tile, x, r0, pass, &mut acc);
                    for (r, lanes) in acc.iter().enumerate().take(pass) {
                        // SAFETY: row `r0 + r` < rows and columns `t * TILE..+cols` < n: inside
                        // `y`; tiles are disjoint across tasks, so no two tasks write one element.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                lanes.as_ptr(),
                                out.0.add((r0 + r) * n + t * TILE),
                                cols,
                            );
                        }
                    }
                    r0 += pass;
                }
            }
        });
        y
    }

    /// One tile against input rows `r0..r0 + pass` (`pass` <= [`ROWS_PER_PASS`]): `acc[r][i]` is
    /// output `(r0 + r, tile row i)`.
    fn tile(
        &self,
        path: QPath,
        tile: &[u8],
        x: &QInput,
        r0: usize,
        pass: usize,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        let nb = self.k / self.format.block();
        let rows = RowPtrs::new(x, r0, pass);
        macro_rules! by_pass {
            ($module:ident::$kernel:ident $(, $five:expr)?) => {
                // SAFETY: `tile` holds `nb` groups and `rows` points at `pass` input rows of `nb`
                // blocks (`QInput` layout); the path's CPU features were checked in `matmul_t`.
                unsafe {
                    match pass {
                        1 => $module::$kernel::<1 $(, $five)?>(tile.as_ptr(), nb, &rows, acc),
                        2 => $module::$kernel::<2 $(, $five)?>(tile.as_ptr(), nb, &rows, acc),
                        3 => $module::$kernel::<3 $(, $five)?>(tile.as_ptr(), nb, &rows, acc),
                        _ => $module::$kernel::<4 $(, $five)?>(tile.as_ptr(), nb, &rows, acc),
                    }
                }
            };
        }
        match (self.format, path) {
            (QFormat::Q8_0, QPath::Scalar) => by_pass!(scalar::q8_0),
            (QFormat::Q4_0, QPath::Scalar) => by_pass!(scalar::q4_0),
            (QFormat::Q4K, QPath::Scalar) => by_pass!(scalar::q45k, false),
            (QFormat::Q5K, QPath::Scalar) => by_pass!(scalar::q45k, true),
            (QFormat::Q6K, QPath::Scalar) => by_pass!(scalar::q6k),
            #[cfg(target_arch = "x86_64")]
            (QFormat::Q8_0, QPath::Avx2) => by_pass!(avx2::q8_0),
            #[cfg(target_arch = "x86_64")]
            (QFormat::Q4_0, QPath::Avx2) => by_pass!(avx2::q4_0),
            #[cfg(target_arch = "x86_64")]
            (QFormat::Q4K, QPath::Avx2) => by_pass!(avx2::q45k, false),
            #[cfg(target_arch = "x86_64")]
            (QFormat::Q5K, QPath::Avx2) => by_pass!(avx2::q45k, true),
            #[cfg(target_arch = "x86_64")]
            (QFormat::Q6K, QPath::Avx2) => by_pass!(avx2::q6k),
            #[cfg(target_arch = "x86_64")]
            (QFormat::Q8_0, QPath::Avx512) => by_pass!(avx512::q8_0),
            #[cfg(target_arch = "x86_64")]
            (QFormat::Q4_0, QPath::Avx512) => by_pass!(avx512::q4_0),
            #[cfg(target_arch = "x86_64")]
            (QFormat::Q4K, QPath::Avx512) => by_pass!(avx512::q45k, false),
            #[cfg(target_arch = "x86_64")]
            (QFormat::Q5K, QPath::Avx512) => by_pass!(avx512::q45k, true),
            #[cfg(target_arch = "x86_64")]
            (QFormat::Q6K, QPath::Avx512) => by_pass!(avx512::q6k),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("only the scalar path is available off x86_64"),
        }
    }
}

/// Row `r` of a Q8_0 file block `src` into `group`.
fn pack_q8_0(group: &mut [u8], r: usize, src: &[u8]) {
    group[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
    for c in 0..QK8_0 / 4 {
        for e in 0..4 {
            group[Q8_0_QS + c * 64 + r * 4 + e] = src[2 + 4 * c + e] ^ 0x80;
        }
    }
}

/// Row `r` of a Q4_0 file block `src` (`d`, 16 bytes: low nibbles values 0..16, high nibbles
/// 16..32, each `q - 8`) into `group`: `d` as Q8_0's, then 4 vectors of the file's bytes.
fn pack_q4_0(group: &mut [u8], r: usize, src: &[u8]) {
    group[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
    for c in 0..4 {
        group[Q8_0_QS + c * 64 + r * 4..][..4].copy_from_slice(&src[2 + 4 * c..][..4]);
    }
}

/// Row `r` of a Q4_K file block `src` (`d`, `dmin`, 12 scale bytes, 128 quant bytes) into `group`.
fn pack_q4k(group: &mut [u8], r: usize, src: &[u8]) {
    pack_k4_bits(group, r, &src[..16], &src[16..144]);
}

/// Row `r` of a Q5_K file block `src` (`d`, `dmin`, 12 scale bytes, 32 fifth-bit bytes `qh`, 128
/// low-nibble bytes) into `group`: the Q4_K layout of the scales and low nibbles, then `qh` in 8
/// vectors (vector `c`: file bytes `4c..+4` of each row; bit `j` of `qh[l]` is the fifth bit of
/// value `32j + l`, GGML's `dequantize_row_q5_K`).
fn pack_q5k(group: &mut [u8], r: usize, src: &[u8]) {
    pack_k4_bits(group, r, &src[..16], &src[48..176]);
    for c in 0..8 {
        group[Q5K_QH + c * 64 + r * 4..][..4].copy_from_slice(&src[16 + 4 * c..][..4]);
    }
}

/// The part Q4_K and Q5_K share: `head` = `d`, `dmin`, 12 scale bytes; `qs` = 128 nibble bytes.
/// Scales: `Q4K_SC + j * TILE + r`; mins in pairs, for `pmaddwd`: `Q4K_M + 32 q + 2 r + e` is
/// sub-block `2q + e`'s.
fn pack_k4_bits(group: &mut [u8], r: usize, head: &[u8], qs: &[u8]) {
    group[2 * r..2 * r + 2].copy_from_slice(&head[..2]);
    group[Q4K_DMIN + 2 * r..Q4K_DMIN + 2 * r + 2].copy_from_slice(&head[2..4]);
    let scales = &head[4..16];
    for j in 0..8 {
        // GGML's `get_scale_min_k4`.
        let (sc, m) = if j < 4 {
            (scales[j] & 63, scales[j + 4] & 63)
        } else {
            (
                (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
                (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
            )
        };
        group[Q4K_SC + j * TILE + r] = sc;
        group[Q4K_M + 32 * (j / 2) + 2 * r + j % 2] = m;
    }
    for v in 0..32 {
        // Vector 8t + c holds file bytes 32t + 4c..+4 (the file's 32-byte runs per 64 values).
        group[Q4K_QS + v * 64 + r * 4..][..4].copy_from_slice(&qs[4 * v..][..4]);
    }
}

/// Row `r` of a Q6_K file block `src` (128 low-nibble bytes `ql`, 64 high-pair bytes `qh`, 16
/// `i8` scales, `d`) into `group`. Both quant arrays keep GGML's byte order, four bytes per row per
/// vector: `ql` vector `16h + u` is file bytes `64h + 4u..+4`, `qh` vector `8h + c` file bytes
/// `32h + 4c..+4` (see [`scalar::q6k`] for which values they hold).
fn pack_q6k(group: &mut [u8], r: usize, src: &[u8]) {
    group[2 * r..2 * r + 2].copy_from_slice(&src[208..210]);
    for s in 0..16 {
        group[Q6K_SC + s * TILE + r] = src[192 + s];
    }
    for v in 0..32 {
        group[Q6K_QL + v * 64 + r * 4..][..4].copy_from_slice(&src[4 * v..][..4]);
    }
    for v in 0..16 {
        group[Q6K_QH + v * 64 + r * 4..][..4].copy_from_slice(&src[128 + 4 * v..][..4]);
    }
}

/// An input quantized per block for [`QPackedWeight::matmul_t`]: `rows` rows of `k` values.
#[derive(Debug)]
pub(crate) struct QInput {
    kind: QInputKind,
    rows: usize,
    k: usize,
    /// Quantized values, row-major `(rows, k)`, in `[-127, 127]`.
    qs: Vec<i8>,
    /// Per block scale `amax / 127` (0 for an all-zero block), `(rows, k / block)`.
    d: Vec<f32>,
    /// Sums of every 16 consecutive `qs` (llama.cpp's `bsums`), `(rows, k / 16)`.
    sums: Vec<i16>,
}

impl QInput {
    /// `x` (row-major `(rows, k)` f32, `k` a multiple of the kind's block) quantized with `path`'s
    /// quantizer (every path gives the same values).
    pub(crate) fn quantize(
        kind: QInputKind,
        x: &[f32],
        rows: usize,
        k: usize,
        path: QPath,
    ) -> Self {
        assert_eq!(x.len(), rows * k, "input size");
        let block = kind.block();
        assert!(
            k.is_multiple_of(block),
            "input width {k} is not a multiple of {block}"
        );
        let mut qs = vec![0i8; rows * k];
        let mut d = vec![0f32; rows * k / block];
        let mut sums = vec![0i16; rows * k / 16];
        let row = |x: &[f32], qs: &mut [i8], d: &mut [f32], sums: &mut [i16]| {
            for (b, x) in x.chunks_exact(block).enumerate() {
                let qs = &mut qs[b * block..][..block];
                let sums = &mut sums[b * block / 16..][..block / 16];
                d[b] = match path {
                    #[cfg(target_arch = "x86_64")]
                    QPath::Avx2 => {
                        assert!(path.available(), "{} quantizer on this CPU", path.name());
                        // SAFETY: AVX2 + FMA + F16C checked above; the slices are `block` (a
                        // multiple of 32) values and `block / 16` sums long.
                        unsafe { avx2::quantize_block(x, qs, sums) }
                    }
                    #[cfg(target_arch = "x86_64")]
                    QPath::Avx512 => {
                        assert!(path.available(), "{} quantizer on this CPU", path.name());
                        // SAFETY: AVX-512 F/BW (+ AVX2) checked above; slices as above.
                        unsafe { avx512::quantize_block(x, qs, sums) }
                    }
                    _ => scalar::quantize_block(x, qs, sums),
                };
            }
        };
        if rows > 0 && k > 0 {
            let nb = k / block;
            if rows >= 8 {
                x.par_chunks(k)
                    .zip(qs.par_chunks_mut(k))
                    .zip(d.par_chunks_mut(nb))
                    .zip(sums.par_chunks_mut(k / 16))
                    .for_each(|(((x, qs), d), sums)| row(x, qs, d, sums));
            } else {
                x.chunks(k)
                    .zip(qs.chunks_mut(k))
                    .zip(d.chunks_mut(nb))
                    .zip(sums.chunks_mut(k / 16))
                    .for_each(|(((x, qs), d), sums)| row(x, qs, d, sums));
            }
        }
        Self {
            kind,
            rows,
            k,
            qs,
            d,
            sums,
        }
    }

    /// Input rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }
}

/// Pointers to the quantized values, scales and sums of up to [`ROWS_PER_PASS`] input rows.
struct RowPtrs {
    qs: [*const i8; ROWS_PER_PASS],
    d: [*const f32; ROWS_PER_PASS],
    sums: [*const i16; ROWS_PER_PASS],
}

impl RowPtrs {
    fn new(x: &QInput, r0: usize, pass: usize) -> Self {
        let block = x.kind.block();
        let at = |r: usize| (r0 + r.min(pass - 1)).min(x.rows - 1);
        Self {
            qs: std::array::from_fn(|r| x.qs[at(r) * x.k..].as_ptr()),
            d: std::array::from_fn(|r| x.d[at(r) * x.k / block..].as_ptr()),
            sums: std::array::from_fn(|r| x.sums[at(r) * x.k / 16..].as_ptr()),
        }
    }
}

/// The output of [`QPackedWeight::matmul_t`], written by its rayon tasks at disjoint tiles.
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint elements (see `matmul_t`), and `y` outlives the parallel loop.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Scale of the f16 at `p` (unaligned, little-endian).
///
/// # Safety
/// `p` must point at two readable bytes.
unsafe fn f16_at(p: *const u8) -> f32 {
    f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32()
}

/// The reference kernels and quantizer: the integer sums exactly and the same f32 operations, in
/// the same order, as the SIMD paths.
#[allow(clippy::needless_range_loop)]
mod scalar {
    use super::*;

    /// One block quantized: `qs = round_ties_even(x * 127 / amax)` in `[-127, 127]`, the sums of
    /// every 16, and the scale `amax / 127` returned.
    pub(super) fn quantize_block(x: &[f32], qs: &mut [i8], sums: &mut [i16]) -> f32 {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, v) in qs.iter_mut().zip(x) {
            *q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        for (s, q) in sums.iter_mut().zip(qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| i16::from(v)).sum();
        }
        amax / 127.0
    }

    /// Four input bytes at `p` (a dot-product step).
    unsafe fn x4(p: *const i8) -> [i32; 4] {
        std::array::from_fn(|e| i32::from(*p.add(e)))
    }

    /// Q8_0 tile x `R` input rows.
    pub(super) unsafe fn q8_0<const R: usize>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        for b in 0..nb {
            let g = tile.add(b * QFormat::Q8_0.group_bytes());
            for i in 0..TILE {
                let wd = f16_at(g.add(2 * i));
                for r in 0..R {
                    let mut dot = 0i32;
                    for c in 0..QK8_0 / 4 {
                        let xs = x4(x.qs[r].add(b * QK8_0 + 4 * c));
                        for (e, xv) in xs.iter().enumerate() {
                            let w = i32::from((*g.add(Q8_0_QS + c * 64 + i * 4 + e) ^ 0x80) as i8);
                            dot += w * xv;
                        }
                    }
                    let scale = wd * *x.d[r].add(b);
                    acc[r][i] = (dot as f32).mul_add(scale, acc[r][i]);
                }
            }
        }
    }

    /// Q4_0 tile x `R` input rows: `sum (q - 8) x = sum q x - 8 sum x`.
    pub(super) unsafe fn q4_0<const R: usize>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        for b in 0..nb {
            let g = tile.add(b * QFormat::Q4_0.group_bytes());
            for i in 0..TILE {
                let wd = f16_at(g.add(2 * i));
                for r in 0..R {
                    let mut dot = 0i32;
                    for c in 0..4 {
                        for e in 0..4 {
                            let byte = *g.add(Q8_0_QS + c * 64 + i * 4 + e);
                            let xp = x.qs[r].add(b * QK8_0 + 4 * c + e);
                            dot += i32::from(byte & 0x0F) * i32::from(*xp);
                            dot += i32::from(byte >> 4) * i32::from(*xp.add(16));
                        }
                    }
                    let s = x.sums[r].add(2 * b);
                    let dot = dot - 8 * (i32::from(*s) + i32::from(*s.add(1)));
                    let scale = wd * *x.d[r].add(b);
                    acc[r][i] = (dot as f32).mul_add(scale, acc[r][i]);
                }
            }
        }
    }

    /// Q4_K (`FIVE` false) or Q5_K (`FIVE` true: the fifth bits added as 16) tile x `R` input
    /// rows. Value `64t + 32h + l` (`h` 0 or 1, `l` 0..32) of a superblock is nibble `h` of byte
    /// `32t + l`, in sub-block `j = 2t + h`; Q5_K adds bit `j` of `qh[l]`.
    pub(super) unsafe fn q45k<const R: usize, const FIVE: bool>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        let format = if FIVE { QFormat::Q5K } else { QFormat::Q4K };
        for b in 0..nb {
            let g = tile.add(b * format.group_bytes());
            for i in 0..TILE {
                let d = f16_at(g.add(2 * i));
                let dmin = f16_at(g.add(Q4K_DMIN + 2 * i));
                for r in 0..R {
                    let mut isum = 0i32;
                    let mut msum = 0i32;
                    for j in 0..8 {
                        let (t, high) = (j / 2, j % 2 == 1);
                        let mut dot = 0i32;
                        for c in 0..8 {
                            let xs = x4(x.qs[r].add(b * QK_K + 64 * t + 32 * (j % 2) + 4 * c));
                            for (e, xv) in xs.iter().enumerate() {
                                let byte = *g.add(Q4K_QS + (8 * t + c) * 64 + i * 4 + e);
                                let mut w = if high { byte >> 4 } else { byte & 0x0F };
                                if FIVE {
                                    let qh = *g.add(Q5K_QH + c * 64 + i * 4 + e);
                                    w |= ((qh >> j) & 1) << 4;
                                }
                                dot += i32::from(w) * xv;
                            }
                        }
                        isum += i32::from(*g.add(Q4K_SC + j * TILE + i)) * dot;
                        let bsum = i32::from(*x.sums[r].add(16 * b + 2 * j))
                            + i32::from(*x.sums[r].add(16 * b + 2 * j + 1));
                        let m = *g.add(Q4K_M + 32 * (j / 2) + 2 * i + j % 2);
                        msum += i32::from(m) * bsum;
                    }
                    let xd = *x.d[r].add(b);
                    acc[r][i] = (d * xd).mul_add(isum as f32, acc[r][i]);
                    acc[r][i] = (-(dmin * xd)).mul_add(msum as f32, acc[r][i]);
                }
            }
        }
    }

    /// Q6_K tile x `R` input rows. GGML's `dequantize_row_q6_K` order: in half `h` of a superblock,
    /// value `128h + 32p + l` (`p` 0..4, `l` 0..32) is `ql[64h + l + 32 (p & 1)]`'s low nibble
    /// (`p` < 2) or high nibble, plus bits `2p..2p+2` of `qh[32h + l]` as bits 4-5, minus 32; its
    /// scale is `scales[8h + 2p + l / 16]`.
    pub(super) unsafe fn q6k<const R: usize>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        for b in 0..nb {
            let g = tile.add(b * QFormat::Q6K.group_bytes());
            for i in 0..TILE {
                let d = f16_at(g.add(2 * i));
                for r in 0..R {
                    let mut isum = 0i32;
                    let mut osum = 0i32;
                    for s in 0..16 {
                        // Sub-block `s` = 16 values from `16 s`: half h, part p, `l` from `16 (s % 2)`.
                        let (h, p, l0) = (s / 8, (s % 8) / 2, 16 * (s % 2));
                        let mut dot = 0i32;
                        for l in l0..l0 + 16 {
                            let (c, e) = (l / 4, l % 4);
                            let ql = *g.add(Q6K_QL + (16 * h + 8 * (p & 1) + c) * 64 + i * 4 + e);
                            let qh = *g.add(Q6K_QH + (8 * h + c) * 64 + i * 4 + e);
                            let low = if p < 2 { ql & 0x0F } else { ql >> 4 };
                            let q = low | (((qh >> (2 * p)) & 3) << 4);
                            dot +=
                                i32::from(q) * i32::from(*x.qs[r].add(b * QK_K + 16 * s + l - l0));
                        }
                        let sc = i32::from(*g.add(Q6K_SC + s * TILE + i) as i8);
                        isum += sc * dot;
                        osum += sc * i32::from(*x.sums[r].add(16 * b + s));
                    }
                    let xd = *x.d[r].add(b);
                    acc[r][i] = (d * xd).mul_add((isum - 32 * osum) as f32, acc[r][i]);
                }
            }
        }
    }
}

/// AVX2 (+ FMA, F16C): each tile as two 8-row halves, and the AVX2 quantizer.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    /// [`scalar::quantize_block`] in 8-lane vectors (`cvtps_epi32` rounds ties to even under the
    /// default MXCSR, as `round_ties_even`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_block(x: &[f32], qs: &mut [i8], sums: &mut [i16]) -> f32 {
        let abs_mask = _mm256_set1_ps(f32::from_bits(0x7FFF_FFFF));
        let mut m = _mm256_setzero_ps();
        for v in x.chunks_exact(8) {
            m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(v.as_ptr()), abs_mask));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let id = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for ((x, qs), sums) in x
            .chunks_exact(32)
            .zip(qs.chunks_exact_mut(32))
            .zip(sums.chunks_exact_mut(2))
        {
            let q: [__m256i; 4] = std::array::from_fn(|i| {
                let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * i)), id);
                _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(v), lo), hi)
            });
            for (s, pair) in sums.iter_mut().zip([[q[0], q[1]], [q[2], q[3]]]) {
                let v = _mm256_add_epi32(pair[0], pair[1]);
                let v = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
                let v = _mm_hadd_epi32(v, v);
                *s = _mm_cvtsi128_si32(_mm_hadd_epi32(v, v)) as i16;
            }
            // Saturating packs interleave the 128-bit lanes; the permute restores the order.
            let w = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let w = _mm256_permutevar8x32_epi32(w, order);
            _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, w);
        }
        amax / 127.0
    }

    /// Four input bytes at `p` in every 32-bit lane.
    #[inline(always)]
    unsafe fn x4(p: *const i8) -> __m256i {
        _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
    }

    /// Q8_0 tile x `R` input rows: `|w|` times `x` with `w`'s sign (llama.cpp's sign trick: both
    /// in `[-127, 127]`, so `pmaddubsw`'s pair sums cannot saturate).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_0<const R: usize>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        let flip = _mm256_set1_epi8(0x80u8 as i8);
        let ones = _mm256_set1_epi16(1);
        for h in 0..2 {
            let mut sum = [_mm256_setzero_ps(); R];
            for b in 0..nb {
                let g = tile.add(b * QFormat::Q8_0.group_bytes());
                let wd = _mm256_cvtph_ps(_mm_loadu_si128(g.add(16 * h) as *const __m128i));
                let mut dot = [_mm256_setzero_si256(); R];
                for c in 0..QK8_0 / 4 {
                    let p = g.add(Q8_0_QS + c * 64 + 32 * h) as *const __m256i;
                    let w = _mm256_xor_si256(_mm256_loadu_si256(p), flip);
                    let aw = _mm256_sign_epi8(w, w);
                    for r in 0..R {
                        let sx = _mm256_sign_epi8(x4(x.qs[r].add(b * QK8_0 + 4 * c)), w);
                        let p16 = _mm256_maddubs_epi16(aw, sx);
                        dot[r] = _mm256_add_epi32(dot[r], _mm256_madd_epi16(p16, ones));
                    }
                }
                for r in 0..R {
                    let scale = _mm256_mul_ps(wd, _mm256_set1_ps(*x.d[r].add(b)));
                    sum[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), scale, sum[r]);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(acc[r].as_mut_ptr().add(8 * h), sum[r]);
            }
        }
    }

    /// Q4_0 tile x `R` input rows: `pmaddubsw` of the nibbles (unsigned, <= 15) and the input,
    /// `8 * sum(x)` subtracted per block.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_0<const R: usize>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        let nibble = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        for h in 0..2 {
            let mut sum = [_mm256_setzero_ps(); R];
            for b in 0..nb {
                let g = tile.add(b * QFormat::Q4_0.group_bytes());
                let wd = _mm256_cvtph_ps(_mm_loadu_si128(g.add(16 * h) as *const __m128i));
                let mut dot = [_mm256_setzero_si256(); R];
                for c in 0..4 {
                    let p = g.add(Q8_0_QS + c * 64 + 32 * h) as *const __m256i;
                    let v = _mm256_loadu_si256(p);
                    let lo = _mm256_and_si256(v, nibble);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                    for r in 0..R {
                        let xp = x.qs[r].add(b * QK8_0 + 4 * c);
                        let p16 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, x4(xp)),
                            _mm256_maddubs_epi16(hi, x4(xp.add(16))),
                        );
                        dot[r] = _mm256_add_epi32(dot[r], _mm256_madd_epi16(p16, ones));
                    }
                }
                for r in 0..R {
                    let s = x.sums[r].add(2 * b);
                    let offset = _mm256_set1_epi32(8 * (i32::from(*s) + i32::from(*s.add(1))));
                    let dot = _mm256_sub_epi32(dot[r], offset);
                    let scale = _mm256_mul_ps(wd, _mm256_set1_ps(*x.d[r].add(b)));
                    sum[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, sum[r]);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(acc[r].as_mut_ptr().add(8 * h), sum[r]);
            }
        }
    }

    /// Eight `u8` at `p` as `(v, v)` 16-bit pairs in eight 32-bit lanes (`pmaddwd`'s other side).
    #[inline(always)]
    unsafe fn u8_pairs(p: *const u8) -> __m256i {
        let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
        _mm256_or_si256(v, _mm256_slli_epi32(v, 16))
    }

    /// The sums of every 32 input values of one superblock (`sums`: its 16 `bsums`), as four
    /// 32-bit lanes of two `i16`: lane `q` is `(sum_{2q}, sum_{2q+1})`, `pmaddwd`'s operand.
    #[inline(always)]
    pub(super) unsafe fn bsum_pairs(sums: *const i16) -> [i32; 4] {
        let v = _mm256_loadu_si256(sums as *const __m256i);
        let s = _mm_hadd_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        std::mem::transmute::<__m128i, [i32; 4]>(s)
    }

    /// Q4_K (`FIVE` false) or Q5_K (`FIVE` true) tile x `R` input rows ([`scalar::q45k`]'s order):
    /// `pmaddubsw` of the four- or five-bit values (unsigned) and the input, summed as `i16` over
    /// several vectors of one sub-block, then `pmaddwd` with the sub-block scale: the scaled sum,
    /// as integers. Each `i16` of a `pmaddubsw` is at most `2 * 15 * 127 = 3810` (Q4_K) or
    /// `2 * 31 * 127 = 7874` (Q5_K) in magnitude, so 8 (4) of them add without overflow. The mins
    /// go through `pmaddwd` too, paired with the input's 32-value sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q45k<const R: usize, const FIVE: bool>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        let format = if FIVE { QFormat::Q5K } else { QFormat::Q4K };
        let span = if FIVE { 4 } else { 8 };
        let nibble = _mm256_set1_epi8(0x0F);
        let bit4 = _mm256_set1_epi8(0x10);
        for h in 0..2 {
            let mut sum = [_mm256_setzero_ps(); R];
            for b in 0..nb {
                let g = tile.add(b * format.group_bytes());
                let d = _mm256_cvtph_ps(_mm_loadu_si128(g.add(16 * h) as *const __m128i));
                let dmin =
                    _mm256_cvtph_ps(_mm_loadu_si128(g.add(Q4K_DMIN + 16 * h) as *const __m128i));
                let mut isum = [_mm256_setzero_si256(); R];
                for t in 0..4 {
                    let sc_lo = u8_pairs(g.add(Q4K_SC + 2 * t * TILE + 8 * h));
                    let sc_hi = u8_pairs(g.add(Q4K_SC + (2 * t + 1) * TILE + 8 * h));
                    let shift = _mm_cvtsi32_si128(2 * t as i32);
                    let w = g.add(Q4K_QS + 8 * t * 64 + 32 * h);
                    let xt: [*const i8; R] =
                        std::array::from_fn(|r| x.qs[r].add(b * QK_K + 64 * t));
                    for run in 0..8 / span {
                        let mut plo = [_mm256_setzero_si256(); R];
                        let mut phi = [_mm256_setzero_si256(); R];
                        for cc in 0..span {
                            let c = run * span + cc;
                            let v = _mm256_loadu_si256(w.add(64 * c) as *const __m256i);
                            let mut lo = _mm256_and_si256(v, nibble);
                            let mut hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                            if FIVE {
                                // Bits 2t and 2t + 1 of each byte moved to bit 4.
                                let p = g.add(Q5K_QH + c * 64 + 32 * h) as *const __m256i;
                                let qh = _mm256_srl_epi16(_mm256_loadu_si256(p), shift);
                                let (qh4, qh3) =
                                    (_mm256_slli_epi16(qh, 4), _mm256_slli_epi16(qh, 3));
                                lo = _mm256_or_si256(lo, _mm256_and_si256(qh4, bit4));
                                hi = _mm256_or_si256(hi, _mm256_and_si256(qh3, bit4));
                            }
                            for r in 0..R {
                                let xp = xt[r].add(4 * c);
                                let pl = _mm256_maddubs_epi16(lo, x4(xp));
                                let ph = _mm256_maddubs_epi16(hi, x4(xp.add(32)));
                                plo[r] = _mm256_add_epi16(plo[r], pl);
                                phi[r] = _mm256_add_epi16(phi[r], ph);
                            }
                        }
                        for r in 0..R {
                            isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(plo[r], sc_lo));
                            isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(phi[r], sc_hi));
                        }
                    }
                }
                let m: [__m256i; 4] = std::array::from_fn(|q| {
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(
                        g.add(Q4K_M + 32 * q + 16 * h) as *const __m128i
                    ))
                });
                for r in 0..R {
                    let pairs = bsum_pairs(x.sums[r].add(16 * b));
                    let mut msum = _mm256_madd_epi16(m[0], _mm256_set1_epi32(pairs[0]));
                    for q in 1..4 {
                        let s = _mm256_madd_epi16(m[q], _mm256_set1_epi32(pairs[q]));
                        msum = _mm256_add_epi32(msum, s);
                    }
                    let xd = _mm256_set1_ps(*x.d[r].add(b));
                    let s =
                        _mm256_fmadd_ps(_mm256_mul_ps(d, xd), _mm256_cvtepi32_ps(isum[r]), sum[r]);
                    sum[r] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, xd), _mm256_cvtepi32_ps(msum), s);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(acc[r].as_mut_ptr().add(8 * h), sum[r]);
            }
        }
    }

    /// Eight `i8` at `p` as `(v, v)` 16-bit pairs in eight 32-bit lanes (`pmaddwd`'s other side).
    #[inline(always)]
    unsafe fn i8_pairs(p: *const u8) -> __m256i {
        let v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i));
        _mm256_or_si256(
            _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF)),
            _mm256_slli_epi32(v, 16),
        )
    }

    /// Q6_K tile x `R` input rows ([`scalar::q6k`]'s order): the six-bit values (unsigned, <= 63)
    /// through `pmaddubsw`, two vectors of one sub-block summed as `i16` (each at most
    /// `2 * 63 * 127 = 16002` in magnitude), then times the signed scales through `pmaddwd`;
    /// `32 * scale * bsum` subtracted once per superblock. One part `p` (a quarter of each half
    /// superblock) at a time, so that few accumulators are live.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6k<const R: usize>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        let nibble = _mm256_set1_epi8(0x0F);
        let pair = _mm256_set1_epi8(0x30);
        for hh in 0..2 {
            let mut sum = [_mm256_setzero_ps(); R];
            for b in 0..nb {
                let g = tile.add(b * QFormat::Q6K.group_bytes());
                let d = _mm256_cvtph_ps(_mm_loadu_si128(g.add(16 * hh) as *const __m128i));
                let mut isum = [_mm256_setzero_si256(); R];
                for h in 0..2 {
                    let xh: [*const i8; R] =
                        std::array::from_fn(|r| x.qs[r].add(b * QK_K + 128 * h));
                    let qh_at = g.add(Q6K_QH + 8 * h * 64 + 32 * hh);
                    for p in 0..4 {
                        // Part p: nibble p / 2 of `ql` vector 16h + 8 (p % 2) + c, bits 2p, 2p + 1
                        // of `qh` vector 8h + c.
                        let ql_at = g.add(Q6K_QL + (16 * h + 8 * (p & 1)) * 64 + 32 * hh);
                        let low_shift = _mm_cvtsi32_si128(4 * (p as i32 / 2));
                        let high_shift = _mm_cvtsi32_si128(2 * p as i32);
                        for hc in 0..2 {
                            let sc = i8_pairs(g.add(Q6K_SC + (8 * h + 2 * p + hc) * TILE + 8 * hh));
                            for run in 0..2 {
                                let mut p16 = [_mm256_setzero_si256(); R];
                                for cc in 0..2 {
                                    let c = 4 * hc + 2 * run + cc;
                                    let ql =
                                        _mm256_loadu_si256(ql_at.add(64 * c) as *const __m256i);
                                    let qh =
                                        _mm256_loadu_si256(qh_at.add(64 * c) as *const __m256i);
                                    let low =
                                        _mm256_and_si256(_mm256_srl_epi16(ql, low_shift), nibble);
                                    let high =
                                        _mm256_slli_epi16(_mm256_srl_epi16(qh, high_shift), 4);
                                    let q = _mm256_or_si256(low, _mm256_and_si256(high, pair));
                                    for r in 0..R {
                                        let xv = x4(xh[r].add(32 * p + 4 * c));
                                        p16[r] =
                                            _mm256_add_epi16(p16[r], _mm256_maddubs_epi16(q, xv));
                                    }
                                }
                                for r in 0..R {
                                    isum[r] =
                                        _mm256_add_epi32(isum[r], _mm256_madd_epi16(p16[r], sc));
                                }
                            }
                        }
                    }
                }
                // Sum of scale x bsum over the 16 sub-blocks: `pmaddwd` of scale pairs
                // `(sc_{2q}, sc_{2q+1})` per lane and the input's sums, two per 32-bit lane.
                let mut osum = [_mm256_setzero_si256(); R];
                for q in 0..8 {
                    let at = |s: usize| {
                        _mm_loadl_epi64(g.add(Q6K_SC + s * TILE + 8 * hh) as *const __m128i)
                    };
                    let sc = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(at(2 * q), at(2 * q + 1)));
                    for r in 0..R {
                        let bsums = x4(x.sums[r].add(16 * b + 2 * q) as *const i8);
                        osum[r] = _mm256_add_epi32(osum[r], _mm256_madd_epi16(sc, bsums));
                    }
                }
                for r in 0..R {
                    let total = _mm256_sub_epi32(isum[r], _mm256_slli_epi32(osum[r], 5));
                    let xd = _mm256_set1_ps(*x.d[r].add(b));
                    let scale = _mm256_mul_ps(d, xd);
                    sum[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(total), sum[r]);
                }
            }
            for r in 0..R {
                _mm256_storeu_ps(acc[r].as_mut_ptr().add(8 * hh), sum[r]);
            }
        }
    }
}

/// AVX-512 F/BW + VNNI: 16-row tiles in one register, `vpdpbusd` (unsigned weights times signed
/// inputs, four byte pairs per 32-bit lane).
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::*;

    /// [`scalar::quantize_block`] in 16-lane vectors: one vector is one 16-value sum;
    /// `vpmovdb` narrows (the values are already clamped to `[-127, 127]`).
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub(super) unsafe fn quantize_block(x: &[f32], qs: &mut [i8], sums: &mut [i16]) -> f32 {
        let mut m = _mm512_setzero_ps();
        for v in x.chunks_exact(16) {
            m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(v.as_ptr())));
        }
        let amax = _mm512_reduce_max_ps(m);
        let id = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        for ((x, qs), s) in x
            .chunks_exact(16)
            .zip(qs.chunks_exact_mut(16))
            .zip(sums.iter_mut())
        {
            let v = _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr()), id);
            let q = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(v), lo), hi);
            *s = _mm512_reduce_add_epi32(q) as i16;
            _mm_storeu_si128(qs.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(q));
        }
        amax / 127.0
    }

    /// Four input bytes at `p` in every 32-bit lane.
    #[inline(always)]
    unsafe fn x4(p: *const i8) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
    }

    /// Sixteen `u8` at `p` widened to 32-bit lanes.
    #[inline(always)]
    unsafe fn u8_lanes(p: *const u8) -> __m512i {
        _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))
    }

    /// Q8_0 tile x `R` input rows: the weights are stored as `w + 128`, so
    /// `vpdpbusd` sums `(w + 128) x` and `128 * sum(x)` (from the input's `bsums`) is subtracted.
    /// Two blocks per pass (independent accumulators, so `vpdpbusd`'s latency does not serialise
    /// the loop); their products are added to the output in block order, as the reference does.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q8_0<const R: usize>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        let mut sum = [_mm512_setzero_ps(); R];
        let mut b0 = 0;
        while b0 < nb {
            // The second block of a last, single block repeats it; its result is not used.
            let blocks = [b0, (b0 + 1).min(nb - 1)];
            let g = blocks.map(|b| tile.add(b * QFormat::Q8_0.group_bytes()));
            let mut dot = [[_mm512_setzero_si512(); R]; 2];
            for c in 0..QK8_0 / 4 {
                for j in 0..2 {
                    let w = _mm512_loadu_si512(g[j].add(Q8_0_QS + c * 64) as *const __m512i);
                    for r in 0..R {
                        let xv = x4(x.qs[r].add(blocks[j] * QK8_0 + 4 * c));
                        dot[j][r] = _mm512_dpbusd_epi32(dot[j][r], w, xv);
                    }
                }
            }
            for j in 0..(nb - b0).min(2) {
                let b = blocks[j];
                let wd = _mm512_cvtph_ps(_mm256_loadu_si256(g[j] as *const __m256i));
                for r in 0..R {
                    let s = x.sums[r].add(2 * b);
                    let offset = _mm512_set1_epi32(128 * (i32::from(*s) + i32::from(*s.add(1))));
                    let dot = _mm512_sub_epi32(dot[j][r], offset);
                    let scale = _mm512_mul_ps(wd, _mm512_set1_ps(*x.d[r].add(b)));
                    sum[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, sum[r]);
                }
            }
            b0 += 2;
        }
        for r in 0..R {
            _mm512_storeu_ps(acc[r].as_mut_ptr(), sum[r]);
        }
    }

    /// Q4_0 tile x `R` input rows: `vpdpbusd` of the nibbles (unsigned) and the input,
    /// `8 * sum(x)` subtracted per block.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q4_0<const R: usize>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        let nibble = _mm512_set1_epi8(0x0F);
        let mut sum = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let g = tile.add(b * QFormat::Q4_0.group_bytes());
            let wd = _mm512_cvtph_ps(_mm256_loadu_si256(g as *const __m256i));
            let mut lo_dot = [_mm512_setzero_si512(); R];
            let mut hi_dot = [_mm512_setzero_si512(); R];
            for c in 0..4 {
                let v = _mm512_loadu_si512(g.add(Q8_0_QS + c * 64) as *const __m512i);
                let lo = _mm512_and_si512(v, nibble);
                let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                for r in 0..R {
                    let xp = x.qs[r].add(b * QK8_0 + 4 * c);
                    lo_dot[r] = _mm512_dpbusd_epi32(lo_dot[r], lo, x4(xp));
                    hi_dot[r] = _mm512_dpbusd_epi32(hi_dot[r], hi, x4(xp.add(16)));
                }
            }
            for r in 0..R {
                let s = x.sums[r].add(2 * b);
                let offset = _mm512_set1_epi32(8 * (i32::from(*s) + i32::from(*s.add(1))));
                let dot = _mm512_sub_epi32(_mm512_add_epi32(lo_dot[r], hi_dot[r]), offset);
                let scale = _mm512_mul_ps(wd, _mm512_set1_ps(*x.d[r].add(b)));
                sum[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, sum[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(acc[r].as_mut_ptr(), sum[r]);
        }
    }

    /// Q4_K (`FIVE` false) or Q5_K (`FIVE` true) tile x `R` input rows ([`scalar::q45k`]'s order):
    /// per sub-block pair, `vpdpbusd` sums of the low and the high nibbles (Q5_K: with the fifth
    /// bit), then times the sub-block scales (`vpmulld`), as integers; the mins through
    /// `vpmaddwd`, paired with the input's 32-value sums.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q45k<const R: usize, const FIVE: bool>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        let format = if FIVE { QFormat::Q5K } else { QFormat::Q4K };
        let nibble = _mm512_set1_epi8(0x0F);
        let bit4 = _mm512_set1_epi8(0x10);
        let mut sum = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let g = tile.add(b * format.group_bytes());
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(g as *const __m256i));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(g.add(Q4K_DMIN) as *const __m256i));
            let mut isum = [_mm512_setzero_si512(); R];
            for t in 0..4 {
                let shift = _mm_cvtsi32_si128(2 * t as i32);
                let mut dlo = [_mm512_setzero_si512(); R];
                let mut dhi = [_mm512_setzero_si512(); R];
                for c in 0..8 {
                    let v = _mm512_loadu_si512(g.add(Q4K_QS + (8 * t + c) * 64) as *const __m512i);
                    let mut lo = _mm512_and_si512(v, nibble);
                    let mut hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                    if FIVE {
                        // Bits 2t and 2t + 1 of each byte moved to bit 4.
                        let p = g.add(Q5K_QH + c * 64) as *const __m512i;
                        let qh = _mm512_srl_epi16(_mm512_loadu_si512(p), shift);
                        lo = _mm512_or_si512(lo, _mm512_and_si512(_mm512_slli_epi16(qh, 4), bit4));
                        hi = _mm512_or_si512(hi, _mm512_and_si512(_mm512_slli_epi16(qh, 3), bit4));
                    }
                    for r in 0..R {
                        let xp = x.qs[r].add(b * QK_K + 64 * t + 4 * c);
                        dlo[r] = _mm512_dpbusd_epi32(dlo[r], lo, x4(xp));
                        dhi[r] = _mm512_dpbusd_epi32(dhi[r], hi, x4(xp.add(32)));
                    }
                }
                let sc_lo = u8_lanes(g.add(Q4K_SC + 2 * t * TILE));
                let sc_hi = u8_lanes(g.add(Q4K_SC + (2 * t + 1) * TILE));
                for r in 0..R {
                    let s = _mm512_add_epi32(
                        _mm512_mullo_epi32(dlo[r], sc_lo),
                        _mm512_mullo_epi32(dhi[r], sc_hi),
                    );
                    isum[r] = _mm512_add_epi32(isum[r], s);
                }
            }
            let m: [__m512i; 4] = std::array::from_fn(|q| {
                _mm512_cvtepu8_epi16(_mm256_loadu_si256(g.add(Q4K_M + 32 * q) as *const __m256i))
            });
            for r in 0..R {
                let pairs = super::avx2::bsum_pairs(x.sums[r].add(16 * b));
                let mut msum = _mm512_madd_epi16(m[0], _mm512_set1_epi32(pairs[0]));
                for q in 1..4 {
                    let s = _mm512_madd_epi16(m[q], _mm512_set1_epi32(pairs[q]));
                    msum = _mm512_add_epi32(msum, s);
                }
                let xd = _mm512_set1_ps(*x.d[r].add(b));
                let s = _mm512_fmadd_ps(_mm512_mul_ps(d, xd), _mm512_cvtepi32_ps(isum[r]), sum[r]);
                sum[r] = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, xd), _mm512_cvtepi32_ps(msum), s);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(acc[r].as_mut_ptr(), sum[r]);
        }
    }

    /// Q6_K tile x `R` input rows ([`scalar::q6k`]'s order): `vpdpbusd` sums of the six-bit
    /// values (unsigned, <= 63) per 16-value sub-block, times the signed scales (`vpmulld`);
    /// `32 * scale * bsum` subtracted once per superblock.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q6k<const R: usize>(
        tile: *const u8,
        nb: usize,
        x: &RowPtrs,
        acc: &mut [[f32; TILE]; ROWS_PER_PASS],
    ) {
        let nibble = _mm512_set1_epi8(0x0F);
        let pair = _mm512_set1_epi8(0x30);
        let mut sum = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let g = tile.add(b * QFormat::Q6K.group_bytes());
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(g as *const __m256i));
            let mut isum = [_mm512_setzero_si512(); R];
            for h in 0..2 {
                for hc in 0..2 {
                    let mut dots = [[_mm512_setzero_si512(); 4]; R];
                    for c in 4 * hc..4 * hc + 4 {
                        let at =
                            |offset: usize| _mm512_loadu_si512(g.add(offset) as *const __m512i);
                        let a = at(Q6K_QL + (16 * h + c) * 64);
                        let bb = at(Q6K_QL + (16 * h + 8 + c) * 64);
                        let qh = at(Q6K_QH + (8 * h + c) * 64);
                        let q = [
                            _mm512_or_si512(
                                _mm512_and_si512(a, nibble),
                                _mm512_and_si512(_mm512_slli_epi16(qh, 4), pair),
                            ),
                            _mm512_or_si512(
                                _mm512_and_si512(bb, nibble),
                                _mm512_and_si512(_mm512_slli_epi16(qh, 2), pair),
                            ),
                            _mm512_or_si512(
                                _mm512_and_si512(_mm512_srli_epi16(a, 4), nibble),
                                _mm512_and_si512(qh, pair),
                            ),
                            _mm512_or_si512(
                                _mm512_and_si512(_mm512_srli_epi16(bb, 4), nibble),
                                _mm512_and_si512(_mm512_srli_epi16(qh, 2), pair),
                            ),
                        ];
                        for r in 0..R {
                            let xp = x.qs[r].add(b * QK_K + 128 * h + 4 * c);
                            for p in 0..4 {
                                let xv = x4(xp.add(32 * p));
                                dots[r][p] = _mm512_dpbusd_epi32(dots[r][p], q[p], xv);
                            }
                        }
                    }
                    for p in 0..4 {
                        let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                            g.add(Q6K_SC + (8 * h + 2 * p + hc) * TILE) as *const __m128i,
                        ));
                        for r in 0..R {
                            let s = _mm512_mullo_epi32(dots[r][p], sc);
                            isum[r] = _mm512_add_epi32(isum[r], s);
                        }
                    }
                }
            }
            let mut osum = [_mm512_setzero_si512(); R];
            for s in 0..16 {
                let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                    g.add(Q6K_SC + s * TILE) as *const __m128i
                ));
                for r in 0..R {
                    let bsum = _mm512_set1_epi32(i32::from(*x.sums[r].add(16 * b + s)));
                    osum[r] = _mm512_add_epi32(osum[r], _mm512_mullo_epi32(sc, bsum));
                }
            }
            for r in 0..R {
                let total = _mm512_sub_epi32(isum[r], _mm512_slli_epi32(osum[r], 5));
                let xd = _mm512_set1_ps(*x.d[r].add(b));
                let scale = _mm512_mul_ps(d, xd);
                sum[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(total), sum[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(acc[r].as_mut_ptr(), sum[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    use super::super::cpu_gemm::tests::values;
    use super::*;

    fn quantized(n: usize, k: usize, dtype: GgmlDType) -> QTensor {
        let w = Tensor::from_vec(values(n * k, 11), (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, dtype).unwrap()
    }

    fn paths() -> impl Iterator<Item = QPath> {
        QPath::ALL.into_iter().filter(|p| p.available())
    }

    const FORMATS: [(GgmlDType, QFormat); 5] = [
        (GgmlDType::Q8_0, QFormat::Q8_0),
        (GgmlDType::Q4_0, QFormat::Q4_0),
        (GgmlDType::Q4K, QFormat::Q4K),
        (GgmlDType::Q5K, QFormat::Q5K),
        (GgmlDType::Q6K, QFormat::Q6K),
    ];

    /// Every SIMD quantizer gives the scalar reference's values, scales and sums exactly.
    #[test]
    fn quantizers_match_the_reference() {
        let (rows, k) = (9, 768);
        let mut x = values(rows * k, 5);
        x[..256].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        x[300] = 1e-3; // ties and tiny values
        for kind in [QInputKind::Q8_0, QInputKind::Q8K] {
            let want = QInput::quantize(kind, &x, rows, k, QPath::Scalar);
            assert!(want.qs.iter().all(|&q| (-127..=127).contains(&q)));
            for path in paths() {
                let got = QInput::quantize(kind, &x, rows, k, path);
                assert_eq!(got.qs, want.qs, "{kind:?} {path:?}: values");
                assert_eq!(got.d, want.d, "{kind:?} {path:?}: scales");
                assert_eq!(got.sums, want.sums, "{kind:?} {path:?}: sums");
            }
        }
    }

    /// Every path gives the scalar reference's bits, on odd row counts (1, 7, 32, 513: passes of
    /// 4 with every remainder), depths of several blocks (an even and an odd count of Q8_0
    /// blocks) and an output count that is not a
    /// multiple of the 16-row tile (the padded tail).
    #[test]
    fn paths_are_bitwise_the_reference() {
        let n = 16 * 2 + 5;
        // 24 and 25 Q8_0 blocks (the AVX-512 kernel takes two per pass), 3 superblocks.
        for ((dtype, format), k) in FORMATS.into_iter().flat_map(|f| [(f, 768usize), (f, 800)]) {
            if !k.is_multiple_of(format.block()) {
                continue;
            }
            let packed = QPackedWeight::new(&quantized(n, k, dtype))
                .unwrap()
                .unwrap();
            assert_eq!(packed.format(), format);
            for rows in [1, 7, 32, 513] {
                let x = values(rows * k, rows as u64);
                let input = QInput::quantize(format.input_kind(), &x, rows, k, QPath::Scalar);
                let want = packed.matmul_t(&input, QPath::Scalar);
                assert_eq!(want.len(), rows * n);
                for path in paths() {
                    let got = packed.matmul_t(&input, path);
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{format:?} {path:?} {rows} rows");
                }
            }
        }
    }

    /// The error against the f32 product with the dequantized weight is no larger than that of
    /// candle's `QMatMul` (llama.cpp's kernels: `vec_dot` over the same block types, inputs
    /// quantized the same way) on the same data: RMS within 1.1x, the largest within 1.5x. Also
    /// the packed size: within 1.1x of the file's blocks.
    #[test]
    fn error_is_that_of_llama_cpp_kernels() {
        let (n, k) = (16 * 5 + 3, 1024);
        for (dtype, format) in FORMATS {
            let qt = quantized(n, k, dtype);
            let file_bytes = qt.storage_size_in_bytes() as f64;
            let w = qt.dequantize(&Device::Cpu).unwrap();
            let w64: Vec<f64> = w
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect();
            let packed = QPackedWeight::new(&qt).unwrap().unwrap();
            let padded = n.div_ceil(TILE) * TILE;
            assert!(packed.weight_bytes() as f64 <= 1.1 * file_bytes * padded as f64 / n as f64);
            let candle = QMatMul::from_qtensor(qt).unwrap();
            for rows in [1, 7, 32] {
                let x = values(rows * k, 100 + rows as u64);
                let xt = Tensor::from_vec(x.clone(), (rows, k), &Device::Cpu).unwrap();
                let theirs = candle
                    .forward(&xt)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let input = QInput::quantize(format.input_kind(), &x, rows, k, QPath::Scalar);
                let ours = packed.matmul_t(&input, QPath::Scalar);
                let (mut se_ours, mut se_theirs, mut max_ours, mut max_theirs) =
                    (0f64, 0f64, 0f64, 0f64);
                for r in 0..rows {
                    for i in 0..n {
                        let exact: f64 = (0..k)
                            .map(|j| f64::from(x[r * k + j]) * w64[i * k + j])
                            .sum();
                        let (eo, et) = (
                            f64::from(ours[r * n + i]) - exact,
                            f64::from(theirs[r * n + i]) - exact,
                        );
                        se_ours += eo * eo;
                        se_theirs += et * et;
                        max_ours = max_ours.max(eo.abs());
                        max_theirs = max_theirs.max(et.abs());
                    }
                }
                let count = (rows * n) as f64;
                let (rms_ours, rms_theirs) = ((se_ours / count).sqrt(), (se_theirs / count).sqrt());
                eprintln!("{format:?} rows {rows}: rms {rms_ours:.3e} vs candle {rms_theirs:.3e}, max {max_ours:.3e} vs {max_theirs:.3e}");
                assert!(rms_theirs > 0.0, "{format:?}: candle's error is measured");
                assert!(
                    rms_ours <= 1.1 * rms_theirs,
                    "{format:?} rows {rows}: rms {rms_ours} vs {rms_theirs}"
                );
                assert!(
                    max_ours <= 1.5 * max_theirs,
                    "{format:?} rows {rows}: max {max_ours} vs {max_theirs}"
                );
            }
        }
    }

    /// Not a check: the throughput of every format and path on one 0.95B-shape layer (MLP up,
    /// 5632 x 2048, 256 input rows, one thread), for profiling. Run it in an optimised build:
    /// `cargo test --release -p fastdllm-models --lib qgemm_throughput -- --ignored --nocapture`
    /// (`QGEMM_BENCH_FORMATS=q4k,q6k` picks formats).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn qgemm_throughput() {
        let (n, k, rows) = (5632, 2048, 256);
        let only = std::env::var("QGEMM_BENCH_FORMATS").unwrap_or_default();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for (dtype, format) in FORMATS {
            let name = format!("{format:?}").to_lowercase();
            if !only.is_empty() && !only.split(',').any(|f| f == name) {
                continue;
            }
            let packed = QPackedWeight::new(&quantized(n, k, dtype))
                .unwrap()
                .unwrap();
            let x = values(rows * k, 7);
            let input = QInput::quantize(format.input_kind(), &x, rows, k, QPath::Scalar);
            for path in paths().filter(|p| *p != QPath::Scalar) {
                pool.install(|| {
                    // This thread's time on a CPU (ns; Linux `schedstat`), so that other processes
                    // on a shared host do not count.
                    let cpu_ns = || {
                        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
                        stat.split(' ').next().unwrap().parse::<f64>().unwrap()
                    };
                    packed.matmul_t(&input, path);
                    let reps = 5;
                    let (start, cpu) = (std::time::Instant::now(), cpu_ns());
                    for _ in 0..reps {
                        std::hint::black_box(packed.matmul_t(&input, path));
                    }
                    let secs = (cpu_ns() - cpu) / 1e9 / reps as f64;
                    let wall = start.elapsed().as_secs_f64() / reps as f64;
                    let gops = 2.0 * (n * k * rows) as f64 / secs / 1e9;
                    eprintln!(
                        "{name} {}: {:.1} ms CPU ({:.1} ms wall), {gops:.0} GOP/s per CPU-second",
                        path.name(),
                        secs * 1e3,
                        wall * 1e3
                    );
                });
            }
        }
    }

    /// Formats, devices and shapes the kernels do not take are left to candle.
    #[test]
    fn other_formats_and_shapes_are_not_packed() {
        for dtype in [GgmlDType::Q5_0, GgmlDType::Q3K, GgmlDType::F16] {
            assert!(
                QPackedWeight::new(&quantized(32, 256, dtype))
                    .unwrap()
                    .is_none(),
                "{dtype:?}"
            );
        }
        let w = Tensor::from_vec(values(2 * 16 * 32, 3), (2, 16, 32), &Device::Cpu).unwrap();
        let three_d = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        assert!(QPackedWeight::new(&three_d).unwrap().is_none());
    }
}

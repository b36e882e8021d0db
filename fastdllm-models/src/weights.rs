//! Finding and memory-mapping a checkpoint's safetensors, reading weights with clear errors, and
//! random weights for benches.
//!
//! Reference: Hugging Face's checkpoint layout: `model.safetensors`, or shards listed by the
//! `weight_map` of `model.safetensors.index.json`. Deviations: local directories only (hub
//! downloads are the `hub` module's, behind the `hub` feature); a missing or mis-shaped tensor is
//! reported by its full checkpoint name with the expected and actual shape instead of candle's
//! multi-line error; the random-weight backend draws on the target device (`Tensor::randn`) so an
//! 8B-shaped bench model never exists on the host, and on the CPU (where candle's generator cannot
//! be seeded) it uses a seeded generator.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use rayon::prelude::*;

use crate::config::regular_file;
use crate::gguf::{dense_from_bytes, qtensor_from_bytes, unpermute_rope_rows, GgufFile};
use crate::layers::cpu_gemm;
use crate::layers::embedding::Embedding;
use crate::layers::linear::Linear;
use crate::layers::mlp::Mlp;
use crate::quant::QuantType;
use crate::transformer::{plain, ExpertNames};
use crate::{Error, Result};

/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// Standard deviation of the random weights of [`crate::random_model`] (the usual `init_std`).
pub const RANDOM_WEIGHT_STD: f64 = 0.02;

/// The safetensors files of the checkpoint in `dir`: `model.safetensors` when present, otherwise
/// the distinct shards named by `model.safetensors.index.json` (sorted). Every file must be a
/// regular file ([`Error::NotRegularFile`]) that resolves, symlinks followed, inside `dir` (or
/// inside the `blobs/` folder of a Hugging Face cache repository when `dir` is one of its
/// `snapshots/<revision>` folders, whose files are symlinks there).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SINGLE_FILE);
    if regular_file(&single, "model weights (model.safetensors)")? {
        confine(dir, &single, &single)?;
        return Ok(vec![single]);
    }
    let index = dir.join(SHARD_INDEX);
    if !regular_file(&index, "shard index")? {
        return Err(Error::MissingFile {
            path: single,
            what: format!(
                "model weights (neither {SINGLE_FILE} nor {SHARD_INDEX} is in the directory)"
            ),
        });
    }
    let shards = shard_names(&index)?;
    let mut files = Vec::with_capacity(shards.len());
    for shard in shards {
        let path = dir.join(&shard);
        if !regular_file(&path, "weight shard")? {
            return Err(Error::ShardIndex {
                path: index,
                message: format!(
                    "shard {shard:?} listed in weight_map is missing ({} not found)",
                    path.display()
                ),
            });
        }
        confine(dir, &path, &index)?;
        files.push(path);
    }
    Ok(files)
}

/// The distinct shard file names listed by the `weight_map` of a `model.safetensors.index.json`
/// (sorted), each a relative path inside the model directory (no absolute path, no `..`).
///
/// Errors: [`Error::Io`] / [`Error::Json`] for an unreadable or malformed file,
/// [`Error::ShardIndex`] for a missing or empty `weight_map`, a value that is not a string, or a
/// path that leaves the directory.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::json(index, &text, &e))?;
    let index = index.to_path_buf();
    let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(Error::ShardIndex {
            path: index,
            message:
                "no `weight_map` object (expected {\"weight_map\": {tensor name: shard file}})"
                    .into(),
        });
    };
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            return Err(Error::ShardIndex {
                path: index,
                message: format!("weight_map[{tensor:?}] = {file} is not a file name"),
            });
        };
        // Shards must live in the model directory: refuse absolute paths and `..`.
        if !Path::new(file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(Error::ShardIndex {
                path: index,
                message: format!("weight_map[{tensor:?}] = {file:?}: shard paths must be relative to the model directory"),
            });
        }
        shards.insert(file.to_string());
    }
    if shards.is_empty() {
        return Err(Error::ShardIndex {
            path: index,
            message: "`weight_map` is empty".into(),
        });
    }
    Ok(shards.into_iter().collect())
}

/// Checks that `path` resolves (symlinks followed) inside `dir`, or inside the `blobs/` folder
/// of the Hugging Face cache repository `dir` is a snapshot of. `source` names the file that
/// pointed at `path` in the error.
fn confine(dir: &Path, path: &Path, source: &Path) -> Result<()> {
    let canon = |p: &Path| {
        p.canonicalize().map_err(|e| Error::Io {
            path: p.to_path_buf(),
            source: e,
        })
    };
    let root = canon(dir)?;
    let real = canon(path)?;
    let hf_blobs = root
        .parent()
        .filter(|snapshots| snapshots.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
        .map(|repo| repo.join("blobs"));
    if real.starts_with(&root) || hf_blobs.is_some_and(|b| real.starts_with(b)) {
        return Ok(());
    }
    Err(Error::ShardIndex {
        path: source.to_path_buf(),
        message: format!(
            "{} resolves to {}, outside the model directory {} (weight files must stay inside it)",
            path.display(),
            real.display(),
            root.display()
        ),
    })
}

/// Checks every tensor of the safetensors `files` before any is loaded: a float dtype (F32, F16,
/// BF16, F64; [`Error::TensorDType`] otherwise) and only finite values
/// ([`Error::NonFiniteTensor`]), scanning the raw little-endian bits in parallel (an element is
/// non-finite when its exponent bits are all ones). Returns every tensor name.
///
/// Cost: one read of the checkpoint's bytes, memory-bandwidth bound and parallel; the load
/// copies the same bytes right after, so the scan pays no extra disk read (measured by the
/// ignored test `scan_cost` in `tests/weight_scan.rs`). Each tensor's mapped pages are released
/// once it is scanned, so the scan holds at most one tensor's pages (lean loading, see
/// [`mmap_var_builder`]).
pub fn check_weights(files: &[PathBuf]) -> Result<BTreeSet<String>> {
    use safetensors::Dtype;
    let mut names = BTreeSet::new();
    for path in files {
        // SAFETY: read-only mapping of a file nothing in this process writes (see
        // `mmap_var_builder`); the views are only read during this call.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path)? };
        for (name, view) in st.tensors() {
            let data = view.data();
            let found = match view.dtype() {
                Dtype::F32 => non_finite::<4>(data, 0x7f80_0000),
                Dtype::F16 => non_finite::<2>(data, 0x7c00),
                Dtype::BF16 => non_finite::<2>(data, 0x7f80),
                Dtype::F64 => non_finite::<8>(data, 0x7ff0_0000_0000_0000),
                other => {
                    return Err(Error::TensorDType {
                        name,
                        path: path.clone(),
                        dtype: format!("{other:?}"),
                    })
                }
            };
            release_pages(data);
            if let Some((count, first)) = found {
                return Err(Error::NonFiniteTensor {
                    name,
                    path: path.clone(),
                    count,
                    first,
                });
            }
            names.insert(name);
        }
    }
    Ok(names)
}

/// `(count, first flat index)` of the elements of width `W` bytes whose bits have every bit of
/// `exponent` set (NaN or infinity), or `None`.
fn non_finite<const W: usize>(data: &[u8], exponent: u64) -> Option<(usize, usize)> {
    const CHUNK: usize = 1 << 18;
    let bits = |e: &[u8]| {
        let mut b = [0u8; 8];
        b[..W].copy_from_slice(e);
        u64::from_le_bytes(b)
    };
    let bad = |e: &[u8]| bits(e) & exponent == exponent;
    data.par_chunks(CHUNK * W)
        .enumerate()
        .filter_map(|(c, chunk)| {
            let count = chunk.chunks_exact(W).filter(|e| bad(e)).count();
            (count > 0).then(|| {
                let first = chunk.chunks_exact(W).position(bad).unwrap_or(0);
                (count, c * CHUNK + first)
            })
        })
        .reduce_with(|a, b| (a.0 + b.0, a.1.min(b.1)))
}

/// Tensors of the checkpoint the config did not read (`names` minus `used`), ignoring the RoPE
/// `inv_freq` buffers some exporters store.
pub(crate) fn unused_tensors(names: &BTreeSet<String>, used: &BTreeSet<String>) -> Vec<String> {
    names
        .iter()
        .filter(|n| !used.contains(*n) && !n.ends_with("rotary_emb.inv_freq"))
        .cloned()
        .collect()
}

/// Memory-maps `files` into a [`VarBuilder`] that converts to `dtype` and places on `device`.
///
/// Lean loading: each tensor is copied out of the mapping (and converted) when the model asks
/// for it, and its mapped pages are released right after (`release_pages`), so the loading
/// process never holds the file's pages and the weights at once: peak RSS is the built weights
/// plus the largest tensor in flight (docs/BENCHMARKS.md, "Lean loading"), where candle's
/// `from_mmaped_safetensors` keeps every page it has read mapped until the builder is dropped
/// (2x the weights at the end of a load).
pub fn mmap_var_builder(
    files: &[PathBuf],
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    // SAFETY: the files are mapped read-only; a mapping is undefined behaviour only if the file
    // is truncated or rewritten while mapped. Nothing in this process writes checkpoint files,
    // and every tensor is copied out of the mapping (into a host or device buffer) while the
    // model is built, so the mapping is only read during `load_model`.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files)? };
    Ok(VarBuilder::from_backend(
        Box::new(ReleasingSafetensors(st)),
        dtype,
        device.clone(),
    ))
}

/// Memory-mapped safetensors whose pages are handed back to the kernel as each tensor is read
/// (see [`mmap_var_builder`]); otherwise candle's `SimpleBackend` for `MmapedSafetensors`,
/// conversion and shape check included.
struct ReleasingSafetensors(candle_core::safetensors::MmapedSafetensors);

impl SimpleBackend for ReleasingSafetensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, dev)?;
        if tensor.shape() != &s {
            Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: tensor.shape().clone(),
            }
            .bt())?
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        use candle_core::safetensors::Load;
        let view = self.0.get(name)?;
        // `load` copies the bytes into a buffer of its own (host or device), so the mapped pages
        // are no longer needed once it returns.
        let tensor = view.load(dev)?.to_dtype(dtype)?;
        release_pages(view.data());
        Ok(tensor)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_ok()
    }
}

/// Hands the pages of `data`, a slice of a read-only file mapping, back to the kernel
/// (`madvise(MADV_DONTNEED)`, widened to whole pages): they leave the process's RSS, and a later
/// read faults them in again from the file (the page cache), unchanged. Other platforms: a no-op.
fn release_pages(data: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        if data.is_empty() || !page.is_power_of_two() {
            return;
        }
        let start = data.as_ptr() as usize & !(page - 1);
        let end = (data.as_ptr() as usize + data.len()).div_ceil(page) * page;
        // SAFETY: `data` lies in a read-only file mapping (`MmapedSafetensors`, memmap2's
        // `Mmap`), which is page-aligned and covers whole pages, so `start..end` stays inside it. Dropping the
        // pages of such a mapping changes no byte a reader sees: the next access reads the same
        // file bytes back. A failure only leaves the pages resident, so the result is ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = data;
}

/// How a weight is initialised when it is drawn at random (ignored when it is read from a file).
#[derive(Debug, Clone, Copy)]
pub(crate) enum InitKind {
    /// Projection and embedding matrices: normal with std [`RANDOM_WEIGHT_STD`].
    Matrix,
    /// Biases: normal with std [`RANDOM_WEIGHT_STD`].
    Bias,
    /// RMSNorm weights: ones.
    Norm,
}

impl InitKind {
    fn hint(self) -> Init {
        match self {
            InitKind::Matrix | InitKind::Bias => Init::Randn {
                mean: 0.0,
                stdev: RANDOM_WEIGHT_STD,
            },
            InitKind::Norm => Init::Const(1.0),
        }
    }
}

/// Where a model's tensors come from, a description of it for error messages, and how linear
/// weights are stored (dense in the activation dtype, or quantized).
pub(crate) struct Weights<'a> {
    source: Source<'a>,
    location: String,
    /// Names read so far (to find checkpoint tensors the config leaves unused).
    used: Mutex<BTreeSet<String>>,
    device: Device,
    dtype: DType,
    quantize: Option<QuantType>,
    /// How many linear layers got each storage type (`"q8_0"`, `"f32"`, ...).
    linear_types: RefCell<BTreeMap<String, usize>>,
}

enum Source<'a> {
    /// Safetensors or random weights, in the builder's dtype (f32 when quantizing at load).
    Vars(VarBuilder<'a>),
    /// A llama.cpp GGUF file.
    Gguf(&'a GgufFile),
}

/// One weight of a (possibly fused) linear layer: `{name}.weight` of shape `(out, in)` and, when
/// the layer has biases, `{name}.bias` of shape `(out,)`.
pub(crate) struct LinearPart<'n> {
    pub(crate) name: &'n str,
    pub(crate) out_features: usize,
    /// `Some(heads)` when the stored rows are permuted for GGML's interleaved RoPE (LLaDA's
    /// `attn_q` / `attn_k` in GGUF files; see `gguf.rs`).
    pub(crate) rope_permuted_heads: Option<usize>,
}

impl<'a> Weights<'a> {
    /// Dense weights from `vb`, in its dtype.
    pub(crate) fn new(vb: VarBuilder<'a>, location: impl Into<String>) -> Self {
        Self::quantizing(vb, location, None)
    }

    /// Weights from `vb`, whose dtype is the activation dtype; linear layers quantized to
    /// `quantize` when set. The builder should then read f32 (see [`Weights::with_dtype`]).
    pub(crate) fn quantizing(
        vb: VarBuilder<'a>,
        location: impl Into<String>,
        quantize: Option<QuantType>,
    ) -> Self {
        Self {
            device: vb.device().clone(),
            dtype: vb.dtype(),
            source: Source::Vars(vb),
            location: location.into(),
            quantize,
            linear_types: RefCell::new(BTreeMap::new()),
            used: Mutex::default(),
        }
    }

    /// The tensors of a GGUF file, dense ones converted to `dtype` on `device`.
    pub(crate) fn gguf(file: &'a GgufFile, dtype: DType, device: &Device) -> Self {
        Self {
            source: Source::Gguf(file),
            location: file.path().display().to_string(),
            device: device.clone(),
            dtype,
            quantize: None,
            linear_types: RefCell::new(BTreeMap::new()),
            used: Mutex::default(),
        }
    }

    /// The activation dtype (dense tensors are converted to it), keeping what the builder reads.
    pub(crate) fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Where the tensors come from (file names, for messages).
    pub(crate) fn location(&self) -> &str {
        &self.location
    }

    /// The names read so far (safetensors and random weights; a GGUF file is checked by name
    /// in `gguf.rs`).
    pub(crate) fn used(&self) -> BTreeSet<String> {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Device the tensors are placed on.
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// Activation dtype: dense tensors are converted to it.
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether the tensors come from a GGUF file (llama.cpp's names).
    pub(crate) fn is_gguf(&self) -> bool {
        matches!(self.source, Source::Gguf(_))
    }

    /// Storage types of the linear layers built so far, e.g. `"q4_k x 24, q5_0 x 9"`.
    pub(crate) fn linear_summary(&self) -> String {
        self.linear_types
            .borrow()
            .iter()
            .map(|(t, n)| format!("{t} x {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn count(&self, kind: String) {
        *self.linear_types.borrow_mut().entry(kind).or_insert(0) += 1;
    }

    /// The tensor `name` (full checkpoint name, from the builder's root), checked against
    /// `shape`, in the activation dtype.
    pub(crate) fn get(&self, shape: &[usize], name: &str, init: InitKind) -> Result<Tensor> {
        match &self.source {
            Source::Vars(vb) => Ok(self.get_vars(vb, shape, name, init)?.to_dtype(self.dtype)?),
            Source::Gguf(file) => file.dense(name, shape, self.dtype, &self.device),
        }
    }

    /// The token embedding `name` of shape `(vocab, hidden)`: a GGUF table stored in fewer bytes
    /// than the dense one (a block type, or f16 / bf16 under f32 activations) keeps its bytes and
    /// its looked-up rows are dequantized per lookup, as llama.cpp's `get_rows` reads them
    /// ([`Embedding::Quantized`], same values as the dense table); anything else is the dense
    /// tensor of [`Weights::get`].
    pub(crate) fn embedding(&self, shape: (usize, usize), name: &str) -> Result<Embedding> {
        if let Source::Gguf(file) = &self.source {
            let (ggml, bytes) = file.raw(name, &[shape.0, shape.1])?;
            let dense_bytes = shape.0 * shape.1 * self.dtype.size_in_bytes();
            if ggml != GgmlDType::F32 && bytes.len() < dense_bytes {
                return Embedding::quantized(name, ggml, bytes, shape, self.dtype, &self.device);
            }
            return Ok(Embedding::Dense(dense_from_bytes(
                ggml,
                &bytes,
                &[shape.0, shape.1],
                self.dtype,
                &self.device,
            )?));
        }
        Ok(Embedding::Dense(self.get(
            &[shape.0, shape.1],
            name,
            InitKind::Matrix,
        )?))
    }

    fn get_vars(
        &self,
        vb: &VarBuilder,
        shape: &[usize],
        name: &str,
        init: InitKind,
    ) -> Result<Tensor> {
        let expected = Shape::from_dims(shape);
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        vb.get_with_hints(expected, name, init.hint())
            .map_err(|err| self.explain(name, shape, err))
    }

    /// A linear layer over rows of `in_features`, its weight the `parts` stacked along the output
    /// axis (a fused projection), biases when `bias`. Dense in the activation dtype, unless the
    /// weights are quantized at load (`quantize`) or stored quantized (GGUF).
    pub(crate) fn linear(
        &self,
        parts: &[LinearPart],
        in_features: usize,
        bias: bool,
    ) -> Result<Linear> {
        self.linear_quantized_to(parts, in_features, bias, self.quantize)
    }

    /// The router of a mixture-of-experts layer, `name` `(num_experts, hidden)`: like
    /// [`Weights::linear`] but never quantized at load, as `llama-quantize` never quantizes
    /// `ffn_gate_inp` (`llama-quant.cpp`), so `--quantize` routes like a llama.cpp quantized file
    /// (a GGUF router keeps its stored type, F32 in the converter's files).
    pub(crate) fn router(&self, name: &str, num_experts: usize, hidden: usize) -> Result<Linear> {
        self.linear_quantized_to(&[plain(name, num_experts)], hidden, false, None)
    }

    /// [`Weights::linear`] with the load-time quantization `quantize` (safetensors and random
    /// weights only).
    fn linear_quantized_to(
        &self,
        parts: &[LinearPart],
        in_features: usize,
        bias: bool,
        quantize: Option<QuantType>,
    ) -> Result<Linear> {
        let bias = if bias {
            let biases = parts
                .iter()
                .map(|p| {
                    self.get(
                        &[p.out_features],
                        &format!("{}.bias", p.name),
                        InitKind::Bias,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        match &self.source {
            Source::Vars(vb) => {
                let weights = parts
                    .iter()
                    .map(|p| {
                        self.get_vars(
                            vb,
                            &[p.out_features, in_features],
                            &format!("{}.weight", p.name),
                            InitKind::Matrix,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                let fused = if weights.len() == 1 {
                    weights[0].clone()
                } else {
                    Tensor::cat(&weights, 0)?
                };
                drop(weights);
                match quantize.and_then(|q| q.for_row(in_features)) {
                    Some(ggml) => {
                        let qt = QTensor::quantize(&fused, ggml)?;
                        self.count(ggml_name(ggml));
                        Linear::quantized(vec![qt], bias)
                    }
                    None => {
                        self.count(format!("{:?}", self.dtype).to_lowercase());
                        Linear::new(fused.to_dtype(self.dtype)?, bias)
                    }
                }
            }
            Source::Gguf(file) => {
                let mut stored = Vec::with_capacity(parts.len());
                for p in parts {
                    let shape = [p.out_features, in_features];
                    let (ggml, bytes) = file.raw(&format!("{}.weight", p.name), &shape)?;
                    let bytes = match p.rope_permuted_heads {
                        Some(heads) => unpermute_rope_rows(&bytes, p.out_features, heads),
                        None => bytes,
                    };
                    stored.push((ggml, bytes, shape));
                }
                self.stored_linear(stored, bias)
            }
        }
    }

    /// The SwiGLU experts of the MoE block `block` (a prefix ending in `.`): expert `e` has a
    /// fused gate/up `(2 * inter, hidden)` and a down `(hidden, inter)` projection, named by
    /// `names` (one tensor per expert in safetensors and random weights; stacked
    /// `(num_experts, out, in)` tensors in GGUF files, read once and split by expert, each expert
    /// keeping its stored block type). Quantized at load like [`Weights::linear`].
    ///
    /// Errors: a missing or mis-shaped tensor; per-expert names in a GGUF file or stacked names
    /// elsewhere.
    pub(crate) fn experts(
        &self,
        block: &str,
        names: &ExpertNames,
        num_experts: usize,
        hidden: usize,
        inter: usize,
    ) -> Result<Vec<Mlp>> {
        match (&self.source, names) {
            (
                Source::Vars(_),
                ExpertNames::PerExpert {
                    prefix,
                    gate,
                    up,
                    down,
                },
            ) => (0..num_experts)
                .map(|e| {
                    let name = |part: &str| format!("{block}{prefix}.{e}.{part}");
                    let (gate, up, down) = (name(gate), name(up), name(down));
                    let gate_up =
                        self.linear(&[plain(&gate, inter), plain(&up, inter)], hidden, false)?;
                    let down = self.linear(&[plain(&down, hidden)], inter, false)?;
                    Ok(Mlp::new(gate_up, down, inter))
                })
                .collect(),
            (Source::Gguf(file), ExpertNames::Stacked { gate, up, down }) => {
                let split = |part: &str, out: usize, input: usize| -> Result<Vec<_>> {
                    let name = format!("{block}{part}.weight");
                    let (ggml, bytes) = file.raw(&name, &[num_experts, out, input])?;
                    let per = bytes.len() / num_experts;
                    Ok(bytes
                        .chunks_exact(per)
                        .map(|b| (ggml, b.to_vec(), [out, input]))
                        .collect())
                };
                let gates = split(gate, inter, hidden)?;
                let ups = split(up, inter, hidden)?;
                let downs = split(down, hidden, inter)?;
                gates
                    .into_iter()
                    .zip(ups)
                    .zip(downs)
                    .map(|((g, u), d)| {
                        let gate_up = self.stored_linear(vec![g, u], None)?;
                        let down = self.stored_linear(vec![d], None)?;
                        Ok(Mlp::new(gate_up, down, inter))
                    })
                    .collect()
            }
            _ => Err(Error::config(
                "experts",
                format!("{names:?}"),
                format!(
                    "not how {} stores the experts of `{block}`",
                    self.location()
                ),
            )),
        }
    }

    /// A linear layer from GGUF parts `(type, bytes, (out_i, in))` stacked along the output axis:
    /// dense in the activation dtype when every part is a float type, else quantized (one block
    /// tensor when the parts share a type).
    fn stored_linear(
        &self,
        stored: Vec<(GgmlDType, Vec<u8>, [usize; 2])>,
        bias: Option<Tensor>,
    ) -> Result<Linear> {
        let in_features = stored.first().map_or(0, |(_, _, s)| s[1]);
        let is_float =
            |t: GgmlDType| matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if stored.iter().all(|(t, _, _)| is_float(*t)) {
            // f16 / bf16 tensors stay in half precision where the CPU GEMM packs them (it
            // widens them in the kernel); elsewhere they take the activation dtype.
            let half = match stored[0].0 {
                GgmlDType::F16 => Some(DType::F16),
                GgmlDType::BF16 => Some(DType::BF16),
                _ => None,
            };
            let dtype = half
                .filter(|_| stored.iter().all(|(t, _, _)| *t == stored[0].0))
                .filter(|_| self.device.is_cpu() && cpu_gemm::cpu_supported())
                .unwrap_or(self.dtype);
            let dense = stored
                .iter()
                .map(|(t, b, s)| dense_from_bytes(*t, b, s, dtype, &self.device))
                .collect::<Result<Vec<_>>>()?;
            let fused = if dense.len() == 1 {
                dense[0].clone()
            } else {
                Tensor::cat(&dense, 0)?
            };
            self.count(format!("{dtype:?}").to_lowercase());
            return Linear::new(fused, bias);
        }
        let first = stored[0].0;
        let qts = if stored.iter().all(|(t, _, _)| *t == first) {
            // One block type: the rows concatenate byte for byte.
            let out: usize = stored.iter().map(|(_, _, s)| s[0]).sum();
            let bytes: Vec<u8> = stored
                .iter()
                .flat_map(|(_, b, _)| b.iter().copied())
                .collect();
            vec![qtensor_from_bytes(
                first,
                &bytes,
                &[out, in_features],
                &self.device,
            )?]
        } else {
            stored
                .iter()
                .map(|(t, b, s)| qtensor_from_bytes(*t, b, s, &self.device))
                .collect::<Result<Vec<_>>>()?
        };
        let kinds: Vec<String> = qts.iter().map(|q| ggml_name(q.dtype())).collect();
        self.count(kinds.join("+"));
        Linear::quantized(qts, bias)
    }

    fn explain(&self, name: &str, shape: &[usize], err: candle_core::Error) -> Error {
        match find_cause(&err) {
            Some(Cause::Missing) => Error::MissingTensor {
                name: name.to_string(),
                location: self.location.clone(),
            },
            Some(Cause::Shape(actual)) => Error::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual,
            },
            None => Error::Candle(
                err.context(format!("loading tensor `{name}` from {}", self.location)),
            ),
        }
    }
}

/// llama.cpp's lower-case name of a block type (`q8_0`, `q4_k`, `f32`).
pub(crate) fn ggml_name(t: GgmlDType) -> String {
    let s = format!("{t:?}").to_lowercase();
    match s.strip_suffix('k') {
        Some(base) if s.starts_with('q') => format!("{base}_k"),
        _ => s,
    }
}

enum Cause {
    Missing,
    Shape(Vec<usize>),
}

/// Looks through candle's wrappers (backtrace, context, path) for the two errors a checkpoint
/// mismatch produces.
fn find_cause(err: &candle_core::Error) -> Option<Cause> {
    use candle_core::Error as E;
    match err {
        E::CannotFindTensor { .. } => Some(Cause::Missing),
        E::UnexpectedShape { got, .. } => Some(Cause::Shape(got.dims().to_vec())),
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            find_cause(inner)
        }
        _ => None,
    }
}

/// A [`VarBuilder`] whose tensors are drawn at random directly on `device`: matrices and biases
/// `N(0, 0.02^2)`, norm weights ones.
///
/// On CUDA the device generator is seeded with `seed` (`Device::set_seed`) and every tensor is a
/// `Tensor::randn` on the device, converted there to `dtype`. On the CPU, whose candle generator
/// cannot be seeded, the values come from a seeded SplitMix64 + Box-Muller generator keyed by the
/// tensor name, so CPU models are reproducible too.
pub fn random_var_builder(dtype: DType, device: &Device, seed: u64) -> Result<VarBuilder<'static>> {
    if !device.is_cpu() {
        device.set_seed(seed)?;
    }
    Ok(VarBuilder::from_backend(
        Box::new(RandomBackend { seed }),
        dtype,
        device.clone(),
    ))
}

struct RandomBackend {
    seed: u64,
}

impl SimpleBackend for RandomBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match init {
            Init::Const(value) => {
                let t = Tensor::ones(shape, dtype, dev)?;
                if value == 1.0 {
                    Ok(t)
                } else {
                    t.affine(value, 0.0)
                }
            }
            Init::Randn { mean, stdev } => {
                if dev.is_cpu() {
                    let n = shape.elem_count();
                    let mut rng = SplitMix64::new(self.seed ^ fnv1a(name));
                    let data: Vec<f32> = (0..n)
                        .map(|_| (mean + stdev * rng.normal()) as f32)
                        .collect();
                    Tensor::from_vec(data, shape, dev)?.to_dtype(dtype)
                } else {
                    Tensor::randn(mean as f32, stdev as f32, shape, dev)?.to_dtype(dtype)
                }
            }
            other => candle_core::bail!("random weights: unsupported init {other:?} for {name}"),
        }
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64 (Steele, Lea, Flood 2014) with Box-Muller normals: small, seedable, good enough for
/// random test weights.
struct SplitMix64 {
    state: u64,
    spare: Option<f64>,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let phi = 2.0 * std::f64::consts::PI * self.uniform();
        self.spare = Some(r * phi.sin());
        r * phi.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lean backend gives candle's tensors bit for bit (every float dtype a checkpoint
    /// stores, converted to each activation dtype), also when a tensor is read again after its
    /// pages were released, and refuses a wrong shape as candle does.
    #[test]
    fn releasing_backend_equals_candles_mmap_loader() -> Result<()> {
        let path = std::env::temp_dir().join(format!(
            "fastdllm-lean-{}-{:?}.safetensors",
            std::process::id(),
            std::thread::current().id()
        ));
        let values: Vec<f32> = (0..3 * 4099).map(|i| (i as f32 * 0.37).sin()).collect();
        let base = Tensor::from_vec(values, (3, 4099), &Device::Cpu)?;
        let stored = [
            ("a", base.clone()),
            ("b", base.to_dtype(DType::BF16)?),
            ("c", base.to_dtype(DType::F16)?),
        ];
        candle_core::safetensors::save(&stored.iter().cloned().collect(), &path)?;
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let lean = mmap_var_builder(std::slice::from_ref(&path), dtype, &Device::Cpu)?;
            // SAFETY: the test's own file, not written while mapped.
            let candle = unsafe {
                VarBuilder::from_mmaped_safetensors(
                    std::slice::from_ref(&path),
                    dtype,
                    &Device::Cpu,
                )?
            };
            for (name, _) in &stored {
                let want = candle
                    .get((3, 4099), name)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?;
                for _ in 0..2 {
                    let got = lean.get((3, 4099), name)?;
                    assert_eq!(got.dtype(), dtype);
                    let got = got.to_dtype(DType::F32)?.flatten_all()?;
                    let (got, want) = (got.to_vec1::<f32>()?, want.to_vec1::<f32>()?);
                    assert!(got
                        .iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits()));
                }
            }
            let err = lean.get((4099, 3), "a").unwrap_err().to_string();
            assert!(err.contains("shape mismatch for a"), "{err}");
        }
        std::fs::remove_file(&path).ok();
        Ok(())
    }
}

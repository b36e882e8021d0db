//! GGUF files checked as llama.cpp checks them, before any tensor is read: the version, the
//! tensor layout (every tensor's type against its shape, its offset aligned and where the
//! previous tensor ends, no overlap, no gap, inside the file) and the metadata against the
//! tensors (block count, embedding length, head counts, vocabulary size). A file llama.cpp
//! refuses is refused here with one line naming the key or tensor, instead of being read as
//! garbage.
//!
//! Reference: llama.cpp's `gguf_init_from_file_impl` (ggml/src/gguf.cpp: version 1 refused,
//! rows a whole number of blocks, `offset` equal to the running size of the tensors before it,
//! padded to `general.alignment`, the data inside the file) and `llama_model_loader` (a tensor
//! whose shape does not follow from the metadata is "wrong shape"; a block count that does not
//! match the `blk.N` tensors leaves tensors missing or unused). Deviation: the tensors are taken
//! in offset order, not in header order (the same bytes are accepted whenever llama.cpp's order
//! is the offset order, as every writer produces).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};

use crate::{Error, Result};

/// The GGUF versions read (llama.cpp's `GGUF_VERSION` is 3; version 1 stored 32-bit counts and
/// is refused by llama.cpp too).
pub const GGUF_VERSIONS: [u32; 2] = [2, 3];

/// The alignment of the data section when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
const DEFAULT_ALIGNMENT: u64 = 32;

/// Checks the version of the GGUF header at the start of `r`. Not a GGUF file (no magic) passes:
/// the header reader names that.
///
/// Errors ([`Error::Gguf`]): version 1 ("GGUF version 1 is not supported"), or any version
/// but [`GGUF_VERSIONS`].
pub fn check_version(path: &Path, r: &mut impl Read) -> Result<()> {
    let mut head = [0u8; 8];
    if r.read_exact(&mut head).is_err() || &head[..4] != b"GGUF" {
        return Ok(());
    }
    let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if GGUF_VERSIONS.contains(&version) {
        return Ok(());
    }
    let why = if version == 1 {
        "GGUF version 1 is not supported (llama.cpp dropped it too): convert the model again \
         with a current convert_hf_to_gguf.py"
            .to_string()
    } else {
        format!("GGUF version {version} is not supported (versions 2 and 3 are)")
    };
    Err(Error::gguf(path, why))
}

/// Bytes of a tensor, `None` when its element count overflows.
fn tensor_size(info: &TensorInfo) -> Option<u64> {
    let elems = info
        .shape
        .dims()
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))?;
    let dtype = info.ggml_dtype;
    (elems / dtype.block_size() as u64).checked_mul(dtype.type_size() as u64)
}

/// `general.alignment`, or the default (its value was checked to be a power of two before the
/// header was parsed).
fn alignment(content: &Content) -> u64 {
    uint(content, "general.alignment")
        .unwrap_or(DEFAULT_ALIGNMENT)
        .max(1)
}

/// GGML's name of a type (`F32`, `Q8_0`, ...).
fn ggml_type_name_of(t: candle_core::quantized::GgmlDType) -> String {
    crate::weights::ggml_name(t).to_uppercase()
}

/// A tensor as an error names it: `` `name` (Q8_0, shape [64, 64], 4352 bytes) ``.
fn describe(name: &str, info: &TensorInfo, size: u64) -> String {
    format!(
        "`{name}` ({}, shape {:?}, {size} bytes)",
        ggml_type_name_of(info.ggml_dtype),
        info.shape.dims()
    )
}

/// Checks the tensor layout of `content` (read from a file of `file_len` bytes): each tensor's
/// rows are whole blocks of its type and its size fits in 64 bits; taken in offset order, each
/// starts at a multiple of the alignment, exactly where the previous one ends (padded to the
/// alignment), and the last ends inside the file.
///
/// Errors ([`Error::Gguf`], naming the tensor and, for a misplaced one, the tensor before it).
pub fn check_layout(path: &Path, content: &Content, file_len: u64) -> Result<()> {
    let align = alignment(content);
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let row = dims.last().copied().unwrap_or(1);
        let block = info.ggml_dtype.block_size();
        if row % block != 0 {
            return Err(Error::gguf(
                path,
                format!(
                    "tensor `{name}` of type {} has rows of {row} values, not a whole number of its blocks of {block}",
                    ggml_type_name_of(info.ggml_dtype)
                ),
            ));
        }
        let Some(size) = tensor_size(info) else {
            return Err(Error::gguf(
                path,
                format!("tensor `{name}`: shape {dims:?} has more elements than 64 bits count"),
            ));
        };
        if info.offset % align != 0 {
            return Err(Error::gguf(
                path,
                format!(
                    "tensor `{name}` has data offset {}, not a multiple of the alignment {align}",
                    info.offset
                ),
            ));
        }
        tensors.push((info.offset, name.as_str(), info, size));
    }
    tensors.sort_by_key(|&(offset, name, _, _)| (offset, name));
    let mut expected = 0u64;
    let mut previous: Option<String> = None;
    for &(offset, name, info, size) in &tensors {
        if offset != expected {
            let what = if offset < expected {
                "overlaps"
            } else {
                "leaves a gap after"
            };
            let before = match &previous {
                Some(p) => format!("the tensor before it, {p}, which ends at {expected} (padded to the alignment {align})"),
                None => "the start of the data section (0)".to_string(),
            };
            return Err(Error::gguf(
                path,
                format!(
                    "tensor {} has data offset {offset}: it {what} {before}; a type, shape or offset is wrong",
                    describe(name, info, size)
                ),
            ));
        }
        let end = offset
            .checked_add(size)
            .and_then(|e| e.checked_next_multiple_of(align));
        let Some(end) = end else {
            return Err(Error::gguf(
                path,
                format!("tensor {} ends past 2^64 bytes", describe(name, info, size)),
            ));
        };
        expected = end;
        previous = Some(describe(name, info, size));
    }
    if let Some(&(offset, name, _, size)) = tensors.last() {
        let end = content
            .tensor_data_offset
            .saturating_add(offset)
            .saturating_add(size);
        if end > file_len {
            return Err(Error::gguf(
                path,
                format!(
                    "truncated: the file has {file_len} bytes but its tensors need {end} \
                     (tensor `{name}` ends at byte {end})"
                ),
            ));
        }
    }
    Ok(())
}

/// The value of an integer of any GGUF integer type, `None` for a negative one or another type.
pub(crate) fn non_negative(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(u64::from(*x)),
        Value::U16(x) => Some(u64::from(*x)),
        Value::U32(x) => Some(u64::from(*x)),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

/// An unsigned integer key.
fn uint(content: &Content, key: &str) -> Option<u64> {
    content.metadata.get(key).and_then(non_negative)
}

/// The length of an array key.
fn array_len(content: &Content, key: &str) -> Option<usize> {
    match content.metadata.get(key)? {
        Value::Array(a) => Some(a.len()),
        _ => None,
    }
}

/// Checks the metadata of `content` against its tensors, as llama.cpp's loader would find
/// them: `{arch}.block_count` against the `blk.N` tensors; `{arch}.embedding_length` against
/// the rows of `token_embd.weight`; `{arch}.attention.head_count` and `head_count_kv` against
/// each other and the rows of `blk.0.attn_k.weight`; the vocabulary (`tokenizer.ggml.tokens`,
/// `token_type`, `scores`) against the embedding rows. A key that is absent is left to the
/// config reader (which names what it needs).
///
/// Errors ([`Error::Gguf`], naming the key and the tensor).
pub fn check_metadata(path: &Path, content: &Content) -> Result<()> {
    let Some(Value::String(arch)) = content.metadata.get("general.architecture") else {
        return Ok(());
    };
    let key = |name: &str| format!("{arch}.{name}");
    let fail = |m: String| Err(Error::gguf(path, m));
    let blocks: BTreeSet<u64> = content
        .tensor_infos
        .keys()
        .filter_map(|n| n.strip_prefix("blk.")?.split('.').next()?.parse().ok())
        .collect();
    if let Some(count) = uint(content, &key("block_count")) {
        let found = blocks.last().map_or(0, |&b| b + 1);
        if count != found || blocks.len() as u64 != found {
            return fail(format!(
                "metadata key `{}` = {count}, but the file has tensors of {} blocks (blk.N for N in {:?})",
                key("block_count"),
                blocks.len(),
                blocks
            ));
        }
    }
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .map(|i| i.shape.dims().to_vec());
    let n_embd = uint(content, &key("embedding_length"));
    if let (Some(dims), Some(n_embd)) = (&embd, n_embd) {
        if dims.len() != 2 || dims[1] as u64 != n_embd {
            return fail(format!(
                "metadata key `{}` = {n_embd}, but tensor `token_embd.weight` has shape {dims:?} (rows of {} values)",
                key("embedding_length"),
                dims.last().copied().unwrap_or(0)
            ));
        }
    }
    // A head count of 0 or one that does not divide the embedding length is the config
    // reader's error (`GgufFile::config`); the checks below take a valid one.
    let heads = uint(content, &key("attention.head_count"))
        .filter(|&h| h > 0 && n_embd.is_some_and(|e| e % h == 0));
    let kv = uint(content, &key("attention.head_count_kv"));
    if let (Some(heads), Some(kv)) = (heads, kv) {
        if kv == 0 || heads % kv != 0 {
            return fail(format!(
                "metadata key `{}` = {kv}: must be a non-zero divisor of `{}` = {heads}",
                key("attention.head_count_kv"),
                key("attention.head_count")
            ));
        }
    }
    if let (Some(heads), Some(n_embd)) = (heads, n_embd) {
        let k = content.tensor_infos.get("blk.0.attn_k.weight");
        if let Some(k) = k {
            let kv = kv.unwrap_or(heads);
            let want = kv * (n_embd / heads);
            let rows = k.shape.dims().first().copied().unwrap_or(0) as u64;
            if rows != want {
                return fail(format!(
                    "metadata keys `{}` = {heads} and `{}` = {kv}: tensor `blk.0.attn_k.weight` has {rows} rows, expected {kv} heads x {} values = {want}",
                    key("attention.head_count"),
                    key("attention.head_count_kv"),
                    n_embd / heads
                ));
            }
        }
    }
    if let (Some(dims), Some(tokens)) = (&embd, array_len(content, "tokenizer.ggml.tokens")) {
        let rows = dims.first().copied().unwrap_or(0);
        if tokens != rows {
            return fail(format!(
                "metadata key `tokenizer.ggml.tokens` has {tokens} tokens, but tensor `token_embd.weight` has {rows} rows (one per token)"
            ));
        }
        for other in ["tokenizer.ggml.token_type", "tokenizer.ggml.scores"] {
            if let Some(n) = array_len(content, other).filter(|&n| n != tokens) {
                return fail(format!(
                    "metadata key `{other}` has {n} entries, but `tokenizer.ggml.tokens` has {tokens}"
                ));
            }
        }
    }
    Ok(())
}

//! LLaDA and Dream GGUF files as llama.cpp writes them: header, config, tokenizer and tensors.
//!
//! Reference: llama.cpp's `convert_hf_to_gguf.py` (`LLaDAModel`, `DreamModel`) and gguf-py's
//! key and tensor names (`gguf/constants.py`): architecture `llada` / `dream`, keys
//! `{arch}.block_count`, `{arch}.embedding_length`, `{arch}.feed_forward_length`,
//! `{arch}.attention.head_count[_kv]`, `{arch}.attention.layer_norm_rms_epsilon`,
//! `{arch}.rope.freq_base`, `{arch}.context_length`, `{arch}.attention.causal`,
//! `diffusion.shift_logits`, `tokenizer.ggml.*`; tensors `token_embd`, `blk.{i}.attn_{norm,q,k,v,
//! output}`, `blk.{i}.ffn_{norm,gate,up,down}`, `output_norm`, `output`. The file is read with
//! `candle_core::quantized::gguf_file`.
//!
//! LLaDA-MoE (`LLaDAMoEModel` of the converter, architecture `llada-moe`) adds
//! `{arch}.expert_count`, `{arch}.expert_used_count`, `{arch}.expert_feed_forward_length` and the
//! tensors `blk.{i}.attn_{q,k}_norm`, `blk.{i}.ffn_gate_inp` (router) and the experts stacked as
//! `blk.{i}.ffn_{gate,up,down}_exps` (`(experts, out, in)`); its q/k rows are not permuted (NEOX).
//!
//! What a loader must undo or tolerate:
//! * LLaDA's `attn_q` / `attn_k` rows are permuted for GGML's interleaved ("normal") RoPE (the
//!   converter's `LlamaModel.permute`: within each head, row `2i + half` holds the rotate-half row
//!   `half * d/2 + i`); they are un-permuted at load, on the stored bytes (a row of a quantized
//!   tensor is a whole number of blocks), so quantized weights stay quantized. Dream (NEOX RoPE)
//!   is stored unpermuted.
//! * f32 metadata: `layer_norm_rms_epsilon` and `freq_base` are stored as f32; they are widened
//!   through their shortest decimal (f32 `1e-5` -> f64 `1e-5`), which recovers config.json's value,
//!   so an f32 GGUF gives the same model as the safetensors checkpoint bit for bit.
//! * `diffusion.shift_logits` is absent in Dream files (llama.cpp then shifts, which is right
//!   for Dream); a value that contradicts the architecture is rejected.
//! * The vocabulary is rebuilt as a Hugging Face byte-level BPE tokenizer from `tokens`,
//!   `token_type` and `merges`. Merges that can never apply (a half or the result is not a token,
//!   or a half is a control token, which llama.cpp cuts out before BPE) are dropped instead of
//!   failing the `tokenizers` BPE builder; converter placeholders like `<|reserved_8|>
//!   <|reserved_8|>` are such merges.
//!
//! Deviations: only `tokenizer.ggml.model = "gpt2"` vocabularies with the `gpt-2`, `llama-bpe` /
//! `llama3` / `smaug-bpe` and `qwen2` pre-tokenizers are rebuilt (other vocabularies need a
//! `tokenizer.json` beside the file); out-of-vocabulary characters become `unk` tokens (one per
//! UTF-8 byte) where llama.cpp drops them; the chat template is the family's fixed template (the
//! Jinja `tokenizer.chat_template` is only checked for presence).

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{ggml_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use fastdllm_core::ModelFamily;

use crate::config::{
    ModelConfig, MoeConfig, DREAM_DEFAULT_ROPE_THETA, LLADA_DEFAULT_ROPE_THETA,
    LLADA_MOE_DEFAULT_ROPE_THETA,
};
use crate::quant::{ggml_type_name, CANDLE_GGML_TYPES};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The architectures (`general.architecture`) this crate loads.
pub const GGUF_ARCHITECTURES: [&str; 3] = ["llada", "llada-moe", "dream"];

/// An open GGUF file: its header (metadata and tensor index) and a handle to read tensors.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    file: Mutex<std::fs::File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish_non_exhaustive()
    }
}

/// Bytes of a tensor of `elems` values in `dtype`.
fn tensor_bytes(dtype: GgmlDType, elems: usize) -> usize {
    elems / dtype.block_size() * dtype.type_size()
}

impl GgufFile {
    /// Reads the header of `path` and checks it as llama.cpp does ([`crate::gguf_check`]).
    ///
    /// Errors ([`Error::Gguf`], naming the file): not a GGUF file, GGUF version 1, a truncated or
    /// corrupt header, a tensor type candle cannot run (named with GGML's type name), a tensor
    /// whose type, shape or offset disagrees with the layout, a tensor past the end of the file,
    /// metadata that disagrees with the tensors (naming the key and the tensor).
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let content = {
            let mut reader = std::io::BufReader::new(&mut file);
            crate::gguf_check::check_version(path, &mut reader)?;
            reader.seek(SeekFrom::Start(0)).map_err(io)?;
            // candle divides by `general.alignment` unchecked (0 is a division by zero).
            if let Some(alignment) = header_alignment(&mut reader, file_len).map_err(io)? {
                if alignment == 0 || !alignment.is_power_of_two() {
                    return Err(Error::gguf(
                        path,
                        format!(
                            "metadata key `general.alignment` = {alignment}: must be a \
                             non-zero power of two"
                        ),
                    ));
                }
            }
            reader.seek(SeekFrom::Start(0)).map_err(io)?;
            Content::read(&mut reader).map_err(|e| header_error(path, &e))?
        };
        // As llama.cpp: every tensor where the one before it ends, of the size its type and
        // shape give, inside the file (a truncated download fails here, at once); the metadata
        // against the tensors.
        crate::gguf_check::check_layout(path, &content, file_len)?;
        crate::gguf_check::check_metadata(path, &content)?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture`, checked to be one of [`GGUF_ARCHITECTURES`].
    pub fn architecture(&self) -> Result<&str> {
        let arch = self.string("general.architecture")?.ok_or_else(|| {
            Error::gguf(&self.path, "metadata key `general.architecture` is missing")
        })?;
        if GGUF_ARCHITECTURES.contains(&arch) {
            Ok(arch)
        } else {
            Err(Error::gguf(
                &self.path,
                format!(
                    "general.architecture = {arch:?}: unsupported; fastdllm loads \"llada\" \
                     (LLaDA), \"llada-moe\" (LLaDA-MoE) and \"dream\" (Dream) GGUF files"
                ),
            ))
        }
    }

    /// Whether the file has the tensor `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The `tokenizer.chat_template` string, when the file has one.
    pub fn chat_template_source(&self) -> Option<String> {
        self.content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
    }

    /// The BOS id every tokenization starts with when the file asks for it
    /// (`tokenizer.ggml.add_bos_token = true` and `tokenizer.ggml.bos_token_id`), as llama.cpp's
    /// `llama_tokenize(..., add_special = true)` adds it, templated prompts included; `None`
    /// when the file does not ask. Errors: a key of the wrong type.
    pub fn add_bos_token_id(&self) -> Result<Option<u32>> {
        if self.boolean("tokenizer.ggml.add_bos_token")? != Some(true) {
            return Ok(None);
        }
        self.id_key("tokenizer.ggml.bos_token_id")
    }

    /// Whether the file carries a chat template (`tokenizer.chat_template`).
    pub fn has_chat_template(&self) -> bool {
        self.content
            .metadata
            .contains_key("tokenizer.chat_template")
    }

    /// How many tensors of each GGML type the file holds, e.g. `{"F32": 9, "Q8_0": 30}`.
    pub fn type_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for info in self.content.tensor_infos.values() {
            *counts.entry(format!("{:?}", info.ggml_dtype)).or_insert(0) += 1;
        }
        counts
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::gguf(&self.path, message)
    }

    fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.err(format!("metadata key `{key}` = {v:?}: expected a string"))),
        }
    }

    fn integer(&self, key: &str) -> Result<Option<u64>> {
        let v = match self.value(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n = crate::gguf_check::non_negative(v);
        n.map(Some).ok_or_else(|| {
            self.err(format!(
                "metadata key `{key}` = {v:?}: expected a non-negative integer"
            ))
        })
    }

    fn usize_key(&self, key: &str) -> Result<Option<usize>> {
        self.integer(key)?
            .map(|n| {
                usize::try_from(n)
                    .map_err(|_| self.err(format!("metadata key `{key}` = {n}: too large")))
            })
            .transpose()
    }

    fn id_key(&self, key: &str) -> Result<Option<u32>> {
        self.integer(key)?
            .map(|n| {
                u32::try_from(n)
                    .map_err(|_| self.err(format!("metadata key `{key}` = {n}: not a token id")))
            })
            .transpose()
    }

    fn required(&self, key: &str) -> Result<usize> {
        self.usize_key(key)?
            .ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))
    }

    /// An f32 (or f64) value widened through its shortest decimal (see the module docs).
    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(x.to_string().parse().unwrap_or(f64::from(*x)))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(v) => Err(self.err(format!("metadata key `{key}` = {v:?}: expected a float"))),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(format!("metadata key `{key}` = {v:?}: expected a bool"))),
        }
    }

    /// The array at `key` with every item converted by `item` (`what` names the item type in
    /// the error); `None` when the key is absent.
    fn array<T>(
        &self,
        key: &str,
        what: &str,
        item: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        let bad = || self.err(format!("metadata key `{key}`: expected an array of {what}"));
        let Value::Array(items) = v else {
            return Err(bad());
        };
        items
            .iter()
            .map(|v| item(v).ok_or_else(bad))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.array(key, "strings", |v| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
    }

    fn integers(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.array(key, "integers", |v| match v {
            Value::I32(x) => Some(i64::from(*x)),
            Value::U32(x) => Some(i64::from(*x)),
            Value::I8(x) => Some(i64::from(*x)),
            Value::U8(x) => Some(i64::from(*x)),
            Value::I64(x) => Some(*x),
            _ => None,
        })
    }

    /// The routing of a `llada-moe` file: `expert_count`, `expert_used_count`; llama.cpp's routing
    /// options other than LLaDA-MoE's (softmax gating, weights neither renormalised nor scaled)
    /// are refused by key.
    fn moe_config(&self) -> Result<MoeConfig> {
        let k = |name: &str| format!("llada-moe.{name}");
        if self.boolean(&k("expert_weights_norm"))? == Some(true) {
            return Err(self.err(format!(
                "{} = true: renormalised top-k weights are not LLaDA-MoE's routing",
                k("expert_weights_norm")
            )));
        }
        if let Some(scale) = self.float(&k("expert_weights_scale"))? {
            if scale != 0.0 && scale != 1.0 {
                return Err(self.err(format!(
                    "{} = {scale}: scaled expert weights are not implemented",
                    k("expert_weights_scale")
                )));
            }
        }
        // llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX.
        const SOFTMAX: u64 = 1;
        if let Some(func) = self.integer(&k("expert_gating_func"))? {
            if func != SOFTMAX {
                return Err(self.err(format!(
                    "{} = {func}: only softmax gating ({SOFTMAX}) is implemented",
                    k("expert_gating_func")
                )));
            }
        }
        Ok(MoeConfig {
            num_experts: self.required(&k("expert_count"))?,
            num_experts_per_tok: self.required(&k("expert_used_count"))?,
        })
    }

    /// The model config from the metadata (and the vocabulary size from `token_embd`).
    pub fn config(&self) -> Result<ModelConfig> {
        let arch = self.architecture()?;
        let k = |name: &str| format!("{arch}.{name}");
        let hidden_size = self.required(&k("embedding_length"))?;
        let num_layers = self.required(&k("block_count"))?;
        let moe = arch == "llada-moe";
        // LLaDA-MoE: the experts' size (its `feed_forward_length` is the unused dense size).
        let intermediate_size = if moe {
            self.required(&k("expert_feed_forward_length"))?
        } else {
            self.required(&k("feed_forward_length"))?
        };
        let num_heads = self.required(&k("attention.head_count"))?;
        let num_kv_heads = self
            .usize_key(&k("attention.head_count_kv"))?
            .unwrap_or(num_heads);
        let max_seq_len = self.required(&k("context_length"))?;
        let eps_key = k("attention.layer_norm_rms_epsilon");
        let rms_norm_eps = self
            .float(&eps_key)?
            .ok_or_else(|| self.err(format!("metadata key `{eps_key}` is missing")))?;
        let default_theta = if arch == "llada" {
            LLADA_DEFAULT_ROPE_THETA
        } else if moe {
            LLADA_MOE_DEFAULT_ROPE_THETA
        } else {
            DREAM_DEFAULT_ROPE_THETA
        };
        let rope_theta = self.float(&k("rope.freq_base"))?.unwrap_or(default_theta);
        if self.boolean(&k("attention.causal"))? == Some(true) {
            return Err(self.err(format!(
                "{} = true: diffusion LMs attend bidirectionally (expected false)",
                k("attention.causal")
            )));
        }
        if let Some(kind) = self.string(&k("rope.scaling.type"))? {
            if kind != "none" {
                return Err(self.err(format!(
                    "{} = {kind:?}: RoPE scaling is not implemented",
                    k("rope.scaling.type")
                )));
            }
        }
        let heads_key = k("attention.head_count");
        if num_heads == 0 || hidden_size % num_heads != 0 {
            return Err(self.err(format!(
                "metadata key `{heads_key}` = {num_heads}: must be a non-zero divisor of \
                 `{}` = {hidden_size}",
                k("embedding_length")
            )));
        }
        let head_dim = hidden_size / num_heads;
        if let Some(rot) = self.usize_key(&k("rope.dimension_count"))? {
            if rot != head_dim {
                return Err(self.err(format!(
                    "{} = {rot}: partial RoPE is not implemented (expected the head size \
                     {hidden_size} / {num_heads} = {head_dim})",
                    k("rope.dimension_count")
                )));
            }
        }
        let shift = self.boolean("diffusion.shift_logits")?;
        let expected_shift = arch == "dream";
        if shift.is_some_and(|s| s != expected_shift) {
            return Err(self.err(format!(
                "diffusion.shift_logits = {}: {arch} models {} their logits",
                !expected_shift,
                if expected_shift {
                    "shift"
                } else {
                    "do not shift"
                }
            )));
        }
        let vocab_size = match self.content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims().first().copied().unwrap_or(0),
            None => return Err(self.missing_tensor("token_embd.weight")),
        };
        let mask_token_id = self.id_key("tokenizer.ggml.mask_token_id")?.ok_or_else(|| {
            self.err("metadata key `tokenizer.ggml.mask_token_id` is missing (a diffusion LM needs its [MASK] id)")
        })?;
        let mut eos_token_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = self.id_key(key)? {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
        let pad_token_id = match self.id_key("tokenizer.ggml.padding_token_id")? {
            Some(id) => id,
            None => *eos_token_ids.first().ok_or_else(|| {
                self.err("neither `tokenizer.ggml.padding_token_id` nor `tokenizer.ggml.eos_token_id` is set")
            })?,
        };
        let bos_token_id = self.id_key("tokenizer.ggml.bos_token_id")?;
        let config = ModelConfig {
            family: if arch == "llada" || moe {
                ModelFamily::Llada
            } else {
                ModelFamily::Dream
            },
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size,
            vocab_size,
            rms_norm_eps,
            rope_theta,
            max_seq_len,
            mask_token_id,
            eos_token_ids,
            pad_token_id,
            bos_token_id,
            // llama.cpp leaves `output.weight` out when the head is the embedding.
            tie_word_embeddings: !self.has_tensor("output.weight"),
            qk_norm: moe && self.has_tensor("blk.0.attn_q_norm.weight"),
            moe: if moe { Some(self.moe_config()?) } else { None },
        };
        config
            .validate()
            .map_err(|e| e.in_config_file(&self.path))?;
        Ok(config)
    }

    fn missing_tensor(&self, name: &str) -> Error {
        Error::MissingTensor {
            name: name.to_string(),
            location: self.path.display().to_string(),
        }
    }

    /// The stored type and bytes of tensor `name`, checked to have shape `shape` (candle order,
    /// `(rows, cols)` for a matrix).
    pub(crate) fn raw(&self, name: &str, shape: &[usize]) -> Result<(GgmlDType, Vec<u8>)> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.missing_tensor(name))?;
        if info.shape.dims() != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: info.shape.dims().to_vec(),
            });
        }
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        let cols = shape.last().copied().unwrap_or(1);
        if cols % block != 0 {
            return Err(self.err(format!(
                "tensor `{name}`: rows of {cols} values are not whole {:?} blocks of {block}",
                info.ggml_dtype
            )));
        }
        let mut bytes = vec![0u8; tensor_bytes(info.ggml_dtype, elems)];
        let start = self.content.tensor_data_offset + info.offset;
        let mut file = self
            .file
            .lock()
            .map_err(|_| self.err("file handle poisoned by a panic"))?;
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok((info.ggml_dtype, bytes))
    }

    /// Tensor `name` dequantized to `dtype` on `device`.
    pub(crate) fn dense(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let (ggml, bytes) = self.raw(name, shape)?;
        dense_from_bytes(ggml, &bytes, shape, dtype, device)
    }

    /// The Hugging Face tokenizer rebuilt from `tokenizer.ggml.*` (see the module docs).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        build_tokenizer(self).map(Tokenizer::from_inner)
    }
}

/// `bytes` of a `shape` tensor stored as `ggml`, dequantized (or just read, for float types) to
/// `dtype` on `device`.
pub(crate) fn dense_from_bytes(
    ggml: GgmlDType,
    bytes: &[u8],
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    // Float types need no dequantization: the stored values become a tensor as they are and are
    // converted once (the same conversion `dequantize` makes), without an f32 detour or a copy
    // on the side (lean loading: an f16 LM head no longer passes through a 4-byte table).
    let stored = match ggml {
        GgmlDType::F32 => Some(DType::F32),
        GgmlDType::F16 => Some(DType::F16),
        GgmlDType::BF16 => Some(DType::BF16),
        _ => None,
    };
    if let Some(stored) = stored {
        return Ok(Tensor::from_raw_buffer(bytes, stored, shape, device)?.to_dtype(dtype)?);
    }
    let qt = ggml_file::qtensor_from_ggml(ggml, bytes, shape.to_vec(), &Device::Cpu)?;
    Ok(qt
        .dequantize(&Device::Cpu)?
        .to_device(device)?
        .to_dtype(dtype)?)
}

/// `bytes` of a `shape` tensor stored as `ggml`, as a quantized tensor on `device`.
pub(crate) fn qtensor_from_bytes(
    ggml: GgmlDType,
    bytes: &[u8],
    shape: &[usize],
    device: &Device,
) -> Result<QTensor> {
    Ok(ggml_file::qtensor_from_ggml(
        ggml,
        bytes,
        shape.to_vec(),
        device,
    )?)
}

/// Undoes the converter's q/k permutation on the stored rows of a `(heads * d, in)` matrix:
/// rotate-half row `h*d + half*d/2 + i` is stored at row `h*d + 2i + half`.
pub(crate) fn unpermute_rope_rows(bytes: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row_bytes = bytes.len() / rows.max(1);
    let d = rows / heads.max(1);
    let mut out = Vec::with_capacity(bytes.len());
    for h in 0..heads {
        for half in 0..2 {
            for i in 0..d / 2 {
                let src = h * d + 2 * i + half;
                out.extend_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

/// The integer value of `general.alignment` in the metadata of the GGUF header at the start of
/// `r` (a file of `len` bytes), read without candle (which divides by it unchecked): `None` when
/// the key is absent, not an integer, or the header is not one this walk understands (candle's
/// reader then names the fault). Only I/O errors are errors.
fn header_alignment<R: Read + Seek>(r: &mut R, len: u64) -> std::io::Result<Option<u64>> {
    fn u32_of<R: Read>(r: &mut R) -> std::io::Result<u32> {
        let mut b = [0; 4];
        r.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64_of<R: Read>(r: &mut R) -> std::io::Result<u64> {
        let mut b = [0; 8];
        r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    // Version 1 stores counts and lengths as u32, later versions as u64.
    let length = |r: &mut R, v1: bool| {
        if v1 {
            u32_of(r).map(u64::from)
        } else {
            u64_of(r)
        }
    };
    let fixed = |ty: u32| match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    let mut head = [0; 8];
    if r.read_exact(&mut head).is_err() || &head[..4] != b"GGUF" {
        return Ok(None);
    }
    let v1 = u32::from_le_bytes(head[4..].try_into().unwrap_or_default()) == 1;
    let (Ok(_tensors), Ok(kvs)) = (length(r, v1), length(r, v1)) else {
        return Ok(None);
    };
    for _ in 0..kvs.min(len) {
        let Ok(key_len) = length(r, v1) else {
            return Ok(None);
        };
        if key_len > len {
            return Ok(None);
        }
        let mut key = vec![0; key_len as usize];
        let (Ok(()), Ok(ty)) = (r.read_exact(&mut key), u32_of(r)) else {
            return Ok(None);
        };
        if key == b"general.alignment" {
            let mut b = [0; 8];
            return Ok(match fixed(ty) {
                Some(n) if ty != 6 && ty != 7 && ty != 12 && r.read_exact(&mut b[..n]).is_ok() => {
                    let v = u64::from_le_bytes(b);
                    // The signed types (1, 3, 5, 11): a negative value is not an alignment.
                    let negative = matches!(ty, 1 | 3 | 5 | 11) && b[n - 1] & 0x80 != 0;
                    (!negative).then_some(v)
                }
                _ => None,
            });
        }
        // Skip the value: a scalar, a string, or an array of scalars or strings.
        let (count, ty) = if ty == 9 {
            let (Ok(elem), Ok(count)) = (u32_of(r), length(r, v1)) else {
                return Ok(None);
            };
            (count, elem)
        } else {
            (1, ty)
        };
        if let Some(n) = fixed(ty) {
            let Some(bytes) = count.checked_mul(n as u64).filter(|&b| b <= len) else {
                return Ok(None);
            };
            r.seek(SeekFrom::Current(bytes as i64))?;
        } else if ty == 8 {
            for _ in 0..count.min(len) {
                let Some(n) = length(r, v1).ok().filter(|&n| n <= len) else {
                    return Ok(None);
                };
                r.seek(SeekFrom::Current(n as i64))?;
            }
        } else {
            return Ok(None);
        }
    }
    Ok(None)
}

/// Maps candle's header errors to one line naming the file.
fn header_error(path: &Path, err: &candle_core::Error) -> Error {
    let msg = err.to_string();
    let first = msg.lines().next().unwrap_or("").to_string();
    if let Some(rest) = first.strip_prefix("unknown dtype for tensor ") {
        let id: Option<u32> = rest.trim().parse().ok();
        let name = id.map(ggml_type_name).unwrap_or("unknown");
        return Error::gguf(
            path,
            format!(
                "tensor type {} ({name}) is not supported: candle runs {CANDLE_GGML_TYPES}",
                rest.trim()
            ),
        );
    }
    if first.starts_with("unknown magic") {
        return Error::gguf(path, format!("not a GGUF file ({first})"));
    }
    Error::gguf(
        path,
        format!("not a readable GGUF file (truncated or corrupt header): {first}"),
    )
}

const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn build_tokenizer(f: &GgufFile) -> Result<tokenizers::Tokenizer> {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

    let tok_err = |m: String| Error::tokenizer(Some(&f.path), m);
    let model = f
        .string("tokenizer.ggml.model")?
        .ok_or_else(|| tok_err("metadata key `tokenizer.ggml.model` is missing".into()))?;
    if model != "gpt2" {
        return Err(tok_err(format!(
            "tokenizer.ggml.model = {model:?}: only \"gpt2\" (byte-level BPE) vocabularies are \
             rebuilt from GGUF metadata"
        )));
    }
    let tokens = f
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| tok_err("metadata key `tokenizer.ggml.tokens` is missing".into()))?;
    let types = f.integers("tokenizer.ggml.token_type")?.unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(tok_err(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let type_of = |id: usize| types.get(id).copied().unwrap_or(1);
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let control: HashSet<&str> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| type_of(*i) == TOKEN_TYPE_CONTROL)
        .map(|(_, t)| t.as_str())
        .collect();
    let mut merges = Vec::new();
    for m in f.strings("tokenizer.ggml.merges")?.unwrap_or_default() {
        let Some((a, b)) = m.split_once(' ') else {
            return Err(tok_err(format!(
                "tokenizer.ggml.merges entry {m:?} is not two tokens separated by a space"
            )));
        };
        let usable = vocab.contains_key(a)
            && vocab.contains_key(b)
            && vocab.contains_key(&format!("{a}{b}"))
            && !control.contains(a)
            && !control.contains(b);
        if usable {
            merges.push((a.to_string(), b.to_string()));
        }
    }
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges);
    if let Some(unk) = f.id_key("tokenizer.ggml.unknown_token_id")? {
        if let Some(t) = tokens.get(unk as usize) {
            builder = builder.unk_token(t.clone());
        }
    }
    let bpe = builder.build().map_err(|e| tok_err(e.to_string()))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);

    let pre = f.string("tokenizer.ggml.pre")?.unwrap_or("gpt-2");
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tok_err(e.to_string()))?;
        Ok(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into())
    };
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "gpt-2" | "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
        "llama-bpe" | "llama3" | "smaug-bpe" => split(REGEX_LLAMA3)?,
        "qwen2" => split(REGEX_QWEN2)?,
        other => {
            return Err(tok_err(format!(
                "tokenizer.ggml.pre = {other:?}: pre-tokenizer not rebuilt (supported: \"gpt-2\", \
                 \"llama-bpe\", \"qwen2\")"
            )))
        }
    };
    tk.with_pre_tokenizer(Some(pre_tokenizer));
    tk.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens are special (cut out before BPE, skipped when decoding); user-defined ones
    // are matched whole but decoded.
    let specials: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| type_of(*i) == TOKEN_TYPE_CONTROL)
        .map(|(_, t)| AddedToken::from(t.clone(), true))
        .collect();
    let user: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| type_of(*i) == TOKEN_TYPE_USER_DEFINED)
        .map(|(_, t)| AddedToken::from(t.clone(), false))
        .collect();
    tk.add_special_tokens(specials)
        .map_err(|e| tok_err(e.to_string()))?;
    tk.add_tokens(user).map_err(|e| tok_err(e.to_string()))?;

    let add_bos = f.boolean("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = f.boolean("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let named = |key: &str| -> Result<Option<(String, u32)>> {
        Ok(f.id_key(key)?
            .and_then(|id| tokens.get(id as usize).map(|t| (t.clone(), id))))
    };
    let bos = if add_bos {
        named("tokenizer.ggml.bos_token_id")?
    } else {
        None
    };
    let eos = if add_eos {
        named("tokenizer.ggml.eos_token_id")?
    } else {
        None
    };
    if bos.is_some() || eos.is_some() {
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = Vec::new();
        if let Some((t, id)) = &bos {
            single.push(t.clone());
            pair.push(t.clone());
            specials.push((t.clone(), *id));
        }
        single.push("$A".to_string());
        pair.push("$A".to_string());
        if let Some((t, id)) = &eos {
            single.push(t.clone());
            pair.push(t.clone());
            specials.push((t.clone(), *id));
        }
        if let Some((t, _)) = &bos {
            pair.push(format!("{t}:1"));
        }
        pair.push("$B:1".to_string());
        if let Some((t, _)) = &eos {
            pair.push(format!("{t}:1"));
        }
        let processor = TemplateProcessing::builder()
            .try_single(single)
            .and_then(|b| b.try_pair(pair))
            .map_err(|e| tok_err(e.to_string()))?
            .special_tokens(specials)
            .build()
            .map_err(|e| tok_err(e.to_string()))?;
        tk.with_post_processor(Some(processor));
    }
    Ok(tk)
}

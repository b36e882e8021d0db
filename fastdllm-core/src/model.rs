//! The model seam: an immutable diffusion LM that reads and writes K/V only through a [`KvView`].
//!
//! Unlike candle's model zoo (cache inside `Attention`, `forward(&mut self, xs, seqlen_offset)`),
//! a [`DiffusionLm`] is `&self`: all per-request state lives in the cache policy and the canvas,
//! so one model serves many requests and nothing leaks between them.

use candle_core::{DType, Device, Tensor};

use crate::{Result, TokenId};

/// Which published architecture a model follows. Decides only how logits line up with positions
/// (see [`ModelSpec::shifted_logits`]); everything else is in the model implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    /// LLaDA (GSAI-ML/LLaDA-8B): the output at position j predicts token j.
    Llada,
    /// Dream (Dream-org/Dream-v0-7B): the output at position j-1 predicts token j.
    Dream,
}

/// What the generation loop needs to know about a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelSpec {
    /// Architecture family.
    pub family: ModelFamily,
    /// Number of vocabulary entries (rows of the LM head).
    pub vocab_size: usize,
    /// The `[MASK]` id.
    pub mask_token_id: TokenId,
    /// Ids that end an answer (`<|endoftext|>`, `<|eot_id|>`, `<|im_end|>` ...).
    pub eos_token_ids: Vec<TokenId>,
    /// Id used to left-pad shorter prompts of a batch.
    pub pad_token_id: TokenId,
    /// Transformer layers.
    pub num_layers: usize,
    /// K/V heads per layer.
    pub num_kv_heads: usize,
    /// Size of one attention head.
    pub head_dim: usize,
    /// Longest canvas (`prompt + gen_length`) the model accepts.
    pub max_seq_len: usize,
}

impl ModelSpec {
    /// Dream keeps the next-token orientation of its AR parent: the token at position j is scored
    /// by the output at j-1 (docs/ALGORITHM.md §1.2.4). The model realigns its logits itself
    /// ([`DiffusionLm`] returns aligned rows), but the loop must know because a cached window
    /// cannot score its own first position: with shifted logits, a block's first (full) step
    /// commits exactly the block start, as the reference does.
    pub fn shifted_logits(&self) -> bool {
        self.family == ModelFamily::Dream
    }
}

/// Absolute canvas positions of the window's tokens (RoPE positions).
#[derive(Debug, Clone)]
pub enum Positions {
    /// Every row uses `start .. start + window_len` (unpadded batches).
    Contiguous {
        /// Position of the window's first token.
        start: usize,
    },
    /// Per-row positions, shape `(batch, window_len)`, dtype u32 (left-padded batches: a row's
    /// positions are its own token indices, pads excluded, so a row sees the same positions as
    /// when generated alone).
    PerRow(Tensor),
}

/// One forward call.
#[derive(Debug, Clone)]
pub struct ForwardInput {
    /// Token ids of the window. Shape: `(batch, window_len)`, u32.
    pub tokens: Tensor,
    /// RoPE positions of the window's tokens.
    pub positions: Positions,
    /// Canvas index of the window's first token (where its K/V go in a cache).
    pub window_start: usize,
    /// Additive attention bias over all keys of the canvas, shape `(batch, 1, 1, seq_len)`, 0 for
    /// real keys and a large negative value for pad keys; `None` for unpadded batches.
    pub key_bias: Option<Tensor>,
    /// Window-relative rows whose logits are returned (the rest of the LM head is skipped).
    pub logits_rows: LogitRows,
}

/// Window-relative rows whose logits a forward returns, strictly increasing: a range (a block)
/// or any subset of it (the masked positions the loop reads).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogitRows(Vec<usize>);

impl LogitRows {
    /// Rows in strictly increasing order; errors otherwise.
    pub fn new(rows: Vec<usize>) -> Result<Self> {
        if rows.windows(2).any(|w| w[0] >= w[1]) {
            return Err(crate::Error::setting(
                "logits_rows",
                format!("{rows:?}"),
                "strictly increasing window rows",
            ));
        }
        Ok(LogitRows(rows))
    }

    /// The rows.
    pub fn as_slice(&self) -> &[usize] {
        &self.0
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No row.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The smallest range holding every row (`0..0` when empty).
    pub fn span(&self) -> std::ops::Range<usize> {
        match (self.0.first(), self.0.last()) {
            (Some(&a), Some(&b)) => a..b + 1,
            _ => 0..0,
        }
    }

    /// Whether the rows are exactly their [`LogitRows::span`].
    pub fn is_contiguous(&self) -> bool {
        self.0.len() == self.span().len()
    }
}

impl From<std::ops::Range<usize>> for LogitRows {
    fn from(r: std::ops::Range<usize>) -> Self {
        LogitRows(r.collect())
    }
}

/// An immutable diffusion language model.
pub trait DiffusionLm: Send + Sync {
    /// Static facts about the model.
    fn spec(&self) -> &ModelSpec;
    /// Device the weights live on.
    fn device(&self) -> &Device;
    /// Activation dtype.
    fn dtype(&self) -> DType;
    /// Runs the window through the network, calling `kv.attend_kv` once per layer.
    ///
    /// Returns *aligned* logits: row i scores the token at window position
    /// `logits_rows.as_slice()[i]` (Dream's shift is applied inside the model).
    /// Shape: `(batch, logits_rows.len(), vocab_size)`, dtype f32.
    fn forward(&self, input: &ForwardInput, kv: &mut dyn KvView) -> Result<Tensor>;
    /// Bytes the weights take where they are stored (quantized blocks counted at their stored
    /// size), or `None` when the model does not know. Benchmarks read it for the roofline floor
    /// (every weight read once per forward).
    fn weight_bytes(&self) -> Option<u64> {
        None
    }
}

/// Delegates every method to the model behind the pointer.
macro_rules! delegate_diffusion_lm {
    ($($ptr:ty),*) => {$(
        impl<T: DiffusionLm + ?Sized> DiffusionLm for $ptr {
            fn spec(&self) -> &ModelSpec {
                (**self).spec()
            }
            fn device(&self) -> &Device {
                (**self).device()
            }
            fn dtype(&self) -> DType {
                (**self).dtype()
            }
            fn forward(&self, input: &ForwardInput, kv: &mut dyn KvView) -> Result<Tensor> {
                (**self).forward(input, kv)
            }
            fn weight_bytes(&self) -> Option<u64> {
                (**self).weight_bytes()
            }
        }
    )*};
}

// A borrowed or shared model is a model, so wrappers such as [`crate::Observed`] take either.
delegate_diffusion_lm!(&T, std::sync::Arc<T>, Box<T>);

/// The one hook attention calls: given the window's fresh K/V of a layer (post-RoPE, shape
/// `(batch, num_kv_heads, window_len, head_dim)`), return the K/V to attend over.
pub trait KvView {
    /// Returns the keys and values attention uses for `layer`. Shape:
    /// `(batch, num_kv_heads, keys_len, head_dim)`.
    fn attend_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// The null cache: attend over exactly what was computed (the exact, no-cache forward).
#[derive(Debug, Default, Clone, Copy)]
pub struct PassthroughKv;

impl KvView for PassthroughKv {
    fn attend_kv(&mut self, _layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((k.clone(), v.clone()))
    }
}

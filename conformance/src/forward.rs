//! Test support for single forwards: a one-row input, and the [`KvView`]s of the cache shapes a
//! forward test needs (record a full forward's K/V, then attend a prefix-cache or dual-cache
//! window over them, docs/ALGORITHM.md §2.5, §2.6).

use candle_core::{Device, Tensor};
use fastdllm_core::{ForwardInput, KvView, Positions, Result};

/// A forward over `ids` (one row, on the CPU) at positions `start..`, the window starting at
/// canvas index `start`, scoring every position.
pub fn row_input(ids: &[u32], start: usize) -> ForwardInput {
    ForwardInput {
        tokens: Tensor::new(ids, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .expect("a row of token ids"),
        positions: Positions::Contiguous { start },
        window_start: start,
        key_bias: None,
        logits_rows: (0..ids.len()).into(),
    }
}

/// Records the fresh K/V of every layer (layers visited in order) and attends over them as they
/// are (the exact forward).
#[derive(Default)]
pub struct RecordKv {
    /// `(k, v)` per layer, `(batch, num_kv_heads, window_len, head_dim)`.
    pub layers: Vec<(Tensor, Tensor)>,
}

impl KvView for RecordKv {
    fn attend_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        assert_eq!(layer, self.layers.len(), "layers are visited in order");
        self.layers.push((k.clone(), v.clone()));
        Ok((k.clone(), v.clone()))
    }
}

/// Prefix cache: attends over `concat(stored K/V of [0, start), fresh window K/V)`.
pub struct PrefixKv<'a> {
    /// Full-length K/V per layer (e.g. [`RecordKv::layers`]).
    pub stored: &'a [(Tensor, Tensor)],
    /// Canvas index of the window's first token.
    pub start: usize,
}

impl KvView for PrefixKv<'_> {
    fn attend_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (sk, sv) = &self.stored[layer];
        let k = Tensor::cat(&[&sk.narrow(2, 0, self.start)?, k], 2)?;
        let v = Tensor::cat(&[&sv.narrow(2, 0, self.start)?, v], 2)?;
        Ok((k, v))
    }
}

/// Dual cache: writes the fresh block K/V into its own copy of the full-length K/V at
/// `[start, start + block)`, in place as a real dual cache does, and attends over all of it.
pub struct DualKv {
    stored: Vec<(Tensor, Tensor)>,
    start: usize,
}

impl DualKv {
    /// A copy of `stored` (full-length K/V per layer) for blocks starting at `start`.
    pub fn new(stored: &[(Tensor, Tensor)], start: usize) -> Result<Self> {
        let stored = stored
            .iter()
            .map(|(k, v)| Ok((k.copy()?, v.copy()?)))
            .collect::<Result<_>>()?;
        Ok(DualKv { stored, start })
    }
}

impl KvView for DualKv {
    fn attend_kv(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (sk, sv) = &self.stored[layer];
        sk.slice_set(k, 2, self.start)?;
        sv.slice_set(v, 2, self.start)?;
        Ok((sk.clone(), sv.clone()))
    }
}

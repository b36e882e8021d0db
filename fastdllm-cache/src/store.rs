//! The tensor half of a cache policy: K/V storage allocated once per generation and written in
//! place, and [`BlockCache`], the [`CachePolicy`] that ties a [`CacheSettings`] plan to it.

use candle_core::Tensor;
use fastdllm_core::{CachePolicy, ForwardPlan, KvAccess, KvShape, KvView, PassthroughKv, StepAt};

use crate::plan::{CacheMode, CacheSettings};

/// Full-length K/V of every layer, shape `(batch, kv_heads, seq_len, head_dim)` each.
#[derive(Debug, Default)]
pub struct KvStore {
    layers: Vec<(Tensor, Tensor)>,
    shape: Option<(usize, usize, usize, usize, usize)>,
    allocations: usize,
}

impl KvStore {
    /// Allocates the storage for `shape`, reusing the current tensors when the shape, dtype and
    /// device are unchanged.
    pub fn prepare(&mut self, shape: &KvShape) -> fastdllm_core::Result<()> {
        let dims = (
            shape.num_layers,
            shape.batch,
            shape.num_kv_heads,
            shape.seq_len,
            shape.head_dim,
        );
        let same = self.shape == Some(dims)
            && self.layers.first().is_some_and(|(k, _)| {
                k.dtype() == shape.dtype && k.device().same_device(&shape.device)
            });
        if same {
            return Ok(());
        }
        let t = || {
            Tensor::zeros(
                (
                    shape.batch,
                    shape.num_kv_heads,
                    shape.seq_len,
                    shape.head_dim,
                ),
                shape.dtype,
                &shape.device,
            )
        };
        self.layers = (0..shape.num_layers)
            .map(|_| Ok((t()?, t()?)))
            .collect::<candle_core::Result<_>>()?;
        self.shape = Some(dims);
        self.allocations += 1;
        Ok(())
    }

    /// How many times storage was allocated (tests check it is once per generation shape).
    pub fn allocations(&self) -> usize {
        self.allocations
    }

    /// The stored K/V of `layer`.
    pub fn layer(&self, layer: usize) -> Option<&(Tensor, Tensor)> {
        self.layers.get(layer)
    }

    fn write(
        &self,
        layer: usize,
        offset: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> fastdllm_core::Result<&(Tensor, Tensor)> {
        let kv = self.layers.get(layer).ok_or_else(|| {
            fastdllm_core::Error::Policy(format!(
                "layer {layer} has no K/V storage (call prepare first)"
            ))
        })?;
        kv.0.slice_set(&k.contiguous()?, 2, offset)?;
        kv.1.slice_set(&v.contiguous()?, 2, offset)?;
        Ok(kv)
    }
}

/// The KvView of one forward: writes the window's K/V at `offset`, then attends over what the
/// plan says.
struct StoreView<'a> {
    store: &'a KvStore,
    offset: usize,
    access: KvAccess,
}

impl KvView for StoreView<'_> {
    fn attend_kv(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> fastdllm_core::Result<(Tensor, Tensor)> {
        let stored = self.store.write(layer, self.offset, k, v)?;
        match self.access {
            // The refresh attends over its own fresh K/V: identical values to the store's.
            KvAccess::Refresh | KvAccess::Fresh => Ok((k.clone(), v.clone())),
            KvAccess::Reuse => Ok(stored.clone()),
        }
    }
}

/// A block-wise cache policy: [`CacheSettings`] for the plan, [`KvStore`] for the tensors.
#[derive(Debug)]
pub struct BlockCache {
    settings: CacheSettings,
    store: KvStore,
    passthrough: PassthroughKv,
    view: Option<(usize, KvAccess)>,
}

impl BlockCache {
    /// A policy for validated settings.
    pub fn new(settings: CacheSettings) -> crate::Result<Self> {
        settings.validate()?;
        Ok(BlockCache {
            settings,
            store: KvStore::default(),
            passthrough: PassthroughKv,
            view: None,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }

    /// The storage (for tests and diagnostics).
    pub fn store(&self) -> &KvStore {
        &self.store
    }
}

impl CachePolicy for BlockCache {
    fn name(&self) -> String {
        self.settings.label()
    }

    fn plan(&self, at: &StepAt) -> ForwardPlan {
        self.settings.plan(at)
    }

    fn prepare(&mut self, shape: &KvShape) -> fastdllm_core::Result<()> {
        if self.settings.mode == CacheMode::Off {
            return Ok(());
        }
        self.store.prepare(shape)
    }

    fn view(&mut self, plan: &ForwardPlan) -> fastdllm_core::Result<&mut dyn KvView> {
        if plan.kv == KvAccess::Fresh {
            return Ok(&mut self.passthrough);
        }
        self.view = Some((plan.window.start, plan.kv));
        Ok(self)
    }
}

impl KvView for BlockCache {
    fn attend_kv(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> fastdllm_core::Result<(Tensor, Tensor)> {
        let (offset, access) = self
            .view
            .ok_or_else(|| fastdllm_core::Error::Policy("attend_kv called before view()".into()))?;
        StoreView {
            store: &self.store,
            offset,
            access,
        }
        .attend_kv(layer, k, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn shape(seq_len: usize) -> KvShape {
        KvShape {
            num_layers: 2,
            batch: 1,
            num_kv_heads: 2,
            seq_len,
            head_dim: 4,
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }

    #[test]
    fn storage_is_allocated_once_and_written_in_place() -> fastdllm_core::Result<()> {
        let mut c = BlockCache::new(CacheSettings::new(CacheMode::Dual))
            .map_err(|e| fastdllm_core::Error::Policy(e.to_string()))?;
        c.prepare(&shape(10))?;
        c.prepare(&shape(10))?;
        assert_eq!(c.store().allocations(), 1);
        let full = Tensor::arange(0f32, 80., &Device::Cpu)?.reshape((1, 2, 10, 4))?;
        let plan = ForwardPlan {
            window: 0..10,
            kv: KvAccess::Refresh,
        };
        let (k, _) = c.view(&plan)?.attend_kv(0, &full, &full)?;
        assert_eq!(
            k.squeeze(0)?.to_vec3::<f32>()?,
            full.squeeze(0)?.to_vec3::<f32>()?
        );
        let block = Tensor::full(-1f32, (1, 2, 3, 4), &Device::Cpu)?;
        let plan = ForwardPlan {
            window: 4..7,
            kv: KvAccess::Reuse,
        };
        let (k, _) = c.view(&plan)?.attend_kv(0, &block, &block)?;
        assert_eq!(k.dims(), &[1, 2, 10, 4]);
        let rows = k.squeeze(0)?.to_vec3::<f32>()?;
        assert_eq!(rows[0][3], vec![12., 13., 14., 15.]);
        assert_eq!(rows[0][4], vec![-1.; 4]);
        assert_eq!(rows[1][6], vec![-1.; 4]);
        assert_eq!(rows[1][7], vec![68., 69., 70., 71.]);
        Ok(())
    }
}

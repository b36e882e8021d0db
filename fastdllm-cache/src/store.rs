//! The tensor half of a cache policy: K/V storage allocated once per generation and written in
//! place, and [`BlockCache`], the [`CachePolicy`] that ties a [`CacheSettings`] plan to it.

use candle_core::{DType, Tensor};
use fastdllm_core::{
    CachePolicy, ForwardPlan, KvAccess, KvShape, KvView, PassthroughKv, StepAt, StepObservation,
};

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

    /// Layers and canvas length of the storage (`None` before [`KvStore::prepare`]).
    pub fn dims(&self) -> Option<(usize, usize)> {
        self.shape
            .map(|(layers, _, _, seq_len, _)| (layers, seq_len))
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

/// A block-wise cache policy: [`CacheSettings`] for the plan, [`KvStore`] for the tensors, and
/// the state of the adaptive triggers ([`crate::Adaptive`]).
#[derive(Debug)]
pub struct BlockCache {
    settings: CacheSettings,
    store: KvStore,
    passthrough: PassthroughKv,
    /// The current forward: window start, K/V access, end of the attended keys.
    view: Option<(usize, KvAccess, usize)>,
    state: TriggerState,
}

/// What the adaptive triggers remember inside a block.
#[derive(Debug, Default)]
struct TriggerState {
    /// A trigger fired: the next step refreshes.
    refresh_next: bool,
    /// Tokens committed since the last refresh (its own commits included).
    commits_since: usize,
    /// The probe (last) layer's keys at the last refresh, `(batch, kv_heads, keys, head_dim)`.
    probe_ref: Option<Tensor>,
    /// The drift measured during the last cached forward.
    drift: Option<f64>,
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
            state: TriggerState::default(),
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

    /// End of the keys a forward of `plan` attends over.
    fn keys_end(&self, plan: &ForwardPlan, seq_len: usize) -> usize {
        match plan.kv {
            KvAccess::Fresh | KvAccess::Refresh => plan.window.end,
            KvAccess::Reuse => match (self.settings.mode, self.settings.adaptive.suffix_window) {
                (CacheMode::Dual, Some(w)) => plan.window.end.saturating_add(w).min(seq_len),
                (CacheMode::Prefix, _) => plan.window.end,
                _ => seq_len,
            },
        }
    }

    /// The probe layer's drift: relative Frobenius change of the window's keys against the keys
    /// the same positions had at the last refresh.
    fn measure_drift(&self, offset: usize, k: &Tensor) -> fastdllm_core::Result<Option<f64>> {
        let Some(reference) = &self.state.probe_ref else {
            return Ok(None);
        };
        let w = k.dim(2)?;
        if offset + w > reference.dim(2)? {
            return Ok(None);
        }
        let reference = reference.narrow(2, offset, w)?.to_dtype(DType::F32)?;
        let k = k.to_dtype(DType::F32)?;
        let diff = (k - &reference)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        let norm = reference.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        Ok(Some(if norm > 0.0 {
            (diff / norm).sqrt()
        } else {
            diff.sqrt()
        }))
    }
}

impl CachePolicy for BlockCache {
    fn name(&self) -> String {
        self.settings.label()
    }

    fn plan(&self, at: &StepAt) -> ForwardPlan {
        self.settings.plan_with(at, self.state.refresh_next)
    }

    fn prepare(&mut self, shape: &KvShape) -> fastdllm_core::Result<()> {
        self.state = TriggerState::default();
        if self.settings.mode == CacheMode::Off {
            return Ok(());
        }
        self.store.prepare(shape)
    }

    fn view(&mut self, plan: &ForwardPlan) -> fastdllm_core::Result<&mut dyn KvView> {
        if plan.kv == KvAccess::Fresh {
            return Ok(&mut self.passthrough);
        }
        let seq_len = self.store.dims().map_or(plan.window.end, |(_, l)| l);
        let end = self.keys_end(plan, seq_len);
        self.view = Some((plan.window.start, plan.kv, end));
        self.state.drift = None;
        Ok(self)
    }

    fn attended_keys(&self, plan: &ForwardPlan, seq_len: usize) -> std::ops::Range<usize> {
        match plan.kv {
            KvAccess::Fresh | KvAccess::Refresh => plan.window.clone(),
            KvAccess::Reuse => 0..self.keys_end(plan, seq_len),
        }
    }

    fn redo(&mut self, at: &StepAt) -> Option<ForwardPlan> {
        let bound = self.settings.adaptive.drift?;
        let drift = self.state.drift?;
        (drift > bound).then(|| self.settings.plan_with(at, true))
    }

    fn signal(&self) -> Option<f64> {
        self.state.drift
    }

    fn observe(&mut self, step: &StepObservation) {
        let st = &mut self.state;
        if step.plan.kv == KvAccess::Refresh {
            st.commits_since = 0;
        }
        st.commits_since += step.committed;
        let a = &self.settings.adaptive;
        st.refresh_next = a.commits.is_some_and(|k| st.commits_since >= k)
            || a.low_confidence
                .is_some_and(|p| step.min_confidence.is_some_and(|c| c < p));
    }
}

impl KvView for BlockCache {
    fn attend_kv(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> fastdllm_core::Result<(Tensor, Tensor)> {
        let (offset, access, end) = self
            .view
            .ok_or_else(|| fastdllm_core::Error::Policy("attend_kv called before view()".into()))?;
        let probe = self
            .store
            .dims()
            .is_some_and(|(layers, _)| layer + 1 == layers);
        if probe {
            match access {
                KvAccess::Refresh => {
                    self.state.probe_ref = Some(k.clone());
                    self.state.drift = None;
                }
                KvAccess::Reuse => self.state.drift = self.measure_drift(offset, k)?,
                KvAccess::Fresh => {}
            }
        }
        let stored = self.store.write(layer, offset, k, v)?;
        match access {
            // The refresh attends over its own fresh K/V: identical values to the store's.
            KvAccess::Refresh | KvAccess::Fresh => Ok((k.clone(), v.clone())),
            KvAccess::Reuse if end < stored.0.dim(2)? => {
                Ok((stored.0.narrow(2, 0, end)?, stored.1.narrow(2, 0, end)?))
            }
            KvAccess::Reuse => Ok(stored.clone()),
        }
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

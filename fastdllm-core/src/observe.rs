//! One model wrapper for looking at forwards: [`Observed`] is a [`DiffusionLm`] that delegates
//! everything to the model it wraps and hands each forward to a [`ForwardObserver`], which runs it
//! ([`ForwardCall::run`]) and may look at its input and logits, time or count it, change the
//! logits, or fail it without running it.
//!
//! Recording (conformance's `recorder`), timing (the bench runner), counting allocations and
//! fault injection in tests are observers, so the delegating methods are written once, here.

use candle_core::{DType, Device, Tensor};

use crate::model::{DiffusionLm, ForwardInput, KvView, ModelSpec};
use crate::Result;

/// One pending forward of the wrapped model, handed to [`ForwardObserver::forward`].
pub struct ForwardCall<'a> {
    model: &'a dyn DiffusionLm,
    input: &'a ForwardInput,
    kv: &'a mut dyn KvView,
}

impl<'a> ForwardCall<'a> {
    /// The wrapped model (its device, spec, ...).
    pub fn model(&self) -> &'a dyn DiffusionLm {
        self.model
    }

    /// The forward's input.
    pub fn input(&self) -> &'a ForwardInput {
        self.input
    }

    /// Runs the forward on the wrapped model and returns its logits.
    pub fn run(self) -> Result<Tensor> {
        self.model.forward(self.input, self.kv)
    }
}

/// What an [`Observed`] model does with each forward.
pub trait ForwardObserver: Send + Sync {
    /// Handles one forward: usually looks at `call.input()`, returns `call.run()` and looks at
    /// the logits on the way; the result is the wrapper's forward result.
    fn forward(&self, call: ForwardCall<'_>) -> Result<Tensor>;
}

/// A closure `|call: ForwardCall<'_>| -> Result<Tensor>` is an observer.
impl<F> ForwardObserver for F
where
    F: Fn(ForwardCall<'_>) -> Result<Tensor> + Send + Sync,
{
    fn forward(&self, call: ForwardCall<'_>) -> Result<Tensor> {
        self(call)
    }
}

/// A model (owned, or a `&dyn DiffusionLm`, an `Arc<dyn DiffusionLm>`, ...) whose forwards go
/// through an observer; everything else is the model's own.
pub struct Observed<M, O> {
    model: M,
    observer: O,
}

impl<M, O> Observed<M, O> {
    /// Wraps `model`, handing its forwards to `observer`.
    pub fn new(model: M, observer: O) -> Self {
        Observed { model, observer }
    }

    /// The wrapped model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The observer (what it recorded).
    pub fn observer(&self) -> &O {
        &self.observer
    }

    /// The observer, giving the wrapper up.
    pub fn into_observer(self) -> O {
        self.observer
    }
}

impl<M: DiffusionLm, O: ForwardObserver> DiffusionLm for Observed<M, O> {
    fn spec(&self) -> &ModelSpec {
        self.model.spec()
    }
    fn device(&self) -> &Device {
        self.model.device()
    }
    fn dtype(&self) -> DType {
        self.model.dtype()
    }
    fn weight_bytes(&self) -> Option<u64> {
        self.model.weight_bytes()
    }
    fn forward(&self, input: &ForwardInput, kv: &mut dyn KvView) -> Result<Tensor> {
        self.observer.forward(ForwardCall {
            model: &self.model,
            input,
            kv,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::model::{ModelFamily, PassthroughKv, Positions};

    /// Logits of ones, `(batch, rows, vocab)`.
    struct Ones(ModelSpec);

    impl DiffusionLm for Ones {
        fn spec(&self) -> &ModelSpec {
            &self.0
        }
        fn device(&self) -> &Device {
            &Device::Cpu
        }
        fn dtype(&self) -> DType {
            DType::F32
        }
        fn forward(&self, input: &ForwardInput, _kv: &mut dyn KvView) -> Result<Tensor> {
            let shape = (input.tokens.dim(0)?, input.logits_rows.len(), 4);
            Ok(Tensor::ones(shape, DType::F32, &Device::Cpu)?)
        }
        fn weight_bytes(&self) -> Option<u64> {
            Some(7)
        }
    }

    fn spec() -> ModelSpec {
        ModelSpec {
            family: ModelFamily::Llada,
            vocab_size: 4,
            mask_token_id: 3,
            eos_token_ids: vec![2],
            pad_token_id: 2,
            num_layers: 1,
            num_kv_heads: 1,
            head_dim: 1,
            max_seq_len: 8,
        }
    }

    fn input(len: usize) -> ForwardInput {
        ForwardInput {
            tokens: Tensor::zeros((1, len), DType::U32, &Device::Cpu).unwrap(),
            positions: Positions::Contiguous { start: 0 },
            window_start: 0,
            key_bias: None,
            logits_rows: (0..len).into(),
        }
    }

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl ForwardObserver for Count {
        fn forward(&self, call: ForwardCall<'_>) -> Result<Tensor> {
            self.0
                .fetch_add(call.input().logits_rows.len(), Ordering::Relaxed);
            call.run()
        }
    }

    #[test]
    fn delegates_and_observes_each_forward() {
        let inner: Arc<dyn DiffusionLm> = Arc::new(Ones(spec()));
        let m = Observed::new(inner.clone(), Count::default());
        assert_eq!(m.spec(), inner.spec());
        assert_eq!(m.weight_bytes(), Some(7));
        for len in [3, 5] {
            let logits = m.forward(&input(len), &mut PassthroughKv).unwrap();
            assert_eq!(logits.dims(), &[1, len, 4]);
        }
        assert_eq!(m.observer().0.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn a_closure_may_change_or_fail_the_forward() {
        let inner = Ones(spec());
        let doubled = Observed::new(&inner, |call: ForwardCall<'_>| -> Result<Tensor> {
            Ok((call.run()? * 2.0)?)
        });
        let logits = doubled.forward(&input(2), &mut PassthroughKv).unwrap();
        assert_eq!(logits.to_vec3::<f32>().unwrap()[0][1], vec![2.0; 4]);
        let failing = Observed::new(&inner, |_: ForwardCall<'_>| -> Result<Tensor> {
            Err(crate::Error::Policy("stopped".into()))
        });
        assert!(failing.forward(&input(2), &mut PassthroughKv).is_err());
    }
}

//! A [`DiffusionLm`] wrapper that records every forward call: the window's tokens, where it
//! starts and the logits it returned. Lets tests count NFE independently of the loop and check
//! what changed on the canvas between two forwards.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use fastdllm_core::{DiffusionLm, ForwardInput, KvView, ModelSpec, Result};

/// One recorded forward.
#[derive(Debug, Clone)]
pub struct Call {
    /// Canvas index of the window's first token.
    pub window_start: usize,
    /// Window tokens per batch row.
    pub tokens: Vec<Vec<u32>>,
    /// Returned logits.
    pub logits: Tensor,
}

/// Records the calls made to the wrapped model.
pub struct Recorder<'a> {
    inner: &'a dyn DiffusionLm,
    calls: Mutex<Vec<Call>>,
}

impl<'a> Recorder<'a> {
    /// Wraps `inner`.
    pub fn new(inner: &'a dyn DiffusionLm) -> Self {
        Recorder {
            inner,
            calls: Mutex::new(Vec::new()),
        }
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl DiffusionLm for Recorder<'_> {
    fn spec(&self) -> &ModelSpec {
        self.inner.spec()
    }
    fn device(&self) -> &Device {
        self.inner.device()
    }
    fn dtype(&self) -> DType {
        self.inner.dtype()
    }
    fn weight_bytes(&self) -> Option<u64> {
        self.inner.weight_bytes()
    }
    fn forward(&self, input: &ForwardInput, kv: &mut dyn KvView) -> Result<Tensor> {
        let logits = self.inner.forward(input, kv)?;
        let tokens = input.tokens.to_vec2::<u32>()?;
        if let Ok(mut c) = self.calls.lock() {
            c.push(Call {
                window_start: input.window_start,
                tokens,
                logits: logits.clone(),
            });
        }
        Ok(logits)
    }
}

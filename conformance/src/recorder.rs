//! A forward observer that records every forward call of the model it watches: the window's
//! tokens, where it starts and the logits it returned. Lets tests count NFE independently of the
//! loop and check what changed on the canvas between two forwards.

use std::sync::Mutex;

use candle_core::Tensor;
use fastdllm_core::{ForwardCall, ForwardObserver, Observed, Result};

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

/// Records the forwards of an [`Observed`] model.
#[derive(Default)]
pub struct Recorder {
    calls: Mutex<Vec<Call>>,
}

impl Recorder {
    /// `model` (a `&dyn DiffusionLm`, an `Arc<dyn DiffusionLm>`, ...) with its forwards
    /// recorded; read them with `.observer().calls()`.
    pub fn wrap<M>(model: M) -> Observed<M, Recorder> {
        Observed::new(model, Recorder::default())
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl ForwardObserver for Recorder {
    fn forward(&self, call: ForwardCall<'_>) -> Result<Tensor> {
        let input = call.input();
        let tokens = input.tokens.to_vec2::<u32>()?;
        let window_start = input.window_start;
        let logits = call.run()?;
        if let Ok(mut c) = self.calls.lock() {
            c.push(Call {
                window_start,
                tokens,
                logits: logits.clone(),
            });
        }
        Ok(logits)
    }
}

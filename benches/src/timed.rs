//! A [`DiffusionLm`] wrapper that times every forward (device synchronised before and after, so
//! GPU kernels are inside the measurement) and can stop a generation after a number of blocks.
//!
//! Modelled on conformance/src/recorder.rs. The block of a forward is read from its input (the
//! logits rows are the active block, or its first position for Dream's forced step), so the
//! wrapper needs no help from the loop. Stopping is done by failing the forward of the first block
//! past the cap; the caller checks [`TimedModel::stopped`] to tell that apart from a real error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use fastdllm_core::{DiffusionLm, ForwardInput, KvView, ModelSpec, Result};

/// One timed forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardTiming {
    /// Block the forward scored.
    pub block_idx: usize,
    /// First canvas position fed.
    pub window_start: usize,
    /// Positions fed.
    pub window_len: usize,
    /// Wall time of the forward, seconds (device synchronised).
    pub secs: f64,
    /// Device memory in use right after the forward (CUDA only; see
    /// [`crate::system::device_memory_used`]).
    pub device_used_bytes: Option<u64>,
}

/// Times the forwards of the wrapped model.
pub struct TimedModel<'a> {
    inner: &'a dyn DiffusionLm,
    prompt_len: usize,
    block_length: usize,
    max_blocks: Option<usize>,
    log: Mutex<Vec<ForwardTiming>>,
    stopped: AtomicBool,
}

impl<'a> TimedModel<'a> {
    /// Wraps `inner` for a generation with unpadded prompts of `prompt_len` tokens and blocks of
    /// `block_length`; with `max_blocks`, the first forward of block `max_blocks` fails.
    pub fn new(
        inner: &'a dyn DiffusionLm,
        prompt_len: usize,
        block_length: usize,
        max_blocks: Option<usize>,
    ) -> Self {
        TimedModel {
            inner,
            prompt_len,
            block_length: block_length.max(1),
            max_blocks,
            log: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        }
    }

    /// The forwards timed so far, in call order.
    pub fn timings(&self) -> Vec<ForwardTiming> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether the block cap stopped the generation.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

impl DiffusionLm for TimedModel<'_> {
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
        let first_row = input.window_start + input.logits_rows.span().start;
        let block_idx = first_row.saturating_sub(self.prompt_len) / self.block_length;
        if self.max_blocks.is_some_and(|m| block_idx >= m) {
            self.stopped.store(true, Ordering::Relaxed);
            return Err(fastdllm_core::Error::Policy(format!(
                "bench: stopped at block {block_idx} (--max-blocks)"
            )));
        }
        let device = self.inner.device();
        device.synchronize()?;
        let start = Instant::now();
        let logits = self.inner.forward(input, kv)?;
        device.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        let device_used_bytes = crate::system::device_memory_used(device);
        let window_len = input.tokens.dim(1)?;
        if let Ok(mut l) = self.log.lock() {
            l.push(ForwardTiming {
                block_idx,
                window_start: input.window_start,
                window_len,
                secs,
                device_used_bytes,
            });
        }
        Ok(logits)
    }
}

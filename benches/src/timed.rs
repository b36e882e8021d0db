//! A forward observer that times every forward (device synchronised before and after, so GPU
//! kernels are inside the measurement) and can stop a generation after a number of blocks; it
//! watches the model through fastdllm-core's [`Observed`] wrapper.
//!
//! The block of a forward is read from its input (the logits rows are the active block, or its
//! first position for Dream's forced step), so the timer needs no help from the loop. Stopping is
//! done by failing the forward of the first block past the cap; the caller checks
//! [`ForwardTimer::stopped`] to tell that apart from a real error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::Tensor;
use fastdllm_core::{ForwardCall, ForwardObserver, Observed, Result};

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

/// Times the forwards of an [`Observed`] model.
pub struct ForwardTimer {
    prompt_len: usize,
    block_length: usize,
    max_blocks: Option<usize>,
    log: Mutex<Vec<ForwardTiming>>,
    stopped: AtomicBool,
}

impl ForwardTimer {
    /// A timer for a generation with unpadded prompts of `prompt_len` tokens and blocks of
    /// `block_length`; with `max_blocks`, the first forward of block `max_blocks` fails.
    pub fn new(prompt_len: usize, block_length: usize, max_blocks: Option<usize>) -> Self {
        ForwardTimer {
            prompt_len,
            block_length: block_length.max(1),
            max_blocks,
            log: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
        }
    }

    /// `model` (a `&dyn DiffusionLm`, an `Arc<dyn DiffusionLm>`, ...) timed by `self`; read the
    /// timings with `.observer().timings()`.
    pub fn wrap<M>(self, model: M) -> Observed<M, ForwardTimer> {
        Observed::new(model, self)
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

impl ForwardObserver for ForwardTimer {
    fn forward(&self, call: ForwardCall<'_>) -> Result<Tensor> {
        let input = call.input();
        let first_row = input.window_start + input.logits_rows.span().start;
        let block_idx = first_row.saturating_sub(self.prompt_len) / self.block_length;
        if self.max_blocks.is_some_and(|m| block_idx >= m) {
            self.stopped.store(true, Ordering::Relaxed);
            return Err(fastdllm_core::Error::Policy(format!(
                "bench: stopped at block {block_idx} (--max-blocks)"
            )));
        }
        let device = call.model().device();
        let (window_start, window_len) = (input.window_start, input.tokens.dim(1)?);
        device.synchronize()?;
        let start = Instant::now();
        let logits = call.run()?;
        device.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        let device_used_bytes = crate::system::device_memory_used(device);
        if let Ok(mut l) = self.log.lock() {
            l.push(ForwardTiming {
                block_idx,
                window_start,
                window_len,
                secs,
                device_used_bytes,
            });
        }
        Ok(logits)
    }
}

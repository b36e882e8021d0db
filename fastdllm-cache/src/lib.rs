//! fastdllm-cache: Fast-dLLM's block-wise approximate KV cache (arXiv 2505.22618v3 Sec. 3.2;
//! NVlabs/Fast-dLLM `llada/generate.py` `generate_with_prefix_cache` / `generate_with_dual_cache`).
//!
//! Two halves, kept apart (TGI's allocator vs storage, moshi's `ScatteredCacheBuilder`):
//! * [`plan`]: which window each step forwards and whether it refreshes or reuses the cache, a
//!   pure function of the step, proptested without tensors;
//! * [`store`]: the K/V storage, allocated once per generation (one `(batch, kv_heads, seq_len,
//!   head_dim)` tensor pair per layer) and written in place.
//!
//! Policies ([`CacheMode`]): `none` (exact: full forward every step), `prefix` (refresh at the
//! block start, then forward `[s_k, L)` over the frozen prefix `[0, s_k)`), `dual` (refresh at the
//! block start, then forward only `[s_k, e_k)` over frozen prefix *and* suffix). Beyond the
//! reference: `refresh_every = k` refreshes every k steps inside a block (k = 1 is the exact path),
//! and the adaptive policies of [`Adaptive`] (drift-triggered refresh after Elastic-Cache,
//! commit-triggered refresh, DPad's suffix window), all behind the same [`BlockCache`].
//!
//! Storage detail: keys are cached **after** RoPE (docs/ALGORITHM.md §1.3: equivalent to
//! re-rotating pre-RoPE keys, less work). Prefix mode writes the window's fresh K/V over `[s_k, L)`
//! of the full-length store and attends over `[0, L)`: the same keys as the reference's
//! `concat(prefix, window)`, without concatenating (no per-step copy of the prefix).
#![deny(missing_docs)]

pub mod error;
pub mod plan;
pub mod store;

pub use error::{Error, Result};
pub use plan::{Adaptive, CacheMode, CacheSettings, CACHE_NAMES};
pub use store::{BlockCache, KvStore};

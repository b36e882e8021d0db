//! glibc malloc tuning for the `fastdllm` binary: keep large freed blocks in the heap instead of
//! returning them to the kernel.
//!
//! Why: a forward allocates and frees many multi-MiB activation buffers (q/k/v, MLP, attention
//! scores). With glibc's defaults, blocks above the dynamic mmap threshold are `mmap`ed and
//! `munmap`ed every time, so every step pays page faults and kernel page clearing again. Measured
//! on the cache-cpu benchmark (docs/BENCHMARKS.md, "Hot path"): system time 4.4 s -> 0.9 s over a
//! 30 s run. No reference counterpart (PyTorch has its own caching allocator on GPU; on CPU it has
//! the same glibc behaviour). Other platforms: a no-op.

/// Raises the mmap threshold to its maximum (32 MiB on 64-bit), disables heap trimming, and
/// keeps every thread on the main arena (`M_ARENA_MAX` 1). Returns whether all three settings
/// were accepted.
///
/// Why one arena: [`release_free_memory`] (`malloc_trim`) returns the top of the main arena only;
/// the top of a thread arena shrinks only inside `free` when it exceeds the trim threshold, which
/// this function disables. A burst of large request bodies read on the server's worker threads
/// (each with its own arena) therefore stayed resident (2.1x idle RSS after 64 concurrent 1 MB
/// prompts, still after 15 s; 1.05x with one arena: docs/RELIABILITY.md, soak). The engine's
/// speed is unchanged within run-to-run noise (A/B on the cache-cpu benchmark: docs/BENCHMARKS.md,
/// "Hot path"): the forward's large buffers come from the engine thread, and the GEMM
/// threads allocate little.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_ARENA_MAX: i32 = -8;
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator parameters; it is called before any thread that
        // allocates is started (first statement of main), and the values are in glibc's
        // documented ranges (mmap threshold <= HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
                && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
                && mallopt(M_ARENA_MAX, 1) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Returns the heap's free memory to the kernel (glibc `malloc_trim(0)`: the top of every arena
/// and, since glibc 2.8, the free pages inside them). Returns whether memory was released.
///
/// Why: [`keep_freed_memory`] disables automatic trimming, so a burst of large request bodies
/// (`fastdllm serve`) would keep its peak RSS for good; the server calls this once a burst is
/// over (the last large request has finished), which brings RSS back near idle (all of it,
/// because [`keep_freed_memory`] keeps every thread on the main arena). Other platforms: a
/// no-op (`false`).
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim takes the arenas' own locks; it is safe to call from any thread at
        // any time.
        unsafe { malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

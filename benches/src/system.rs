//! Facts about the machine a benchmark ran on: device name, peak memory, memory bandwidth (for
//! the roofline floor), parameter count of a model config, git commit and timestamp.
//!
//! No reference: these are our own report fields (docs/BENCH_SCHEMA.md). Deviations from a real
//! roofline model: the floor is only "every weight read once per forward" (weight bytes / measured
//! bandwidth); activations, K/V and attention traffic are ignored, so real steps sit above it.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use fastdllm_core::ModelFamily;
use fastdllm_models::ModelConfig;

/// Human-readable device name: the CPU model name from `/proc/cpuinfo`, or the CUDA device name
/// from `nvidia-smi` (best effort; `cuda:0` when it cannot be asked).
pub fn device_name(device: &Device) -> String {
    if device.is_cpu() {
        return cpu_model_name().unwrap_or_else(|| "cpu".to_string());
    }
    command_line(
        "nvidia-smi",
        &["--query-gpu=name", "--format=csv,noheader", "--id=0"],
    )
    .unwrap_or_else(|| "cuda:0".to_string())
}

fn cpu_model_name() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// CPU threads candle's kernels use (`RAYON_NUM_THREADS`, else the available parallelism).
pub fn cpu_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// The process's peak resident memory (`VmHWM` of `/proc/self/status`) in bytes, CPU only.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system, all threads) this process has used, seconds; from `/proc/self/stat`
/// (USER_HZ = 100 on Linux). `None` where unavailable.
pub fn process_cpu_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Resets the peak-RSS counter to the current RSS (`echo 5 > /proc/self/clear_refs`, Linux >=
/// 4.0), so the next [`peak_rss_bytes`] is the peak of what ran in between. Best effort.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Measured memory bandwidth in bytes/s: on CPU, a multi-threaded read of a 256 MiB buffer
/// (what streaming weights is); on a GPU, a device-to-device copy of a 1 GiB tensor (read +
/// write counted). Best of three passes.
pub fn measure_bandwidth(device: &Device) -> Result<f64> {
    if device.is_cpu() {
        return Ok(cpu_read_bandwidth(256 << 20, cpu_threads()));
    }
    // A device-to-device copy into a preallocated buffer (no allocation inside the timing),
    // counting the bytes read and written, as bandwidth figures of GPUs usually are.
    let elems = (1usize << 30) / 4;
    let src = Tensor::zeros(elems, DType::F32, device)?;
    let dst = Tensor::zeros(elems, DType::F32, device)?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        device.synchronize()?;
        let start = Instant::now();
        dst.slice_set(&src, 0, 0)?;
        device.synchronize()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * (elems * 4) as f64 / best)
}

fn cpu_read_bandwidth(bytes: usize, threads: usize) -> f64 {
    let n = bytes / 8;
    let data: Vec<u64> = (0..n as u64).collect();
    let chunk = n.div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..3 {
        let start = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = data
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        // Eight independent lanes so the loop vectorises.
                        let mut acc = [0u64; 8];
                        for c in part.chunks_exact(8) {
                            for i in 0..8 {
                                acc[i] = acc[i].wrapping_add(c[i]);
                            }
                        }
                        acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        best = best.min(start.elapsed().as_secs_f64());
        sink = sink.wrapping_add(total);
    }
    std::hint::black_box(sink);
    (n * 8) as f64 / best
}

/// Parameters of a model config: embedding, per layer q/k/v/o (+ Dream's q/k/v biases), the
/// SwiGLU MLP and two norms, the final norm and the LM head (unless Dream ties it). Saturates at
/// `u64::MAX` (a config of absurd sizes is refused by its caller, not overflowed).
pub fn param_count(cfg: &ModelConfig) -> u64 {
    let c = cfg;
    let [h, layers, nh, nkv, d, inter, vocab] = [
        c.hidden_size,
        c.num_layers,
        c.num_heads,
        c.num_kv_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size,
    ]
    .map(|x| x as u128);
    // Dream has q/k/v biases; either family may tie the head to the embedding.
    let (bias, tied) = (c.family == ModelFamily::Dream, c.tie_word_embeddings);
    let attn =
        h * nh * d + 2 * h * nkv * d + nh * d * h + if bias { nh * d + 2 * nkv * d } else { 0 };
    let layer = attn + 3 * h * inter + 2 * h;
    let total = vocab * h + layers * layer + h + if tied { 0 } else { vocab * h };
    u64::try_from(total).unwrap_or(u64::MAX)
}

/// FLOP of one full forward of one row over `positions` positions with the LM head on
/// `logits_rows` rows (a multiply-add counts 2): every linear layer (q, k, v, o, gate, up, down)
/// over all positions, the attention scores `q k^T` and context `p v` (`positions^2 * heads *
/// head_dim` multiply-adds each per layer), and the LM head. Norms, RoPE, softmax and SiLU are
/// not counted (O(positions * hidden) each).
pub fn full_forward_flops(cfg: &ModelConfig, positions: usize, logits_rows: usize) -> f64 {
    let c = cfg;
    let (h, nh, nkv, d, inter) = (
        c.hidden_size as f64,
        c.num_heads as f64,
        c.num_kv_heads as f64,
        c.head_dim as f64,
        c.intermediate_size as f64,
    );
    let p = positions as f64;
    let linear = h * nh * d + 2.0 * h * nkv * d + nh * d * h + 3.0 * h * inter;
    let attention = 2.0 * p * p * nh * d;
    let per_layer = 2.0 * (p * linear + attention);
    c.num_layers as f64 * per_layer + 2.0 * logits_rows as f64 * h * c.vocab_size as f64
}

/// `git rev-parse --short HEAD` in the current directory, else `$FASTDLLM_GIT_COMMIT`.
pub fn git_commit() -> Option<String> {
    command_line("git", &["rev-parse", "--short", "HEAD"])
        .or_else(|| std::env::var("FASTDLLM_GIT_COMMIT").ok())
}

/// The trimmed, non-empty standard output of a successful `program args`, else `None`.
fn command_line(program: &str, args: &[&str]) -> Option<String> {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The current UTC time as RFC 3339 (`2025-01-31T12:00:00Z`).
pub fn timestamp_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Device memory in use on a CUDA device (total minus free, device-wide, so it includes the CUDA
/// context and candle's buffers); `None` on other devices.
pub fn device_memory_used(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return candle_core::cuda_backend::cudarc::driver::result::mem_get_info()
            .ok()
            .map(|(free, total)| total.saturating_sub(free) as u64);
    }
    let _ = device;
    None
}

/// Memory the kernel can give a new allocation now without swapping (`MemAvailable` of
/// `/proc/meminfo`), in bytes; `None` where it cannot be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_rfc3339_shape() {
        let t = timestamp_utc();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }

    #[test]
    fn cpu_time_is_readable() {
        assert!(process_cpu_secs().is_some_and(|t| t >= 0.0));
    }

    #[test]
    fn bandwidth_is_positive() {
        assert!(cpu_read_bandwidth(1 << 20, 2) > 0.0);
    }
}

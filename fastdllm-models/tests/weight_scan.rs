//! The load-time weight check ([`fastdllm_models::weights::check_weights`]): non-finite values
//! and non-float dtypes are errors naming the tensor, and what the scan costs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fastdllm_models::weights::check_weights;
use fastdllm_models::Error;

/// Writes a safetensors file of `tensors` BF16 tensors of `elems` elements each, filled with a
/// finite pattern, with `poison` = (tensor, element, bits) overwritten.
fn write_bf16(path: &Path, tensors: usize, elems: usize, poison: Option<(usize, usize, u16)>) {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    for t in 0..tensors {
        let start = t * elems * 2;
        header.insert(
            format!("model.layers.{t}.mlp.weight"),
            serde_json::json!({"dtype": "BF16", "shape": [elems], "data_offsets": [start, start + elems * 2]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string();
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    // 0x3c00..0x3fff: finite bf16 values around 0.0078..1.99.
    let chunk: Vec<u8> = (0..elems)
        .flat_map(|i| (0x3c00u16 + (i as u16 & 0x3ff)).to_le_bytes())
        .collect();
    for t in 0..tensors {
        match poison {
            Some((pt, pe, bits)) if pt == t => {
                let mut c = chunk.clone();
                c[pe * 2..pe * 2 + 2].copy_from_slice(&bits.to_le_bytes());
                f.write_all(&c).unwrap();
            }
            _ => f.write_all(&chunk).unwrap(),
        }
    }
    f.flush().unwrap();
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fastdllm-scan-{}-{name}", std::process::id()))
}

#[test]
fn bf16_nan_and_inf_are_found_with_their_tensor_and_index() {
    let p = temp("poison.safetensors");
    // bf16 NaN 0x7fc0, -inf 0xff80; 0x7f7f is the largest finite value (not an error).
    for (bits, bad) in [(0x7fc0u16, true), (0xff80, true), (0x7f7f, false)] {
        write_bf16(&p, 3, 1000, Some((1, 977, bits)));
        match check_weights(std::slice::from_ref(&p)) {
            Err(Error::NonFiniteTensor {
                name, count, first, ..
            }) => {
                assert!(bad, "{bits:#x} is finite");
                assert_eq!(
                    (name.as_str(), count, first),
                    ("model.layers.1.mlp.weight", 1, 977)
                );
            }
            Ok(names) => {
                assert!(!bad, "{bits:#x} not found");
                assert_eq!(names.len(), 3);
            }
            Err(e) => panic!("{e}"),
        }
    }
    let _ = std::fs::remove_file(&p);
}

/// The scan's cost on an 8B-shaped load, measured as a ratio to copying the same bytes out of
/// the mapping (what the load does next). Run with
/// `cargo test --release -p fastdllm-models --test weight_scan -- --ignored --nocapture`
/// (`FASTDLLM_SCAN_MIB`, default 1024, sets the file size).
#[test]
#[ignore = "timing: writes a large file; run by hand (see docs/RELIABILITY.md)"]
fn scan_cost() {
    let mib: usize = std::env::var("FASTDLLM_SCAN_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let elems = 32 << 20; // 64 MiB BF16 tensors, about one 8B-model projection each
    let tensors = (mib / 64).max(1);
    let p = temp("big.safetensors");
    write_bf16(&p, tensors, elems, None);
    let bytes = (tensors * elems * 2) as f64;
    // Warm the page cache (the load reads the file anyway), then time both passes.
    let _ = std::fs::read(&p).unwrap();
    let t = Instant::now();
    check_weights(std::slice::from_ref(&p)).unwrap();
    let scan = t.elapsed().as_secs_f64();
    let t = Instant::now();
    // SAFETY: read-only mapping of a file this test wrote and no one modifies.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&p).unwrap() };
    let mut sum = 0usize;
    for (_, view) in st.tensors() {
        let copy = view.data().to_vec();
        sum = sum.wrapping_add(copy[copy.len() / 2] as usize);
    }
    let copy = t.elapsed().as_secs_f64();
    println!(
        "weight scan: {:.0} MiB in {tensors} tensors: scan {scan:.3} s ({:.2} GB/s), copy {copy:.3} s ({:.2} GB/s), scan/copy = {:.2} (checksum {sum}); an 8B BF16 checkpoint (16.1 GB) scans in about {:.1} s with {} rayon threads",
        bytes / (1 << 20) as f64,
        bytes / scan / 1e9,
        bytes / copy / 1e9,
        scan / copy,
        16.1e9 / (bytes / scan),
        rayon::current_num_threads(),
    );
    let _ = std::fs::remove_file(&p);
}

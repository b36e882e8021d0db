//! Float comparison for conformance tests: one tolerance rule, one assertion helper.
//!
//! The rule is numpy's `allclose`: an element passes when `|actual - expected| <= atol + rtol *
//! |expected|`. Presets per dtype ([`Tol::F32`], [`Tol::BF16`]). A failure reports how many
//! elements differ, the worst one's N-d index, both values and the absolute and relative
//! difference (after burn's `Tolerance` and rten's `expect_equal`), never a bare max-diff, so a
//! failure says where and by how much.

use candle_core::{DType, Tensor};

/// Absolute and relative tolerance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tol {
    /// Absolute part.
    pub atol: f64,
    /// Relative part (times `|expected|`).
    pub rtol: f64,
}

impl Tol {
    /// f32 computations against an f32 reference.
    pub const F32: Tol = Tol {
        atol: 1e-4,
        rtol: 1e-4,
    };
    /// bf16 computations against a bf16 or f32 reference.
    pub const BF16: Tol = Tol {
        atol: 2e-2,
        rtol: 2e-2,
    };
    /// Equal values (the same computation, or one that must be bit-exact).
    pub const EXACT: Tol = Tol {
        atol: 0.0,
        rtol: 0.0,
    };

    /// An absolute tolerance of `rel` times the largest `|expected|` (at least 1): for logits
    /// whose error scales with their range (half precision, quantized weights, another device).
    pub fn of_range(rel: f64, expected: &Tensor) -> Tol {
        let range = flat(expected)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .fold(1.0f64, |m, v| m.max(v.abs()));
        Tol {
            atol: rel * range,
            rtol: 0.0,
        }
    }
}

/// Largest `|actual - expected|` over all elements, for reporting. Errors on shape mismatch.
pub fn max_abs_err(actual: &Tensor, expected: &Tensor) -> Result<f64, String> {
    let (a, e) = flat_pair(actual, expected)?;
    Ok(a.iter()
        .zip(&e)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0, f64::max))
}

/// Largest `|actual - expected| / max(1, |expected|)` over all elements (the conformance goldens'
/// "relative error"), for reporting. Errors on shape mismatch.
pub fn max_rel_err(actual: &Tensor, expected: &Tensor) -> Result<f64, String> {
    let (a, e) = flat_pair(actual, expected)?;
    Ok(a.iter()
        .zip(&e)
        .map(|(a, e)| (a - e).abs() / e.abs().max(1.0))
        .fold(0.0, f64::max))
}

/// Compares element-wise; `Err` describes the mismatch (count, worst index, values, diffs).
pub fn compare(actual: &Tensor, expected: &Tensor, tol: Tol) -> Result<(), String> {
    let (a, e) = flat_pair(actual, expected)?;
    let dims = expected.dims().to_vec();
    let mut mismatches = 0usize;
    // The worst element is the one that exceeds its allowance by the largest factor.
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&x, &y)) in a.iter().zip(&e).enumerate() {
        let allowed = tol.atol + tol.rtol * y.abs();
        let diff = (x - y).abs();
        let bad = if x.is_nan() || y.is_nan() {
            !(x.is_nan() && y.is_nan())
        } else {
            diff > allowed
        };
        if bad {
            mismatches += 1;
            let excess = if diff.is_nan() {
                f64::INFINITY
            } else {
                diff / allowed.max(f64::MIN_POSITIVE)
            };
            if worst.is_none_or(|(_, w)| excess > w) {
                worst = Some((i, excess));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => {
            let (x, y) = (a[i], e[i]);
            let abs = (x - y).abs();
            let rel = abs / y.abs().max(f64::MIN_POSITIVE);
            Err(format!(
                "{mismatches}/{} differ (atol {:e}, rtol {:e}); worst {:?}: {x} vs {y} (abs {abs:.3e}, rel {rel:.3e})",
                a.len(),
                tol.atol,
                tol.rtol,
                unravel(i, &dims),
            ))
        }
    }
}

/// Panics with [`compare`]'s description when `actual` and `expected` are not close.
#[track_caller]
pub fn assert_close(actual: &Tensor, expected: &Tensor, tol: Tol) {
    if let Err(msg) = compare(actual, expected, tol) {
        panic!("assert_close failed: {msg}");
    }
}

fn flat_pair(actual: &Tensor, expected: &Tensor) -> Result<(Vec<f64>, Vec<f64>), String> {
    if actual.dims() != expected.dims() {
        return Err(format!(
            "shape mismatch: actual {:?} vs expected {:?}",
            actual.dims(),
            expected.dims()
        ));
    }
    Ok((flat(actual)?, flat(expected)?))
}

fn flat(t: &Tensor) -> Result<Vec<f64>, String> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.to_vec1::<f64>())
        .map_err(|e| format!("cannot read tensor: {e}"))
}

fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut index = vec![0; dims.len()];
    for (slot, &d) in index.iter_mut().zip(dims).rev() {
        if d > 0 {
            *slot = flat % d;
            flat /= d;
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equal_tensors_pass() {
        let t = Tensor::new(&[[1.0f32, -2.0], [3.5, 0.0]], &Device::Cpu).unwrap();
        assert_close(&t, &t, Tol::F32);
    }

    #[test]
    fn catches_a_planted_difference() {
        let expected = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let mut data = vec![0f32; 24];
        data[12 + 2 * 4 + 3] = 0.5; // index [1, 2, 3] in shape [2, 3, 4]
        data[5] = 2e-4; // just outside atol 1e-4: also counted
        let actual = Tensor::from_vec(data, (2, 3, 4), &Device::Cpu).unwrap();
        let msg = compare(&actual, &expected, Tol::F32).unwrap_err();
        assert!(msg.starts_with("2/24 differ"), "{msg}");
        assert!(msg.contains("worst [1, 2, 3]: 0.5 vs 0"), "{msg}");
        assert!(msg.contains("abs 5.000e-1"), "{msg}");
        // Within tolerance: 1e-4 + 1e-4 * 1000 = 0.1001 allowed around 1000.
        let big = Tensor::new(&[1000.0f32], &Device::Cpu).unwrap();
        let near = Tensor::new(&[1000.1f32], &Device::Cpu).unwrap();
        assert!(compare(&near, &big, Tol::F32).is_ok());
        assert!(compare(
            &near,
            &big,
            Tol {
                atol: 0.0,
                rtol: 1e-5
            }
        )
        .is_err());
    }

    #[test]
    fn range_scaled_tolerance_and_max_abs_err() {
        let expected = Tensor::new(&[10.0f32, -40.0, 0.5], &Device::Cpu).unwrap();
        let actual = Tensor::new(&[10.3f32, -40.0, 0.5], &Device::Cpu).unwrap();
        let tol = Tol::of_range(1e-2, &expected);
        assert!((tol.atol - 0.4).abs() < 1e-9 && tol.rtol == 0.0, "{tol:?}");
        assert_close(&actual, &expected, tol);
        assert!(compare(&actual, &expected, Tol::of_range(5e-3, &expected)).is_err());
        assert!(compare(&actual, &expected, Tol::EXACT).is_err());
        let err = max_abs_err(&actual, &expected).unwrap();
        assert!((err - 0.3).abs() < 1e-5, "{err}");
    }

    #[test]
    fn shape_mismatch_is_reported() {
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(compare(&a, &b, Tol::F32)
            .unwrap_err()
            .contains("shape mismatch"));
    }

    #[test]
    #[should_panic(expected = "assert_close failed")]
    fn assert_close_panics() {
        let a = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1.1f32], &Device::Cpu).unwrap();
        assert_close(&a, &b, Tol::F32);
    }
}

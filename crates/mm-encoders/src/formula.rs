//! Weights given by a formula, for parity tests without weight files: element `i` of the tensor
//! named `N` is `offset + scale · u(N, i)`, where `u` is a number in `[-1, 1)` with 24 bits made
//! by splitmix64 from the FNV-1a hash of `N` plus `i`. The reference side (the `make_golden.py`
//! scripts beside the tests, on torchvision and transformers) computes the same numbers, so a
//! model's outputs can be compared with the reference library's on weights both sides make.
//!
//! ```
//! use mm_encoders::formula::{formula_tensor, formula_values};
//! assert_eq!(formula_values("input", 1), [-0.8043633699417114f32]);
//! let t = formula_tensor("layer.weight", &[2, 3], 0.0, 0.5);
//! assert_eq!(t.size(), [2, 3]);
//! assert!(t.abs().max().double_value(&[]) <= 0.5);
//! ```

use std::path::Path;

use tch::Tensor;

use crate::{Error, Result};

fn fnv1a64(name: &str) -> u64 {
    name.bytes()
        .fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3))
}

/// `u(name, i)` for `i < n`: splitmix64 of the name's hash plus `i`, 24 bits, in `[-1, 1)`
/// (exact in `f32`).
pub fn formula_values(name: &str, n: usize) -> Vec<f32> {
    let h = fnv1a64(name);
    (0..n as u64)
        .map(|i| {
            let mut z = h
                .wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// The `f32` tensor named `name` of this shape: `u · scale + offset` in `f32` arithmetic, as
/// numpy computes it.
pub fn formula_tensor(name: &str, shape: &[i64], offset: f32, scale: f32) -> Tensor {
    let n = shape.iter().product::<i64>().max(0) as usize;
    let values: Vec<f32> =
        formula_values(name, n).into_iter().map(|u| u * scale + offset).collect();
    Tensor::from_slice(&values).view(shape)
}

/// `[H, W, 3]` pixels from the formula: `⌊96 + (u + 1) · 32⌋`, noise in `[96, 160)` (a bicubic
/// resize's overshoot stays inside `[0, 255]`, so no resizer clips and rounding is all that
/// can differ between two of them).
pub fn formula_pixels(name: &str, height: usize, width: usize) -> ndarray::Array3<u8> {
    let values = formula_values(name, height * width * 3);
    let bytes = values.into_iter().map(|u| (96.0 + (u + 1.0) * 32.0) as u8).collect();
    ndarray::Array3::from_shape_vec((height, width, 3), bytes).expect("h·w·3 values")
}

/// Writes a safetensors file of formula tensors from a listing as the golden files hold it
/// (`[{"name", "shape", "offset", "scale"}, ...]`); `rename` maps each name to the file's.
pub fn write_listing(
    listing: &serde_json::Value,
    path: &Path,
    rename: impl Fn(&str) -> String,
) -> Result<()> {
    let bad = |m: String| Error::Io { path: path.to_path_buf(), message: m };
    let entries = listing.as_array().ok_or_else(|| bad("the listing is not a list".into()))?;
    let mut tensors = Vec::with_capacity(entries.len());
    for e in entries {
        let (Some(name), Some(shape), Some(offset), Some(scale)) =
            (e["name"].as_str(), e["shape"].as_array(), e["offset"].as_f64(), e["scale"].as_f64())
        else {
            return Err(bad(format!("not a listing entry: {e}")));
        };
        let shape: Vec<i64> = shape.iter().filter_map(serde_json::Value::as_i64).collect();
        tensors.push((rename(name), formula_tensor(name, &shape, offset as f32, scale as f32)));
    }
    crate::weights::save_named(path, tensors)
}

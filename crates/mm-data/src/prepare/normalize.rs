//! Normalisation statistics: per-dimension mean and standard deviation (image channels, mel
//! bins, numeric features), computed in one streaming pass over the training split, saved as
//! JSON beside a model and reused unchanged at evaluation and prediction time.
//!
//! [`RunningStats`] accumulates in `f64` with Welford's update and merges with Chan's formula,
//! so a parallel pass (`rayon`'s `fold` + `reduce`) gives the same result as a serial one up to
//! rounding.
//!
//! ```
//! use mm_data::normalize::{Normalizer, RunningStats};
//!
//! let mut stats = RunningStats::new(2);
//! for row in [[1.0f32, 10.0], [3.0, 10.0]] {
//!     stats.push(&row);
//! }
//! let norm = stats.finish();
//! assert_eq!(norm.mean, vec![2.0, 10.0]);
//! assert_eq!(norm.std, vec![1.0, 1.0]); // a constant dimension keeps std 1: centred only
//! let mut x = [3.0f32, 12.0];
//! norm.apply(&mut x);
//! assert_eq!(x, [1.0, 2.0]);
//! ```

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::fs::write_atomic;

/// The ImageNet channel means (RGB, pixels in `[0, 1]`) that torchvision's pretrained models use.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// The ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The channel means OpenAI's CLIP was trained with (RGB, pixels in `[0, 1]`), as its
/// `preprocessor_config.json` gives them.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's channel standard deviations.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Streaming per-dimension mean and variance.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningStats {
    count: u64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl RunningStats {
    /// Statistics of `dim`-dimensional rows, none seen yet.
    pub fn new(dim: usize) -> Self {
        RunningStats { count: 0, mean: vec![0.0; dim], m2: vec![0.0; dim] }
    }

    /// Number of rows seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds one row.
    ///
    /// # Panics
    /// If the row's length is not the dimension (a programmer error).
    pub fn push(&mut self, row: &[f32]) {
        assert_eq!(row.len(), self.mean.len(), "row length differs from the statistics' dimension");
        self.count += 1;
        let n = self.count as f64;
        for ((m, s), &x) in self.mean.iter_mut().zip(&mut self.m2).zip(row) {
            let x = f64::from(x);
            let delta = x - *m;
            *m += delta / n;
            *s += delta * (x - *m);
        }
    }

    /// Adds every row of a row-major block (`data.len()` a multiple of the dimension).
    pub fn push_rows(&mut self, data: &[f32]) {
        for row in data.chunks_exact(self.mean.len().max(1)) {
            self.push(row);
        }
    }

    /// Combines the statistics of two disjoint sets of rows.
    pub fn merge(mut self, other: &RunningStats) -> RunningStats {
        assert_eq!(self.mean.len(), other.mean.len(), "merging statistics of different dimensions");
        if other.count == 0 {
            return self;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        for i in 0..self.mean.len() {
            let delta = other.mean[i] - self.mean[i];
            self.mean[i] += delta * nb / n;
            self.m2[i] += other.m2[i] + delta * delta * na * nb / n;
        }
        self.count += other.count;
        self
    }

    /// The normaliser: mean and population standard deviation per dimension. A dimension with
    /// (near) zero spread keeps a standard deviation of 1, so it is centred but not blown up.
    pub fn finish(&self) -> Normalizer {
        let n = self.count.max(1) as f64;
        let std = self
            .m2
            .iter()
            .map(|s| {
                let sd = (s / n).sqrt();
                if sd > 1e-8 {
                    sd as f32
                } else {
                    1.0
                }
            })
            .collect();
        Normalizer { mean: self.mean.iter().map(|m| *m as f32).collect(), std, count: self.count }
    }
}

/// Per-dimension `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    /// Mean per dimension.
    pub mean: Vec<f32>,
    /// Standard deviation per dimension (never 0).
    pub std: Vec<f32>,
    /// How many rows the statistics came from (0 for fixed statistics such as ImageNet's).
    pub count: u64,
}

impl Normalizer {
    /// The ImageNet channel statistics, for images scaled to `[0, 1]`.
    pub fn imagenet() -> Self {
        Normalizer { mean: IMAGENET_MEAN.to_vec(), std: IMAGENET_STD.to_vec(), count: 0 }
    }

    /// OpenAI CLIP's channel statistics, for images scaled to `[0, 1]`.
    pub fn clip() -> Self {
        Normalizer { mean: CLIP_MEAN.to_vec(), std: CLIP_STD.to_vec(), count: 0 }
    }

    /// The dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Normalises a row-major block whose rows have the normaliser's dimension (features,
    /// or `[frames, n_mels]` spectrograms).
    pub fn apply(&self, data: &mut [f32]) {
        for row in data.chunks_exact_mut(self.dim().max(1)) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
    }

    /// Normalises a channel-first image `[C, H, W]` (flattened), one statistic per channel.
    pub fn apply_chw(&self, data: &mut [f32]) {
        let plane = data.len() / self.dim().max(1);
        for ((chunk, m), s) in data.chunks_exact_mut(plane.max(1)).zip(&self.mean).zip(&self.std) {
            for x in chunk {
                *x = (*x - m) / s;
            }
        }
    }

    /// Writes the statistics as JSON, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let json = serde_json::json!({ "mean": self.mean, "std": self.std, "count": self.count });
        write_atomic(path.as_ref(), format!("{json:#}\n").as_bytes())
    }

    /// Reads statistics written by [`Normalizer::save`]; `expected_dim` guards against
    /// statistics of another data set or configuration.
    pub fn load(path: impl AsRef<Path>, expected_dim: Option<usize>) -> Result<Self> {
        let path = path.as_ref();
        let text = crate::fs::read_text_capped(path, crate::fs::FileKind::Text)?;
        let bad = |m: String| Error::decode(path, m);
        let v: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let list = |key: &str| -> Result<Vec<f32>> {
            let items = v
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("no `{key}` array")))?;
            items
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32).filter(|f| f.is_finite()))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| bad(format!("`{key}` holds something other than finite numbers")))
        };
        let (mean, std) = (list("mean")?, list("std")?);
        if mean.len() != std.len() {
            return Err(bad(format!("{} means but {} standard deviations", mean.len(), std.len())));
        }
        if let Some(i) = std.iter().position(|s| *s <= 0.0) {
            return Err(bad(format!("std[{i}] = {} is not positive", std[i])));
        }
        if let Some(d) = expected_dim.filter(|d| *d != mean.len()) {
            return Err(bad(format!(
                "statistics of dimension {}, but the data has dimension {d}",
                mean.len()
            )));
        }
        let count = v.get("count").and_then(Value::as_u64).unwrap_or(0);
        Ok(Normalizer { mean, std, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_matches_two_pass_and_merging_matches_streaming() {
        let rows: Vec<[f32; 2]> =
            (0..1000).map(|i| [(i as f32 * 0.37).sin() * 5.0 + 100.0, (i % 7) as f32]).collect();
        let mut all = RunningStats::new(2);
        for r in &rows {
            all.push(r);
        }
        let n = rows.len() as f64;
        for d in 0..2 {
            let mean = rows.iter().map(|r| f64::from(r[d])).sum::<f64>() / n;
            let var = rows.iter().map(|r| (f64::from(r[d]) - mean).powi(2)).sum::<f64>() / n;
            let got = all.finish();
            assert!((f64::from(got.mean[d]) - mean).abs() < 1e-4, "mean {d}");
            assert!((f64::from(got.std[d]) - var.sqrt()).abs() < 1e-4, "std {d}");
        }
        let (mut a, mut b) = (RunningStats::new(2), RunningStats::new(2));
        rows[..300].iter().for_each(|r| a.push(r));
        rows[300..].iter().for_each(|r| b.push(r));
        let merged = a.merge(&b).finish();
        let direct = all.finish();
        for d in 0..2 {
            assert!((merged.mean[d] - direct.mean[d]).abs() < 1e-5);
            assert!((merged.std[d] - direct.std[d]).abs() < 1e-5);
        }
        assert_eq!(merged.count, 1000);
    }

    #[test]
    fn images_are_normalised_per_channel() {
        let norm = Normalizer::imagenet();
        let mut img = vec![0.485f32; 4];
        img.extend([0.456 + 0.224; 4]);
        img.extend([0.0; 4]);
        norm.apply_chw(&mut img);
        assert!(img[..4].iter().all(|v| v.abs() < 1e-6));
        assert!(img[4..8].iter().all(|v| (v - 1.0).abs() < 1e-5));
        assert!(img[8..].iter().all(|v| (v + 0.406 / 0.225).abs() < 1e-5));
    }

    #[test]
    fn saved_statistics_come_back_and_bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("mm-norm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("stats.json");
        let norm = Normalizer { mean: vec![0.1, -2.5], std: vec![3.0, 0.25], count: 9 };
        norm.save(&file).expect("save");
        assert_eq!(Normalizer::load(&file, Some(2)).expect("load"), norm);
        let e = Normalizer::load(&file, Some(64)).expect_err("wrong dim").to_string();
        assert!(e.contains("dimension 2, but the data has dimension 64"), "{e}");
        std::fs::write(&file, r#"{"mean":[1,2],"std":[1,0]}"#).expect("write");
        assert!(Normalizer::load(&file, None)
            .expect_err("zero std")
            .to_string()
            .contains("std[1] = 0"));
        std::fs::write(&file, r#"{"mean":[1],"std":["x"]}"#).expect("write");
        assert!(Normalizer::load(&file, None)
            .expect_err("not numbers")
            .to_string()
            .contains("finite numbers"));
        std::fs::remove_dir_all(dir).ok();
    }
}

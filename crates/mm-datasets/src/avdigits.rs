//! Audio-visual digits: MNIST images paired with Free Spoken Digit Dataset recordings of the
//! same digit, written as a manifest with PNG and WAV files (in the spirit of AV-MNIST,
//! Vielzeuf et al. 2018, used by MultiBench).
//!
//! - **Splits without leaks.** MNIST's official test images pair only with FSDD's conventional
//!   test recordings (take index 0-4 of every speaker and digit), training images only with the
//!   other takes, so no recording is on both sides. The validation split is a seeded share of
//!   each digit's training images (it shares recordings with training, never with test).
//! - **A seeded pairing rule.** For each digit and side the recordings are shuffled by the seed
//!   and dealt to that digit's images in turn, so every recording is used about equally.
//! - **Degradation,** so that neither modality alone is near perfect: Gaussian pixel noise and a
//!   black square occluding part of each image, white noise at a chosen SNR on each recording.
//!   Each sample gets its own draw, from (seed, sample).
//!
//! The output folder (written whole or not at all) holds `images/`, `audio/`, `manifest.jsonl`
//! (`image`, `audio`, `label` = the digit) and `av-digits.json` (the configuration and counts).
//!
//! ```no_run
//! use mm_datasets::avdigits::{convert, AvDigitsConfig};
//!
//! let config = AvDigitsConfig { image_noise: 0.4, occlusion: 0.5, audio_snr_db: Some(0.0), ..AvDigitsConfig::default() };
//! let summary = convert("mnist/".as_ref(), "fsdd/v1.0.10.tar.gz".as_ref(), "data/av-digits".as_ref(), &config, false)?;
//! println!("{} train, {} val, {} test", summary.splits[0], summary.splits[1], summary.splits[2]);
//! # Ok::<(), mm_data::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use mm_data::audio::{encode_wav, Audio};
use mm_data::manifest::{Manifest, Sample, Split};
use mm_data::rng::Rng;
use mm_data::{Error, Result};
use mm_fetch::idx::{read_mnist, Mnist};

use crate::fsdd::read_recordings;

/// How to build the data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AvDigitsConfig {
    /// Training images per digit, the first of each digit in MNIST's order (`None`: all).
    pub train_per_digit: Option<usize>,
    /// Test images per digit (`None`: all).
    pub test_per_digit: Option<usize>,
    /// Share of each digit's training images held out for validation.
    pub val: f64,
    /// Standard deviation of Gaussian pixel noise, pixels in `[0, 1]`.
    pub image_noise: f64,
    /// Side of the black square hiding part of each image, as a share of the image side.
    pub occlusion: f64,
    /// White noise added to each recording at this signal-to-noise ratio (dB); `None`: clean.
    pub audio_snr_db: Option<f64>,
    /// Seed of the pairing, the split and the degradation.
    pub seed: u64,
}

impl Default for AvDigitsConfig {
    fn default() -> Self {
        AvDigitsConfig {
            train_per_digit: Some(500),
            test_per_digit: Some(100),
            val: 0.1,
            image_noise: 0.0,
            occlusion: 0.0,
            audio_snr_db: None,
            seed: 0,
        }
    }
}

/// What [`convert`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvDigitsSummary {
    /// The configuration.
    pub config: AvDigitsConfig,
    /// Samples in train, val and test.
    pub splits: [usize; 3],
    /// FSDD recordings used on the training and on the test side.
    pub recordings: [usize; 2],
}

/// Pixel noise and an occluding square on a `[h, w]` greyscale image.
fn degrade_image(
    pixels: &[u8],
    h: usize,
    w: usize,
    config: &AvDigitsConfig,
    rng: &mut Rng,
) -> Vec<u8> {
    let mut out: Vec<f64> = pixels.iter().map(|p| f64::from(*p) / 255.0).collect();
    if config.occlusion > 0.0 {
        let side = ((config.occlusion * h.min(w) as f64).round() as usize).clamp(1, h.min(w));
        let top = rng.below((h - side + 1) as u64) as usize;
        let left = rng.below((w - side + 1) as u64) as usize;
        for y in top..top + side {
            for x in left..left + side {
                out[y * w + x] = 0.0;
            }
        }
    }
    if config.image_noise > 0.0 {
        for v in &mut out {
            *v += rng.normal() * config.image_noise;
        }
    }
    out.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
}

/// White noise at `snr_db` below the recording's own RMS level.
pub(crate) fn degrade_audio(audio: &Audio, snr_db: f64, rng: &mut Rng) -> Audio {
    let rms = (audio.samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>()
        / audio.samples.len().max(1) as f64)
        .sqrt();
    let sigma = rms / 10f64.powf(snr_db / 20.0);
    let samples = audio
        .samples
        .iter()
        .map(|s| (f64::from(*s) + rng.normal() * sigma).clamp(-1.0, 1.0) as f32)
        .collect();
    Audio { sample_rate: audio.sample_rate, samples }
}

/// Builds the data set from MNIST's four idx files in `mnist` and FSDD's archive (or folder of
/// WAVs) `fsdd`, into `out` (see the module documentation). An existing `out` is replaced only
/// with `force`, and only if it holds an earlier `av-digits.json`.
pub fn convert(
    mnist: &Path,
    fsdd: &Path,
    out: &Path,
    config: &AvDigitsConfig,
    force: bool,
) -> Result<AvDigitsSummary> {
    if !(0.0..1.0).contains(&config.val)
        || !(0.0..=1.0).contains(&config.occlusion)
        || !config.image_noise.is_finite()
        || config.image_noise < 0.0
    {
        return Err(Error::Config(format!(
            "av-digits: val {} in [0, 1), occlusion {} in [0, 1], image_noise {} not negative",
            config.val, config.occlusion, config.image_noise
        )));
    }
    let recordings = read_recordings(fsdd)?;
    // Recordings per (digit, side), shuffled by the seed.
    let mut pools: BTreeMap<(u8, bool), Vec<usize>> = BTreeMap::new();
    for (i, r) in recordings.iter().enumerate() {
        pools.entry((r.digit, r.test)).or_default().push(i);
    }
    for ((digit, test), pool) in &mut pools {
        Rng::new(config.seed ^ (u64::from(*digit) << 8) ^ u64::from(*test)).shuffle(pool);
    }
    // One sample: its id, split, MNIST side and index, digit and recording.
    struct Planned {
        id: String,
        split: Split,
        side: usize,
        image: usize,
        digit: u8,
        recording: usize,
    }
    let mnist_sides = [
        read_mnist(mnist, "train").map_err(crate::from_fetch)?,
        read_mnist(mnist, "t10k").map_err(crate::from_fetch)?,
    ];
    let mut plan = Vec::new();
    for (side, Mnist { labels, .. }) in mnist_sides.iter().enumerate() {
        let test = side == 1;
        let limit = if test { config.test_per_digit } else { config.train_per_digit };
        for digit in 0..10u8 {
            let images: Vec<usize> = labels
                .iter()
                .enumerate()
                .filter(|(_, l)| **l == digit)
                .map(|(i, _)| i)
                .take(limit.unwrap_or(usize::MAX))
                .collect();
            let pool = pools.get(&(digit, test)).filter(|p| !p.is_empty()).ok_or_else(|| {
                Error::decode(
                    fsdd,
                    format!(
                        "no {} recording of the digit {digit}",
                        if test { "test (take 0-4)" } else { "training (take 5+)" }
                    ),
                )
            })?;
            // The validation share: a seeded choice among the digit's training images.
            let mut order: Vec<usize> = (0..images.len()).collect();
            Rng::new(config.seed ^ 0x5EED ^ u64::from(digit)).shuffle(&mut order);
            let n_val = if test { 0 } else { (images.len() as f64 * config.val).round() as usize };
            let mut val = vec![false; images.len()];
            for &k in &order[..n_val] {
                val[k] = true;
            }
            for (k, &image) in images.iter().enumerate() {
                let split = if test {
                    Split::Test
                } else if val[k] {
                    Split::Val
                } else {
                    Split::Train
                };
                let id = format!("{}{:05}", if test { "t" } else { "m" }, image);
                plan.push(Planned {
                    id,
                    split,
                    side,
                    image,
                    digit,
                    recording: pool[k % pool.len()],
                });
            }
        }
    }
    plan.sort_by(|a, b| a.id.cmp(&b.id));
    mm_data::fs::write_dir_atomic(out, "av-digits.json", force, |root| {
        for sub in ["images", "audio"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| Error::io(root.join(sub), e))?;
        }
        // Clean recordings are written once and shared; degraded ones once per sample.
        plan.par_iter().enumerate().try_for_each(|(i, p)| -> Result<()> {
            let mut rng = Rng::for_sample(config.seed, 0, i as u64, 7);
            let Mnist { pixels, height: h, width: w, .. } = &mnist_sides[p.side];
            let image = &pixels[p.image * h * w..(p.image + 1) * h * w];
            let grey = degrade_image(image, *h, *w, config, &mut rng);
            let png = image::GrayImage::from_raw(*w as u32, *h as u32, grey)
                .ok_or_else(|| Error::Config("MNIST image size".into()))?;
            let path = root.join(format!("images/{}.png", p.id));
            png.save(&path).map_err(|e| Error::decode(&path, e.to_string()))?;
            if let Some(snr) = config.audio_snr_db {
                let noisy = degrade_audio(&recordings[p.recording].audio, snr, &mut rng);
                let path = root.join(format!("audio/{}.wav", p.id));
                std::fs::write(&path, encode_wav(&noisy)).map_err(|e| Error::io(&path, e))?;
            }
            Ok(())
        })?;
        let mut used: Vec<usize> = plan.iter().map(|p| p.recording).collect();
        used.sort_unstable();
        used.dedup();
        if config.audio_snr_db.is_none() {
            used.par_iter().try_for_each(|&r| -> Result<()> {
                let path = root.join(format!("audio/{}", recordings[r].name));
                std::fs::write(&path, encode_wav(&recordings[r].audio))
                    .map_err(|e| Error::io(&path, e))
            })?;
        }
        let mut manifest = Manifest::new(root);
        for p in &plan {
            let audio = match config.audio_snr_db {
                Some(_) => format!("audio/{}.wav", p.id),
                None => format!("audio/{}", recordings[p.recording].name),
            };
            manifest.push(
                Sample::new(p.id.clone())
                    .with_split(p.split)
                    .with_image(format!("images/{}.png", p.id))
                    .with_audio(audio)
                    .with_label(p.digit.to_string()),
            )?;
        }
        manifest.write(root.join("manifest.jsonl"))?;
        let count = |s: Split| plan.iter().filter(|p| p.split == s).count();
        let sides = [
            used.iter().filter(|r| !recordings[**r].test).count(),
            used.iter().filter(|r| recordings[**r].test).count(),
        ];
        let summary = AvDigitsSummary {
            config: config.clone(),
            splits: [count(Split::Train), count(Split::Val), count(Split::Test)],
            recordings: sides,
        };
        let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Config(e.to_string()))?;
        mm_data::fs::write_atomic(&root.join("av-digits.json"), &json)?;
        Ok(summary)
    })
}

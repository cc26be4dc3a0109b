//! Background noise for audio augmentation: real recordings (rain, traffic, voices: ESC-50 after
//! `cargo xtask fetch-data esc50`, or any folder or manifest of audio files) mixed into training
//! samples at a random signal-to-noise ratio, in the way speech recipes use MUSAN.
//!
//! The clips are decoded and resampled once, when a training pipeline is prepared; a seeded
//! choice of whole clips up to a memory budget is kept. Each mix draws the clip, an offset into
//! it and the SNR from the sample's own [`Rng`], so results do not depend on thread count.
//!
//! ```
//! use mm_data::noise::NoiseBank;
//! use mm_data::rng::Rng;
//!
//! let bank = NoiseBank::from_clips(vec![vec![0.1, -0.1, 0.2, -0.2]], 8000);
//! let mut speech = vec![0.5f32; 16];
//! bank.mix(&mut speech, 10.0, &mut Rng::new(3));
//! assert!(speech.iter().any(|s| *s != 0.5));
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audio::load_audio;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::rng::Rng;

/// `[data.audio.augment.background]`: where the noise comes from and how it is mixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackgroundNoise {
    /// A manifest (JSONL or CSV) whose samples' `audio` files are the noise (every split), or
    /// a folder of audio files; relative to the current directory, like `data.manifest`.
    pub source: PathBuf,
    /// Probability that a training sample gets noise.
    #[serde(default = "default_p")]
    pub p: f64,
    /// Signal-to-noise ratio in dB, drawn uniformly from `[lo, hi]`.
    #[serde(default = "default_snr")]
    pub snr_db: (f64, f64),
    /// Seconds of noise kept in memory, a seeded choice of whole clips.
    #[serde(default = "default_seconds")]
    pub max_seconds: f64,
}

fn default_p() -> f64 {
    0.5
}
fn default_snr() -> (f64, f64) {
    (0.0, 20.0)
}
fn default_seconds() -> f64 {
    600.0
}

impl BackgroundNoise {
    /// Checks the numbers, naming the key at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| {
            Err(Error::Config(format!("data.audio.augment.background.{key}: {why}")))
        };
        if !(0.0..=1.0).contains(&self.p) {
            return bad("p", format!("{} is not a probability", self.p));
        }
        let (lo, hi) = self.snr_db;
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return bad("snr_db", format!("[{lo}, {hi}] is not a range of dB"));
        }
        if !(self.max_seconds.is_finite() && self.max_seconds > 0.0) {
            return bad("max_seconds", format!("{} must be positive", self.max_seconds));
        }
        Ok(())
    }
}

/// Decoded noise clips at one sample rate.
#[derive(Clone, PartialEq)]
pub struct NoiseBank {
    clips: Vec<Vec<f32>>,
    sample_rate: u32,
    /// Files listed but not kept: silent (no energy to scale), or past the memory budget.
    pub left_out: Vec<(PathBuf, &'static str)>,
}

impl std::fmt::Debug for NoiseBank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.clips.iter().map(Vec::len).sum::<usize>() as f64
            / f64::from(self.sample_rate.max(1));
        write!(
            f,
            "NoiseBank({} clips, {seconds:.1} s at {} Hz, {} left out)",
            self.clips.len(),
            self.sample_rate,
            self.left_out.len()
        )
    }
}

impl NoiseBank {
    /// A bank of clips already at `sample_rate`; silent and empty clips are left out.
    pub fn from_clips(clips: Vec<Vec<f32>>, sample_rate: u32) -> Self {
        let clips = clips.into_iter().filter(|c| c.iter().any(|s| *s != 0.0)).collect();
        NoiseBank { clips, sample_rate, left_out: Vec::new() }
    }

    /// Reads the files of `config.source` (in a seeded order, until `max_seconds`), decoded
    /// and resampled to `sample_rate`. A file that cannot be decoded is an error naming it;
    /// none usable is an error too.
    pub fn load(config: &BackgroundNoise, sample_rate: u32, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut files = list_audio(&config.source)?;
        if files.is_empty() {
            return Err(Error::Config(format!(
                "data.audio.augment.background.source: no audio files in {}",
                config.source.display()
            )));
        }
        // A seeded shuffle (Fisher-Yates), so that the budget keeps a fair sample of clips.
        let mut rng = Rng::new(seed ^ 0x006e_6f69_7365);
        for i in (1..files.len()).rev() {
            files.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let budget = (config.max_seconds * f64::from(sample_rate)) as usize;
        let (mut clips, mut left_out, mut held) = (Vec::new(), Vec::new(), 0usize);
        for path in files {
            if held >= budget {
                left_out.push((path, "past max_seconds"));
                continue;
            }
            let audio = load_audio(&path, sample_rate)?;
            if audio.samples.iter().all(|s| *s == 0.0) {
                left_out.push((path, "silent"));
                continue;
            }
            held += audio.samples.len();
            clips.push(audio.samples);
        }
        if clips.is_empty() {
            return Err(Error::Config(format!(
                "data.audio.augment.background.source: every clip in {} is silent",
                config.source.display()
            )));
        }
        Ok(NoiseBank { clips, sample_rate, left_out })
    }

    /// Clips held.
    pub fn len(&self) -> usize {
        self.clips.len()
    }

    /// Whether no clip is held.
    pub fn is_empty(&self) -> bool {
        self.clips.is_empty()
    }

    /// The sample rate of the clips.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Adds a clip (chosen, and entered at an offset, by `rng`; looped if shorter) to `samples`,
    /// scaled so that the sample's power over the noise's is `snr_db`. A silent sample is left
    /// as it is.
    pub fn mix(&self, samples: &mut [f32], snr_db: f64, rng: &mut Rng) {
        if self.clips.is_empty() || samples.is_empty() {
            return;
        }
        let clip = &self.clips[rng.below(self.clips.len() as u64) as usize];
        let offset = rng.below(clip.len() as u64) as usize;
        let noise = |i: usize| clip[(offset + i) % clip.len()];
        let signal_power =
            samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64;
        let noise_power = (0..samples.len()).map(|i| f64::from(noise(i)).powi(2)).sum::<f64>()
            / samples.len() as f64;
        if signal_power == 0.0 || noise_power == 0.0 {
            return;
        }
        let scale = (signal_power / (noise_power * 10f64.powf(snr_db / 10.0))).sqrt() as f32;
        for (i, s) in samples.iter_mut().enumerate() {
            *s += scale * noise(i);
        }
    }
}

/// The audio files of a folder (by extension, sorted) or of a manifest's samples.
fn list_audio(source: &Path) -> Result<Vec<PathBuf>> {
    if source.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(source)
            .map_err(|e| Error::io(source, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    ["wav", "flac", "mp3", "ogg"].contains(&e.to_ascii_lowercase().as_str())
                })
            })
            .collect();
        files.sort();
        return Ok(files);
    }
    let manifest = Manifest::read(source)?;
    Ok(manifest
        .samples()
        .iter()
        .filter_map(|s| s.audio.as_ref().map(|a| manifest.root().join(a)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_at_the_asked_signal_to_noise_ratio() {
        let clip: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let bank = NoiseBank::from_clips(vec![vec![0.0; 10], clip], 8000);
        assert_eq!(bank.len(), 1, "the silent clip is left out");
        let clean: Vec<f32> = (0..3000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        for snr in [0.0, 10.0, 20.0] {
            let mut mixed = clean.clone();
            bank.mix(&mut mixed, snr, &mut Rng::new(5));
            let added: f64 = mixed.iter().zip(&clean).map(|(m, c)| f64::from(m - c).powi(2)).sum();
            let signal: f64 = clean.iter().map(|c| f64::from(*c).powi(2)).sum();
            let measured = 10.0 * (signal / added).log10();
            assert!((measured - snr).abs() < 1e-3, "asked {snr} dB, got {measured}");
        }
        let mut silent = vec![0.0f32; 10];
        bank.mix(&mut silent, 0.0, &mut Rng::new(1));
        assert_eq!(silent, vec![0.0; 10]);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let ok =
            BackgroundNoise { source: "n".into(), p: 0.5, snr_db: (0.0, 20.0), max_seconds: 10.0 };
        assert!(ok.validate().is_ok());
        for (bad, key) in [
            (BackgroundNoise { p: 1.5, ..ok.clone() }, "background.p"),
            (BackgroundNoise { snr_db: (10.0, 0.0), ..ok.clone() }, "background.snr_db"),
            (BackgroundNoise { max_seconds: 0.0, ..ok.clone() }, "background.max_seconds"),
        ] {
            assert!(bad.validate().expect_err(key).to_string().contains(key));
        }
    }
}

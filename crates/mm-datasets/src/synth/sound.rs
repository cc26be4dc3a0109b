//! Synthesis of the synthetic audio: a rhythm of one to three beeps, each a gliding tone with
//! a harmonic, in a low or a high pitch band, over white noise.

use std::f64::consts::PI;

use mm_data::rng::Rng;

/// The pitch bands (Hz): the low band and the high band are two octaves apart.
pub const LOW_BAND: (f64, f64) = (220.0, 440.0);
/// See [`LOW_BAND`].
pub const HIGH_BAND: (f64, f64) = (880.0, 1760.0);

/// What a clip contains, drawn before it is rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Beeps {
    /// Whether the tones are in the high band.
    pub high: bool,
    /// Number of beeps (1 to 3).
    pub count: usize,
}

/// Renders `duration` seconds at `sample_rate` Hz; `noise` scales the white noise.
pub fn render(
    beeps: &Beeps,
    sample_rate: u32,
    duration: f64,
    noise: f64,
    rng: &mut Rng,
) -> Vec<f32> {
    let n = (duration * f64::from(sample_rate)).round() as usize;
    let sr = f64::from(sample_rate);
    let mut out = vec![0.0f64; n];
    let (lo, hi) = if beeps.high { HIGH_BAND } else { LOW_BAND };
    // Log-uniform base frequency, shared by the beeps of a clip (the clip's "voice").
    let f0 = lo * (hi / lo).powf(rng.unit());
    // Beeps sit in equal slots of the clip with a random offset, so they never overlap.
    let slot = duration / 3.0;
    let first_slot = rng.below((3 - beeps.count.min(3) + 1) as u64) as usize;
    for k in 0..beeps.count.min(3) {
        let len = rng.uniform(0.35, 0.6) * slot;
        let start = (first_slot + k) as f64 * slot + rng.uniform(0.0, slot - len);
        let glide = rng.uniform(-0.15, 0.15);
        let amp = rng.uniform(0.25, 0.5);
        let harmonic = rng.uniform(0.1, 0.4);
        let (i0, i1) = ((start * sr) as usize, (((start + len) * sr) as usize).min(n));
        let ramp = 0.01 * sr;
        let mut phase = 0.0f64;
        for (j, sample) in out[i0..i1].iter_mut().enumerate() {
            let t = j as f64 / (i1 - i0) as f64;
            let f = f0 * (1.0 + glide * (t - 0.5));
            phase += 2.0 * PI * f / sr;
            let j = j as f64;
            let env = (j / ramp).min(1.0).min(((i1 - i0) as f64 - j) / ramp).max(0.0);
            let env = 0.5 - 0.5 * (PI * env).cos();
            *sample += amp * env * (phase.sin() + harmonic * (2.0 * phase).sin());
        }
    }
    let sigma = 0.05 * noise;
    out.iter().map(|s| (s + sigma * rng.normal()).clamp(-1.0, 1.0) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn energy_in(samples: &[f32], sr: f64, lo: f64, hi: f64) -> f64 {
        // Goertzel-free: a direct DFT on a coarse grid is enough for a test.
        let mut total = 0.0;
        let mut f = lo;
        while f < hi {
            let (mut re, mut im) = (0.0, 0.0);
            for (i, s) in samples.iter().enumerate() {
                let w = 2.0 * PI * f * i as f64 / sr;
                re += f64::from(*s) * w.cos();
                im += f64::from(*s) * w.sin();
            }
            total += re * re + im * im;
            f += 10.0;
        }
        total
    }

    #[test]
    fn pitch_band_and_beep_count_are_rendered() {
        for (high, count) in [(false, 1), (true, 3), (true, 2)] {
            let mut rng = Rng::new(count as u64);
            let x = render(&Beeps { high, count }, 8000, 1.0, 0.0, &mut rng);
            assert_eq!(x.len(), 8000);
            let low = energy_in(&x, 8000.0, 200.0, 460.0);
            let hi = energy_in(&x, 8000.0, 860.0, 1800.0);
            assert_eq!(hi > low, high, "low {low} high {hi}");
            // Count the beeps: runs of 10 ms frames whose RMS is above a threshold.
            let rms: Vec<bool> = x
                .chunks(80)
                .map(|c| (c.iter().map(|v| v * v).sum::<f32>() / 80.0).sqrt() > 0.05)
                .collect();
            let onsets = rms.windows(2).filter(|w| !w[0] && w[1]).count() + usize::from(rms[0]);
            assert_eq!(onsets, count);
        }
    }
}

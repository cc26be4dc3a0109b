//! Log-mel spectrograms, computed the way torchaudio's `transforms.MelSpectrogram` computes
//! them: a periodic Hann window, frames centred on `t·hop` with reflect padding, the power
//! spectrum (`|X|²`), and a triangular mel filter bank on the HTK mel scale without
//! normalisation. The log is `ln(mel + log_offset)`. The result is laid out `[frames, n_mels]`,
//! time first, as sequence models take it.
//!
//! A [`LogMel`] holds the FFT plan, the window and the filter bank, so that a loader builds it
//! once and reuses it for every clip.
//!
//! [`LogMel::invert`] goes back, as torchaudio's `InverseMelScale` and `GriffinLim` do: the
//! mel power to a linear power spectrogram (non-negative least squares through the filter
//! bank), then a waveform whose STFT magnitude matches it (Griffin-Lim with momentum, Perraudin
//! et al. 2013), for speech synthesis.
//!
//! ```
//! use mm_data::mel::{LogMel, MelConfig};
//!
//! let mel = LogMel::new(&MelConfig::default())?; // 16 kHz, n_fft 400, hop 160, 64 bins
//! let one_second = vec![0.0f32; 16_000];
//! let features = mel.compute(&one_second);
//! assert_eq!(features.dim(), (101, 64)); // 1 + 16000 / 160 frames
//! # Ok::<(), mm_data::mel::MelConfigError>(())
//! ```

use std::sync::Arc;

use ndarray::Array2;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// Parameters of the log-mel front end (torchaudio's names).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MelConfig {
    /// Sample rate of the audio, in Hz.
    pub sample_rate: u32,
    /// FFT size; also the window length.
    pub n_fft: usize,
    /// Samples between frames.
    pub hop_length: usize,
    /// Number of mel bins.
    pub n_mels: usize,
    /// Lowest frequency of the filter bank, in Hz.
    pub f_min: f64,
    /// Highest frequency, in Hz; `None` for the Nyquist frequency.
    pub f_max: Option<f64>,
    /// Added before the log, so that silence stays finite.
    pub log_offset: f32,
}

impl Default for MelConfig {
    /// 16 kHz audio, 25 ms windows every 10 ms, 64 mel bins: the usual speech front end.
    fn default() -> Self {
        MelConfig {
            sample_rate: 16_000,
            n_fft: 400,
            hop_length: 160,
            n_mels: 64,
            f_min: 0.0,
            f_max: None,
            log_offset: 1e-6,
        }
    }
}

/// Why a [`MelConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid log-mel configuration: {0}")]
pub struct MelConfigError(String);

/// A log-mel front end for one configuration.
pub struct LogMel {
    config: MelConfig,
    fft: Arc<dyn Fft<f32>>,
    window: Vec<f32>,
    /// Per mel bin: the first FFT bin it covers and its weights from there (the triangles
    /// overlap only their neighbours, so this is ~30x less work than the dense matrix).
    filters: Vec<(usize, Vec<f32>)>,
    n_freqs: usize,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel").field("config", &self.config).finish_non_exhaustive()
    }
}

fn hz_to_mel(f: f64) -> f64 {
    2595.0 * (1.0 + f / 700.0).log10()
}

fn mel_to_hz(m: f64) -> f64 {
    700.0 * (10f64.powf(m / 2595.0) - 1.0)
}

/// The triangular filter bank, `[n_freqs, n_mels]`, as torchaudio's `melscale_fbanks` makes it.
fn filter_bank(
    n_freqs: usize,
    f_min: f64,
    f_max: f64,
    n_mels: usize,
    sample_rate: u32,
) -> Vec<f32> {
    let nyquist = f64::from(sample_rate / 2);
    let all_freqs: Vec<f64> =
        (0..n_freqs).map(|i| nyquist * i as f64 / (n_freqs - 1).max(1) as f64).collect();
    let (m_min, m_max) = (hz_to_mel(f_min), hz_to_mel(f_max));
    let f_pts: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(m_min + (m_max - m_min) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut fb = vec![0.0f32; n_freqs * n_mels];
    for (k, &f) in all_freqs.iter().enumerate() {
        for m in 0..n_mels {
            let down = (f - f_pts[m]) / (f_pts[m + 1] - f_pts[m]);
            let up = (f_pts[m + 2] - f) / (f_pts[m + 2] - f_pts[m + 1]);
            fb[k * n_mels + m] = down.min(up).max(0.0) as f32;
        }
    }
    fb
}

/// Index into a signal of length `n` with reflect padding (`-1` reads `x[1]`), folding again
/// for a signal shorter than the padding.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let mut j = i.rem_euclid(period);
    if j >= n as isize {
        j = period - j;
    }
    j as usize
}

impl LogMel {
    /// Checks the configuration and precomputes the FFT plan, window and filter bank.
    pub fn new(config: &MelConfig) -> Result<Self, MelConfigError> {
        let err = |m: String| Err(MelConfigError(m));
        if config.sample_rate == 0
            || config.n_fft < 2
            || config.hop_length == 0
            || config.n_mels == 0
        {
            return err(format!(
                "sample_rate, n_mels and hop_length must be positive and n_fft at least 2 (got {config:?})"
            ));
        }
        let nyquist = f64::from(config.sample_rate) / 2.0;
        let f_max = config.f_max.unwrap_or(nyquist);
        if !(config.f_min >= 0.0 && config.f_min < f_max && f_max <= nyquist) {
            return err(format!(
                "need 0 <= f_min < f_max <= {nyquist} Hz, got f_min {} and f_max {f_max}",
                config.f_min
            ));
        }
        if !config.log_offset.is_finite() || config.log_offset <= 0.0 {
            return err(format!("log_offset must be positive, got {}", config.log_offset));
        }
        let n_freqs = config.n_fft / 2 + 1;
        let n = config.n_fft;
        let window = (0..n)
            .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32)
            .collect();
        let dense = filter_bank(n_freqs, config.f_min, f_max, config.n_mels, config.sample_rate);
        let filters = (0..config.n_mels)
            .map(|m| {
                let column: Vec<f32> = (0..n_freqs).map(|k| dense[k * config.n_mels + m]).collect();
                let first = column.iter().position(|w| *w != 0.0).unwrap_or(0);
                let last = column.iter().rposition(|w| *w != 0.0).map_or(first, |l| l + 1);
                (first, column[first..last].to_vec())
            })
            .collect();
        let fft = FftPlanner::new().plan_fft_forward(n);
        Ok(LogMel { config: *config, fft, window, filters, n_freqs })
    }

    /// The configuration.
    pub fn config(&self) -> &MelConfig {
        &self.config
    }

    /// Number of frames for a clip of `samples` samples: `1 + samples / hop`.
    pub fn frames(&self, samples: usize) -> usize {
        1 + samples / self.config.hop_length
    }

    /// The mel power spectrogram (before the log), `[frames, n_mels]`.
    pub fn power(&self, samples: &[f32]) -> Array2<f32> {
        let (n_fft, hop, n_mels) = (self.config.n_fft, self.config.hop_length, self.config.n_mels);
        let frames = self.frames(samples.len());
        let mut out = Array2::<f32>::zeros((frames, n_mels));
        if samples.is_empty() {
            return out;
        }
        let pad = (n_fft / 2) as isize;
        let mut buf = vec![Complex::new(0.0f32, 0.0); n_fft];
        let mut scratch = vec![Complex::new(0.0f32, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = vec![0.0f32; self.n_freqs];
        for (t, mut row) in out.rows_mut().into_iter().enumerate() {
            let start = (t * hop) as isize - pad;
            for (k, c) in buf.iter_mut().enumerate() {
                let i = start + k as isize;
                let x = if i >= 0 && (i as usize) < samples.len() {
                    samples[i as usize]
                } else {
                    samples[reflect(i, samples.len())]
                };
                *c = Complex::new(x * self.window[k], 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (p, c) in power.iter_mut().zip(&buf) {
                *p = c.norm_sqr();
            }
            for (o, (first, weights)) in row.iter_mut().zip(&self.filters) {
                *o = weights.iter().zip(&power[*first..]).map(|(w, p)| w * p).sum();
            }
        }
        out
    }

    /// The log-mel spectrogram, `ln(mel + log_offset)`, `[frames, n_mels]`.
    pub fn compute(&self, samples: &[f32]) -> Array2<f32> {
        let offset = self.config.log_offset;
        let mut mel = self.power(samples);
        mel.mapv_inplace(|v| (v + offset).ln());
        mel
    }
}

/// Options of [`LogMel::invert`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InvertConfig {
    /// Griffin-Lim iterations (torchaudio's default: 32).
    pub iterations: usize,
    /// Momentum of the fast Griffin-Lim (0.99, torchaudio's default; 0 for the plain one).
    pub momentum: f32,
    /// Multiplicative-update iterations of the mel-to-linear least squares.
    pub nnls_iterations: usize,
    /// Seed of the initial random phases.
    pub seed: u64,
}

impl Default for InvertConfig {
    fn default() -> Self {
        InvertConfig { iterations: 32, momentum: 0.99, nnls_iterations: 50, seed: 0 }
    }
}

impl LogMel {
    /// FFT bins per frame: `n_fft / 2 + 1`.
    pub fn n_freqs(&self) -> usize {
        self.n_freqs
    }

    /// The linear power spectrogram `[frames, n_freqs]` whose mel projection best matches
    /// `mel` (`[frames, n_mels]`, power, not log) with no negative power: least squares by
    /// multiplicative updates (Lee and Seung), started from the filter bank's transpose.
    pub fn mel_to_linear(&self, mel: &Array2<f32>, iterations: usize) -> Array2<f32> {
        let (frames, n_mels) = mel.dim();
        assert_eq!(n_mels, self.config.n_mels, "mel bins of the front end");
        let mut out = Array2::<f32>::zeros((frames, self.n_freqs));
        let project = |s: &[f32], m: &mut [f32]| {
            for (o, (first, w)) in m.iter_mut().zip(&self.filters) {
                *o = w.iter().zip(&s[*first..]).map(|(w, p)| w * p).sum();
            }
        };
        let back = |m: &[f32], s: &mut [f32]| {
            s.iter_mut().for_each(|v| *v = 0.0);
            for (v, (first, w)) in m.iter().zip(&self.filters) {
                for (k, wk) in w.iter().enumerate() {
                    s[first + k] += wk * v;
                }
            }
        };
        let (mut fm, mut m_hat, mut denom) =
            (vec![0.0f32; self.n_freqs], vec![0.0f32; n_mels], vec![0.0f32; self.n_freqs]);
        for (target, mut row) in mel.rows().into_iter().zip(out.rows_mut()) {
            let target: Vec<f32> = target.iter().map(|v| v.max(0.0)).collect();
            back(&target, &mut fm);
            let s = row.as_slice_mut().expect("standard layout");
            s.copy_from_slice(&fm);
            for _ in 0..iterations {
                project(s, &mut m_hat);
                back(&m_hat, &mut denom);
                for ((v, num), den) in s.iter_mut().zip(&fm).zip(&denom) {
                    *v *= num / (den + 1e-12);
                }
            }
        }
        out
    }

    /// The complex STFT of `samples`, `frames × n_freqs` (frames centred, reflect-padded, as in
    /// [`LogMel::power`]).
    fn stft(
        &self,
        samples: &[f32],
        frames: usize,
        out: &mut [Complex<f32>],
        buf: &mut [Complex<f32>],
        scratch: &mut [Complex<f32>],
    ) {
        for t in 0..frames {
            self.stft_frame(samples, t, buf, scratch);
            out[t * self.n_freqs..(t + 1) * self.n_freqs].copy_from_slice(&buf[..self.n_freqs]);
        }
    }

    /// Frame `t` of the STFT into `buf` (its first `n_freqs` values are the spectrum).
    fn stft_frame(
        &self,
        samples: &[f32],
        t: usize,
        buf: &mut [Complex<f32>],
        scratch: &mut [Complex<f32>],
    ) {
        let (n_fft, hop) = (self.config.n_fft, self.config.hop_length);
        let start = (t * hop) as isize - (n_fft / 2) as isize;
        for (k, c) in buf.iter_mut().enumerate() {
            let i = start + k as isize;
            let x = if samples.is_empty() { 0.0 } else { samples[reflect(i, samples.len())] };
            *c = Complex::new(x * self.window[k], 0.0);
        }
        self.fft.process_with_scratch(buf, scratch);
    }

    /// The inverse STFT (windowed overlap-add over the squared window's sum), `length` samples.
    fn istft(
        &self,
        spec: &[Complex<f32>],
        frames: usize,
        length: usize,
        inverse: &dyn Fft<f32>,
        buf: &mut [Complex<f32>],
        scratch: &mut [Complex<f32>],
    ) -> Vec<f32> {
        let (n_fft, hop) = (self.config.n_fft, self.config.hop_length);
        let pad = n_fft / 2;
        let total = n_fft + hop * frames.saturating_sub(1);
        let (mut signal, mut norm) = (vec![0.0f32; total], vec![0.0f32; total]);
        for t in 0..frames {
            let row = &spec[t * self.n_freqs..(t + 1) * self.n_freqs];
            for k in 0..n_fft {
                // A real signal's spectrum: the upper half mirrors the lower one, conjugated.
                buf[k] = if k < self.n_freqs { row[k] } else { row[n_fft - k].conj() };
            }
            inverse.process_with_scratch(buf, scratch);
            for k in 0..n_fft {
                let w = self.window[k];
                signal[t * hop + k] += buf[k].re / n_fft as f32 * w;
                norm[t * hop + k] += w * w;
            }
        }
        (0..length)
            .map(|i| i + pad)
            .map(|i| if i < total && norm[i] > 1e-8 { signal[i] / norm[i] } else { 0.0 })
            .collect()
    }

    /// A waveform whose STFT magnitude is close to `magnitude` (`[frames, n_freqs]`), by
    /// Griffin-Lim with momentum from seeded random phases; `(frames - 1) · hop` samples long.
    pub fn griffin_lim(&self, magnitude: &Array2<f32>, config: &InvertConfig) -> Vec<f32> {
        let (frames, freqs) = magnitude.dim();
        assert_eq!(freqs, self.n_freqs, "FFT bins of the front end");
        let length = frames.saturating_sub(1) * self.config.hop_length;
        let n = self.config.n_fft;
        let inverse = FftPlanner::new().plan_fft_inverse(n);
        let mut buf = vec![Complex::new(0.0f32, 0.0); n];
        let mut scratch =
            vec![
                Complex::new(0.0f32, 0.0);
                self.fft.get_inplace_scratch_len().max(inverse.get_inplace_scratch_len())
            ];
        let mut rng = crate::rng::Rng::new(config.seed);
        let mag: Vec<f32> = magnitude.iter().copied().collect();
        let mut angles: Vec<Complex<f32>> = (0..mag.len())
            .map(|_| Complex::from_polar(1.0, (rng.unit() * std::f64::consts::TAU) as f32))
            .collect();
        let mut previous = vec![Complex::new(0.0f32, 0.0); mag.len()];
        let mut rebuilt = vec![Complex::new(0.0f32, 0.0); mag.len()];
        let mut spec = vec![Complex::new(0.0f32, 0.0); mag.len()];
        let alpha = config.momentum / (1.0 + config.momentum);
        for _ in 0..config.iterations {
            for ((s, m), a) in spec.iter_mut().zip(&mag).zip(&angles) {
                *s = a * *m;
            }
            let signal =
                self.istft(&spec, frames, length, inverse.as_ref(), &mut buf, &mut scratch);
            self.stft(&signal, frames, &mut rebuilt, &mut buf, &mut scratch);
            for ((a, r), p) in angles.iter_mut().zip(&rebuilt).zip(previous.iter_mut()) {
                let v = r - *p * alpha;
                *a = v / (v.norm() + 1e-16);
                *p = *r;
            }
        }
        for ((s, m), a) in spec.iter_mut().zip(&mag).zip(&angles) {
            *s = a * *m;
        }
        self.istft(&spec, frames, length, inverse.as_ref(), &mut buf, &mut scratch)
    }

    /// A waveform from a log-mel spectrogram ([`LogMel::compute`]'s output, `[frames, n_mels]`):
    /// `exp` less the log offset, [`LogMel::mel_to_linear`], the square root, then
    /// [`LogMel::griffin_lim`].
    pub fn invert(&self, log_mel: &Array2<f32>, config: &InvertConfig) -> Vec<f32> {
        let offset = self.config.log_offset;
        let power = log_mel.mapv(|v| (v.exp() - offset).max(0.0));
        let linear = self.mel_to_linear(&power, config.nnls_iterations);
        self.griffin_lim(&linear.mapv(f32::sqrt), config)
    }
}

/// Whisper's log-mel front end (its feature extractor's numbers): 16 kHz audio padded with
/// zeros (or cut) to a 30-second window of 480 000 samples, a 400-point periodic Hann STFT
/// every 160 samples (centred, reflect padding), the power spectrum's last frame dropped
/// (3000 frames), a Slaney-scale, Slaney-normalised mel filter bank (librosa's, up to 8 kHz),
/// `log10` of at least 1e-10, floored at the window's maximum minus 8, then `(x + 4) / 4`.
///
/// ```
/// let front = mm_data::mel::WhisperMel::new(80);
/// let features = front.window(&vec![0.1f32; 16_000]); // one second of a constant
/// assert_eq!(features.dim(), (80, 3000));
/// ```
pub struct WhisperMel {
    stft: LogMel,
    /// `[n_freqs, n_mels]`, row-major.
    filters: Vec<f32>,
    n_mels: usize,
}

impl std::fmt::Debug for WhisperMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperMel").field("n_mels", &self.n_mels).finish()
    }
}

/// Samples in Whisper's 30-second window at 16 kHz.
pub const WHISPER_SAMPLES: usize = 480_000;
/// Frames of Whisper's window.
pub const WHISPER_FRAMES: usize = 3000;

fn slaney_hz_to_mel(f: f64) -> f64 {
    let logstep = 27.0 / 6.4f64.ln();
    if f >= 1000.0 {
        15.0 + (f / 1000.0).ln() * logstep
    } else {
        3.0 * f / 200.0
    }
}

fn slaney_mel_to_hz(m: f64) -> f64 {
    if m >= 15.0 {
        1000.0 * ((m - 15.0) * 6.4f64.ln() / 27.0).exp()
    } else {
        200.0 * m / 3.0
    }
}

impl WhisperMel {
    /// The front end with `n_mels` bins (80, or 128 for large-v3).
    ///
    /// # Panics
    /// If `n_mels` is 0 (a programmer error: it comes from the model's configuration, which is
    /// checked).
    pub fn new(n_mels: usize) -> Self {
        assert!(n_mels > 0, "mel bins");
        let config = MelConfig {
            sample_rate: 16_000,
            n_fft: 400,
            hop_length: 160,
            n_mels,
            f_min: 0.0,
            f_max: None,
            log_offset: 1e-10,
        };
        let stft = LogMel::new(&config).expect("a valid front end");
        let n_freqs = stft.n_freqs;
        let (lo, hi) = (slaney_hz_to_mel(0.0), slaney_hz_to_mel(8000.0));
        let pts: Vec<f64> = (0..n_mels + 2)
            .map(|i| slaney_mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
            .collect();
        let mut filters = vec![0.0f32; n_freqs * n_mels];
        for k in 0..n_freqs {
            let f = 8000.0 * k as f64 / (n_freqs - 1) as f64;
            for m in 0..n_mels {
                let down = (f - pts[m]) / (pts[m + 1] - pts[m]);
                let up = (pts[m + 2] - f) / (pts[m + 2] - pts[m + 1]);
                let enorm = 2.0 / (pts[m + 2] - pts[m]);
                filters[k * n_mels + m] = (down.min(up).max(0.0) * enorm) as f32;
            }
        }
        WhisperMel { stft, filters, n_mels }
    }

    /// Mel bins.
    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// `[n_mels, 3000]` features of one window of 16 kHz `samples` (zero-padded, or cut, to
    /// 30 s).
    pub fn window(&self, samples: &[f32]) -> Array2<f32> {
        let mut padded = samples[..samples.len().min(WHISPER_SAMPLES)].to_vec();
        padded.resize(WHISPER_SAMPLES, 0.0);
        self.features(&padded)
    }

    /// `[n_mels, samples / 160]` features of a whole recording, unpadded, scaled by its own
    /// loudest bin (as `WhisperFeatureExtractor` does with `padding = "longest"` and no
    /// truncation, for Whisper's long-form transcription, which cuts 30-second windows from
    /// them).
    pub fn features(&self, samples: &[f32]) -> Array2<f32> {
        let n_freqs = self.stft.n_freqs;
        let keep = samples.len() / self.stft.config.hop_length;
        let frames = self.stft.frames(samples.len());
        let mut out = Array2::<f32>::zeros((self.n_mels, keep));
        if keep == 0 {
            return out;
        }
        // One frame at a time: an hour's spectrum would be 0.6 GB.
        let mut buf = vec![Complex::new(0.0f32, 0.0); self.stft.config.n_fft];
        let mut scratch = vec![Complex::new(0.0f32, 0.0); self.stft.fft.get_inplace_scratch_len()];
        let mut power = vec![0.0f32; n_freqs];
        for t in 0..keep.min(frames) {
            self.stft.stft_frame(samples, t, &mut buf, &mut scratch);
            for (p, c) in power.iter_mut().zip(&buf[..n_freqs]) {
                *p = c.norm_sqr();
            }
            for m in 0..self.n_mels {
                let mel: f32 =
                    (0..n_freqs).map(|k| self.filters[k * self.n_mels + m] * power[k]).sum();
                out[[m, t]] = mel.max(1e-10).log10();
            }
        }
        let top = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        out.mapv_inplace(|x| (x.max(top - 8.0) + 4.0) / 4.0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_padding_indices() {
        // torch's reflect: x[-1] = x[1], x[n] = x[n-2].
        let got: Vec<usize> = (-3..8).map(|i| reflect(i, 5)).collect();
        assert_eq!(got, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect(-7, 2), 1);
    }

    #[test]
    fn a_tone_lands_in_the_right_mel_bin() {
        let mel = LogMel::new(&MelConfig::default()).expect("config");
        let tone: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin())
            .collect();
        let spec = mel.power(&tone);
        let middle = spec.row(50);
        let peak = middle
            .iter()
            .enumerate()
            .fold((0, 0.0f32), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        // 1 kHz on the HTK scale is 1000 mel of 2840 (at 8 kHz): bin ~ 1000/2840·65 - 1 ≈ 21.9.
        assert!((21..=23).contains(&peak.0), "peak in bin {}", peak.0);
        let silence = mel.compute(&vec![0.0; 1600]);
        assert!(silence.iter().all(|&v| (v - 1e-6f32.ln()).abs() < 1e-3));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let bad = |c: MelConfig| LogMel::new(&c).expect_err("must fail").to_string();
        let d = MelConfig::default();
        assert!(bad(MelConfig { hop_length: 0, ..d }).contains("hop_length"));
        assert!(bad(MelConfig { f_max: Some(9000.0), ..d }).contains("f_max"));
        assert!(bad(MelConfig { f_min: 500.0, f_max: Some(400.0), ..d }).contains("f_min"));
        assert!(bad(MelConfig { log_offset: 0.0, ..d }).contains("log_offset"));
        assert!(bad(MelConfig { log_offset: f32::NAN, ..d }).contains("log_offset"));
    }

    /// The frequency of a signal's strongest component, by a zero-padded FFT.
    fn dominant_hz(signal: &[f32], rate: f64) -> f64 {
        let n = signal.len().next_power_of_two() * 4;
        let mut buf: Vec<Complex<f32>> = signal
            .iter()
            .map(|x| Complex::new(*x, 0.0))
            .chain(std::iter::repeat(Complex::new(0.0, 0.0)))
            .take(n)
            .collect();
        FftPlanner::new().plan_fft_forward(n).process(&mut buf);
        let peak = (1..n / 2).max_by(|a, b| buf[*a].norm().total_cmp(&buf[*b].norm())).unwrap_or(0);
        peak as f64 * rate / n as f64
    }

    #[test]
    fn griffin_lim_rebuilds_a_tone_from_its_log_mel() {
        // A 440 Hz tone at 8 kHz through FSDD's front end and back: the rebuilt waveform's
        // strongest frequency is the tone's (within a mel bin's resolution there: ~60 Hz), and
        // its log-mel spectrogram is close to the original.
        let config = MelConfig {
            sample_rate: 8000,
            n_fft: 256,
            hop_length: 80,
            n_mels: 80,
            ..MelConfig::default()
        };
        let mel = LogMel::new(&config).expect("config");
        for hz in [440.0f32, 1250.0] {
            let tone: Vec<f32> = (0..8000)
                .map(|i| 0.5 * (std::f32::consts::TAU * hz * i as f32 / 8000.0).sin())
                .collect();
            let log_mel = mel.compute(&tone);
            let rebuilt = mel.invert(&log_mel, &InvertConfig::default());
            assert_eq!(rebuilt.len(), (log_mel.nrows() - 1) * 80);
            let got = dominant_hz(&rebuilt[800..7200], 8000.0);
            assert!((got - f64::from(hz)).abs() < 30.0, "{hz} Hz came back as {got:.1} Hz");
            let again = mel.compute(&rebuilt);
            let rows = again.nrows().min(log_mel.nrows());
            let diff: f32 = (10..rows - 10)
                .map(|t| {
                    (again.row(t).to_owned() - log_mel.row(t)).mapv(f32::abs).mean().unwrap_or(0.0)
                })
                .sum::<f32>()
                / (rows - 20) as f32;
            assert!(diff < 1.0, "mean log-mel distance {diff}");
        }
        // Plain Griffin-Lim (no momentum) of silence stays silent.
        let silent = mel.invert(
            &mel.compute(&vec![0.0; 800]),
            &InvertConfig { momentum: 0.0, ..InvertConfig::default() },
        );
        assert!(silent.iter().all(|x| x.abs() < 1e-3));
    }
}

//! Audio decoding and resampling: WAV, FLAC, MP3 and Ogg/Vorbis files (through symphonia)
//! become mono `f32` samples in `[-1, 1]` at a rate of your choice.
//!
//! Channels are mixed to mono by averaging. Resampling is band-limited: windowed-sinc
//! interpolation with a Hann window, 6 zero crossings and a cut-off at 99% of the lower Nyquist
//! frequency, the method and defaults of torchaudio's `functional.resample`, so features match
//! what a PyTorch pipeline computes. A file that is empty, unsupported, corrupt, or shorter than
//! its header declares (a truncated WAV) is an error naming the file.
//!
//! ```
//! use mm_data::audio::resample;
//!
//! // 100 ms of a 440 Hz tone at 8 kHz, resampled to 16 kHz: twice the samples, same tone.
//! let tone: Vec<f32> = (0..800).map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 8000.0).sin()).collect();
//! let up = resample(&tone, 8000, 16000);
//! assert_eq!(up.len(), 1600);
//! let expected = (2.0 * std::f32::consts::PI * 440.0 * 800.0 / 16000.0).sin();
//! assert!((up[800] - expected).abs() < 1e-2);
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{
    DecoderOptions, CODEC_TYPE_MP1, CODEC_TYPE_MP2, CODEC_TYPE_MP3, CODEC_TYPE_NULL,
    CODEC_TYPE_VORBIS,
};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::error::{Error, Result};

/// Decoded mono audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    /// Samples per second.
    pub sample_rate: u32,
    /// Mono samples in `[-1, 1]`.
    pub samples: Vec<f32>,
}

impl Audio {
    /// Duration in seconds.
    pub fn duration(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }
}

/// Decodes an audio file to mono at its own sample rate. A video file (by its extension,
/// [`crate::video::VIDEO_EXTENSIONS`]) gives its first audio track, through FFmpeg.
pub fn decode_audio(path: impl AsRef<Path>) -> Result<Audio> {
    use std::io::{Read, Seek, SeekFrom};
    let path = path.as_ref();
    if crate::video::is_video_file(path) {
        // The sound of a video file, through FFmpeg at its own rate.
        let rate = crate::video::probe(path)?
            .audio
            .map(|(_, rate)| rate)
            .filter(|r| *r > 0)
            .ok_or_else(|| Error::decode(path, "has no audio stream"))?;
        let samples = crate::video::decode_audio_track(path, rate, crate::video::timeout())?;
        return Ok(Audio { samples, sample_rate: rate });
    }
    let (mut file, len) = crate::fs::open_capped(path, crate::fs::FileKind::Audio)?;
    let mut head = Vec::with_capacity(HEAD);
    (&mut file).take(HEAD as u64).read_to_end(&mut head).map_err(|e| Error::io(path, e))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    check_wav_format(&head, path)?;
    decode_stream(Box::new(file), len, path)
}

/// Bytes of a file's start searched for a WAV `fmt ` chunk.
const HEAD: usize = 4096;

/// A RIFF/WAVE file whose `fmt ` chunk (within the first [`HEAD`] bytes) states 0 channels or
/// a sample rate of 0 is refused here: the WAV reader would panic on it (found by the fuzzer).
fn check_wav_format(head: &[u8], path: &Path) -> Result<()> {
    if head.len() < 12 || &head[..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Ok(());
    }
    let mut at = 12;
    while at + 8 <= head.len() {
        let id = &head[at..at + 4];
        let size =
            u32::from_le_bytes([head[at + 4], head[at + 5], head[at + 6], head[at + 7]]) as usize;
        if id == b"fmt " {
            let body = &head[at + 8..head.len().min(at + 8 + size)];
            if body.len() >= 8 {
                let channels = u16::from_le_bytes([body[2], body[3]]);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                if channels == 0 || rate == 0 {
                    return Err(Error::decode(path, format!("WAV header states {channels} channels at {rate} Hz (a damaged header?)")));
                }
            }
            return Ok(());
        }
        // Chunks are padded to an even size.
        at = at.saturating_add(8).saturating_add(size).saturating_add(size & 1);
    }
    Ok(())
}

/// The highest sample rate a decoder accepts (studio audio goes to 768 kHz): a header claiming
/// more is damaged, and resampling from it would build filter tables without bound.
pub const MAX_SAMPLE_RATE: u32 = 768_000;

/// Decodes audio already read into memory (for callers that also hash or cache the bytes);
/// `path` names it in errors and its extension hints the format.
pub fn decode_audio_bytes(bytes: Vec<u8>, path: &Path) -> Result<Audio> {
    check_wav_format(&bytes[..bytes.len().min(HEAD)], path)?;
    let len = bytes.len() as u64;
    decode_stream(Box::new(std::io::Cursor::new(bytes)), len, path)
}

/// Runs a call into symphonia, turning a panic of its own on a malformed file (the fuzzer found
/// `unreachable!` in its ID3v2 reader and a zero time base in its WAV reader) into an error that
/// names the file, so that bad input never takes the process down; nothing is printed
/// ([`crate::guard::catch`]).
fn guarded<T>(path: &Path, call: impl FnOnce() -> T) -> Result<T> {
    crate::guard::catch(call).map_err(|caught| {
        Error::decode(
            path,
            format!("the audio decoder failed on this file ({}): a damaged file?", caught.message),
        )
    })
}

fn decode_stream(
    source: Box<dyn symphonia::core::io::MediaSource>,
    len: u64,
    path: &Path,
) -> Result<Audio> {
    if len == 0 {
        return Err(Error::decode(path, "empty file (0 bytes)"));
    }
    let stream = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let probed = guarded(path, || {
        symphonia::default::get_probe().format(
            &hint,
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
    })?
    .map_err(|e| {
        Error::decode(path, format!("not a supported audio file (WAV, FLAC, MP3, Ogg/Vorbis): {e}"))
    })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| Error::decode(path, "no audio track"))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let sample_rate =
        params.sample_rate.ok_or_else(|| Error::decode(path, "no sample rate in the stream"))?;
    if sample_rate == 0 || sample_rate > MAX_SAMPLE_RATE {
        return Err(Error::decode(path, format!("sample rate {sample_rate} Hz in the header: outside 1 to {MAX_SAMPLE_RATE} Hz (a damaged header?)")));
    }
    // PCM (WAV) and FLAC headers state the exact length, so a shorter body means a truncated
    // file. MP3 and Vorbis lengths are estimates (encoder delay and padding), not promises.
    let exact_length = !matches!(
        params.codec,
        CODEC_TYPE_MP1 | CODEC_TYPE_MP2 | CODEC_TYPE_MP3 | CODEC_TYPE_VORBIS
    );
    let declared_frames = params.n_frames.filter(|_| exact_length);
    let mut decoder = guarded(path, || {
        symphonia::default::get_codecs().make(&params, &DecoderOptions::default())
    })?
    .map_err(|e| Error::decode(path, format!("unsupported codec: {e}")))?;

    let mut samples = Vec::with_capacity(declared_frames.unwrap_or(0).min(1 << 26) as usize);
    let mut buffer: Option<SampleBuffer<f32>> = None;
    let mut stopped_early = None;
    loop {
        let packet = match guarded(path, || format.next_packet())? {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => {
                stopped_early = Some(e.to_string());
                break;
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = guarded(path, || decoder.decode(&packet))?.map_err(|e| {
            Error::decode(path, format!("corrupt audio data after {} samples: {e}", samples.len()))
        })?;
        let spec = *decoded.spec();
        let channels = spec.channels.count().max(1);
        let buf = buffer.get_or_insert_with(|| SampleBuffer::new(decoded.capacity() as u64, spec));
        if buf.capacity() < decoded.capacity() * channels {
            *buf = SampleBuffer::new(decoded.capacity() as u64, spec);
        }
        buf.copy_interleaved_ref(decoded);
        let inv = 1.0 / channels as f32;
        samples.extend(
            buf.samples().chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() * inv),
        );
    }
    if let Some(e) = stopped_early {
        return Err(Error::decode(
            path,
            format!("corrupt container after {} samples: {e}", samples.len()),
        ));
    }
    if let Some(n) = declared_frames {
        if (samples.len() as u64) < n {
            return Err(Error::decode(
                path,
                format!(
                    "truncated: the header declares {n} samples, the file holds {}",
                    samples.len()
                ),
            ));
        }
        samples.truncate(n as usize);
    }
    Ok(Audio { sample_rate, samples })
}

/// Encodes mono audio as a 16-bit PCM WAV file's bytes (samples clipped to `[-1, 1]`).
pub fn encode_wav(audio: &Audio) -> Vec<u8> {
    let data_len = (audio.samples.len() * 2) as u32;
    let mut b = Vec::with_capacity(44 + data_len as usize);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&audio.sample_rate.to_le_bytes());
    b.extend_from_slice(&(audio.sample_rate * 2).to_le_bytes()); // bytes per second
    b.extend_from_slice(&2u16.to_le_bytes()); // block align
    b.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in &audio.samples {
        // Scaled by 32768 as decoders divide by it, so a round trip only rounds.
        b.extend_from_slice(&((s * 32768.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes());
    }
    b
}

/// Writes mono audio as a 16-bit PCM WAV file, atomically.
pub fn write_wav(path: impl AsRef<Path>, audio: &Audio) -> Result<()> {
    crate::fs::write_atomic(path.as_ref(), &encode_wav(audio))
}

/// Decodes an audio file and resamples it to `sample_rate`.
pub fn load_audio(path: impl AsRef<Path>, sample_rate: u32) -> Result<Audio> {
    let audio = decode_audio(path)?;
    Ok(Audio { samples: resample(&audio.samples, audio.sample_rate, sample_rate), sample_rate })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Zero crossings of the sinc on each side (torchaudio's `lowpass_filter_width`).
const LOWPASS_WIDTH: f64 = 6.0;
/// Cut-off as a fraction of the lower Nyquist frequency (torchaudio's `rolloff`).
const ROLLOFF: f64 = 0.99;

/// Resamples mono audio from `from` Hz to `to` Hz with band-limited (windowed-sinc)
/// interpolation; the output has `ceil(len · to / from)` samples. Same rate: a copy.
///
/// The filter kernels come from [`Resampler::cached`], so repeated calls between the same
/// rates do not rebuild them.
///
/// # Panics
/// If either rate is 0 (decoders never return one).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    Resampler::cached(from, to).process(samples)
}

/// A band-limited resampler between two fixed rates: the filter kernels (one per output phase,
/// as in torchaudio's `_get_sinc_resample_kernel`) are computed once and reused for every clip.
/// Rates whose greatest common divisor is small would need a table of `to/g · (from/g + 2·width)`
/// taps (11 127 Hz to 16 kHz: 700 MB; a damaged header's 524 369 Hz: 33 GB); beyond
/// [`MAX_KERNEL_TAPS`] the same kernel is evaluated for each output sample over the input
/// samples it reaches, with no table.
#[derive(Debug, Clone)]
pub struct Resampler {
    /// Input samples per block (`from / gcd`).
    orig: usize,
    /// Output samples per block (`to / gcd`).
    new: usize,
    /// Input samples the kernels reach before a block's start.
    width: usize,
    /// `new` kernels of `2·width + orig` taps each, flattened; empty when they are evaluated
    /// per output sample instead.
    kernels: Vec<f32>,
}

/// The largest kernel table a [`Resampler`] keeps (taps, 4 bytes each: 32 MB).
pub const MAX_KERNEL_TAPS: usize = 1 << 23;

/// The windowed sinc at `t` (in units of the lower rate's sampling period), zero beyond
/// [`LOWPASS_WIDTH`], times `scale`.
fn sinc_kernel(t: f64, scale: f64) -> f32 {
    let t = t.clamp(-LOWPASS_WIDTH, LOWPASS_WIDTH);
    let window = (t * std::f64::consts::PI / LOWPASS_WIDTH / 2.0).cos().powi(2);
    let t = t * std::f64::consts::PI;
    let sinc = if t == 0.0 { 1.0 } else { t.sin() / t };
    (sinc * window * scale) as f32
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz.
    ///
    /// # Panics
    /// If either rate is 0.
    pub fn new(from: u32, to: u32) -> Self {
        assert!(from > 0 && to > 0, "sample rates must be positive");
        let g = gcd(u64::from(from), u64::from(to));
        let (orig, new) = ((u64::from(from) / g) as usize, (u64::from(to) / g) as usize);
        if orig == new {
            return Resampler { orig: 1, new: 1, width: 0, kernels: vec![1.0] };
        }
        let base = orig.min(new) as f64 * ROLLOFF;
        let width = (LOWPASS_WIDTH * orig as f64 / base).ceil() as usize;
        let taps = 2 * width + orig;
        if new.saturating_mul(taps) > MAX_KERNEL_TAPS {
            return Resampler { orig, new, width, kernels: Vec::new() };
        }
        let scale = base / orig as f64;
        let mut kernels = Vec::with_capacity(new * taps);
        for phase in 0..new {
            for k in 0..taps {
                let idx = (k as f64 - width as f64) / orig as f64;
                kernels.push(sinc_kernel((idx - phase as f64 / new as f64) * base, scale));
            }
        }
        Resampler { orig, new, width, kernels }
    }

    /// A shared resampler for this pair of rates, built on first use and then reused by every
    /// thread: loaders and augmentation call this per clip.
    pub fn cached(from: u32, to: u32) -> Arc<Resampler> {
        type Cache = RwLock<HashMap<(u32, u32), Arc<Resampler>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(r) = cache.read().unwrap_or_else(|e| e.into_inner()).get(&(from, to)) {
            return Arc::clone(r);
        }
        let r = Arc::new(Resampler::new(from, to));
        cache.write().unwrap_or_else(|e| e.into_inner()).entry((from, to)).or_insert(r).clone()
    }

    /// Resamples one clip; the output has `ceil(len · to / from)` samples.
    pub fn process(&self, samples: &[f32]) -> Vec<f32> {
        let (orig, new, width) = (self.orig, self.new, self.width);
        if orig == new {
            return samples.to_vec();
        }
        if self.kernels.is_empty() {
            return self.process_without_table(samples);
        }
        let taps = 2 * width + orig;
        let n = samples.len();
        let out_len = (n as u64 * new as u64).div_ceil(orig as u64) as usize;
        let mut out = Vec::with_capacity(out_len);
        // Output j = block·new + phase reads input from block·orig - width on, zero outside.
        for j in 0..out_len {
            let (block, phase) = (j / new, j % new);
            let start = (block * orig) as isize - width as isize;
            let kernel = &self.kernels[phase * taps..(phase + 1) * taps];
            let lo = (-start).max(0) as usize;
            let hi = taps.min((n as isize - start).max(0) as usize);
            let input = &samples[(start + lo as isize) as usize..(start + hi as isize) as usize];
            out.push(kernel[lo..hi].iter().zip(input).map(|(k, x)| k * x).sum());
        }
        out
    }

    /// [`Resampler::process`] for rates whose table would be too large: output `j` weighs input
    /// `m` by the kernel at `(m / orig - j / new) · base`, over the inputs where it is not zero.
    fn process_without_table(&self, samples: &[f32]) -> Vec<f32> {
        let (orig, new) = (self.orig as f64, self.new as f64);
        let base = orig.min(new) * ROLLOFF;
        let scale = base / orig;
        let reach = LOWPASS_WIDTH * orig / base;
        let n = samples.len();
        let out_len = (n as u64 * self.new as u64).div_ceil(self.orig as u64) as usize;
        (0..out_len)
            .map(|j| {
                let centre = j as f64 * orig / new;
                let lo = (centre - reach).ceil().max(0.0) as usize;
                let hi = ((centre + reach).floor() as usize).min(n.saturating_sub(1));
                (lo..=hi)
                    .map(|m| {
                        sinc_kernel((m as f64 / orig - j as f64 / new) * base, scale) * samples[m]
                    })
                    .sum()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn tone(freq: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (2.0 * PI * freq * i as f64 / f64::from(rate)).sin() as f32).collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// A 16-bit PCM WAV file written by hand (RIFF header + data).
    fn wav_bytes(rate: u32, channels: u16, frames: &[Vec<i16>]) -> Vec<u8> {
        let data_len = (frames.len() * channels as usize * 2) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&channels.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
        b.extend_from_slice(&(channels * 2).to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data_len.to_le_bytes());
        for f in frames {
            for s in f {
                b.extend_from_slice(&s.to_le_bytes());
            }
        }
        b
    }

    fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mm-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    }

    #[test]
    fn upsampling_keeps_a_tone() {
        let x = tone(440.0, 8000, 8000);
        let y = resample(&x, 8000, 16000);
        assert_eq!(y.len(), 16000);
        let want = tone(440.0, 16000, 16000);
        // Away from the edges (where the signal is cut off) the error is tiny.
        let err = y[200..15800]
            .iter()
            .zip(&want[200..15800])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 2e-3, "max error {err}");
    }

    #[test]
    fn downsampling_removes_what_the_new_rate_cannot_hold() {
        // 44.1 kHz -> 16 kHz: a 1 kHz tone passes, a 10 kHz tone (above the new 8 kHz Nyquist) is
        // filtered out instead of folding back as a 6 kHz alias.
        let pass = resample(&tone(1000.0, 44100, 44100), 44100, 16000);
        assert_eq!(pass.len(), 16000);
        assert!((rms(&pass[500..15500]) - 0.5f64.sqrt()).abs() < 0.01, "rms {}", rms(&pass));
        let stop = resample(&tone(10000.0, 44100, 44100), 44100, 16000);
        let attenuation_db = 20.0 * (rms(&stop[500..15500]) / 0.5f64.sqrt()).log10();
        assert!(attenuation_db < -40.0, "only {attenuation_db:.1} dB down");
    }

    #[test]
    fn lengths_follow_torchaudio() {
        for (n, from, to, want) in
            [(10, 8000, 16000, 20), (11, 16000, 8000, 6), (1000, 44100, 16000, 363), (7, 3, 3, 7)]
        {
            assert_eq!(resample(&vec![0.1; n], from, to).len(), want, "{n} {from}->{to}");
        }
        assert!(resample(&[], 8000, 16000).is_empty());
        // One resampler serves many clips and gives what the one-off function gives.
        let r = Resampler::new(44100, 16000);
        let clip = tone(3000.0, 44100, 999);
        assert_eq!(r.process(&clip), resample(&clip, 44100, 16000));
        assert_eq!(Resampler::new(16000, 16000).process(&clip), clip);
    }

    /// Without a table (rates with a small common divisor), the kernel evaluated per output
    /// sample gives the table's numbers; a damaged header's odd rate resamples quickly, with
    /// memory bounded, and keeps a tone.
    #[test]
    fn rates_too_odd_for_a_table_resample_without_one() {
        for (from, to) in [(44100, 16000), (16000, 22050), (11025, 16000)] {
            let table = Resampler::new(from, to);
            assert!(!table.kernels.is_empty());
            let direct = Resampler { kernels: Vec::new(), ..table.clone() };
            let clip = tone(700.0, from, 3000);
            let (a, b) = (table.process(&clip), direct.process(&clip));
            assert_eq!(a.len(), b.len());
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{from} -> {to}: {worst}");
        }
        // 524 369 Hz to 16 kHz would need a table of 8.4e9 taps (33 GB).
        let odd = Resampler::new(524_369, 16_000);
        assert!(odd.kernels.is_empty());
        let y = odd.process(&tone(1000.0, 524_369, 52_437));
        assert_eq!(y.len(), (52_437u64 * 16_000).div_ceil(524_369) as usize);
        let want = tone(1000.0, 16_000, 1600);
        let err = y[100..1500]
            .iter()
            .zip(&want[100..1500])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 5e-3, "max error {err}");
    }

    #[test]
    fn wav_is_decoded_and_mixed_to_mono() {
        let frames: Vec<Vec<i16>> =
            (0..100).map(|i| vec![i as i16 * 100, -(i as i16) * 100 + 3200]).collect();
        let p = temp("stereo.wav", &wav_bytes(8000, 2, &frames));
        let a = decode_audio(&p).expect("decode");
        assert_eq!(a.sample_rate, 8000);
        assert_eq!(a.samples.len(), 100);
        // (100 i - 100 i + 3200) / 2 = 1600, over 32768.
        assert!(a.samples.iter().all(|s| (s - 1600.0 / 32768.0).abs() < 1e-6));
        let up = load_audio(&p, 16000).expect("load");
        assert_eq!((up.sample_rate, up.samples.len()), (16000, 200));
        assert!((up.duration() - 0.0125).abs() < 1e-9);
    }

    #[test]
    fn written_wavs_decode_to_the_same_samples() {
        let audio = Audio {
            sample_rate: 16000,
            samples: tone(300.0, 16000, 1234).iter().map(|s| s * 0.8).collect(),
        };
        let p = temp("written.wav", b"");
        write_wav(&p, &audio).expect("write");
        let back = decode_audio(&p).expect("decode");
        assert_eq!(back.sample_rate, 16000);
        assert_eq!(back.samples.len(), 1234);
        let worst = back
            .samples
            .iter()
            .zip(&audio.samples)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 0.5 / 32768.0, "{worst}");
    }

    #[test]
    fn broken_wavs_are_errors_that_name_the_file() {
        let frames: Vec<Vec<i16>> = (0..400).map(|i| vec![(i * 37 % 2000) as i16]).collect();
        let good = wav_bytes(8000, 1, &frames);
        let msg = |name: &str, bytes: &[u8]| {
            decode_audio(temp(name, bytes)).expect_err("must fail").to_string()
        };
        assert!(msg("zero.wav", b"").ends_with("zero.wav: empty file (0 bytes)"));
        assert!(msg("text.wav", b"this is not audio at all").contains("not a supported audio file"));
        // A header that promises 400 samples over a body cut to 100: the lying header is caught.
        let m = msg("cut.wav", &good[..44 + 200]);
        assert!(
            m.contains("cut.wav: truncated: the header declares 400 samples, the file holds 100"),
            "{m}"
        );
        let missing = decode_audio("/no/such/clip.wav").expect_err("missing").to_string();
        assert!(missing.contains("/no/such/clip.wav"));
    }
}

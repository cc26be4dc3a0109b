//! Training-time augmentation of images, audio and text, reproducible from a seed.
//!
//! Each function takes the sample's own [`Rng`] (seeded by seed, epoch and
//! sample index), so the same sample in the same epoch is augmented the same way whatever the
//! thread count. Every configuration's `Default` does nothing; the `standard()` presets follow
//! common torchvision / torchaudio recipes.
//!
//! ```
//! use mm_data::augment::{augment_image, ImageAugment};
//! use mm_data::rng::Rng;
//!
//! let pixels = ndarray::Array3::<u8>::from_elem((32, 48, 3), 128); // [H, W, 3]
//! let aug = ImageAugment::standard();
//! let a = augment_image(&pixels, (24, 24), &aug, &mut Rng::for_sample(7, 0, 42, 0));
//! let b = augment_image(&pixels, (24, 24), &aug, &mut Rng::for_sample(7, 0, 42, 0));
//! assert_eq!(a.dim(), (3, 24, 24)); // [3, H, W] in [0, 1]
//! assert_eq!(a, b);
//! ```

use ndarray::{Array2, Array3};

use crate::audio::Resampler;
use crate::rng::Rng;

/// Image augmentation (applied in this order: crop, flip, rotation, colour, blur, noise).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageAugment {
    /// Random resized crop: the area fraction range and the aspect-ratio range (torchvision's
    /// `RandomResizedCrop` algorithm). `None`: the whole image is resized.
    pub crop: Option<((f64, f64), (f64, f64))>,
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// Rotation by a uniform angle in `[-deg, deg]`, bilinear, corners filled with black.
    pub rotate_degrees: f64,
    /// Brightness factor drawn from `[1 - b, 1 + b]`.
    pub brightness: f64,
    /// Contrast factor drawn from `[1 - c, 1 + c]` (blend with the mean grey level).
    pub contrast: f64,
    /// Saturation factor drawn from `[1 - s, 1 + s]` (blend with the greyscale image).
    pub saturation: f64,
    /// Gaussian blur with probability `p` and sigma in `[lo, hi]` pixels.
    pub blur: Option<(f64, (f64, f64))>,
    /// Additive Gaussian noise of this standard deviation (pixels in `[0, 1]`).
    pub noise_std: f64,
}

impl Default for ImageAugment {
    fn default() -> Self {
        ImageAugment {
            crop: None,
            hflip: 0.0,
            rotate_degrees: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            blur: None,
            noise_std: 0.0,
        }
    }
}

impl ImageAugment {
    /// torchvision's usual training recipe: `RandomResizedCrop` (scale 0.08-1, ratio 3/4-4/3),
    /// horizontal flip, colour jitter 0.4.
    pub fn standard() -> Self {
        ImageAugment {
            crop: Some(((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0))),
            hflip: 0.5,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            ..Default::default()
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: `(top, left, height, width)`.
fn crop_box(
    h: usize,
    w: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (h * w) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.uniform(scale.0, scale.1);
        let aspect = rng.uniform(lr0, lr1).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.below((h - ch + 1) as u64) as usize;
            let left = rng.below((w - cw + 1) as u64) as usize;
            return (top, left, ch, cw);
        }
    }
    // Fallback: the largest centred crop within the ratio range.
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio.0 {
        ((w as f64 / ratio.0).round() as usize, w)
    } else if in_ratio > ratio.1 {
        (h, (h as f64 * ratio.1).round() as usize)
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch.max(1), cw.max(1))
}

/// Crops `[H, W, 3]` pixels to a box and resizes to `size = (height, width)` with a
/// triangle (bilinear, anti-aliased when shrinking) filter; returns `[3, h, w]` in `[0, 1]`.
pub fn crop_resize(
    pixels: &Array3<u8>,
    top: usize,
    left: usize,
    ch: usize,
    cw: usize,
    size: (usize, usize),
) -> Array3<f32> {
    crate::image::crop_resize_chw(pixels, top, left, ch, cw, size)
}

/// Augments `[H, W, 3]` pixels into a `[3, size.0, size.1]` image in `[0, 1]`.
pub fn augment_image(
    pixels: &Array3<u8>,
    size: (usize, usize),
    aug: &ImageAugment,
    rng: &mut Rng,
) -> Array3<f32> {
    let (h, w, _) = pixels.dim();
    let (top, left, ch, cw) = match aug.crop {
        Some((scale, ratio)) => crop_box(h, w, scale, ratio, rng),
        None => (0, 0, h, w),
    };
    let mut img = crop_resize(pixels, top, left, ch, cw, size);
    if rng.chance(aug.hflip) {
        img.invert_axis(ndarray::Axis(2));
        img = img.as_standard_layout().into_owned();
    }
    if aug.rotate_degrees > 0.0 {
        img = rotate(&img, rng.uniform(-aug.rotate_degrees, aug.rotate_degrees));
    }
    jitter(&mut img, aug, rng);
    if let Some((p, (lo, hi))) = aug.blur {
        if rng.chance(p) {
            img = blur(&img, rng.uniform(lo, hi));
        }
    }
    if aug.noise_std > 0.0 {
        let std = aug.noise_std;
        img.mapv_inplace(|v| (f64::from(v) + std * rng.normal()).clamp(0.0, 1.0) as f32);
    }
    img
}

/// Rotates a `[C, H, W]` image by `degrees` (counter-clockwise) about its centre, bilinear,
/// filling uncovered pixels with 0.
pub fn rotate(img: &Array3<f32>, degrees: f64) -> Array3<f32> {
    let (c, h, w) = img.dim();
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let mut out = Array3::<f32>::zeros((c, h, w));
    for y in 0..h {
        for x in 0..w {
            // Inverse map: where in the source does this output pixel come from?
            let (dy, dx) = (y as f64 - cy, x as f64 - cx);
            let sx = cos * dx - sin * dy + cx;
            let sy = sin * dx + cos * dy + cy;
            const EPS: f64 = 1e-9; // rounding at exact multiples of 90°
            if sx < -EPS || sy < -EPS || sx > (w - 1) as f64 + EPS || sy > (h - 1) as f64 + EPS {
                continue;
            }
            let (sx, sy) = (sx.clamp(0.0, (w - 1) as f64), sy.clamp(0.0, (h - 1) as f64));
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
            for ch in 0..c {
                let top = img[[ch, y0, x0]] * (1.0 - fx) + img[[ch, y0, x1]] * fx;
                let bottom = img[[ch, y1, x0]] * (1.0 - fx) + img[[ch, y1, x1]] * fx;
                out[[ch, y, x]] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    out
}

/// ITU-R 601 luma, as torchvision's `rgb_to_grayscale`.
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// Brightness, contrast and saturation jitter (in that order, each result clamped to
/// `[0, 1]`), in two passes over the pixels: brightness and the mean grey level, then
/// contrast and saturation per pixel.
fn jitter(img: &mut Array3<f32>, aug: &ImageAugment, rng: &mut Rng) {
    let factor = |amount: f64, rng: &mut Rng| {
        (amount > 0.0).then(|| rng.uniform((1.0 - amount).max(0.0), 1.0 + amount) as f32)
    };
    let brightness = factor(aug.brightness, rng);
    let contrast = factor(aug.contrast, rng);
    let saturation = factor(aug.saturation, rng);
    if img.dim().0 != 3 {
        if let Some(f) = brightness {
            img.mapv_inplace(|v| (v * f).clamp(0.0, 1.0));
        }
        return;
    }
    if brightness.is_none() && contrast.is_none() && saturation.is_none() {
        return;
    }
    let plane = img.len() / 3;
    let data = img.as_slice_mut().expect("standard layout");
    let (r, rest) = data.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let mut grey_sum = 0.0f64;
    for i in 0..plane {
        if let Some(f) = brightness {
            r[i] = (r[i] * f).clamp(0.0, 1.0);
            g[i] = (g[i] * f).clamp(0.0, 1.0);
            b[i] = (b[i] * f).clamp(0.0, 1.0);
        }
        grey_sum += f64::from(luma(r[i], g[i], b[i]));
    }
    let mean = (grey_sum / plane.max(1) as f64) as f32;
    if contrast.is_none() && saturation.is_none() {
        return;
    }
    for i in 0..plane {
        let (mut pr, mut pg, mut pb) = (r[i], g[i], b[i]);
        if let Some(f) = contrast {
            pr = ((pr - mean) * f + mean).clamp(0.0, 1.0);
            pg = ((pg - mean) * f + mean).clamp(0.0, 1.0);
            pb = ((pb - mean) * f + mean).clamp(0.0, 1.0);
        }
        if let Some(f) = saturation {
            let l = luma(pr, pg, pb);
            pr = (l + f * (pr - l)).clamp(0.0, 1.0);
            pg = (l + f * (pg - l)).clamp(0.0, 1.0);
            pb = (l + f * (pb - l)).clamp(0.0, 1.0);
        }
        r[i] = pr;
        g[i] = pg;
        b[i] = pb;
    }
}

/// Separable Gaussian blur of a `[C, H, W]` image, edges reflected.
pub fn blur(img: &Array3<f32>, sigma: f64) -> Array3<f32> {
    if sigma <= 0.0 {
        return img.clone();
    }
    let radius = (3.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let (c, h, w) = img.dim();
    let refl = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let mut i = i;
        while i < 0 || i >= n {
            i = if i < 0 { -i } else { 2 * (n - 1) - i };
            if n == 1 {
                return 0;
            }
        }
        i as usize
    };
    let mut tmp = Array3::<f32>::zeros((c, h, w));
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                tmp[[ch, y, x]] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, kv)| kv * img[[ch, y, refl(x as isize + k as isize - radius, w)]])
                    .sum();
            }
        }
    }
    let mut out = Array3::<f32>::zeros((c, h, w));
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                out[[ch, y, x]] = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, kv)| kv * tmp[[ch, refl(y as isize + k as isize - radius, h), x]])
                    .sum();
            }
        }
    }
    out
}

/// Audio augmentation of the waveform (gain, shift, speed, noise) and of the log-mel
/// spectrogram (SpecAugment masks).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AudioAugment {
    /// Gain in dB drawn from `[-g, g]`.
    pub gain_db: f64,
    /// Time shift by up to this fraction of the clip, either way, the gap filled with silence.
    pub max_shift: f64,
    /// Speed factor drawn from `[lo, hi]` in steps of 0.05 (pitch and tempo change together, as
    /// with Kaldi's speed perturbation); `None`: unchanged.
    pub speed: Option<(f64, f64)>,
    /// White noise added with probability `p` at an SNR drawn from `[lo, hi]` dB.
    pub noise: Option<(f64, (f64, f64))>,
    /// SpecAugment: this many time masks of up to `max_frames` frames each.
    pub time_masks: (usize, usize),
    /// SpecAugment: this many frequency masks of up to `max_bins` mel bins each.
    pub freq_masks: (usize, usize),
    /// Real background noise (ESC-50 or any recordings) mixed in at a random SNR; loaded by
    /// the training pipeline ([`crate::noise::NoiseBank`]), after the augmentations above.
    pub background: Option<crate::noise::BackgroundNoise>,
}

impl AudioAugment {
    /// A common speech recipe: ±6 dB gain, 10% shift, speed 0.9-1.1, noise at 10-30 dB SNR
    /// half the time, two time masks of up to 20 frames and two frequency masks of up to 8 bins.
    pub fn standard() -> Self {
        AudioAugment {
            gain_db: 6.0,
            max_shift: 0.1,
            speed: Some((0.9, 1.1)),
            noise: Some((0.5, (10.0, 30.0))),
            time_masks: (2, 20),
            freq_masks: (2, 8),
            background: None,
        }
    }
}

/// Augments a mono waveform in place (its length can change with speed perturbation).
pub fn augment_waveform(samples: &mut Vec<f32>, aug: &AudioAugment, rng: &mut Rng) {
    if let Some((lo, hi)) = aug.speed {
        // Quantised to 1/20 so that the resampling ratio stays a small fraction.
        let steps = (rng.uniform(lo, hi) * 20.0).round().max(1.0) as u32;
        if steps != 20 {
            *samples = Resampler::cached(steps, 20).process(samples);
        }
    }
    if aug.gain_db > 0.0 {
        let g = 10f64.powf(rng.uniform(-aug.gain_db, aug.gain_db) / 20.0) as f32;
        samples.iter_mut().for_each(|s| *s *= g);
    }
    if aug.max_shift > 0.0 && !samples.is_empty() {
        let n = samples.len();
        let shift = (rng.uniform(-aug.max_shift, aug.max_shift) * n as f64).round() as isize;
        if shift > 0 {
            let s = (shift as usize).min(n);
            samples.copy_within(0..n - s, s);
            samples[..s].iter_mut().for_each(|v| *v = 0.0);
        } else if shift < 0 {
            let s = ((-shift) as usize).min(n);
            samples.copy_within(s..n, 0);
            samples[n - s..].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    if let Some((p, (lo, hi))) = aug.noise {
        if rng.chance(p) && !samples.is_empty() {
            let power =
                samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64;
            if power > 0.0 {
                let snr = rng.uniform(lo, hi);
                let std = (power / 10f64.powf(snr / 10.0)).sqrt();
                samples.iter_mut().for_each(|s| *s += (std * rng.normal()) as f32);
            }
        }
    }
}

/// SpecAugment masks on a `[frames, bins]` spectrogram, filled with `fill` (0 after
/// normalisation: the mean).
pub fn spec_augment(spec: &mut Array2<f32>, aug: &AudioAugment, fill: f32, rng: &mut Rng) {
    let (frames, bins) = spec.dim();
    for (count, max, axis, len) in [
        (aug.time_masks.0, aug.time_masks.1, 0, frames),
        (aug.freq_masks.0, aug.freq_masks.1, 1, bins),
    ] {
        for _ in 0..count {
            if len == 0 || max == 0 {
                break;
            }
            let width = rng.below(max.min(len) as u64 + 1) as usize;
            let start = rng.below((len - width + 1) as u64) as usize;
            let mut band = spec
                .slice_axis_mut(ndarray::Axis(axis), ndarray::Slice::from(start..start + width));
            band.fill(fill);
        }
    }
}

/// Text augmentation on token sequences.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextAugment {
    /// Each token is dropped with this probability (one token always stays).
    pub drop: f64,
    /// Each adjacent pair is swapped with this probability.
    pub swap: f64,
}

/// Augments a token sequence in place.
pub fn augment_tokens<T>(tokens: &mut Vec<T>, aug: &TextAugment, rng: &mut Rng) {
    if aug.drop > 0.0 && tokens.len() > 1 {
        let keep: Vec<bool> = (0..tokens.len()).map(|_| !rng.chance(aug.drop)).collect();
        if keep.iter().any(|k| *k) {
            let mut i = 0;
            tokens.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        } else {
            let survivor = rng.below(tokens.len() as u64) as usize;
            tokens.swap(0, survivor);
            tokens.truncate(1);
        }
    }
    if aug.swap > 0.0 {
        let mut i = 0;
        while i + 1 < tokens.len() {
            if rng.chance(aug.swap) {
                tokens.swap(i, i + 1);
                i += 2;
            } else {
                i += 1;
            }
        }
    }
}

/// Modality dropout: each present modality (`true` in `present`) is marked absent with
/// probability `p`, but at least one stays present.
pub fn drop_modalities(present: &mut [bool], p: f64, rng: &mut Rng) {
    if p <= 0.0 {
        return;
    }
    let before: Vec<usize> =
        present.iter().enumerate().filter(|(_, v)| **v).map(|(i, _)| i).collect();
    for &i in &before {
        if rng.chance(p) {
            present[i] = false;
        }
    }
    if !before.is_empty() && !present.iter().any(|v| *v) {
        present[before[rng.below(before.len() as u64) as usize]] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(h: usize, w: usize) -> Array3<u8> {
        Array3::from_shape_fn((h, w, 3), |(y, x, c)| ((x * 5 + y * 3 + c * 40) % 256) as u8)
    }

    #[test]
    fn no_augmentation_is_a_plain_resize() {
        let px = gradient(20, 30);
        let out = augment_image(&px, (20, 30), &ImageAugment::default(), &mut Rng::new(0));
        assert_eq!(out, crate::image::to_chw_f32(&px));
    }

    #[test]
    fn flip_mirrors_and_crop_stays_inside() {
        let px = gradient(8, 10);
        let flip = ImageAugment { hflip: 1.0, ..Default::default() };
        let out = augment_image(&px, (8, 10), &flip, &mut Rng::new(0));
        assert_eq!(out[[1, 3, 0]], f32::from(px[[3, 9, 1]]) / 255.0);
        let mut rng = Rng::new(3);
        for _ in 0..500 {
            let (t, l, h, w) = crop_box(37, 53, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(h >= 1 && w >= 1 && t + h <= 37 && l + w <= 53);
            let area = (h * w) as f64 / (37.0 * 53.0);
            assert!(area <= 1.0 + 1e-9);
        }
    }

    #[test]
    fn rotation_by_zero_and_full_turn_is_identity_and_quarter_turn_moves_pixels() {
        let img = crate::image::to_chw_f32(&gradient(9, 9));
        assert_eq!(rotate(&img, 0.0), img);
        let quarter = rotate(&img, 90.0);
        // Counter-clockwise by 90° about the centre (4, 4): output (y, x) reads source (x', y')
        // with x' = 4 - (y - 4)... i.e. out[y][x] = in[x][8 - y].
        for (y, x) in [(0, 0), (2, 7), (8, 3)] {
            assert!((quarter[[0, y, x]] - img[[0, x, 8 - y]]).abs() < 1e-5, "({y}, {x})");
        }
    }

    #[test]
    fn jitter_and_blur_keep_range_and_mean() {
        let aug = ImageAugment {
            brightness: 0.5,
            contrast: 0.5,
            saturation: 0.5,
            noise_std: 0.05,
            ..Default::default()
        };
        let out = augment_image(&gradient(16, 16), (16, 16), &aug, &mut Rng::new(9));
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        let img = crate::image::to_chw_f32(&gradient(16, 16));
        let b = blur(&img, 1.5);
        assert!((b.mean().expect("mean") - img.mean().expect("mean")).abs() < 0.02);
        // Blurring lowers the spread between neighbouring pixels.
        let tv = |a: &Array3<f32>| {
            a.windows((1, 1, 2))
                .into_iter()
                .map(|w| (w[[0, 0, 1]] - w[[0, 0, 0]]).abs())
                .sum::<f32>()
        };
        assert!(tv(&b) < tv(&img));
    }

    #[test]
    fn waveform_augmentation() {
        let clip: Vec<f32> = (0..8000).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        let mut rng = Rng::new(1);
        let mut fast = clip.clone();
        augment_waveform(
            &mut fast,
            &AudioAugment { speed: Some((1.2, 1.2)), ..Default::default() },
            &mut rng,
        );
        assert_eq!(fast.len(), (8000.0_f64 * 20.0 / 24.0).ceil() as usize);
        let mut shifted = clip.clone();
        augment_waveform(
            &mut shifted,
            &AudioAugment { max_shift: 0.5, ..Default::default() },
            &mut rng,
        );
        assert_eq!(shifted.len(), 8000);
        let mut noisy = clip.clone();
        augment_waveform(
            &mut noisy,
            &AudioAugment { noise: Some((1.0, (10.0, 10.0))), ..Default::default() },
            &mut rng,
        );
        let noise_power: f64 =
            noisy.iter().zip(&clip).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>() / 8000.0;
        let signal_power: f64 = clip.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / 8000.0;
        let snr = 10.0 * (signal_power / noise_power).log10();
        assert!((snr - 10.0).abs() < 0.3, "SNR {snr}");
        let mut spec = Array2::<f32>::ones((50, 16));
        spec_augment(
            &mut spec,
            &AudioAugment { time_masks: (1, 10), freq_masks: (1, 4), ..Default::default() },
            0.0,
            &mut Rng::new(4),
        );
        let zeros = spec.iter().filter(|v| **v == 0.0).count();
        assert!(zeros <= 10 * 16 + 4 * 50);
    }

    #[test]
    fn token_and_modality_dropout_keep_something() {
        let mut rng = Rng::new(5);
        for _ in 0..100 {
            let mut t = vec![1, 2, 3];
            augment_tokens(&mut t, &TextAugment { drop: 0.99, swap: 0.0 }, &mut rng);
            assert!(!t.is_empty());
            let mut present = [true, false, true];
            drop_modalities(&mut present, 0.99, &mut rng);
            assert!(present.iter().any(|p| *p));
            assert!(!present[1]);
        }
        let mut t = vec![1, 2, 3, 4];
        augment_tokens(&mut t, &TextAugment { drop: 0.0, swap: 1.0 }, &mut rng);
        assert_eq!(t, [2, 1, 4, 3]);
    }
}

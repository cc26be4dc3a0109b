//! The embedded synthetic data set: a generator that writes real files (PNG images and frames,
//! 16-bit WAV audio, captions and numeric records in JSONL manifests) for tasks whose ceilings
//! are known by construction, so that what fusion adds is measurable with no download.
//!
//! Every sample draws hidden factors: a **shape** (circle, ring, square, triangle) with a
//! colour, size, place and rotation; a **sound** (one to three beeps in a low or a high pitch
//! band); a **caption** naming the shape, colour, size, place, number of beeps and a sentiment
//! adjective (never the pitch); a **video** of the same shape moving in one of four directions;
//! and a **record** of six numeric features. The tasks (one manifest each, sharing the files):
//!
//! | manifest | modalities | target | ceiling without fusion |
//! | --- | --- | --- | --- |
//! | `manifest.jsonl` | all | `label`: curved or straight shape × low or high pitch (4 classes) | image, text or frames alone 50 %, audio alone 50 % (uniform classes) |
//! | `video.jsonl` | frames, audio | `label`: direction of motion (4 classes) | any order-free model of the frames 50 %, one frame 25 % |
//! | `retrieval.jsonl` | image, audio, text | captions paired with their image and sound | Recall@K of an oracle that knows every described attribute (ties are real) |
//! | `sentiment.jsonl` | image, text | `target` = ½ caption sentiment + ½ background brightness (+ `label` negative, neutral, positive) | MSE ≥ 0.086 from text alone, ≥ 0.128 from the image alone; 0.0025 fused |
//! | `diagnosis.jsonl` | image, features | `label` positive (prevalence 20 %) when shape size + a record score + noise is high | the AUROC of each half, reported per data set |
//!
//! `synth.json` records the configuration, the counts, the ceilings measured on the test split
//! by oracle predictors that know the hidden factors, and the ids of the samples corrupted on
//! purpose; `truth.jsonl` holds every hidden factor per sample. See `docs/SYNTHETIC.md` for why
//! each ceiling holds.
//!
//! ```no_run
//! use mm_datasets::synth::{generate, SynthConfig};
//!
//! let config = SynthConfig { samples: 500, ..SynthConfig::default() };
//! let summary = generate("synthetic".as_ref(), &config, false)?;
//! println!("{} samples, image alone ≤ {:.2}", summary.samples, summary.ceilings.classify_image);
//! let manifest = mm_data::manifest::Manifest::read("synthetic/manifest.jsonl")?;
//! # Ok::<(), mm_data::Error>(())
//! ```
//!
//! Generation is parallel (rayon) and deterministic: every random decision comes from a
//! generator seeded by `(seed, sample, stream)`, so the same configuration gives byte-identical
//! files whatever the thread count. The files go to a staging folder beside the output, which
//! is renamed into place only when everything is written: an interrupted run leaves no
//! half-written data set behind (only a `DIR.partial-PID` folder that can be deleted).

mod caption;
mod draw;
mod sound;

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Value};

use mm_data::audio::{encode_wav, Audio};
use mm_data::fs::write_atomic;
use mm_data::manifest::{Manifest, Sample, Split};
use mm_data::rng::Rng;
use mm_data::{Error, Result};

pub use caption::SENTIMENT_LEVELS;
pub use draw::{Shape, COLOURS};
pub use sound::{HIGH_BAND, LOW_BAND};

/// The classes of the main task, in label order: shape outline × pitch band.
pub const CLASSES: [&str; 4] = ["curved-low", "curved-high", "straight-low", "straight-high"];
/// The classes of the video task: the direction the shape moves in.
pub const DIRECTIONS: [&str; 4] = ["right", "left", "down", "up"];
/// The classes of the sentiment task.
pub const SENTIMENT_CLASSES: [&str; 3] = ["negative", "neutral", "positive"];
/// The classes of the diagnosis task.
pub const DIAGNOSES: [&str; 2] = ["negative", "positive"];
/// The names of the numeric features, in order.
pub const FEATURES: [&str; 6] =
    ["age", "systolic_bp", "glucose", "bmi", "heart_rate", "cholesterol"];

/// What to generate. [`SynthConfig::default`] is the data set of `mm demo`.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Number of samples.
    pub samples: usize,
    /// Width and height of the images, in pixels.
    pub image_size: usize,
    /// Width and height of the video frames, in pixels.
    pub frame_size: usize,
    /// Frames per video.
    pub frames: usize,
    /// Audio sample rate, Hz.
    pub sample_rate: u32,
    /// Audio length, seconds.
    pub duration: f64,
    /// Noise level: scales pixel noise, background clutter and audio noise (0: clean).
    pub noise: f64,
    /// Class imbalance of the main task: how many times more frequent the first class is than
    /// the last (1: balanced), with the classes in between on a geometric scale.
    pub imbalance: f64,
    /// Share of positive samples in the diagnosis task.
    pub positive_rate: f64,
    /// Probability that each of image, audio and text is absent from a sample (one of the three
    /// is always kept).
    pub missing: f64,
    /// Share of the samples with an image whose PNG file is truncated.
    pub corrupt_images: f64,
    /// Share of the samples with audio whose WAV file holds no samples.
    pub empty_audio: f64,
    /// Share of the samples with a caption whose caption is empty.
    pub empty_text: f64,
    /// Share of the samples in the validation split.
    pub val: f64,
    /// Share of the samples in the test split.
    pub test: f64,
    /// Seed of every random decision.
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            samples: 3000,
            image_size: 64,
            frame_size: 32,
            frames: 8,
            sample_rate: 16_000,
            duration: 1.0,
            noise: 1.0,
            imbalance: 1.0,
            positive_rate: 0.2,
            missing: 0.0,
            corrupt_images: 0.0,
            empty_audio: 0.0,
            empty_text: 0.0,
            val: 0.15,
            test: 0.15,
            seed: 0,
        }
    }
}

impl SynthConfig {
    /// Checks every value; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, allowed: &str| {
            Err(Error::Config(format!("synth.{field} = {value}: must be {allowed}")))
        };
        let share = |x: f64| (0.0..=1.0).contains(&x);
        if !(4..=10_000_000).contains(&self.samples) {
            return bad("samples", self.samples.to_string(), "between 4 and 10000000");
        }
        if !(16..=1024).contains(&self.image_size) {
            return bad("image_size", self.image_size.to_string(), "between 16 and 1024");
        }
        if !(16..=512).contains(&self.frame_size) {
            return bad("frame_size", self.frame_size.to_string(), "between 16 and 512");
        }
        if !(2..=64).contains(&self.frames) {
            return bad("frames", self.frames.to_string(), "between 2 and 64");
        }
        if !(8000..=96_000).contains(&self.sample_rate) {
            return bad(
                "sample_rate",
                self.sample_rate.to_string(),
                "between 8000 and 96000 Hz (the high band reaches 1760 Hz)",
            );
        }
        if !(0.3..=10.0).contains(&self.duration) {
            return bad("duration", self.duration.to_string(), "between 0.3 and 10 seconds");
        }
        if !(0.0..=5.0).contains(&self.noise) {
            return bad("noise", self.noise.to_string(), "between 0 and 5");
        }
        if !(1.0..=1000.0).contains(&self.imbalance) {
            return bad("imbalance", self.imbalance.to_string(), "between 1 (balanced) and 1000");
        }
        if !(self.positive_rate > 0.0 && self.positive_rate < 1.0) {
            return bad(
                "positive_rate",
                self.positive_rate.to_string(),
                "strictly between 0 and 1",
            );
        }
        for (field, v) in [
            ("missing", self.missing),
            ("corrupt_images", self.corrupt_images),
            ("empty_audio", self.empty_audio),
            ("empty_text", self.empty_text),
        ] {
            if !share(v) {
                return bad(field, v.to_string(), "between 0 and 1");
            }
        }
        if !share(self.val) || !share(self.test) || self.val + self.test >= 1.0 {
            return bad(
                "val + test",
                format!("{} + {}", self.val, self.test),
                "shares in [0, 1] that leave a training split",
            );
        }
        Ok(())
    }

    /// The population share of each class of the main task.
    pub fn class_weights(&self) -> [f64; 4] {
        let w: Vec<f64> = (0..4).map(|k| self.imbalance.powf(-(k as f64) / 3.0)).collect();
        let sum: f64 = w.iter().sum();
        [w[0] / sum, w[1] / sum, w[2] / sum, w[3] / sum]
    }

    fn to_json(&self) -> Value {
        json!({
            "samples": self.samples, "image_size": self.image_size, "frame_size": self.frame_size,
            "frames": self.frames, "sample_rate": self.sample_rate, "duration": self.duration,
            "noise": self.noise, "imbalance": self.imbalance, "positive_rate": self.positive_rate,
            "missing": self.missing, "corrupt_images": self.corrupt_images, "empty_audio": self.empty_audio,
            "empty_text": self.empty_text, "val": self.val, "test": self.test, "seed": self.seed,
        })
    }
}

/// The ceilings of the tasks, measured on the test split with oracle predictors that know the
/// hidden factors (so a learned model can only come close to them, up to sampling noise).
#[derive(Debug, Clone, PartialEq)]
pub struct Ceilings {
    /// Main task, accuracy from the image (or the caption, or the frames) alone.
    pub classify_image: f64,
    /// Main task, accuracy from the audio alone.
    pub classify_audio: f64,
    /// Main task, accuracy with no input (the majority class).
    pub classify_majority: f64,
    /// Video task, accuracy of a model that ignores frame order.
    pub video_unordered: f64,
    /// Retrieval, caption to image: Recall@1, @5, @10 of an oracle that knows every attribute
    /// the caption names (images with the same attributes tie and are ranked at random).
    pub retrieval_recall: [f64; 3],
    /// Sentiment, lowest MSE from the caption alone, the image alone, and both.
    pub sentiment_mse: [f64; 3],
    /// Diagnosis, highest AUROC from the image alone, the record alone, and both.
    pub diagnosis_auroc: [f64; 3],
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSummary {
    /// The output folder.
    pub dir: PathBuf,
    /// Samples written.
    pub samples: usize,
    /// Samples per split: train, val, test.
    pub splits: [usize; 3],
    /// Samples without an image, audio, text.
    pub missing: [usize; 3],
    /// Ids of the samples whose image is truncated.
    pub corrupt_images: Vec<String>,
    /// Ids of the samples whose audio is empty.
    pub empty_audio: Vec<String>,
    /// Ids of the samples whose caption is empty.
    pub empty_text: Vec<String>,
    /// The tasks' ceilings.
    pub ceilings: Ceilings,
}

/// Random streams, one per use, so that changing one modality leaves the others unchanged.
const STREAM_FACTORS: u64 = 11;
const STREAM_IMAGE: u64 = 12;
const STREAM_AUDIO: u64 = 13;
const STREAM_TEXT: u64 = 14;
const STREAM_FRAMES: u64 = 15;
const STREAM_MISSING: u64 = 16;
/// Whole-data-set streams use this sample index.
const GLOBAL: u64 = u64::MAX;

/// The hidden factors of one sample.
#[derive(Debug, Clone)]
struct Truth {
    id: String,
    split: Split,
    class: usize,
    shape: Shape,
    colour: usize,
    /// Shape radius as a share of the image size.
    radius: f64,
    cx: f64,
    cy: f64,
    angle: f64,
    brightness: f64,
    high: bool,
    beeps: usize,
    sentiment: usize,
    direction: usize,
    features: [f64; 6],
    z_image: f64,
    z_record: f64,
    risk: f64,
    target: f64,
    diagnosis: bool,
    has: [bool; 3],
    corrupt_image: bool,
    empty_audio: bool,
    empty_text: bool,
}

const RADIUS: (f64, f64) = (0.11, 0.25);

impl Truth {
    /// Place on a 3 x 3 grid, row-major from the top left.
    fn place(&self) -> usize {
        let third = |v: f64| ((v * 3.0) as usize).min(2);
        3 * third(self.cy) + third(self.cx)
    }
    fn large(&self) -> bool {
        self.radius >= (RADIUS.0 + RADIUS.1) / 2.0
    }
    fn described(&self) -> caption::Described {
        caption::Described {
            shape: Shape::ALL.iter().position(|s| *s == self.shape).unwrap_or(0),
            colour: self.colour,
            large: self.large(),
            place: self.place(),
            beeps: self.beeps,
            sentiment: self.sentiment,
        }
    }
}

fn draw_factors(config: &SynthConfig, index: usize, width: usize) -> Truth {
    let mut rng = Rng::for_sample(config.seed, 0, index as u64, STREAM_FACTORS);
    let weights = config.class_weights();
    let u = rng.unit();
    let mut class = 3;
    let mut acc = 0.0;
    for (k, w) in weights.iter().enumerate() {
        acc += w;
        if u < acc {
            class = k;
            break;
        }
    }
    let straight = class >= 2;
    let high = class % 2 == 1;
    let shape = Shape::ALL[2 * usize::from(straight) + rng.below(2) as usize];
    let radius = rng.uniform(RADIUS.0, RADIUS.1);
    // Keep the whole (rotated) shape inside the image: its farthest point is 1.25 r away.
    let margin = 1.3 * radius;
    let (cx, cy) = (rng.uniform(margin, 1.0 - margin), rng.uniform(margin, 1.0 - margin));
    let angle = rng.uniform(0.0, 2.0 * std::f64::consts::PI);
    let brightness = rng.uniform(0.2, 0.8);
    let sentiment = rng.below(5) as usize;
    let target =
        0.5 * SENTIMENT_LEVELS[sentiment] + 0.5 * (brightness - 0.5) / 0.3 + 0.05 * rng.normal();
    // A record: age and glucose carry the risk; blood pressure follows age; the rest is noise.
    let (za, zg) = (rng.normal(), rng.normal());
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let age = round2(50.0 + 12.0 * za);
    let glucose = round2(100.0 + 20.0 * zg);
    let bp = round2(120.0 + 15.0 * (0.5 * za + 0.866 * rng.normal()));
    let bmi = round2(26.0 + 4.0 * rng.normal());
    let heart = round2(70.0 + 10.0 * rng.normal());
    let chol = round2(190.0 + 35.0 * rng.normal());
    let z_record = 0.8 * (age - 50.0) / 12.0 + 0.6 * (glucose - 100.0) / 20.0;
    let z_image = (radius - (RADIUS.0 + RADIUS.1) / 2.0) / ((RADIUS.1 - RADIUS.0) / 12f64.sqrt());
    let risk = z_image + z_record + 0.5 * rng.normal();
    Truth {
        id: format!("s{index:0width$}"),
        split: Split::Train,
        class,
        shape,
        colour: rng.below(4) as usize,
        radius,
        cx,
        cy,
        angle,
        brightness,
        high,
        beeps: 1 + rng.below(3) as usize,
        sentiment,
        direction: rng.below(4) as usize,
        features: [age, bp, glucose, bmi, heart, chol],
        z_image,
        z_record,
        risk,
        target: (target * 1e4).round() / 1e4,
        diagnosis: false,
        has: [true; 3],
        corrupt_image: false,
        empty_audio: false,
        empty_text: false,
    }
}

/// Picks `round(share · candidates)` of the candidate indices, seeded.
fn choose(candidates: Vec<usize>, share: f64, seed: u64, stream: u64) -> Vec<usize> {
    let mut c = candidates;
    let k = (share * c.len() as f64).round() as usize;
    Rng::for_sample(seed, 0, GLOBAL, stream).shuffle(&mut c);
    c.truncate(k);
    c
}

/// Draws every sample's factors and the data-set-wide decisions (splits, missing modalities,
/// corruptions, the diagnosis threshold).
fn plan(config: &SynthConfig) -> Vec<Truth> {
    let n = config.samples;
    let width = (n - 1).to_string().len().max(4);
    let mut truths: Vec<Truth> =
        (0..n).into_par_iter().map(|i| draw_factors(config, i, width)).collect();

    let mut order: Vec<usize> = (0..n).collect();
    Rng::for_sample(config.seed, 0, GLOBAL, 1).shuffle(&mut order);
    let n_test = (config.test * n as f64).round() as usize;
    let n_val = (config.val * n as f64).round() as usize;
    for (rank, &i) in order.iter().enumerate() {
        truths[i].split = if rank < n_test {
            Split::Test
        } else if rank < n_test + n_val {
            Split::Val
        } else {
            Split::Train
        };
    }

    for (i, t) in truths.iter_mut().enumerate() {
        let mut rng = Rng::for_sample(config.seed, 0, i as u64, STREAM_MISSING);
        let mut has =
            [!rng.chance(config.missing), !rng.chance(config.missing), !rng.chance(config.missing)];
        if !has.iter().any(|h| *h) {
            has[rng.below(3) as usize] = true;
        }
        t.has = has;
    }
    let with = |m: usize, truths: &[Truth]| -> Vec<usize> {
        (0..n).filter(|&i| truths[i].has[m]).collect()
    };
    for i in choose(with(0, &truths), config.corrupt_images, config.seed, 2) {
        truths[i].corrupt_image = true;
    }
    for i in choose(with(1, &truths), config.empty_audio, config.seed, 3) {
        truths[i].empty_audio = true;
    }
    for i in choose(with(2, &truths), config.empty_text, config.seed, 4) {
        truths[i].empty_text = true;
    }

    // Positive: the top `positive_rate` of the risk scores.
    let mut risks: Vec<f64> = truths.iter().map(|t| t.risk).collect();
    risks.sort_by(f64::total_cmp);
    let k = ((1.0 - config.positive_rate) * n as f64).round() as usize;
    let threshold = risks.get(k.min(n - 1)).copied().unwrap_or(f64::INFINITY);
    for t in &mut truths {
        t.diagnosis = t.risk >= threshold;
    }
    truths
}

/// The relative paths of one sample's files.
fn image_path(t: &Truth) -> PathBuf {
    PathBuf::from(format!("images/{}.png", t.id))
}
fn audio_path(t: &Truth) -> PathBuf {
    PathBuf::from(format!("audio/{}.wav", t.id))
}
fn frame_paths(t: &Truth, frames: usize) -> Vec<PathBuf> {
    (0..frames).map(|k| PathBuf::from(format!("frames/{}_{k}.png", t.id))).collect()
}

fn write_file(root: &Path, rel: &Path, bytes: &[u8]) -> Result<()> {
    let path = root.join(rel);
    std::fs::write(&path, bytes).map_err(|e| Error::io(path, e))
}

/// Renders and writes one sample's files; returns its caption.
fn render(config: &SynthConfig, index: usize, t: &Truth, root: &Path) -> Result<String> {
    let colour = COLOURS[t.colour].1;
    let noise = config.noise as f32;
    let clutter = (4.0 * config.noise).round() as usize;
    if t.has[0] {
        let mut rng = Rng::for_sample(config.seed, 0, index as u64, STREAM_IMAGE);
        let s = config.image_size as f32;
        let mut canvas =
            draw::Canvas::background(config.image_size, t.brightness as f32, clutter, &mut rng);
        canvas.shape(
            t.shape,
            t.cx as f32 * s,
            t.cy as f32 * s,
            t.radius as f32 * s,
            t.angle as f32,
            colour,
        );
        let mut png = draw::encode_png(&canvas.to_rgb8(0.04 * noise, &mut rng), config.image_size);
        if t.corrupt_image {
            png.truncate(png.len() / 2);
        }
        write_file(root, &image_path(t), &png)?;
    }
    {
        let mut rng = Rng::for_sample(config.seed, 0, index as u64, STREAM_FRAMES);
        let f = config.frame_size as f32;
        let r = 0.14 * f;
        let travel = 0.5 * f;
        let background = draw::Canvas::background(
            config.frame_size,
            rng.uniform(0.3, 0.7) as f32,
            clutter / 2,
            &mut rng,
        );
        let horizontal = t.direction < 2;
        let sign = if t.direction.is_multiple_of(2) { 1.0 } else { -1.0 };
        // The path's midpoint is uniform and independent of the direction, so the set of
        // positions has the same distribution whichever way the shape moves.
        let along = rng
            .uniform(f64::from(1.3 * r + travel / 2.0), f64::from(f - 1.3 * r - travel / 2.0))
            as f32;
        let across = rng.uniform(f64::from(1.3 * r), f64::from(f - 1.3 * r)) as f32;
        for (k, rel) in frame_paths(t, config.frames).iter().enumerate() {
            let p = along + sign * (k as f32 / (config.frames - 1) as f32 - 0.5) * travel;
            let (x, y) = if horizontal { (p, across) } else { (across, p) };
            let mut canvas = background.clone();
            canvas.shape(t.shape, x, y, r, t.angle as f32, colour);
            write_file(
                root,
                rel,
                &draw::encode_png(&canvas.to_rgb8(0.04 * noise, &mut rng), config.frame_size),
            )?;
        }
    }
    if t.has[1] {
        let mut rng = Rng::for_sample(config.seed, 0, index as u64, STREAM_AUDIO);
        let samples = if t.empty_audio {
            Vec::new()
        } else {
            sound::render(
                &sound::Beeps { high: t.high, count: t.beeps },
                config.sample_rate,
                config.duration,
                config.noise,
                &mut rng,
            )
        };
        write_file(
            root,
            &audio_path(t),
            &encode_wav(&Audio { sample_rate: config.sample_rate, samples }),
        )?;
    }
    let mut rng = Rng::for_sample(config.seed, 0, index as u64, STREAM_TEXT);
    let text = caption::caption(&t.described(), &mut rng);
    Ok(if t.empty_text { String::new() } else { text })
}

/// Area under the ROC curve of `scores` for binary `labels` (ties count one half); NaN when
/// one of the two classes is absent.
fn auroc(scores: &[f64], labels: &[bool]) -> f64 {
    mm_data::stats::auroc(scores, labels).unwrap_or(f64::NAN)
}

fn ceilings(truths: &[Truth]) -> Ceilings {
    let test: Vec<&Truth> = truths.iter().filter(|t| t.split == Split::Test).collect();
    let test = if test.is_empty() { truths.iter().collect() } else { test };
    let n = test.len() as f64;
    // The best any classifier can do on this split from a view that reveals only `group` of
    // the class: predict each group's most frequent class (chosen in hindsight, so the bound
    // holds for this split, not only on average).
    let best_from = |group: &dyn Fn(usize) -> usize| {
        let mut counts = [[0usize; 4]; 4];
        for t in &test {
            counts[group(t.class)][t.class] += 1;
        }
        counts.iter().map(|c| *c.iter().max().unwrap_or(&0)).sum::<usize>() as f64 / n
    };
    let classify_image = best_from(&|class| class / 2);
    let classify_audio = best_from(&|class| class % 2);
    let classify_majority = best_from(&|_| 0);
    // Order-free video oracle: knows the axis, guesses the sign.
    let video_unordered = 0.5;
    // Retrieval: ties among test images with the caption's attributes.
    let key = |t: &Truth| {
        let d = t.described();
        (d.shape, d.colour, d.large, d.place)
    };
    let pairs: Vec<&&Truth> =
        test.iter().filter(|t| t.has[0] && t.has[2] && !t.corrupt_image && !t.empty_text).collect();
    let mut groups = std::collections::HashMap::new();
    for t in &pairs {
        *groups.entry(key(t)).or_insert(0usize) += 1;
    }
    let recall = |k: f64| {
        pairs.iter().map(|t| (k / groups[&key(t)] as f64).min(1.0)).sum::<f64>()
            / pairs.len().max(1) as f64
    };
    let retrieval_recall = [recall(1.0), recall(5.0), recall(10.0)];
    let mse = |predict: &dyn Fn(&Truth) -> f64| {
        test.iter().map(|t| (t.target - predict(t)).powi(2)).sum::<f64>() / n
    };
    // From the caption alone (five sentiment levels): each level's mean target, in hindsight.
    let mut level_sum = [(0.0f64, 0usize); 5];
    for t in &test {
        level_sum[t.sentiment].0 += t.target;
        level_sum[t.sentiment].1 += 1;
    }
    let text_only = |t: &Truth| level_sum[t.sentiment].0 / level_sum[t.sentiment].1.max(1) as f64;
    let text_part = |t: &Truth| 0.5 * SENTIMENT_LEVELS[t.sentiment];
    let image_part = |t: &Truth| 0.5 * (t.brightness - 0.5) / 0.3;
    let sentiment_mse = [mse(&text_only), mse(&image_part), mse(&|t| text_part(t) + image_part(t))];
    let labels: Vec<bool> = test.iter().map(|t| t.diagnosis).collect();
    let score =
        |f: &dyn Fn(&Truth) -> f64| auroc(&test.iter().map(|t| f(t)).collect::<Vec<_>>(), &labels);
    let diagnosis_auroc =
        [score(&|t| t.z_image), score(&|t| t.z_record), score(&|t| t.z_image + t.z_record)];
    Ceilings {
        classify_image,
        classify_audio,
        classify_majority,
        video_unordered,
        retrieval_recall,
        sentiment_mse,
        diagnosis_auroc,
    }
}

/// Writes the data set described by `config` into `out` (created; its parent must exist or be
/// creatable). An existing `out` is an error unless it is empty, or `force` is set and it holds
/// an earlier synthetic data set (a `synth.json`): `force` never deletes anything else.
pub fn generate(out: &Path, config: &SynthConfig, force: bool) -> Result<SynthSummary> {
    config.validate()?;
    let summary = mm_data::fs::write_dir_atomic(out, "synth.json", force, |staging| {
        write_all(staging, config)
    })?;
    Ok(SynthSummary { dir: out.to_path_buf(), ..summary })
}

fn write_all(root: &Path, config: &SynthConfig) -> Result<SynthSummary> {
    for sub in ["images", "audio", "frames"] {
        let d = root.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    }
    let truths = plan(config);
    let captions: Vec<String> = truths
        .par_iter()
        .enumerate()
        .map(|(i, t)| render(config, i, t, root))
        .collect::<Result<Vec<_>>>()?;

    let mut all = Manifest::new(root);
    let mut video = Manifest::new(root);
    let mut retrieval = Manifest::new(root);
    let mut sentiment = Manifest::new(root);
    let mut diagnosis = Manifest::new(root);
    let mut truth_lines = String::new();
    for (t, text) in truths.iter().zip(&captions) {
        let base = Sample::new(t.id.clone()).with_split(t.split);
        let with_image = |s: Sample| if t.has[0] { s.with_image(image_path(t)) } else { s };
        let with_audio = |s: Sample| if t.has[1] { s.with_audio(audio_path(t)) } else { s };
        let with_text = |s: Sample| if t.has[2] { s.with_text(text.clone()) } else { s };
        let frames = frame_paths(t, config.frames);
        all.push(
            with_text(with_audio(with_image(base.clone())))
                .with_frames(frames.clone())
                .with_features(t.features.to_vec())
                .with_label(CLASSES[t.class]),
        )?;
        video.push(
            with_audio(base.clone().with_frames(frames)).with_label(DIRECTIONS[t.direction]),
        )?;
        retrieval.push(with_text(with_audio(with_image(base.clone()))))?;
        let mood = if t.target < -0.2 {
            0
        } else if t.target > 0.2 {
            2
        } else {
            1
        };
        sentiment.push(
            with_text(with_image(base.clone()))
                .with_target(t.target)
                .with_label(SENTIMENT_CLASSES[mood]),
        )?;
        diagnosis.push(
            with_image(base)
                .with_features(t.features.to_vec())
                .with_label(DIAGNOSES[usize::from(t.diagnosis)]),
        )?;
        let line = json!({
            "id": t.id, "split": t.split.as_str(), "class": CLASSES[t.class], "shape": t.shape.name(),
            "colour": COLOURS[t.colour].0, "radius": t.radius, "large": t.large(), "cx": t.cx, "cy": t.cy,
            "place": t.place(), "angle": t.angle, "brightness": t.brightness,
            "pitch": if t.high { "high" } else { "low" }, "beeps": t.beeps,
            "sentiment": SENTIMENT_LEVELS[t.sentiment], "target": t.target, "direction": DIRECTIONS[t.direction],
            "z_image": t.z_image, "z_record": t.z_record, "risk": t.risk, "diagnosis": t.diagnosis,
            "has_image": t.has[0], "has_audio": t.has[1], "has_text": t.has[2],
            "corrupt_image": t.corrupt_image, "empty_audio": t.empty_audio, "empty_text": t.empty_text,
        });
        truth_lines.push_str(&line.to_string());
        truth_lines.push('\n');
    }
    all.write(root.join("manifest.jsonl"))?;
    video.write(root.join("video.jsonl"))?;
    retrieval.write(root.join("retrieval.jsonl"))?;
    sentiment.write(root.join("sentiment.jsonl"))?;
    diagnosis.write(root.join("diagnosis.jsonl"))?;
    write_atomic(&root.join("truth.jsonl"), truth_lines.as_bytes())?;

    let ids = |f: &dyn Fn(&Truth) -> bool| {
        truths.iter().filter(|t| f(t)).map(|t| t.id.clone()).collect::<Vec<_>>()
    };
    let count = |s: Split| truths.iter().filter(|t| t.split == s).count();
    let summary = SynthSummary {
        dir: root.to_path_buf(),
        samples: truths.len(),
        splits: [count(Split::Train), count(Split::Val), count(Split::Test)],
        missing: [0, 1, 2].map(|m| truths.iter().filter(|t| !t.has[m]).count()),
        corrupt_images: ids(&|t| t.corrupt_image),
        empty_audio: ids(&|t| t.empty_audio),
        empty_text: ids(&|t| t.empty_text),
        ceilings: ceilings(&truths),
    };
    write_atomic(
        &root.join("synth.json"),
        serde_json::to_string_pretty(&summary_json(config, &summary))
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(summary)
}

fn summary_json(config: &SynthConfig, s: &SynthSummary) -> Value {
    let c = &s.ceilings;
    let round = |x: f64| (x * 1e4).round() / 1e4;
    json!({
        "generator": "mm-data synth v1",
        "config": config.to_json(),
        "samples": s.samples,
        "splits": {"train": s.splits[0], "val": s.splits[1], "test": s.splits[2]},
        "missing": {"image": s.missing[0], "audio": s.missing[1], "text": s.missing[2]},
        "corrupted": {"image": s.corrupt_images, "audio": s.empty_audio, "text": s.empty_text},
        "tasks": {
            "classify": {
                "manifest": "manifest.jsonl", "classes": CLASSES,
                "ceiling": {"image": round(c.classify_image), "text": round(c.classify_image), "frames": round(c.classify_image),
                            "audio": round(c.classify_audio), "features": round(c.classify_majority),
                            "majority": round(c.classify_majority), "fused": 1.0},
            },
            "video": {"manifest": "video.jsonl", "classes": DIRECTIONS,
                      "ceiling": {"one_frame": 0.25, "unordered": c.video_unordered, "audio": 0.25, "ordered": 1.0}},
            "retrieval": {"manifest": "retrieval.jsonl",
                          "oracle_text_to_image": {"R@1": round(c.retrieval_recall[0]), "R@5": round(c.retrieval_recall[1]), "R@10": round(c.retrieval_recall[2])}},
            "sentiment": {"manifest": "sentiment.jsonl", "classes": SENTIMENT_CLASSES,
                          "floor_mse": {"text": round(c.sentiment_mse[0]), "image": round(c.sentiment_mse[1]), "fused": round(c.sentiment_mse[2])}},
            "diagnosis": {"manifest": "diagnosis.jsonl", "classes": DIAGNOSES, "features": FEATURES,
                          "ceiling_auroc": {"image": round(c.diagnosis_auroc[0]), "features": round(c.diagnosis_auroc[1]), "fused": round(c.diagnosis_auroc[2])}},
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn auroc_matches_hand_computed_values() {
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), 0.75);
        assert_eq!(auroc(&[1.0, 1.0], &[false, true]), 0.5);
        assert!(auroc(&[1.0, 2.0], &[true, true]).is_nan());
    }

    #[test]
    fn class_weights_follow_the_imbalance() {
        let w = SynthConfig { imbalance: 8.0, ..SynthConfig::default() }.class_weights();
        assert!((w[0] / w[3] - 8.0).abs() < 1e-9 && (w[0] / w[1] - 2.0).abs() < 1e-9);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let u = SynthConfig::default().class_weights();
        assert!(u.iter().all(|x| (x - 0.25).abs() < 1e-12));
    }

    #[test]
    fn bad_values_are_named() {
        let e = SynthConfig { val: 0.6, test: 0.5, ..SynthConfig::default() }
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("val + test"), "{e}");
        let e = SynthConfig { noise: f64::NAN, ..SynthConfig::default() }
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("synth.noise"), "{e}");
    }
}

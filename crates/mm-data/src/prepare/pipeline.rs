//! From a manifest sample to model-ready arrays: what each modality goes through (decode,
//! resample, augment when training, normalise) and the [`Item`] that comes out.
//!
//! A [`Pipeline`] names the modalities a model uses, in a fixed order (image, audio, text,
//! frames, features); a sample that lacks one of them gets `None` there, and collation turns
//! that into a zero entry with a 0 in the batch's presence mask. Normalisation statistics come
//! from the training split only ([`Pipeline::fit_statistics`]) and are then fixed.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mm_data::manifest::Manifest;
//! use mm_data::pipeline::{ImageSpec, Pipeline};
//!
//! let manifest = Manifest::read("data/manifest.jsonl")?;
//! let mut pipeline = Pipeline::new(vec!["cat".into(), "dog".into()]);
//! pipeline.image = Some(ImageSpec::new((64, 64)));
//! pipeline.fit_statistics(&manifest)?; // channel mean/std of the training images
//! let item = pipeline.load(&manifest, 0, 0, true)?;
//! assert_eq!(item.image.unwrap().dim(), (3, 64, 64));
//! # Ok::<(), mm_data::Error>(())
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use ndarray::{Array2, Array3};
use rayon::prelude::*;

use crate::audio::{decode_audio, Resampler};
use crate::augment::{
    augment_image, augment_tokens, augment_waveform, drop_modalities, spec_augment, AudioAugment,
    ImageAugment, TextAugment,
};
use crate::error::{Error, Result};
use crate::image::decode_image;
use crate::manifest::{Manifest, Sample, Split};
use crate::mel::{LogMel, MelConfig};
use crate::modality::Modality;
use crate::noise::NoiseBank;
use crate::normalize::{Normalizer, RunningStats};
use crate::rng::Rng;
use crate::subword::SubwordTokenizer;
use crate::text::{Vocab, WordTokenizer};
use crate::transcript::Alphabet;

/// Images: resized (or randomly cropped when training) to `size`, scaled to `[0, 1]`,
/// normalised per channel.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Output `(height, width)`.
    pub size: (usize, usize),
    /// Channel statistics; ImageNet's until [`Pipeline::fit_statistics`] replaces them.
    pub normalizer: Normalizer,
    /// Training-time augmentation.
    pub augment: ImageAugment,
    /// Whether [`Pipeline::fit_statistics`] replaces the statistics with the training split's
    /// (`false` keeps ImageNet's, which pretrained ImageNet weights expect).
    pub fit_statistics: bool,
}

impl ImageSpec {
    /// Images of this size, ImageNet statistics, no augmentation.
    pub fn new(size: (usize, usize)) -> Self {
        ImageSpec {
            size,
            normalizer: Normalizer::imagenet(),
            augment: ImageAugment::default(),
            fit_statistics: true,
        }
    }
}

/// Audio: decoded, mixed to mono, resampled, augmented when training, turned into a log-mel
/// spectrogram `[frames, n_mels]`, normalised per mel bin.
#[derive(Debug, Clone)]
pub struct AudioSpec {
    /// The log-mel front end (its configuration holds the sample rate).
    pub mel: Arc<LogMel>,
    /// Per-bin statistics; `None` until fitted (then the spectrogram is left as is).
    pub normalizer: Option<Normalizer>,
    /// Training-time augmentation.
    pub augment: AudioAugment,
    /// Longer spectrograms are cut to this many frames (their start kept).
    pub max_frames: Option<usize>,
    /// Background noise clips for `augment.background`, loaded for training only.
    pub background: Option<Arc<NoiseBank>>,
    /// Whisper's front end in place of `mel` (`[data.audio] front = "whisper"`): one 30-second
    /// window, `[3000, n_mels]`, scaled as Whisper's features are, never normalised.
    pub whisper: Option<Arc<crate::mel::WhisperMel>>,
}

impl AudioSpec {
    /// A log-mel front end with this configuration, no augmentation.
    pub fn new(config: &MelConfig) -> Result<Self> {
        let mel = LogMel::new(config).map_err(|e| Error::Config(e.to_string()))?;
        Ok(AudioSpec {
            mel: Arc::new(mel),
            normalizer: None,
            augment: AudioAugment::default(),
            max_frames: None,
            background: None,
            whisper: None,
        })
    }
}

/// How text becomes token ids.
#[derive(Debug, Clone)]
pub enum TextEncoder {
    /// Word tokens through a vocabulary built from the training texts (for word vectors).
    Words {
        /// The tokenizer.
        tokenizer: WordTokenizer,
        /// The vocabulary (`<pad>` = 0, `<unk>` = 1).
        vocab: Arc<Vocab>,
    },
    /// A `tokenizer.json` subword tokenizer (for pretrained Transformers).
    Subword(Arc<SubwordTokenizer>),
}

/// Text: token ids, cut to a maximum length. Batches pad with id 0 and carry the lengths.
#[derive(Debug, Clone)]
pub struct TextSpec {
    /// Text to ids.
    pub encoder: TextEncoder,
    /// Longer texts are cut to this many tokens.
    pub max_tokens: usize,
    /// Training-time augmentation.
    pub augment: TextAugment,
}

impl TextSpec {
    /// Word tokens through `vocab`, at most `max_tokens`, no augmentation.
    pub fn words(tokenizer: WordTokenizer, vocab: Vocab, max_tokens: usize) -> Self {
        TextSpec {
            encoder: TextEncoder::Words { tokenizer, vocab: Arc::new(vocab) },
            max_tokens,
            augment: TextAugment::default(),
        }
    }
}

/// Video frames: each frame as an image, the same random crop and flip for every frame of a
/// sample so that motion stays coherent. A sample lists its frames as image files, or names a
/// video file that FFmpeg decodes ([`crate::video`]) as `clip` says.
#[derive(Debug, Clone)]
pub struct FramesSpec {
    /// Per-frame image handling.
    pub image: ImageSpec,
    /// Longer sequences of image files keep this many frames, evenly spaced.
    pub max_frames: Option<usize>,
    /// Which frames of a video file.
    pub clip: ClipSpec,
}

/// Which frames of a video file a sample gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSpec {
    /// Frames per clip.
    pub frames: usize,
    /// Frames per second: a window of `frames / fps` seconds, at a random place in training
    /// and centred in evaluation; `None`: evenly over the whole video.
    pub fps: Option<f64>,
    /// How long FFmpeg may take for one clip before it is killed.
    pub timeout: std::time::Duration,
}

impl Default for ClipSpec {
    /// 16 frames evenly over the video, 120 s to decode them.
    fn default() -> Self {
        ClipSpec { frames: 16, fps: None, timeout: std::time::Duration::from_secs(120) }
    }
}

/// Numeric features: standardised per dimension.
#[derive(Debug, Clone)]
pub struct FeatureSpec {
    /// Number of features every sample must have.
    pub dim: usize,
    /// Statistics; `None` until fitted.
    pub normalizer: Option<Normalizer>,
}

/// What a model takes from each sample.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Image modality.
    pub image: Option<ImageSpec>,
    /// Audio modality.
    pub audio: Option<AudioSpec>,
    /// Text modality.
    pub text: Option<TextSpec>,
    /// Video frames.
    pub frames: Option<FramesSpec>,
    /// Numeric features.
    pub features: Option<FeatureSpec>,
    /// The alphabet of transcript targets (the sample's `text` as characters), for speech
    /// recognition; `text` is then a target, not an input.
    pub transcript: Option<Arc<Alphabet>>,
    /// Class names; a label's index in this list is its class id.
    pub classes: Vec<String>,
    /// Probability of marking each present modality absent when training (one always stays).
    pub modality_dropout: f64,
    /// Seed of every random decision.
    pub seed: u64,
}

/// One sample, ready to collate.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Index of the sample in the manifest.
    pub index: usize,
    /// The sample's id.
    pub id: String,
    /// `[3, H, W]`, normalised.
    pub image: Option<Array3<f32>>,
    /// `[frames, n_mels]`, normalised.
    pub audio: Option<Array2<f32>>,
    /// Token ids.
    pub tokens: Option<Vec<i64>>,
    /// Frames, each `[3, H, W]`.
    pub frames: Option<Vec<Array3<f32>>>,
    /// Features, standardised.
    pub features: Option<Vec<f32>>,
    /// Class id.
    pub label: Option<i64>,
    /// Class ids of a multi-label sample.
    pub labels: Vec<i64>,
    /// Regression target.
    pub target: Option<f32>,
    /// Transcript target: character ids of the sample's text ([`Pipeline::transcript`]).
    pub transcript: Option<Vec<i64>>,
}

/// Random streams, one per use, so that one modality's randomness never shifts another's.
const STREAM_IMAGE: u64 = 1;
const STREAM_AUDIO: u64 = 2;
const STREAM_TEXT: u64 = 3;
const STREAM_FRAMES: u64 = 4;
const STREAM_DROPOUT: u64 = 5;

impl Pipeline {
    /// A pipeline with these classes and no modality yet.
    pub fn new(classes: Vec<String>) -> Self {
        Pipeline {
            image: None,
            audio: None,
            text: None,
            frames: None,
            features: None,
            transcript: None,
            classes,
            modality_dropout: 0.0,
            seed: 0,
        }
    }

    /// The configured modalities, in batch order.
    pub fn modalities(&self) -> Vec<Modality> {
        let on = |m: &Modality| match m {
            Modality::Image => self.image.is_some(),
            Modality::Audio => self.audio.is_some(),
            Modality::Text => self.text.is_some(),
            Modality::Frames => self.frames.is_some(),
            Modality::Features => self.features.is_some(),
        };
        Modality::ALL.into_iter().filter(on).collect()
    }

    fn class_id(&self, label: &str) -> Option<i64> {
        self.classes.iter().position(|c| c == label).map(|i| i as i64)
    }

    /// Loads sample `index` of the manifest for `epoch`; `train` turns augmentation and
    /// modality dropout on. Errors name the sample.
    pub fn load(&self, manifest: &Manifest, index: usize, epoch: u64, train: bool) -> Result<Item> {
        self.load_cached(manifest, index, epoch, train, None)
    }

    /// [`Pipeline::load`], taking decoded files from `cache` when it has them and adding them
    /// while it has room.
    pub fn load_cached(
        &self,
        manifest: &Manifest,
        index: usize,
        epoch: u64,
        train: bool,
        cache: Option<&DecodedCache>,
    ) -> Result<Item> {
        let sample = manifest
            .samples()
            .get(index)
            .ok_or_else(|| Error::Config(format!("no sample at index {index}")))?;
        self.load_sample(manifest, sample, index, epoch, train, cache, None)
            .map_err(|e| Error::Sample { id: sample.id.clone(), source: Box::new(e) })
    }

    /// [`Pipeline::load`] of a sample whose files are in memory (a WebDataset shard's members,
    /// [`crate::shards`]): `files` holds their bytes under `root.path(member)`; a file not
    /// there is read from disk.
    /// `root` gives the folder paths are relative to (its samples are not used), and `number`
    /// stands for the sample's index: it seeds the sample's augmentation.
    pub fn load_in_memory(
        &self,
        root: &Manifest,
        sample: &Sample,
        number: usize,
        epoch: u64,
        train: bool,
        files: &Memory,
    ) -> Result<Item> {
        self.load_sample(root, sample, number, epoch, train, None, Some(files))
            .map_err(|e| Error::Sample { id: sample.id.clone(), source: Box::new(e) })
    }

    #[allow(clippy::too_many_arguments)]
    fn load_sample(
        &self,
        manifest: &Manifest,
        s: &Sample,
        index: usize,
        epoch: u64,
        train: bool,
        cache: Option<&DecodedCache>,
        memory: Option<&Memory>,
    ) -> Result<Item> {
        let rng = |stream| Rng::for_sample(self.seed, epoch, index as u64, stream);
        let mut item = Item {
            index,
            id: s.id.clone(),
            image: None,
            audio: None,
            tokens: None,
            frames: None,
            features: None,
            label: None,
            labels: Vec::new(),
            target: s.target.map(|t| t as f32),
            transcript: None,
        };
        if let (Some(alphabet), Some(text)) = (&self.transcript, &s.text) {
            item.transcript =
                Some(alphabet.encode(text).map_err(|e| Error::Config(format!("transcript: {e}")))?);
        }
        if let Some(label) = &s.label {
            item.label =
                Some(self.class_id(label).ok_or_else(|| {
                    Error::Config(format!("label {label:?} is not a known class"))
                })?);
        }
        for label in &s.labels {
            item.labels.push(
                self.class_id(label).ok_or_else(|| {
                    Error::Config(format!("label {label:?} is not a known class"))
                })?,
            );
        }
        // Which modalities this sample contributes (after modality dropout when training).
        let mut present = [
            self.image.is_some() && s.image.is_some(),
            self.audio.is_some() && s.audio.is_some(),
            self.text.is_some() && s.text.is_some(),
            self.frames.is_some() && (!s.frames.is_empty() || s.video.is_some()),
            self.features.is_some() && !s.features.is_empty(),
        ];
        if train {
            drop_modalities(&mut present, self.modality_dropout, &mut rng(STREAM_DROPOUT));
        }
        if let (true, Some(spec), Some(rel)) = (present[0], &self.image, &s.image) {
            item.image = Some(load_image(
                &manifest.path(rel),
                memory,
                spec,
                train,
                &mut rng(STREAM_IMAGE),
                cache,
            )?);
        }
        if let (true, Some(spec), Some(rel)) = (present[1], &self.audio, &s.audio) {
            item.audio = Some(load_audio(
                &manifest.path(rel),
                memory,
                spec,
                train,
                &mut rng(STREAM_AUDIO),
                cache,
            )?);
        }
        if let (true, Some(spec), Some(text)) = (present[2], &self.text, &s.text) {
            let max = spec.max_tokens.max(1);
            let tokens = match &spec.encoder {
                TextEncoder::Words { tokenizer, vocab } => {
                    let mut tokens = vocab.encode(&tokenizer.tokenize(text));
                    if train {
                        augment_tokens(&mut tokens, &spec.augment, &mut rng(STREAM_TEXT));
                    }
                    tokens.truncate(max);
                    tokens
                }
                TextEncoder::Subword(tok) => {
                    // Cut to fit with the special tokens kept; augmentation leaves them alone.
                    let (mut tokens, special) = tok.encode_max(text, max)?;
                    if train {
                        let lead = special.iter().take_while(|s| **s).count();
                        let trail = special[lead..].iter().rev().take_while(|s| **s).count();
                        let mut inner: Vec<i64> =
                            tokens.drain(lead..tokens.len() - trail).collect();
                        augment_tokens(&mut inner, &spec.augment, &mut rng(STREAM_TEXT));
                        tokens.splice(lead..lead, inner);
                    }
                    tokens
                }
            };
            item.tokens = Some(tokens);
        }
        if let (true, Some(spec), Some(rel)) = (present[3], &self.frames, &s.video) {
            item.frames =
                Some(load_clip(&manifest.path(rel), spec, train, &mut rng(STREAM_FRAMES))?);
        } else if let (true, Some(spec)) = (present[3], &self.frames) {
            let chosen = spaced(s.frames.len(), spec.max_frames);
            let base = rng(STREAM_FRAMES);
            let frames = chosen
                .iter()
                .map(|&i| {
                    load_image(
                        &manifest.path(&s.frames[i]),
                        memory,
                        &spec.image,
                        train,
                        &mut base.clone(),
                        cache,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            item.frames = Some(frames);
        }
        if let (true, Some(spec)) = (present[4], &self.features) {
            if s.features.len() != spec.dim {
                return Err(Error::Config(format!(
                    "{} features, the pipeline expects {}",
                    s.features.len(),
                    spec.dim
                )));
            }
            let mut f: Vec<f32> = s.features.iter().map(|v| *v as f32).collect();
            if let Some(n) = &spec.normalizer {
                n.apply(&mut f);
            }
            item.features = Some(f);
        }
        Ok(item)
    }

    /// Computes the normalisation statistics of every modality that has them from the
    /// training split (images and video frames after resizing, unless their spec keeps
    /// ImageNet's; spectrograms; features), in parallel, without augmentation. Samples missing a modality are skipped for that modality.
    pub fn fit_statistics(&mut self, manifest: &Manifest) -> Result<()> {
        self.fit_statistics_in(manifest, None)
    }

    /// [`Pipeline::fit_statistics`] with the files of `memory` read from memory (see
    /// [`Pipeline::load_in_memory`]).
    pub fn fit_statistics_in(
        &mut self,
        manifest: &Manifest,
        memory: Option<&Memory>,
    ) -> Result<()> {
        let train: Vec<&Sample> = manifest.split(Split::Train).collect();
        if train.is_empty() {
            return Err(Error::Config(
                "the training split is empty: no statistics to compute".to_string(),
            ));
        }
        let fold = |dim: usize,
                    f: &(dyn Fn(&Sample, &mut RunningStats) -> Result<()> + Sync)|
         -> Result<RunningStats> {
            train
                .par_iter()
                .try_fold(
                    || RunningStats::new(dim),
                    |mut acc, s| {
                        f(s, &mut acc)
                            .map_err(|e| Error::Sample { id: s.id.clone(), source: Box::new(e) })?;
                        Ok(acc)
                    },
                )
                .try_reduce(|| RunningStats::new(dim), |a, b| Ok(a.merge(&b)))
        };
        // Channel statistics of images as the model sees them (resized, not augmented); the
        // frames of a video file are its evaluation clip's.
        let channel_stats = |spec: &ImageSpec,
                             paths: &(dyn Fn(&Sample) -> Vec<PathBuf> + Sync),
                             clip: Option<&FramesSpec>| {
            let plain = ImageSpec {
                normalizer: Normalizer { mean: vec![0.0; 3], std: vec![1.0; 3], count: 0 },
                augment: ImageAugment::default(),
                ..spec.clone()
            };
            fold(3, &|s, acc| {
                let mut images = Vec::new();
                for rel in paths(s) {
                    images.push(load_image(
                        &manifest.path(&rel),
                        memory,
                        &plain,
                        false,
                        &mut Rng::new(0),
                        None,
                    )?);
                }
                if let (Some(frames), Some(rel)) = (clip, &s.video) {
                    let plain = FramesSpec { image: plain.clone(), ..frames.clone() };
                    images.extend(load_clip(&manifest.path(rel), &plain, false, &mut Rng::new(0))?);
                }
                for img in images {
                    // Rows of (r, g, b): one per pixel.
                    let hw = img.len() / 3;
                    let flat = img.as_slice().expect("standard layout");
                    for p in 0..hw {
                        acc.push(&[flat[p], flat[hw + p], flat[2 * hw + p]]);
                    }
                }
                Ok(())
            })
        };
        if let Some(spec) = self.image.as_ref().filter(|s| s.fit_statistics) {
            let stats = channel_stats(spec, &|s| s.image.iter().cloned().collect(), None)?;
            if let Some(spec) = &mut self.image {
                spec.normalizer = stats.finish();
            }
        }
        if let Some(spec) = self.frames.as_ref().filter(|s| s.image.fit_statistics) {
            let stats = channel_stats(&spec.image, &|s| s.frames.clone(), Some(spec))?;
            if let Some(spec) = &mut self.frames {
                spec.image.normalizer = stats.finish();
            }
        }
        if let Some(spec) = self.audio.as_ref().filter(|s| s.whisper.is_none()) {
            let plain =
                AudioSpec { normalizer: None, augment: AudioAugment::default(), ..spec.clone() };
            let stats = fold(spec.mel.config().n_mels, &|s, acc| {
                if let Some(rel) = &s.audio {
                    let spec = load_audio(
                        &manifest.path(rel),
                        memory,
                        &plain,
                        false,
                        &mut Rng::new(0),
                        None,
                    )?;
                    acc.push_rows(spec.as_slice().expect("standard layout"));
                }
                Ok(())
            })?;
            if let Some(spec) = &mut self.audio {
                spec.normalizer = Some(stats.finish());
            }
        }
        if let Some(spec) = &self.features {
            let dim = spec.dim;
            let stats = fold(dim, &|s, acc| {
                if !s.features.is_empty() {
                    if s.features.len() != dim {
                        return Err(Error::Config(format!(
                            "{} features, the pipeline expects {dim}",
                            s.features.len()
                        )));
                    }
                    acc.push(&s.features.iter().map(|v| *v as f32).collect::<Vec<_>>());
                }
                Ok(())
            })?;
            if let Some(spec) = &mut self.features {
                spec.normalizer = Some(stats.finish());
            }
        }
        Ok(())
    }
}

impl Pipeline {
    /// Writes the normalisation statistics of every configured modality that has them into
    /// `dir` (`image_stats.json`, `audio_stats.json`, `frames_stats.json`,
    /// `features_stats.json`), atomically, so that evaluation and prediction reuse exactly the
    /// training split's numbers.
    pub fn save_statistics(&self, dir: impl AsRef<std::path::Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (name, stats) in self.statistics() {
            if let Some(n) = stats {
                n.save(dir.join(format!("{name}_stats.json")))?;
            }
        }
        Ok(())
    }

    /// Reads the statistics [`Pipeline::save_statistics`] wrote, for every configured modality;
    /// a missing file, or statistics of the wrong dimension, is an error naming the file.
    pub fn load_statistics(&mut self, dir: impl AsRef<std::path::Path>) -> Result<()> {
        let dir = dir.as_ref();
        let path = |m: Modality| dir.join(format!("{m}_stats.json"));
        if let Some(spec) = &mut self.image {
            spec.normalizer = Normalizer::load(path(Modality::Image), Some(3))?;
        }
        if let Some(spec) = self.audio.as_mut().filter(|s| s.whisper.is_none()) {
            spec.normalizer =
                Some(Normalizer::load(path(Modality::Audio), Some(spec.mel.config().n_mels))?);
        }
        if let Some(spec) = &mut self.frames {
            spec.image.normalizer = Normalizer::load(path(Modality::Frames), Some(3))?;
        }
        if let Some(spec) = &mut self.features {
            spec.normalizer = Some(Normalizer::load(path(Modality::Features), Some(spec.dim))?);
        }
        Ok(())
    }

    /// The normalisation statistics each configured modality uses (none for text, and none
    /// where audio or features are not normalised), in batch order.
    pub fn statistics(&self) -> Vec<(Modality, Option<&Normalizer>)> {
        let mut out = Vec::new();
        if let Some(spec) = &self.image {
            out.push((Modality::Image, Some(&spec.normalizer)));
        }
        if let Some(spec) = &self.audio {
            out.push((Modality::Audio, spec.normalizer.as_ref()));
        }
        if let Some(spec) = &self.frames {
            out.push((Modality::Frames, Some(&spec.image.normalizer)));
        }
        if let Some(spec) = &self.features {
            out.push((Modality::Features, spec.normalizer.as_ref()));
        }
        out
    }
}

/// `n` indices spread evenly over `0..len` (all of them when `max` allows).
fn spaced(len: usize, max: Option<usize>) -> Vec<usize> {
    match max {
        Some(m) if m < len && m > 0 => (0..m).map(|i| i * len / m).collect(),
        _ => (0..len).collect(),
    }
}

type AudioKey = (PathBuf, u32);

/// Decoded files kept in memory across epochs, up to a byte budget: images as decoded pixels,
/// audio as samples already resampled to the front end's rate (augmentation and normalisation
/// still run every time). Once the budget is reached nothing more is added, so memory stays
/// bounded whatever the data set's size.
#[derive(Debug)]
pub struct DecodedCache {
    images: RwLock<HashMap<PathBuf, Arc<Array3<u8>>>>,
    /// Keyed by file and the rate the samples were resampled to.
    audio: RwLock<HashMap<AudioKey, Arc<Vec<f32>>>>,
    max_bytes: usize,
    used: AtomicUsize,
}

impl DecodedCache {
    /// An empty cache that holds at most `max_bytes` of decoded data.
    pub fn new(max_bytes: usize) -> Self {
        DecodedCache {
            images: RwLock::default(),
            audio: RwLock::default(),
            max_bytes,
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Files held.
    pub fn len(&self) -> usize {
        self.images.read().map_or(0, |m| m.len()) + self.audio.read().map_or(0, |m| m.len())
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reserves room for `bytes`, if the budget allows.
    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + bytes <= self.max_bytes).then_some(u + bytes)
            })
            .is_ok()
    }

    fn get_or_load<K: std::hash::Hash + Eq + Clone, V>(
        map: &RwLock<HashMap<K, Arc<V>>>,
        key: &K,
        size: impl Fn(&V) -> usize,
        reserve: impl Fn(usize) -> bool,
        load: impl FnOnce() -> Result<V>,
    ) -> Result<Arc<V>> {
        if let Some(v) = map.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Ok(Arc::clone(v));
        }
        let value = Arc::new(load()?);
        if reserve(size(&value)) {
            let mut m = map.write().unwrap_or_else(|e| e.into_inner());
            m.entry(key.clone()).or_insert_with(|| Arc::clone(&value));
        }
        Ok(value)
    }
}

/// Files held in memory, by the path they would have on disk (see [`Pipeline::load_in_memory`]).
pub type Memory = HashMap<PathBuf, Vec<u8>>;

fn decoded_image(
    path: &std::path::Path,
    memory: Option<&Memory>,
    cache: Option<&DecodedCache>,
) -> Result<Arc<Array3<u8>>> {
    if let Some(bytes) = memory.and_then(|m| m.get(path)) {
        return Ok(Arc::new(crate::image::decode_image_bytes(bytes, path)?));
    }
    match cache {
        None => Ok(Arc::new(decode_image(path)?)),
        Some(c) => DecodedCache::get_or_load(
            &c.images,
            &path.to_path_buf(),
            |a| a.len(),
            |b| c.reserve(b),
            || decode_image(path),
        ),
    }
}

fn decoded_audio(
    path: &std::path::Path,
    memory: Option<&Memory>,
    rate: u32,
    cache: Option<&DecodedCache>,
) -> Result<Arc<Vec<f32>>> {
    let in_memory = memory.and_then(|m| m.get(path));
    let cache = if in_memory.is_some() { None } else { cache };
    let load = || -> Result<Vec<f32>> {
        let audio = match in_memory {
            Some(bytes) => crate::audio::decode_audio_bytes(bytes.clone(), path)?,
            None => decode_audio(path)?,
        };
        Ok(if audio.sample_rate == rate {
            audio.samples
        } else {
            Resampler::cached(audio.sample_rate, rate).process(&audio.samples)
        })
    };
    match cache {
        None => Ok(Arc::new(load()?)),
        Some(c) => DecodedCache::get_or_load(
            &c.audio,
            &(path.to_path_buf(), rate),
            |v| v.len() * 4,
            |b| c.reserve(b),
            load,
        ),
    }
}

fn load_image(
    path: &std::path::Path,
    memory: Option<&Memory>,
    spec: &ImageSpec,
    train: bool,
    rng: &mut Rng,
    cache: Option<&DecodedCache>,
) -> Result<Array3<f32>> {
    let pixels = decoded_image(path, memory, cache)?;
    Ok(transform_image(&pixels, spec, train, rng))
}

/// Decoded `[H, W, 3]` pixels as the model sees them: augmented when training, resized,
/// normalised.
fn transform_image(
    pixels: &Array3<u8>,
    spec: &ImageSpec,
    train: bool,
    rng: &mut Rng,
) -> Array3<f32> {
    let aug = if train { spec.augment.clone() } else { ImageAugment::default() };
    let mut img = augment_image(pixels, spec.size, &aug, rng);
    spec.normalizer.apply_chw(img.as_slice_mut().expect("standard layout"));
    img
}

/// The clip of the video file at `path` that `spec` asks for, every frame through the same
/// augmentation. FFmpeg scales the frames to the model's size, or, when a random crop is to
/// come, to at most twice it (the crop then has pixels to take).
fn load_clip(
    path: &std::path::Path,
    spec: &FramesSpec,
    train: bool,
    rng: &mut Rng,
) -> Result<Vec<Array3<f32>>> {
    use crate::video::{decode_clip, probe, Clip};
    let info = probe(path)?;
    let (h, w) = spec.image.size;
    let size = if train && spec.image.augment.crop.is_some() {
        (info.height.clamp(h, 2 * h), info.width.clamp(w, 2 * w))
    } else {
        (h, w)
    };
    let c = spec.clip;
    let clip = match c.fps {
        None => Clip::evenly(&info, c.frames, size),
        Some(fps) => {
            let place = if train { rng.uniform(0.0, 1.0) } else { 0.5 };
            Clip::at_rate(&info, c.frames, fps, place, size)
        }
    };
    let decoded = decode_clip(path, &info, &clip, c.timeout)?;
    let base = rng.clone();
    Ok(decoded
        .frames
        .iter()
        .map(|pixels| transform_image(pixels, &spec.image, train, &mut base.clone()))
        .collect())
}

/// Log-mel frames `[T, n_mels]` of `samples`: the configured front end, or Whisper's window.
fn front(spec: &AudioSpec, samples: &[f32]) -> Array2<f32> {
    match &spec.whisper {
        Some(w) => w.window(samples).reversed_axes().as_standard_layout().into_owned(),
        None => spec.mel.compute(samples),
    }
}

fn load_audio(
    path: &std::path::Path,
    memory: Option<&Memory>,
    spec: &AudioSpec,
    train: bool,
    rng: &mut Rng,
    cache: Option<&DecodedCache>,
) -> Result<Array2<f32>> {
    let decoded = decoded_audio(path, memory, spec.mel.config().sample_rate, cache)?;
    let mel = if train {
        let mut samples = decoded.to_vec();
        augment_waveform(&mut samples, &spec.augment, rng);
        if let (Some(bank), Some(b)) = (&spec.background, &spec.augment.background) {
            if rng.chance(b.p) {
                let snr = rng.uniform(b.snr_db.0, b.snr_db.1);
                bank.mix(&mut samples, snr, rng);
            }
        }
        front(spec, &samples)
    } else {
        front(spec, &decoded)
    };
    let mut mel = match spec.max_frames {
        Some(max) if mel.nrows() > max => mel.slice(ndarray::s![..max, ..]).to_owned(),
        _ => mel,
    };
    if let Some(n) = &spec.normalizer {
        n.apply(mel.as_slice_mut().expect("standard layout"));
    }
    if train {
        spec_augment(&mut mel, &spec.augment, 0.0, rng);
    }
    Ok(mel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaced_frames() {
        assert_eq!(spaced(10, Some(4)), [0, 2, 5, 7]);
        assert_eq!(spaced(3, Some(8)), [0, 1, 2]);
        assert_eq!(spaced(3, None), [0, 1, 2]);
    }
}

//! A data set and its pipeline described in configuration (the `[data]` table of a run's TOML
//! file): which manifest, which classes, whether to clean it first, and how each modality is
//! read. [`DataConfig::prepare`] turns it into a cleaned manifest and a [`Pipeline`] fitted on
//! the training split; [`DataConfig::restore`] rebuilds the same pipeline later from what a run
//! saved (vocabulary and statistics), for evaluation and prediction.
//!
//! Every field has a default except `manifest`; an unknown key is an error.
//!
//! ```
//! use mm_data::config::DataConfig;
//! use mm_data::Modality;
//!
//! let config: DataConfig = toml::from_str(r#"
//!     manifest = "data/synth/manifest.jsonl"
//!     [image]
//!     size = 32
//!     augment = { hflip = 0.5 }
//!     [audio]
//!     mel = { n_mels = 32 }
//!     [text]
//!     max_tokens = 40
//! "#)?;
//! assert_eq!(config.image.as_ref().map(|i| i.size.hw()), Some((32, 32)));
//! assert_eq!(config.modalities(), [Modality::Image, Modality::Audio, Modality::Text]);
//! # Ok::<(), toml::de::Error>(())
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::augment::{AudioAugment, ImageAugment, TextAugment};
use crate::clean::{clean, CleanConfig, CleanReport};
use crate::error::{Error, Result};
use crate::manifest::{Manifest, Split};
use crate::mel::MelConfig;
use crate::modality::Modality;
use crate::noise::NoiseBank;
use crate::pipeline::{
    AudioSpec, ClipSpec, FeatureSpec, FramesSpec, ImageSpec, Pipeline, TextEncoder, TextSpec,
};
use crate::shards::ShardIndex;
use crate::subword::SubwordTokenizer;
use crate::text::{Punctuation, Vocab, VocabBuilder, WordTokenizer};
use crate::transcript::{Alphabet, TranscriptConfig, Unit, WORDS};

/// The file, in a run's `data` folder, of a word transcript's vocabulary (beside `vocab.txt`,
/// the text input's).
pub const TRANSCRIPT_VOCAB: &str = "transcript_vocab.txt";

/// An image size: `32` for 32×32, or `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// Square.
    Square(usize),
    /// `[height, width]`.
    Rect([usize; 2]),
}

impl Size {
    /// `(height, width)`.
    pub fn hw(self) -> (usize, usize) {
        match self {
            Size::Square(s) => (s, s),
            Size::Rect([h, w]) => (h, w),
        }
    }
}

fn default_size() -> Size {
    Size::Square(64)
}

/// `[data.image]`: images resized to `size`, normalised with the training split's channel
/// statistics, augmented when training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Output size (default 64).
    #[serde(default = "default_size")]
    pub size: Size,
    /// Training-time augmentation (default none); [`ImageAugment`]'s fields.
    #[serde(default)]
    pub augment: ImageAugment,
    /// Channel statistics: `fit` on the training split (default), `imagenet`'s, as
    /// pretrained ImageNet weights (torchvision's) expect, or `clip`'s, as OpenAI's CLIP
    /// weights expect.
    #[serde(default)]
    pub normalize: Normalize,
}

/// Where an image's channel statistics come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// The training split's.
    #[default]
    Fit,
    /// ImageNet's mean and standard deviation (what torchvision's weights were trained with).
    Imagenet,
    /// OpenAI CLIP's mean and standard deviation (what CLIP's vision tower was trained with).
    Clip,
}

impl Normalize {
    /// The fixed statistics (ImageNet's stand in for `fit` until the data is fitted).
    pub fn normalizer(self) -> crate::normalize::Normalizer {
        use crate::normalize::Normalizer;
        match self {
            Normalize::Fit | Normalize::Imagenet => Normalizer::imagenet(),
            Normalize::Clip => Normalizer::clip(),
        }
    }

    fn spec(self, size: (usize, usize), augment: &ImageAugment) -> ImageSpec {
        ImageSpec {
            augment: augment.clone(),
            fit_statistics: self == Normalize::Fit,
            normalizer: self.normalizer(),
            ..ImageSpec::new(size)
        }
    }
}

/// `[data.audio]`: a log-mel spectrogram per clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AudioConfig {
    /// The front end (default: 16 kHz, 25 ms windows every 10 ms, 64 mel bins).
    #[serde(default)]
    pub mel: MelConfig,
    /// `"mel"` (the default: `mel`'s log-mel frames, normalised with the training split's
    /// statistics) or `"whisper"` (Whisper's own front end: `mel.n_mels` Slaney bins at 16 kHz
    /// over one 30-second window, 3000 frames, scaled as Whisper's are; for `kind = "whisper"`
    /// encoders).
    #[serde(default, skip_serializing_if = "AudioFront::is_mel")]
    pub front: AudioFront,
    /// Longer spectrograms are cut to this many frames.
    #[serde(default)]
    pub max_frames: Option<usize>,
    /// Training-time augmentation (default none).
    #[serde(default)]
    pub augment: AudioAugment,
}

/// The audio front end (`[data.audio] front`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioFront {
    /// Log-mel frames as `mel` says.
    #[default]
    Mel,
    /// Whisper's log-mel front end over a 30-second window.
    Whisper,
}

impl AudioFront {
    fn is_mel(&self) -> bool {
        *self == AudioFront::Mel
    }
}

fn default_max_tokens() -> usize {
    64
}

fn default_min_freq() -> usize {
    1
}

fn yes() -> bool {
    true
}

/// `[data.text]`: word tokens through a vocabulary built from the training texts, or a
/// `tokenizer.json` subword tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// Longer texts are cut to this many tokens (default 64).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// A `tokenizer.json` (Hugging Face) instead of word tokens.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Word tokens: lower-case first (default true).
    #[serde(default = "yes")]
    pub lowercase: bool,
    /// Word tokens: `split` (default), `strip` or `keep` punctuation.
    #[serde(default)]
    pub punctuation: Punctuation,
    /// Word tokens: words seen fewer times in the training split map to `<unk>` (default 1).
    #[serde(default = "default_min_freq")]
    pub min_freq: usize,
    /// Word tokens: at most this many vocabulary entries.
    #[serde(default)]
    pub max_vocab: Option<usize>,
    /// Training-time augmentation (default none).
    #[serde(default)]
    pub augment: TextAugment,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            max_tokens: default_max_tokens(),
            tokenizer: None,
            lowercase: true,
            punctuation: Punctuation::Split,
            min_freq: 1,
            max_vocab: None,
            augment: TextAugment::default(),
        }
    }
}

/// `[data.frames]`: video frames, each as an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramesConfig {
    /// Frame size (default 64).
    #[serde(default = "default_size")]
    pub size: Size,
    /// Longer videos keep this many frames, evenly spaced.
    #[serde(default)]
    pub max_frames: Option<usize>,
    /// Training-time augmentation, the same for every frame of a video.
    #[serde(default)]
    pub augment: ImageAugment,
    /// Channel statistics: `fit` (default) or `imagenet`, as for images.
    #[serde(default)]
    pub normalize: Normalize,
}

/// `[data.video]`: video files (the manifest's `video` field) decoded through FFmpeg
/// ([`crate::video`]) into the frames modality, in place of `[data.frames]`. A sample that
/// lists `frames` instead is read as image files, `frames` of them evenly chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoConfig {
    /// Frame size (default 112), scaled by FFmpeg.
    #[serde(default = "default_video_size")]
    pub size: Size,
    /// Frames per clip (default 16).
    #[serde(default = "default_clip_frames")]
    pub frames: usize,
    /// Frames per second of a clip: a window of `frames / fps` seconds, at a random place in
    /// training and centred in evaluation. Unset (the default): evenly over the whole video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
    /// Training-time augmentation, the same for every frame of a clip.
    #[serde(default)]
    pub augment: ImageAugment,
    /// Channel statistics: `fit` (default) or `imagenet`, as for images.
    #[serde(default)]
    pub normalize: Normalize,
    /// A sample with a `video` and no `audio` takes its sound from the video's first audio
    /// track (decoded by FFmpeg) for `[data.audio]`.
    #[serde(default)]
    pub audio_from_video: bool,
    /// Seconds an FFmpeg process may take for one clip or sound track before it is killed
    /// (default 120).
    #[serde(default = "default_video_timeout")]
    pub timeout_s: f64,
}

fn default_video_size() -> Size {
    Size::Square(112)
}

fn default_clip_frames() -> usize {
    16
}

fn default_video_timeout() -> f64 {
    120.0
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig {
            size: default_video_size(),
            frames: default_clip_frames(),
            fps: None,
            augment: ImageAugment::default(),
            normalize: Normalize::default(),
            audio_from_video: false,
            timeout_s: default_video_timeout(),
        }
    }
}

/// `[data.features]`: a fixed number of numeric features per sample, standardised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesConfig {
    /// Features per sample.
    pub dim: usize,
}

/// `[data]`: the data set and what a model reads from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The manifest (JSONL or CSV), or the `shards.json` of tar shards written by
    /// `mm data shard` (streamed: see [`crate::shards`]); a relative path is taken from the
    /// current directory.
    pub manifest: PathBuf,
    /// Class names in id order; empty (the default): every label of the manifest, sorted.
    #[serde(default)]
    pub classes: Vec<String>,
    /// Run the cleaning pass first (default true): unreadable files, empty texts and unknown
    /// labels are dropped and reported, never silently.
    #[serde(default = "yes")]
    pub clean: bool,
    /// Images.
    #[serde(default)]
    pub image: Option<ImageConfig>,
    /// Audio.
    #[serde(default)]
    pub audio: Option<AudioConfig>,
    /// Text.
    #[serde(default)]
    pub text: Option<TextConfig>,
    /// Video frames, each an image file.
    #[serde(default)]
    pub frames: Option<FramesConfig>,
    /// Video files, decoded through FFmpeg (the frames modality, in place of `frames`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoConfig>,
    /// Numeric features.
    #[serde(default)]
    pub features: Option<FeaturesConfig>,
    /// The sample's `text` as the target, a sequence of characters (speech recognition) or
    /// words (captions), rather than an input; refused together with `[data.text]`.
    #[serde(default)]
    pub transcript: Option<TranscriptConfig>,
    /// Probability of hiding each present modality of a training sample (one always stays).
    #[serde(default)]
    pub modality_dropout: f64,
    /// The largest file of each kind read, in MiB (`max_file_mb = { image = 512 }`); a larger
    /// file, or anything that is not a regular file, is refused by name before it is read.
    #[serde(default, skip_serializing_if = "FileLimits::is_default")]
    pub max_file_mb: FileLimits,
}

/// `data.max_file_mb`: size limits, in MiB, of the files a run reads, by kind; an unset kind
/// keeps its default (see [`crate::fs::FileKind`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Images and video frames (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<u64>,
    /// Sound files (default 2048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<u64>,
    /// Manifests, word lists, statistics, tokenizers (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<u64>,
    /// Weights and checkpoints (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<u64>,
}

impl FileLimits {
    fn is_default(&self) -> bool {
        *self == FileLimits::default()
    }

    fn each(&self) -> [(crate::fs::FileKind, Option<u64>); 4] {
        use crate::fs::FileKind;
        [
            (FileKind::Image, self.image),
            (FileKind::Audio, self.audio),
            (FileKind::Text, self.text),
            (FileKind::Weights, self.weights),
        ]
    }

    /// Sets this process's limits ([`crate::fs::set_limit`]): the ones given, the defaults for
    /// the others (so that one run's settings never carry over to the next).
    pub fn apply(&self) {
        for (kind, mb) in self.each() {
            let bytes = mb.map_or(kind.default_limit(), |mb| mb.saturating_mul(1 << 20));
            crate::fs::set_limit(kind, bytes);
        }
    }
}

/// What [`DataConfig::prepare`] returns.
#[derive(Debug)]
pub struct Prepared {
    /// The manifest after cleaning.
    pub manifest: Manifest,
    /// The cleaning report, when cleaning ran.
    pub report: Option<CleanReport>,
    /// The pipeline, its vocabulary and statistics fitted on the training split.
    pub pipeline: Pipeline,
    /// The shards, when `manifest` names a shard index: `manifest` then holds every sample's
    /// manifest line (their files stay in the shards; see [`crate::shards::ShardIndex::scan`]).
    pub shards: Option<std::sync::Arc<ShardIndex>>,
}

/// Training samples of sharded data whose files the statistics are fitted on (the first ones
/// of the training shards, which `mm data shard` wrote in a shuffled order).
pub const SHARD_STATISTICS_SAMPLES: usize = 2000;

impl DataConfig {
    /// A configuration reading `manifest` with no modality yet.
    pub fn new(manifest: impl Into<PathBuf>) -> Self {
        DataConfig {
            manifest: manifest.into(),
            classes: Vec::new(),
            clean: true,
            image: None,
            audio: None,
            text: None,
            frames: None,
            video: None,
            features: None,
            transcript: None,
            modality_dropout: 0.0,
            max_file_mb: FileLimits::default(),
        }
    }

    /// The configured modalities, in batch order.
    pub fn modalities(&self) -> Vec<Modality> {
        let on = |m: &Modality| match m {
            Modality::Image => self.image.is_some(),
            Modality::Audio => self.audio.is_some(),
            Modality::Text => self.text.is_some(),
            Modality::Frames => self.frames.is_some() || self.video.is_some(),
            Modality::Features => self.features.is_some(),
        };
        Modality::ALL.into_iter().filter(on).collect()
    }

    /// Checks what can be checked without reading the data: at least one modality, sizes and
    /// probabilities in range. Messages name the key (`data.image.size`).
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(Error::Config(format!("data.{key}: {why}")));
        if self.modalities().is_empty() {
            return bad("", "no modality: add at least one of [data.image], [data.audio], [data.text], [data.frames] (or [data.video]), [data.features]");
        }
        if let Some(v) = &self.video {
            if self.frames.is_some() {
                return bad("video", "[data.frames] and [data.video] configure the same modality: keep one ([data.video] also reads samples that list `frames`)");
            }
            if v.frames == 0 || v.frames > 1024 {
                return bad(
                    "video.frames",
                    &format!("{} is not a usable number of frames (1 to 1024)", v.frames),
                );
            }
            if let Some(fps) = v.fps {
                if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
                    return bad(
                        "video.fps",
                        &format!("{fps} is not a frame rate (above 0, at most 1000)"),
                    );
                }
            }
            if !(v.timeout_s.is_finite() && v.timeout_s > 0.0) {
                return bad("video.timeout_s", "must be a positive number of seconds");
            }
            if v.audio_from_video && self.audio.is_none() {
                return bad(
                    "video.audio_from_video",
                    "the sound feeds [data.audio]: add that table",
                );
            }
        }
        if let Some(a) = &self.audio {
            // The front end's own checks (rates, sizes, the frequency range), before any work.
            if let Err(e) = crate::mel::LogMel::new(&a.mel) {
                return bad("audio.mel", &e.to_string());
            }
        }
        for (kind, mb) in self.max_file_mb.each() {
            if mb == Some(0) {
                return bad(&format!("max_file_mb.{}", kind.name()), "must be at least 1 (MiB)");
            }
        }
        for (key, size) in [
            ("image.size", self.image.as_ref().map(|i| i.size)),
            ("frames.size", self.frames.as_ref().map(|f| f.size)),
            ("video.size", self.video.as_ref().map(|f| f.size)),
        ] {
            if let Some((h, w)) = size.map(Size::hw) {
                if h == 0 || w == 0 || h > 4096 || w > 4096 {
                    return bad(key, &format!("{h}x{w} is not a usable size (1 to 4096)"));
                }
            }
        }
        if let Some(t) = &self.text {
            if t.max_tokens == 0 {
                return bad("text.max_tokens", "must be at least 1");
            }
        }
        if let Some(f) = &self.features {
            if f.dim == 0 {
                return bad("features.dim", "must be at least 1");
            }
        }
        if let Some(b) = self.audio.as_ref().and_then(|a| a.augment.background.as_ref()) {
            b.validate()?;
        }
        if let Some(a) = self.audio.as_ref().filter(|a| a.front == AudioFront::Whisper) {
            if a.mel.sample_rate != 16_000 {
                return bad(
                    "audio.mel.sample_rate",
                    "Whisper's front end reads 16 kHz audio: set 16000",
                );
            }
            if a.max_frames.is_some() {
                return bad("audio.max_frames", "Whisper's front end always gives one 30-second window (3000 frames): remove max_frames");
            }
        }
        if let Some(t) = &self.transcript {
            if self.text.is_some() {
                return bad("transcript", "the text is either an input ([data.text]) or the target ([data.transcript]), not both");
            }
            match t.unit {
                Unit::Chars => {
                    Alphabet::new(&t.alphabet)
                        .map_err(|e| Error::Config(format!("data.transcript.alphabet: {e}")))?;
                }
                Unit::Words => {
                    if t.min_count == 0 {
                        return bad("transcript.min_count", "must be at least 1");
                    }
                    if t.max_vocab.is_some_and(|m| m < 3) {
                        return bad(
                            "transcript.max_vocab",
                            "must be at least 3 (<pad>, <unk> and a word)",
                        );
                    }
                }
            }
        }
        if !(0.0..1.0).contains(&self.modality_dropout) {
            return bad("modality_dropout", "a probability in [0, 1)");
        }
        let mut seen = BTreeSet::new();
        if let Some(dup) = self.classes.iter().find(|c| !seen.insert(c.as_str())) {
            return bad("classes", &format!("{dup:?} appears twice"));
        }
        Ok(())
    }

    /// Reads `manifest` (the configured one, or another with the same modalities and classes)
    /// and cleans it as this configuration says: with `clean`, unusable samples and labels
    /// outside `classes` (when set) are dropped and reported.
    pub fn read_manifest(&self, manifest: &Path) -> Result<(Manifest, Option<CleanReport>)> {
        self.apply_limits();
        if ShardIndex::is_index(manifest) {
            // Shards: every sample's manifest line, not cleaned (see `prepare_shards`).
            return Ok((ShardIndex::read(manifest)?.scan()?, None));
        }
        self.clean_manifest(Manifest::read(manifest)?)
    }

    fn clean_manifest(&self, raw: Manifest) -> Result<(Manifest, Option<CleanReport>)> {
        let raw = self.sound_from_video(raw)?;
        if !self.clean {
            return Ok((raw, None));
        }
        // A recogniser learns nothing from a clip without its transcript: such samples are
        // dropped, and reported.
        let required = if self.transcript.is_some() { vec![Modality::Text] } else { Vec::new() };
        let config = CleanConfig {
            classes: (!self.classes.is_empty()).then(|| self.classes.clone()),
            required,
            clip: self.clip(),
            ..CleanConfig::default()
        };
        let (kept, report) = clean(&raw, &config)?;
        Ok((kept, Some(report)))
    }

    /// Sets the process-wide limits this configuration asks for: file sizes
    /// (`max_file_mb`) and FFmpeg's time for a video's sound (`[data.video] timeout_s`).
    fn apply_limits(&self) {
        self.max_file_mb.apply();
        crate::video::set_timeout(self.clip().timeout);
    }

    /// The clips video files give: `[data.video]`'s, or under `[data.frames]` `max_frames`
    /// (16 when unset) evenly over the video.
    fn clip(&self) -> ClipSpec {
        match (&self.video, &self.frames) {
            (Some(v), _) => ClipSpec {
                frames: v.frames,
                fps: v.fps,
                timeout: std::time::Duration::try_from_secs_f64(v.timeout_s)
                    .unwrap_or(ClipSpec::default().timeout),
            },
            (None, Some(f)) => {
                ClipSpec { frames: f.max_frames.unwrap_or(16), ..ClipSpec::default() }
            }
            (None, None) => ClipSpec::default(),
        }
    }

    /// With `[data.video] audio_from_video`, every sample with a `video` and no `audio` gets the
    /// video file as its audio (decoded by FFmpeg, [`crate::audio::decode_audio`]).
    fn sound_from_video(&self, raw: Manifest) -> Result<Manifest> {
        if !self.video.as_ref().is_some_and(|v| v.audio_from_video) {
            return Ok(raw);
        }
        let mut out = Manifest::new(raw.root());
        out.set_source(raw.source());
        for s in raw.samples() {
            let mut s = s.clone();
            if s.audio.is_none() {
                s.audio = s.video.clone();
            }
            out.push(s)?;
        }
        Ok(out)
    }

    /// Keeps only the modalities in `keep` (the others are neither read nor decoded).
    pub fn retain(&mut self, keep: &[Modality]) {
        for m in Modality::ALL.into_iter().filter(|m| !keep.contains(m)) {
            match m {
                Modality::Image => self.image = None,
                Modality::Audio => self.audio = None,
                Modality::Text => self.text = None,
                Modality::Frames => {
                    self.frames = None;
                    self.video = None;
                }
                Modality::Features => self.features = None,
            }
        }
    }

    /// Reads the manifest, fills `classes` from its labels when empty, cleans it (when
    /// `clean`), builds the vocabulary from the training texts and fits the normalisation
    /// statistics on the training split.
    pub fn prepare(&mut self, seed: u64) -> Result<Prepared> {
        self.validate()?;
        self.apply_limits();
        if ShardIndex::is_index(&self.manifest) {
            return self.prepare_shards(seed);
        }
        let raw = Manifest::read(&self.manifest)?;
        if self.classes.is_empty() {
            let labels: BTreeSet<&str> = raw
                .samples()
                .iter()
                .flat_map(|s| s.label.iter().chain(&s.labels))
                .map(String::as_str)
                .collect();
            self.classes = labels.into_iter().map(str::to_string).collect();
        }
        let (manifest, report) = self.clean_manifest(raw)?;
        let mut pipeline = self.pipeline(seed, None)?;
        self.fit_vocabularies(&mut pipeline, &manifest)?;
        pipeline.fit_statistics(&manifest)?;
        Ok(Prepared { manifest, report, pipeline, shards: None })
    }

    /// [`DataConfig::prepare`] for tar shards: classes and vocabulary from every sample's
    /// manifest line, statistics from the files of the first [`SHARD_STATISTICS_SAMPLES`]
    /// training samples. Shards are not cleaned here: `mm data shard` wrote them from a manifest
    /// whose files it read, and a member that does not decode stops training with an error
    /// naming the shard and the member.
    fn prepare_shards(&mut self, seed: u64) -> Result<Prepared> {
        let index = ShardIndex::read(&self.manifest)?;
        let manifest = index.scan()?;
        if self.classes.is_empty() {
            let labels: BTreeSet<&str> = manifest
                .samples()
                .iter()
                .flat_map(|s| s.label.iter().chain(&s.labels))
                .map(String::as_str)
                .collect();
            self.classes = labels.into_iter().map(str::to_string).collect();
        }
        let mut pipeline = self.pipeline(seed, None)?;
        self.fit_vocabularies(&mut pipeline, &manifest)?;
        let mut subset = Manifest::new(index.root());
        let mut memory = crate::pipeline::Memory::new();
        'shards: for entry in index.shards(Split::Train) {
            let mut full = false;
            let result = crate::shards::read_samples(
                &index.path(entry),
                &entry.file,
                index.root(),
                &mut |sample, files| {
                    if subset.samples().len() >= SHARD_STATISTICS_SAMPLES {
                        full = true;
                        return Err(Error::Config(String::new()));
                    }
                    memory.extend(files);
                    subset.push(sample)
                },
            );
            match result {
                Err(_) if full => break 'shards,
                other => other?,
            }
        }
        pipeline.fit_statistics_in(&subset, Some(&memory))?;
        Ok(Prepared { manifest, report: None, pipeline, shards: Some(std::sync::Arc::new(index)) })
    }

    /// The word vocabularies from the training split's texts: the text input's, or the word
    /// transcripts' (`[data.transcript] unit = "words"`); character transcripts are checked.
    fn fit_vocabularies(&self, pipeline: &mut Pipeline, manifest: &Manifest) -> Result<()> {
        check_transcripts(pipeline, manifest)?;
        let texts = || manifest.split(Split::Train).filter_map(|s| s.text.as_deref());
        if let Some(TextEncoder::Words { tokenizer, vocab }) =
            pipeline.text.as_mut().map(|t| &mut t.encoder)
        {
            let t = self.text.as_ref().expect("text configured");
            let builder = VocabBuilder { min_freq: t.min_freq, max_size: t.max_vocab };
            *vocab = std::sync::Arc::new(builder.build(tokenizer, texts()));
        }
        if let Some(t) = self.transcript.as_ref().filter(|t| t.unit == Unit::Words) {
            let builder = VocabBuilder { min_freq: t.min_count, max_size: t.max_vocab };
            let vocab = builder.build(&WORDS, texts());
            if vocab.len() <= 2 {
                return Err(Error::Config(format!(
                    "data.transcript: no word is seen {} times or more in the training split's texts, so there is nothing to learn to say (lower min_count, or check the manifest's text)",
                    t.min_count
                )));
            }
            pipeline.transcript = Some(std::sync::Arc::new(Alphabet::words(vocab)));
        }
        Ok(())
    }

    /// The pipeline a run trained with, from the folder where it saved its vocabulary
    /// (`vocab.txt`) and statistics (`*_stats.json`). `classes` must be filled (a run's
    /// resolved configuration has them).
    pub fn restore(&self, seed: u64, saved: &Path) -> Result<Pipeline> {
        self.validate()?;
        self.apply_limits();
        let mut pipeline = self.pipeline(seed, Some(saved))?;
        pipeline.load_statistics(saved)?;
        Ok(pipeline)
    }

    /// The pipeline without fitted statistics; the word vocabulary from `saved` or empty.
    fn pipeline(&self, seed: u64, saved: Option<&Path>) -> Result<Pipeline> {
        let mut p = Pipeline::new(self.classes.clone());
        p.seed = seed;
        p.modality_dropout = self.modality_dropout;
        if let Some(c) = &self.image {
            p.image = Some(c.normalize.spec(c.size.hw(), &c.augment));
        }
        if let Some(c) = &self.audio {
            let mut spec = AudioSpec::new(&c.mel)
                .map_err(|e| Error::Config(format!("data.audio.mel: {e}")))?;
            spec.max_frames = c.max_frames;
            spec.augment = c.augment.clone();
            if c.front == AudioFront::Whisper {
                spec.whisper = Some(std::sync::Arc::new(crate::mel::WhisperMel::new(c.mel.n_mels)));
            }
            // Noise is for training: a pipeline restored for evaluation does without.
            if let (Some(b), None) = (&c.augment.background, saved) {
                spec.background =
                    Some(std::sync::Arc::new(NoiseBank::load(b, c.mel.sample_rate, seed)?));
            }
            p.audio = Some(spec);
        }
        if let Some(c) = &self.text {
            let encoder = match &c.tokenizer {
                Some(path) => {
                    TextEncoder::Subword(std::sync::Arc::new(SubwordTokenizer::from_file(path)?))
                }
                None => {
                    let vocab = match saved {
                        Some(dir) => Vocab::load(dir.join("vocab.txt"))?,
                        None => VocabBuilder::default()
                            .build(&WordTokenizer::default(), std::iter::empty()),
                    };
                    TextEncoder::Words {
                        tokenizer: WordTokenizer {
                            lowercase: c.lowercase,
                            punctuation: c.punctuation,
                        },
                        vocab: std::sync::Arc::new(vocab),
                    }
                }
            };
            p.text = Some(TextSpec { encoder, max_tokens: c.max_tokens, augment: c.augment });
        }
        if let Some(c) = &self.frames {
            let image = c.normalize.spec(c.size.hw(), &c.augment);
            p.frames = Some(FramesSpec { image, max_frames: c.max_frames, clip: self.clip() });
        }
        if let Some(c) = &self.video {
            let image = c.normalize.spec(c.size.hw(), &c.augment);
            p.frames = Some(FramesSpec { image, max_frames: Some(c.frames), clip: self.clip() });
        }
        if let Some(c) = &self.features {
            p.features = Some(FeatureSpec { dim: c.dim, normalizer: None });
        }
        if let Some(c) = &self.transcript {
            let alphabet = match (c.unit, saved) {
                (Unit::Chars, _) => Alphabet::new(&c.alphabet)
                    .map_err(|e| Error::Config(format!("data.transcript.alphabet: {e}")))?,
                (Unit::Words, Some(dir)) => {
                    Alphabet::words(Vocab::load(dir.join(TRANSCRIPT_VOCAB))?)
                }
                // Built from the training split by `prepare`.
                (Unit::Words, None) => Alphabet::words(VocabBuilder::default().build(&WORDS, [])),
            };
            p.transcript = Some(std::sync::Arc::new(alphabet));
        }
        Ok(p)
    }
}

/// Every transcript of `manifest` in the pipeline's alphabet, checked before training starts;
/// the error lists the samples that are not (the first ten), with the character and where.
fn check_transcripts(pipeline: &Pipeline, manifest: &Manifest) -> Result<()> {
    let Some(alphabet) = &pipeline.transcript else { return Ok(()) };
    let bad: Vec<String> = manifest
        .samples()
        .iter()
        .filter_map(|s| {
            s.text
                .as_deref()
                .and_then(|t| alphabet.encode(t).err())
                .map(|e| format!("sample {}: {e}", s.id))
        })
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let more =
        if bad.len() > 10 { format!("\n... and {} more", bad.len() - 10) } else { String::new() };
    Err(Error::Config(format!(
        "data.transcript.alphabet: {} transcripts hold characters outside the alphabet (add them to it, or fix the transcripts):\n{}{more}",
        bad.len(),
        bad.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    )))
}

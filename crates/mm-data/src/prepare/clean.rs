//! The cleaning pass: every sample of a manifest is checked (files decoded, audio measured,
//! text and features inspected, labels matched, duplicates found by content hash), each
//! problem is reported under a [`Reason`], and each reason has a [`Policy`]: drop the sample,
//! keep it, or fail the pass. Nothing is dropped silently: the [`CleanReport`] lists every
//! finding with its sample id, as JSON for programs and as a summary for people.
//!
//! ```no_run
//! use mm_data::clean::{clean, CleanConfig};
//! use mm_data::manifest::Manifest;
//!
//! let manifest = Manifest::read("data/manifest.jsonl")?;
//! let (kept, report) = clean(&manifest, &CleanConfig::default())?;
//! println!("{}", report.summary());
//! report.save("data/clean-report.json")?;
//! assert_eq!(kept.samples().len(), report.kept);
//! # Ok::<(), mm_data::Error>(())
//! ```
//!
//! The checks run in parallel (rayon); the report lists findings in manifest order whatever the
//! thread count.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;

use rayon::prelude::*;
use serde_json::{json, Value};

/// The modalities a configuration can require (re-exported: it lives in [`crate::modality`]).
pub use crate::modality::Modality;

use crate::audio::decode_audio_bytes;
use crate::error::{Error, Result};
use crate::fs::write_atomic;
use crate::image::decode_image_bytes;
use crate::manifest::{Manifest, Sample};

/// Why a sample was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// An image file is missing, unreadable, truncated or corrupt.
    BadImage,
    /// An audio file is missing, unreadable, truncated or corrupt (a zero-byte WAV included).
    BadAudio,
    /// A video frame file is missing, unreadable, truncated or corrupt.
    BadFrame,
    /// A video file is missing, not a video FFmpeg reads, has no video stream, is cut short,
    /// or has fewer frames than a clip asks for.
    BadVideo,
    /// Audio with no samples at all.
    EmptyAudio,
    /// Audio whose RMS level is below the silence threshold.
    SilentAudio,
    /// Audio shorter than the minimum duration.
    TooShort,
    /// Audio longer than the maximum duration.
    TooLong,
    /// Text that is empty or only whitespace.
    EmptyText,
    /// A NaN or infinite feature or target.
    NonFinite,
    /// A label outside the configured class set.
    UnknownLabel,
    /// A modality the configuration requires is absent.
    MissingModality,
    /// The same content (files and text) as an earlier sample.
    Duplicate,
}

impl Reason {
    /// Every reason, in report order.
    pub const ALL: [Reason; 13] = [
        Reason::BadImage,
        Reason::BadAudio,
        Reason::BadFrame,
        Reason::BadVideo,
        Reason::EmptyAudio,
        Reason::SilentAudio,
        Reason::TooShort,
        Reason::TooLong,
        Reason::EmptyText,
        Reason::NonFinite,
        Reason::UnknownLabel,
        Reason::MissingModality,
        Reason::Duplicate,
    ];

    /// The name used in reports and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadImage => "bad_image",
            Reason::BadAudio => "bad_audio",
            Reason::BadFrame => "bad_frame",
            Reason::BadVideo => "bad_video",
            Reason::EmptyAudio => "empty_audio",
            Reason::SilentAudio => "silent_audio",
            Reason::TooShort => "too_short",
            Reason::TooLong => "too_long",
            Reason::EmptyText => "empty_text",
            Reason::NonFinite => "non_finite",
            Reason::UnknownLabel => "unknown_label",
            Reason::MissingModality => "missing_modality",
            Reason::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the pass does with a sample reported for a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Leave the sample out of the cleaned data set (and report it).
    Drop,
    /// Keep the sample (and report it).
    Keep,
    /// Stop: the pass returns an error listing these samples.
    Fail,
}

impl Policy {
    fn as_str(self) -> &'static str {
        match self {
            Policy::Drop => "drop",
            Policy::Keep => "keep",
            Policy::Fail => "fail",
        }
    }
}

/// What the cleaning pass checks and what it does about each finding.
#[derive(Debug, Clone)]
pub struct CleanConfig {
    /// Policy per reason; a reason not listed uses [`CleanConfig::default_policy`].
    pub policies: HashMap<Reason, Policy>,
    /// Audio shorter than this many seconds is reported as [`Reason::TooShort`].
    pub min_duration: Option<f64>,
    /// Audio longer than this many seconds is reported as [`Reason::TooLong`].
    pub max_duration: Option<f64>,
    /// Audio with an RMS level below this is reported as [`Reason::SilentAudio`].
    pub silence_rms: f32,
    /// The class set; labels outside it are [`Reason::UnknownLabel`]. `None`: no check.
    pub classes: Option<Vec<String>>,
    /// Modalities every sample must have.
    pub required: Vec<Modality>,
    /// The clips taken from video files: each video must hold that many frames and decode
    /// from its start to its end.
    pub clip: crate::pipeline::ClipSpec,
}

impl Default for CleanConfig {
    fn default() -> Self {
        CleanConfig {
            policies: HashMap::new(),
            min_duration: None,
            max_duration: None,
            silence_rms: 1e-4,
            classes: None,
            required: Vec::new(),
            clip: crate::pipeline::ClipSpec::default(),
        }
    }
}

impl CleanConfig {
    /// The policy of a reason when none is configured: keep what a model can still use
    /// (silent audio, a missing modality: missing-modality training is part of the toolkit),
    /// drop the rest.
    pub fn default_policy(reason: Reason) -> Policy {
        match reason {
            Reason::SilentAudio | Reason::MissingModality => Policy::Keep,
            _ => Policy::Drop,
        }
    }

    /// The policy in force for a reason.
    pub fn policy(&self, reason: Reason) -> Policy {
        self.policies.get(&reason).copied().unwrap_or_else(|| Self::default_policy(reason))
    }
}

/// One reported problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The sample's id.
    pub id: String,
    /// Why.
    pub reason: Reason,
    /// Details: the decoder's message, the measured duration, the other sample's id...
    pub detail: String,
}

/// The outcome of a cleaning pass.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanReport {
    /// Samples checked.
    pub total: usize,
    /// Samples in the cleaned data set.
    pub kept: usize,
    /// Samples left out.
    pub dropped: usize,
    /// Every finding, in manifest order.
    pub findings: Vec<Finding>,
    /// The policy applied to each reason that has findings.
    pub policies: BTreeMap<Reason, Policy>,
}

impl CleanReport {
    /// Findings per reason.
    pub fn counts(&self) -> BTreeMap<Reason, usize> {
        let mut counts = BTreeMap::new();
        for f in &self.findings {
            *counts.entry(f.reason).or_default() += 1;
        }
        counts
    }

    /// The report as JSON: totals, then per reason its policy, count and samples.
    pub fn to_json(&self) -> Value {
        let mut reasons = serde_json::Map::new();
        for (reason, count) in self.counts() {
            let samples: Vec<Value> = self
                .findings
                .iter()
                .filter(|f| f.reason == reason)
                .map(|f| json!({ "id": f.id, "detail": f.detail }))
                .collect();
            reasons.insert(
                reason.as_str().to_string(),
                json!({ "policy": self.policies[&reason].as_str(), "count": count, "samples": samples }),
            );
        }
        json!({ "total": self.total, "kept": self.kept, "dropped": self.dropped, "reasons": reasons })
    }

    /// Writes [`CleanReport::to_json`] to a file, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), format!("{:#}\n", self.to_json()).as_bytes())
    }

    /// A few lines for people: totals, then one line per reason with a few sample ids.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} samples checked: {} kept, {} dropped\n",
            self.total, self.kept, self.dropped
        );
        for (reason, count) in self.counts() {
            let ids: Vec<&str> = self
                .findings
                .iter()
                .filter(|f| f.reason == reason)
                .take(5)
                .map(|f| f.id.as_str())
                .collect();
            let more = if count > ids.len() {
                format!(", ... ({} more)", count - ids.len())
            } else {
                String::new()
            };
            out.push_str(&format!(
                "  {:<16} {:>6}  {:<4}  {}{more}\n",
                reason.as_str(),
                count,
                self.policies[&reason].as_str(),
                ids.join(", ")
            ));
        }
        out
    }
}

/// What checking one sample found, plus its content hash.
struct Checked {
    findings: Vec<(Reason, String)>,
    hash: u64,
}

fn read(
    manifest: &Manifest,
    rel: &Path,
    kind: crate::fs::FileKind,
) -> std::result::Result<Vec<u8>, String> {
    crate::fs::read_capped(&manifest.path(rel), kind).map_err(|e| crate::error::report(&e))
}

fn check_sample(manifest: &Manifest, s: &Sample, config: &CleanConfig) -> Checked {
    let mut findings = Vec::new();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut hash_part = |tag: &str, bytes: &[u8]| {
        tag.hash(&mut hasher);
        bytes.hash(&mut hasher);
    };
    if let Some(rel) = &s.image {
        match read(manifest, rel, crate::fs::FileKind::Image) {
            Ok(bytes) => {
                if let Err(e) = decode_image_bytes(&bytes, &manifest.path(rel)) {
                    findings.push((Reason::BadImage, crate::error::report(&e)));
                }
                hash_part("image", &bytes);
            }
            Err(e) => findings.push((Reason::BadImage, e)),
        }
    }
    for rel in &s.frames {
        match read(manifest, rel, crate::fs::FileKind::Image) {
            Ok(bytes) => {
                if let Err(e) = decode_image_bytes(&bytes, &manifest.path(rel)) {
                    findings.push((Reason::BadFrame, crate::error::report(&e)));
                }
                hash_part("frame", &bytes);
            }
            Err(e) => findings.push((Reason::BadFrame, e)),
        }
    }
    if let Some(rel) = &s.video {
        match check_video(&manifest.path(rel), &config.clip) {
            Ok(fingerprint) => hash_part("video", &fingerprint),
            Err(e) => {
                hash_part("video", rel.as_os_str().as_encoded_bytes());
                findings.push((Reason::BadVideo, crate::error::report(&e)));
            }
        }
    }
    if let Some(rel) = s.audio.as_ref().filter(|r| crate::video::is_video_file(r)) {
        // A video's sound (`audio_from_video`), decoded by FFmpeg.
        match crate::audio::decode_audio(manifest.path(rel)) {
            Err(e) => findings.push((Reason::BadAudio, crate::error::report(&e))),
            Ok(a) => check_sound(&a, config, &mut findings),
        }
    } else if let Some(rel) = &s.audio {
        match read(manifest, rel, crate::fs::FileKind::Audio) {
            Ok(bytes) => {
                hash_part("audio", &bytes);
                match decode_audio_bytes(bytes, &manifest.path(rel)) {
                    Err(e) => findings.push((Reason::BadAudio, crate::error::report(&e))),
                    Ok(a) => check_sound(&a, config, &mut findings),
                }
            }
            Err(e) => findings.push((Reason::BadAudio, e)),
        }
    }
    if let Some(t) = &s.text {
        if t.trim().is_empty() {
            findings.push((Reason::EmptyText, format!("{t:?}")));
        }
        hash_part("text", t.as_bytes());
    }
    if let Some(i) = s.features.iter().position(|x| !x.is_finite()) {
        findings.push((Reason::NonFinite, format!("features[{i}] = {}", s.features[i])));
    }
    if let Some(t) = s.target.filter(|t| !t.is_finite()) {
        findings.push((Reason::NonFinite, format!("target = {t}")));
    }
    if !s.features.is_empty() {
        let bits: Vec<u8> = s.features.iter().flat_map(|x| x.to_le_bytes()).collect();
        hash_part("features", &bits);
    }
    if let Some(classes) = &config.classes {
        for label in s.label.iter().chain(&s.labels) {
            if !classes.contains(label) {
                findings.push((
                    Reason::UnknownLabel,
                    format!("{label:?} is not one of the {} classes", classes.len()),
                ));
            }
        }
    }
    let missing: Vec<&str> =
        config.required.iter().filter(|m| !m.in_sample(s)).map(|m| m.name()).collect();
    if !missing.is_empty() {
        findings.push((Reason::MissingModality, format!("no {}", missing.join(", "))));
    }
    Checked { findings, hash: hasher.finish() }
}

/// Empty, silent, too short or too long sound.
fn check_sound(
    a: &crate::audio::Audio,
    config: &CleanConfig,
    findings: &mut Vec<(Reason, String)>,
) {
    if a.samples.is_empty() {
        findings.push((Reason::EmptyAudio, "no samples".to_string()));
        return;
    }
    let d = a.duration();
    if config.min_duration.is_some_and(|m| d < m) {
        findings.push((Reason::TooShort, format!("{d:.3} s")));
    }
    if config.max_duration.is_some_and(|m| d > m) {
        findings.push((Reason::TooLong, format!("{d:.3} s")));
    }
    let rms = (a.samples.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>()
        / a.samples.len() as f64)
        .sqrt();
    if rms < f64::from(config.silence_rms) {
        findings.push((Reason::SilentAudio, format!("RMS {rms:.2e}")));
    }
}

/// Reads a video file as training will: its streams, frames evenly over it (small) and its
/// last frame, in one FFmpeg run; returns what stands for its content in the duplicate check (its length, and
/// its first and last MiB).
fn check_video(path: &Path, clip: &crate::pipeline::ClipSpec) -> Result<Vec<u8>> {
    use crate::video::{decode_clip, probe, Clip};
    let info = probe(path)?;
    if info.frames() < clip.frames {
        return Err(Error::decode(
            path,
            format!(
                "has {} frames ({:.2} s at {} fps), fewer than the {} a clip takes",
                info.frames(),
                info.duration,
                info.fps,
                clip.frames
            ),
        ));
    }
    // The evenly spaced frames and one more past the end, which takes the last frame: a file
    // cut short has none near there.
    let evenly = Clip::evenly(&info, clip.frames, (16, 16));
    decode_clip(path, &info, &Clip { count: clip.frames + 1, ..evenly }, clip.timeout)?;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut fingerprint = len.to_le_bytes().to_vec();
    use std::io::{Read, Seek, SeekFrom};
    let mut part = |from: SeekFrom| -> Result<()> {
        file.seek(from).map_err(|e| Error::io(path, e))?;
        (&mut file).take(1 << 20).read_to_end(&mut fingerprint).map_err(|e| Error::io(path, e))?;
        Ok(())
    };
    part(SeekFrom::Start(0))?;
    part(SeekFrom::Start(len.saturating_sub(1 << 20)))?;
    Ok(fingerprint)
}

/// Checks every sample; returns the cleaned data set and the report, or an error when a
/// reason whose policy is [`Policy::Fail`] has findings (the error lists them).
pub fn clean(manifest: &Manifest, config: &CleanConfig) -> Result<(Manifest, CleanReport)> {
    let checked: Vec<Checked> =
        manifest.samples().par_iter().map(|s| check_sample(manifest, s, config)).collect();
    let mut findings = Vec::new();
    let mut first_with_hash: HashMap<u64, &str> = HashMap::new();
    let mut kept = Manifest::new(manifest.root());
    for (s, c) in manifest.samples().iter().zip(&checked) {
        let mut mine: Vec<Finding> = c
            .findings
            .iter()
            .map(|(r, d)| Finding { id: s.id.clone(), reason: *r, detail: d.clone() })
            .collect();
        // Duplicates are judged only among samples with content to compare.
        let has_content = s.image.is_some()
            || s.audio.is_some()
            || s.text.is_some()
            || !s.frames.is_empty()
            || s.video.is_some()
            || !s.features.is_empty();
        if has_content {
            match first_with_hash.get(&c.hash) {
                Some(first) => mine.push(Finding {
                    id: s.id.clone(),
                    reason: Reason::Duplicate,
                    detail: format!("same content as {first}"),
                }),
                None => {
                    first_with_hash.insert(c.hash, &s.id);
                }
            }
        }
        if !mine.iter().any(|f| config.policy(f.reason) == Policy::Drop) {
            kept.push(s.clone())?;
        }
        findings.extend(mine);
    }
    let policies: BTreeMap<Reason, Policy> =
        findings.iter().map(|f| (f.reason, config.policy(f.reason))).collect();
    let failing: Vec<&Finding> =
        findings.iter().filter(|f| config.policy(f.reason) == Policy::Fail).collect();
    if !failing.is_empty() {
        let list: Vec<String> = failing
            .iter()
            .take(10)
            .map(|f| format!("{} ({}: {})", f.id, f.reason, f.detail))
            .collect();
        return Err(Error::decode(
            manifest.source(),
            format!("{} sample(s) fail the cleaning policy: {}", failing.len(), list.join("; ")),
        ));
    }
    let report = CleanReport {
        total: manifest.samples().len(),
        kept: kept.samples().len(),
        dropped: manifest.samples().len() - kept.samples().len(),
        findings,
        policies,
    };
    Ok((kept, report))
}

//! The data-set description: a JSONL manifest with one sample per line (or a CSV file with
//! the same fields as columns, see [`Manifest::parse_csv`]).
//!
//! ```text
//! {"id": "s1", "split": "train", "image": "img/s1.png", "audio": "wav/s1.wav", "text": "a red square", "label": "square"}
//! {"id": "s2", "split": "test", "frames": ["f/s2_0.png", "f/s2_1.png"], "features": [0.5, 1.25], "target": 0.8}
//! ```
//!
//! Fields (all optional except `id`):
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `id` | string or integer | unique sample id, used in every report |
//! | `split` | `"train"`, `"val"` (or `"validation"`), `"test"` | default `"train"` |
//! | `image` | path | an image file |
//! | `audio` | path | an audio file |
//! | `text` | string | the text itself |
//! | `frames` | array of paths | a video as a sequence of image files, in order |
//! | `video` | path | a video file (mp4, avi, webm, mkv, ...) read through FFmpeg ([`crate::video`]); a sample has `frames` or `video`, not both |
//! | `features` | array of numbers | numeric features (a tabular record) |
//! | `label` | string or integer | the class, for single-label classification |
//! | `labels` | array of strings or integers | the classes, for multi-label classification |
//! | `target` | number | a regression target |
//!
//! Paths are relative to the folder of the manifest (its *root*) and may not leave it: an
//! absolute path, or one whose `..` climbs above the root, is an error. An unknown field is an
//! error too (a misspelt `imgae` would otherwise silently drop a modality). Every error names
//! the file, the line and the field. Blank lines are skipped.
//!
//! The same manifest can be built in code and written out:
//!
//! ```
//! use mm_data::manifest::{Manifest, Sample, Split};
//!
//! let mut m = Manifest::new("/data/set");
//! m.push(Sample::new("a").with_image("img/a.png").with_label("cat"))?;
//! m.push(Sample::new("b").with_split(Split::Test).with_text("a dog").with_label("dog"))?;
//! assert_eq!(m.path(m.samples()[0].image.as_ref().unwrap()), std::path::Path::new("/data/set/img/a.png"));
//! assert!(m.push(Sample::new("a")).is_err()); // ids are unique
//! assert!(m.push(Sample::new("c").with_image("../elsewhere.png")).is_err()); // paths stay inside
//!
//! let text = m.to_jsonl();
//! let again = Manifest::parse_jsonl(&text, "/data/set/manifest.jsonl".as_ref(), "/data/set".as_ref())?;
//! assert_eq!(again.samples(), m.samples());
//! # Ok::<(), mm_data::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::fs::write_atomic;

/// The split a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Split {
    /// Training data; the only split statistics are computed from.
    #[default]
    Train,
    /// Validation data, for model selection and early stopping.
    Val,
    /// Held-out test data.
    Test,
}

impl Split {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// The split named `s` (`train`, `val` or `validation`, `test`).
    pub fn from_name(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "val" | "validation" => Some(Split::Val),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Split::from_name(s).ok_or_else(|| format!("unknown split `{s}` (train, val or test)"))
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sample: its id, split, modalities (paths relative to the manifest's root) and targets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    /// Unique id.
    pub id: String,
    /// Split.
    pub split: Split,
    /// Image file.
    pub image: Option<PathBuf>,
    /// Audio file.
    pub audio: Option<PathBuf>,
    /// Text.
    pub text: Option<String>,
    /// Video frames, in order (empty when the sample has none).
    pub frames: Vec<PathBuf>,
    /// A video file (the same modality as `frames`, decoded through FFmpeg).
    pub video: Option<PathBuf>,
    /// Numeric features (empty when the sample has none).
    pub features: Vec<f64>,
    /// Single class label.
    pub label: Option<String>,
    /// Multi-label classes (empty when the sample has none).
    pub labels: Vec<String>,
    /// Regression target.
    pub target: Option<f64>,
}

impl Sample {
    /// A training sample with this id and nothing else.
    pub fn new(id: impl Into<String>) -> Self {
        Sample { id: id.into(), ..Default::default() }
    }
    /// Sets the split.
    pub fn with_split(mut self, split: Split) -> Self {
        self.split = split;
        self
    }
    /// Sets the image path (relative to the root).
    pub fn with_image(mut self, path: impl Into<PathBuf>) -> Self {
        self.image = Some(path.into());
        self
    }
    /// Sets the audio path (relative to the root).
    pub fn with_audio(mut self, path: impl Into<PathBuf>) -> Self {
        self.audio = Some(path.into());
        self
    }
    /// Sets the text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }
    /// Sets the frame paths (relative to the root).
    pub fn with_frames<P: Into<PathBuf>>(mut self, frames: impl IntoIterator<Item = P>) -> Self {
        self.frames = frames.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the video file (relative to the root).
    pub fn with_video(mut self, path: impl Into<PathBuf>) -> Self {
        self.video = Some(path.into());
        self
    }
    /// Sets the numeric features.
    pub fn with_features(mut self, features: impl Into<Vec<f64>>) -> Self {
        self.features = features.into();
        self
    }
    /// Sets the class label.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
    /// Sets the multi-label classes.
    pub fn with_labels<S: Into<String>>(mut self, labels: impl IntoIterator<Item = S>) -> Self {
        self.labels = labels.into_iter().map(Into::into).collect();
        self
    }
    /// Sets the regression target.
    pub fn with_target(mut self, target: f64) -> Self {
        self.target = Some(target);
        self
    }
}

/// A data set: samples whose paths are relative to `root`.
#[derive(Debug, Clone)]
pub struct Manifest {
    root: PathBuf,
    source: PathBuf,
    samples: Vec<Sample>,
    /// Sample id to its index in `samples`.
    index: HashMap<String, usize>,
}

const FIELDS: &[&str] = &[
    "id", "split", "image", "audio", "text", "frames", "video", "features", "label", "labels",
    "target",
];

impl Manifest {
    /// An empty data set rooted at `root`, built in code.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Manifest {
            root: root.into(),
            source: PathBuf::from("<memory>"),
            samples: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Reads a JSONL manifest; its folder is the root of the paths in it.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = crate::fs::read_capped(path, crate::fs::FileKind::Text)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            Error::Parse { file: path.to_path_buf(), line, message: "not valid UTF-8".to_string() }
        })?;
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            Self::parse_csv(&text, path, &root)
        } else {
            Self::parse_jsonl(&text, path, &root)
        }
    }

    /// Parses CSV text: a header row naming the columns (the JSONL field names), then one
    /// sample per row. An empty cell leaves the field out; `frames`, `features` and `labels`
    /// hold `;`-separated items. Errors name the file, the line and the column.
    pub fn parse_csv(text: &str, source: &Path, root: &Path) -> Result<Self> {
        let err = |line: u64, message: String| Error::Parse {
            file: source.to_path_buf(),
            line: line as usize,
            message,
        };
        let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(text.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| err(1, format!("header row: {e}")))?
            .iter()
            .map(|h| h.trim().to_string())
            .collect();
        if let Some(unknown) = header.iter().find(|h| !FIELDS.contains(&h.as_str())) {
            return Err(err(
                1,
                format!("unknown column `{unknown}` (known: {})", FIELDS.join(", ")),
            ));
        }
        if !header.iter().any(|h| h == "id") {
            return Err(err(1, "no `id` column".to_string()));
        }
        let mut manifest = Manifest::new(root);
        manifest.source = source.to_path_buf();
        let mut line_of_sample: Vec<usize> = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                err(line, format!("not valid CSV: {e}"))
            })?;
            let line = record.position().map_or(0, |p| p.line());
            let obj = csv_row_to_object(&header, &record).map_err(|m| err(line, m))?;
            let sample = parse_object(&obj).map_err(|m| err(line, m))?;
            manifest
                .add_parsed(sample, line as usize, &mut line_of_sample)
                .map_err(|m| err(line, m))?;
        }
        Ok(manifest)
    }

    /// Parses JSONL text; `source` names it in errors, `root` anchors its paths.
    pub fn parse_jsonl(text: &str, source: &Path, root: &Path) -> Result<Self> {
        let mut manifest = Manifest::new(root);
        manifest.source = source.to_path_buf();
        // The line each sample came from, by sample index (blank lines are skipped).
        let mut line_of_sample: Vec<usize> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let err = |message: String| Error::Parse {
                file: source.to_path_buf(),
                line: line_no,
                message,
            };
            let sample = parse_line(line).map_err(err)?;
            manifest.add_parsed(sample, line_no, &mut line_of_sample).map_err(err)?;
        }
        Ok(manifest)
    }

    /// Adds a sample parsed from `line`, refusing a duplicate id; `line_of_sample` records the
    /// line of every sample so far, for the message.
    fn add_parsed(
        &mut self,
        sample: Sample,
        line: usize,
        line_of_sample: &mut Vec<usize>,
    ) -> std::result::Result<(), String> {
        if let Some(&first) = self.index.get(&sample.id) {
            let first = line_of_sample[first];
            return Err(format!(
                "field `id`: duplicate id {:?} (first on line {first})",
                sample.id
            ));
        }
        line_of_sample.push(line);
        self.index.insert(sample.id.clone(), self.samples.len());
        self.samples.push(sample);
        Ok(())
    }

    /// Adds a sample built in code, with the checks a manifest line gets.
    pub fn push(&mut self, mut sample: Sample) -> Result<()> {
        let err = |message: String| Error::Parse {
            file: self.source.clone(),
            line: self.samples.len() + 1,
            message,
        };
        if sample.id.is_empty() {
            return Err(err("field `id`: empty".to_string()));
        }
        if self.index.contains_key(&sample.id) {
            return Err(err(format!("field `id`: duplicate id {:?}", sample.id)));
        }
        let check = |field: &str, p: &Path| {
            let s = p.to_str().ok_or_else(|| err(format!("field `{field}`: path is not UTF-8")))?;
            relative_path(s).map_err(|m| err(format!("field `{field}`: {m}")))
        };
        if let Some(p) = &sample.image {
            sample.image = Some(check("image", p)?);
        }
        if let Some(p) = &sample.audio {
            sample.audio = Some(check("audio", p)?);
        }
        sample.frames = sample.frames.iter().map(|p| check("frames", p)).collect::<Result<_>>()?;
        if let Some(p) = &sample.video {
            if !sample.frames.is_empty() {
                return Err(err(
                    "fields `frames` and `video`: a sample has one or the other".into()
                ));
            }
            sample.video = Some(check("video", p)?);
        }
        self.index.insert(sample.id.clone(), self.samples.len());
        self.samples.push(sample);
        Ok(())
    }

    /// Names the file this manifest stands for (in error messages, and [`Manifest::source`]).
    pub(crate) fn set_source(&mut self, source: &Path) {
        self.source = source.to_path_buf();
    }

    /// The folder paths are relative to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file the manifest was read from (`<memory>` when built in code).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The samples, in manifest order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The sample with this id.
    pub fn get(&self, id: &str) -> Option<&Sample> {
        self.index.get(id).map(|&i| &self.samples[i])
    }

    /// The samples of one split, in manifest order.
    pub fn split(&self, split: Split) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.split == split)
    }

    /// The full path of a sample's relative path.
    pub fn path(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    /// The manifest as JSONL text, one sample per line, fields in a fixed order.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for s in &self.samples {
            let mut obj = Map::new();
            obj.insert("id".into(), Value::from(s.id.clone()));
            obj.insert("split".into(), Value::from(s.split.as_str()));
            let path = |p: &PathBuf| Value::from(p.to_string_lossy().into_owned());
            if let Some(p) = &s.image {
                obj.insert("image".into(), path(p));
            }
            if let Some(p) = &s.audio {
                obj.insert("audio".into(), path(p));
            }
            if let Some(t) = &s.text {
                obj.insert("text".into(), Value::from(t.clone()));
            }
            if !s.frames.is_empty() {
                obj.insert("frames".into(), Value::Array(s.frames.iter().map(path).collect()));
            }
            if let Some(p) = &s.video {
                obj.insert("video".into(), path(p));
            }
            if !s.features.is_empty() {
                obj.insert("features".into(), Value::from(s.features.clone()));
            }
            if let Some(l) = &s.label {
                obj.insert("label".into(), Value::from(l.clone()));
            }
            if !s.labels.is_empty() {
                obj.insert("labels".into(), Value::from(s.labels.clone()));
            }
            if let Some(t) = s.target {
                obj.insert("target".into(), Value::from(t));
            }
            out.push_str(&Value::Object(obj).to_string());
            out.push('\n');
        }
        out
    }

    /// A copy with every sample's split drawn again: `val` and `test` are the shares of the
    /// validation and test splits, the rest trains. The order comes from `seed` only, so the
    /// same seed gives the same splits. With `stratify`, each label keeps its share in every
    /// split (samples without a label form a group of their own).
    ///
    /// ```
    /// use mm_data::manifest::{Manifest, Sample, Split};
    ///
    /// let mut m = Manifest::new(".");
    /// for i in 0..100 {
    ///     m.push(Sample::new(format!("s{i}")).with_text("x").with_label(if i < 80 { "a" } else { "b" }))?;
    /// }
    /// let split = m.resplit(0.1, 0.2, 7, true)?;
    /// assert_eq!(split.split(Split::Test).count(), 20);
    /// assert_eq!(split.split(Split::Test).filter(|s| s.label.as_deref() == Some("b")).count(), 4);
    /// assert_eq!(split.samples(), m.resplit(0.1, 0.2, 7, true)?.samples());
    /// # Ok::<(), mm_data::Error>(())
    /// ```
    pub fn resplit(&self, val: f64, test: f64, seed: u64, stratify: bool) -> Result<Manifest> {
        if !(0.0..1.0).contains(&val) || !(0.0..1.0).contains(&test) || val + test >= 1.0 {
            return Err(Error::Config(format!(
                "split shares val {val} and test {test}: each in [0, 1), together below 1"
            )));
        }
        let mut groups: std::collections::BTreeMap<Option<&str>, Vec<usize>> =
            std::collections::BTreeMap::new();
        for (i, s) in self.samples.iter().enumerate() {
            groups.entry(if stratify { s.label.as_deref() } else { None }).or_default().push(i);
        }
        let mut splits = vec![Split::Train; self.samples.len()];
        let mut rng = crate::rng::Rng::new(seed);
        for members in groups.values_mut() {
            rng.shuffle(members);
            let n = members.len() as f64;
            let n_test = (n * test).round() as usize;
            let n_val = ((n * val).round() as usize).min(members.len() - n_test.min(members.len()));
            for (k, &i) in members.iter().enumerate() {
                splits[i] = if k < n_test {
                    Split::Test
                } else if k < n_test + n_val {
                    Split::Val
                } else {
                    Split::Train
                };
            }
        }
        let mut out = self.clone();
        for (s, split) in out.samples.iter_mut().zip(splits) {
            s.split = split;
        }
        Ok(out)
    }

    /// Writes the manifest as JSONL, atomically (a reader never sees half a file).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), self.to_jsonl().as_bytes())
    }
}

/// Parses one JSONL line into a sample; the error message names the field.
fn parse_line(line: &str) -> std::result::Result<Sample, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("expected a JSON object (one sample per line)".to_string());
    };
    parse_object(&obj)
}

/// Checks one sample's fields, however they were written (a JSONL line or a CSV row).
fn parse_object(obj: &Map<String, Value>) -> std::result::Result<Sample, String> {
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!("unknown field `{unknown}` (known fields: {})", FIELDS.join(", ")));
    }
    let field_err = |field: &str, m: &str| format!("field `{field}`: {m}");
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(field_err("id", "empty")),
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(other) => {
            return Err(field_err(
                "id",
                &format!("expected a string or an integer, found {}", kind(other)),
            ))
        }
        None => return Err("missing field `id`".to_string()),
    };
    let mut sample = Sample::new(id);
    if let Some(v) = obj.get("split") {
        let s = v
            .as_str()
            .ok_or_else(|| field_err("split", &format!("expected a string, found {}", kind(v))))?;
        sample.split = Split::from_name(s)
            .ok_or_else(|| field_err("split", &format!("{s:?} is not one of train, val, test")))?;
    }
    let path_field = |field: &str, v: &Value| -> std::result::Result<PathBuf, String> {
        let s = v.as_str().ok_or_else(|| {
            field_err(field, &format!("expected a path string, found {}", kind(v)))
        })?;
        relative_path(s).map_err(|m| field_err(field, &m))
    };
    if let Some(v) = obj.get("image") {
        sample.image = Some(path_field("image", v)?);
    }
    if let Some(v) = obj.get("audio") {
        sample.audio = Some(path_field("audio", v)?);
    }
    if let Some(v) = obj.get("text") {
        let s = v
            .as_str()
            .ok_or_else(|| field_err("text", &format!("expected a string, found {}", kind(v))))?;
        sample.text = Some(s.to_string());
    }
    if let Some(v) = obj.get("frames") {
        let items = v.as_array().ok_or_else(|| {
            field_err("frames", &format!("expected an array of paths, found {}", kind(v)))
        })?;
        if items.is_empty() {
            return Err(field_err(
                "frames",
                "empty array (leave the field out when there are no frames)",
            ));
        }
        sample.frames =
            items.iter().map(|p| path_field("frames", p)).collect::<std::result::Result<_, _>>()?;
    }
    if let Some(v) = obj.get("video") {
        if !sample.frames.is_empty() {
            return Err(field_err("video", "a sample has `frames` or `video`, not both"));
        }
        sample.video = Some(path_field("video", v)?);
    }
    if let Some(v) = obj.get("features") {
        let items = v.as_array().ok_or_else(|| {
            field_err("features", &format!("expected an array of numbers, found {}", kind(v)))
        })?;
        sample.features = items
            .iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_f64().ok_or_else(|| {
                    field_err("features", &format!("item {i} is {}, not a number", kind(x)))
                })
            })
            .collect::<std::result::Result<_, _>>()?;
    }
    let class = |field: &str, v: &Value| match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        other => Err(field_err(
            field,
            &format!("expected a non-empty string or an integer, found {}", kind(other)),
        )),
    };
    if let Some(v) = obj.get("label") {
        sample.label = Some(class("label", v)?);
    }
    if let Some(v) = obj.get("labels") {
        let items = v
            .as_array()
            .ok_or_else(|| field_err("labels", &format!("expected an array, found {}", kind(v))))?;
        sample.labels =
            items.iter().map(|x| class("labels", x)).collect::<std::result::Result<_, _>>()?;
    }
    if let Some(v) = obj.get("target") {
        sample.target = Some(v.as_f64().ok_or_else(|| {
            field_err("target", &format!("expected a number, found {}", kind(v)))
        })?);
    }
    Ok(sample)
}

/// A CSV row as the JSON object a JSONL line would hold, cells typed by their column.
fn csv_row_to_object(
    header: &[String],
    record: &csv::StringRecord,
) -> std::result::Result<Map<String, Value>, String> {
    let mut obj = Map::new();
    for (column, cell) in header.iter().zip(record.iter()) {
        let cell = cell.trim();
        if cell.is_empty() {
            continue;
        }
        let items = || cell.split(';').map(str::trim).filter(|p| !p.is_empty());
        let number = |item: &str, what: &str| {
            item.parse::<f64>()
                .map(Value::from)
                .map_err(|_| format!("column `{column}`: {what} {item:?} is not a number"))
        };
        let value = match column.as_str() {
            "frames" | "labels" => Value::Array(items().map(Value::from).collect()),
            "features" => Value::Array(
                items().map(|x| number(x, "item")).collect::<std::result::Result<_, _>>()?,
            ),
            "target" => number(cell, "value")?,
            _ => Value::from(cell),
        };
        obj.insert(column.clone(), value);
    }
    Ok(obj)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks that a manifest path stays inside the root and returns it normalised
/// (`./a/../b.png` becomes `b.png`). Purely lexical: links are the reader's concern.
pub fn relative_path(s: &str) -> std::result::Result<PathBuf, String> {
    if s.is_empty() {
        return Err("empty path".to_string());
    }
    if s.contains('\0') {
        return Err("path contains a NUL byte".to_string());
    }
    let path = Path::new(s);
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(format!("{s:?} leaves the data folder (too many `..`)"));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{s:?} is absolute; paths are relative to the manifest's folder"
                ));
            }
        }
    }
    if parts.is_empty() {
        return Err(format!("{s:?} names the data folder itself, not a file"));
    }
    Ok(parts.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse_jsonl(text, Path::new("m.jsonl"), Path::new("/root"))
    }

    fn message(text: &str) -> String {
        parse(text).expect_err("should fail").to_string()
    }

    #[test]
    fn reads_every_field() {
        let m = parse(concat!(
            r#"{"id":"a","split":"train","image":"i/a.png","audio":"./w/a.wav","text":"hi","label":"x"}"#, "\n",
            "\n",
            r#"{"id":7,"split":"validation","frames":["f/0.png","f/1.png"],"features":[1,2.5],"labels":["p",3],"target":-0.5}"#, "\n",
        ))
        .expect("valid");
        let s = m.samples();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].audio.as_deref(), Some(Path::new("w/a.wav")));
        assert_eq!(s[0].label.as_deref(), Some("x"));
        assert_eq!(s[1].id, "7");
        assert_eq!(s[1].split, Split::Val);
        assert_eq!(s[1].frames, vec![PathBuf::from("f/0.png"), PathBuf::from("f/1.png")]);
        assert_eq!(s[1].features, vec![1.0, 2.5]);
        assert_eq!(s[1].labels, vec!["p".to_string(), "3".to_string()]);
        assert_eq!(s[1].target, Some(-0.5));
        assert_eq!(m.get("7").map(|s| s.split), Some(Split::Val));
        assert_eq!(m.split(Split::Train).count(), 1);
        assert_eq!(m.path(s[0].image.as_ref().expect("image")), Path::new("/root/i/a.png"));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let two = "{\"id\":\"a\"}\n{\"id\":\"b\",\"imgae\":\"x.png\"}\n";
        let m = message(two);
        assert!(m.starts_with("m.jsonl:2: unknown field `imgae`"), "{m}");
        assert_eq!(message(r#"{"split":"train"}"#), "m.jsonl:1: missing field `id`");
        assert!(
            message(r#"{"id":"a","split":"dev"}"#).contains("field `split`: \"dev\" is not one of")
        );
        assert!(message(r#"{"id":"a","features":[1,"x"]}"#)
            .contains("field `features`: item 1 is a string"));
        assert!(
            message(r#"{"id":"a","target":"high"}"#).contains("field `target`: expected a number")
        );
        assert!(message(r#"{"id":"a","frames":[]}"#).contains("field `frames`: empty array"));
        assert!(message(r#"{"id":"a""#).contains("m.jsonl:1: not valid JSON"));
        assert!(message("[1,2]").contains("expected a JSON object"));
        assert!(message(r#"{"id":""}"#).contains("field `id`: empty"));
        let dup = message("{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"a\"}\n");
        assert_eq!(dup, "m.jsonl:3: field `id`: duplicate id \"a\" (first on line 1)");
    }

    #[test]
    fn paths_cannot_leave_the_root() {
        assert!(message(r#"{"id":"a","image":"../x.png"}"#)
            .contains("field `image`: \"../x.png\" leaves the data folder"));
        assert!(message(r#"{"id":"a","audio":"/etc/passwd"}"#)
            .contains("field `audio`: \"/etc/passwd\" is absolute"));
        assert!(
            message(r#"{"id":"a","frames":["ok.png","a/../../x.png"]}"#).contains("field `frames`")
        );
        assert!(message(r#"{"id":"a","image":"."}"#).contains("names the data folder itself"));
        assert_eq!(relative_path("a/./b/../c.png"), Ok(PathBuf::from("a/c.png")));
    }

    #[test]
    fn built_in_code_round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("mm-data-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut m = Manifest::new(&dir);
        m.push(
            Sample::new("a")
                .with_image("i/a.png")
                .with_features(vec![1.5, f64::from(f32::MAX)])
                .with_target(2.0),
        )
        .expect("valid");
        m.push(
            Sample::new("b")
                .with_split(Split::Test)
                .with_frames(["f/0.png"])
                .with_labels(["x", "y"])
                .with_text("é \"q\""),
        )
        .expect("valid");
        let file = dir.join("manifest.jsonl");
        m.write(&file).expect("write");
        let back = Manifest::read(&file).expect("read");
        assert_eq!(back.samples(), m.samples());
        assert_eq!(back.root(), dir.as_path());
        assert!(m.push(Sample::new("c").with_audio("/abs.wav")).is_err());
        assert!(m.push(Sample::new("")).is_err());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn csv_manifests_read_like_jsonl() {
        let csv = "id,split,image,text,frames,features,label,labels,target\n\
                   a,train,i/a.png,\"a cat, sitting\",,1.5;2,cat,,0.25\n\
                   b,test,,,f/0.png;f/1.png,,,x;y,\n";
        let m = Manifest::parse_csv(csv, Path::new("m.csv"), Path::new("/r")).expect("valid");
        let jsonl = concat!(
            r#"{"id":"a","split":"train","image":"i/a.png","text":"a cat, sitting","features":[1.5,2],"label":"cat","target":0.25}"#,
            "\n",
            r#"{"id":"b","split":"test","frames":["f/0.png","f/1.png"],"labels":["x","y"]}"#,
            "\n",
        );
        let j = Manifest::parse_jsonl(jsonl, Path::new("m.jsonl"), Path::new("/r")).expect("valid");
        assert_eq!(m.samples(), j.samples());
        let msg = |text: &str| {
            Manifest::parse_csv(text, Path::new("m.csv"), Path::new("/r"))
                .expect_err("bad")
                .to_string()
        };
        assert!(msg("id,imgae\na,x.png\n").starts_with("m.csv:1: unknown column `imgae`"));
        assert!(msg("image\nx.png\n").contains("no `id` column"));
        assert_eq!(
            msg("id,features\na,1\nb,1;zz\n"),
            "m.csv:3: column `features`: item \"zz\" is not a number"
        );
        assert!(msg("id,image\na,../x.png\n").starts_with("m.csv:2: field `image`"));
        assert!(msg("id,image\na,x.png,extra\n").starts_with("m.csv:2: not valid CSV"));
        assert!(
            msg("id\na\na\n").contains("m.csv:3: field `id`: duplicate id \"a\" (first on line 2)")
        );
    }

    #[test]
    fn non_utf8_manifest_names_the_line() {
        let dir =
            std::env::temp_dir().join(format!("mm-data-manifest-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("bad.jsonl");
        std::fs::write(&file, b"{\"id\":\"a\"}\n{\"id\":\"\xff\"}\n").expect("write");
        let e = Manifest::read(&file).expect_err("not UTF-8").to_string();
        assert!(e.ends_with("bad.jsonl:2: not valid UTF-8"), "{e}");
        let missing = Manifest::read(dir.join("nope.jsonl")).expect_err("missing").to_string();
        assert!(missing.contains("nope.jsonl"), "{missing}");
        std::fs::remove_dir_all(dir).ok();
    }
}

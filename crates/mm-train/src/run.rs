//! A whole run in one TOML file: `[data]` (the manifest and how each modality is read,
//! [`DataConfig`]), `[model]` ([`ModelConfig`]) and `[train]` ([`TrainConfig`]). This is what
//! `mm train --config FILE.toml` reads; library users get the same from [`RunConfig::from_file`]
//! and [`train`].
//!
//! The file is validated before anything runs: a syntax error, an unknown key or a value of the
//! wrong type is reported with the file, line, column and dotted key
//! (`run.toml:12:1: key \`train.epoch\`: unknown field ...`), and combinations that cannot work
//! (an encoder for a modality the data does not read, a retrieval head with a fusion, an image
//! encoder on audio) with the key at fault. `--set key=value` overrides are applied on top of
//! the file (`--set train.epochs=3`), values in TOML syntax, bare words taken as strings.
//!
//! A run's folder holds `run.toml` (the resolved configuration, every default and the class
//! list filled in, the manifest path absolute), `clean-report.json`, `data/` (vocabulary,
//! statistics, class counts), `checkpoints/`, `metrics.jsonl` and `curves.svg`; [`Run::open`]
//! rebuilds the trained model from it for evaluation and prediction.
//!
//! ```
//! use mm_train::run::RunConfig;
//!
//! let text = r#"
//! [data]
//! manifest = "data/synth/manifest.jsonl"
//! [data.image]
//! size = 32
//! [model.encoders.image]
//! kind = "image"
//! arch = "lenet"
//! [model.fusion]
//! method = "concat"
//! [model.head]
//! type = "classification"
//! "#;
//! let config = RunConfig::parse(text, "run.toml".as_ref(), &["train.epochs=3".to_string()])?;
//! assert_eq!(config.train.epochs, 3);
//!
//! let err = RunConfig::parse(&text.replace("size = 32", "size = \"big\""), "run.toml".as_ref(), &[]).unwrap_err();
//! assert!(err.to_string().contains("run.toml:5:8: key `data.image.size`"), "{err}");
//! # Ok::<(), mm_train::Error>(())
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mm_data::clean::CleanReport;
use mm_data::config::DataConfig;
use mm_data::loader::{Batch, Loader, LoaderConfig, Shard};
use mm_data::manifest::{Manifest, Split};
use mm_data::pipeline::Pipeline;
use mm_data::shards::ShardIndex;
use mm_data::Modality;
use mm_encoders::EncoderConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint::{self, TrainState};
use crate::dist::ProcessGroup;
use crate::model::{DataShape, Model, ModelConfig, Output};
use crate::precision::Autocast;
use crate::train::{checkpoint_dir, evaluate_in, fit_in, fit_with, Report, TrainConfig};
use crate::{Error, Result};

/// The resolved configuration's file name in a run's folder.
pub const RUN_FILE: &str = "run.toml";

/// A run: data, model and training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The data set and pipeline.
    pub data: DataConfig,
    /// The model.
    pub model: ModelConfig,
    /// Training (every field has a default).
    #[serde(default)]
    pub train: TrainConfig,
}

/// `:line:column` of the start of `span` in `text`.
fn locate(text: &str, span: Option<Range<usize>>) -> String {
    match span {
        Some(s) if text.is_char_boundary(s.start) => {
            let before = &text[..s.start];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(":{line}:{column}")
        }
        _ => String::new(),
    }
}

/// A configuration error: the dotted key (empty for a syntax error), the `:line:column` in the
/// text, and what is wrong (naming the key).
struct Located {
    path: String,
    at: String,
    message: String,
}

/// Deserialises `text`; an error says where and which key.
fn deserialize<T: serde::de::DeserializeOwned>(text: &str) -> std::result::Result<T, Located> {
    let de = toml::Deserializer::parse(text).map_err(|e| Located {
        path: String::new(),
        at: locate(text, e.span()),
        message: e.message().trim().to_string(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let key =
            if path.is_empty() || path == "." { String::new() } else { format!(" key `{path}`:") };
        Located {
            at: locate(text, inner.span()),
            message: format!("{key} {}", inner.message().trim()).trim_start().to_string(),
            path,
        }
    })
}

/// A value refused by [`RunConfig::validate`], whose message starts with its dotted key
/// (`train.lr = 0: ...`), located: `FILE:LINE: message`, or `FILE with --set KEY=VALUE:
/// message` when an override set it.
fn locate_invalid(e: Error, text: &str, source: &Path, overrides: &[String]) -> Error {
    let Error::Config(message) = e else { return e };
    let key: String = message
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        .collect();
    let name = source.display();
    let related = |k: &str| {
        k == key || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
    };
    if !key.is_empty() {
        if let Some(o) = overrides
            .iter()
            .rev()
            .find(|o| o.split_once('=').is_some_and(|(k, _)| related(k.trim())))
        {
            return Error::Config(format!("{name} with --set {o}: {message}"));
        }
    }
    match key_line(text, &key) {
        Some(line) => Error::Config(format!("{name}:{line}: {message}")),
        None => Error::Config(format!("{name}: {message}")),
    }
}

/// The line of `text` that sets the dotted `key`, or else the nearest enclosing table or inline
/// table that holds it (TOML written by hand: `[table]` headers and `key = value` lines).
fn key_line(text: &str, key: &str) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    let mut table = String::new();
    let mut best: Option<(usize, usize)> = None; // (matched length, line)
    let mut consider = |full: &str, line: usize| {
        let exact = full == key;
        if exact || key.starts_with(&format!("{full}.")) {
            let len = if exact { usize::MAX } else { full.len() };
            if best.is_none_or(|(l, _)| len > l) {
                best = Some((len, line));
            }
        }
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        // A table header (`[a.b]`, `[[a.b]]`, perhaps with a comment after it); a line of a
        // nested array (`[0.08, 1.0],`) is not one.
        let header = line.split('#').next().unwrap_or_default().trim();
        if header.starts_with('[')
            && header.ends_with(']')
            && header.trim_start_matches('[').starts_with(|c: char| c.is_alphabetic() || c == '"')
        {
            table = header.trim_matches(|c| c == '[' || c == ']').trim().replace([' ', '"'], "");
            consider(&table, i + 1);
            continue;
        }
        if let Some((k, _)) = line.split_once('=') {
            let k = k.trim().replace([' ', '"'], "");
            let full = if table.is_empty() { k } else { format!("{table}.{k}") };
            consider(&full, i + 1);
        }
    }
    best.map(|(_, line)| line)
}

/// Sets `key` (dotted) to `value` in `table`.
fn set(table: &mut toml::Table, item: &str) -> Result<()> {
    let bad = |why: String| Error::Config(format!("--set {item}: {why}"));
    let (key, value) = item.split_once('=').ok_or_else(|| bad("expected KEY=VALUE".into()))?;
    let keys: Vec<&str> = key.trim().split('.').map(str::trim).collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(bad("a dotted key such as train.epochs".into()));
    }
    let value = value.trim();
    let parsed =
        toml::from_str::<toml::Table>(&format!("v = {value}")).ok().and_then(|mut t| t.remove("v"));
    let value = parsed.unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut at = table;
    for (i, k) in keys[..keys.len() - 1].iter().enumerate() {
        let entry =
            at.entry(k.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry
            .as_table_mut()
            .ok_or_else(|| bad(format!("`{}` is not a table", keys[..=i].join("."))))?;
    }
    at.insert(keys[keys.len() - 1].to_string(), value);
    Ok(())
}

/// Parses TOML `text` into `T` with `overrides` (`key=value`) applied on top; errors name
/// `source`, the line, the column and the dotted key, or the override at fault.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    source: &Path,
    overrides: &[String],
) -> Result<T> {
    let name = source.display().to_string();
    let in_file = |e: Located| Error::Config(format!("{name}{}: {}", e.at, e.message));
    if overrides.is_empty() {
        return deserialize(text).map_err(in_file);
    }
    let mut table: toml::Table = deserialize(text).map_err(in_file)?;
    for item in overrides {
        set(&mut table, item)?;
    }
    let merged = toml::to_string(&table).map_err(|e| Error::Config(format!("--set: {e}")))?;
    match deserialize::<T>(&merged) {
        Ok(c) => Ok(c),
        // When the file itself is wrong at that key, say where in the file; else the override
        // is at fault.
        Err(e) => Err(match deserialize::<T>(text) {
            Err(f) if f.path == e.path => in_file(f),
            _ => Error::Config(format!(
                "{name} with --set {}: {}",
                overrides.join(" --set "),
                e.message
            )),
        }),
    }
}

impl RunConfig {
    /// Reads and validates a run's TOML file, with `overrides` (`key=value`) applied on top.
    pub fn from_file(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = mm_data::fs::read_text_capped(path, mm_data::fs::FileKind::Text)?;
        Self::parse(&text, path, overrides)
    }

    /// Parses and validates a run's TOML text; errors name `source`.
    pub fn parse(text: &str, source: &Path, overrides: &[String]) -> Result<Self> {
        let config: RunConfig = parse_toml(text, source, overrides)?;
        config.validate().map_err(|e| locate_invalid(e, text, source, overrides))?;
        Ok(config)
    }

    /// Checks the combinations that cannot work, before any data is read.
    pub fn validate(&self) -> Result<()> {
        self.data
            .validate()
            .map_err(|e| Error::Config(e.to_string().replace("invalid configuration: ", "")))?;
        let bad = |m: String| Err(Error::Config(m));
        let modalities = self.data.modalities();
        for (name, enc) in self.model.modalities()? {
            if !modalities.contains(&name) {
                return bad(format!("model.encoders.{name}: the data reads no {name}; add [data.{name}] or remove the encoder (the data reads {modalities:?})"));
            }
            let kind = enc.kind();
            if enc.modality() != name {
                return bad(format!("model.encoders.{name}: kind = \"{kind}\" cannot read {name}; use kind = \"{}\"", EncoderConfig::default_kind(name)));
            }
            if matches!(enc, EncoderConfig::Bert(_) | EncoderConfig::ClipText(_))
                && self.data.text.as_ref().is_none_or(|t| t.tokenizer.is_none())
            {
                return bad(format!(
                    "model.encoders.{name}: kind = \"{kind}\" reads the ids of the model's own tokenizer: set [data.text] tokenizer = \"<model folder>/tokenizer.json\""
                ));
            }
        }
        for m in &modalities {
            if !self.model.encoders.contains_key(m.name()) {
                return bad(format!(
                    "data.{m}: no encoder reads it; add [model.encoders.{m}] or remove [data.{m}]"
                ));
            }
        }
        // How encoders, fusion and heads fit together: the model's own rules (one place), then
        // the encoders' and the fusion's own numbers, by building them once with stand-in sizes.
        let heads = self.model.check()?;
        self.model.check_build(&self.data)?;
        for (name, head) in &heads {
            let field = if heads.len() == 1 {
                "model.head".to_string()
            } else {
                format!("model.heads.{name}")
            };
            head.check_data(&self.data, &field)?;
        }
        self.train.check()
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Config(format!("writing the configuration: {e}")))
    }
}

/// What [`train`] did.
#[derive(Debug)]
pub struct Trained {
    /// The loop's report.
    pub report: Report,
    /// The cleaning report, when the data was cleaned.
    pub clean: Option<CleanReport>,
    /// The resolved configuration (as written to `run.toml`).
    pub config: RunConfig,
    /// Number of parameters.
    pub parameters: i64,
    /// The manifest it trained on, after cleaning.
    pub manifest: Arc<Manifest>,
}

/// Class counts of the training split, in `classes` order.
fn class_counts(manifest: &Manifest, classes: &[String]) -> Vec<usize> {
    let mut counts = vec![0; classes.len()];
    for s in manifest.split(Split::Train) {
        for l in s.label.iter().chain(&s.labels) {
            if let Some(i) = classes.iter().position(|c| c == l) {
                counts[i] += 1;
            }
        }
    }
    counts
}

/// What the data must give before a run may train: when a head predicts classes (`classified`),
/// every class some training samples (a label seen only in validation or test would be a class
/// the model can never learn); and every modality an encoder reads present in some training
/// sample.
fn check_training_data(
    manifest: &Manifest,
    data: &DataConfig,
    counts: &[usize],
    classified: bool,
) -> Result<()> {
    let train: Vec<&mm_data::manifest::Sample> = manifest.split(Split::Train).collect();
    if train.is_empty() {
        return Err(Error::Config(format!(
            "{}: no training sample (after cleaning); a run needs samples with \"split\": \"train\"",
            data.manifest.display()
        )));
    }
    let unlearnable: Vec<String> = data
        .classes
        .iter()
        .filter(|_| classified)
        .zip(counts)
        .filter(|(_, n)| **n == 0)
        .map(|(class, _)| {
            let ids: Vec<&str> = manifest
                .samples()
                .iter()
                .filter(|s| s.label.as_ref() == Some(class) || s.labels.contains(class))
                .map(|s| s.id.as_str())
                .take(3)
                .collect();
            if ids.is_empty() {
                format!("{class:?} (listed in data.classes; no sample has it)")
            } else {
                format!("{class:?} (samples {})", ids.join(", "))
            }
        })
        .collect();
    if !unlearnable.is_empty() {
        return Err(Error::Config(format!(
            "{}: {} class(es) have no training sample, so the model could never predict them: {}; add training samples of them, or list data.classes without them (their samples are then dropped as unknown labels)",
            data.manifest.display(),
            unlearnable.len(),
            unlearnable.join("; ")
        )));
    }
    for m in data.modalities() {
        if !train.iter().any(|s| m.in_sample(s)) {
            return Err(Error::Config(format!(
                "data.{m}: no training sample of {} has {m} (after cleaning), so its encoder would learn nothing; remove [data.{m}] and its encoder, or give the samples {m}",
                data.manifest.display()
            )));
        }
    }
    Ok(())
}

/// The SHA-256 of the cleaned manifest's lines (`sha256:HEX`): what a resume must find again.
fn manifest_digest(manifest: &Manifest) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(manifest.to_jsonl().as_bytes());
    format!("sha256:{}", hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    mm_data::fs::write_atomic(path, bytes).map_err(Error::from)
}

/// Prepares the data, builds the model and trains it into `out`. A folder that already holds
/// a run is refused unless `resume`, and a run is resumed only with the data and model it was
/// started with.
pub fn train(config: &RunConfig, out: &Path, device: Device, resume: bool) -> Result<Trained> {
    train_in(config, out, device, resume, None)
}

/// [`train`] as one rank of a data-parallel job (see [`crate::train::fit_in`]). Every rank
/// reads and cleans the data itself; the pipeline's statistics are rank 0's (fitted in
/// parallel, they could differ in the last bits between processes), and only rank 0 writes
/// the run folder.
pub fn train_in(
    config: &RunConfig,
    out: &Path,
    device: Device,
    resume: bool,
    group: Option<&ProcessGroup>,
) -> Result<Trained> {
    config.validate()?;
    let main = group.is_none_or(ProcessGroup::is_main);
    // Only rank 0 writes the folder, so only it holds the lock (until this function returns).
    let _lock = if main { Some(crate::train::claim(out)?) } else { None };
    let saved = out.join(RUN_FILE);
    // A folder holds a run once an epoch has been checkpointed; a run that failed before that
    // (say, a model that does not fit the data) may simply be started again.
    let started = checkpoint::exists(&checkpoint_dir(out), "last");
    if started && !resume && main {
        return Err(Error::Config(format!(
            "{} already holds a run; pass --resume to continue it, or choose another output folder",
            out.display()
        )));
    }
    let mut config = config.clone();
    config.data.manifest =
        std::path::absolute(&config.data.manifest).unwrap_or(config.data.manifest.clone());
    let prepared = config.data.prepare(config.train.seed).map_err(Error::from)?;
    if started && saved.is_file() {
        let before = RunConfig::from_file(&saved, &[])?;
        if before.data != config.data || before.model != config.model {
            return Err(Error::Config(format!(
                "{} was started with other data or another model (see its {RUN_FILE}); a run resumes only with the same ones",
                out.display()
            )));
        }
    }
    let counts = class_counts(&prepared.manifest, &config.data.classes);
    let classified = config.model.named_heads()?.iter().any(|(_, h)| h.reads_classes());
    check_training_data(&prepared.manifest, &config.data, &counts, classified)?;
    let digest = manifest_digest(&prepared.manifest);
    let digest_file = out.join("data/manifest.sha256");
    if started && main {
        if let Ok(before) = std::fs::read_to_string(&digest_file) {
            if before.trim() != digest {
                return Err(Error::Config(format!(
                    "{}: the data changed since this run started (its manifest, after cleaning, was {}; it is now {digest}); a run resumes only on the same samples: start a new run in another folder",
                    out.display(),
                    before.trim()
                )));
            }
        }
    }
    let mut pipeline = prepared.pipeline;
    if let Some(group) = group.filter(|g| g.world_size() > 1) {
        crate::dist::share_statistics(group, &mut pipeline)?;
    }
    let pipeline = Arc::new(pipeline);
    let vs = nn::VarStore::new(device);
    tch::manual_seed(config.train.seed as i64);
    let model = Model::new(
        &vs.root(),
        &config.model,
        &DataShape::from_pipeline(&pipeline, counts.clone()),
    )?;
    if main {
        std::fs::create_dir_all(out.join("data")).map_err(|e| Error::file(out, e))?;
        write(&saved, config.to_toml()?.as_bytes())?;
        write(&digest_file, format!("{digest}\n").as_bytes())?;
        if let Some(report) = &prepared.report {
            report.save(out.join("clean-report.json")).map_err(Error::from)?;
        }
        write(
            &out.join("data/classes.json"),
            serde_json::to_string_pretty(
                &json!({"classes": config.data.classes, "train_counts": counts}),
            )
            .unwrap_or_default()
            .as_bytes(),
        )?;
    }
    let parameters = vs.trainable_variables().iter().map(tch::Tensor::numel).sum::<usize>() as i64;
    let manifest = Arc::new(prepared.manifest);
    let report = match &prepared.shards {
        None => {
            fit_in(&model, &vs, Arc::clone(&manifest), pipeline, &config.train, out, resume, group)?
        }
        Some(index) => {
            // Streamed from the shards, each rank its own.
            let shard = group
                .filter(|g| g.world_size() > 1)
                .map_or(Shard::WHOLE, |g| Shard { rank: g.rank(), world: g.world_size() });
            let t = &config.train;
            let loader = |split, config: LoaderConfig| {
                Loader::from_shards(
                    Arc::clone(index),
                    split,
                    Arc::clone(&pipeline),
                    LoaderConfig { batch_size: t.batch_size.max(1), shard, ..config },
                )
            };
            let train =
                loader(Split::Train, LoaderConfig::training(t.seed)).map_err(Error::from)?;
            let val = loader(Split::Val, LoaderConfig::evaluation()).map_err(Error::from)?;
            fit_with(&model, &vs, &train, &val, &pipeline, t, out, resume, group)?
        }
    };
    Ok(Trained { report, clean: prepared.report, config, parameters, manifest })
}

/// A trained run, rebuilt from its folder.
#[derive(Debug)]
pub struct Run {
    /// The folder.
    pub dir: PathBuf,
    /// Its resolved configuration.
    pub config: RunConfig,
    /// The pipeline it trained with (same vocabulary and statistics).
    pub pipeline: Arc<Pipeline>,
    /// The model, with the checkpoint's weights.
    pub model: Model,
    /// The model's variables.
    pub vs: nn::VarStore,
    /// The training state saved with the weights.
    pub state: TrainState,
}

impl Run {
    /// Rebuilds the run in `dir` with the weights of its `best` checkpoint, or of `checkpoint`
    /// (a checkpoint record `NAME.json`, which must come from a model of the same shape).
    pub fn open(dir: &Path, checkpoint: Option<&Path>, device: Device) -> Result<Run> {
        let file = dir.join(RUN_FILE);
        if !file.is_file() {
            let why = if dir.is_dir() {
                format!("it has no {RUN_FILE}; `mm train --out` writes one")
            } else {
                "no such folder; `mm train --out` makes one".to_string()
            };
            return Err(Error::NotARun { path: dir.to_path_buf(), why });
        }
        let ckpts = checkpoint_dir(dir);
        if checkpoint.is_none() && !checkpoint::exists(&ckpts, "best") {
            if checkpoint::exists(&ckpts, "last") {
                return Err(Error::Checkpoint(format!(
                    "{}: no best checkpoint (no epoch gave a finite validation metric, or there is no validation split); use the last one with --checkpoint {}",
                    dir.display(),
                    ckpts.join("last.json").display()
                )));
            }
            let why = "it holds no checkpoint: its training never finished an epoch".to_string();
            return Err(Error::NotARun { path: dir.to_path_buf(), why });
        }
        // The configuration as the run was trained: read, not judged again by checks added
        // since (the model is built from it below, which checks what it needs).
        let text = mm_data::fs::read_text_capped(&file, mm_data::fs::FileKind::Text)?;
        let config: RunConfig = parse_toml(&text, &file, &[])?;
        let data = dir.join("data");
        let pipeline = config.data.restore(config.train.seed, &data).map_err(Error::from)?;
        let counts: Vec<usize> =
            mm_data::fs::read_capped(&data.join("classes.json"), mm_data::fs::FileKind::Text)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| serde_json::from_value(v["train_counts"].clone()).ok())
                .unwrap_or_default();
        let vs = nn::VarStore::new(device);
        let model =
            Model::new(&vs.root(), &config.model, &DataShape::from_pipeline(&pipeline, counts))?;
        let (ckpt_dir, tag) = match checkpoint {
            None => (checkpoint_dir(dir), "best".to_string()),
            Some(p) => {
                let tag = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")).ok_or_else(|| {
                    Error::Checkpoint(format!("{}: a checkpoint record (best.json or last.json in a run's checkpoints folder)", p.display()))
                })?;
                (p.parent().unwrap_or(Path::new(".")).to_path_buf(), tag.to_string())
            }
        };
        if !checkpoint::exists(&ckpt_dir, &tag) {
            return Err(Error::Checkpoint(format!(
                "{}: no checkpoint `{tag}` (has the run finished an epoch?)",
                ckpt_dir.display()
            )));
        }
        let state = checkpoint::load_weights(&ckpt_dir, &tag, &vs).map_err(|e| match e {
            Error::Encoder(mm_encoders::Error::Weights { path, problems }) => {
                Error::Checkpoint(summarise_mismatch(&path, &problems, dir))
            }
            e => e,
        })?;
        Ok(Run { dir: dir.to_path_buf(), config, pipeline: Arc::new(pipeline), model, vs, state })
    }

    /// The run's manifest, read and cleaned as in training (with the cleaning report, when
    /// it cleaned); or another manifest (same modalities and classes), cleaned the same way.
    pub fn manifest(&self, other: Option<&Path>) -> Result<(Manifest, Option<CleanReport>)> {
        let data = &self.config.data;
        data.read_manifest(other.unwrap_or(&data.manifest)).map_err(Error::from)
    }

    /// A loader over `split` of `manifest`, without augmentation; streamed from the shards
    /// when `manifest` is a shard index's scan ([`mm_data::shards::ShardIndex::scan`]).
    pub fn loader(
        &self,
        manifest: Arc<Manifest>,
        split: Split,
        batch_size: usize,
    ) -> Result<Loader> {
        let config = LoaderConfig { batch_size, ..LoaderConfig::evaluation() };
        let loader = if ShardIndex::is_index(manifest.source()) {
            let index = ShardIndex::read(manifest.source()).map_err(Error::from)?;
            Loader::from_shards(Arc::new(index), split, Arc::clone(&self.pipeline), config)
        } else {
            Loader::new(manifest, split, Arc::clone(&self.pipeline), config)
        };
        loader.map_err(Error::from)
    }

    /// The metrics of the model on `split` of `manifest`.
    pub fn evaluate(&self, manifest: Arc<Manifest>, split: Split) -> Result<Map<String, Value>> {
        let loader = self.loader(manifest, split, self.config.train.batch_size)?;
        if loader.samples() == 0 {
            return Err(Error::Data(format!("the {} split is empty", split.as_str())));
        }
        evaluate_in(&self.model, &loader, self.vs.device(), self.config.train.precision)
    }

    /// One JSON object per sample of `split`: its id, and per head the prediction (the class
    /// and the probabilities; for multi-label heads the classes at probability 0.5 or more; or
    /// the value) beside the truth where the manifest has it, and the fusion's per-modality
    /// weights where the fusion has them.
    pub fn predict(&self, manifest: Arc<Manifest>, split: Split) -> Result<Vec<Value>> {
        let loader = self.loader(manifest, split, self.config.train.batch_size)?;
        let mut rows = Vec::new();
        for batch in loader.epoch(0) {
            rows.extend(self.predict_batch(batch.map_err(Error::from)?)?);
        }
        Ok(rows)
    }

    /// [`Run::predict`] of one collated batch (on any device: it is moved to the model's), one
    /// JSON object per sample in batch order. A model server calls this on the batches it
    /// gathers from concurrent requests.
    pub fn predict_batch(&self, batch: Batch) -> Result<Vec<Value>> {
        let batch = batch.to_device(self.vs.device());
        let out = self.forward_batch(&batch)?;
        self.prediction_rows(&out, &batch)
    }

    /// The model's output on a batch already on its device, without gradients, at the run's
    /// precision; a failure inside libtorch is an error naming the step.
    pub fn forward_batch(&self, batch: &Batch) -> Result<Output> {
        let device = self.vs.device();
        let _no_grad = tch::no_grad_guard();
        let precision = self.config.train.precision;
        let _autocast = Autocast::scope(precision, device);
        crate::guard::step("prediction", precision, device, || {
            Ok(self.model.forward_t(batch, false))
        })
    }

    /// The text a caption run writes for each of `samples` (each one or more files, one per
    /// modality, told apart by extension: [`Modality::of_file`]), with `beam` beams or the
    /// run's setting. A modality the run reads but a sample lacks is absent from it, as in
    /// training with missing modalities. Each sample's result is its text, or the error naming
    /// its file; a run whose head writes no text is refused.
    pub fn caption(
        &self,
        samples: &[Vec<PathBuf>],
        beam: Option<usize>,
    ) -> Result<Vec<Result<String>>> {
        let heads = self.model.heads();
        let (Some(head), [(_, config)]) = (self.model.head_modules().next(), heads.as_slice())
        else {
            return Err(Error::Config(format!("{}: not a caption run", self.dir.display())));
        };
        if config.caption_options().is_none() {
            return Err(Error::Config(format!(
                "{}: not a caption run (its head is `{}`)",
                self.dir.display(),
                config.kind()
            )));
        }
        let mut pipeline = (*self.pipeline).clone();
        pipeline.transcript = None;
        let reads = self.pipeline.modalities();
        let mut results: Vec<Result<String>> = Vec::with_capacity(samples.len());
        // A batch's samples are decoded, described and dropped before the next batch's.
        for chunk in samples.chunks(self.config.train.batch_size.max(1)) {
            let mut items = Vec::with_capacity(chunk.len());
            for files in chunk {
                match self.caption_item(&pipeline, files, &reads) {
                    Ok(item) => {
                        items.push((results.len(), item));
                        results.push(Ok(String::new()));
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            if items.is_empty() {
                continue;
            }
            let batch: Vec<_> = items.iter().map(|(_, item)| item.clone()).collect();
            let batch = mm_data::loader::collate(&batch, &pipeline).to_device(self.vs.device());
            let output = self.forward_batch(&batch)?;
            let texts = head.write_text(&output, beam).ok_or_else(|| {
                Error::Config(format!(
                    "{}: not a caption run (its head writes no text)",
                    self.dir.display()
                ))
            })?;
            for ((i, _), text) in items.iter().zip(texts) {
                results[*i] = Ok(text);
            }
        }
        Ok(results)
    }

    /// One sample of `files` through `pipeline` (see [`Run::caption`]).
    fn caption_item(
        &self,
        pipeline: &Pipeline,
        files: &[PathBuf],
        reads: &[Modality],
    ) -> Result<mm_data::pipeline::Item> {
        let id = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join("+");
        let mut sample = mm_data::manifest::Sample::new(id.clone());
        for file in files {
            let absolute = std::path::absolute(file).map_err(|e| Error::file(file, e))?;
            let modality = Modality::of_file(file).ok_or_else(|| {
                Error::Data(format!(
                    "{}: not an image, audio or video file by its extension",
                    file.display()
                ))
            })?;
            let modality = match modality {
                // A video gives its sound to a run that reads audio and no frames.
                Modality::Frames
                    if !reads.contains(&Modality::Frames) && reads.contains(&Modality::Audio) =>
                {
                    Modality::Audio
                }
                m => m,
            };
            if !reads.contains(&modality) {
                return Err(Error::Data(format!(
                    "{}: a {modality} file, but the run reads {reads:?}",
                    file.display()
                )));
            }
            if modality.in_sample(&sample) {
                return Err(Error::Data(format!("{id}: two {modality} files in one sample")));
            }
            // The files may be in different folders: the manifest's folder is the root.
            let rel = absolute.strip_prefix("/").map(Path::to_path_buf).unwrap_or(absolute);
            sample = match modality {
                Modality::Image => sample.with_image(rel),
                Modality::Audio => sample.with_audio(rel),
                _ => sample.with_video(rel),
            };
        }
        let mut manifest = Manifest::new("/");
        manifest.push(sample).map_err(Error::from)?;
        pipeline.load(&manifest, 0, 0, false).map_err(Error::from)
    }

    /// [`Run::predict_batch`]'s rows from the model's output on `batch`.
    pub fn prediction_rows(&self, out: &Output, batch: &Batch) -> Result<Vec<Value>> {
        let names: Vec<&str> = self.model.heads().into_iter().map(|(n, _)| n).collect();
        let modalities: Vec<&String> = self.model.config().encoders.keys().collect();
        // Each head's object per sample (a retrieval head refuses: it predicts no labels).
        let mut per_head = Vec::new();
        for (i, head) in self.model.head_modules().enumerate() {
            per_head.push(head.predict(out, i, batch)?.into_iter());
        }
        let weights: Option<Vec<f32>> = out.weights.as_ref().map(|w| {
            Vec::try_from(w.to_device(Device::Cpu).to_kind(Kind::Float).view([-1]))
                .unwrap_or_default()
        });
        let b = batch.ids.len();
        let mut rows = Vec::with_capacity(b);
        for (j, id) in batch.ids.iter().enumerate() {
            let mut row = Map::new();
            row.insert("id".into(), json!(id));
            for (name, objects) in names.iter().zip(per_head.iter_mut()) {
                let h = objects.next().unwrap_or_default();
                if names.len() == 1 {
                    row.extend(h);
                } else {
                    row.insert(name.to_string(), Value::Object(h));
                }
            }
            if let Some(w) = &weights {
                let per = w.len() / b.max(1);
                let mine = &w[j * per..(j + 1) * per];
                row.insert(
                    "modality_weights".into(),
                    if per == modalities.len() {
                        Value::Object(
                            modalities
                                .iter()
                                .zip(mine)
                                .map(|(m, v)| ((*m).clone(), json!(v)))
                                .collect(),
                        )
                    } else {
                        json!(mine)
                    },
                );
            }
            rows.push(Value::Object(row));
        }
        Ok(rows)
    }

    /// A retrieval model's embeddings of one side of its pair (`side` 0 or 1, whose modality
    /// is `modality`) for every sample of `split` that has it: `(ids, [N, D])` on the CPU, rows
    /// L2-normalised as the model trained them. The gallery `mm retrieve` and `mm serve` search.
    pub fn embed_split(
        &self,
        manifest: Arc<Manifest>,
        split: Split,
        side: usize,
        modality: Modality,
    ) -> Result<(Vec<String>, Tensor)> {
        let loader = self.loader(manifest, split, 128)?;
        let (mut ids, mut parts) = (Vec::new(), Vec::new());
        for batch in loader.epoch(0) {
            let batch = batch.map_err(Error::from)?.to_device(self.vs.device());
            let out = self.forward_batch(&batch)?;
            let (rows, emb) = Self::side_rows(&out, &batch, side, modality)?;
            parts.push(emb);
            ids.extend(rows.iter().map(|r| batch.ids[*r].clone()));
        }
        if ids.is_empty() {
            return Err(Error::Data(format!(
                "no sample of the {split} split has {modality}: the gallery is empty"
            )));
        }
        Ok((ids, Tensor::cat(&parts, 0)))
    }

    /// The rows of `batch` that have `modality`, and their embeddings on `side` of a retrieval
    /// model's output (`[rows, D]`, on the CPU, as f32).
    pub fn side_rows(
        out: &Output,
        batch: &Batch,
        side: usize,
        modality: Modality,
    ) -> Result<(Vec<usize>, Tensor)> {
        let (a, b, _) = out
            .embeddings
            .as_ref()
            .ok_or_else(|| Error::Config("not a retrieval model: it embeds nothing".into()))?;
        let column = batch
            .modalities
            .iter()
            .position(|m| *m == modality)
            .ok_or_else(|| Error::Config(format!("the model reads no {modality}")))?;
        let present: Vec<f32> = Vec::try_from(
            batch.present.select(1, column as i64).to_device(Device::Cpu).to_kind(Kind::Float),
        )
        .map_err(|e| Error::Data(format!("the presence mask: {e}")))?;
        let rows: Vec<usize> =
            present.iter().enumerate().filter(|(_, p)| **p > 0.5).map(|(i, _)| i).collect();
        let emb = if side == 0 { a } else { b };
        let index: Vec<i64> = rows.iter().map(|r| *r as i64).collect();
        let picked = emb
            .index_select(0, &Tensor::from_slice(&index).to_device(emb.device()))
            .to_device(Device::Cpu)
            .to_kind(Kind::Float);
        Ok((rows, picked))
    }

    /// Writes one encoder's weights (its `encoders.MODALITY.` variables, without that prefix and
    /// without mm's own projection `proj.*`) to a safetensors file, atomically: the names are
    /// the architecture's own (torchvision's for ResNet and VGG, transformers' for BERT), so
    /// the file loads as `weights = FILE` in another run, or into the reference library.
    /// Returns the number of tensors written.
    pub fn export_encoder(&self, modality: &str, path: &Path) -> Result<usize> {
        if !self.config.model.encoders.contains_key(modality) {
            let known: Vec<&String> = self.config.model.encoders.keys().collect();
            return Err(Error::Config(format!(
                "the run has no {modality} encoder (it has {known:?})"
            )));
        }
        let prefix = format!("encoders.{modality}.");
        let named: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(&prefix)
                    .filter(|k| !k.starts_with("proj."))
                    .map(|k| (k.to_string(), v))
            })
            .collect();
        let n = named.len();
        mm_encoders::weights::save_named(path, named).map_err(Error::from)?;
        Ok(n)
    }

    /// Parameters per top-level module (`encoders.image`, `fusion`, `head`), and in all.
    pub fn parameters(&self) -> (BTreeMap<String, i64>, i64) {
        let mut per = BTreeMap::new();
        let mut total = 0;
        for (name, t) in self.vs.variables() {
            let parts: Vec<&str> = name.split('.').collect();
            let module = if parts.len() > 2 && (parts[0] == "encoders" || parts[0] == "heads") {
                parts[..2].join(".")
            } else {
                parts[0].to_string()
            };
            let n = t.numel() as i64;
            *per.entry(module).or_insert(0) += n;
            total += n;
        }
        (per, total)
    }
}

/// A weights mismatch lists every variable; one line says what it means.
fn summarise_mismatch(file: &Path, problems: &[String], dir: &Path) -> String {
    let example = problems.first().map_or("", |p| p.trim());
    format!(
        "{} does not fit the model of {} ({} variables differ, e.g. {example}): the checkpoint comes from another model",
        file.display(),
        dir.display(),
        problems.len()
    )
}

#[cfg(test)]
mod tests {
    use super::key_line;

    #[test]
    fn keys_are_found_at_their_line_or_their_nearest_table() {
        let text = "[data]  # where\nmanifest = \"m.jsonl\"\n[data.image]\naugment = { crop = [\n  [0.08, 1.0],\n  [0.75, 1.33]] }\nsize = 32\n[model.heads.age-group]\ntype = \"classification\"\ndropout = 2.0\n[train]\nlr = 0.1\n";
        assert_eq!(key_line(text, "data.manifest"), Some(2));
        // The continuation of a nested array is not a table header.
        assert_eq!(key_line(text, "data.image.size"), Some(7));
        // An inline table's inner key: the line of the table.
        assert_eq!(key_line(text, "data.image.augment.crop"), Some(4));
        assert_eq!(key_line(text, "model.heads.age-group.dropout"), Some(10));
        assert_eq!(key_line(text, "train"), Some(11));
        // A key the file leaves to its default: its table.
        assert_eq!(key_line(text, "train.epochs"), Some(11));
        assert_eq!(key_line(text, "nothing.here"), None);
    }
}

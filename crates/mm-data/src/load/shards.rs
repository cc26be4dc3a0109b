//! WebDataset-style tar shards, for data sets larger than one disk is comfortable with or read
//! from network storage: the convention open_clip, img2dataset and webdataset use, so those
//! tools read the shards written here (mm reads shards that carry its `.json` member).
//!
//! A shard is a plain tar file (`000000.tar`, `000001.tar`, ...) whose members are grouped by
//! key, one file per modality: `000000123.json` (the sample's manifest line: id, split, label,
//! targets, features, text, and the member names of its files), `000000123.png` (image),
//! `000000123.wav` (audio), `000000123.txt` (text), `000000123.frame0004.png` (video frames).
//! The key is the part of a member's name before its first dot, as in webdataset. A data set's
//! shards live under one folder per split (`train/`, `val/`, `test/`) beside `shards.json`, the
//! index: how many samples each shard holds, which lets every rank of a data-parallel job work
//! out its share without reading a byte of data.
//!
//! - [`write_shards`] writes them from a manifest (`mm data shard`), samples shuffled within each
//!   split (seeded), shards cut at a sample count or a size, the whole folder written atomically
//!   (the index is written last, inside a staging folder renamed into place);
//! - [`ShardIndex`] reads the index; [`read_samples`] streams one shard's samples (one sample's
//!   files in memory at a time), with errors naming the shard and the member;
//! - [`crate::loader::Loader::from_shards`] streams batches from them: shards assigned to ranks
//!   and to reader threads, a shuffle buffer, decoding in parallel.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mm_data::loader::{Loader, LoaderConfig, Shard};
//! use mm_data::manifest::{Manifest, Split};
//! use mm_data::pipeline::{ImageSpec, Pipeline};
//! use mm_data::shards::{write_shards, ShardIndex, ShardOptions};
//!
//! let manifest = Manifest::read("data/synth/manifest.jsonl")?;
//! write_shards(&manifest, "data/synth-shards".as_ref(), &ShardOptions { max_samples: 500, ..ShardOptions::default() })?;
//! let index = Arc::new(ShardIndex::read("data/synth-shards/shards.json")?);
//! let mut pipeline = Pipeline::new(vec!["curved-low".into(), "curved-high".into(), "straight-low".into(), "straight-high".into()]);
//! pipeline.image = Some(ImageSpec::new((32, 32)));
//! // Rank 1 of 4: its own shards of every epoch.
//! let config = LoaderConfig { batch_size: 32, shard: Shard { rank: 1, world: 4 }, ..LoaderConfig::training(0) };
//! let loader = Loader::from_shards(index, Split::Train, Arc::new(pipeline), config)?;
//! for batch in loader.epoch(0) {
//!     println!("{} samples", batch?.len());
//! }
//! # Ok::<(), mm_data::error::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fs::FileKind;
use crate::manifest::{Manifest, Sample, Split};
use crate::pipeline::Memory;
use crate::rng::Rng;

/// The index file of a folder of shards.
pub const INDEX_FILE: &str = "shards.json";
/// The format tag of [`INDEX_FILE`].
pub const FORMAT: &str = "mm-shards/1";

/// One shard of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The tar file, relative to the index's folder (`train/000000.tar`).
    pub file: String,
    /// Samples in it.
    pub samples: usize,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A folder of shards, as its `shards.json` describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// [`FORMAT`].
    pub format: String,
    /// The manifest the shards were written from.
    pub source: String,
    /// The shards of each split (`train`, `val`, `test`), in order.
    pub splits: BTreeMap<String, Vec<ShardEntry>>,
    #[serde(skip)]
    root: PathBuf,
}

impl ShardIndex {
    /// Reads `path` (a `shards.json`, or the folder holding one).
    pub fn read(path: impl AsRef<Path>) -> Result<ShardIndex> {
        let path = path.as_ref();
        let path = if path.is_dir() { path.join(INDEX_FILE) } else { path.to_path_buf() };
        let text = crate::fs::read_text_capped(&path, crate::fs::FileKind::Text)?;
        let mut index: ShardIndex = serde_json::from_str(&text).map_err(|e| Error::Parse {
            file: path.clone(),
            line: e.line(),
            message: e.to_string(),
        })?;
        if index.format != FORMAT {
            return Err(Error::Parse {
                file: path.clone(),
                line: 1,
                message: format!("format {:?}, expected {FORMAT:?}", index.format),
            });
        }
        for entry in index.splits.values().flatten() {
            crate::manifest::relative_path(&entry.file).map_err(|m| Error::Parse {
                file: path.clone(),
                line: 1,
                message: format!("shard {:?}: {m}", entry.file),
            })?;
        }
        index.root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(index)
    }

    /// Whether `path` names a shard index (a file called [`INDEX_FILE`]) rather than a manifest.
    pub fn is_index(path: &Path) -> bool {
        path.file_name().is_some_and(|n| n == INDEX_FILE)
    }

    /// The folder the shards' paths are relative to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The shards of `split` (none when the split has none).
    pub fn shards(&self, split: Split) -> &[ShardEntry] {
        self.splits.get(split.as_str()).map_or(&[], Vec::as_slice)
    }

    /// Samples in `split`.
    pub fn samples(&self, split: Split) -> usize {
        self.shards(split).iter().map(|s| s.samples).sum()
    }

    /// The path of a shard.
    pub fn path(&self, entry: &ShardEntry) -> PathBuf {
        self.root.join(&entry.file)
    }

    /// Every sample's manifest line (no modality file is decoded), from every shard, as one
    /// manifest rooted at the index's folder: a sample's file paths are `SHARD/MEMBER`
    /// (`train/000000.tar/000000123.png`), the keys under which [`read_samples`] puts their
    /// bytes. For class lists and vocabularies. Its [`Manifest::source`] is the index file.
    pub fn scan(&self) -> Result<Manifest> {
        let mut manifest = Manifest::new(&self.root);
        manifest.set_source(&self.root.join(INDEX_FILE));
        for entry in self.splits.values().flatten() {
            for_each_sample(&self.path(entry), &entry.file, false, &mut |sample, _| {
                manifest.push(sample)
            })?;
        }
        Ok(manifest)
    }
}

/// How [`write_shards`] cuts shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOptions {
    /// At most this many samples per shard (default 1000).
    pub max_samples: usize,
    /// A shard is closed once it holds this many bytes (default 1 GiB).
    pub max_bytes: u64,
    /// Seed of the order of the samples within each split.
    pub seed: u64,
    /// Replace an earlier folder of shards (one holding a `shards.json`).
    pub force: bool,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions { max_samples: 1000, max_bytes: 1 << 30, seed: 0, force: false }
    }
}

/// A member name's extension: the file's own, lower-case, or `bin`.
fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "bin".into())
}

fn append(
    builder: &mut tar::Builder<BufWriter<File>>,
    name: &str,
    bytes: &[u8],
    shard: &Path,
) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, name, bytes).map_err(|e| Error::io(shard, e))
}

/// Writes the samples of `manifest` as shards under `out` (one folder per split, and
/// `shards.json`), atomically. A sample whose file cannot be read stops the writing with an
/// error naming it (clean the manifest first: `mm data check`); nothing is left out silently.
pub fn write_shards(manifest: &Manifest, out: &Path, options: &ShardOptions) -> Result<ShardIndex> {
    if options.max_samples == 0 || options.max_bytes == 0 {
        return Err(Error::Config("shards: max_samples and max_bytes must be positive".into()));
    }
    if let Some(s) = manifest.samples().iter().find(|s| s.video.is_some()) {
        // FFmpeg seeks in a video file; from a tar stream it could not.
        return Err(Error::Sample {
            id: s.id.clone(),
            source: Box::new(Error::Config(
                "a `video` file is not packed into shards: FFmpeg decodes videos from files; train from the manifest (or list the video's frames as `frames`)".into(),
            )),
        });
    }
    crate::fs::write_dir_atomic(out, INDEX_FILE, options.force, |staging| {
        let mut splits = BTreeMap::new();
        let mut number = 0usize;
        for split in [Split::Train, Split::Val, Split::Test] {
            let mut samples: Vec<&Sample> = manifest.split(split).collect();
            if samples.is_empty() {
                continue;
            }
            Rng::for_sample(options.seed, 0, u64::MAX, split as u64).shuffle(&mut samples);
            std::fs::create_dir_all(staging.join(split.as_str()))
                .map_err(|e| Error::io(staging, e))?;
            let mut entries: Vec<ShardEntry> = Vec::new();
            let mut current: Option<(tar::Builder<BufWriter<File>>, PathBuf, usize, u64)> = None;
            for sample in samples {
                if current
                    .as_ref()
                    .is_some_and(|c| c.2 >= options.max_samples || c.3 >= options.max_bytes)
                {
                    entries.push(finish(current.take().expect("open shard"))?);
                }
                if current.is_none() {
                    let file = format!("{}/{:06}.tar", split.as_str(), entries.len());
                    let path = staging.join(&file);
                    let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
                    current =
                        Some((tar::Builder::new(BufWriter::new(f)), PathBuf::from(file), 0, 0));
                }
                let (builder, file, count, bytes) = current.as_mut().expect("open shard");
                let shard = staging.join(&*file);
                let key = format!("{number:09}");
                number += 1;
                let mut record = sample.clone();
                let mut members: Vec<(String, Vec<u8>)> = Vec::new();
                let mut take = |rel: &Path, name: String, kind| -> Result<PathBuf> {
                    let path = manifest.path(rel);
                    let data = crate::fs::read_capped(&path, kind).map_err(|e| Error::Sample {
                        id: sample.id.clone(),
                        source: Box::new(e),
                    })?;
                    members.push((name.clone(), data));
                    Ok(PathBuf::from(name))
                };
                let image_ext = sample.image.as_deref().map(extension);
                if let Some(rel) = &sample.image {
                    record.image =
                        Some(take(rel, format!("{key}.{}", extension(rel)), FileKind::Image)?);
                }
                if let Some(rel) = &sample.audio {
                    let ext = extension(rel);
                    let name = if image_ext.as_deref() == Some(ext.as_str()) {
                        format!("{key}.audio.{ext}")
                    } else {
                        format!("{key}.{ext}")
                    };
                    record.audio = Some(take(rel, name, FileKind::Audio)?);
                }
                record.frames = sample
                    .frames
                    .iter()
                    .enumerate()
                    .map(|(i, rel)| {
                        take(rel, format!("{key}.frame{i:04}.{}", extension(rel)), FileKind::Image)
                    })
                    .collect::<Result<_>>()?;
                if let Some(text) = &sample.text {
                    members.push((format!("{key}.txt"), text.clone().into_bytes()));
                }
                let mut one = Manifest::new(manifest.root());
                one.push(record)?;
                members.insert(
                    0,
                    (format!("{key}.json"), one.to_jsonl().trim_end().as_bytes().to_vec()),
                );
                for (name, data) in &members {
                    append(builder, name, data, &shard)?;
                    *bytes += data.len() as u64 + 512;
                }
                *count += 1;
            }
            if let Some(c) = current.take() {
                entries.push(finish(c)?);
            }
            // Sizes as written (tar pads every member and closes with two empty blocks).
            for e in &mut entries {
                e.bytes = std::fs::metadata(staging.join(&e.file))
                    .map_err(|err| Error::io(staging.join(&e.file), err))?
                    .len();
            }
            splits.insert(split.as_str().to_string(), entries);
        }
        let index = ShardIndex {
            format: FORMAT.into(),
            source: manifest.source().display().to_string(),
            splits,
            root: out.to_path_buf(),
        };
        let text =
            serde_json::to_string_pretty(&index).map_err(|e| Error::Config(e.to_string()))?;
        crate::fs::write_atomic(&staging.join(INDEX_FILE), text.as_bytes())?;
        Ok(index)
    })
}

fn finish(
    (builder, file, samples, _): (tar::Builder<BufWriter<File>>, PathBuf, usize, u64),
) -> Result<ShardEntry> {
    let mut w = builder.into_inner().map_err(|e| Error::io(&file, e))?;
    w.flush().map_err(|e| Error::io(&file, e))?;
    Ok(ShardEntry { file: file.display().to_string(), samples, bytes: 0 })
}

/// Streams the samples of the shard at `path` (`name` is its path relative to the index), one
/// sample's members in memory at a time, calling `f(sample, files)` for each: the sample's file
/// paths are `name/MEMBER` and `files` holds their bytes under `root/name/MEMBER` for a
/// manifest rooted at `root` (see [`Manifest::path`]); with `data` false the modality files
/// are skipped (metadata only). Errors name the shard and the member.
pub fn read_samples(
    path: &Path,
    name: &str,
    root: &Path,
    f: &mut dyn FnMut(Sample, Memory) -> Result<()>,
) -> Result<()> {
    let prefix = root.join(name);
    for_each_sample(path, name, true, &mut |sample, members| {
        let files: Memory = members.into_iter().map(|(m, b)| (prefix.join(m), b)).collect();
        f(sample, files)
    })
}

/// A sample's members other than its `.json`: (name, bytes).
type Members = Vec<(String, Vec<u8>)>;
/// The members of one key as they are read: the key, the sample (once its `.json` is read).
type Group = (String, Option<Sample>, Members);

/// The member groups of a shard, by key, in order.
fn for_each_sample(
    path: &Path,
    name: &str,
    data: bool,
    f: &mut dyn FnMut(Sample, Members) -> Result<()>,
) -> Result<()> {
    // A regular file (a shard is streamed, so only its kind is checked, against the weights
    // limit for large files).
    let (file, _) = crate::fs::open_capped(path, FileKind::Weights)?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let bad =
        |member: &str, message: String| Error::Parse { file: path.join(member), line: 0, message };
    let mut group: Option<Group> = None;
    let flush =
        |group: Option<Group>, f: &mut dyn FnMut(Sample, Members) -> Result<()>| -> Result<()> {
            if let Some((key, sample, members)) = group {
                let sample = sample.ok_or_else(|| {
                    bad(
                        &format!("{key}.json"),
                        "the sample has no .json member (its manifest line)".into(),
                    )
                })?;
                f(sample, members)?;
            }
            Ok(())
        };
    for entry in archive.entries().map_err(|e| Error::io(path, e))? {
        let mut entry = entry.map_err(|e| Error::Parse {
            file: path.to_path_buf(),
            line: 0,
            message: format!("not a readable tar file: {e}"),
        })?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry.path().map_err(|e| Error::io(path, e))?.to_string_lossy().into_owned();
        let base = member.rsplit('/').next().unwrap_or(&member).to_string();
        let Some((key, ext)) = base.split_once('.') else { continue };
        if group.as_ref().is_none_or(|g| g.0 != key) {
            flush(group.take(), f)?;
            group = Some((key.to_string(), None, Vec::new()));
        }
        let g = group.as_mut().expect("group");
        if ext == "json" {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| bad(&member, format!("not UTF-8 text: {e}")))?;
            let one = Manifest::parse_jsonl(&text, &path.join(&member), Path::new(""))
                .map_err(|e| bad(&member, e.to_string()))?;
            let mut sample = one
                .samples()
                .first()
                .cloned()
                .ok_or_else(|| bad(&member, "no sample in it".into()))?;
            let inside = |p: &PathBuf| Path::new(name).join(p);
            sample.image = sample.image.as_ref().map(inside);
            sample.audio = sample.audio.as_ref().map(inside);
            sample.frames = sample.frames.iter().map(inside).collect();
            g.1 = Some(sample);
        } else if data {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(|e| bad(&member, format!("cut short: {e}")))?;
            g.2.push((base.clone(), bytes));
        }
    }
    flush(group.take(), f)
}

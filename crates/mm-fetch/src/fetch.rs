//! Fetching a data set end to end: download every file (resumable), verify it before anything
//! is unpacked, unpack and convert in a staging folder, write `fetched.json`, and only then
//! give the folder its name. A folder named after a data set is therefore always complete.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::convert::{convert, Conversion};
use crate::download::{part_path, Downloader};
use crate::error::{Error, Result};
use crate::registry::{Check, DataSet};
use crate::unpack::{sha256_file, unpack, verify};

/// The environment variable naming a mirror host (same as `--mirror`).
pub const MIRROR_ENV: &str = "MM_DATA_MIRROR";
/// The environment variable naming the data folder (same as `--dir`).
pub const DIR_ENV: &str = "MM_DATA_DIR";
/// The file that marks a complete data-set folder and records where it came from.
pub const MARKER: &str = "fetched.json";

/// Where and how to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Folder that receives one sub-folder per data set.
    pub dir: PathBuf,
    /// A host laid out as `NAME/FILE` (the registry's `mirror_path`) used instead of upstream.
    pub mirror: Option<String>,
    /// Fetch again even when the data set is present.
    pub force: bool,
    /// Keep the downloaded archives (under `DIR/.downloads/`) after unpacking.
    pub keep_downloads: bool,
    /// Retries, back-off and progress bars.
    pub downloader: Downloader,
    /// Report each step on standard error.
    pub verbose: bool,
}

impl FetchOptions {
    /// Defaults: `dir`, upstream hosts, four retries from 0.5 s, progress on a terminal.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FetchOptions {
            dir: dir.into(),
            mirror: None,
            force: false,
            keep_downloads: false,
            downloader: Downloader::default(),
            verbose: true,
        }
    }

    /// The defaults, with `dir` from `MM_DATA_DIR` (else `data`) and the mirror from
    /// `MM_DATA_MIRROR` when they are set.
    pub fn from_env() -> Self {
        let dir =
            std::env::var_os(DIR_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data"));
        let mut options = FetchOptions::new(dir);
        options.mirror = std::env::var(MIRROR_ENV).ok().filter(|m| !m.trim().is_empty());
        options
    }

    /// The URLs to try for a file: the mirror's alone when one is set, else upstream's.
    fn urls(&self, artifact: &crate::registry::Artifact) -> Vec<String> {
        match &self.mirror {
            Some(m) => vec![format!("{}/{}", m.trim_end_matches('/'), artifact.mirror_path)],
            None => artifact.urls.clone(),
        }
    }
}

/// Provenance of a fetched data set, written as its folder's `fetched.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Data-set name.
    pub name: String,
    /// Its title.
    pub title: String,
    /// Its licence or terms.
    pub licence: String,
    /// Home page to cite.
    pub homepage: String,
    /// When it was fetched (seconds since the Unix epoch).
    pub fetched_at: u64,
    /// Every file: where it came from and how it was checked.
    pub sources: Vec<Source>,
    /// What the converter wrote and dropped.
    pub conversion: Conversion,
}

/// One downloaded file in a [`Record`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// File name.
    pub file: String,
    /// URL it came from (or `"earlier download"`).
    pub url: String,
    /// The check applied.
    pub check: Check,
    /// Whether a digest vouched for it.
    pub verified: bool,
    /// SHA-256 of the bytes downloaded, so a later fetch can be compared.
    pub sha256: String,
}

/// What [`fetch`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The data set's folder.
    pub path: PathBuf,
    /// Its record.
    pub record: Record,
    /// `false` when it was already present and nothing was done.
    pub fetched: bool,
}

/// The state of a data set under a data folder.
#[derive(Debug, Clone, PartialEq)]
pub enum Presence {
    /// Complete, with its record.
    Present(Box<Record>),
    /// Not there; `partial` bytes of interrupted downloads wait to be resumed.
    Absent {
        /// Bytes in `.part` files.
        partial: u64,
    },
    /// A folder of that name not written by a fetch.
    Foreign,
}

/// What is under `dir` for `set`.
pub fn presence(dir: &Path, set: &DataSet) -> Presence {
    let target = dir.join(&set.name);
    if let Some(record) = read_record(&target) {
        return Presence::Present(Box::new(record));
    }
    if target.exists() {
        return Presence::Foreign;
    }
    let downloads = dir.join(".downloads").join(&set.name);
    let partial = set
        .artifacts
        .iter()
        .map(|a| {
            let d = downloads.join(&a.file);
            [part_path(&d), d]
                .iter()
                .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                .sum::<u64>()
        })
        .sum();
    Presence::Absent { partial }
}

fn read_record(target: &Path) -> Option<Record> {
    serde_json::from_slice(&fs::read(target.join(MARKER)).ok()?).ok()
}

/// Fetches `set` into `options.dir/NAME` (see the module documentation).
pub fn fetch(set: &DataSet, options: &FetchOptions) -> Result<Fetched> {
    let say = |m: &str| {
        if options.verbose {
            eprintln!("{}: {m}", set.name);
        }
    };
    let target = options.dir.join(&set.name);
    // One fetch at a time per data folder: two would write the same `.part` files. The lock
    // (flock on the folder itself) dies with its process, so a killed fetch never blocks one.
    fs::create_dir_all(&options.dir).map_err(|e| Error::io(&options.dir, e))?;
    let lock = fs::File::open(&options.dir).map_err(|e| Error::io(&options.dir, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            eprintln!(
                "{}: another fetch into {} is running; waiting for it",
                set.name,
                options.dir.display()
            );
            lock.lock().map_err(|e| Error::io(&options.dir, e))?;
        }
        Err(fs::TryLockError::Error(e)) => return Err(Error::io(&options.dir, e)),
    }
    match presence(&options.dir, set) {
        Presence::Present(record) if !options.force => {
            say(&format!("already present in {} (--force fetches it again)", target.display()));
            return Ok(Fetched { path: target, record: *record, fetched: false });
        }
        Presence::Foreign => return Err(Error::Foreign(target)),
        _ => {}
    }
    let downloads = options.dir.join(".downloads").join(&set.name);
    let mut sources = Vec::new();
    for artifact in &set.artifacts {
        let dest = downloads.join(&artifact.file);
        let url = if dest.is_file() {
            say(&format!("{} already downloaded; checking it", artifact.file));
            "earlier download".to_string()
        } else {
            let urls = options.urls(artifact);
            say(&format!("downloading {} from {}", artifact.file, urls[0]));
            options.downloader.download(&urls, &dest)?
        };
        let verified = match verify(&dest, artifact) {
            Ok(v) => v,
            Err(e) => {
                // A download that fails its check is deleted: the next attempt starts afresh.
                let _ = fs::remove_file(&dest);
                return Err(e);
            }
        };
        if verified {
            say(&format!("{} verified ({})", artifact.file, artifact.check.describe()));
        } else {
            eprintln!(
                "{}: warning: {} is not verified ({}); check it yourself before relying on it",
                set.name, artifact.file, artifact.check_source
            );
        }
        // A verified SHA-256 of the file is already its digest; anything else needs a pass.
        let sha256 = match &artifact.check {
            Check::Sha256(h) if verified => h.to_ascii_lowercase(),
            _ => sha256_file(&dest)?,
        };
        sources.push(Source {
            file: artifact.file.clone(),
            url,
            check: artifact.check.clone(),
            verified,
            sha256,
        });
    }
    let staging = options.dir.join(format!(".staging-{}-{}", set.name, std::process::id()));
    let built = (|| -> Result<Conversion> {
        remove_dir(&staging)?;
        fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        for artifact in &set.artifacts {
            let written = unpack(&downloads.join(&artifact.file), artifact, &staging)?;
            say(&format!("unpacked {} ({} files)", artifact.file, written.len()));
        }
        let conversion = convert(&set.layout, &staging)?;
        let fetched_at =
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        let record = Record {
            name: set.name.clone(),
            title: set.title.clone(),
            licence: set.licence.clone(),
            homepage: set.homepage.clone(),
            fetched_at,
            sources: sources.clone(),
            conversion: conversion.clone(),
        };
        let marker = staging.join(MARKER);
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::Config(format!("serialising the record: {e}")))?;
        fs::write(&marker, json).map_err(|e| Error::io(&marker, e))?;
        fs::File::open(&marker).and_then(|f| f.sync_all()).map_err(|e| Error::io(&marker, e))?;
        place(&staging, &target)?;
        Ok(conversion)
    })();
    let conversion = match built {
        Ok(c) => c,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if !options.keep_downloads {
        let _ = fs::remove_dir_all(&downloads);
        let _ = fs::remove_dir(options.dir.join(".downloads"));
    }
    for (split, n) in &conversion.splits {
        say(&format!("{n} {split} samples"));
    }
    if !conversion.dropped.is_empty() {
        let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
        for d in &conversion.dropped {
            *reasons.entry(&d.reason).or_default() += 1;
        }
        for (reason, n) in reasons {
            say(&format!("left out {n} samples: {reason} (ids in {MARKER})"));
        }
    }
    say(&format!("ready in {}", target.display()));
    let record = read_record(&target)
        .ok_or_else(|| Error::format(target.join(MARKER), "unreadable right after writing"))?;
    Ok(Fetched { path: target, record, fetched: true })
}

fn remove_dir(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// Renames the finished `staging` folder to `target`, replacing an earlier fetch's folder.
fn place(staging: &Path, target: &Path) -> Result<()> {
    let old = target.with_file_name(format!(
        ".old-{}-{}",
        target.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let replaced = target.exists();
    if replaced {
        fs::rename(target, &old).map_err(|e| Error::io(target, e))?;
    }
    if let Err(e) = fs::rename(staging, target) {
        if replaced {
            let _ = fs::rename(&old, target);
        }
        return Err(Error::io(target, e));
    }
    if replaced {
        remove_dir(&old)?;
    }
    if let Some(parent) = target.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

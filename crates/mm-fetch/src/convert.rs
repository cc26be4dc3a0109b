//! Converters from unpacked data sets to mm's manifest format: `manifest.jsonl` beside the
//! files, one sample per line (`id`, `split`, then `image`, `audio` or `text` as paths relative
//! to the folder, and `label`), the format `mm_data::Manifest` reads.
//!
//! Nothing is dropped silently: a sample a converter cannot use is listed in the returned
//! [`Conversion`] with its id and the reason, and `fetch` writes that list into `fetched.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::registry::Layout;

/// What a converter wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    /// Samples per split.
    pub splits: BTreeMap<String, usize>,
    /// Samples left out, with why.
    pub dropped: Vec<Dropped>,
}

/// A sample a converter left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    /// The sample (or file) id.
    pub id: String,
    /// Why.
    pub reason: String,
}

/// Runs the converter of `layout` in the data set's folder `root`, writing `manifest.jsonl`
/// (nothing for [`Layout::Files`] and [`Layout::Weights`]).
pub fn convert(layout: &Layout, root: &Path) -> Result<Conversion> {
    let (samples, dropped) = match layout {
        Layout::Idx { classes } => idx(root, classes)?,
        Layout::Fsdd => fsdd(root)?,
        Layout::Cifar10 => cifar10(root)?,
        Layout::Esc50 => esc50(root)?,
        Layout::Flickr8k => flickr8k(root)?,
        Layout::Files | Layout::Weights => return Ok(Conversion::default()),
    };
    let mut conversion = Conversion { dropped, ..Conversion::default() };
    let mut text = String::new();
    for sample in &samples {
        let split = sample["split"].as_str().unwrap_or("train").to_string();
        *conversion.splits.entry(split).or_default() += 1;
        text.push_str(&sample.to_string());
        text.push('\n');
    }
    let path = root.join("manifest.jsonl");
    let mut file = fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    file.write_all(text.as_bytes()).map_err(|e| Error::io(&path, e))?;
    Ok(conversion)
}

/// An idx file: its dimensions and its `u8` data.
pub struct Idx {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The values.
    pub data: Vec<u8>,
}

/// Reads an uncompressed idx file of unsigned bytes (MNIST's format).
pub fn read_idx(path: &Path) -> Result<Idx> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: String| Error::format(path, m);
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an idx file (bad magic number)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "idx element type 0x{:02x}; only unsigned bytes (0x08) are supported",
            bytes[2]
        )));
    }
    let n = bytes[3] as usize;
    let header = 4 + 4 * n;
    if bytes.len() < header {
        return Err(bad("truncated idx header".into()));
    }
    let dims: Vec<usize> = (0..n)
        .map(|i| {
            u32::from_be_bytes([
                bytes[4 + 4 * i],
                bytes[5 + 4 * i],
                bytes[6 + 4 * i],
                bytes[7 + 4 * i],
            ]) as usize
        })
        .collect();
    let count: usize = dims.iter().product();
    if bytes.len() - header != count {
        return Err(bad(format!(
            "idx header says {dims:?} ({count} values), the file holds {}",
            bytes.len() - header
        )));
    }
    Ok(Idx { dims, data: bytes[header..].to_vec() })
}

fn png(
    path: &Path,
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    colour: image::ExtendedColorType,
) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    image::save_buffer_with_format(path, &pixels, width, height, colour, image::ImageFormat::Png)
        .map_err(|e| Error::format(path, format!("writing PNG: {e}")))
}

type Samples = (Vec<Value>, Vec<Dropped>);

/// MNIST-style idx files in `raw/` to `images/{train,test}/NNNNN.png`.
fn idx(root: &Path, classes: &[String]) -> Result<Samples> {
    let mut samples = Vec::new();
    for (prefix, split) in [("train", "train"), ("t10k", "test")] {
        let images_path = root.join(format!("raw/{prefix}-images-idx3-ubyte"));
        let labels_path = root.join(format!("raw/{prefix}-labels-idx1-ubyte"));
        let images = read_idx(&images_path)?;
        let labels = read_idx(&labels_path)?;
        let [n, h, w] = images.dims[..] else {
            return Err(Error::format(
                &images_path,
                format!("images of shape {:?}, expected [n, h, w]", images.dims),
            ));
        };
        if labels.dims != [n] {
            return Err(Error::format(
                &labels_path,
                format!("labels of shape {:?} for {n} images", labels.dims),
            ));
        }
        if let Some(bad) = labels.data.iter().find(|l| usize::from(**l) >= classes.len()) {
            return Err(Error::format(
                &labels_path,
                format!("label {bad} but only {} classes", classes.len()),
            ));
        }
        (0..n).into_par_iter().try_for_each(|i| {
            let pixels = images.data[i * h * w..(i + 1) * h * w].to_vec();
            png(
                &root.join(format!("images/{split}/{i:05}.png")),
                w as u32,
                h as u32,
                pixels,
                image::ExtendedColorType::L8,
            )
        })?;
        samples.extend((0..n).map(|i| {
            json!({"id": format!("{split}-{i:05}"), "split": split, "image": format!("images/{split}/{i:05}.png"), "label": classes[usize::from(labels.data[i])]})
        }));
    }
    Ok((samples, Vec::new()))
}

/// FSDD's `recordings/{digit}_{speaker}_{take}.wav`; takes 0-4 are the test split.
fn fsdd(root: &Path) -> Result<Samples> {
    let dir = root.join("recordings");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let (mut samples, mut dropped) = (Vec::new(), Vec::new());
    for name in names {
        let stem = name.trim_end_matches(".wav");
        let parts: Vec<&str> = stem.split('_').collect();
        let parsed = match parts[..] {
            [digit, _speaker, take] => {
                digit.parse::<u8>().ok().filter(|d| *d < 10).zip(take.parse::<u32>().ok())
            }
            _ => None,
        };
        match parsed {
            Some((digit, take)) => samples.push(json!({
                "id": stem, "split": if take < 5 { "test" } else { "train" }, "audio": format!("recordings/{name}"), "label": digit.to_string()
            })),
            None => dropped.push(Dropped { id: name, reason: "not an FSDD name ({digit}_{speaker}_{take}.wav)".into() }),
        }
    }
    Ok((samples, dropped))
}

/// CIFAR-10's binary batches to `images/{train,test}/NNNNN.png`.
fn cifar10(root: &Path) -> Result<Samples> {
    let dir = root.join("cifar-10-batches-bin");
    let meta = dir.join("batches.meta.txt");
    let classes: Vec<String> = fs::read_to_string(&meta)
        .map_err(|e| Error::io(&meta, e))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let mut samples = Vec::new();
    for (split, files) in [
        ("train", (1..=5).map(|i| format!("data_batch_{i}.bin")).collect::<Vec<_>>()),
        ("test", vec!["test_batch.bin".to_string()]),
    ] {
        let mut records: Vec<u8> = Vec::new();
        for file in &files {
            let path = dir.join(file);
            let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
            if bytes.len() % 3073 != 0 {
                return Err(Error::format(
                    &path,
                    format!("{} bytes is not a whole number of 3073-byte records", bytes.len()),
                ));
            }
            if let Some(i) = bytes.chunks(3073).position(|r| usize::from(r[0]) >= classes.len()) {
                return Err(Error::format(
                    &path,
                    format!(
                        "record {i}: label {} but {} classes in batches.meta.txt",
                        bytes[i * 3073],
                        classes.len()
                    ),
                ));
            }
            records.extend(bytes);
        }
        records.par_chunks(3073).enumerate().try_for_each(|(i, r)| {
            let planes = &r[1..];
            let rgb: Vec<u8> =
                (0..1024).flat_map(|p| [planes[p], planes[1024 + p], planes[2048 + p]]).collect();
            png(
                &root.join(format!("images/{split}/{i:05}.png")),
                32,
                32,
                rgb,
                image::ExtendedColorType::Rgb8,
            )
        })?;
        samples.extend(records.chunks(3073).enumerate().map(|(i, r)| {
            json!({"id": format!("{split}-{i:05}"), "split": split, "image": format!("images/{split}/{i:05}.png"), "label": classes[usize::from(r[0])]})
        }));
    }
    Ok((samples, Vec::new()))
}

/// ESC-50: `meta/esc50.csv` and `audio/*.wav`; fold 5 is the test split, fold 4 validation.
fn esc50(root: &Path) -> Result<Samples> {
    let csv = root.join("meta/esc50.csv");
    let text = fs::read_to_string(&csv).map_err(|e| Error::io(&csv, e))?;
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> =
        lines.next().map(|(_, l)| l.split(',').map(str::trim).collect()).unwrap_or_default();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| Error::format(&csv, format!("line 1: no `{name}` column")))
    };
    let (file_col, fold_col, category_col) =
        (column("filename")?, column("fold")?, column("category")?);
    let (mut samples, mut dropped) = (Vec::new(), Vec::new());
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let at = |c: usize| {
            fields.get(c).copied().ok_or_else(|| {
                Error::format(
                    &csv,
                    format!("line {}: {} fields, expected {}", i + 1, fields.len(), header.len()),
                )
            })
        };
        let (file, fold, category) = (at(file_col)?, at(fold_col)?, at(category_col)?);
        let fold: u32 = fold.parse().map_err(|_| {
            Error::format(&csv, format!("line {}: fold {fold:?} is not a number", i + 1))
        })?;
        let id = file.trim_end_matches(".wav");
        if !root.join("audio").join(file).is_file() {
            dropped.push(Dropped {
                id: id.into(),
                reason: format!("audio/{file} is not in the archive"),
            });
            continue;
        }
        let split = match fold {
            5 => "test",
            4 => "val",
            _ => "train",
        };
        samples.push(
            json!({"id": id, "split": split, "audio": format!("audio/{file}"), "label": category}),
        );
    }
    Ok((samples, dropped))
}

/// Flickr8k: `images/*.jpg`, `text/Flickr8k.token.txt` and the three split lists; one sample
/// per (image, caption).
fn flickr8k(root: &Path) -> Result<Samples> {
    let read = |name: &str| {
        let path = root.join("text").join(name);
        fs::read_to_string(&path).map_err(|e| Error::io(&path, e))
    };
    let mut split_of: BTreeMap<String, &str> = BTreeMap::new();
    for (file, split) in [
        ("Flickr_8k.trainImages.txt", "train"),
        ("Flickr_8k.devImages.txt", "val"),
        ("Flickr_8k.testImages.txt", "test"),
    ] {
        for image in read(file)?.lines().map(str::trim).filter(|l| !l.is_empty()) {
            split_of.insert(image.to_string(), split);
        }
    }
    let present: BTreeSet<String> = match fs::read_dir(root.join("images")) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect(),
        Err(_) => BTreeSet::new(),
    };
    let token_path = root.join("text/Flickr8k.token.txt");
    let (mut samples, mut dropped) = (Vec::new(), Vec::new());
    for (i, line) in read("Flickr8k.token.txt")?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, caption)) = line.split_once('\t') else {
            return Err(Error::format(
                &token_path,
                format!("line {}: no tab between `IMAGE#N` and the caption", i + 1),
            ));
        };
        let image = key.split('#').next().unwrap_or(key);
        let reason = if !present.contains(image) {
            Some("image missing from the image archive")
        } else if !split_of.contains_key(image) {
            Some("image in none of the official splits")
        } else {
            None
        };
        match reason {
            Some(reason) => dropped.push(Dropped { id: key.into(), reason: reason.into() }),
            None => samples.push(json!({"id": key, "split": split_of[image], "image": format!("images/{image}"), "text": caption.trim()})),
        }
    }
    Ok((samples, dropped))
}

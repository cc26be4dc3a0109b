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
use crate::fsdd::{Name, NAME_FORM};
use crate::idx::read_mnist;
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
        let mnist = read_mnist(&root.join("raw"), prefix)?;
        if let Some(bad) = mnist.labels.iter().find(|l| usize::from(**l) >= classes.len()) {
            return Err(Error::format(
                root.join(format!("raw/{prefix}-labels-idx1-ubyte")),
                format!("label {bad} but only {} classes", classes.len()),
            ));
        }
        let (n, h, w) = (mnist.count, mnist.height, mnist.width);
        (0..n).into_par_iter().try_for_each(|i| {
            let pixels = mnist.pixels[i * h * w..(i + 1) * h * w].to_vec();
            png(
                &root.join(format!("images/{split}/{i:05}.png")),
                w as u32,
                h as u32,
                pixels,
                image::ExtendedColorType::L8,
            )
        })?;
        samples.extend((0..n).map(|i| {
            json!({"id": format!("{split}-{i:05}"), "split": split, "image": format!("images/{split}/{i:05}.png"), "label": classes[usize::from(mnist.labels[i])]})
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
        match Name::parse(&name) {
            Some(parsed) => samples.push(json!({
                "id": name.trim_end_matches(".wav"), "split": if parsed.is_test() { "test" } else { "train" }, "audio": format!("recordings/{name}"), "label": parsed.digit.to_string()
            })),
            None => dropped.push(Dropped { id: name, reason: format!("not an FSDD name ({NAME_FORM})") }),
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

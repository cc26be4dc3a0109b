//! A pretrained CLIP with nothing trained:
//!
//! - `mm zero-shot` classifies images: each label becomes a text through a template (`"a photo
//!   of a {}"`); an image's class probabilities are the softmax of its scaled similarities to
//!   the labels' texts. A manifest's `label` field is the truth, and the accuracy over the
//!   samples that have one is reported.
//! - `mm index` embeds images into an index file (reusing the rows of unchanged files when it
//!   exists), and `mm retrieve --index` searches it by text or by image.
//!
//! Inputs are image files, folders (their images, recursively, in name order; links to
//! folders inside them are not followed) or manifests
//! (`.jsonl` / `.csv`, their samples with an image, `--split` to keep one split). A file that
//! cannot be read is reported with its reason and the others go on; the command then fails,
//! saying how many were lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mm_data::device::parse_device;
use mm_data::manifest::{Manifest, Split};
use mm_encoders::clip::ZeroShot;
use rayon::prelude::*;
use serde_json::json;

/// Options of `mm zero-shot`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A CLIP model folder (transformers' files: config.json, model.safetensors,
    /// tokenizer.json, preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// The class names, separated by commas.
    #[arg(long, value_delimiter = ',', required_unless_present = "labels_file")]
    labels: Vec<String>,
    /// A file with one class name per line (instead of --labels).
    #[arg(long, conflicts_with = "labels")]
    labels_file: Option<PathBuf>,
    /// The text each label goes into, at `{}`.
    #[arg(long, default_value = "a photo of a {}.")]
    template: String,
    /// Image files, folders of images, or manifests (.jsonl, .csv).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// With a manifest: only this split's samples (default: all).
    #[arg(long, value_parser = |s: &str| s.parse::<Split>())]
    split: Option<Split>,
    /// Labels shown per image.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// One JSON object per image (and a summary object last) instead of text.
    #[arg(long)]
    json: bool,
}

/// One image to classify: where it came from and its true label, if known.
struct Item {
    path: PathBuf,
    id: Option<String>,
    truth: Option<String>,
}

const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "webp"];

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jsonl", "csv"].contains(&e.to_ascii_lowercase().as_str()))
}

fn folder_images(dir: &Path, out: &mut Vec<Item>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the folder", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("{}: cannot list the folder", dir.display()))?;
    entries.sort();
    for path in entries {
        // Folders are followed only when they are real ones: a link to a folder could loop.
        let linked = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if path.is_dir() {
            if !linked {
                folder_images(&path, out)?;
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(Item { path, id: None, truth: None });
        }
    }
    Ok(())
}

fn gather(inputs: &[PathBuf], split: Option<Split>) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let before = items.len();
            folder_images(input, &mut items)?;
            if items.len() == before {
                bail!(
                    "{}: no images in this folder (looked for {} files)",
                    input.display(),
                    IMAGE_EXTENSIONS.join(", ")
                );
            }
        } else if is_manifest(input) {
            let manifest = Manifest::read(input)?;
            let before = items.len();
            for s in manifest.samples() {
                if split.is_some_and(|split| s.split != split) {
                    continue;
                }
                if let Some(image) = &s.image {
                    items.push(Item {
                        path: manifest.path(image),
                        id: Some(s.id.clone()),
                        truth: s.label.clone(),
                    });
                }
            }
            if items.len() == before {
                let which = split.map_or(String::new(), |s| format!(" in the {s} split"));
                bail!("{}: no sample with an image{which}", input.display());
            }
        } else {
            items.push(Item { path: input.clone(), id: None, truth: None });
        }
    }
    Ok(items)
}

fn read_labels(a: &Args) -> Result<Vec<String>> {
    let labels: Vec<String> = match &a.labels_file {
        Some(file) => {
            let text = mm_data::fs::read_text_capped(file, mm_data::fs::FileKind::Text)?;
            text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
        }
        None => a.labels.iter().map(|l| l.trim().to_string()).collect(),
    };
    if labels.is_empty() || labels.iter().all(String::is_empty) {
        bail!("no labels: give the class names with --labels cat,dog,car or --labels-file");
    }
    Ok(labels)
}

/// Runs `mm zero-shot`.
pub fn run(a: &Args) -> Result<()> {
    if a.batch == 0 || a.top_k == 0 {
        bail!("--batch and --top-k must be at least 1");
    }
    let labels = read_labels(a)?;
    let items = gather(&a.inputs, a.split)?;
    let device = parse_device(&a.device)?;
    let zs = ZeroShot::new(&a.model, &labels, &a.template, device)
        .with_context(|| format!("{}: cannot use this CLIP model", a.model.display()))?;
    let top_k = a.top_k.min(labels.len());
    let (mut failed, mut scored, mut correct) = (0usize, 0usize, 0usize);
    let mut outside = BTreeMap::<String, usize>::new();
    let mut counts = vec![0usize; labels.len()];
    for chunk in items.chunks(a.batch) {
        // Decoded and prepared in parallel; a file that cannot be is reported by name.
        let processor = zs.processor();
        let decoded: Vec<Result<tch::Tensor, String>> = chunk
            .par_iter()
            .map(|item| {
                let pixels = mm_data::image::decode_image(&item.path).map_err(|e| e.to_string())?;
                processor.image(&pixels).map_err(|e| format!("{}: {e}", item.path.display()))
            })
            .collect();
        let mut good = Vec::new();
        let mut pixels = Vec::new();
        for (item, d) in chunk.iter().zip(decoded) {
            match d {
                Ok(p) => {
                    good.push(item);
                    pixels.push(p);
                }
                Err(e) => {
                    failed += 1;
                    let id = item.id.as_ref().map_or(String::new(), |i| format!("sample {i}: "));
                    eprintln!("mm: {id}{e}: skipped");
                }
            }
        }
        if pixels.is_empty() {
            continue;
        }
        let probs =
            zs.classify_prepared(&tch::Tensor::stack(&pixels, 0)).to_device(tch::Device::Cpu);
        let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&probs)?;
        for (item, row) in good.into_iter().zip(rows) {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&i, &j| row[j].total_cmp(&row[i]));
            let best = &labels[order[0]];
            counts[order[0]] += 1;
            if let Some(truth) = &item.truth {
                scored += 1;
                correct += usize::from(truth == best);
                if !labels.contains(truth) {
                    *outside.entry(truth.clone()).or_default() += 1;
                }
            }
            if a.json {
                let probabilities: serde_json::Map<String, serde_json::Value> =
                    labels.iter().zip(&row).map(|(l, p)| (l.clone(), json!(p))).collect();
                let mut line = json!({
                    "input": item.path.to_string_lossy(),
                    "label": best,
                    "probabilities": probabilities,
                });
                if let Some(id) = &item.id {
                    line["id"] = json!(id);
                }
                if let Some(t) = &item.truth {
                    line["truth"] = json!(t);
                }
                println!("{line}");
            } else {
                let top: Vec<String> = order[..top_k]
                    .iter()
                    .map(|&i| format!("{} {:.3}", labels[i], row[i]))
                    .collect();
                let truth =
                    item.truth.as_ref().map_or(String::new(), |t| format!("  (truth: {t})"));
                println!("{}\t{}{truth}", item.path.display(), top.join("  "));
            }
        }
    }
    let done = items.len() - failed;
    if done == 0 {
        bail!("none of the {} images could be read", items.len());
    }
    let accuracy = (scored > 0).then(|| correct as f64 / scored as f64);
    if a.json {
        let mut summary = json!({"images": done, "failed": failed, "labels": labels,
            "predicted": labels.iter().zip(&counts).map(|(l, c)| (l.clone(), json!(c))).collect::<serde_json::Map<_, _>>()});
        if let Some(acc) = accuracy {
            summary["accuracy"] = json!(acc);
            summary["scored"] = json!(scored);
        }
        println!("{}", json!({ "summary": summary }));
    } else if let Some(acc) = accuracy {
        println!("accuracy: {:.2}% ({correct} of {scored} labelled images)", acc * 100.0);
    }
    for (truth, n) in &outside {
        eprintln!("mm: warning: {n} images are labelled {truth:?}, which is not among the labels (counted as wrong)");
    }
    if failed > 0 {
        bail!(
            "{failed} of {} images could not be read (named above); the others were classified",
            items.len()
        );
    }
    Ok(())
}

/// Options of `mm index`.
#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// A CLIP model folder (transformers' files).
    #[arg(long)]
    model: PathBuf,
    /// The index file to write (kept up to date: rows of unchanged images are reused).
    #[arg(long)]
    out: PathBuf,
    /// Image files, folders of images, or manifests (.jsonl, .csv).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// With a manifest: only this split's samples (default: all).
    #[arg(long, value_parser = |s: &str| s.parse::<Split>())]
    split: Option<Split>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Embed every image again, even when the index has it.
    #[arg(long)]
    rebuild: bool,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// Runs `mm index`.
pub fn index(a: &IndexArgs) -> Result<()> {
    use mm_encoders::clip::{Clip, ClipProcessor};
    use mm_encoders::clip_index::ClipIndex;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let items = gather(&a.inputs, a.split)?;
    let paths: Vec<PathBuf> = items.into_iter().map(|i| i.path).collect();
    let device = parse_device(&a.device)?;
    let (_vs, clip) = Clip::load(&a.model, device)
        .with_context(|| format!("{}: cannot use this CLIP model", a.model.display()))?;
    let processor = ClipProcessor::from_folder(&a.model, clip.config())?;
    // An earlier index at --out is reused when it is one (not with --rebuild); anything else
    // there is never overwritten.
    let previous = if a.out.exists() {
        let index = ClipIndex::load(&a.out).with_context(|| {
            format!(
                "{}: exists and is not a CLIP index (remove it or choose another --out)",
                a.out.display()
            )
        })?;
        (!a.rebuild).then_some(index)
    } else {
        None
    };
    let started = std::time::Instant::now();
    let (index, failures) =
        ClipIndex::build(&clip, &processor, &a.model, &paths, previous.as_ref(), a.batch)?;
    index.save(&a.out)?;
    for f in &failures {
        eprintln!("mm: {}: {}: skipped", f.path.display(), f.reason);
    }
    let embedded = index.entries().len() - index.reused();
    println!(
        "indexed {} images into {} ({embedded} embedded in {:.1} s, {} reused from the earlier index)",
        index.entries().len(),
        a.out.display(),
        started.elapsed().as_secs_f64(),
        index.reused()
    );
    if !failures.is_empty() {
        bail!(
            "{} of {} images could not be read (named above); the others were indexed",
            failures.len(),
            paths.len()
        );
    }
    Ok(())
}

/// `mm retrieve --index`: the `top_k` images of an index closest to a text, or to an image
/// when `query` names a file.
pub fn retrieve_index(
    index_file: &Path,
    query: &str,
    top_k: usize,
    device: &str,
    as_json: bool,
) -> Result<()> {
    use mm_encoders::clip::{Clip, ClipProcessor};
    use mm_encoders::clip_index::ClipIndex;
    if query.trim().is_empty() {
        bail!("--query is empty: give the text to search for, or the path of an image");
    }
    let index = ClipIndex::load(index_file)?;
    if !index.model_unchanged() {
        bail!(
            "{}: the model it was built with ({}) is gone or has changed; run `mm index` again",
            index_file.display(),
            index.model().display()
        );
    }
    let (_vs, clip) = Clip::load(index.model(), parse_device(device)?)?;
    let processor = ClipProcessor::from_folder(index.model(), clip.config())?;
    let as_image = Path::new(query).is_file();
    let q = if as_image {
        index.image_query(&clip, &processor, Path::new(query))?
    } else {
        index.text_query(&clip, &processor, query)?
    };
    let hits = index.search(&q, top_k);
    if as_json {
        let rows: Vec<_> = hits
            .iter()
            .enumerate()
            .map(|(rank, h)| json!({"rank": rank + 1, "path": h.path.to_string_lossy(), "score": h.score}))
            .collect();
        println!("{}", json!({"query": query, "query_is_image": as_image, "results": rows}));
    } else {
        for (rank, h) in hits.iter().enumerate() {
            println!("{:>2}. {:.4}  {}", rank + 1, h.score, h.path.display());
        }
    }
    Ok(())
}

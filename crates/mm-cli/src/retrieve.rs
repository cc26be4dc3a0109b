//! `mm retrieve`: the top-k items of one modality for a query of another, with a trained
//! retrieval model (`[model.head] type = "retrieval"`).
//!
//! The gallery (one modality of every sample of a split) is embedded once and kept in the run
//! folder as `index-MODALITY-SPLIT.safetensors` with its ids in a JSON file beside it; the index
//! is rebuilt when the checkpoint or the manifest changes (or with `--rebuild`). A query is a
//! text, or the path of an image or audio file; it goes through the same pipeline and encoder
//! as in training.
//!
//! With `--index FILE` (written by `mm index`) it searches images embedded by a pretrained CLIP
//! instead, nothing trained: the query is a text, or the path of an image.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mm_data::device::parse_device;
use mm_data::manifest::{Manifest, Sample, Split};
use mm_data::Modality;
use mm_train::run::Run;
use serde_json::{json, Value};

/// Options of `mm retrieve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run folder of a retrieval model.
    #[arg(long, required_unless_present = "index", conflicts_with = "index")]
    run: Option<PathBuf>,
    /// A CLIP index written by `mm index` (instead of --run).
    #[arg(long)]
    index: Option<PathBuf>,
    /// The query: a text, or the path of an image or audio file.
    #[arg(long)]
    query: String,
    /// The query's modality (default: the first of the model's pair).
    #[arg(long)]
    from: Option<String>,
    /// The split whose items form the gallery.
    #[arg(long, default_value = "test", value_parser = |s: &str| s.parse::<Split>())]
    split: Split,
    /// How many items to return.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Embed the gallery again even when an up-to-date index exists.
    #[arg(long)]
    rebuild: bool,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

fn modified(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Runs `mm retrieve`.
pub fn run(a: &Args) -> Result<()> {
    if a.query.trim().is_empty() {
        bail!("--query is empty: give the text to search for, or the path of a file");
    }
    let run_dir = match (&a.run, &a.index) {
        (_, Some(index)) => {
            if a.from.is_some() {
                bail!("--from is for runs: with --index the query is a text, or an image's path");
            }
            return crate::clip::retrieve_index(index, &a.query, a.top_k, &a.device, a.json);
        }
        (Some(run), None) => run,
        (None, None) => bail!("give --run (a retrieval run) or --index (a CLIP index)"),
    };
    let run = Run::open(run_dir, None, parse_device(&a.device)?)?;
    let Some(pair) = run.model.heads().first().and_then(|(_, h)| h.retrieval_pair().cloned())
    else {
        bail!("{}: not a retrieval model (its head is not type = \"retrieval\"); `mm predict` runs classifiers", run_dir.display());
    };
    // The model was built over its pair, so both name modalities.
    let pair: [Modality; 2] = [pair[0].parse()?, pair[1].parse()?];
    let from = a.from.clone().unwrap_or_else(|| pair[0].to_string());
    let q_side = pair
        .iter()
        .position(|p| *p == from.as_str())
        .with_context(|| format!("--from {from}: the model pairs {} and {}", pair[0], pair[1]))?;
    let g_side = 1 - q_side;
    let (from, gallery_modality) = (pair[q_side], pair[g_side]);
    let manifest = Arc::new(run.manifest(None)?.0);

    // The index, reused while the checkpoint and the manifest are unchanged.
    let stem = run_dir.join(format!("index-{gallery_modality}-{}", a.split));
    let (index_file, ids_file) = (stem.with_extension("safetensors"), stem.with_extension("json"));
    let key = json!({
        "checkpoint_step": run.state.step,
        "checkpoint_epoch": run.state.epoch,
        "manifest": run.config.data.manifest,
        "manifest_modified": modified(&run.config.data.manifest),
    });
    let cached = if a.rebuild {
        None
    } else {
        std::fs::read(&ids_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(|v| v["key"] == key)
            .and_then(|v| {
                let ids: Vec<String> = serde_json::from_value(v["ids"].clone()).ok()?;
                // A damaged index (its digest no longer matches) is rebuilt, and said so.
                let tensors = mm_encoders::weights::read_named(&index_file)
                    .inspect_err(|e| eprintln!("{e}: rebuilding the index"))
                    .ok()?;
                let t = tensors.into_iter().find(|(n, _)| n == "embeddings")?.1;
                (t.size()[0] as usize == ids.len()).then_some((ids, t))
            })
    };
    let (ids, gallery) = match cached {
        Some(c) => c,
        None => {
            let (ids, emb) =
                run.embed_split(Arc::clone(&manifest), a.split, g_side, gallery_modality)?;
            // The tensors first, then the record that vouches for them: a killed write leaves
            // a record that does not match, and the index is rebuilt next time.
            mm_encoders::weights::save_named(
                &index_file,
                vec![("embeddings".to_string(), emb.shallow_clone())],
            )?;
            mm_data::fs::write_atomic(
                &ids_file,
                serde_json::to_string(&json!({"key": key, "ids": ids}))?.as_bytes(),
            )?;
            eprintln!(
                "indexed {} {gallery_modality} items of the {} split into {}",
                ids.len(),
                a.split,
                index_file.display()
            );
            (ids, emb)
        }
    };

    // The query, through the same pipeline.
    let sample = match from {
        Modality::Text => (Manifest::new("."), Sample::new("query").with_text(a.query.clone())),
        Modality::Image | Modality::Audio => {
            let path = Path::new(&a.query);
            if !path.is_file() {
                bail!("--query {}: no such file (a {from} query is the path of a file)", a.query);
            }
            let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let name = PathBuf::from(path.file_name().context("a file name")?);
            let s = Sample::new("query");
            (
                Manifest::new(root),
                if from == Modality::Image { s.with_image(name) } else { s.with_audio(name) },
            )
        }
        other => bail!("--from {other}: queries are text, image or audio"),
    };
    let (mut query_manifest, sample) = sample;
    query_manifest.push(sample)?;
    let (_, q) = run
        .embed_split(Arc::new(query_manifest), Split::Train, q_side, from)
        .context("embedding the query")?;
    let scores = gallery.matmul(&q.tr()).squeeze_dim(1);
    let k = a.top_k.min(ids.len()).max(1);
    let (values, indices) = scores.topk(k as i64, 0, true, true);
    let values: Vec<f32> = Vec::try_from(values)?;
    let indices: Vec<i64> = Vec::try_from(indices)?;
    // Paths shown from the current directory when they are under it.
    let cwd = std::env::current_dir().unwrap_or_default();
    let show =
        |p: PathBuf| p.strip_prefix(&cwd).map(Path::to_path_buf).unwrap_or(p).display().to_string();
    let results: Vec<Value> = indices
        .iter()
        .zip(&values)
        .enumerate()
        .map(|(rank, (i, score))| {
            let id = &ids[*i as usize];
            let s = manifest.get(id);
            let item = s.and_then(|s| match gallery_modality {
                Modality::Image => s.image.as_ref().map(|p| show(manifest.path(p))),
                Modality::Audio => s.audio.as_ref().map(|p| show(manifest.path(p))),
                Modality::Text => s.text.clone(),
                Modality::Frames | Modality::Features => None,
            });
            // The item's own caption, when the gallery is not the text: what a reader checks.
            let caption = s.filter(|_| gallery_modality != Modality::Text).and_then(|s| s.text.clone());
            json!({"rank": rank + 1, "id": id, "score": score, "item": item, "caption": caption, "label": s.and_then(|s| s.label.clone())})
        })
        .collect();
    if a.json {
        println!(
            "{}",
            json!({"query": a.query, "from": from, "to": gallery_modality, "gallery": ids.len(), "results": results})
        );
        return Ok(());
    }
    println!(
        "{from} -> {gallery_modality}, top {k} of {} items in the {} split:",
        ids.len(),
        a.split
    );
    for r in &results {
        println!(
            "  {:>2}. {:<8} {:.3}  {}{}{}",
            r["rank"],
            r["id"].as_str().unwrap_or_default(),
            r["score"].as_f64().unwrap_or(f64::NAN),
            r["item"].as_str().unwrap_or("-"),
            r["label"].as_str().map_or(String::new(), |l| format!("  [{l}]")),
            r["caption"].as_str().map_or(String::new(), |c| format!("\n      its caption: {c}"))
        );
    }
    Ok(())
}

//! `mm compare`: every fusion method, and each modality alone, trained on the same data, split
//! and seed from one run configuration; a table of test accuracy, parameters, training time and
//! accuracy when one modality is removed from every test sample. With two modalities it also
//! trains the same two encoders for cross-modal retrieval (a CLIP-style head whose contrastive
//! loss takes every same-label pair as a positive) and reports Recall@K both ways on the test
//! split, by exact pair and by class.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mm_data::device::parse_device;
use mm_data::manifest::{Manifest, Split};
use mm_data::Modality;
use mm_fusion::FusionConfig;
use mm_train::model::{HeadConfig, Positives};
use mm_train::run::{Run, RunConfig};

use serde_json::{json, Value};

use crate::run::ConfigArgs;

/// Options of `mm compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run with two or more modalities and a classification head; its fusion is replaced by
    /// each method in turn.
    #[command(flatten)]
    config: ConfigArgs,
    /// Fusion methods (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "concat,weighted_sum,product,gated,tensor,low_rank,attention"
    )]
    methods: Vec<String>,
    /// Width of the fused vector for the methods that have one.
    #[arg(long, default_value_t = 64)]
    dim: i64,
    /// Leave out the single-modality baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Leave out the cross-modal retrieval model (trained when there are two modalities).
    #[arg(long)]
    no_retrieval: bool,
    /// Output folder: one run folder per model and compare.json.
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print the table as JSON.
    #[arg(long)]
    json: bool,
}

/// The fusion table of `method` (its own defaults, `dim` where it has one).
fn fusion(method: &str, dim: i64) -> Result<FusionConfig> {
    let text = match method {
        "concat" => "method = \"concat\"".to_string(),
        "tensor" => "method = \"tensor\"\nproject = 16".to_string(),
        "weighted_sum" | "product" | "gated" | "low_rank" | "attention" => format!("method = \"{method}\"\ndim = {dim}"),
        other => bail!("--methods: `{other}` is not one of concat, weighted_sum, product, gated, tensor, low_rank, attention"),
    };
    Ok(toml::from_str(&text)?)
}

/// `manifest` with `modality` taken out of every sample.
fn without(manifest: &Manifest, modality: Modality) -> Result<Manifest> {
    let mut out = Manifest::new(manifest.root());
    for s in manifest.samples() {
        let mut s = s.clone();
        modality.remove_from(&mut s);
        out.push(s)?;
    }
    Ok(out)
}

/// Runs `mm compare`.
pub fn run(a: &Args) -> Result<()> {
    let base = a.config.load()?;
    let modalities = base.data.modalities();
    if modalities.len() < 2 {
        bail!(
            "{}: `mm compare` needs two or more modalities in [data] (it has {modalities:?})",
            a.config.config.display()
        );
    }
    if !matches!(base.model.named_heads()?.as_slice(), [(_, head)] if head.is_classifier()) {
        bail!(
            "{}: `mm compare` compares classifiers: one [model.head] of type = \"classification\"",
            a.config.config.display()
        );
    }
    let device = parse_device(&a.device)?;
    let mut variants: Vec<(String, RunConfig)> = Vec::new();
    let mut retrieval = None;
    for m in &a.methods {
        let mut c = base.clone();
        c.model.fusion = Some(fusion(m, a.dim)?);
        variants.push((m.clone(), c));
    }
    if !a.no_baselines {
        for m in &modalities {
            let mut c = base.clone();
            c.model.encoders.retain(|k, _| *m == k.as_str());
            c.model.fusion = Some(fusion("concat", a.dim)?);
            c.data.retain(&[*m]);
            variants.push((format!("{m} only"), c));
        }
    }
    if let [first, second] = modalities[..] {
        if !a.no_retrieval {
            // The same encoders, projected into one space and trained to match items of the same
            // label; the checkpoint is chosen by mean average precision by class, second to first.
            let mut c = base.clone();
            c.model.fusion = None;
            c.model.heads.clear();
            c.model.loss_weights.clear();
            // Pairs share a label, so every same-label item is a positive.
            c.model.head = Some(HeadConfig::Retrieval {
                pair: [first.to_string(), second.to_string()],
                dim: Some(a.dim),
                positives: Positives::Label,
            });
            c.train.select = Some(format!("{second}_to_{first}_class_map"));
            retrieval = Some(c);
        }
    }
    // Run folders of an earlier comparison are replaced; nothing else is ever deleted.
    let marker = a.out.join("compare.json");
    if a.out.is_dir() && std::fs::read_dir(&a.out)?.next().is_some() && !marker.is_file() {
        bail!("--out {}: the folder is not empty and holds no earlier comparison (compare.json); choose another", a.out.display());
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    mm_data::fs::write_atomic(&marker, serde_json::to_string_pretty(&json!({"config": a.config.config, "modalities": modalities, "rows": [], "running": true}))?.as_bytes())?;
    let mut rows = Vec::new();
    for (name, config) in variants {
        let (dir, trained, seconds, run) = train_quietly(&name, config, &a.out, device)?;
        let manifest = &trained.manifest;
        let accuracy = |m: Arc<Manifest>| -> Result<f64> {
            let metrics = run.evaluate(m, Split::Test)?;
            Ok(metrics.get("accuracy").and_then(Value::as_f64).unwrap_or(f64::NAN))
        };
        let test = accuracy(Arc::clone(manifest))?;
        let mut removed = serde_json::Map::new();
        let used = run.config.data.modalities();
        if used.len() > 1 {
            for m in &used {
                removed.insert(m.to_string(), json!(accuracy(Arc::new(without(manifest, *m)?))?));
            }
        }
        rows.push(json!({"model": name, "test_accuracy": test, "parameters": trained.parameters, "seconds": seconds, "without": removed, "run": dir}));
    }
    let mut retrieval_row = Value::Null;
    if let Some(config) = retrieval {
        let (dir, trained, seconds, run) = train_quietly("retrieval", config, &a.out, device)?;
        let metrics = run.evaluate(Arc::clone(&trained.manifest), Split::Test)?;
        let scores: serde_json::Map<String, Value> =
            metrics.into_iter().filter(|(k, _)| k.contains("_to_") || k == "gallery").collect();
        retrieval_row = json!({"model": "retrieval", "metrics": scores, "parameters": trained.parameters, "seconds": seconds, "run": dir});
    }
    let record = json!({"config": a.config.config, "modalities": modalities, "rows": rows, "retrieval": retrieval_row});
    mm_data::fs::write_atomic(
        &a.out.join("compare.json"),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    if a.json {
        println!("{record}");
        return Ok(());
    }
    print_table(&rows, &modalities, &a.out);
    if let [first, second] = modalities[..] {
        print_retrieval(&retrieval_row, first, second);
    }
    Ok(())
}

/// Recall@K both ways, by class and by exact pair.
fn print_retrieval(row: &Value, first: Modality, second: Modality) {
    let m = &row["metrics"];
    if m.is_null() {
        return;
    }
    println!(
        "\nretrieval ({} parameters, {:.0}s), test gallery of {}: Recall@1/5/10 and mAP",
        row["parameters"].as_i64().unwrap_or(0),
        row["seconds"].as_f64().unwrap_or(f64::NAN),
        m["gallery"].as_i64().unwrap_or(0)
    );
    let pct = |k: &str| {
        m[k].as_f64().map(|v| format!("{:5.1}%", 100.0 * v)).unwrap_or_else(|| "     -".into())
    };
    for (from, to) in [(second, first), (first, second)] {
        let d = format!("{from}_to_{to}");
        println!(
            "  {from} -> {to}: by class {} {} {} mAP {}; exact pair {} {} {}",
            pct(&format!("{d}_class_r1")),
            pct(&format!("{d}_class_r5")),
            pct(&format!("{d}_class_r10")),
            pct(&format!("{d}_class_map")),
            pct(&format!("{d}_r1")),
            pct(&format!("{d}_r5")),
            pct(&format!("{d}_r10"))
        );
    }
}

/// Trains one model of the comparison into `out/NAME` (replacing an earlier one), without
/// progress output; returns its folder, what training returned, the seconds it took and the
/// run reopened from its best checkpoint.
fn train_quietly(
    name: &str,
    mut config: RunConfig,
    out: &Path,
    device: tch::Device,
) -> Result<(PathBuf, mm_train::run::Trained, f64, Run)> {
    let dir = out.join(name.replace(' ', "-"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    config.train.verbose = false;
    config.train.progress = false;
    eprintln!("training {name} ...");
    let started = Instant::now();
    let trained = mm_train::run::train(&config, &dir, device, false)
        .with_context(|| format!("training {name}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let run = Run::open(&dir, None, device)?;
    Ok((dir, trained, seconds, run))
}

fn print_table(rows: &[Value], modalities: &[Modality], out: &Path) {
    let mut header = format!("{:<16}{:>10}{:>12}{:>9}", "model", "test acc", "parameters", "time");
    for m in modalities {
        header.push_str(&format!("{:>14}", format!("no {m}")));
    }
    println!("{header}");
    for r in rows {
        let mut line = format!(
            "{:<16}{:>9.1}%{:>12}{:>8.0}s",
            r["model"].as_str().unwrap_or_default(),
            100.0 * r["test_accuracy"].as_f64().unwrap_or(f64::NAN),
            r["parameters"].as_i64().unwrap_or(0),
            r["seconds"].as_f64().unwrap_or(f64::NAN)
        );
        for m in modalities {
            match r["without"][m.name()].as_f64() {
                Some(v) => line.push_str(&format!("{:>13.1}%", 100.0 * v)),
                None => line.push_str(&format!("{:>14}", "-")),
            }
        }
        println!("{line}");
    }
    println!("\n\"no X\": test accuracy with X removed from every test sample. Runs and compare.json in {}", out.display());
}

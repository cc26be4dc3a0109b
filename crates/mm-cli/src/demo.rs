//! `mm demo`: the main job on the embedded data, end to end.
//!
//! 1. writes the synthetic multimodal data set (`mm_datasets::synth`) as real files, with a few
//!    corrupted on purpose, and runs the cleaning pass over it;
//! 2. fits the normalisation statistics on the training split;
//! 3. trains the same kind of model on each modality alone (image, audio, caption) and on all
//!    three fused (concatenation), selecting each on the validation split;
//! 4. trains a caption-to-image retrieval model (CLIP-style);
//! 5. evaluates everything on the test split and prints a table beside the ceilings the data
//!    set guarantees: no single modality can pass about half, fusion can reach nearly all.
//!
//! Everything lands in the output folder: the data, the cleaning report, one run folder per
//! model (configuration, checkpoints, `metrics.jsonl`, `curves.svg`) and `report.json` /
//! `report.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use mm_data::clean::{clean, CleanConfig};
use mm_data::device::parse_device;
use mm_data::loader::{Loader, LoaderConfig};
use mm_data::manifest::{Manifest, Split};
use mm_data::mel::MelConfig;
use mm_data::pipeline::{AudioSpec, ImageSpec, Pipeline, TextSpec};
use mm_data::text::{VocabBuilder, WordTokenizer};
use mm_data::Modality;
use mm_datasets::synth::{generate, SynthConfig, CLASSES};
use mm_train::model::{DataShape, Model, ModelConfig};
use mm_train::train::{evaluate, fit, TrainConfig};
use serde_json::{json, Value};
use tch::{nn, Device};

/// Arguments of `mm demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder (data, runs, report); an earlier demo's folder is replaced.
    #[arg(long, default_value = "mm-demo")]
    out: PathBuf,
    /// Seed of the data, the order and the initialisation: the same seed gives the same table
    /// on the CPU.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Samples in the synthetic data set (70 % train, 15 % validation, 15 % test).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    samples: u64,
    /// Training epochs of each model.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    epochs: u64,
    /// Image size, pixels.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(28..=512))]
    image_size: u64,
}

/// One model of the table: its name, encoders (modality → encoder TOML) and whether it fuses.
struct Run {
    name: &'static str,
    modalities: &'static [Modality],
}

const IMAGE: &str = "kind = \"image\"\narch = \"lenet\"";
const AUDIO: &str = "kind = \"audio\"\nbackbone = { type = \"cnn\", channels = [16, 32] }";
const TEXT: &str = "kind = \"text\"\ndim = 32";

fn encoder(modality: Modality) -> &'static str {
    match modality {
        Modality::Image => IMAGE,
        Modality::Audio => AUDIO,
        _ => TEXT,
    }
}

fn model_config(modalities: &[Modality]) -> Result<ModelConfig> {
    let mut text = String::new();
    for &m in modalities {
        text.push_str(&format!("[encoders.{m}]\n{}\n", encoder(m)));
    }
    text.push_str(
        "[fusion]\nmethod = \"concat\"\n[head]\ntype = \"classification\"\nhidden = [64]\n",
    );
    Ok(toml::from_str(&text)?)
}

/// The pipeline restricted to `modalities` (the others are not decoded at all).
fn only(pipeline: &Pipeline, modalities: &[Modality]) -> Pipeline {
    let mut p = pipeline.clone();
    if !modalities.contains(&Modality::Image) {
        p.image = None;
    }
    if !modalities.contains(&Modality::Audio) {
        p.audio = None;
    }
    if !modalities.contains(&Modality::Text) {
        p.text = None;
    }
    p
}

/// Trains a model and evaluates its best checkpoint on the test split.
fn train_and_test(
    config: &ModelConfig,
    manifest: &Arc<Manifest>,
    pipeline: Pipeline,
    train: &TrainConfig,
    dir: &Path,
    device: Device,
) -> Result<(serde_json::Map<String, Value>, f64)> {
    let started = Instant::now();
    let pipeline = Arc::new(pipeline);
    let vs = nn::VarStore::new(device);
    tch::manual_seed(train.seed as i64);
    let model = Model::new(&vs.root(), config, &DataShape::from_pipeline(&pipeline, vec![]))?;
    fit(&model, &vs, Arc::clone(manifest), Arc::clone(&pipeline), train, dir, false)?;
    mm_train::checkpoint::load_weights(&mm_train::train::checkpoint_dir(dir), "best", &vs)?;
    let test = Loader::new(
        Arc::clone(manifest),
        Split::Test,
        pipeline,
        LoaderConfig { batch_size: 128, ..LoaderConfig::evaluation() },
    )?;
    Ok((evaluate(&model, &test, device)?, started.elapsed().as_secs_f64()))
}

/// Runs `mm demo`.
pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let device = parse_device(&args.device)?;
    let out = &args.out;
    let synth = SynthConfig {
        samples: args.samples as usize,
        image_size: args.image_size as usize,
        frame_size: 16,
        frames: 4,
        duration: 0.5,
        corrupt_images: 0.005,
        empty_audio: 0.005,
        empty_text: 0.005,
        seed: args.seed,
        ..SynthConfig::default()
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let data = out.join("data");
    let summary = generate(&data, &synth, true).context("writing the synthetic data set")?;
    println!(
        "mm demo: {} samples of images, sounds and captions written to {}",
        summary.samples,
        data.display()
    );
    let c = &summary.ceilings;
    println!(
        "  label = shape outline x pitch (4 classes): the image or the caption alone can reach {:.0}%, the audio alone {:.0}%",
        100.0 * c.classify_image,
        100.0 * c.classify_audio
    );

    let raw = Manifest::read(data.join("manifest.jsonl"))?;
    let (kept, report) = clean(&raw, &CleanConfig::default())?;
    report.save(out.join("clean-report.json"))?;
    println!(
        "  cleaning: {} of {} samples kept ({} dropped: {}; details in clean-report.json)",
        report.kept,
        report.total,
        report.dropped,
        {
            let counts: Vec<String> =
                report.counts().iter().map(|(r, n)| format!("{n} {r}")).collect();
            if counts.is_empty() {
                "none".to_string()
            } else {
                counts.join(", ")
            }
        }
    );
    let manifest = Arc::new(kept);

    let tokenizer = WordTokenizer::default();
    let vocab = VocabBuilder::default()
        .build(&tokenizer, manifest.split(Split::Train).filter_map(|s| s.text.as_deref()));
    let mut pipeline = Pipeline::new(CLASSES.iter().map(|c| c.to_string()).collect());
    let size = args.image_size as usize;
    pipeline.image = Some(ImageSpec::new((size, size)));
    pipeline.audio = Some(AudioSpec::new(&MelConfig { n_mels: 32, ..MelConfig::default() })?);
    pipeline.text = Some(TextSpec::words(tokenizer, vocab, 40));
    pipeline.seed = args.seed;
    pipeline.fit_statistics(&manifest)?;

    let train = TrainConfig {
        epochs: args.epochs,
        batch_size: 32,
        lr: 3e-3,
        seed: args.seed,
        ..TrainConfig::default()
    };
    let runs = [
        Run { name: "image only", modalities: &[Modality::Image] },
        Run { name: "audio only", modalities: &[Modality::Audio] },
        Run { name: "caption only", modalities: &[Modality::Text] },
        Run { name: "fused", modalities: &[Modality::Image, Modality::Audio, Modality::Text] },
    ];
    let mut rows = Vec::new();
    for run in &runs {
        let dir = out.join("runs").join(run.name.replace(' ', "-"));
        eprintln!("training {} ({} epochs) ...", run.name, args.epochs);
        let config = model_config(run.modalities)?;
        let (metrics, seconds) = train_and_test(
            &config,
            &manifest,
            only(&pipeline, run.modalities),
            &train,
            &dir,
            device,
        )?;
        let ceiling = match run.modalities {
            [Modality::Audio] => c.classify_audio,
            [_] => c.classify_image,
            _ => 1.0,
        };
        rows.push((run, metrics, ceiling, seconds));
    }

    // Caption-to-image retrieval on the same files (retrieval.jsonl pairs them).
    eprintln!("training caption-to-image retrieval ({} epochs) ...", args.epochs);
    let pairs = Manifest::read(data.join("retrieval.jsonl"))?;
    let (pairs, _) = clean(&pairs, &CleanConfig::default())?;
    let pairs = Arc::new(pairs);
    let retrieval: ModelConfig = toml::from_str(&format!(
        "[encoders.text]\n{TEXT}\n[encoders.image]\n{IMAGE}\n[head]\ntype = \"retrieval\"\npair = [\"text\", \"image\"]\ndim = 64\n"
    ))?;
    let mut rp = only(&pipeline, &[Modality::Image, Modality::Text]);
    rp.classes = Vec::new();
    let retrieval_train = TrainConfig { select: Some("text_to_image_mrr".into()), ..train.clone() };
    let (r, r_seconds) = train_and_test(
        &retrieval,
        &pairs,
        rp,
        &retrieval_train,
        &out.join("runs/retrieval"),
        device,
    )?;

    println!();
    println!("{:<16}{:>15}{:>11}{:>10}", "model", "test accuracy", "ceiling", "time");
    let mut report_rows = Vec::new();
    for (run, metrics, ceiling, seconds) in &rows {
        let acc = metrics.get("accuracy").and_then(Value::as_f64).unwrap_or(f64::NAN);
        println!(
            "{:<16}{:>14.1}%{:>10.0}%{:>9.0}s",
            run.name,
            100.0 * acc,
            100.0 * ceiling,
            seconds
        );
        report_rows.push(json!({"model": run.name, "modalities": run.modalities, "test": metrics, "ceiling": ceiling, "seconds": seconds}));
    }
    let get = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let gallery = get("gallery");
    println!(
        "\ncaption -> image retrieval over {gallery:.0} test pairs: R@1 {:.1}%, R@5 {:.1}%, R@10 {:.1}% (oracle ceilings {:.0}%, {:.0}%, {:.0}%; chance R@1 {:.1}%)",
        100.0 * get("text_to_image_r1"),
        100.0 * get("text_to_image_r5"),
        100.0 * get("text_to_image_r10"),
        100.0 * c.retrieval_recall[0],
        100.0 * c.retrieval_recall[1],
        100.0 * c.retrieval_recall[2],
        100.0 / gallery.max(1.0)
    );
    let report = json!({
        "samples": summary.samples,
        "seed": args.seed,
        "epochs": args.epochs,
        "device": format!("{device:?}"),
        "classification": report_rows,
        "retrieval": {"test": r, "oracle_recall": c.retrieval_recall, "seconds": r_seconds},
        "seconds": started.elapsed().as_secs_f64(),
    });
    mm_data::fs::write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    let mut md =
        String::from("# mm demo\n\n| model | test accuracy | ceiling |\n| --- | ---: | ---: |\n");
    for (run, metrics, ceiling, _) in &rows {
        let acc = metrics.get("accuracy").and_then(Value::as_f64).unwrap_or(f64::NAN);
        md.push_str(&format!("| {} | {:.1}% | {:.0}% |\n", run.name, 100.0 * acc, 100.0 * ceiling));
    }
    md.push_str(&format!(
        "\nCaption to image retrieval, {gallery:.0} test pairs: R@1 {:.1}%, R@5 {:.1}%, R@10 {:.1}%.\n\nCurves: `runs/*/curves.svg`; checkpoints: `runs/*/checkpoints/`.\n",
        100.0 * get("text_to_image_r1"),
        100.0 * get("text_to_image_r5"),
        100.0 * get("text_to_image_r10")
    ));
    mm_data::fs::write_atomic(&out.join("report.md"), md.as_bytes())?;
    println!(
        "\nreport, curves and checkpoints in {}; done in {:.0} s on {device:?}",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

//! `mm data`: commands on data sets. `synth` writes the embedded synthetic data set, `check`
//! runs the cleaning pass and reports what it would drop, `stats` computes the normalisation
//! statistics a run would use, and `split` draws seeded (stratified) splits.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use clap::{Args as ClapArgs, Subcommand};
use mm_data::clean::{clean, CleanConfig, Modality};
use mm_data::manifest::{Manifest, Split};
use mm_data::normalize::Normalizer;
use mm_data::pipeline::TextEncoder;
use mm_datasets::avdigits::{convert, AvDigitsConfig};
use mm_datasets::synth::{generate, SynthConfig};
use serde_json::json;

use crate::run::ConfigArgs;

/// `mm data` and its subcommands.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Write the synthetic multimodal data set (images, audio, captions, videos, records) with
    /// its manifests, ground truth and per-task ceilings.
    Synth(SynthArgs),
    /// Read every file a manifest names and report what is unusable (unreadable or corrupt
    /// files, empty texts, missing modalities, unknown labels) per reason and sample.
    Check(CheckArgs),
    /// Compute the normalisation statistics (and vocabulary) a run's [data] would use, from
    /// its training split.
    Stats(StatsArgs),
    /// Assign train/val/test splits again, seeded and stratified by label.
    Split(SplitArgs),
    /// Pair MNIST images with spoken digits (FSDD) of the same digit into a manifest, with
    /// optional degradation of either modality.
    AvDigits(AvDigitsArgs),
    /// Compose spoken digit sequences (FSDD recordings of one speaker with gaps and noise) with
    /// their transcripts, test speakers unseen in training: data for speech recognition.
    Spoken(SpokenArgs),
    /// FSDD's recordings one word each ("three"), the speaker as the label, every speaker in
    /// every split (for speech synthesis: `mm train-tts`).
    Words(WordsArgs),
    /// Write a manifest's samples as WebDataset-style tar shards (train/000000.tar, ... and
    /// shards.json), cleaned first; a run reads them with `[data] manifest = "OUT/shards.json"`.
    Shard(ShardArgs),
    /// Write a manifest's videos (samples listing `frames`) as video files through FFmpeg
    /// (H.264 mp4 by default), their sound muxed in; OUT/manifest.jsonl names them as `video`.
    Videos(VideosArgs),
}

/// Options of `mm data videos`.
#[derive(Debug, ClapArgs)]
struct VideosArgs {
    /// The manifest whose samples list `frames`.
    manifest: PathBuf,
    /// The folder to write (atomically): videos/, files/ (other files) and manifest.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// FFmpeg's encoder: libx264 (mp4), mjpeg (avi), libvpx-vp9 (webm), or another with --ext.
    #[arg(long, default_value = "libx264")]
    codec: String,
    /// The container's file extension (default: the codec's usual one).
    #[arg(long)]
    ext: Option<String>,
    /// Frames per second of the videos.
    #[arg(long, default_value_t = 8.0)]
    fps: f64,
    /// Constant quality (x264's and libvpx's -crf: 0 lossless, 23 x264's default); the
    /// default keeps a data set's pixels close.
    #[arg(long, default_value_t = 15)]
    crf: u32,
    /// Keep each sample's sound as its own file instead of muxing it into the video.
    #[arg(long)]
    no_audio: bool,
    /// Replace an earlier folder written by this command.
    #[arg(long)]
    force: bool,
}

/// Options of `mm data spoken`.
#[derive(Debug, ClapArgs)]
struct SpokenArgs {
    #[command(flatten)]
    io: FsddOut,
    /// Utterances in the training split.
    #[arg(long, default_value_t = 2000)]
    train: usize,
    /// Utterances in the validation split.
    #[arg(long, default_value_t = 200)]
    val: usize,
    /// Utterances in the test split.
    #[arg(long, default_value_t = 400)]
    test: usize,
    /// Digits per utterance, at least.
    #[arg(long, default_value_t = 1)]
    min_digits: usize,
    /// Digits per utterance, at most.
    #[arg(long, default_value_t = 5)]
    max_digits: usize,
    /// White noise at an SNR drawn from LO..HI dB, or `none` for clean utterances.
    #[arg(long, default_value = "10..30", allow_hyphen_values = true)]
    snr: String,
    /// Validation speakers (comma-separated).
    #[arg(long, default_value = "lucas", value_delimiter = ',')]
    val_speakers: Vec<String>,
    /// Test speakers (comma-separated).
    #[arg(long, default_value = "nicolas", value_delimiter = ',')]
    test_speakers: Vec<String>,
    /// Seed of everything drawn.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Options of `mm data words`.
#[derive(Debug, ClapArgs)]
struct WordsArgs {
    #[command(flatten)]
    io: FsddOut,
}

/// Where FSDD is read from and where a data set made from it goes.
#[derive(Debug, ClapArgs)]
struct FsddOut {
    /// FSDD's release archive (`.tar.gz`) or a folder of its WAV files.
    #[arg(long)]
    fsdd: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Replace an earlier data set of the same kind in the output folder.
    #[arg(long)]
    force: bool,
}

/// Options of `mm data shard`.
#[derive(Debug, ClapArgs)]
struct ShardArgs {
    /// The manifest to shard.
    manifest: PathBuf,
    /// The folder of shards to write (atomically).
    #[arg(long)]
    out: PathBuf,
    /// Samples per shard at most.
    #[arg(long, default_value_t = 1000)]
    max_samples: usize,
    /// A shard is closed once it holds this many MiB.
    #[arg(long, default_value_t = 1024)]
    max_mb: u64,
    /// Seed of the order of the samples within each split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replace an earlier folder of shards.
    #[arg(long)]
    force: bool,
    /// Shard the manifest as it is, without the cleaning pass (`mm data check`) that otherwise
    /// leaves out unusable samples (and reports them in OUT/clean-report.json).
    #[arg(long)]
    no_clean: bool,
}

/// Options of `mm data av-digits`.
#[derive(Debug, ClapArgs)]
struct AvDigitsArgs {
    /// Folder with MNIST's four idx files (`.gz` or not).
    #[arg(long)]
    mnist: PathBuf,
    /// FSDD's release archive (`.tar.gz`) or a folder of its WAV files.
    #[arg(long)]
    fsdd: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Replace an earlier av-digits data set in the output folder.
    #[arg(long)]
    force: bool,
    /// Training images per digit (0: all 6000 or so).
    #[arg(long, default_value_t = 500)]
    train_per_digit: usize,
    /// Test images per digit (0: all).
    #[arg(long, default_value_t = 100)]
    test_per_digit: usize,
    /// Share of each digit's training images held out for validation.
    #[arg(long, default_value_t = 0.1)]
    val: f64,
    /// Gaussian pixel noise (standard deviation, pixels in [0, 1]).
    #[arg(long, default_value_t = 0.0)]
    image_noise: f64,
    /// Side of a black square hiding part of each image, as a share of the side.
    #[arg(long, default_value_t = 0.0)]
    occlusion: f64,
    /// White noise on each recording at this SNR, dB (default: clean).
    #[arg(long, allow_hyphen_values = true)]
    audio_snr: Option<f64>,
    /// Seed of the pairing, the split and the degradation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Options of `mm data check`.
#[derive(Debug, ClapArgs)]
struct CheckArgs {
    /// The manifest (JSONL or CSV).
    manifest: PathBuf,
    /// The class set (comma-separated); other labels are reported.
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// Modalities every sample must have (comma-separated: image,audio,text,frames,features).
    #[arg(long, value_delimiter = ',')]
    require: Vec<String>,
    /// Write the full report (JSON) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Exit with status 1 when any sample would be dropped.
    #[arg(long)]
    strict: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Frames a clip takes from each `video` file: fewer is reported.
    #[arg(long, default_value_t = 16)]
    clip_frames: usize,
    /// Seconds FFmpeg may take for one video file before it is killed.
    #[arg(long, default_value_t = 120.0)]
    timeout_s: f64,
}

/// Options of `mm data stats`.
#[derive(Debug, ClapArgs)]
struct StatsArgs {
    /// The run's configuration; its [data] table is used.
    #[command(flatten)]
    config: ConfigArgs,
    /// Write the statistics files (and vocab.txt) into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `mm data split`.
#[derive(Debug, ClapArgs)]
struct SplitArgs {
    /// The manifest to split.
    manifest: PathBuf,
    /// The new manifest; it must sit in the same folder (the sample paths are relative to it).
    #[arg(long)]
    out: PathBuf,
    /// Share of the validation split.
    #[arg(long, default_value_t = 0.15)]
    val: f64,
    /// Share of the test split.
    #[arg(long, default_value_t = 0.15)]
    test: f64,
    /// Seed of the draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Split without keeping each label's share per split.
    #[arg(long)]
    no_stratify: bool,
}

/// Options of `mm data synth`; every default is the data set `mm demo` uses.
#[derive(Debug, ClapArgs)]
struct SynthArgs {
    /// Output folder (created; must not exist or be empty, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace an earlier synthetic data set in the output folder.
    #[arg(long)]
    force: bool,
    /// Number of samples.
    #[arg(long, default_value_t = SynthConfig::default().samples)]
    samples: usize,
    /// Image width and height, pixels.
    #[arg(long, default_value_t = SynthConfig::default().image_size)]
    image_size: usize,
    /// Video frame width and height, pixels.
    #[arg(long, default_value_t = SynthConfig::default().frame_size)]
    frame_size: usize,
    /// Frames per video.
    #[arg(long, default_value_t = SynthConfig::default().frames)]
    frames: usize,
    /// Audio sample rate, Hz.
    #[arg(long, default_value_t = SynthConfig::default().sample_rate)]
    sample_rate: u32,
    /// Audio length, seconds.
    #[arg(long, default_value_t = SynthConfig::default().duration)]
    duration: f64,
    /// Noise level: pixel noise, clutter and audio noise (0 = clean).
    #[arg(long, default_value_t = SynthConfig::default().noise)]
    noise: f64,
    /// How many times more frequent the first class is than the last (1 = balanced).
    #[arg(long, default_value_t = SynthConfig::default().imbalance)]
    imbalance: f64,
    /// Share of positives in the diagnosis task.
    #[arg(long, default_value_t = SynthConfig::default().positive_rate)]
    positive_rate: f64,
    /// Probability that each of image, audio and text is missing from a sample.
    #[arg(long, default_value_t = SynthConfig::default().missing)]
    missing: f64,
    /// Share of images written truncated (for the cleaning report).
    #[arg(long, default_value_t = SynthConfig::default().corrupt_images)]
    corrupt_images: f64,
    /// Share of audio files written with no samples.
    #[arg(long, default_value_t = SynthConfig::default().empty_audio)]
    empty_audio: f64,
    /// Share of captions written empty.
    #[arg(long, default_value_t = SynthConfig::default().empty_text)]
    empty_text: f64,
    /// Share of samples in the validation split.
    #[arg(long, default_value_t = SynthConfig::default().val)]
    val: f64,
    /// Share of samples in the test split.
    #[arg(long, default_value_t = SynthConfig::default().test)]
    test: f64,
    /// Seed: the same seed and options give byte-identical files.
    #[arg(long, default_value_t = SynthConfig::default().seed)]
    seed: u64,
    /// Print the summary (synth.json) instead of the text report.
    #[arg(long)]
    json: bool,
}

/// Runs `mm data ...`.
pub fn run(args: &Args) -> Result<()> {
    match &args.command {
        DataCommand::Synth(a) => synth(a),
        DataCommand::Check(a) => check(a),
        DataCommand::Stats(a) => stats(a),
        DataCommand::Split(a) => split(a),
        DataCommand::AvDigits(a) => av_digits(a),
        DataCommand::Shard(a) => shard(a),
        DataCommand::Videos(a) => {
            let start = Instant::now();
            let manifest = Manifest::read(&a.manifest)?;
            if manifest.samples().iter().all(|s| s.frames.is_empty()) {
                bail!(
                    "{}: no sample lists `frames`: there is nothing to encode",
                    a.manifest.display()
                );
            }
            let options = mm_data::video::EncodeOptions {
                codec: a.codec.clone(),
                extension: a.ext.clone(),
                fps: a.fps,
                crf: Some(a.crf),
                with_audio: !a.no_audio,
                force: a.force,
            };
            let done = mm_data::video::encode_manifest(&manifest, &a.out, &options)?;
            println!(
                "wrote {} videos ({} with sound, {}) and {} other files to {} in {:.1} s; manifest {}",
                done.videos,
                done.with_audio,
                a.codec,
                done.copied,
                a.out.display(),
                start.elapsed().as_secs_f64(),
                a.out.join(mm_data::video::ENCODED_MANIFEST).display()
            );
            Ok(())
        }
        DataCommand::Spoken(a) => spoken(a),
        DataCommand::Words(a) => {
            let start = Instant::now();
            let s = mm_datasets::spoken::words(&a.io.fsdd, &a.io.out, a.io.force)?;
            println!(
                "wrote {} recordings to {} in {:.1} s: {} train, {} val, {} test; speakers {}",
                s.splits.iter().sum::<usize>(),
                a.io.out.display(),
                start.elapsed().as_secs_f64(),
                s.splits[0],
                s.splits[1],
                s.splits[2],
                s.speakers.join(", ")
            );
            Ok(())
        }
    }
}

fn spoken(a: &SpokenArgs) -> Result<()> {
    let snr_db = match a.snr.trim() {
        "none" => None,
        range => {
            let (lo, hi) = range
                .split_once("..")
                .ok_or_else(|| anyhow!("--snr {range:?}: write LO..HI (dB), or none"))?;
            let parse = |v: &str| {
                v.trim()
                    .parse::<f64>()
                    .map_err(|_| anyhow!("--snr {range:?}: {v:?} is not a number"))
            };
            Some((parse(lo)?, parse(hi)?))
        }
    };
    let config = mm_datasets::spoken::SpokenConfig {
        utterances: [a.train, a.val, a.test],
        digits: (a.min_digits, a.max_digits),
        snr_db,
        val_speakers: a.val_speakers.clone(),
        test_speakers: a.test_speakers.clone(),
        seed: a.seed,
        ..Default::default()
    };
    let start = Instant::now();
    let s = mm_datasets::spoken::compose(&a.io.fsdd, &a.io.out, &config, a.io.force)?;
    println!(
        "wrote {} utterances to {} in {:.1} s: {} train ({:.0} s of audio; {}), {} val ({}), {} test ({})",
        s.splits.iter().sum::<usize>(),
        a.io.out.display(),
        start.elapsed().as_secs_f64(),
        s.splits[0],
        s.seconds[0],
        s.speakers[0].join(", "),
        s.splits[1],
        s.speakers[1].join(", "),
        s.splits[2],
        s.speakers[2].join(", ")
    );
    Ok(())
}

fn shard(a: &ShardArgs) -> Result<()> {
    let manifest = Manifest::read(&a.manifest)?;
    let (manifest, report) = if a.no_clean {
        (manifest, None)
    } else {
        let (kept, report) = clean(&manifest, &CleanConfig::default())?;
        (kept, Some(report))
    };
    let options = mm_data::shards::ShardOptions {
        max_samples: a.max_samples,
        max_bytes: a.max_mb.saturating_mul(1 << 20),
        seed: a.seed,
        force: a.force,
    };
    let index = mm_data::shards::write_shards(&manifest, &a.out, &options)?;
    if let Some(report) = &report {
        report.save(a.out.join("clean-report.json"))?;
        if report.dropped > 0 {
            println!(
                "cleaning: {} (reasons in {})",
                report.summary(),
                a.out.join("clean-report.json").display()
            );
        }
    }
    for (split, shards) in &index.splits {
        let bytes: u64 = shards.iter().map(|s| s.bytes).sum();
        println!(
            "{split}: {} samples in {} shard(s), {:.1} MiB",
            shards.iter().map(|s| s.samples).sum::<usize>(),
            shards.len(),
            bytes as f64 / (1 << 20) as f64
        );
    }
    println!("{} (use it as [data] manifest)", a.out.join(mm_data::shards::INDEX_FILE).display());
    Ok(())
}

fn av_digits(a: &AvDigitsArgs) -> Result<()> {
    let config = AvDigitsConfig {
        train_per_digit: (a.train_per_digit > 0).then_some(a.train_per_digit),
        test_per_digit: (a.test_per_digit > 0).then_some(a.test_per_digit),
        val: a.val,
        image_noise: a.image_noise,
        occlusion: a.occlusion,
        audio_snr_db: a.audio_snr,
        seed: a.seed,
    };
    let start = Instant::now();
    let s = convert(&a.mnist, &a.fsdd, &a.out, &config, a.force)?;
    println!(
        "wrote {} samples to {} in {:.1} s: {} train, {} val, {} test; {} training and {} test recordings of FSDD",
        s.splits.iter().sum::<usize>(),
        a.out.display(),
        start.elapsed().as_secs_f64(),
        s.splits[0],
        s.splits[1],
        s.splits[2],
        s.recordings[0],
        s.recordings[1]
    );
    Ok(())
}

fn check(a: &CheckArgs) -> Result<()> {
    let manifest = Manifest::read(&a.manifest)?;
    let mut required = Vec::new();
    for r in &a.require {
        required.push(r.parse::<Modality>().map_err(|e| anyhow!("--require: {e}"))?);
    }
    let timeout = std::time::Duration::try_from_secs_f64(a.timeout_s)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| anyhow!("--timeout-s {}: a positive number of seconds", a.timeout_s))?;
    mm_data::video::set_timeout(timeout);
    let clip = mm_data::pipeline::ClipSpec { frames: a.clip_frames.max(1), fps: None, timeout };
    let config = CleanConfig {
        classes: (!a.classes.is_empty()).then(|| a.classes.clone()),
        required,
        clip,
        ..CleanConfig::default()
    };
    let (_, report) = clean(&manifest, &config)?;
    if let Some(path) = &a.report {
        report.save(path)?;
    }
    if a.json {
        println!("{}", report.to_json());
    } else {
        println!("{}: {}", a.manifest.display(), report.summary());
        for f in report.findings.iter().take(20) {
            println!("  {}: {} ({})", f.id, f.reason.as_str(), f.detail);
        }
        if report.findings.len() > 20 {
            println!(
                "  ... {} more{}",
                report.findings.len() - 20,
                a.report.as_ref().map_or(String::new(), |p| format!(" in {}", p.display()))
            );
        }
    }
    if a.strict && report.dropped > 0 {
        bail!("{} of {} samples would be dropped", report.dropped, report.total);
    }
    Ok(())
}

fn stats(a: &StatsArgs) -> Result<()> {
    let mut config = a.config.load()?;
    let prepared = config.data.prepare(config.train.seed)?;
    let p = &prepared.pipeline;
    let mut out = serde_json::Map::new();
    let stat = |n: &Normalizer| json!({"mean": n.mean, "std": n.std, "count": n.count});
    for (m, n) in p.statistics() {
        if let Some(n) = n {
            out.insert(m.to_string(), stat(n));
        }
    }
    if let Some(TextEncoder::Words { vocab, .. }) = p.text.as_ref().map(|t| &t.encoder) {
        out.insert("vocabulary".into(), json!(vocab.len()));
    }
    if let Some(vocab) = p.transcript.as_ref().and_then(|t| t.vocab()) {
        out.insert("transcript_vocabulary".into(), json!(vocab.len()));
    }
    out.insert("classes".into(), json!(config.data.classes));
    out.insert("train_samples".into(), json!(prepared.manifest.split(Split::Train).count()));
    if let Some(dir) = &a.out {
        p.save_statistics(dir)?;
        if let Some(TextEncoder::Words { vocab, .. }) = p.text.as_ref().map(|t| &t.encoder) {
            vocab.save(dir.join("vocab.txt"))?;
        }
        if let Some(vocab) = p.transcript.as_ref().and_then(|t| t.vocab()) {
            vocab.save(dir.join(mm_data::config::TRANSCRIPT_VOCAB))?;
        }
    }
    if a.json {
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    let short = |v: &[f32]| -> String {
        let shown: Vec<String> = v.iter().take(6).map(|x| format!("{x:.4}")).collect();
        if v.len() > 6 {
            format!("[{}, ... {} values]", shown.join(", "), v.len())
        } else {
            format!("[{}]", shown.join(", "))
        }
    };
    println!("statistics of the training split ({} samples):", out["train_samples"]);
    for (name, v) in &out {
        if let (Some(mean), Some(std)) = (v.get("mean"), v.get("std")) {
            let mean: Vec<f32> = serde_json::from_value(mean.clone())?;
            let std: Vec<f32> = serde_json::from_value(std.clone())?;
            println!(
                "  {name:<9} mean {}\n  {:<9} std  {} (from {} rows)",
                short(&mean),
                "",
                short(&std),
                v["count"]
            );
        }
    }
    if let Some(v) = out.get("vocabulary") {
        println!("  text      vocabulary of {v} words");
    }
    println!("  classes   {}", config.data.classes.join(", "));
    if let Some(dir) = &a.out {
        println!("written to {}", dir.display());
    }
    Ok(())
}

fn split(a: &SplitArgs) -> Result<()> {
    let folder =
        |p: &Path| std::path::absolute(p).ok().and_then(|p| p.parent().map(Path::to_path_buf));
    if folder(&a.manifest) != folder(&a.out) {
        bail!("--out {}: the new manifest must sit beside {} (the sample paths are relative to its folder)", a.out.display(), a.manifest.display());
    }
    if std::path::absolute(&a.manifest).ok() == std::path::absolute(&a.out).ok() {
        bail!("--out {}: write the new splits beside the manifest, not over it (its own splits would be lost)", a.out.display());
    }
    let manifest = Manifest::read(&a.manifest)?;
    let split = manifest.resplit(a.val, a.test, a.seed, !a.no_stratify)?;
    split.write(&a.out)?;
    let count = |s: Split| split.split(s).count();
    println!(
        "{}: {} train, {} val, {} test (seed {}{})",
        a.out.display(),
        count(Split::Train),
        count(Split::Val),
        count(Split::Test),
        a.seed,
        if a.no_stratify { "" } else { ", stratified by label" }
    );
    Ok(())
}

fn synth(a: &SynthArgs) -> Result<()> {
    let config = SynthConfig {
        samples: a.samples,
        image_size: a.image_size,
        frame_size: a.frame_size,
        frames: a.frames,
        sample_rate: a.sample_rate,
        duration: a.duration,
        noise: a.noise,
        imbalance: a.imbalance,
        positive_rate: a.positive_rate,
        missing: a.missing,
        corrupt_images: a.corrupt_images,
        empty_audio: a.empty_audio,
        empty_text: a.empty_text,
        val: a.val,
        test: a.test,
        seed: a.seed,
    };
    let start = Instant::now();
    let s = generate(&a.out, &config, a.force)?;
    let elapsed = start.elapsed().as_secs_f64();
    if a.json {
        let text = std::fs::read_to_string(a.out.join("synth.json"))?;
        println!("{}", text.trim_end());
        return Ok(());
    }
    let c = &s.ceilings;
    println!("wrote {} samples to {} in {elapsed:.1} s", s.samples, a.out.display());
    println!("  splits: {} train, {} val, {} test", s.splits[0], s.splits[1], s.splits[2]);
    println!(
        "  missing: {} images, {} audio, {} captions",
        s.missing[0], s.missing[1], s.missing[2]
    );
    println!(
        "  corrupted on purpose: {} truncated images, {} empty audio, {} empty captions (ids in synth.json)",
        s.corrupt_images.len(),
        s.empty_audio.len(),
        s.empty_text.len()
    );
    println!("tasks (ceilings on the test split, see docs/SYNTHETIC.md):");
    println!(
        "  manifest.jsonl   shape x pitch, 4 classes: image/text/frames alone <= {:.3}, audio alone <= {:.3}, fused up to 1",
        c.classify_image, c.classify_audio
    );
    println!(
        "  video.jsonl      direction, 4 classes: order-free <= {:.2}, ordered up to 1",
        c.video_unordered
    );
    println!(
        "  retrieval.jsonl  caption -> image, oracle R@1 {:.3}, R@5 {:.3}, R@10 {:.3}",
        c.retrieval_recall[0], c.retrieval_recall[1], c.retrieval_recall[2]
    );
    println!(
        "  sentiment.jsonl  regression, MSE >= {:.4} text alone, >= {:.4} image alone, {:.4} fused",
        c.sentiment_mse[0], c.sentiment_mse[1], c.sentiment_mse[2]
    );
    println!(
        "  diagnosis.jsonl  binary, AUROC <= {:.3} image alone, <= {:.3} record alone, {:.3} fused",
        c.diagnosis_auroc[0], c.diagnosis_auroc[1], c.diagnosis_auroc[2]
    );
    Ok(())
}

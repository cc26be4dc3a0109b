//! `mm data`: commands on data sets. `mm data synth` writes the embedded synthetic data set.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Args as ClapArgs, Subcommand};
use mm_data::synth::{generate, SynthConfig};

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
    }
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
    println!("  missing: {} images, {} audio, {} captions", s.missing[0], s.missing[1], s.missing[2]);
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
    println!("  video.jsonl      direction, 4 classes: order-free <= {:.2}, ordered up to 1", c.video_unordered);
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

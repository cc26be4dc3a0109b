//! `mm caption`: the text a caption run (`[model.head] type = "caption"`) writes for image,
//! audio or video files.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use mm_data::device::parse_device;
use mm_train::run::Run;

/// Options of `mm caption`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files to describe, each one sample; a sample of several modalities joins its files with
    /// `+` (`photo.png+sound.wav`). Images, audio and video are told apart by extension.
    #[arg(required = true)]
    samples: Vec<String>,
    /// The caption run (`[model.head] type = "caption"`).
    #[arg(long)]
    run: PathBuf,
    /// The checkpoint to use (default: the run's best).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Beams (1 writes greedily; default: the run's `beam`).
    #[arg(long)]
    beam: Option<usize>,
    /// One JSON object per sample: its files, the caption, the time taken.
    #[arg(long)]
    json: bool,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// `FILE` or `FILE+FILE...`: a name that is an existing file is taken whole, even with a `+`.
fn files(sample: &str) -> Vec<PathBuf> {
    if std::path::Path::new(sample).exists() || !sample.contains('+') {
        vec![PathBuf::from(sample)]
    } else {
        sample.split('+').map(PathBuf::from).collect()
    }
}

/// `mm caption`: a sample that cannot be read is reported and the others go on; the command
/// then fails, saying how many were lost.
pub fn run(a: &Args) -> Result<()> {
    if let Some(beam) = a.beam.filter(|b| *b == 0 || *b > mm_train::heads::MAX_BEAM) {
        anyhow::bail!("--beam {beam}: give 1 (greedy) to {} beams", mm_train::heads::MAX_BEAM);
    }
    let run = Run::open(&a.run, a.checkpoint.as_deref(), parse_device(&a.device)?)?;
    let samples: Vec<Vec<PathBuf>> = a.samples.iter().map(|s| files(s)).collect();
    let started = Instant::now();
    let results = run.caption(&samples, a.beam)?;
    let per_sample = started.elapsed().as_secs_f64() / samples.len().max(1) as f64;
    let many = samples.len() > 1;
    let mut failed = 0;
    for (sample, result) in a.samples.iter().zip(results) {
        match result {
            Ok(text) if a.json => println!(
                "{}",
                serde_json::json!({"sample": sample, "caption": text, "seconds": per_sample})
            ),
            Ok(text) if many => println!("{sample}\t{text}"),
            Ok(text) => println!("{text}"),
            Err(e) => {
                failed += 1;
                eprintln!("mm: {:#}: skipped", anyhow::Error::from(e));
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} samples could not be described (named above)", samples.len());
    }
    Ok(())
}

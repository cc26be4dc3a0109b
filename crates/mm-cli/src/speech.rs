//! `mm transcribe`, `mm train-tts`, `mm synthesize` and `mm eval-tts`: speech recognition with
//! a CTC run, and synthesis (see `mm_speech::recognize` and `mm_speech::tts`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use mm_data::device::parse_device;
use mm_speech::recognize::Transcribe;
use mm_speech::tts::{Synthesizer, TtsConfig};
use mm_train::run::Run;
use serde_json::json;

/// Options of `mm transcribe`.
#[derive(Debug, clap::Args)]
pub struct TranscribeArgs {
    /// Audio files (WAV, FLAC, MP3, Ogg).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The speech recognition run (`[model.head] type = "ctc"`).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    run: Option<PathBuf>,
    /// A pretrained Whisper folder instead (transformers' files: config.json,
    /// model.safetensors, tokenizer.json, generation_config.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// With --model: the language's code (en, fr, ...); detected per file when not given.
    #[arg(long, requires = "model")]
    language: Option<String>,
    /// With --model: timed segments (Whisper's timestamp tokens), one line each as
    /// `[start --> end] text`; recordings over 30 s are always transcribed this way.
    #[arg(long, requires = "model")]
    timestamps: bool,
    /// Beam width: a CTC run's prefix beam search, or Whisper's beam search over tokens; 1
    /// decodes greedily.
    #[arg(long, default_value_t = 1)]
    beam: usize,
    /// One JSON object per file: the text, every character and word timed, the time taken.
    #[arg(long)]
    json: bool,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// `mm transcribe`.
pub fn transcribe(a: &TranscribeArgs) -> Result<()> {
    if let Some(model) = &a.model {
        return transcribe_whisper(a, model);
    }
    let Some(run_dir) = &a.run else {
        anyhow::bail!("give --run (a CTC run) or --model (a Whisper folder)")
    };
    let run = Run::open(run_dir, None, parse_device(&a.device)?)?;
    let many = a.files.len() > 1;
    for t in run.transcribe(&a.files, a.beam)? {
        if a.json {
            println!("{}", serde_json::to_string(&t)?);
        } else if many {
            println!("{}\t{}", t.file.display(), t.text);
        } else {
            println!("{}", t.text);
        }
    }
    Ok(())
}

/// `mm transcribe --model`: a pretrained Whisper, greedy or beam decoding per 30-second window. A file
/// that cannot be read is reported and the others go on; the command then fails, saying how
/// many were lost.
fn transcribe_whisper(a: &TranscribeArgs, model: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    if a.beam == 0 || a.beam > mm_train::heads::MAX_BEAM {
        anyhow::bail!("--beam {}: give 1 (greedy) to {} beams", a.beam, mm_train::heads::MAX_BEAM);
    }
    let t = mm_encoders::whisper::Transcriber::load(
        model,
        parse_device(&a.device)?,
        a.language.as_deref(),
    )
    .with_context(|| format!("{}: cannot use this Whisper model", model.display()))?
    .with_beam(a.beam)
    .with_timestamps(a.timestamps);
    if a.timestamps && !t.has_timestamps() {
        anyhow::bail!("--timestamps: this model has no timestamp tokens");
    }
    let many = a.files.len() > 1;
    let mut failed = 0;
    for file in &a.files {
        let started = std::time::Instant::now();
        match t.transcribe_file(file) {
            Ok(r) if a.json => println!(
                "{}",
                serde_json::json!({"file": file, "text": r.text, "language": r.language,
                    "tokens": r.windows, "segments": r.segments,
                    "seconds": started.elapsed().as_secs_f64()})
            ),
            Ok(r) if a.timestamps => {
                if many {
                    println!("{}", file.display());
                }
                for s in &r.segments {
                    println!("[{:.2} --> {:.2}] {}", s.start, s.end, s.text);
                }
            }
            Ok(r) if many => println!("{}\t{}", file.display(), r.text),
            Ok(r) => println!("{}", r.text),
            Err(e) => {
                failed += 1;
                eprintln!("mm: {e}: skipped");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} files could not be transcribed (named above)", a.files.len());
    }
    Ok(())
}

/// Options of `mm train-tts`.
#[derive(Debug, clap::Args)]
pub struct TrainTtsArgs {
    /// The synthesis run's TOML file: [data] (manifest, aligner), [model], [train].
    #[arg(long)]
    config: PathBuf,
    /// Override a key of the file: --set train.epochs=3.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Output folder (default: runs/<the config file's name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// No per-epoch lines.
    #[arg(long)]
    quiet: bool,
    /// Continue the run in the output folder from its last checkpoint.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    launch: crate::run::LaunchArgs,
}

/// `mm train-tts`.
pub fn train_tts(a: &TrainTtsArgs) -> Result<()> {
    let config = TtsConfig::from_file(&a.config, &a.set)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(a.config.file_stem().unwrap_or_default()));
    let Some((group, device)) = a.launch.join(&a.device)? else { return Ok(()) };
    let main = group.as_ref().is_none_or(|g| g.is_main());
    let started = Instant::now();
    let report =
        mm_speech::tts::train(&config, &out, device, a.resume, !a.quiet && main, group.as_ref())?;
    if !main {
        return Ok(());
    }
    println!(
        "best validation loss {:.4} at epoch {} of {}; {} recordings with even durations; {:.1} s on {device:?}{}; run folder {} (synthesize with `mm synthesize --run {} TEXT --speaker NAME --out FILE.wav`)",
        report.best.0,
        report.best.1,
        report.history.len(),
        report.uneven.len(),
        started.elapsed().as_secs_f64(),
        group.as_ref().map_or(String::new(), |g| format!(" (rank 0 of {})", g.world_size())),
        out.display(),
        out.display()
    );
    Ok(())
}

/// Options of `mm synthesize`.
#[derive(Debug, clap::Args)]
pub struct SynthesizeArgs {
    /// What to say.
    text: String,
    /// The synthesis run (`mm train-tts`).
    #[arg(long)]
    run: PathBuf,
    /// Whose voice (one of the run's speakers).
    #[arg(long)]
    speaker: String,
    /// The WAV file to write.
    #[arg(long)]
    out: PathBuf,
    /// Griffin-Lim iterations.
    #[arg(long, default_value_t = 60)]
    iterations: usize,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// `mm synthesize`.
pub fn synthesize(a: &SynthesizeArgs) -> Result<()> {
    if a.out.extension().is_none_or(|e| !e.eq_ignore_ascii_case("wav")) {
        bail!("--out {}: a .wav file", a.out.display());
    }
    let mut tts = Synthesizer::open(&a.run, parse_device(&a.device)?)?;
    tts.invert.iterations = a.iterations;
    let started = Instant::now();
    let speech = tts.synthesize(&a.text, &a.speaker)?;
    mm_data::fs::write_atomic(&a.out, &mm_data::audio::encode_wav(&speech.audio))?;
    let seconds = speech.audio.samples.len() as f64 / f64::from(speech.audio.sample_rate);
    println!(
        "wrote {} ({seconds:.2} s, {} frames{}) in {:.2} s",
        a.out.display(),
        speech.log_mel.nrows(),
        speech.stopped_at.map(|f| format!(", stopped at frame {f}")).unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Options of `mm eval-tts`.
#[derive(Debug, clap::Args)]
pub struct EvalTtsArgs {
    /// The synthesis run.
    #[arg(long)]
    run: PathBuf,
    /// The recognition run that listens to the synthesised words.
    #[arg(long)]
    recognizer: PathBuf,
    /// A manifest of real recordings (audio, text, speaker label) whose test split is compared
    /// with; default: the synthesis run's own.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Where the synthesised WAVs and eval.json go (default: RUN/eval).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

/// `mm eval-tts`.
pub fn eval_tts(a: &EvalTtsArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let tts = Synthesizer::open(&a.run, device)?;
    let recognizer = Run::open(&a.recognizer, None, device)?;
    let config = TtsConfig::from_file(&a.run.join("tts.toml"), &[])?;
    let manifest = a.manifest.clone().unwrap_or(config.data.manifest);
    let out = a.out.clone().unwrap_or_else(|| a.run.join("eval"));
    let e = mm_speech::tts::evaluate(&tts, &recognizer, &manifest, &out)?;
    let record = json!(e);
    mm_data::fs::write_atomic(
        &out.join("eval.json"),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )?;
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    println!("synthesised {} (speaker, word) pairs into {}", e.pairs, out.display());
    println!(
        "  recognised exactly: synthesised {:.1}% ({}/{}), real test recordings {:.1}% ({}/{})",
        pct(e.synthesized_correct, e.pairs),
        e.synthesized_correct,
        e.pairs,
        pct(e.real_correct, e.real),
        e.real_correct,
        e.real
    );
    for (speaker, [r, rn, s, sn]) in &e.by_speaker {
        println!(
            "    {speaker:<10} real {:5.1}% ({r}/{rn})  synthesised {:5.1}% ({s}/{sn})",
            pct(*r, *rn),
            pct(*s, *sn)
        );
    }
    println!(
        "  log-mel distance (DTW, mean |difference| per bin, nats): synthesised speech to real recordings of the word {:.3} (the predicted spectrogram, before Griffin-Lim: {:.3}); real to real {:.3}; synthesised to the speaker's other words {:.3}",
        e.mel_distance, e.predicted_mel_distance, e.real_mel_distance, e.other_word_mel_distance
    );
    Ok(())
}

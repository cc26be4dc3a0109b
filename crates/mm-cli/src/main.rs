//! `mm`: end-to-end runs of the mm multimodal toolkit from one binary.
//!
//! `main` parses the command line and hands over to one function per command; every error a
//! user can cause comes back as an `anyhow::Error` and is printed as one message with a non-zero
//! exit code (1 for a failed run; clap uses 2 for a usage error).

// The doc comments of the argument structs are the `--help` text, where `[data]`, `[model]` and
// `[train]` name the tables of a run's TOML file; rustdoc would read them as links.
#![allow(rustdoc::broken_intra_doc_links)]

mod caption;
mod clip;
mod compare;
mod data;
mod demo;
mod info;
mod retrieve;
mod run;
mod serve;
mod speech;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, train and evaluate multimodal models on libtorch.
#[derive(Debug, Parser)]
#[command(name = "mm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train single-modality baselines and a fused model on generated data; print the table.
    Demo(demo::Args),
    /// Data sets: generate the synthetic one, check, compute statistics, split.
    Data(data::Args),
    /// Train the model a TOML file describes ([data], [model], [train]).
    Train(run::TrainArgs),
    /// Evaluate a trained run on a split.
    Eval(run::EvalArgs),
    /// Per-sample predictions of a trained run, as JSON lines.
    Predict(run::PredictArgs),
    /// Top-k items of one modality for a query of another, with a trained retrieval model or
    /// a CLIP index (`mm index`).
    Retrieve(retrieve::Args),
    /// Serve trained runs over HTTP: predictions, metrics, a web page; concurrent requests
    /// batched.
    Serve(serve::Args),
    /// Train every fusion method and each modality alone on the same data; print a table.
    Compare(compare::Args),
    /// A run's configuration, parameters per module and training history.
    Inspect(run::InspectArgs),
    /// One encoder's trained weights as a safetensors file (torchvision's or transformers'
    /// names), to start another run from (`weights = FILE`).
    Export(run::ExportArgs),
    /// Describe image, audio or video files in words with a caption run.
    Caption(caption::Args),
    /// Transcribe audio files with a speech recognition (CTC) run or a pretrained Whisper.
    Transcribe(speech::TranscribeArgs),
    /// Train a speech synthesiser (text to mel spectrogram) from a TOML file.
    #[command(name = "train-tts")]
    TrainTts(speech::TrainTtsArgs),
    /// Say a text in one speaker's voice with a synthesis run; write a WAV file.
    Synthesize(speech::SynthesizeArgs),
    /// Measure a synthesis run: a recogniser's word accuracy on its speech, and the log-mel
    /// distance to real recordings.
    #[command(name = "eval-tts")]
    EvalTts(speech::EvalTtsArgs),
    /// Classify images with a pretrained CLIP, nothing trained: labels through a template.
    #[command(name = "zero-shot")]
    ZeroShot(clip::Args),
    /// Embed images with a pretrained CLIP into an index file, for `mm retrieve --index`.
    Index(clip::IndexArgs),
    /// Show the libtorch this binary runs on and the devices it sees.
    Info(info::Args),
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`mm predict | head`) would fail;
    // the default action ends the process quietly instead, as for any Unix tool.
    // SAFETY: called first, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Data(args) => data::run(&args),
        Command::Train(args) => run::train(&args),
        Command::Eval(args) => run::eval(&args),
        Command::Predict(args) => run::predict(&args),
        Command::Retrieve(args) => retrieve::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Inspect(args) => run::inspect(&args),
        Command::Export(args) => run::export(&args),
        Command::Caption(args) => caption::run(&args),
        Command::Transcribe(args) => speech::transcribe(&args),
        Command::TrainTts(args) => speech::train_tts(&args),
        Command::Synthesize(args) => speech::synthesize(&args),
        Command::EvalTts(args) => speech::eval_tts(&args),
        Command::ZeroShot(args) => clip::run(&args),
        Command::Index(args) => clip::index(&args),
        Command::Info(args) => info::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mm: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

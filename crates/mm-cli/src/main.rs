//! `mm`: end-to-end runs of the mm multimodal toolkit from one binary.
//!
//! `main` parses the command line and hands over to one function per command; every error a
//! user can cause comes back as an `anyhow::Error` and is printed as one message with a non-zero
//! exit code (1 for a failed run; clap uses 2 for a usage error).

mod data;
mod demo;
mod info;

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
    /// Data sets: `mm data synth` writes the embedded synthetic data set.
    Data(data::Args),
    /// Show the libtorch this binary runs on and the devices it sees.
    Info(info::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Data(args) => data::run(&args),
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

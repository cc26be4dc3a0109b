//! `mm-fetch`: the command behind `cargo xtask fetch-data`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mm_fetch::download::Downloader;
use mm_fetch::registry::{registry, Check, Layout};
use mm_fetch::{fetch, presence, FetchOptions, Presence, DIR_ENV, MIRROR_ENV};

/// Downloads, verifies, unpacks and converts data sets into mm manifests.
#[derive(Parser, Debug)]
#[command(
    name = "mm-fetch",
    version,
    after_help = "Data sets and pretrained weights: `--list`. A mirror is any HTTP host laid out as NAME/FILE (see `--list`)."
)]
struct Args {
    /// Data sets or pretrained weights to fetch (`--list` shows them).
    names: Vec<String>,
    /// Show the known data sets and which are already under --dir.
    #[arg(long)]
    list: bool,
    /// Folder that receives one sub-folder per data set [env: MM_DATA_DIR; default: data].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Fetch from this host instead of upstream, e.g. http://127.0.0.1:8000/ [env: MM_DATA_MIRROR].
    #[arg(long)]
    mirror: Option<String>,
    /// Fetch again even when present.
    #[arg(long)]
    force: bool,
    /// Keep downloaded archives under DIR/.downloads after unpacking.
    #[arg(long)]
    keep_downloads: bool,
    /// Retries per file after failures that make no progress.
    #[arg(long, default_value_t = 4)]
    retries: u32,
    /// Serve this mirror folder over HTTP on 127.0.0.1 instead of fetching.
    #[arg(long, value_name = "FOLDER")]
    serve: Option<PathBuf>,
    /// Port for --serve (0: any free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and every cause after it (a cause is never repeated in its Display).
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text = format!("{text}: {c}");
                cause = c.source();
            }
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), mm_fetch::Error> {
    let mut options = FetchOptions::from_env();
    if let Some(dir) = args.dir {
        options.dir = dir;
    }
    if let Some(mirror) = args.mirror {
        options.mirror = Some(mirror);
    }
    options.force = args.force;
    options.keep_downloads = args.keep_downloads;
    options.downloader = Downloader::new(args.retries, Duration::from_millis(500), true);
    if let Some(folder) = args.serve {
        let server = mm_fetch::serve::MirrorServer::bind(
            &folder,
            Default::default(),
            &format!("127.0.0.1:{}", args.port),
        )
        .map_err(|e| mm_fetch::Error::io(&folder, e))?;
        eprintln!("serving {} at {} (Ctrl-C stops)", folder.display(), server.url());
        server.wait();
        return Ok(());
    }
    if args.list || args.names.is_empty() {
        list(&options);
        if args.names.is_empty() && !args.list {
            eprintln!("\nname the data sets to fetch, e.g. `cargo xtask fetch-data mnist fsdd`");
        }
        return Ok(());
    }
    let sets =
        args.names.iter().map(|n| mm_fetch::registry::find(n)).collect::<Result<Vec<_>, _>>()?;
    for set in &sets {
        fetch(set, &options)?;
    }
    Ok(())
}

fn list(options: &FetchOptions) {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "data sets (folder: {}; {DIR_ENV} or --dir changes it):\n",
        options.dir.display()
    );
    // The data sets first, then the pretrained weights (for mm-encoders' image and text encoders).
    let (weights, data): (Vec<_>, Vec<_>) =
        registry().into_iter().partition(|s| s.layout == Layout::Weights);
    let heading = format!("pretrained weights (into the same folder; `weights = \"{}/NAME/model.safetensors\"` or `model = \"{}/NAME\"` in a run):\n", options.dir.display(), options.dir.display());
    let mut in_weights = false;
    for set in data.into_iter().chain(weights) {
        if set.layout == Layout::Weights && !in_weights {
            in_weights = true;
            let _ = writeln!(out, "{heading}");
        }
        let state = match presence(&options.dir, &set) {
            Presence::Present(record) => {
                let splits: Vec<String> =
                    record.conversion.splits.iter().map(|(s, n)| format!("{n} {s}")).collect();
                if splits.is_empty() {
                    "present".to_string()
                } else {
                    format!("present ({})", splits.join(", "))
                }
            }
            Presence::Absent { partial: 0 } => "not fetched".to_string(),
            Presence::Absent { partial } => {
                format!("not fetched ({:.1} MB of downloads to resume)", partial as f64 / 1e6)
            }
            Presence::Foreign => "a folder of this name exists, not made by a fetch".to_string(),
        };
        let size: u64 = set.artifacts.iter().filter_map(|a| a.size).sum();
        let size = if size > 0 {
            format!("{:.1} MB", size as f64 / 1e6)
        } else {
            "size not published".into()
        };
        let mut checks_text: Vec<&str> = set
            .artifacts
            .iter()
            .map(|a| if a.check.verified() { a.check.describe() } else { "UNVERIFIED" })
            .collect();
        checks_text.dedup();
        let _ = writeln!(out, "{:<14} {}", set.name, set.title);
        let _ = writeln!(out, "{:<14} {state}; {size}; licence: {}", "", set.licence);
        let _ = writeln!(out, "{:<14} check: {}", "", checks_text.join(", "));
        if set.artifacts.iter().any(|a| matches!(a.check, Check::Unverified)) {
            let _ = writeln!(out, "{:<14} (no checksum could be verified: a fetch warns)", "");
        }
        let paths: Vec<&str> = set.artifacts.iter().map(|a| a.mirror_path.as_str()).collect();
        let _ = writeln!(out, "{:<14} mirror paths: {}\n", "", paths.join(", "));
    }
    let _ = match &options.mirror {
        Some(m) => writeln!(out, "mirror: {m} (from --mirror or {MIRROR_ENV})"),
        None => {
            writeln!(out, "hosts: upstream (set --mirror URL or {MIRROR_ENV} for another host)")
        }
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
}

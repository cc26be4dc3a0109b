//! `bench-peer`: our side of the PyTorch comparison, then the peer's (`benches/peer/peer.py`),
//! then the table. Run it through `cargo xtask bench-peer`, which builds it in release mode and
//! finds the Python that holds set-up's libtorch.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Parser;
use mm_benches::peer::{self, Measure, Sizes, Sources};
use tch::Device;

/// mm against PyTorch on the same machine: W1 image pipeline, W2 audio pipeline, W3 training
/// steps, W4 a whole epoch of the av-digits recipe, W5 clips of video files, W6 CLIP image
/// embeddings, W7 Whisper-tiny transcription.
#[derive(Debug, Parser)]
#[command(name = "bench-peer")]
struct Args {
    /// Threads on both sides (rayon and libtorch here; DataLoader workers and torch threads
    /// there).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Small inputs and few repetitions: checks that everything runs, measures little.
    #[arg(long)]
    quick: bool,
    /// Only these workloads (W1, W2, W3, W4, W5, W6, W7; comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where inputs are written (reused between runs).
    #[arg(long, default_value = "target/bench-peer/work")]
    work: PathBuf,
    /// Where the results go (`bench-peer.json`, `bench-peer.md`, `mm.json`, `pytorch.json`).
    #[arg(long, default_value = "target/bench-peer")]
    out: PathBuf,
    /// Where fetched data sets are (`cargo xtask fetch-data mnist fsdd`).
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// The Python that runs the peer (with torch importable).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Our side only.
    #[arg(long)]
    no_peer: bool,
    /// Rounds, each running our side then the peer's; the result is the median over rounds
    /// (default 3, or 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn wanted(args: &Args, id: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(id))
}

fn run(args: &Args) -> Result<(), String> {
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
    if args.threads == 0 || rounds == 0 {
        return Err("--threads and --rounds must be at least 1".into());
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
        .map_err(|e| mm_data::error::report(&e))?;
    tch::set_num_threads(args.threads as i32);
    let sizes = if args.quick { Sizes::quick() } else { Sizes::full() };
    let device = Device::Cpu;
    eprintln!("preparing inputs in {}", args.work.display());
    let inputs = peer::prepare(&args.work, &Sources::find(&args.data), sizes)?;
    for m in &inputs.missing {
        eprintln!("skipped {m}");
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    // Rounds alternate the two sides, so that a slow spell of the machine hits both.
    let (mut ours_rounds, mut theirs_rounds) = (Vec::new(), Vec::new());
    let mut peer_info = serde_json::Value::Null;
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}");
        ours_rounds.push(measure_ours(args, &inputs, sizes, device)?);
        if !args.no_peer {
            let (measures, versions) = run_peer(args, sizes)?;
            theirs_rounds.push(measures);
            peer_info = versions;
        }
    }
    let ours = peer::merge_rounds(&ours_rounds);
    let theirs = peer::merge_rounds(&theirs_rounds);
    write_json(&args.out.join("mm.json"), &ours)?;
    if !args.no_peer {
        write_json(
            &args.out.join("pytorch.json"),
            &serde_json::json!({"versions": peer_info, "measures": theirs}),
        )?;
    }
    let profile = if wanted(args, "W4") { peer::profile(&inputs, device)? } else { None };
    let rows = peer::compare(&ours, &theirs);
    let mut table = peer::table(&rows);
    if let Some(p) = &profile {
        table.push('\n');
        table.push_str(&peer::profile_text(p));
    }
    let machine = mm_benches::gpu::cpu_name();
    let header = format!(
        "mm against PyTorch ({}), {} thread(s), median of {} round(s), {}{}\n\n",
        peer_info.get("torch").and_then(|v| v.as_str()).unwrap_or("not run"),
        args.threads,
        rounds,
        machine,
        if args.quick { ", --quick (sizes too small to mean much)" } else { "" }
    );
    println!("\n{header}{table}");
    let summary = serde_json::json!({
        "threads": args.threads,
        "rounds": rounds,
        "quick": args.quick,
        "machine": machine,
        "pytorch": peer_info,
        "missing": inputs.missing,
        "rows": rows,
        "profile": profile,
    });
    write_json(&args.out.join("bench-peer.json"), &summary)?;
    mm_data::fs::write_atomic(
        &args.out.join("bench-peer.md"),
        format!("{header}{table}").as_bytes(),
    )
    .map_err(|e| mm_data::error::report(&e))?;
    eprintln!("results: {} and bench-peer.md", args.out.join("bench-peer.json").display());
    Ok(())
}

/// One round of our side.
fn measure_ours(
    args: &Args,
    inputs: &peer::Inputs,
    sizes: Sizes,
    device: Device,
) -> Result<Vec<Measure>, String> {
    let mut ours: Vec<Measure> = Vec::new();
    let report = |m: Measure, ours: &mut Vec<Measure>| {
        eprintln!("mm {}: {:.2} {} ({})", m.id, m.value, m.unit, m.what);
        ours.push(m);
    };
    if wanted(args, "W1") {
        report(peer::w1(inputs, sizes)?, &mut ours);
    }
    if wanted(args, "W2") {
        if let Some(m) = peer::w2(inputs, sizes)? {
            report(m, &mut ours);
        }
    }
    if wanted(args, "W3") {
        for m in peer::w3(sizes, device) {
            report(m, &mut ours);
        }
    }
    if wanted(args, "W4") {
        if let Some(m) = peer::w4(inputs, &args.work, device)? {
            report(m, &mut ours);
        }
    }
    if wanted(args, "W5") {
        if let Some(m) = peer::w5(inputs, sizes)? {
            report(m, &mut ours);
        }
    }
    if wanted(args, "W6") {
        report(peer::w6(sizes, device)?, &mut ours);
    }
    if wanted(args, "W7") {
        report(peer::w7(sizes, device)?, &mut ours);
    }
    Ok(ours)
}

/// One round of the PyTorch peer: its measures and its package versions.
fn run_peer(args: &Args, sizes: Sizes) -> Result<(Vec<Measure>, serde_json::Value), String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peer/peer.py");
    let json = args.out.join("pytorch-round.json");
    let _ = std::fs::remove_file(&json);
    let mut cmd = Command::new(&args.python);
    cmd.arg(&script)
        .arg("--inputs")
        .arg(args.work.join("inputs.json"))
        .args([
            "--threads",
            &args.threads.to_string(),
            "--repeats",
            &sizes.repeats.to_string(),
            "--seed-batch",
            &sizes.seed_batch.to_string(),
            "--clip-batch",
            &peer::clip_batch(sizes).to_string(),
        ])
        .arg("--json")
        .arg(&json);
    if !args.only.is_empty() {
        cmd.args(["--only", &args.only.join(",")]);
    }
    eprintln!("running the PyTorch peer: {cmd:?}");
    let status = cmd.status().map_err(|e| format!("could not run {}: {e}", args.python))?;
    if !status.success() {
        return Err(format!("the PyTorch peer failed ({status})"));
    }
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let _ = std::fs::remove_file(&json);
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let measures = serde_json::from_value(value.get("measures").cloned().unwrap_or_default())
        .map_err(|e| format!("{}: {e}", json.display()))?;
    Ok((measures, value.get("versions").cloned().unwrap_or_default()))
}

fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| mm_data::error::report(&e))?;
    mm_data::fs::write_atomic(path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

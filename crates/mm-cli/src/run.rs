//! `mm train`, `mm eval`, `mm predict` and `mm inspect`: a run from its TOML file to a trained
//! model, and the trained model rebuilt from its folder (see `mm_train::run`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mm_data::device::parse_device;
use mm_data::manifest::Split;
use mm_train::run::{Run, RunConfig, RUN_FILE};
use serde_json::{json, Map, Value};

/// A run's configuration file and overrides (`mm train`, `compare`, `data stats`).
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The run's TOML file: [data], [model] and [train] (see configs/ for one per application).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a key of the file, in TOML syntax: --set train.epochs=3 --set data.image.size=32.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// Reads and validates the file with the overrides applied.
    pub fn load(&self) -> Result<RunConfig> {
        Ok(RunConfig::from_file(&self.config, &self.set)?)
    }
}

/// Options of `mm train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Output folder (default: runs/<the config file's name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in the output folder from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Validate the configuration and print it resolved, without reading data or training.
    #[arg(long)]
    check: bool,
    /// No per-epoch lines or progress bar.
    #[arg(long)]
    quiet: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    launch: LaunchArgs,
}

/// Data-parallel training: start the ranks of this machine (as torchrun does). Without these,
/// `mm train` still joins a job when torchrun-style variables (RANK, WORLD_SIZE, MASTER_ADDR,
/// MASTER_PORT, LOCAL_RANK) are set by another launcher.
#[derive(Debug, clap::Args)]
pub struct LaunchArgs {
    /// Processes to start on this machine, one per GPU (or a share of the CPU cores each).
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// Machines in the job (each runs the same command with its own --node-rank).
    #[arg(long, default_value_t = 1, requires = "nproc_per_node")]
    nnodes: usize,
    /// This machine's index in the job, from 0 (node 0 hosts rank 0).
    #[arg(long, default_value_t = 0, requires = "nproc_per_node")]
    node_rank: usize,
    /// The address of node 0, where rank 0 serves the rendezvous.
    #[arg(long, default_value = "127.0.0.1", requires = "nproc_per_node")]
    master_addr: String,
    /// The rendezvous port on node 0 (default: a free port, on one machine only).
    #[arg(long, requires = "nproc_per_node")]
    master_port: Option<u16>,
}

impl LaunchArgs {
    /// What this process is in a data-parallel job: `None` when it launched the ranks (they
    /// have finished: nothing is left to do), else its process group (none when it trains
    /// alone) and its device, named by `device` (`auto` and `cuda` mean its local rank's GPU).
    pub fn join(
        &self,
        device: &str,
    ) -> Result<Option<(Option<mm_train::dist::ProcessGroup>, tch::Device)>> {
        let env = mm_train::dist::Env::from_env()?;
        if let Some(n) = self.nproc_per_node {
            let ours = std::env::var_os(mm_train::dist::LAUNCHED_VAR).is_some();
            match (&env, ours) {
                (Some(_), false) => bail!("this process is already a rank of a job (RANK and WORLD_SIZE are set by another launcher): drop --nproc-per-node"),
                (None, _) => {
                    let spec = mm_train::dist::Launch {
                        nproc_per_node: n,
                        nnodes: self.nnodes,
                        node_rank: self.node_rank,
                        master_addr: self.master_addr.clone(),
                        master_port: self.master_port,
                        env: Vec::new(),
                    };
                    let program = std::env::current_exe()
                        .context("finding the mm binary to start the ranks")?;
                    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                    mm_train::dist::launch(&spec, &program, &args)?;
                    return Ok(None);
                }
                (Some(_), true) => {} // one of the ranks started above
            }
        }
        Ok(Some(match &env {
            Some(env) => {
                let device = rank_device(device, env)?;
                let options = mm_train::dist::GroupOptions::from_env(device)?;
                (Some(mm_train::dist::ProcessGroup::new(env, &options)?), device)
            }
            None => (None, parse_device(device)?),
        }))
    }
}

/// The device of this rank: `auto` and `cuda` mean the GPU of its local rank.
fn rank_device(name: &str, env: &mm_train::dist::Env) -> Result<tch::Device> {
    let device = parse_device(name)?;
    let named = name.trim().to_ascii_lowercase();
    if device.is_cuda() && (named == "auto" || named == "cuda" || named == "gpu") {
        let count = tch::Cuda::device_count().max(0) as usize;
        if env.local_rank >= count {
            bail!("local rank {} has no GPU of its own: this machine has {count}; start at most {count} processes per node, or use --device cpu", env.local_rank);
        }
        return Ok(tch::Device::Cuda(env.local_rank));
    }
    Ok(device)
}

/// Runs `mm train`.
pub fn train(a: &TrainArgs) -> Result<()> {
    let mut config = a.config.load()?;
    if a.check {
        print!("{}", config.to_toml()?);
        eprintln!("{}: valid", a.config.config.display());
        return Ok(());
    }
    let Some((group, device)) = a.launch.join(&a.device)? else { return Ok(()) };
    let main = group.as_ref().is_none_or(|g| g.is_main());
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| Path::new("runs").join(a.config.config.file_stem().unwrap_or_default()));
    config.train.verbose = !a.quiet && !a.json && main;
    config.train.progress =
        !a.quiet && !a.json && main && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let started = Instant::now();
    let trained = mm_train::run::train_in(&config, &out, device, a.resume, group.as_ref())?;
    if !main {
        return Ok(());
    }
    let seconds = started.elapsed().as_secs_f64();
    let r = &trained.report;
    let clean = trained
        .clean
        .as_ref()
        .map(|c| json!({"total": c.total, "kept": c.kept, "dropped": c.dropped}));
    let summary = json!({
        "out": out,
        "metric": r.metric,
        "best": r.best.map(|(v, e)| json!({"value": v, "epoch": e})),
        "epochs": r.history.len(),
        "stopped_early": r.stopped_early,
        "before": r.before,
        "parameters": trained.parameters,
        "clean": clean,
        "pretrained": r.pretrained.iter().map(|(m, p)| (m.clone(), json!(p.summary()))).collect::<serde_json::Map<_, _>>(),
        "seconds": seconds,
        "device": format!("{device:?}"),
        "ranks": group.as_ref().map_or(1, |g| g.world_size()),
    });
    if a.json {
        println!("{summary}");
        return Ok(());
    }
    if let Some(c) = &trained.clean {
        if c.dropped > 0 {
            println!(
                "cleaning: kept {} of {} samples, dropped {} (reasons in {})",
                c.kept,
                c.total,
                c.dropped,
                out.join("clean-report.json").display()
            );
        }
    }
    // (Without --quiet the training loop said it before the first epoch.)
    for (m, p) in r.pretrained.iter().filter(|_| a.quiet) {
        println!(
            "pretrained {m}: {} (details in {})",
            p.summary(),
            out.join("pretrained.json").display()
        );
    }
    if let Some(v) = r.before.as_ref().and_then(|b| b.get(&r.metric)).and_then(Value::as_f64) {
        println!(
            "before training: validation {} {v:.4} (all metrics in {})",
            r.metric,
            out.join("before.json").display()
        );
    }
    match r.best {
        Some((v, e)) => {
            println!("best validation {} {v:.4} at epoch {e} of {}", r.metric, r.history.len())
        }
        None => println!("no epoch gave a finite validation {}", r.metric),
    }
    println!(
        "{} parameters, {:.1} s on {device:?}{}{}; run folder {} (evaluate with `mm eval --run {}`)",
        trained.parameters,
        seconds,
        group.as_ref().map_or(String::new(), |g| format!(" (rank 0 of {})", g.world_size())),
        if r.stopped_early { ", stopped early" } else { "" },
        out.display(),
        out.display()
    );
    Ok(())
}

/// Where a trained model is and what to run it on.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The run folder `mm train` wrote.
    #[arg(long)]
    run: PathBuf,
    /// The split to use.
    #[arg(long, default_value = "test", value_parser = parse_split)]
    split: Split,
    /// Another manifest (same modalities and classes) instead of the run's own.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// A checkpoint record (e.g. RUN/checkpoints/last.json) instead of the run's best.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

fn parse_split(s: &str) -> Result<Split, String> {
    s.parse()
}

impl RunArgs {
    fn open(&self) -> Result<(Run, Arc<mm_data::manifest::Manifest>)> {
        let run = Run::open(&self.run, self.checkpoint.as_deref(), parse_device(&self.device)?)?;
        let (manifest, report) = run.manifest(self.manifest.as_deref())?;
        if let Some(r) = report.filter(|r| r.dropped > 0) {
            eprintln!("cleaning: {}", r.summary());
        }
        let manifest = Arc::new(manifest);
        Ok((run, manifest))
    }
}

/// Options of `mm eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Print the metrics as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `mm eval`: the metrics of the run's best checkpoint on a split; also written to
/// `RUN/eval-SPLIT.json`.
pub fn eval(a: &EvalArgs) -> Result<()> {
    let (run, manifest) = a.run.open()?;
    let metrics = run.evaluate(manifest, a.run.split)?;
    let record =
        json!({"split": a.run.split.as_str(), "epoch": run.state.epoch, "metrics": metrics});
    if a.run.manifest.is_none() && a.run.checkpoint.is_none() {
        mm_data::fs::write_atomic(
            &a.run.run.join(format!("eval-{}.json", a.run.split)),
            serde_json::to_string_pretty(&record)?.as_bytes(),
        )?;
    }
    if a.json {
        println!("{}", Value::Object(metrics));
        return Ok(());
    }
    println!("{} split, checkpoint of epoch {}:", a.run.split, run.state.epoch);
    print_metrics(&metrics, &run.pipeline.classes);
    Ok(())
}

/// Prints scalar metrics one per line, and per-class lists beside the class names.
fn print_metrics(metrics: &Map<String, Value>, classes: &[String]) {
    for (k, v) in metrics {
        match v {
            Value::Number(n) if n.is_u64() => println!("  {k:<28}{:>10}", n),
            Value::Number(n) => println!("  {k:<28}{:>10.4}", n.as_f64().unwrap_or(f64::NAN)),
            Value::Array(items) if k.ends_with("confusion") => {
                println!("  {k} (rows: truth, columns: prediction; {})", classes.join(", "));
                for row in items {
                    let cells: Vec<String> = row
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| format!("{:>6}", c.as_i64().unwrap_or(-1)))
                        .collect();
                    println!("    {}", cells.join(""));
                }
            }
            Value::Array(items) if items.len() == classes.len() => {
                let cells: Vec<String> = classes
                    .iter()
                    .zip(items)
                    .map(|(c, v)| format!("{c} {:.3}", v.as_f64().unwrap_or(f64::NAN)))
                    .collect();
                println!("  {k:<28}{}", cells.join(", "));
            }
            _ => println!("  {k:<28}{v}"),
        }
    }
}

/// Options of `mm predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Write the predictions (JSONL) to this file, atomically, instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `mm predict`: one JSON line per sample with its probabilities, and the fusion's
/// modality weights where it has them.
pub fn predict(a: &PredictArgs) -> Result<()> {
    let (run, manifest) = a.run.open()?;
    let rows = run.predict(manifest, a.run.split)?;
    let mut text = String::new();
    for r in &rows {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    match &a.out {
        Some(path) => {
            mm_data::fs::write_atomic(path, text.as_bytes())?;
            eprintln!("{} predictions written to {}", rows.len(), path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Options of `mm export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The run folder `mm train` wrote.
    #[arg(long)]
    run: PathBuf,
    /// The encoder to export, by modality (`image`, `text`, `audio`, ...).
    #[arg(long)]
    encoder: String,
    /// The safetensors file to write.
    #[arg(long)]
    out: PathBuf,
    /// A checkpoint record (e.g. RUN/checkpoints/last.json) instead of the run's best.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

/// Runs `mm export`: one encoder's weights of a trained run, in the architecture's own names
/// (torchvision's, transformers'), as a safetensors file another run can start from.
pub fn export(a: &ExportArgs) -> Result<()> {
    let run = Run::open(&a.run, a.checkpoint.as_deref(), tch::Device::Cpu)?;
    let n = run.export_encoder(&a.encoder, &a.out)?;
    println!(
        "{n} tensors of the {} encoder (epoch {}) written to {}",
        a.encoder,
        run.state.epoch,
        a.out.display()
    );
    Ok(())
}

/// Options of `mm inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A run folder, or a checkpoint record (RUN/checkpoints/best.json).
    path: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `mm inspect`: the configuration, parameters per module and the training history.
pub fn inspect(a: &InspectArgs) -> Result<()> {
    let (dir, checkpoint) = if a.path.is_dir() {
        (a.path.clone(), None)
    } else if a.path.extension().is_some_and(|e| e == "json") {
        let dir = a
            .path
            .parent()
            .and_then(Path::parent)
            .context("a checkpoint record lives in RUN/checkpoints/")?;
        (dir.to_path_buf(), Some(a.path.clone()))
    } else if !a.path.exists() {
        bail!("{}: no such file or folder", a.path.display());
    } else {
        bail!(
            "{}: give a run folder or a checkpoint record (RUN/checkpoints/best.json)",
            a.path.display()
        );
    };
    let run = Run::open(&dir, checkpoint.as_deref(), tch::Device::Cpu)?;
    let (per_module, total) = run.parameters();
    let history = &run.state.history;
    if a.json {
        let value = json!({
            "run": dir,
            "config": serde_json::to_value(&run.config)?,
            "parameters": per_module,
            "total_parameters": total,
            "epoch": run.state.epoch,
            "best": run.state.best,
            "history": history,
        });
        println!("{value}");
        return Ok(());
    }
    println!("run {} ({})", dir.display(), dir.join(RUN_FILE).display());
    print!("{}", run.config.to_toml()?);
    println!("\nparameters ({total} in all):");
    for (module, n) in &per_module {
        println!("  {module:<24}{n:>12}");
    }
    println!("\nhistory (checkpoint of epoch {}):", run.state.epoch);
    let keys: Vec<String> = history
        .first()
        .and_then(|h| h["val"].as_object())
        .map(|v| v.iter().filter(|(_, x)| x.is_number()).map(|(k, _)| k.clone()).take(4).collect())
        .unwrap_or_default();
    let mut header = format!("  {:>5}{:>12}", "epoch", "train loss");
    for k in &keys {
        header.push_str(&format!("{:>16}", format!("val {k}")));
    }
    println!("{header}");
    for h in history {
        let mut line = format!(
            "  {:>5}{:>12.4}",
            h["epoch"].as_u64().unwrap_or(0),
            h["train_loss"].as_f64().unwrap_or(f64::NAN)
        );
        for k in &keys {
            line.push_str(&format!("{:>16.4}", h["val"][k].as_f64().unwrap_or(f64::NAN)));
        }
        println!("{line}");
    }
    if let Some((v, e)) = run.state.best {
        println!("  best {v:.4} at epoch {e}");
    }
    Ok(())
}

//! `bench-serve`: `mm serve` against the same model behind FastAPI and uvicorn
//! (`benches/peer/serve.py`), under the same load over loopback. Run it through
//! `cargo xtask bench-serve`, which builds `mm` and this binary in release mode and finds the
//! Python that holds set-up's libtorch.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use clap::Parser;
use mm_benches::load::{self, Load};
use mm_benches::peer::{self, Sources};
use mm_data::manifest::{Manifest, Split};
use serde_json::json;

/// Requests per second and latency of `mm serve` and of a PyTorch server on the av-digits
/// model, with 1, 8 and 64 concurrent clients.
#[derive(Debug, Parser)]
#[command(name = "bench-serve")]
struct Args {
    /// The `mm` binary (release build).
    #[arg(long)]
    mm: PathBuf,
    /// libtorch threads on both sides.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Concurrent clients, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Seconds of load per run (after a warm-up of 2 s).
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Short runs on a small data set: checks that everything runs, measures little.
    #[arg(long)]
    quick: bool,
    /// `mm serve --max-batch`.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// `mm serve --max-wait-ms`.
    #[arg(long, default_value_t = 0)]
    max_wait_ms: u64,
    /// Where the data set and the trained run are kept (reused between runs).
    #[arg(long, default_value = "target/bench-serve/work")]
    work: PathBuf,
    /// Where the results go (`bench-serve.json`, `bench-serve.md`).
    #[arg(long, default_value = "target/bench-serve")]
    out: PathBuf,
    /// Where fetched data sets are (`cargo xtask fetch-data mnist fsdd`).
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// The Python that runs the peer (torch, torchaudio, soundfile, pillow, fastapi, uvicorn).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Our side only.
    #[arg(long)]
    no_peer: bool,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// Waits until GET `path` answers 200.
fn wait_ready(addr: SocketAddr, path: &str, child: &mut Child, what: &str) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited ({status}) before it was ready"));
        }
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            );
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!("{what} was not ready within 120 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `mm serve`'s own counters: forward passes, samples in them, seconds in them.
fn scrape(addr: SocketAddr) -> Option<(f64, f64, f64)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let value = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((
        value("mm_batch_size_count"),
        value("mm_batch_size_sum"),
        value("mm_inference_duration_seconds_sum"),
    ))
}

/// What one load run of `mm serve` spent: mean samples per forward pass and the share of the
/// run's time the model thread spent in them (collating, forward, results).
#[derive(Debug, Clone, serde::Serialize)]
struct Inside {
    mean_batch: f64,
    model_busy: f64,
}

/// Warm-up, then one load run per client count; with `metrics`, what `mm serve` says it did.
fn measure(
    addr: SocketAddr,
    bodies: &Arc<Vec<Vec<u8>>>,
    args: &Args,
    seconds: f64,
    metrics: bool,
) -> (Vec<Load>, Vec<Inside>) {
    load::run(addr, "/v1/predict", bodies, 8, seconds.min(2.0));
    let (mut loads, mut insides) = (Vec::new(), Vec::new());
    for &c in &args.clients {
        let before = if metrics { scrape(addr) } else { None };
        let l = load::run(addr, "/v1/predict", bodies, c, seconds);
        let inside = before.zip(if metrics { scrape(addr) } else { None }).map(|(b, a)| Inside {
            mean_batch: (a.1 - b.1) / (a.0 - b.0).max(1.0),
            model_busy: (a.2 - b.2) / l.seconds,
        });
        eprintln!(
            "  {c:>3} clients: {:.1} requests/s, p50 {:.2} ms, p99 {:.2} ms, {} errors{}{}",
            l.requests_per_s,
            l.p50_ms,
            l.p99_ms,
            l.errors,
            inside.as_ref().map_or(String::new(), |i| format!(
                "; {:.1} samples per forward pass, model busy {:.0}% of the time",
                i.mean_batch,
                i.model_busy * 100.0
            )),
            l.first_error.as_deref().map_or(String::new(), |e| format!(" (first: {e})"))
        );
        insides.extend(inside);
        loads.push(l);
    }
    (loads, insides)
}

fn run(args: &Args) -> Result<(), String> {
    if args.clients.is_empty() || args.clients.contains(&0) || args.threads == 0 {
        return Err("--clients and --threads must be at least 1".into());
    }
    let seconds = if args.quick { args.seconds.min(2.0) } else { args.seconds };
    let per_digit = if args.quick { 20 } else { 100 };
    std::fs::create_dir_all(&args.work).map_err(|e| format!("{}: {e}", args.work.display()))?;
    let manifest = peer::av_digits(&args.work, &Sources::find(&args.data), per_digit)?.ok_or(
        "no MNIST and FSDD: run `cargo xtask fetch-data mnist fsdd` (or have the shared mirror)",
    )?;
    let manifest = std::path::absolute(&manifest).map_err(|e| e.to_string())?;
    // The av-digits recipe, trained briefly: serving speed does not depend on how well.
    let run_dir = args.work.join(format!("run-{per_digit}"));
    if !run_dir.join("checkpoints/best.json").is_file() {
        let _ = std::fs::remove_dir_all(&run_dir);
        eprintln!("training the av-digits recipe for 2 epochs into {}", run_dir.display());
        let status = Command::new(&args.mm)
            .args([
                "train",
                "--config",
                "configs/av-digits/av-digits.toml",
                "--quiet",
                "--device",
                "cpu",
            ])
            .arg("--set")
            .arg(format!("data.manifest={}", manifest.display()))
            .args(["--set", "train.epochs=2", "--out"])
            .arg(&run_dir)
            .status()
            .map_err(|e| format!("{}: {e}", args.mm.display()))?;
        if !status.success() {
            return Err(format!("mm train failed ({status})"));
        }
    }
    // The requests: the test split's pairs, as base64 JSON, the same bytes for both servers.
    let m = Manifest::read(&manifest).map_err(|e| mm_data::error::report(&e))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut bodies = Vec::new();
    for s in m.split(Split::Test) {
        let (Some(image), Some(audio)) = (&s.image, &s.audio) else { continue };
        let read = |p: &Path| std::fs::read(m.path(p)).map_err(|e| format!("{}: {e}", p.display()));
        let body = json!({"image": b64.encode(read(image)?), "audio": b64.encode(read(audio)?)});
        bodies.push(body.to_string().into_bytes());
    }
    if bodies.is_empty() {
        return Err("the av-digits test split is empty".into());
    }
    let mean_body = bodies.iter().map(Vec::len).sum::<usize>() / bodies.len();
    let bodies = Arc::new(bodies);
    let threads = args.threads.to_string();

    eprintln!(
        "mm serve ({} threads, --max-batch {}, --max-wait-ms {})",
        args.threads, args.max_batch, args.max_wait_ms
    );
    let mut child = Command::new(&args.mm)
        .args(["serve", "--port", "0", "--device", "cpu", "--queue", "4096", "--run"])
        .arg(&run_dir)
        .args([
            "--max-batch",
            &args.max_batch.to_string(),
            "--max-wait-ms",
            &args.max_wait_ms.to_string(),
        ])
        .env("OMP_NUM_THREADS", &threads)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args.mm.display()))?;
    let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    std::thread::spawn(move || lines.for_each(drop));
    let mut ours = Server(child);
    let addr: SocketAddr = first
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("mm serve said {first:?}"))?;
    wait_ready(addr, "/ready", &mut ours.0, "mm serve")?;
    let (mm_loads, inside) = measure(addr, &bodies, args, seconds, true);
    drop(ours);

    let mut peer_loads = Vec::new();
    let mut versions = serde_json::Value::Null;
    if !args.no_peer {
        let port = free_port()?;
        eprintln!(
            "PyTorch behind FastAPI and uvicorn ({} threads, one forward per request)",
            args.threads
        );
        let child = Command::new(&args.python)
            .args(["benches/peer/serve.py", "--port", &port.to_string(), "--threads", &threads])
            .env("OMP_NUM_THREADS", &threads)
            .spawn()
            .map_err(|e| format!("{}: {e}", args.python))?;
        let mut theirs = Server(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_ready(addr, "/ready", &mut theirs.0, "the PyTorch server")?;
        peer_loads = measure(addr, &bodies, args, seconds, false).0;
        drop(theirs);
        let v = Command::new(&args.python)
            .args(["-c", "import torch, fastapi, uvicorn, json; print(json.dumps({'torch': torch.__version__, 'fastapi': fastapi.__version__, 'uvicorn': uvicorn.__version__}))"])
            .output()
            .map_err(|e| e.to_string())?;
        versions = serde_json::from_slice(&v.stdout).unwrap_or(serde_json::Value::Null);
    }

    let machine = mm_benches::gpu::cpu_name();
    let mut table = format!(
        "mm serve against PyTorch behind FastAPI ({}), av-digits model, {} thread(s), {seconds} s per row, {} test pairs (~{} KiB of JSON each), {machine}{}\n\n",
        versions.get("torch").and_then(|v| v.as_str()).unwrap_or("peer not run"),
        args.threads,
        bodies.len(),
        mean_body / 1024,
        if args.quick { ", --quick (too short to mean much)" } else { "" }
    );
    table.push_str("| clients | mm requests/s | mm p50 ms | mm p99 ms | PyTorch requests/s | PyTorch p50 ms | PyTorch p99 ms | throughput ratio | mm samples per pass | mm model busy |\n");
    table.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (i, ours) in mm_loads.iter().enumerate() {
        let theirs = peer_loads.get(i);
        let cell =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        table.push_str(&format!(
            "| {} | {:.1} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |\n",
            ours.clients,
            ours.requests_per_s,
            ours.p50_ms,
            ours.p99_ms,
            cell(theirs.map(|t| t.requests_per_s), 1),
            cell(theirs.map(|t| t.p50_ms), 2),
            cell(theirs.map(|t| t.p99_ms), 2),
            theirs.map_or("-".to_string(), |t| format!(
                "{:.2}x",
                ours.requests_per_s / t.requests_per_s
            )),
            inside.get(i).map_or("-".to_string(), |x| format!("{:.1}", x.mean_batch)),
            inside.get(i).map_or("-".to_string(), |x| format!("{:.0}%", x.model_busy * 100.0)),
        ));
    }
    println!("\n{table}");
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let summary = json!({
        "machine": machine, "threads": args.threads, "seconds": seconds, "quick": args.quick,
        "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "peer_versions": versions,
        "mm": mm_loads, "mm_inside": inside, "pytorch": peer_loads,
    });
    let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    mm_data::fs::write_atomic(&args.out.join("bench-serve.json"), text.as_bytes())
        .map_err(|e| mm_data::error::report(&e))?;
    mm_data::fs::write_atomic(&args.out.join("bench-serve.md"), table.as_bytes())
        .map_err(|e| mm_data::error::report(&e))?;
    let failed: usize = mm_loads.iter().map(|l| l.errors).sum();
    if failed > 0 {
        return Err(format!("{failed} requests to mm serve failed"));
    }
    Ok(())
}

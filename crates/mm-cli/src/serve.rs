//! `mm serve`: trained runs behind HTTP (see the `mm-serve` crate).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use mm_data::device::parse_device;
use mm_data::manifest::Split;
use mm_serve::{Batching, ModelSpec, ServeConfig, Server};

/// Options of `mm serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run folder to serve, as DIR (named after the folder) or NAME=DIR; repeat for several.
    #[arg(long = "run", required = true)]
    runs: Vec<String>,
    /// The address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port (0: any free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Most samples in one forward pass: concurrent requests are gathered up to this.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Longest a request waits for others to join its batch, in milliseconds. 0 waits for
    /// nothing: a batch is what queued while the model ran the one before.
    #[arg(long, default_value_t = 0)]
    max_wait_ms: u64,
    /// Requests that may wait per model; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Longest a request may take, in seconds (504 after).
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,
    /// Longest a client may take to send its request's head (the connection is closed after)
    /// and its body (408 after), in seconds.
    #[arg(long, default_value_t = 10.0)]
    read_timeout_s: f64,
    /// Most connections open at once; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Longest sound a sample may bring, in seconds (422 above).
    #[arg(long, default_value_t = 600.0)]
    max_audio_s: f64,
    /// Most video frames a sample may bring (422 above).
    #[arg(long, default_value_t = 512)]
    max_frames: usize,
    /// Largest request body, in MiB (413 above).
    #[arg(long, default_value_t = 16.0)]
    max_body_mib: f64,
    /// The split of a retrieval run's manifest that /v1/retrieve searches.
    #[arg(long, default_value = "test", value_parser = |s: &str| s.parse::<Split>())]
    gallery_split: Split,
    /// Hold each forward pass this much longer, as if the model were slower (load tests).
    #[arg(long, default_value_t = 0, hide = true)]
    simulate_latency_ms: u64,
    /// A bearer token every /v1/ and /metrics request must bring (or MM_SERVE_TOKEN).
    #[arg(long)]
    token: Option<String>,
}

fn seconds(name: &str, s: f64) -> Result<Duration> {
    if !(s.is_finite() && s > 0.0) {
        bail!("--{name} {s}: give a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

/// Runs `mm serve` until Ctrl-C or SIGTERM; requests in flight are answered first.
pub fn run(a: &Args) -> Result<()> {
    // Writing to a client that hung up must be an error for that request, not the end of the
    // server (main restores SIGPIPE's default for the other commands).
    // SAFETY: no thread has started yet; SIG_IGN is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    raise_open_files_limit();
    let models = a.runs.iter().map(|r| ModelSpec::parse(r)).collect::<Result<Vec<_>, _>>()?;
    for m in &models {
        if !m.run.join("run.toml").is_file() {
            bail!(
                "{}: not a run folder (no run.toml); `mm train --out DIR` makes one",
                m.run.display()
            );
        }
    }
    if a.max_batch == 0 || a.queue == 0 || a.max_connections == 0 {
        bail!("--max-batch, --queue and --max-connections must be at least 1");
    }
    if !(a.max_body_mib.is_finite() && a.max_body_mib > 0.0) {
        bail!("--max-body-mib {}: give a positive size", a.max_body_mib);
    }
    let token =
        a.token.clone().or_else(|| std::env::var("MM_SERVE_TOKEN").ok()).filter(|t| !t.is_empty());
    let config = ServeConfig {
        host: a.host.clone(),
        port: a.port,
        batching: Batching {
            max_batch: a.max_batch,
            max_wait: Duration::from_millis(a.max_wait_ms),
            queue: a.queue,
            simulated_latency: Duration::from_millis(a.simulate_latency_ms),
        },
        timeout: seconds("timeout-s", a.timeout_s)?,
        read_timeout: seconds("read-timeout-s", a.read_timeout_s)?,
        max_connections: a.max_connections,
        max_audio_seconds: seconds("max-audio-s", a.max_audio_s)?.as_secs_f64(),
        max_frames: a.max_frames,
        max_body: (a.max_body_mib * 1048576.0) as usize,
        token,
        gallery_split: a.gallery_split,
    };
    let device = parse_device(&a.device)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mm-serve-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        eprintln!(
            "mm serve: listening on http://{} (loading {}; GET /ready says when it is done)",
            server.local_addr(),
            names.join(", ")
        );
        let server = server.on_loaded(|m| {
            eprintln!(
                "mm serve: model {} loaded from {} (epoch {}, {} parameters, {}, reads {})",
                m.name,
                m.run.display(),
                m.epoch,
                m.parameters,
                m.device,
                m.modalities.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ")
            )
        });
        server.run(models, device, mm_serve::shutdown_signal()).await?;
        eprintln!("mm serve: stopped; every request in flight was answered");
        Ok::<(), anyhow::Error>(())
    })
}

/// Raises this process's limit of open files to its hard limit: each connection is one, and
/// a soft limit of 1024 (a common default) would refuse clients long before `--max-connections`.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid resource and a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

//! `bench-gpu`: training throughput, achieved TFLOP/s, peak memory and data-pipeline starvation
//! on a CUDA device (see `mm_benches::gpu`). Run it through `cargo xtask bench-gpu`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mm_benches::gpu::{self, Plan, RESULT_PREFIX};
use tch::Device;

/// GPU benchmarks: the seed model at batch 64/128/256 in f32 and bf16 autocast, the av-digits
/// model, every fusion method at scale, and the image pipeline feeding the GPU. Writes
/// bench-gpu.json and bench-gpu.md.
#[derive(Debug, Parser)]
#[command(name = "bench-gpu")]
struct Args {
    /// Without CUDA, run the same suite briefly on the CPU instead of failing.
    #[arg(long)]
    allow_cpu: bool,
    /// Small sizes and few steps even on a GPU.
    #[arg(long)]
    quick: bool,
    /// `auto` (the first GPU), `cuda:N`, or `cpu` (needs --allow-cpu).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Where the results go.
    #[arg(long, default_value_os_t = gpu::default_out())]
    out: PathBuf,
    /// Where generated inputs go (default: OUT/work).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Run one case in this process and print its result (used by the suite itself).
    #[arg(long, hide = true)]
    case: Option<String>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench-gpu: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<ExitCode, String> {
    let device =
        mm_data::device::parse_device(&args.device).map_err(|e| mm_data::error::report(&e))?;
    if device == Device::Cpu && !args.allow_cpu {
        return Err(format!(
            "no CUDA device (libtorch sees {} GPU(s); device `{}`): this suite measures GPU training. \
             Run it on a machine with an NVIDIA GPU and driver, or pass --allow-cpu to run the same cases briefly on the CPU.",
            tch::Cuda::device_count(),
            args.device
        ));
    }
    let brief = args.quick || device == Device::Cpu;
    let plan = if brief { Plan::brief() } else { Plan::gpu() };
    let work = args.work.clone().unwrap_or_else(|| args.out.join("work"));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    if let Some(case) = &args.case {
        let result = gpu::run_case(case, device, &plan, &work)?;
        println!(
            "{RESULT_PREFIX}{}",
            serde_json::to_string(&result).map_err(|e| mm_data::error::report(&e))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if device == Device::Cpu {
        eprintln!("bench-gpu: no GPU in use; running the suite briefly on the CPU (--allow-cpu): the numbers say little");
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let extra: Vec<String> =
        if brief { vec!["--quick".into(), "--allow-cpu".into()] } else { vec![] };
    let report = gpu::run_suite(&exe, device, &plan, &work, &extra);
    let markdown = gpu::markdown(&report);
    println!("{markdown}");
    let json = serde_json::to_string_pretty(&report).map_err(|e| mm_data::error::report(&e))?;
    mm_data::fs::write_atomic(&args.out.join("bench-gpu.json"), json.as_bytes())
        .map_err(|e| mm_data::error::report(&e))?;
    mm_data::fs::write_atomic(&args.out.join("bench-gpu.md"), markdown.as_bytes())
        .map_err(|e| mm_data::error::report(&e))?;
    eprintln!("bench-gpu: results in {}", args.out.join("bench-gpu.json").display());
    if report.failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("bench-gpu: {} case(s) failed (listed in the report)", report.failed.len());
        Ok(ExitCode::FAILURE)
    }
}

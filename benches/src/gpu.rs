//! The GPU suite behind `cargo xtask bench-gpu` (binary `bench-gpu`).
//!
//! Each case runs in a child process of its own, so that its peak memory is its own (libtorch's
//! caching allocator never gives memory back within a process) and an out-of-memory batch size
//! fails alone:
//!
//! - `train:seed:B:P`: training steps of the seed model (ResNet-50 224×224 + LSTM) at batch `B`
//!   in precision `P` (`fp32`, or `bf16` autocast): samples/s, achieved TFLOP/s from the
//!   counted FLOPs ([`crate::flops`]), their share of the device's peak, peak memory;
//! - `train:av:B:P`: the same for the av-digits model;
//! - `fusion:B`: forward and backward of every fusion method at batch `B`;
//! - `pipeline:B`: the image pipeline (PNG decode, crop, flip, jitter, normalise) feeding the
//!   seed model at batch `B`: the loader alone, training alone, and both together, with the
//!   share of time the training loop waits for data (the GPU is starved when it is large).
//!
//! Peak memory on CUDA is what NVML reports in use on the device during the case, less what
//! was in use before it (so it includes the CUDA context and the allocator's reserve); on the
//! CPU it is the process's peak resident size.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mm_data::loader::{Loader, LoaderConfig};
use mm_data::manifest::{Manifest, Split};
use mm_fusion::{FusionConfig, FusionModel};
use mm_train::precision::Precision;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::flops::train_step_flops;
use crate::workloads::{
    fusion_inputs, image_pipeline, median, png_manifest, time_runs, Trainer, Workload,
    FUSION_CASES, FUSION_DIMS,
};

/// Sizes of a suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Batches of the seed model.
    pub seed_batches: Vec<usize>,
    /// Batch of the av-digits model.
    pub av_batch: usize,
    /// Batch of the fusion methods.
    pub fusion_batch: usize,
    /// Batch of the pipeline case, and its number of images.
    pub pipeline: (usize, usize),
    /// Untimed steps before timing.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Side of the square matrices of the peak measurement.
    pub matmul: i64,
}

impl Plan {
    /// The suite on a GPU.
    pub fn gpu() -> Self {
        Plan {
            seed_batches: vec![64, 128, 256],
            av_batch: 1024,
            fusion_batch: 4096,
            pipeline: (64, 512),
            warmup: 3,
            steps: 10,
            matmul: 8192,
        }
    }

    /// The same cases, small, for a CPU (`--allow-cpu`) or a smoke test.
    pub fn brief() -> Self {
        Plan {
            seed_batches: vec![2],
            av_batch: 64,
            fusion_batch: 64,
            pipeline: (8, 16),
            warmup: 1,
            steps: 2,
            matmul: 512,
        }
    }

    /// Every case, as child-process specifications.
    pub fn cases(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in ["fp32", "bf16"] {
            for b in &self.seed_batches {
                out.push(format!("train:seed:{b}:{p}"));
            }
            out.push(format!("train:av:{}:{p}", self.av_batch));
        }
        out.push(format!("fusion:{}", self.fusion_batch));
        out.push(format!("pipeline:{}", self.pipeline.0));
        out
    }
}

/// The device and what it can do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `cuda:0` or `cpu`.
    pub device: String,
    /// The GPU's name (NVML), or the CPU's model.
    pub name: String,
    /// Measured TFLOP/s of a large f32 matrix product.
    pub matmul_fp32_tflops: f64,
    /// Measured TFLOP/s of a large bf16 matrix product.
    pub matmul_bf16_tflops: f64,
    /// The vendor's dense f32 peak, for GPUs this suite knows.
    pub nominal_fp32_tflops: Option<f64>,
    /// The vendor's dense bf16 tensor-core peak, for GPUs this suite knows.
    pub nominal_bf16_tflops: Option<f64>,
}

/// Vendor peaks (dense, no sparsity) of common data-centre and desktop GPUs: f32 and bf16
/// TFLOP/s, matched by a substring of the NVML name (first match wins).
const NOMINAL: &[(&str, f64, Option<f64>)] = &[
    ("H200 NVL", 60.0, Some(835.0)),
    ("H200", 67.0, Some(989.0)),
    ("H100 PCIe", 51.0, Some(756.0)),
    ("H100 NVL", 60.0, Some(835.0)),
    ("H100", 67.0, Some(989.0)),
    ("A100", 19.5, Some(312.0)),
    ("L40S", 91.6, Some(362.0)),
    ("L4", 30.3, Some(121.0)),
    ("A10", 31.2, Some(125.0)),
    ("RTX 4090", 82.6, Some(165.2)),
    ("V100", 15.7, None),
    ("T4", 8.1, None),
];

/// The vendor peaks for a GPU name.
pub fn nominal(name: &str) -> Option<(f64, Option<f64>)> {
    NOMINAL.iter().find(|(n, _, _)| name.contains(n)).map(|(_, f, b)| (*f, *b))
}

/// A training case's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainResult {
    /// `seed_resnet50_lstm` or `av_digits_gated`.
    pub model: String,
    /// Samples per step.
    pub batch: usize,
    /// `fp32` or `bf16`.
    pub precision: String,
    /// Median step time.
    pub step_ms: f64,
    /// Samples per second at the median step.
    pub samples_per_s: f64,
    /// Counted FLOPs of one step.
    pub flops_per_step: f64,
    /// Achieved TFLOP/s.
    pub tflops: f64,
    /// Peak memory of the case, MiB.
    pub peak_memory_mib: Option<f64>,
}

/// A fusion method's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FusionResult {
    /// The method (as in [`FUSION_CASES`]).
    pub method: String,
    /// Samples per pass.
    pub batch: usize,
    /// Trainable parameters.
    pub parameters: i64,
    /// Median forward + backward time.
    pub step_ms: f64,
    /// Samples per second.
    pub samples_per_s: f64,
}

/// The pipeline case's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineResult {
    /// Samples per batch.
    pub batch: usize,
    /// The loader alone, samples/s.
    pub loader_samples_per_s: f64,
    /// Training alone on a batch already on the device, samples/s.
    pub train_samples_per_s: f64,
    /// The loader feeding training, samples/s.
    pub fed_samples_per_s: f64,
    /// Share of the fed loop's time spent waiting for the next batch.
    pub data_wait_share: f64,
    /// Whether the wait is more than a tenth of the time.
    pub starved: bool,
}

/// What one child process reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CaseResult {
    /// `train:…`.
    Train(TrainResult),
    /// `fusion:…`.
    Fusion {
        /// Every method.
        methods: Vec<FusionResult>,
        /// Peak memory of the case, MiB.
        peak_memory_mib: Option<f64>,
    },
    /// `pipeline:…`.
    Pipeline(PipelineResult),
    /// The measurement of the device.
    Device(DeviceInfo),
}

/// The prefix of the line a child writes its result on.
pub const RESULT_PREFIX: &str = "BENCH-GPU-RESULT ";

/// Measures the device: its name and matrix-product peaks.
pub fn device_info(device: Device, side: i64) -> DeviceInfo {
    let name = match device {
        Device::Cuda(i) => nvml::name(i).unwrap_or_else(|| format!("CUDA device {i}")),
        // What the CPU can do in bf16 beside its name: the bf16 figures mean little without it.
        _ => format!("{}; {}", cpu_name(), mm_train::precision::cpu_bf16()),
    };
    let peak = |kind: Kind| {
        let a = Tensor::randn([side, side], (kind, device));
        let b = Tensor::randn([side, side], (kind, device));
        let runs = time_runs(device, 2, 5, || {
            let _ = a.matmul(&b);
        });
        2.0 * (side as f64).powi(3) / median(&runs) / 1e12
    };
    let (nominal_fp32_tflops, nominal_bf16_tflops) = match device {
        Device::Cuda(_) => nominal(&name).map_or((None, None), |(f, b)| (Some(f), b)),
        _ => (None, None),
    };
    DeviceInfo {
        device: device_name(device),
        name,
        matmul_fp32_tflops: peak(Kind::Float),
        matmul_bf16_tflops: peak(Kind::BFloat16),
        nominal_fp32_tflops,
        nominal_bf16_tflops,
    }
}

pub use mm_data::device::device_name;

/// The CPU's model name and logical cores.
pub fn cpu_name() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpu}, {} logical cores", std::thread::available_parallelism().map_or(0, |n| n.get()))
}

/// Runs one case (in this process) and returns its result. `work` holds the pipeline case's
/// images.
pub fn run_case(
    spec: &str,
    device: Device,
    plan: &Plan,
    work: &Path,
) -> Result<CaseResult, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let memory = Memory::start(device);
    let result = match parts.as_slice() {
        ["device"] => CaseResult::Device(device_info(device, plan.matmul)),
        ["train", model, batch, precision] => {
            let workload = match *model {
                "seed" => Workload::Seed,
                "av" => Workload::AvDigits,
                other => return Err(format!("unknown model {other:?} in case {spec:?}")),
            };
            let batch: usize = batch.parse().map_err(|_| format!("bad batch in case {spec:?}"))?;
            let p = match *precision {
                "fp32" => Precision::F32,
                "bf16" => Precision::Bf16,
                other => return Err(format!("unknown precision {other:?} in case {spec:?}")),
            };
            // A libtorch failure (no kernel for this precision here, a batch too large) fails
            // the case with a message naming the model part, not the process with a panic.
            let runs = mm_train::guard::step(&format!("the bench case {spec}"), p, device, || {
                let mut trainer = Trainer::new(workload, batch, device);
                Ok(time_runs(device, plan.warmup, plan.steps, || {
                    let _ = trainer.step_in(p);
                }))
            })
            .map_err(|e| mm_data::error::report(&e))?;
            let step = median(&runs);
            let flops = train_step_flops(workload, batch);
            CaseResult::Train(TrainResult {
                model: workload.name().into(),
                batch,
                precision: precision.to_string(),
                step_ms: step * 1e3,
                samples_per_s: batch as f64 / step,
                flops_per_step: flops,
                tflops: flops / step / 1e12,
                peak_memory_mib: memory.peak_mib(),
            })
        }
        ["fusion", batch] => {
            let batch: i64 = batch.parse().map_err(|_| format!("bad batch in case {spec:?}"))?;
            let mut methods = Vec::new();
            for (name, text) in FUSION_CASES {
                tch::manual_seed(0);
                let vs = nn::VarStore::new(device);
                let config: FusionConfig = toml::from_str(text).map_err(|e| format!("{name}: {e}"))?;
                let model = FusionModel::new(&(vs.root() / "fusion"), &config, &FUSION_DIMS).map_err(|e| format!("{name}: {e}"))?;
                let inputs = fusion_inputs(batch, name == "cross_attention", device);
                let runs = time_runs(device, plan.warmup, plan.steps, || model.forward_t(&inputs, true).fused.sum(Kind::Float).backward());
                let step = median(&runs);
                let parameters = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
                methods.push(FusionResult { method: name.into(), batch: batch as usize, parameters, step_ms: step * 1e3, samples_per_s: batch as f64 / step });
            }
            CaseResult::Fusion { methods, peak_memory_mib: memory.peak_mib() }
        }
        ["pipeline", batch] => {
            let batch: usize = batch.parse().map_err(|_| format!("bad batch in case {spec:?}"))?;
            CaseResult::Pipeline(pipeline_case(device, batch, plan, work)?)
        }
        _ => return Err(format!("unknown case {spec:?}: expected device, train:seed|av:BATCH:fp32|bf16, fusion:BATCH or pipeline:BATCH")),
    };
    Ok(result)
}

/// The image pipeline feeding the seed model.
fn pipeline_case(
    device: Device,
    batch: usize,
    plan: &Plan,
    work: &Path,
) -> Result<PipelineResult, String> {
    let manifest = Arc::new(
        Manifest::read(png_manifest(work, plan.pipeline.1)?)
            .map_err(|e| mm_data::error::report(&e))?,
    );
    let pipeline = image_pipeline();
    let loader = Loader::new(
        manifest,
        Split::Train,
        Arc::new(pipeline),
        LoaderConfig { batch_size: batch, ..LoaderConfig::training(0) },
    )
    .map_err(|e| mm_data::error::report(&e))?;
    let per_epoch = loader.batches_per_epoch() * batch;
    // The loader alone (second epoch; the first warms the file cache).
    let mut loader_rate = 0.0;
    for epoch in 0..2 {
        let start = Instant::now();
        let n: usize = loader.epoch(epoch).map(|b| b.map(|b| b.len()).unwrap_or(0)).sum();
        loader_rate = n as f64 / start.elapsed().as_secs_f64();
    }
    // Training alone, on one batch already on the device.
    let mut trainer = Trainer::new(Workload::Seed, batch, device);
    let runs = time_runs(device, plan.warmup, plan.steps, || {
        let _ = trainer.step();
    });
    let train_rate = batch as f64 / median(&runs);
    // The loader feeding training, as `fit` runs it: the next batch is prepared while the
    // current one trains; the loss is read every step.
    let (mut waited, mut total, mut samples) = (0.0, 0.0, 0usize);
    for epoch in 2..4 {
        let start = Instant::now();
        let mut wait = 0.0;
        let mut batches = loader.epoch(epoch);
        loop {
            let asked = Instant::now();
            let Some(next) = batches.next() else { break };
            wait += asked.elapsed().as_secs_f64();
            let next = next.map_err(|e| mm_data::error::report(&e))?.to_device(device);
            trainer.batch.image = next.image;
            let _ = trainer.step().double_value(&[]);
        }
        if epoch == 3 {
            waited = wait;
            total = start.elapsed().as_secs_f64();
            samples = per_epoch;
        }
    }
    let share = waited / total;
    Ok(PipelineResult {
        batch,
        loader_samples_per_s: loader_rate,
        train_samples_per_s: train_rate,
        fed_samples_per_s: samples as f64 / total,
        data_wait_share: share,
        starved: share > 0.1,
    })
}

/// Peak memory during a case: NVML's device memory in use on CUDA (sampled every 2 ms, less the
/// use at the start), the process's peak resident size on the CPU.
struct Memory {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    baseline: Option<u64>,
    cuda: bool,
}

impl Memory {
    fn start(device: Device) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let mut baseline = None;
        if let Device::Cuda(i) = device {
            if let Some(used) = nvml::used(i) {
                baseline = Some(used);
                let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(u) = nvml::used(i) {
                            peak.fetch_max(u, Ordering::Relaxed);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                });
            }
        }
        Memory { stop, peak, baseline, cuda: device.is_cuda() }
    }

    fn peak_mib(&self) -> Option<f64> {
        if self.cuda {
            let base = self.baseline?;
            Some(self.peak.load(Ordering::Relaxed).saturating_sub(base) as f64 / (1 << 20) as f64)
        } else {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let kb: f64 = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(kb / 1024.0)
        }
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// NVIDIA's management library, loaded when first asked for (no link-time dependency: the
/// suite builds and runs where there is none).
mod nvml {
    use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
    use std::sync::OnceLock;

    #[repr(C)]
    struct Memory {
        total: u64,
        free: u64,
        used: u64,
    }

    struct Api {
        _lib: libloading::Library,
        handle: unsafe extern "C" fn(c_uint, *mut *mut c_void) -> c_int,
        memory: unsafe extern "C" fn(*mut c_void, *mut Memory) -> c_int,
        name: unsafe extern "C" fn(*mut c_void, *mut c_char, c_uint) -> c_int,
    }

    fn api() -> Option<&'static Api> {
        static API: OnceLock<Option<Api>> = OnceLock::new();
        API.get_or_init(|| {
            // SAFETY: loading NVML runs its initialisers, which have no preconditions; the
            // symbols are NVML's documented C functions with these signatures.
            unsafe {
                let lib = libloading::Library::new("libnvidia-ml.so.1").ok()?;
                let init: libloading::Symbol<unsafe extern "C" fn() -> c_int> =
                    lib.get(b"nvmlInit_v2\0").ok()?;
                if init() != 0 {
                    return None;
                }
                let handle = *lib.get(b"nvmlDeviceGetHandleByIndex_v2\0").ok()?;
                let memory = *lib.get(b"nvmlDeviceGetMemoryInfo\0").ok()?;
                let name = *lib.get(b"nvmlDeviceGetName\0").ok()?;
                Some(Api { _lib: lib, handle, memory, name })
            }
        })
        .as_ref()
    }

    /// NVML's index of CUDA device `cuda` (CUDA_VISIBLE_DEVICES renumbers what CUDA sees).
    fn index(cuda: usize) -> c_uint {
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let mapped = visible
            .as_deref()
            .and_then(|v| v.split(',').nth(cuda))
            .and_then(|s| s.trim().parse().ok());
        mapped.unwrap_or(cuda as c_uint)
    }

    fn device(cuda: usize) -> Option<(&'static Api, *mut c_void)> {
        let api = api()?;
        let mut dev = std::ptr::null_mut();
        // SAFETY: NVML is initialised; `dev` is a valid out-pointer.
        (unsafe { (api.handle)(index(cuda), &mut dev) } == 0).then_some((api, dev))
    }

    /// Bytes in use on the device.
    pub fn used(cuda: usize) -> Option<u64> {
        let (api, dev) = device(cuda)?;
        let mut m = Memory { total: 0, free: 0, used: 0 };
        // SAFETY: a handle NVML gave us and a valid out-pointer of NVML's struct layout.
        (unsafe { (api.memory)(dev, &mut m) } == 0).then_some(m.used)
    }

    /// The device's name.
    pub fn name(cuda: usize) -> Option<String> {
        let (api, dev) = device(cuda)?;
        let mut buf = [0 as c_char; 96];
        // SAFETY: the buffer's length is passed; NVML writes a NUL-terminated name into it.
        if unsafe { (api.name)(dev, buf.as_mut_ptr(), buf.len() as c_uint) } != 0 {
            return None;
        }
        // SAFETY: NVML NUL-terminated the name within the buffer.
        Some(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
    }
}

/// The whole suite's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The device.
    pub device: Option<DeviceInfo>,
    /// The sizes.
    pub plan: Plan,
    /// Results, in case order.
    pub results: Vec<CaseResult>,
    /// Cases that failed, with their error (an out-of-memory batch, say).
    pub failed: Vec<(String, String)>,
}

/// The report as Markdown.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    if let Some(d) = &r.device {
        out.push_str(&format!(
            "Device: {} ({}). Measured matrix-product peak: {:.1} TFLOP/s f32, {:.1} TFLOP/s bf16{}.\n\n",
            d.name,
            d.device,
            d.matmul_fp32_tflops,
            d.matmul_bf16_tflops,
            match (d.nominal_fp32_tflops, d.nominal_bf16_tflops) {
                (Some(f), Some(b)) => format!("; vendor peak {f} f32, {b} bf16"),
                (Some(f), None) => format!("; vendor peak {f} f32"),
                _ => String::new(),
            }
        ));
    }
    let peak_of = |precision: &str| {
        r.device.as_ref().map(|d| {
            if precision == "bf16" {
                d.matmul_bf16_tflops
            } else {
                d.matmul_fp32_tflops
            }
        })
    };
    out.push_str("| model | batch | precision | step (ms) | samples/s | TFLOP/s | of matmul peak | peak memory (MiB) |\n| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n");
    for res in &r.results {
        if let CaseResult::Train(t) = res {
            out.push_str(&format!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.2} | {} | {} |\n",
                t.model,
                t.batch,
                t.precision,
                t.step_ms,
                t.samples_per_s,
                t.tflops,
                peak_of(&t.precision)
                    .map_or("-".into(), |p| format!("{:.0}%", 100.0 * t.tflops / p)),
                t.peak_memory_mib.map_or("-".into(), |m| format!("{m:.0}"))
            ));
        }
    }
    for res in &r.results {
        match res {
            CaseResult::Fusion { methods, peak_memory_mib } => {
                out.push_str(&format!(
                    "\nFusion methods, forward + backward, embeddings of 512, 128 and 256 (peak memory of all: {} MiB):\n\n| method | batch | parameters | ms | samples/s |\n| --- | ---: | ---: | ---: | ---: |\n",
                    peak_memory_mib.map_or("-".into(), |m| format!("{m:.0}"))
                ));
                for m in methods {
                    out.push_str(&format!("| {} | {} | {} | {:.2} | {:.0} |\n", m.method, m.batch, m.parameters, m.step_ms, m.samples_per_s));
                }
            }
            CaseResult::Pipeline(p) => out.push_str(&format!(
                "\nImage pipeline feeding the seed model (batch {}): loader alone {:.0} samples/s, training alone {:.1} samples/s, \
                 fed {:.1} samples/s; waiting for data {:.0}% of the time: {}.\n",
                p.batch,
                p.loader_samples_per_s,
                p.train_samples_per_s,
                p.fed_samples_per_s,
                100.0 * p.data_wait_share,
                if p.starved { "starved" } else { "not starved" }
            )),
            _ => {}
        }
    }
    if !r.failed.is_empty() {
        out.push_str("\nFailed cases:\n\n");
        for (case, why) in &r.failed {
            out.push_str(&format!("- `{case}`: {why}\n"));
        }
    }
    out
}

/// Runs every case of `plan` in a child process (`exe --case SPEC`), collecting results.
pub fn run_suite(exe: &Path, device: Device, plan: &Plan, work: &Path, extra: &[String]) -> Report {
    let mut report =
        Report { device: None, plan: plan.clone(), results: Vec::new(), failed: Vec::new() };
    let cases: Vec<String> = std::iter::once("device".to_string()).chain(plan.cases()).collect();
    for case in cases {
        eprintln!("bench-gpu: {case}");
        let out = std::process::Command::new(exe)
            .args(["--case", &case, "--device", &device_name(device), "--work"])
            .arg(work)
            .args(extra)
            .output();
        let parsed = match out {
            Err(e) => Err(format!("could not start: {e}")),
            Ok(o) => {
                let stdout = String::from_utf8_lossy(&o.stdout);
                match stdout.lines().find_map(|l| l.strip_prefix(RESULT_PREFIX)) {
                    Some(json) if o.status.success() => serde_json::from_str::<CaseResult>(json)
                        .map_err(|e| format!("unreadable result: {e}")),
                    _ => {
                        let stderr = String::from_utf8_lossy(&o.stderr);
                        let last = stderr
                            .lines()
                            .rev()
                            .find(|l| !l.trim().is_empty())
                            .unwrap_or("no message");
                        Err(format!("{} ({last})", o.status))
                    }
                }
            }
        };
        match parsed {
            Ok(CaseResult::Device(d)) => report.device = Some(d),
            Ok(r) => report.results.push(r),
            Err(e) => {
                eprintln!("bench-gpu: {case} failed: {e}");
                report.failed.push((case, e));
            }
        }
    }
    report
}

/// Where results go by default.
pub fn default_out() -> PathBuf {
    PathBuf::from("target/bench-gpu")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_every_model_precision_and_batch() {
        let cases = Plan::gpu().cases();
        for b in [64, 128, 256] {
            for p in ["fp32", "bf16"] {
                assert!(cases.contains(&format!("train:seed:{b}:{p}")), "{cases:?}");
            }
        }
        assert!(
            cases.iter().any(|c| c.starts_with("train:av:"))
                && cases.iter().any(|c| c.starts_with("fusion:"))
                && cases.iter().any(|c| c.starts_with("pipeline:"))
        );
        assert_eq!(nominal("NVIDIA H200"), Some((67.0, Some(989.0))));
        assert_eq!(nominal("NVIDIA H100 PCIe"), Some((51.0, Some(756.0))));
        assert_eq!(nominal("Some future GPU"), None);
    }

    #[test]
    fn unknown_cases_are_refused_by_name() {
        let e =
            run_case("train:gpt:8:fp32", Device::Cpu, &Plan::brief(), Path::new("/nonexistent"))
                .err()
                .unwrap_or_default();
        assert!(e.contains("\"gpt\""), "{e}");
        let e = run_case("warp", Device::Cpu, &Plan::brief(), Path::new("/nonexistent"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("unknown case \"warp\""), "{e}");
    }
}

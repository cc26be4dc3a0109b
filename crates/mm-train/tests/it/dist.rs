//! Data-parallel training over loopback: real processes (this test binary, started again as
//! ranks), libtorch's TCPStore and Gloo process group on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mm_data::manifest::Manifest;
use mm_data::pipeline::Pipeline;
use mm_train::dist::{self, Env, GroupOptions, Launch, ProcessGroup, ReduceOp};
use mm_train::model::{DataShape, Model, ModelConfig};
use mm_train::train::{fit, fit_in, TrainConfig};
use tch::{nn, Device, Kind, Tensor};

/// No batch norm and no dropout: two ranks' batches together then give exactly the gradient
/// of one process on the joint batch (up to rounding).
const MODEL: &str = r#"
    [encoders.text]
    kind = "text"
    dim = 16
    pooling = "mean"
    dropout = 0.0

    [encoders.audio]
    kind = "audio"
    backbone = { type = "rnn", cell = "gru", hidden = 16, layers = 1, dropout = 0.0 }
    pooling = "mean"

    [fusion]
    method = "concat"

    [head]
    type = "classification"
    hidden = [16]
"#;

fn model(vs: &nn::VarStore, pipeline: &Pipeline, manifest: &Manifest) -> Model {
    let config: ModelConfig = toml::from_str(MODEL).expect("model config");
    let classes = mm_datasets::synth::CLASSES;
    let counts = classes
        .iter()
        .map(|c| {
            manifest
                .split(mm_data::manifest::Split::Train)
                .filter(|s| s.label.as_deref() == Some(*c))
                .count()
        })
        .collect();
    Model::new(&vs.root(), &config, &DataShape::from_pipeline(pipeline, counts)).expect("model")
}

fn config(batch_size: usize) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size,
        seed: 5,
        lr: 3e-3,
        progress: false,
        ..TrainConfig::default()
    }
}

/// Every variable by name, on the host.
fn variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(k, t)| (k, t.detach().copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn save(vs: &nn::VarStore, path: &Path) {
    Tensor::write_safetensors(&variables(vs), path).expect("write variables");
}

fn read(path: &Path) -> Vec<(String, Tensor)> {
    let mut v =
        Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(
        a.iter().map(|x| &x.0).collect::<Vec<_>>(),
        b.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    a.iter().zip(b).map(|(x, y)| (&x.1 - &y.1).abs().max().double_value(&[])).fold(0.0, f64::max)
}

/// One rank, run by the tests below as a child process (ignored otherwise). `MM_DIST_CHILD`
/// says what to do: `collectives`, `steps` (a hand-written loop checking after every step that
/// the ranks hold the same parameters), `fit` (the training loop), `hang` (stop answering
/// after the first step) or `die` (exit in the middle of the first epoch).
#[test]
#[ignore = "a helper: runs only as a rank started by the dist tests"]
fn child_rank() {
    let (Some(mode), Some(dir)) =
        (std::env::var("MM_DIST_CHILD").ok(), std::env::var_os("MM_DIST_DIR").map(PathBuf::from))
    else {
        return;
    };
    let env = Env::from_env().expect("variables").expect("a job");
    // `MM_DIST_DEVICE=cuda`: the collectives on GPU tensors (the GPU of the local rank, or GPU 0
    // for every rank when there is one).
    let device = match std::env::var("MM_DIST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(env.local_rank % tch::Cuda::device_count().max(1) as usize),
        _ => Device::Cpu,
    };
    let group =
        ProcessGroup::new(&env, &GroupOptions::from_env(device).expect("options")).expect("join");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rank_body(&mode, &dir, &group, device)
    }));
    // The rank's outcome is its exit status, which the test that started it checks; exiting
    // here, before the harness prints a result line of its own, keeps the workspace's test
    // summary to the tests themselves (a panic's message is on stderr already).
    drop(group);
    std::process::exit(if outcome.is_ok() { 0 } else { 3 });
}

fn rank_body(mode: &str, dir: &Path, group: &ProcessGroup, device: Device) {
    let (rank, world) = (group.rank(), group.world_size());
    match mode {
        "collectives" => {
            let t = Tensor::from_slice(&[rank as f32 + 1.0, 10.0 * rank as f32]).to_device(device);
            group.all_reduce(&[t.shallow_clone()], ReduceOp::Sum).expect("all-reduce");
            assert_eq!(
                Vec::<f32>::try_from(&t.to_device(Device::Cpu)).expect("values"),
                [3.0, 10.0]
            );
            let m = Tensor::from_slice(&[rank as f64]).to_device(device);
            group.all_reduce(&[m.shallow_clone()], ReduceOp::Max).expect("max");
            assert_eq!(m.double_value(&[0]), 1.0);
            let b = Tensor::from_slice(&[rank as i64 * 7 + 1; 5]).to_device(device);
            group.broadcast(&[b.shallow_clone()], 1).expect("broadcast");
            assert_eq!(Vec::<i64>::try_from(&b.to_device(Device::Cpu)).expect("values"), [8; 5]);
            // Gradients on the device, averaged in buckets.
            let p =
                Tensor::from_slice(&[1.0f32, 2.0, 3.0]).to_device(device).set_requires_grad(true);
            (&p * (rank as f64 + 1.0)).sum(Kind::Float).backward();
            dist::average_gradients(group, &[p.shallow_clone()]).expect("average");
            assert_eq!(
                Vec::<f32>::try_from(&p.grad().to_device(Device::Cpu)).expect("grad"),
                [1.5; 3]
            );
            // A gradient only rank 0 has counts as zero on rank 1; one no rank has stays absent.
            let q = Tensor::from_slice(&[1.0f32, 1.0]).to_device(device).set_requires_grad(true);
            let r = Tensor::from_slice(&[5.0f32]).to_device(device).set_requires_grad(true);
            if rank == 0 {
                (&q * 4.0).sum(Kind::Float).backward();
            }
            dist::average_gradients(group, &[q.shallow_clone(), r.shallow_clone()])
                .expect("average");
            assert_eq!(
                Vec::<f32>::try_from(&q.grad().to_device(Device::Cpu)).expect("grad"),
                [2.0; 2],
                "rank {rank}"
            );
            assert!(!r.grad().defined(), "rank {rank}: a gradient appeared where no rank had one");
            // Different lengths per rank, concatenated in rank order.
            let mine: Vec<f64> = (0..(rank + 2)).map(|i| (rank * 100 + i) as f64).collect();
            assert_eq!(group.all_gather(&mine).expect("gather"), [0.0, 1.0, 100.0, 101.0, 102.0]);
            let bytes = group
                .broadcast_bytes(if rank == 0 { b"from rank 0" } else { b"" }, 0)
                .expect("bytes");
            assert_eq!(bytes, b"from rank 0");
            group.barrier().expect("barrier");
        }
        "steps" => {
            let (manifest, pipeline) = super::training::load(dir);
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(rank as i64); // different on each rank: the broadcast must fix it
            let model = model(&vs, &pipeline, &manifest);
            dist::broadcast_variables(group, &vs, 0).expect("broadcast");
            let params = vs.trainable_variables();
            let mut opt = mm_train::optim::Optimizer::new(
                &config(4).optimizer,
                vec![mm_train::optim::Group::new(
                    "all",
                    params.iter().map(Tensor::shallow_clone).collect(),
                )],
            )
            .expect("optimizer");
            let shard = mm_data::loader::Shard { rank, world };
            let loader_config = mm_data::loader::LoaderConfig {
                batch_size: 4,
                shard,
                ..mm_data::loader::LoaderConfig::training(5)
            };
            let loader = mm_data::loader::Loader::new(
                Arc::clone(&manifest),
                mm_data::manifest::Split::Train,
                Arc::clone(&pipeline),
                loader_config,
            )
            .expect("loader");
            for (step, batch) in loader.epoch(0).enumerate() {
                let batch = batch.expect("batch");
                let out = model.forward_t(&batch, true);
                model.loss(&out, &batch).expect("loss").backward();
                dist::average_gradients(group, &params).expect("average");
                opt.step(3e-3);
                opt.zero_grad();
                // Every parameter, bit for bit, on both ranks.
                let flat: Vec<f64> = Vec::try_from(Tensor::cat(
                    &params
                        .iter()
                        .map(|p| p.detach().view([-1]).to_kind(Kind::Double))
                        .collect::<Vec<_>>(),
                    0,
                ))
                .expect("flat");
                let both = group.all_gather(&flat).expect("gather");
                let (a, b) = both.split_at(flat.len());
                assert!(a == b, "the ranks' parameters differ after step {step}");
            }
            save(&vs, &dir.join(format!("steps-rank{rank}.safetensors")));
        }
        "fit" | "hang" | "die" => {
            let (manifest, pipeline) = super::training::load(dir);
            let vs = nn::VarStore::new(Device::Cpu);
            tch::manual_seed(0);
            let model = model(&vs, &pipeline, &manifest);
            let mut train = config(4);
            if mode != "fit" {
                train.epochs = 50;
            }
            let out = dir.join(format!("{mode}-run"));
            let result = if mode == "fit" {
                fit_in(&model, &vs, manifest, pipeline, &train, &out, false, Some(group))
            } else if rank == 1 {
                // Rank 1 stops: waits forever (hang) or exits (die) once it has joined the
                // training, after rank 0's first epoch record shows the loop is running.
                let record = out.join("metrics.jsonl");
                let deadline = Instant::now() + Duration::from_secs(120);
                let die = mode == "die";
                std::thread::spawn(move || {
                    while !record.exists() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if die {
                        // SAFETY: ending this process at once, as a crash or a kill would.
                        unsafe { libc::_exit(3) };
                    }
                    // SAFETY: stopping this very process (SIGSTOP); the test kills it later.
                    unsafe { libc::raise(libc::SIGSTOP) };
                });
                fit_in(&model, &vs, manifest, pipeline, &train, &out, false, Some(group))
            } else {
                fit_in(&model, &vs, manifest, pipeline, &train, &out, false, Some(group))
            };
            match result {
                Ok(_) => save(&vs, &dir.join(format!("{mode}-rank{rank}.safetensors"))),
                Err(e) => {
                    std::fs::write(dir.join(format!("{mode}-rank{rank}.error")), e.to_string())
                        .expect("write the error");
                    std::process::exit(2);
                }
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Starts `world` ranks of `mode` on a free loopback port (through [`dist::launch`], which
/// sets torchrun's variables), with `extra` variables.
fn launch_with(
    mode: &str,
    dir: &Path,
    world: usize,
    extra: &[(&str, &str)],
) -> mm_train::Result<()> {
    let mut spec = Launch::local(world);
    spec.env = vec![
        ("MM_DIST_CHILD".into(), mode.into()),
        ("MM_DIST_DIR".into(), dir.display().to_string()),
        ("MM_DIST_TIMEOUT".into(), "60".into()),
    ];
    spec.env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let args: Vec<std::ffi::OsString> =
        ["--exact", "dist::child_rank", "--ignored", "--nocapture", "--test-threads", "1"]
            .iter()
            .map(Into::into)
            .collect();
    dist::launch(&spec, &std::env::current_exe().expect("test binary"), &args)
}

fn launch(mode: &str, dir: &Path, world: usize) -> mm_train::Result<()> {
    launch_with(mode, dir, world, &[])
}

/// The same collectives on GPU tensors: through Gloo (host copies) on any CUDA machine, and
/// through NCCL when this build has it and the machine has a GPU per rank.
#[test]
fn collectives_on_gpu_tensors_when_a_gpu_is_present() {
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device: the GPU collectives are skipped");
        return;
    }
    let dir = std::env::temp_dir().join(format!("mm-dist-gpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    launch_with("collectives", &dir, 2, &[("MM_DIST_DEVICE", "cuda"), ("MM_DIST_BACKEND", "gloo")])
        .expect("Gloo on CUDA tensors");
    if dist::has_nccl() && tch::Cuda::device_count() >= 2 {
        launch_with(
            "collectives",
            &dir,
            2,
            &[("MM_DIST_DEVICE", "cuda"), ("MM_DIST_BACKEND", "nccl")],
        )
        .expect("NCCL");
    } else {
        eprintln!(
            "NCCL skipped: built in {}, {} GPU(s)",
            dist::has_nccl(),
            tch::Cuda::device_count()
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn collectives_reduce_broadcast_and_gather_across_two_processes() {
    let dir = std::env::temp_dir().join(format!("mm-dist-collectives-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    launch("collectives", &dir, 2).expect("both ranks pass their checks");
    std::fs::remove_dir_all(dir).ok();
}

/// Two ranks with batches of 4 take, step after step, the same parameters (bit for bit), and
/// end where one process with batches of 8 over the same epoch ends.
#[test]
fn two_ranks_take_identical_steps_equal_to_one_process_on_the_joint_batches() {
    let _rng = super::rng_lock();
    let (dir, manifest, pipeline) = super::training::data("dist-steps", 72);
    launch("steps", &dir, 2).expect("both ranks stay identical");
    let ranks =
        [read(&dir.join("steps-rank0.safetensors")), read(&dir.join("steps-rank1.safetensors"))];
    assert_eq!(max_difference(&ranks[0], &ranks[1]), 0.0);
    // One process: the same initial variables (rank 0's seed), batches of 8.
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(0);
    let model = model(&vs, &pipeline, &manifest);
    let params = vs.trainable_variables();
    let mut opt = mm_train::optim::Optimizer::new(
        &config(8).optimizer,
        vec![mm_train::optim::Group::new("all", params)],
    )
    .expect("optimizer");
    let loader = mm_data::loader::Loader::new(
        Arc::clone(&manifest),
        mm_data::manifest::Split::Train,
        Arc::clone(&pipeline),
        mm_data::loader::LoaderConfig {
            batch_size: 8,
            ..mm_data::loader::LoaderConfig::training(5)
        },
    )
    .expect("loader");
    let before = variables(&vs);
    let mut steps = 0;
    for batch in loader.epoch(0) {
        let batch = batch.expect("batch");
        let out = model.forward_t(&batch, true);
        model.loss(&out, &batch).expect("loss").backward();
        opt.step(3e-3);
        opt.zero_grad();
        steps += 1;
    }
    let single = variables(&vs);
    assert!(steps >= 4, "{steps} steps");
    let moved = max_difference(&before, &single);
    let apart = max_difference(&single, &ranks[0]);
    assert!(
        apart < 1e-5 && moved > 100.0 * apart,
        "two ranks end {apart:e} from one process, which moved {moved:e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// The training loop itself on two ranks: both end with the same variables, equal (within
/// rounding) to `fit` in one process with twice the batch size, and only rank 0 wrote the run.
#[test]
fn fit_on_two_ranks_matches_one_process_with_twice_the_batch() {
    let _rng = super::rng_lock();
    let (dir, manifest, pipeline) = super::training::data("dist-fit", 72);
    launch("fit", &dir, 2).expect("both ranks train");
    let ranks =
        [read(&dir.join("fit-rank0.safetensors")), read(&dir.join("fit-rank1.safetensors"))];
    assert_eq!(max_difference(&ranks[0], &ranks[1]), 0.0);
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(0);
    let model = model(&vs, &pipeline, &manifest);
    let single = fit(
        &model,
        &vs,
        Arc::clone(&manifest),
        Arc::clone(&pipeline),
        &config(8),
        &dir.join("single-run"),
        false,
    )
    .expect("one process");
    let apart = max_difference(&variables(&vs), &ranks[0]);
    assert!(apart < 1e-4, "two ranks end {apart:e} from one process");
    // Rank 0's record: the same epochs, the validation metrics of the whole split.
    let record: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("fit-run/metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(record.len(), single.history.len());
    for (a, b) in record.iter().zip(&single.history) {
        assert_eq!(a["step"], b["step"]);
        let (x, y) =
            (a["val"]["loss"].as_f64().expect("loss"), b["val"]["loss"].as_f64().expect("loss"));
        assert!((x - y).abs() < 1e-3, "validation loss {x} against {y}");
        assert_eq!(a["val"]["accuracy"], b["val"]["accuracy"]);
    }
    std::fs::remove_dir_all(dir).ok();
}

/// A rank that dies makes the other fail at once with an error naming the collective, and one
/// that stops answering makes it fail after the timeout: never a hang.
#[test]
fn a_rank_that_dies_or_hangs_fails_the_other_with_a_clear_error() {
    let _rng = super::rng_lock();
    let (dir, _, _) = super::training::data("dist-fail", 72);
    for (mode, timeout, within) in [("die", "60", 45.0), ("hang", "5", 45.0)] {
        let port = dist::free_port().expect("port");
        let started = Instant::now();
        let mut children: Vec<_> = (0..2)
            .map(|rank| {
                Command::new(std::env::current_exe().expect("test binary"))
                    .args([
                        "--exact",
                        "dist::child_rank",
                        "--ignored",
                        "--nocapture",
                        "--test-threads",
                        "1",
                    ])
                    .env("MM_DIST_CHILD", mode)
                    .env("MM_DIST_DIR", &dir)
                    .env("MM_DIST_TIMEOUT", timeout)
                    .env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", port.to_string())
                    .env("RANK", rank.to_string())
                    .env("WORLD_SIZE", "2")
                    .env("OMP_NUM_THREADS", "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        // Rank 0 must end on its own, with an error.
        let status = loop {
            if let Some(s) = children[0].try_wait().expect("wait") {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "{mode}: rank 0 still running after 4 minutes"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let seconds = started.elapsed().as_secs_f64();
        for c in &mut children {
            c.kill().ok();
            c.wait().ok();
        }
        assert_eq!(status.code(), Some(2), "{mode}: rank 0 should fail with an error");
        let error = std::fs::read_to_string(dir.join(format!("{mode}-rank0.error")))
            .expect("rank 0's error");
        assert!(
            error.contains("rank 0 of 2")
                && ["all-reduce", "broadcast"].iter().any(|c| error.contains(c)),
            "{mode}: {error}"
        );
        assert!(seconds < within + 60.0, "{mode}: rank 0 took {seconds:.0} s to fail");
        eprintln!("{mode}: rank 0 failed after {seconds:.1} s: {error}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_launcher_reports_the_failed_rank_and_stops_the_others() {
    let dir = std::env::temp_dir().join(format!("mm-dist-launch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // An unknown mode makes every rank panic at once.
    let e = launch("no-such-mode", &dir, 2).expect_err("the ranks fail").to_string();
    assert!(e.contains("rank ") && e.contains("exited with"), "{e}");
    let e = dist::launch(&Launch { nproc_per_node: 0, ..Launch::local(1) }, Path::new("true"), &[])
        .expect_err("no processes")
        .to_string();
    assert!(e.contains("at least one process"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

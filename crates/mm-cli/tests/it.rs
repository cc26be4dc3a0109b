//! Integration tests of the `mm` binary: they run the real executable, as a user would.

use std::path::Path;
use std::process::{Command, Output};

fn mm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mm")).args(args).output().expect("run the mm binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Smoke test: the binary starts (rpath to libtorch works without LD_LIBRARY_PATH), loads the
/// libtorch set-up chose, and — on a machine with an NVIDIA driver and a CUDA build of
/// libtorch — sees the GPU.
#[test]
fn info_reports_the_loaded_libtorch() {
    let out = Command::new(env!("CARGO_BIN_EXE_mm"))
        .args(["info", "--json"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run mm");
    assert!(out.status.success(), "mm info failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.contains("\"libtorch\":\"/"), "{text}");
    assert!(text.contains("libtorch_cpu.so"), "{text}");
    let libtorch_has_cuda = text.contains("\"libtorch_cuda\":\"/");
    let gpu_present = Path::new("/dev/nvidiactl").exists();
    if gpu_present && libtorch_has_cuda {
        assert!(text.contains("\"cuda_available\":true"), "GPU present but not seen: {text}");
    } else {
        eprintln!("no NVIDIA GPU here (or a CPU-only libtorch): the CUDA check is skipped");
        assert!(text.contains("\"cuda_available\":false"), "{text}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let out = mm(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-command"));
    let out = mm(&["demo", "--device", "tpu", "--out", "/nonexistent-never-created"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown device `tpu`") && !err.contains("panicked"), "{err}");
}

/// The demo trains for real on files it writes: every single modality stays under its ceiling
/// (about half), the fused model clears 90 % and every single modality by far.
#[test]
fn demo_fusion_beats_every_single_modality() {
    let dir = std::env::temp_dir().join(format!("mm-cli-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = mm(&["demo", "--device", "cpu", "--out", dir.to_str().expect("utf-8 temp dir")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    let row = |name: &str| -> (f64, f64) {
        let line =
            text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {text}"));
        let pcts: Vec<f64> = line
            .split_whitespace()
            .filter(|w| w.ends_with('%'))
            .map(|w| w.trim_end_matches('%').parse().expect("a number"))
            .collect();
        (pcts[0], pcts[1])
    };
    let fused = row("fused").0;
    for single in ["image only", "audio only", "caption only"] {
        let (accuracy, ceiling) = row(single);
        assert!(
            accuracy <= ceiling + 6.0,
            "{single} at {accuracy}% above its ceiling {ceiling}%: {text}"
        );
        assert!(
            fused > accuracy + 30.0,
            "fused {fused}% not far above {single} {accuracy}%: {text}"
        );
    }
    assert!(fused > 90.0, "fused only {fused}%: {text}");
    assert!(text.contains("caption -> image retrieval"), "{text}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(report["classification"].as_array().map(Vec::len), Some(4));
    for run in ["image-only", "audio-only", "caption-only", "fused", "retrieval"] {
        assert!(dir.join(format!("runs/{run}/curves.svg")).is_file(), "{run}");
        assert!(dir.join(format!("runs/{run}/checkpoints/best.json")).is_file(), "{run}");
    }
    assert!(dir.join("clean-report.json").is_file());
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn data_synth_writes_the_data_set_and_reports_its_ceilings() {
    let dir = std::env::temp_dir().join(format!("mm-cli-synth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out_dir = dir.to_str().expect("utf-8 temp dir");
    let args = [
        "data",
        "synth",
        "--out",
        out_dir,
        "--samples",
        "40",
        "--image-size",
        "24",
        "--frame-size",
        "16",
        "--corrupt-images",
        "0.1",
    ];
    let out = mm(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = stdout(&out);
    assert!(text.contains("wrote 40 samples") && text.contains("4 truncated images"), "{text}");
    for task in
        ["manifest.jsonl", "video.jsonl", "retrieval.jsonl", "sentiment.jsonl", "diagnosis.jsonl"]
    {
        assert!(text.contains(task), "{text}");
        assert_eq!(
            std::fs::read_to_string(dir.join(task)).expect("manifest").lines().count(),
            40,
            "{task}"
        );
    }
    // The JSON summary is the synth.json written beside the data.
    let mut json_args = args.to_vec();
    json_args.extend(["--force", "--json"]);
    let out = mm(&json_args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout(&out).trim_end(),
        std::fs::read_to_string(dir.join("synth.json")).expect("summary").trim_end()
    );
    // Refusals: an existing data set without --force, a bad value.
    let out = mm(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = mm(&["data", "synth", "--out", out_dir, "--force", "--noise", "9"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("synth.noise") && !err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
#[path = "it/caption.rs"]
mod caption;
#[path = "it/clip.rs"]
mod clip;
#[path = "it/runs.rs"]
mod runs;
#[path = "it/serve.rs"]
mod serve;

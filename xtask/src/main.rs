//! `cargo xtask`: the workspace's own tasks, in plain Rust.
//!
//! - `cargo xtask setup`: provision libtorch 2.13.0 (the version tch 0.26 requires) and point the
//!   workspace at it through the git-ignored link `.libtorch`; and an FFmpeg for video files when
//!   there is none (see [`ffmpeg`]).
//! - `cargo xtask demo`: set-up if needed, then the main job on the embedded data.
//! - `cargo xtask setup --print-env`: set-up, then print the `LIBTORCH` line a project outside
//!   the workspace needs (see [`downstream`]).
//! - `cargo xtask test`: set-up if needed, then every test of the workspace, then the downstream
//!   example (`cargo xtask test-downstream` runs that alone).
//! - `cargo xtask fetch-data NAME...`: download, verify, unpack and convert data sets (runs the
//!   `mm-fetch` binary, which needs no libtorch, so no set-up either); `fetch-weights` is the same
//!   command for pretrained weights.
//! - `cargo xtask bench-peer`: set-up, then mm against the same workloads in PyTorch.
//! - `cargo xtask bench-serve`: set-up, then `mm serve` against a PyTorch model server.
//! - `cargo xtask bench-gpu`: set-up, then the GPU benchmark suite.
//!
//! Architecture invariant: xtask depends on no workspace crate and builds without libtorch, so it
//! runs on a fresh clone before anything else is possible.

mod bench;
mod downstream;
mod ffmpeg;
mod libtorch;
mod tidy;

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  setup [--force] [--print-env]
                    provision libtorch 2.13.0 and point the workspace at it (idempotent);
                    --print-env then prints the LIBTORCH line for a project outside the
                    workspace, for `eval \"$(cargo xtask setup --print-env)\"`
  demo [args]       set-up if needed, then run `mm demo` with the given arguments
  test [args]       set-up if needed, then `cargo test --workspace` with the given arguments;
                    without arguments, then also test-downstream
  test-downstream   build and run examples/downstream as a project outside the workspace
  fetch-data [args] download, verify, unpack and convert data sets into manifests
                    (`cargo xtask fetch-data --list`; `--help` for the options)
  fetch-weights [args]  the same for pretrained weights (resnet18, resnet50, vgg16,
                    bert-base-uncased, clip-vit-base-patch32, clip-vit-base-patch16,
                    whisper-tiny, whisper-base, whisper-small): the registry holds both, so
                    either name works
  bench-peer [args] mm against PyTorch on the same machine (W1 image pipeline, W2 audio
                    pipeline, W3 training steps, W4 an av-digits epoch); the first run needs
                    --install-peer-deps (torchvision, torchaudio, ... beside set-up's torch);
                    --quick, --threads N, --only W1,W3, --no-peer; results in target/bench-peer/
  bench-serve [args]  `mm serve` against the same model in PyTorch behind FastAPI and uvicorn:
                    requests/s and p50/p99 latency with 1, 8 and 64 clients over loopback; the
                    first run needs --install-peer-deps; --quick, --threads N, --seconds S,
                    --clients 1,8,64, --no-peer; results in target/bench-serve/
  bench-gpu [args]  GPU training throughput, TFLOP/s, memory; results in target/bench-gpu/
                    (`--allow-cpu` runs it briefly on the CPU; `--help` for the options)
  help              this text

environment:
  LIBTORCH               use this libtorch (a folder with include/ and lib/) instead of the cache
  LIBTORCH_USE_PYTORCH   use the torch of the python3 on PATH (or PYTHON_SYS_EXECUTABLE)
  MM_CACHE_DIR           where set-up keeps its libtorch (default $XDG_CACHE_HOME/mm or ~/.cache/mm)
  MM_DATA_DIR            where fetch-data puts data sets (default ./data)
  MM_DATA_MIRROR         a host to fetch data sets from instead of upstream (same as --mirror)
";

fn main() -> ExitCode {
    let mut args = env::args_os().skip(1);
    let task = args.next().map(|t| t.to_string_lossy().into_owned());
    let rest: Vec<OsString> = args.collect();
    let result = match task.as_deref() {
        Some("setup") => setup_task(&rest),
        Some("demo") => setup_quietly().and_then(|_| {
            cargo(&[&["run", "--package", "mm-cli", "--bin", "mm", "--", "demo"]], &rest)
        }),
        Some("test") => setup_quietly().and_then(|_| test(&rest)),
        Some("test-downstream") => setup_quietly().and_then(|_| test_downstream()),
        Some("fetch-data" | "fetch-weights") => fetch_data(&rest),
        Some("bench-peer") => bench::bench_peer(&rest),
        Some("bench-serve") => bench::bench_serve(&rest),
        Some("bench-gpu") => bench::bench_gpu(&rest),
        Some("help" | "--help" | "-h") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task `{other}`\n\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn setup_task(args: &[OsString]) -> Result<(), String> {
    let (mut force, mut print_env) = (false, false);
    for arg in args {
        match arg.to_str() {
            Some("--force") => force = true,
            Some("--print-env") => print_env = true,
            _ => return Err(format!("setup: unknown argument {arg:?}\n\n{USAGE}")),
        }
    }
    let root = workspace_root();
    if !print_env {
        println!("{}", libtorch::setup(&root, force)?);
        let (exe, installed) = ffmpeg::setup()?;
        println!(
            "{}",
            installed.unwrap_or_else(|| format!("FFmpeg for video files: {}", exe.display()))
        );
        return Ok(());
    }
    // Standard output is for `eval`: set-up's own messages (pip's included) go to standard error.
    let report = with_stdout_on_stderr(|| libtorch::setup(&root, force))?;
    if report.changed() {
        eprintln!("{report}");
    }
    if let Some(installed) = with_stdout_on_stderr(ffmpeg::setup)?.1 {
        eprintln!("{installed}");
    }
    print!("{}", downstream::env_lines(&downstream::libtorch_value(&root), &report.libtorch));
    Ok(())
}

/// Runs `f` with file descriptor 1 pointing at standard error, so that whatever it and the
/// processes it starts print lands there.
fn with_stdout_on_stderr<T>(f: impl FnOnce() -> T) -> T {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: dup and dup2 on the process's own standard descriptors; the saved copy is
    // restored and closed below.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        return f();
    }
    let out = f();
    let _ = std::io::stdout().flush();
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    out
}

/// `cargo xtask test-downstream`: the downstream example alone.
fn test_downstream() -> Result<(), String> {
    let findings = downstream::check(&workspace_root())?;
    println!("\ndownstream example passed:");
    for f in &findings {
        println!("  {f}");
    }
    Ok(())
}

/// Set-up before `demo` and `test`: silent when nothing had to be done.
fn setup_quietly() -> Result<(), String> {
    let report = libtorch::setup(&workspace_root(), false)?;
    if report.changed() {
        println!("{report}");
    }
    if let Some(installed) = ffmpeg::setup()?.1 {
        println!("{installed}");
    }
    Ok(())
}

/// Runs cargo (the one that runs us) with the given arguments, failing on a non-zero exit.
fn cargo(fixed: &[&[&str]], extra: &[OsString]) -> Result<(), String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root());
    for part in fixed {
        cmd.args(*part);
    }
    cmd.args(extra);
    let status = cmd.status().map_err(|e| format!("could not run {cargo:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", describe(fixed, extra)))
    }
}

/// `mm-fetch` with the given arguments, run from the caller's folder (so that a relative
/// `--dir` means what the user expects).
fn fetch_data(args: &[OsString]) -> Result<(), String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = workspace_root().join("Cargo.toml");
    let status = Command::new(&cargo)
        .args(["run", "--quiet", "--package", "mm-fetch", "--bin", "mm-fetch", "--manifest-path"])
        .arg(&manifest)
        .arg("--")
        .args(args)
        .status()
        .map_err(|e| format!("could not run {cargo:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("fetch-data failed ({status})"))
    }
}

/// `cargo test --workspace --no-fail-fast`, its output passed through as it comes, then a
/// summary: the failing tests by name, each with the test binary it ran in, and one closing line
/// that adds up every test binary's `test result:` line (cargo's own last line is only the last
/// binary's, often a crate's empty doc tests). `--no-fail-fast` runs every binary even when one
/// fails, so that one failure cannot hide others. Without arguments the downstream example
/// follows ([`downstream::check`]), counted as one more test.
fn test(extra: &[OsString]) -> Result<(), String> {
    use std::io::BufRead;
    use std::process::Stdio;
    use std::sync::mpsc;

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut child = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run {cargo:?}: {e}"))?;
    // Both streams through one channel, in the order they come: cargo names each test binary on
    // standard error just before it runs it, and the binary reports its tests on standard output.
    let (send, lines) = mpsc::channel::<(bool, String)>();
    let mut readers = Vec::new();
    let streams: [(bool, Box<dyn std::io::Read + Send>); 2] = [
        (false, Box::new(child.stdout.take().ok_or("cargo's stdout is not piped")?)),
        (true, Box::new(child.stderr.take().ok_or("cargo's stderr is not piped")?)),
    ];
    for (is_err, stream) in streams {
        let send = send.clone();
        readers.push(std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if send.send((is_err, line)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(send);
    let mut totals = TestTotals::default();
    for (is_err, line) in lines {
        if is_err {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        totals.add_line(&line);
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().map_err(|e| format!("waiting for cargo test: {e}"))?;
    // The downstream example last, once cargo test has let go of the target folder it shares;
    // with arguments (a subset of the tests) it is left out.
    let example = format!("{} builds and runs as the README says", downstream::EXAMPLE_DIR);
    let result = extra.is_empty().then(|| downstream::check(&workspace_root()));
    print!("{}", totals.add_check("cargo xtask test-downstream", &example, result));
    if !totals.failures.is_empty() {
        println!("\nfailed tests:");
        for (binary, test) in &totals.failures {
            println!("  {test}  ({binary})");
        }
    }
    println!(
        "\ntotal: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if status.success() && totals.failures.is_empty() {
        Ok(())
    } else if !status.success() && totals.failures.is_empty() {
        Err(format!("`cargo test --workspace` failed ({status}); no test reported a failure: a build error, or a test binary that crashed (see above)"))
    } else {
        Err(format!("{} failing tests, listed above", totals.failures.len()))
    }
}

/// Sums of libtest's `test result:` lines, and the failing tests with their binaries.
#[derive(Debug, Default, PartialEq)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// The crate of the unit tests cargo last ran.
    krate: String,
    /// The test binary cargo last said it runs (`mm_data unittests src/lib.rs`,
    /// `Doc-tests mm_data`).
    binary: String,
    /// (binary, test) of every test reported `FAILED`.
    failures: Vec<(String, String)>,
}

impl TestTotals {
    /// Counts a check that runs outside libtest as one test of `binary` (its result, or `None`
    /// when it was skipped) and returns what to print about it.
    fn add_check(
        &mut self,
        binary: &str,
        test: &str,
        result: Option<Result<Vec<String>, String>>,
    ) -> String {
        match result {
            Some(Ok(findings)) => {
                self.passed += 1;
                let lines: String = findings.iter().map(|f| format!("  {f}\n")).collect();
                format!("\ntest {test} ... ok\n{lines}")
            }
            Some(Err(e)) => {
                self.failed += 1;
                self.failures.push((binary.to_string(), test.to_string()));
                format!("\ntest {test} ... FAILED\n  {e}\n")
            }
            None => {
                self.ignored += 1;
                format!("\n{test}: skipped (arguments given; `{binary}` runs it)\n")
            }
        }
    }

    fn add_line(&mut self, line: &str) {
        let trimmed = line.trim_start();
        if let Some(binary) = trimmed.strip_prefix("Running ") {
            // `unittests src/lib.rs (target/debug/deps/mm_data-0123abcd)`, then the same
            // package's `tests/it.rs (target/debug/deps/it-4567ef)`: integration test binaries
            // are named after their file, so they take the crate of the unit tests before them
            // (cargo runs a package's test binaries together).
            let (what, path) = binary.rsplit_once(" (").unwrap_or((binary, ""));
            let file = path.trim_end_matches(')').rsplit('/').next().unwrap_or("");
            let stem = file.rsplit_once('-').map_or(file, |(stem, _)| stem);
            if what.starts_with("unittests ") {
                self.krate = stem.to_string();
            }
            self.binary = if self.krate.is_empty() {
                what.to_string()
            } else {
                format!("{} {what}", self.krate)
            };
            return;
        }
        if trimmed.starts_with("Doc-tests ") {
            self.binary = trimmed.to_string();
            return;
        }
        if let Some(test) = line.strip_prefix("test ").and_then(|t| t.strip_suffix(" ... FAILED")) {
            self.failures.push((self.binary.clone(), test.to_string()));
            return;
        }
        let Some(rest) = line.strip_prefix("test result: ") else { return };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

fn describe(fixed: &[&[&str]], extra: &[OsString]) -> String {
    let mut words: Vec<String> =
        fixed.iter().flat_map(|p| p.iter().map(|s| s.to_string())).collect();
    words.extend(extra.iter().map(|s| s.to_string_lossy().into_owned()));
    words.join(" ")
}

/// The workspace root: the folder above this crate's manifest.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::TestTotals;

    #[test]
    fn adds_up_libtest_result_lines() {
        let mut t = TestTotals::default();
        t.add_line("test result: ok. 24 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.06s");
        t.add_line("test result: FAILED. 2 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s");
        t.add_line("test foo ... ok");
        t.add_line("running 3 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (26, 2, 1));
    }

    #[test]
    fn counts_a_check_outside_libtest_as_one_test() {
        let mut t = TestTotals::default();
        let ok = t.add_check("x", "example runs", Some(Ok(vec!["accuracy: 0.99".into()])));
        assert!(ok.contains("example runs ... ok") && ok.contains("  accuracy: 0.99"), "{ok}");
        let failed = t.add_check("x", "example runs", Some(Err("no accuracy".into())));
        assert!(failed.contains("... FAILED\n  no accuracy"), "{failed}");
        assert!(t.add_check("x", "example runs", None).contains("skipped"));
        assert_eq!((t.passed, t.failed, t.ignored), (1, 1, 1));
        assert_eq!(t.failures, vec![("x".to_string(), "example runs".to_string())]);
    }

    #[test]
    fn names_each_failing_test_with_its_binary() {
        let mut t = TestTotals::default();
        t.add_line(
            "     Running unittests src/lib.rs (target/debug/deps/mm_data-0a1b2c3d4e5f6789)",
        );
        t.add_line("test loader::tests::epochs ... ok");
        t.add_line("test loader::tests::shards ... FAILED");
        t.add_line("     Running tests/it.rs (target/debug/deps/it-00ff00ff00ff00ff)");
        t.add_line("test bench_gpu_runs_its_suite_briefly_on_the_cpu ... FAILED");
        t.add_line("   Doc-tests mm_train");
        t.add_line("test crates/mm-train/src/precision.rs - precision (line 17) ... FAILED");
        t.add_line("test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.10s");
        assert_eq!(
            t.failures,
            vec![
                ("mm_data unittests src/lib.rs".to_string(), "loader::tests::shards".to_string()),
                (
                    "mm_data tests/it.rs".to_string(),
                    "bench_gpu_runs_its_suite_briefly_on_the_cpu".to_string()
                ),
                (
                    "Doc-tests mm_train".to_string(),
                    "crates/mm-train/src/precision.rs - precision (line 17)".to_string()
                ),
            ]
        );
        assert_eq!(t.failed, 1);
    }
}

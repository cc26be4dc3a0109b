//! `cargo xtask bench-peer` and `cargo xtask bench-gpu`: set-up, then the benchmark binaries of
//! `mm-benches`, built in release mode.
//!
//! The PyTorch peer runs on the Python whose torch set-up installed (the cache's `site/`
//! folder on `PYTHONPATH`), so both sides use the same libtorch 2.13.0 build. Its other
//! packages (torchvision, torchaudio, pillow, numpy, soundfile) are not installed by set-up:
//! `--install-peer-deps` puts them, without their dependencies (no second torch), in
//! `<cache>/peer-2.13.0` beside it.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::libtorch::{self, Libtorch, TORCH_VERSION};
use crate::workspace_root;

/// What the peer needs beyond torch, pinned where the version matters: torchvision 0.28 is the
/// release built against torch 2.13; torchaudio has no 2.13 release on PyPI, and the parts the
/// peer calls (resample, MelSpectrogram) are plain PyTorch code in 2.11; PyAV 18.1 (with its
/// own FFmpeg) reads W5's videos.
const PEER_PACKAGES: &[&str] = &[
    "torchvision==0.28.0",
    "torchaudio==2.11.1",
    "pillow",
    "numpy",
    "soundfile",
    "av==18.1.0",
    "cffi",
    "pycparser",
];

/// What W6's peer needs (CLIP through transformers), installed with its own dependencies into
/// a folder of its own (none of them is torch).
const MODEL_PACKAGES: &[&str] = &["transformers==5.25.0"];

/// The modules the peer imports.
const PEER_IMPORTS: &str = "import torch, torchvision, torchaudio, PIL, numpy, soundfile, av";

/// What `bench-serve`'s peer needs beyond the bench-peer packages: a web framework and its
/// server, pinned, installed with their own dependencies (none of them is torch).
const SERVE_PACKAGES: &[&str] = &["fastapi==0.165.0", "uvicorn==0.55.0"];

/// The modules the serving peer imports.
const SERVE_IMPORTS: &str = "import torch, torchaudio, PIL, numpy, soundfile, fastapi, uvicorn";

pub fn bench_peer(args: &[OsString]) -> Result<(), String> {
    let report = libtorch::setup(&workspace_root(), false)?;
    let mut install = false;
    let mut rest = Vec::new();
    for a in args {
        if a == "--install-peer-deps" {
            install = true;
        } else {
            rest.push(a.clone());
        }
    }
    let passthrough = rest.iter().any(|a| a == "--no-peer" || a == "--help" || a == "-h");
    let py = libtorch::python();
    let mut env_path = Vec::new();
    if !passthrough {
        let deps = libtorch::cache_dir()?.join(format!("peer-{TORCH_VERSION}"));
        let model_deps = libtorch::cache_dir()?.join(format!("models-peer-{TORCH_VERSION}"));
        if install {
            install_peer_deps(&py, &deps)?;
            install_with_deps(&py, MODEL_PACKAGES, &model_deps)?;
        }
        env_path.push(deps.clone());
        env_path.push(model_deps);
        env_path.extend(torch_site(&report.libtorch));
        let path = env::join_paths(&env_path).map_err(|e| e.to_string())?;
        if let Some(last) = imports_fail(&py, PEER_IMPORTS, &path)? {
            return Err(format!(
                "the PyTorch peer cannot run: `{PEER_IMPORTS}` failed ({last}).\n\
                 Run `cargo xtask bench-peer --install-peer-deps` once to pip-install {} into {} \
                 (beside set-up's torch, without touching it), or pass --no-peer to measure mm alone.",
                PEER_PACKAGES.join(" "),
                deps.display()
            ));
        }
    }
    let mut cmd = release_bin("bench-peer");
    cmd.arg("--python").arg(&py).args(&rest);
    if !env_path.is_empty() {
        cmd.env("PYTHONPATH", env::join_paths(&env_path).map_err(|e| e.to_string())?)
            .env("PYTHONNOUSERSITE", "1");
    }
    run(cmd, "bench-peer")
}

/// `cargo xtask bench-serve`: builds `mm` in release mode, then runs `bench-serve` with the
/// Python that holds set-up's torch and the peer's packages.
pub fn bench_serve(args: &[OsString]) -> Result<(), String> {
    let report = libtorch::setup(&workspace_root(), false)?;
    let install = args.iter().any(|a| a == "--install-peer-deps");
    let rest: Vec<OsString> =
        args.iter().filter(|a| *a != "--install-peer-deps").cloned().collect();
    let no_peer = rest.iter().any(|a| a == "--no-peer" || a == "--help" || a == "-h");
    let py = libtorch::python();
    let cache = libtorch::cache_dir()?;
    let (deps, serve_deps) = (
        cache.join(format!("peer-{TORCH_VERSION}")),
        cache.join(format!("serve-peer-{TORCH_VERSION}")),
    );
    if install {
        if !deps.is_dir() {
            install_peer_deps(&py, &deps)?;
        }
        install_with_deps(&py, SERVE_PACKAGES, &serve_deps)?;
    }
    let mut env_path = vec![deps.clone(), serve_deps.clone()];
    env_path.extend(torch_site(&report.libtorch));
    let path = env::join_paths(&env_path).map_err(|e| e.to_string())?;
    if !no_peer {
        if let Some(last) = imports_fail(&py, SERVE_IMPORTS, &path)? {
            return Err(format!(
                "the PyTorch server cannot run: `{SERVE_IMPORTS}` failed ({}).\n\
                 Run `cargo xtask bench-serve --install-peer-deps` once (it installs {} into {}), \
                 or pass --no-peer to measure mm alone.",
                last,
                SERVE_PACKAGES.join(" "),
                serve_deps.display()
            ));
        }
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(workspace_root()).args(["build", "--quiet", "--release", "-p", "mm-cli"]);
    run(build, "building mm")?;
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let mm = target.join("release/mm");
    let mut cmd = release_bin("bench-serve");
    cmd.arg("--python").arg(&py).arg("--mm").arg(&mm).args(&rest);
    cmd.env("PYTHONPATH", &path).env("PYTHONNOUSERSITE", "1");
    run(cmd, "bench-serve")
}

/// `pip install --target` of `packages` with their dependencies into `dir`, whole or not at all.
fn install_with_deps(py: &str, packages: &[&str], dir: &Path) -> Result<(), String> {
    let parent = dir.parent().ok_or("the cache folder has no parent")?;
    fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let staging = parent.join(format!(".peer-install.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    println!("installing {} into {}", packages.join(" "), dir.display());
    let status = Command::new(py)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
        .arg(&staging)
        .args(packages)
        .status()
        .map_err(|e| format!("could not run {py} -m pip: {e}"))?;
    if !status.success() {
        let _ = fs::remove_dir_all(&staging);
        return Err(format!("pip install {} failed ({status})", packages.join(" ")));
    }
    let _ = fs::remove_dir_all(dir);
    fs::rename(&staging, dir).map_err(|e| format!("{}: {e}", dir.display()))
}

pub fn bench_gpu(args: &[OsString]) -> Result<(), String> {
    libtorch::setup(&workspace_root(), false)?;
    let mut cmd = release_bin("bench-gpu");
    cmd.args(args);
    run(cmd, "bench-gpu")
}

/// Runs `imports` (Python statements) with `path` as `PYTHONPATH`: `None` when they work, else
/// the last line of Python's complaint.
fn imports_fail(py: &str, imports: &str, path: &std::ffi::OsStr) -> Result<Option<String>, String> {
    let check = Command::new(py)
        .args(["-c", imports])
        .env("PYTHONPATH", path)
        .env("PYTHONNOUSERSITE", "1")
        .output()
        .map_err(|e| format!("could not run {py}: {e}"))?;
    Ok((!check.status.success()).then(|| {
        String::from_utf8_lossy(&check.stderr).lines().last().unwrap_or_default().to_string()
    }))
}

/// `cargo run --release -p mm-benches --bin NAME --`, from the workspace root.
fn release_bin(name: &str) -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "mm-benches",
        "--bin",
        name,
        "--",
    ]);
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("could not run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// The folder to put on `PYTHONPATH` so that `import torch` finds `libtorch`'s Python package
/// (the cache's `site/`); none when the libtorch is not a Python package (a plain libtorch
/// archive) or when that Python imports torch by itself.
fn torch_site(lt: &Libtorch) -> Option<PathBuf> {
    lt.dir.join("__init__.py").is_file().then(|| lt.dir.parent().map(Path::to_path_buf)).flatten()
}

/// `pip install --target` of the peer's packages into `deps`, whole or not at all.
fn install_peer_deps(py: &str, deps: &Path) -> Result<(), String> {
    let parent = deps.parent().ok_or("the cache folder has no parent")?;
    fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let staging = parent.join(format!(".peer-{TORCH_VERSION}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    println!("installing {} into {}", PEER_PACKAGES.join(" "), deps.display());
    let status = Command::new(py)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&staging)
        .args(PEER_PACKAGES)
        .env("PYTHONNOUSERSITE", "1")
        .status()
        .map_err(|e| format!("could not run {py} -m pip: {e}"))?;
    if !status.success() {
        let _ = fs::remove_dir_all(&staging);
        return Err(format!(
            "pip could not install the peer's packages ({status}); check that PyPI is reachable"
        ));
    }
    let _ = fs::remove_dir_all(deps);
    fs::rename(&staging, deps)
        .map_err(|e| format!("{} -> {}: {e}", staging.display(), deps.display()))
}

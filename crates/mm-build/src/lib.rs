//! Build-script support for the mm crates: link every binary, test, benchmark and doc test of a
//! crate to the libtorch that `torch-sys` was built against, so that nothing needs
//! `LD_LIBRARY_PATH` at run time.
//!
//! Each mm crate that links libtorch has a two-line `build.rs`:
//!
//! ```no_run
//! // build.rs
//! mm_build::link_libtorch();
//! ```
//!
//! and lists `torch-sys` among its dependencies, so that cargo hands this build script
//! `DEP_TCH_LIBTORCH_LIB`, the library folder `torch-sys` found (through `LIBTORCH`,
//! `LIBTORCH_USE_PYTORCH` or a system install).
//!
//! What it emits:
//! - an rpath to that folder, for every target of the crate, doc tests included
//!   (`cargo:rustc-link-arg`);
//! - when the libtorch is a CUDA build, `libtorch_cuda.so` forced in as a `NEEDED` entry
//!   (`--no-as-needed`) for the crate's binaries, integration tests, benchmarks and examples.
//!   Rust links with `--as-needed` and no Rust code calls into `libtorch_cuda.so` directly, so
//!   without this CUDA is never available. Doc tests are left without it: they run on the CPU
//!   and each is its own process, so they would each pay the extra start-up time.
//!   Set `MM_LINK_CUDA=0` to leave it out everywhere (for example to ship a CPU-only binary).
//!
//! A project outside the workspace that depends on mm's crates links its own targets the same
//! way: `torch-sys` (of tch's version) among its dependencies, `mm-build` among its
//! build-dependencies, and the same one-line `build.rs`; `LIBTORCH` for torch-sys comes from
//! `cargo xtask setup --print-env`. The README's "Use the crates in your own project" says how,
//! and `examples/downstream/` does it: `cargo xtask test` builds it that way and checks its
//! binary for the rpath and the CUDA library.
//!
//! Architecture invariant: this crate has no dependencies and knows nothing about tch; it only
//! prints cargo instructions.

use std::env;
use std::path::{Path, PathBuf};

/// The environment variable through which `torch-sys` (whose `links` key is `tch`) passes the
/// libtorch library folder to the build scripts of the crates that depend on it.
pub const LIBTORCH_LIB_VAR: &str = "DEP_TCH_LIBTORCH_LIB";

/// Set to `0` to keep `libtorch_cuda.so` out of the links even when the libtorch has it.
pub const LINK_CUDA_VAR: &str = "MM_LINK_CUDA";

/// What [`link_libtorch`] decided, returned so that a build script can report or test it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// The libtorch library folder the rpath points at.
    pub lib_dir: PathBuf,
    /// Whether `libtorch_cuda.so` is forced in.
    pub link_cuda: bool,
    /// The cargo instructions, one per line, without the trailing newline.
    pub instructions: Vec<String>,
}

/// Emits the cargo instructions that link this crate's targets to libtorch (see the crate docs).
///
/// When `torch-sys` did not pass its library folder (the crate forgot to depend on `torch-sys`,
/// or `torch-sys` is built in its `doc-only` mode), it prints a cargo warning and does nothing:
/// the link step itself then names the missing library.
pub fn link_libtorch() -> Option<LinkPlan> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={LINK_CUDA_VAR}");
    let Some(lib_dir) = env::var_os(LIBTORCH_LIB_VAR) else {
        println!(
            "cargo:warning={LIBTORCH_LIB_VAR} is not set: add `torch-sys` to this crate's \
             dependencies so that its binaries get an rpath to libtorch"
        );
        return None;
    };
    let link_cuda_wanted = env::var(LINK_CUDA_VAR).map(|v| v != "0").unwrap_or(true);
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let kinds = target_kinds(&manifest_dir);
    let plan = plan(Path::new(&lib_dir), link_cuda_wanted, &kinds);
    // A different libtorch behind the same path (the `.libtorch` link re-pointed by
    // `cargo xtask setup`) shows as changed files through the path as given (not the canonical
    // one), so the instructions are made anew.
    for watched in ["libtorch_cpu.so", "libtorch_cuda.so"] {
        let file = Path::new(&lib_dir).join(watched);
        if file.exists() {
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
    for line in &plan.instructions {
        println!("{line}");
    }
    Some(plan)
}

/// The kinds of target (`bins`, `tests`, `benches`, `examples`) a package has, found the way
/// cargo's auto-discovery finds them plus explicit `[[kind]]` sections in its manifest. Cargo
/// rejects a `rustc-link-arg-KIND` instruction for a kind the package does not have.
pub fn target_kinds(manifest_dir: &Path) -> Vec<&'static str> {
    let manifest = std::fs::read_to_string(manifest_dir.join("Cargo.toml")).unwrap_or_default();
    let has = |section: &str, paths: &[&str]| {
        manifest.lines().any(|l| l.trim() == section)
            || paths.iter().any(|p| manifest_dir.join(p).exists())
    };
    let mut kinds = Vec::new();
    if has("[[bin]]", &["src/main.rs", "src/bin"]) {
        kinds.push("bins");
    }
    if has("[[test]]", &["tests"]) {
        kinds.push("tests");
    }
    if has("[[bench]]", &["benches"]) {
        kinds.push("benches");
    }
    if has("[[example]]", &["examples"]) {
        kinds.push("examples");
    }
    kinds
}

/// Computes the instructions for a libtorch library folder without printing them, for a package
/// with the given kinds of target (see [`target_kinds`]).
///
/// The rpath uses the folder's canonical path, so that a binary keeps working when the
/// repository's `.libtorch` link is removed or the repository moves.
pub fn plan(lib_dir: &Path, link_cuda_wanted: bool, kinds: &[&str]) -> LinkPlan {
    let lib_dir = lib_dir.canonicalize().unwrap_or_else(|_| lib_dir.to_path_buf());
    let mut instructions = vec![format!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display())];
    let link_cuda = link_cuda_wanted && lib_dir.join("libtorch_cuda.so").exists();
    if link_cuda {
        for kind in kinds {
            instructions.push(format!(
                "cargo:rustc-link-arg-{kind}=-Wl,--no-as-needed,-ltorch_cuda,--as-needed"
            ));
        }
    }
    LinkPlan { lib_dir, link_cuda, instructions }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!("mm-build-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    #[test]
    fn cpu_build_gets_only_an_rpath() {
        let dir = temp_dir("cpu");
        fs::write(dir.join("libtorch_cpu.so"), b"").expect("write");
        let p = plan(&dir, true, &["bins", "tests"]);
        assert!(!p.link_cuda);
        assert_eq!(p.instructions.len(), 1);
        assert!(p.instructions[0].ends_with(&p.lib_dir.display().to_string()));
        assert!(p.instructions[0].starts_with("cargo:rustc-link-arg=-Wl,-rpath,/"));
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn cuda_build_forces_torch_cuda_outside_doc_tests() {
        let dir = temp_dir("cuda");
        fs::write(dir.join("libtorch_cuda.so"), b"").expect("write");
        let p = plan(&dir, true, &["bins", "tests"]);
        assert!(p.link_cuda);
        let forced: Vec<_> = p.instructions.iter().filter(|l| l.contains("-ltorch_cuda")).collect();
        assert_eq!(forced.len(), 2);
        // The plain `rustc-link-arg` (which reaches doc tests) never carries the CUDA library.
        assert!(forced.iter().all(|l| l.starts_with("cargo:rustc-link-arg-")));
        assert!(!plan(&dir, false, &["bins"]).link_cuda);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn finds_the_kinds_of_target_a_package_has() {
        let dir = temp_dir("kinds");
        fs::create_dir_all(dir.join("src")).expect("mkdir");
        fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"\n").expect("write");
        fs::write(dir.join("src/lib.rs"), "").expect("write");
        assert!(target_kinds(&dir).is_empty());
        fs::create_dir_all(dir.join("tests")).expect("mkdir");
        assert_eq!(target_kinds(&dir), vec!["tests"]);
        fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"\n\n[[bin]]\nname = \"y\"\n")
            .expect("write");
        assert_eq!(target_kinds(&dir), vec!["bins", "tests"]);
        fs::remove_dir_all(dir).ok();
    }
}

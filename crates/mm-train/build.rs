//! Links this crate's binaries, tests and doc tests to libtorch (rpath; CUDA when present), and
//! compiles the c10d shim (`csrc/c10d.cpp`) against the same libtorch's headers, with NCCL when
//! that libtorch is a CUDA build and the CUDA headers are at hand.
use std::path::{Path, PathBuf};

fn main() {
    let Some(plan) = mm_build::link_libtorch() else { return };
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let root = plan.lib_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .pic(true)
            .warnings(false)
            .flag("-std=c++20")
            .flag("-w")
            .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
            .define("GLOG_USE_GLOG_EXPORT", None)
            .define("USE_C10D_GLOO", None)
            .include("csrc/gloo-decl")
            .include(root.join("include"))
            .include(root.join("include/torch/csrc/api/include"))
            .file("csrc/c10d.cpp");
        b
    };
    if let Some(cuda_include) = nccl_includes(&plan.lib_dir, &root) {
        let mut b = base();
        b.define("USE_C10D_NCCL", None).define("MM_C10D_NCCL", None);
        for dir in &cuda_include {
            b.include(dir);
        }
        match b.try_compile("mm_c10d") {
            Ok(()) => return,
            Err(e) => println!("cargo:warning=c10d shim: NCCL left out, its headers did not compile ({e}); Gloo only"),
        }
    }
    base().compile("mm_c10d");
}

/// The CUDA and NCCL include folders for a CUDA build of libtorch: those of the pip wheels beside
/// it (`site-packages/nvidia/*/include`), and `$CUDA_HOME/include`; `None` when the libtorch has
/// no CUDA, or when the headers c10d's NCCL header needs are not all there: NCCL's (`nccl.h`, in
/// torch's NCCL wheel), and the CUDA toolkit's `crt/host_config.h` and `nv/target`, which a CUDA
/// toolkit has and PyPI's torch wheels do not (`pip install nvidia-cuda-crt nvidia-cuda-cccl`
/// beside them adds them).
fn nccl_includes(lib_dir: &Path, root: &Path) -> Option<Vec<PathBuf>> {
    if !lib_dir.join("libtorch_cuda.so").exists() {
        return None;
    }
    let mut dirs = Vec::new();
    if let Some(site) = root.parent() {
        if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
            dirs.extend(entries.flatten().map(|e| e.path().join("include")).filter(|p| p.is_dir()));
        }
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        dirs.push(PathBuf::from(home).join("include"));
    }
    let has = |name: &str| dirs.iter().any(|d| d.join(name).is_file());
    (has("crt/host_config.h") && has("nv/target") && has("nccl.h")).then_some(dirs)
}

//! Links this crate's binaries, tests and doc tests to libtorch (rpath; CUDA when present).
fn main() {
    mm_build::link_libtorch();
}

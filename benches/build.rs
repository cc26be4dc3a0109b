//! Links the benchmarks to libtorch (rpath; CUDA when present).
fn main() {
    mm_build::link_libtorch();
}

//! Links the binary to the libtorch torch-sys was built against (rpath, and the CUDA library
//! when libtorch has it), so that it runs without `LD_LIBRARY_PATH` and sees a GPU.

fn main() {
    mm_build::link_libtorch();
}

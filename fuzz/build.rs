//! Links the fuzz targets to libtorch (rpath), as every binary of the workspace is.
fn main() {
    mm_build::link_libtorch();
}

//! Criterion benchmarks of the mm crates live in this package's `benches/` folder and run with
//! `cargo bench -p mm-benches`; the comparison with PyTorch and the GPU benchmarks run through
//! `cargo xtask`. This library is empty: the package exists to hold the benchmark targets, so
//! that benchmarking dependencies stay out of the library crates.

//! Shared set-up of the criterion benchmarks in `benches/` (run with
//! `cargo bench -p mm-benches`): the inputs they need, made on disk once per run.
//!
//! Benchmarking dependencies stay in this package, out of the library crates.

pub mod flops;
pub mod gpu;
pub mod load;
pub mod peer;
pub mod workloads;

use std::path::{Path, PathBuf};

/// A fresh folder under the system's temporary folder.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mm-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch folder");
    dir
}

/// Writes `n` textured `size`×`size` RGB PNG files into `dir`; returns their file names.
pub fn write_pngs(dir: &Path, n: usize, size: u32) -> Vec<String> {
    use rayon::prelude::*;
    (0..n)
        .into_par_iter()
        .map(|i| {
            let seed = i as u32;
            let img = image::RgbImage::from_fn(size, size, |x, y| {
                let v = x
                    .wrapping_mul(31)
                    .wrapping_add(y.wrapping_mul(17))
                    .wrapping_add(seed.wrapping_mul(101));
                image::Rgb([(v % 251) as u8, ((v / 3) % 241) as u8, ((x ^ y ^ seed) % 256) as u8])
            });
            let name = format!("{i}.png");
            img.save(dir.join(&name)).expect("write png");
            name
        })
        .collect()
}

/// The shared data folder (`MM_SHARED_DATA`, else `../shared/data` beside the repository).
pub fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("MM_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    dir.is_dir().then_some(dir)
}

/// Writes the first `n` WAV files of FSDD (its release archive, or a folder of its recordings)
/// into `dir`, read through mm-fetch's one FSDD reader; returns their file names and digits.
pub fn extract_fsdd(source: &Path, dir: &Path, n: usize) -> Result<Vec<(String, u8)>, String> {
    let wavs =
        mm_datasets::fsdd::read_wavs(source, Some(n)).map_err(|e| mm_data::error::report(&e))?;
    wavs.into_iter()
        .map(|w| {
            let digit = mm_datasets::fsdd::Name::parse(&w.name)
                .ok_or_else(|| {
                    format!("{}: not an FSDD name ({})", w.name, mm_datasets::fsdd::NAME_FORM)
                })?
                .digit;
            let path = dir.join(&w.name);
            std::fs::write(&path, &w.bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((w.name, digit))
        })
        .collect()
}

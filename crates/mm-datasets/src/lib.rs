//! Data sets built on mm-data: each writes real files (PNG, WAV) and a JSONL manifest, so that
//! everything downstream reads it like any data a user brings.
//!
//! - [`synth`]: the embedded synthetic data set (images, audio, captions, videos, records)
//!   with tasks whose single-modality ceilings are known by construction;
//! - [`avdigits`]: MNIST images paired with spoken digits (FSDD) into a manifest, with
//!   optional degradation;
//! - [`spoken`]: spoken digit sequences with transcripts, composed from FSDD recordings with
//!   unseen speakers in test, for speech recognition; and FSDD's words for synthesis;
//! - [`fsdd`] and [`idx`]: the readers of FSDD's recordings and MNIST's idx files, which are
//!   mm-fetch's ([`mm_fetch::fsdd`], [`mm_fetch::idx`]): one reader each for the converter of
//!   `cargo xtask fetch-data`, the builders here, the benches and the tests.
//!
//! Every builder writes its folder whole or not at all (`mm_data::fs::write_dir_atomic`) and
//! returns [`mm_data::Error`], naming the file at fault.
//!
//! Architecture invariant: mm-datasets uses only mm-data and mm-fetch (for its readers); it
//! knows nothing about models or training. The crates above may use it; in the libraries only
//! tests do, and the `mm` binary and the benches build data sets with it.
//!
//! ```
//! use mm_datasets::synth::{generate, SynthConfig};
//!
//! let dir = std::env::temp_dir().join(format!("mm-datasets-doc-{}", std::process::id()));
//! let config = SynthConfig { samples: 24, image_size: 16, frame_size: 16, frames: 2, ..SynthConfig::default() };
//! let summary = generate(&dir, &config, false)?;
//! assert_eq!(summary.samples, 24);
//! let manifest = mm_data::manifest::Manifest::read(dir.join("manifest.jsonl"))?;
//! assert_eq!(manifest.samples().len(), 24);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), mm_data::Error>(())
//! ```

pub mod avdigits;
pub mod fsdd;
pub mod spoken;
pub mod synth;

pub use mm_fetch::idx;

/// mm-fetch's error from one of its readers as mm-data's: an I/O error stays one, a file
/// that is not what its format requires becomes [`mm_data::Error::Decode`] (the message reads
/// the same: the file, then what is wrong).
pub(crate) fn from_fetch(e: mm_fetch::Error) -> mm_data::Error {
    match e {
        mm_fetch::Error::Io { path, source } => mm_data::Error::Io { path, source },
        mm_fetch::Error::Format { path, message } => mm_data::Error::Decode { path, message },
        other => mm_data::Error::Config(other.to_string()),
    }
}

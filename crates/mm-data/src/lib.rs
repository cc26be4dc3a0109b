//! Data for multimodal models: decoding, cleaning, augmentation, normalisation and parallel
//! batching of images, audio, text, frame sequences and numeric features.
//!
//! Raw files become clean, normalised samples here, and samples become batches of `tch`
//! tensors only at collation, the last step. Everything a user can get wrong (a corrupt file, a
//! bad manifest line, an unknown device name) is an error value that names the place, never a
//! panic.
//!
//! The modules, grouped by role in folders and all reachable from the crate root
//! (`mm_data::audio`, `mm_data::loader`, ...):
//!
//! - **codecs** (`src/codecs/`): [`image`] (PNG, JPEG, BMP and WebP files to `[H, W, 3]` RGB),
//!   [`audio`] (WAV, FLAC, MP3 and Ogg/Vorbis to mono `f32`, and band-limited resampling that
//!   matches torchaudio's), [`mel`] (log-mel spectrograms that match torchaudio's
//!   `MelSpectrogram`, and their inverse), [`subword`] (`tokenizer.json` subword tokenizers:
//!   WordPiece, BPE, Unigram), [`text`] (a word tokenizer and a vocabulary builder for
//!   word-vector encoders), [`transcript`] (transcripts as character targets, CTC's blank
//!   first);
//! - **preparation** (`src/prepare/`): [`clean`] (the cleaning pass and its report: per-reason
//!   policies, nothing dropped silently), [`augment`] (image, audio, text and modality-dropout
//!   augmentation, reproducible per sample), [`normalize`] (per-dimension mean/std from one
//!   streaming pass, saved and reloaded), [`noise`] (real background noise mixed in at a random
//!   SNR), [`pipeline`] (per-modality decode, resample, augment and normalise into a
//!   [`pipeline::Item`]), [`config`] (a data set and its pipeline described in configuration:
//!   a run's `[data]`);
//! - **loading** (`src/load/`): [`manifest`] (the data-set description: JSONL, one sample per
//!   line, or built in code), [`shards`] (WebDataset-style tar shards, written from a manifest
//!   and streamed back), [`loader`] (parallel, prefetching, seeded batches collated into `tch`
//!   tensors; a rank's shard of every epoch for data-parallel training);
//! - [`modality`]: [`Modality`], the kinds of input (image, audio, text, frames, features);
//! - utilities: [`rng`] (per-sample seeded randomness), [`device`] (device names `auto`, `cpu`,
//!   `cuda:N` to `tch` devices), [`fs`] (atomic file writes), [`guard`] (a library's panic
//!   turned into an error), [`stats`] (AUROC, shared by data-set ceilings and training
//!   metrics), [`Error`] (the crate's error type).
//!
//! Data sets built on all this (the synthetic set, audio-visual digits, spoken digits) are in
//! the crate above, mm-datasets; the readers of MNIST's and FSDD's files are mm-fetch's.
//!
//! Architecture invariant: mm-data is the lowest layer. It knows nothing about models, encoders,
//! fusion or training and depends on no other mm crate.
//!
//! ```
//! use mm_data::device::parse_device;
//!
//! let device = parse_device("cpu")?;
//! let batch = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]).to_device(device);
//! assert_eq!(batch.sum(tch::Kind::Float).double_value(&[]), 10.0);
//! # Ok::<(), mm_data::device::DeviceError>(())
//! ```

mod codecs;
mod load;
mod prepare;

pub mod device;
pub mod error;
pub mod fs;
pub mod guard;
pub mod modality;
pub mod rng;
pub mod stats;

pub use codecs::{audio, image, mel, subword, text, transcript, video};
pub use error::{Error, Result};
pub use load::{loader, manifest, shards};
pub use modality::Modality;
pub use prepare::{augment, clean, config, noise, normalize, pipeline};

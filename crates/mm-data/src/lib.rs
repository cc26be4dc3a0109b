//! Data for multimodal models: decoding, cleaning, augmentation, normalisation and parallel
//! batching of images, audio, text, frame sequences and numeric features.
//!
//! Raw files become clean, normalised samples here, and samples become batches of `tch`
//! tensors only at collation, the last step. Everything a user can get wrong (a corrupt file, a
//! bad manifest line, an unknown device name) is an error value that names the place, never a
//! panic.
//!
//! What is here so far:
//! - [`manifest`]: the data-set description (JSONL, one sample per line, or built in code);
//! - [`modality`]: [`Modality`], the kinds of input (image, audio, text, frames, features);
//! - [`image`]: PNG, JPEG, BMP and WebP files to `[H, W, 3]` RGB;
//! - [`audio`]: WAV, FLAC, MP3 and Ogg/Vorbis to mono `f32`, and band-limited resampling that
//!   matches torchaudio's;
//! - [`mel`]: log-mel spectrograms that match torchaudio's `MelSpectrogram`;
//! - [`normalize`]: per-dimension mean/std from one streaming pass, saved and reloaded;
//! - [`subword`]: `tokenizer.json` subword tokenizers (WordPiece, BPE, Unigram);
//! - [`text`]: a word tokenizer and a vocabulary builder for word-vector encoders;
//! - [`transcript`]: transcripts as character targets (CTC's alphabet, blank first);
//! - [`augment`]: image, audio, text and modality-dropout augmentation, reproducible per sample;
//! - [`rng`]: per-sample seeded randomness;
//! - [`clean`]: the cleaning pass and its report (per-reason policies, nothing dropped silently);
//! - [`config`]: a data set and its pipeline described in configuration (a run's `[data]`);
//! - [`pipeline`]: per-modality decode, resample, augment and normalise into an [`pipeline::Item`];
//! - [`loader`]: parallel, prefetching, seeded batches collated into `tch` tensors (a rank's
//!   shard of every epoch for data-parallel training);
//! - [`synth`]: the embedded synthetic data set (images, audio, captions, videos, records)
//!   with tasks whose single-modality ceilings are known by construction;
//! - [`idx`]: the idx files of MNIST and its relatives;
//! - [`avdigits`]: MNIST images paired with spoken digits (FSDD) into a manifest, with
//!   optional degradation;
//! - [`spoken`]: spoken digit sequences with transcripts, composed from FSDD recordings with
//!   unseen speakers in test, for speech recognition;
//! - [`shards`]: WebDataset-style tar shards, written from a manifest and streamed back;
//! - [`device`]: device names (`auto`, `cpu`, `cuda:N`) to `tch` devices;
//! - [`fs`]: atomic file writes; [`guard`]: a library's panic turned into an error;
//!   [`Error`]: the crate's error type.
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

pub mod audio;
pub mod augment;
pub mod avdigits;
pub mod clean;
pub mod config;
pub mod device;
pub mod error;
pub mod fs;
pub mod guard;
pub mod idx;
pub mod image;
pub mod loader;
pub mod manifest;
pub mod mel;
pub mod modality;
pub mod noise;
pub mod normalize;
pub mod pipeline;
pub mod rng;
pub mod shards;
pub mod spoken;
pub mod subword;
pub mod synth;
pub mod text;
pub mod transcript;

pub use error::{Error, Result};
pub use modality::Modality;

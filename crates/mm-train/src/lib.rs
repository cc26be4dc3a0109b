//! Training: model assembly from configuration, losses, optimisers and schedules, metrics, the
//! training loop with evaluation and early stopping, and atomic safetensors checkpoints that a
//! killed run resumes from.
//!
//! What is here:
//! - [`loss`]: cross-entropy (label smoothing, class weights), binary cross-entropy, MSE and L1
//!   with masks, CLIP-style InfoNCE with a learnable temperature, triplet, CTC, multi-task sums;
//! - [`metrics`]: accuracy, top-k, confusion matrix, precision/recall/F1, macro-F1, AUROC
//!   (binary and one-vs-rest), MAE, MSE, Pearson, and retrieval Recall@K, median rank and MRR in
//!   both directions;
//! - [`ctc`]: CTC decoding (best path with label timings, prefix beam search) and word and
//!   character error rates;
//! - [`schedule`]: constant, step, cosine and linear schedules with warm-up, and
//!   reduce-on-plateau;
//! - [`optim`]: SGD, Adam and AdamW with parameter groups and gradient clipping, whose state
//!   this crate owns so that checkpoints save it;
//! - [`checkpoint`]: crash-safe checkpoints (weights, optimiser moments, training state) and
//!   exact resume;
//! - [`heads`]: the task heads, one module each behind one trait (classification, multi-label,
//!   ordinal, regression, retrieval, CTC): forward pass, loss, metrics with their direction,
//!   predictions;
//! - [`model`]: a model assembled from configuration (encoders, an optional fusion, heads),
//!   sized from the data pipeline;
//! - [`train`]: one loop, [`train::Trainer`], for any model that implements
//!   [`train::TrainStep`] (the fused model, the speech synthesiser, one's own): schedule,
//!   accumulation, clipping, evaluation, checkpoints, NaN guard, resume, and what happens
//!   between epochs as [`train::strategy`]s (best epoch, reduce-on-plateau, early stopping);
//! - [`log`]: where every epoch's record goes, loggers behind one trait: `metrics.jsonl`,
//!   `curves.svg` and TensorBoard event files;
//! - [`dist`]: data-parallel training on libtorch's c10d (Gloo, NCCL): torchrun's variables,
//!   a process group, gradient averaging, a local launcher;
//! - [`precision`]: bf16 autocast (CPU or CUDA) for the forward passes, and what the processor
//!   can do in bf16;
//! - [`guard`]: a libtorch failure inside a step becomes an error naming the model part and the
//!   settings, never a panic;
//! - [`run`]: a whole run (data, model, training) in one TOML file, validated with file, line
//!   and key, trained into a folder and rebuilt from it for evaluation and prediction.
//!
//! A complete run, from files on disk to a trained model (the same as `tests/it.rs` does on the
//! synthetic data):
//!
//! ```no_run
//! use std::sync::Arc;
//! use mm_data::{manifest::{Manifest, Split}, mel::MelConfig, pipeline::{AudioSpec, ImageSpec, Pipeline}};
//! use mm_train::model::{DataShape, Model, ModelConfig};
//! use mm_train::train::{fit, TrainConfig};
//!
//! let manifest = Manifest::read("synthetic/manifest.jsonl")?;
//! let mut pipeline = Pipeline::new(vec!["curved-low".into(), "curved-high".into(), "straight-low".into(), "straight-high".into()]);
//! pipeline.image = Some(ImageSpec::new((64, 64)));
//! pipeline.audio = Some(AudioSpec::new(&MelConfig::default())?);
//! pipeline.fit_statistics(&manifest)?; // training split only
//!
//! let config: ModelConfig = toml::from_str(r#"
//!     [encoders.image]
//!     kind = "image"
//!     arch = "resnet18"
//!     [encoders.audio]
//!     kind = "audio"
//!     backbone = { type = "rnn", cell = "gru", hidden = 64 }
//!     [fusion]
//!     method = "gated"
//!     dim = 128
//!     [head]
//!     type = "classification"
//! "#)?;
//! let device = mm_data::device::parse_device("auto")?; // CUDA when present
//! let vs = tch::nn::VarStore::new(device);
//! let model = Model::new(&vs.root(), &config, &DataShape::from_pipeline(&pipeline, vec![]))?;
//! let train = TrainConfig { epochs: 20, lr: 1e-3, verbose: true, ..TrainConfig::default() };
//! let report = fit(&model, &vs, Arc::new(manifest), Arc::new(pipeline), &train, "runs/demo".as_ref(), true)?;
//! println!("best accuracy {:?}", report.best); // runs/demo: metrics.jsonl, curves.svg, checkpoints/
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Architecture invariant: mm-train composes the layers below it (data, sequence models,
//! encoders, fusion); nothing below depends on it, it knows nothing of the applications built
//! on it (`mm-speech`), and it never parses command lines.

pub mod checkpoint;
pub mod ctc;
pub mod dist;
pub mod guard;
pub mod heads;
pub mod log;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod precision;
pub mod run;
pub mod schedule;
pub mod train;

/// Errors of mm-train.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is not usable; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A folder given as a trained run is not one.
    #[error("{path}: not a run folder ({why})")]
    NotARun {
        /// The folder.
        path: std::path::PathBuf,
        /// What is missing.
        why: String,
    },
    /// A checkpoint could not be written or read; the message names the file.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Loading the data failed (the message names the sample and file).
    #[error("data: {0}")]
    Data(String),
    /// A distributed collective, the rendezvous or a launched process failed; the message
    /// names the rank and what it was doing.
    #[error("distributed: {0}")]
    Distributed(String),
    /// libtorch failed inside a step; the message names the step, the model part and the
    /// settings ([`guard`]).
    #[error("{0}")]
    Torch(String),
    /// mm-data failed: reading, preparing, loading or writing data (it names the file, line or
    /// sample; its causes are its sources).
    #[error(transparent)]
    DataLayer(#[from] mm_data::Error),
    /// An encoder could not be built or its weights loaded.
    #[error(transparent)]
    Encoder(#[from] mm_encoders::Error),
    /// A fusion could not be built.
    #[error(transparent)]
    Fusion(#[from] mm_fusion::Error),
    /// A file of a run (a checkpoint, a record) could not be read or written.
    #[error("{path}")]
    File {
        /// The file or folder.
        path: std::path::PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A loss was NaN or infinite.
    #[error("the loss is {loss} at epoch {epoch}, step {step}, in the batch of samples {ids} (set on_non_finite = \"skip\" to skip such batches)")]
    NonFinite {
        /// Epoch, from 1.
        epoch: u64,
        /// Optimiser steps before the batch.
        step: u64,
        /// The loss.
        loss: f64,
        /// The first sample ids of the batch.
        ids: String,
    },
}

/// Result type of mm-train.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// [`Error::File`] for `path`.
    pub fn file(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Error::File { path: path.into(), source }
    }
}

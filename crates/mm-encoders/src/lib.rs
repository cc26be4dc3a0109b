//! Modality encoders: image CNNs (ResNet, VGG, small CNNs) and Vision Transformers, word-vector
//! text encoders (GloVe, word2vec), pretrained BERT, CLIP ([`clip`]: both towers, zero-shot
//! classification, an image index in [`clip_index`]) and Whisper ([`whisper`]: transcription),
//! RNN audio encoders over log-mel features, MLPs for numeric records. Each turns one
//! modality's batch into a `[B, D]` embedding (and, where it has one, a `[B, T, D]` sequence with
//! its mask).
//!
//! Every encoder implements [`Encoder`]: an [`Input`] (a dense tensor, or a padded sequence with
//! its lengths) becomes an [`Encoded`]. Encoders are built from `(path, &config)` so that their
//! parameter names are stable (`image.layer1.0.conv1.weight`); [`build`] makes any of them from
//! an [`EncoderConfig`] (TOML-friendly, unknown keys refused), and [`Projected`] maps one to a
//! shared size. [`weights`] loads safetensors files (torchvision's, timm's and transformers'
//! included) and names every missing, unexpected or mis-shaped tensor. Each configuration says
//! which [`mm_data::Modality`] it reads ([`EncoderConfig::modality`]), and
//! [`Input::from_batch`] takes that modality out of a batch.
//!
//! ```
//! use mm_encoders::{build, BuildContext, Encoder, EncoderConfig, Input};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let config: EncoderConfig = toml::from_str("kind = \"tabular\"\nhidden = [32]\nout = 16\nproject = 8")?;
//! let encoder = build(&(vs.root() / "record"), &config, &BuildContext { input_dim: Some(6), ..Default::default() })?;
//! let out = encoder.forward_t(&Input::dense(Tensor::randn([4, 6], (Kind::Float, Device::Cpu))), false);
//! assert_eq!(out.pooled.size(), [4, 8]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Architecture invariant: encoders know one modality each and nothing about fusion or training;
//! they build on mm-data (inputs) and mm-seq (recurrent and attention layers).

pub mod audio;
pub mod bert;
pub mod clip;
pub mod clip_index;
mod config;
pub mod formula;
pub mod image;
pub mod tabular;
pub mod text;
pub mod vectors;
pub mod video;
pub mod vit;
pub mod weights;
pub mod whisper;

use std::sync::atomic::{AtomicBool, Ordering};

use mm_data::Modality;
use tch::{nn, Tensor};

pub use config::{build, BuildContext, EncoderConfig};

/// Errors of mm-encoders.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is not usable; the message names the field.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A line of a word-vector file is not valid.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// The 1-based line (for word2vec's binary format, the entry number).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A weights file does not fit the model; every problem is listed.
    #[error("{path}: the weights do not fit the model:\n{}", problems.join("\n"))]
    Weights {
        /// The file.
        path: std::path::PathBuf,
        /// One line per missing, unexpected or mis-shaped tensor.
        problems: Vec<String>,
    },
    /// A weights file is damaged: its structure is broken, or its tensors do not match the
    /// digest it was written with.
    #[error("{path}: {message}")]
    Integrity {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A sequence layer could not be built.
    #[error(transparent)]
    Seq(#[from] mm_seq::Error),
    /// libtorch refused an operation.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result type of mm-encoders.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One modality of a batch: a dense tensor (images `[B, C, H, W]`, records `[B, F]`) or a padded
/// sequence with per-sample lengths (log-mel `[B, T, M]`, token ids `[B, L]`).
#[derive(Debug)]
pub struct Input {
    /// The values.
    pub values: Tensor,
    /// `[B]` lengths of a padded sequence; `None` for a dense input.
    pub lengths: Option<Tensor>,
}

impl Input {
    /// A dense input.
    pub fn dense(values: Tensor) -> Self {
        Input { values, lengths: None }
    }

    /// A padded sequence.
    pub fn sequence(values: Tensor, lengths: Tensor) -> Self {
        Input { values, lengths: Some(lengths) }
    }

    /// One modality of an mm-data batch, if the batch has it: dense for image and features, a
    /// padded sequence with its lengths for audio, text and frames.
    pub fn from_batch(batch: &mm_data::loader::Batch, modality: Modality) -> Option<Input> {
        let seq = |p: &Option<(Tensor, Tensor)>| {
            p.as_ref().map(|(v, l)| Input::sequence(v.shallow_clone(), l.shallow_clone()))
        };
        match modality {
            Modality::Image => batch.image.as_ref().map(|t| Input::dense(t.shallow_clone())),
            Modality::Features => batch.features.as_ref().map(|t| Input::dense(t.shallow_clone())),
            Modality::Audio => seq(&batch.audio),
            Modality::Text => seq(&batch.text),
            Modality::Frames => seq(&batch.frames),
        }
    }

    /// The lengths, or, for a dense input, every sample at the full length of dimension 1.
    pub(crate) fn lengths_or_full(&self) -> Tensor {
        match &self.lengths {
            Some(l) => l.shallow_clone(),
            None => {
                let size = self.values.size();
                Tensor::full(
                    [size[0]],
                    size.get(1).copied().unwrap_or(1),
                    (tch::Kind::Int64, self.values.device()),
                )
            }
        }
    }
}

/// What an encoder returns.
#[derive(Debug)]
pub struct Encoded {
    /// `[B, D]`, one vector per sample.
    pub pooled: Tensor,
    /// `[B, T, D]` steps and their `[B, T]` mask, for encoders with a sequence (for attention
    /// based fusion); `None` otherwise.
    pub seq: Option<(Tensor, Tensor)>,
}

/// An encoder of one modality, in the spirit of tch's `ModuleT`.
pub trait Encoder: std::fmt::Debug + Send {
    /// Size `D` of the output.
    fn output_dim(&self) -> i64;

    /// Encodes a batch; `train` turns dropout (and batch-norm statistics updates) on.
    fn forward_t(&self, input: &Input, train: bool) -> Encoded;

    /// Makes the backbone trainable or not (the pretrained part: a CNN's convolutions, word
    /// vectors); heads and projections stay trainable. A frozen CNN also keeps its batch-norm
    /// statistics.
    fn set_backbone_trainable(&self, trainable: bool);

    /// The backbone's trainable parameters (shallow copies), for a parameter group with its own
    /// learning rate.
    fn backbone_parameters(&self) -> Vec<Tensor>;

    /// Input steps per step of the sequence output (`Encoded::seq`): 1 unless the encoder
    /// downsamples in time (an audio CNN halves the frames per convolution). A sequence step
    /// `k` covers input steps `k · stride ..` (for timing a CTC model's labels).
    fn time_stride(&self) -> i64 {
        1
    }
}

/// The parameters of a backbone, recorded when it is built, and whether it is frozen.
#[derive(Debug, Default)]
pub(crate) struct Backbone {
    params: Vec<Tensor>,
    frozen: AtomicBool,
}

impl Backbone {
    /// A backbone made of these parameters.
    pub(crate) fn new(params: Vec<Tensor>) -> Self {
        Backbone { params, frozen: AtomicBool::new(false) }
    }

    pub(crate) fn set_trainable(&self, trainable: bool) {
        for p in &self.params {
            let _ = p.set_requires_grad(trainable);
        }
        self.frozen.store(!trainable, Ordering::Relaxed);
    }

    pub(crate) fn parameters(&self) -> Vec<Tensor> {
        self.params.iter().map(Tensor::shallow_clone).collect()
    }

    pub(crate) fn frozen(&self) -> bool {
        self.frozen.load(Ordering::Relaxed)
    }
}

/// An encoder followed by a linear projection to a shared size (applied to the pooled vector
/// and to every step of the sequence). Parameters: `proj.{weight,bias}` under its path.
#[derive(Debug)]
pub struct Projected {
    inner: Box<dyn Encoder>,
    proj: nn::Linear,
    dim: i64,
}

impl Projected {
    /// Projects `inner`'s output to `dim`.
    pub fn new(path: &nn::Path, inner: Box<dyn Encoder>, dim: i64) -> Result<Self> {
        if dim <= 0 {
            return Err(Error::Config(format!("project = {dim}: must be positive")));
        }
        let proj = nn::linear(path / "proj", inner.output_dim(), dim, Default::default());
        Ok(Projected { inner, proj, dim })
    }
}

impl Encoder for Projected {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, input: &Input, train: bool) -> Encoded {
        let e = self.inner.forward_t(input, train);
        Encoded {
            pooled: e.pooled.apply(&self.proj),
            seq: e.seq.map(|(s, m)| (s.apply(&self.proj) * m.unsqueeze(-1).to_kind(s.kind()), m)),
        }
    }

    fn set_backbone_trainable(&self, trainable: bool) {
        self.inner.set_backbone_trainable(trainable);
    }

    fn backbone_parameters(&self) -> Vec<Tensor> {
        self.inner.backbone_parameters()
    }

    fn time_stride(&self) -> i64 {
        self.inner.time_stride()
    }
}

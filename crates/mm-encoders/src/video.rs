//! A video encoder: one image encoder shared across frames (mm-seq's `TimeDistributed`, which
//! runs only the valid frames of a batch), then a sequence model over the frame embeddings
//! (an LSTM/GRU, a Transformer or temporal convolutions) and pooling; or no sequence model,
//! the frames pooled as a bag. Input: frames `[B, T, C, H, W]` with lengths.
//!
//! Parameters: `frame.*` (the image encoder, the backbone), `seq.*`, `attention.*`.
//!
//! ```
//! use mm_encoders::video::{VideoConfig, VideoEncoder};
//! use mm_encoders::{Encoder, Input};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let config: VideoConfig = toml::from_str("frame = { arch = \"lenet\" }\nseq = { type = \"rnn\", cell = \"gru\", hidden = 16 }\npooling = \"last\"")?;
//! let video = VideoEncoder::new(&(vs.root() / "frames"), &config)?;
//! let frames = Tensor::rand([2, 8, 3, 32, 32], (Kind::Float, Device::Cpu));
//! let out = video.forward_t(&Input::sequence(frames, Tensor::from_slice(&[8i64, 5])), false);
//! assert_eq!(out.pooled.size(), [2, 16]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use mm_seq::pool::{AttentionPool, AttentionPoolConfig};
use mm_seq::rnn::{Rnn, RnnConfig};
use mm_seq::tcn::{TemporalConv, TemporalConvConfig};
use mm_seq::transformer::{TransformerConfig, TransformerEncoder};
use mm_seq::video::TimeDistributed;
use mm_seq::{lengths_to_mask, SeqOutput, SequenceModel};

use crate::image::{ImageConfig, ImageEncoder};
use crate::text::{pool, SeqPooling};
use crate::{Backbone, Encoded, Encoder, Error, Input, Result};

/// The sequence model over frame embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", tag = "type", deny_unknown_fields)]
pub enum FrameSeq {
    /// None: the frames are pooled as a bag (order-free).
    #[default]
    None,
    /// An LSTM or GRU.
    Rnn(RnnConfig),
    /// A Transformer encoder.
    Transformer(TransformerConfig),
    /// Temporal convolutions.
    Tcn(TemporalConvConfig),
}

/// Configuration of a [`VideoEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoConfig {
    /// The per-frame image encoder (its `weights` are loaded like an image encoder's).
    pub frame: ImageConfig,
    /// The sequence model.
    #[serde(default)]
    pub seq: FrameSeq,
    /// Pooling over valid frames.
    #[serde(default)]
    pub pooling: SeqPooling,
    /// Keep the frame encoder fixed.
    #[serde(default)]
    pub freeze: bool,
    /// Project the output to this size.
    #[serde(default)]
    pub project: Option<i64>,
}

/// Frames through a shared image encoder and a sequence model.
#[derive(Debug)]
pub struct VideoEncoder {
    frames: TimeDistributed,
    seq: Option<Box<dyn SequenceModel>>,
    attention: Option<AttentionPool>,
    pooling: SeqPooling,
    dim: i64,
    backbone: Backbone,
}

impl VideoEncoder {
    /// Builds the encoder under `path`.
    pub fn new(path: &nn::Path, config: &VideoConfig) -> Result<Self> {
        let image = ImageEncoder::new(&(path / "frame"), &config.frame)?;
        let frame_dim = image.output_dim();
        let backbone = Backbone::new(image.parameters());
        let seq: Option<Box<dyn SequenceModel>> = match &config.seq {
            FrameSeq::None => None,
            FrameSeq::Rnn(c) => Some(Box::new(Rnn::new(&(path / "seq"), frame_dim, c)?)),
            FrameSeq::Transformer(c) => {
                Some(Box::new(TransformerEncoder::new(&(path / "seq"), frame_dim, c)?))
            }
            FrameSeq::Tcn(c) => Some(Box::new(TemporalConv::new(&(path / "seq"), frame_dim, c)?)),
        };
        let dim = seq.as_ref().map_or(frame_dim, |s| s.output_dim());
        if config.seq == FrameSeq::None && config.pooling == SeqPooling::Last {
            return Err(Error::Config(
                "video: `last` pooling needs a sequence model (`seq`)".to_string(),
            ));
        }
        let attention = (config.pooling == SeqPooling::Attention)
            .then(|| {
                AttentionPool::new(&(path / "attention"), dim, &AttentionPoolConfig::default())
            })
            .transpose()?;
        Ok(VideoEncoder {
            frames: TimeDistributed::new(Box::new(image), frame_dim),
            seq,
            attention,
            pooling: config.pooling,
            dim,
            backbone,
        })
    }
}

impl Encoder for VideoEncoder {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, input: &Input, train: bool) -> Encoded {
        let lengths = input.lengths_or_full();
        let steps =
            self.frames.forward_t(&input.values, &lengths, train && !self.backbone.frozen());
        let out = match &self.seq {
            Some(s) => s.forward_seq(&steps, &lengths, train),
            None => {
                let mask = lengths_to_mask(&lengths.to_device(steps.device()), steps.size()[1]);
                let last = steps.select(1, 0).zeros_like();
                SeqOutput { outputs: steps, mask, last }
            }
        };
        let pooled = pool(&out, self.pooling, self.attention.as_ref());
        Encoded { pooled, seq: Some((out.outputs, out.mask)) }
    }

    fn set_backbone_trainable(&self, trainable: bool) {
        self.backbone.set_trainable(trainable);
    }

    fn backbone_parameters(&self) -> Vec<Tensor> {
        self.backbone.parameters()
    }
}

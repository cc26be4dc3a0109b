//! Audio encoders over log-mel features `[B, T, M]` with lengths (from mm-data's log-mel front
//! end): a uni- or bidirectional, multi-layer LSTM or GRU (mm-seq, on packed sequences), or a
//! CNN over the spectrogram that keeps time (convolutions and 2×2 pooling, then a linear map of
//! each step's channels and frequency bins), optionally followed by an LSTM or GRU over its
//! steps (a convolutional front end, as speech recognisers have); then last-state, mean, max or
//! attention pooling over valid frames. The sequence output (`Encoded::seq`) has one step per
//! `2^convolutions` frames with a CNN, which a CTC head reads.
//!
//! Parameters: `rnn.*` or `cnn.convs.{i}.*` (and `cnn.rnn.*`), `attention.*`. The backbone is
//! the RNN or the CNN (with its RNN).
//!
//! ```
//! use mm_encoders::audio::{AudioBackbone, AudioConfig, AudioEncoder};
//! use mm_encoders::text::SeqPooling;
//! use mm_encoders::{Encoder, Input};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let config = AudioConfig { backbone: AudioBackbone::Cnn { channels: vec![8, 16], rnn: None }, pooling: SeqPooling::Mean, ..Default::default() };
//! let audio = AudioEncoder::new(&(vs.root() / "audio"), &config, 64)?;
//! let mels = Tensor::randn([3, 100, 64], (Kind::Float, Device::Cpu)); // [B, frames, mel bins]
//! let out = audio.forward_t(&Input::sequence(mels, Tensor::from_slice(&[100i64, 61, 7])), false);
//! assert_eq!(out.pooled.size(), [3, 16]);
//! # Ok::<(), mm_encoders::Error>(())
//! ```

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use mm_seq::pool::{AttentionPool, AttentionPoolConfig};
use mm_seq::rnn::{Rnn, RnnConfig};
use mm_seq::{last_valid, lengths_to_mask, zero_padding, SeqOutput, SequenceModel};

use crate::text::{pool, SeqPooling};
use crate::{Backbone, Encoded, Encoder, Error, Input, Result};

/// The layers over the spectrogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type", deny_unknown_fields)]
pub enum AudioBackbone {
    /// An LSTM or GRU over frames.
    Rnn(RnnConfig),
    /// 3×3 convolutions with ReLU, each followed by 2×2 max pooling (time and frequency);
    /// each remaining step's channels × frequency bins are then mapped by a linear layer to
    /// the last channel count (keeping where in frequency the energy is: pitch).
    Cnn {
        /// Channels per convolution.
        channels: Vec<i64>,
        /// An LSTM or GRU over the CNN's steps (the output is then the RNN's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rnn: Option<RnnConfig>,
    },
}

/// Configuration of an [`AudioEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioConfig {
    /// RNN or CNN.
    pub backbone: AudioBackbone,
    /// Pooling over valid frames.
    pub pooling: SeqPooling,
    /// Keep the backbone fixed.
    pub freeze: bool,
    /// Project the output to this size.
    pub project: Option<i64>,
}

impl Default for AudioConfig {
    fn default() -> Self {
        AudioConfig {
            backbone: AudioBackbone::Rnn(RnnConfig {
                hidden: 128,
                layers: 2,
                bidirectional: true,
                dropout: 0.1,
                ..Default::default()
            }),
            pooling: SeqPooling::Mean,
            freeze: false,
            project: None,
        }
    }
}

#[derive(Debug)]
enum Net {
    Rnn(Rnn),
    Cnn(Vec<nn::Conv2D>, nn::Linear, Option<Rnn>),
}

/// An audio encoder.
#[derive(Debug)]
pub struct AudioEncoder {
    net: Net,
    attention: Option<AttentionPool>,
    pooling: SeqPooling,
    dim: i64,
    backbone: Backbone,
}

impl AudioEncoder {
    /// An encoder of `n_mels`-bin log-mel frames.
    pub fn new(path: &nn::Path, config: &AudioConfig, n_mels: i64) -> Result<Self> {
        if n_mels <= 0 {
            return Err(Error::Config(format!("audio: {n_mels} mel bins")));
        }
        let (net, dim, params) = match &config.backbone {
            AudioBackbone::Rnn(c) => {
                let rnn = Rnn::new(&(path / "rnn"), n_mels, c)?;
                let (dim, params) = (rnn.output_dim(), rnn.parameters());
                (Net::Rnn(rnn), dim, params)
            }
            AudioBackbone::Cnn { channels, rnn } => {
                if channels.is_empty() || channels.iter().any(|c| *c <= 0) {
                    return Err(Error::Config(format!(
                        "audio.backbone.channels = {channels:?}: positive, at least one"
                    )));
                }
                let mut input = 1;
                let mut convs = Vec::new();
                let mut params = Vec::new();
                for (i, &c) in channels.iter().enumerate() {
                    let conv = nn::conv2d(
                        path / "cnn" / "convs" / i,
                        input,
                        c,
                        3,
                        nn::ConvConfig { padding: 1, ..Default::default() },
                    );
                    params.push(conv.ws.shallow_clone());
                    params.extend(conv.bs.iter().map(Tensor::shallow_clone));
                    convs.push(conv);
                    input = c;
                }
                // Frequency bins left after the poolings (ceil mode).
                let bins = (0..channels.len()).fold(n_mels, |m, _| (m + 1) / 2);
                let proj =
                    nn::linear(path / "cnn" / "proj", input * bins, input, Default::default());
                params.push(proj.ws.shallow_clone());
                params.extend(proj.bs.iter().map(Tensor::shallow_clone));
                let rnn = rnn
                    .as_ref()
                    .map(|c| Rnn::new(&(path / "cnn" / "rnn"), input, c))
                    .transpose()?;
                let dim = rnn.as_ref().map_or(input, |r| {
                    params.extend(r.parameters());
                    r.output_dim()
                });
                (Net::Cnn(convs, proj, rnn), dim, params)
            }
        };
        let attention = (config.pooling == SeqPooling::Attention)
            .then(|| {
                AttentionPool::new(&(path / "attention"), dim, &AttentionPoolConfig::default())
            })
            .transpose()?;
        Ok(AudioEncoder {
            net,
            attention,
            pooling: config.pooling,
            dim,
            backbone: Backbone::new(params),
        })
    }

    fn cnn(
        convs: &[nn::Conv2D],
        proj: &nn::Linear,
        rnn: Option<&Rnn>,
        xs: &Tensor,
        lengths: &Tensor,
        train: bool,
    ) -> SeqOutput {
        let (b, t, _) = xs.size3().expect("[B, T, M] log-mel frames");
        let mut lengths = lengths.to_device(xs.device()).to_kind(Kind::Int64);
        let mut steps = t;
        // [B, 1, T, M]; padded frames are zeroed before every convolution, so a valid frame
        // sees what it would see in a clip run alone.
        let mut h = xs.unsqueeze(1);
        for conv in convs {
            let mask = lengths_to_mask(&lengths, steps).view([b, 1, steps, 1]).to_kind(h.kind());
            h = (h * mask).apply(conv).relu();
            let mask = lengths_to_mask(&lengths, steps).view([b, 1, steps, 1]).to_kind(h.kind());
            h = (h * mask).max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], true);
            steps = (steps + 1) / 2;
            lengths = (lengths + 1).divide_scalar_mode(2, "floor");
        }
        // [B, C, T', M'] -> [B, T', C·M'] -> [B, T', C]
        let (_, c, _, m) = h.size4().expect("[B, C, T, M]");
        let outputs = h.permute([0, 2, 1, 3]).reshape([b, steps, c * m]).apply(proj).relu();
        if let Some(rnn) = rnn {
            return rnn.forward_seq(&outputs, &lengths, train);
        }
        let mask = lengths_to_mask(&lengths, steps);
        let outputs = zero_padding(&outputs, &mask);
        let last = last_valid(&outputs, &lengths);
        SeqOutput { outputs, mask, last }
    }
}

impl Encoder for AudioEncoder {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, input: &Input, train: bool) -> Encoded {
        let lengths = input.lengths_or_full();
        let out = match &self.net {
            Net::Rnn(rnn) => rnn.forward_seq(&input.values, &lengths, train),
            Net::Cnn(convs, proj, rnn) => {
                Self::cnn(convs, proj, rnn.as_ref(), &input.values, &lengths, train)
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

    fn time_stride(&self) -> i64 {
        match &self.net {
            Net::Rnn(_) => 1,
            Net::Cnn(convs, ..) => 1 << convs.len(),
        }
    }
}

//! Video: one image encoder shared across frames ([`TimeDistributed`], which batches the valid
//! frames of a batch as `[N, C, H, W]`), followed by a sequence model ([`VideoModel`]); and a
//! joint audio-visual model ([`AudioVisual`]) that fuses the frame and audio sequences per step
//! (audio pooled into each frame's time window) or after pooling each.
//!
//! Any `tch::nn::ModuleT` that maps `[N, C, H, W]` to `[N, D]` can be the frame encoder (the
//! image CNNs of mm-encoders, say); [`SmallCnn`] is a light one for small frames.
//!
//! ```
//! use mm_seq::rnn::{Rnn, RnnConfig, CellKind};
//! use mm_seq::video::{SmallCnn, SmallCnnConfig, VideoModel};
//! use mm_seq::Pooling;
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let root = vs.root();
//! let cnn = SmallCnn::new(&(&root / "frame"), &SmallCnnConfig { out: 32, ..Default::default() })?;
//! let gru = Rnn::new(&(&root / "seq"), 32, &RnnConfig { cell: CellKind::Gru, hidden: 16, ..Default::default() })?;
//! let model = VideoModel::new(Box::new(cnn), 32, Box::new(gru), Pooling::Last);
//! let frames = Tensor::rand([2, 8, 3, 32, 32], (Kind::Float, Device::Cpu)); // [B, T, C, H, W]
//! let lengths = Tensor::from_slice(&[8i64, 5]);
//! assert_eq!(model.forward_t(&frames, &lengths, false).size(), [2, 16]);
//! # Ok::<(), mm_seq::Error>(())
//! ```

use serde::{Deserialize, Serialize};
use tch::{nn, nn::ModuleT, Kind, Tensor};

use crate::{lengths_to_mask, Error, Pooling, Result, SeqOutput, SequenceModel};

/// One frame encoder applied to every valid frame of a batch.
#[derive(Debug)]
pub struct TimeDistributed {
    encoder: Box<dyn ModuleT + Send>,
    dim: i64,
}

impl TimeDistributed {
    /// Wraps a frame encoder that maps `[N, C, H, W]` to `[N, dim]`.
    pub fn new(encoder: Box<dyn ModuleT + Send>, dim: i64) -> Self {
        TimeDistributed { encoder, dim }
    }

    /// `[B, T, C, H, W]` frames with lengths `[B]` to `[B, T, dim]` embeddings (zero at padded
    /// frames, which are never run through the encoder: no wasted work, and batch statistics
    /// see only real frames).
    pub fn forward_t(&self, frames: &Tensor, lengths: &Tensor, train: bool) -> Tensor {
        let size = frames.size();
        assert_eq!(size.len(), 5, "frames must be [B, T, C, H, W], got {size:?}");
        let (b, t) = (size[0], size[1]);
        let mask = lengths_to_mask(&lengths.to_device(frames.device()), t).view([-1]);
        let valid = mask.nonzero().squeeze_dim(1);
        let flat = frames.reshape([b * t, size[2], size[3], size[4]]);
        let out = Tensor::zeros([b * t, self.dim], (frames.kind(), frames.device()));
        if valid.size()[0] > 0 {
            let encoded = self.encoder.forward_t(&flat.index_select(0, &valid), train);
            assert_eq!(
                encoded.size(),
                [valid.size()[0], self.dim],
                "the frame encoder must return [N, {}]",
                self.dim
            );
            return out.index_copy(0, &valid, &encoded).view([b, t, self.dim]);
        }
        out.view([b, t, self.dim])
    }
}

/// Configuration of [`SmallCnn`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmallCnnConfig {
    /// Input channels.
    pub in_channels: i64,
    /// Channels of each 3×3 convolution; each but the last is followed by 2×2 max pooling.
    pub channels: Vec<i64>,
    /// Average pooling to a `grid × grid` map before the linear layer: 1 is global pooling
    /// (translation invariant: it forgets where things are), larger keeps coarse positions,
    /// which motion needs.
    pub grid: i64,
    /// Output size (a linear layer after the pooling).
    pub out: i64,
}

impl Default for SmallCnnConfig {
    fn default() -> Self {
        SmallCnnConfig { in_channels: 3, channels: vec![16, 32, 64], grid: 4, out: 64 }
    }
}

/// A light CNN for small frames: 3×3 convolutions with ReLU and max pooling, average pooling
/// to a small grid, a linear layer. Parameters `convs.{i}.{weight,bias}`, `out.{weight,bias}`.
#[derive(Debug)]
pub struct SmallCnn {
    convs: Vec<nn::Conv2D>,
    grid: i64,
    out: nn::Linear,
}

impl SmallCnn {
    /// Creates the network under `path`.
    pub fn new(path: &nn::Path, config: &SmallCnnConfig) -> Result<Self> {
        if config.in_channels <= 0
            || config.out <= 0
            || config.grid <= 0
            || config.channels.is_empty()
            || config.channels.iter().any(|c| *c <= 0)
        {
            return Err(Error::Config(format!(
                "small_cnn: channels {:?}, in_channels, grid and out must be positive",
                config.channels
            )));
        }
        let conv = nn::ConvConfig { padding: 1, ..Default::default() };
        let mut input = config.in_channels;
        let mut convs = Vec::new();
        for (i, &c) in config.channels.iter().enumerate() {
            convs.push(nn::conv2d(path / "convs" / i, input, c, 3, conv));
            input = c;
        }
        let features = input * config.grid * config.grid;
        Ok(SmallCnn {
            convs,
            grid: config.grid,
            out: nn::linear(path / "out", features, config.out, Default::default()),
        })
    }
}

impl ModuleT for SmallCnn {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        for (i, conv) in self.convs.iter().enumerate() {
            x = x.apply(conv).relu();
            if i + 1 < self.convs.len() {
                x = x.max_pool2d_default(2);
            }
        }
        x.adaptive_avg_pool2d([self.grid, self.grid]).flatten(1, -1).apply(&self.out)
    }
}

/// Frames through a shared frame encoder, then a sequence model, then pooling.
#[derive(Debug)]
pub struct VideoModel {
    frames: TimeDistributed,
    seq: Box<dyn SequenceModel>,
    pooling: Pooling,
}

impl VideoModel {
    /// `encoder` maps `[N, C, H, W]` to `[N, dim]`; `seq` takes `dim`-sized steps.
    pub fn new(
        encoder: Box<dyn ModuleT + Send>,
        dim: i64,
        seq: Box<dyn SequenceModel>,
        pooling: Pooling,
    ) -> Self {
        VideoModel { frames: TimeDistributed::new(encoder, dim), seq, pooling }
    }

    /// Size of the pooled output.
    pub fn output_dim(&self) -> i64 {
        self.seq.output_dim()
    }

    /// The sequence model's full output for `[B, T, C, H, W]` frames.
    pub fn forward_seq(&self, frames: &Tensor, lengths: &Tensor, train: bool) -> SeqOutput {
        let steps = self.frames.forward_t(frames, lengths, train);
        self.seq.forward_seq(&steps, lengths, train)
    }

    /// `[B, T, C, H, W]` frames to `[B, output_dim]`.
    pub fn forward_t(&self, frames: &Tensor, lengths: &Tensor, train: bool) -> Tensor {
        self.forward_seq(frames, lengths, train).pool(self.pooling)
    }
}

/// Where [`AudioVisual`] joins the two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AvFusion {
    /// Audio features pooled into each frame's time window and joined to the frame embedding;
    /// one sequence model runs over the joint steps.
    #[default]
    PerStep,
    /// A sequence model per stream, each pooled, the two vectors joined.
    AfterPooling,
}

/// Audio frames averaged into video steps: `[B, T_v, T_a]` weights, where step `t` of a
/// sample with `n_v` valid frames and `n_a` valid audio frames averages audio frames
/// `⌊t·n_a/n_v⌋ .. max(⌊(t+1)·n_a/n_v⌋, ⌊t·n_a/n_v⌋ + 1)` (clipped to `n_a`); rows of padded
/// steps, and samples without audio, are zero.
pub fn align_audio_to_frames(
    frame_lengths: &Tensor,
    audio_lengths: &Tensor,
    t_v: i64,
    t_a: i64,
) -> Tensor {
    let fv = Vec::<i64>::try_from(frame_lengths.to_device(tch::Device::Cpu).to_kind(Kind::Int64))
        .unwrap_or_default();
    let fa = Vec::<i64>::try_from(audio_lengths.to_device(tch::Device::Cpu).to_kind(Kind::Int64))
        .unwrap_or_default();
    let b = fv.len();
    let mut w = vec![0f32; b * (t_v * t_a) as usize];
    for (i, (&nv, &na)) in fv.iter().zip(&fa).enumerate() {
        let (nv, na) = (nv.min(t_v), na.min(t_a));
        if nv <= 0 || na <= 0 {
            continue;
        }
        for t in 0..nv {
            let start = (t * na / nv).min(na - 1);
            let end = ((t + 1) * na / nv).max(start + 1).min(na);
            let share = 1.0 / (end - start) as f32;
            for j in start..end {
                w[i * (t_v * t_a) as usize + (t * t_a + j) as usize] = share;
            }
        }
    }
    Tensor::from_slice(&w).view([b as i64, t_v, t_a])
}

/// A joint audio-visual sequence model.
#[derive(Debug)]
pub struct AudioVisual {
    frames: TimeDistributed,
    fusion: AvFusion,
    /// Per step: the joint model; after pooling: the frame model.
    seq: Box<dyn SequenceModel>,
    /// After pooling only: the audio model.
    audio_seq: Option<Box<dyn SequenceModel>>,
    pooling: Pooling,
}

impl AudioVisual {
    /// Per-step fusion: `seq` takes steps of size `frame_dim + audio features`.
    pub fn per_step(
        encoder: Box<dyn ModuleT + Send>,
        frame_dim: i64,
        seq: Box<dyn SequenceModel>,
        pooling: Pooling,
    ) -> Self {
        AudioVisual {
            frames: TimeDistributed::new(encoder, frame_dim),
            fusion: AvFusion::PerStep,
            seq,
            audio_seq: None,
            pooling,
        }
    }

    /// Fusion after pooling: `frame_seq` takes `frame_dim` steps, `audio_seq` audio features.
    pub fn after_pooling(
        encoder: Box<dyn ModuleT + Send>,
        frame_dim: i64,
        frame_seq: Box<dyn SequenceModel>,
        audio_seq: Box<dyn SequenceModel>,
        pooling: Pooling,
    ) -> Self {
        AudioVisual {
            frames: TimeDistributed::new(encoder, frame_dim),
            fusion: AvFusion::AfterPooling,
            seq: frame_seq,
            audio_seq: Some(audio_seq),
            pooling,
        }
    }

    /// Where the streams join.
    pub fn fusion(&self) -> AvFusion {
        self.fusion
    }

    /// Size of the output.
    pub fn output_dim(&self) -> i64 {
        self.seq.output_dim() + self.audio_seq.as_ref().map_or(0, |a| a.output_dim())
    }

    /// Frames `[B, T_v, C, H, W]` and audio features `[B, T_a, F_a]`, each with lengths, to
    /// `[B, output_dim]`.
    pub fn forward_t(
        &self,
        frames: &Tensor,
        frame_lengths: &Tensor,
        audio: &Tensor,
        audio_lengths: &Tensor,
        train: bool,
    ) -> Tensor {
        let steps = self.frames.forward_t(frames, frame_lengths, train);
        match &self.audio_seq {
            None => {
                let (t_v, t_a) = (steps.size()[1], audio.size()[1]);
                let align = align_audio_to_frames(frame_lengths, audio_lengths, t_v, t_a)
                    .to_device(audio.device())
                    .to_kind(audio.kind());
                let joint = Tensor::cat(&[steps, align.bmm(audio)], 2);
                self.seq.forward_seq(&joint, frame_lengths, train).pool(self.pooling)
            }
            Some(audio_seq) => {
                let v = self.seq.forward_seq(&steps, frame_lengths, train).pool(self.pooling);
                let a = audio_seq.forward_seq(audio, audio_lengths, train).pool(self.pooling);
                Tensor::cat(&[v, a], 1)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn audio_windows_cover_each_frame_span_and_sum_to_one() {
        let w = align_audio_to_frames(
            &Tensor::from_slice(&[2i64, 3, 2]),
            &Tensor::from_slice(&[4i64, 2, 0]),
            3,
            5,
        );
        let w: Vec<f32> = Vec::try_from(w.view([-1])).unwrap();
        let row = |b: usize, t: usize| w[b * 15 + t * 5..b * 15 + t * 5 + 5].to_vec();
        // 2 frames over 4 audio frames: halves.
        assert_eq!(row(0, 0), [0.5, 0.5, 0.0, 0.0, 0.0]);
        assert_eq!(row(0, 1), [0.0, 0.0, 0.5, 0.5, 0.0]);
        assert_eq!(row(0, 2), [0.0; 5]); // padded frame
                                         // 3 frames over 2 audio frames: every frame gets at least one.
        assert_eq!(row(1, 0), [1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(row(1, 1), [1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(row(1, 2), [0.0, 1.0, 0.0, 0.0, 0.0]);
        // No audio: nothing.
        assert!(w[30..].iter().all(|x| *x == 0.0));
    }
}

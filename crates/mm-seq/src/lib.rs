//! Sequence models for time-ordered data: LSTM and GRU (uni- and bidirectional, multi-layer,
//! length-masked), a Transformer encoder and temporal convolutions, over `[B, T, F]` batches
//! with per-sample lengths; used for video frames, audio features and time series. And a
//! Transformer decoder that writes tokens ([`decoder`]: cross-attention, a key/value cache,
//! greedy and beam search), for Whisper and caption heads.
//!
//! Every model implements [`SequenceModel`]: a padded batch `[B, T, F]` and its lengths `[B]`
//! become a [`SeqOutput`] holding every step's output `[B, T, D]` (zero at padded steps), the
//! step mask `[B, T]` and the last valid state `[B, D]`, which [`SeqOutput::pool`] and
//! [`pool::AttentionPool`] reduce to one vector per sample. Padding never changes a valid
//! step's result: recurrent models run on packed sequences, attention masks padded keys, and
//! convolutions see zeros where padding is.
//!
//! ```
//! use mm_seq::{rnn::{Rnn, RnnConfig, CellKind}, Pooling, SequenceModel};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let config = RnnConfig { cell: CellKind::Gru, hidden: 32, layers: 2, bidirectional: true, dropout: 0.1 };
//! let gru = Rnn::new(&(vs.root() / "gru"), 16, &config)?;
//! let xs = Tensor::randn([4, 10, 16], (Kind::Float, Device::Cpu)); // [B, T, F]
//! let lengths = Tensor::from_slice(&[10i64, 7, 3, 1]);
//! let out = gru.forward_seq(&xs, &lengths, false);
//! assert_eq!(out.outputs.size(), [4, 10, 64]); // both directions
//! assert_eq!(out.last.size(), [4, 64]);
//! assert_eq!(out.pool(Pooling::Mean).size(), [4, 64]);
//! # Ok::<(), mm_seq::Error>(())
//! ```
//!
//! A sample with length 0 (a modality absent from it) gets zero outputs and a zero state; the
//! batch's presence mask tells the layers above to ignore it.
//!
//! Architecture invariant: mm-seq knows about tensors and sequence masks, not about where the
//! sequences came from: it may use mm-data's batch types but nothing from encoders, fusion or
//! training.

pub mod decoder;
pub mod pool;
pub mod precision;
pub mod rnn;
pub mod tcn;
pub mod transformer;
pub mod video;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Errors of mm-seq: configurations that cannot build a model, inputs that do not fit one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is not usable; the message names the field.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An input does not have the shape or type the model needs.
    #[error("input does not fit the model: {0}")]
    Input(String),
}

/// Result type of mm-seq.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a sequence model returns for a padded batch.
#[derive(Debug)]
pub struct SeqOutput {
    /// Every step's output, `[B, T, D]`; zero at padded steps.
    pub outputs: Tensor,
    /// `[B, T]` booleans, true at valid steps.
    pub mask: Tensor,
    /// The state after the last valid step, `[B, D]`: for a bidirectional RNN the forward
    /// direction's final state joined with the backward direction's (which ends at step 0).
    /// Zero for an empty sequence.
    pub last: Tensor,
}

/// How a sequence becomes one vector (the parameter-free ones; see [`pool::AttentionPool`] for
/// learned attention pooling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The state after the last valid step.
    #[default]
    Last,
    /// The mean over valid steps.
    Mean,
    /// The element-wise maximum over valid steps.
    Max,
}

impl SeqOutput {
    /// Reduces the sequence to `[B, D]`; an empty sequence gives zeros.
    pub fn pool(&self, pooling: Pooling) -> Tensor {
        match pooling {
            Pooling::Last => self.last.shallow_clone(),
            Pooling::Mean => pool::masked_mean(&self.outputs, &self.mask),
            Pooling::Max => pool::masked_max(&self.outputs, &self.mask),
        }
    }
}

/// A model over padded sequences, in the spirit of tch's `ModuleT`.
pub trait SequenceModel: std::fmt::Debug + Send {
    /// Size `D` of each output step.
    fn output_dim(&self) -> i64;

    /// Runs over `xs` (`[B, T, F]`, float) with `lengths` (`[B]`, integer, each in `0..=T`);
    /// `train` turns dropout on. Panics on inputs that do not fit (a programmer error; use
    /// [`check_input`] to report one from user data).
    fn forward_seq(&self, xs: &Tensor, lengths: &Tensor, train: bool) -> SeqOutput;

    /// The model's trainable parameters (shallow copies), to freeze or inspect them.
    fn parameters(&self) -> Vec<Tensor>;
}

/// The weights and biases of linear layers, for [`SequenceModel::parameters`].
pub(crate) fn linear_params(layers: &[&tch::nn::Linear]) -> Vec<Tensor> {
    layers
        .iter()
        .flat_map(|l| {
            std::iter::once(l.ws.shallow_clone()).chain(l.bs.as_ref().map(Tensor::shallow_clone))
        })
        .collect()
}

/// The affine parameters of layer norms.
pub(crate) fn norm_params(norms: &[&tch::nn::LayerNorm]) -> Vec<Tensor> {
    norms.iter().flat_map(|n| n.ws.iter().chain(n.bs.iter()).map(Tensor::shallow_clone)).collect()
}

/// `[B, T]` booleans, true where `t < lengths[b]`, on the device of `lengths`.
pub fn lengths_to_mask(lengths: &Tensor, steps: i64) -> Tensor {
    let t = Tensor::arange(steps, (Kind::Int64, lengths.device()));
    t.unsqueeze(0).lt_tensor(&lengths.to_kind(Kind::Int64).unsqueeze(1))
}

/// Checks that `xs` is `[B, T, features]` and floating point and that `lengths` is `[B]`
/// integers within `0..=T`; the error says what differs.
pub fn check_input(xs: &Tensor, lengths: &Tensor, features: i64) -> Result<()> {
    let size = xs.size();
    if size.len() != 3 {
        return Err(Error::Input(format!(
            "expected a [batch, steps, {features}] tensor, got shape {size:?}"
        )));
    }
    if size[2] != features {
        return Err(Error::Input(format!(
            "expected {features} features per step, got {} (shape {size:?})",
            size[2]
        )));
    }
    if !xs.is_floating_point() {
        return Err(Error::Input(format!("expected floating-point steps, got {:?}", xs.kind())));
    }
    if lengths.size() != [size[0]] {
        return Err(Error::Input(format!(
            "expected {} lengths, got shape {:?}",
            size[0],
            lengths.size()
        )));
    }
    if lengths.is_floating_point() {
        return Err(Error::Input("lengths must be integers".to_string()));
    }
    if size[0] > 0 {
        let (lo, hi) = (lengths.min().int64_value(&[]), lengths.max().int64_value(&[]));
        if lo < 0 || hi > size[1] {
            return Err(Error::Input(format!(
                "lengths must lie in 0..={}, got {lo}..={hi}",
                size[1]
            )));
        }
    }
    Ok(())
}

/// Zeroes the padded steps of `[B, T, D]` outputs (`mask` `[B, T]`).
pub fn zero_padding(outputs: &Tensor, mask: &Tensor) -> Tensor {
    outputs * mask.unsqueeze(-1).to_kind(outputs.kind())
}

/// The output at each sample's last valid step, `[B, D]` (zero for an empty sequence).
pub fn last_valid(outputs: &Tensor, lengths: &Tensor) -> Tensor {
    let (b, _, d) = outputs.size3().expect("[B, T, D] outputs");
    let lengths = lengths.to_device(outputs.device()).to_kind(Kind::Int64);
    let index = (&lengths - 1).clamp_min(0).view([b, 1, 1]).expand([b, 1, d], false);
    let last = outputs.gather(1, &index, false).squeeze_dim(1);
    last * lengths.gt(0).unsqueeze(1).to_kind(outputs.kind())
}

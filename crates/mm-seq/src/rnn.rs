//! LSTM and GRU over padded batches, run on packed sequences so that padding never reaches a
//! valid step, with PyTorch's parameter names and initialisation (`weight_ih_l0`,
//! `weight_hh_l0_reverse`, ...: a state dict of `torch.nn.LSTM` / `torch.nn.GRU` loads as is).

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::precision::F32Scope;
use crate::{lengths_to_mask, Error, Result, SeqOutput, SequenceModel};

/// The recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CellKind {
    /// Long short-term memory (Hochreiter & Schmidhuber 1997).
    #[default]
    Lstm,
    /// Gated recurrent unit (Cho et al. 2014).
    Gru,
}

/// Configuration of an [`Rnn`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RnnConfig {
    /// LSTM or GRU.
    pub cell: CellKind,
    /// Hidden size per direction.
    pub hidden: i64,
    /// Stacked layers.
    pub layers: i64,
    /// Run a second direction from the end; outputs join both (size `2 · hidden`).
    pub bidirectional: bool,
    /// Dropout between layers when training (not after the last; PyTorch's convention).
    pub dropout: f64,
}

impl Default for RnnConfig {
    fn default() -> Self {
        RnnConfig {
            cell: CellKind::Lstm,
            hidden: 128,
            layers: 1,
            bidirectional: false,
            dropout: 0.0,
        }
    }
}

impl RnnConfig {
    fn validate(&self, input_dim: i64) -> Result<()> {
        if input_dim <= 0 {
            return Err(Error::Config(format!("rnn: input size {input_dim} must be positive")));
        }
        if self.hidden <= 0 {
            return Err(Error::Config(format!("rnn.hidden = {}: must be positive", self.hidden)));
        }
        if self.layers <= 0 {
            return Err(Error::Config(format!("rnn.layers = {}: must be positive", self.layers)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "rnn.dropout = {}: must be in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }
}

/// A multi-layer, optionally bidirectional LSTM or GRU.
#[derive(Debug)]
pub struct Rnn {
    config: RnnConfig,
    input_dim: i64,
    weights: Vec<Tensor>,
}

impl Rnn {
    /// Creates the layer's parameters under `path`, initialised as PyTorch does:
    /// uniform in `±1/√hidden`.
    pub fn new(path: &nn::Path, input_dim: i64, config: &RnnConfig) -> Result<Self> {
        config.validate(input_dim)?;
        let dirs = if config.bidirectional { 2 } else { 1 };
        let gates = match config.cell {
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        } * config.hidden;
        let k = 1.0 / (config.hidden as f64).sqrt();
        let init = nn::Init::Uniform { lo: -k, up: k };
        let mut weights = Vec::new();
        for layer in 0..config.layers {
            for dir in 0..dirs {
                let suffix = if dir == 1 { "_reverse" } else { "" };
                let in_dim = if layer == 0 { input_dim } else { config.hidden * dirs };
                weights.push(path.var(
                    &format!("weight_ih_l{layer}{suffix}"),
                    &[gates, in_dim],
                    init,
                ));
                weights.push(path.var(
                    &format!("weight_hh_l{layer}{suffix}"),
                    &[gates, config.hidden],
                    init,
                ));
                weights.push(path.var(&format!("bias_ih_l{layer}{suffix}"), &[gates], init));
                weights.push(path.var(&format!("bias_hh_l{layer}{suffix}"), &[gates], init));
            }
        }
        if path.device().is_cuda() && tch::Cuda::cudnn_is_available() {
            // Lays the weights out in one buffer, as cuDNN wants (what torch.nn.RNN does too).
            let mode = match config.cell {
                CellKind::Lstm => 2,
                CellKind::Gru => 3,
            };
            let _ = tch::no_grad(|| {
                Tensor::internal_cudnn_rnn_flatten_weight(
                    &weights,
                    4,
                    input_dim,
                    mode,
                    config.hidden,
                    0,
                    config.layers,
                    true,
                    config.bidirectional,
                )
            });
        }
        Ok(Rnn { config: config.clone(), input_dim, weights })
    }

    /// The configuration.
    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    /// The input size `F`.
    pub fn input_dim(&self) -> i64 {
        self.input_dim
    }

    fn directions(&self) -> i64 {
        if self.config.bidirectional {
            2
        } else {
            1
        }
    }
}

impl SequenceModel for Rnn {
    fn output_dim(&self) -> i64 {
        self.config.hidden * self.directions()
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.weights.iter().map(Tensor::shallow_clone).collect()
    }

    fn forward_seq(&self, xs: &Tensor, lengths: &Tensor, train: bool) -> SeqOutput {
        // Under CPU bf16 autocast an LSTM goes to oneDNN's bf16 LSTM, which a processor
        // without bf16 kernels lacks (see `precision`): there it runs in f32. A GRU has no
        // such kernel on CPU autocast's list and runs as it is.
        let f32_scope = (self.config.cell == CellKind::Lstm).then(|| F32Scope::enter(xs.device()));
        let xs = &f32_scope.as_ref().map_or_else(|| xs.shallow_clone(), |s| s.input(xs));
        let (b, t, _) = xs.size3().expect("a [B, T, F] input");
        let device = xs.device();
        let dirs = self.directions();
        let h = self.config.hidden;
        let lengths_cpu = lengths.to_device(tch::Device::Cpu).to_kind(Kind::Int64);
        let mask = lengths_to_mask(&lengths_cpu, t).to_device(device);
        if b == 0 {
            let zeros = Tensor::zeros([0, t, dirs * h], (xs.kind(), device));
            return SeqOutput { last: zeros.view([0, dirs * h]), outputs: zeros, mask };
        }
        // Packing needs lengths of at least 1, sorted longest first; empty rows are run with
        // length 1 and zeroed afterwards.
        let (sorted, order) = lengths_cpu.clamp_min(1).sort(0, true);
        let inverse = order.argsort(0, false).to_device(device);
        let (data, batch_sizes) = xs
            .index_select(0, &order.to_device(device))
            .internal_pack_padded_sequence(&sorted, true);
        let state = Tensor::zeros([self.config.layers * dirs, b, h], (xs.kind(), device));
        let weights: Vec<&Tensor> = self.weights.iter().collect();
        let (packed, h_n) = match self.config.cell {
            CellKind::Lstm => {
                let (out, h_n, _c_n) = Tensor::lstm_data(
                    &data,
                    &batch_sizes,
                    &[&state, &state],
                    &weights,
                    true,
                    self.config.layers,
                    self.config.dropout,
                    train,
                    self.config.bidirectional,
                );
                (out, h_n)
            }
            CellKind::Gru => Tensor::gru_data(
                &data,
                &batch_sizes,
                &state,
                &weights,
                true,
                self.config.layers,
                self.config.dropout,
                train,
                self.config.bidirectional,
            ),
        };
        let (padded, _) = Tensor::internal_pad_packed_sequence(&packed, &batch_sizes, true, 0.0, t);
        let present = lengths_cpu.gt(0).to_device(device).to_kind(xs.kind());
        let outputs = padded.index_select(0, &inverse) * mask.unsqueeze(-1).to_kind(xs.kind());
        // h_n: [layers · dirs, B, H]; the last layer's directions, joined per sample.
        let last = h_n
            .view([self.config.layers, dirs, b, h])
            .select(0, self.config.layers - 1)
            .permute([1, 0, 2])
            .reshape([b, dirs * h])
            .index_select(0, &inverse)
            * present.unsqueeze(1);
        SeqOutput { outputs, mask, last }
    }
}

//! Temporal convolutions (a TCN in the manner of Bai et al. 2018): residual blocks of 1-D
//! convolutions over time with growing dilation, causal or centred. Padded steps are zeroed
//! before every convolution, so a valid step sees exactly what it would see in a sequence run
//! alone (whose ends the convolution pads with zeros too).
//!
//! Parameters: `blocks.{i}.conv.{weight,bias}`, `blocks.{i}.norm.{weight,bias}` (a layer norm
//! over channels, which does not mix steps) and `blocks.0.skip` (a 1×1 convolution when the
//! input size differs from `channels`).

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use crate::{last_valid, lengths_to_mask, zero_padding, Error, Result, SeqOutput, SequenceModel};

/// Configuration of a [`TemporalConv`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemporalConvConfig {
    /// Channels of every block (the output size).
    pub channels: i64,
    /// Kernel size; odd when not causal.
    pub kernel: i64,
    /// Residual blocks.
    pub layers: i64,
    /// Dilation of block `i` is `dilation_growth^i` (1: no dilation).
    pub dilation_growth: i64,
    /// A step sees only itself and earlier steps.
    pub causal: bool,
    /// Dropout after each block's activation when training.
    pub dropout: f64,
}

impl Default for TemporalConvConfig {
    fn default() -> Self {
        TemporalConvConfig {
            channels: 128,
            kernel: 3,
            layers: 3,
            dilation_growth: 2,
            causal: false,
            dropout: 0.1,
        }
    }
}

#[derive(Debug)]
struct Block {
    conv: nn::Conv1D,
    norm: nn::LayerNorm,
    skip: Option<nn::Conv1D>,
    dilation: i64,
}

/// A stack of residual temporal convolution blocks.
#[derive(Debug)]
pub struct TemporalConv {
    config: TemporalConvConfig,
    blocks: Vec<Block>,
}

impl TemporalConv {
    /// Creates the blocks under `path` for inputs of size `input_dim`.
    pub fn new(path: &nn::Path, input_dim: i64, config: &TemporalConvConfig) -> Result<Self> {
        let c = config;
        if input_dim <= 0
            || c.channels <= 0
            || c.layers <= 0
            || c.kernel <= 0
            || c.dilation_growth <= 0
        {
            return Err(Error::Config(format!(
                "tcn: input size {input_dim}, channels {}, layers {}, kernel {} and dilation_growth {} must be positive",
                c.channels, c.layers, c.kernel, c.dilation_growth
            )));
        }
        if !c.causal && c.kernel % 2 == 0 {
            return Err(Error::Config(format!(
                "tcn.kernel = {}: must be odd unless causal",
                c.kernel
            )));
        }
        if !(0.0..1.0).contains(&c.dropout) {
            return Err(Error::Config(format!("tcn.dropout = {}: must be in [0, 1)", c.dropout)));
        }
        let mut dilation = 1i64;
        let mut blocks = Vec::new();
        for i in 0..c.layers {
            let p = path / "blocks" / i;
            let in_dim = if i == 0 { input_dim } else { c.channels };
            let conv_config = nn::ConvConfig { dilation, ..Default::default() };
            blocks.push(Block {
                conv: nn::conv1d(&p / "conv", in_dim, c.channels, c.kernel, conv_config),
                norm: nn::layer_norm(&p / "norm", vec![c.channels], Default::default()),
                skip: (in_dim != c.channels)
                    .then(|| nn::conv1d(&p / "skip", in_dim, c.channels, 1, Default::default())),
                dilation,
            });
            dilation = dilation.saturating_mul(c.dilation_growth);
        }
        Ok(TemporalConv { config: c.clone(), blocks })
    }

    /// The configuration.
    pub fn config(&self) -> &TemporalConvConfig {
        &self.config
    }

    /// Steps each side of an output that it depends on (left only when causal).
    pub fn receptive_field(&self) -> i64 {
        self.blocks.iter().map(|b| (self.config.kernel - 1) * b.dilation).sum::<i64>() + 1
    }
}

impl SequenceModel for TemporalConv {
    fn output_dim(&self) -> i64 {
        self.config.channels
    }

    fn parameters(&self) -> Vec<Tensor> {
        let conv = |c: &nn::Conv1D| {
            std::iter::once(c.ws.shallow_clone())
                .chain(c.bs.as_ref().map(Tensor::shallow_clone))
                .collect::<Vec<_>>()
        };
        let mut out = Vec::new();
        for b in &self.blocks {
            out.extend(conv(&b.conv));
            out.extend(crate::norm_params(&[&b.norm]));
            out.extend(b.skip.iter().flat_map(conv));
        }
        out
    }

    fn forward_seq(&self, xs: &Tensor, lengths: &Tensor, train: bool) -> SeqOutput {
        let (_, t, _) = xs.size3().expect("a [B, T, F] input");
        let lengths = lengths.to_device(xs.device()).to_kind(Kind::Int64);
        let mask = lengths_to_mask(&lengths, t);
        let mut x = zero_padding(xs, &mask); // [B, T, C]
        for block in &self.blocks {
            let span = (self.config.kernel - 1) * block.dilation;
            let (left, right) = if self.config.causal { (span, 0) } else { (span / 2, span / 2) };
            let h =
                x.transpose(1, 2).constant_pad_nd([left, right]).apply(&block.conv).transpose(1, 2);
            let h = block.norm.forward(&h).relu().dropout(self.config.dropout, train);
            let residual = match &block.skip {
                Some(skip) => x.transpose(1, 2).apply(skip).transpose(1, 2),
                None => x.shallow_clone(),
            };
            x = zero_padding(&(h + residual), &mask);
        }
        let last = last_valid(&x, &lengths);
        SeqOutput { outputs: x, mask, last }
    }
}

//! A Transformer encoder (Vaswani et al. 2017) over padded batches: multi-head self-attention
//! with a key-padding mask (libtorch's fused `scaled_dot_product_attention`), a position-wise
//! feed-forward block, pre- or post-norm residuals, sinusoidal or learned positions.
//!
//! Parameter names follow `torch.nn.TransformerEncoder` (`layers.0.self_attn.in_proj_weight`,
//! `layers.0.linear1.weight`, `layers.0.norm1.weight`, ...), plus `input` (a projection when the
//! input size differs from `d_model`), `pos` (learned positions) and `norm` (the final norm of
//! a pre-norm stack).

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use crate::{last_valid, lengths_to_mask, zero_padding, Error, Result, SeqOutput, SequenceModel};

/// How step positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// Fixed sines and cosines (Vaswani et al. 2017); any length.
    #[default]
    Sinusoidal,
    /// A learned vector per position, up to `max_len` steps.
    Learned,
    /// No positions: the model sees a set, not a sequence.
    None,
}

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// ReLU (PyTorch's default).
    Relu,
    /// GELU.
    #[default]
    Gelu,
}

/// Configuration of a [`TransformerEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerConfig {
    /// Model width.
    pub d_model: i64,
    /// Attention heads; must divide `d_model`.
    pub heads: i64,
    /// Encoder layers.
    pub layers: i64,
    /// Feed-forward width.
    pub ff: i64,
    /// Dropout on attention weights, residual branches and the input.
    pub dropout: f64,
    /// Positions.
    pub positions: Positions,
    /// Longest sequence with learned positions.
    pub max_len: i64,
    /// Normalise before each block (pre-norm, stabler) rather than after (the original).
    pub norm_first: bool,
    /// Feed-forward activation.
    pub activation: Activation,
}

impl Default for TransformerConfig {
    fn default() -> Self {
        TransformerConfig {
            d_model: 128,
            heads: 4,
            layers: 2,
            ff: 256,
            dropout: 0.1,
            positions: Positions::Sinusoidal,
            max_len: 1024,
            norm_first: true,
            activation: Activation::Gelu,
        }
    }
}

#[derive(Debug)]
struct Layer {
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    linear1: nn::Linear,
    linear2: nn::Linear,
    norm1: nn::LayerNorm,
    norm2: nn::LayerNorm,
}

/// A stack of Transformer encoder layers.
#[derive(Debug)]
pub struct TransformerEncoder {
    config: TransformerConfig,
    input_dim: i64,
    input: Option<nn::Linear>,
    pos: Option<Tensor>,
    layers: Vec<Layer>,
    norm: Option<nn::LayerNorm>,
}

/// `[T, d]` sinusoidal position codes.
pub fn sinusoidal_positions(steps: i64, d: i64, device: tch::Device) -> Tensor {
    let pos = Tensor::arange(steps, (Kind::Float, device)).unsqueeze(1);
    let i = Tensor::arange(d, (Kind::Float, device));
    // Pairs (2k, 2k + 1) share the frequency 1 / 10000^(2k / d).
    let freq = ((&i / 2.0).floor() * 2.0 / d as f64 * -(10_000f64.ln())).exp();
    let angle = pos * freq.unsqueeze(0);
    let even = (i.remainder(2.0)).eq(0.0).unsqueeze(0);
    angle.sin().where_self(&even, &angle.cos())
}

impl TransformerEncoder {
    /// Creates the encoder's parameters under `path` for inputs of size `input_dim`.
    pub fn new(path: &nn::Path, input_dim: i64, config: &TransformerConfig) -> Result<Self> {
        let c = config;
        let bad = |m: String| Err(Error::Config(format!("transformer.{m}")));
        if input_dim <= 0 {
            return bad(format!("input size {input_dim}: must be positive"));
        }
        if c.d_model <= 0 || c.heads <= 0 || c.d_model % c.heads != 0 {
            return bad(format!(
                "heads = {} must divide d_model = {} (both positive)",
                c.heads, c.d_model
            ));
        }
        if c.layers <= 0 || c.ff <= 0 {
            return bad(format!("layers = {} and ff = {}: must be positive", c.layers, c.ff));
        }
        if !(0.0..1.0).contains(&c.dropout) {
            return bad(format!("dropout = {}: must be in [0, 1)", c.dropout));
        }
        if c.positions == Positions::Learned && c.max_len <= 0 {
            return bad(format!(
                "max_len = {}: must be positive with learned positions",
                c.max_len
            ));
        }
        let d = c.d_model;
        let input =
            (input_dim != d).then(|| nn::linear(path / "input", input_dim, d, Default::default()));
        let pos = (c.positions == Positions::Learned)
            .then(|| path.var("pos", &[c.max_len, d], nn::Init::Randn { mean: 0.0, stdev: 0.02 }));
        let layers = (0..c.layers)
            .map(|i| {
                let p = path / "layers" / i;
                let attn = &p / "self_attn";
                // PyTorch: xavier_uniform on the packed q, k, v projection, zero biases.
                let bound = (6.0 / (d + 3 * d) as f64).sqrt();
                Layer {
                    in_proj_weight: attn.var(
                        "in_proj_weight",
                        &[3 * d, d],
                        nn::Init::Uniform { lo: -bound, up: bound },
                    ),
                    in_proj_bias: attn.zeros("in_proj_bias", &[3 * d]),
                    out_proj: nn::linear(&attn / "out_proj", d, d, Default::default()),
                    linear1: nn::linear(&p / "linear1", d, c.ff, Default::default()),
                    linear2: nn::linear(&p / "linear2", c.ff, d, Default::default()),
                    norm1: nn::layer_norm(&p / "norm1", vec![d], Default::default()),
                    norm2: nn::layer_norm(&p / "norm2", vec![d], Default::default()),
                }
            })
            .collect();
        let norm = c.norm_first.then(|| nn::layer_norm(path / "norm", vec![d], Default::default()));
        Ok(TransformerEncoder { config: c.clone(), input_dim, input, pos, layers, norm })
    }

    /// The configuration.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The input size `F`.
    pub fn input_dim(&self) -> i64 {
        self.input_dim
    }

    fn attention(&self, layer: &Layer, x: &Tensor, key_mask: &Tensor, train: bool) -> Tensor {
        let (b, t, d) = x.size3().expect("[B, T, d]");
        let heads = self.config.heads;
        let qkv = x.matmul(&layer.in_proj_weight.tr()) + &layer.in_proj_bias;
        let split = |k: i64| qkv.narrow(2, k * d, d).view([b, t, heads, d / heads]).transpose(1, 2);
        let dropout = if train { self.config.dropout } else { 0.0 };
        let out = Tensor::scaled_dot_product_attention(
            &split(0),
            &split(1),
            &split(2),
            Some(key_mask),
            dropout,
            false,
            None,
            false,
        );
        out.transpose(1, 2).reshape([b, t, d]).apply(&layer.out_proj)
    }

    fn feed_forward(&self, layer: &Layer, x: &Tensor, train: bool) -> Tensor {
        let h = x.apply(&layer.linear1);
        let h = match self.config.activation {
            Activation::Relu => h.relu(),
            Activation::Gelu => h.gelu("none"),
        };
        h.dropout(self.config.dropout, train).apply(&layer.linear2)
    }
}

impl SequenceModel for TransformerEncoder {
    fn output_dim(&self) -> i64 {
        self.config.d_model
    }

    fn parameters(&self) -> Vec<Tensor> {
        let mut out: Vec<Tensor> =
            self.input.iter().flat_map(|l| crate::linear_params(&[l])).collect();
        out.extend(self.pos.iter().map(Tensor::shallow_clone));
        for l in &self.layers {
            out.push(l.in_proj_weight.shallow_clone());
            out.push(l.in_proj_bias.shallow_clone());
            out.extend(crate::linear_params(&[&l.out_proj, &l.linear1, &l.linear2]));
            out.extend(crate::norm_params(&[&l.norm1, &l.norm2]));
        }
        out.extend(self.norm.iter().flat_map(|n| crate::norm_params(&[n])));
        out
    }

    fn forward_seq(&self, xs: &Tensor, lengths: &Tensor, train: bool) -> SeqOutput {
        let (b, t, _) = xs.size3().expect("a [B, T, F] input");
        let device = xs.device();
        let d = self.config.d_model;
        let lengths = lengths.to_device(device).to_kind(Kind::Int64);
        let mask = lengths_to_mask(&lengths, t);
        let x = match &self.input {
            Some(p) => xs.apply(p),
            None => xs.shallow_clone(),
        };
        // Not `+=`: `x` may share storage with the caller's input.
        let x = match (&self.pos, self.config.positions) {
            (Some(pos), _) => {
                assert!(
                    t <= self.config.max_len,
                    "{t} steps, but learned positions stop at max_len = {}",
                    self.config.max_len
                );
                x + pos.narrow(0, 0, t).unsqueeze(0)
            }
            (None, Positions::Sinusoidal) => {
                let kind = x.kind();
                x + sinusoidal_positions(t, d, device).to_kind(kind).unsqueeze(0)
            }
            _ => x,
        };
        let mut x = x.dropout(self.config.dropout, train);
        // Keys a query may attend to: the valid steps. An empty row keeps step 0 so that the
        // softmax stays finite; its outputs are zeroed below.
        let first = Tensor::arange(t, (Kind::Int64, device)).eq(0).unsqueeze(0);
        let empty = lengths.eq(0).unsqueeze(1);
        let key_mask = mask.logical_or(&first.logical_and(&empty)).view([b, 1, 1, t]);
        for layer in &self.layers {
            if self.config.norm_first {
                let a = self.attention(layer, &x.apply(&layer.norm1), &key_mask, train);
                x = &x + a.dropout(self.config.dropout, train);
                let f = self.feed_forward(layer, &x.apply(&layer.norm2), train);
                x = &x + f.dropout(self.config.dropout, train);
            } else {
                let a = self.attention(layer, &x, &key_mask, train);
                x = (&x + a.dropout(self.config.dropout, train)).apply(&layer.norm1);
                let f = self.feed_forward(layer, &x, train);
                x = (&x + f.dropout(self.config.dropout, train)).apply(&layer.norm2);
            }
        }
        if let Some(norm) = &self.norm {
            x = norm.forward(&x);
        }
        let outputs = zero_padding(&x, &mask);
        let last = last_valid(&outputs, &lengths);
        SeqOutput { outputs, mask, last }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sinusoidal_positions_follow_the_formula() {
        let pe = sinusoidal_positions(6, 8, tch::Device::Cpu);
        for (t, k) in [(0i64, 0i64), (3, 2), (5, 6), (4, 1), (2, 7)] {
            let freq = 1.0 / 10_000f64.powf((k / 2 * 2) as f64 / 8.0);
            let expected =
                if k % 2 == 0 { (t as f64 * freq).sin() } else { (t as f64 * freq).cos() };
            let got = pe.double_value(&[t, k]);
            assert!((got - expected).abs() < 1e-5, "pe[{t}, {k}] = {got}, expected {expected}");
        }
    }

    #[test]
    fn parameter_names_follow_pytorch() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let config = TransformerConfig {
            layers: 1,
            d_model: 8,
            heads: 2,
            ff: 16,
            positions: Positions::Learned,
            max_len: 10,
            ..Default::default()
        };
        TransformerEncoder::new(&(vs.root() / "enc"), 5, &config).unwrap();
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        let expected = [
            "enc.input.bias",
            "enc.input.weight",
            "enc.layers.0.linear1.bias",
            "enc.layers.0.linear1.weight",
            "enc.layers.0.linear2.bias",
            "enc.layers.0.linear2.weight",
            "enc.layers.0.norm1.bias",
            "enc.layers.0.norm1.weight",
            "enc.layers.0.norm2.bias",
            "enc.layers.0.norm2.weight",
            "enc.layers.0.self_attn.in_proj_bias",
            "enc.layers.0.self_attn.in_proj_weight",
            "enc.layers.0.self_attn.out_proj.bias",
            "enc.layers.0.self_attn.out_proj.weight",
            "enc.norm.bias",
            "enc.norm.weight",
            "enc.pos",
        ];
        assert_eq!(names, expected);
        let e = TransformerEncoder::new(&vs.root(), 5, &TransformerConfig { heads: 3, ..config })
            .unwrap_err()
            .to_string();
        assert!(e.contains("heads = 3 must divide d_model = 8"), "{e}");
    }
}

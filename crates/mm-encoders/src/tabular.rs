//! A multilayer perceptron for numeric records (standardised by mm-data): linear layers with
//! ReLU and dropout, for medical-style image + record fusion. Parameters `layers.{i}.*`.
//!
//! ```
//! use mm_encoders::tabular::{TabularConfig, TabularEncoder};
//! use mm_encoders::{Encoder, Input};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let config = TabularConfig { hidden: vec![32, 32], out: 16, ..Default::default() };
//! let mlp = TabularEncoder::new(&(vs.root() / "record"), &config, 6)?;
//! let out = mlp.forward_t(&Input::dense(Tensor::randn([4, 6], (Kind::Float, Device::Cpu))), false);
//! assert_eq!(out.pooled.size(), [4, 16]);
//! # Ok::<(), mm_encoders::Error>(())
//! ```

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::{Backbone, Encoded, Encoder, Error, Input, Result};

/// Configuration of a [`TabularEncoder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TabularConfig {
    /// Hidden layer sizes, each followed by ReLU and dropout.
    pub hidden: Vec<i64>,
    /// Output size (a last linear layer, no activation).
    pub out: i64,
    /// Dropout after each hidden layer when training.
    pub dropout: f64,
    /// Project the output to this size.
    pub project: Option<i64>,
}

impl Default for TabularConfig {
    fn default() -> Self {
        TabularConfig { hidden: vec![64], out: 64, dropout: 0.1, project: None }
    }
}

/// An MLP over `[B, F]` records.
#[derive(Debug)]
pub struct TabularEncoder {
    layers: Vec<nn::Linear>,
    dropout: f64,
    dim: i64,
    backbone: Backbone,
}

impl TabularEncoder {
    /// An MLP over `features` inputs.
    pub fn new(path: &nn::Path, config: &TabularConfig, features: i64) -> Result<Self> {
        if features <= 0 || config.out <= 0 || config.hidden.iter().any(|h| *h <= 0) {
            return Err(Error::Config(format!(
                "tabular: {features} features, hidden {:?} and out {} must be positive",
                config.hidden, config.out
            )));
        }
        if !(0.0..1.0).contains(&config.dropout) {
            return Err(Error::Config(format!(
                "tabular.dropout = {}: must be in [0, 1)",
                config.dropout
            )));
        }
        let mut input = features;
        let mut layers = Vec::new();
        for (i, &h) in config.hidden.iter().chain(std::iter::once(&config.out)).enumerate() {
            layers.push(nn::linear(path / "layers" / i, input, h, Default::default()));
            input = h;
        }
        let params = layers
            .iter()
            .flat_map(|l| {
                std::iter::once(l.ws.shallow_clone()).chain(l.bs.iter().map(Tensor::shallow_clone))
            })
            .collect();
        Ok(TabularEncoder {
            layers,
            dropout: config.dropout,
            dim: config.out,
            backbone: Backbone::new(params),
        })
    }
}

impl Encoder for TabularEncoder {
    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn forward_t(&self, input: &Input, train: bool) -> Encoded {
        let mut h = input.values.shallow_clone();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            h = h.apply(l);
            if i < last {
                h = h.relu().dropout(self.dropout, train);
            }
        }
        Encoded { pooled: h, seq: None }
    }

    fn set_backbone_trainable(&self, trainable: bool) {
        self.backbone.set_trainable(trainable);
    }

    fn backbone_parameters(&self) -> Vec<Tensor> {
        self.backbone.parameters()
    }
}

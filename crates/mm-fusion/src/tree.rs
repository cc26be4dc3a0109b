//! Fusion from configuration: one method over all modalities (parallel), or a tree whose
//! inputs are modality names or other fusions (serial, hierarchical), including a gate over
//! several arrangements of the same modalities.
//!
//! ```toml
//! # parallel
//! method = "gated"
//! dim = 64
//!
//! # serial: image and text first, then the result with audio
//! method = "weighted_sum"
//! dim = 64
//! inputs = ["audio", { method = "concat", inputs = ["image", "text"] }]
//!
//! # a gate over two arrangements of the same modalities
//! method = "gated"
//! dim = 64
//! inputs = [{ method = "tensor", project = 4 }, { method = "attention", dim = 64 }]
//! ```

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::methods::{
    Attention, Concat, CrossAttention, Film, Gated, Late, LowRank, Normalise, Product,
    TensorFusion, WeightedSum,
};
use crate::{Embeddings, Error, Fused, Fusion, Result};

fn yes() -> bool {
    true
}
fn four() -> i64 {
    4
}

/// An input of a fusion: a modality by name, or another fusion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputRef {
    /// A modality (`"image"`, `"audio"`, ...).
    Modality(String),
    /// A nested fusion; its output is one input here.
    Fusion(Box<FusionConfig>),
}

/// A fusion method and its inputs (every modality, in order, when `inputs` is left out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum FusionConfig {
    /// [`Concat`].
    Concat {
        /// Inputs.
        #[serde(default)]
        inputs: Option<Vec<InputRef>>,
        /// Append the presence flags.
        #[serde(default = "yes")]
        presence_flags: bool,
    },
    /// [`WeightedSum`].
    WeightedSum {
        /// Inputs.
        #[serde(default)]
        inputs: Option<Vec<InputRef>>,
        /// Common size.
        dim: i64,
        /// Softmax or free weights.
        #[serde(default)]
        normalise: Normalise,
    },
    /// [`Product`].
    Product {
        /// Inputs.
        #[serde(default)]
        inputs: Option<Vec<InputRef>>,
        /// Common size.
        dim: i64,
    },
    /// [`Gated`].
    Gated {
        /// Inputs.
        #[serde(default)]
        inputs: Option<Vec<InputRef>>,
        /// Output size.
        dim: i64,
    },
    /// [`TensorFusion`].
    Tensor {
        /// Inputs.
        #[serde(default)]
        inputs: Option<Vec<InputRef>>,
        /// Project each input to this size first.
        #[serde(default)]
        project: Option<i64>,
    },
    /// [`LowRank`].
    LowRank {
        /// Inputs.
        #[serde(default)]
        inputs: Option<Vec<InputRef>>,
        /// Output size.
        dim: i64,
        /// Rank of the factors.
        #[serde(default = "four")]
        rank: i64,
    },
    /// [`Attention`].
    Attention {
        /// Inputs.
        #[serde(default)]
        inputs: Option<Vec<InputRef>>,
        /// Token size.
        dim: i64,
        /// Heads.
        #[serde(default = "four")]
        heads: i64,
    },
    /// [`CrossAttention`].
    CrossAttention {
        /// Inputs.
        #[serde(default)]
        inputs: Option<Vec<InputRef>>,
        /// Step size.
        dim: i64,
        /// Heads.
        #[serde(default = "four")]
        heads: i64,
    },
    /// [`Late`].
    Late {
        /// Inputs.
        #[serde(default)]
        inputs: Option<Vec<InputRef>>,
        /// Classes (the output is logits).
        classes: i64,
        /// Learned weights (`true`) or the average over present modalities.
        #[serde(default = "yes")]
        learned: bool,
    },
    /// [`Film`]: the first input modulated by the others.
    Film {
        /// Inputs: the modulated one first, then the conditioning ones.
        #[serde(default)]
        inputs: Option<Vec<InputRef>>,
        /// Output size.
        dim: i64,
    },
}

impl FusionConfig {
    fn inputs(&self) -> Option<&Vec<InputRef>> {
        match self {
            FusionConfig::Concat { inputs, .. }
            | FusionConfig::WeightedSum { inputs, .. }
            | FusionConfig::Product { inputs, .. }
            | FusionConfig::Gated { inputs, .. }
            | FusionConfig::Tensor { inputs, .. }
            | FusionConfig::LowRank { inputs, .. }
            | FusionConfig::Attention { inputs, .. }
            | FusionConfig::CrossAttention { inputs, .. }
            | FusionConfig::Late { inputs, .. }
            | FusionConfig::Film { inputs, .. } => inputs.as_ref(),
        }
    }

    /// The method's name as written in configuration.
    pub fn method(&self) -> &'static str {
        match self {
            FusionConfig::Concat { .. } => "concat",
            FusionConfig::WeightedSum { .. } => "weighted_sum",
            FusionConfig::Product { .. } => "product",
            FusionConfig::Gated { .. } => "gated",
            FusionConfig::Tensor { .. } => "tensor",
            FusionConfig::LowRank { .. } => "low_rank",
            FusionConfig::Attention { .. } => "attention",
            FusionConfig::CrossAttention { .. } => "cross_attention",
            FusionConfig::Late { .. } => "late",
            FusionConfig::Film { .. } => "film",
        }
    }

    /// Builds this node's method for inputs of sizes `dims`.
    pub fn build_method(&self, path: &nn::Path, dims: &[i64]) -> Result<Box<dyn Fusion>> {
        Ok(match self {
            FusionConfig::Concat { presence_flags, .. } => {
                Box::new(Concat::new(dims, *presence_flags)?)
            }
            FusionConfig::WeightedSum { dim, normalise, .. } => {
                Box::new(WeightedSum::new(path, dims, *dim, *normalise)?)
            }
            FusionConfig::Product { dim, .. } => Box::new(Product::new(path, dims, *dim)?),
            FusionConfig::Gated { dim, .. } => Box::new(Gated::new(path, dims, *dim)?),
            FusionConfig::Tensor { project, .. } => {
                Box::new(TensorFusion::new(path, dims, *project)?)
            }
            FusionConfig::LowRank { dim, rank, .. } => {
                Box::new(LowRank::new(path, dims, *dim, *rank)?)
            }
            FusionConfig::Attention { dim, heads, .. } => {
                Box::new(Attention::new(path, dims, *dim, *heads)?)
            }
            FusionConfig::CrossAttention { dim, heads, .. } => {
                Box::new(CrossAttention::new(path, dims, *dim, *heads)?)
            }
            FusionConfig::Late { classes, learned, .. } => {
                Box::new(Late::new(path, dims, *classes, *learned)?)
            }
            FusionConfig::Film { dim, .. } => Box::new(Film::new(path, dims, *dim)?),
        })
    }
}

#[derive(Debug)]
enum Node {
    Leaf(usize),
    Inner { method: Box<dyn Fusion>, children: Vec<Node> },
}

/// Output of a node: pooled, its sequence if it is a leaf with one, presence `[B]`, weights.
struct NodeOut {
    pooled: Tensor,
    seq: Option<(Tensor, Tensor)>,
    present: Tensor,
    weights: Option<Tensor>,
}

impl Node {
    fn build(
        path: &nn::Path,
        config: &FusionConfig,
        modalities: &[(&str, i64)],
        depth: usize,
    ) -> Result<(Node, i64)> {
        if depth > 16 {
            return Err(Error::Config("fusion tree deeper than 16 levels".to_string()));
        }
        let refs: Vec<InputRef> = match config.inputs() {
            Some(r) => r.clone(),
            None => modalities.iter().map(|(n, _)| InputRef::Modality(n.to_string())).collect(),
        };
        if refs.is_empty() {
            return Err(Error::Config(format!("{}: no inputs", config.method())));
        }
        let mut children = Vec::new();
        let mut dims = Vec::new();
        for (i, r) in refs.iter().enumerate() {
            match r {
                InputRef::Modality(name) => {
                    let idx = modalities.iter().position(|(n, _)| n == name).ok_or_else(|| {
                        let known: Vec<&str> = modalities.iter().map(|(n, _)| *n).collect();
                        Error::Config(format!(
                            "{}: unknown input {name:?} (the modalities are {known:?})",
                            config.method()
                        ))
                    })?;
                    children.push(Node::Leaf(idx));
                    dims.push(modalities[idx].1);
                }
                InputRef::Fusion(sub) => {
                    let (node, dim) =
                        Node::build(&(path / "inputs" / i), sub, modalities, depth + 1)?;
                    children.push(node);
                    dims.push(dim);
                }
            }
        }
        let method = config.build_method(path, &dims)?;
        let dim = method.output_dim();
        Ok((Node::Inner { method, children }, dim))
    }

    fn forward(&self, inputs: &Embeddings, train: bool) -> NodeOut {
        match self {
            Node::Leaf(m) => NodeOut {
                pooled: inputs.pooled[*m].shallow_clone(),
                seq: inputs.seqs[*m].as_ref().map(|(s, k)| (s.shallow_clone(), k.shallow_clone())),
                present: inputs.present.select(1, *m as i64).to_kind(Kind::Bool),
                weights: None,
            },
            Node::Inner { method, children } => {
                let outs: Vec<NodeOut> =
                    children.iter().map(|c| c.forward(inputs, train)).collect();
                let present = Tensor::stack(
                    &outs.iter().map(|o| o.present.shallow_clone()).collect::<Vec<_>>(),
                    1,
                );
                let sub = Embeddings {
                    pooled: outs.iter().map(|o| o.pooled.shallow_clone()).collect(),
                    seqs: outs.into_iter().map(|o| o.seq).collect(),
                    present: present.shallow_clone(),
                };
                let Fused { fused, weights } = method.forward_t(&sub, train);
                NodeOut { pooled: fused, seq: None, present: present.any_dim(1, false), weights }
            }
        }
    }
}

/// A fusion (one method or a tree of them) over named modalities.
#[derive(Debug)]
pub struct FusionModel {
    root: Node,
    names: Vec<String>,
    dim: i64,
}

impl FusionModel {
    /// Builds `config` under `path` for the modalities `(name, size)`, whose order is the order
    /// of [`Embeddings`] and of the presence mask's columns.
    pub fn new(path: &nn::Path, config: &FusionConfig, modalities: &[(&str, i64)]) -> Result<Self> {
        if modalities.is_empty() {
            return Err(Error::Config("no modalities to fuse".to_string()));
        }
        let (root, dim) = Node::build(path, config, modalities, 0)?;
        Ok(FusionModel {
            root,
            names: modalities.iter().map(|(n, _)| n.to_string()).collect(),
            dim,
        })
    }

    /// Size of the fused output.
    pub fn output_dim(&self) -> i64 {
        self.dim
    }

    /// The modalities, in input order.
    pub fn modalities(&self) -> &[String] {
        &self.names
    }

    /// Fuses a batch; the weights are the root method's, over its own inputs.
    pub fn forward_t(&self, inputs: &Embeddings, train: bool) -> Fused {
        assert_eq!(
            inputs.pooled.len(),
            self.names.len(),
            "expected {} modalities ({:?})",
            self.names.len(),
            self.names
        );
        let out = self.root.forward(inputs, train);
        Fused { fused: out.pooled, weights: out.weights }
    }
}
